#pragma once
// IWYU pragma: private
/// \file
/// \brief Toeplitz mixing, banded algorithm (ours): explicit weights in the band |t| < T_max, and the clipped
/// far part as lagged linear attention with prefix / suffix states.

#include "../types.hpp"
#include "relative_weights.hpp"
#include "toeplitz_dense.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {

/// Row-block size of the banded algorithm: (block + 2·T_max)·(M + Ex) band work per row against
/// 4·M·Ex far-state work; 64 rows keep the GEMMs efficient without widening the band much.
inline index banded_block(index t_max) { return std::clamp<index>(t_max, 32, 64); }

/// Keys [lo, hi) whose weights the banded algorithm applies explicitly to query rows [r0, r0 + rows):
/// those with |t| < T_max for some row (t = j − i + delta), only t <= 0 when causal; clamped to [0, nk).
/// lo and hi never decrease as r0 grows.
inline std::pair<index, index> banded_rectangle(index r0, index rows, index delta, index t_max, index nk, bool causal)
{
    const index lo = std::clamp<index>(r0 - delta - t_max + 1, 0, nk);
    const index hi = causal ? std::clamp<index>(r0 + rows - delta, lo, nk) : std::clamp<index>(r0 + rows - 1 - delta + t_max, lo, nk);
    return {lo, hi};
}

/// \brief Banded algorithm. Clipping makes every weight with t = j − i + delta <= −T_max equal
/// c_far_behind and every t >= T_max equal c_far_ahead. For a block of rows [r0, r0 + R) the keys split into
///
///     far behind  j <  lo = r0 − delta − T_max + 1         (t <= −T_max for every row of the block)
///     rectangle   lo <= j < hi                            (explicit weights c_t, causal mask)
///     far ahead   j >= hi = r0 + R − 1 − delta + T_max     (t >= T_max; absent when causal)
///
///     num_b = ((Ψ_b Κ_rectᵀ) ⊙ W_rect) Vx_rect + c_far_behind Ψ_b S_behind(lo) + c_far_ahead Ψ_b S_ahead(hi)
///
/// with S_behind(lo) = Σ_{j<lo} κ_j vx_jᵀ grown in a forward sweep and S_ahead(hi) = Σ_{j>=hi} κ_j vx_jᵀ in a
/// backward sweep (no subtraction, so no cancellation). O(N·((R + 2T_max)·(M + Ex) + 4·M·Ex)) time,
/// O(R·(R + 2T_max) + M·Ex) extra memory. Causal rows never read a later key or value, not even times 0:
/// outputs up to i are bit-identical whatever later tokens hold (NaN and inf included). Equals the dense
/// and FFT algorithms to rounding.
///
/// `kappa`, `vx` may be a window of a longer key sequence: `behind` then holds Σ κ_j vx_jᵀ (M, Ex) over the
/// keys before the window and `ahead` over the keys after it (non-causal), so that the rows of `psi` see
/// the whole sequence; the window must cover every row's rectangle.
template <class S>
void toeplitz_mix_banded(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                         const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                         Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, index block = 0,
                         const row_matrix<S>* behind = nullptr, const row_matrix<S>* ahead = nullptr)
{
    const index n = psi.rows(), nk = kappa.rows(), m = psi.cols(), ex = vx.cols();
    if (n == 0) return;
    if (nk == 0 && !behind && !ahead) {
        num.setZero();
        return;
    }
    const index t_max = w.t_max, delta = k_first - q_first;
    const index rb = block > 0 ? block : banded_block(t_max);
    // Rectangle offsets lie in [−(T_max + R − 2), T_max + R − 2] and in [delta − (N − 1), delta + Nk − 1]
    // (the second bound keeps the table small when T_max is much larger than the sequence).
    const index t_lo = std::max(-(t_max + rb), delta - n), t_hi = std::min(t_max + rb, delta + nk);
    const vector<S> table = offset_table(w, t_lo, t_hi, causal);
    const auto rect = [&](index r0, index rows) { return banded_rectangle(r0, rows, delta, t_max, nk, causal); };

    row_matrix<S> scores;
    // (M, Ex) = Σ_{j < behind_end} κ_j vx_jᵀ, plus the keys before the window
    row_matrix<S> state = behind ? *behind : row_matrix<S>::Zero(m, ex);
    index behind_end = 0;
    for (index r0 = 0; r0 < n; r0 += rb) {
        const index rows = std::min(rb, n - r0);
        const auto [lo, hi] = rect(r0, rows);
        const auto psi_b = psi.middleRows(r0, rows); // (rows, M)
        auto num_b = num.middleRows(r0, rows);       // (rows, Ex)
        num_b.setZero();
        // Causal: keys [lo, r0 − delta) are visible to every row of the block, the rest form a triangle
        // (no future key or value enters a row's arithmetic, see add_weighted_triangle).
        const index full = causal ? std::clamp<index>(r0 - delta, lo, hi) : hi;
        add_weighted_rectangle<S>(psi, kappa, vx, table, delta - t_lo, r0, rows, lo, full - lo, num, scores);
        if (causal && hi > lo) add_weighted_triangle<S>(psi, kappa, vx, table, delta - t_lo, r0, rows, r0 - delta, num, scores);
        if (lo > behind_end) {
            state.noalias() += kappa.middleRows(behind_end, lo - behind_end).transpose() * vx.middleRows(behind_end, lo - behind_end);
            behind_end = lo;
        }
        if (behind_end > 0 || behind) num_b.noalias() += w.far_behind() * (psi_b * state);
    }
    if (causal) return;
    if (ahead) state = *ahead;
    else state.setZero();
    index ahead_begin = nk;
    for (index r0 = (n - 1) / rb * rb; r0 >= 0; r0 -= rb) {
        const index rows = std::min(rb, n - r0);
        const index hi = rect(r0, rows).second;
        if (hi < ahead_begin) {
            state.noalias() += kappa.middleRows(hi, ahead_begin - hi).transpose() * vx.middleRows(hi, ahead_begin - hi);
            ahead_begin = hi;
        }
        if (ahead_begin < nk || ahead) num.middleRows(r0, rows).noalias() += w.far_ahead() * (psi.middleRows(r0, rows) * state);
    }
}

