#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing with relative weights w_ij = c_{(k0+j)−(q0+i)} (· 1[j <= i] when causal).

#include "../errors.hpp"
#include "../types.hpp"
#include "relative_weights.hpp"

#include <Eigen/Core>

#include <algorithm>

namespace linrpe {
namespace detail {

/// \brief Dense algorithm: weighted scores block by block, O(N·Nk·(M + Ex)) time, O(block·Nk) memory.
template <class S>
void toeplitz_mix_dense(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                        const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                        Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal)
{
    const index n = psi.rows(), nk = kappa.rows();
    constexpr index block = 128;
    row_matrix<S> scores;
    for (index r0 = 0; r0 < n; r0 += block) {
        const index rows = std::min(block, n - r0);
        // Causal: query r sees keys with k_first + j <= q_first + r, so columns beyond the block's last
        // visible key are never formed (and never read).
        const index cols = causal ? std::clamp<index>(q_first + r0 + rows - k_first, 0, nk) : nk;
        scores.noalias() = psi.middleRows(r0, rows) * kappa.topRows(cols).transpose(); // (rows, cols)
        for (index i = 0; i < rows; ++i) {
            const index qpos = q_first + r0 + i;
            for (index j = 0; j < cols; ++j) {
                const index kpos = k_first + j;
                scores(i, j) = (causal && kpos > qpos) ? S(0) : scores(i, j) * w.at(kpos - qpos);
            }
        }
        num.middleRows(r0, rows).noalias() = scores * vx.topRows(cols);
    }
}

/// Dispatch over the Toeplitz algorithms (see options::toeplitz).
template <class S>
void toeplitz_mix(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                  const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                  Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, toeplitz_algorithm)
{
    toeplitz_mix_dense(w, psi, kappa, vx, num, q_first, k_first, causal);
}

} // namespace detail
} // namespace linrpe
