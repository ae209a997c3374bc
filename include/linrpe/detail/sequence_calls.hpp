#pragma once
// IWYU pragma: private
/// \file
/// \brief The batched calls of docs/design.md §8 over linear_attention's per-head dispatch: state passing,
/// per-sequence first positions, key lengths (padding masks) and packed variable-length sequences.
///
/// Each is a loop over (sequence, head) items that hands one head's rows to run_head, exactly as the plain
/// batched forward() does: a sequence of a packed call is a row range of the packed view, a padded key set
/// is the first len_b rows of the keys (mathematically the same as weights 0 on the rest), a state slot is
/// the `carried` stream of its item. Validation of everything precedes the first write.

#include "../attention_state.hpp"
#include "../errors.hpp"
#include "../types.hpp"
#include "../views.hpp"
#include "../workspace.hpp"
#include "state_buffer.hpp"
#include "parallel.hpp"

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

template <class Attention>
struct sequence_calls {
    using S = typename Attention::scalar_type;
    using in_view = tensor_view<const S>;
    using out_view = tensor_view<S>;
    using state_type = attention_state<Attention>;

    /// Causal call continuing state slots: batch entry a of the views continues sequence slots[a] of `state`
    /// (entry a itself when `slots` is null); those slots leave the call advanced by the views' tokens.
    static void forward_state(const Attention& attn, in_view q, in_view k, in_view v, out_view out, state_type& state,
                              const std::vector<index>* slots, workspace<S>& ws)
    {
        require_causal(attn);
        check_extents(q, k, v, out);
        if (q.heads() != state.heads()) fail("state heads", q.heads(), state.heads());
        const index items = q.batch(), n = q.tokens();
        if (slots) check_slots(*slots, items, state.batch());
        else if (items != state.batch()) fail("state batch", items, state.batch());
        const auto slot_of = [&](index a) { return slots ? (*slots)[static_cast<std::size_t>(a)] : a; };
        run_state(attn, q, k, v, out, state, items, [&](index a) { return item_rows{a, slot_of(a), 0, n}; }, ws);
    }

    /// Causal call over the active slots only: views of the state's batch, entry b continuing slot b where
    /// active[b]; inactive entries are neither read nor written, their slots untouched.
    static void forward_active(const Attention& attn, in_view q, in_view k, in_view v, out_view out, state_type& state,
                               const std::vector<bool>& active, workspace<S>& ws)
    {
        require_causal(attn);
        check_extents(q, k, v, out);
        if (q.heads() != state.heads()) fail("state heads", q.heads(), state.heads());
        if (q.batch() != state.batch()) fail("state batch", q.batch(), state.batch());
        if (index(active.size()) != state.batch()) fail("active (one flag per slot)", state.batch(), active.size());
        std::vector<index> on;
        for (index b = 0; b < state.batch(); ++b)
            if (active[static_cast<std::size_t>(b)]) on.push_back(b);
        const index n = q.tokens();
        run_state(attn, q, k, v, out, state, index(on.size()),
                  [&](index a) { return item_rows{on[static_cast<std::size_t>(a)], on[static_cast<std::size_t>(a)], 0, n}; }, ws);
    }

    /// Packed causal call continuing state slots: sequence b of the packed views (rows [cu[b], cu[b+1]))
    /// continues slot slots[b] of `state` (slot b when `slots` is null) from its position.
    static void forward_packed_state(const Attention& attn, in_view q, in_view k, in_view v, out_view out,
                                     const std::vector<index>& cu, state_type& state, const std::vector<index>* slots,
                                     workspace<S>& ws)
    {
        require_causal(attn);
        check_packed(q, k, v, out, cu);
        if (q.heads() != state.heads()) fail("state heads", q.heads(), state.heads());
        const index batch = index(cu.size()) - 1;
        if (slots) check_slots(*slots, batch, state.batch());
        else if (batch != state.batch()) fail("state batch (one slot per packed sequence)", batch, state.batch());
        run_state(attn, q, k, v, out, state, batch, [&](index b) {
            const std::size_t i = static_cast<std::size_t>(b);
            return item_rows{0, slots ? (*slots)[i] : b, cu[i], cu[i + 1] - cu[i]};
        }, ws);
    }

