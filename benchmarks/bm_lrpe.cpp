// LRPE cost over plain linear attention (elu+1, float, B = 1, H = 8, D = M = E = 64, batched API): the
// targets at N = 16k are rotate ≤ 1.3× and cosine ≤ 2.3× positional::none (cosine doubles M' = 2M, so the
// GEMMs double). Every case uses normalization::rms (LRPE scores are signed) so only the encoding differs.
// Also: the encoding alone (encode_post on N rows), to show where the time goes.
#include "bench_support.hpp"

#include <linrpe/positional/lrpe.hpp>

#include <chrono>

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index heads = 8, width = 64;

enum class variant { none, rotate, rotate_half_split, rotate_householder, cosine, permutation };

positional::lrpe<float> make_lrpe(variant v)
{
    lrpe_options opt;
    switch (v) {
    case variant::rotate_half_split: opt.layout = lrpe_layout::half_split; return positional::lrpe<float>(lrpe_kind::rotate, width, heads, opt);
    case variant::rotate_householder: opt.basis = lrpe_basis::householder; return positional::lrpe<float>(lrpe_kind::rotate, width, heads, opt);
    case variant::cosine: return positional::lrpe<float>(lrpe_kind::cosine, width, heads, opt);
    case variant::permutation: return positional::lrpe<float>(lrpe_kind::permutation, width, heads, opt);
    default: return positional::lrpe<float>(lrpe_kind::rotate, width, heads, opt);
    }
}

template <class Attention>
void run(benchmark::State& state, const Attention& attn, index n, index m_prime)
{
    bench::problem<float> p(heads, n, width);
    // Roofline of the same GEMM shapes with the encoded width M' (Φkᵀ V and Φq S).
    bench::run_against_roofline<float>(state, heads, n, m_prime, width, [&] { p.forward(attn); });
    state.SetComplexityN(n);
}

template <masking Mask, variant V>
void BM_attention(benchmark::State& state)
{
    const index n = state.range(0);
    options<float> opt;
    opt.mask = Mask;
    opt.norm = normalization::rms;
    if constexpr (V == variant::none) {
        const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
        run(state, attn, n, width);
    } else {
        const linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float> attn({}, make_lrpe(V), opt);
        run(state, attn, n, attn.encoded_dim(width));
    }
}

// encode_post alone on (N, 64) rows of one head: the per-call overhead LRPE adds twice per head.
template <variant V>
void BM_encode(benchmark::State& state)
{
    const index n = state.range(0);
    const auto pe = make_lrpe(V);
    const row_matrix<float> phi = row_matrix<float>::Random(n, width).array() + 1.0f;
    row_matrix<float> out(n, pe.post_output_dim(width));
    for (auto _ : state) {
        pe.encode_post<float>(phi, out, 1000, 3, role::key);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.counters["rows_per_s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

#define LRPE_BM(MASK, VAR, NAME)                                                                                        \
    BENCHMARK_TEMPLATE(BM_attention, MASK, VAR)->Name(NAME)->RangeMultiplier(4)->Range(1 << 10, 1 << 16)               \
        ->Unit(benchmark::kMillisecond)->UseManualTime()

LRPE_BM(masking::none, variant::none, "noncausal/none");
LRPE_BM(masking::none, variant::rotate, "noncausal/rotate");
LRPE_BM(masking::none, variant::cosine, "noncausal/cosine");
LRPE_BM(masking::none, variant::rotate_half_split, "noncausal/rotate_half_split");
LRPE_BM(masking::none, variant::rotate_householder, "noncausal/rotate_householder");
LRPE_BM(masking::none, variant::permutation, "noncausal/permutation");
LRPE_BM(masking::causal, variant::none, "causal/none");
LRPE_BM(masking::causal, variant::rotate, "causal/rotate");
LRPE_BM(masking::causal, variant::cosine, "causal/cosine");
LRPE_BM(masking::causal, variant::rotate_half_split, "causal/rotate_half_split");
LRPE_BM(masking::causal, variant::rotate_householder, "causal/rotate_householder");
LRPE_BM(masking::causal, variant::permutation, "causal/permutation");

BENCHMARK_TEMPLATE(BM_encode, variant::rotate)->Name("encode/rotate")->Arg(1 << 14)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_encode, variant::rotate_half_split)->Name("encode/rotate_half_split")->Arg(1 << 14)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_encode, variant::cosine)->Name("encode/cosine")->Arg(1 << 14)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_encode, variant::permutation)->Name("encode/permutation")->Arg(1 << 14)->Unit(benchmark::kMicrosecond);

