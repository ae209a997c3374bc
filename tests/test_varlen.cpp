// Per-sequence positions, packed variable-length sequences (cu_seqlens) and key-length padding masks:
// each equals separate single-sequence calls on the unpadded rows, and bad layouts are refused.
#include "support_state.hpp"

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_varlen {

namespace {
using namespace state_test;
using linrpe::index;

// Packed (1, H, T, W) buffer in (T, H, W) memory (the layout of packed projections).
template <class S>
struct packed {
    index h, t, w;
    row_matrix<S> data;
    packed(index h_, index t_, index w_, std::uint32_t seed) : h(h_), t(t_), w(w_), data(test::uniform<S>(t * h, w, seed)) {}
    tensor_view<const S> in() const { return in(0, t); }
    tensor_view<S> out() { return out(0, t); }
    // Token rows [r0, r0 + count) as a (1, H, count, W) view.
    tensor_view<const S> in(index r0, index count) const { return tensor_view<const S>(data.data() + r0 * h * w, 1, h, count, w, 0, w, h * w); }
    tensor_view<S> out(index r0, index count) { return tensor_view<S>(data.data() + r0 * h * w, 1, h, count, w, 0, w, h * w); }
    row_matrix<S> rows(index head, index r0, index count) const { return in().slice(0, head).middleRows(r0, count); }
};

// forward_packed vs one single-head call per (sequence, head); `exact` asks for identical bits, otherwise
// both must lie within the exact reference's bound.
template <class Attention>
int check_packed(const Attention& attn, const std::vector<index>& lengths, const std::vector<index>& first, bool exact)
{
    using S = typename Attention::scalar_type;
    const index h = 2, d = 6, e = 3;
    std::vector<index> cu{0};
    for (const index len : lengths) cu.push_back(cu.back() + len);
    const index total = cu.back();
    const packed<S> q(h, total, d, 1), k(h, total, d, 2), v(h, total, e, 3);
    packed<S> out(h, total, e, 4);
    attn.forward_packed(q.in(), k.in(), v.in(), out.out(), cu, first);
    for (std::size_t b = 0; b < lengths.size(); ++b)
        for (index hi = 0; hi < h; ++hi) {
            const index r0 = cu[b], len = lengths[b], p = first.empty() ? 0 : first[b];
            const row_matrix<S> qb = q.rows(hi, r0, len), kb = k.rows(hi, r0, len), vb = v.rows(hi, r0, len);
            row_matrix<S> alone(len, e);
            attn.forward(qb, kb, vb, alone, hi, p, p);
            const row_matrix<S> got = out.rows(hi, r0, len);
            CAPTURE(b, hi, len, p);
            if (exact) {
                REQUIRE(test::bit_identical(got, alone));
            } else {
                const auto [ref, bound] = test::reference_and_bound(attn, qb, kb, vb, hi, p, p);
                CAPTURE(bound);
                REQUIRE(test::abs_error(got, ref) <= bound);
                REQUIRE(test::abs_error(alone, ref) <= bound);
            }
        }
    return 1;
}

template <class S>
using lrpe_attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;
template <class S>
using sine_attention = linear_attention<feature_maps::elu_plus_one, positional::sine_spe<S>, S>;

TEMPLATE_TEST_CASE("Packed variable lengths equal separate per-sequence calls", "[varlen][packed]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const std::vector<index> lengths{5, 0, 17, 1, 9};
    const std::vector<index> first{0, 4, 30, 2, 11};
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal})
        for (const std::vector<index>& positions : {std::vector<index>(), first}) {
            checked += check_packed(plain_attention<S>({}, {}, make_options<S>(mask)), lengths, positions, true);
            checked += check_packed(lrpe_attention<S>({}, positional::lrpe<S>(lrpe_kind::rotate, 6, 2), make_options<S>(mask, normalization::rms)),
                                    lengths, positions, true);
            checked += check_packed(sine_attention<S>({}, positional::sine_spe<S>(2, 6, 3, 16, 7, true), make_options<S>(mask)), lengths,
                                    positions, true);
            for (const toeplitz_algorithm algo : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded})
                checked += check_packed(toeplitz_attention<S>({}, random_bias<S>(2, 6, 9), make_options<S>(mask, normalization::sum, algo)),
                                        lengths, positions, true);
        }
    REQUIRE(checked == 2 * 2 * 6);
}

