// Causal properties of the core: no leakage from the future (bit-identical), chunk-size independence,
// and streaming decode (prefill + steps) equal to one batched call.
#include "support.hpp"

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_causal {

namespace {
using namespace linrpe;

// Returns the number of leading rows checked bit-identical (t + 1).
template <class S, class Map>
linrpe::index no_leak(const Map& map, normalization norm)
{
    const linrpe::index n = 150, d = 6, e = 4, t = 70;
    options<S> opt;
    opt.mask = masking::causal;
    opt.norm = norm;
    opt.allow_signed_normalizer = true;
    const linear_attention<Map, positional::none, S> attn(map, {}, opt);
    const row_matrix<S> q = test::uniform<S>(n, d, 1, 0.5), k = test::uniform<S>(n, d, 2, 0.5), v = test::uniform<S>(n, e, 3);
    row_matrix<S> q2 = q, k2 = k, v2 = v;
    // Perturb every token after t, with larger magnitudes so any FAVOR+ shift that looked ahead would move.
    q2.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, d, 4, 3.0);
    k2.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, d, 5, 3.0);
    v2.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, e, 6, 100.0);
    const row_matrix<S> a = attn(q, k, v), b = attn(q2, k2, v2);
    const row_matrix<S> past_a = a.topRows(t + 1), past_b = b.topRows(t + 1);
    REQUIRE(test::bit_identical(past_a, past_b));
    REQUIRE_FALSE(test::bit_identical(a, b)); // the perturbation did reach the future rows
    return past_a.rows();
}
} // namespace

TEMPLATE_TEST_CASE("causal outputs up to t ignore tokens after t (bit-identical)", "[causal]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        CAPTURE(int(norm)); // each call compares the first t + 1 = 71 of 150 rows
        REQUIRE(no_leak<S>(feature_maps::identity{}, norm) == 71);
        REQUIRE(no_leak<S>(feature_maps::elu_plus_one{}, norm) == 71);
        REQUIRE(no_leak<S>(feature_maps::relu(0.0), norm) == 71);
        REQUIRE(no_leak<S>(feature_maps::favor(6, 32, 1, true), norm) == 71);
        REQUIRE(no_leak<S>(feature_maps::favor(6, 32, 1, false, true), norm) == 71);
        REQUIRE(no_leak<S>(feature_maps::trig_features(6, 16, 2), norm) == 71);
    }
}

TEMPLATE_TEST_CASE("chunk sizes {1, C-1, C, C+1, >= N} agree", "[causal][chunk]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 200, d = 8, e = 5, c = 64;
    const row_matrix<S> q = test::uniform<S>(n, d, 7, 0.5), k = test::uniform<S>(n, d, 8, 0.5), v = test::uniform<S>(n, e, 9);
    for (const normalization norm : {normalization::sum, normalization::rms}) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = norm;
        for (const linrpe::index chunk : {linrpe::index(1), c - 1, c, c + 1, n, n + 17}) {
            opt.chunk_size = chunk;
            const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
            const row_matrix<S> out = attn(q, k, v);
            // Each chunk size is one fast path: all are within the derived bound of the same reference.
            const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
            const double err = test::abs_error(out, ref);
            CAPTURE(chunk, int(norm), err, bound);
            REQUIRE(err <= bound);
        }
    }
}

