#pragma once
// IWYU pragma: private
/// \file
/// \brief Non-causal mixing without positional weights, fused by row blocks.

#include "../types.hpp"
#include "causal_mixer.hpp"
#include "mixer_setup.hpp"
#include "parallel.hpp"
#include "../workspace.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

/// \brief out (N, E) = ψ S / (ψ z + eps) with S = Σ_j κ_j v_jᵀ (M', E), z = Σ_j κ_j, fused by blocks of
/// fused_block rows: κ_b = encode(K_b) feeds [S | z] += [κ_bᵀ V_b | κ_bᵀ 1] while in cache, then
/// ψ_b = encode(Q_b) gives out_b. Features are never materialized for the whole sequence: the traffic is one
/// read of Q, K, V and one write of out, as for the two GEMMs alone. Key blocks, then query blocks, run in
/// parallel; the per-block states are summed in block order, so the result is independent of the threads.
/// 2·(N + Nk)·M'·E flops; extra memory O(fused_block·M' + (Nk / fused_block)·M'·E).
///
/// `encode(x, role, first, out, arena)` writes ψ or κ of the rows x into out, taking its own scratch from
/// the arena; every block's features live in the arena of the thread that runs the block (`ws`).
template <class S, class EncodeInto, class Normalize>
void noncausal_forward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                       const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> out, index q_first,
                       index k_first, const mixer_setup& setup, workspace<S>& ws, const EncodeInto& encode,
                       const Normalize& normalize)
{
    const index n = q.rows(), nk = k.rows(), e = v.cols(), m = setup.m;
    const bool with_den = setup.with_den;
    const index kblocks = std::max<index>(1, (nk + fused_block - 1) / fused_block);
    std::vector<causal_state<S>> partial(static_cast<std::size_t>(kblocks));
    parallel_for(kblocks, setup.threads, [&](index b) {
        const index r0 = b * fused_block, rows = std::min(fused_block, nk - r0);
        scratch_scope<S> tmp(ws.local());
        auto kappa = tmp.matrix(rows, m); // (rows, M')
        encode(k.middleRows(r0, rows), role::key, k_first + r0, kappa, tmp.source());
        partial[b].reset(m, e, with_den);
        partial[b].add(kappa, v.middleRows(r0, rows));
    });
    causal_state<S> state; // S (M', E), z (M')
    state.reset(m, e, with_den);
    for (const auto& p : partial) state += p;
    const index qblocks = (n + fused_block - 1) / fused_block;
    parallel_for(qblocks, setup.threads, [&](index b) {
        const index r0 = b * fused_block, rows = std::min(fused_block, n - r0);
        scratch_scope<S> tmp(ws.local());
        auto psi = tmp.matrix(rows, m); // (rows, M')
        encode(q.middleRows(r0, rows), role::query, q_first + r0, psi, tmp.source());
        Eigen::Ref<row_matrix<S>> o = out.middleRows(r0, rows);
        o.noalias() = psi * state.s; // (rows, E)
        vector<S> den;
        if (with_den) den.noalias() = psi * state.z;
        normalize(o, with_den ? &den : nullptr);
    });
}

/// \brief VJP of noncausal_forward: dq (N, D), dk (Nk, D), dv (Nk, E) for the seed dout (N, E), in the four
/// GEMMs of docs/design.md §16 (plus the state S of the forward, recomputed):
///
///     S = Κᵀ V̄,   dΨ = G Sᵀ,   U = Ψᵀ G,   dΚ = V̄ Uᵀ,   dV = Κ U_g
///
/// with G the normalization's seed (backward_query_rows forms it without the numerator under `sum`).
///   1. (parallel over key blocks) κ_b = encode(K_b), kept; partial S summed in block order
///   2. (parallel over query blocks) ψ_b, G_b, dΨ_b → dq_b by encode_backward; partial U in block order
///   3. (parallel over key blocks) dΚ_b, dV_b → dk_b by encode_backward
/// Flops ≈ 2·M'·Ex·(3·Nk + 2·N) (4·N·M'·Ex more under `rms`, which needs the numerator); extra memory
/// O(Nk·M' + block·(M' + E) + blocks·M'·E), κ from the workspace. Thread-independent like the forward.
template <class S, class Encode, class EncodeBackward>
void noncausal_backward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                        const Eigen::Ref<const row_matrix<S>>& v, const Eigen::Ref<const row_matrix<S>>& dout,
                        Eigen::Ref<row_matrix<S>> dq, Eigen::Ref<row_matrix<S>> dk, Eigen::Ref<row_matrix<S>> dv,
                        index q_first, index k_first, const mixer_setup& setup, normalization norm, S eps,
                        const Encode& encode, const EncodeBackward& encode_backward, workspace<S>& ws)
{
    const index n = q.rows(), nk = k.rows(), e = v.cols(), m = setup.m;
    const bool with_den = setup.with_den;
    scratch_scope<S> scope(ws.local());
    auto kappa = scope.matrix(nk, m); // (Nk, M')
    const index kblocks = std::max<index>(1, (nk + fused_block - 1) / fused_block);
    std::vector<causal_state<S>> partial(static_cast<std::size_t>(kblocks));
    parallel_for(kblocks, setup.threads, [&](index b) {
        const index r0 = b * fused_block, rows = std::min(fused_block, nk - r0);
        kappa.middleRows(r0, rows) = encode(k.middleRows(r0, rows), role::key, k_first + r0);
        partial[b].reset(m, e, with_den);
        partial[b].add(kappa.middleRows(r0, rows), v.middleRows(r0, rows));
    });
    causal_state<S> state; // S (M', E), z (M')
    state.reset(m, e, with_den);
    for (const auto& p : partial) state += p;
    const index qblocks = (n + fused_block - 1) / fused_block;
    std::vector<causal_state<S>> upart(static_cast<std::size_t>(qblocks));
    parallel_for(qblocks, setup.threads, [&](index b) {
        const index r0 = b * fused_block, rows = std::min(fused_block, n - r0);
        const row_matrix<S> psi = encode(q.middleRows(r0, rows), role::query, q_first + r0); // (rows, M')
        row_matrix<S> g(rows, e), dpsi(rows, m);                                             // (rows, E), (rows, M')
        vector<S> g_den(rows);
        backward_query_rows<S>(psi, dout.middleRows(r0, rows), state, nullptr, norm, eps, g, g_den, dpsi);
        encode_backward(q.middleRows(r0, rows), psi, dpsi, dq.middleRows(r0, rows), role::query, q_first + r0);
        upart[b].reset(m, e, with_den);
        add_suffix(upart[b], psi, g, g_den);
    });
    causal_state<S> u; // U_g (M', E), u_den (M')
    u.reset(m, e, with_den);
    for (const auto& p : upart) u += p;
    parallel_for(kblocks, setup.threads, [&](index b) {
        const index r0 = b * fused_block, rows = std::min(fused_block, nk - r0);
        row_matrix<S> dkappa(rows, m); // (rows, M')
        backward_key_rows<S>(kappa.middleRows(r0, rows), v.middleRows(r0, rows), u, nullptr, dout.topRows(0), dkappa,
                             dv.middleRows(r0, rows));
        encode_backward(k.middleRows(r0, rows), kappa.middleRows(r0, rows), dkappa, dk.middleRows(r0, rows), role::key,
                        k_first + r0);
    });
}

} // namespace detail
} // namespace linrpe
