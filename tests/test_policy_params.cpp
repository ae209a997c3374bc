// Policy parameters: validated setters and call-time checks (names in the message, nothing written),
// relu's shift, LRPE's explicit pair count, explicit θ, sum refused at construction, negative permutation
// powers, scaled Householder norms, exact angles and phases up to 2^53 − 1 (refused beyond), and rms
// without overflow of the squared numerator.
#include "support.hpp"

#include <linrpe/detail/lrpe_angles.hpp>
#include <linrpe/detail/normalize.hpp>

#include <cmath>
#include <limits>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_policy_params {

namespace {
using namespace linrpe;
using linrpe::index;

__extension__ typedef __float128 quad; // 113-bit significand: the reference of the angle reductions

// 2π to ~160 bits as three doubles (hi = fl(2π)); summed in quad it is 2π to the quad's precision.
quad two_pi_quad() { return quad(6.28318530717958623200e+00) + quad(2.44929359829470635445e-16) + quad(-5.98953961943667937e-33); }

// (p·θ) mod 2π in [−π, π], exact to ~2^-60 rad for p < 2^53: the product of two doubles is exact in quad (106
// bits), and k·2π with |k| < 2^52 errs by 2^52·2π·2^-113 < 2^-58.
double reference_angle(double p, double theta)
{
    const quad x = quad(p) * quad(theta), tp = two_pi_quad();
    const quad k = quad(static_cast<long long>(x / tp + (x >= 0 ? quad(0.5) : quad(-0.5))));
    return double(x - k * tp);
}

// Distance of two angles modulo 2π.
double angle_distance(double a, double b)
{
    const double pi = 3.14159265358979323846;
    double dist = std::fmod(std::abs(a - b), 2.0 * pi);
    return std::min(dist, 2.0 * pi - dist);
}

const index two_pow_40 = index(1) << 40;
const index last_exact = detail::max_exact_position;

// A random-feature map of input width 4 and 8 features with `heads` independent draws.
template <class Map>
Map make_map(index heads);
template <>
feature_maps::favor make_map<feature_maps::favor>(index heads) { return feature_maps::favor(4, 8, 1, true, false, heads); }
template <>
feature_maps::trig_features make_map<feature_maps::trig_features>(index heads) { return feature_maps::trig_features(4, 8, 1, true, heads); }

// Runs `call` expecting a linrpe::error whose message contains `name`, and checks `out` kept its sentinel.
template <class Call, class Out>
void refused(const Call& call, const char* name, const Out& out, double sentinel)
{
    REQUIRE_THROWS_AS(call(), linrpe::error);
    REQUIRE_THROWS_WITH(call(), Catch::Contains(name));
    CHECK(out.isConstant(static_cast<typename Out::Scalar>(sentinel))); // nothing written before the refusal
}
} // namespace

// ---- feature maps --------------------------------------------------------------------------------------

TEST_CASE("relu: `shift` is the additive shift; floor() is its deprecated alias; checked at the call", "[params][relu]")
{
    feature_maps::relu r(0.25);
    CHECK(r.shift == 0.25);
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    CHECK(r.floor() == 0.25); // old code keeps compiling (with a deprecation warning)
    r.floor() = 0.5;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    CHECK(r.shift == 0.5);
    REQUIRE_THROWS_WITH(feature_maps::relu(-1.0), Catch::Contains("relu shift"));

    const row_matrix<float> x = test::uniform<float>(6, 4, 1), v = test::uniform<float>(6, 3, 2);
    row_matrix<float> out = row_matrix<float>::Constant(6, 3, 42.0f);
    linear_attention<feature_maps::relu, positional::none, float> attn;
    attn.feature_map().shift = std::numeric_limits<double>::quiet_NaN(); // public data: caught at the call
    refused([&] { attn.forward(x, x, v, out); }, "relu shift", out, 42.0);
    attn.feature_map().shift = -0.5;
    refused([&] { attn.forward(x, x, v, out); }, "relu shift", out, 42.0);
}