    /// \brief Backward of forward_state over every slot (linear_attention::backward from a state; views
    /// validated by the caller): item (b, h) starts at `initial`'s slot, `final_grad`'s slot (zero when null
    /// or empty) seeds its suffix, and `initial_grad` receives dS0 per slot, assigned after every head ran.
    static void backward_state(const Attention& attn, in_view q, in_view k, in_view v, in_view dout, out_view dq,
                               out_view dk, out_view dv, const state_type& initial, state_type& initial_grad,
                               const state_type* final_grad, workspace<S>* ws, typename Attention::parameter_gradients* pg)
    {
        require_causal(attn);
        const index batch = q.batch(), heads = q.heads(), n = q.tokens(), d = q.channels(), e = v.channels();
        const auto check_extents_of = [&](const char* what, const state_type& st) {
            if (st.batch() != batch || st.heads() != heads)
                fail(what, concat("batch x heads = ", batch, " x ", heads), concat(st.batch(), " x ", st.heads()));
        };
        check_extents_of("initial state", initial);
        if (final_grad) check_extents_of("final_grad state", *final_grad);
        for (index b = 0; b < batch; ++b)
            for (index h = 0; h < heads; ++h) {
                check_slot(attn, initial, b, h, n, d, e, "initial state");
                if (final_grad) check_slot(attn, *final_grad, b, h, 0, d, e, "final_grad state");
                if constexpr (state_type::toeplitz) check_windows(attn, initial, final_grad, b, h, n);
            }
        state_type grad(batch, heads);
        for (index b = 0; b < batch; ++b)
            for (index h = 0; h < heads; ++h) {
                const auto& from = initial.slot(b, h);
                grad.slot(b, h).position = from.position;
                grad.slot(b, h).origin = from.origin;
            }
        attn.backward_items(q, k, v, dout, dq, dk, dv, ws, pg, [&](index b, index h) {
            return typename Attention::backward_item{initial.slot(b, h).position, &initial.slot(b, h).stream,
                                                     final_grad ? &final_grad->slot(b, h).stream : nullptr,
                                                     &grad.slot(b, h).stream};
        });
        initial_grad = std::move(grad);
    }

    /// Batched call with per-sequence first positions (`first` size B, or empty for 0) and, for a
    /// non-causal call, per-sequence key lengths (`key_lengths` size B: keys j >= len_b are left out).
    static void forward_sequences(const Attention& attn, in_view q, in_view k, in_view v, out_view out,
                                  const std::vector<index>& first, const std::vector<index>* key_lengths, workspace<S>& ws)
    {
        check_extents(q, k, v, out);
        const index batch = q.batch(), heads = q.heads();
        check_per_sequence("first_positions", first, batch, 0, -1);
        if (key_lengths) {
            if (attn.opts().mask == masking::causal)
                fail("options.mask (key lengths mask the padding of non-causal calls; causal rows never see later keys)",
                     "masking::none", "masking::causal");
            check_per_sequence("key_lengths", *key_lengths, batch, 0, k.tokens());
        }
        const auto keys = [&](index b) {
            return key_lengths && !key_lengths->empty() ? (*key_lengths)[static_cast<std::size_t>(b)] : k.tokens();
        };
        for (index b = 0; b < batch; ++b)
            for (index h = 0; h < heads; ++h)
                attn.validate_head(q.tokens(), q.channels(), keys(b), k.channels(), keys(b), v.channels(), h, at(first, b),
                                   at(first, b));
        const serial_eigen_scope serial_eigen; // linrpe's products stay serial: results independent of threads
        ws.prepare(Attention::call_slots(attn.opts().threads));
        parallel_for(batch * heads, attn.head_threads(batch * heads, q.tokens()), [&](index bh) {
            const index b = bh / heads, h = bh % heads, nk = keys(b);
            attn.run_head(q.slice(b, h), k.slice(b, h).topRows(nk), v.slice(b, h).topRows(nk), out.slice(b, h), h,
                          at(first, b), at(first, b), nullptr, batch * heads, &ws);
        }, attn.head_work(q.tokens(), k.tokens(), q.channels(), v.channels()));
    }

    /// Packed call: views of batch 1 hold B sequences back to back, sequence b in rows [cu[b], cu[b+1]),
    /// starting at position first[b] (0 when `first` is empty); keys and values are packed the same way.
    static void forward_packed(const Attention& attn, in_view q, in_view k, in_view v, out_view out,
                               const std::vector<index>& cu, const std::vector<index>& first, workspace<S>& ws)
    {
        check_packed(q, k, v, out, cu);
        const index batch = index(cu.size()) - 1, heads = q.heads();
        check_per_sequence("first_positions", first, batch, 0, -1);
        index longest = 0;
        for (index b = 0; b < batch; ++b) {
            const index len = cu[b + 1] - cu[b];
            longest = std::max(longest, len);
            for (index h = 0; h < heads; ++h)
                attn.validate_head(len, q.channels(), len, k.channels(), len, v.channels(), h, at(first, b), at(first, b));
        }
        const serial_eigen_scope serial_eigen; // linrpe's products stay serial: results independent of threads
        ws.prepare(Attention::call_slots(attn.opts().threads));
        parallel_for(batch * heads, attn.head_threads(batch * heads, longest), [&](index bh) {
            const index b = bh / heads, h = bh % heads, r0 = cu[b], len = cu[b + 1] - cu[b];
            attn.run_head(q.slice(0, h).middleRows(r0, len), k.slice(0, h).middleRows(r0, len),
                          v.slice(0, h).middleRows(r0, len), out.slice(0, h).middleRows(r0, len), h, at(first, b),
                          at(first, b), nullptr, batch * heads, &ws);
        }, attn.head_work(longest, longest, q.channels(), v.channels()));
    }

