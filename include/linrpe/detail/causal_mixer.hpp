#pragma once
// IWYU pragma: private
/// \file
/// \brief Causal mixing without positional weights: the state, the chunk recurrence and the segmented kernel.
///
/// The state after tokens j < t is S = Σ_j κ_j v_jᵀ (M, E) and, under `sum`, z = Σ_j κ_j (M). The causal
/// kernel walks chunks of C rows in order (Katharopoulos et al. 2020 in chunked form, docs/design.md §6.2):
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
#include "../workspace.hpp"
#include "mixer_setup.hpp"
#include "normalize.hpp"
#include "parallel.hpp"
#include "../workspace.hpp"

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

/// \brief acc.middleRows(r0, rows) += triu(u)(r0.., r0..) · x.middleRows(r0, rows): row j of the result reads
/// only u(j, i) and x row i for j <= i < r0 + rows (the backward's key side, with u = aᵀ copied so that its
/// rows are contiguous: a key's in-chunk gradient sums over the queries at and after it). The halving of
/// lower_triangle_product mirrored: [T₁ B; 0 T₂]·[x₁; x₂] = [T₁ x₁ + B x₂; T₂ x₂], B x₂ a GEMM of later rows.
template <class U, class X, class Acc>
void upper_triangle_product(const U& u, const X& x, Acc& acc, index r0, index rows)
{
    if (rows <= triangle_leaf_rows) {
        for (index j = r0; j < r0 + rows; ++j) {
            const index count = r0 + rows - j;
            acc.row(j).noalias() += u.block(j, j, 1, count).lazyProduct(x.middleRows(j, count)); // (1, E)
        }
        return;
    }
    const index h = rows / 2;
    upper_triangle_product(u, x, acc, r0, h);
    acc.middleRows(r0, h).noalias() += u.block(r0, r0 + h, h, rows - h) * x.middleRows(r0 + h, rows - h); // (h, E)
    upper_triangle_product(u, x, acc, r0 + h, rows - h);
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
/// Features of a block live in the arena of the thread that runs it (`ws`, see noncausal_forward).
template <class S, class EncodeInto, class Normalize>
void causal_forward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                    const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> out, index first,
                    causal_state<S>* carried, bool split, const mixer_setup& setup, workspace<S>& ws,
                    const EncodeInto& encode, const Normalize& normalize)
{
    const index n = q.rows(), e = v.cols(), chunk = setup.chunk, m = setup.m;
    const bool with_den = setup.with_den;
    const index block = std::max<index>(1, std::min(fused_block, setup.segment_rows) / chunk) * chunk;
    const index segment = split ? std::max<index>(1, setup.segment_rows / block) * block : n;
    const index segments = (n + segment - 1) / segment;
    std::vector<causal_state<S>> start(static_cast<std::size_t>(segments));
    parallel_for(segments - 1, setup.threads, [&](index s) {
        start[s].reset(m, e, with_den);
        scratch_scope<S> tmp(ws.local());
        auto kappa = tmp.matrix(block, m); // (block, M')
        for (index r0 = s * segment; r0 < (s + 1) * segment; r0 += block) {
            encode(k.middleRows(r0, block), role::key, first + r0, kappa, tmp.source());
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
        scratch_scope<S> tmp(ws.local());
        auto psi_block = tmp.matrix(block, m);   // (block, M')
        auto kappa_block = tmp.matrix(block, m); // (block, M')
        for (index b0 = 0; b0 < srows; b0 += block) {
            const index r0 = s0 + b0, rows = std::min(block, srows - b0);
            auto psi = psi_block.topRows(rows);
            auto kappa = kappa_block.topRows(rows);
            encode(q.middleRows(r0, rows), role::query, first + r0, psi, tmp.source());
            encode(k.middleRows(r0, rows), role::key, first + r0, kappa, tmp.source());
            Eigen::Ref<row_matrix<S>> o = out.middleRows(r0, rows);
            if (with_den) den.resize(rows);
            causal_chunks<S>(psi, kappa, v.middleRows(r0, rows), o, with_den ? &den : nullptr, state, chunk, scores);
            normalize(o, with_den ? &den : nullptr);
        }
    });
    if (carried) *carried = std::move(start.back());
}

// ---- backward (docs/design.md §16) -----------------------------------------------------------------------------
//
// With Ψ (N, M), Κ (Nk, M), V̄ = [V, 1] under `sum` (V otherwise) and the seed G = [g, g_den] of the
// normalization (normalize.hpp), the mixing VJP is
//
//     dΨ = (W ⊙ G V̄ᵀ) Κ,   dΚ = (W ⊙ G V̄ᵀ)ᵀ Ψ,   dV = (W ⊙ Ψ Κᵀ)ᵀ g
//
// Causally, dψ_i sums over keys j <= i (prefix states) and dκ_j, dv_j over queries i >= j (suffix states):
//
//     dΨ_c = G_c Sᵀ + tril(G_c V̄_cᵀ) Κ_c                     S = Σ_{j before c} κ_j v̄_jᵀ (M, Ex)
//     dΚ_c = V̄_c Uᵀ + tril(G_c V̄_cᵀ)ᵀ Ψ_c,  dV_c = Κ_c U_g + tril(Ψ_c Κ_cᵀ)ᵀ g_c
//                                                          U = Σ_{i after c} ψ_i g_iᵀ (M, Ex)
//
// The seed needs dout_i · num_i, which is formed without the numerator: with P = dout Sᵀ (needed for dΨ
// anyway) and D = tril(dout V_cᵀ) (needed for the in-chunk term), dout_i · num_i = ψ_i · P_i + Σ_j A_ij D_ij.
// Masked (future for dΨ, past for dΚ, dV) entries of the (C, C) products are set to zero (for the row sums)
// and never read by the products with them (lower_triangle_product, upper_triangle_product), so dK_j, dV_j never
// read a query or dOut row before j and dQ_i never reads a key, value or dOut row after i: bit-exactly,
// whatever those rows hold (NaN and Inf included; tests/test_no_leak_backward.cpp).

/// The rows of one chunk for its in-chunk (causal) terms: its ψ, κ, V, the stores of
/// A = tril(Ψ_c Κ_cᵀ) and B = tril(G V̄_cᵀ) (C, C) that the query pass writes and the key pass reads, and
/// (C, C) scratch `t` for the key pass.
template <class S>
struct chunk_pairs {
    Eigen::Ref<const row_matrix<S>> psi, kappa, v;
    Eigen::Ref<row_matrix<S>> a, b;
    mutable Eigen::Ref<row_matrix<S>> t; // scratch, written by the key pass through a const view
};

/// \brief Query side of the backward for rows `psi` (C, M) with seed rows `dout` (C, E) against `state` (the
/// keys before them) and, when `own` is given, the chunk's own keys (causal). Writes g (C, E), g_den (C,
/// under `sum`), dpsi (C, M) and own->a, own->b. Flops: 2·C·M·E (+ 2·C²·(M + E) + 2·C²·M in-chunk).
template <class S>
void backward_query_rows(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& dout,
                         const causal_state<S>& state, chunk_pairs<S>* own, normalization norm, S eps,
                         Eigen::Ref<row_matrix<S>> g, Eigen::Ref<vector<S>> g_den, Eigen::Ref<row_matrix<S>> dpsi)
{
    if (own) {
        own->a.noalias() = psi * own->kappa.transpose(); // (C, C)
        own->a.template triangularView<Eigen::StrictlyUpper>().setZero();
    }
    if (norm == normalization::rms) {
        row_matrix<S> num = psi * state.s; // (C, E)
        if (own) lower_triangle_product(own->a, own->v, num, 0, num.rows());
        rms_seed<S>(num, dout, g, eps);
    } else if (norm == normalization::none) {
        g = dout;
    }
    // Under `sum` the products take dout and the seed's row scale inv is applied to them afterwards (g is
    // written once, scaled).
    const Eigen::Ref<const row_matrix<S>> seed = norm == normalization::sum ? dout : Eigen::Ref<const row_matrix<S>>(g);
    dpsi.noalias() = seed * state.s.transpose(); // (C, M): P
    if (own) {
        own->b.noalias() = seed * own->v.transpose(); // (C, C): D
        own->b.template triangularView<Eigen::StrictlyUpper>().setZero();
    }
    if (norm != normalization::sum) {
        if (own) lower_triangle_product(own->b, own->kappa, dpsi, 0, dpsi.rows());
        return;
    }
    vector<S> den = psi * state.z;                                        // (C)
    vector<S> dot = (psi.array() * dpsi.array()).rowwise().sum().matrix(); // (C): dout · (Ψ S)
    if (own) {
        den += own->a.rowwise().sum();
        dot += (own->a.array() * own->b.array()).rowwise().sum().matrix();
    }
    vector<S> inv;
    sum_seed<S>(den, dot, eps, inv, g_den);
    g = (dout.array().colwise() * inv.array()).matrix();
    for (index i = 0; i < dpsi.rows(); ++i) // with the denominator's column of G Sᵀ
        dpsi.row(i) = dpsi.row(i) * inv[i] + g_den[i] * state.z.transpose();
    if (own) {
        for (index i = 0; i < own->b.rows(); ++i) own->b.row(i).head(i + 1) = (own->b.row(i).head(i + 1).array() * inv[i] + g_den[i]).matrix();
        lower_triangle_product(own->b, own->kappa, dpsi, 0, dpsi.rows());
    }
}

/// \brief Key side: dkappa (C, M) = V̄ Uᵀ, dv (C, E) = Κ U_g against the suffix state `u` (queries after the
/// rows), plus the in-chunk terms from own->a, own->b with the chunk's seed `g` when `own` is given.
template <class S>
void backward_key_rows(const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& v,
                       const causal_state<S>& u, const chunk_pairs<S>* own, const Eigen::Ref<const row_matrix<S>>& g,
                       Eigen::Ref<row_matrix<S>> dkappa, Eigen::Ref<row_matrix<S>> dv)
{
    dkappa.noalias() = v * u.s.transpose(); // (C, M)
    if (u.z.size()) dkappa.rowwise() += u.z.transpose();
    dv.noalias() = kappa * u.s; // (C, E)
    if (own) {
        // Transposed copies (upper triangular; never multiplied by a mask): rows contiguous for the leaves'
        // row products (in place, a column of `a` as lhs takes Eigen's scalar path: ~10x slower).
        Eigen::Ref<row_matrix<S>> t = own->t.topLeftCorner(dkappa.rows(), dkappa.rows()); // (C, C)
        t = own->b.transpose();
        upper_triangle_product(t, own->psi, dkappa, 0, dkappa.rows());
        t = own->a.transpose();
        upper_triangle_product(t, g, dv, 0, dv.rows());
    }
}

/// Suffix state update of the backward: U_g += Ψᵀ g, u_den += Ψᵀ g_den.
template <class S, class Psi, class G, class GDen>
void add_suffix(causal_state<S>& u, const Psi& psi, const G& g, const GDen& g_den)
{
    u.s.noalias() += psi.transpose() * g;
    if (u.z.size()) u.z.noalias() += psi.transpose() * g_den;
}

/// Exclusive running sums of per-part states in walk order (forward, or from the last part when `reverse`):
/// each part gets the sum of the parts walked before it, the first walked part zero. The last walked part's
/// own state is never read (it may be empty). Fixed order, so the sums do not depend on the thread count.
template <class S>
void exclusive_state_sums(std::vector<causal_state<S>>& parts, bool reverse, index m, index e, bool with_den,
                          const causal_state<S>* init = nullptr, causal_state<S>* total = nullptr)
{
    const index count = static_cast<index>(parts.size());
    causal_state<S> running;
    if (init && !init->empty())
        running = *init;
    else
        running.reset(m, e, with_den);
    for (index t = 0; t + 1 < count; ++t) {
        causal_state<S>& part = parts[reverse ? count - 1 - t : t];
        part.s.swap(running.s); // part = the sum before it; running = its own state
        part.z.swap(running.z);
        running += part;
    }
    if (!count) return;
    causal_state<S>& last = parts[reverse ? 0 : count - 1];
    if (total) {
        *total = running;
        *total += last;
    }
    last = std::move(running);
}

/// \brief VJP of causal_forward (no positional weights): dq, dk (N, D) and dv (N, E) for the seed dout (N, E).
///
/// The query side needs prefix states (chunks forward), the key side suffix states (chunks backward). Both
/// run on one block of rows while its features, seed and (C, C) products are in cache, walking the blocks
/// from the last: each block starts from its prefix state, computed first, and the suffix state is carried
/// in from the block after it. Of size N only κ is stored (one (N, M') pass, as K itself; φ of the keys too
/// when a post-feature stage follows): a store of ψ, κ, G and the chunk products for the whole head made
/// the backward bound by cache traffic (~45% slower per token at 16k than at 1k).
///   1. (parallel over segments) κ = encode(K) by blocks, stored; Δ_b = Κ_bᵀ V̄_b for every block but the last
///   2. (in order) prefix states S_b = Σ_{b' < b} Δ_b'
///   3. (parallel over segments, blocks from the last) ψ of the block; chunks forward: seed G, dΨ (prefix
///      form), → dq by encode_backward; chunks backward: dΚ, dV against the suffix state U carried in from
///      the later blocks of the segment, → dk by encode_backward; U += Ψ_cᵀ G_c
///   4. (in order) U'_s = Σ_{t > s} U_t, the queries after segment s
///   5. (parallel, every segment but the last) dV += Κ U'_g, dk += encode_backward(V̄ U'ᵀ)
/// Segments as in causal_forward (`split`; without it one segment, and 4–5 do nothing). The partition
/// depends on the shape only, so results do not depend on the thread count. Flops ≈ 12·N·M'·E +
/// N·C·(6·M' + 4·E), plus 4·M'·E per row of the first segments (forward: 4·N·M'·E + 2·N·C·(M' + E)); features
/// are encoded once for keys and once for queries; with a post-feature stage (LRPE) the block keeps φ of
/// its queries and the store φ of the keys (`setup.kept`), so the features' VJP reads it instead of
/// evaluating the feature map again. Extra memory: O(N·(M' + kept) + block·(3·M' + M + 2·E + 2·C) + (N /
/// block)·M'·E) from the workspace and the states.
///
/// A call that continued a state (docs/design.md §8) passes it as `initial` (S0, z0: keys before the rows,
/// so the prefix states start there) and, when the state after the call feeds later calls, their gradient
/// `final_grad` w.r.t. it (S_final = S0 + Κᵀ V̄, so the suffix states start there: dΚ += V̄ dS_finalᵀ, dV̄ +=
/// Κ dS_final, which step 5 then applies to the last segment too). `initial_grad` receives dS0 = dS_final +
/// Σ_i ψ_i g_iᵀ, the inclusive sum of step 4. Null or empty states are zero.
template <class S, class EncodeInto, class EncodeBackward>
void causal_backward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                     const Eigen::Ref<const row_matrix<S>>& v, const Eigen::Ref<const row_matrix<S>>& dout,
                     Eigen::Ref<row_matrix<S>> dq, Eigen::Ref<row_matrix<S>> dk, Eigen::Ref<row_matrix<S>> dv, index first,
                     bool split, const mixer_setup& setup, normalization norm, S eps, const EncodeInto& encode,
                     const EncodeBackward& encode_backward, workspace<S>& ws, const causal_state<S>* initial = nullptr,
                     const causal_state<S>* final_grad = nullptr, causal_state<S>* initial_grad = nullptr)
{
    const index n = q.rows(), e = v.cols(), chunk = setup.chunk, m = setup.m;
    const bool with_den = setup.with_den;
    const index block = std::max<index>(1, std::min(fused_block, setup.segment_rows) / chunk) * chunk;
    const index segment = split ? std::max<index>(1, setup.segment_rows / block) * block : n;
    const index segments = (n + segment - 1) / segment, blocks = (n + block - 1) / block;
    const index brows = std::min(block, n), cmax = std::min(chunk, n);
    // Blocks [first, last) of segment s: segments are whole blocks when split, one segment otherwise.
    const auto block_range = [&](index s) {
        return std::make_pair(s * segment / block, std::min(blocks, ((s + 1) * segment + block - 1) / block));
    };
    const auto rows_of = [&](index b) { return std::min(block, n - b * block); };
    std::vector<causal_state<S>> start(static_cast<std::size_t>(blocks)), after(static_cast<std::size_t>(segments));
    // κ of the whole head (and φ of its keys when a post-feature stage follows), encoded once in step 1 and
    // read by steps 3 and 5: encoding again cost one feature-map pass per key (elu+1's exp: ~4% of the
    // backward), storing costs one streamed write of (N, M'), the size of K that encoding reads anyway.
    // From the calling thread's arena: segments on other threads write and read disjoint rows of it.
    scratch_scope<S> store(ws.local());
    auto kappa_all = store.matrix(n, m);                            // (N, M')
    auto phi_k_all = store.matrix(setup.kept ? n : 0, setup.kept); // (N, M) or empty
    parallel_for(segments, setup.threads, [&](index s) {
        const auto range = block_range(s);
        scratch_scope<S> tmp(ws.local());
        for (index b = range.first; b < range.second; ++b) {
            const index r0 = b * block, rows = rows_of(b);
            auto kappa = kappa_all.middleRows(r0, rows);
            Eigen::Ref<row_matrix<S>> phi_k = phi_k_all.middleRows(setup.kept ? r0 : 0, setup.kept ? rows : 0);
            encode(k.middleRows(r0, rows), role::key, first + r0, kappa, tmp.source(), &phi_k);
            if (b + 1 == blocks) continue; // the keys after the last block: none
            start[b].reset(m, e, with_den);
            start[b].add(kappa, v.middleRows(r0, rows));
        }
    });
    exclusive_state_sums(start, false, m, e, with_den, initial);
    parallel_for(segments, setup.threads, [&](index s) {
        const auto range = block_range(s);
        causal_state<S>& u = after[s];
        u.reset(m, e, with_den);
        scratch_scope<S> tmp(ws.local());
        auto psi_block = tmp.matrix(brows, m), dfeat_block = tmp.matrix(brows, m); // (block, M')
        auto g_block = tmp.matrix(brows, e);                                        // (block, E)
        auto a_block = tmp.matrix(brows, cmax), b_block = tmp.matrix(brows, cmax); // chunk c in rows of c
        auto g_den_block = tmp.vec(brows);                                         // (block)
        auto transposed = tmp.matrix(cmax, cmax);                                  // (C, C)
        // dV of the block is accumulated here, then copied: the leaves' row products take alignment-dependent
        // paths (causal_chunks), so accumulating in the caller's buffer made the rounding, and the speed (a
        // misaligned row peels into scalar dot products: ~5% of the backward), depend on its address.
        auto dv_block = tmp.matrix(brows, e); // (block, E)
        auto phi_q_block = tmp.matrix(setup.kept ? brows : 0, setup.kept);         // (block, M): φ kept for the VJP
        for (index b = range.second - 1; b >= range.first; --b) {
            const index r0 = b * block, rows = rows_of(b);
            auto psi = psi_block.topRows(rows), kappa = kappa_all.middleRows(r0, rows), dfeat = dfeat_block.topRows(rows);
            auto g = g_block.topRows(rows);
            auto g_den = g_den_block.head(rows);
            Eigen::Ref<row_matrix<S>> phi_q = phi_q_block.topRows(setup.kept ? rows : 0);
            encode(q.middleRows(r0, rows), role::query, first + r0, psi, tmp.source(), &phi_q);
            const Eigen::Ref<const row_matrix<S>> kept_q = phi_q,
                                                  kept_k = phi_k_all.middleRows(setup.kept ? r0 : 0, setup.kept ? rows : 0);
            const auto v_b = v.middleRows(r0, rows);
            const auto pairs = [&](index c0, index cr) {
                return chunk_pairs<S>{psi.middleRows(c0, cr), kappa.middleRows(c0, cr), v_b.middleRows(c0, cr),
                                      a_block.block(c0, 0, cr, cr), b_block.block(c0, 0, cr, cr), transposed};
            };
            causal_state<S>& state = start[b];
            for (index c0 = 0; c0 < rows; c0 += chunk) {
                const index cr = std::min(chunk, rows - c0);
                chunk_pairs<S> own = pairs(c0, cr);
                backward_query_rows<S>(psi.middleRows(c0, cr), dout.middleRows(r0 + c0, cr), state, &own, norm, eps,
                                       g.middleRows(c0, cr), g_den.segment(c0, cr), dfeat.middleRows(c0, cr));
                state.add(kappa.middleRows(c0, cr), v_b.middleRows(c0, cr));
            }
            encode_backward(q.middleRows(r0, rows), psi, dfeat, dq.middleRows(r0, rows), role::query, first + r0, &kept_q);
            for (index c0 = (rows - 1) / chunk * chunk; c0 >= 0; c0 -= chunk) {
                const index cr = std::min(chunk, rows - c0);
                const chunk_pairs<S> own = pairs(c0, cr);
                backward_key_rows<S>(kappa.middleRows(c0, cr), v_b.middleRows(c0, cr), u, &own, g.middleRows(c0, cr),
                                     dfeat.middleRows(c0, cr), dv_block.middleRows(c0, cr));
                add_suffix(u, psi.middleRows(c0, cr), g.middleRows(c0, cr), g_den.segment(c0, cr));
            }
            dv.middleRows(r0, rows) = dv_block.topRows(rows);
            encode_backward(k.middleRows(r0, rows), kappa, dfeat, dk.middleRows(r0, rows), role::key, first + r0, &kept_k);
        }
    });
    const bool carried_grad = final_grad && !final_grad->empty();
    exclusive_state_sums(after, true, m, e, with_den, final_grad, initial_grad);
    // The key side's VJP is linear in dΚ, so the later segments' share is added to dk after its own VJP (the
    // last segment has a share only from the gradient of a carried final state).
    parallel_for(carried_grad ? segments : segments - 1, setup.threads, [&](index s) {
        const auto range = block_range(s);
        scratch_scope<S> tmp(ws.local());
        auto dkappa_block = tmp.matrix(brows, m);                                     // (block, M')
        auto dv_block = tmp.matrix(brows, e), dk_block = tmp.matrix(brows, k.cols()); // (block, E), (block, D)
        for (index b = range.first; b < range.second; ++b) {
            const index r0 = b * block, rows = rows_of(b);
            const auto v_b = v.middleRows(r0, rows);
            const auto kappa = kappa_all.middleRows(r0, rows);
            auto dkappa = dkappa_block.topRows(rows);
            auto dv_rows = dv_block.topRows(rows), dk_rows = dk_block.topRows(rows);
            const Eigen::Ref<const row_matrix<S>> kept_k = phi_k_all.middleRows(setup.kept ? r0 : 0, setup.kept ? rows : 0);
            backward_key_rows<S>(kappa, v_b, after[s], nullptr, v_b, dkappa, dv_rows);
            encode_backward(k.middleRows(r0, rows), kappa, dkappa, dk_rows, role::key, first + r0, &kept_k);
            dv.middleRows(r0, rows) += dv_rows;
            dk.middleRows(r0, rows) += dk_rows;
        }
    });
}

} // namespace detail
} // namespace linrpe
