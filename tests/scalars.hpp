#pragma once
// The scalar types of every TEMPLATE_TEST_CASE. The ASan+UBSan build (CMake build type Asan) and the serial
// build (preset `serial`, LINRPE_TEST_FLOAT_ONLY=ON) instantiate float only: the sanitizers look for memory
// errors and undefined behaviour in the index and buffer logic, and the serial build for the paths without
// OpenMP, which float and double share (float, the production type, also has the narrower packets and the
// longer vector tails), while the code of both types doubles the slowest builds of CI. The double paths
// still run there wherever a test computes its reference in double, and every type runs in Release.
#ifdef LINRPE_TEST_FLOAT_ONLY
#define LINRPE_TEST_SCALARS float
#else
#define LINRPE_TEST_SCALARS float, double
#endif
