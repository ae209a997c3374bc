#pragma once
/// \file
/// \brief positional::conv_spe: convolutional Stochastic Positional Encoding (convSPE), optionally gated.

#include "../detail/spe_common.hpp"
#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/FFT>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <vector>

namespace linrpe {
namespace positional {

/// How conv_spe correlates noise with its filters: by cost (`automatic`), directly, or by FFT.
enum class conv_algorithm { automatic, direct, fft };

/// \brief One realization of positional::conv_spe: the white-noise field Z behind the codes and the gate's ε.
///
///     noise_seed  the key of the counter-based field: Z_{h,d,r}(t) is normal t of the Philox stream
///                 (noise_seed, purpose::spe_noise, h, d, r), t = 0, 1, … the absolute noise position, drawn by
///                 detail::spe_fill_noise (block t/4 of Philox4x32-10; words (0, 1) give normals 4b, 4b + 1 and
///                 words (2, 3) give 4b + 2, 4b + 3 by Box–Muller on u = (⌊w/2⁹⌋ + ½)·2⁻²³)
///     noise       empty: the field above; otherwise an explicit finite window (H·D·R, T), row (h·D + d)·R + r,
///                 column t = Z_{h,d,r}(t), which then replaces the field (positions m <= T − W only)
///     gate_noise  ε (H·D, R): row h·D + d, shared by queries and keys and by every position (used when gated)
///
/// The codes are Q̄'_d(m, r) = √(1 − g_d) (R·D)^{−1/4} Σ_{j<W} φ_Q[d, j] Z_{d,r}(m + j) + √g_d (R·D)^{−1/4} ε_{d,r}
/// (keys: φ_K; ungated: g = 0), as in conv_spe. Why a seed and not a tensor: the field has a sample at every
/// position a stream may reach (up to 2^63), so no finite tensor holds it; its key is an exact O(1) description
/// that any block of positions, thread count or decoder step evaluates the same. The explicit window is for
/// noise drawn elsewhere: the reference's Z[r, h·D + d, t] (shape (R, H·D, N + 4W), crop offset W) is
/// noise((h·D + d)·R + r, t') = Z[r, h·D + d, W + t'], T = N + W − 1 for N positions. It costs H·D·R·T values.
template <class Scalar>
struct conv_spe_realization {
    std::uint64_t noise_seed = 0;  ///< key of the noise field (used when `noise` is empty)
    row_matrix<Scalar> noise;      ///< empty, or the explicit window (H·D·R, T >= W)
    row_matrix<Scalar> gate_noise; ///< ε (H·D, R)
};

/// \brief convSPE (Liutkus, Cífka, Wu, Şimşekli, Yang, Richard, *Relative Positional Encoding for
/// Transformers with Linear Complexity*, ICML 2021): codes are valid cross-correlations of white noise with
/// learned filters φ_Q, φ_K of W taps per (head, dimension).
///
///     Q̄_d(m, r) = (R·D)^{−1/4} Σ_{j<W} φ_Q[d, j] Z_{d,r}(m + j),   K̄_d(n, r) = the same with φ_K and the same Z
///     q̂_m[r] = Σ_d q_m[d] Q̄_d(m, r),   k̂_n[r] = Σ_d k_n[d] K̄_d(n, r)
///     E[q̂_m·k̂_n]/√R = (1/√D) Σ_d q_m[d] k_n[d] P_d(m − n),   P_d(δ) = Σ_j φ_Q[d, j] φ_K[d, j + δ]  (0 for |δ| ≥ W)
///
/// Gate as in sine_spe: Q̄' = √(1 − g) Q̄ + √g (R·D)^{−1/4} ε, kernel (1 − g) P + g.
///
/// The noise Z_{d,r}(t) is the counter-based stream (seed, spe_noise, head, d, r) at index t (the absolute
/// noise position), so any block of positions is produced on its own: batched calls, decoder steps and
/// any thread count see the same realization, fixed until redraw() or set_realization() (realization() returns
/// it as data: conv_spe_realization documents the layout, the formula and an explicit finite-window option). Per block of b positions and per d,
/// the b + W − 1 noise samples of the R realizations are drawn and correlated with diag(x_d)·φ: for W < 16 by
/// shifted axpys, for 16 <= W < 768 as GEMMs with banded Toeplitz tiles (t, t + W − 1), t = min(W, 64), and
/// for W >= 768 by FFT (O(L log L) per realization, L ≥ b + W − 1). Time O(N·D·R·W) (FFT: O(N·D·R·log L))
/// plus N·D·R normals per role; extra memory O((b + W)·R); the (N, D, R) code tensor is never formed.
///
/// Parameters are in the reference layout (H, D, W) flattened to (H·D, W), row h·D + d. Load trained values
/// with the validated setters set_filters and set_gate (shapes and finiteness checked on set, nothing
/// changed on failure); the data members stay public for compatibility and are checked at every call.
///
/// Training (docs/design.md §16): encode_pre_backward gives dx = Σ_r du[r] Q̄'_d(m, r) and, for the fixed
/// realization, the gradients of φ_Q (from query rows), φ_K (key rows) and a_g (when gated) in
/// parameter_gradients. Per block and d it forms H[i, j] = Σ_r du[i, r] Z_{d,r}(m_i + j) (b, W) by the same
/// banded GEMM tiles as the forward (shifted products for W < 16); then dx = c·Hφ and ∂L/∂φ = c·xᵀH: about one
/// encode_pre of time (the FFT path is not used backward: O(N·D·R·W) also for W >= 768), O(b·W) extra memory.
/// \tparam Scalar float or double (filters, noise and codes).
template <class Scalar = float>
class conv_spe {
public:
    using scalar_type = Scalar;
    using matrix = row_matrix<Scalar>;
    static constexpr bool has_pre_feature = true;
    static constexpr bool has_post_feature = false;
    static constexpr bool has_mixing = false;

