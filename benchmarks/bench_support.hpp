#pragma once
// Shared helpers of the benchmarks: inputs, the in-binary GEMM roofline and the standard counters.
#include <benchmark/benchmark.h>
#include <linrpe.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

namespace bench {
using namespace linrpe;
using linrpe::index;

/// A (B, H, N, D) buffer of uniform values in [-scale, scale], fixed seed.
template <class S>
std::vector<S> buffer(index b, index h, index n, index d, S scale, unsigned seed)
{
    std::vector<S> data(static_cast<std::size_t>(b * h * n * d));
    std::srand(seed);
    for (auto& x : data) x = scale * (S(2) * static_cast<S>(std::rand()) / static_cast<S>(RAND_MAX) - S(1));
    return data;
}

/// \brief Seconds of the machine's practical limit for `heads` × (N, M, E) linear attention: the same two
/// GEMM shapes as the non-causal kernel (Aᵀ B with A (N, M), B (N, E), then A (M, E)), threaded over heads
/// like the library, best of `reps`. FLOPs: 4·N·M·E per head.
template <class S>
double gemm_roofline_seconds(index heads, index n, index m, index e, int reps = 3)
{
    std::vector<row_matrix<S>> a(heads, row_matrix<S>::Random(n, m)), b(heads, row_matrix<S>::Random(n, e)),
        c(heads, row_matrix<S>(n, e)), s(heads, row_matrix<S>(m, e));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        detail::parallel_for(heads, 0, [&](index h) {
            s[h].noalias() = a[h].transpose() * b[h];
            c[h].noalias() = a[h] * s[h];
        });
        benchmark::DoNotOptimize(c[0].data());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

/// Sets tokens/s, GFLOP/s (of `flops` per iteration) and the ratio to the roofline measured now.
inline void set_counters(benchmark::State& state, double tokens, double flops, double roofline_seconds)
{
    state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["roofline_s"] = roofline_seconds;
}
} // namespace bench
