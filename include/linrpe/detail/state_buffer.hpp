#pragma once
// IWYU pragma: private
/// \file
/// \brief The flat byte format of attention_state: header, slot table, matrices; a bounds-checked reader.
///
/// Layout (native byte order; a buffer from a machine of the other order fails the magic check):
///     header  u32 magic, u32 version, u32 scalar size, u32 kind (0 causal S/z, 1 Toeplitz window),
///             u32 with_den, u32 reserved (0), u64 configuration tag, u64 checksum, i64 batch, i64 heads
///     table   per slot (b·H + h): i64 position, origin, features M', values (E, or Ex = E + 1 with a
///             Toeplitz denominator column), history (window rows), evicted (0/1)
///     data    per slot, row-major scalars: S (M', E) then z (M') under sum, or far (M', Ex), keys (count, M'),
///             values (count, Ex)
/// The checksum (FNV-1a over every byte, its own field zeroed) makes a flipped bit anywhere a refused buffer,
/// not a state that decodes to other numbers.

#include "../errors.hpp"
#include "../types.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace linrpe {
namespace detail {

constexpr std::uint32_t state_magic = 0x5350524Cu; // "LRPS"
constexpr std::uint32_t state_version = 1;
/// Largest position a state may reach (2^53: exact in double, far from index overflow).
constexpr std::int64_t state_position_limit = std::int64_t(1) << 53;
/// Largest M' or E a buffer may declare: far beyond any model, small enough that sizes never overflow.
constexpr std::int64_t state_dim_limit = std::int64_t(1) << 24;

struct state_header {
    std::uint32_t scalar_size = 0, kind = 0, with_den = 0;
    std::uint64_t tag = 0;
    std::int64_t batch = 0, heads = 0;
};

struct state_slot_entry {
    std::int64_t position = 0, origin = 0, features = 0, values = 0, history = 0, evicted = 0;
};

constexpr std::size_t state_header_bytes = 6 * 4 + 2 * 8 + 2 * 8;
constexpr std::size_t state_checksum_at = 6 * 4 + 8;
constexpr std::size_t state_slot_bytes = 6 * 8;

/// FNV-1a of a string: the configuration tag (the attention's type name, fixed per build).
inline std::uint64_t fnv1a(const char* s)
{
    std::uint64_t h = 1469598103934665603ull;
    for (; *s; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 1099511628211ull;
    return h;
}

/// FNV-1a over a whole buffer with its checksum field read as zeros (size >= state_header_bytes).
inline std::uint64_t state_checksum(const unsigned char* data, std::size_t size)
{
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t i = 0; i < size; ++i) {
        const bool field = i >= state_checksum_at && i < state_checksum_at + 8;
        h = (h ^ (field ? 0u : data[i])) * 1099511628211ull;
    }
    return h;
}

inline std::uint64_t add_checked(std::uint64_t a, std::uint64_t b, const char* argument)
{
    if (a > UINT64_MAX - b) fail(argument, "a total size that fits in 64 bits", "an overflow");
    return a + b;
}
inline std::uint64_t mul_checked(std::uint64_t a, std::uint64_t b, const char* argument)
{
    if (b != 0 && a > UINT64_MAX / b) fail(argument, "a total size that fits in 64 bits", "an overflow");
    return a * b;
}

class state_writer {
public:
    void header(const state_header& h)
    {
        put(state_magic);
        put(state_version);
        put(h.scalar_size);
        put(h.kind);
        put(h.with_den);
        put(std::uint32_t(0));
        put(h.tag);
        put(std::uint64_t(0)); // checksum, set by take()
        put(h.batch);
        put(h.heads);
    }
    void slot(const state_slot_entry& t)
    {
        for (const std::int64_t x : {t.position, t.origin, t.features, t.values, t.history, t.evicted}) put(x);
    }
    template <class Derived>
    void matrix(const Eigen::DenseBase<Derived>& m)
    {
        using S = typename Derived::Scalar;
        for (index i = 0; i < m.rows(); ++i)
            for (index j = 0; j < m.cols(); ++j) put(S(m(i, j)));
    }
    std::vector<unsigned char> take()
    {
        const std::uint64_t sum = state_checksum(m_bytes.data(), m_bytes.size());
        std::memcpy(m_bytes.data() + state_checksum_at, &sum, sizeof(sum));
        return std::move(m_bytes);
    }

private:
    template <class T>
    void put(const T& x)
    {
        const std::size_t at = m_bytes.size();
        m_bytes.resize(at + sizeof(T));
        std::memcpy(m_bytes.data() + at, &x, sizeof(T));
    }
    std::vector<unsigned char> m_bytes;
};

/// Reads fields in order; every read is bounds-checked and throws linrpe::error naming the field.
class state_reader {
public:
    state_reader(const unsigned char* data, std::size_t size) : m_data(data), m_size(data ? size : 0) {}