TEMPLATE_TEST_CASE("Packed variable lengths: long sequences split into segments differently, equal to rounding", "[varlen][packed]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // 5 sequences × 2 heads = 10 >= 8 heads threads over heads; a sequence alone (2 heads) is cut into segments.
    const std::vector<index> lengths{40, 3, 33, 12, 21};
    for (const masking mask : {masking::none, masking::causal}) {
        options<S> opt = make_options<S>(mask);
        opt.segment_rows = 8;
        REQUIRE(check_packed(plain_attention<S>({}, {}, opt), lengths, {}, false) == 1);
        opt.toeplitz = toeplitz_algorithm::banded;
        REQUIRE(check_packed(toeplitz_attention<S>({}, random_bias<S>(2, 5, 4), opt), lengths, {7, 0, 1, 2, 3}, false) == 1);
    }
}

// Offsets of sequences of the given lengths packed back to back.
std::vector<index> offsets(const std::vector<index>& lengths)
{
    std::vector<index> cu{0};
    for (const index len : lengths) cu.push_back(cu.back() + len);
    return cu;
}

TEMPLATE_TEST_CASE("Packed variable lengths continuing a state equal one state-passing call per sequence", "[varlen][packed][state]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index h = 2, d = 6, e = 3;
    // Two packed calls (a prompt, then more tokens) for 4 sequences: slots at different positions.
    const std::vector<index> first_len{3, 0, 7, 2}, second_len{5, 4, 1, 0};
    const auto cu1 = offsets(first_len), cu2 = offsets(second_len);
    const index batch = index(first_len.size());
    const packed<S> q1(h, cu1.back(), d, 1), k1(h, cu1.back(), d, 2), v1(h, cu1.back(), e, 3);
    const packed<S> q2(h, cu2.back(), d, 4), k2(h, cu2.back(), d, 5), v2(h, cu2.back(), e, 6);
    int checked = 0;
    const auto check = [&](const auto& attn) {
        packed<S> o1(h, cu1.back(), e, 0), o2(h, cu2.back(), e, 0);
        auto state = attn.make_state(batch, h);
        attn.forward_packed(q1.in(), k1.in(), v1.in(), o1.out(), cu1, state);
        attn.forward_packed(q2.in(), k2.in(), v2.in(), o2.out(), cu2, state);
        for (index b = 0; b < batch; ++b) {
            auto alone = attn.make_state(1, h);
            packed<S> a1(h, first_len[b], e, 0), a2(h, second_len[b], e, 0);
            attn.forward(q1.in(cu1[b], first_len[b]), k1.in(cu1[b], first_len[b]), v1.in(cu1[b], first_len[b]), a1.out(), alone);
            attn.forward(q2.in(cu2[b], second_len[b]), k2.in(cu2[b], second_len[b]), v2.in(cu2[b], second_len[b]), a2.out(), alone);
            CAPTURE(b);
            REQUIRE(state.position(b) == first_len[b] + second_len[b]);
            REQUIRE(test::bit_identical(row_matrix<S>(o1.data.middleRows(cu1[b] * h, first_len[b] * h)), a1.data));
            REQUIRE(test::bit_identical(row_matrix<S>(o2.data.middleRows(cu2[b] * h, second_len[b] * h)), a2.data));
            REQUIRE(state.sequence(b).export_bytes(attn) == alone.export_bytes(attn));
        }
        ++checked;
    };
    check(plain_attention<S>({}, {}, make_options<S>(masking::causal)));
    check(lrpe_attention<S>({}, positional::lrpe<S>(lrpe_kind::rotate, 6, 2), make_options<S>(masking::causal, normalization::rms)));
    check(toeplitz_attention<S>({}, random_bias<S>(2, 4, 9), make_options<S>(masking::causal)));
    REQUIRE(checked == 3);

    // Refused before writing: a state of another batch, a non-causal attention.
    using Catch::Matchers::Contains;
    const plain_attention<S> attn({}, {}, make_options<S>(masking::causal));
    packed<S> o1(h, cu1.back(), e, 7);
    const row_matrix<S> before = o1.data;
    auto wrong = attn.make_state(batch + 1, h);
    REQUIRE_THROWS_WITH(attn.forward_packed(q1.in(), k1.in(), v1.in(), o1.out(), cu1, wrong), Contains("state batch"));
    const plain_attention<S> full({}, {}, make_options<S>(masking::none));
    auto state = full.make_state(batch, h);
    REQUIRE_THROWS_WITH(full.forward_packed(q1.in(), k1.in(), v1.in(), o1.out(), cu1, state), Contains("options.mask"));
    REQUIRE_THROWS_WITH(attn.forward_packed(q1.in(), k1.in(), v1.in(), o1.out(), {0, 3, 2, 12}, state), Contains("cu_seqlens"));
    CHECK(test::bit_identical(o1.data, before));
    CHECK(state.position(0) == 0);
}