TEMPLATE_TEST_CASE("favor and trig_features: projections are bounds-checked and validated", "[params][favor]",
                   feature_maps::favor, feature_maps::trig_features)
{
    using Map = TestType;
    const Map shared = make_map<Map>(1), per_head = make_map<Map>(3);
    // Out-of-range heads were a heap overflow: now linrpe::error naming the head.
    REQUIRE_THROWS_WITH(per_head.projection(3), Catch::Contains("head"));
    REQUIRE_THROWS_WITH(per_head.projection(-1), Catch::Contains("head"));
    REQUIRE_THROWS_WITH(shared.projection(-1), Catch::Contains("head"));
    CHECK(shared.projection(5) == shared.projection(0)); // one draw serves every head

    Map map = make_map<Map>(2);
    const row_matrix<double> before = map.projection(1);
    REQUIRE_THROWS_WITH(map.set_projection(1, row_matrix<double>::Ones(8, 5)), Catch::Contains("projection"));
    row_matrix<double> nan_omega = row_matrix<double>::Ones(8, 4);
    nan_omega(3, 2) = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THROWS_WITH(map.set_projection(1, nan_omega), Catch::Contains("projection"));
    REQUIRE_THROWS_WITH(map.set_projection(2, row_matrix<double>::Ones(8, 4)), Catch::Contains("head"));
    CHECK(map.projection(1) == before); // refused setters change nothing
    map.set_projection(1, row_matrix<double>::Ones(8, 4));
    CHECK(map.projection(1) == row_matrix<double>::Ones(8, 4));

    // Direct writes through the reference are caught before the call writes anything.
    options<double> opt;
    opt.norm = normalization::rms;
    const row_matrix<double> x = test::uniform<double>(5, 4, 3), v = test::uniform<double>(5, 2, 4);
    row_matrix<double> out = row_matrix<double>::Constant(5, 2, 42.0);
    linear_attention<Map, positional::none, double> attn(make_map<Map>(2), {}, opt);
    attn.feature_map().projection(1)(0, 0) = std::numeric_limits<double>::infinity();
    refused([&] { attn.forward(x, x, v, out, 1); }, "projection", out, 42.0);
    attn.feature_map().projection(1).resize(8, 3);
    refused([&] { attn.forward(x, x, v, out, 1); }, "projection (features, input_dim)", out, 42.0);
    attn.forward(x, x, v, out, 0); // head 0 is untouched and still runs
    CHECK(out.allFinite());
}

// ---- LRPE ----------------------------------------------------------------------------------------------

TEST_CASE("lrpe: explicit pair count, and the pinned rule of rotate_fraction", "[params][lrpe]")
{
    using P = positional::lrpe<double>;
    lrpe_options opt;
    opt.rotate_pairs = 3;
    CHECK(P(lrpe_kind::rotate, 20, 1, opt).rotated_pairs() == 3);
    CHECK(P(lrpe_kind::rotate, 20, 1, opt).theta_count() == 3);
    opt.rotate_pairs = 0; // no rotation at all: T = I
    const P none(lrpe_kind::rotate, 20, 1, opt);
    const row_matrix<double> x = test::uniform<double>(3, 20, 5);
    CHECK(test::bit_identical(none.transform(x, 1000), x));
    opt.rotate_pairs = 11;
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 20, 1, opt), Catch::Contains("rotate_pairs"));
    opt.rotate_pairs = 2;
    REQUIRE_THROWS_WITH(P(lrpe_kind::cosine, 20, 1, opt), Catch::Contains("rotate_pairs"));
    // ⌈f·P⌉, a product within 1e-9 above an integer counting as that integer, at least one pair.
    CHECK(0.28 * 25.0 > 7.0);                     // the rounding the rule absorbs
    CHECK(P::pairs_of_fraction(0.28, 25) == 7);   // not 8
    CHECK(P::pairs_of_fraction(0.3, 10) == 3);
    CHECK(P::pairs_of_fraction(0.31, 10) == 4);
    CHECK(P::pairs_of_fraction(0.5, 7) == 4);
    CHECK(P::pairs_of_fraction(1e-12, 10) == 1);
    CHECK(P::pairs_of_fraction(1.0, 0) == 0);
    lrpe_options frac;
    frac.rotate_fraction = 0.28;
    CHECK(P(lrpe_kind::rotate, 51, 1, frac).rotated_pairs() == 7);
}

