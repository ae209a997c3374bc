// Compile-only checks: the detection traits accept every shipped policy and reject broken ones, and
// stateless policies stay empty and trivially copyable (they are passed by value everywhere).
#include <linrpe.hpp>

#include <type_traits>

namespace {
using namespace linrpe;
using linrpe::index; // a using-declaration beats POSIX ::index from <strings.h>

struct no_apply {
    static constexpr bool is_positive = true;
    index output_dim(index d) const { return d; }
};
struct post_without_hook {
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(index) const { return true; }
};

static_assert(detail::is_feature_map_v<feature_maps::identity, float>, "identity is a feature map");
static_assert(detail::is_feature_map_v<feature_maps::elu_plus_one, double>, "elu_plus_one is a feature map");
static_assert(detail::is_feature_map_v<feature_maps::relu, float>, "relu is a feature map");
static_assert(detail::is_feature_map_v<feature_maps::favor, double>, "favor is a feature map");
static_assert(detail::is_feature_map_v<feature_maps::trig_features, float>, "trig_features is a feature map");
static_assert(!detail::is_feature_map_v<no_apply, float>, "a feature map without apply is rejected");
static_assert(detail::is_positional_encoding_v<positional::none, float>, "none is a positional encoding");
static_assert(!detail::is_positional_encoding_v<post_without_hook, float>,
              "an encoding that declares a post-feature stage without encode_post is rejected");
static_assert(detail::has_apply_backward_v<feature_maps::identity, float> && detail::has_apply_backward_v<feature_maps::elu_plus_one, double> &&
                  detail::has_apply_backward_v<feature_maps::relu, float> && detail::has_apply_backward_v<feature_maps::favor, double> &&
                  detail::has_apply_backward_v<feature_maps::trig_features, float>,
              "every shipped feature map has the VJP hook apply_backward");
struct forward_only {
    static constexpr bool is_positive = true;
    index output_dim(index d) const { return d; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        phi = x;
    }
};
static_assert(detail::is_feature_map_v<forward_only, float> && !detail::has_apply_backward_v<forward_only, float>,
              "a map without apply_backward is still a feature map (forward only)");
static_assert(std::is_empty<feature_maps::elu_plus_one>::value && std::is_trivially_copyable<feature_maps::elu_plus_one>::value,
              "stateless feature maps are empty and trivially copyable");
static_assert(std::is_empty<positional::none>::value && std::is_trivially_copyable<positional::none>::value,
              "positional::none is empty and trivially copyable");
} // namespace
