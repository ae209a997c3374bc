// Core linear attention (positional::none, elu+1, float, B = 1, H = 8, D = M = E = 64): non-causal and
// causal against the in-binary GEMM roofline and a naive per-token rank-1 causal loop.
#include "bench_support.hpp"

#include <chrono>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64;

template <masking Mask>
void BM_linear(benchmark::State& state)
{
    const index n = state.range(0);
    const auto q = bench::buffer<float>(1, heads, n, width, 0.5f, 1), k = bench::buffer<float>(1, heads, n, width, 0.5f, 2),
               v = bench::buffer<float>(1, heads, n, width, 1.0f, 3);
    std::vector<float> out(q.size());
    options<float> opt;
    opt.mask = Mask;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    const auto t0 = std::chrono::steady_clock::now();
    for (auto _ : state) {
        attn.forward(view_bhnd(q.data(), 1, heads, n, width), view_bhnd(k.data(), 1, heads, n, width),
                     view_bhnd(v.data(), 1, heads, n, width), view_bhnd(out.data(), 1, heads, n, width));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    const double per_iter = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                            static_cast<double>(state.iterations());
    const double flops = 4.0 * heads * n * width * width; // useful FLOPs: Φkᵀ V and Φq S
    const double roof = bench::gemm_roofline_seconds<float>(heads, n, width, width);
    bench::set_counters(state, double(n), flops, roof);
    state.counters["roofline_ratio"] = roof / per_iter;
    state.SetComplexityN(n);
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

BENCHMARK_TEMPLATE(BM_linear, masking::none)->Name("linear_noncausal")->RangeMultiplier(4)->Range(1 << 10, 1 << 16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_linear, masking::causal)->Name("linear_causal")->RangeMultiplier(4)->Range(1 << 10, 1 << 16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_naive_causal_rank1)->Name("naive_causal_rank1")->RangeMultiplier(4)->Range(1 << 10, 1 << 14)->Unit(benchmark::kMillisecond)->UseRealTime();
