// Core linear attention (positional::none, elu+1, float, B = 1, H = 8, D = M = E = 64): non-causal and
// causal against the in-binary GEMM roofline and a naive per-token rank-1 causal loop.
#include "bench_support.hpp"

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64;

template <masking Mask>
void BM_linear(benchmark::State& state)
{
    const index n = state.range(0);
    bench::problem<float> p(heads, n, width);
    options<float> opt;
    opt.mask = Mask;
    opt.threads = static_cast<int>(state.range(1)); // 0: the OpenMP default
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    bench::run_against_roofline<float>(state, heads, n, width, width, [&] { p.forward(attn); }, opt.threads);
    state.SetComplexityN(n);
}

// time(64k) / time(16k), both lengths run in every iteration (bench::scaling_ratio).
template <masking Mask>
void BM_scaling(benchmark::State& state)
{
    options<float> opt;
    opt.mask = Mask;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    bench::problem<float> small(heads, state.range(0), width), big(heads, state.range(1), width);
    bench::scaling_ratio(state, [&] { small.forward(attn); }, [&] { big.forward(attn); });
}

// The threading target: time on 1 thread over time on the OpenMP default (2 here), the two runs alternating
// (bench::scaling_ratio: `speedup` is the median of the pair ratios). Both use the same partition, so the
// outputs are bit-identical (tests/test_core.cpp).
template <masking Mask>
void BM_threads_speedup(benchmark::State& state)
{
    options<float> all, one;
    all.mask = one.mask = Mask;
    one.threads = 1;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> parallel({}, {}, all), serial({}, {}, one);
    bench::problem<float> p(heads, state.range(0), width);
    bench::scaling_ratio(state, [&] { p.forward(parallel); }, [&] { p.forward(serial); }, "speedup");
}

// Baseline: the per-token rank-1 recurrence S += φ(k) vᵀ, out = φ(q) S / φ(q) z (fast-transformers' CPU kernel).
void BM_naive_causal_rank1(benchmark::State& state)
{
    const index n = state.range(0);
    const auto q = bench::buffer<float>(1, heads, n, width, 0.5f, 1), k = bench::buffer<float>(1, heads, n, width, 0.5f, 2),
               v = bench::buffer<float>(1, heads, n, width, 1.0f, 3);
    std::vector<float> out(q.size());
    for (auto _ : state) {
        detail::parallel_for(heads, 0, [&](index h) {
            const float* qh = q.data() + h * n * width;
            const float* kh = k.data() + h * n * width;
            const float* vh = v.data() + h * n * width;
            float* oh = out.data() + h * n * width;
            std::vector<float> s(width * width, 0.f), z(width, 0.f), fq(width), fk(width);
            for (index t = 0; t < n; ++t) {
                for (index a = 0; a < width; ++a) {
                    const float x = qh[t * width + a], y = kh[t * width + a];
                    fq[a] = x > 0 ? x + 1 : std::exp(x);
                    fk[a] = y > 0 ? y + 1 : std::exp(y);
                }
                for (index a = 0; a < width; ++a) {
                    z[a] += fk[a];
                    for (index b = 0; b < width; ++b) s[a * width + b] += fk[a] * vh[t * width + b];
                }
                float den = 1e-6f;
                for (index a = 0; a < width; ++a) den += fq[a] * z[a];
                for (index b = 0; b < width; ++b) {
                    float acc = 0;
                    for (index a = 0; a < width; ++a) acc += fq[a] * s[a * width + b];
                    oh[t * width + b] = acc / den;
                }
            }
        });
        benchmark::DoNotOptimize(out.data());
    }
    bench::set_counters(state, double(n), 4.0 * heads * n * width * width, 0);
    state.SetComplexityN(n);
}

} // namespace

// Args: N, threads (0 = OpenMP default). The threads:1 rows show the single-thread roofline share; the
// threading target itself comes from the paired threads_speedup_* benchmarks.
void lengths(benchmark::internal::Benchmark* b)
{
    b->ArgNames({"N", "threads"});
    for (std::int64_t n = 1 << 10; n <= (1 << 16); n *= 4) b->Args({n, 0});
    b->Args({1 << 14, 1});
    b->Unit(benchmark::kMillisecond)->UseManualTime();
}
BENCHMARK_TEMPLATE(BM_linear, masking::none)->Name("linear_noncausal")->Apply(lengths);
BENCHMARK_TEMPLATE(BM_linear, masking::causal)->Name("linear_causal")->Apply(lengths);
BENCHMARK(BM_naive_causal_rank1)->Name("naive_causal_rank1")->RangeMultiplier(4)->Range(1 << 10, 1 << 14)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_scaling, masking::none)->Name("scaling_noncausal")->Args({1 << 14, 1 << 16})->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_scaling, masking::causal)->Name("scaling_causal")->Args({1 << 14, 1 << 16})->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_threads_speedup, masking::none)->Name("threads_speedup_noncausal")->Arg(1 << 14)->Iterations(15)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_threads_speedup, masking::causal)->Name("threads_speedup_causal")->Arg(1 << 14)->Iterations(15)->Unit(benchmark::kMillisecond)->UseRealTime();
