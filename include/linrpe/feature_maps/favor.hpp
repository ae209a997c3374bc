#pragma once
/// \file
/// \brief feature_maps::favor: Performer's FAVOR+ positive random features for the softmax kernel.

#include "../detail/random_projection.hpp"
#include "../errors.hpp"
#include "../types.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace linrpe {
namespace feature_maps {

/// \brief FAVOR+ positive random features (Choromanski et al., *Rethinking Attention with Performers*, ICLR 2021).
///
///     x' = x · D^{-1/4},   φ(x) = M^{-1/2} exp(ω x' − ‖x'‖²/2)                     (M features)
///     hyperbolic:          φ(x) = (2M)^{-1/2} [exp(ω x' − ‖x'‖²/2), exp(−ω x' − ‖x'‖²/2)]  (2M features)
///
/// so that E[φ(q)·φ(k)] = exp(q·k/√D), the softmax kernel. ω (M × D) has iid N(0, 1) rows, or stacked
/// blocks of D orthogonal rows with chi(D) norms (lower variance). Cost O(N·M·D) per call, O(M·D) state
/// per independent draw.
///
/// Stabilization never looks at other tokens: query rows are shifted by their own maximum where a per-row
/// factor cancels (`sum` normalization; up to the eps term the output is unchanged). Key features are
/// always exact: ω_r·x' − ‖x'‖²/2 <= ‖ω_r‖²/2 for every input, so they cannot overflow whatever the key
/// norms (in float while ‖ω_r‖² < 170, i.e. for D up to about 128), and a key block is mapped the same
/// way whether it arrives alone (streaming, blocked kernels) or with the whole sequence.
class favor {
public:
    static constexpr bool is_positive = true;

    /// \param input_dim D, the width of the rows the map receives (R after SPE).
    /// \param features  M, the number of random features (>= 1).
    /// \param seed      key of the random stream: the same seed gives the same ω everywhere.
    /// \param orthogonal block-orthogonal rows (true) or iid rows (false).
    /// \param hyperbolic the symmetric variant with 2M features.
    /// \param heads     number of independent draws: 1 shares ω across heads, H gives head h its own ω.
    favor(index input_dim, index features, std::uint64_t seed = 0, bool orthogonal = true, bool hyperbolic = false,
          index heads = 1)
        : m_input_dim(input_dim), m_features(features), m_orthogonal(orthogonal), m_hyperbolic(hyperbolic),
          m_omega("favor", features, input_dim, heads)
    {
        detail::require_positive("favor input_dim", input_dim);
        detail::require_positive("favor features", features);
        detail::require_positive("favor heads", heads);
        redraw(seed);
    }

    /// Draws a new ω for every head from `seed`.
    void redraw(std::uint64_t seed) { m_omega.redraw(seed, m_orthogonal); }

    index output_dim(index /*input_dim*/) const { return m_hyperbolic ? 2 * m_features : m_features; }
    index input_dim() const { return m_input_dim; }
    index features() const { return m_features; }
    index heads() const { return m_omega.draws(); }
    /// ω of `head` (M × D), the shared draw for any head >= 0 when heads() == 1; throws linrpe::error naming
    /// `head` when out of range. Writable so that trained or externally drawn projections can be loaded;
    /// set_projection is the validated way, direct writes are checked before every call.
    row_matrix<double>& projection(index head = 0) { return m_omega.at(head); }
    const row_matrix<double>& projection(index head = 0) const { return m_omega.at(head); }
    /// Replaces ω of `head` (M × D, finite); throws linrpe::error naming the argument, changing nothing.
    void set_projection(index head, const row_matrix<double>& omega) { m_omega.set(head, omega); }

    /// Before a call: the input width, the head and its ω (shape (M, D), finite).
    void check_input(index input_dim, index head) const
    {
        if (input_dim != m_input_dim)
            detail::fail("favor input_dim (width of the rows favor receives: D, or R after a pre-feature encoding such as SPE)",
                         m_input_dim, input_dim);
        m_omega.check(head);
    }

    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context& ctx) const
    {
        const index n = x.rows(), m = m_features;
        if (n == 0) return;
        const S scale = static_cast<S>(std::pow(static_cast<double>(m_input_dim), -0.25));
        const row_matrix<S> omega = projection(ctx.head).template cast<S>();                // (M, D)
        const row_matrix<S> xs = x * scale;                                                  // (n, D)
        const vector<S> half_sq = S(0.5) * xs.rowwise().squaredNorm();                       // (n)
        auto lin = phi.leftCols(m);
        lin.noalias() = xs * omega.transpose();                                              // (n, M)
        if (m_hyperbolic) phi.rightCols(m) = -lin;
        phi.colwise() -= half_sq;                                                            // log φ up to a constant
        if (ctx.which == role::query && ctx.row_scale_cancels) phi.colwise() -= phi.rowwise().maxCoeff();
        const S norm = static_cast<S>(1.0 / std::sqrt(static_cast<double>(phi.cols())));
        phi = (phi.array().exp() * norm).matrix();
    }

    /// \brief VJP hook (docs/design.md §16): dx = J_φ(x)ᵀ dphi of the function apply() computes, given x and its
    /// features `phi` = apply(x, ctx).
    ///
    /// With l_r = ±ω_r·x' − ‖x'‖²/2 − shift and φ_r = c·exp(l_r): a = dphi ⊙ φ = ∂/∂l. The query shift
    /// (`sum`) is l_{r*} for the row's own argmax r*, so it adds −Σ_r a_r to a_{r*} (then Σ_r a_r = 0: the
    /// gradient of a row-scale-invariant function). Then dx' = (a₊ − a₋) ω − (Σ_r a_r) x', dx = D^{-1/4} dx'.
    /// One (N, M)·(M, D) GEMM; O(N·M) extra memory.
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& phi,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const feature_context& ctx) const
    {
        const index n = x.rows(), m = m_features;
        if (n == 0) return;
        const S scale = static_cast<S>(std::pow(static_cast<double>(m_input_dim), -0.25));
        row_matrix<S> a = (dphi.array() * phi.array()).matrix(); // (n, M')
        if (ctx.which == role::query && ctx.row_scale_cancels) {
            for (index i = 0; i < n; ++i) {
                index top = 0;
                phi.row(i).maxCoeff(&top); // exp is monotone: the argmax of l is the argmax of φ
                a(i, top) -= a.row(i).sum();
            }
        }
        const vector<S> total = a.rowwise().sum(); // (n)
        row_matrix<S> a_lin = a.leftCols(m);        // (n, M)
        if (m_hyperbolic) a_lin -= a.rightCols(m);
        const row_matrix<S> omega = projection(ctx.head).template cast<S>(); // (M, D)
        dx.noalias() = a_lin * omega;                                         // (n, D)
        dx -= (x.array().colwise() * (total.array() * scale)).matrix();
        dx *= scale;
    }

private:
    index m_input_dim, m_features;
    bool m_orthogonal, m_hyperbolic;
    detail::projection_set m_omega;
};

} // namespace feature_maps
} // namespace linrpe
