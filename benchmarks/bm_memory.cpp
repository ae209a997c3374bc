// Extra memory of every path at two lengths, and the one-million-token run (B = 1, H = 8, D = M = E = 64, float; Toeplitz FFT with H = 2):
// the peak of live heap bytes during one forward call, minus what was live before it (inputs and outputs
// are allocated beforehand, so they are not counted). One iteration per length: the figure is exact, not
// timed. A path whose extra memory is O(N·(M + E)) shows bytes(64k) / bytes(16k) <= 4 and a bytes_per_token
// bounded by a small multiple of (M + E)·sizeof(float) = 512 per head in flight.
//
// Counting works by interposing the C allocator of this binary (glibc's __libc_* entry points); Eigen's
// aligned allocations and operator new both end in malloc.
#include "bench_support.hpp"

#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

#include <malloc.h>
#include <sys/resource.h>

#include <atomic>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<long long> live_bytes{0}, peak_bytes{0};

void* counted(void* p)
{
    if (p) {
        const long long now = live_bytes += static_cast<long long>(malloc_usable_size(p));
        long long peak = peak_bytes.load(std::memory_order_relaxed);
        while (now > peak && !peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
        }
    }
    return p;
}
void uncount(void* p)
{
    if (p) live_bytes -= static_cast<long long>(malloc_usable_size(p));
}
} // namespace

extern "C" {
void* malloc(std::size_t n) { return counted(__libc_malloc(n)); }
void* calloc(std::size_t n, std::size_t size) { return counted(__libc_calloc(n, size)); }
void free(void* p)
{
    uncount(p);
    __libc_free(p);
}
void* realloc(void* p, std::size_t n)
{
    uncount(p);
    return counted(__libc_realloc(p, n));
}
void* memalign(std::size_t align, std::size_t n) { return counted(__libc_memalign(align, n)); }
void* aligned_alloc(std::size_t align, std::size_t n) { return counted(__libc_memalign(align, n)); }
int posix_memalign(void** out, std::size_t align, std::size_t n)
{
    void* p = counted(__libc_memalign(align, n));
    if (!p) return 12; // ENOMEM
    *out = p;
    return 0;
}
}

