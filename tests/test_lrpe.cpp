// LRPE transform properties (reference/lrpe.md §4): relative scores, unitarity, composition, closed forms,
// RoPE equivalence, exact angles at large positions, the permutation core beyond 512, and argument errors.
#include <catch2/catch.hpp>

#include "support_lrpe.hpp"

#include <linrpe/detail/traits.hpp>
#include <linrpe/positional/lrpe.hpp>

#include <cmath>
#include <limits>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_lrpe {

namespace {
using namespace linrpe;
using linrpe::index;
using namespace lrpe_test;

static_assert(detail::is_positional_encoding_v<positional::lrpe<float>, float>, "lrpe<float> is a positional encoding");
static_assert(detail::is_positional_encoding_v<positional::lrpe<double>, double>, "lrpe<double> is a positional encoding");
static_assert(detail::has_check_input<positional::lrpe<float>>::value && detail::has_check_feature_dim<positional::lrpe<float>>::value,
              "lrpe validates its head, parameters and the feature width through the core's optional hooks");
static_assert(positional::lrpe<float>::has_post_feature && !positional::lrpe<float>::has_pre_feature &&
                  !positional::lrpe<float>::has_mixing,
              "lrpe acts on the post-feature stage only");

const linrpe::index dims[] = {1, 2, 3, 8, 63, 64};

// Bound, in units of eps·‖x‖, on ‖T̂(x, s) − T(x, s)‖ for the computed T̂ (Higham-style worst cases):
// P = I or odd-even: exact; Householder: x·v̂ and x − 2(x·v̂)v̂ cost γ_{M+3}; DCT: each entry of Cx errs by
// γ_M‖x‖, so the vector by √M·M·eps·‖x‖. The core adds 4 eps·‖x‖: cos/sin rounded to S (0.5 eps each,
// the double table itself is ~1e-15 exact), one product and one sum per output entry.
template <class S>
double encode_units(const positional::lrpe<S>& pe)
{
    const double m = double(pe.dim());
    switch (pe.basis()) {
    case lrpe_basis::householder: return m + 3.0 + 4.0;
    case lrpe_basis::dct: return std::sqrt(m) * m + 4.0;
    default: return 4.0;
    }
}

template <class S>
double score(const positional::lrpe<S>& pe, const row_matrix<S>& q, const row_matrix<S>& k, linrpe::index s, linrpe::index t)
{
    const row_matrix<S> a = pe.transform(q, s), b = pe.transform(k, t);
    return a.template cast<double>().row(0).dot(b.template cast<double>().row(0));
}

// π^Δ(i) by composing π Δ times (independent of the encoder's cycle decomposition).
inline linrpe::index power_of(const std::vector<linrpe::index>& pi, linrpe::index i, linrpe::index delta)
{
    for (linrpe::index r = 0; r < delta; ++r) i = pi[std::size_t(i)];
    return i;
}

// §4.5 closed forms from y = Pq, z = Pk and Δ = t − s, written from the formulas.
template <class S>
double closed_form(const positional::lrpe<S>& pe, const Eigen::VectorXd& y, const Eigen::VectorXd& z, linrpe::index s, linrpe::index t)
{
    const linrpe::index m = pe.dim(), delta = t - s;
    double sc = 0;
    switch (pe.kind()) {
    case lrpe_kind::cosine:
        for (linrpe::index j = 0; j < m; ++j) sc += y(j) * z(j) * std::cos(pe.theta(0, j) * double(delta));
        return sc;
    case lrpe_kind::rotate: {
        const linrpe::index pairs = pe.rotated_pairs(), h = m / 2;
        std::vector<bool> rotated(std::size_t(m), false);
        for (linrpe::index i = 0; i < pairs; ++i) {
            const linrpe::index a = pe.layout() == lrpe_layout::interleaved ? 2 * i : i;
            const linrpe::index b = pe.layout() == lrpe_layout::interleaved ? 2 * i + 1 : i + h;
            rotated[std::size_t(a)] = rotated[std::size_t(b)] = true;
            const double ang = double(delta) * pe.theta(0, i);
            sc += (y(a) * z(a) + y(b) * z(b)) * std::cos(ang) + (y(b) * z(a) - y(a) * z(b)) * std::sin(ang);
        }
        for (linrpe::index j = 0; j < m; ++j)
            if (!rotated[std::size_t(j)]) sc += y(j) * z(j);
        return sc;
    }
    case lrpe_kind::permutation: {
        const auto& pi = pe.permutation(0);
        for (linrpe::index i = 0; i < m; ++i)
            sc += delta >= 0 ? y(i) * z(power_of(pi, i, delta)) : y(power_of(pi, i, -delta)) * z(i);
        return sc;
    }
    }
    return sc;
}

} // namespace

