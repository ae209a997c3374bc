// SPE convergence: with exact exp(q̂·k̂/√R) (quadratic softmax on the SPE-filtered rows), attention tends to
// the softmax-RPE target with per-dimension kernels P_d(m − n) (reference/spe.md §1.2-1.3, T9) like R^{-1/2}.
#include "support_spe.hpp"

#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/reference/softmax_attention.hpp>
#include <linrpe/reference/softmax_rpe_attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_spe_convergence {

namespace {
using namespace linrpe;
using linrpe::index;

/// Mean over `draws` realizations of ‖softmax(q̂ k̂ᵀ/√R) V − target‖_F/‖target‖_F for each R, and the
/// least-squares slope of log(mean error) against log R.
template <class Spe>
double fitted_slope(Spe spe, masking mask, const std::vector<index>& rs, int draws)
{
    const index n = 24, dim = spe.dim(), e = 4, head = 0, first = 3;
    const auto q = spe_test::gaussian<double>(n, dim, 601, 0.8), k = spe_test::gaussian<double>(n, dim, 602, 0.8),
               v = spe_test::gaussian<double>(n, e, 603);
    const auto target = reference::softmax_rpe_attention(
        q, k, v, mask, [&](index d, index t) { return spe.expected_kernel(head, d, t); }, first, first);
    std::vector<double> x, y;
    for (index r : rs) {
        spe.set_realizations(r);
        double total = 0;
        for (int s = 0; s < draws; ++s) {
            spe.redraw(700 + std::uint64_t(s));
            row_matrix<double> qh(n, r), kh(n, r);
            spe.template encode_pre<double>(q, qh, first, head, role::query);
            spe.template encode_pre<double>(k, kh, first, head, role::key);
            const auto out = reference::softmax_attention(qh, kh, v, mask, {}, 1.0 / std::sqrt(double(r)));
            total += spe_test::rel_frobenius(out, target);
        }
        x.push_back(std::log(double(r)));
        y.push_back(std::log(total / draws));
        CAPTURE(r, total / draws);
    }
    const double mx = (x[0] + x[1] + x[2] + x[3] + x[4]) / 5, my = (y[0] + y[1] + y[2] + y[3] + y[4]) / 5;
    double sxy = 0, sxx = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
    }
    return sxy / sxx;
}
} // namespace

TEST_CASE("SPE attention with exact exp converges to softmax-RPE like R^-1/2", "[spe][convergence]")
{
    // The logit noise has standard deviation ∝ R^{-1/2} (exact variance, §7.2) and the output error is
    // first-order in it; the exp/ratio bias is O(1/R) and smaller here. 24 draws per R make the mean error's
    // relative standard error ≈ 0.1 per point, so the slope fitted over R = 16..256 (log-range 2.8) is −0.5
    // within ±0.1: inside [−0.7, −0.3] with a 2σ margin on each side.
    const std::vector<linrpe::index> rs{16, 32, 64, 128, 256};
    const masking mask = GENERATE(masking::none, masking::causal);
    CAPTURE(mask == masking::causal);
    SECTION("sine, gated")
    {
        positional::sine_spe<double> spe(1, 4, 3, 16, 41, true);
        spe.freqs.array() += 2.0;
        const double slope = fitted_slope(spe, mask, rs, 24);
        CAPTURE(slope);
        CHECK(slope >= -0.7);
        CHECK(slope <= -0.3);
    }
    SECTION("conv, gated")
    {
        const positional::conv_spe<double> spe(1, 4, 6, 16, 43, true);
        const double slope = fitted_slope(spe, mask, rs, 24);
        CAPTURE(slope);
        CHECK(slope >= -0.7);
        CHECK(slope <= -0.3);
    }
}
} // namespace test_spe_convergence
