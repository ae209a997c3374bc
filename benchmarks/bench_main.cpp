// Custom Google Benchmark main: prints what the numbers depend on (SIMD, build type, compiler, threads).
#include <benchmark/benchmark.h>
#include <linrpe.hpp>

#include <cstdio>

int main(int argc, char** argv)
{
    std::printf("linrpe %s | Eigen %d.%d.%d SIMD: %s | compiler: %s", LINRPE_VERSION_STRING, EIGEN_WORLD_VERSION,
                EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, Eigen::SimdInstructionSetsInUse(), __VERSION__);
#if defined(_OPENMP)
    std::printf(" | OpenMP threads: %d", omp_get_max_threads());
#else
    std::printf(" | no OpenMP");
#endif
#if defined(NDEBUG)
    std::printf(" | NDEBUG\n");
#else
    std::printf(" | ASSERTIONS ON: not a release build, times are not representative\n");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
