#pragma once
// The scalar types of every TEMPLATE_TEST_CASE. The ASan+UBSan build (CMake build type Asan defines
// LINRPE_TEST_FLOAT_ONLY) instantiates float only: the sanitizers look for memory errors and undefined
// behaviour in the index and buffer logic, which float and double share (float, the production type, also
// has the narrower packets and the longer vector tails), while the instrumented code of both types doubles
// the slowest build of CI. The double paths still run under the sanitizers wherever a test computes its
// reference in double, and every type runs in the Release and serial builds.
#ifdef LINRPE_TEST_FLOAT_ONLY
#define LINRPE_TEST_SCALARS float
#else
#define LINRPE_TEST_SCALARS float, double
#endif
