#pragma once
/// \file
/// \brief decoder: streaming (recurrent) decode of a causal linear_attention for serving, one slot per sequence.

#include "attention_state.hpp"
#include "errors.hpp"
#include "types.hpp"
#include "views.hpp"
#include "workspace.hpp"

#include <vector>

namespace linrpe {
namespace detail {
template <class Attention>
struct sequence_calls;
} // namespace detail

/// \brief Streaming decode of a causal attention for `batch` slots (sequences) of `heads` heads.
///
/// A thin serving layer over linrpe::attention_state: per (slot, head) S = Σ_{j<t} κ_j [v_j, 1]ᵀ (M', E + 1)
/// and the slot's own next position t, so that prefill(n tokens) followed by step() calls reproduces one
/// causal call over the whole sequence (to rounding). Cost per token O(M'·E), independent of t; memory
/// O(B·H·M'·E). With Toeplitz weights the state is the last T_max tokens' κ and [v, 1] plus a lagged
/// state of everything older: per token O(T_max·(M' + E) + M'·E).
///
/// Slots are independent: each can be reset, restarted at a position, prefilled, stepped with any subset
/// of the others, exported and imported, and no call touches (or changes one bit of the outputs of) a slot
/// it was not given. A slot's own outputs do not depend on which slots share its call either, except to
/// rounding for prefills longer than options::segment_rows (a call of fewer than 8 sequences cuts those
/// into parallel segments). The decoder holds its own copy of the attention, taken at creation.
template <class Attention>
class decoder {
public:
    using scalar_type = typename Attention::scalar_type;
    using matrix = row_matrix<scalar_type>;
    using const_ref = Eigen::Ref<const matrix>;
    using ref = Eigen::Ref<matrix>;
    using state_type = attention_state<Attention>;
    using in_view = tensor_view<const scalar_type>;
    using out_view = tensor_view<scalar_type>;

    decoder(const Attention& attention, index batch, index heads) : m_attn(checked(attention)), m_batch(batch), m_heads(heads)
    {
        detail::require_positive("decoder batch", batch);
        detail::require_positive("decoder heads", heads);
        m_state = state_type(batch, heads);
    }

    index batch() const { return m_batch; }
    index heads() const { return m_heads; }
    /// The attention the decoder runs (its own copy).
    const Attention& attention() const { return m_attn; }
    /// Every slot's state (a copy can be saved and given back with set_state()).
    const state_type& state() const { return m_state; }
    /// Replaces every slot's state (same batch and heads); throws before changing anything.
    void set_state(const state_type& state)
    {
        if (state.batch() != m_batch || state.heads() != m_heads)
            detail::fail("decoder state batch x heads", detail::concat(m_batch, " x ", m_heads),
                         detail::concat(state.batch(), " x ", state.heads()));
        m_state = state;
    }

    /// Next absolute position of `slot`.
    index position(index slot) const
    {
        check_slot(slot);
        return m_state.position(slot);
    }
    /// Next absolute position shared by all slots (the tokens consumed since construction or reset());
    /// throws when slots are at different positions (use position(slot)).
    index position() const
    {
        for (index b = 1; b < m_batch; ++b)
            if (m_state.position(b) != m_state.position(0))
                detail::fail("decoder position() (slots differ: use position(slot))", m_state.position(0),
                             detail::concat(m_state.position(b), " at slot ", b));
        return m_state.position(0);
    }

    /// Forgets every sequence; the next token of every slot is at position 0.
    void reset()
    {
        m_state.reset();
        m_width = m_values = -1;
    }
    /// Forgets the sequence of one slot (its memory is freed); the others are untouched.
    void reset(index slot) { restart(slot, 0); }
    /// Forgets the sequence of one slot and continues it at `position` (a sequence resumed elsewhere).
    void restart(index slot, index position)
    {
        check_slot(slot);
        m_state.restart(slot, position);
    }

    /// Consumes n tokens of every slot: q, k (B, H, n, D), v (B, H, n, E) → out (B, H, n, E).
    void prefill(in_view q, in_view k, in_view v, out_view out)
    {
        validate(q, k, v, out, m_batch);
        run(q, k, v, out, nullptr);
    }
    /// One token of every slot: q, k (B, H, 1, D), v (B, H, 1, E) → out (B, H, 1, E).
    void step(in_view q, in_view k, in_view v, out_view out)
    {
        if (q.tokens() != 1) detail::fail("q view tokens (decoder step)", 1, q.tokens());
        prefill(q, k, v, out);
    }