TEST_CASE("lrpe: explicit_values without set_theta is refused at the call, naming theta", "[params][lrpe]")
{
    lrpe_options opt;
    opt.theta = lrpe_theta::explicit_values;
    options<float> rms;
    rms.norm = normalization::rms;
    using attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float>;
    attention attn({}, positional::lrpe<float>(lrpe_kind::rotate, 8, 2, opt), rms);
    const row_matrix<float> x = test::uniform<float>(6, 8, 1), v = test::uniform<float>(6, 3, 2);
    row_matrix<float> out = row_matrix<float>::Constant(6, 3, 42.0f);
    refused([&] { attn.forward(x, x, v, out, 1); }, "theta", out, 42.0);
    REQUIRE_THROWS_WITH(attn.positional().transform(x, 0), Catch::Contains("theta"));
    REQUIRE_THROWS_WITH(attn.features(x, role::query), Catch::Contains("theta"));
    row_matrix<double> th = row_matrix<double>::Constant(2, 4, 0.1);
    attn.positional().set_theta(th);
    attn.forward(x, x, v, out, 1);
    CHECK(out.allFinite());
    // Assigning the public member (the pre-setter way) is accepted too.
    attention direct({}, positional::lrpe<float>(lrpe_kind::cosine, 8, 2, opt), rms);
    direct.positional().theta = row_matrix<double>::Constant(2, 8, 0.2);
    direct.forward(x, x, v, out, 0);
    CHECK(out.allFinite());
    // Permutation has no θ: nothing to load.
    attention perm({}, positional::lrpe<float>(lrpe_kind::permutation, 8, 2, opt), rms);
    perm.forward(x, x, v, out, 0);
    CHECK(out.allFinite());
}

TEST_CASE("lrpe: normalization::sum is refused at construction unless positivity is possible", "[params][lrpe]")
{
    using attention = linear_attention<feature_maps::relu, positional::lrpe<float>, float>;
    const options<float> sum_opt; // default normalization::sum
    REQUIRE_THROWS_WITH(attention({}, positional::lrpe<float>::rope(8), sum_opt), Catch::Contains("options.norm"));
    REQUIRE_THROWS_WITH(attention({}, positional::lrpe<float>(lrpe_kind::permutation, 8), sum_opt), Catch::Contains("options.norm"));
    REQUIRE_THROWS_WITH(attention({}, positional::lrpe<float>(lrpe_kind::cosine, 8), sum_opt), Catch::Contains("options.norm"));
    lrpe_options hh;
    hh.theta = lrpe_theta::cosformer;
    hh.max_len = 10;
    hh.basis = lrpe_basis::householder;
    REQUIRE_THROWS_WITH(attention({}, positional::lrpe<float>(lrpe_kind::cosine, 8, 1, hh), sum_opt), Catch::Contains("options.norm"));
    // cosFormer can keep scores >= 0: constructed, and checked per call (offsets within max_len).
    attention cf({}, positional::lrpe<float>::cosformer(8, 10), sum_opt);
    CHECK(cf.positional().positivity_possible());
    options<float> signed_ok = sum_opt;
    signed_ok.allow_signed_normalizer = true;
    attention opted({}, positional::lrpe<float>::rope(8), signed_ok);
    // set_options is checked the same way.
    options<float> rms;
    rms.norm = normalization::rms;
    attention later({}, positional::lrpe<float>::rope(8), rms);
    REQUIRE_THROWS_WITH(later.set_options(sum_opt), Catch::Contains("options.norm"));
    CHECK(later.opts().norm == normalization::rms);
}

TEST_CASE("lrpe: permutation powers are right for negative positions", "[params][lrpe]")
{
    const linrpe::index m = 9;
    const positional::lrpe<double> pe(lrpe_kind::permutation, m, 1);
    const row_matrix<double> x = test::uniform<double>(1, m, 3);
    row_matrix<double> back(1, m), there(1, m);
    for (const linrpe::index s : {linrpe::index(1), linrpe::index(4), linrpe::index(13), linrpe::index(1000)}) {
        // Π^{−s} then Π^{s} is the identity; before the fix −s % len < 0 indexed before the cycle.
        pe.encode_post<double>(x, back, -s, 0, role::query);
        pe.encode_post<double>(back, there, s, 0, role::query);
        CAPTURE(s);
        CHECK(test::bit_identical(there, x));
    }
}

