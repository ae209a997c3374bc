// Randomized cases (fixed seed) over shapes (0 and 1 included), options, encodings, positions and view
// layouts: each is refused with a named argument and untouched outputs, or matches the exact reference
// within the derived bound (tests/fuzz/fuzz_case.hpp states both checks and the bound).
#include "fuzz/fuzz_case.hpp"

#include <cstdlib>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_fuzz {

TEST_CASE("fuzz: every call is refused cleanly or within the bound of the exact reference", "[fuzz]")
{
    // Sized to run in well under 60 s under ASan + UBSan on the 2-core development machine; the
    // LINRPE_FUZZ_CASES environment variable runs more (or fewer).
    long cases = 2500;
    if (const char* env = std::getenv("LINRPE_FUZZ_CASES")) cases = std::atol(env);
    fuzz::source s(20261201u);
    long refused = 0, accepted = 0;
    for (long i = 0; i < cases; ++i) {
        fuzz::spec c;
        const fuzz::outcome r = fuzz::run_case(s, c);
        if (!r.passed) {
            INFO("case " << i << ": " << c.describe());
            INFO(r.why);
            REQUIRE(r.passed);
        }
        (r.refused ? refused : accepted) += 1;
    }
    CAPTURE(cases, refused, accepted);
    // Both outcomes must be well represented, or the generator has degenerated into one of them.
    REQUIRE(accepted >= cases / 4);
    REQUIRE(refused >= cases / 10);
}
} // namespace test_fuzz
