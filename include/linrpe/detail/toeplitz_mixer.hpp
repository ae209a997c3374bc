#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing with relative weights w_ij = c_{(k0+j)−(q0+i)} (· 1[j <= i] when causal):
/// dispatch over the dense, FFT and banded algorithms.

#include "../fft/backend.hpp"
#include "../types.hpp"
#include "../workspace.hpp"
#include "normalize.hpp"
#include "relative_weights.hpp"
#include "toeplitz_banded.hpp"
#include "toeplitz_cost.hpp"
#include "toeplitz_dense.hpp"
#include "toeplitz_fft.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <utility>

namespace linrpe {
namespace detail {

/// \brief The algorithm that toeplitz_mix runs for `requested`: forced ones as they are; `automatic` by the
/// cost model (toeplitz_choose), except that the FFT is skipped when its rounding would exceed about
/// 1e4·eps relative in the worst row (κ·log2 L > 1e4, see toeplitz_fft_amplification): then the cheaper
/// of dense and banded runs, which are accurate at any bias range.
template <class S, class Backend = fft::default_backend>
toeplitz_algorithm toeplitz_resolve(toeplitz_algorithm requested, const relative_weights<S>& w, index n, index nk,
                                    index m, index ex, index delta, bool causal)
{
    if (requested != toeplitz_algorithm::automatic) return requested;
    const toeplitz_algorithm best = toeplitz_choose<S, Backend>(n, nk, m, ex, w.t_max, causal);
    if (best != toeplitz_algorithm::fft) return best;
    const double length = static_cast<double>(fft_length_for<Backend>(n + nk - 1));
    if (toeplitz_fft_amplification(w, n, nk, delta, causal) * std::log2(std::max(length, 2.0)) <= 1e4) return best;
    const auto c = toeplitz_predict<S, Backend>(n, nk, m, ex, w.t_max, causal);
    return c.banded <= c.dense ? toeplitz_algorithm::banded : toeplitz_algorithm::dense;
}

/// \brief Offsets t = (key position) − (query position) that a call of N queries from q_first and Nk keys
/// from k_first can see: all of [k_first − (q_first + N − 1), k_first + Nk − 1 − q_first]; causal only
/// t <= 0, and a decoder call (`streaming`) also every earlier token of its sequence (keys from 0).
inline std::pair<index, index> visible_offsets(index n, index nk, index q_first, index k_first, bool causal, bool streaming)
{
    const index first = (streaming ? 0 : k_first) - (q_first + n - 1), last = k_first + nk - 1 - q_first;
    return {first, causal ? std::min<index>(last, 0) : last};
}

/// \brief Normalizes num' (rows, E) and den' computed with weights c_t = e^{−shift}·(true weight), in place,
/// as the true weights would: exact up to rounding, with no overflow unless the true result overflows.
/// Since num = e^{shift} num' and den = e^{shift} den',
///
///     sum:  out_i = num_i / (den_i + eps)  = num'_i / (den'_i + eps·e^{−shift})
///     none: out_i = num_i                  = e^{shift} num'_i   (two factors e^{shift/2})
///     rms:  out_i = num_i / sqrt(mean num_i² + eps) = num'_i / sqrt(mean num'_i² + eps·e^{−2·shift})
///
/// So the result does not depend on the shift a call picks: a decoder step and a batched call (which see
/// different offsets) agree to rounding, and so do causal calls of different lengths. Formed in long double
/// (its exponent range holds e^{±shift} for any float bias and squares of any double); eps·e^{−k·shift}
/// underflows only where it is negligible against every nonzero denominator, and a zero denominator (a
/// row of zeros, true output 0) gives 0. With shift = 0 this is normalize_rows.
template <class S>
void toeplitz_normalize(Eigen::Ref<row_matrix<S>> out, const vector<S>* den, normalization norm, S eps, double shift)
{
    if (shift == 0.0) {
        normalize_rows<S>(out, den, norm, eps);
        return;
    }
    using wide = long double;
    const auto scale_row = [&](index i, wide d) { // out_i /= d, with d = 0 only for a zero row
        const wide r = d != 0 ? 1 / d : wide(0);
        for (index e = 0; e < out.cols(); ++e) out(i, e) = static_cast<S>(static_cast<wide>(out(i, e)) * r);
    };
    switch (norm) {
    case normalization::sum: {
        const wide eps_shifted = static_cast<wide>(eps) * std::exp(-static_cast<wide>(shift));
        for (index i = 0; i < out.rows(); ++i) scale_row(i, static_cast<wide>((*den)[i]) + eps_shifted);
        break;
    }
    case normalization::none: {
        const wide half = std::exp(static_cast<wide>(shift) / 2);
        for (index i = 0; i < out.rows(); ++i)
            for (index e = 0; e < out.cols(); ++e)
                if (out(i, e) != S(0)) out(i, e) = static_cast<S>(static_cast<wide>(out(i, e)) * half * half);
        break;
    }
    case normalization::rms: {
        const wide eps_shifted = static_cast<wide>(eps) * std::exp(-2 * static_cast<wide>(shift));
        const wide width = static_cast<wide>(std::max<index>(out.cols(), 1));
        for (index i = 0; i < out.rows(); ++i) {
            wide square = 0;
            for (index e = 0; e < out.cols(); ++e) square += static_cast<wide>(out(i, e)) * static_cast<wide>(out(i, e));
            scale_row(i, std::sqrt(square / width + eps_shifted));
        }
        break;
    }
    }
}

/// num (N, Ex) = Σ_j w_ij ⟨ψ_i, κ_j⟩ vx_j by the requested algorithm; all three agree to rounding. Dense
/// (row blocks) and FFT (value columns) thread inside the head; their results do not depend on `threads`.
template <class S>
void toeplitz_mix(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                  const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                  Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, toeplitz_algorithm algo,
                  int threads = 0)
{
    switch (toeplitz_resolve<S>(algo, w, psi.rows(), kappa.rows(), psi.cols(), vx.cols(), k_first - q_first, causal)) {
    case toeplitz_algorithm::fft:
        toeplitz_mix_fft<S>(w, psi, kappa, vx, num, q_first, k_first, causal, 0, threads,
                            toeplitz_fft_direct_rows<S>(psi.cols(), vx.cols()));
        break;
    case toeplitz_algorithm::banded:
        toeplitz_mix_banded<S>(w, psi, kappa, vx, num, q_first, k_first, causal);
        break;
    case toeplitz_algorithm::dense:
    default:
        toeplitz_mix_dense<S>(w, psi, kappa, vx, num, q_first, k_first, causal, 128, threads);
        break;
    }
}

/// \brief Seed G (N, Ex) of the Toeplitz backward for num' (N, Ex) computed with c = e^{−shift}·(true
/// weights) and the output seed dout (N, E): the VJP of toeplitz_normalize, i.e. of
///     sum:  out = num'_v / (den' + eps·e^{−shift})      G = [dout / d,  −(dout·num'_v) / d²]
///     none: out = e^{shift} num'                         G = e^{shift} dout
///     rms:  out = num' / sqrt(mean num'² + eps·e^{−2 shift})   (rms_seed)
/// so that the mixing VJP with the same c gives the gradients of the computed function (shift included).
/// Under `sum`, `inv` (when given) receives 1 / d per row, d = den' + eps·e^{−shift}.
template <class S>
void toeplitz_seed(const Eigen::Ref<const row_matrix<S>>& num, const Eigen::Ref<const row_matrix<S>>& dout,
                   Eigen::Ref<row_matrix<S>> g, normalization norm, S eps, double shift, vector<S>* inv_out = nullptr)
{
    using wide = long double;
    const index e = dout.cols();
    switch (norm) {
    case normalization::sum: {
        const vector<S> den = num.col(e);
        const vector<S> dot = (dout.array() * num.leftCols(e).array()).rowwise().sum().matrix(); // (N)
        vector<S> inv, g_den(den.size());
        sum_seed<S>(den, dot, static_cast<S>(static_cast<wide>(eps) * std::exp(-static_cast<wide>(shift))), inv, g_den);
        g.col(e) = g_den;
        g.leftCols(e) = (dout.array().colwise() * inv.array()).matrix();
        if (inv_out) *inv_out = inv;
        break;
    }
    case normalization::none: {
        const wide scale = std::exp(static_cast<wide>(shift));
        for (index i = 0; i < g.rows(); ++i)
            for (index c = 0; c < e; ++c) g(i, c) = static_cast<S>(static_cast<wide>(dout(i, c)) * scale);
        break;
    }
    case normalization::rms:
        rms_seed<S>(num, dout, g, static_cast<S>(static_cast<wide>(eps) * std::exp(-2 * static_cast<wide>(shift))));
        break;
    }
}

/// \brief VJP of toeplitz_mix followed by toeplitz_normalize, by the same algorithm `algo` (resolved by
/// the caller), for the output seed `dout` (N, E): writes the seed G into x.g and adds dΨ, dΚ, dVx and
/// ∂L/∂log c to `x` (docs/design.md §16; the formulas in toeplitz_dense.hpp). Under `sum` and `rms` the seed
/// needs num': dense and fft recompute it by toeplitz_mix first, banded fuses it into its own sweep. All
/// three agree to rounding; the result does not depend on `threads`. `num_extra` (N, Ex), when given, is a
/// part of num' that the keys do not produce (a carried Toeplitz state's far term c_far ψ far): it enters
/// the seed only, its own VJP is the caller's. The (N, Ex) numerator comes from `scratch` when given (a
/// workspace arena), else from the heap.
template <class S>
void toeplitz_backward(const relative_weights<S>& w, toeplitz_vjp<S> x, const Eigen::Ref<const row_matrix<S>>& dout,
                       normalization norm, S eps, index q_first, index k_first, bool causal, toeplitz_algorithm algo,
                       int threads = 0, const row_matrix<S>* num_extra = nullptr, arena<S>* scratch = nullptr)
{
    const bool with_num = norm != normalization::none;
    arena<S> own; // used only without `scratch`
    scratch_scope<S> tmp(scratch ? *scratch : own);
    if (algo == toeplitz_algorithm::banded) {
        row_matrix<S> full; // (rows, Ex): the block's num' with num_extra
        const auto seed = [&](index r0, const row_matrix<S>& num, Eigen::Ref<row_matrix<S>> g) {
            const auto d = dout.middleRows(r0, g.rows());
            if (with_num && num_extra) {
                full = num + num_extra->middleRows(r0, g.rows());
                toeplitz_seed<S>(full, d, g, norm, eps, w.shift);
            } else if (with_num) {
                toeplitz_seed<S>(num, d, g, norm, eps, w.shift);
            } else {
                toeplitz_seed<S>(d, d, g, norm, eps, w.shift); // `none` reads no numerator
            }
        };
        auto num_ahead = tmp.matrix(with_num && !causal ? x.psi.rows() : 0, x.vx.cols()); // (N, Ex)
        toeplitz_backward_banded<S>(w, x, q_first, k_first, causal, with_num, seed, num_ahead);
        return;
    }
    if (with_num && algo == toeplitz_algorithm::fft && !causal && norm == normalization::sum) {
        // The recompute's convolutions Y_μν = C (κ_μ ⊙ vx_ν) give dΨ too: with g_iν = inv_i dout_iν for
        // the value columns and g_den_i for the ones column, dΨ_iμ = Σ_ν g_iν Y_iμν = inv_i P_iμ + g_den_i
        // Yden_iμ (fft_side_products), so the VJP transforms only B = ψ_μ ⊙ g_ν (and A for ∂L/∂log c):
        // five transforms per lane with the forward's two instead of six.
        const index e = dout.cols();
        auto num = tmp.matrix(x.psi.rows(), x.vx.cols()); // (N, Ex)
        fft_side_products<S> side{dout, {}, {}};
        toeplitz_mix_fft_rectangle<S>(w, x.psi, x.kappa, x.vx, num, q_first, k_first, 0, threads, &side);
        if (num_extra) num += *num_extra;
        vector<S> inv;
        toeplitz_seed<S>(num, dout, x.g, norm, eps, w.shift, &inv);
        x.dpsi.array() += side.p.array().colwise() * inv.array() + side.yden.array().colwise() * x.g.col(e).array();
        toeplitz_backward_fft_rectangle<S>(w, x, q_first, k_first, threads, false);
        return;
    }
    if (with_num) {
        auto num = tmp.matrix(x.psi.rows(), x.vx.cols()); // (N, Ex)
        toeplitz_mix<S>(w, x.psi, x.kappa, x.vx, num, q_first, k_first, causal, algo, threads);
        if (num_extra) num += *num_extra;
        toeplitz_seed<S>(num, dout, x.g, norm, eps, w.shift);
    } else {
        toeplitz_seed<S>(dout, dout, x.g, norm, eps, w.shift);
    }
    if (algo == toeplitz_algorithm::fft)
        toeplitz_backward_fft<S>(w, x, q_first, k_first, causal, threads, toeplitz_fft_direct_rows<S>(x.psi.cols(), x.vx.cols()));
    else
        toeplitz_backward_dense<S>(w, x, q_first, k_first, causal);
}

} // namespace detail
} // namespace linrpe