TEST_CASE("lrpe: Householder vectors use a scaled norm; messages say what is wrong", "[params][lrpe]")
{
    positional::lrpe<double> pe(lrpe_kind::rotate, 6, 2);
    for (const double scale : {1e-170, 1e170}) {
        const row_matrix<double> v = test::uniform<double>(2, 6, 9, scale);
        pe.set_householder(v, false); // 1e-170 was "zero vector"; 1e170 became 0 (norm() overflowed)
        for (linrpe::index h = 0; h < 2; ++h) {
            CAPTURE(scale, h);
            CHECK(std::abs(pe.householder.row(h).norm() - 1.0) <= 8 * std::numeric_limits<double>::epsilon());
        }
        pe.set_householder(v, true); // learned: v/(‖v‖ + 1e-6) at use; finite either way
        const row_matrix<double> y = pe.transform(test::uniform<double>(3, 6, 1), 5, 1);
        CHECK(y.allFinite());
    }
    row_matrix<double> zero = row_matrix<double>::Ones(2, 6);
    zero.row(1).setZero();
    REQUIRE_THROWS_WITH(pe.set_householder(zero, true), Catch::Contains("all entries zero for head 1"));
}

TEST_CASE("lrpe: angles are exact up to 2^53 − 1 and positions beyond are refused", "[params][lrpe][precision]")
{
    // Cody–Waite covered |k| < 2^29 turns; at 2^40 the old fallback was ~1e-6 rad off. Bound: the reduction
    // errs by <= 2^-53 turns in the sum of fractions plus ulp(π) in the final product (lrpe_angles.hpp):
    // 2π·2^-53 + 2^-51 < 1.2e-15 rad, for θ up to 4.
    const double bound = 2.0 * 3.14159265358979323846 * std::ldexp(1.0, -53) + std::ldexp(1.0, -51);
    for (const double theta : {1.0, 0.7853981633974483, 0.123456789, 1e-4, 3.9})
        for (const linrpe::index p : {linrpe::index(1) << 29, linrpe::index(3) << 30, two_pow_40, two_pow_40 + 12345, (linrpe::index(1) << 45) + 7,
                              (linrpe::index(1) << 52) + 3, last_exact}) {
            const double got = detail::reduced_angle(double(p), theta), want = reference_angle(double(p), theta);
            const double err = angle_distance(got, want);
            CAPTURE(theta, p, got, want, err, bound);
            CHECK(err <= bound);
            CHECK(std::abs(got) <= 3.1415926535897936);
        }

    // Scores depend only on t − s at 2^40 as at 0 (double: the shift invariance the issue saw fail).
    const auto pe = positional::lrpe<double>::rope(16);
    const row_matrix<double> q = test::uniform<double>(1, 16, 1), k = test::uniform<double>(1, 16, 2);
    const double at0 = (pe.transform(q, 0) * pe.transform(k, 37).transpose())(0, 0);
    const double far = (pe.transform(q, two_pow_40) * pe.transform(k, two_pow_40 + 37).transpose())(0, 0);
    // Per pair the score is a·cos + b·sin of the angle difference; each angle errs by <= bound + a few ulp of
    // the table, so |Δscore| <= Σ_i |q_i||k_i| ... < ‖q‖‖k‖·4·(bound + 4 eps).
    const double tol = 4.0 * (bound + 4 * std::numeric_limits<double>::epsilon()) * q.norm() * k.norm();
    CAPTURE(at0, far, tol);
    CHECK(std::abs(at0 - far) <= tol);

    // Beyond 2^53 − 1 a position is not an exact double: refused, naming the position.
    REQUIRE_THROWS_WITH(pe.transform(q, last_exact + 1), Catch::Contains("first_position"));
    REQUIRE_THROWS_WITH(pe.transform(row_matrix<double>::Ones(3, 16), last_exact - 1), Catch::Contains("first_position"));
    CHECK(pe.transform(q, last_exact).allFinite());
    options<double> rms;
    rms.norm = normalization::rms;
    const linear_attention<feature_maps::elu_plus_one, positional::lrpe<double>, double> attn({}, pe, rms);
    const row_matrix<double> x = test::uniform<double>(4, 16, 3), v = test::uniform<double>(4, 2, 4);
    row_matrix<double> out = row_matrix<double>::Constant(4, 2, 42.0);
    refused([&] { attn.forward(x, x, v, out, 0, last_exact - 2); }, "first_position", out, 42.0);
    refused([&] { attn.features(x, role::key, 0, last_exact - 1); }, "first_position", out, 42.0);
    refused([&] { attn.features(x, role::key, 0, -1); }, "first_position", out, 42.0);
}

