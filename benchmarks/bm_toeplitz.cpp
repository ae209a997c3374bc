// Toeplitz RPE (Luo et al., NeurIPS 2021): the dense, FFT and banded algorithms and the automatic choice,
// against exact softmax attention with the same relative bias (reference::softmax_attention, O(N^2)).
// One head, B = 1, D = M = E = 64 (elu+1 features), float, non-causal unless the name says causal.
// Second argument: T_max (0 means T_max = N, the unclipped form).
//
//   build/release/benchmarks/bm_toeplitz --benchmark_min_time=0.05
// The reported time is the attention call's own (manual time): each iteration also times one pass of the
// GEMM roofline of plain linear attention for the head, which gives roofline_ratio.
#include "bench_support.hpp"

#include <linrpe/positional/toeplitz_rpe.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index width = 64;

template <class S>
positional::toeplitz_rpe<S> bias_for(index t_max)
{
    // A smooth decaying bias (ALiBi-like slope plus a ripple), the same for every algorithm and the reference.
    positional::toeplitz_rpe<S> pe(1, t_max);
    for (index t = -(t_max - 1); t < t_max; ++t)
        pe.bias(0, t + t_max - 1) = static_cast<S>(-0.01 * std::abs(double(t)) + 0.1 * std::sin(0.05 * double(t)));
    return pe;
}

template <toeplitz_algorithm Algo, masking Mask>
void BM_toeplitz(benchmark::State& state)
{
    using S = float;
    const index n = state.range(0), t_max = state.range(1) > 0 ? state.range(1) : n;
    const auto q = bench::buffer<S>(1, 1, n, width, 0.5f, 1), k = bench::buffer<S>(1, 1, n, width, 0.5f, 2),
               v = bench::buffer<S>(1, 1, n, width, 1.0f, 3);
    std::vector<S> out(v.size());
    options<S> opt;
    opt.mask = Mask;
    opt.toeplitz = Algo;
    const linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S> attn({}, bias_for<S>(t_max), opt);
    const auto view = [&](const std::vector<S>& b) { return view_bhnd(b.data(), 1, 1, n, width); };
    // Against the roofline of plain linear attention's GEMMs for this head (M = E = 64).
    bench::run_against_roofline<S>(state, 1, n, width, width, [&] {
        attn.forward(view(q), view(k), view(v), view_bhnd(out.data(), 1, 1, n, width));
        benchmark::DoNotOptimize(out.data());
    });
    const auto chosen = detail::toeplitz_resolve<S>(Algo, attn.positional().mixing_weights<S>(0, 1 - n, Mask == masking::causal ? 0 : n - 1), n, n, width,
                                                    width + 1, 0, Mask == masking::causal);
    state.counters["algo"] = static_cast<double>(chosen); // 1 dense, 2 fft, 3 banded
    state.counters["T_max"] = static_cast<double>(t_max);
    state.SetComplexityN(n);
}

// time(64k) / time(16k) of one algorithm (range(0): 2 fft, 3 banded; range(1): T_max, 0 = N), both lengths in
// every iteration (bench::scaling_ratio).
void BM_scaling(benchmark::State& state)
{
    using S = float;
    const auto algo = static_cast<toeplitz_algorithm>(state.range(0));
    const auto runner = [&](index n) {
        const index t_max = state.range(1) > 0 ? state.range(1) : n;
        auto q = bench::buffer<S>(1, 1, n, width, 0.5f, 1), k = bench::buffer<S>(1, 1, n, width, 0.5f, 2),
             v = bench::buffer<S>(1, 1, n, width, 1.0f, 3), out = std::vector<S>(q.size());
        options<S> opt;
        opt.toeplitz = algo;
        linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S> attn({}, bias_for<S>(t_max), opt);
        return [n, attn = std::move(attn), q = std::move(q), k = std::move(k), v = std::move(v), out = std::move(out)]() mutable {
            attn.forward(view_bhnd(q.data(), 1, 1, n, width), view_bhnd(k.data(), 1, 1, n, width),
                         view_bhnd(v.data(), 1, 1, n, width), view_bhnd(out.data(), 1, 1, n, width));
            benchmark::DoNotOptimize(out.data());
        };
    };
    bench::scaling_ratio(state, runner(1 << 14), runner(1 << 16));
}

void BM_softmax_reference(benchmark::State& state)
{
    const index n = state.range(0), t_max = state.range(1) > 0 ? state.range(1) : n;
    const auto q = bench::buffer<float>(1, 1, n, width, 0.5f, 1), k = bench::buffer<float>(1, 1, n, width, 0.5f, 2),
               v = bench::buffer<float>(1, 1, n, width, 1.0f, 3);
    const Eigen::Map<const row_matrix<float>> qm(q.data(), n, width), km(k.data(), n, width), vm(v.data(), n, width);
    const auto pe = bias_for<float>(t_max);
    const auto bias = [&](index t) { return double(pe.offset_bias(0, t)); };
    for (auto _ : state) // manual time, like the sweep's other benchmarks
        state.SetIterationTime(bench::seconds_of([&] {
            const row_matrix<double> out = reference::softmax_attention(qm, km, vm, masking::none, bias);
            benchmark::DoNotOptimize(out.data());
        }));
    state.counters["T_max"] = static_cast<double>(t_max);
    bench::set_counters(state, double(n), 4.0 * n * n * width, 0);
}