TEMPLATE_TEST_CASE("lrpe: scores depend only on t - s, up to positions 1e6", "[lrpe][shift]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const config& c : all_configs())
        for (linrpe::index m : dims) {
            const auto pe = make<S>(c, m);
            const row_matrix<S> q = uniform<S>(1, m, 11 + unsigned(m)), k = uniform<S>(1, m, 23 + unsigned(m));
            const double qk = double(q.norm()) * double(k.norm());
            // Each score is within 2·units·eps·‖q‖‖k‖ of the exact one (errors of ψ and κ); two scores differ
            // by at most twice that.
            const double tol = 4.0 * encode_units(pe) * eps<S>() * qk;
            const std::pair<linrpe::index, linrpe::index> st[] = {{0, 0}, {3, 11}, {40, 7}, {0, 100}};
            for (auto [s, t] : st)
                for (linrpe::index shift : {linrpe::index(1), linrpe::index(977), linrpe::index(1000000)}) {
                    const double a = score(pe, q, k, s, t), b = score(pe, q, k, s + shift, t + shift);
                    CAPTURE(c.name(), m, s, t, shift, a, b, tol);
                    CHECK(std::abs(a - b) <= tol);
                }
        }
}

TEMPLATE_TEST_CASE("lrpe: zero offset gives <Pq, Pk> and T preserves norms", "[lrpe][unitary]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const config& c : all_configs())
        for (linrpe::index m : dims) {
            const auto pe = make<S>(c, m);
            const row_matrix<double> p = basis_matrix(pe, 0);
            const row_matrix<S> q = uniform<S>(1, m, 5 + unsigned(m)), k = uniform<S>(1, m, 6 + unsigned(m));
            const Eigen::VectorXd y = p * q.template cast<double>().row(0).transpose(),
                                  z = p * k.template cast<double>().row(0).transpose();
            const double qk = double(q.norm()) * double(k.norm());
            const double tol = 2.0 * encode_units(pe) * eps<S>() * qk; // ψ and κ errors, see encode_units
            for (linrpe::index s : {linrpe::index(0), linrpe::index(5), linrpe::index(1000000)}) {
                const double sc = score(pe, q, k, s, s);
                CAPTURE(c.name(), m, s, sc, y.dot(z), tol);
                CHECK(std::abs(sc - y.dot(z)) <= tol);
                // ‖T(q, s)‖ = ‖Pq‖ (= ‖q‖ for an exactly orthogonal P), within the encoding error of q.
                const double norm_t = pe.transform(q, s).template cast<double>().norm();
                const double norm_tol = encode_units(pe) * eps<S>() * double(q.norm());
                CAPTURE(norm_t, y.norm(), norm_tol);
                CHECK(std::abs(norm_t - y.norm()) <= norm_tol);
                if (!c.learned_householder) CHECK(std::abs(norm_t - double(q.norm())) <= norm_tol + 4.0 * double(m) * eps<double>());
            }
        }
}

TEST_CASE("lrpe: explicit matrices compose, M_s^T M_t = M_0^T M_{t-s}", "[lrpe][matrix]")
{
    for (const config& c : all_configs())
        for (linrpe::index m : dims) {
            const auto pe = make<double>(c, m, /*heads=*/2);
            const linrpe::index mp = pe.post_output_dim(m);
            // ‖δM‖_F ≤ units·eps·√M (M unit columns), and the product adds γ_{M'} ‖M_s‖_F ‖M_t‖_F = M'·M·eps.
            const double tol = (4.0 * encode_units(pe) * std::sqrt(double(m)) + 2.0 * double(mp * m)) * eps<double>();
            const std::pair<linrpe::index, linrpe::index> st[] = {{0, 5}, {5, 17}, {17, 5}, {1000000, 1000003}, {3, 1000000}};
            for (auto [s, t] : st) {
                const row_matrix<double> ms = pe.transform_matrix(s, 1), mt = pe.transform_matrix(t, 1);
                REQUIRE(ms.rows() == mp);
                const row_matrix<double> lhs = ms.transpose() * mt;
                const row_matrix<double> rhs = t >= s ? row_matrix<double>(pe.transform_matrix(0, 1).transpose() * pe.transform_matrix(t - s, 1))
                                                      : row_matrix<double>((pe.transform_matrix(0, 1).transpose() * pe.transform_matrix(s - t, 1)).transpose());
                const double err = (lhs - rhs).norm();
                CAPTURE(c.name(), m, s, t, err, tol);
                CHECK(err <= tol);
            }
        }
}

