#pragma once
// IWYU pragma: private
/// \file
/// \brief The one threading primitive: a static OpenMP loop over independent work items.

#include "../types.hpp"

#include <algorithm>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace linrpe {
namespace detail {

/// \brief How many of `count` items parallel_for(count, threads, ·) runs at once: the team size it uses,
/// capped at `count`; 1 inside an OpenMP parallel region or without OpenMP (0 when count is 0).
inline index concurrent_items(index count, int threads)
{
#if defined(_OPENMP)
    if (count > 1 && threads != 1 && !omp_in_parallel())
        return std::min<index>(count, threads > 0 ? threads : omp_get_max_threads());
#endif
    (void)threads;
    return std::min<index>(count, 1);
}

/// Runs body(i) for i in [0, count). Items must be independent and write disjoint outputs, so the result
/// does not depend on the thread count. `threads` = 0 uses the OpenMP default; without OpenMP it is serial.
template <class Body>
void parallel_for(index count, int threads, Body&& body)
{
#if defined(_OPENMP)
    if (concurrent_items(count, threads) > 1) {
        const int team = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(team)
        for (index i = 0; i < count; ++i) body(i);
        return;
    }
#endif
    (void)threads;
    for (index i = 0; i < count; ++i) body(i);
}

} // namespace detail
} // namespace linrpe
