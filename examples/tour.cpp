// The tour: linear attention against the exact O(N^2) reference, error and time, for a few thousand tokens.
//   ./scripts/run demo            (N = 4096, H = 8)
//   tour --smoke                  (small sizes; used by the test suite)
#include <linrpe.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>

namespace {
using namespace linrpe;
using linrpe::index; // a using-declaration beats POSIX ::index from <strings.h>
using clock_type = std::chrono::steady_clock;

double seconds(const std::function<void()>& f)
{
    const auto t0 = clock_type::now();
    f();
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

template <class Attention>
void row(const char* name, const Attention& attn, const row_matrix<float>& q, const row_matrix<float>& k,
         const row_matrix<float>& v, double softmax_seconds)
{
    row_matrix<float> out(q.rows(), v.cols());
    const double t = seconds([&] { attn.forward(q, k, v, out); });
    const index n = q.rows();
    const row_matrix<double> ref =
        reference::kernel_attention(attn.features(q, role::query), attn.features(k, role::key), v,
                                    attn.mixing_matrix(n, n), attn.opts().norm, attn.opts().eps);
    const double err = (out.cast<double>() - ref).norm() / ref.norm();
    std::printf("%-28s %12.2e %12.3f %10.1fx\n", name, err, 1e3 * t, softmax_seconds / t);
}
} // namespace

int main(int argc, char** argv)
{
    const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
    const linrpe::index n = smoke ? 256 : 4096, d = 64;
    std::printf("linrpe %s tour: one head, N = %ld, D = M = E = %ld, float\n\n", LINRPE_VERSION_STRING, static_cast<long>(n),
                static_cast<long>(d));
    const row_matrix<float> q = row_matrix<float>::Random(n, d) * 0.5f, k = row_matrix<float>::Random(n, d) * 0.5f,
                            v = row_matrix<float>::Random(n, d);
    row_matrix<double> soft;
    const double t_soft = seconds([&] { soft = reference::softmax_attention(q, k, v, masking::causal); });
    std::printf("%-28s %12s %12s %11s\n", "configuration", "rel. error", "time [ms]", "vs softmax");
    std::printf("%-28s %12s %12.3f %10.1fx\n", "exact softmax (reference)", "-", 1e3 * t_soft, 1.0);

    options<float> opt;
    opt.mask = masking::causal;
    row("elu+1, causal", linear_attention<feature_maps::elu_plus_one, positional::none, float>({}, {}, opt), q, k, v, t_soft);
    opt.mask = masking::none;
    row("elu+1, non-causal", linear_attention<feature_maps::elu_plus_one, positional::none, float>({}, {}, opt), q, k, v, t_soft);
    opt.mask = masking::causal;
    row("favor (M=256), causal",
        linear_attention<feature_maps::favor, positional::none, float>(feature_maps::favor(d, 256, 7), {}, opt), q, k, v, t_soft);
    std::printf("\nrel. error: against reference::kernel_attention (double) from the same features.\n");
    return 0;
}