TEMPLATE_TEST_CASE("lrpe: closed forms of reference/lrpe.md 4.5", "[lrpe][closed_form]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const config& c : all_configs())
        for (linrpe::index m : dims) {
            const auto pe = make<S>(c, m);
            const row_matrix<double> p = basis_matrix(pe, 0);
            const row_matrix<S> q = uniform<S>(1, m, 31 + unsigned(m)), k = uniform<S>(1, m, 37 + unsigned(m));
            const Eigen::VectorXd y = p * q.template cast<double>().row(0).transpose(),
                                  z = p * k.template cast<double>().row(0).transpose();
            // The closed form is evaluated in double at small Δ (error ~M·1e-16); the encoder's score within
            // 2·units·eps·‖q‖‖k‖ (encode_units).
            const double tol = 2.0 * encode_units(pe) * eps<S>() * double(q.norm()) * double(k.norm()) + 1e-13;
            const std::pair<linrpe::index, linrpe::index> st[] = {{0, 9}, {9, 0}, {100, 163}, {1000000, 1000037}, {1000037, 1000000}};
            for (auto [s, t] : st) {
                const double sc = score(pe, q, k, s, t), ref = closed_form(pe, y, z, s, t);
                CAPTURE(c.name(), m, s, t, sc, ref, tol);
                CHECK(std::abs(sc - ref) <= tol);
            }
            if (c.kind == lrpe_kind::cosine) { // real P: direction-blind, sc(Δ) = sc(−Δ)
                const double a = score(pe, q, k, 10, 31), b = score(pe, q, k, 31, 10);
                CHECK(std::abs(a - b) <= 2.0 * tol);
            }
        }
}

TEMPLATE_TEST_CASE("lrpe: rotate + I + base 10000 is textbook RoPE in both layouts", "[lrpe][rope]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (linrpe::index m : {linrpe::index(2), linrpe::index(8), linrpe::index(64)})
        for (lrpe_layout layout : {lrpe_layout::interleaved, lrpe_layout::half_split}) {
            const auto pe = positional::lrpe<S>::rope(m, 1, 10000.0, layout);
            const row_matrix<S> x = uniform<S>(4, m, 41 + unsigned(m));
            for (linrpe::index p0 : {linrpe::index(0), linrpe::index(17), linrpe::index(1000)}) {
                const row_matrix<S> got = pe.transform(x, p0);
                // Textbook RoPE (Su et al.): inv_freq_i = 10000^(−2i/M); interleaved rotates (x_2i, x_2i+1),
                // half-split (GPT-NeoX "rotate_half") rotates (x_i, x_{i+M/2}); x' = x cos + rot(x) sin.
                row_matrix<double> want(x.rows(), m);
                for (linrpe::index r = 0; r < x.rows(); ++r)
                    for (linrpe::index i = 0; i < m / 2; ++i) {
                        const double ang = double(p0 + r) * std::pow(10000.0, -2.0 * double(i) / double(m));
                        const linrpe::index a = layout == lrpe_layout::interleaved ? 2 * i : i;
                        const linrpe::index b = layout == lrpe_layout::interleaved ? 2 * i + 1 : i + m / 2;
                        want(r, a) = double(x(r, a)) * std::cos(ang) - double(x(r, b)) * std::sin(ang);
                        want(r, b) = double(x(r, b)) * std::cos(ang) + double(x(r, a)) * std::sin(ang);
                    }
                // Per entry: 4 eps of the encoder (encode_units) plus the textbook's own double angle rounding,
                // |pos·θ|·2^-53 ≤ 1003·2^-53 for the cos/sin arguments.
                const double tol = (4.0 * eps<S>() + 1003.0 * std::ldexp(1.0, -52)) * double(x.norm());
                const double err = (got.template cast<double>() - want).norm();
                CAPTURE(m, int(layout), p0, err, tol);
                CHECK(err <= tol);
            }
        }
}

