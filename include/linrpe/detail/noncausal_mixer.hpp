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

} // namespace detail
} // namespace linrpe
