// Serving: continuous-batching decode with slots at random positions vs the equal-position batched step
// (B·H = 64 sequences, D = M = E = 64, float, elu+1), and a packed variable-length prefill vs the padded
// batched call for equal lengths. Targets (the issue): each ratio within 1.10.
#include "bench_support.hpp"

#include <numeric>
#include <random>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index slots = 8, heads = 8, width = 64;

using attention = linear_attention<feature_maps::elu_plus_one, positional::none, float>;

attention make_attention(masking mask)
{
    options<float> opt;
    opt.mask = mask;
    return attention({}, {}, opt);
}

// One token for each of the 8 slots × 8 heads, from a decoder whose slots hold either `prefix` tokens each
// (equal positions: the plain batched step) or random prompts of 1..2·prefix tokens, restarted at random
// positions and stepped through the slot-list API (what a continuous-batching server calls).
struct serving {
    linrpe::decoder<attention> dec;
    std::vector<index> active;
    std::vector<float> q, k, v, out;
    bool random_positions;

    serving(const attention& attn, index prefix, bool random)
        : dec(attn.decoder(slots, heads)), active(static_cast<std::size_t>(slots)), q(bench::buffer<float>(slots, heads, 1, width, 0.5f, 4)),
          k(bench::buffer<float>(slots, heads, 1, width, 0.5f, 5)), v(bench::buffer<float>(slots, heads, 1, width, 1.0f, 6)),
          out(q.size()), random_positions(random)
    {
        std::iota(active.begin(), active.end(), index(0));
        std::mt19937 gen(7);
        for (index s = 0; s < slots; ++s) {
            const index n = random ? 1 + index(gen() % std::uint32_t(2 * prefix)) : prefix;
            if (random) dec.restart(s, index(gen() % 100000));
            const auto pq = bench::buffer<float>(1, heads, n, width, 0.5f, 1), pk = bench::buffer<float>(1, heads, n, width, 0.5f, 2),
                       pv = bench::buffer<float>(1, heads, n, width, 1.0f, 3);
            std::vector<float> pout(pq.size());
            dec.prefill(s, view_bhnd(pq.data(), 1, heads, n, width), view_bhnd(pk.data(), 1, heads, n, width),
                        view_bhnd(pv.data(), 1, heads, n, width), view_bhnd(pout.data(), 1, heads, n, width));
        }
    }
    void step()
    {
        const auto in = [](const std::vector<float>& x) { return view_bhnd(x.data(), slots, heads, 1, width); };
        if (random_positions) dec.step(active, in(q), in(k), in(v), view_bhnd(out.data(), slots, heads, 1, width));
        else dec.step(in(q), in(k), in(v), view_bhnd(out.data(), slots, heads, 1, width));
        benchmark::DoNotOptimize(out.data());
    }
};

void BM_serving_step(benchmark::State& state)
{
    const attention attn = make_attention(masking::causal);
    serving s(attn, 1024, state.range(0) != 0);
    for (auto _ : state) s.step();
    state.counters["tokens_per_s"] = benchmark::Counter(double(slots * heads), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["random_positions"] = double(state.range(0));
}

// Paired: 256 continuous-batching steps over 256 equal-position steps (median ratio; target <= 1.10).
void BM_serving_step_ratio(benchmark::State& state)
{
    constexpr int steps = 256;
    const attention attn = make_attention(masking::causal);
    serving equal(attn, 1024, false), random(attn, 1024, true);
    bench::scaling_ratio(state, [&] { for (int i = 0; i < steps; ++i) equal.step(); },
                         [&] { for (int i = 0; i < steps; ++i) random.step(); }, "random_over_equal");
}

// 8 sequences of range(0) tokens × 8 heads: packed (1, H, 8·n, D) with cu_seqlens vs padded (8, H, n, D).
struct prefill_problem {
    index n;
    std::vector<float> q, k, v, out;
    std::vector<index> cu;

    explicit prefill_problem(index n_)
        : n(n_), q(bench::buffer<float>(slots, heads, n_, width, 0.5f, 1)), k(bench::buffer<float>(slots, heads, n_, width, 0.5f, 2)),
          v(bench::buffer<float>(slots, heads, n_, width, 1.0f, 3)), out(q.size())
    {
        for (index b = 0; b <= slots; ++b) cu.push_back(b * n);
    }
    void padded(const attention& attn)
    {
        const auto in = [&](const std::vector<float>& x) { return view_bhnd(x.data(), slots, heads, n, width); };
        attn.forward(in(q), in(k), in(v), view_bhnd(out.data(), slots, heads, n, width));
        benchmark::DoNotOptimize(out.data());
    }
    // Packed (1, H, T, D) views of the same sizes and the same contiguous rows per head (T = B·N): only the
    // layout of sequences differs (one after another inside each head), so the ratio isolates the call.
    void packed(const attention& attn)
    {
        const index t = slots * n;
        const auto in = [&](const std::vector<float>& x) { return tensor_view<const float>(x.data(), 1, heads, t, width, 0, t * width, width); };
        attn.forward_packed(in(q), in(k), in(v), tensor_view<float>(out.data(), 1, heads, t, width, 0, t * width, width), cu);
        benchmark::DoNotOptimize(out.data());
    }
};

// Paired: packed over padded prefill for equal lengths (median ratio; target <= 1.10). range(1): causal.
void BM_packed_prefill_ratio(benchmark::State& state)
{
    const attention attn = make_attention(state.range(1) ? masking::causal : masking::none);
    prefill_problem p(state.range(0));
    bench::scaling_ratio(state, [&] { p.padded(attn); }, [&] { p.packed(attn); }, "packed_over_padded");
    state.counters["tokens_per_s_packed"] = double(slots * p.n) / (state.counters["big_ms"] * 1e-3);
}
} // namespace

BENCHMARK(BM_serving_step)->Name("serving_step")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_serving_step_ratio)->Name("serving_step_ratio")->Iterations(41)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_packed_prefill_ratio)->Name("packed_prefill_ratio")->Args({512, 0})->Args({512, 1})->Iterations(21)->Unit(benchmark::kMillisecond)->UseRealTime();
