#pragma once
/// \file
/// \brief tensor_view: a non-owning strided 4-D view with logical extents (B, H, N, D).

#include "errors.hpp"
#include "types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace linrpe {

/// \brief Non-owning view of a 4-D buffer with logical extents (batch, heads, tokens, channels).
///
/// Strides are in elements, one per logical axis, so (B, H, N, D) and (B, N, H, D) memory layouts (and
/// any other with unit channel stride) are read without copies. `T` is `const S` for inputs and `S` for
/// outputs. The channel stride must be 1 (every framework's attention buffers have it).
template <class T>
class tensor_view {
public:
    using element_type = T;
    using value_type = std::remove_const_t<T>;

    tensor_view() = default;
    tensor_view(T* data, index batch, index heads, index tokens, index channels, index batch_stride,
                index head_stride, index token_stride, index channel_stride = 1)
        : m_data(data), m_extent{batch, heads, tokens, channels},
          m_stride{batch_stride, head_stride, token_stride, channel_stride}
    {
    }
    /// Views of mutable data convert to views of const data.
    template <class U, class = std::enable_if_t<std::is_same<T, const U>::value>>
    tensor_view(const tensor_view<U>& other)
        : tensor_view(other.data(), other.batch(), other.heads(), other.tokens(), other.channels(),
                      other.stride(0), other.stride(1), other.stride(2), other.stride(3))
    {
    }

    T* data() const { return m_data; }
    index batch() const { return m_extent[0]; }
    index heads() const { return m_extent[1]; }
    index tokens() const { return m_extent[2]; }
    index channels() const { return m_extent[3]; }
    index extent(int axis) const { return m_extent[axis]; }
    index stride(int axis) const { return m_stride[axis]; }

    using matrix_map =
        Eigen::Map<std::conditional_t<std::is_const<T>::value, const row_matrix<value_type>, row_matrix<value_type>>,
                   Eigen::Unaligned, Eigen::OuterStride<>>;
    /// The (tokens, channels) matrix of one (batch, head), as an Eigen map with the token stride.
    matrix_map slice(index b, index h) const
    {
        // An empty view may hold nullptr (validate() allows it), and offsetting nullptr is undefined.
        T* const base = m_data == nullptr ? nullptr : m_data + b * m_stride[0] + h * m_stride[1];
        return matrix_map(base, m_extent[2], m_extent[3], Eigen::OuterStride<>(m_stride[2]));
    }

    /// Throws linrpe::error naming `argument` if extents or strides cannot describe a valid buffer.
    void validate(const char* argument) const
    {
        for (int a = 0; a < 4; ++a)
            if (m_extent[a] < 0) detail::fail(argument, "non-negative extents", detail::concat("extent[", a, "] = ", m_extent[a]));
        if (m_extent[3] > 0 && m_stride[3] != 1)
            detail::fail(argument, "channel stride 1", m_stride[3]);
        if (empty()) return;
        if (m_data == nullptr) detail::fail(argument, "a non-null data pointer", "nullptr");
        for (int a = 0; a < 3; ++a)
            if (m_stride[a] < 0 || (m_extent[a] > 1 && m_stride[a] == 0))
                detail::fail(argument, "positive strides",
                             detail::concat("stride[", a, "] = ", m_stride[a], " for extent ", m_extent[a]));
        if (m_extent[2] > 1 && m_stride[2] < m_extent[3])
            detail::fail(argument, detail::concat("token stride >= channels (", m_extent[3], ")"), m_stride[2]);
        // Offsets up to 2^62 keep every pointer offset and overlap test free of overflow.
        constexpr index limit = index(1) << 62;
        index span = 0;
        for (int a = 0; a < 4; ++a) {
            if (m_extent[a] <= 1) continue;
            if (m_stride[a] > (limit - span) / (m_extent[a] - 1))
                detail::fail(argument, "a buffer of fewer than 2^62 elements (extents x strides)",
                             detail::concat("extent[", a, "] = ", m_extent[a], " with stride ", m_stride[a]));
            span += (m_extent[a] - 1) * m_stride[a];
        }
    }
    /// \brief Throws linrpe::error naming `argument` unless distinct (b, h, n, c) are distinct elements,
    /// as an output needs: sorted by stride, each axis must step past everything the smaller axes span.
    void validate_distinct(const char* argument) const
    {
        if (empty()) return;
        int order[4] = {0, 1, 2, 3};
        std::sort(order, order + 4, [&](int x, int y) { return m_stride[x] < m_stride[y]; });
        index span = 0; // last offset reached by the axes already visited
        for (const int a : order) {
            if (m_extent[a] <= 1) continue;
            if (m_stride[a] <= span)
                detail::fail(argument, "strides that never map two elements to one address (each stride > the span of the smaller axes)",
                             detail::concat("stride[", a, "] = ", m_stride[a], " within a span of ", span,
                                            " (strides ", m_stride[0], ", ", m_stride[1], ", ", m_stride[2], ", ", m_stride[3], ")"));
            span += (m_extent[a] - 1) * m_stride[a];
        }
    }
    bool empty() const { return m_extent[0] == 0 || m_extent[1] == 0 || m_extent[2] == 0 || m_extent[3] == 0; }

private:
    T* m_data = nullptr;
    index m_extent[4] = {0, 0, 0, 0};
    index m_stride[4] = {0, 0, 0, 1};
};

