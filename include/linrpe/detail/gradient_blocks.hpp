#pragma once
/// \file
/// \brief detail::gradient_blocks: per-block accumulators of an encoding's parameter gradient, summed in a
/// fixed order so that a backward's parameter gradients do not depend on the thread count.

#include "../types.hpp"

#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {

/// The mixers call an encoding's VJP hooks once per block of rows, from parallel loops. Each block gets its
/// own zeroed buffer of P doubles, keyed by (role, first row): the block partition depends on the shape only,
/// so summing the buffers in key order gives the same bits for any thread count and any schedule.
class gradient_blocks {
public:
    explicit gradient_blocks(index size) : m_size(size) {}

    index size() const { return m_size; }

    /// The buffer of the block that starts at row `first` of role `which` (created zeroed on first use).
    double* slot(role which, index first)
    {
        const std::lock_guard<std::mutex> lock(m_mutex);
        auto& buffer = m_blocks[std::make_pair(static_cast<int>(which), first)];
        if (buffer.empty()) buffer.assign(static_cast<std::size_t>(m_size), 0.0);
        return buffer.data();
    }

    /// out[0, P) += every block's buffer, in (role, first row) order.
    void sum_into(double* out) const
    {
        for (const auto& block : m_blocks)
            for (index p = 0; p < m_size; ++p) out[p] += block.second[static_cast<std::size_t>(p)];
    }

private:
    index m_size;
    std::mutex m_mutex;
    std::map<std::pair<int, index>, std::vector<double>> m_blocks;
};

} // namespace detail
} // namespace linrpe