/// \brief VJP of toeplitz_mix_banded (added to `x`'s outputs; docs/design.md §16, toeplitz_dense.hpp for
/// the formulas), fused with the recomputation of the numerator that the seed needs: block by block,
///
///     A = (Ψ_b Κ_rectᵀ) ⊙ W,  num'_b = A Vx_rect + c_fb Ψ_b S_behind + c_fa Ψ_b S_ahead,  G_b = seed(num'_b),
///     B = G_b Vx_rectᵀ:  ∂L/∂log c += A ⊙ B by offset,  dΨ_b += (B ⊙ W) Κ_rect,  dΚ_rect += (B ⊙ W)ᵀ Ψ_b,
///     dVx_rect += Aᵀ G_b
///
/// (the rectangle is [lo, hi) of banded_rectangle; causal blocks take its keys visible to every row of the
/// block this way and the rest as a triangle, add_weighted_triangle and add_weighted_triangle_backward, so
/// that no masked pair enters the arithmetic: NaN-proof as the forward). `seed(r0, num'_b,
/// g_b)` writes the seed rows [r0, r0 + rows) into x.g (num'_b is not formed when `with_num` is false: the
/// `none` seed needs no numerator). The far parts are lagged states. With S_behind(b) = Σ_{j < lo_b} κ_j vx_jᵀ
/// (forward sweep) and U_behind(b) = Σ_{b' >= b} Ψ_b'ᵀ G_b' (backward sweep), far-behind weight c_fb:
///
///     dΨ_b += c_fb G_b S_behindᵀ,   ∂L/∂log c_fb += c_fb Σ_{i in b} ψ_i · (S_behind g_i)
///     keys j in [lo_{b−1}, lo_b) (far behind exactly for the blocks b' >= b):
///         dΚ_j += c_fb U_behind(b) vx_j,   dVx_j += c_fb U_behind(b)ᵀ κ_j
///
/// and mirrored for the keys ahead (non-causal) with hi_b, sweeps reversed. The band costs six GEMMs against
/// the forward's two: O(N·((R + 2T_max)·(3M + 3Ex) + 8·M·Ex)) time, O(R·(R + 2T_max) + M·Ex) extra memory
/// (plus (N, Ex) for the far-ahead numerator, `num_ahead`: sized by the caller when `with_num` and not
/// causal). Serial inside the head.
template <class S, class Seed>
void toeplitz_backward_banded(const relative_weights<S>& w, toeplitz_vjp<S> x, index q_first, index k_first, bool causal,
                              bool with_num, const Seed& seed, Eigen::Ref<row_matrix<S>> num_ahead)
{
    const index n = x.psi.rows(), nk = x.kappa.rows(), m = x.psi.cols(), ex = x.vx.cols();
    if (n == 0 || nk == 0) return;
    const index t_max = w.t_max, delta = k_first - q_first, rb = banded_block(t_max);
    const index t_lo = std::max(-(t_max + rb), delta - n), t_hi = std::min(t_max + rb, delta + nk), off = delta - t_lo;
    const vector<S> table = offset_table(w, t_lo, t_hi, causal);
    std::vector<double> bins(x.dlog_c ? static_cast<std::size_t>(table.size()) : 0, 0.0);
    const index blocks = (n + rb - 1) / rb;
    std::vector<index> lo(static_cast<std::size_t>(blocks)), hi(lo.size());
    for (index b = 0; b < blocks; ++b)
        std::tie(lo[b], hi[b]) = banded_rectangle(b * rb, std::min(rb, n - b * rb), delta, t_max, nk, causal);
    const S c_behind = w.far_behind(), c_ahead = w.far_ahead();
    row_matrix<S> state = row_matrix<S>::Zero(m, ex), p; // (M, Ex), (rows, M)
    const auto rows_of = [&](index b) { return std::min(rb, n - b * rb); };
    const auto add_keys = [&](index j0, index j1) {
        if (j1 > j0) state.noalias() += x.kappa.middleRows(j0, j1 - j0).transpose() * x.vx.middleRows(j0, j1 - j0);
    };
    const auto add_queries = [&](index b) {
        state.noalias() += x.psi.middleRows(b * rb, rows_of(b)).transpose() * x.g.middleRows(b * rb, rows_of(b));
    };
    // The far-ahead part of num' (non-causal), from a backward sweep: (N, Ex).
    if (with_num && !causal) {
        num_ahead.setZero();
        for (index b = blocks - 1, begin = nk; b >= 0; --b) {
            add_keys(hi[b], begin);
            begin = std::min(begin, hi[b]);
            if (begin < nk) num_ahead.middleRows(b * rb, rows_of(b)).noalias() = c_ahead * (x.psi.middleRows(b * rb, rows_of(b)) * state);
        }
        state.setZero();
    }
    double far[2] = {0.0, 0.0}; // ∂L/∂log c of far behind, far ahead
    const auto far_query_side = [&](index b, S c, double& acc) {
        const index r0 = b * rb, rows = rows_of(b);
        p.noalias() = x.g.middleRows(r0, rows) * state.transpose(); // (rows, M)
        if (x.dlog_c) acc += static_cast<double>(c) * static_cast<double>((x.psi.middleRows(r0, rows).array() * p.array()).sum());
        x.dpsi.middleRows(r0, rows).noalias() += c * p;
    };
    row_matrix<S> sa, sb, num, scores; // (rows, cols), (rows, cols), (rows, Ex), scratch
    for (index b = 0, end = 0; b < blocks; ++b) {
        // Causal: the keys [lo, r0 − delta) visible to every row of the block form the fused rectangle, the
        // rest a triangle recomputed and differentiated apart (masked pairs skipped, as in the forward).
        const index r0 = b * rb, rows = rows_of(b), c0 = lo[b];
        const index full = causal ? std::clamp<index>(r0 - delta, lo[b], hi[b]) : hi[b], cols = full - c0;
        toeplitz_vjp<S> block = x.sub(r0, rows, 0, nk); // rows local to the block: table offset off − r0
        add_keys(end, lo[b]);
        end = std::max(end, lo[b]);
        const auto psi = x.psi.middleRows(r0, rows);                                          // (rows, M)
        const auto kappa = x.kappa.middleRows(c0, cols), vx = x.vx.middleRows(c0, cols);      // (cols, M), (cols, Ex)
        sa.noalias() = psi * kappa.transpose();
        for (index i = 0; i < rows; ++i) sa.row(i).array() *= table.segment(c0 - (r0 + i) + off, cols).transpose().array();
        if (with_num) {
            num.noalias() = sa * vx;
            if (causal && hi[b] > full)
                add_weighted_triangle<S>(block.psi, x.kappa, x.vx, table, off - r0, 0, rows, r0 - delta, num, scores);
            if (end > 0) num.noalias() += c_behind * (psi * state);
            if (!causal) num += num_ahead.middleRows(r0, rows);
        }
        seed(r0, num, x.g.middleRows(r0, rows));
        const auto g = x.g.middleRows(r0, rows); // (rows, Ex)
        sb.noalias() = g * vx.transpose();
        for (index i = 0; i < rows; ++i) {
            const index t0 = c0 - (r0 + i) + off;
            if (x.dlog_c) add_to_bins(bins, t0, sa.row(i).array(), sb.row(i).array());
            sb.row(i).array() *= table.segment(t0, cols).transpose().array();
        }
        x.dpsi.middleRows(r0, rows).noalias() += sb * kappa;
        x.dkappa.middleRows(c0, cols).noalias() += sb.transpose() * psi;
        x.dvx.middleRows(c0, cols).noalias() += sa.transpose() * g;
        if (causal && hi[b] > full)
            add_weighted_triangle_backward<S>(block, table, off - r0, 0, rows, r0 - delta, x.dlog_c ? &bins : nullptr, sa, sb);
        if (end > 0) far_query_side(b, c_behind, far[0]);
    }
    if (x.dlog_c) fold_offset_bins(w, bins, t_lo, *x.dlog_c);
    const auto far_key_side = [&](index j0, index j1, S c) {
        if (j1 <= j0) return;
        x.dkappa.middleRows(j0, j1 - j0).noalias() += c * (x.vx.middleRows(j0, j1 - j0) * state.transpose());
        x.dvx.middleRows(j0, j1 - j0).noalias() += c * (x.kappa.middleRows(j0, j1 - j0) * state);
    };
    // Far behind, key side: U_behind over the blocks from the last.
    state.setZero();
    for (index b = blocks - 1; b >= 0; --b) {
        add_queries(b);
        far_key_side(b > 0 ? lo[b - 1] : 0, lo[b], c_behind);
    }
    if (!causal) {
        state.setZero();
        for (index b = blocks - 1, begin = nk; b >= 0; --b) {
            add_keys(hi[b], begin);
            begin = std::min(begin, hi[b]);
            if (begin < nk) far_query_side(b, c_ahead, far[1]);
        }
        state.setZero();
        for (index b = 0; b < blocks; ++b) {
            add_queries(b);
            far_key_side(hi[b], b + 1 < blocks ? hi[b + 1] : nk, c_ahead);
        }
    }
    if (x.dlog_c) {
        (*x.dlog_c)[0] += far[0];
        (*x.dlog_c)[2 * t_max - 2] += far[1];
    }
}

/// \brief Y (N, F) = C X with C_ij = w(j − i + delta) by the same band / far split, for testing the split on
/// its own: O(N·(R + 2T_max)·F).
template <class S>
void toeplitz_product_banded(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& x,
                             Eigen::Ref<row_matrix<S>> y, index delta, bool causal)
{
    const index n = y.rows(), nk = x.rows();
    if (n == 0) return;
    // A product is attention with ψ_i = κ_j = 1 (M = 1) and Vx = X.
    const row_matrix<S> ones_q = row_matrix<S>::Ones(n, 1), ones_k = row_matrix<S>::Ones(nk, 1);
    toeplitz_mix_banded<S>(w, ones_q, ones_k, x, y, 0, delta, causal);
}

} // namespace detail
} // namespace linrpe