namespace {
using namespace linrpe;
using linrpe::index;
constexpr index width = 64;

template <class Map, class Positional>
void measure(benchmark::State& state, const Positional& pe, masking mask, index heads,
             toeplitz_algorithm algo = toeplitz_algorithm::automatic, normalization norm = normalization::sum)
{
    const index n = state.range(0);
    bench::problem<float> p(heads, n, width);
    options<float> opt;
    opt.mask = mask;
    opt.toeplitz = algo;
    opt.norm = norm;
    const linear_attention<Map, Positional, float> attn(Map(), pe, opt);
    long long extra = 0;
    for (auto _ : state) {
        const long long before = live_bytes.load();
        peak_bytes = before;
        p.forward(attn);
        extra = std::max(extra, peak_bytes.load() - before);
    }
    state.counters["heads"] = double(heads);
    state.counters["extra_MiB"] = double(extra) / (1024.0 * 1024.0);
    state.counters["bytes_per_token"] = double(extra) / double(n);
}

// The backward of the core (dQ, dK, dV for a given dOut; the gradient buffers are allocated beforehand).
void measure_backward(benchmark::State& state, masking mask)
{
    const index n = state.range(0), heads = 8;
    bench::problem<float> p(heads, n, width);
    std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
    options<float> opt;
    opt.mask = mask;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    const auto in = [&](const std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
    const auto out = [&](std::vector<float>& x) { return view_bhnd(x.data(), 1, heads, n, width); };
    long long extra = 0;
    for (auto _ : state) {
        const long long before = live_bytes.load();
        peak_bytes = before;
        attn.backward(in(p.q), in(p.k), in(p.v), in(p.out), out(dq), out(dk), out(dv));
        benchmark::DoNotOptimize(dq.data());
        extra = std::max(extra, peak_bytes.load() - before);
    }
    state.counters["heads"] = double(heads);
    state.counters["extra_MiB"] = double(extra) / (1024.0 * 1024.0);
    state.counters["bytes_per_token"] = double(extra) / double(n);
}
void BM_backward_noncausal(benchmark::State& s) { measure_backward(s, masking::none); }
void BM_backward_causal(benchmark::State& s) { measure_backward(s, masking::causal); }

using elu = feature_maps::elu_plus_one;
void BM_noncausal(benchmark::State& s) { measure<elu>(s, positional::none(), masking::none, 8); }
void BM_causal(benchmark::State& s) { measure<elu>(s, positional::none(), masking::causal, 8); }
void BM_causal_one_head(benchmark::State& s) { measure<elu>(s, positional::none(), masking::causal, 1); }
// LRPE scores can be negative: rms normalization, as the paper's models use.
void BM_lrpe_rotate(benchmark::State& s)
{
    measure<elu>(s, positional::lrpe<float>(lrpe_kind::rotate, width, 8), masking::causal, 8, toeplitz_algorithm::automatic,
                 normalization::rms);
}
void BM_lrpe_cosine(benchmark::State& s)
{
    measure<elu>(s, positional::lrpe<float>(lrpe_kind::cosine, width, 8), masking::none, 8, toeplitz_algorithm::automatic,
                 normalization::rms);
}
void BM_sine_spe(benchmark::State& s) { measure<elu>(s, positional::sine_spe<float>(8, width, 5, width, 1, true), masking::causal, 8); }
void BM_conv_spe(benchmark::State& s) { measure<elu>(s, positional::conv_spe<float>(8, width, 128, width, 1, true), masking::none, 8); }
void BM_toeplitz_banded(benchmark::State& s)
{
    measure<elu>(s, positional::toeplitz_rpe<float>(8, 128), masking::causal, 8, toeplitz_algorithm::banded);
}
void BM_toeplitz_fft(benchmark::State& s)
{
    measure<elu>(s, positional::toeplitz_rpe<float>(2, s.range(0)), masking::none, 2, toeplitz_algorithm::fft);
}

// One million tokens, H = 8 heads of M = E = 64, non-causal elu+1 (the long-context target), one head at a
// time as examples/long_context does: 8 heads' Q, K, V and output at once would be 8 GiB of floats by
// themselves. Reports the time of all 8 heads, the extra heap of one call and the process's peak resident
// set (one head's Q, K, V, out = 4 · 2^20 · 64 floats = 1 GiB of it).
void BM_million(benchmark::State& state)
{
    const index n = state.range(0), heads = 8;
    std::srand(1); // uniform inputs written in place: no temporary copy inflates the peak RSS
    const row_matrix<float> q = 0.5f * row_matrix<float>::Random(n, width), k = 0.5f * row_matrix<float>::Random(n, width),
                            v = row_matrix<float>::Random(n, width);
    row_matrix<float> out(n, width);
    const linear_attention<elu, positional::none, float> attn;
    long long extra = 0;
    for (auto _ : state) {
        for (index h = 0; h < heads; ++h) {
            const long long before = live_bytes.load();
            peak_bytes = before;
            attn.forward(q, k, v, out, h);
            benchmark::DoNotOptimize(out.data());
            extra = std::max(extra, peak_bytes.load() - before);
        }
    }
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    state.counters["heads"] = double(heads);
    state.counters["extra_MiB"] = double(extra) / (1024.0 * 1024.0);
    state.counters["tokens_per_s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["peak_rss_MiB"] = double(usage.ru_maxrss) / 1024.0; // ru_maxrss is in KiB on Linux
}

void lengths(benchmark::internal::Benchmark* b) { b->Arg(1 << 14)->Arg(1 << 16)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime(); }
} // namespace

// First, so that the process's peak RSS is this call's.
BENCHMARK(BM_million)->Name("long_context_noncausal_8_heads")->Arg(1 << 20)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_noncausal)->Name("memory_noncausal")->Apply(lengths);
BENCHMARK(BM_causal)->Name("memory_causal")->Apply(lengths);
BENCHMARK(BM_causal_one_head)->Name("memory_causal_one_head")->Apply(lengths);
BENCHMARK(BM_lrpe_rotate)->Name("memory_lrpe_rotate_causal")->Apply(lengths);
BENCHMARK(BM_lrpe_cosine)->Name("memory_lrpe_cosine")->Apply(lengths);
BENCHMARK(BM_sine_spe)->Name("memory_sine_spe_causal")->Apply(lengths);
BENCHMARK(BM_conv_spe)->Name("memory_conv_spe")->Apply(lengths);
BENCHMARK(BM_toeplitz_banded)->Name("memory_toeplitz_banded_causal")->Apply(lengths);
BENCHMARK(BM_toeplitz_fft)->Name("memory_toeplitz_fft")->Apply(lengths);
BENCHMARK(BM_backward_noncausal)->Name("memory_backward_noncausal")->Apply(lengths);
BENCHMARK(BM_backward_causal)->Name("memory_backward_causal")->Apply(lengths);