TEMPLATE_TEST_CASE("Per-sequence first positions equal single-sequence calls at those positions", "[varlen][positions]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 3, h = 2, n = 11, d = 6, e = 3;
    const std::vector<index> first{3, 0, 25};
    const row_matrix<S> qm = test::uniform<S>(b * h * n, d, 1), km = test::uniform<S>(b * h * n, d, 2), vm = test::uniform<S>(b * h * n, e, 3);
    const auto q = view_bhnd(qm.data(), b, h, n, d), k = view_bhnd(km.data(), b, h, n, d), v = view_bhnd(vm.data(), b, h, n, e);
    const auto check = [&](const auto& attn) {
        row_matrix<S> om(b * h * n, e);
        const auto out = view_bhnd(om.data(), b, h, n, e);
        attn.forward_positions(q, k, v, out, first);
        for (index bi = 0; bi < b; ++bi)
            for (index hi = 0; hi < h; ++hi) {
                row_matrix<S> alone(n, e);
                attn.forward(q.slice(bi, hi), k.slice(bi, hi), v.slice(bi, hi), alone, hi, first[bi], first[bi]);
                CAPTURE(bi, hi);
                REQUIRE(test::bit_identical(row_matrix<S>(out.slice(bi, hi)), alone));
            }
    };
    for (const masking mask : {masking::none, masking::causal}) {
        check(lrpe_attention<S>({}, positional::lrpe<S>(lrpe_kind::cosine, 6, 2), make_options<S>(mask, normalization::rms)));
        check(sine_attention<S>({}, positional::sine_spe<S>(2, 6, 3, 16, 7, true), make_options<S>(mask)));
        check(toeplitz_attention<S>({}, random_bias<S>(2, 6, 9), make_options<S>(mask)));
    }
}

TEMPLATE_TEST_CASE("Key lengths: padded keys enter neither numerator nor denominator", "[varlen][mask]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 3, h = 2, n = 6, nk = 9, d = 5, e = 3;
    const std::vector<index> lengths{9, 0, 4};
    const std::vector<index> first{0, 5, 2};
    const row_matrix<S> qm = test::uniform<S>(b * h * n, d, 1), vm0 = test::uniform<S>(b * h * nk, e, 3);
    row_matrix<S> km = test::uniform<S>(b * h * nk, d, 2), vm = vm0;
    const auto k = view_bhnd(km.data(), b, h, nk, d), v = view_bhnd(vm.data(), b, h, nk, e);
    // Padding holds large values: any leak into the sums would show far above rounding.
    for (index bi = 0; bi < b; ++bi)
        for (index hi = 0; hi < h; ++hi)
            for (index j = lengths[bi]; j < nk; ++j) {
                k.slice(bi, hi).row(j).setConstant(S(3));
                v.slice(bi, hi).row(j).setConstant(S(1e4));
            }
    const auto q = view_bhnd(qm.data(), b, h, n, d);
    const auto check = [&](const auto& attn, const std::vector<index>& positions) {
        row_matrix<S> om(b * h * n, e);
        const auto out = view_bhnd(om.data(), b, h, n, e);
        attn.forward_key_lengths(q, k, v, out, lengths, positions);
        for (index bi = 0; bi < b; ++bi)
            for (index hi = 0; hi < h; ++hi) {
                const index len = lengths[bi], p = positions.empty() ? 0 : positions[bi];
                const row_matrix<S> kk = k.slice(bi, hi).topRows(len), vv = v.slice(bi, hi).topRows(len);
                row_matrix<S> alone(n, e);
                attn.forward(q.slice(bi, hi), kk, vv, alone, hi, p, p);
                const row_matrix<S> got = out.slice(bi, hi);
                CAPTURE(bi, hi, len);
                REQUIRE(test::bit_identical(got, alone));
                if (len == 0) REQUIRE(got.isZero(0)); // no key: zero numerator over eps
            }
    };
    for (const std::vector<index>& positions : {std::vector<index>(), first}) {
        check(plain_attention<S>({}, {}, make_options<S>(masking::none)), positions);
        check(sine_attention<S>({}, positional::sine_spe<S>(2, 5, 3, 16, 7, true), make_options<S>(masking::none)), positions);
        for (const toeplitz_algorithm algo : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded})
            check(toeplitz_attention<S>({}, random_bias<S>(2, 6, 9), make_options<S>(masking::none, normalization::sum, algo)), positions);
    }
}