// ---- SPE -----------------------------------------------------------------------------------------------

TEST_CASE("sine_spe: validated setters; phases exact up to 2^53 − 1, refused beyond", "[params][spe]")
{
    const linrpe::index h = 2, d = 3, k = 1, r = 8;
    positional::sine_spe<double> pe(h, d, k, r, 4, false);
    using M = row_matrix<double>;
    const M good = M::Constant(h * d, k, 0.0), bad_shape = M::Zero(h * d, k + 1);
    M nan = good;
    nan(4, 0) = std::numeric_limits<double>::quiet_NaN();
    const M freqs = pe.freqs;
    REQUIRE_THROWS_WITH(pe.set_parameters(bad_shape, good, good), Catch::Contains("a_f"));
    REQUIRE_THROWS_WITH(pe.set_parameters(good, nan, good), Catch::Contains("theta"));
    REQUIRE_THROWS_WITH(pe.set_parameters(good, good, nan), Catch::Contains("a_lambda"));
    CHECK(pe.freqs == freqs); // nothing changed
    REQUIRE_THROWS_WITH(pe.set_gate(M::Zero(h, d + 1)), Catch::Contains("gate"));
    CHECK_FALSE(pe.gated);

    // a_f = 0 gives f = 1/4 exactly: the key code at positions 0 and 1 is λs·Z_0 and λs·Z_1 (K = 1).
    const M gains = M::Constant(h * d, k, 0.5);
    pe.set_parameters(good, good, gains);
    const M z0 = pe.code(role::key, 1, 2, 0, 1), z1 = pe.code(role::key, 1, 2, 1, 1);
    // Then an arbitrary frequency: the key code at p is cos(2π f p) z0 + sin(2π f p) z1.
    const double a_f = 0.3712;
    pe.set_parameters(M::Constant(h * d, k, a_f), good, gains);
    const double f = 0.5 / (1.0 + std::exp(-a_f));
    for (const linrpe::index p : {linrpe::index(7), two_pow_40 + 3, (linrpe::index(1) << 50) + 11, last_exact}) {
        // f·p in quad is exact (106 bits); its fractional part is the phase in turns.
        const quad fp = quad(f) * quad(double(p));
        const quad frac = fp - quad(static_cast<long long>(fp));
        const double angle = double(frac * two_pi_quad());
        const M want = std::cos(angle) * z0 + std::sin(angle) * z1;
        const M got = pe.code(role::key, 1, 2, p, 1);
        // Phase exact to 2^-54 turns, cos/sin and the GEMM to a few eps of ‖z‖: 16 eps·(‖z0‖ + ‖z1‖).
        const double err = (got - want).norm(), tol = 16 * std::numeric_limits<double>::epsilon() * (z0.norm() + z1.norm());
        CAPTURE(p, err, tol);
        CHECK(err <= tol);
    }
    REQUIRE_THROWS_WITH(pe.code(role::key, 0, 0, last_exact, 2), Catch::Contains("first_position"));
    REQUIRE_THROWS_WITH(pe.code(role::key, 0, 0, -1, 1), Catch::Contains("first_position"));

    // Direct writes to the public parameters are caught at the call, before anything is written.
    const linear_attention<feature_maps::elu_plus_one, positional::sine_spe<double>, double> attn({}, pe);
    auto edited = attn;
    edited.positional().gains(3, 0) = std::numeric_limits<double>::infinity();
    const M x = test::uniform<double>(5, d, 1), v = test::uniform<double>(5, 2, 2);
    M out = M::Constant(5, 2, 42.0);
    refused([&] { edited.forward(x, x, v, out, 1); }, "sine_spe gains", out, 42.0);
    refused([&] { attn.forward(x, x, v, out, 0, last_exact - 1); }, "first_position", out, 42.0);
    positional::sine_spe<double> gated = pe;
    gated.set_gate(M::Constant(h, d, 0.3));
    CHECK(gated.gated);
}