    /// \param heads H, \param dim D, \param width W (filter taps), \param realizations R.
    /// \param seed initializes the filters (iid U[0, 1)/√(W/2), the reference initialization) and the gate
    /// (N(0, 1)), and selects the first realization. \param with_gate adds the gate.
    conv_spe(index heads, index dim, index width, index realizations, std::uint64_t seed = 0, bool with_gate = false)
        : gated(with_gate), m_heads(heads), m_dim(dim), m_width(width), m_realizations(realizations)
    {
        detail::require_positive("conv_spe heads", heads);
        detail::require_positive("conv_spe dim", dim);
        detail::require_positive("conv_spe width (W)", width);
        detail::require_positive("conv_spe realizations (R)", realizations);
        initialize_parameters(seed);
        redraw(seed);
    }

    /// φ_Q: the filters that make query codes; (H·D, W).
    matrix query_filter;
    /// φ_K: the filters that make key codes; (H·D, W).
    matrix key_filter;
    /// Whether the gate is applied.
    bool gated;
    /// a_g (H, D): gate g = σ(a_g) (weight of the positionless part); init N(0, 1).
    matrix gate;
    /// Correlation algorithm; `automatic` picks FFT for long filters. All choices agree to rounding.
    conv_algorithm algorithm = conv_algorithm::automatic;

    /// Selects a new realization (noise field Z and gate noise ε) by `seed`; the parameters are kept.
    void redraw(std::uint64_t seed)
    {
        m_seed = seed;
        m_window.resize(0, 0);
        m_gate_noise = detail::spe_gate_noise<Scalar>(seed, m_heads, m_dim, m_realizations);
    }
    /// The realization in use (a copy; conv_spe_realization documents the layout and the formula).
    conv_spe_realization<Scalar> realization() const { return {m_seed, m_window, m_gate_noise}; }
    /// \brief Installs a realization: gate_noise (H·D, R) with the current R, noise empty or (H·D·R, T >= W),
    /// all finite; throws linrpe::error naming the member before changing anything.
    void set_realization(const conv_spe_realization<Scalar>& r)
    {
        detail::spe_require_parameter("conv_spe realization gate_noise (epsilon)", r.gate_noise, m_heads * m_dim, m_realizations);
        if (r.noise.rows() != 0 || r.noise.cols() != 0) {
            if (r.noise.rows() != m_heads * m_dim * m_realizations || r.noise.cols() < m_width)
                detail::fail("conv_spe realization noise (explicit window Z)",
                             detail::concat("empty or ", detail::shape(m_heads * m_dim * m_realizations, m_width), " or wider"),
                             detail::shape(r.noise.rows(), r.noise.cols()));
            detail::require_all_finite("conv_spe realization noise (explicit window Z)", r.noise);
        }
        m_seed = r.noise_seed;
        m_window = r.noise;
        m_gate_noise = r.gate_noise;
    }
    /// Changes R and redraws with the current seed (a realization set by hand is replaced).
    void set_realizations(index realizations)
    {
        detail::require_positive("conv_spe realizations (R)", realizations);
        m_realizations = realizations;
        redraw(m_seed);
    }

