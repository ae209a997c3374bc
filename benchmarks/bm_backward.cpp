// Backward of the core (positional::none, elu+1, `sum`, float, B = 1, H = 8, D = M = E = 64), non-causal and
// causal: time against the in-binary GEMM roofline, backward / forward time (paired), 64k / 16k scaling
// (paired); LRPE rotate and cosine with learned θ: backward including θ's gradient / forward at 16k (paired). Extra memory: benchmarks/bm_memory.cpp (memory_backward_*).
//
// FLOPs counted per head (M = E = 64, Ex = E + 1 under `sum`): the GEMM-form backward does
//     recomputed state S = Κᵀ V̄   2·N·M·Ex      dΨ = G Sᵀ   2·N·M·Ex      U = Ψᵀ G   2·N·M·Ex
//     dΚ = V̄ Uᵀ                   2·N·M·Ex      dV = Κ U    2·N·M·E
// ≈ 10·N·M·E useful flops (the forward: 4·N·M·E). The causal form adds N·C·(6·M + 4·E) in-chunk flops and
// 2·N·M·Ex for the block prefix states it recomputes (detail::causal_backward) that the count leaves out (as
// bm_core does for the forward), so its ratio is against the same useful work.
// The roofline pass times 4·N·M·E flops of GEMM; roofline_ratio scales it by 10/4.
#include "bench_support.hpp"

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index n_heads = 8, d_width = 64; // not `heads`/`width`: bench::problem has members of those names
constexpr double useful_over_roofline = 10.0 / 4.0;

// Inputs, a fixed seed dOut and the gradient buffers of one (1, H, N, 64) problem, with a workspace kept
// across calls (as a training loop would).
struct backward_problem : bench::problem<float> {
    std::vector<float> dout, dq, dk, dv;
    workspace<float> ws;