    /// Reads and checks the header against `expected` (scalar size, kind, tag, with_den); batch and heads
    /// must be >= 1 and their slot table must fit in the buffer.
    state_header header(const state_header& expected)
    {
        if (m_size < state_header_bytes)
            fail("state buffer length", detail::concat("at least the ", state_header_bytes, "-byte header"), m_size);
        const auto magic = get<std::uint32_t>("state buffer magic");
        if (magic != state_magic) fail("state buffer magic", state_magic, magic);
        const auto version = get<std::uint32_t>("state buffer version");
        if (version != state_version) fail("state buffer version", state_version, version);
        state_header h;
        h.scalar_size = get<std::uint32_t>("state buffer scalar size");
        if (h.scalar_size != expected.scalar_size) fail("state buffer scalar size (bytes)", expected.scalar_size, h.scalar_size);
        h.kind = get<std::uint32_t>("state buffer kind");
        if (h.kind != expected.kind)
            fail("state buffer kind", expected.kind ? "1 (Toeplitz window)" : "0 (causal S, z)", h.kind);
        h.with_den = get<std::uint32_t>("state buffer with_den");
        if (h.with_den != expected.with_den) fail("state buffer with_den (normalization::sum)", expected.with_den, h.with_den);
        const auto reserved = get<std::uint32_t>("state buffer reserved field");
        if (reserved != 0) fail("state buffer reserved field", 0, reserved);
        h.tag = get<std::uint64_t>("state buffer configuration tag");
        if (h.tag != expected.tag)
            fail("state buffer configuration tag (attention type and normalization)", expected.tag, h.tag);
        const auto sum = get<std::uint64_t>("state buffer checksum");
        if (sum != state_checksum(m_data, m_size))
            fail("state buffer checksum (corrupted or truncated buffer)", state_checksum(m_data, m_size), sum);
        h.batch = get<std::int64_t>("state buffer batch");
        h.heads = get<std::int64_t>("state buffer heads");
        const std::uint64_t max_slots = remaining() / state_slot_bytes;
        if (h.batch < 1 || std::uint64_t(h.batch) > max_slots) fail("state buffer batch", "a value >= 1 whose slot table fits", h.batch);
        if (h.heads < 1 || std::uint64_t(h.heads) > max_slots / std::uint64_t(h.batch))
            fail("state buffer heads", "a value >= 1 whose slot table fits", h.heads);
        return h;
    }
    state_slot_entry slot()
    {
        state_slot_entry t;
        for (std::int64_t* x : {&t.position, &t.origin, &t.features, &t.values, &t.history, &t.evicted})
            *x = get<std::int64_t>("state buffer slot table");
        return t;
    }
    void expect_remaining(std::uint64_t bytes) const
    {
        if (remaining() != bytes) fail("state buffer length (after the slot table)", bytes, remaining());
    }
    /// A (rows, cols) matrix of finite scalars; the caller has checked the total length.
    template <class S>
    row_matrix<S> matrix(std::int64_t rows, std::int64_t cols)
    {
        row_matrix<S> m(rows, cols);
        for (index i = 0; i < m.size(); ++i) {
            m.data()[i] = get<S>("state buffer data");
            if (!std::isfinite(static_cast<double>(m.data()[i])))
                fail("state buffer data", "finite values", concat(m.data()[i], " at offset ", m_at - sizeof(S)));
        }
        return m;
    }

private:
    std::uint64_t remaining() const { return m_size - m_at; }
    template <class T>
    T get(const char* field)
    {
        if (remaining() < sizeof(T)) fail(field, "more bytes (truncated buffer)", concat(remaining(), " bytes left"));
        T x;
        std::memcpy(&x, m_data + m_at, sizeof(T));
        m_at += sizeof(T);
        return x;
    }
    const unsigned char* m_data;
    std::size_t m_size, m_at = 0;
};

} // namespace detail
} // namespace linrpe
