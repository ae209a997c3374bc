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

    // ---- backward (docs/design.md §16): the chain through both parts --------------------------------------

    /// The VJP hooks of A, forwarded (present exactly when A has them); A's parameters come first in the
    /// flat gradient of a head, so grad is passed as it is.
    template <class S, class AA = A>
    auto encode_pre_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& du,
                             Eigen::Ref<row_matrix<S>> dx, index first_position, index head, role which, double* grad) const
        -> decltype(std::declval<const AA&>().encode_pre_backward(x, du, dx, first_position, head, which, grad), void())
    {
        feature_side.encode_pre_backward(x, du, dx, first_position, head, which, grad);
    }
    template <class S, class AA = A>
    auto encode_post_backward(const Eigen::Ref<const row_matrix<S>>& phi, const Eigen::Ref<const row_matrix<S>>& dpsi,
                              Eigen::Ref<row_matrix<S>> dphi, index first_position, index head, role which, double* grad) const
        -> decltype(std::declval<const AA&>().encode_post_backward(phi, dpsi, dphi, first_position, head, which, grad), void())
    {
        feature_side.encode_post_backward(phi, dpsi, dphi, first_position, head, which, grad);
    }
    /// B's VJP hook, its parameters after A's in the flat gradient of a head.
    template <class S, class BB = B>
    auto mixing_weights_backward(index head, const detail::relative_weights<S>& used, const vector<double>& dlog_c,
                                 double* grad) const
        -> decltype(std::declval<const BB&>().mixing_weights_backward(head, used, dlog_c, grad), void())
    {
        mixing.mixing_weights_backward(head, used, dlog_c, grad ? grad + size_of(feature_side) : nullptr);
    }

    /// Both parts' parameter gradients (linrpe::no_parameters for a part that learns nothing); the flat
    /// layout of one head is A's P_A values, then B's P_B.
    struct parameter_gradients {
        typename detail::parameter_gradients_of<A>::type feature_side;
        typename detail::parameter_gradients_of<B>::type mixing;
    };
    parameter_gradients make_parameter_gradients() const { return {make_of(feature_side), make_of(mixing)}; }
    index gradient_size() const { return size_of(feature_side) + size_of(mixing); }
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        add_of(feature_side, head, flat, pg.feature_side);
        add_of(mixing, head, flat + size_of(feature_side), pg.mixing);
    }
    void validate_gradients(const parameter_gradients& pg) const
    {
        validate_of(feature_side, pg.feature_side);
        validate_of(mixing, pg.mixing);
    }

private:
    template <class P>
    static auto make_of(const P& p)
    {
        if constexpr (detail::has_parameters<P>::value) return p.make_parameter_gradients();
        else return no_parameters{};
    }
    template <class P>
    static index size_of(const P& p)
    {
        if constexpr (detail::has_parameters<P>::value) return p.gradient_size();
        else return 0;
    }
    template <class P, class G>
    static void add_of(const P& p, index head, const double* flat, G& g)
    {
        if constexpr (detail::has_parameters<P>::value) p.add_gradients(head, flat, g);
    }
    template <class P, class G>
    static void validate_of(const P& p, const G& g)
    {
        if constexpr (detail::has_validate_gradients<P, G>::value) p.validate_gradients(g);
    }
};

} // namespace positional
} // namespace linrpe
