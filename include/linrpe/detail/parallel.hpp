#pragma once
// IWYU pragma: private
/// \file
/// \brief The one threading primitive (a static OpenMP loop over independent work items) and the scope that
/// keeps Eigen's own GEMM threading out of linrpe's products.

#include "../types.hpp"

#include <algorithm>
#include <limits>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace linrpe {
namespace detail {

/// Work (flops, as the caller estimates it from the shape) that each thread of a parallel_for must get
/// before it spawns a team. Waking a thread costs a few microseconds on an idle machine and up to a scheduler
/// tick (measured 5 ms) on a loaded one; 4·10^6 flops take 0.1–0.3 ms here, so an idle machine loses < 5 % to
/// the wake-up. It keeps decoder steps serial up to B·H = 64 at D = M = E = 64 (≈ 33 kflops per sequence by
/// linear_attention's estimate). A constant: the team depends on the shape only (the results on neither).
inline constexpr double min_work_per_thread = 4e6;

/// The team `options::threads = 0` means during a linrpe call: the caller's omp_get_max_threads(), recorded
/// by the outermost serial_eigen_scope of the calling thread (0 outside any linrpe call).
inline int& caller_team()
{
    static thread_local int team = 0;
    return team;
}

/// Threads that `threads` (0 = the caller's OpenMP default) stands for; 1 without OpenMP.
inline int resolve_threads(int threads)
{
#if defined(_OPENMP)
    if (threads > 0) return threads;
    return caller_team() > 0 ? caller_team() : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

/// \brief Held by every public call that runs products: Eigen's GEMM stays serial inside it.
///
/// Eigen splits a GEMM over min(nbThreads(), size-based cap) threads unless it already runs in a team of
/// more than one thread, and nbThreads() is the calling task's omp_get_max_threads() (unless the program
/// called Eigen::setNbThreads). A split GEMM blocks its depth differently, so a product computed on the
/// caller's thread (threads = 1, or a serial phase) would round differently from the same product inside
/// linrpe's own parallel loops. The scope records the caller's team for parallel_for, sets the calling
/// task's nthreads-var to 1 (linrpe's workers inherit it) and restores it on exit, so every Eigen product
/// of linrpe runs serially with the same blocking for any thread count. It changes nothing outside the
/// call: the consumer's own GEMMs keep Eigen's threading. Nested scopes are no-ops.
/// Limitation: Eigen::setNbThreads(n > 1) overrides the ICV, and then results may depend on the thread count.
class serial_eigen_scope {
public:
    serial_eigen_scope()
    {
#if defined(_OPENMP)
        if (caller_team() == 0) {
            m_saved = omp_get_max_threads();
            caller_team() = m_saved;
            omp_set_num_threads(1);
        }
#endif
    }
    ~serial_eigen_scope()
    {
#if defined(_OPENMP)
        if (m_saved > 0) {
            omp_set_num_threads(m_saved);
            caller_team() = 0;
        }
#endif
    }
    serial_eigen_scope(const serial_eigen_scope&) = delete;
    serial_eigen_scope& operator=(const serial_eigen_scope&) = delete;

private:
    int m_saved = 0;
};

/// \brief How many of `count` items parallel_for(count, threads, ·, work_per_item) runs at once: the team
/// size it uses, capped at `count` and at the total work over min_work_per_thread; 1 inside an OpenMP
/// parallel region or without OpenMP (0 when count is 0).
inline index concurrent_items(index count, int threads,
                              double work_per_item = std::numeric_limits<double>::infinity())
{
#if defined(_OPENMP)
    if (count > 1 && threads != 1 && !omp_in_parallel()) {
        const double by_work = static_cast<double>(count) * work_per_item / min_work_per_thread;
        const index cap = by_work < static_cast<double>(count) ? std::max<index>(1, static_cast<index>(by_work)) : count;
        return std::min<index>(cap, resolve_threads(threads));
    }
#endif
    (void)threads, (void)work_per_item;
    return std::min<index>(count, 1);
}

/// Runs body(i) for i in [0, count). Items must be independent and write disjoint outputs, so the result
/// does not depend on the thread count. `threads` = 0 uses the caller's OpenMP default; without OpenMP it is
/// serial. `work_per_item` (flops, from the shape) keeps small loops on the calling thread.
template <class Body>
void parallel_for(index count, int threads, Body&& body,
                  double work_per_item = std::numeric_limits<double>::infinity())
{
#if defined(_OPENMP)
    const index team = concurrent_items(count, threads, work_per_item);
    if (team > 1) {
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(team))
        for (index i = 0; i < count; ++i) body(i);
        return;
    }
#endif
    (void)threads, (void)work_per_item;
    for (index i = 0; i < count; ++i) body(i);
}

} // namespace detail
} // namespace linrpe
