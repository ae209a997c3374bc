#pragma once
// Shared helpers of the benchmarks: inputs, the in-binary GEMM roofline and the standard counters.
#include <benchmark/benchmark.h>
#include <linrpe.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace bench {
using namespace linrpe;
using linrpe::index;

/// A (B, H, N, D) buffer of uniform values in [-scale, scale], fixed seed.
template <class S>
std::vector<S> buffer(index b, index h, index n, index d, S scale, unsigned seed)
{
    std::vector<S> data(static_cast<std::size_t>(b * h * n * d));
    std::srand(seed);
    for (auto& x : data) x = scale * (S(2) * static_cast<S>(std::rand()) / static_cast<S>(RAND_MAX) - S(1));
    return data;
}

/// Q, K (uniform in ±0.5), V (±1) and an output, each a (1, heads, n, width) buffer with fixed seeds.
template <class S>
struct problem {
    index heads, n, width;
    std::vector<S> q, k, v, out;

    problem(index heads_, index n_, index width_)
        : heads(heads_), n(n_), width(width_), q(buffer<S>(1, heads_, n_, width_, S(0.5), 1)),
          k(buffer<S>(1, heads_, n_, width_, S(0.5), 2)), v(buffer<S>(1, heads_, n_, width_, S(1), 3)), out(q.size())
    {
    }
    /// One batched forward of `attn` into `out`, kept from being optimized away.
    template <class Attention>
    void forward(const Attention& attn)
    {
        const auto view = [&](const std::vector<S>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
        attn.forward(view(q), view(k), view(v), view_bhnd(out.data(), 1, heads, n, width));
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
};

/// Wall-clock seconds of one call of f().
template <class F>
double seconds_of(F&& f)
{
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// \brief The machine's practical limit for `heads` × (N, M, E) linear attention: the same two GEMM shapes
/// as the non-causal kernel (S = Aᵀ B with A (N, M), B (N, E), then A S), threaded over heads like the
/// library. FLOPs: 4·N·M·E per head. Benchmarks time one pass next to each kernel call, so that kernel
/// and roofline see the same machine (this one is shared), and compare the best of each.
template <class S>
class gemm_roofline {
public:
    gemm_roofline(index heads, index n, index m, index e)
        : m_a(heads, row_matrix<S>::Random(n, m)), m_b(heads, row_matrix<S>::Random(n, e)), m_c(heads, row_matrix<S>(n, e)),
          m_s(heads, row_matrix<S>(m, e))
    {
    }
    /// Seconds of one pass over every head.
    double seconds()
    {
        const double t = seconds_of([&] {
            const detail::serial_eigen_scope serial_eigen; // one thread per head, as inside linrpe
            detail::parallel_for(static_cast<index>(m_a.size()), 0, [&](index h) {
                m_s[h].noalias() = m_a[h].transpose() * m_b[h];
                m_c[h].noalias() = m_a[h] * m_s[h];
            });
        });
        benchmark::DoNotOptimize(m_c[0].data());
        return t;
    }

private:
    std::vector<row_matrix<S>> m_a, m_b, m_c, m_s;
};

/// \brief The machine's FMA peak in FLOP/s for Scalar S on `threads` threads (0: the OpenMP default), measured
/// now: every thread runs 12 independent chains of Eigen's widest packet FMA (pmadd, what Eigen's GEMM kernel
/// issues), long enough (~2e8 FLOPs per thread) to ramp the clock; the best of `repeats` runs. 2·packet FLOPs
/// per pmadd. A kernel's share of it is its useful FLOPs over time, over this.
template <class S>
double fma_peak_flops(int threads = 0, int repeats = 3)
{
    using packet = typename Eigen::internal::packet_traits<S>::type;
    constexpr int width = Eigen::internal::unpacket_traits<packet>::size, chains = 12;
    const long steps = 200000000L / (2L * width * chains);
    const int team = static_cast<int>(detail::concurrent_items(1 << 20, threads));
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
        std::vector<S> sink(static_cast<std::size_t>(team), S(0));
        const double t = seconds_of([&] {
            detail::parallel_for(team, threads, [&](index i) {
                const packet a = Eigen::internal::pset1<packet>(S(0.999999)), b = Eigen::internal::pset1<packet>(S(1e-7));
                packet acc[chains];
                for (int c = 0; c < chains; ++c) acc[c] = Eigen::internal::pset1<packet>(S(c));
                for (long s = 0; s < steps; ++s) {
#pragma GCC unroll 12
                    for (int c = 0; c < chains; ++c) acc[c] = Eigen::internal::pmadd(acc[c], a, b);
                }
                packet total = acc[0];
                for (int c = 1; c < chains; ++c) total = Eigen::internal::padd(total, acc[c]);
                sink[static_cast<std::size_t>(i)] = Eigen::internal::predux(total);
            });
        });
        benchmark::DoNotOptimize(sink.data());
        best = std::min(best, t);
    }
    return 2.0 * width * chains * double(steps) * team / best;
}

/// fma_peak_flops<S>(threads), measured on first use in this process.
template <class S>
double cached_fma_peak(int threads)
{
    static std::map<int, double> peaks;
    auto it = peaks.find(threads);
    if (it == peaks.end()) it = peaks.emplace(threads, fma_peak_flops<S>(threads)).first;
    return it->second;
}

/// Sets tokens/s, GFLOP/s (of `flops` per iteration) and the ratio to the roofline measured now.
inline void set_counters(benchmark::State& state, double tokens, double flops, double roofline_seconds)
{
    state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["roofline_s"] = roofline_seconds;
}
/// \brief Times `kernel` once per iteration, alternating with one pass of the GEMM roofline of `heads` ×
/// (n, m, e), so both see the same (shared) machine. The iteration time is the kernel's: register with
/// UseManualTime(). Counters: tokens/s, GFLOP/s of the useful 4·n·m·e FLOPs per head, roofline_s and
/// roofline_ratio = best roofline time / best kernel time.
/// Also `fma_peak_ratio`: useful FLOP/s of the best kernel time over the FMA peak of `threads` threads
/// (fma_peak_flops, measured once per process and thread count).
template <class S, class Kernel>
void run_against_roofline(benchmark::State& state, index heads, index n, index m, index e, Kernel&& kernel, int threads = 0)
{
    gemm_roofline<S> roofline(heads, n, m, e);
    double best = 1e30, best_roofline = 1e30;
    for (auto _ : state) {
        const double t = seconds_of(kernel);
        state.SetIterationTime(t);
        best = std::min(best, t);
        best_roofline = std::min(best_roofline, roofline.seconds());
    }
    const double flops = 4.0 * double(heads) * double(n) * double(m) * double(e);
    set_counters(state, double(n), flops, best_roofline);
    state.counters["roofline_ratio"] = best_roofline / best;
    state.counters["fma_peak_ratio"] = flops / best / cached_fma_peak<S>(threads);
}

/// \brief time(big) / time(small) within one benchmark: every iteration runs `small` then `big`, so the two
/// runs of a pair see the same machine. Counters: `scaling`, the median over iterations of the pair ratio
/// big_i / small_i (the machine is shared: its speed changes over seconds, which moves both runs of a pair
/// alike, and the median discards the pairs a burst of load hit on one side only); `scaling_best`, best big
/// over best small; small_ms and big_ms, the best times. `name` renames `scaling` (and `scaling_best`).
template <class Small, class Big>
void scaling_ratio(benchmark::State& state, Small&& small, Big&& big, const std::string& name = "scaling")
{
    std::vector<double> ratios;
    double best_small = 1e30, best_big = 1e30;
    for (auto _ : state) {
        const double ts = seconds_of(small), tb = seconds_of(big);
        best_small = std::min(best_small, ts);
        best_big = std::min(best_big, tb);
        ratios.push_back(tb / ts);
    }
    std::sort(ratios.begin(), ratios.end());
    const std::size_t k = ratios.size();
    state.counters["small_ms"] = best_small * 1e3;
    state.counters["big_ms"] = best_big * 1e3;
    state.counters[name + "_best"] = best_big / best_small;
    state.counters[name] = k == 0 ? 0.0 : (k % 2 ? ratios[k / 2] : 0.5 * (ratios[k / 2 - 1] + ratios[k / 2]));
}
} // namespace bench
