#pragma once
/// \file
/// \brief feature_maps::trig_features: trigonometric random features for the softmax kernel (signed).

#include "../detail/random_projection.hpp"
#include "../errors.hpp"
#include "../types.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace linrpe {
namespace feature_maps {

/// \brief Trigonometric random features (Rahimi & Recht, NIPS 2007; Performer's "TRF", Choromanski et
/// al., ICLR 2021):
///
///     x' = x · D^{-1/4},   φ(x) = M^{-1/2} exp(‖x'‖²/2) [sin(ω x'), cos(ω x')]     (2M features)
///
/// with E[φ(q)·φ(k)] = exp(q·k/√D). Features are signed, so scores can be negative and `sum`
/// normalization needs `allow_signed_normalizer` (as in Performer). Where a per-row factor cancels
/// (`sum`), the query factor exp(‖q'‖²/2) is dropped. Cost O(N·M·D); ω as in favor.
class trig_features {
public:
    static constexpr bool is_positive = false;

    trig_features(index input_dim, index features, std::uint64_t seed = 0, bool orthogonal = true, index heads = 1)
        : m_input_dim(input_dim), m_features(features), m_orthogonal(orthogonal),
          m_omega("trig_features", features, input_dim, heads)
    {
        detail::require_positive("trig_features input_dim", input_dim);
        detail::require_positive("trig_features features", features);
        detail::require_positive("trig_features heads", heads);
        redraw(seed);
    }

    void redraw(std::uint64_t seed) { m_omega.redraw(seed, m_orthogonal); }

    index output_dim(index /*input_dim*/) const { return 2 * m_features; }
    index heads() const { return m_omega.draws(); }
    /// ω of `head` (M × D), as favor::projection (bounds-checked; direct writes are checked at every call).
    row_matrix<double>& projection(index head = 0) { return m_omega.at(head); }
    const row_matrix<double>& projection(index head = 0) const { return m_omega.at(head); }
    /// Replaces ω of `head` (M × D, finite); throws linrpe::error naming the argument, changing nothing.
    void set_projection(index head, const row_matrix<double>& omega) { m_omega.set(head, omega); }

    /// Before a call: the input width, the head and its ω (shape (M, D), finite).
    void check_input(index input_dim, index head) const
    {
        if (input_dim != m_input_dim) detail::fail("trig_features input_dim (query/key width)", m_input_dim, input_dim);
        m_omega.check(head);
    }

    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context& ctx) const
    {
        const index n = x.rows(), m = m_features;
        if (n == 0) return;
        const S scale = static_cast<S>(std::pow(static_cast<double>(m_input_dim), -0.25));
        const row_matrix<S> omega = projection(ctx.head).template cast<S>(); // (M, D)
        const row_matrix<S> xs = x * scale;                                   // (n, D)
        row_matrix<S> proj = xs * omega.transpose();                          // (n, M)
        vector<S> amp = vector<S>::Constant(n, static_cast<S>(1.0 / std::sqrt(static_cast<double>(m))));
        if (!(ctx.which == role::query && ctx.row_scale_cancels))
            amp = (amp.array() * (S(0.5) * xs.rowwise().squaredNorm().array()).exp()).matrix();
        phi.leftCols(m) = (proj.array().sin().colwise() * amp.array()).matrix();
        phi.rightCols(m) = (proj.array().cos().colwise() * amp.array()).matrix();
    }

    /// \brief VJP hook (docs/design.md §16): dx = J_φ(x)ᵀ dphi given x and `phi` = apply(x, ctx).
    ///
    /// With p = ω x' and φ = a(x) [sin p, cos p]: ∂/∂p = dphi_sin ⊙ φ_cos − dphi_cos ⊙ φ_sin (read from phi,
    /// no trigonometric call), and where the amplitude a = M^{-1/2} exp(‖x'‖²/2) is kept (not a query under
    /// `sum`) it adds (Σ_r dphi_r φ_r) x'. dx = D^{-1/4} dx'. One (N, M)·(M, D) GEMM.
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& phi,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context& ctx) const
    {
        const index n = x.rows(), m = m_features;
        if (n == 0) return;
        const S scale = static_cast<S>(std::pow(static_cast<double>(m_input_dim), -0.25));
        const row_matrix<S> dp = (dphi.leftCols(m).array() * phi.rightCols(m).array() -
                                  dphi.rightCols(m).array() * phi.leftCols(m).array())
                                     .matrix();                               // (n, M)
        const row_matrix<S> omega = projection(ctx.head).template cast<S>(); // (M, D)
        dx.noalias() = dp * omega;                                            // (n, D)
        if (!(ctx.which == role::query && ctx.row_scale_cancels)) {
            const vector<S> radial = (dphi.array() * phi.array()).rowwise().sum(); // (n)
            dx += (x.array().colwise() * (radial.array() * scale)).matrix();
        }
        dx *= scale;
    }

private:
    index m_input_dim, m_features;
    bool m_orthogonal;
    detail::projection_set m_omega;
};

} // namespace feature_maps
} // namespace linrpe
