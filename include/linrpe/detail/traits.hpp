#pragma once
// IWYU pragma: private
/// \file
/// \brief Detection traits for the two policy concepts (feature map, positional encoding).

#include "../types.hpp"

#include <Eigen/Core>

#include <type_traits>
#include <utility>

namespace linrpe {
template <class T>
class tensor_view;

namespace detail {

template <class...>
inline constexpr bool dependent_false = false;

template <class S>
using in_ref = Eigen::Ref<const row_matrix<S>>;
template <class S>
using out_ref = Eigen::Ref<row_matrix<S>>;

// ---- feature maps ------------------------------------------------------------------------------------

template <class F, class = void>
struct has_is_positive : std::false_type {};
template <class F>
struct has_is_positive<F, std::void_t<decltype(bool(F::is_positive))>> : std::true_type {};

template <class F, class = void>
struct has_output_dim : std::false_type {};
template <class F>
struct has_output_dim<F, std::void_t<decltype(index(std::declval<const F&>().output_dim(index(1))))>>
    : std::true_type {};

template <class F, class S, class = void>
struct has_apply : std::false_type {};
template <class F, class S>
struct has_apply<F, S,
                 std::void_t<decltype(std::declval<const F&>().apply(std::declval<const in_ref<S>&>(),
                                                                     std::declval<out_ref<S>>(),
                                                                     std::declval<const feature_context&>()))>>
    : std::true_type {};

/// True when F has `is_positive`, `output_dim(index)` and `apply(in, out, feature_context)` for Scalar S.
template <class F, class S>
inline constexpr bool is_feature_map_v = has_is_positive<F>::value && has_output_dim<F>::value && has_apply<F, S>::value;

// ---- positional encodings ----------------------------------------------------------------------------

template <class P, class = void>
struct has_stage_flags : std::false_type {};
template <class P>
struct has_stage_flags<P, std::void_t<decltype(bool(P::has_pre_feature)), decltype(bool(P::has_post_feature)),
                                      decltype(bool(P::has_mixing))>> : std::true_type {};

template <class P, class = void>
struct has_preserves_positivity : std::false_type {};
template <class P>
struct has_preserves_positivity<P, std::void_t<decltype(bool(std::declval<const P&>().preserves_positivity(index(0))))>>
    : std::true_type {};

template <class P, class S, class = void>
struct has_pre_hook : std::false_type {};
template <class P, class S>
struct has_pre_hook<P, S,
                    std::void_t<decltype(index(std::declval<const P&>().pre_output_dim(index(1)))),
                                decltype(std::declval<const P&>().encode_pre(std::declval<const in_ref<S>&>(),
                                                                             std::declval<out_ref<S>>(), index(0),
                                                                             index(0), role::query))>>
    : std::true_type {};

template <class P, class S, class = void>
struct has_post_hook : std::false_type {};
template <class P, class S>
struct has_post_hook<P, S,
                     std::void_t<decltype(index(std::declval<const P&>().post_output_dim(index(1)))),
                                 decltype(std::declval<const P&>().encode_post(std::declval<const in_ref<S>&>(),
                                                                               std::declval<out_ref<S>>(), index(0),
                                                                               index(0), role::query))>>
    : std::true_type {};

template <class P, class S, class = void>
struct has_mixing_hook : std::false_type {};
template <class P, class S>
struct has_mixing_hook<P, S,
                       std::void_t<decltype(std::declval<const P&>().template mixing_weights<S>(index(0), index(0), index(0)))>>
    : std::true_type {};

/// Optional `check_input(input_dim, head)` on either policy: called before any work, may throw.
template <class P, class = void>
struct has_check_input : std::false_type {};
template <class P>
struct has_check_input<P, std::void_t<decltype(std::declval<const P&>().check_input(index(1), index(0)))>>
    : std::true_type {};

template <class P>
void check_input_if_any(const P& policy, index input_dim, index head)
{
    if constexpr (has_check_input<P>::value) policy.check_input(input_dim, head);
}

/// Optional `check_positions(first, count)` on a positional encoding: refuses positions first..first+count−1
/// it cannot encode (negative, or beyond an exactness limit); called before any work.
template <class P, class = void>
struct has_check_positions : std::false_type {};
template <class P>
struct has_check_positions<P, std::void_t<decltype(std::declval<const P&>().check_positions(index(0), index(1)))>>
    : std::true_type {};

template <class P>
void check_positions_if_any(const P& policy, index first, index count)
{
    if constexpr (has_check_positions<P>::value) policy.check_positions(first, count);
}

/// Optional `positivity_possible()` on a positional encoding: false when preserves_positivity can never
/// hold (so `sum` is refused at construction); encodings without it are checked per call only.
template <class P, class = void>
struct has_positivity_possible : std::false_type {};
template <class P>
struct has_positivity_possible<P, std::void_t<decltype(bool(std::declval<const P&>().positivity_possible()))>>
    : std::true_type {};

template <class P>
bool positivity_possible_if_any(const P& policy)
{
    if constexpr (has_positivity_possible<P>::value) return policy.positivity_possible();
    else return true;
}

/// Optional `check_feature_dim(feature_dim, head)` on a post-feature encoding: the width φ produces is only
/// known to the core (D may differ from M, e.g. FAVOR+), so the core passes it before any work.
template <class P, class = void>
struct has_check_feature_dim : std::false_type {};
template <class P>
struct has_check_feature_dim<P, std::void_t<decltype(std::declval<const P&>().check_feature_dim(index(1), index(0)))>>
    : std::true_type {};

template <class P>
void check_feature_dim_if_any(const P& policy, index feature_dim, index head)
{
    if constexpr (has_check_feature_dim<P>::value) policy.check_feature_dim(feature_dim, head);
}

template <class P, class S>
constexpr bool pre_ok()
{
    if constexpr (has_stage_flags<P>::value) return !P::has_pre_feature || has_pre_hook<P, S>::value;
    else return false;
}
template <class P, class S>
constexpr bool post_ok()
{
    if constexpr (has_stage_flags<P>::value) return !P::has_post_feature || has_post_hook<P, S>::value;
    else return false;
}
template <class P, class S>
constexpr bool mixing_ok()
{
    if constexpr (has_stage_flags<P>::value) return !P::has_mixing || has_mixing_hook<P, S>::value;
    else return false;
}

/// True when P declares its stages and provides the hook of every stage it declares.
template <class P, class S>
inline constexpr bool is_positional_encoding_v = has_stage_flags<P>::value && has_preserves_positivity<P>::value &&
                                                 pre_ok<P, S>() && post_ok<P, S>() && mixing_ok<P, S>();

/// `T::scalar_type` when T names one, void otherwise.
template <class T, class = void>
struct named_scalar {
    using type = void;
};
template <class T>
struct named_scalar<T, std::void_t<typename T::scalar_type>> {
    using type = typename T::scalar_type;
};

/// \brief The Scalar a linear_attention<F, P> computes in when none is given: P's `scalar_type`, else F's,
/// else float.
///
/// The built-in feature maps and positional::none are scalar-agnostic (their hooks are templates), so
/// linear_attention<F, positional::none> is float unless the third template argument says double; a call
/// with double matrices then fails to compile with a static_assert that says so (linear_attention.hpp).
template <class P, class F = void>
struct scalar_of {
    using from_p = typename named_scalar<P>::type;
    using from_f = typename named_scalar<F>::type;
    using type = std::conditional_t<!std::is_void<from_p>::value, from_p,
                                    std::conditional_t<!std::is_void<from_f>::value, from_f, float>>;
};

/// The scalar of an argument: an Eigen type's `Scalar`, a tensor_view's value type, void for anything else
/// (the catch-all overloads of linear_attention turn a call with a foreign scalar into a readable static_assert).
template <class T, class = void>
struct eigen_scalar {
    using type = void;
};
template <class T>
struct eigen_scalar<T, std::void_t<typename T::Scalar>> {
    using type = typename T::Scalar;
};
template <class T>
struct scalar_of_argument : eigen_scalar<T> {};
template <class T>
struct scalar_of_argument<tensor_view<T>> {
    using type = std::remove_const_t<T>;
};
template <class S, class... Args>
inline constexpr bool has_foreign_scalar_v =
    (... || (!std::is_void<typename scalar_of_argument<std::decay_t<Args>>::type>::value &&
             !std::is_same<typename scalar_of_argument<std::decay_t<Args>>::type, S>::value));

// ---- gradients (docs/design.md §16) ---------------------------------------------------------------------------

/// Optional VJP hook of a feature map: `apply_backward(x, phi, dphi, dx, feature_context)` writes
/// dx = J_φ(x)ᵀ dphi for rows x and their features phi = apply(x). Maps without it work forward only.
template <class F, class S, class = void>
struct has_apply_backward : std::false_type {};
template <class F, class S>
struct has_apply_backward<F, S,
                          std::void_t<decltype(std::declval<const F&>().apply_backward(
                              std::declval<const in_ref<S>&>(), std::declval<const in_ref<S>&>(),
                              std::declval<const in_ref<S>&>(), std::declval<out_ref<S>>(),
                              std::declval<const feature_context&>()))>> : std::true_type {};
template <class F, class S>
inline constexpr bool has_apply_backward_v = has_apply_backward<F, S>::value;

/// Optional VJP hooks of a pre-feature encoding,
/// `encode_pre_backward(x, du, dx, first_position, head, role, grad)` (dx = pre_iᵀ du for input rows x; pre is
/// linear in x), and of a post-feature encoding,
/// `encode_post_backward(phi, dpsi, dphi, first_position, head, role, grad)` (dphi = post_iᵀ dpsi for the post
/// stage's input rows phi). Both add the gradient of head `head`'s learnable parameters to grad[0, P) (P =
/// gradient_size(); grad is null when the caller wants input gradients only).
template <class P, class S, class = void>
struct has_pre_backward : std::false_type {};
template <class P, class S>
struct has_pre_backward<P, S,
                        std::void_t<decltype(std::declval<const P&>().encode_pre_backward(
                            std::declval<const in_ref<S>&>(), std::declval<const in_ref<S>&>(), std::declval<out_ref<S>>(),
                            index(0), index(0), role::query, static_cast<double*>(nullptr)))>> : std::true_type {};
template <class P, class S, class = void>
struct has_post_backward : std::false_type {};
template <class P, class S>
struct has_post_backward<P, S,
                         std::void_t<decltype(std::declval<const P&>().encode_post_backward(
                             std::declval<const in_ref<S>&>(), std::declval<const in_ref<S>&>(), std::declval<out_ref<S>>(),
                             index(0), index(0), role::query, static_cast<double*>(nullptr)))>> : std::true_type {};

/// The learnable parameters of an encoding, as seen by backward(): `P::parameter_gradients` (a value with the
/// parameters' shapes), `make_parameter_gradients()`, `gradient_size()` (P, the flat count of one head) and
/// `add_gradients(head, flat, pg)`. An encoding without them has none (linrpe::no_parameters).
template <class P, class = void>
struct has_parameters : std::false_type {};
template <class P>
struct has_parameters<P, std::void_t<typename P::parameter_gradients,
                                     decltype(std::declval<const P&>().make_parameter_gradients()),
                                     decltype(index(std::declval<const P&>().gradient_size())),
                                     decltype(std::declval<const P&>().add_gradients(
                                         index(0), static_cast<const double*>(nullptr),
                                         std::declval<typename P::parameter_gradients&>()))>> : std::true_type {};
template <class P, bool = has_parameters<P>::value>
struct parameter_gradients_of {
    using type = no_parameters;
};
template <class P>
struct parameter_gradients_of<P, true> {
    using type = typename P::parameter_gradients;
};
/// Optional check of a caller's gradient value before a backward writes anything:
/// `validate_gradients(const parameter_gradients&)` throws linrpe::error on a value of the wrong shapes.
template <class P, class G, class = void>
struct has_validate_gradients : std::false_type {};
template <class P, class G>
struct has_validate_gradients<P, G, std::void_t<decltype(std::declval<const P&>().validate_gradients(std::declval<const G&>()))>>
    : std::true_type {};

/// True when every feature-side stage P declares has its VJP hook (sequence mixing is checked apart).
template <class P, class S>
constexpr bool encoding_backward_ok()
{
    return (!P::has_pre_feature || has_pre_backward<P, S>::value) && (!P::has_post_feature || has_post_backward<P, S>::value);
}

} // namespace detail
} // namespace linrpe