TEMPLATE_TEST_CASE("decoder: prefill of p tokens + single steps equals the batched causal call", "[causal][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 2, h = 3, n = 90, d = 6, e = 4;
    options<S> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::favor, positional::none, S> attn(feature_maps::favor(d, 16, 4, true, false, h), {}, opt);
    const row_matrix<S> qm = test::uniform<S>(b * h * n, d, 1, 0.5), km = test::uniform<S>(b * h * n, d, 2, 0.5),
                        vm = test::uniform<S>(b * h * n, e, 3);
    const auto q = view_bhnd(qm.data(), b, h, n, d), k = view_bhnd(km.data(), b, h, n, d);
    const auto v = view_bhnd(vm.data(), b, h, n, e);
    row_matrix<S> batched(b * h * n, e);
    attn.forward(q, k, v, view_bhnd(batched.data(), b, h, n, e));

    for (const linrpe::index p : {linrpe::index(0), linrpe::index(1), linrpe::index(37), n - 1}) {
        auto dec = attn.decoder(b, h);
        row_matrix<S> streamed(b * h * n, e);
        const auto sub = [&](auto view, linrpe::index first, linrpe::index count) {
            using T = typename decltype(view)::element_type;
            return tensor_view<T>(view.data() + first * view.stride(2), view.batch(), view.heads(), count, view.channels(),
                                  view.stride(0), view.stride(1), view.stride(2));
        };
        const auto out = view_bhnd(streamed.data(), b, h, n, e);
        if (p > 0) dec.prefill(sub(q, 0, p), sub(k, 0, p), sub(v, 0, p), sub(out, 0, p));
        for (linrpe::index t = p; t < n; ++t) dec.step(sub(q, t, 1), sub(k, t, 1), sub(v, t, 1), sub(out, t, 1));
        REQUIRE(dec.position() == n);
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index hi = 0; hi < h; ++hi) {
                const row_matrix<S> x = out.slice(bi, hi), y = view_bhnd(batched.data(), b, h, n, e).slice(bi, hi);
                const row_matrix<S> qq = q.slice(bi, hi), kk = k.slice(bi, hi), vv = v.slice(bi, hi);
                // Streaming and batched are two summation orders of the same sums: both lie within the
                // derived bound of the exact result, so they differ by at most twice that bound.
                const auto [ref, bound] = test::reference_and_bound(attn, qq, kk, vv, hi);
                const double err = test::abs_error(x, y);
                CAPTURE(p, bi, hi, err, bound);
                REQUIRE(err <= 2 * bound);
                REQUIRE(test::abs_error(x, ref) <= bound);
            }
    }
}

TEMPLATE_TEST_CASE("decoder: long prefills split into parallel segments continue the carried state", "[causal][decoder]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // One sequence (fewer than 8 in the call): a short prefill (one segment), then one longer than a
    // 4096-row segment, cut into segments whose start states are prefix sums from the non-empty carried
    // state, then a few single steps.
    const linrpe::index p1 = 300, p2 = 4200, steps = 3, n = p1 + p2 + steps, d = 6, e = 4;
    options<S> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
    const row_matrix<S> q = test::uniform<S>(n, d, 11, 0.5), k = test::uniform<S>(n, d, 12, 0.5), v = test::uniform<S>(n, e, 13);
    row_matrix<S> streamed(n, e);
    auto dec = attn.decoder();
    dec.prefill(q.topRows(p1), k.topRows(p1), v.topRows(p1), streamed.topRows(p1));
    dec.prefill(q.middleRows(p1, p2), k.middleRows(p1, p2), v.middleRows(p1, p2), streamed.middleRows(p1, p2));
    for (linrpe::index t = p1 + p2; t < n; ++t) dec.step(q.row(t), k.row(t), v.row(t), streamed.row(t));
    REQUIRE(dec.position() == n);
    const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
    const double err = test::abs_error(streamed, ref);
    CAPTURE(err, bound);
    REQUIRE(err <= bound);
}

TEST_CASE("decoder matrix overloads track the position and reset", "[causal][decoder]")
{
    options<double> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, positional::none, double> attn({}, {}, opt);
    const row_matrix<double> q = test::uniform<double>(10, 3, 1), k = test::uniform<double>(10, 3, 2), v = test::uniform<double>(10, 2, 3);
    const row_matrix<double> full = attn(q, k, v);
    auto dec = attn.decoder();
    row_matrix<double> out(10, 2);
    dec.prefill(q.topRows(4), k.topRows(4), v.topRows(4), out.topRows(4));
    for (int t = 4; t < 10; ++t) dec.step(q.row(t), k.row(t), v.row(t), out.row(t));
    REQUIRE(dec.position() == 10);
    REQUIRE(test::rel_error(out, full) <= 1e-13); // double, 10 tokens: a few dozen roundings of O(1) values
    dec.reset();
    REQUIRE(dec.position() == 0);
    row_matrix<double> again(10, 2);
    dec.prefill(q, k, v, again);
    REQUIRE(test::rel_error(again, full) <= 1e-13);
}
} // namespace test_causal
