#pragma once
/// \file
/// \brief positional::sine_spe: sinusoidal Stochastic Positional Encoding (sineSPE), optionally gated.

#include "../detail/spe_common.hpp"
#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace linrpe {
namespace positional {

/// \brief sineSPE (Liutkus, Cífka, Wu, Şimşekli, Yang, Richard, *Relative Positional Encoding for
/// Transformers with Linear Complexity*, ICML 2021): a pre-feature stage that mixes each query/key into
/// R = `realizations` random features whose inner products carry a learned relative kernel per dimension.
///
/// Per head and dimension d, with K sinusoids, f = σ(a_f)/2, λ = softplus(a_λ), phase θ on queries only:
///
///     Q̄_d(m, r) = (R·D)^{−1/4} Σ_k λ_k/√(2K) (cos(2π f_k m + θ_k) Z_{2k,r} + sin(2π f_k m + θ_k) Z_{2k+1,r})
///     K̄_d(n, r) = the same with θ = 0 and the same Z ~ iid N(0, 1)
///     q̂_m[r] = Σ_d q_m[d] Q̄_d(m, r),   k̂_n[r] = Σ_d k_n[d] K̄_d(n, r)
///     E[q̂_m·k̂_n]/√R = (1/√D) Σ_d q_m[d] k_n[d] P_d(m − n),   P_d(δ) = (1/2K) Σ_k λ_k² cos(2π f_k δ + θ_k)
///
/// With the gate (g = σ(a_g) per (head, d), ε ~ N(0, 1) shared by queries and keys and constant over
/// positions): Q̄' = √(1 − g) Q̄ + √g (R·D)^{−1/4} ε, and the kernel becomes (1 − g) P + g.
/// The feature map that follows sees R-wide rows (feature_maps::favor(R, M) gives its R^{−1/2} temperature).
///
/// One realization (Z and ε) is fixed until redraw(); it serves every batch item, queries and keys, the
/// batched call and the decoder. Codes are evaluated analytically at any absolute position, so streaming
/// needs no buffer. encode_pre is one GEMM per block of b positions, (b, (2K+1)·D) × ((2K+1)·D, R):
/// O(N·K·D·R) time, O(b·K·D + K·D·R) extra memory; the (N, D, R) code tensor is never formed.
///
/// Parameters are public data in the reference layout (H, D, K) flattened to (H·D, K), row h·D + d, so that
/// trained values can be loaded; they are checked for finiteness at every call.
/// \tparam Scalar float or double (parameters, noise and codes; phases are always computed in double).
template <class Scalar = float>
class sine_spe {
public:
    using scalar_type = Scalar;
    using matrix = row_matrix<Scalar>;
    static constexpr bool has_pre_feature = true;
    static constexpr bool has_post_feature = false;
    static constexpr bool has_mixing = false;

    /// \param heads H, \param dim D (query/key width), \param sines K, \param realizations R.
    /// \param seed  initializes the parameters (reference initialization) and draws the first realization.
    /// \param with_gate adds the gate with a_g ~ N(0, 1).
    sine_spe(index heads, index dim, index sines, index realizations, std::uint64_t seed = 0, bool with_gate = false)
        : gated(with_gate), m_heads(heads), m_dim(dim), m_sines(sines), m_realizations(realizations)
    {
        detail::require_positive("sine_spe heads", heads);
        detail::require_positive("sine_spe dim", dim);
        detail::require_positive("sine_spe sines (K)", sines);
        detail::require_positive("sine_spe realizations (R)", realizations);
        initialize_parameters(seed);
        redraw(seed);
    }

    /// a_f: frequencies f = σ(a_f)/2 in cycles per position; init N(0, 1) − 4 (long periods).
    matrix freqs;
    /// θ: query-side phases in radians; init N(0, 1).
    matrix offsets;
    /// a_λ: gains λ = softplus(a_λ); init 2 G/√‖G_{h,d,:}‖ with G ~ N(0, 1).
    matrix gains;
    /// Whether the gate is applied.
    bool gated;
    /// a_g (H, D): gate g = σ(a_g) (weight of the positionless part); init N(0, 1).
    matrix gate;

