#pragma once
// IWYU pragma: private
/// \file
/// \brief Toeplitz mixing, dense algorithm: the weighted N × Nk score matrix, one row block at a time.

#include "../types.hpp"
#include "parallel.hpp"
#include "relative_weights.hpp"

#include <Eigen/Core>

#include <algorithm>

namespace linrpe {
namespace detail {

/// \brief num = ((Ψ Κᵀ) ⊙ W) Vx with W_ij = c_{(k0+j)−(q0+i)} (0 for a future key when causal).
///
/// Row blocks of `block` queries and column tiles of 1024 keys: one GEMM for the scores, a vector multiply
/// per row by a segment of the offset table, one GEMM with Vx. O(N·Nk·(M + Ex)) time (half when causal),
/// O(threads·block·1024) extra memory. Row blocks run in parallel.
/// A causal block never forms columns beyond its last visible key, and the visible future keys inside
/// the block are multiplied by exactly 0: outputs up to i do not depend on later (finite) tokens.
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
        const index cols = causal ? std::clamp<index>(r0 + rows - delta, 0, nk) : nk;
        auto num_b = num.middleRows(r0, rows); // (rows, Ex)
        num_b.setZero();
        const auto psi_b = psi.middleRows(r0, rows); // (rows, M)
        for (index c0 = 0; c0 < cols; c0 += tile) {
            const index width = std::min(tile, cols - c0);
            scores.noalias() = psi_b * kappa.middleRows(c0, width).transpose(); // (rows, width)
            for (index i = 0; i < rows; ++i)
                scores.row(i).array() *= table.segment(c0 + n - 1 - (r0 + i), width).transpose().array();
            num_b.noalias() += scores * vx.middleRows(c0, width);
        }
    });
}

} // namespace detail
} // namespace linrpe
