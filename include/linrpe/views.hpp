#pragma once
/// \file
/// \brief tensor_view: a non-owning strided 4-D view with logical extents (B, H, N, D).

#include "errors.hpp"
#include "types.hpp"

#include <Eigen/Core>

#include <type_traits>

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
        return matrix_map(m_data + b * m_stride[0] + h * m_stride[1], m_extent[2], m_extent[3],
                          Eigen::OuterStride<>(m_stride[2]));
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

/// View of a contiguous (B, N, H, D) buffer (the layout of a fused QKV projection), with logical (B, H, N, D).
template <class T>
tensor_view<T> view_bnhd(T* data, index batch, index tokens, index heads, index channels)
{
    return tensor_view<T>(data, batch, heads, tokens, channels, tokens * heads * channels, channels,
                          heads * channels, 1);
}

} // namespace linrpe
