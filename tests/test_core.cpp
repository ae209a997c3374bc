// The core against the explicit O(N·Nk) kernel-attention reference computed in double from the same
// features: every feature map × masking × normalization, boundary lengths around the chunk size.
#include "support.hpp"

#include <array>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_core {

namespace {
using namespace linrpe;
using linrpe::index;

constexpr index lengths[] = {1, 2, 3, 63, 64, 65, 1000};

// Checks one configuration on one (N, Nk, D, E) shape; the bound is test::error_bound (derivation there).
template <class S, class Map>
void check(const Map& map, masking mask, normalization norm, index n, index nk, index d, index e, std::uint32_t seed)
{
    options<S> opt;
    opt.mask = mask;
    opt.norm = norm;
    opt.allow_signed_normalizer = true; // signed maps under `sum` are checked too (denominators may be small;
                                        // the bound accounts for that through |den + eps|)
    const linear_attention<Map, positional::none, S> attn(map, {}, opt);
    const row_matrix<S> q = test::uniform<S>(n, d, seed, 0.5), k = test::uniform<S>(nk, d, seed + 1, 0.5),
                        v = test::uniform<S>(nk, e, seed + 2);
    const row_matrix<S> out = attn(q, k, v);
    const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
    const double err = test::abs_error(out, ref);
    CAPTURE(n, nk, d, e, int(mask), int(norm), err, bound, ref.norm());
    REQUIRE(out.rows() == n);
    REQUIRE(out.cols() == e);
    REQUIRE(err <= bound);
}

// Returns the number of configurations compared (the test requires all of them).
template <class S, class Map>
int sweep(const Map& map, index d)
{
    int checked = 0;
    std::uint32_t seed = 11;
    for (const masking mask : {masking::none, masking::causal})
        for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
            for (const linrpe::index n : lengths) {
                const linrpe::index nk = mask == masking::causal ? n : n + 5; // Nk != N where allowed
                check<S>(map, mask, norm, n, nk, d, 5, seed++);        // D != E
                ++checked;
            }
    return checked;
}
} // namespace

TEMPLATE_TEST_CASE("core equals the explicit reference for every feature map", "[core]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // 2 masks × 3 normalizations × 7 lengths = 42 configurations per feature map
    SECTION("identity") { REQUIRE(sweep<S>(feature_maps::identity{}, 6) == 42); }
    SECTION("elu_plus_one") { REQUIRE(sweep<S>(feature_maps::elu_plus_one{}, 6) == 42); }
    SECTION("relu") { REQUIRE(sweep<S>(feature_maps::relu(1e-3), 6) == 42); }
    SECTION("favor iid") { REQUIRE(sweep<S>(feature_maps::favor(6, 16, 3, false), 6) == 42); }
    SECTION("favor orthogonal hyperbolic") { REQUIRE(sweep<S>(feature_maps::favor(6, 16, 3, true, true), 6) == 42); }
    SECTION("trig_features") { REQUIRE(sweep<S>(feature_maps::trig_features(6, 8, 5), 6) == 42); }
}

TEMPLATE_TEST_CASE("N = 0 gives an empty result and Nk = 0 gives zeros", "[core]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn;
    const row_matrix<S> empty(0, 4), k = test::uniform<S>(3, 4, 1), v = test::uniform<S>(3, 2, 2);
    const row_matrix<S> out = attn(empty, k, v);
    REQUIRE(out.rows() == 0);
    REQUIRE(out.cols() == 2);
    const row_matrix<S> none_out = attn(test::uniform<S>(3, 4, 3), row_matrix<S>(0, 4), row_matrix<S>(0, 2));
    REQUIRE(none_out.rows() == 3);
    REQUIRE(none_out.isZero(0));
}

TEMPLATE_TEST_CASE("N = 1 returns the single value row", "[core]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    options<S> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
    const row_matrix<S> q = test::uniform<S>(1, 3, 1), k = test::uniform<S>(1, 3, 2), v = test::uniform<S>(1, 4, 3);
    const row_matrix<S> out = attn(q, k, v);
    // out = a·v/(a + eps) with a = φ(q)·φ(k) >= e^{-1.5}·3 (elu+1 of inputs in [-1, 1]), so the eps term
    // changes it by at most eps/a relative, plus a few roundings.
    const double err = test::rel_error(out, v);
    const double bound = 1e-6 / 0.6 + 8 * test::unit_roundoff<S>();
    CAPTURE(err, bound);
    REQUIRE(err <= bound);
}