    /// \brief Replaces φ_Q and φ_K, each (H·D, W); throws linrpe::error naming the argument on a shape
    /// mismatch or a non-finite entry, before changing anything.
    template <class Q, class K>
    void set_filters(const Eigen::MatrixBase<Q>& query, const Eigen::MatrixBase<K>& key)
    {
        detail::spe_require_parameter("conv_spe query_filter", query, m_heads * m_dim, m_width);
        detail::spe_require_parameter("conv_spe key_filter", key, m_heads * m_dim, m_width);
        query_filter = query.template cast<Scalar>();
        key_filter = key.template cast<Scalar>();
    }
    /// Replaces the gate logits a_g (H, D) and turns the gate on; validated like set_filters.
    template <class G>
    void set_gate(const Eigen::MatrixBase<G>& logits)
    {
        detail::spe_set_gate("conv_spe gate (logits a_g)", logits, m_heads, m_dim, gate, gated);
    }

    std::uint64_t seed() const { return m_seed; }
    index heads() const { return m_heads; }
    index dim() const { return m_dim; }
    index width() const { return m_width; }
    index realizations() const { return m_realizations; }

    /// \brief The closed-form kernel P_d(δ) = Σ_j φ_Q[d, j] φ_K[d, j + δ] (0 for |δ| ≥ W), gate applied:
    /// (1 − g) P_d(δ) + g.
    double expected_kernel(index head, index d, index delta) const
    {
        check_entry(head, d);
        double p = 0;
        for (index j = std::max<index>(0, -delta); j < m_width && j + delta < m_width; ++j)
            p += static_cast<double>(query_filter(head * m_dim + d, j)) * static_cast<double>(key_filter(head * m_dim + d, j + delta));
        double positional, positionless;
        detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
        return positional * p + positionless;
    }
    /// \brief Variance of one unit code entry: Σ_j φ_Q[d, j]² (queries) or Σ_j φ_K[d, j]² (keys), gated
    /// (1 − g) σ² + g; with expected_kernel it gives the exact variance of q̂·k̂ (Isserlis).
    double code_variance(index head, index d, role which) const
    {
        check_entry(head, d);
        const matrix& f = which == role::query ? query_filter : key_filter;
        const double s = f.row(head * m_dim + d).template cast<double>().squaredNorm();
        double positional, positionless;
        detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
        return positional * s + positionless;
    }

    /// SPE only changes the input of φ: scores φ(q̂)·φ(k̂) are non-negative whenever φ is.
    bool preserves_positivity(index /*max_offset*/) const { return true; }
    /// φ receives R-wide rows.
    index pre_output_dim(index /*input_dim*/) const { return m_realizations; }
    /// Positions must be >= 0: the noise is indexed by the absolute position as an unsigned counter. With an
    /// explicit noise window of T samples, the last position must be <= T − W.
    void check_positions(index first_position, index count) const
    {
        detail::spe_check_positions(first_position, count);
        if (m_window.size() > 0 && count > 0 && first_position + count - 1 > m_window.cols() - m_width)
            detail::fail("first_position + rows − 1 (last position)",
                         detail::concat("a value <= ", m_window.cols() - m_width, " (explicit noise window of ", m_window.cols(),
                                        " samples, W = ", m_width, ")"),
                         detail::concat(first_position, " + ", count - 1));
    }

    /// Throws linrpe::error for a width other than D, a head out of range or non-finite parameters of `head`.
    void check_input(index input_dim, index head) const
    {
        detail::spe_check_common("conv_spe", input_dim, m_dim, head, m_heads, gated, gate);
        if (algorithm != conv_algorithm::automatic && algorithm != conv_algorithm::direct && algorithm != conv_algorithm::fft)
            detail::fail("conv_spe algorithm", "conv_algorithm::automatic, direct or fft", static_cast<int>(algorithm));
        check_shape("conv_spe query_filter", query_filter);
        check_shape("conv_spe key_filter", key_filter);
        detail::require_all_finite("conv_spe query_filter", query_filter.middleRows(head * m_dim, m_dim));
        detail::require_all_finite("conv_spe key_filter", key_filter.middleRows(head * m_dim, m_dim));
    }