    /// Draws a new realization (code noise Z and gate noise ε) from `seed`; the parameters are kept.
    void redraw(std::uint64_t seed)
    {
        m_seed = seed;
        const index slots = 2 * m_sines;
        m_noise.resize(m_heads * m_dim * slots, m_realizations);
        std::vector<Scalar> column(static_cast<std::size_t>(slots));
        for (index h = 0; h < m_heads; ++h)
            for (index d = 0; d < m_dim; ++d)
                for (index r = 0; r < m_realizations; ++r) {
                    random::philox_stream(seed, random::purpose::spe_noise, static_cast<std::uint32_t>(h),
                                          static_cast<std::uint32_t>(d), static_cast<std::uint32_t>(r))
                        .fill_normal(0, column.data(), slots);
                    for (index j = 0; j < slots; ++j) m_noise((h * m_dim + d) * slots + j, r) = column[static_cast<std::size_t>(j)];
                }
        m_gate_noise = detail::spe_gate_noise<Scalar>(seed, m_heads, m_dim, m_realizations);
    }
    /// Changes R and redraws with the current seed.
    void set_realizations(index realizations)
    {
        detail::require_positive("sine_spe realizations (R)", realizations);
        m_realizations = realizations;
        redraw(m_seed);
    }

    std::uint64_t seed() const { return m_seed; }
    index heads() const { return m_heads; }
    index dim() const { return m_dim; }
    index sines() const { return m_sines; }
    index realizations() const { return m_realizations; }

    /// \brief The closed-form kernel E[Q̃_d(m) K̃_d(m − δ)] = P_d(δ), gate applied: (1 − g) P_d(δ) + g.
    double expected_kernel(index head, index d, index delta) const
    {
        check_entry(head, d);
        double p = 0;
        for (index k = 0; k < m_sines; ++k) {
            const double lam = detail::spe_softplus(static_cast<double>(gains(head * m_dim + d, k)));
            const double f = 0.5 * detail::spe_sigmoid(static_cast<double>(freqs(head * m_dim + d, k)));
            p += lam * lam * std::cos(two_pi * reduced(f, delta) + static_cast<double>(offsets(head * m_dim + d, k)));
        }
        p /= static_cast<double>(2 * m_sines);
        double positional, positionless;
        detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
        return positional * p + positionless;
    }
    /// \brief Variance σ_d² of one unit code entry, E[Q̃_d(m)²] = E[K̃_d(m)²] = (1/2K) Σ_k λ_k² (gated:
    /// (1 − g) σ² + g); with expected_kernel it gives the exact variance of q̂·k̂ (Isserlis).
    double code_variance(index head, index d, role /*which*/ = role::query) const
    {
        check_entry(head, d);
        double s = 0;
        for (index k = 0; k < m_sines; ++k) {
            const double lam = detail::spe_softplus(static_cast<double>(gains(head * m_dim + d, k)));
            s += lam * lam;
        }
        s /= static_cast<double>(2 * m_sines);
        double positional, positionless;
        detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
        return positional * s + positionless;
    }

    /// SPE only changes the input of φ: scores φ(q̂)·φ(k̂) are non-negative whenever φ is.
    bool preserves_positivity(index /*max_offset*/) const { return true; }
    /// φ receives R-wide rows.
    index pre_output_dim(index /*input_dim*/) const { return m_realizations; }

    /// Throws linrpe::error for a width other than D, a head out of range or non-finite parameters of `head`.
    void check_input(index input_dim, index head) const
    {
        detail::spe_check_common("sine_spe", input_dim, m_dim, head, m_heads, gated, gate);
        check_shape("sine_spe freqs", freqs);
        check_shape("sine_spe offsets", offsets);
        check_shape("sine_spe gains", gains);
        detail::require_all_finite("sine_spe freqs", freqs.middleRows(head * m_dim, m_dim));
        detail::require_all_finite("sine_spe offsets", offsets.middleRows(head * m_dim, m_dim));
        detail::require_all_finite("sine_spe gains", gains.middleRows(head * m_dim, m_dim));
    }

