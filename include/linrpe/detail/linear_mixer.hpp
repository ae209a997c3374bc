#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing without positional weights: non-causal and causal, as blocked GEMMs.
///
/// Both kernels split the sequence into blocks whose size never depends on the thread count, run the
/// blocks in parallel and combine them in a fixed order, so results are identical for any thread count.

#include "../types.hpp"
#include "parallel.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

/// Rows per key block of the non-causal state reduction (fixed: it defines the summation order).
inline constexpr index noncausal_block = 4096;

/// \brief num = Ψ (Κᵀ Vx): every query sees every key.
///
/// S = Σ_b Κ_bᵀ Vx_b over key blocks of `noncausal_block` rows (parallel, summed in block order), then
/// num = Ψ S over row blocks (parallel). 2·(N + Nk)·M·Ex flops, O(M·Ex·Nk/block) extra memory.
template <class S>
void mix_all(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
             const Eigen::Ref<const row_matrix<S>>& vx, Eigen::Ref<row_matrix<S>> num, int threads = 0)
{
    const index nk = kappa.rows(), m = kappa.cols(), ex = vx.cols();
    const index kblocks = std::max<index>(1, (nk + noncausal_block - 1) / noncausal_block);
    std::vector<row_matrix<S>> partial(static_cast<std::size_t>(kblocks));
    parallel_for(kblocks, threads, [&](index b) {
        const index r0 = b * noncausal_block, rows = std::min(noncausal_block, nk - r0);
        partial[b].noalias() = kappa.middleRows(r0, rows).transpose() * vx.middleRows(r0, rows); // (M, Ex)
    });
    row_matrix<S> state = row_matrix<S>::Zero(m, ex);
    for (const auto& p : partial) state += p;
    const index n = psi.rows();
    const index qblocks = std::max<index>(1, (n + noncausal_block - 1) / noncausal_block);
    parallel_for(qblocks, threads, [&](index b) {
        const index r0 = b * noncausal_block, rows = std::min(noncausal_block, n - r0);
        num.middleRows(r0, rows).noalias() = psi.middleRows(r0, rows) * state; // (rows, Ex)
    });
}

/// \brief Causal mixing in chunked GEMM form, continuing from `state` = Σ_{earlier j} κ_j vx_jᵀ (M, Ex).
///
/// With chunks c of C rows (Katharopoulos et al. 2020, in the chunked form of fla):
///   1. (parallel over c) num_c = tril(Ψ_c Κ_cᵀ) Vx_c and Δ_c = Κ_cᵀ Vx_c
///   2. (in order)        S_c = S_{c−1} + Δ_{c−1}, S_0 = state
///   3. (parallel over c) num_c += Ψ_c S_c
/// Only the lower triangle of Ψ_c Κ_cᵀ is kept, and S_c only holds earlier chunks, so row i never uses a
/// later key: outputs up to i are bit-identical whatever later tokens hold. Cost
/// O(N·(M·Ex + C·(M + Ex))) time, O((N/C)·M·Ex) extra memory for the chunk states.
template <class S>
void mix_causal(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
                const Eigen::Ref<const row_matrix<S>>& vx, Eigen::Ref<row_matrix<S>> num, row_matrix<S>& state,
                index chunk, int threads = 0)
{
    const index n = psi.rows(), m = psi.cols(), ex = vx.cols();
    if (n == 0) return;
    const index chunks = (n + chunk - 1) / chunk;
    std::vector<row_matrix<S>> states(static_cast<std::size_t>(chunks)); // Δ_c, then S_c
    parallel_for(chunks, threads, [&](index c) {
        const index r0 = c * chunk, rows = std::min(chunk, n - r0);
        const auto psi_c = psi.middleRows(r0, rows);     // (C, M)
        const auto kappa_c = kappa.middleRows(r0, rows); // (C, M)
        const auto vx_c = vx.middleRows(r0, rows);       // (C, Ex)
        row_matrix<S> scores = psi_c * kappa_c.transpose(); // (C, C)
        scores.template triangularView<Eigen::StrictlyUpper>().setZero();
        num.middleRows(r0, rows).noalias() = scores * vx_c;
        states[c].noalias() = kappa_c.transpose() * vx_c; // Δ_c (M, Ex)
    });
    row_matrix<S> running = state.size() ? state : row_matrix<S>::Zero(m, ex);
    for (auto& s : states) {
        s.swap(running); // s = S_c (before this chunk); running = Δ_c
        running += s;    // S_{c+1}
    }
    state = running;
    parallel_for(chunks, threads, [&](index c) {
        const index r0 = c * chunk, rows = std::min(chunk, n - r0);
        num.middleRows(r0, rows).noalias() += psi.middleRows(r0, rows) * states[c];
    });
}

} // namespace detail
} // namespace linrpe
