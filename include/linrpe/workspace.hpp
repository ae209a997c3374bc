#pragma once
/// \file
/// \brief workspace: scratch memory that persists across linrpe calls, so a loop of calls allocates once.

#include "types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace linrpe {
namespace detail {

/// \brief Stack allocator of Scalar scratch for one thread: take() hands out slices of large blocks, a
/// scratch_scope gives them back in reverse order. Blocks are kept between calls (after the first call of a
/// shape nothing is allocated or page-faulted again); when a call needed more than one block, the next
/// call from an empty stack merges them into one block of the total size.
template <class S>
class arena {
public:
    /// Rounds every slice to 64 bytes so that consecutive slices start on a cache line.
    static constexpr index granule = index(64 / sizeof(S)) > 0 ? index(64 / sizeof(S)) : 1;

    S* take(index count)
    {
        count = (std::max<index>(count, 1) + granule - 1) / granule * granule;
        if (m_top == 0 && m_used == 0 && m_blocks.size() > 1) merge();
        while (m_top < m_blocks.size() && m_used + count > static_cast<index>(m_blocks[m_top].size())) {
            ++m_top;
            m_used = 0;
        }
        if (m_top == m_blocks.size()) {
            m_blocks.emplace_back(static_cast<std::size_t>(std::max<index>(count, 2 * capacity())));
            m_used = 0;
        }
        S* p = m_blocks[m_top].data() + m_used;
        m_used += count;
        return p;
    }

    struct mark {
        std::size_t block;
        index used;
    };
    mark position() const { return {m_top, m_used}; }
    void rewind(mark m)
    {
        m_top = m.block;
        m_used = m.used;
    }

    index capacity() const
    {
        index c = 0;
        for (const auto& b : m_blocks) c += static_cast<index>(b.size());
        return c;
    }
    void release()
    {
        m_blocks.clear();
        m_blocks.shrink_to_fit();
        m_top = 0;
        m_used = 0;
    }

private:
    using block = std::vector<S, Eigen::aligned_allocator<S>>;
    void merge()
    {
        const index total = capacity();
        m_blocks.clear();
        m_blocks.emplace_back(static_cast<std::size_t>(total));
    }

    std::vector<block> m_blocks;
    std::size_t m_top = 0;
    index m_used = 0;
};

/// \brief Slices of an arena for the duration of one scope (a block, a head, a call): every slice taken
/// through it is given back when it ends. Contents of a slice are uninitialized.
template <class S>
class scratch_scope {
public:
    using matrix_map = Eigen::Map<row_matrix<S>, Eigen::Unaligned>;
    using vector_map = Eigen::Map<vector<S>, Eigen::Unaligned>;

    explicit scratch_scope(arena<S>& a) : m_arena(a), m_mark(a.position()) {}
    ~scratch_scope() { m_arena.rewind(m_mark); }
    scratch_scope(const scratch_scope&) = delete;
    scratch_scope& operator=(const scratch_scope&) = delete;

    matrix_map matrix(index rows, index cols) { return matrix_map(m_arena.take(rows * cols), rows, cols); }
    vector_map vec(index n) { return vector_map(m_arena.take(n), n); }
    arena<S>& source() { return m_arena; }

private:
    arena<S>& m_arena;
    typename arena<S>::mark m_mark;
};

/// Index of the calling thread in the innermost active OpenMP team (0 outside one or without OpenMP): the
/// arena a work item of parallel_for uses. linrpe never opens nested teams, so items on one thread never
/// run concurrently.
inline int thread_slot()
{
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

} // namespace detail

/// \brief Scratch memory for linrpe calls, reused across calls: features of a block, chunk states, FFT
/// buffers, Toeplitz windows. One arena per thread of the call's team; each grows to the largest call it
/// served (O(block·(M' + E) + states) per thread for the linear paths, O(N·(M' + E)) where a path keeps
/// a whole head's features) and keeps its memory until release().
///
/// A workspace serves one call at a time: concurrent calls need one workspace each (linear_attention keeps
/// one of its own for calls that pass none, and gives a call that finds it busy a temporary one). Results
/// never depend on the workspace or on what it held before. Copies start empty: scratch is not state.
template <class Scalar>
class workspace {
public:
    workspace() = default;
    workspace(const workspace&) {}
    workspace& operator=(const workspace&) { return *this; }
    workspace(workspace&&) noexcept = default;
    workspace& operator=(workspace&&) noexcept = default;

    /// Frees every arena.
    void release() { m_arenas.clear(); }
    /// Bytes held across all arenas.
    std::size_t capacity_bytes() const
    {
        std::size_t b = 0;
        for (const auto& a : m_arenas) b += static_cast<std::size_t>(a->capacity()) * sizeof(Scalar);
        return b;
    }

    /// Makes sure `slots` arenas exist; called by the front before a parallel region (not thread-safe).
    void prepare(int slots)
    {
        while (static_cast<int>(m_arenas.size()) < std::max(slots, 1)) m_arenas.push_back(std::make_unique<detail::arena<Scalar>>());
    }
    /// The arena of the calling thread (detail::thread_slot()); prepare() must have made it.
    detail::arena<Scalar>& local() { return *m_arenas[static_cast<std::size_t>(detail::thread_slot())]; }
    detail::arena<Scalar>& slot(int i) { return *m_arenas[static_cast<std::size_t>(i)]; }
    int slots() const { return static_cast<int>(m_arenas.size()); }

private:
    std::vector<std::unique_ptr<detail::arena<Scalar>>> m_arenas;
};

} // namespace linrpe

namespace linrpe {
namespace detail {

/// \brief The workspace an object keeps for calls that pass none: one call at a time uses it, a call that
/// finds it busy (a concurrent call on the same object) gets a temporary one, so concurrent calls stay
/// correct. Copies (and moves) start with a fresh, empty workspace.
template <class S>
class workspace_pool {
public:
    workspace_pool() : m_own(std::make_unique<workspace<S>>()), m_busy(std::make_unique<std::atomic<bool>>(false)) {}
    workspace_pool(const workspace_pool&) : workspace_pool() {}
    workspace_pool& operator=(const workspace_pool&) { return *this; }

    class lease {
    public:
        explicit lease(workspace_pool& pool) : m_pool(pool)
        {
            if (!pool.m_busy->exchange(true, std::memory_order_acquire)) m_ws = pool.m_own.get();
            else {
                m_temporary = std::make_unique<workspace<S>>();
                m_ws = m_temporary.get();
            }
        }
        ~lease()
        {
            if (!m_temporary) m_pool.m_busy->store(false, std::memory_order_release);
        }
        lease(const lease&) = delete;
        lease& operator=(const lease&) = delete;
        workspace<S>& get() { return *m_ws; }

    private:
        workspace_pool& m_pool;
        std::unique_ptr<workspace<S>> m_temporary;
        workspace<S>* m_ws = nullptr;
    };

    /// The object's own workspace (release it only while no call runs).
    workspace<S>& own() { return *m_own; }
    const workspace<S>& own() const { return *m_own; }

private:
    std::unique_ptr<workspace<S>> m_own;
    std::unique_ptr<std::atomic<bool>> m_busy;
};

} // namespace detail
} // namespace linrpe
