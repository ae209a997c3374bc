// SPE inside linear attention: equality with the O(N²) kernel reference built from the same realization,
// decoder = batched call, determinism across threads and calls, blockwise codes, direct = FFT, errors.
#include "support_spe.hpp"

#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/feature_maps/favor.hpp>
#include <linrpe/feature_maps/relu.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/reference/kernel_attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_spe_attention {

namespace {
using namespace linrpe;
using linrpe::index;
using positional::conv_spe;
using positional::sine_spe;

static_assert(detail::is_positional_encoding_v<sine_spe<float>, float> && detail::is_positional_encoding_v<sine_spe<double>, double>,
              "sine_spe is a pre-feature positional encoding");
static_assert(detail::is_positional_encoding_v<conv_spe<float>, float> && detail::is_positional_encoding_v<conv_spe<double>, double>,
              "conv_spe is a pre-feature positional encoding");

constexpr index heads = 2, dim = 6, reals = 16;

// Captured errors of double runs need more than Catch's default 10 digits to be readable.
const bool digits_set = (Catch::StringMaker<double>::precision = 17, true);

template <class S>
sine_spe<S> make_sine(bool gated = true, std::uint64_t seed = 3)
{
    sine_spe<S> spe(heads, dim, /*sines=*/4, reals, seed, gated);
    spe.freqs.array() += S(2); // f around 0.06: visible structure over a few dozen positions
    return spe;
}
template <class S>
conv_spe<S> make_conv(bool gated = true, std::uint64_t seed = 3, index width = 5)
{
    return conv_spe<S>(heads, dim, width, reals, seed, gated);
}

/// ‖out − ref‖_F/‖ref‖_F for one head of `attn` against reference::kernel_attention on ψ, κ of the same
/// realization (attn.features), with the same weights (attn.mixing_matrix).
template <class Attn>
double error_vs_reference(const Attn& attn, index n, index head, index first)
{
    using S = typename Attn::scalar_type;
    const row_matrix<S> q = spe_test::gaussian<S>(n, dim, 101, 0.7), k = spe_test::gaussian<S>(n, dim, 102, 0.7),
                        v = spe_test::gaussian<S>(n, 5, 103);
    const row_matrix<S> out = attn(q, k, v, head, first);
    const auto psi = attn.features(q, role::query, head, first), kappa = attn.features(k, role::key, head, first);
    const auto w = attn.mixing_matrix(n, n, head, first, first);
    const auto ref = reference::kernel_attention(psi, kappa, v, w, attn.opts().norm, double(attn.opts().eps));
    return spe_test::rel_frobenius(out, ref);
}

template <class S, class Map, class Spe>
int check_against_reference(const Map& map, const Spe& spe, normalization norm)
{
    int checked = 0; // the caller requires every (mask, N) pair to have been compared
    for (masking mask : {masking::none, masking::causal}) {
        options<S> opt;
        opt.mask = mask;
        opt.norm = norm;
        opt.chunk_size = 8;
        const linear_attention<Map, Spe, S> attn(map, spe, opt);
        for (index n : {index(1), index(9), index(37)}) {
            const double err = error_vs_reference(attn, n, /*head=*/1, /*first=*/5);
            // Both sides use the same ψ, κ (M <= 32 columns); the fast path's extra rounding is the chunked
            // GEMM sums of length <= N over M + E terms and one division: <= c·(N + M)·eps with c = 1
            // (measured c <= 0.06 on these inputs, float and double).
            const double tol = 1.0 * double(n + 32) * std::numeric_limits<S>::epsilon();
            CAPTURE(mask == masking::causal, n, err, tol);
            CHECK(err <= tol);
            ++checked;
        }
    }
    return checked;
}

TEMPLATE_TEST_CASE("SPE attention equals the O(N^2) reference on the same realization", "[spe][attention]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // Each call compares 2 masks × 3 lengths against the reference and returns how many it compared.
    SECTION("sine + favor")
    {
        REQUIRE(check_against_reference<S>(feature_maps::favor(reals, 32, 7), make_sine<S>(), normalization::sum) == 6);
    }
    SECTION("conv + favor") { REQUIRE(check_against_reference<S>(feature_maps::favor(reals, 32, 7), make_conv<S>(), normalization::sum) == 6); }
    SECTION("sine + relu") { REQUIRE(check_against_reference<S>(feature_maps::relu(1e-3), make_sine<S>(), normalization::sum) == 6); }
    SECTION("conv + elu+1") { REQUIRE(check_against_reference<S>(feature_maps::elu_plus_one(), make_conv<S>(), normalization::sum) == 6); }
    SECTION("sine ungated + elu+1, rms") { REQUIRE(check_against_reference<S>(feature_maps::elu_plus_one(), make_sine<S>(false), normalization::rms) == 6); }
    SECTION("conv FFT + relu") {
        auto spe = make_conv<S>(true, 3, 70);
        spe.algorithm = positional::conv_algorithm::fft;
        REQUIRE(check_against_reference<S>(feature_maps::relu(1e-3), spe, normalization::sum) == 6);
    }
}

TEMPLATE_TEST_CASE("SPE decoder: prefill + steps equals the batched causal call", "[spe][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, n = 23, pre = 9, e = 4;
    const auto run = [&](auto spe) {
        using Spe = decltype(spe);
        options<S> opt;
        opt.mask = masking::causal;
        opt.chunk_size = 4;
        const linear_attention<feature_maps::favor, Spe, S> attn(feature_maps::favor(reals, 24, 5), spe, opt);
        const auto q = spe_test::gaussian<S>(b * heads * n, dim, 201, 0.7), k = spe_test::gaussian<S>(b * heads * n, dim, 202, 0.7),
                   v = spe_test::gaussian<S>(b * heads * n, e, 203);
        row_matrix<S> batched(b * heads * n, e), streamed(b * heads * n, e);
        attn.forward(view_bhnd(q.data(), b, heads, n, dim), view_bhnd(k.data(), b, heads, n, dim),
                     view_bhnd(v.data(), b, heads, n, e), view_bhnd(batched.data(), b, heads, n, e));
        auto dec = attn.decoder(b, heads);
        // Prefill and steps read token windows [0, pre) and [t, t + 1) of the same (B, H, N, ·) buffers.
        const auto window = [&](const row_matrix<S>& m, index c, index t0, index len) {
            return tensor_view<const S>(m.data() + t0 * c, b, heads, len, c, heads * n * c, n * c, c);
        };
        const auto out_window = [&](index t0, index len) {
            return tensor_view<S>(streamed.data() + t0 * e, b, heads, len, e, heads * n * e, n * e, e);
        };
        dec.prefill(window(q, dim, 0, pre), window(k, dim, 0, pre), window(v, e, 0, pre), out_window(0, pre));
        for (index t = pre; t < n; ++t)
            dec.step(window(q, dim, t, 1), window(k, dim, t, 1), window(v, e, t, 1), out_window(t, 1));
        const double err = spe_test::rel_frobenius(streamed, batched);
        // Same ψ, κ (codes are position-addressed); only the summation order of the causal state differs:
        // <= c·(N + M)·eps with c = 1 (measured c <= 0.02).
        const double tol = 1.0 * double(n + 24) * std::numeric_limits<S>::epsilon();
        CAPTURE(err, tol);
        CHECK(err <= tol);
    };
    SECTION("sine, gated") { run(make_sine<S>(true)); }
    SECTION("conv, gated") { run(make_conv<S>(true)); }
}

TEST_CASE("SPE: same seed gives identical outputs for 1 and 2 threads and across calls; seeds differ", "[spe][determinism]")
{
    const index b = 2, n = 40, e = 3;
    const auto q = spe_test::gaussian<float>(b * heads * n, dim, 301), k = spe_test::gaussian<float>(b * heads * n, dim, 302),
               v = spe_test::gaussian<float>(b * heads * n, e, 303);
    const auto run = [&](auto spe, int threads) {
        options<float> opt;
        opt.threads = threads;
        const linear_attention<feature_maps::favor, decltype(spe), float> attn(feature_maps::favor(reals, 16, 1), spe, opt);
        row_matrix<float> out(b * heads * n, e);
        attn.forward(view_bhnd(q.data(), b, heads, n, dim), view_bhnd(k.data(), b, heads, n, dim),
                     view_bhnd(v.data(), b, heads, n, e), view_bhnd(out.data(), b, heads, n, e), /*first_position=*/3);
        return out;
    };
    const auto check = [&](auto make) {
        const auto spe = make(11);
        const auto one = run(spe, 1), two = run(spe, 2), again = run(spe, 2);
        CHECK(one == two); // bit-identical
        CHECK(two == again);
        auto other = spe;
        other.redraw(12); // same parameters, another realization: a visibly different output
        const auto different = run(other, 2);
        CHECK(spe_test::rel_frobenius(different, one) > 1e-3);
        other.redraw(11); // back to the first realization, bit for bit
        CHECK(run(other, 2) == one);
    };
    check([](std::uint64_t s) { return make_sine<float>(true, s); });
    check([](std::uint64_t s) { return make_conv<float>(true, s); });
}

TEMPLATE_TEST_CASE("SPE codes of a block of positions do not depend on the blocks around it", "[spe][streaming]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 300, split = 131, first = 1000; // crosses the sine GEMM block (64) and the direct conv block (256)
    const auto x = spe_test::gaussian<S>(n, dim, 401);
    const auto run = [&](const auto& spe, role which) {
        row_matrix<S> whole(n, reals), parts(n, reals);
        spe.template encode_pre<S>(x, whole, first, 1, which);
        spe.template encode_pre<S>(x.topRows(split), parts.topRows(split), first, 1, which);
        spe.template encode_pre<S>(x.bottomRows(n - split), parts.bottomRows(n - split), first + split, 1, which);
        // Identical noise per position; the sine phase recurrence restarts elsewhere (each of <= 64 rotations
        // adds <= 4 roundings: 2 in the complex product, 2 from the rounded step cos ω, sin ω; in double) and
        // GEMM blocking may differ: <= c·((2K + 1)·D + 4·64)·eps with c = 1 (measured c <= 0.5 in double).
        const double err = spe_test::rel_frobenius(parts, whole);
        const double tol = 1.0 * double(9 * dim + 4 * 64) * std::numeric_limits<S>::epsilon();
        CAPTURE(err, tol);
        CHECK(err <= tol);
    };
    for (role which : {role::query, role::key}) {
        run(make_sine<S>(), which);
        run(make_conv<S>(), which);
        auto fft = make_conv<S>(true, 3, 90);
        fft.algorithm = positional::conv_algorithm::fft;
        run(fft, which);
    }
}

TEMPLATE_TEST_CASE("convSPE direct and FFT correlation agree to rounding", "[spe][conv][fft]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index width = GENERATE(1, 2, 7, 128, 200);
    const index n = GENERATE(1, 45, 333, 1000);
    auto spe = make_conv<S>(true, 17, width);
    const auto x = spe_test::gaussian<S>(n, dim, 501);
    row_matrix<S> direct(n, reals), fft(n, reals);
    spe.algorithm = positional::conv_algorithm::direct;
    spe.template encode_pre<S>(x, direct, 77, 0, role::key);
    spe.algorithm = positional::conv_algorithm::fft;
    spe.template encode_pre<S>(x, fft, 77, 0, role::key);
    // Direct: W-term sums; FFT: forward and inverse transforms of length L <= 2·(4W + W) add O(log2 L) relative
    // error per output, times the spectrum's dynamic range. Bound c·(W + log2 L)·eps with c = 1 (measured c <= 0.1).
    const double tol = 1.0 * (double(width) + 12.0) * std::numeric_limits<S>::epsilon();
    const double err = spe_test::rel_frobenius(fft, direct);
    CAPTURE(width, n, err, tol);
    CHECK(err <= tol);
}

TEST_CASE("SPE bad inputs throw linrpe::error naming the argument", "[spe][errors]")
{
    using Catch::Contains;
    REQUIRE_THROWS_AS(sine_spe<float>(2, 4, 3, 0), linrpe::error);
    REQUIRE_THROWS_WITH(sine_spe<float>(2, 4, 3, 0), Contains("realizations"));
    REQUIRE_THROWS_WITH(sine_spe<float>(2, 4, 0, 8), Contains("sines"));
    REQUIRE_THROWS_WITH(sine_spe<float>(0, 4, 3, 8), Contains("heads"));
    REQUIRE_THROWS_WITH(conv_spe<float>(2, 4, 0, 8), Contains("width"));
    REQUIRE_THROWS_WITH(conv_spe<float>(2, 0, 3, 8), Contains("dim"));
    REQUIRE_THROWS_WITH(conv_spe<float>(2, 4, 3, 0), Contains("realizations"));
    REQUIRE_THROWS_AS(make_conv<float>().set_realizations(0), linrpe::error);

    const row_matrix<float> q = spe_test::gaussian<float>(8, dim, 1), bad = spe_test::gaussian<float>(8, dim + 1, 1);
    const auto attention = [](auto spe) {
        return linear_attention<feature_maps::elu_plus_one, decltype(spe), float>({}, spe);
    };
    {
        const auto attn = attention(make_sine<float>());
        REQUIRE_THROWS_AS(attn(bad, bad, q), linrpe::error);
        REQUIRE_THROWS_WITH(attn(bad, bad, q), Contains("input_dim"));
        REQUIRE_THROWS_WITH(attn(q, q, q, /*head=*/heads), Contains("head"));
        REQUIRE_THROWS_WITH(attn.positional().expected_kernel(-1, 0, 0), Contains("head"));
        REQUIRE_THROWS_WITH(attn.positional().expected_kernel(0, dim, 0), Contains("dim"));
    }
    {
        const auto attn = attention(make_conv<float>());
        REQUIRE_THROWS_WITH(attn(bad, bad, q), Contains("input_dim"));
        REQUIRE_THROWS_WITH(attn(q, q, q, /*head=*/-1), Contains("head"));
    }
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const auto throws_naming = [&](auto spe, const char* name) {
        const auto attn = attention(spe);
        row_matrix<float> out(8, dim);
        out.setConstant(42.0f);
        REQUIRE_THROWS_AS(attn.forward(q, q, q, out, 1), linrpe::error);
        REQUIRE_THROWS_WITH(attn.forward(q, q, q, out, 1), Contains(name));
        CHECK((out.array() == 42.0f).all()); // nothing written before validation
    };
    { auto s = make_sine<float>(); s.freqs(dim + 1, 2) = nan; throws_naming(s, "freqs"); }
    { auto s = make_sine<float>(); s.offsets(dim, 0) = inf; throws_naming(s, "offsets"); }
    { auto s = make_sine<float>(); s.gains(2 * dim - 1, 3) = nan; throws_naming(s, "gains"); }
    { auto s = make_sine<float>(); s.gate(1, 0) = nan; throws_naming(s, "gate"); }
    { auto s = make_sine<float>(); s.freqs.resize(3, 3); throws_naming(s, "freqs"); }
    { auto c = make_conv<float>(); c.query_filter(dim, 1) = nan; throws_naming(c, "query_filter"); }
    { auto c = make_conv<float>(); c.key_filter(dim + 2, 0) = -inf; throws_naming(c, "key_filter"); }
    { auto c = make_conv<float>(); c.gate(1, 3) = inf; throws_naming(c, "gate"); }
    // An ungated encoding ignores its (unused) gate parameters.
    { auto s = make_sine<float>(false); s.gate(1, 0) = nan; const auto attn = attention(s); CHECK_NOTHROW(attn(q, q, q, 1)); }
}

TEST_CASE("SPE preserves positivity: sum normalization is accepted", "[spe]")
{
    CHECK(make_sine<float>().preserves_positivity(1 << 20));
    CHECK(make_conv<float>().preserves_positivity(1 << 20));
    CHECK(make_sine<float>().pre_output_dim(dim) == reals);
}
} // namespace
} // namespace test_spe_attention
