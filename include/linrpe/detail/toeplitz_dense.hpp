#pragma once
// IWYU pragma: private
/// \file
/// \brief Toeplitz mixing, dense algorithm: the weighted N × Nk score matrix, one row block at a time, and
/// the weighted rectangle / causal triangle blocks that the banded and FFT algorithms share.

#include "../types.hpp"
#include "parallel.hpp"
#include "relative_weights.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

/// \brief num rows [r0, r0 + rows) += ((Ψ_r Κ_cᵀ) ⊙ W) Vx_c over the keys c = [c0, c0 + cols), with
/// W(i, j) = table[j − i + off]: one score GEMM, a vector multiply per row, one GEMM with Vx. Every key of
/// the rectangle must be visible to every row (no mask is applied). `scores` is scratch.
template <class S>
void add_weighted_rectangle(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
                            const Eigen::Ref<const row_matrix<S>>& vx, const vector<S>& table, index off, index r0,
                            index rows, index c0, index cols, Eigen::Ref<row_matrix<S>> num, row_matrix<S>& scores)
{
    if (rows <= 0 || cols <= 0) return;
    scores.noalias() = psi.middleRows(r0, rows) * kappa.middleRows(c0, cols).transpose(); // (rows, cols)
    for (index i = 0; i < rows; ++i)
        scores.row(i).array() *= table.segment(c0 - (r0 + i) + off, cols).transpose().array();
    num.middleRows(r0, rows).noalias() += scores * vx.middleRows(c0, cols); // (rows, Ex)
}

/// Rows below which a causal triangle is summed row by row (a GEMV over exactly the visible keys).
constexpr index triangle_direct_rows = 16;

/// \brief The causal triangle: row r0 + a gets Σ over keys j in [c0, c0 + a] ∩ [0, Nk) of
/// W(i, j) ⟨ψ_i, κ_j⟩ vx_j, W as in add_weighted_rectangle.
///
/// No key later than a row's last visible one enters that row's arithmetic, not even multiplied by 0
/// (0·NaN = NaN, 0·inf = NaN): the triangle is halved recursively into two triangles and the rectangle
/// between them (a GEMM, all visible), down to triangle_direct_rows rows summed key by visible key.
/// About rows²/2 pairs, all but O(rows·16) of them in GEMMs.
template <class S>
void add_weighted_triangle(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
                           const Eigen::Ref<const row_matrix<S>>& vx, const vector<S>& table, index off, index r0,
                           index rows, index c0, Eigen::Ref<row_matrix<S>> num, row_matrix<S>& scores)
{
    const index nk = kappa.rows();
    if (rows <= 0 || c0 >= nk) return;
    if (rows <= triangle_direct_rows) {
        for (index a = 0; a < rows; ++a) {
            const index i = r0 + a, ja = std::max<index>(c0, 0), jb = std::min(c0 + a + 1, nk);
            if (jb <= ja) continue;
            vector<S> s = kappa.middleRows(ja, jb - ja) * psi.row(i).transpose(); // (keys)
            s.array() *= table.segment(ja - i + off, jb - ja).array();
            num.row(i).noalias() += s.transpose() * vx.middleRows(ja, jb - ja);
        }
        return;
    }
    const index h = rows / 2;
    add_weighted_triangle<S>(psi, kappa, vx, table, off, r0, h, c0, num, scores);
    const index ja = std::max<index>(c0, 0), jb = std::min(c0 + h, nk);
    add_weighted_rectangle<S>(psi, kappa, vx, table, off, r0 + h, rows - h, ja, jb - ja, num, scores);
    add_weighted_triangle<S>(psi, kappa, vx, table, off, r0 + h, rows - h, c0 + h, num, scores);
}

