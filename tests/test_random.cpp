// Keyed Philox streams: Random123's known-answer vectors, pinned stream values (a change of the stream
// layout must be noticed), moments, and independence from the thread count.
#include "support.hpp"

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_random {

using linrpe::random::philox_stream;
using linrpe::random::purpose;

TEST_CASE("Philox4x32-10 reproduces Random123's known-answer vectors", "[random]")
{
    // Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key -> result.
    struct kat {
        r123::Philox4x32::ctr_type ctr;
        r123::Philox4x32::key_type key;
        std::uint32_t expected[4];
    };
    const kat cases[] = {
        {{{0, 0, 0, 0}}, {{0, 0}}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, {{0xffffffff, 0xffffffff}}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, {{0xa4093822, 0x299f31d0}}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (const auto& c : cases) {
        const auto r = r123::Philox4x32()(c.ctr, c.key);
        for (int i = 0; i < 4; ++i) REQUIRE(r[i] == c.expected[i]);
    }
}

TEST_CASE("stream values are pinned", "[random]")
{
    // Values printed by this implementation when the layout (seed -> key; purpose, head, a, b, index ->
    // counter; Box-Muller on two 64-bit words) was fixed. Box-Muller goes through log/sin/cos, whose last
    // bit may differ between libm versions, hence a 1e-14 relative tolerance rather than bit equality.
    const philox_stream s(20211118ull, purpose::spe_noise, 3, 5, 7);
    const std::pair<std::uint64_t, double> pinned[] = {
        {0, 0.79806749559384071}, {1, -2.435027382372462}, {2, -1.2451960292534792}, {3, 1.9221035648401648},
        {1000001, 0.18190651918316916}};
    for (const auto& [i, value] : pinned) {
        CAPTURE(i, s.normal(i), value);
        REQUIRE(std::abs(s.normal(i) - value) <= 1e-14 * std::abs(value));
    }
    REQUIRE(std::abs(s.uniform(9) - 0.79103796646038815) <= 1e-15);
    const philox_stream z(0, purpose::favor_omega);
    REQUIRE(std::abs(z.normal(0) - -0.70094779557599418) <= 1e-14);
    REQUIRE(std::abs(z.normal(1) - 0.48979117351381468) <= 1e-14);
}

TEST_CASE("streams are distinct per key, random-access, and standard normal", "[random]")
{
    const philox_stream a(1, purpose::spe_noise, 0, 0, 0), b(2, purpose::spe_noise, 0, 0, 0), c(1, purpose::spe_noise, 1, 0, 0),
        d(1, purpose::spe_gate, 0, 0, 0), e(1, purpose::spe_noise, 0, 1, 0), f(1, purpose::spe_noise, 0, 0, 1);
    for (const auto* other : {&b, &c, &d, &e, &f}) REQUIRE(a.normal(0) != other->normal(0));

    const linrpe::index n = 100001;
    std::vector<double> x(n);
    a.fill_normal(3, x.data(), n); // an odd start exercises the unpaired first element
    for (linrpe::index i : {linrpe::index(0), linrpe::index(1), linrpe::index(2), n - 1}) REQUIRE(x[i] == a.normal(3 + i));
    double mean = 0, sq = 0;
    for (double v : x) mean += v;
    mean /= n;
    for (double v : x) sq += (v - mean) * (v - mean);
    const double var = sq / (n - 1);
    // For N(0, 1) samples: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/(n-1)); allow 5 standard deviations.
    CAPTURE(mean, var);
    REQUIRE(std::abs(mean) <= 5.0 / std::sqrt(double(n)));
    REQUIRE(std::abs(var - 1.0) <= 5.0 * std::sqrt(2.0 / (n - 1)));
    for (std::uint64_t i = 0; i < 1000; ++i) {
        const double u = a.uniform(i);
        REQUIRE(u > 0.0);
        REQUIRE(u <= 1.0);
    }
}

TEST_CASE("filling a buffer gives identical numbers for 1 and 2 threads", "[random][threads]")
{
    const linrpe::index n = 1 << 16, blocks = 64;
    std::vector<float> one(n), two(n);
    const philox_stream s(99, purpose::favor_omega, 2, 3, 4);
    for (const int threads : {1, 2}) {
        auto& out = threads == 1 ? one : two;
        linrpe::detail::parallel_for(blocks, threads, [&](linrpe::index blk) {
            const linrpe::index first = blk * (n / blocks);
            s.fill_normal(static_cast<std::uint64_t>(first), out.data() + first, n / blocks);
        });
    }
    REQUIRE(one == two);
    REQUIRE(one[12345] == static_cast<float>(s.normal(12345))); // float users see the rounded double
}
} // namespace test_random