    /// \brief out (n, R) = q̂ (queries) or k̂ (keys) of the rows x (n, D) at positions first_position...
    /// Preconditions (checked by check_input through the core): x.cols() == D, out is (n, R), head valid.
    template <class S>
    void encode_pre(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> out, index first_position,
                    index head, role which) const
    {
        const index n = x.rows();
        if (n == 0) return;
        const index dk = m_dim * m_sines;
        const index width = 2 * dk + (gated ? m_dim : 0); // columns of the left GEMM operand
        const row_matrix<S> z = scaled_noise<S>(head);     // (width, R)

        // Per (d, k): the rotation by one position, and the query-side phase.
        std::vector<double> step_c(static_cast<std::size_t>(dk)), step_s(step_c.size()), freq(step_c.size()),
            phase(step_c.size()), c(step_c.size()), s(step_c.size());
        for (index d = 0; d < m_dim; ++d)
            for (index k = 0; k < m_sines; ++k) {
                const auto i = static_cast<std::size_t>(d * m_sines + k);
                freq[i] = 0.5 * detail::spe_sigmoid(static_cast<double>(freqs(head * m_dim + d, k)));
                phase[i] = which == role::query ? static_cast<double>(offsets(head * m_dim + d, k)) : 0.0;
                step_c[i] = std::cos(two_pi * freq[i]);
                step_s[i] = std::sin(two_pi * freq[i]);
            }

        const index block = std::min<index>(n, block_rows);
        row_matrix<S> a(block, width); // (b, (2K+1)·D): [x_d cos | x_d sin | x_d (gate)]
        for (index i0 = 0; i0 < n; i0 += block) {
            const index rows = std::min(block, n - i0);
            // Each block starts from exact phases (f·p reduced mod 1 in double), then rotates position by
            // position: the recurrence drifts by O(block·eps_double), far below float or double rounding of the GEMM.
            for (std::size_t i = 0; i < c.size(); ++i) {
                const double angle = two_pi * reduced(freq[i], first_position + i0) + phase[i];
                c[i] = std::cos(angle);
                s[i] = std::sin(angle);
            }
            for (index i = 0; i < rows; ++i) {
                S* row = a.row(i).data();
                for (index d = 0; d < m_dim; ++d) {
                    const double xv = static_cast<double>(x(i0 + i, d));
                    for (index k = 0; k < m_sines; ++k) {
                        const auto j = static_cast<std::size_t>(d * m_sines + k);
                        row[j] = static_cast<S>(xv * c[j]);
                        row[dk + static_cast<index>(j)] = static_cast<S>(xv * s[j]);
                    }
                    if (gated) row[2 * dk + d] = x(i0 + i, d);
                }
                for (std::size_t j = 0; j < c.size(); ++j) {
                    const double cn = c[j] * step_c[j] - s[j] * step_s[j];
                    s[j] = s[j] * step_c[j] + c[j] * step_s[j];
                    c[j] = cn;
                }
            }
            out.middleRows(i0, rows).noalias() = a.topRows(rows) * z; // (rows, R)
        }
    }

    /// \brief The code Q̄'_d (which = query) or K̄'_d (key) of `head` at positions first_position..+count−1,
    /// as (count, R), scale and gate included: encode_pre of the unit vector e_d. For diagnostics and tests.
    matrix code(role which, index head, index d, index first_position, index count) const
    {
        check_entry(head, d);
        detail::require_non_negative("first_position", first_position);
        detail::require_non_negative("count", count);
        matrix unit = matrix::Zero(count, m_dim);
        unit.col(d).setOnes();
        matrix out(count, m_realizations);
        encode_pre<Scalar>(unit, out, first_position, head, which);
        return out;
    }

private:
    static constexpr double two_pi = 6.283185307179586476925286766559;
    // Rows per GEMM block: (64, (2K+1)·D) stays in L2 for K ≤ 10, D ≤ 64 and keeps the GEMM efficient.
    static constexpr index block_rows = 64;

    // f·p mod 1, in double, accurate to ~1e-16 at any position p < 2^53: the rounded product alone would
    // carry ulp(f·p) (1e-4 at p = 2^40), so a block's phase would depend on where the block starts.
    static double reduced(double f, index p)
    {
        const double pd = static_cast<double>(p);
        const double hi = f * pd, lo = std::fma(f, pd, -hi); // hi + lo == f·p exactly
        const double r = (hi - std::floor(hi)) + lo;         // hi − floor(hi) is exact
        return r - std::floor(r);
    }

