// Streaming decode: cost of one step (B·H = 8 sequences, D = M = E = 64, float, elu+1) after a prefill of
// p tokens. The state is O(M·E) per sequence, so the step cost must not grow with p.
#include "bench_support.hpp"

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64;

using attention = linear_attention<feature_maps::elu_plus_one, positional::none, float>;

attention make_attention()
{
    options<float> opt;
    opt.mask = masking::causal;
    return attention({}, {}, opt);
}

// A decoder of `attn` for B·H = 8 sequences that has consumed `prefix` tokens, and the inputs of one step.
struct prefilled {
    linrpe::decoder<attention> dec;
    std::vector<float> q, k, v, out;

    prefilled(const attention& attn, index prefix)
        : dec(attn.decoder(1, heads)), q(bench::buffer<float>(1, heads, 1, width, 0.5f, 4)),
          k(bench::buffer<float>(1, heads, 1, width, 0.5f, 5)), v(bench::buffer<float>(1, heads, 1, width, 1.0f, 6)),
          out(q.size())
    {
        const auto pq = bench::buffer<float>(1, heads, prefix, width, 0.5f, 1), pk = bench::buffer<float>(1, heads, prefix, width, 0.5f, 2),
                   pv = bench::buffer<float>(1, heads, prefix, width, 1.0f, 3);
        std::vector<float> pout(pq.size());
        dec.prefill(view_bhnd(pq.data(), 1, heads, prefix, width), view_bhnd(pk.data(), 1, heads, prefix, width),
                    view_bhnd(pv.data(), 1, heads, prefix, width), view_bhnd(pout.data(), 1, heads, prefix, width));
    }
    void step()
    {
        dec.step(view_bhnd(q.data(), 1, heads, 1, width), view_bhnd(k.data(), 1, heads, 1, width),
                 view_bhnd(v.data(), 1, heads, 1, width), view_bhnd(out.data(), 1, heads, 1, width));
        benchmark::DoNotOptimize(out.data());
    }
};

void BM_decoder_step(benchmark::State& state)
{
    const attention attn = make_attention();
    prefilled p(attn, state.range(0));
    for (auto _ : state) p.step();
    // One step emits one token for each of the B·H = 8 sequences.
    state.counters["steps_per_s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["tokens_per_s"] = benchmark::Counter(double(heads), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["prefill"] = double(state.range(0));
}

// The target: step cost after range(1) tokens over the cost after range(0), as the median of paired
// timings (bench::scaling_ratio), each of 256 steps of the two decoders run alternately.
void BM_decoder_ratio(benchmark::State& state)
{
    constexpr int steps = 256;
    const attention attn = make_attention();
    prefilled early(attn, state.range(0)), late(attn, state.range(1));
    bench::scaling_ratio(state, [&] { for (int i = 0; i < steps; ++i) early.step(); },
                         [&] { for (int i = 0; i < steps; ++i) late.step(); });
}
} // namespace

BENCHMARK(BM_decoder_step)->Name("decoder_step")->Arg(1 << 10)->Arg(1 << 16)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_decoder_ratio)->Name("decoder_step_ratio")->Args({1 << 10, 1 << 16})->Iterations(41)->Unit(benchmark::kMillisecond)->UseRealTime();
