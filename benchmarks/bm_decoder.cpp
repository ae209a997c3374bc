// Streaming decode: cost of one step (B·H = 8 sequences, D = M = E = 64, float, elu+1) after a prefill of
// p tokens. The state is O(M·E) per sequence, so the step cost must not grow with p. decoder_step_threads:
// one step with options::threads = 1 and 2 for B·H = 1, 8, 64 (a step must not pay for waking threads).
#include "bench_support.hpp"

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index sequences = 8, width = 64;

using attention = linear_attention<feature_maps::elu_plus_one, positional::none, float>;

attention make_attention(int threads = 0)
{
    options<float> opt;
    opt.mask = masking::causal;
    opt.threads = threads;
    return attention({}, {}, opt);
}

// A decoder of `attn` for B·H = `heads` sequences that has consumed `prefix` tokens, and the inputs of one step.
struct prefilled {
    index heads;
    linrpe::decoder<attention> dec;
    std::vector<float> q, k, v, out;

    prefilled(const attention& attn, index prefix, index bh = sequences)
        : heads(bh), dec(attn.decoder(1, heads)), q(bench::buffer<float>(1, heads, 1, width, 0.5f, 4)),
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
    state.counters["tokens_per_s"] = benchmark::Counter(double(sequences), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["prefill"] = double(state.range(0));
}

// One step of B·H = range(0) sequences after 1024 tokens, with options::threads = range(1).
void BM_decoder_step_threads(benchmark::State& state)
{
    const index bh = state.range(0);
    const attention attn = make_attention(static_cast<int>(state.range(1)));
    prefilled p(attn, 1 << 10, bh);
    for (auto _ : state) p.step();
    state.counters["tokens_per_s"] = benchmark::Counter(double(bh), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["sequences"] = double(bh);
    state.counters["threads"] = double(state.range(1));
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

// Step time with 2 threads over 1 thread for B·H = range(0), as the median of paired timings of 256 steps.
void BM_decoder_threads_ratio(benchmark::State& state)
{
    constexpr int steps = 256;
    const attention one = make_attention(1), two = make_attention(2);
    prefilled serial(one, 1 << 10, state.range(0)), threaded(two, 1 << 10, state.range(0));
    bench::scaling_ratio(state, [&] { for (int i = 0; i < steps; ++i) serial.step(); },
                         [&] { for (int i = 0; i < steps; ++i) threaded.step(); }, "threads_ratio");
}
} // namespace

BENCHMARK(BM_decoder_step)->Name("decoder_step")->Arg(1 << 10)->Arg(1 << 16)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_decoder_step_threads)->Name("decoder_step_threads")->ArgsProduct({{1, 8, 64}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_decoder_threads_ratio)->Name("decoder_threads_ratio")->Arg(1)->Arg(8)->Arg(64)->Iterations(41)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decoder_ratio)->Name("decoder_step_ratio")->Args({1 << 10, 1 << 16})->Iterations(41)->Unit(benchmark::kMillisecond)->UseRealTime();
