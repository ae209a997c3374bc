// The consumer's view of linrpe's threading, from a translation unit that defines nothing itself:
//  1. linrpe's results are bit-identical for options::threads = 1, 2, 3 and 0 (run with OMP_NUM_THREADS=3),
//     on paths that run Eigen products on the calling thread and inside linrpe's own parallel loops;
//  2. every linrpe call leaves the caller's OpenMP default as it found it;
//  3. the consumer's own Eigen GEMM still splits over more than one thread (when linrpe came with OpenMP).
#ifdef EIGEN_DONT_PARALLELIZE
#error "linrpe must not switch off Eigen's threading in the consumer's code"
#endif
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {
using namespace linrpe;
using linrpe::index;
using matrix = row_matrix<double>;

int failures = 0;
void check(bool ok, const char* what)
{
    std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
    failures += ok ? 0 : 1;
}

int caller_default()
{
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

std::vector<double> inputs(index size, unsigned seed)
{
    std::vector<double> x(static_cast<std::size_t>(size));
    unsigned s = seed;
    for (auto& value : x) {
        s = s * 1664525u + 1013904223u;
        value = static_cast<double>(s >> 8) / 16777216.0 - 0.5;
    }
    return x;
}

// Every output of one configuration, concatenated: batched causal (few sequences, split into segments),
// batched non-causal (several key blocks), a decoder prefill + steps, and a causal Toeplitz head by FFT.
std::vector<double> run_all(int threads)
{
    options<double> opt;
    opt.threads = threads;
    opt.segment_rows = 256;
    std::vector<double> all;
    const auto keep = [&](const std::vector<double>& out) { all.insert(all.end(), out.begin(), out.end()); };
    const auto batched = [&](masking mask, index b, index h, index n) {
        opt.mask = mask;
        const linear_attention<feature_maps::elu_plus_one, positional::none, double> attn({}, {}, opt);
        const index d = 48, e = 40;
        const auto q = inputs(b * h * n * d, 1), k = inputs(b * h * n * d, 2), v = inputs(b * h * n * e, 3);
        std::vector<double> out(static_cast<std::size_t>(b * h * n * e));
        attn.forward(view_bhnd(q.data(), b, h, n, d), view_bhnd(k.data(), b, h, n, d), view_bhnd(v.data(), b, h, n, e),
                     view_bhnd(out.data(), b, h, n, e));
        keep(out);
        if (mask != masking::causal) return;
        auto dec = attn.decoder(b, h);
        const index p = n - 2;
        for (index t0 = 0; t0 < n; t0 = t0 ? t0 + 1 : p) { // prefill p tokens, then one step per token
            const index len = t0 ? 1 : p;
            std::vector<double> qs, ks, vs, os(static_cast<std::size_t>(b * h * len * e));
            for (index s = 0; s < b * h; ++s) {
                qs.insert(qs.end(), q.begin() + (s * n + t0) * d, q.begin() + (s * n + t0 + len) * d);
                ks.insert(ks.end(), k.begin() + (s * n + t0) * d, k.begin() + (s * n + t0 + len) * d);
                vs.insert(vs.end(), v.begin() + (s * n + t0) * e, v.begin() + (s * n + t0 + len) * e);
            }
            dec.prefill(view_bhnd(qs.data(), b, h, len, d), view_bhnd(ks.data(), b, h, len, d),
                        view_bhnd(vs.data(), b, h, len, e), view_bhnd(os.data(), b, h, len, e));
            keep(os);
        }
    };
    batched(masking::causal, 1, 2, 1100);
    batched(masking::none, 2, 4, 700);
    batched(masking::causal, 2, 5, 300);

    opt.mask = masking::causal;
    opt.toeplitz = toeplitz_algorithm::fft;
    positional::toeplitz_rpe<double> rpe(1, 600);
    for (index t = 0; t < 2 * 600 - 1; ++t) rpe.bias(0, t) = -0.01 * static_cast<double>(t % 37);
    const linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<double>, double> toeplitz({}, rpe, opt);
    const auto q = inputs(900 * 32, 4), k = inputs(900 * 32, 5), v = inputs(900 * 24, 6);
    const matrix out = toeplitz(Eigen::Map<const matrix>(q.data(), 900, 32), Eigen::Map<const matrix>(k.data(), 900, 32),
                                Eigen::Map<const matrix>(v.data(), 900, 24));
    keep(std::vector<double>(out.data(), out.data() + out.size()));
    return all;
}

#if defined(_OPENMP)
// A scalar that records which OpenMP threads multiply: Eigen's GEMM splitting (internal::parallelize_gemm) is
// the same for every scalar type, so a product of these shows how many threads a consumer's GEMM gets.
std::atomic<unsigned long> multiplying_threads{0};
struct counted {
    double x = 0;
    counted() = default;
    counted(double value) : x(value) {}
};
counted operator*(counted a, counted b)
{
    const unsigned long bit = 1ul << (omp_get_thread_num() & 63);
    if (!(multiplying_threads.load(std::memory_order_relaxed) & bit)) multiplying_threads.fetch_or(bit, std::memory_order_relaxed);
    return a.x * b.x;
}
counted operator+(counted a, counted b) { return a.x + b.x; }
counted operator-(counted a, counted b) { return a.x - b.x; }
counted operator-(counted a) { return -a.x; }
counted& operator+=(counted& a, counted b) { return a = a + b; }
counted& operator-=(counted& a, counted b) { return a = a - b; }
counted& operator*=(counted& a, counted b) { return a = a * b; }
bool operator==(counted a, counted b) { return a.x == b.x; }
bool operator!=(counted a, counted b) { return a.x != b.x; }
#endif
} // namespace

#if defined(_OPENMP)
namespace Eigen {
template <>
struct NumTraits<counted> : NumTraits<double> {
    using Real = counted;
    using NonInteger = counted;
    using Nested = counted;
    using Literal = counted;
};
} // namespace Eigen

namespace {
int gemm_threads()
{
    using cmatrix = Eigen::Matrix<counted, Eigen::Dynamic, Eigen::Dynamic>;
    const index n = 192;
    cmatrix a(n, n), b(n, n), c(n, n);
    for (index i = 0; i < n; ++i)
        for (index j = 0; j < n; ++j) a(i, j) = b(j, i) = 0.001 * static_cast<double>(i + j);
    multiplying_threads = 0;
    c.noalias() = a * b;
    int count = 0;
    for (unsigned long m = multiplying_threads; m; m &= m - 1) ++count;
    return count;
}
} // namespace
#endif

int main()
{
    const int before = caller_default();
    const std::vector<double> one = run_all(1);
    check(caller_default() == before, "a linrpe call leaves omp_get_max_threads() unchanged");
    for (int threads : {2, 3, 0}) {
        const std::vector<double> other = run_all(threads);
        char what[96];
        std::snprintf(what, sizeof what, "threads = %d gives the bits of threads = 1 (%zu values)", threads, other.size());
        check(other.size() == one.size() && std::memcmp(other.data(), one.data(), one.size() * sizeof(double)) == 0, what);
    }
#if defined(_OPENMP)
    std::printf("OpenMP default %d, Eigen::nbThreads() %d\n", before, Eigen::nbThreads());
    check(before > 1, "the test runs with OMP_NUM_THREADS > 1");
    check(Eigen::nbThreads() == before, "Eigen::nbThreads() is the caller's OpenMP default after linrpe calls");
    const int used = gemm_threads();
    std::printf("the consumer's 192^3 GEMM multiplied on %d threads\n", used);
    check(used > 1, "the consumer's own Eigen GEMM runs on more than one thread");
#else
    std::printf("linrpe without OpenMP: serial\n");
#endif
    return failures == 0 ? 0 : 1;
}
