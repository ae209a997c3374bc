// SPE Monte Carlo: unbiased logits, exact variance ∝ 1/R, convSPE support, stationarity (reference/spe.md §7).
#include "support_spe.hpp"

#include <linrpe/detail/spe_common.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <utility>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_spe_unbiased {

namespace {
using linrpe::index;
using linrpe::role;
using linrpe::row_matrix;
using linrpe::positional::conv_spe;
using linrpe::positional::sine_spe;

// q and k with mostly positive products q_d k_d, so that the per-dimension kernels do not cancel in the logit.
row_matrix<double> query_row(index dim) { return spe_test::gaussian<double>(1, dim, 11); }
row_matrix<double> key_row(index dim) { return 0.8 * query_row(dim) + spe_test::gaussian<double>(1, dim, 12, 0.5); }

/// q̂·k̂/√R for q at position m and k at position n, under the realization currently drawn.
template <class Spe>
double logit(const Spe& spe, index head, const row_matrix<double>& q, const row_matrix<double>& k, index m, index n)
{
    row_matrix<double> qh(1, spe.realizations()), kh(1, spe.realizations());
    spe.template encode_pre<double>(q, qh, m, head, role::query);
    spe.template encode_pre<double>(k, kh, n, head, role::key);
    return qh.row(0).dot(kh.row(0)) / std::sqrt(double(spe.realizations()));
}

/// Over `draws` seeds: the mean of q̂·k̂/√R must be the expected logit within 4 standard errors of the exact
/// variance (a 4σ bound: a false alarm has probability 6e-5 per check; the seeds are fixed, so the outcome
/// is deterministic).
template <class Spe>
void check_unbiased(Spe spe, index head, const std::vector<std::pair<index, index>>& pairs, int draws)
{
    const index dim = spe.dim();
    const row_matrix<double> q = query_row(dim), k = key_row(dim);
    std::vector<double> sum(pairs.size(), 0.0);
    for (int s = 0; s < draws; ++s) {
        spe.redraw(1000 + std::uint64_t(s));
        for (std::size_t p = 0; p < pairs.size(); ++p) sum[p] += logit(spe, head, q, k, pairs[p].first, pairs[p].second);
    }
    for (std::size_t p = 0; p < pairs.size(); ++p) {
        const index m = pairs[p].first, n = pairs[p].second;
        const double mean = sum[p] / draws;
        const double target = spe_test::expected_logit(spe, head, q.row(0), k.row(0), m - n);
        const double se = std::sqrt(spe_test::exact_variance(spe, head, q.row(0), k.row(0), m - n) / draws);
        CAPTURE(m, n, mean, target, se);
        CHECK(std::abs(mean - target) <= 4 * se);
    }
}

sine_spe<double> make_sine(bool gated)
{
    sine_spe<double> spe(/*heads=*/2, /*dim=*/4, /*sines=*/3, /*realizations=*/16, /*seed=*/5, gated);
    // Frequencies f = σ(a_f)/2 in (0.06, 0.25) so that P varies over the lags tested; θ ~ N(0, 1) from the
    // initialization keeps P asymmetric.
    spe.freqs = (spe_test::gaussian<double>(8, 3, 21).array().tanh() - 1.0).matrix();
    // Phases near π/2 make P(δ) − P(−δ) = −(1/K) Σ λ² sin(2π f δ) sin θ large (θ = 0 would make P even).
    spe.offsets = (spe_test::gaussian<double>(8, 3, 22, 0.3).array() + 1.3).matrix();
    return spe;
}

conv_spe<double> make_conv(bool gated)
{
    conv_spe<double> spe(/*heads=*/2, /*dim=*/3, /*width=*/4, /*realizations=*/16, /*seed=*/9, gated);
    // Filters of opposite skew (φ_Q front-loaded, φ_K back-loaded) plus the random initialization:
    // P(2) ≈ φ_Q[0] φ_K[2] is large while P(−2) ≈ φ_Q[2] φ_K[0] is small.
    Eigen::RowVectorXd front(4), back(4);
    front << 1.0, 0.2, 0.0, 0.1;
    back << 0.1, 0.3, 1.0, 0.5;
    spe.query_filter = (0.3 * spe.query_filter).rowwise() + front;
    spe.key_filter = (0.3 * spe.key_filter).rowwise() + back;
    return spe;
}

TEST_CASE("sineSPE logits are unbiased, including negative lags", "[spe][sine][montecarlo]")
{
    const bool gated = GENERATE(false, true);
    const int draws = 2000;
    CAPTURE(gated);
    const auto spe = make_sine(gated);
    // The test can tell δ from −δ: the targets at lags ±4 differ by far more than the 4σ bound.
    const row_matrix<double> q = query_row(4), k = key_row(4);
    const double forward = spe_test::expected_logit(spe, 1, q.row(0), k.row(0), 4);
    const double backward = spe_test::expected_logit(spe, 1, q.row(0), k.row(0), -4);
    const double se = std::sqrt(spe_test::exact_variance(spe, 1, q.row(0), k.row(0), 4) / draws);
    CAPTURE(forward, backward, se);
    REQUIRE(std::abs(forward - backward) > 8 * se);
    check_unbiased(spe, 1, {{0, 0}, {5, 1}, {1, 5}, {3, 10}, {1000, 997}}, draws);
}

TEST_CASE("convSPE logits are unbiased, including negative lags and |delta| >= W", "[spe][conv][montecarlo]")
{
    const bool gated = GENERATE(false, true);
    const int draws = 2000;
    CAPTURE(gated);
    const auto spe = make_conv(gated);
    const row_matrix<double> q = query_row(3), k = key_row(3);
    const double forward = spe_test::expected_logit(spe, 1, q.row(0), k.row(0), 2);
    const double backward = spe_test::expected_logit(spe, 1, q.row(0), k.row(0), -2);
    const double se = std::sqrt(spe_test::exact_variance(spe, 1, q.row(0), k.row(0), 2) / draws);
    CAPTURE(forward, backward, se);
    REQUIRE(std::abs(forward - backward) > 8 * se);
    // (7, 0), (0, 9): lags beyond the support, where the kernel is 0 (g with the gate).
    check_unbiased(spe, 1, {{2, 2}, {5, 3}, {3, 5}, {7, 0}, {0, 9}, {300, 301}}, draws);
}

TEST_CASE("convSPE expected kernel vanishes for |delta| >= W", "[spe][conv][montecarlo]")
{
    const auto spe = make_conv(false);
    const int draws = 2000;
    for (index d = 0; d < spe.dim(); ++d)
        for (index t : {4, 5, 50, -4, -5, -50}) CHECK(spe.expected_kernel(0, d, t) == 0.0);
    for (index d = 0; d < spe.dim(); ++d) CHECK(spe.expected_kernel(0, d, 3) != 0.0);
    // Empirically: the mean logit at lags ±W, ±(W + 3) is within 4 standard errors of 0.
    check_unbiased(spe, 0, {{4, 0}, {0, 4}, {17, 10}, {10, 17}}, draws);
}

TEST_CASE("SPE logit variance is the exact Isserlis variance and scales as 1/R", "[spe][montecarlo]")
{
    // Sample variances over S = 1500 draws have relative standard error sqrt((kappa - 1)/S) <= 0.05 for the
    // kurtosis kappa <= 4.5 of these logits, so the ratio Var(R)/Var(4R) is 4 ± 0.3 at 4σ and inside [3, 5],
    // and each empirical/exact ratio is inside [0.75, 1.33] (> 5σ margins).
    const int draws = 1500;
    const auto run = [&](auto spe, index m, index n) {
        const index dim = spe.dim();
        const row_matrix<double> q = spe_test::gaussian<double>(1, dim, 31), k = spe_test::gaussian<double>(1, dim, 32);
        std::vector<double> var;
        for (index r : {index(16), index(64)}) {
            spe.set_realizations(r);
            double s1 = 0, s2 = 0;
            for (int s = 0; s < draws; ++s) {
                spe.redraw(5000 + std::uint64_t(s));
                const double x = logit(spe, 0, q, k, m, n);
                s1 += x;
                s2 += x * x;
            }
            const double v = (s2 - s1 * s1 / draws) / (draws - 1);
            const double exact = spe_test::exact_variance(spe, 0, q.row(0), k.row(0), m - n);
            CAPTURE(r, v, exact);
            CHECK(v / exact >= 0.75);
            CHECK(v / exact <= 1.33);
            var.push_back(v);
        }
        const double ratio = var[0] / var[1];
        CAPTURE(ratio);
        CHECK(ratio >= 3.0);
        CHECK(ratio <= 5.0);
    };
    SECTION("sine") { run(make_sine(false), 7, 2); }
    SECTION("sine, gated") { run(make_sine(true), 2, 7); }
    SECTION("conv") { run(make_conv(false), 3, 1); }
    SECTION("conv, gated") { run(make_conv(true), 1, 3); }
}

TEST_CASE("SPE codes are stationary: the empirical cross-covariance depends on m - n only", "[spe][montecarlo]")
{
    // E[(1/R) Σ_r Q̃_d(m, r) K̃_d(n, r)] = P_d(m − n) per dimension, with variance (σ_Q² σ_K² + P²)/R per draw.
    // Same lag at positions 0 and 5000: both means within 4 standard errors of P (codes scaled back by (R·D)^{1/4}).
    auto sine = make_sine(true);
    auto conv = make_conv(true);
    const int draws = 400;
    const auto run = [&](auto& spe, index delta) {
        const index r = spe.realizations(), dim = spe.dim();
        const double unit = std::sqrt(double(r) * double(dim)); // (R·D)^{1/2}: undoes both code scales
        for (index start : {index(10), index(5000)}) {
            double sum = 0;
            for (int s = 0; s < draws; ++s) {
                spe.redraw(9000 + std::uint64_t(s));
                const auto qc = spe.code(role::query, 1, 2, start + delta, 1);
                const auto kc = spe.code(role::key, 1, 2, start, 1);
                sum += unit * qc.row(0).dot(kc.row(0)) / double(r);
            }
            const double mean = sum / draws;
            const double p = spe.expected_kernel(1, 2, delta);
            const double var = (spe.code_variance(1, 2, role::query) * spe.code_variance(1, 2, role::key) + p * p) / double(r);
            const double se = std::sqrt(var / draws);
            CAPTURE(start, delta, mean, p, se);
            CHECK(std::abs(mean - p) <= 4 * se);
        }
    };
    run(sine, 3);
    run(sine, -3);
    run(conv, 2);
    run(conv, -1);
}

TEST_CASE("philox_stream::blocks gives the bits of block(); SPE noise is blockwise and standard normal", "[spe][random]")
{
    const linrpe::random::philox_stream stream(0x1234567890abcdefULL, linrpe::random::purpose::spe_noise, 3, 5, 7);
    for (std::uint64_t first : {std::uint64_t(0), std::uint64_t(13), (std::uint64_t(1) << 32) - 5}) {
        for (index count : {index(1), index(16), index(37)}) {
            std::vector<std::uint32_t> words(static_cast<std::size_t>(4 * count));
            stream.blocks(first, count, words.data());
            for (index i = 0; i < count; ++i) {
                const auto b = stream.block(first + std::uint64_t(i));
                for (int w = 0; w < 4; ++w) CHECK(words[static_cast<std::size_t>(4 * i + w)] == b[w]);
            }
        }
    }
    // Any window of the noise equals the same window of a longer draw, bit for bit.
    linrpe::detail::spe_noise_scratch<double> scratch;
    std::vector<double> whole(1000), part(333);
    linrpe::detail::spe_fill_noise(stream, 100, whole.data(), 1000, scratch);
    for (std::uint64_t offset : {std::uint64_t(0), std::uint64_t(1), std::uint64_t(2), std::uint64_t(3), std::uint64_t(503)}) {
        linrpe::detail::spe_fill_noise(stream, 100 + offset, part.data(), 333, scratch);
        for (std::size_t i = 0; i < part.size(); ++i) CHECK(part[i] == whole[offset + i]);
    }
    // Moments of 2^18 draws: mean 0 ± 4/√n, variance 1 ± 4·√(2/n), fourth moment 3 ± 4·√(96/n).
    const index n = 1 << 18;
    std::vector<double> z(static_cast<std::size_t>(n));
    linrpe::detail::spe_fill_noise(stream, 0, z.data(), n, scratch);
    double m1 = 0, m2 = 0, m4 = 0;
    for (double v : z) {
        m1 += v;
        m2 += v * v;
        m4 += v * v * v * v;
    }
    m1 /= double(n), m2 /= double(n), m4 /= double(n);
    CAPTURE(m1, m2, m4);
    CHECK(std::abs(m1) <= 4 / std::sqrt(double(n)));
    CHECK(std::abs(m2 - 1) <= 4 * std::sqrt(2.0 / double(n)));
    CHECK(std::abs(m4 - 3) <= 4 * std::sqrt(96.0 / double(n)));
    // Float draws use the same uniforms: they equal the double draws to float rounding (a few ulps of the
    // transcendental functions, relative to the sample's magnitude <= 6).
    linrpe::detail::spe_noise_scratch<float> scratch_f;
    std::vector<float> zf(1000);
    linrpe::detail::spe_fill_noise(stream, 100, zf.data(), 1000, scratch_f);
    for (std::size_t i = 0; i < zf.size(); ++i) CHECK(std::abs(double(zf[i]) - whole[i]) <= 64 * 6 * 1.2e-7);
}
} // namespace
} // namespace test_spe_unbiased
