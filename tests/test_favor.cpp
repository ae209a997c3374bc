// Random-feature maps: FAVOR+ (iid, orthogonal, hyperbolic) and trigonometric features estimate the
// softmax kernel exp(q·k/√D) without bias, with an error falling like M^{-1/2}.
#include "support.hpp"

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_favor {

namespace {
using namespace linrpe;

// Mean squared error of φ(q)·φ(k) against exp(q·k/√D) over all pairs of a fixed set of small-norm
// queries and keys, averaged over `draws` independent projections.
template <class Map>
double kernel_mse(linrpe::index m, bool orthogonal, int draws, bool hyperbolic = false)
{
    const linrpe::index d = 8, n = 24;
    const row_matrix<double> q = test::uniform<double>(n, d, 1, 0.6), k = test::uniform<double>(n, d, 2, 0.6);
    const row_matrix<double> exact = ((q * k.transpose()) / std::sqrt(double(d))).array().exp().matrix();
    feature_context ctx; // exact features: no stabilizing shifts
    double total = 0;
    for (int s = 0; s < draws; ++s) {
        const Map map = [&] {
            if constexpr (std::is_same<Map, feature_maps::favor>::value) return Map(d, m, 1000 + s, orthogonal, hyperbolic);
            else return Map(d, m, 1000 + s, orthogonal);
        }();
        row_matrix<double> fq(n, map.output_dim(d)), fk(n, map.output_dim(d));
        ctx.which = role::query;
        map.apply(Eigen::Ref<const row_matrix<double>>(q), Eigen::Ref<row_matrix<double>>(fq), ctx);
        ctx.which = role::key;
        map.apply(Eigen::Ref<const row_matrix<double>>(k), Eigen::Ref<row_matrix<double>>(fk), ctx);
        total += (fq * fk.transpose() - exact).squaredNorm() / double(n * n);
    }
    return total / draws;
}

// Least-squares slope of log(rms) against log(M).
double fitted_slope(const std::vector<double>& ms, const std::vector<double>& rms)
{
    double mx = 0, my = 0;
    for (std::size_t i = 0; i < ms.size(); ++i) mx += std::log(ms[i]), my += std::log(rms[i]);
    mx /= ms.size(), my /= ms.size();
    double sxy = 0, sxx = 0;
    for (std::size_t i = 0; i < ms.size(); ++i) {
        sxy += (std::log(ms[i]) - mx) * (std::log(rms[i]) - my);
        sxx += (std::log(ms[i]) - mx) * (std::log(ms[i]) - mx);
    }
    return sxy / sxx;
}

// Returns the number of feature counts M fitted (16, 32, …, 1024: 7).
template <class Map>
std::size_t check_rate(bool orthogonal, bool hyperbolic, std::vector<double>* out_rms = nullptr)
{
    std::vector<double> ms, rms;
    for (linrpe::index m = 16; m <= 1024; m *= 2) {
        ms.push_back(double(m));
        rms.push_back(std::sqrt(kernel_mse<Map>(m, orthogonal, 12, hyperbolic)));
    }
    const double slope = fitted_slope(ms, rms);
    // Unbiased Monte-Carlo estimate with M samples: RMS error = σ/√M, slope −1/2. The window
    // [−0.7, −0.3] leaves room for the 12-draw sampling noise of each point (≈ ±0.1 in log).
    CAPTURE(orthogonal, hyperbolic, slope, rms.front(), rms.back());
    REQUIRE(slope >= -0.7);
    REQUIRE(slope <= -0.3);
    if (out_rms) *out_rms = rms;
    return ms.size();
}
} // namespace

TEST_CASE("FAVOR+ error falls like M^-1/2, orthogonal no worse than iid", "[favor]")
{
    std::vector<double> iid, ortho;
    REQUIRE(check_rate<feature_maps::favor>(false, false, &iid) == 7);
    REQUIRE(check_rate<feature_maps::favor>(true, false, &ortho) == 7);
    REQUIRE(check_rate<feature_maps::favor>(true, true) == 7);
    double sum_iid = 0, sum_ortho = 0;
    for (std::size_t i = 0; i < iid.size(); ++i) sum_iid += iid[i] * iid[i], sum_ortho += ortho[i] * ortho[i];
    CAPTURE(sum_iid, sum_ortho);
    REQUIRE(sum_ortho <= sum_iid);
}

TEST_CASE("trigonometric features estimate the softmax kernel, error like M^-1/2", "[favor][trig]")
{
    REQUIRE(check_rate<feature_maps::trig_features>(true, false) == 7);
}

TEST_CASE("FAVOR+ projections are deterministic per seed and block-orthogonal", "[favor]")
{
    const feature_maps::favor a(8, 20, 5), b(8, 20, 5), c(8, 20, 6);
    REQUIRE(a.projection() == b.projection());
    REQUIRE(a.projection() != c.projection());
    const row_matrix<double>& w = a.projection();
    // Rows within each block of D = 8 are orthogonal (off-diagonal of the Gram matrix at rounding level).
    for (linrpe::index blk = 0; blk < 2; ++blk) {
        const row_matrix<double> g = w.middleRows(8 * blk, 8) * w.middleRows(8 * blk, 8).transpose();
        const double off = (g - row_matrix<double>(g.diagonal().asDiagonal())).cwiseAbs().maxCoeff();
        CAPTURE(blk, off);
        REQUIRE(off <= 1e-12 * g.diagonal().maxCoeff());
    }
    feature_maps::favor r = a;
    r.redraw(6);
    REQUIRE(r.projection() == c.projection());
    const feature_maps::favor per_head(8, 20, 5, true, false, 3);
    REQUIRE(per_head.projection(0) == a.projection());
    REQUIRE(per_head.projection(1) != per_head.projection(0));
}

TEST_CASE("FAVOR+ stabilization leaves attention unchanged and finite for large inputs", "[favor]")
{
    // With `sum`, per-row query shifts and a global key shift cancel between numerator and denominator;
    // compare against the exact (unshifted) features used under `none` then normalized by hand.
    const linrpe::index n = 40, d = 8, e = 3;
    const row_matrix<double> q = test::uniform<double>(n, d, 3, 6.0), k = test::uniform<double>(n, d, 4, 6.0), v = test::uniform<double>(n, e, 5);
    const feature_maps::favor map(d, 64, 1);
    options<double> opt;
    opt.eps = 1e-300; // isolate the shift: with a negligible eps the cancellation is exact up to rounding
    const linear_attention<feature_maps::favor, positional::none, double> stable(map, {}, opt);
    const row_matrix<double> out = stable(q, k, v);
    REQUIRE(out.allFinite());
    feature_context ctx;
    row_matrix<double> fq(n, 64), fk(n, 64);
    ctx.which = role::query;
    map.apply(Eigen::Ref<const row_matrix<double>>(q), Eigen::Ref<row_matrix<double>>(fq), ctx);
    ctx.which = role::key;
    map.apply(Eigen::Ref<const row_matrix<double>>(k), Eigen::Ref<row_matrix<double>>(fk), ctx);
    const row_matrix<double> a = fq * fk.transpose();
    const row_matrix<double> exact = ((a * v).array().colwise() / a.rowwise().sum().array()).matrix();
    const double err = test::rel_error(out, exact);
    // Both are sums of n·M positive terms in double: ≲ 4(n + M)u. The shifted features also differ from
    // the exact ones by exp's argument rounding: arguments reach |ωx' − ‖x'‖²/2| ≲ 100 here, so each
    // feature carries ≲ 100u relative error; together ≤ (4(n + M) + 2·100)u, doubled for safety.
    const double bound = 2.0 * (4.0 * (n + 64) + 200.0) * test::unit_roundoff<double>();
    CAPTURE(err, bound);
    REQUIRE(err <= bound);
}
} // namespace test_favor
