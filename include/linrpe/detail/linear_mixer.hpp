#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing without positional weights: non-causal and causal, as blocked GEMMs.
///
/// Both kernels write the numerator Σ_j ⟨ψ_i, κ_j⟩ v_j into `num` (N, E) and, when `den` is non-null,
/// the denominator Σ_j ⟨ψ_i, κ_j⟩ into `den` (N). The state is one (M, E + 1) matrix [S | z], with
/// S = Σ_j κ_j v_jᵀ and z = Σ_j κ_j (column E, used only with a denominator). The sequence is split into
/// blocks whose size never depends on the thread count; blocks run in parallel and are combined in a
/// fixed order, so results are identical for any thread count.

#include "../types.hpp"
#include "parallel.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

/// Rows per key block of the non-causal state reduction (fixed: it defines the summation order).
inline constexpr index noncausal_block = 4096;

/// [S | z] contribution of key rows: (M, E + 1) with z = Κᵀ 1 in column E when `with_den`.
template <class S, class K, class V>
void state_of(const K& kappa, const V& v, bool with_den, row_matrix<S>& out)
{
    const index e = v.cols();
    out.resize(kappa.cols(), e + (with_den ? 1 : 0));
    out.leftCols(e).noalias() = kappa.transpose() * v; // (M, E)
    if (with_den) out.col(e) = kappa.colwise().sum().transpose();
}

/// \brief Non-causal: num = Ψ S, den = Ψ z with S = Κᵀ V, z = Κᵀ 1.
///
/// The state is reduced over key blocks of `noncausal_block` rows (parallel, summed in block order), then
/// applied to query blocks (parallel). 2·(N + Nk)·M·E flops, O(M·E·Nk/block) extra memory.
template <class S>
void mix_all(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
             const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> num, vector<S>* den, int threads = 0)
{
    const index nk = kappa.rows(), m = kappa.cols(), e = v.cols(), n = psi.rows();
    const bool with_den = den != nullptr;
    const index kblocks = std::max<index>(1, (nk + noncausal_block - 1) / noncausal_block);
    std::vector<row_matrix<S>> partial(static_cast<std::size_t>(kblocks));
    parallel_for(kblocks, threads, [&](index b) {
        const index r0 = b * noncausal_block, rows = std::min(noncausal_block, nk - r0);
        state_of<S>(kappa.middleRows(r0, rows), v.middleRows(r0, rows), with_den, partial[b]);
    });
    row_matrix<S> state = row_matrix<S>::Zero(m, e + (with_den ? 1 : 0));
    for (const auto& p : partial) state += p;
    const index qblocks = std::max<index>(1, (n + noncausal_block - 1) / noncausal_block);
    parallel_for(qblocks, threads, [&](index b) {
        const index r0 = b * noncausal_block, rows = std::min(noncausal_block, n - r0);
        const auto psi_b = psi.middleRows(r0, rows);               // (rows, M)
        num.middleRows(r0, rows).noalias() = psi_b * state.leftCols(e); // (rows, E)
        if (with_den) den->segment(r0, rows).noalias() = psi_b * state.col(e);
    });
}

/// \brief Causal mixing in chunked GEMM form, continuing from `state` = [S | z] of earlier tokens.
///
/// With chunks c of C rows (Katharopoulos et al. 2020, in the chunked form of fla):
///   1. (parallel over c) A_c = tril(Ψ_c Κ_cᵀ); num_c = A_c V_c, den_c = A_c 1; Δ_c = [Κ_cᵀ V_c | Κ_cᵀ 1]
///   2. (in order)        S_c = S_{c−1} + Δ_{c−1}, S_0 = state
///   3. (parallel over c) num_c += Ψ_c S_c, den_c += Ψ_c z_c
/// Only the lower triangle of Ψ_c Κ_cᵀ is kept and S_c holds earlier chunks only, so row i never uses a
/// later key: outputs up to i are bit-identical whatever (finite) values later tokens hold.
/// O(N·(M·E + C·(M + E))) time, O((N/C)·M·E) extra memory for the chunk states.
template <class S>
void mix_causal(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
                const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> num, vector<S>* den,
                row_matrix<S>& state, index chunk, int threads = 0)
{
    const index n = psi.rows(), m = psi.cols(), e = v.cols();
    const bool with_den = den != nullptr;
    const index width = e + (with_den ? 1 : 0);
    if (state.size() == 0) state = row_matrix<S>::Zero(m, width);
    if (n == 0) return;
    const index chunks = (n + chunk - 1) / chunk;
    std::vector<row_matrix<S>> states(static_cast<std::size_t>(chunks)); // Δ_c, then S_c
    parallel_for(chunks, threads, [&](index c) {
        const index r0 = c * chunk, rows = std::min(chunk, n - r0);
        const auto kappa_c = kappa.middleRows(r0, rows); // (C, M)
        const auto v_c = v.middleRows(r0, rows);         // (C, E)
        row_matrix<S> scores = psi.middleRows(r0, rows) * kappa_c.transpose(); // (C, C)
        scores.template triangularView<Eigen::StrictlyUpper>().setZero();
        num.middleRows(r0, rows).noalias() = scores * v_c;
        if (with_den) den->segment(r0, rows) = scores.rowwise().sum();
        state_of<S>(kappa_c, v_c, with_den, states[c]);
    });
    row_matrix<S> running = state;
    for (auto& s : states) {
        s.swap(running); // s = S_c (tokens before chunk c); running = Δ_c
        running += s;    // S_{c+1}
    }
    state = running;
    parallel_for(chunks, threads, [&](index c) {
        const index r0 = c * chunk, rows = std::min(chunk, n - r0);
        const auto psi_c = psi.middleRows(r0, rows);
        num.middleRows(r0, rows).noalias() += psi_c * states[c].leftCols(e);
        if (with_den) den->segment(r0, rows).noalias() += psi_c * states[c].col(e);
    });
}

} // namespace detail
} // namespace linrpe
