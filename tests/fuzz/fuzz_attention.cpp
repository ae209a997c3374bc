// libFuzzer entry: the fuzzer's bytes drive the same case generator as test_fuzz.cpp; a case that is
// neither a clean refusal nor within the bound of the exact reference aborts with its description.
// Build and run: see tests/fuzz/CMakeLists.txt (opt-in, clang++, -DLINRPE_FUZZ=ON).
#include "fuzz_case.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    fuzz::source s(data, size);
    fuzz::spec c;
    const fuzz::outcome r = fuzz::run_case(s, c);
    if (!r.passed) {
        std::fprintf(stderr, "linrpe fuzz failure: %s\n  case: %s\n", r.why.c_str(), c.describe().c_str());
        std::abort();
    }
    return 0;
}