// Calibration of the cost model (detail/toeplitz_cost.hpp): args N, T_max, algorithm (1 dense, 2 fft, 3 banded).
void BM_calibrate(benchmark::State& state)
{
    using S = float;
    const index n = state.range(0), t_max = state.range(1);
    const auto algo = static_cast<toeplitz_algorithm>(state.range(2));
    const row_matrix<S> psi = row_matrix<S>::Random(n, width).cwiseAbs(), kappa = row_matrix<S>::Random(n, width).cwiseAbs(),
                        vx = row_matrix<S>::Random(n, width + 1);
    row_matrix<S> num(n, width + 1);
    const auto w = bias_for<S>(t_max).mixing_weights<S>(0, 1 - n, n - 1);
    for (auto _ : state) {
        detail::toeplitz_mix<S>(w, psi, kappa, vx, num, 0, 0, false, algo);
        benchmark::DoNotOptimize(num.data());
    }
    const auto p = detail::toeplitz_predict<S>(n, n, width, width + 1, t_max, false);
    state.counters["predicted_s"] = algo == toeplitz_algorithm::dense ? p.dense : algo == toeplitz_algorithm::fft ? p.fft : p.banded;
}

// The causal FFT's divide and conquer on its own (detail::toeplitz_mix_fft, T_max = N): args N and
// direct_rows, the size from which rectangles go through the FFT. The cost model's direct_rows for
// M = E = 64 is 64k (below it the causal `fft` is the dense algorithm); 1024 shows the recursion's cost.
void BM_causal_fft_recursion(benchmark::State& state)
{
    using S = float;
    const index n = state.range(0), direct = state.range(1);
    const row_matrix<S> psi = row_matrix<S>::Random(n, width).cwiseAbs(), kappa = row_matrix<S>::Random(n, width).cwiseAbs(),
                        vx = row_matrix<S>::Random(n, width + 1);
    row_matrix<S> num(n, width + 1);
    const auto w = bias_for<S>(n).mixing_weights<S>(0, 1 - n, 0);
    for (auto _ : state)
        state.SetIterationTime(bench::seconds_of([&] {
            detail::toeplitz_mix_fft<S>(w, psi, kappa, vx, num, 0, 0, true, 0, 0, direct);
            benchmark::DoNotOptimize(num.data());
        }));
}

// N from 256 to 64k, T_max in {128, N}. The O(N^2) paths stop at 8k (dense) and 4k (reference); banded
// with T_max = N is the dense algorithm with extra state work, so it stops at 8k too.
void sweep(benchmark::internal::Benchmark* b, index max_n, index max_n_unclipped)
{
    for (const index t : {index(128), index(0)})
        for (index n = 256; n <= (t == 0 ? max_n_unclipped : max_n); n *= 2) b->Args({n, t});
    b->Unit(benchmark::kMillisecond)->UseManualTime();
}

} // namespace

BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::dense, masking::none)->Name("toeplitz_dense")->Apply([](auto* b) { sweep(b, 8192, 8192); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::banded, masking::none)->Name("toeplitz_banded")->Apply([](auto* b) { sweep(b, 65536, 8192); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::fft, masking::none)->Name("toeplitz_fft")->Apply([](auto* b) { sweep(b, 65536, 65536); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::automatic, masking::none)->Name("toeplitz_automatic")->Apply([](auto* b) { sweep(b, 65536, 65536); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::automatic, masking::causal)->Name("toeplitz_automatic_causal")->Apply([](auto* b) { sweep(b, 65536, 65536); });
// Causal: dense to 8k (64k with T_max = N, where it competes with the FFT), banded as non-causal, and the
// causal FFT (divide and conquer, O(N log² N)) at 4k, 16k and 64k.
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::dense, masking::causal)->Name("toeplitz_dense_causal")->Apply([](auto* b) { sweep(b, 8192, 65536); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::banded, masking::causal)->Name("toeplitz_banded_causal")->Apply([](auto* b) { sweep(b, 65536, 8192); });
BENCHMARK_TEMPLATE(BM_toeplitz, toeplitz_algorithm::fft, masking::causal)->Name("toeplitz_fft_causal")->Apply([](auto* b) {
    for (const std::int64_t t : {128, 0})
        for (const std::int64_t n : {4096, 16384, 65536}) b->Args({n, t});
    b->Unit(benchmark::kMillisecond)->UseManualTime();
});
BENCHMARK(BM_causal_fft_recursion)->Name("causal_fft_recursion")->ArgsProduct({{4096, 16384, 65536}, {1024}})
    ->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_softmax_reference)->Name("softmax_reference")->Apply([](auto* b) { sweep(b, 4096, 4096); });
BENCHMARK(BM_calibrate)->Name("calibrate")->ArgsProduct({{1024, 4096, 8192}, {16}, {1}})->ArgsProduct({{1024, 4096, 16384, 32768}, {16}, {2}})
    ->ArgsProduct({{16384}, {8, 64, 512, 2048}, {3}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_scaling)->Name("scaling_fft")->Args({2, 0})->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_scaling)->Name("scaling_banded")->Args({3, 128})->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
