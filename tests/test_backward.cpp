// Gradients: the reference backward and every feature map's VJP against central finite differences in
// double, then the fast backward (per head) against the reference for every feature map × masking ×
// normalization, boundary lengths around the chunk size, Nk != N, D != E.
#include "support_backward.hpp"

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_backward {

namespace {
using namespace linrpe;
using linrpe::index;

// ⟨dout, out(Q, K, V)⟩ through the double reference forward of `attn`, and the gradients of the reference
// backward, checked along one random direction per input. Rounding of f: the forward's bound
// test::error_bound times ‖dout‖, plus the features' own rounding (8u relative, exp and a GEMM of width D)
// through ‖dΨ‖‖Ψ‖ + ‖dΚ‖‖Κ‖.
template <class Map>
int fd_reference(const Map& map, index d)
{
    int checked = 0;
    std::uint32_t seed = 101;
    for (const masking mask : {masking::none, masking::causal})
        for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
            for (const index n : {1, 7, 40}) {
                options<double> opt;
                opt.mask = mask;
                opt.norm = norm;
                opt.chunk_size = 8;
                opt.allow_signed_normalizer = true;
                const linear_attention<Map, positional::none, double> attn(map, {}, opt);
                const index nk = mask == masking::causal ? n : n + 3, e = 4;
                const row_matrix<double> q = test::off_zero(test::uniform<double>(n, d, seed, 0.5)),
                                         k = test::off_zero(test::uniform<double>(nk, d, seed + 1, 0.5)),
                                         v = test::uniform<double>(nk, e, seed + 2), dout = test::uniform<double>(n, e, seed + 3);
                const auto ref = test::reference_backward(attn, q, k, v, dout);
                const row_matrix<double> w = attn.mixing_matrix(n, nk);
                const auto f = [&](const row_matrix<double>& qq, const row_matrix<double>& kk, const row_matrix<double>& vv) {
                    return test::dot(dout, reference::kernel_attention(attn.features(qq, role::query), attn.features(kk, role::key), vv,
                                                                 w, norm, opt.eps));
                };
                const row_matrix<double> psi = attn.features(q, role::query), kappa = attn.features(k, role::key);
                const auto g = reference::kernel_attention_backward(psi, kappa, v, w, dout, norm, opt.eps);
                const double u = test::unit_roundoff<double>();
                const double f_round = dout.norm() * test::error_bound(psi, kappa, w, v, norm, opt.eps, u, psi.cols() + nk + 4) +
                                       8 * u * (g.dpsi.norm() * psi.norm() + g.dkappa.norm() * kappa.norm());
                const row_matrix<double> uq = test::uniform<double>(n, d, seed + 4), uk = test::uniform<double>(nk, d, seed + 5),
                                         uv = test::uniform<double>(nk, e, seed + 6);
                CAPTURE(n, nk, int(mask), int(norm));
                test::require_fd(test::central_difference([&](double h) { return f(q + h * uq, k, v); }, test::dot(ref.exact.dq, uq), f_round,
                                              ref.exact.dq.norm() * uq.norm(), uq.norm() / q.norm()));
                if (nk > 0) {
                    test::require_fd(test::central_difference([&](double h) { return f(q, k + h * uk, v); }, test::dot(ref.exact.dk, uk), f_round,
                                                  ref.exact.dk.norm() * uk.norm(), uk.norm() / k.norm()));
                    test::require_fd(test::central_difference([&](double h) { return f(q, k, v + h * uv); }, test::dot(ref.exact.dv, uv), f_round,
                                                  ref.exact.dv.norm() * uv.norm(), uv.norm() / v.norm()));
                }
                seed += 7;
                ++checked;
            }
    return checked;
}

// f(x) = ⟨dphi, φ(x)⟩ for queries and keys, with and without the `sum` row shift; rounding of f: 8u
// relative per feature (exp, a GEMM of width D) over Σ|dphi ⊙ φ|, times D + 4 for the sum.
template <class Map>
int fd_map(const Map& map, index d)
{
    int checked = 0;
    std::uint32_t seed = 7;
    for (const role which : {role::query, role::key})
        for (const bool cancels : {false, true}) {
            feature_context ctx;
            ctx.which = which;
            ctx.row_scale_cancels = cancels;
            const index n = 9, m = map.output_dim(d);
            const row_matrix<double> x = test::off_zero(test::uniform<double>(n, d, seed, 0.8)), dir = test::uniform<double>(n, d, seed + 1),
                                     dphi = test::uniform<double>(n, m, seed + 2);
            const auto phi_of = [&](const row_matrix<double>& xx) {
                row_matrix<double> p(n, m);
                map.template apply<double>(xx, p, ctx);
                return p;
            };
            const row_matrix<double> phi = phi_of(x);
            row_matrix<double> dx(n, d);
            map.template apply_backward<double>(x, phi, dphi, dx, ctx);
            const double f_round = 8 * (d + 4) * test::unit_roundoff<double>() * (dphi.cwiseAbs().array() * phi.cwiseAbs().array()).sum();
            CAPTURE(int(which), cancels);
            test::require_fd(test::central_difference([&](double h) { return test::dot(dphi, phi_of(x + h * dir)); }, test::dot(dx, dir), f_round,
                                          dx.norm() * dir.norm(), dir.norm() / x.norm()));
            seed += 3;
            ++checked;
        }
    return checked;
}

// ---- fast backward against the reference ------------------------------------------------------------------

constexpr index lengths[] = {1, 2, 63, 64, 65, 1000};

template <class S, class Map>
void check(const Map& map, masking mask, normalization norm, index n, index nk, index d, index e, std::uint32_t seed,
           double eps = -1)
{
    options<S> opt;
    opt.mask = mask;
    opt.norm = norm;
    opt.allow_signed_normalizer = true;
    if (eps >= 0) opt.eps = S(eps);
    const linear_attention<Map, positional::none, S> attn(map, {}, opt);
    const row_matrix<S> q = test::uniform<S>(n, d, seed, 0.5), k = test::uniform<S>(nk, d, seed + 1, 0.5),
                        v = test::uniform<S>(nk, e, seed + 2), dout = test::uniform<S>(n, e, seed + 3);
    const test::grads fast = test::fast_backward(attn, q, k, v, dout);
    const test::reference_grads ref = test::reference_backward(attn, q, k, v, dout);
    CAPTURE(n, nk, d, e, int(mask), int(norm), double(opt.eps), ref.exact.dq.norm(), ref.exact.dk.norm(), ref.exact.dv.norm());
    test::require_within(fast.dq, fast.dk, fast.dv, ref);
}

// `positive`: the map's features are positive, so the sum's denominator stays away from −eps whatever eps.
template <class S, class Map>
int sweep(const Map& map, index d, bool positive)
{
    int checked = 0;
    std::uint32_t seed = 31;
    for (const masking mask : {masking::none, masking::causal})
        for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
            for (const index n : lengths) {
                const index nk = mask == masking::causal ? n : n + 5;
                check<S>(map, mask, norm, n, nk, d, 5, seed);
                seed += 4;
                ++checked;
            }
    // eps ≠ default: it enters the sum's denominator and the rms root, and their derivatives.
    if (!positive) return checked;
    for (const masking mask : {masking::none, masking::causal})
        for (const normalization norm : {normalization::sum, normalization::rms}) {
            check<S>(map, mask, norm, 65, mask == masking::causal ? 65 : 70, d, 5, seed, 0.25);
            seed += 4;
            ++checked;
        }
    return checked;
}
} // namespace

TEST_CASE("reference backward equals central finite differences for every feature map", "[backward][fd]")
{
    // 2 masks × 3 normalizations × 3 lengths
    SECTION("identity") { REQUIRE(fd_reference(feature_maps::identity{}, 5) == 18); }
    SECTION("elu_plus_one") { REQUIRE(fd_reference(feature_maps::elu_plus_one{}, 5) == 18); }
    SECTION("relu") { REQUIRE(fd_reference(feature_maps::relu(1e-3), 5) == 18); }
    SECTION("favor iid") { REQUIRE(fd_reference(feature_maps::favor(5, 12, 3, false), 5) == 18); }
    SECTION("favor orthogonal") { REQUIRE(fd_reference(feature_maps::favor(5, 12, 4, true), 5) == 18); }
    SECTION("favor hyperbolic") { REQUIRE(fd_reference(feature_maps::favor(5, 12, 5, true, true), 5) == 18); }
    SECTION("trig_features") { REQUIRE(fd_reference(feature_maps::trig_features(5, 6, 5), 5) == 18); }
}

TEST_CASE("feature-map VJPs equal central finite differences", "[backward][fd]")
{
    // 2 roles × with/without the `sum` row shift
    SECTION("identity") { REQUIRE(fd_map(feature_maps::identity{}, 6) == 4); }
    SECTION("elu_plus_one") { REQUIRE(fd_map(feature_maps::elu_plus_one{}, 6) == 4); }
    SECTION("relu") { REQUIRE(fd_map(feature_maps::relu(1e-3), 6) == 4); }
    SECTION("favor iid") { REQUIRE(fd_map(feature_maps::favor(6, 16, 3, false), 6) == 4); }
    SECTION("favor orthogonal hyperbolic") { REQUIRE(fd_map(feature_maps::favor(6, 16, 3, true, true), 6) == 4); }
    SECTION("trig_features") { REQUIRE(fd_map(feature_maps::trig_features(6, 8, 5), 6) == 4); }
}

TEMPLATE_TEST_CASE("fast backward equals the reference backward for every feature map", "[backward]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // 2 masks × 3 normalizations × 6 lengths = 36 per feature map, and for the positive maps 2 masks × 2
    // normalizations with eps = 0.25 (4 more)
    SECTION("identity") { REQUIRE(sweep<S>(feature_maps::identity{}, 6, false) == 36); }
    SECTION("elu_plus_one") { REQUIRE(sweep<S>(feature_maps::elu_plus_one{}, 6, true) == 40); }
    SECTION("relu") { REQUIRE(sweep<S>(feature_maps::relu(1e-3), 6, true) == 40); }
    SECTION("favor iid") { REQUIRE(sweep<S>(feature_maps::favor(6, 16, 3, false), 6, true) == 40); }
    SECTION("favor orthogonal hyperbolic") { REQUIRE(sweep<S>(feature_maps::favor(6, 16, 3, true, true), 6, true) == 40); }
    SECTION("trig_features") { REQUIRE(sweep<S>(feature_maps::trig_features(6, 8, 5), 6, false) == 36); }
}
} // namespace test_backward