TEST_CASE("lrpe: half-split equals odd-even P + interleaved for even M, not for odd M", "[lrpe][layout]")
{
    for (linrpe::index m : {linrpe::index(2), linrpe::index(8), linrpe::index(64), linrpe::index(3), linrpe::index(63)}) {
        lrpe_options half, oe;
        half.layout = lrpe_layout::half_split;
        oe.basis = lrpe_basis::odd_even;
        const positional::lrpe<double> a(lrpe_kind::rotate, m, 1, half), b(lrpe_kind::rotate, m, 1, oe);
        if (m % 2 == 0) {
            const row_matrix<double> q = uniform<double>(1, m, 3), k = uniform<double>(1, m, 4);
            const double tol = 8.0 * double(m) * eps<double>() * q.norm() * k.norm(); // 2 scores, units 4, M-term dots
            for (auto [s, t] : {std::pair<linrpe::index, linrpe::index>{0, 7}, {50, 3}, {1000000, 1000029}}) {
                const double sa = score(a, q, k, s, t), sb = score(b, q, k, s, t);
                CAPTURE(m, s, t, sa, sb);
                CHECK(std::abs(sa - sb) <= tol);
            }
        } else {
            // Half-split leaves the last channel unrotated, odd-even P + interleaved the middle one: with
            // q = k = e_{M−1} the first gives 1 at every offset, the second cos(Δθ) for a rotated pair.
            row_matrix<double> e = row_matrix<double>::Zero(1, m);
            e(0, m - 1) = 1.0;
            CHECK(std::abs(score(a, e, e, 0, 1) - 1.0) <= 4.0 * eps<double>());
            const linrpe::index pair = (m - 3) / 2; // odd-even puts x_{M−1} at channel M−2, in interleaved pair (M−3)/2
            const linrpe::index t = linrpe::index(std::ceil(2.0 / b.theta(0, pair))); // Δθ ≈ 2 rad: far from 1
            const double expected = std::cos(double(t) * b.theta(0, pair));
            CHECK(std::abs(score(a, e, e, 0, t) - 1.0) <= 4.0 * eps<double>());
            CHECK(std::abs(score(b, e, e, 0, t) - expected) <= 8.0 * eps<double>());
            CHECK(std::abs(expected - 1.0) > 0.5);
        }
    }
}

TEST_CASE("lrpe: partial rotation rotates the first pairs of each layout", "[lrpe][mix]")
{
    for (lrpe_layout layout : {lrpe_layout::interleaved, lrpe_layout::half_split})
        for (linrpe::index m : {linrpe::index(3), linrpe::index(8), linrpe::index(63), linrpe::index(64)}) {
            lrpe_options opt;
            opt.layout = layout;
            opt.rotate_fraction = 0.5;
            const positional::lrpe<double> pe(lrpe_kind::rotate, m, 1, opt);
            const linrpe::index pairs = (m / 2 + 1) / 2; // ⌈⌊M/2⌋/2⌉: the authors' core 2 (e = M/2 rounded up to even)
            REQUIRE(pe.rotated_pairs() == pairs);
            REQUIRE(pe.theta.cols() == pairs);
            for (linrpe::index i = 0; i < pairs; ++i) // RoPE spectrum over the rotated width e = 2·pairs
                CHECK(pe.theta(0, i) == Approx(std::pow(10000.0, -2.0 * double(i) / double(2 * pairs))).epsilon(1e-14));
            const row_matrix<double> x = uniform<double>(1, m, 8);
            const row_matrix<double> y = pe.transform(x, 123);
            const linrpe::index h = m / 2;
            for (linrpe::index j = 0; j < m; ++j) {
                const bool rotated = layout == lrpe_layout::interleaved ? j < 2 * pairs : (j < pairs || (j >= h && j < h + pairs));
                CAPTURE(int(layout), m, j, rotated);
                if (rotated) CHECK(y(0, j) != x(0, j));
                else CHECK(y(0, j) == x(0, j));
            }
        }
}

