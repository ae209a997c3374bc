// No leak from the future in the causal backward of every positional family: none, LRPE rotate (θ learned),
// sineSPE and convSPE (gated), Toeplitz RPE (dense, fft, banded), and the causal FFT mixer's VJP with FFT
// rectangles forced small. A causal head's gradients split by what the math lets them read:
//
//   (a) out_i and dQ_i (i < t) read only rows <= i of q, k, v and dOut: NaN, ±Inf or ±1e30 in rows >= t of
//       all four must leave them bit-identical (a masked pair weighted by 0 would turn 0·NaN into NaN);
//   (b) dK_j, dV_j (j >= t) read no query and no seed row before j: the same poisons in rows < t of q and
//       dOut must leave them bit-identical (the same masked pairs, seen from the key side);
//   (c) dK_j, dV_j for j < t and the parameter gradients do depend on the future legitimately (through dOut
//       of later rows), so they are checked with dOut = 0 on rows >= t: then the later rows' terms are exact
//       zeros, and other FINITE future inputs must leave dQ, dK, dV on rows < t and every parameter gradient
//       bit-identical and finite. Poison is not implied here: a later row's term is 0 · (its inputs), and
//       0·NaN = NaN by IEEE 754 for any implementation of the chain rule, as for 1e30 in float whose products
//       overflow to Inf.
#include "support.hpp"
#include "support_toeplitz.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_no_leak_backward {

