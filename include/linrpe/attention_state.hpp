#pragma once
/// \file
/// \brief attention_state: the public, copyable state of a causal linear_attention for B × H sequences,
/// with export to a flat byte buffer and a validated import.

#include "detail/state_buffer.hpp"
#include "errors.hpp"
#include "types.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {
template <class Attention>
struct sequence_calls;
} // namespace detail
namespace distributed {
template <class Attention>
class context_parallel;
} // namespace distributed

/// \brief State of a causal attention for `batch` sequences of `heads` heads (one slot per (b, h)).
///
/// Each slot holds what continuing the sequence needs (docs/design.md §8):
///  - the next absolute position t and the position the slot's history starts at (its origin);
///  - without mixing weights: S = Σ_{j<t} κ_j v_jᵀ (M', E) and, under `sum`, z = Σ_{j<t} κ_j (M');
///  - with Toeplitz weights: κ and [v, 1] of the last min(t − origin, T_max) tokens and the lagged state
///    far = Σ κ_j [v_j, 1]ᵀ of all older tokens (M', Ex).
/// Memory O(B·H·M'·E) (Toeplitz: O(B·H·(T_max·(M' + Ex) + M'·Ex))). A slot is empty (no matrices) until it
/// has consumed a token. Passing it to linear_attention::forward(q, k, v, out, state) continues every slot
/// from its position and leaves the state after the call, so k calls over the pieces of a sequence equal
/// one call (to rounding). export_bytes() / import_bytes() move it between processes of the same build.
template <class Attention>
class attention_state {
public:
    using attention_type = Attention;
    using scalar_type = typename Attention::scalar_type;

    attention_state() = default;
    /// Empty slots at position 0 for `batch` × `heads` sequences.
    attention_state(index batch, index heads) : m_batch(batch), m_heads(heads)
    {
        detail::require_positive("attention_state batch", batch);
        detail::require_positive("attention_state heads", heads);
        m_slots.resize(static_cast<std::size_t>(batch * heads));
    }

    index batch() const { return m_batch; }
    index heads() const { return m_heads; }
    /// Next absolute position of sequence b, head h (all heads of a sequence advance together).
    index position(index b, index h = 0) const { return slot(b, h).position; }
    /// Position of the first token the slot's history holds (where it was last restarted).
    index origin(index b, index h = 0) const { return slot(b, h).origin; }
    /// Whether slot (b, h) holds no token yet.
    bool empty(index b, index h = 0) const { return slot(b, h).stream.empty(); }
    /// S = Σ_j κ_j v_jᵀ (M', E) of slot (b, h), empty while the slot is; for the gradient a backward from a
    /// state returns, dS. Encodings without mixing weights only (a Toeplitz slot holds a window instead).
    const row_matrix<scalar_type>& kv(index b, index h = 0) const
    {
        static_assert(!toeplitz, "attention_state::kv(): a Toeplitz state holds a window, not one S");
        return slot(b, h).stream.s;
    }
    /// z = Σ_j κ_j (M') of slot (b, h) under `sum` (empty otherwise), or dz in a gradient; as kv().
    const vector<scalar_type>& key_sum(index b, index h = 0) const
    {
        static_assert(!toeplitz, "attention_state::key_sum(): a Toeplitz state holds a window, not one z");
        return slot(b, h).stream.z;
    }

    /// Forgets sequence b (every head); its next token is at `position` (a prompt resumed mid-way).
    void restart(index b, index position = 0)
    {
        check_batch("attention_state sequence", b);
        if (position < 0 || position > detail::state_position_limit)
            detail::fail("attention_state position", "a value in [0, 2^53]", position);
        for (index h = 0; h < m_heads; ++h) slot(b, h) = slot_state{stream_type(), position, position};
    }
    /// Forgets every sequence; the next tokens are at position 0.
    void reset()
    {
        for (auto& s : m_slots) s = slot_state();
    }

    /// A copy of sequence b alone (batch 1).
    attention_state sequence(index b) const
    {
        check_batch("attention_state sequence", b);
        attention_state one(1, m_heads);
        for (index h = 0; h < m_heads; ++h) one.slot(0, h) = slot(b, h);
        return one;
    }
    /// Replaces sequence b by `one` (batch 1, same heads); throws before writing.
    void assign(index b, const attention_state& one)
    {
        check_batch("attention_state sequence", b);
        if (one.m_batch != 1 || one.m_heads != m_heads)
            detail::fail("attention_state (assigned sequence) batch x heads", detail::concat("1 x ", m_heads),
                         detail::concat(one.m_batch, " x ", one.m_heads));
        for (index h = 0; h < m_heads; ++h) slot(b, h) = one.slot(0, h);
    }