TEMPLATE_TEST_CASE("lrpe: angles at position 1e6 are as accurate as at 0", "[lrpe][precision]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    if (std::numeric_limits<long double>::digits < 64) {
        SUCCEED("long double has no extra precision here: reference unavailable");
        return;
    }
    const linrpe::index m = 64;
    const auto pe = positional::lrpe<S>::rope(m);
    const row_matrix<S> x = uniform<S>(1, m, 77);
    for (linrpe::index pos : {linrpe::index(0), linrpe::index(1000000), linrpe::index(1000001), linrpe::index(123456789)}) {
        const row_matrix<S> got = pe.transform(x, pos);
        row_matrix<double> want(1, m);
        for (linrpe::index i = 0; i < m / 2; ++i) {
            // Reference in long double (64-bit mantissa): the product pos·θ is exact to pos·θ·2^-64 and fmodl
            // reduces exactly, so the angle is within ~pos·2^-63 rad.
            const long double ang = std::fmod(static_cast<long double>(pos) * static_cast<long double>(pe.theta(0, i)),
                                              2.0L * 3.141592653589793238462643383279503L);
            const double c = double(std::cos(ang)), s = double(std::sin(ang));
            want(0, 2 * i) = double(x(0, 2 * i)) * c - double(x(0, 2 * i + 1)) * s;
            want(0, 2 * i + 1) = double(x(0, 2 * i + 1)) * c + double(x(0, 2 * i)) * s;
        }
        // Same bound at every position: 4 eps of the encoder, plus the reference's pos·2^-62 angle error.
        const double tol = (4.0 * eps<S>() + double(pos) * std::ldexp(1.0, -62)) * double(x.norm());
        const double err = (got.template cast<double>() - want).norm();
        CAPTURE(pos, err, tol);
        CHECK(err <= tol);
    }
}

TEST_CASE("lrpe: the permutation core works at any position (cycle decomposition)", "[lrpe][permutation]")
{
    const linrpe::index m = 63;
    const positional::lrpe<double> pe(lrpe_kind::permutation, m, 2);
    const row_matrix<double> x = uniform<double>(1, m, 9);
    for (linrpe::index head : {linrpe::index(0), linrpe::index(1)}) {
        const auto& pi = pe.permutation(head);
        for (linrpe::index s : {linrpe::index(0), linrpe::index(1), linrpe::index(511), linrpe::index(512), linrpe::index(700), linrpe::index(5000)}) {
            const row_matrix<double> y = pe.transform(x, s, head);
            for (linrpe::index j = 0; j < m; ++j) CHECK(y(0, j) == x(0, power_of(pi, j, s))); // (Π^s x)_j = x_{π^s(j)}
        }
    }
    // Heads draw different permutations from the same seed; the same seed gives the same permutation.
    CHECK(pe.permutation(0) != pe.permutation(1));
    CHECK(positional::lrpe<float>(lrpe_kind::permutation, m, 2).permutation(1) == pe.permutation(1));
}

TEST_CASE("lrpe: Householder P is a symmetric involution with P v = -v", "[lrpe][householder]")
{
    lrpe_options opt;
    opt.basis = lrpe_basis::householder;
    opt.seed = 3;
    const positional::lrpe<double> pe(lrpe_kind::cosine, 8, 2, opt);
    CHECK(std::abs(pe.householder.row(1).norm() - 1.0) <= 4.0 * eps<double>()); // normalized once, exactly
    const row_matrix<double> p = basis_matrix(pe, 1);
    CHECK((p - p.transpose()).norm() == 0.0);
    CHECK((p * p - row_matrix<double>::Identity(8, 8)).norm() <= 32.0 * eps<double>());
    const Eigen::VectorXd v = pe.householder.row(1).transpose();
    CHECK((p * v + v).norm() <= 16.0 * eps<double>());
    // The transform at position 0 is P itself for the cosine core ([P x ; 0]).
    const row_matrix<double> m0 = pe.transform_matrix(0, 1);
    CHECK((m0.topRows(8) - p).norm() <= 16.0 * eps<double>());
    CHECK(m0.bottomRows(8).norm() == 0.0);
}

TEST_CASE("lrpe: positivity is declared only for cosine + cosFormer theta within max_len", "[lrpe][positivity]")
{
    const auto cos_former = positional::lrpe<float>::cosformer(8, 100);
    CHECK(cos_former.preserves_positivity(0));
    CHECK(cos_former.preserves_positivity(100));
    CHECK_FALSE(cos_former.preserves_positivity(101));
    CHECK_FALSE(positional::lrpe<float>::rope(8).preserves_positivity(0));
    CHECK_FALSE(positional::lrpe<float>(lrpe_kind::cosine, 8).preserves_positivity(1));
    CHECK_FALSE(positional::lrpe<float>(lrpe_kind::permutation, 8).preserves_positivity(1));
    lrpe_options hh;
    hh.theta = lrpe_theta::cosformer;
    hh.max_len = 100;
    hh.basis = lrpe_basis::householder;
    CHECK_FALSE(positional::lrpe<float>(lrpe_kind::cosine, 8, 1, hh).preserves_positivity(1));
    auto raised = cos_former;
    raised.theta(0, 3) *= 2.0;
    CHECK_FALSE(raised.preserves_positivity(100));
    // Non-negativity is really lost elsewhere (§4.11): q, k >= 0 and θΔ = π give a negative score.
    row_matrix<double> th(1, 1);
    th(0, 0) = 3.14159265358979323846 / 4.0;
    const positional::lrpe<double> rot(lrpe_kind::rotate, 2, th);
    const row_matrix<double> q = row_matrix<double>::Constant(1, 2, 1.0);
    CHECK(score(rot, q, q, 0, 4) < -1.0);
}