namespace {
using namespace linrpe;
using linrpe::index;

constexpr index n = 300, d = 8, e = 5;
// t = 137 inside a chunk (16), a banded block (40) and a dense row block (128).
constexpr index t = 137;
constexpr index future = n - t;

template <class S>
std::vector<S> poisons()
{
    const S inf = std::numeric_limits<S>::infinity();
    return {std::numeric_limits<S>::quiet_NaN(), inf, -inf, static_cast<S>(1e30), static_cast<S>(-1e30)};
}

template <class S>
struct grads {
    row_matrix<S> out, dq, dk, dv;
    std::vector<double> params; // every parameter gradient, flattened in a fixed order
};

using test::flatten; // support.hpp

// Head 1 of the two heads of the encodings, positions from 0.
constexpr index head = 1;

template <class Attention, class S>
grads<S> run(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v,
             const row_matrix<S>& dout)
{
    grads<S> g{attn(q, k, v, head), row_matrix<S>(n, d), row_matrix<S>(n, d), row_matrix<S>(n, e), {}};
    auto pg = attn.make_parameter_gradients();
    attn.backward(q, k, v, dout, g.dq, g.dk, g.dv, head, 0, 0, nullptr, &pg);
    g.params = flatten(pg, 0);
    return g;
}

template <class S>
row_matrix<S> top(const row_matrix<S>& m, index rows)
{
    return m.topRows(rows);
}
template <class S>
row_matrix<S> bottom(const row_matrix<S>& m, index rows)
{
    return m.bottomRows(rows);
}

bool finite_and_nonzero(const std::vector<double>& v)
{
    bool nonzero = false;
    for (const double x : v) {
        if (!std::isfinite(x)) return false;
        nonzero = nonzero || x != 0.0;
    }
    return nonzero;
}

// One comparison of the header's properties: `same` must hold, and `reached` says that the perturbed side
// did change (so that the comparison can fail).
struct comparison {
    std::string what;
    bool same, reached;
};

template <class A, class B>
comparison compare(std::string what, const A& a, const B& b, bool reached)
{
    return {std::move(what), test::bit_identical(a, b), reached};
}

// Properties (a), (b), (c) of the header for one causal attention; the caller REQUIREs each comparison.
template <class S, class Attention>
std::vector<comparison> compare_all(const Attention& attn, index q_dim, bool has_parameters)
{
    const row_matrix<S> q = test::uniform<S>(n, q_dim, 11, 0.5), k = test::uniform<S>(n, q_dim, 12, 0.5),
                        v = test::uniform<S>(n, e, 13), dout = test::uniform<S>(n, e, 14);
    std::vector<comparison> out;
    const grads<S> base = run(attn, q, k, v, dout);
    for (const S value : poisons<S>()) {
        const std::string tag = " poison " + std::to_string(double(value));
        // (a) rows >= t of q, k, v and dOut poisoned: out and dQ on rows < t keep their bits.
        row_matrix<S> q1 = q, k1 = k, v1 = v, d1 = dout;
        q1.bottomRows(future).setConstant(value);
        k1.bottomRows(future).setConstant(value);
        v1.bottomRows(future).setConstant(value);
        d1.bottomRows(future).setConstant(value);
        const grads<S> a = run(attn, q1, k1, v1, d1);
        out.push_back(compare("(a) out rows < t" + tag, top(base.out, t), top(a.out, t), !test::bit_identical(base.out, a.out)));
        out.push_back(compare("(a) dQ rows < t" + tag, top(base.dq, t), top(a.dq, t), !test::bit_identical(base.dq, a.dq)));
        // (b) rows < t of q and dOut poisoned: dK, dV on rows >= t keep their bits.
        row_matrix<S> q2 = q, d2 = dout;
        q2.topRows(t).setConstant(value);
        d2.topRows(t).setConstant(value);
        const grads<S> b = run(attn, q2, k, v, d2);
        out.push_back(compare("(b) dK rows >= t" + tag, bottom(base.dk, future), bottom(b.dk, future), !test::bit_identical(base.dk, b.dk)));
        out.push_back(compare("(b) dV rows >= t" + tag, bottom(base.dv, future), bottom(b.dv, future), !test::bit_identical(base.dv, b.dv)));
    }
    // (c) dOut = 0 on rows >= t; rows >= t of q, k, v replaced by other finite values (larger scales).
    row_matrix<S> d0 = dout;
    d0.bottomRows(future).setZero();
    const grads<S> clean = run(attn, q, k, v, d0);
    row_matrix<S> q3 = q, k3 = k, v3 = v;
    q3.bottomRows(future) = test::uniform<S>(future, q_dim, 15, 3.0);
    k3.bottomRows(future) = test::uniform<S>(future, q_dim, 16, 3.0);
    v3.bottomRows(future) = test::uniform<S>(future, e, 17, 50.0);
    const grads<S> c = run(attn, q3, k3, v3, d0);
    const bool moved = !test::bit_identical(clean.out, c.out);
    out.push_back(compare("(c) dQ rows < t", top(clean.dq, t), top(c.dq, t), moved));
    out.push_back(compare("(c) dK rows < t", top(clean.dk, t), top(c.dk, t), moved));
    out.push_back(compare("(c) dV rows < t", top(clean.dv, t), top(c.dv, t), moved));
    if (has_parameters) // finite and non-zero, and the later rows' dOut does enter them when it is not zero
        out.push_back({"(c) parameter gradients", clean.params == c.params && finite_and_nonzero(c.params), clean.params != base.params});
    return out;
}

// 5 poisons · 4 comparisons for (a) and (b), 3 for (c) and one more for parameters.
constexpr std::size_t comparisons(bool has_parameters) { return 5 * 4 + 3 + (has_parameters ? 1 : 0); }

template <class S>
options<S> causal_options(normalization norm, toeplitz_algorithm algo = toeplitz_algorithm::automatic)
{
    options<S> opt;
    opt.mask = masking::causal;
    opt.norm = norm;
    opt.allow_signed_normalizer = true;
    opt.chunk_size = 16;
    opt.segment_rows = 64; // one head in a call runs in segments
    opt.threads = 2;
    opt.toeplitz = algo;
    return opt;
}

constexpr normalization all_norms[] = {normalization::sum, normalization::none, normalization::rms};

} // namespace