    /// \brief n tokens of the listed slots only: entry a of the views (A = slots.size(), H, n, ·) belongs to
    /// slot slots[a]; other slots are untouched. Slots must be distinct.
    void prefill(const std::vector<index>& slots, in_view q, in_view k, in_view v, out_view out)
    {
        validate(q, k, v, out, index(slots.size()));
        run(q, k, v, out, &slots);
    }
    /// One token of the listed slots only (views (A, H, 1, ·)).
    void step(const std::vector<index>& slots, in_view q, in_view k, in_view v, out_view out)
    {
        if (q.tokens() != 1) detail::fail("q view tokens (decoder step)", 1, q.tokens());
        prefill(slots, q, k, v, out);
    }
    /// \brief One token of the slots flagged in `active` (one flag per slot): views of the decoder's batch
    /// (B, H, 1, ·), as a server keeps them; entries of inactive slots are neither read nor written and
    /// their slots are untouched. Equals step(slots, …) over the active slots, bit for bit.
    void step_active(const std::vector<bool>& active, in_view q, in_view k, in_view v, out_view out)
    {
        if (q.tokens() != 1) detail::fail("q view tokens (decoder step)", 1, q.tokens());
        validate(q, k, v, out, m_batch);
        detail::sequence_calls<Attention>::forward_active(m_attn, q, k, v, out, m_state, active, m_ws);
        fix_widths(q, v);
    }
    /// \brief Prompts of several slots in one packed call: q, k (1, H, T, D), v (1, H, T, E), out (1, H, T, E)
    /// hold the sequences back to back, sequence b in token rows [cu_seqlens[b], cu_seqlens[b+1]) continuing
    /// slot slots[b] (distinct slots; others untouched). No padding is computed; equals one prefill(slot, …)
    /// per sequence.
    void prefill_packed(const std::vector<index>& slots, in_view q, in_view k, in_view v, out_view out,
                        const std::vector<index>& cu_seqlens)
    {
        validate(q, k, v, out, 1);
        detail::sequence_calls<Attention>::forward_packed_state(m_attn, q, k, v, out, cu_seqlens, m_state, &slots, m_ws);
        fix_widths(q, v);
    }
    /// n tokens of one slot (views of batch 1), e.g. a new prompt while the other slots are mid-generation.
    void prefill(index slot, in_view q, in_view k, in_view v, out_view out) { prefill(std::vector<index>{slot}, q, k, v, out); }

    /// The state of one slot as bytes (attention_state::export_bytes of that sequence alone).
    std::vector<unsigned char> export_slot(index slot) const
    {
        check_slot(slot);
        return m_state.sequence(slot).export_bytes(m_attn);
    }
    /// Restores one slot from export_slot() bytes (of a decoder of the same configuration and heads);
    /// throws linrpe::error, changing nothing, on any other buffer.
    void import_slot(index slot, const std::vector<unsigned char>& bytes)
    {
        check_slot(slot);
        state_type one;
        one.import_bytes(bytes, m_attn);
        m_state.assign(slot, one);
    }

    /// Single-sequence convenience (batch = heads = 1): rows of Q, K, V are consecutive tokens.
    void prefill(const const_ref& q, const const_ref& k, const const_ref& v, ref out)
    {
        if (m_batch != 1 || m_heads != 1)
            detail::fail("decoder batch x heads (matrix overload)", "1 x 1", detail::concat(m_batch, " x ", m_heads));
        prefill(as_view(q), as_view(k), as_view(v), as_view(out));
    }
    void step(const const_ref& q, const const_ref& k, const const_ref& v, ref out)
    {
        if (q.rows() != 1) detail::fail("q rows (decoder step)", 1, q.rows());
        prefill(q, k, v, out);
    }

private:
    static const Attention& checked(const Attention& attention)
    {
        if (attention.opts().mask != masking::causal)
            detail::fail("options.mask (a decoder streams a causal attention)", "masking::causal", "masking::none");
        return attention;
    }
    static in_view as_view(const const_ref& m) { return in_view(m.data(), 1, 1, m.rows(), m.cols(), 0, 0, m.outerStride(), 1); }
    static out_view as_view(ref m) { return out_view(m.data(), 1, 1, m.rows(), m.cols(), 0, 0, m.outerStride(), 1); }

    void check_slot(index slot) const
    {
        if (slot < 0 || slot >= m_batch) detail::fail("decoder slot", detail::concat("0 <= slot < ", m_batch), slot);
    }

    void run(in_view q, in_view k, in_view v, out_view out, const std::vector<index>* slots)
    {
        detail::sequence_calls<Attention>::forward_state(m_attn, q, k, v, out, m_state, slots, m_ws);
        fix_widths(q, v);
    }
    // The widths of the first call hold for the decoder's life (until reset()).
    void fix_widths(const in_view& q, const in_view& v)
    {
        m_width = q.channels();
        m_values = v.channels();
    }

    void validate(const in_view& q, const in_view& k, const in_view& v, const out_view& out, index batch) const
    {
        const auto check = [&](const char* name, index b, index h) {
            if (b != batch || h != m_heads)
                detail::fail(name, detail::concat("batch x heads = ", batch, " x ", m_heads), detail::concat(b, " x ", h));
        };
        check("q view (decoder)", q.batch(), q.heads());
        check("k view (decoder)", k.batch(), k.heads());
        check("v view (decoder)", v.batch(), v.heads());
        check("out view (decoder)", out.batch(), out.heads());
        if (m_width >= 0 && q.channels() != m_width) detail::fail("q view channels (fixed by the first prefill)", m_width, q.channels());
        if (m_values >= 0 && v.channels() != m_values) detail::fail("v view channels (fixed by the first prefill)", m_values, v.channels());
    }

    Attention m_attn;
    index m_batch, m_heads;
    index m_width = -1, m_values = -1;
    state_type m_state;
    workspace<scalar_type> m_ws;
};

} // namespace linrpe
