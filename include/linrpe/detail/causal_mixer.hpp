#pragma once
// IWYU pragma: private
/// \file
/// \brief Causal mixing without positional weights: the state, the chunk recurrence and the segmented kernel.
///
/// The state after tokens j < t is S = Σ_j κ_j v_jᵀ (M, E) and, under `sum`, z = Σ_j κ_j (M). The causal
/// kernel walks chunks of C rows in order (Katharopoulos et al. 2020 in chunked form, DESIGN §7):
///
///     out_c = Ψ_c S + tril(Ψ_c Κ_cᵀ) V_c,   den_c = Ψ_c z + tril(Ψ_c Κ_cᵀ) 1,   S += Κ_cᵀ V_c,   z += Κ_cᵀ 1
///
/// GEMMs on rows already in cache: about 2·N·(2·M·E + C·M + C·E/2) flops, O(C·(C + E)) scratch. S holds earlier
/// chunks only, and tril(Ψ_c Κ_cᵀ) V_c is never formed as a full (C, C)·(C, E) product: a zero above the
/// diagonal times a NaN or ±Inf value is NaN, so a masked GEMM would let one non-finite future value turn
/// every earlier row of its chunk into NaN. The triangle is split by halving (lower_triangle_product):
/// off-diagonal halves by GEMM over past rows only, leaves of <= 16 rows row by row over j <= i. So row i never
/// reads a later key or value, and outputs up to i are bit-identical whatever values later tokens hold.

#include "../types.hpp"
#include "mixer_setup.hpp"
#include "parallel.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {

/// Running state of causal linear attention: S (M, E) and z (M); z is empty without a denominator.
template <class S>
struct causal_state {
    row_matrix<S> s;
    vector<S> z;

    bool empty() const { return s.size() == 0; }
    /// Zero state for features of width m and values of width e.
    void reset(index m, index e, bool with_den)
    {
        s = row_matrix<S>::Zero(m, e);
        z = with_den ? vector<S>::Zero(m) : vector<S>();
    }
    /// Adds the contribution of key rows: S += Κᵀ V, z += Κᵀ 1.
    template <class K, class V>
    void add(const K& kappa, const V& v)
    {
        s.noalias() += kappa.transpose() * v; // (M, E)
        if (z.size()) z += kappa.colwise().sum().transpose();
    }
    causal_state& operator+=(const causal_state& other)
    {
        s += other.s;
        if (z.size()) z += other.z;
        return *this;
    }
};

/// Rows of a leaf of lower_triangle_product: below this per-row products beat a GEMM call, above it the GEMM of
/// the off-diagonal half keeps most of the work at GEMM speed. Measured (C = 32, M = E = 64, float, one
/// thread): 16 costs ~2% over the masked GEMM of the whole chunk, 8 ~5%; at C = 64 the halving is ~3% faster.
inline constexpr index triangle_leaf_rows = 16;

/// \brief acc.middleRows(r0, rows) += tril(a)(r0.., r0..) · v.middleRows(r0, rows) for the diagonal block
/// [r0, r0 + rows) of `a`, reading only a(i, j) and v row j for r0 <= j <= i (entries above the diagonal are never
/// read, whatever they hold). Recursive halving: [T₁ 0; B T₂]·[v₁; v₂] = [T₁ v₁; B v₁ + T₂ v₂], where B v₁
/// is a GEMM of past rows only. About rows²·E/2 multiply-adds (half the masked product's), all in GEMMs but
/// the ≈ rows·16·E/2 of the leaves.
template <class A, class Values, class Acc>
void lower_triangle_product(const A& a, const Values& v, Acc& acc, index r0, index rows)
{
    if (rows <= triangle_leaf_rows) {
        for (index i = r0; i < r0 + rows; ++i) // row i · rows r0..i only; lazy: no temporary (measured ~4% faster than axpys)
            acc.row(i).noalias() += a.block(i, r0, 1, i - r0 + 1).lazyProduct(v.middleRows(r0, i - r0 + 1)); // (1, E)
        return;
    }
    const index h = rows / 2;
    lower_triangle_product(a, v, acc, r0, h);
    acc.middleRows(r0 + h, rows - h).noalias() += a.block(r0 + h, r0, rows - h, h) * v.middleRows(r0, h); // (rows − h, E)
    lower_triangle_product(a, v, acc, r0 + h, rows - h);
}