/// \brief num = ((Ψ Κᵀ) ⊙ W) Vx with W_ij = c_{(k0+j)−(q0+i)} (0 for a future key when causal).
///
/// Row blocks of `block` queries and column tiles of 1024 keys: one GEMM for the scores, a vector multiply
/// per row by a segment of the offset table, one GEMM with Vx. O(N·Nk·(M + Ex)) time (half when causal),
/// O(threads·block·1024) extra memory. Row blocks run in parallel.
/// Causal: a block takes the keys visible to all its rows as rectangles and the rest as a causal triangle
/// (add_weighted_triangle), so a future key or value never enters a past output's arithmetic: outputs up
/// to i are bit-identical whatever later tokens hold (NaN and inf included).
template <class S>
void toeplitz_mix_dense(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                        const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                        Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, index block = 128,
                        int threads = 0)
{
    const index n = psi.rows(), nk = kappa.rows();
    if (n == 0) return;
    if (nk == 0) {
        num.setZero();
        return;
    }
    const index delta = k_first - q_first;
    // Offsets t = j − i + delta span [delta − (n − 1), delta + nk − 1]; table index j − i + n − 1.
    const vector<S> table = offset_table(w, delta - (n - 1), delta + nk - 1, causal);
    // Column tiles keep the (block, tile) score matrix in L2 (128 × 1024 floats = 512 KiB): with whole rows
    // of keys the scores of N = 8192 spill to memory and a pair costs 4.5 ns instead of 3.6 ns (measured).
    constexpr index tile = 1024;
    // Row blocks are independent (each writes its own rows), so they run in parallel with the same result.
    parallel_for((n + block - 1) / block, threads, [&](index b) {
        const index r0 = b * block, rows = std::min(block, n - r0);
        row_matrix<S> scores;
        num.middleRows(r0, rows).setZero();
        // Row r0 + a sees keys j <= r0 + a − delta: [0, r0 − delta) for every row, then a triangle.
        const index full = causal ? std::clamp<index>(r0 - delta, 0, nk) : nk;
        for (index c0 = 0; c0 < full; c0 += tile)
            add_weighted_rectangle<S>(psi, kappa, vx, table, n - 1, r0, rows, c0, std::min(tile, full - c0), num, scores);
        if (causal) add_weighted_triangle<S>(psi, kappa, vx, table, n - 1, r0, rows, r0 - delta, num, scores);
    });
}

// ---- backward (docs/design.md §16) ----------------------------------------------------------------------
//
// With Ā = W ⊙ (Ψ Κᵀ) and the seed G (N, Ex) of num = Ā Vx (normalize.hpp), the VJP of the mixing is
//
//     dΨ = (W ⊙ G Vxᵀ) Κ,   dΚ = (W ⊙ G Vxᵀ)ᵀ Ψ,   dVx = Āᵀ G,
//     ∂L/∂(log c_t) = c_t ∂L/∂c_t = Σ_{(i, j) at offset t} W_ij (ψ_i·κ_j)(g_i·vx_j)
//
// the last summed into the stored (clipped) index of t, so the two end entries collect every offset beyond
// ±(T_max − 1). Mixers report this weighted form (exactly what the weights they used contribute, causal
// mask and flushed subnormals included); the encoding chains it into its parameters (toeplitz_rpe: c =
// exp(b − shift), so it is ∂L/∂b itself).

/// \brief Inputs and outputs of a Toeplitz mixing VJP for one head: ψ (N, M), κ (Nk, M), Vx (Nk, Ex), the
/// seed G (N, Ex); dΨ, dΚ, dVx are ADDED to, and so is dlog_c (2·T_max − 1, by stored offset index) when
/// not null. sub() views rows [r0, r0 + rows) of the query side and [c0, c0 + cols) of the key side.
template <class S>
struct toeplitz_vjp {
    Eigen::Ref<const row_matrix<S>> psi, kappa, vx;
    Eigen::Ref<row_matrix<S>> g, dpsi, dkappa, dvx; // g: read, or written by a mixer that forms the seed itself
    vector<double>* dlog_c;

