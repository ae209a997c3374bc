#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing with relative weights w_ij = c_{(k0+j)−(q0+i)} (· 1[j <= i] when causal):
/// dispatch over the dense, FFT and banded algorithms.

#include "../fft/backend.hpp"
#include "../types.hpp"
#include "relative_weights.hpp"
#include "toeplitz_banded.hpp"
#include "toeplitz_cost.hpp"
#include "toeplitz_dense.hpp"
#include "toeplitz_fft.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace linrpe {
namespace detail {

/// \brief The algorithm that toeplitz_mix runs for `requested`: forced ones as they are; `automatic` by the
/// cost model (toeplitz_choose), except that the FFT is skipped when its rounding would exceed about
/// 1e4·eps relative in the worst row (κ·log2 L > 1e4, see toeplitz_fft_amplification): then the cheaper
/// of dense and banded runs, which are accurate at any bias range.
template <class S, class Backend = fft::default_backend>
toeplitz_algorithm toeplitz_resolve(toeplitz_algorithm requested, const relative_weights<S>& w, index n, index nk,
                                    index m, index ex, index delta, bool causal)
{
    if (requested != toeplitz_algorithm::automatic) return requested;
    const toeplitz_algorithm best = toeplitz_choose<S, Backend>(n, nk, m, ex, w.t_max, causal);
    if (best != toeplitz_algorithm::fft) return best;
    const double length = static_cast<double>(fft_length_for<Backend>(n + nk - 1));
    if (toeplitz_fft_amplification(w, n, nk, delta, causal) * std::log2(std::max(length, 2.0)) <= 1e4) return best;
    const auto c = toeplitz_predict<S, Backend>(n, nk, m, ex, w.t_max, causal);
    return c.banded <= c.dense ? toeplitz_algorithm::banded : toeplitz_algorithm::dense;
}

/// num (N, Ex) = Σ_j w_ij ⟨ψ_i, κ_j⟩ vx_j by the requested algorithm; all three agree to rounding. Dense
/// (row blocks) and FFT (value columns) thread inside the head; their results do not depend on `threads`.
template <class S>
void toeplitz_mix(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
                  const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
                  Eigen::Ref<row_matrix<S>> num, index q_first, index k_first, bool causal, toeplitz_algorithm algo,
                  int threads = 0)
{
    switch (toeplitz_resolve<S>(algo, w, psi.rows(), kappa.rows(), psi.cols(), vx.cols(), k_first - q_first, causal)) {
    case toeplitz_algorithm::fft:
        toeplitz_mix_fft<S>(w, psi, kappa, vx, num, q_first, k_first, causal, 0, threads);
        break;
    case toeplitz_algorithm::banded:
        toeplitz_mix_banded<S>(w, psi, kappa, vx, num, q_first, k_first, causal);
        break;
    case toeplitz_algorithm::dense:
    default:
        toeplitz_mix_dense<S>(w, psi, kappa, vx, num, q_first, k_first, causal, 128, threads);
        break;
    }
}

} // namespace detail
} // namespace linrpe
