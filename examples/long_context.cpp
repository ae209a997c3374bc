// One million tokens: non-causal elu+1 linear attention, H = 8 heads of M = E = 64, float, one head at a
// time so that the working set is one head's Q, K, V, output and features. Prints the time and the peak RSS.
//   ./build/release/examples/long_context [tokens]
#include <linrpe.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv)
{
    using namespace linrpe;
    const linrpe::index n = argc > 1 ? std::atol(argv[1]) : 1000000, heads = 8, width = 64;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn;
    row_matrix<float> q(n, width), k(n, width), v(n, width), out(n, width);
    double seconds = 0, checksum = 0;
    for (linrpe::index h = 0; h < heads; ++h) {
        const random::philox_stream noise(7, random::purpose::user, static_cast<std::uint32_t>(h));
        noise.fill_normal(0, q.data(), q.size());
        noise.fill_normal(q.size(), k.data(), k.size());
        noise.fill_normal(2 * q.size(), v.data(), v.size());
        const auto t0 = std::chrono::steady_clock::now();
        attn.forward(q, k, v, out, h);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        checksum += out.cast<double>().sum();
    }
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    std::printf("%ld tokens x %ld heads (M = E = %ld, float, non-causal, elu+1): %.2f s attention, %.3g tokens/s, "
                "peak RSS %.2f GiB, checksum %.6g\n",
                long(n), long(heads), long(width), seconds, double(n) / seconds, usage.ru_maxrss / 1048576.0, checksum);
    return 0;
}