/// View of a contiguous (B, H, N, D) buffer (PyTorch's usual attention layout).
template <class T>
tensor_view<T> view_bhnd(T* data, index batch, index heads, index tokens, index channels)
{
    return tensor_view<T>(data, batch, heads, tokens, channels, heads * tokens * channels, tokens * channels,
                          channels, 1);
}

/// View of a contiguous (B, N, H, D) buffer (one projection reshaped, no transpose), with logical (B, H, N, D).
/// A fused QKV buffer (B, N, 3, H, D) has token stride 3·H·D instead: use view_qkv.
template <class T>
tensor_view<T> view_bnhd(T* data, index batch, index tokens, index heads, index channels)
{
    return tensor_view<T>(data, batch, heads, tokens, channels, tokens * heads * channels, channels,
                          heads * channels, 1);
}

/// \brief The q, k and v views of a fused QKV projection buffer (B, N, 3, H, D), as nn.Linear(d, 3·H·D)
/// followed by a reshape produces: token stride 3·H·D, q at channel offset 0, k at H·D, v at 2·H·D.
template <class T>
struct qkv_views {
    tensor_view<T> q, k, v;
};

/// Views of a contiguous (B, N, 3, H, D) buffer as q, k, v with logical (B, H, N, D); no copies.
template <class T>
qkv_views<T> view_qkv(T* data, index batch, index tokens, index heads, index channels)
{
    const index row = 3 * heads * channels;
    const auto part = [&](index which) {
        return tensor_view<T>(data == nullptr ? nullptr : data + which * heads * channels, batch, heads, tokens,
                              channels, tokens * row, channels, row, 1);
    };
    return {part(0), part(1), part(2)};
}

namespace detail {

/// \brief The elements a strided block touches: base + Σ_a i_a·stride_a (bytes: element·offset), 0 <= i_a <
/// extent_a. Matrices are blocks with two axes.
struct footprint {
    std::uintptr_t base = 0;
    std::size_t element = 1;
    index extent[4] = {0, 0, 0, 0};
    index stride[4] = {0, 0, 0, 0};

