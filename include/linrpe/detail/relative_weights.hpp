#pragma once
// IWYU pragma: private
/// \file
/// \brief relative_weights: the per-offset mixing weights c_t of a Toeplitz encoding, for one head.

#include "../types.hpp"

#include <algorithm>

namespace linrpe {
namespace detail {

/// \brief c_t for offsets t = (key position) − (query position), stored for |t| < t_max and clipped beyond
/// (c_t = c_{±(t_max−1)} for |t| >= t_max), so that every sequence length works.
template <class S>
struct relative_weights {
    vector<S> c; ///< c[t + t_max − 1], size 2·t_max − 1
    index t_max = 1;

    S at(index t) const
    {
        const index tc = std::clamp(t, -(t_max - 1), t_max - 1);
        return c[tc + t_max - 1];
    }
};

} // namespace detail
} // namespace linrpe