    /// Views valid, and batch, heads and token counts consistent (k, v one key set; out like q with v's width).
    static void check_extents(const in_view& q, const in_view& k, const in_view& v, const out_view& out)
    {
        q.validate("q view");
        k.validate("k view");
        v.validate("v view");
        out.validate("out view");
        out.validate_distinct("out view");
        const footprint o = footprint_of(out);
        require_disjoint("out view", o, "q view", footprint_of(q));
        require_disjoint("out view", o, "k view", footprint_of(k));
        require_disjoint("out view", o, "v view", footprint_of(v));
        const auto dims = [](index a, index b, index c, index d) { return concat("(", a, ", ", b, ", ", c, ", ", d, ")"); };
        if (k.batch() != q.batch() || k.heads() != q.heads() || k.channels() != q.channels())
            fail("k view extents", dims(q.batch(), q.heads(), k.tokens(), q.channels()), dims(k.batch(), k.heads(), k.tokens(), k.channels()));
        if (v.batch() != q.batch() || v.heads() != q.heads() || v.tokens() != k.tokens())
            fail("v view extents", dims(q.batch(), q.heads(), k.tokens(), v.channels()), dims(v.batch(), v.heads(), v.tokens(), v.channels()));
        if (out.batch() != q.batch() || out.heads() != q.heads() || out.tokens() != q.tokens() || out.channels() != v.channels())
            fail("out view extents", dims(q.batch(), q.heads(), q.tokens(), v.channels()),
                 dims(out.batch(), out.heads(), out.tokens(), out.channels()));
    }

private:
    static void require_causal(const Attention& attn)
    {
        if (attn.opts().mask != masking::causal)
            fail("options.mask (state passing continues a causal attention)", "masking::causal", "masking::none");
    }

    // Views of batch 1 holding B sequences at the offsets cu (B + 1, from 0 to the total tokens, non-decreasing).
    static void check_packed(const in_view& q, const in_view& k, const in_view& v, const out_view& out, const std::vector<index>& cu)
    {
        check_extents(q, k, v, out);
        if (q.batch() != 1) fail("q view batch (packed sequences: batch 1, total tokens on the token axis)", 1, q.batch());
        if (k.tokens() != q.tokens()) fail("k view tokens (packed: the same total as the queries)", q.tokens(), k.tokens());
        if (cu.size() < 2) fail("cu_seqlens size (B + 1 offsets, B >= 1)", ">= 2", cu.size());
        if (cu.front() != 0) fail("cu_seqlens[0]", 0, cu.front());
        for (std::size_t b = 1; b < cu.size(); ++b)
            if (cu[b] < cu[b - 1])
                fail("cu_seqlens (non-decreasing offsets)", concat(">= ", cu[b - 1], " at index ", b), cu[b]);
        if (cu.back() != q.tokens()) fail("cu_seqlens[B] (total tokens of the packed views)", q.tokens(), cu.back());
    }

    // `slots` names `items` distinct slots of a state of `batch` slots.
    static void check_slots(const std::vector<index>& slots, index items, index batch)
    {
        if (index(slots.size()) != items) fail("slots (one per sequence of the call)", items, slots.size());
        std::vector<char> seen(static_cast<std::size_t>(batch), 0);
        for (const index b : slots) {
            if (b < 0 || b >= batch) fail("slots entry", concat("0 <= slot < ", batch), b);
            if (seen[static_cast<std::size_t>(b)]++) fail("slots entry (each slot at most once)", "distinct slots", b);
        }
    }

    // One sequence of a state-passing call: rows [r0, r0 + rows) of view entry `entry` continue `slot`.
    struct item_rows {
        index entry, slot, r0, rows;
    };

