#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing without positional weights: non-causal (two GEMMs) and causal chunked.

#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>

namespace linrpe {
namespace detail {

/// num = Ψ (Κᵀ Vx): every query sees every key. Cost 2·Nk·M·Ex + 2·N·M·Ex flops, O(M·Ex) extra memory.
template <class S>
void mix_all(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
             const Eigen::Ref<const row_matrix<S>>& vx, Eigen::Ref<row_matrix<S>> num)
{
    const row_matrix<S> state = kappa.transpose() * vx; // (M, Ex)
    num.noalias() = psi * state;                        // (N, Ex)
}

/// \brief Causal mixing in chunked GEMM form, continuing from `state` = Σ_{earlier j} κ_j vx_jᵀ (M, Ex).
///
/// Per chunk c of C rows: num_c = Ψ_c S + tril(Ψ_c Κ_cᵀ) Vx_c, then S += Κ_cᵀ Vx_c (Katharopoulos et al.
/// 2020; the chunked form of fla). Only the lower triangle of Ψ_c Κ_cᵀ is read, so row i never touches a
/// later key: outputs up to i are bit-identical whatever later tokens hold. Cost O(N·(M·Ex + C·(M + Ex))).
template <class S>
void mix_causal(const Eigen::Ref<const row_matrix<S>>& psi, const Eigen::Ref<const row_matrix<S>>& kappa,
                const Eigen::Ref<const row_matrix<S>>& vx, Eigen::Ref<row_matrix<S>> num, row_matrix<S>& state,
                index chunk)
{
    const index n = psi.rows();
    row_matrix<S> scores;
    for (index r0 = 0; r0 < n; r0 += chunk) {
        const index c = std::min(chunk, n - r0);
        const auto psi_c = psi.middleRows(r0, c);     // (C, M)
        const auto kappa_c = kappa.middleRows(r0, c); // (C, M)
        const auto vx_c = vx.middleRows(r0, c);       // (C, Ex)
        auto num_c = num.middleRows(r0, c);           // (C, Ex)
        scores.noalias() = psi_c * kappa_c.transpose(); // (C, C)
        num_c.noalias() = psi_c * state;
        num_c.noalias() += scores.template triangularView<Eigen::Lower>() * vx_c;
        state.noalias() += kappa_c.transpose() * vx_c;
    }
}

} // namespace detail
} // namespace linrpe