    /// Whether encode_pre of n rows uses the FFT path under the current `algorithm`.
    bool uses_fft(index n) const
    {
        if (algorithm != conv_algorithm::automatic) return algorithm == conv_algorithm::fft;
        (void)n;
        return m_width >= fft_min_width;
    }

    /// \brief out (n, R) = q̂ (queries) or k̂ (keys) of the rows x (n, D) at positions first_position...
    /// Preconditions (checked by check_input through the core): x.cols() == D, out is (n, R), head valid.
    template <class S>
    void encode_pre(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> out, index first_position,
                    index head, role which) const
    {
        const index n = x.rows(), w = m_width, r_count = m_realizations;
        if (n == 0) return;
        const bool fft = uses_fft(n);
        // FFT blocks: the smallest power of two holding the block and its W − 1 extra samples, with at least
        // 4·W outputs per transform so that the W − 1 overlap costs at most a quarter of the work.
        index block, length = 0;
        if (fft) {
            // At least 64: Eigen's real FFT needs an even length, and tiny transforms are all overhead.
            length = 64;
            while (length < std::min(n, std::max<index>(4 * w, 256)) + w - 1) length *= 2;
            block = length - w + 1;
        } else {
            block = std::min<index>(n, std::max<index>(direct_block_rows, 8 * w));
        }
        block = std::min(block, n);
        const matrix& filters = which == role::query ? query_filter : key_filter;
        const double scale = detail::spe_code_scale(r_count, m_dim);

        Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> noise(block + w - 1, r_count); // (b + W − 1, R), column per r
        Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> acc(block, r_count);           // (b, R) q̂ of the block
        Eigen::Matrix<S, Eigen::Dynamic, 1> code(block), taps(w);
        detail::spe_noise_scratch<S> scratch;
        // Direct path for W >= toeplitz_min_width: per tile of t rows, q̂_tile += (diag(x_d) T_d) Z_d with T_d the
        // (t, t + W − 1) banded Toeplitz matrix of the taps — a GEMM, (t + W − 1)/W times the direct FLOPs but at
        // GEMM speed. The band of `band` never moves, so it is zeroed once and only its band is rewritten.
        const bool toeplitz = !fft && w >= toeplitz_min_width;
        const index tile = std::min(block, std::min<index>(w, toeplitz_tile_rows));
        row_matrix<S> band;
        if (toeplitz) band = row_matrix<S>::Zero(tile, tile + w - 1);
        Eigen::FFT<S> fft_engine;
        fft_engine.SetFlag(Eigen::FFT<S>::HalfSpectrum);
        std::vector<S> fft_in(static_cast<std::size_t>(length)), fft_out(static_cast<std::size_t>(length));
        std::vector<std::complex<S>> spectrum, filter_spectrum;
        row_matrix<S> eps_scaled;
        if (gated) {
            eps_scaled.resize(m_dim, r_count); // (D, R): √g_d (R·D)^{−1/4} ε_d
            for (index d = 0; d < m_dim; ++d) {
                double positional, positionless;
                detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
                eps_scaled.row(d) = (m_gate_noise.row(head * m_dim + d).template cast<double>() * (std::sqrt(positionless) * scale))
                                        .template cast<S>();
            }
        }

        for (index i0 = 0; i0 < n; i0 += block) {
            const index rows = std::min(block, n - i0), samples = rows + w - 1;
            acc.topRows(rows).setZero();
            for (index d = 0; d < m_dim; ++d) {
                double positional, positionless;
                detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
                const double coef = std::sqrt(positional) * scale;
                for (index j = 0; j < w; ++j) taps[j] = static_cast<S>(coef * static_cast<double>(filters(head * m_dim + d, j)));
                draw_noise(head, d, first_position + i0, samples, noise, scratch);
                const auto xd = x.col(d).segment(i0, rows);
                if (toeplitz) {
                    for (index t0 = 0; t0 < rows; t0 += tile) {
                        const index tr = std::min(tile, rows - t0);
                        for (index i = 0; i < tr; ++i) band.row(i).segment(i, w) = xd[t0 + i] * taps.transpose();
                        acc.middleRows(t0, tr).noalias() +=
                            band.topLeftCorner(tr, tr + w - 1) * noise.middleRows(t0, tr + w - 1); // (tr, R)
                    }
                    continue;
                }
                if (fft) {
                    // conj(FFT(taps)) once per (d, block): correlation = IFFT(FFT(z) · conj(FFT(taps))).
                    // No wrap-around: outputs 0..rows−1 read samples < rows + W − 1 <= length.
                    std::fill(fft_in.begin(), fft_in.end(), S(0));
                    for (index j = 0; j < w; ++j) fft_in[static_cast<std::size_t>(j)] = taps[j];
                    fft_engine.fwd(filter_spectrum, fft_in);
                    for (auto& c : filter_spectrum) c = std::conj(c);
                }
                for (index r = 0; r < r_count; ++r) {
                    const auto z = noise.col(r);
                    if (fft) {
                        std::fill(fft_in.begin(), fft_in.end(), S(0));
                        std::copy(z.data(), z.data() + samples, fft_in.begin());
                        fft_engine.fwd(spectrum, fft_in);
                        for (std::size_t k = 0; k < spectrum.size(); ++k) spectrum[k] *= filter_spectrum[k];
                        fft_engine.inv(fft_out, spectrum, length);
                        acc.col(r).head(rows).array() += xd.array() * Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(fft_out.data(), rows);
                    } else {
                        auto y = code.head(rows);
                        y = taps[0] * z.segment(0, rows);
                        for (index j = 1; j < w; ++j) y += taps[j] * z.segment(j, rows);
                        acc.col(r).head(rows).array() += xd.array() * y.array();
                    }
                }
            }
            out.middleRows(i0, rows) = acc.topRows(rows);
            if (gated) out.middleRows(i0, rows).noalias() += x.middleRows(i0, rows) * eps_scaled; // (rows, R)
        }
    }

