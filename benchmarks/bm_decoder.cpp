// Streaming decode: cost of one step (B·H = 8 sequences, D = M = E = 64, float, elu+1) after a prefill of
// p tokens. The state is O(M·E) per sequence, so the step cost must not grow with p.
#include "bench_support.hpp"

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64;

void BM_decoder_step(benchmark::State& state)
{
    const index prefix = state.range(0);
    options<float> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    auto dec = attn.decoder(1, heads);
    {
        const auto q = bench::buffer<float>(1, heads, prefix, width, 0.5f, 1), k = bench::buffer<float>(1, heads, prefix, width, 0.5f, 2),
                   v = bench::buffer<float>(1, heads, prefix, width, 1.0f, 3);
        std::vector<float> out(q.size());
        dec.prefill(view_bhnd(q.data(), 1, heads, prefix, width), view_bhnd(k.data(), 1, heads, prefix, width),
                    view_bhnd(v.data(), 1, heads, prefix, width), view_bhnd(out.data(), 1, heads, prefix, width));
    }
    const auto q = bench::buffer<float>(1, heads, 1, width, 0.5f, 4), k = bench::buffer<float>(1, heads, 1, width, 0.5f, 5),
               v = bench::buffer<float>(1, heads, 1, width, 1.0f, 6);
    std::vector<float> out(q.size());
    for (auto _ : state) {
        dec.step(view_bhnd(q.data(), 1, heads, 1, width), view_bhnd(k.data(), 1, heads, 1, width),
                 view_bhnd(v.data(), 1, heads, 1, width), view_bhnd(out.data(), 1, heads, 1, width));
        benchmark::DoNotOptimize(out.data());
    }
    // One step emits one token for each of the B·H = 8 sequences.
    state.counters["steps_per_s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["tokens_per_s"] = benchmark::Counter(double(heads), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["prefill"] = double(prefix);
}
} // namespace

BENCHMARK(BM_decoder_step)->Name("decoder_step")->Arg(1 << 10)->Arg(1 << 16)->Unit(benchmark::kMicrosecond)->UseRealTime();