/// \brief Causal chunk recurrence over `psi`, `kappa` (rows, M) and `v` (rows, E), continuing from `state`
/// and leaving it after the last row. Writes the numerator into `num` (rows, E) and, when `den` is
/// non-null, the denominator into `den` (rows). `scores` is (C, C + E) scratch reused across calls: the
/// scores, and Ψ_c S + tril(Ψ_c Κ_cᵀ) V_c accumulated in memory of fixed alignment, then copied to `num`.
/// The leaves' small products take alignment-dependent vector paths (peeled FMA vs packet), so accumulating straight into `num` would make
/// the rounding depend on the caller's buffer address (seen: results changing with the output buffer).
template <class S, class Psi, class Kappa, class Values, class Num>
void causal_chunks(const Psi& psi, const Kappa& kappa, const Values& v, Num&& num, vector<S>* den,
                   causal_state<S>& state, index chunk, row_matrix<S>& scores)
{
    const index n = psi.rows(), e = v.cols();
    if (scores.rows() != chunk || scores.cols() != chunk + e) scores.resize(chunk, chunk + e);
    for (index r0 = 0; r0 < n; r0 += chunk) {
        const index rows = std::min(chunk, n - r0);
        const auto psi_c = psi.middleRows(r0, rows);     // (C, M)
        const auto kappa_c = kappa.middleRows(r0, rows); // (C, M)
        const auto v_c = v.middleRows(r0, rows);         // (C, E)
        auto num_c = num.middleRows(r0, rows);           // (C, E)
        auto a = scores.topLeftCorner(rows, rows);       // (C, C)
        auto tri = scores.block(0, chunk, rows, e);      // (C, E)
        a.noalias() = psi_c * kappa_c.transpose(); // (C, C): above the diagonal a later key (maybe NaN)
        tri.noalias() = psi_c * state.s;
        lower_triangle_product(a, v_c, tri, 0, rows);
        num_c = tri;
        if (den) {
            // Overwritten, not multiplied: the row sums then never see a later key.
            a.template triangularView<Eigen::StrictlyUpper>().setZero();
            auto den_c = den->segment(r0, rows);
            den_c.noalias() = psi_c * state.z;
            den_c += a.rowwise().sum();
        }
        state.add(kappa_c, v_c);
    }
}

/// \brief Causal mixing without positional weights: the chunk recurrence of causal_chunks over blocks of
/// `fused_block` rows, each encoded just before use so that ψ, κ, V and the state stay in cache.
///
/// With `split` the sequence is cut into segments of about options::segment_rows rows (whole blocks):
///   1. (parallel) Δ_s = Σ_{j in s} κ_j [v_j, 1]ᵀ for every segment but the last
///   2. (in order) S_s = S_{s−1} + Δ_{s−1}, starting from `carried` (the decoder's state) or zero
///   3. (parallel) the recurrence over each segment from S_s
/// which costs 2·M'·E more flops per token of the first segments, plus encoding their keys again: storing κ
/// instead would cost O(N·M') memory. Without `split` (threads busy with other heads) the recurrence runs
/// once over the whole sequence. Extra memory: O(block·(M' + E) + segments·M'·E) either way. When `carried`
/// is given it holds the state after the call on return.
template <class S, class Encode, class Normalize>
void causal_forward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                    const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> out, index first,
                    causal_state<S>* carried, bool split, const mixer_setup& setup, const Encode& encode,
                    const Normalize& normalize)
{
    const index n = q.rows(), e = v.cols(), chunk = setup.chunk, m = setup.m;
    const bool with_den = setup.with_den;
    const index block = std::max<index>(1, std::min(fused_block, setup.segment_rows) / chunk) * chunk;
    const index segment = split ? std::max<index>(1, setup.segment_rows / block) * block : n;
    const index segments = (n + segment - 1) / segment;
    std::vector<causal_state<S>> start(static_cast<std::size_t>(segments));
    parallel_for(segments - 1, setup.threads, [&](index s) {
        start[s].reset(m, e, with_den);
        for (index r0 = s * segment; r0 < (s + 1) * segment; r0 += block) {
            const row_matrix<S> kappa = encode(k.middleRows(r0, block), role::key, first + r0); // (block, M')
            start[s].add(kappa, v.middleRows(r0, block));
        }
    });
    causal_state<S> running;
    if (carried && !carried->empty()) running = *carried;
    else running.reset(m, e, with_den);
    for (index s = 0; s + 1 < segments; ++s) {
        start[s].s.swap(running.s); // start[s] = S_s (tokens before segment s); running = Δ_s
        start[s].z.swap(running.z);
        running += start[s];
    }
    start.back() = std::move(running);
    parallel_for(segments, setup.threads, [&](index s) {
        const index s0 = s * segment, srows = std::min(segment, n - s0);
        causal_state<S>& state = start[s];
        row_matrix<S> scores;
        vector<S> den;
        for (index b0 = 0; b0 < srows; b0 += block) {
            const index r0 = s0 + b0, rows = std::min(block, srows - b0);
            const row_matrix<S> psi = encode(q.middleRows(r0, rows), role::query, first + r0);   // (rows, M')
            const row_matrix<S> kappa = encode(k.middleRows(r0, rows), role::key, first + r0); // (rows, M')
            Eigen::Ref<row_matrix<S>> o = out.middleRows(r0, rows);
            if (with_den) den.resize(rows);
            causal_chunks<S>(psi, kappa, v.middleRows(r0, rows), o, with_den ? &den : nullptr, state, chunk, scores);
            normalize(o, with_den ? &den : nullptr);
        }
    });
    if (carried) *carried = std::move(start.back());
}

} // namespace detail
} // namespace linrpe
