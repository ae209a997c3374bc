// decoder slots for serving: every slot has its own position, slots are reset, restarted, prefilled and
// stepped in any subset, exported and imported, and no call changes one bit of another slot's outputs.
#include "support_state.hpp"

#include <random>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_serving {

namespace {
using namespace state_test;
using linrpe::index;

template <class S>
using lrpe_attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;

// Tokens of one sequence: (n, H, W) memory, with views of a token range as batch-1 (1, H, count, W) views.
template <class S>
struct sequence {
    index h, n, w;
    row_matrix<S> data;
    sequence(index h_, index n_, index w_, std::uint32_t seed) : h(h_), n(n_), w(w_), data(test::uniform<S>(n * h, w, seed)) {}
    tensor_view<const S> in(index t0, index count) const { return tensor_view<const S>(data.data() + t0 * h * w, 1, h, count, w, 0, w, h * w); }
    tensor_view<S> out(index t0, index count) { return tensor_view<S>(data.data() + t0 * h * w, 1, h, count, w, 0, w, h * w); }
};

// One token of several sequences gathered into (A, H, 1, W) buffers and scattered back.
template <class S>
struct gathered {
    index h, w;
    std::vector<S> data;
    gathered(index a, index h_, index w_) : h(h_), w(w_), data(static_cast<std::size_t>(a * h_ * w_)) {}
    tensor_view<const S> in() const { return view_bhnd<const S>(data.data(), index(data.size()) / (h * w), h, 1, w); }
    tensor_view<S> out() { return view_bhnd(data.data(), index(data.size()) / (h * w), h, 1, w); }
    void put(index a, const sequence<S>& s, index t)
    {
        for (index hi = 0; hi < h; ++hi) out().slice(a, hi) = s.in(t, 1).slice(0, hi);
    }
    void take(index a, sequence<S>& s, index t) const
    {
        for (index hi = 0; hi < h; ++hi) s.out(t, 1).slice(0, hi) = in().slice(a, hi);
    }
};

// The scenario of a continuous-batching server: sequences of random prompt and generation lengths are
// admitted into free slots (prefill while the others are mid-generation), stepped together, retired.
// Returns each sequence's outputs; `solo` runs every sequence alone in a decoder of its own instead.
template <class Attention>
std::vector<row_matrix<typename Attention::scalar_type>> serve(const Attention& attn, index slots, index count, bool solo,
                                                                std::uint32_t seed)
{
    using S = typename Attention::scalar_type;
    const index h = 2, d = 6, e = 3;
    std::mt19937 gen(seed);
    struct job {
        index prompt, total;
    };
    std::vector<job> jobs;
    for (index i = 0; i < count; ++i) {
        const index prompt = index(gen() % 12), total = prompt + 1 + index(gen() % 20);
        jobs.push_back({prompt, total});
    }
    std::vector<sequence<S>> q, k, v, out;
    for (index i = 0; i < count; ++i) {
        q.emplace_back(h, jobs[i].total, d, 100 + 3 * std::uint32_t(i));
        k.emplace_back(h, jobs[i].total, d, 101 + 3 * std::uint32_t(i));
        v.emplace_back(h, jobs[i].total, e, 102 + 3 * std::uint32_t(i));
        out.emplace_back(h, jobs[i].total, e, 0);
    }
    if (solo) {
        for (index i = 0; i < count; ++i) {
            auto dec = attn.decoder(1, h);
            dec.prefill(q[i].in(0, jobs[i].prompt), k[i].in(0, jobs[i].prompt), v[i].in(0, jobs[i].prompt), out[i].out(0, jobs[i].prompt));
            for (index t = jobs[i].prompt; t < jobs[i].total; ++t) dec.step(q[i].in(t, 1), k[i].in(t, 1), v[i].in(t, 1), out[i].out(t, 1));
        }
    } else {
        auto dec = attn.decoder(slots, h);
        std::vector<index> in_slot(static_cast<std::size_t>(slots), -1), next(static_cast<std::size_t>(count), 0);
        index admitted = 0, done = 0;
        while (done < count) {
            for (index s = 0; s < slots; ++s)
                if (in_slot[s] < 0 && admitted < count && gen() % 2 == 0) { // admit (not always at once)
                    const index i = admitted++;
                    dec.reset(s);
                    dec.prefill(s, q[i].in(0, jobs[i].prompt), k[i].in(0, jobs[i].prompt), v[i].in(0, jobs[i].prompt),
                                out[i].out(0, jobs[i].prompt));
                    REQUIRE(dec.position(s) == jobs[i].prompt);
                    in_slot[s] = i;
                    next[i] = jobs[i].prompt;
                }
            std::vector<index> active;
            for (index s = 0; s < slots; ++s)
                if (in_slot[s] >= 0 && gen() % 4 != 0) active.push_back(s); // some slots sit a step out
            gathered<S> gq(index(active.size()), h, d), gk(index(active.size()), h, d), gv(index(active.size()), h, e),
                go(index(active.size()), h, e);
            for (index a = 0; a < index(active.size()); ++a) {
                const index i = in_slot[active[a]];
                gq.put(a, q[i], next[i]);
                gk.put(a, k[i], next[i]);
                gv.put(a, v[i], next[i]);
            }
            if (!active.empty()) dec.step(active, gq.in(), gk.in(), gv.in(), go.out());
            for (index a = 0; a < index(active.size()); ++a) {
                const index s = active[a], i = in_slot[s];
                go.take(a, out[i], next[i]);
                REQUIRE(dec.position(s) == next[i] + 1);
                if (++next[i] == jobs[i].total) { // retire
                    in_slot[s] = -1;
                    ++done;
                }
            }
        }
    }
    std::vector<row_matrix<S>> result;
    for (auto& o : out) result.push_back(o.data);
    return result;
}

// Returns the number of sequences whose batched outputs equal their solo run bit for bit and were written
// (the output buffers start as the same random data in both runs: equal untouched buffers must not count).
template <class Attention>
index check_serving(const Attention& attn)
{
    const auto alone = serve(attn, 1, 9, true, 5);
    const auto batched = serve(attn, 4, 9, false, 5);
    REQUIRE(alone.size() == batched.size());
    index equal = 0;
    for (std::size_t i = 0; i < alone.size(); ++i) {
        const row_matrix<typename Attention::scalar_type> untouched =
            test::uniform<typename Attention::scalar_type>(alone[i].rows(), alone[i].cols(), 0);
        CAPTURE(i);
        if (test::bit_identical(batched[i], alone[i]) && !test::bit_identical(batched[i], untouched)) ++equal;
    }
    return equal;
}

TEMPLATE_TEST_CASE("Serving: continuous batching equals independent single-sequence runs bit for bit", "[serving]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    REQUIRE(check_serving(plain_attention<S>({}, {}, make_options<S>(masking::causal))) == 9);
    REQUIRE(check_serving(lrpe_attention<S>({}, positional::lrpe<S>(lrpe_kind::rotate, 6, 2),
                                            make_options<S>(masking::causal, normalization::rms))) == 9);
    for (const index t_max : {index(3), index(40)}) {
        CAPTURE(t_max);
        REQUIRE(check_serving(toeplitz_attention<S>({}, random_bias<S>(2, t_max, 8), make_options<S>(masking::causal))) == 9);
    }
}

TEST_CASE("Serving: the single-sequence runs equal the exact reference", "[serving]")
{
    // serve(solo) is the comparison target above: anchor it to the O(N^2) definition once.
    using S = double;
    const index h = 2, n = 25, d = 6, e = 3, prompt = 7;
    const toeplitz_attention<S> attn({}, random_bias<S>(h, 5, 8), make_options<S>(masking::causal));
    const sequence<S> q(h, n, d, 1), k(h, n, d, 2), v(h, n, e, 3);
    sequence<S> out(h, n, e, 0);
    auto dec = attn.decoder(1, h);
    dec.restart(0, 0);
    dec.prefill(0, q.in(0, prompt), k.in(0, prompt), v.in(0, prompt), out.out(0, prompt));
    for (index t = prompt; t < n; ++t) dec.step(q.in(t, 1), k.in(t, 1), v.in(t, 1), out.out(t, 1));
    for (index hi = 0; hi < h; ++hi) {
        const auto [ref, bound] = test::reference_and_bound(attn, row_matrix<S>(q.in(0, n).slice(0, hi)), row_matrix<S>(k.in(0, n).slice(0, hi)),
                                                            row_matrix<S>(v.in(0, n).slice(0, hi)), hi);
        CAPTURE(hi, bound);
        REQUIRE(test::abs_error(row_matrix<S>(out.in(0, n).slice(0, hi)), ref) <= bound);
    }
}

TEMPLATE_TEST_CASE("Serving: advancing or resetting one slot leaves the others bit-identical", "[serving]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 3, h = 2, n = 12, d = 6, e = 3;
    const lrpe_attention<S> attn({}, positional::lrpe<S>(lrpe_kind::cosine, 6, 2), make_options<S>(masking::causal, normalization::rms));
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3);
    bhnd<S> plain(b, h, n, e, 0), disturbed(b, h, n, e, 0);
    auto dec = attn.decoder(b, h), other = attn.decoder(b, h);
    const bhnd<S> noise(b, h, n, d, 9);
    bhnd<S> scratch(b, h, n, e, 0), spare(b, h, n, e, 0); // extra values and their outputs: separate buffers (no aliasing)
    for (index t = 0; t < n; ++t) {
        dec.step(q.in(t, 1), k.in(t, 1), v.in(t, 1), plain.out(t, 1));
        // Slot 1 gets extra tokens, resets and a restart at a far position in between; 0 and 2 step as in `dec`.
        if (t % 3 == 1) other.step({1}, entry(noise.in(t, 1), 1), entry(noise.in(t, 1), 1), entry(scratch.in(t, 1), 1),
                                   entry(spare.out(t, 1), 1));
        if (t == 5) other.reset(1);
        if (t == 8) other.restart(1, 1000);
        other.step(q.in(t, 1), k.in(t, 1), v.in(t, 1), disturbed.out(t, 1));
    }
    for (const index bi : {index(0), index(2)})
        for (index hi = 0; hi < h; ++hi) REQUIRE(test::bit_identical(plain.slice(bi, hi), disturbed.slice(bi, hi)));
    CHECK(dec.position() == n);
    CHECK(other.position(0) == n);
    CHECK(other.position(1) == 1000 + (n - 8) + 1); // steps 8..11 after the restart, plus the extra token at t = 10
    REQUIRE_THROWS_WITH(other.position(), Catch::Matchers::Contains("position(slot)"));
}
TEMPLATE_TEST_CASE("Serving: step over an active mask and packed prefill equal their per-slot forms bit for bit", "[serving]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 4, h = 2, d = 6, e = 3, steps = 6;
    const auto check = [&](const auto& attn) {
        // Prompts of slots 2, 0, 3 (lengths 5, 0, 3) packed in one call; slot 1 stays empty at first.
        const std::vector<index> slots{2, 0, 3}, lengths{5, 0, 3}, cu{0, 5, 5, 8};
        const bhnd<S> pq(1, h, 8, d, 1), pk(1, h, 8, d, 2), pv(1, h, 8, e, 3);
        bhnd<S> po(1, h, 8, e, 0), alone_po(1, h, 8, e, 0);
        auto packed = attn.decoder(b, h), listed = attn.decoder(b, h);
        packed.prefill_packed(slots, pq.in(), pk.in(), pv.in(), po.out(), cu);
        for (std::size_t i = 0; i < slots.size(); ++i)
            listed.prefill(slots[i], pq.in(cu[i], lengths[i]), pk.in(cu[i], lengths[i]), pv.in(cu[i], lengths[i]),
                           alone_po.out(cu[i], lengths[i]));
        REQUIRE(test::bit_identical(po.data, alone_po.data));
        REQUIRE(packed.state().export_bytes(attn) == listed.state().export_bytes(attn));
        // Steps over a changing active set: full-batch views with a mask vs the gathered slot list.
        const bhnd<S> q(b, h, steps, d, 4), k(b, h, steps, d, 5), v(b, h, steps, e, 6);
        bhnd<S> masked(b, h, steps, e, 7);
        const row_matrix<S> untouched = masked.data;
        index inactive_checked = 0;
        for (index t = 0; t < steps; ++t) {
            std::vector<bool> active(static_cast<std::size_t>(b));
            std::vector<index> on;
            for (index s = 0; s < b; ++s)
                if ((s + t) % 3 != 0) active[static_cast<std::size_t>(s)] = true, on.push_back(s);
            packed.step_active(active, q.in(t, 1), k.in(t, 1), v.in(t, 1), masked.out(t, 1));
            for (const index s : on) {
                bhnd<S> one(1, h, 1, e, 0);
                listed.step({s}, entry(q.in(t, 1), s), entry(k.in(t, 1), s), entry(v.in(t, 1), s), one.out());
                for (index hi = 0; hi < h; ++hi)
                    REQUIRE(test::bit_identical(row_matrix<S>(masked.in(t, 1).slice(s, hi)), row_matrix<S>(one.in().slice(0, hi))));
            }
            for (index s = 0; s < b; ++s)
                if (!active[static_cast<std::size_t>(s)]) {
                    for (index hi = 0; hi < h; ++hi)
                        REQUIRE(test::bit_identical(row_matrix<S>(masked.in(t, 1).slice(s, hi)),
                                                    row_matrix<S>(view_bhnd(untouched.data(), b, h, steps, e).slice(s, hi).middleRows(t, 1))));
                    ++inactive_checked;
                }
        }
        REQUIRE(inactive_checked == 8); // (s + t) % 3 == 0 for 8 of the 24 (slot, step) pairs
        REQUIRE(packed.state().export_bytes(attn) == listed.state().export_bytes(attn));
    };
    check(plain_attention<S>({}, {}, make_options<S>(masking::causal)));
    check(toeplitz_attention<S>({}, random_bias<S>(2, 4, 8), make_options<S>(masking::causal)));
}