    explicit backward_problem(index n)
        : bench::problem<float>(n_heads, n, d_width), dout(bench::buffer<float>(1, n_heads, n, d_width, 1.0f, 4)), dq(q.size()),
          dk(k.size()), dv(v.size())
    {
    }
    template <class Attention>
    void backward(const Attention& attn, typename Attention::parameter_gradients* pg = nullptr)
    {
        const auto in = [&](const std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
        const auto out = [&](std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
        attn.backward(in(q), in(k), in(v), in(dout), out(dq), out(dk), out(dv), 0, &ws, pg);
        benchmark::DoNotOptimize(dq.data());
        benchmark::ClobberMemory();
    }
};

using elu_attention = linear_attention<feature_maps::elu_plus_one, positional::none, float>;

elu_attention make(masking mask)
{
    options<float> opt;
    opt.mask = mask;
    return elu_attention({}, {}, opt);
}

template <masking Mask>
void BM_backward(benchmark::State& state)
{
    const index n = state.range(0);
    backward_problem p(n);
    const elu_attention attn = make(Mask);
    p.backward(attn); // first call sizes the workspace
    bench::run_against_roofline<float>(state, n_heads, n, d_width, d_width, [&] { p.backward(attn); });
    const double roofline_s = state.counters["roofline_s"].value;
    const double ratio = state.counters["roofline_ratio"].value;
    bench::set_counters(state, double(n), useful_over_roofline * 4.0 * double(n_heads) * double(n) * d_width * d_width, roofline_s);
    state.counters["roofline_ratio"] = ratio * useful_over_roofline;
    state.SetComplexityN(n);
}

// backward time / forward time at one length, the two alternating (bench::scaling_ratio).
template <masking Mask>
void BM_backward_over_forward(benchmark::State& state)
{
    backward_problem p(state.range(0));
    const elu_attention attn = make(Mask);
    p.backward(attn);
    bench::scaling_ratio(state, [&] { p.forward(attn); }, [&] { p.backward(attn); }, "bwd_over_fwd");
}

// time(64k) / time(16k) of the backward, both lengths in every iteration.
template <masking Mask>
void BM_backward_scaling(benchmark::State& state)
{
    backward_problem small(state.range(0)), big(state.range(1));
    const elu_attention attn = make(Mask);
    small.backward(attn);
    big.backward(attn);
    bench::scaling_ratio(state, [&] { small.backward(attn); }, [&] { big.backward(attn); });
}

// LRPE (rotate M' = M, cosine M' = 2M) with θ learned (explicit values: trainable) on elu+1 features under
// rms (LRPE scores are signed): backward including θ's gradient / forward, paired as above.
using lrpe_attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float>;

template <lrpe_kind Kind, masking Mask>
void BM_lrpe_backward_over_forward(benchmark::State& state)
{
    backward_problem p(state.range(0));
    positional::lrpe<float> pe(Kind, d_width, n_heads);
    pe.set_theta(row_matrix<double>(pe.theta)); // the RoPE schedule as trained-looking explicit values
    options<float> opt;
    opt.mask = Mask;
    opt.norm = normalization::rms;
    const lrpe_attention attn({}, pe, opt);
    auto pg = attn.make_parameter_gradients(); // accumulates over the iterations, as .grad between zeroings
    p.backward(attn, &pg);
    bench::scaling_ratio(state, [&] { p.forward(attn); }, [&] { p.backward(attn, &pg); }, "bwd_over_fwd");
    benchmark::DoNotOptimize(pg.theta.data());
}

void lengths(benchmark::internal::Benchmark* b)
{
    b->ArgNames({"N"});
    for (std::int64_t n = 1 << 10; n <= (1 << 16); n *= 4) b->Arg(n);
    b->Unit(benchmark::kMillisecond)->UseManualTime();
}
} // namespace

BENCHMARK_TEMPLATE(BM_backward, masking::none)->Name("backward_noncausal")->Apply(lengths);
BENCHMARK_TEMPLATE(BM_backward, masking::causal)->Name("backward_causal")->Apply(lengths);
BENCHMARK_TEMPLATE(BM_backward_over_forward, masking::none)->Name("bwd_over_fwd_noncausal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_backward_over_forward, masking::causal)->Name("bwd_over_fwd_causal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_backward_scaling, masking::none)->Name("scaling_backward_noncausal")->Args({1 << 14, 1 << 16})->Iterations(7)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_backward_scaling, masking::causal)->Name("scaling_backward_causal")->Args({1 << 14, 1 << 16})->Iterations(7)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- SPE (issue 15): backward including parameter gradients / forward -----------------------------------
//
// Gated sineSPE (K = 5) and convSPE (W = 128) as in the papers' music models: D = E = 64, R = 64 realizations,
// elu+1 on the R-wide codes (M = 64), float, B = 1. sineSPE with H = 8 heads; convSPE with H = 2, because its
// forward alone is O(N·D·R·W) (≈ 26 GFLOP per head and role at N = 16k) plus N·D·R normals per role. The
// backward recomputes each code block twice (features, then the hook's VJP) and adds one GEMM of the
// forward's size (du Yᵀ for sine, du Zᵀ tiles for conv), so about 3× the encoding's work, plus the core's.
namespace {
constexpr index spe_realizations = 64;

template <class Spe>
struct spe_problem : bench::problem<float> {
    using attention = linear_attention<feature_maps::elu_plus_one, Spe, float>;
    std::vector<float> dout, dq, dk, dv;
    workspace<float> ws;
    attention attn;
    typename Spe::parameter_gradients pg;