    bool empty() const { return extent[0] == 0 || extent[1] == 0 || extent[2] == 0 || extent[3] == 0; }
    /// Offset (in elements) of the last element: Σ (extent − 1)·stride (strides validated non-negative).
    index span() const
    {
        index s = 0;
        for (int a = 0; a < 4; ++a) s += (extent[a] - 1) * stride[a];
        return s;
    }
};

template <class T>
footprint footprint_of(const tensor_view<T>& v)
{
    footprint f;
    f.base = reinterpret_cast<std::uintptr_t>(v.data());
    f.element = sizeof(T);
    for (int a = 0; a < 4; ++a) {
        f.extent[a] = v.extent(a);
        f.stride[a] = v.extent(a) > 1 ? v.stride(a) : 0;
    }
    return f;
}
/// A row-major Eigen block (rows with outer stride, unit inner stride).
template <class Matrix, int Options, class Stride>
footprint footprint_of(const Eigen::Ref<Matrix, Options, Stride>& m)
{
    footprint f;
    f.base = reinterpret_cast<std::uintptr_t>(m.data());
    f.element = sizeof(typename Matrix::Scalar);
    f.extent[0] = f.extent[1] = 1;
    f.extent[2] = m.rows();
    f.extent[3] = m.cols();
    f.stride[2] = m.rows() > 1 ? index(m.outerStride()) : 0;
    f.stride[3] = m.cols() > 1 ? index(m.innerStride()) : 0;
    return f;
}

/// \brief Whether blocks a and b share an element (exact for element-aligned bases, conservative otherwise).
///
/// Disjoint byte ranges answer at once. Otherwise they share one iff δ = (b.base − a.base)/element equals
/// Σ_a i_a·sa_a − Σ_b j_b·sb_b for some indices in range: a search over the axes by decreasing stride,
/// where each axis can only take the values that leave the rest reachable (few when strides nest, as in
/// every real layout, fused QKV included); past a budget of steps the answer is a conservative "yes".
inline bool overlaps(const footprint& a, const footprint& b)
{
    if (a.empty() || b.empty()) return false;
    const std::uintptr_t a_end = a.base + std::uintptr_t(a.span() + 1) * a.element;
    const std::uintptr_t b_end = b.base + std::uintptr_t(b.span() + 1) * b.element;
    if (a_end <= b.base || b_end <= a.base) return false;
    if (a.element != b.element) return true;
    const std::uintptr_t gap = b.base >= a.base ? b.base - a.base : a.base - b.base;
    if (gap % a.element != 0) return true;
    const index delta = (b.base >= a.base ? 1 : -1) * index(gap / a.element);
    // Terms x·s with x in [lo, hi]: a's axes contribute [0, extent − 1], b's [−(extent − 1), 0].
    struct term {
        index stride, lo, hi;
    };
    term terms[8];
    int count = 0;
    for (int axis = 0; axis < 4; ++axis) {
        if (a.extent[axis] > 1) terms[count++] = {a.stride[axis], 0, a.extent[axis] - 1};
        if (b.extent[axis] > 1) terms[count++] = {b.stride[axis], -(b.extent[axis] - 1), 0};
    }
    for (int t = 1; t < count; ++t) // insertion sort by decreasing stride (at most 8 terms)
        for (int u = t; u > 0 && terms[u - 1].stride < terms[u].stride; --u) std::swap(terms[u - 1], terms[u]);
    index low[9] = {0}, high[9] = {0}; // reachable range of the terms t.. (suffix sums)
    for (int t = count; t-- > 0;) {
        low[t] = low[t + 1] + terms[t].lo * terms[t].stride;
        high[t] = high[t + 1] + terms[t].hi * terms[t].stride;
    }
    long budget = 1 << 14;
    // Whether `rest` = Σ_{u >= t} x_u·s_u has a solution.
    const auto solve = [&](const auto& self, int t, index rest) -> bool {
        if (rest < low[t] || rest > high[t]) return false;
        if (t == count) return rest == 0;
        if (--budget < 0) return true;
        const term& u = terms[t];
        // x with rest − x·s in [low[t+1], high[t+1]]: x in [ceil((rest − high)/s), floor((rest − low)/s)].
        const auto floor_div = [](index p, index q) { return p / q - ((p % q != 0) && ((p < 0) != (q < 0))); };
        const index x0 = std::max(u.lo, -floor_div(-(rest - high[t + 1]), u.stride));
        const index x1 = std::min(u.hi, floor_div(rest - low[t + 1], u.stride));
        for (index x = x0; x <= x1; ++x)
            if (self(self, t + 1, rest - x * u.stride)) return true;
        return false;
    };
    return solve(solve, 0, delta);
}

/// Throws linrpe::error naming `output` if it shares memory with the input `input` (outputs are written
/// while inputs are still read, so aliasing would silently corrupt the result).
inline void require_disjoint(const char* output, const footprint& out, const char* input, const footprint& in)
{
    if (overlaps(out, in))
        fail(output, concat("memory that does not overlap ", input, " (outputs are written while inputs are read)"),
             concat("a buffer sharing elements with ", input));
}

} // namespace detail
} // namespace linrpe