    toeplitz_vjp sub(index r0, index rows, index c0, index cols)
    {
        return {psi.middleRows(r0, rows), kappa.middleRows(c0, cols), vx.middleRows(c0, cols), g.middleRows(r0, rows),
                dpsi.middleRows(r0, rows),  dkappa.middleRows(c0, cols), dvx.middleRows(c0, cols), dlog_c};
    }
};

/// dlog_c[stored index of t] += bins[t − t_lo] for every offset t of the bins (clipped into the end entries).
template <class S>
void fold_offset_bins(const relative_weights<S>& w, const std::vector<double>& bins, index t_lo, vector<double>& dlog_c)
{
    for (std::size_t k = 0; k < bins.size(); ++k)
        dlog_c[std::clamp<index>(t_lo + static_cast<index>(k), -(w.t_max - 1), w.t_max - 1) + w.t_max - 1] += bins[k];
}

/// bins[t0 + j] += a_j·b_j for the entries of one row of a score tile (row arrays a, b), the product in S
/// and the sum in double, vectorized (the bias gradient's hot loop: a scalar loop here cost ~10% of the
/// banded backward).
template <class A, class B>
void add_to_bins(std::vector<double>& bins, index t0, const Eigen::ArrayBase<A>& a, const Eigen::ArrayBase<B>& b)
{
    Eigen::Map<Eigen::Array<double, 1, Eigen::Dynamic>>(bins.data() + t0, a.size()) += (a.derived() * b.derived()).template cast<double>();
}

/// \brief VJP of add_weighted_rectangle over rows [r0, r0 + rows) and keys [c0, c0 + cols) of `x`, weights
/// table[j − i + off] (0 where causally masked): two score GEMMs A = Ψ_r Κ_cᵀ, B = G_r Vx_cᵀ, weighted
/// per row, then dΨ_r += B Κ_c, dΚ_c += Bᵀ Ψ_r, dVx_c += Aᵀ G_r, and bins[j − i + off] += A_ij B_ij (B
/// weighted, so masked pairs add nothing). `a`, `b` are scratch.
template <class S>
void add_weighted_rectangle_backward(toeplitz_vjp<S>& x, const vector<S>& table, index off, index r0, index rows,
                                     index c0, index cols, std::vector<double>* bins, row_matrix<S>& a, row_matrix<S>& b)
{
    if (rows <= 0 || cols <= 0) return;
    const auto psi = x.psi.middleRows(r0, rows), g = x.g.middleRows(r0, rows);  // (rows, M), (rows, Ex)
    const auto kappa = x.kappa.middleRows(c0, cols), vx = x.vx.middleRows(c0, cols); // (cols, M), (cols, Ex)
    a.noalias() = psi * kappa.transpose(); // (rows, cols)
    b.noalias() = g * vx.transpose();      // (rows, cols)
    for (index i = 0; i < rows; ++i) {
        const index t0 = c0 - (r0 + i) + off;
        const auto wi = table.segment(t0, cols).transpose().array();
        b.row(i).array() *= wi;
        if (bins) add_to_bins(*bins, t0, a.row(i).array(), b.row(i).array());
        a.row(i).array() *= wi;
    }
    x.dpsi.middleRows(r0, rows).noalias() += b * kappa;
    x.dkappa.middleRows(c0, cols).noalias() += b.transpose() * psi;
    x.dvx.middleRows(c0, cols).noalias() += a.transpose() * g;
}