    // ---- training (docs/design.md §16) ----------------------------------------------------------------------

    /// ∂L/∂ of the learnable parameters, with their shapes, in double; gate stays 0 while not gated.
    struct parameter_gradients {
        row_matrix<double> query_filter; ///< ∂L/∂φ_Q (H·D, W)
        row_matrix<double> key_filter;   ///< ∂L/∂φ_K (H·D, W)
        row_matrix<double> gate;         ///< ∂L/∂a_g (H, D)
    };
    parameter_gradients make_parameter_gradients() const
    {
        const index rows = m_heads * m_dim;
        return {row_matrix<double>::Zero(rows, m_width), row_matrix<double>::Zero(rows, m_width), row_matrix<double>::Zero(m_heads, m_dim)};
    }
    /// One head's flat gradient: [φ_Q (D, W) | φ_K (D, W) | a_g (D)], each row-major.
    index gradient_size() const { return 2 * m_dim * m_width + m_dim; }
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        using map = Eigen::Map<const row_matrix<double>>;
        const index dw = m_dim * m_width;
        pg.query_filter.middleRows(head * m_dim, m_dim) += map(flat, m_dim, m_width);
        pg.key_filter.middleRows(head * m_dim, m_dim) += map(flat + dw, m_dim, m_width);
        pg.gate.row(head) += map(flat + 2 * dw, 1, m_dim);
    }
    /// Throws linrpe::error naming the member whose shape differs from make_parameter_gradients().
    void validate_gradients(const parameter_gradients& pg) const
    {
        detail::spe_require_shape("conv_spe parameter_gradients.query_filter", pg.query_filter, m_heads * m_dim, m_width);
        detail::spe_require_shape("conv_spe parameter_gradients.key_filter", pg.key_filter, m_heads * m_dim, m_width);
        detail::spe_require_shape("conv_spe parameter_gradients.gate", pg.gate, m_heads, m_dim);
    }