// The acceptance figure: none, rotate and cosine run back to back in every iteration (same inputs, same
// process, interleaved so that load from other processes hits all three alike). Counters: ratio of total
// times, and ratio of best (minimum) times, which is the least sensitive to interference. none with `sum`
// normalization is timed too (none_sum_best_ms): the usual plain linear attention, for reference.
template <masking Mask>
void BM_ratio(benchmark::State& state)
{
    const index n = state.range(0);
    options<float> opt;
    opt.mask = Mask;
    opt.norm = normalization::rms;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> plain({}, {}, opt);
    options<float> sum_opt = opt; // plain linear attention as usually run (Katharopoulos et al.): sum
    sum_opt.norm = normalization::sum;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> plain_sum({}, {}, sum_opt);
    const linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float> rot({}, make_lrpe(variant::rotate), opt),
        cosine({}, make_lrpe(variant::cosine), opt);
    const auto q = bench::buffer<float>(1, heads, n, width, 0.5f, 1), k = bench::buffer<float>(1, heads, n, width, 0.5f, 2),
               v = bench::buffer<float>(1, heads, n, width, 1.0f, 3);
    std::vector<float> out(q.size());
    double total[4] = {0, 0, 0, 0}, best[4] = {1e30, 1e30, 1e30, 1e30};
    const auto time_one = [&](const auto& attn, int slot) {
        const auto t0 = std::chrono::steady_clock::now();
        attn.forward(view_bhnd(q.data(), 1, heads, n, width), view_bhnd(k.data(), 1, heads, n, width),
                     view_bhnd(v.data(), 1, heads, n, width), view_bhnd(out.data(), 1, heads, n, width));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        total[slot] += t;
        best[slot] = std::min(best[slot], t);
    };
    for (auto _ : state) {
        time_one(plain, 0);
        time_one(rot, 1);
        time_one(cosine, 2);
        time_one(plain_sum, 3);
    }
    state.counters["none_best_ms"] = best[0] * 1e3;
    state.counters["rotate_best_ms"] = best[1] * 1e3;
    state.counters["cosine_best_ms"] = best[2] * 1e3;
    state.counters["rotate_ratio_best"] = best[1] / best[0];
    state.counters["cosine_ratio_best"] = best[2] / best[0];
    state.counters["none_sum_best_ms"] = best[3] * 1e3;
    state.counters["rotate_ratio_total"] = total[1] / total[0];
    state.counters["cosine_ratio_total"] = total[2] / total[0];
}
// time(64k) / time(16k), both lengths run in every iteration, median of the pair ratios
// (bench::scaling_ratio): the scaling target, free of the drift between separate sweep entries.
template <masking Mask, variant V>
void BM_scaling(benchmark::State& state)
{
    options<float> opt;
    opt.mask = Mask;
    opt.norm = normalization::rms;
    const linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float> attn({}, make_lrpe(V), opt);
    bench::problem<float> small(heads, state.range(0), width), big(heads, state.range(1), width);
    bench::scaling_ratio(state, [&] { small.forward(attn); }, [&] { big.forward(attn); });
}
#define LRPE_SCALING(MASK, VAR, NAME)                                                                                   \
    BENCHMARK_TEMPLATE(BM_scaling, MASK, VAR)->Name(NAME)->Args({1 << 14, 1 << 16})->Iterations(9)                    \
        ->Unit(benchmark::kMillisecond)->UseRealTime()
LRPE_SCALING(masking::none, variant::rotate, "scaling/noncausal/rotate");
LRPE_SCALING(masking::none, variant::cosine, "scaling/noncausal/cosine");
LRPE_SCALING(masking::none, variant::permutation, "scaling/noncausal/permutation");
LRPE_SCALING(masking::causal, variant::rotate, "scaling/causal/rotate");
LRPE_SCALING(masking::causal, variant::cosine, "scaling/causal/cosine");
LRPE_SCALING(masking::causal, variant::permutation, "scaling/causal/permutation");

BENCHMARK_TEMPLATE(BM_ratio, masking::none)->Name("ratio/noncausal")->Arg(1 << 14)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_ratio, masking::causal)->Name("ratio/causal")->Arg(1 << 14)->Unit(benchmark::kMillisecond)->UseRealTime();

} // namespace