TEST_CASE("conv_spe: validated setters and non-negative positions", "[params][spe]")
{
    const linrpe::index h = 2, d = 3, w = 4, r = 8;
    positional::conv_spe<float> pe(h, d, w, r, 4, false);
    using M = row_matrix<float>;
    const M ok = M::Constant(h * d, w, 0.5f);
    M inf = ok;
    inf(5, 3) = std::numeric_limits<float>::infinity();
    const M before = pe.query_filter;
    REQUIRE_THROWS_WITH(pe.set_filters(M::Zero(h * d, w + 1), ok), Catch::Contains("query_filter"));
    REQUIRE_THROWS_WITH(pe.set_filters(ok, inf), Catch::Contains("key_filter"));
    CHECK(pe.query_filter == before);
    pe.set_filters(ok, ok);
    CHECK(pe.key_filter == ok);
    REQUIRE_THROWS_WITH(pe.set_gate(M::Zero(h + 1, d)), Catch::Contains("gate"));
    pe.set_gate(M::Zero(h, d));
    CHECK(pe.gated);
    const linear_attention<feature_maps::elu_plus_one, positional::conv_spe<float>, float> attn({}, pe);
    const M x = test::uniform<float>(5, d, 1), v = test::uniform<float>(5, 2, 2);
    M out = M::Constant(5, 2, 42.0f);
    refused([&] { attn.features(x, role::query, 0, -3); }, "first_position", out, 42.0);
}

// ---- rms -----------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("rms: huge numerators are normalized, not zeroed, and eps keeps its meaning", "[params][rms]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index rows = 6, cols = 5;
    row_matrix<S> num = test::uniform<S>(rows, cols, 3);
    num.row(0) *= S(1e-3);  // small rows: eps matters, formula as is
    num.row(1) *= S(0.9);
    const S big = std::numeric_limits<S>::max() / S(8); // squares overflow in S
    num.row(2) *= big;
    num.row(3) *= std::sqrt(std::numeric_limits<S>::max()) * S(4);
    num.row(4).setConstant(S(0));
    num(5, 2) = S(3); // max-abs > 1 in one entry
    for (const S eps : {S(1e-6), S(1e-2)}) {
        row_matrix<S> out = num;
        detail::normalize_rows<S>(out, nullptr, normalization::rms, eps);
        for (linrpe::index i = 0; i < rows; ++i) {
            // Reference in long double, where the squares of these rows do not overflow.
            long double ms = 0;
            for (linrpe::index j = 0; j < cols; ++j) ms += (long double)num(i, j) * (long double)num(i, j);
            const long double rho = std::sqrt(ms / cols + (long double)eps);
            double err = 0, ref_norm = 0;
            for (linrpe::index j = 0; j < cols; ++j) {
                const double want = double((long double)num(i, j) / rho);
                err = std::max(err, std::abs(double(out(i, j)) - want));
                ref_norm = std::max(ref_norm, std::abs(want));
            }
            // Squares, a sum of `cols` and one rsqrt and product: (cols + 4) u of the largest entry.
            const double tol = (cols + 4) * test::unit_roundoff<S>() * std::max(ref_norm, 1e-300);
            CAPTURE(i, double(eps), err, tol);
            CHECK(err <= tol);
            CHECK(out.row(i).allFinite());
        }
        CHECK(out.row(2).cwiseAbs().maxCoeff() > S(0.1)); // before the fix: all 0
    }
}
} // namespace test_policy_params