TEMPLATE_TEST_CASE("batched views in both layouts equal per-head calls", "[core][batched]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 2, h = 3, n = 70, d = 5, e = 4;
    for (const masking mask : {masking::none, masking::causal}) {
        options<S> opt;
        opt.mask = mask;
        const linear_attention<feature_maps::favor, positional::none, S> attn(feature_maps::favor(d, 12, 9, true, false, h), {}, opt);
        // Logical (B, H, N, D) tensors, stored once as (B, H, N, D) and once as (B, N, H, D).
        std::vector<S> q_bhnd(b * h * n * d), k_bhnd(q_bhnd.size()), v_bhnd(b * h * n * e);
        std::vector<S> q_bnhd(q_bhnd.size()), k_bnhd(q_bhnd.size()), v_bnhd(v_bhnd.size());
        std::vector<row_matrix<S>> qs, ks, vs;
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index hi = 0; hi < h; ++hi) {
                qs.push_back(test::uniform<S>(n, d, 100 + 3 * (bi * h + hi), 0.5));
                ks.push_back(test::uniform<S>(n, d, 101 + 3 * (bi * h + hi), 0.5));
                vs.push_back(test::uniform<S>(n, e, 102 + 3 * (bi * h + hi)));
                view_bhnd(q_bhnd.data(), b, h, n, d).slice(bi, hi) = qs.back();
                view_bhnd(k_bhnd.data(), b, h, n, d).slice(bi, hi) = ks.back();
                view_bhnd(v_bhnd.data(), b, h, n, e).slice(bi, hi) = vs.back();
                view_bnhd(q_bnhd.data(), b, n, h, d).slice(bi, hi) = qs.back();
                view_bnhd(k_bnhd.data(), b, n, h, d).slice(bi, hi) = ks.back();
                view_bnhd(v_bnhd.data(), b, n, h, e).slice(bi, hi) = vs.back();
            }
        std::vector<S> o_bhnd(b * h * n * e), o_bnhd(o_bhnd.size());
        attn.forward(view_bhnd<const S>(q_bhnd.data(), b, h, n, d), view_bhnd<const S>(k_bhnd.data(), b, h, n, d),
                     view_bhnd<const S>(v_bhnd.data(), b, h, n, e), view_bhnd(o_bhnd.data(), b, h, n, e));
        attn.forward(view_bnhd<const S>(q_bnhd.data(), b, n, h, d), view_bnhd<const S>(k_bnhd.data(), b, n, h, d),
                     view_bnhd<const S>(v_bnhd.data(), b, n, h, e), view_bnhd(o_bnhd.data(), b, n, h, e));
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index hi = 0; hi < h; ++hi) {
                const row_matrix<S> per_head = attn(qs[bi * h + hi], ks[bi * h + hi], vs[bi * h + hi], hi);
                const row_matrix<S> x = view_bhnd(o_bhnd.data(), b, h, n, e).slice(bi, hi);
                const row_matrix<S> y = view_bnhd(o_bnhd.data(), b, n, h, e).slice(bi, hi);
                // The same per-head kernel runs on the same values, but Eigen's GEMM kernels may peel
                // differently for differently aligned buffers (a strided slice vs a fresh matrix), so
                // the layouts agree to rounding: each is within the derived bound of the exact result.
                const auto [ref, bound] = test::reference_and_bound(attn, qs[bi * h + hi], ks[bi * h + hi], vs[bi * h + hi], hi);
                CAPTURE(bi, hi, int(mask), bound);
                REQUIRE(test::abs_error(per_head, ref) <= bound);
                REQUIRE(test::abs_error(x, ref) <= bound);
                REQUIRE(test::abs_error(y, ref) <= bound);
            }
    }
}

TEMPLATE_TEST_CASE("batched results do not depend on the thread count", "[core][threads]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // 2 x 4 sequences: threads take whole heads; 1 x 3: fewer than 8 sequences, so long causal heads are also
    // split into parallel segments (n = 4500 > 4096).
    for (const auto& shape : {std::array<linrpe::index, 3>{2, 4, 300}, std::array<linrpe::index, 3>{1, 3, 4500}}) {
        const linrpe::index b = shape[0], h = shape[1], n = shape[2], d = 8;
        CAPTURE(b, h, n);
        const std::vector<S> q = [&] { auto m = test::uniform<S>(b * h * n, d, 1, 0.5); return std::vector<S>(m.data(), m.data() + m.size()); }();
        const std::vector<S> k = [&] { auto m = test::uniform<S>(b * h * n, d, 2, 0.5); return std::vector<S>(m.data(), m.data() + m.size()); }();
        const std::vector<S> v = [&] { auto m = test::uniform<S>(b * h * n, d, 3); return std::vector<S>(m.data(), m.data() + m.size()); }();
        for (const masking mask : {masking::none, masking::causal}) {
            std::vector<std::vector<S>> outs;
            for (const int threads : {1, 2, 3}) {
                options<S> opt;
                opt.mask = mask;
                opt.threads = threads;
                const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
                outs.emplace_back(q.size());
                attn.forward(view_bhnd(q.data(), b, h, n, d), view_bhnd(k.data(), b, h, n, d), view_bhnd(v.data(), b, h, n, d),
                             view_bhnd(outs.back().data(), b, h, n, d));
            }
            REQUIRE(outs[0] == outs[1]);
            REQUIRE(outs[0] == outs[2]);
        }
    }
}

TEMPLATE_TEST_CASE("one long head: blocked, threaded mixing is thread-count independent", "[core][threads]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // N spans many fused blocks (512 rows) and two causal segments (4096 rows), so both phases of both
    // mixers run in parallel when threads > 1.
    const linrpe::index n = 4500, d = 8, e = 6;
    const row_matrix<S> q = test::uniform<S>(n, d, 21, 0.5), k = test::uniform<S>(n, d, 22, 0.5), v = test::uniform<S>(n, e, 23);
    for (const masking mask : {masking::none, masking::causal}) {
        std::vector<row_matrix<S>> outs;
        for (const int threads : {1, 2, 3}) {
            options<S> opt;
            opt.mask = mask;
            opt.threads = threads;
            const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
            outs.push_back(attn(q, k, v));
        }
        CAPTURE(int(mask));
        REQUIRE(test::bit_identical(outs[0], outs[1]));
        REQUIRE(test::bit_identical(outs[0], outs[2]));
        options<S> opt;
        opt.mask = mask;
        const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
        const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
        const double err = test::abs_error(outs[0], ref);
        CAPTURE(err, bound);
        REQUIRE(err <= bound);
    }
}
} // namespace test_core
