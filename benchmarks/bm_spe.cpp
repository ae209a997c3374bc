// SPE (sineSPE, convSPE; gated) in front of linear attention against plain linear attention, B = 1, H = 8,
// D = 64, R = 64, E = 64, float, elu+1 features on both sides (M = 64), so that the attention part has the
// same cost and the difference is SPE's code generation + filtering. Also the pre-feature stage alone.
#include "bench_support.hpp"

#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>

#include <chrono>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64, reals = 64;

template <class Positional>
void run_attention(benchmark::State& state, const Positional& pe, masking mask)
{
    const index n = state.range(0);
    bench::problem<float> p(heads, n, width);
    options<float> opt;
    opt.mask = mask;
    const linear_attention<feature_maps::elu_plus_one, Positional, float> attn({}, pe, opt);
    bench::run_against_roofline<float>(state, heads, n, width, width, [&] { p.forward(attn); });
    state.SetComplexityN(n);
}

void BM_plain(benchmark::State& state) { run_attention(state, positional::none(), masking(state.range(1))); }
void BM_sine(benchmark::State& state)
{
    run_attention(state, positional::sine_spe<float>(heads, width, state.range(2), reals, 1, true), masking(state.range(1)));
}
void BM_conv(benchmark::State& state)
{
    positional::conv_spe<float> pe(heads, width, state.range(2), reals, 1, true);
    pe.algorithm = static_cast<positional::conv_algorithm>(state.range(3));
    run_attention(state, pe, masking(state.range(1)));
}

// The pre-feature stage alone (queries and keys of all heads): code generation + filter.
template <class Positional>
void run_encode(benchmark::State& state, const Positional& pe)
{
    const index n = state.range(0);
    const auto x = bench::buffer<float>(1, 1, n, width, 0.5f, 1);
    const Eigen::Map<const row_matrix<float>> xm(x.data(), n, width);
    std::vector<row_matrix<float>> out(heads, row_matrix<float>(n, reals));
    for (auto _ : state) {
        // Threaded over heads as linear_attention does (inside it, Eigen's GEMMs run single-threaded).
        detail::parallel_for(heads, 0, [&](index h) {
            for (role which : {role::query, role::key}) pe.template encode_pre<float>(xm, out[h], 0, h, which);
        });
        benchmark::DoNotOptimize(out[0].data());
    }
    state.counters["tokens_per_s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
void BM_encode_sine(benchmark::State& state) { run_encode(state, positional::sine_spe<float>(heads, width, state.range(1), reals, 1, true)); }
void BM_encode_conv(benchmark::State& state)
{
    positional::conv_spe<float> pe(heads, width, state.range(1), reals, 1, true);
    pe.algorithm = static_cast<positional::conv_algorithm>(state.range(2));
    run_encode(state, pe);
}

// time(64k) / time(16k), both lengths run in every iteration, median of the pair ratios
// (bench::scaling_ratio). Args: N small, N big, mask, then K (sine) or W (conv).
template <class Positional>
void run_scaling(benchmark::State& state, const Positional& pe)
{
    options<float> opt;
    opt.mask = masking(state.range(2));
    const linear_attention<feature_maps::elu_plus_one, Positional, float> attn({}, pe, opt);
    bench::problem<float> small(heads, state.range(0), width), big(heads, state.range(1), width);
    bench::scaling_ratio(state, [&] { small.forward(attn); }, [&] { big.forward(attn); });
}
void BM_scaling_sine(benchmark::State& state) { run_scaling(state, positional::sine_spe<float>(heads, width, state.range(3), reals, 1, true)); }
void BM_scaling_conv(benchmark::State& state) { run_scaling(state, positional::conv_spe<float>(heads, width, state.range(3), reals, 1, true)); }

constexpr int none = int(masking::none), causal = int(masking::causal);
constexpr int automatic = int(positional::conv_algorithm::automatic), direct = int(positional::conv_algorithm::direct),
              via_fft = int(positional::conv_algorithm::fft);
} // namespace

// Sizes: N = 1k … 64k for the attention sweeps (args: N, mask, K or W, conv algorithm).
BENCHMARK(BM_plain)->Name("plain_linear")->ArgsProduct({{1 << 10, 1 << 12, 1 << 14, 1 << 16}, {none, causal}})->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_sine)->Name("sine_spe")->ArgsProduct({{1 << 10, 1 << 12, 1 << 14, 1 << 16}, {none, causal}, {1, 5, 10}})->Unit(benchmark::kMillisecond)->UseManualTime();
// convSPE's sweep stops at 16k: its 64k point (about 20 s) is in scaling_conv_spe.
BENCHMARK(BM_conv)->Name("conv_spe")->ArgsProduct({{1 << 10, 1 << 12, 1 << 14}, {none}, {128}, {automatic}})->Unit(benchmark::kMillisecond)->UseManualTime();
BENCHMARK(BM_encode_sine)->Name("encode_sine")->ArgsProduct({{1 << 12}, {1, 5, 10}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_encode_conv)->Name("encode_conv")->ArgsProduct({{1 << 12}, {8, 32, 64, 128, 200, 512, 1024}, {direct, via_fft}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_scaling_sine)->Name("scaling_sine_spe")->ArgsProduct({{1 << 14}, {1 << 16}, {none, causal}, {5}})->Iterations(7)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_scaling_conv)->Name("scaling_conv_spe")->ArgsProduct({{1 << 14}, {1 << 16}, {none}, {128}})->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