    // The state-passing calls over validated views: item(a) for a < items gives each sequence's rows and
    // slot (distinct slots). Checks every slot before the first write, runs the (sequence, head) calls,
    // then advances the slots' positions.
    template <class Item>
    static void run_state(const Attention& attn, const in_view& q, const in_view& k, const in_view& v, const out_view& out,
                          state_type& state, index items, const Item& item, workspace<S>& ws)
    {
        const index d = q.channels(), e = v.channels(), heads = q.heads(), calls = items * heads;
        index longest = 0;
        for (index a = 0; a < items; ++a) {
            const item_rows it = item(a);
            longest = std::max(longest, it.rows);
            for (index h = 0; h < heads; ++h) check_slot(attn, state, it.slot, h, it.rows, d, e, "state");
        }
        const serial_eigen_scope serial_eigen; // linrpe's products stay serial: results independent of threads
        ws.prepare(Attention::call_slots(attn.opts().threads));
        parallel_for(calls, attn.head_threads(calls, longest), [&](index ah) {
            const index h = ah % heads;
            const item_rows it = item(ah / heads);
            auto& s = state.slot(it.slot, h);
            attn.run_head(q.slice(it.entry, h).middleRows(it.r0, it.rows), k.slice(it.entry, h).middleRows(it.r0, it.rows),
                          v.slice(it.entry, h).middleRows(it.r0, it.rows), out.slice(it.entry, h).middleRows(it.r0, it.rows),
                          h, s.position, s.position, &s.stream, calls, &ws);
        }, attn.head_work(longest, longest, d, e));
        for (index a = 0; a < items; ++a) {
            const item_rows it = item(a);
            for (index h = 0; h < heads; ++h) state.slot(it.slot, h).position += it.rows;
        }
    }

    // Slot (b, h) of `state` can continue (or, for a gradient state, match) a causal call of n tokens of
    // width d with values of width e: positions stay below 2^53, the encoding accepts every offset from the
    // slot's origin on, and a non-empty slot holds (M', E) matrices of this normalization.
    static void check_slot(const Attention& attn, const state_type& state, index b, index h, index n, index d, index e,
                           const char* what)
    {
        const auto& s = state.slot(b, h);
        if (n > state_position_limit - s.position)
            fail(concat(what, " position (after the call)").c_str(), "<= 2^53", concat(s.position, " + ", n));
        // As if the call spanned the slot's whole history: positivity is checked at every offset a query of
        // this call sees (from the slot's origin on).
        const index span = s.position - s.origin + n;
        attn.validate_head(span, d, span, d, span, e, h, s.origin, s.origin);
        const index m = attn.encoded_dim(d);
        const bool with_den = attn.opts().norm == normalization::sum;
        if (!s.stream.empty() && (state_type::features_of(s) != m || state_type::values_of(s, with_den) != e ||
                                  !state_type::fits_normalization(s, with_den)))
            fail(concat(what, " slot sizes (M', E)").c_str(), concat("(", m, ", ", e, ") for this call"),
                 concat("(", state_type::features_of(s), ", ", state_type::values_of(s, with_den), ") at slot (", b, ", ",
                        h, ")"));
    }

    // Toeplitz: the initial slot holds at most T_max tokens, and a non-empty final_grad slot the history the
    // call leaves, min(history + n, T_max) rows (its far and widths are checked by check_slot).
    static void check_windows(const Attention& attn, const state_type& initial, const state_type* final_grad, index b,
                              index h, index n)
    {
        const index t_max = attn.positional().template mixing_weights<S>(h, 0, 0).t_max;
        const auto& from = initial.slot(b, h).stream;
        const index kept = from.empty() ? 0 : from.history();
        if (kept > t_max)
            fail("initial state history", concat("<= T_max = ", t_max, " tokens"), concat(kept, " at slot (", b, ", ", h, ")"));
        if (!final_grad || final_grad->slot(b, h).stream.empty()) return;
        const index expected = std::min(kept + n, t_max), got = final_grad->slot(b, h).stream.history();
        if (got != expected)
            fail("final_grad state history (rows of the window the call leaves)", concat(expected, " tokens"),
                 concat(got, " at slot (", b, ", ", h, ")"));
    }

    // Empty, or one value per sequence in [lo, hi] (hi < 0: no upper bound).
    static void check_per_sequence(const char* argument, const std::vector<index>& values, index batch, index lo, index hi)
    {
        if (values.empty()) return;
        if (index(values.size()) != batch) fail(argument, concat(batch, " values (one per sequence)"), values.size());
        for (std::size_t b = 0; b < values.size(); ++b)
            if (values[b] < lo || (hi >= 0 && values[b] > hi))
                fail(argument, hi >= 0 ? concat("values in [", lo, ", ", hi, "]") : concat("values >= ", lo),
                     concat(values[b], " at index ", b));
    }
    static index at(const std::vector<index>& first, index b) { return first.empty() ? 0 : first[static_cast<std::size_t>(b)]; }
};

} // namespace detail
} // namespace linrpe