// REQUIREs every comparison of compare_all at the top level of the calling test case.
#define LINRPE_REQUIRE_NO_LEAK(attn, q_dim, has_parameters)                                                   \
    do {                                                                                                      \
        const std::vector<comparison> results = compare_all<S>(attn, q_dim, has_parameters);                  \
        for (const comparison& r : results) {                                                                 \
            CAPTURE(r.what);                                                                                  \
            REQUIRE(r.same);                                                                                  \
            REQUIRE(r.reached);                                                                               \
        }                                                                                                     \
        REQUIRE(results.size() == comparisons(has_parameters));                                               \
    } while (false)

TEMPLATE_TEST_CASE("no leak, backward: positional::none", "[no_leak][backward][core]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const normalization norm : all_norms) {
        CAPTURE(int(norm));
        const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, causal_options<S>(norm));
        LINRPE_REQUIRE_NO_LEAK(attn, d, false);
    }
}

TEMPLATE_TEST_CASE("no leak, backward: LRPE rotate with learned θ", "[no_leak][backward][lrpe]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const positional::lrpe<S> pe(lrpe_kind::rotate, d, test::uniform<double>(2, d / 2, 21, 1.0));
    for (const normalization norm : all_norms) {
        CAPTURE(int(norm));
        const linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S> attn({}, pe, causal_options<S>(norm));
        LINRPE_REQUIRE_NO_LEAK(attn, d, true);
    }
}

TEMPLATE_TEST_CASE("no leak, backward: sineSPE (gated)", "[no_leak][backward][spe]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const positional::sine_spe<S> pe(2, d, 3, 16, 7, true);
    for (const normalization norm : all_norms) {
        CAPTURE(int(norm));
        const linear_attention<feature_maps::relu, positional::sine_spe<S>, S> attn(feature_maps::relu(1e-3), pe, causal_options<S>(norm));
        LINRPE_REQUIRE_NO_LEAK(attn, d, true);
    }
}

TEMPLATE_TEST_CASE("no leak, backward: convSPE (gated)", "[no_leak][backward][spe]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index r = 16;
    const positional::conv_spe<S> pe(2, d, 5, r, 8, true);
    for (const normalization norm : all_norms) {
        CAPTURE(int(norm));
        const linear_attention<feature_maps::favor, positional::conv_spe<S>, S> attn(feature_maps::favor(r, 16, 3), pe,
                                                                                     causal_options<S>(norm));
        LINRPE_REQUIRE_NO_LEAK(attn, d, true);
    }
}

TEMPLATE_TEST_CASE("no leak, backward: Toeplitz RPE, dense, fft and banded", "[no_leak][backward][toeplitz]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // T_max = 40: banded blocks of 40 rows with far parts behind; at N = 300 the causal fft runs its pieces
    // directly (the cost model's FFT rectangles start at thousands of rows), see the mixer case below.
    const positional::toeplitz_rpe<S> pe(test::uniform<S>(2, 2 * 40 - 1, 22, 1.5));
    for (const toeplitz_algorithm algo : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded})
        for (const normalization norm : all_norms) {
            CAPTURE(int(algo), int(norm));
            const linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S> attn({}, pe, causal_options<S>(norm, algo));
            LINRPE_REQUIRE_NO_LEAK(attn, d, true);
        }
}

