#pragma once
// IWYU pragma: private
/// \file
/// \brief relative_weights: the per-offset mixing weights c_t of a Toeplitz encoding, for one head.

#include "../types.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace linrpe {
namespace detail {

/// \brief c_t for offsets t = (key position) − (query position), stored for |t| < t_max and clipped beyond
/// (c_t = c_{±(t_max−1)} for |t| >= t_max), so that every sequence length works.
///
/// Because of the clipping, every offset t <= −t_max carries the one weight far_behind() and every t >= t_max
/// the one weight far_ahead(): the banded algorithm and the streaming decoder rely on exactly this.
///
/// The stored values may carry a common factor: the true weight of offset t is c_t·e^{shift}. A policy
/// picks shift = max b over the offsets a call can see, so every weight the call reads is in (0, 1] and
/// no exponent overflows; the front folds e^{shift} back exactly (linear_attention::run_head). Entries of
/// offsets the call cannot see may exceed 1 (even be +inf); no kernel reads them.
template <class S>
struct relative_weights {
    vector<S> c; ///< c[t + t_max − 1], size 2·t_max − 1
    index t_max = 1;
    double shift = 0; ///< the common factor e^{shift} taken out of every c_t

    S at(index t) const
    {
        const index tc = std::clamp(t, -(t_max - 1), t_max - 1);
        return c[tc + t_max - 1];
    }
    /// Weight of every key at least t_max positions behind the query.
    S far_behind() const { return c[0]; }
    /// Weight of every key at least t_max positions ahead of the query.
    S far_ahead() const { return c[2 * t_max - 2]; }
};

/// \brief Weights of the consecutive offsets t_lo..t_hi, with the causal mask folded in (0 for t > 0):
/// table[t − t_lo]. Row i of a block reads a contiguous segment of it, so weighting is a vector multiply.
///
/// Subnormal weights (below numeric_limits<S>::min() ≈ 1.2e-38 in float, next to the largest weight 1)
/// are flushed to 0: every product with one runs about 10× slower on x86 (dense at N = 16384 with
/// b_t = −0.01|t| took 3.6 s instead of 0.49 s), and it changes a sum by less than 1.2e-38 relative to its
/// largest weight, as weights below 1.4e-45 already underflow to 0.
template <class S>
vector<S> offset_table(const relative_weights<S>& w, index t_lo, index t_hi, bool causal)
{
    vector<S> table(std::max<index>(t_hi - t_lo + 1, 0));
    for (index t = t_lo; t <= t_hi; ++t) {
        const S c = (causal && t > 0) ? S(0) : w.at(t);
        table[t - t_lo] = std::abs(c) < std::numeric_limits<S>::min() ? S(0) : c;
    }
    return table;
}

} // namespace detail
} // namespace linrpe