/// \brief VJP of add_weighted_triangle (row r0 + a, keys [c0, c0 + a] ∩ [0, Nk)), added to `x`'s outputs,
/// by the same recursion: two half triangles and the rectangle between them (add_weighted_rectangle_backward),
/// down to triangle_direct_rows rows taken key by visible key. A masked pair is skipped, never weighted by 0
/// (0·NaN = NaN): dΨ_i reads no later key or value and dΚ_j, dVx_j no earlier query or seed row, so the
/// causal gradients are bit-identical whatever the other side holds (NaN and inf included).
template <class S>
void add_weighted_triangle_backward(toeplitz_vjp<S>& x, const vector<S>& table, index off, index r0, index rows, index c0,
                                    std::vector<double>* bins, row_matrix<S>& a, row_matrix<S>& b)
{
    const index nk = x.kappa.rows();
    if (rows <= 0 || c0 >= nk) return;
    if (rows <= triangle_direct_rows) {
        for (index r = 0; r < rows; ++r) {
            const index i = r0 + r, ja = std::max<index>(c0, 0), jb = std::min(c0 + r + 1, nk);
            if (jb <= ja) continue;
            const auto kappa = x.kappa.middleRows(ja, jb - ja), vx = x.vx.middleRows(ja, jb - ja); // (keys, M), (keys, Ex)
            const auto wi = table.segment(ja - i + off, jb - ja).array();
            vector<S> sa = kappa * x.psi.row(i).transpose(); // (keys)
            vector<S> sb = vx * x.g.row(i).transpose();      // (keys)
            sb.array() *= wi;
            if (bins) add_to_bins(*bins, ja - i + off, sa.transpose().array(), sb.transpose().array());
            sa.array() *= wi;
            x.dpsi.row(i).noalias() += sb.transpose() * kappa;
            x.dkappa.middleRows(ja, jb - ja).noalias() += sb * x.psi.row(i);
            x.dvx.middleRows(ja, jb - ja).noalias() += sa * x.g.row(i);
        }
        return;
    }
    const index h = rows / 2;
    add_weighted_triangle_backward<S>(x, table, off, r0, h, c0, bins, a, b);
    const index ja = std::max<index>(c0, 0), jb = std::min(c0 + h, nk);
    add_weighted_rectangle_backward<S>(x, table, off, r0 + h, rows - h, ja, jb - ja, bins, a, b);
    add_weighted_triangle_backward<S>(x, table, off, r0 + h, rows - h, c0 + h, bins, a, b);
}

/// \brief VJP of toeplitz_mix_dense (added to `x`'s outputs): the same row blocks and key tiles, each pair
/// of blocks by add_weighted_rectangle_backward, and each causal block's triangle by
/// add_weighted_triangle_backward (masked pairs skipped, so causal gradients are NaN-proof like the
/// forward). O(N·Nk·(3M + 2Ex)) time (about half when causal), O(block·tile) extra memory. Runs serially
/// inside the head (every row block adds to every key row); the result depends on the shape only.
template <class S>
void toeplitz_backward_dense(const relative_weights<S>& w, toeplitz_vjp<S> x, index q_first, index k_first, bool causal,
                             index block = 128)
{
    const index n = x.psi.rows(), nk = x.kappa.rows();
    if (n == 0 || nk == 0) return;
    const index delta = k_first - q_first, t_lo = delta - (n - 1);
    const vector<S> table = offset_table(w, t_lo, delta + nk - 1, causal);
    std::vector<double> bins(x.dlog_c ? static_cast<std::size_t>(table.size()) : 0, 0.0);
    std::vector<double>* b = x.dlog_c ? &bins : nullptr;
    constexpr index tile = 1024;
    row_matrix<S> sa, sb;
    for (index r0 = 0; r0 < n; r0 += block) {
        const index rows = std::min(block, n - r0);
        const index full = causal ? std::clamp<index>(r0 - delta, 0, nk) : nk;
        for (index c0 = 0; c0 < full; c0 += tile)
            add_weighted_rectangle_backward<S>(x, table, n - 1, r0, rows, c0, std::min(tile, full - c0), b, sa, sb);
        if (causal) add_weighted_triangle_backward<S>(x, table, n - 1, r0, rows, r0 - delta, b, sa, sb);
    }
    if (x.dlog_c) fold_offset_bins(w, bins, t_lo, *x.dlog_c);
}

} // namespace detail
} // namespace linrpe