    void check_entry(index head, index d) const
    {
        if (head < 0 || head >= m_heads) detail::fail("head", detail::concat("a head index in [0, ", m_heads, ") of sine_spe"), head);
        if (d < 0 || d >= m_dim) detail::fail("dim", detail::concat("a dimension in [0, ", m_dim, ")"), d);
    }
    void check_shape(const char* name, const matrix& m) const
    {
        if (m.rows() != m_heads * m_dim || m.cols() != m_sines)
            detail::fail(name, detail::shape(m_heads * m_dim, m_sines), detail::shape(m.rows(), m.cols()));
    }

    void initialize_parameters(std::uint64_t seed)
    {
        const index rows = m_heads * m_dim, k = m_sines;
        freqs.resize(rows, k);
        offsets.resize(rows, k);
        gains.resize(rows, k);
        for (index h = 0; h < m_heads; ++h) {
            const auto fill = [&](matrix& m, detail::spe_tensor t) {
                detail::spe_parameter_stream(seed, t, h).fill_normal(0, m.row(h * m_dim).data(), m_dim * k);
            };
            fill(freqs, detail::spe_tensor::sine_freqs);
            fill(offsets, detail::spe_tensor::sine_offsets);
            fill(gains, detail::spe_tensor::sine_gains);
        }
        freqs.array() -= Scalar(4);
        // a_λ = 2 G / √‖G_{h,d,:}‖ (the reference divides by the square root of the norm over the K sines).
        for (index row = 0; row < rows; ++row) {
            const double norm = gains.row(row).template cast<double>().norm();
            if (norm > 0) gains.row(row) = (gains.row(row).template cast<double>() * (2.0 / std::sqrt(norm))).template cast<Scalar>();
        }
        gate.resize(m_heads, m_dim);
        for (index h = 0; h < m_heads; ++h)
            detail::spe_parameter_stream(seed, detail::spe_tensor::gate, h).fill_normal(0, gate.row(h).data(), m_dim);
    }

    // Right GEMM operand of `head`, ((2K+1)·D, R): rows d·K + k (cos) and D·K + d·K + k (sin) are
    // √(1−g_d) (R·D)^{−1/4} λ_dk/√(2K) Z_{d,2k|2k+1}; rows 2·D·K + d are √g_d (R·D)^{−1/4} ε_d. Rebuilt per call
    // from the public parameters (O(K·D·R), the cost of one decoded token) so that edits take effect at once.
    template <class S>
    row_matrix<S> scaled_noise(index head) const
    {
        const index dk = m_dim * m_sines, slots = 2 * m_sines;
        const double scale = detail::spe_code_scale(m_realizations, m_dim);
        row_matrix<S> z(2 * dk + (gated ? m_dim : 0), m_realizations);
        for (index d = 0; d < m_dim; ++d) {
            double positional, positionless;
            detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
            const double base = std::sqrt(positional) * scale / std::sqrt(static_cast<double>(slots));
            for (index k = 0; k < m_sines; ++k) {
                const double lam = detail::spe_softplus(static_cast<double>(gains(head * m_dim + d, k)));
                const index src = (head * m_dim + d) * slots + 2 * k;
                z.row(d * m_sines + k) = (m_noise.row(src).template cast<double>() * (base * lam)).template cast<S>();
                z.row(dk + d * m_sines + k) = (m_noise.row(src + 1).template cast<double>() * (base * lam)).template cast<S>();
            }
            if (gated)
                z.row(2 * dk + d) =
                    (m_gate_noise.row(head * m_dim + d).template cast<double>() * (std::sqrt(positionless) * scale)).template cast<S>();
        }
        return z;
    }

    index m_heads, m_dim, m_sines, m_realizations;
    std::uint64_t m_seed = 0;
    matrix m_noise;      // (H·D·2K, R): Z, row (h·D + d)·2K + j, j = 2k (cos slot) or 2k + 1 (sin slot)
    matrix m_gate_noise; // (H·D, R): ε
};

} // namespace positional
} // namespace linrpe
