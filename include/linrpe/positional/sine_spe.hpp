#pragma once
/// \file
/// \brief positional::sine_spe: sinusoidal Stochastic Positional Encoding (sineSPE), optionally gated.

#include "../detail/lrpe_angles.hpp"
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

/// \brief One realization of positional::sine_spe: the noise behind the codes, in the reference layout.
///
///     noise       Z (H·D·2K, R): row (h·D + d)·2K + 2k is Z_{2k,·} (cos slot of sine k of head h, dimension d),
///                 row (h·D + d)·2K + 2k + 1 is Z_{2k+1,·} (its sin slot); iid N(0, 1) when drawn by redraw()
///     gate_noise  ε (H·D, R): row h·D + d, shared by queries and keys and by every position (used when gated)
///
/// The codes are Q̄'_d(m, r) = √(1 − g_d) (R·D)^{−1/4} Σ_k λ_k/√(2K) (cos(2π f_k m + θ_k) Z_{2k,r} +
/// sin(2π f_k m + θ_k) Z_{2k+1,r}) + √g_d (R·D)^{−1/4} ε_{d,r} (keys: θ = 0; ungated: g = 0), as in sine_spe.
/// The reference's Z[h, d, j, r] (shape (H, D, 2K, R)) flattened row-major is `noise`.
template <class Scalar>
struct sine_spe_realization {
    row_matrix<Scalar> noise;      ///< Z (H·D·2K, R)
    row_matrix<Scalar> gate_noise; ///< ε (H·D, R)
};

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
/// One realization (Z and ε) is fixed until redraw() or set_realization(); it serves every batch item, queries
/// and keys, the batched call and the decoder. realization() returns it as data (sine_spe_realization: layout
/// and formula there), set_realization() installs one drawn elsewhere (shapes and finiteness validated). Codes are evaluated analytically at any absolute position, so streaming
/// needs no buffer. encode_pre is one GEMM per block of b positions, (b, (2K+1)·D) × ((2K+1)·D, R):
/// O(N·K·D·R) time, O(b·K·D + K·D·R) extra memory; the (N, D, R) code tensor is never formed.
///
/// Parameters are in the reference layout (H, D, K) flattened to (H·D, K), row h·D + d. Load trained values
/// with the validated setters set_parameters and set_gate (shapes and finiteness checked on set, nothing
/// changed on failure); the data members stay public for compatibility and are checked at every call.
///
/// Training (docs/design.md §16): encode_pre_backward gives dx = Σ_r du[r] Q̄'_d(m, r) and, for the fixed
/// realization, the gradients of a_f, θ (queries only), a_λ and a_g (when gated), returned per head in
/// parameter_gradients (the parameters' shapes, in double). Per block of 64 rows it recomputes the block's
/// basis, one GEMM (b, R) × (R, (2K+1)·D) and O(b·K·D) sums: about twice encode_pre, no (N, D, R) codes.
/// Phases f·p are reduced exactly (two-product in double) for positions up to 2^53 − 1; check_positions
/// refuses later ones, whose position is no longer an exact double.
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
    /// The realization in use (a copy; sine_spe_realization documents the layout and the formula).
    sine_spe_realization<Scalar> realization() const { return {m_noise, m_gate_noise}; }
    /// \brief Installs a realization: noise (H·D·2K, R) and gate_noise (H·D, R) with the current R, finite;
    /// throws linrpe::error naming the member before changing anything. seed() keeps the last redraw's seed.
    void set_realization(const sine_spe_realization<Scalar>& r)
    {
        detail::spe_require_parameter("sine_spe realization noise (Z)", r.noise, m_heads * m_dim * 2 * m_sines, m_realizations);
        detail::spe_require_parameter("sine_spe realization gate_noise (epsilon)", r.gate_noise, m_heads * m_dim, m_realizations);
        m_noise = r.noise;
        m_gate_noise = r.gate_noise;
    }
    /// Changes R and redraws with the current seed (a realization set by hand is replaced).
    void set_realizations(index realizations)
    {
        detail::require_positive("sine_spe realizations (R)", realizations);
        m_realizations = realizations;
        redraw(m_seed);
    }

    /// \brief Replaces a_f, θ and a_λ, each (H·D, K) in the reference layout; throws linrpe::error naming the
    /// argument on a shape mismatch or a non-finite entry, before changing anything.
    template <class F, class T, class L>
    void set_parameters(const Eigen::MatrixBase<F>& a_f, const Eigen::MatrixBase<T>& theta, const Eigen::MatrixBase<L>& a_lambda)
    {
        detail::spe_require_parameter("sine_spe freqs (a_f)", a_f, m_heads * m_dim, m_sines);
        detail::spe_require_parameter("sine_spe offsets (theta)", theta, m_heads * m_dim, m_sines);
        detail::spe_require_parameter("sine_spe gains (a_lambda)", a_lambda, m_heads * m_dim, m_sines);
        freqs = a_f.template cast<Scalar>();
        offsets = theta.template cast<Scalar>();
        gains = a_lambda.template cast<Scalar>();
    }
    /// Replaces the gate logits a_g (H, D) and turns the gate on; validated like set_parameters.
    template <class G>
    void set_gate(const Eigen::MatrixBase<G>& logits)
    {
        detail::spe_set_gate("sine_spe gate (logits a_g)", logits, m_heads, m_dim, gate, gated);
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
    /// Positions first_position .. + count − 1 must lie in [0, 2^53 − 1] (exact phases, see the class comment).
    void check_positions(index first_position, index count) const { detail::check_angle_positions(first_position, count); }

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
        const head_phases hp = phases(head, which);
        const index block = std::min<index>(n, block_rows);
        row_matrix<S> a(block, width); // (b, (2K+1)·D): [x_d cos | x_d sin | x_d (gate)]
        for (index i0 = 0; i0 < n; i0 += block) {
            const index rows = std::min(block, n - i0);
            for_each_row(hp, first_position + i0, rows, [&](index i, const double* c, const double* s) {
                S* row = a.row(i).data();
                for (index d = 0; d < m_dim; ++d) {
                    const double xv = static_cast<double>(x(i0 + i, d));
                    for (index k = 0; k < m_sines; ++k) {
                        const index j = d * m_sines + k;
                        row[j] = static_cast<S>(xv * c[j]);
                        row[dk + j] = static_cast<S>(xv * s[j]);
                    }
                    if (gated) row[2 * dk + d] = x(i0 + i, d);
                }
            });
            out.middleRows(i0, rows).noalias() = a.topRows(rows) * z; // (rows, R)
        }
    }

    // ---- training (docs/design.md §16) ----------------------------------------------------------------------

    /// ∂L/∂ of the learnable parameters, with their shapes, in double; gate stays 0 while not gated.
    struct parameter_gradients {
        row_matrix<double> freqs;   ///< ∂L/∂a_f (H·D, K)
        row_matrix<double> offsets; ///< ∂L/∂θ (H·D, K)
        row_matrix<double> gains;   ///< ∂L/∂a_λ (H·D, K)
        row_matrix<double> gate;    ///< ∂L/∂a_g (H, D)
    };
    parameter_gradients make_parameter_gradients() const
    {
        const index rows = m_heads * m_dim;
        return {row_matrix<double>::Zero(rows, m_sines), row_matrix<double>::Zero(rows, m_sines),
                row_matrix<double>::Zero(rows, m_sines), row_matrix<double>::Zero(m_heads, m_dim)};
    }
    /// One head's flat gradient: [a_f (D, K) | θ (D, K) | a_λ (D, K) | a_g (D)], each row-major.
    index gradient_size() const { return 3 * m_dim * m_sines + m_dim; }
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        using map = Eigen::Map<const row_matrix<double>>;
        const index dk = m_dim * m_sines;
        pg.freqs.middleRows(head * m_dim, m_dim) += map(flat, m_dim, m_sines);
        pg.offsets.middleRows(head * m_dim, m_dim) += map(flat + dk, m_dim, m_sines);
        pg.gains.middleRows(head * m_dim, m_dim) += map(flat + 2 * dk, m_dim, m_sines);
        pg.gate.row(head) += map(flat + 3 * dk, 1, m_dim);
    }
    /// Throws linrpe::error naming the member whose shape differs from make_parameter_gradients().
    void validate_gradients(const parameter_gradients& pg) const
    {
        detail::spe_require_shape("sine_spe parameter_gradients.freqs", pg.freqs, m_heads * m_dim, m_sines);
        detail::spe_require_shape("sine_spe parameter_gradients.offsets", pg.offsets, m_heads * m_dim, m_sines);
        detail::spe_require_shape("sine_spe parameter_gradients.gains", pg.gains, m_heads * m_dim, m_sines);
        detail::spe_require_shape("sine_spe parameter_gradients.gate", pg.gate, m_heads, m_dim);
    }

    /// \brief VJP of encode_pre: dx (n, D) = Σ_r du[·, r] Q̄'_d(m, r) (K̄' for keys), and, when grad is not
    /// null, ADDS head `head`'s parameter gradient for this realization to grad[0, gradient_size()).
    ///
    /// With A = [x_d cos φ | x_d sin φ | x_d] (φ = 2π f m + θ), the codes' matrix diag(w) Y (Y the scaled noise,
    /// w = √(1 − g)·λ on the sine rows and √g on the gate rows) and dB = du Yᵀ: dA = dB diag(w);
    /// ∂L/∂φ = x (dA_s cos φ − dA_c sin φ) gives θ (sum over m) and f (sum of 2π m ∂L/∂φ), then a_f by
    /// σ'(a_f)/2; Σ_m A ⊙ dB gives λ (times √(1 − g), then σ(a_λ) = softplus') and the gate's two halves.
    template <class S>
    void encode_pre_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& du,
                             Eigen::Ref<row_matrix<S>> dx, index first_position, index head, role which, double* grad) const
    {
        const index n = x.rows();
        if (n == 0) return;
        const index dk = m_dim * m_sines, width = 2 * dk + (gated ? m_dim : 0);
        const row_matrix<S> y = unit_noise<S>(head); // (width, R)
        std::vector<double> w(static_cast<std::size_t>(width)), lambda(static_cast<std::size_t>(dk));
        for (index d = 0; d < m_dim; ++d) {
            double positional, positionless;
            detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
            for (index k = 0; k < m_sines; ++k) {
                const index j = d * m_sines + k;
                lambda[static_cast<std::size_t>(j)] = detail::spe_softplus(static_cast<double>(gains(head * m_dim + d, k)));
                w[static_cast<std::size_t>(j)] = w[static_cast<std::size_t>(dk + j)] = std::sqrt(positional) * lambda[static_cast<std::size_t>(j)];
            }
            if (gated) w[static_cast<std::size_t>(2 * dk + d)] = std::sqrt(positionless);
        }
        const head_phases hp = phases(head, which);
        // Per-entry sums over the rows: ∂L/∂φ and 2π m ∂L/∂φ per (d, k), Σ_m A ⊙ dB per column.
        std::vector<double> dphase(static_cast<std::size_t>(dk), 0.0), dfreq(dphase.size(), 0.0),
            ab(static_cast<std::size_t>(width), 0.0);
        const index block = std::min<index>(n, block_rows);
        row_matrix<S> db(block, width); // (b, (2K+1)·D)
        for (index i0 = 0; i0 < n; i0 += block) {
            const index rows = std::min(block, n - i0);
            db.topRows(rows).noalias() = du.middleRows(i0, rows) * y.transpose(); // (rows, width)
            for_each_row(hp, first_position + i0, rows, [&](index i, const double* c, const double* s) {
                const double position = static_cast<double>(first_position + i0 + i);
                const S* b = db.row(i).data();
                for (index d = 0; d < m_dim; ++d) {
                    const double xv = static_cast<double>(x(i0 + i, d));
                    double sum = 0;
                    for (index k = 0; k < m_sines; ++k) {
                        const index j = d * m_sines + k;
                        const auto uj = static_cast<std::size_t>(j), us = static_cast<std::size_t>(dk + j);
                        const double bc = static_cast<double>(b[j]), bs = static_cast<double>(b[dk + j]);
                        const double gc = w[uj] * bc, gs = w[us] * bs; // dA of the cos and sin columns
                        sum += gc * c[j] + gs * s[j];
                        if (!grad) continue;
                        const double t = xv * (gs * c[j] - gc * s[j]); // ∂L/∂φ
                        dphase[uj] += t;
                        dfreq[uj] += two_pi * position * t;
                        ab[uj] += xv * c[j] * bc;
                        ab[us] += xv * s[j] * bs;
                    }
                    if (gated) {
                        const double bg = static_cast<double>(b[2 * dk + d]);
                        sum += w[static_cast<std::size_t>(2 * dk + d)] * bg;
                        if (grad) ab[static_cast<std::size_t>(2 * dk + d)] += xv * bg;
                    }
                    dx(i0 + i, d) = static_cast<S>(sum);
                }
            });
        }
        if (!grad) return;
        for (index d = 0; d < m_dim; ++d) {
            double positional, positionless, along_codes = 0;
            detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
            for (index k = 0; k < m_sines; ++k) {
                const index j = d * m_sines + k;
                const auto uj = static_cast<std::size_t>(j);
                const double af = static_cast<double>(freqs(head * m_dim + d, k));
                const double al = static_cast<double>(gains(head * m_dim + d, k));
                const double both = ab[uj] + ab[static_cast<std::size_t>(dk + j)]; // ⟨∂L/∂(λ-scaled code), unit code⟩
                grad[j] += dfreq[uj] * 0.5 * detail::spe_sigmoid(af) * detail::spe_sigmoid(-af);
                if (which == role::query) grad[dk + j] += dphase[uj];
                grad[2 * dk + j] += std::sqrt(positional) * both * detail::spe_sigmoid(al);
                along_codes += lambda[uj] * both;
            }
            if (gated)
                grad[3 * dk + d] += detail::spe_gate_gradient(static_cast<double>(gate(head, d)), along_codes,
                                                              ab[static_cast<std::size_t>(2 * dk + d)]);
        }
    }

    /// \brief The code Q̄'_d (which = query) or K̄'_d (key) of `head` at positions first_position..+count−1,
    /// as (count, R), scale and gate included: encode_pre of the unit vector e_d. For diagnostics and tests.
    matrix code(role which, index head, index d, index first_position, index count) const
    {
        check_entry(head, d);
        detail::require_non_negative("count", count);
        check_positions(first_position, count);
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

    // f·p mod 1 in [−1/2, 1/2]: f·p = hi + lo exactly (fma, |p| < 2^53) and the fractional part of hi is exact,
    // so the phase errs by <= 2^−54 turns at any position (a plain f·p − floor(f·p) loses ulp(f·p): 1e-4 turns at 2^40).
    static double reduced(double f, index p)
    {
        const double pd = static_cast<double>(p);
        const double hi = f * pd, lo = std::fma(f, pd, -hi);
        return detail::centered_fraction(detail::centered_fraction(hi) + lo);
    }

    // Per (d, k) of one head and role, index d·K + k: frequency f, phase (θ for queries, 0 for keys) and the
    // rotation by one position.
    struct head_phases {
        std::vector<double> freq, phase, step_c, step_s;
    };
    head_phases phases(index head, role which) const
    {
        const auto dk = static_cast<std::size_t>(m_dim * m_sines);
        head_phases hp{std::vector<double>(dk), std::vector<double>(dk), std::vector<double>(dk), std::vector<double>(dk)};
        for (index d = 0; d < m_dim; ++d)
            for (index k = 0; k < m_sines; ++k) {
                const auto i = static_cast<std::size_t>(d * m_sines + k);
                hp.freq[i] = 0.5 * detail::spe_sigmoid(static_cast<double>(freqs(head * m_dim + d, k)));
                hp.phase[i] = which == role::query ? static_cast<double>(offsets(head * m_dim + d, k)) : 0.0;
                hp.step_c[i] = std::cos(two_pi * hp.freq[i]);
                hp.step_s[i] = std::sin(two_pi * hp.freq[i]);
            }
        return hp;
    }
    // row_fn(i, cos φ, sin φ) for rows i = 0..rows−1 at positions first + i, φ indexed d·K + k. The block starts
    // from exact phases (f·p reduced mod 1 in double), then rotates position by position: the recurrence
    // drifts by O(block·eps_double), far below float or double rounding of the GEMM.
    template <class F>
    void for_each_row(const head_phases& hp, index first, index rows, F&& row_fn) const
    {
        const std::size_t count = hp.freq.size();
        std::vector<double> c(count), s(count);
        for (std::size_t i = 0; i < count; ++i) {
            const double angle = two_pi * reduced(hp.freq[i], first) + hp.phase[i];
            c[i] = std::cos(angle);
            s[i] = std::sin(angle);
        }
        for (index i = 0; i < rows; ++i) {
            row_fn(i, c.data(), s.data());
            for (std::size_t j = 0; j < count; ++j) {
                const double cn = c[j] * hp.step_c[j] - s[j] * hp.step_s[j];
                s[j] = s[j] * hp.step_c[j] + c[j] * hp.step_s[j];
                c[j] = cn;
            }
        }
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

    // scaled_noise without the learned factors: rows d·K + k and D·K + d·K + k are (R·D)^{−1/4}/√(2K) Z_{d,2k|2k+1},
    // rows 2·D·K + d are (R·D)^{−1/4} ε_d; scaled_noise = diag(w) of it (w: √(1 − g)·λ, √g).
    template <class S>
    row_matrix<S> unit_noise(index head) const
    {
        const index dk = m_dim * m_sines, slots = 2 * m_sines;
        const double scale = detail::spe_code_scale(m_realizations, m_dim), base = scale / std::sqrt(static_cast<double>(slots));
        row_matrix<S> y(2 * dk + (gated ? m_dim : 0), m_realizations);
        for (index d = 0; d < m_dim; ++d) {
            for (index k = 0; k < m_sines; ++k) {
                const index src = (head * m_dim + d) * slots + 2 * k;
                y.row(d * m_sines + k) = (m_noise.row(src).template cast<double>() * base).template cast<S>();
                y.row(dk + d * m_sines + k) = (m_noise.row(src + 1).template cast<double>() * base).template cast<S>();
            }
            if (gated) y.row(2 * dk + d) = (m_gate_noise.row(head * m_dim + d).template cast<double>() * scale).template cast<S>();
        }
        return y;
    }

    index m_heads, m_dim, m_sines, m_realizations;
    std::uint64_t m_seed = 0;
    matrix m_noise;      // (H·D·2K, R): Z, row (h·D + d)·2K + j, j = 2k (cos slot) or 2k + 1 (sin slot)
    matrix m_gate_noise; // (H·D, R): ε
};

} // namespace positional
} // namespace linrpe