TEST_CASE("lrpe: bad arguments throw linrpe::error naming the argument", "[lrpe][errors]")
{
    using P = positional::lrpe<float>;
    REQUIRE_THROWS_AS(P(lrpe_kind::rotate, 0), linrpe::error);
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 0), Catch::Contains("lrpe dim"));
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 8, 0), Catch::Contains("lrpe heads"));
    lrpe_options bad_fraction;
    bad_fraction.rotate_fraction = 0.0;
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 8, 1, bad_fraction), Catch::Contains("rotate_fraction"));
    lrpe_options bad_base;
    bad_base.base = -1.0;
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 8, 1, bad_base), Catch::Contains("base"));
    lrpe_options bad_len;
    bad_len.theta = lrpe_theta::cosformer;
    REQUIRE_THROWS_WITH(P(lrpe_kind::cosine, 8, 1, bad_len), Catch::Contains("max_len"));

    // θ count: 4 pairs for rotate M = 8, 8 values for cosine.
    REQUIRE_THROWS_AS(P(lrpe_kind::rotate, 8, row_matrix<double>::Ones(2, 3)), linrpe::error);
    REQUIRE_THROWS_WITH(P(lrpe_kind::rotate, 8, row_matrix<double>::Ones(2, 3)), Catch::Contains("theta"));
    P cosine(lrpe_kind::cosine, 8, 2);
    REQUIRE_THROWS_WITH(cosine.set_theta(row_matrix<double>::Ones(2, 4)), Catch::Contains("theta"));
    row_matrix<double> nan_theta = row_matrix<double>::Ones(2, 8);
    nan_theta(1, 5) = std::numeric_limits<double>::quiet_NaN();
    REQUIRE_THROWS_WITH(cosine.set_theta(nan_theta), Catch::Contains("theta"));
    cosine.theta(1, 2) = std::numeric_limits<double>::infinity(); // public data: caught at use
    const row_matrix<float> x = row_matrix<float>::Ones(2, 8);
    REQUIRE_THROWS_WITH(cosine.transform(x, 0, 1), Catch::Contains("theta"));

    P hh(lrpe_kind::rotate, 8, 2);
    row_matrix<double> v = row_matrix<double>::Ones(2, 8);
    v.row(1).setZero();
    REQUIRE_THROWS_AS(hh.set_householder(v, true), linrpe::error);
    REQUIRE_THROWS_WITH(hh.set_householder(v, true), Catch::Contains("householder vector"));
    REQUIRE_THROWS_WITH(hh.set_householder(row_matrix<double>::Ones(2, 7), false), Catch::Contains("householder"));
    hh.set_householder(row_matrix<double>::Ones(2, 8), true);
    hh.householder.row(0).setZero();
    REQUIRE_THROWS_WITH(hh.transform(x, 0, 0), Catch::Contains("householder vector"));

    P perm(lrpe_kind::permutation, 4);
    REQUIRE_THROWS_WITH(perm.set_permutation(0, {0, 1, 2}), Catch::Contains("permutation size"));
    REQUIRE_THROWS_WITH(perm.set_permutation(0, {0, 1, 1, 3}), Catch::Contains("permutation"));
    REQUIRE_THROWS_WITH(perm.set_permutation(1, {0, 1, 2, 3}), Catch::Contains("head"));
    perm.set_permutation(0, {1, 2, 3, 0});
    CHECK(perm.permutation(0) == std::vector<linrpe::index>{1, 2, 3, 0});

    const P rope = P::rope(8, 2);
    REQUIRE_THROWS_WITH(rope.transform(x, 0, 2), Catch::Contains("head"));
    REQUIRE_THROWS_WITH(rope.transform(row_matrix<float>::Ones(2, 6), 0, 0), Catch::Contains("lrpe dim"));
    REQUIRE_THROWS_WITH(rope.transform(x, -1, 0), Catch::Contains("first_position"));
    REQUIRE_THROWS_WITH(rope.transform_matrix(-3, 0), Catch::Contains("position"));
}
} // namespace test_lrpe