    spe_problem(index h, index n, const Spe& spe, masking mask)
        : bench::problem<float>(h, n, d_width), dout(bench::buffer<float>(1, h, n, d_width, 1.0f, 4)), dq(q.size()), dk(k.size()),
          dv(v.size()), attn({}, spe, masked(mask)), pg(spe.make_parameter_gradients())
    {
    }
    static options<float> masked(masking mask)
    {
        options<float> opt;
        opt.mask = mask;
        return opt;
    }
    void backward()
    {
        const auto in = [&](const std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
        const auto out = [&](std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
        attn.backward(in(q), in(k), in(v), in(dout), out(dq), out(dk), out(dv), 0, &ws, &pg);
        benchmark::DoNotOptimize(pg);
        benchmark::ClobberMemory();
    }
};

template <class Spe>
void spe_backward_over_forward(benchmark::State& state, index h, const Spe& spe, masking mask)
{
    spe_problem<Spe> p(h, state.range(0), spe, mask);
    p.backward(); // sizes the workspace
    bench::scaling_ratio(state, [&] { p.forward(p.attn); }, [&] { p.backward(); }, "bwd_over_fwd");
}

template <masking Mask>
void BM_sine_spe_backward_over_forward(benchmark::State& state)
{
    spe_backward_over_forward(state, n_heads, positional::sine_spe<float>(n_heads, d_width, 5, spe_realizations, 1, true), Mask);
}
template <masking Mask>
void BM_conv_spe_backward_over_forward(benchmark::State& state)
{
    spe_backward_over_forward(state, 2, positional::conv_spe<float>(2, d_width, 128, spe_realizations, 1, true), Mask);
}
} // namespace

BENCHMARK_TEMPLATE(BM_sine_spe_backward_over_forward, masking::none)->Name("spe_sine_k5_bwd_over_fwd_noncausal")->Arg(1 << 14)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_sine_spe_backward_over_forward, masking::causal)->Name("spe_sine_k5_bwd_over_fwd_causal")->Arg(1 << 14)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_conv_spe_backward_over_forward, masking::none)->Name("spe_conv_w128_bwd_over_fwd_noncausal")->Arg(1 << 14)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_conv_spe_backward_over_forward, masking::causal)->Name("spe_conv_w128_bwd_over_fwd_causal")->Arg(1 << 14)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_lrpe_backward_over_forward, lrpe_kind::rotate, masking::none)->Name("lrpe_rotate_bwd_over_fwd_noncausal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_lrpe_backward_over_forward, lrpe_kind::rotate, masking::causal)->Name("lrpe_rotate_bwd_over_fwd_causal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_lrpe_backward_over_forward, lrpe_kind::cosine, masking::none)->Name("lrpe_cosine_bwd_over_fwd_noncausal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_lrpe_backward_over_forward, lrpe_kind::cosine, masking::causal)->Name("lrpe_cosine_bwd_over_fwd_causal")->Arg(1 << 14)->Iterations(9)->Unit(benchmark::kMillisecond)->UseRealTime();

// ==== Toeplitz RPE backward, parameter gradients included (issue 15) =========================================
// backward (dq, dk, dv and ∂L/∂b of every head, accumulated into a parameter_gradients value) / forward at
// N = 16k, B = 1, H = 8, D = M = E = 64, float, `sum`: banded with T_max = 128 (both masks) and fft with the
// unclipped T_max = N (non-causal). Paired runs, median of the pair ratios (bench::scaling_ratio); the
// target is <= 3. Biases b_t = −0.01|t| + 0.1 sin(0.05 t) on every head (as bm_toeplitz).
namespace {
using toeplitz_attention = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<float>, float>;

toeplitz_attention make_toeplitz(masking mask, toeplitz_algorithm algo, index t_max)
{
    positional::toeplitz_rpe<float> pe(n_heads, t_max);
    for (index h = 0; h < n_heads; ++h)
        for (index t = -(t_max - 1); t < t_max; ++t)
            pe.bias(h, t + t_max - 1) = static_cast<float>(-0.01 * std::abs(double(t)) + 0.1 * std::sin(0.05 * double(t)));
    options<float> opt;
    opt.mask = mask;
    opt.toeplitz = algo;
    return toeplitz_attention({}, pe, opt);
}

template <masking Mask, toeplitz_algorithm Algo>
void BM_toeplitz_backward_over_forward(benchmark::State& state)
{
    const index n = state.range(0), t_max = state.range(1) > 0 ? state.range(1) : n;
    backward_problem p(n);
    const toeplitz_attention attn = make_toeplitz(Mask, Algo, t_max);
    auto pg = attn.make_parameter_gradients();
    const auto in = [&](const std::vector<float>& x) { return view_bhnd(x.data(), 1, n_heads, n, d_width); };
    const auto out = [&](std::vector<float>& x) { return view_bhnd(x.data(), 1, n_heads, n, d_width); };
    const auto backward = [&] {
        attn.backward(in(p.q), in(p.k), in(p.v), in(p.dout), out(p.dq), out(p.dk), out(p.dv), 0, &p.ws, &pg);
        benchmark::DoNotOptimize(pg.biases.data());
        benchmark::ClobberMemory();
    };
    backward();
    bench::scaling_ratio(state, [&] { p.forward(attn); }, backward, "bwd_over_fwd");
    state.counters["T_max"] = static_cast<double>(t_max);
}
} // namespace

BENCHMARK_TEMPLATE(BM_toeplitz_backward_over_forward, masking::none, toeplitz_algorithm::banded)
    ->Name("toeplitz_bwd_over_fwd_banded_noncausal")->Args({1 << 14, 128})->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_toeplitz_backward_over_forward, masking::causal, toeplitz_algorithm::banded)
    ->Name("toeplitz_bwd_over_fwd_banded_causal")->Args({1 << 14, 128})->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_toeplitz_backward_over_forward, masking::none, toeplitz_algorithm::fft)
    ->Name("toeplitz_bwd_over_fwd_fft_noncausal")->Args({1 << 14, 0})->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