TEMPLATE_TEST_CASE("Serving: export a slot, import it elsewhere, continue as if uninterrupted", "[serving][export]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 3, h = 2, n = 20, d = 6, e = 3, cut = 9;
    const auto check = [&](const auto& attn) {
        const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3);
        bhnd<S> direct(b, h, n, e, 0), moved(b, h, n, e, 0);
        auto dec = attn.decoder(b, h);
        dec.prefill(q.in(0, n), k.in(0, n), v.in(0, n), direct.out(0, n));
        // Slot 2 runs to `cut` in one decoder, moves as bytes into slot 0 of another, and finishes there.
        auto first = attn.decoder(b, h), second = attn.decoder(1, h);
        first.prefill(2, entry(q.in(0, cut), 2), entry(k.in(0, cut), 2), entry(v.in(0, cut), 2), entry(moved.out(0, cut), 2));
        const std::vector<unsigned char> bytes = first.export_slot(2);
        second.import_slot(0, bytes);
        CHECK(second.position(0) == cut);
        second.prefill(entry(q.in(cut, n - cut), 2), entry(k.in(cut, n - cut), 2), entry(v.in(cut, n - cut), 2),
                       entry(moved.out(cut, n - cut), 2));
        // Slot 2 of a decoder prefilled in one call vs cut, moved and continued: equal to rounding (the split
        // moves chunk boundaries), and to the bit when the state is moved at the same cut in a run on its own.
        auto whole = attn.decoder(1, h);
        bhnd<S> cut_run(b, h, n, e, 0);
        whole.prefill(entry(q.in(0, cut), 2), entry(k.in(0, cut), 2), entry(v.in(0, cut), 2), entry(cut_run.out(0, cut), 2));
        whole.prefill(entry(q.in(cut, n - cut), 2), entry(k.in(cut, n - cut), 2), entry(v.in(cut, n - cut), 2),
                      entry(cut_run.out(cut, n - cut), 2));
        for (index hi = 0; hi < h; ++hi) {
            REQUIRE(test::bit_identical(moved.slice(2, hi), cut_run.slice(2, hi)));
            const auto [ref, bound] = test::reference_and_bound(attn, q.slice(2, hi), k.slice(2, hi), v.slice(2, hi), hi);
            CAPTURE(hi, bound);
            REQUIRE(test::abs_error(moved.slice(2, hi), ref) <= bound);
            REQUIRE(test::abs_error(direct.slice(2, hi), ref) <= bound);
        }
    };
    check(plain_attention<S>({}, {}, make_options<S>(masking::causal)));
    check(toeplitz_attention<S>({}, random_bias<S>(2, 4, 8), make_options<S>(masking::causal)));
}

