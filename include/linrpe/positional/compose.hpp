#pragma once
/// \file
/// \brief positional::compose: a feature-side encoding (pre and/or post stage) with a sequence-mixing one.

#include "../detail/relative_weights.hpp"
#include "../detail/traits.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <type_traits>
#include <utility>

namespace linrpe {
namespace positional {

/// \brief Composition of encoding A, acting on features (pre-feature like SPE and/or post-feature like LRPE),
/// with encoding B, acting on sequence mixing (toeplitz_rpe):
///
///     ψ_i = post^A_i(φ(pre^A_i(q_i))),  κ_j likewise,   w_ij = c^B_{j−i}
///
/// e.g. compose<sine_spe<float>, toeplitz_rpe<float>>. Costs add: A's per-token cost plus B's mixing cost.
/// Scores stay non-negative only where both keep them so (preserves_positivity is the conjunction).
/// Both parts are public (`feature_side`, `mixing`) so that their parameters can be loaded.
///
/// \tparam A has_mixing == false, at least one of has_pre_feature / has_post_feature (or positional::none).
/// \tparam B has_mixing == true and no feature stage.
template <class A, class B>
class compose {
    static_assert(!A::has_mixing, "compose<A, B>: A must be a feature-side encoding (has_mixing == false).");
    static_assert(B::has_mixing && !B::has_pre_feature && !B::has_post_feature,
                  "compose<A, B>: B must be a sequence-mixing encoding without feature stages (e.g. toeplitz_rpe).");

public:
    using feature_side_type = A;
    using mixing_type = B;
    using scalar_type = typename detail::scalar_of<B>::type;
    static constexpr bool has_pre_feature = A::has_pre_feature;
    static constexpr bool has_post_feature = A::has_post_feature;
    static constexpr bool has_mixing = true;

    compose(A a, B b) : feature_side(std::move(a)), mixing(std::move(b)) {}

    A feature_side; ///< the pre/post-feature encoding
    B mixing;       ///< the sequence-mixing encoding

    bool preserves_positivity(index max_offset) const
    {
        return feature_side.preserves_positivity(max_offset) && mixing.preserves_positivity(max_offset);
    }

    void check_input(index input_dim, index head) const
    {
        detail::check_input_if_any(feature_side, input_dim, head);
        detail::check_input_if_any(mixing, input_dim, head);
    }
    /// Forwards the width φ produces to A (e.g. LRPE checks it against its dim).
    void check_feature_dim(index feature_dim, index head) const
    {
        detail::check_feature_dim_if_any(feature_side, feature_dim, head);
    }

    template <class AA = A, std::enable_if_t<AA::has_pre_feature, int> = 0>
    index pre_output_dim(index input_dim) const
    {
        return feature_side.pre_output_dim(input_dim);
    }
    template <class S, class AA = A, std::enable_if_t<AA::has_pre_feature, int> = 0>
    void encode_pre(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> out, index first_position,
                    index head, role which) const
    {
        feature_side.encode_pre(x, out, first_position, head, which);
    }

    template <class AA = A, std::enable_if_t<AA::has_post_feature, int> = 0>
    index post_output_dim(index feature_dim) const
    {
        return feature_side.post_output_dim(feature_dim);
    }
    template <class S, class AA = A, std::enable_if_t<AA::has_post_feature, int> = 0>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, index first_position,
                     index head, role which) const
    {
        feature_side.encode_post(phi, out, first_position, head, which);
    }

    template <class S>
    detail::relative_weights<S> mixing_weights(index head, index t_first, index t_last) const
    {
        return mixing.template mixing_weights<S>(head, t_first, t_last);
    }
};

} // namespace positional
} // namespace linrpe