    /// \brief VJP of encode_pre: dx (n, D) = Σ_r du[·, r] Q̄'_d(m, r) (K̄' for keys), and, when grad is not
    /// null, ADDS head `head`'s parameter gradient for this realization to grad[0, gradient_size()).
    ///
    /// With c_d = √(1 − g_d)(R·D)^{−1/4}, H[i, j] = Σ_r du[i, r] Z_{d,r}(m_i + j) and E[i, d] = (R·D)^{−1/4}
    /// Σ_r du[i, r] ε_{d,r}: dx[i, d] = c_d (Hφ_d)[i] + √g_d E[i, d]; ∂L/∂φ_d = c_d x_dᵀ H; the gate's halves are
    /// (R·D)^{−1/4} x_dᵀ Hφ_d (positional) and x_dᵀ E[·, d] (positionless).
    template <class S>
    void encode_pre_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& du,
                             Eigen::Ref<row_matrix<S>> dx, index first_position, index head, role which, double* grad) const
    {
        const index n = x.rows(), w = m_width, r_count = m_realizations;
        if (n == 0) return;
        const index block = std::min<index>(n, std::max<index>(direct_block_rows, 8 * w));
        const index tile = std::min(block, std::min<index>(w, toeplitz_tile_rows));
        const bool toeplitz = w >= toeplitz_min_width;
        const matrix& filters = which == role::query ? query_filter : key_filter;
        const double scale = detail::spe_code_scale(r_count, m_dim);
        const index offset = which == role::query ? 0 : m_dim * w; // this role's filter in grad

        Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> noise(block + w - 1, r_count); // (b + W − 1, R)
        row_matrix<S> h(block, w), tile_products;                                        // (b, W)
        if (toeplitz) tile_products.resize(tile, tile + w - 1);
        Eigen::Matrix<S, Eigen::Dynamic, 1> hphi(block), taps(w);
        Eigen::Matrix<S, 1, Eigen::Dynamic> xh(w);
        row_matrix<S> eps_unit, e; // (D, R) (R·D)^{−1/4} ε; (b, D) E
        if (gated) eps_unit = (m_gate_noise.middleRows(head * m_dim, m_dim).template cast<double>() * scale).template cast<S>();
        std::vector<double> positional_half(static_cast<std::size_t>(m_dim), 0.0), positionless_half(positional_half.size(), 0.0);
        detail::spe_noise_scratch<S> scratch;

        for (index i0 = 0; i0 < n; i0 += block) {
            const index rows = std::min(block, n - i0), samples = rows + w - 1;
            const auto dub = du.middleRows(i0, rows); // (rows, R)
            if (gated) e.noalias() = dub * eps_unit.transpose(); // (rows, D)
            for (index d = 0; d < m_dim; ++d) {
                double positional, positionless;
                detail::spe_gate_weights(gated, gate, head, d, positional, positionless);
                const double coef = std::sqrt(positional) * scale;
                draw_noise(head, d, first_position + i0, samples, noise, scratch);
                auto hb = h.topRows(rows);
                if (toeplitz) {
                    for (index t0 = 0; t0 < rows; t0 += tile) {
                        const index tr = std::min(tile, rows - t0);
                        auto g = tile_products.topLeftCorner(tr, tr + w - 1);
                        g.noalias() = dub.middleRows(t0, tr) * noise.middleRows(t0, tr + w - 1).transpose(); // (tr, tr + W − 1)
                        for (index i = 0; i < tr; ++i) hb.row(t0 + i) = g.row(i).segment(i, w);
                    }
                } else {
                    for (index j = 0; j < w; ++j)
                        hb.col(j) = (dub.array() * noise.middleRows(j, rows).array()).rowwise().sum().matrix();
                }
                for (index j = 0; j < w; ++j) taps[j] = static_cast<S>(static_cast<double>(filters(head * m_dim + d, j)));
                auto hp = hphi.head(rows);
                hp.noalias() = hb * taps; // (rows): Σ_r du Σ_j φ_j Z(m + j) per row
                const auto xd = x.col(d).segment(i0, rows);
                for (index i = 0; i < rows; ++i) {
                    double v = coef * static_cast<double>(hp[i]);
                    if (gated) v += std::sqrt(positionless) * static_cast<double>(e(i, d));
                    dx(i0 + i, d) = static_cast<S>(v);
                }
                if (!grad) continue;
                xh.noalias() = xd.transpose() * hb; // (W)
                for (index j = 0; j < w; ++j) grad[offset + d * w + j] += coef * static_cast<double>(xh[j]);
                if (gated) {
                    positional_half[static_cast<std::size_t>(d)] += scale * static_cast<double>(xd.dot(hp));
                    positionless_half[static_cast<std::size_t>(d)] += static_cast<double>(xd.dot(e.col(d)));
                }
            }
        }
        if (grad && gated)
            for (index d = 0; d < m_dim; ++d)
                grad[2 * m_dim * w + d] += detail::spe_gate_gradient(static_cast<double>(gate(head, d)), positional_half[static_cast<std::size_t>(d)],
                                                                      positionless_half[static_cast<std::size_t>(d)]);
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
    // Direct path: blocks of max(256, 8·W) rows, so the W − 1 extra noise samples per block cost <= 1/8 more
    // normals; (b + W − 1, R) noise stays in L2 for W up to a few hundred.
    static constexpr index direct_block_rows = 256;
    // Below this width the plain shifted-axpy correlation beats the banded-Toeplitz GEMM (whose waste
    // (t + W − 1)/W grows as W shrinks); rows per Toeplitz tile: min(W, 64) keeps the waste <= 2.
    static constexpr index toeplitz_min_width = 16;
    static constexpr index toeplitz_tile_rows = 64;

    // noise.col(r).head(samples) = Z_{head,d,r}(first ..) for every r: the explicit window or the stream.
    template <class S>
    void draw_noise(index head, index d, index first, index samples, Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>& noise,
                    detail::spe_noise_scratch<S>& scratch) const
    {
        for (index r = 0; r < m_realizations; ++r) {
            if (m_window.size() > 0)
                noise.col(r).head(samples) =
                    m_window.row((head * m_dim + d) * m_realizations + r).segment(first, samples).transpose().template cast<S>();
            else
                detail::spe_fill_noise(noise_stream(head, d, r), static_cast<std::uint64_t>(first), noise.col(r).data(), samples, scratch);
        }
    }
    // The noise stream of (head, d, r): indexed by absolute noise position.
    random::philox_stream noise_stream(index head, index d, index r) const
    {
        return random::philox_stream(m_seed, random::purpose::spe_noise, static_cast<std::uint32_t>(head),
                                     static_cast<std::uint32_t>(d), static_cast<std::uint32_t>(r));
    }
    // Filter length from which the FFT path (Eigen's kissfft) beats the Toeplitz GEMM: measured crossover between
    // W = 512 and 1024 at N = 4096, R = 64, D = 64, float (benchmarks/bm_spe.cpp encode_conv, docs/notes-spe.md).
    static constexpr index fft_min_width = 768;

    void check_entry(index head, index d) const
    {
        if (head < 0 || head >= m_heads) detail::fail("head", detail::concat("a head index in [0, ", m_heads, ") of conv_spe"), head);
        if (d < 0 || d >= m_dim) detail::fail("dim", detail::concat("a dimension in [0, ", m_dim, ")"), d);
    }
    void check_shape(const char* name, const matrix& m) const
    {
        if (m.rows() != m_heads * m_dim || m.cols() != m_width)
            detail::fail(name, detail::shape(m_heads * m_dim, m_width), detail::shape(m.rows(), m.cols()));
    }

    void initialize_parameters(std::uint64_t seed)
    {
        const index rows = m_heads * m_dim;
        const double scale = 1.0 / std::sqrt(static_cast<double>(m_width) / 2.0);
        query_filter.resize(rows, m_width);
        key_filter.resize(rows, m_width);
        gate.resize(m_heads, m_dim);
        for (index h = 0; h < m_heads; ++h) {
            const auto q = detail::spe_parameter_stream(seed, detail::spe_tensor::conv_query, h);
            const auto k = detail::spe_parameter_stream(seed, detail::spe_tensor::conv_key, h);
            for (index i = 0; i < m_dim * m_width; ++i) {
                // u01 is in (0, 1]; 1 − u is the reference's U[0, 1).
                query_filter.data()[h * m_dim * m_width + i] = static_cast<Scalar>((1.0 - q.uniform(static_cast<std::uint64_t>(i))) * scale);
                key_filter.data()[h * m_dim * m_width + i] = static_cast<Scalar>((1.0 - k.uniform(static_cast<std::uint64_t>(i))) * scale);
            }
            detail::spe_parameter_stream(seed, detail::spe_tensor::gate, h).fill_normal(0, gate.row(h).data(), m_dim);
        }
    }

    index m_heads, m_dim, m_width, m_realizations;
    std::uint64_t m_seed = 0;
    matrix m_gate_noise; // (H·D, R): ε
    matrix m_window;     // empty, or the explicit noise window (H·D·R, T) of set_realization
};

} // namespace positional
} // namespace linrpe