TEMPLATE_TEST_CASE("no leak, backward: the causal FFT mixer's VJP with FFT rectangles from 1, 4 and 16 rows",
                   "[no_leak][backward][toeplitz][fft]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    using toeplitz_test::uniform;
    const linrpe::index m = 5, ex = 4;
    const auto w = toeplitz_test::random_weights<S>(50, 31);
    const row_matrix<S> psi = uniform<S>(n, m, 32, 0.0, 1.0), kappa = uniform<S>(n, m, 33, 0.0, 1.0), vx = uniform<S>(n, ex, 34),
                        g = uniform<S>(n, ex, 35);
    struct vjp {
        row_matrix<S> dpsi, dkappa, dvx;
        vector<double> dlog_c;
    };
    int checked = 0;
    for (const linrpe::index direct : {linrpe::index(1), linrpe::index(4), linrpe::index(16)}) {
        CAPTURE(direct);
        const auto run_vjp = [&](const row_matrix<S>& p, const row_matrix<S>& k, const row_matrix<S>& v, const row_matrix<S>& seed) {
            vjp r{row_matrix<S>::Zero(n, m), row_matrix<S>::Zero(n, m), row_matrix<S>::Zero(n, ex), vector<double>::Zero(w.c.size())};
            row_matrix<S> gs = seed;
            detail::toeplitz_backward_fft<S>(w, {p, k, v, gs, r.dpsi, r.dkappa, r.dvx, &r.dlog_c}, 0, 0, true, 1, direct);
            return r;
        };
        const vjp base = run_vjp(psi, kappa, vx, g);
        for (const S value : poisons<S>()) {
            CAPTURE(double(value));
            // (a) rows >= t of ψ, κ, Vx and the seed poisoned: dΨ on rows < t keeps its bits.
            row_matrix<S> p1 = psi, k1 = kappa, v1 = vx, g1 = g;
            p1.bottomRows(future).setConstant(value);
            k1.bottomRows(future).setConstant(value);
            v1.bottomRows(future).setConstant(value);
            g1.bottomRows(future).setConstant(value);
            const vjp a = run_vjp(p1, k1, v1, g1);
            REQUIRE(test::bit_identical(top(base.dpsi, t), top(a.dpsi, t)));
            REQUIRE_FALSE(test::bit_identical(base.dpsi, a.dpsi));
            // (b) rows < t of ψ and the seed poisoned: dΚ, dVx on rows >= t keep their bits.
            row_matrix<S> p2 = psi, g2 = g;
            p2.topRows(t).setConstant(value);
            g2.topRows(t).setConstant(value);
            const vjp b = run_vjp(p2, kappa, vx, g2);
            REQUIRE(test::bit_identical(bottom(base.dkappa, future), bottom(b.dkappa, future)));
            REQUIRE(test::bit_identical(bottom(base.dvx, future), bottom(b.dvx, future)));
            REQUIRE_FALSE(test::bit_identical(base.dkappa, b.dkappa));
            ++checked;
        }
        // (c) seed 0 on rows >= t, other finite ψ, κ, Vx there: rows < t of every gradient and ∂L/∂log c keep
        // their bits.
        row_matrix<S> g0 = g;
        g0.bottomRows(future).setZero();
        const vjp clean = run_vjp(psi, kappa, vx, g0);
        row_matrix<S> p3 = psi, k3 = kappa, v3 = vx;
        p3.bottomRows(future) = uniform<S>(future, m, 36, 0.0, 3.0);
        k3.bottomRows(future) = uniform<S>(future, m, 37, 0.0, 3.0);
        v3.bottomRows(future) = uniform<S>(future, ex, 38, -50.0, 50.0);
        const vjp moved = run_vjp(p3, k3, v3, g0);
        REQUIRE(test::bit_identical(top(clean.dpsi, t), top(moved.dpsi, t)));
        REQUIRE(test::bit_identical(top(clean.dkappa, t), top(moved.dkappa, t)));
        REQUIRE(test::bit_identical(top(clean.dvx, t), top(moved.dvx, t)));
        REQUIRE(test::bit_identical(clean.dlog_c, moved.dlog_c));
        REQUIRE(clean.dlog_c.allFinite());
        REQUIRE_FALSE(test::bit_identical(clean.dlog_c, base.dlog_c)); // the later rows do enter ∂L/∂log c
    }
    REQUIRE(checked == 3 * int(poisons<S>().size()));
}
#undef LINRPE_REQUIRE_NO_LEAK
} // namespace test_no_leak_backward