    /// \brief The state as bytes: a versioned header (magic, format version, scalar size, state kind, a
    /// configuration tag of the attention type and its normalization, B, H), a table of per-slot sizes and
    /// positions, then the matrices, in native byte order. O(size of the state).
    std::vector<unsigned char> export_bytes(const Attention& attention) const
    {
        const bool with_den = attention.opts().norm == normalization::sum;
        for (std::size_t i = 0; i < m_slots.size(); ++i)
            if (!fits_normalization(m_slots[i], with_den))
                detail::fail("attention_state (export)", "a state made by an attention of this normalization",
                             detail::concat("slot ", i, " built with", with_den ? "out" : "", " a denominator"));
        detail::state_writer w;
        w.header(header_of(attention, m_batch, m_heads));
        for (const auto& s : m_slots) w.slot(entry_of(s));
        for (const auto& s : m_slots) write_data(w, s);
        return w.take();
    }

    /// \brief Reads a buffer written by export_bytes() for an attention of this type and configuration.
    ///
    /// Every field is checked (magic, version, scalar size, kind, configuration tag, normalization, shapes,
    /// positions, history lengths against T_max, the exact total length, finite values) before anything is
    /// built; a buffer from another configuration, truncated or corrupted, throws linrpe::error naming the
    /// field and leaves `*this` untouched.
    void import_bytes(const unsigned char* data, std::size_t size, const Attention& attention)
    {
        detail::state_reader r(data, size);
        const detail::state_header expected = header_of(attention, 1, 1);
        const detail::state_header h = r.header(expected);
        const std::size_t slots = static_cast<std::size_t>(h.batch * h.heads);
        std::vector<detail::state_slot_entry> table(slots);
        for (std::size_t i = 0; i < slots; ++i) table[i] = r.slot();
        std::uint64_t bytes = 0;
        for (std::size_t i = 0; i < slots; ++i) {
            const auto& t = table[i];
            if (!(t.features == table[0].features && t.values == table[0].values) && t.features != 0 && table[0].features != 0)
                detail::fail("state buffer slot sizes", "one (M', E) for every non-empty slot",
                             detail::concat("(", t.features, ", ", t.values, ") at slot ", i));
            check_entry(t, attention, static_cast<index>(i) % h.heads, i);
            bytes = detail::add_checked(bytes, data_elements(t, expected.with_den), "state buffer sizes");
        }
        r.expect_remaining(detail::mul_checked(bytes, sizeof(scalar_type), "state buffer sizes"));
        attention_state fresh(h.batch, h.heads);
        for (std::size_t i = 0; i < slots; ++i) read_data(r, table[i], fresh.m_slots[i], expected.with_den);
        *this = std::move(fresh);
    }
    void import_bytes(const std::vector<unsigned char>& buffer, const Attention& attention)
    {
        import_bytes(buffer.data(), buffer.size(), attention);
    }

private:
    friend Attention;
    friend struct detail::sequence_calls<Attention>;
    friend class distributed::context_parallel<Attention>; // builds the states of the ranks before it
    using stream_type = typename Attention::stream_state;
    static constexpr bool toeplitz = Attention::positional_encoding_type::has_mixing;

    struct slot_state {
        stream_type stream;
        index position = 0;
        index origin = 0;
    };

    slot_state& slot(index b, index h) { return m_slots[static_cast<std::size_t>(b * m_heads + h)]; }
    const slot_state& slot(index b, index h) const
    {
        if (b < 0 || b >= m_batch || h < 0 || h >= m_heads)
            detail::fail("attention_state slot (b, h)", detail::concat("b < ", m_batch, ", h < ", m_heads),
                         detail::concat("(", b, ", ", h, ")"));
        return m_slots[static_cast<std::size_t>(b * m_heads + h)];
    }
    void check_batch(const char* argument, index b) const
    {
        if (b < 0 || b >= m_batch) detail::fail(argument, detail::concat("0 <= b < ", m_batch), b);
    }

    // Whether the slot carries a denominator exactly when `sum` needs one.
    static bool fits_normalization(const slot_state& s, bool with_den)
    {
        if (s.stream.empty()) return true;
        if constexpr (toeplitz) return s.stream.value_width() >= (with_den ? 2 : 1);
        else return s.stream.z.size() == (with_den ? s.stream.s.rows() : 0);
    }

    // Width of the slot's features (0 when empty) and of its values (without the denominator column).
    static index features_of(const slot_state& s)
    {
        if constexpr (toeplitz) return s.stream.feature_width();
        else return s.stream.s.rows();
    }
    static index values_of(const slot_state& s, bool with_den)
    {
        if constexpr (toeplitz) return s.stream.empty() ? 0 : s.stream.value_width() - (with_den ? 1 : 0);
        else return (void)with_den, s.stream.s.cols();
    }