TEST_CASE("Serving: bad slots, subsets and slot buffers are refused, nothing changed", "[serving][errors]")
{
    using S = double;
    using Catch::Matchers::Contains;
    const index b = 3, h = 2, d = 6, e = 3;
    const plain_attention<S> attn({}, {}, make_options<S>(masking::causal));
    auto dec = attn.decoder(b, h);
    const bhnd<S> q(b, h, 2, d, 1), v(b, h, 2, e, 3);
    bhnd<S> out(b, h, 2, e, 4);
    dec.step(q.in(0, 1), q.in(0, 1), v.in(0, 1), out.out(0, 1));
    const auto saved = dec.state().export_bytes(attn);
    const row_matrix<S> before = out.data;
    const bhnd<S> q2(2, h, 1, d, 5), v2(2, h, 1, e, 6);
    bhnd<S> o2(2, h, 1, e, 7);
    const row_matrix<S> o2_before = o2.data;
    REQUIRE_THROWS_WITH(dec.step({0, 0}, q2.in(), q2.in(), v2.in(), o2.out()), Contains("slots entry (each slot at most once)"));
    REQUIRE_THROWS_WITH(dec.step({0, 3}, q2.in(), q2.in(), v2.in(), o2.out()), Contains("slots entry"));
    REQUIRE_THROWS_WITH(dec.step({1}, q2.in(), q2.in(), v2.in(), o2.out()), Contains("q view (decoder)"));
    REQUIRE_THROWS_WITH(dec.prefill(5, entry(q.in(0, 1), 0), entry(q.in(0, 1), 0), entry(v.in(0, 1), 0), entry(out.out(0, 1), 0)),
                        Contains("slots entry"));
    REQUIRE_THROWS_WITH(dec.reset(-1), Contains("decoder slot"));
    REQUIRE_THROWS_WITH(dec.restart(3, 0), Contains("decoder slot"));
    REQUIRE_THROWS_WITH(dec.restart(0, -4), Contains("attention_state position"));
    REQUIRE_THROWS_WITH(dec.export_slot(3), Contains("decoder slot"));
    // A slot buffer of a decoder with other heads, of another configuration, or corrupted.
    auto three_heads = attn.decoder(1, h + 1);
    const bhnd<S> q3(1, h + 1, 1, d, 8), v3(1, h + 1, 1, e, 9);
    bhnd<S> o3(1, h + 1, 1, e, 0);
    three_heads.step(q3.in(), q3.in(), v3.in(), o3.out());
    REQUIRE_THROWS_WITH(dec.import_slot(1, three_heads.export_slot(0)), Contains("assigned sequence"));
    const plain_attention<S> rms({}, {}, make_options<S>(masking::causal, normalization::rms));
    auto rms_dec = rms.decoder(1, h);
    REQUIRE_THROWS_WITH(dec.import_slot(1, rms_dec.export_slot(0)), Contains("with_den"));
    auto bad = dec.export_slot(1);
    bad[bad.size() / 2] ^= 1;
    REQUIRE_THROWS_WITH(dec.import_slot(1, bad), Contains("checksum"));
    REQUIRE_THROWS_WITH(dec.set_state(attn.make_state(b + 1, h)), Contains("decoder state"));
    REQUIRE_THROWS_WITH(dec.step_active({true, false}, q.in(0, 1), q.in(0, 1), v.in(0, 1), out.out(0, 1)), Contains("active"));
    REQUIRE_THROWS_WITH(dec.step_active({true, false, true}, q.in(0, 2), q.in(0, 2), v.in(0, 2), out.out(0, 2)), Contains("tokens"));
    const bhnd<S> pq(1, h, 4, d, 10), pv(1, h, 4, e, 11);
    bhnd<S> po(1, h, 4, e, 12);
    const row_matrix<S> po_before = po.data;
    REQUIRE_THROWS_WITH(dec.prefill_packed({0, 2}, pq.in(), pq.in(), pv.in(), po.out(), {0, 3, 5}), Contains("cu_seqlens[B]"));
    REQUIRE_THROWS_WITH(dec.prefill_packed({1, 1}, pq.in(), pq.in(), pv.in(), po.out(), {0, 3, 4}), Contains("slots entry"));
    REQUIRE_THROWS_WITH(dec.prefill_packed({1}, pq.in(), pq.in(), pv.in(), po.out(), {0, 3, 4}), Contains("slots (one per sequence"));
    CHECK(test::bit_identical(po.data, po_before));
    CHECK(dec.state().export_bytes(attn) == saved);
    CHECK(test::bit_identical(out.data, before));
    CHECK(test::bit_identical(o2.data, o2_before));
    // The matrix overloads need one slot of one head.
    row_matrix<S> m(1, d), mo(1, e);
    REQUIRE_THROWS_WITH(dec.step(m, m, mo, mo), Contains("decoder batch x heads"));
}
} // namespace
} // namespace test_serving
