// "As called": the headline configurations the way a plain program runs them — the public batched API in a
// loop, the default allocator, inputs and outputs allocated once, nothing else kept alive between calls but
// the attention object itself (a model keeps its layers). No roofline pass, no other buffers warming the
// heap. scripts/run bench runs every case of this binary in a fresh process of its own (run_all.sh), so one
// case's heap never flatters another's. Each case is named after the in-binary benchmark it shadows:
// render_report.py pairs them and reports time(as called) / time(in-benchmark).
//
//   build/release/benchmarks/bm_as_called --benchmark_filter='as_called/linear_noncausal/16384$'
#include <benchmark/benchmark.h>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

#include <cmath>
#include <cstdlib>
#include <vector>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index width = 64;

std::vector<float> inputs(index size, float scale, unsigned seed)
{
    std::vector<float> x(static_cast<std::size_t>(size));
    std::srand(seed);
    for (auto& e : x) e = scale * (2.0f * static_cast<float>(std::rand()) / static_cast<float>(RAND_MAX) - 1.0f);
    return x;
}

// The loop a user writes: forward on the same buffers, call after call.
template <class Positional>
void run(benchmark::State& state, index heads, Positional pe, options<float> opt)
{
    const index n = state.range(0);
    const auto q = inputs(heads * n * width, 0.5f, 1), k = inputs(heads * n * width, 0.5f, 2), v = inputs(heads * n * width, 1.0f, 3);
    std::vector<float> out(q.size());
    const linear_attention<feature_maps::elu_plus_one, Positional, float> attn({}, std::move(pe), opt);
    for (auto _ : state) {
        attn.forward(view_bhnd(q.data(), 1, heads, n, width), view_bhnd(k.data(), 1, heads, n, width),
                     view_bhnd(v.data(), 1, heads, n, width), view_bhnd(out.data(), 1, heads, n, width));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.counters["tokens_per_s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

options<float> make_options(masking mask, normalization norm = normalization::sum)
{
    options<float> opt;
    opt.mask = mask;
    opt.norm = norm;
    return opt;
}

void linear_noncausal(benchmark::State& s) { run(s, 8, positional::none(), make_options(masking::none)); }
void linear_causal(benchmark::State& s) { run(s, 8, positional::none(), make_options(masking::causal)); }

template <lrpe_kind Kind, masking Mask>
void lrpe(benchmark::State& s)
{
    run(s, 8, positional::lrpe<float>(Kind, width, 8), make_options(Mask, normalization::rms));
}
void sine_spe(benchmark::State& s) { run(s, 8, positional::sine_spe<float>(8, width, 5, 64, 1, true), make_options(masking::none)); }
void conv_spe(benchmark::State& s) { run(s, 8, positional::conv_spe<float>(8, width, 128, 64, 1, true), make_options(masking::none)); }

// bm_toeplitz's bias (one head): a smooth decaying bias with a ripple.
template <toeplitz_algorithm Algo>
void toeplitz(benchmark::State& s)
{
    const index n = s.range(0), t_max = s.range(1) > 0 ? s.range(1) : n;
    positional::toeplitz_rpe<float> pe(1, t_max);
    for (index t = -(t_max - 1); t < t_max; ++t)
        pe.bias(0, t + t_max - 1) = static_cast<float>(-0.01 * std::abs(double(t)) + 0.1 * std::sin(0.05 * double(t)));
    options<float> opt = make_options(masking::none);
    opt.toeplitz = Algo;
    run(s, 1, pe, opt);
}

} // namespace

#define LINRPE_AS_CALLED(fn, name) BENCHMARK(fn)->Name("as_called/" name)->Unit(benchmark::kMillisecond)->UseRealTime()
LINRPE_AS_CALLED(linear_noncausal, "linear_noncausal")->Arg(1 << 14);
LINRPE_AS_CALLED(linear_causal, "linear_causal")->Arg(1 << 14);
LINRPE_AS_CALLED((lrpe<lrpe_kind::rotate, masking::none>), "noncausal/rotate")->Arg(1 << 14);
LINRPE_AS_CALLED((lrpe<lrpe_kind::rotate, masking::causal>), "causal/rotate")->Arg(1 << 14);
LINRPE_AS_CALLED((lrpe<lrpe_kind::cosine, masking::none>), "noncausal/cosine")->Arg(1 << 14);
LINRPE_AS_CALLED((lrpe<lrpe_kind::cosine, masking::causal>), "causal/cosine")->Arg(1 << 14);
LINRPE_AS_CALLED((lrpe<lrpe_kind::permutation, masking::causal>), "causal/permutation")->Arg(1 << 14);
LINRPE_AS_CALLED(sine_spe, "sine_spe")->Args({1 << 14, 0, 5});
LINRPE_AS_CALLED(conv_spe, "conv_spe")->Args({1 << 14, 0, 128, 0})->Iterations(3);
LINRPE_AS_CALLED(toeplitz<toeplitz_algorithm::banded>, "toeplitz_banded")->Args({1 << 14, 128});
LINRPE_AS_CALLED(toeplitz<toeplitz_algorithm::fft>, "toeplitz_fft")->Args({1 << 14, 0});
LINRPE_AS_CALLED(toeplitz<toeplitz_algorithm::dense>, "toeplitz_dense")->Args({8192, 0});