    static detail::state_header header_of(const Attention& attention, index batch, index heads)
    {
        detail::state_header h;
        h.scalar_size = sizeof(scalar_type);
        h.kind = toeplitz ? 1 : 0;
        h.with_den = attention.opts().norm == normalization::sum ? 1 : 0;
        h.tag = detail::fnv1a(typeid(Attention).name()) ^ (std::uint64_t(attention.opts().norm) << 56);
        h.batch = batch;
        h.heads = heads;
        return h;
    }
    static detail::state_slot_entry entry_of(const slot_state& s)
    {
        detail::state_slot_entry t;
        t.position = s.position;
        t.origin = s.origin;
        t.features = features_of(s);
        if constexpr (toeplitz) {
            t.values = s.stream.empty() ? 0 : s.stream.value_width();
            t.history = s.stream.history();
            t.evicted = s.stream.evicted() ? 1 : 0;
        } else {
            t.values = s.stream.s.cols();
        }
        return t;
    }
    // Scalars a slot's data occupies: S and z, or far, keys and values. `values` holds Ex for Toeplitz.
    static std::uint64_t data_elements(const detail::state_slot_entry& t, bool with_den)
    {
        const std::uint64_t m = std::uint64_t(t.features), e = std::uint64_t(t.values), c = std::uint64_t(t.history);
        if (t.features == 0) return 0;
        if (toeplitz) return m * e + c * (m + e);
        return m * e + (with_den ? m : 0);
    }

    void check_entry(const detail::state_slot_entry& t, const Attention& attention, index head, std::size_t i) const
    {
        const auto at = [i](const char* what) { return detail::concat("state buffer slot ", i, " ", what); };
        if (t.position < 0 || t.origin < 0 || t.origin > t.position || t.position > detail::state_position_limit)
            detail::fail(at("positions").c_str(), "0 <= origin <= position <= 2^53", detail::concat(t.origin, ", ", t.position));
        if (t.features < 0 || t.values < 0 || t.history < 0 || t.features > detail::state_dim_limit ||
            t.values > detail::state_dim_limit || (t.features == 0) != (t.values == 0))
            detail::fail(at("sizes").c_str(), "M', E both 0 (empty) or both in [1, 2^24]",
                         detail::concat(t.features, ", ", t.values));
        const std::int64_t consumed = t.position - t.origin;
        if ((t.features == 0) != (consumed == 0))
            detail::fail(at("positions").c_str(), "an empty slot exactly when it consumed no token",
                         detail::concat("sizes ", t.features, " with ", consumed, " tokens"));
        if (t.evicted != 0 && t.evicted != 1) detail::fail(at("evicted flag").c_str(), "0 or 1", t.evicted);
        if constexpr (toeplitz) {
            const index t_max = attention.positional().template mixing_weights<scalar_type>(head, 0, 0).t_max;
            const std::int64_t kept = std::min<std::int64_t>(consumed, t_max);
            if (t.history != kept || (t.evicted == 1) != (consumed > t_max))
                detail::fail(at("history").c_str(), detail::concat(kept, " tokens (T_max = ", t_max, "), evicted ", consumed > t_max),
                             detail::concat(t.history, " tokens, evicted ", t.evicted));
            if (t.features > 0 && t.values < (attention.opts().norm == normalization::sum ? 2 : 1))
                detail::fail(at("value width").c_str(), "E + 1 >= 2 columns under sum", t.values);
        } else {
            (void)attention, (void)head;
            if (t.history != 0 || t.evicted != 0)
                detail::fail(at("history").c_str(), "0 (no window without mixing weights)", t.history);
        }
    }

    static void write_data(detail::state_writer& w, const slot_state& s)
    {
        if constexpr (toeplitz) {
            if (s.stream.empty()) return;
            w.matrix(s.stream.far());
            w.matrix(s.stream.keys());
            w.matrix(s.stream.values());
        } else {
            w.matrix(s.stream.s);
            w.matrix(s.stream.z);
        }
    }
    static void read_data(detail::state_reader& r, const detail::state_slot_entry& t, slot_state& s, bool with_den)
    {
        s.position = t.position;
        s.origin = t.origin;
        if (t.features == 0) return;
        if constexpr (toeplitz) {
            row_matrix<scalar_type> far = r.template matrix<scalar_type>(t.features, t.values);
            row_matrix<scalar_type> keys = r.template matrix<scalar_type>(t.history, t.features);
            row_matrix<scalar_type> values = r.template matrix<scalar_type>(t.history, t.values);
            s.stream.assign(std::move(keys), std::move(values), std::move(far), t.evicted == 1);
        } else {
            s.stream.s = r.template matrix<scalar_type>(t.features, t.values);
            if (with_den) s.stream.z = r.template matrix<scalar_type>(t.features, 1);
        }
    }

    index m_batch = 0, m_heads = 0;
    std::vector<slot_state> m_slots;
};

} // namespace linrpe