TEST_CASE("Varlen: results do not depend on the thread count", "[varlen][threads]")
{
    using S = double;
    const std::vector<index> cu{0, 30, 31, 70, 70, 95};
    const index h = 2, d = 5, e = 3, total = cu.back();
    const packed<S> q(h, total, d, 1), k(h, total, d, 2), v(h, total, e, 3);
    for (const masking mask : {masking::none, masking::causal}) {
        std::vector<row_matrix<S>> outs;
        for (const int threads : {1, 2, 3}) {
            options<S> opt = make_options<S>(mask);
            opt.threads = threads;
            opt.segment_rows = 8;
            const plain_attention<S> attn({}, {}, opt);
            packed<S> out(h, total, e, 0);
            attn.forward_packed(q.in(), k.in(), v.in(), out.out(), cu);
            outs.push_back(out.data);
        }
        CHECK(test::bit_identical(outs[0], outs[1]));
        CHECK(test::bit_identical(outs[0], outs[2]));
    }
}

TEST_CASE("Varlen: bad offsets, lengths and positions are refused before writing", "[varlen][errors]")
{
    using S = double;
    using Catch::Matchers::Contains;
    const index h = 2, d = 4, e = 3, total = 10;
    const packed<S> q(h, total, d, 1), k(h, total, d, 2), v(h, total, e, 3);
    packed<S> out(h, total, e, 4);
    const row_matrix<S> before = out.data;
    const plain_attention<S> attn({}, {}, make_options<S>(masking::causal));
    const auto packed_call = [&](const std::vector<index>& cu, const std::vector<index>& first = {}) {
        attn.forward_packed(q.in(), k.in(), v.in(), out.out(), cu, first);
    };
    REQUIRE_THROWS_WITH(packed_call({0, 6, 4, 10}), Contains("cu_seqlens (non-decreasing"));
    REQUIRE_THROWS_WITH(packed_call({1, 4, 10}), Contains("cu_seqlens[0]"));
    REQUIRE_THROWS_WITH(packed_call({0, 4, 9}), Contains("cu_seqlens[B] (total tokens"));
    REQUIRE_THROWS_WITH(packed_call({0, 4, 12}), Contains("cu_seqlens[B] (total tokens"));
    REQUIRE_THROWS_WITH(packed_call({10}), Contains("cu_seqlens size"));
    REQUIRE_THROWS_WITH(packed_call({0, 4, 10}, {1}), Contains("first_positions"));
    REQUIRE_THROWS_WITH(packed_call({0, 4, 10}, {1, -2}), Contains("first_positions"));
    const packed<S> k_short(h, total - 1, d, 5), v_short(h, total - 1, e, 5);
    REQUIRE_THROWS_WITH(attn.forward_packed(q.in(), k_short.in(), v_short.in(), out.out(), {0, 4, 10}), Contains("k view tokens (packed"));
    const row_matrix<S> bm = test::uniform<S>(2 * h * 5, d, 6), bv = test::uniform<S>(2 * h * 5, e, 6);
    row_matrix<S> bo(2 * h * 5, e);
    const auto two = view_bhnd(bm.data(), 2, h, 5, d);
    REQUIRE_THROWS_WITH(attn.forward_packed(two, two, view_bhnd(bv.data(), 2, h, 5, e), view_bhnd(bo.data(), 2, h, 5, e), {0, 4, 10}),
                        Contains("q view batch (packed"));

    // Key lengths: a causal attention, out of range, wrong count.
    const index b = 2, n = 5;
    const row_matrix<S> xm = test::uniform<S>(b * h * n, d, 7), vm = test::uniform<S>(b * h * n, e, 8);
    row_matrix<S> om = row_matrix<S>::Constant(b * h * n, e, 42);
    const auto x = view_bhnd(xm.data(), b, h, n, d), vv = view_bhnd(vm.data(), b, h, n, e);
    const auto o = view_bhnd(om.data(), b, h, n, e);
    REQUIRE_THROWS_WITH(attn.forward_key_lengths(x, x, vv, o, {5, 5}), Contains("options.mask"));
    const plain_attention<S> full({}, {}, make_options<S>(masking::none));
    REQUIRE_THROWS_WITH(full.forward_key_lengths(x, x, vv, o, {5, 6}), Contains("key_lengths"));
    REQUIRE_THROWS_WITH(full.forward_key_lengths(x, x, vv, o, {-1, 2}), Contains("key_lengths"));
    REQUIRE_THROWS_WITH(full.forward_key_lengths(x, x, vv, o, {3}), Contains("key_lengths"));
    REQUIRE_THROWS_WITH(full.forward_positions(x, x, vv, o, {3, 1, 2}), Contains("first_positions"));
    CHECK(test::bit_identical(out.data, before));
    CHECK((om.array() == S(42)).all());
}

} // namespace
} // namespace test_varlen
