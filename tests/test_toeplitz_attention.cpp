// Toeplitz RPE attention: every algorithm against the explicit O(N^2) reference, special cases with known
// closed forms, causality, extreme biases, the FAVOR+ → softmax limit, argument checks and composition.
#include "support.hpp"
#include "support_toeplitz.hpp"

#include <linrpe/detail/toeplitz_mixer.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/feature_maps/favor.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/compose.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/positional/none.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>
#include <linrpe/reference/kernel_attention.hpp>
#include <linrpe/reference/softmax_attention.hpp>

#include <catch2/catch.hpp>

#include <type_traits>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_toeplitz_attention {

namespace {
using namespace linrpe;
using linrpe::index;
using namespace toeplitz_test;

template <class S>
using elu_toeplitz = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;

constexpr toeplitz_algorithm all_algorithms[] = {toeplitz_algorithm::dense, toeplitz_algorithm::fft,
                                                 toeplitz_algorithm::banded, toeplitz_algorithm::automatic};

const char* name_of(toeplitz_algorithm a)
{
    switch (a) {
    case toeplitz_algorithm::dense: return "dense";
    case toeplitz_algorithm::fft: return "fft";
    case toeplitz_algorithm::banded: return "banded";
    default: return "automatic";
    }
}

template <class S>
positional::toeplitz_rpe<S> random_rpe(index heads, index t_max, std::uint64_t seed, double lo = -1.0, double hi = 1.0)
{
    positional::toeplitz_rpe<S> pe(heads, t_max);
    pe.bias = uniform<S>(heads, 2 * t_max - 1, seed, lo, hi);
    return pe;
}

/// The exact result of `attn` from its own ψ, κ and weight matrix (double, O(N·Nk)).
template <class Attention, class S>
row_matrix<double> exact(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v,
                         index head, index q_first, index k_first)
{
    const row_matrix<S> psi = attn.features(q, role::query, head, q_first);
    const row_matrix<S> kappa = attn.features(k, role::key, head, k_first);
    const row_matrix<S> w = attn.mixing_matrix(q.rows(), k.rows(), head, q_first, k_first);
    return reference::kernel_attention(psi, kappa, v, w, attn.opts().norm, static_cast<double>(attn.opts().eps));
}

// Relative Frobenius error against the double reference. The dense and banded algorithms sum Nk products
// of M-term dots: ≈ (Nk + M)·eps relative to Σ|terms|, and with positive scores and values of either sign
// Σ|terms| / |Σ terms| stays O(1) on average over a row (≈ 2 for uniform values); the FFT adds
// 6·eps·log2 L·√(N + Nk) (see test_toeplitz_products), below 4·(N + Nk)·eps for every size used here.
// c = 8 covers both with the factor 2 of cancellation.
double attention_bound(double e, index n, index nk, index m) { return 8.0 * e * double(n + nk + m); }

TEMPLATE_TEST_CASE("Toeplitz attention equals the O(N^2) reference for every algorithm", "[toeplitz][attention]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = GENERATE(1, 5, 64, 300);
    const index t_max = GENERATE(1, 3, 40, 1000);
    const bool causal = GENERATE(false, true);
    const normalization norm = GENERATE(normalization::sum, normalization::none, normalization::rms);
    const index nk = causal ? n : n + 7;
    const index q_first = causal ? 5 : 3, k_first = causal ? 5 : 10;
    const index d = 8, e = 6;
    const row_matrix<S> q = uniform<S>(n, d, 1 + n), k = uniform<S>(nk, d, 2 + n), v = uniform<S>(nk, e, 3 + n);
    for (const toeplitz_algorithm algo : all_algorithms) {
        options<S> opt;
        opt.mask = causal ? masking::causal : masking::none;
        opt.norm = norm;
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, random_rpe<S>(2, t_max, 40 + t_max), opt);
        row_matrix<S> out(n, e);
        attn.forward(q, k, v, out, 1, q_first, k_first);
        const row_matrix<double> ref = exact(attn, q, k, v, 1, q_first, k_first);
        const double err = rel_err(out, ref), tol = attention_bound(eps<S>(), n, nk, d);
        CAPTURE(name_of(algo), n, nk, t_max, causal, int(norm), err, tol);
        CHECK(err <= tol);
    }
}

TEMPLATE_TEST_CASE("b = 0 is plain linear attention", "[toeplitz][attention]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const bool causal = GENERATE(false, true);
    const index n = 150, d = 7, e = 5;
    const row_matrix<S> q = uniform<S>(n, d, 11), k = uniform<S>(n, d, 12), v = uniform<S>(n, e, 13);
    options<S> opt;
    opt.mask = causal ? masking::causal : masking::none;
    const linear_attention<feature_maps::elu_plus_one, positional::none, S> plain({}, {}, opt);
    const row_matrix<S> expected = plain(q, k, v);
    for (const toeplitz_algorithm algo : all_algorithms) {
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, positional::toeplitz_rpe<S>(1, 20), opt);
        const row_matrix<S> out = attn(q, k, v);
        // Both are the same sums in different orders: attention_bound for each against the exact value.
        const double err = rel_err(out, expected), tol = 2.0 * attention_bound(eps<S>(), n, n, d);
        CAPTURE(name_of(algo), causal, err, tol);
        CHECK(err <= tol);
    }
}

TEMPLATE_TEST_CASE("Geometric causal bias equals the decayed recurrence", "[toeplitz][attention]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 200, d = 6, e = 4;
    const double lambda = 0.97;
    const row_matrix<S> q = uniform<S>(n, d, 21), k = uniform<S>(n, d, 22), v = uniform<S>(n, e, 23);
    // c_t = λ^{|t|}: b_t = |t| ln λ for the lags t <= 0 (t > 0 is unused by causal attention; 0 there keeps
    // max b = b_0 = 0, so the sum-normalization shift is exactly 0).
    positional::toeplitz_rpe<S> pe(1, n);
    for (index t = -(n - 1); t <= 0; ++t) pe.bias(0, t + n - 1) = static_cast<S>(double(-t) * std::log(lambda));
    // The recurrence S_i = λ S_{i−1} + φ(k_i) v_iᵀ, z_i = λ z_{i−1} + φ(k_i), in double.
    const auto phi = [](double x) { return x > 0 ? x + 1 : std::exp(x); };
    row_matrix<double> state = row_matrix<double>::Zero(d, e), expected(n, e);
    vector<double> z = vector<double>::Zero(d);
    const double eps_norm = 1e-6;
    for (index i = 0; i < n; ++i) {
        vector<double> fk(d), fq(d);
        for (index a = 0; a < d; ++a) {
            fk[a] = phi(double(k(i, a)));
            fq[a] = phi(double(q(i, a)));
        }
        state = lambda * state + fk * v.row(i).template cast<double>();
        z = lambda * z + fk;
        expected.row(i) = (fq.transpose() * state) / (fq.dot(z) + eps_norm);
    }
    for (const toeplitz_algorithm algo : all_algorithms) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, pe, opt);
        const row_matrix<S> out = attn(q, k, v);
        const double err = rel_err(out, expected), tol = attention_bound(eps<S>(), n, n, d);
        CAPTURE(name_of(algo), err, tol);
        CHECK(err <= tol);
    }
}

// Extra summation depth of the FFT algorithm for test::error_bound (as in test_compose.cpp): its rounding is
// ≈ u·log2 L per transform pair and grows like √(N + Nk) in the contraction, so 4·log2 L·√(N + Nk) terms.
index fft_terms(index n, index nk) { return index(4.0 * std::log2(double(2 * (n + nk))) * std::sqrt(double(n + nk))); }

// ---- causality: no future input enters a past output, bit for bit ---------------------------------------

TEMPLATE_TEST_CASE("Causal Toeplitz attention: past outputs are bit-identical whatever the future holds",
                   "[toeplitz][causal][leak]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 300, d = 8, e = 5, t = 137;
    const index t_max = GENERATE(4, 64, 1000);
    const normalization norm = GENERATE(normalization::sum, normalization::none, normalization::rms);
    for (const toeplitz_algorithm algo : all_algorithms) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = norm;
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, random_rpe<S>(1, t_max, 37), opt);
        CAPTURE(name_of(algo), t_max, int(norm));
        CHECK(check_no_leak<S>([&](const auto& q, const auto& k, const auto& v) { return attn(q, k, v, 0, 9); }, n, d, e, t) > 0);
    }
}

TEMPLATE_TEST_CASE("Causal banded by segments (parallel and serial) does not leak the future", "[toeplitz][causal][leak]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 300, d = 6, e = 4, t = 137, heads = 8;
    options<S> opt;
    opt.mask = masking::causal;
    opt.toeplitz = toeplitz_algorithm::banded;
    opt.segment_rows = 64; // 5 segments of 64 rows
    const index t_max = GENERATE(4, 64, 1000);
    const elu_toeplitz<S> attn({}, random_rpe<S>(heads, t_max, 38), opt);
    // One head in a call: the segments run in parallel (each from its own far state).
    CHECK(check_no_leak<S>([&](const auto& q, const auto& k, const auto& v) { return attn(q, k, v, 3, 2); }, n, d, e, t) > 0);
    // Eight heads (B, N, H, D): whole heads take the threads and the segments of each run in order.
    const auto batched = [&](const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v) {
        row_matrix<S> out(n, heads * e);
        attn.forward(view_bnhd<const S>(q.data(), 1, n, heads, d), view_bnhd<const S>(k.data(), 1, n, heads, d),
                     view_bnhd<const S>(v.data(), 1, n, heads, e), view_bnhd(out.data(), 1, n, heads, e), 2);
        return out;
    };
    CHECK(check_no_leak<S>(batched, n, heads * d, heads * e, t) > 0);
}

TEMPLATE_TEST_CASE("SPE + Toeplitz and LRPE + Toeplitz do not leak the future", "[toeplitz][causal][leak][compose]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 300, d = 6, e = 4, t = 137;
    int checked = 0;
    for (const toeplitz_algorithm algo : all_algorithms) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.toeplitz = algo;
        CAPTURE(name_of(algo));
        {
            using pe_t = positional::compose<positional::sine_spe<S>, positional::toeplitz_rpe<S>>;
            const linear_attention<feature_maps::elu_plus_one, pe_t, S> attn(
                {}, pe_t(positional::sine_spe<S>(2, d, 3, 16, 7, true), random_rpe<S>(2, 40, 39)), opt);
            checked += check_no_leak<S>([&](const auto& q, const auto& k, const auto& v) { return attn(q, k, v, 1, 5); }, n, d, e, t);
        }
        {
            options<S> rms = opt;
            rms.norm = normalization::rms; // LRPE scores are signed
            using pe_t = positional::compose<positional::lrpe<S>, positional::toeplitz_rpe<S>>;
            const linear_attention<feature_maps::elu_plus_one, pe_t, S> attn(
                {}, pe_t(positional::lrpe<S>::rope(d, 2), random_rpe<S>(2, 40, 40)), rms);
            checked += check_no_leak<S>([&](const auto& q, const auto& k, const auto& v) { return attn(q, k, v, 1, 5); }, n, d, e, t);
        }
    }
    REQUIRE(checked == 2 * int(std::size(all_algorithms)) * 4 * int(poisons<S>().size()));
}

TEST_CASE("Causal FFT: future values of 1e6 leave the output at position 0 unchanged (N = 64, T_max = 8)",
          "[toeplitz][causal][fft][leak]")
{
    // The reproducer of the issue: one circulant over the sequence gave 0.103 at position 0 with the
    // original future and −1.58 with future values of 1e6.
    const index n = 64, d = 8, e = 4, t_max = 8;
    options<float> opt;
    opt.mask = masking::causal;
    opt.toeplitz = toeplitz_algorithm::fft;
    const elu_toeplitz<float> attn({}, random_rpe<float>(1, t_max, 41), opt);
    const row_matrix<float> q = uniform<float>(n, d, 42), k = uniform<float>(n, d, 43), v = uniform<float>(n, e, 44);
    row_matrix<float> v2 = v, k2 = k;
    v2.bottomRows(n - 1).setConstant(1e6f);
    k2.bottomRows(n - 1).setConstant(1e6f);
    const row_matrix<float> a = attn(q, k, v), b = attn(q, k2, v2);
    CAPTURE(a(0, 0), b(0, 0));
    CHECK(test::bit_identical(row_matrix<float>(a.topRows(1)), row_matrix<float>(b.topRows(1))));
}

TEMPLATE_TEST_CASE("Causal FFT divide and conquer: equals the exact product, and does not leak", "[toeplitz][causal][fft]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = GENERATE(1, 7, 64, 300, 1000);
    const index direct = GENERATE(1, 4, 64); // rectangles from this many rows on go through the FFT
    const index history = GENERATE(0, 37);  // keys before the queries, visible to all (a decoder call)
    const index nk = n + history, m = 5, ex = 3, q_first = 50, k_first = q_first - history;
    const auto w = random_weights<S>(400, 205);
    const row_matrix<S> psi = uniform<S>(n, m, 206, 0.0, 1.0), kappa = uniform<S>(nk, m, 207, 0.0, 1.0);
    const row_matrix<S> vx = uniform<S>(nk, ex, 208);
    const auto mix = [&](const row_matrix<S>& p, const row_matrix<S>& k, const row_matrix<S>& v) {
        row_matrix<S> num(n, ex);
        detail::toeplitz_mix_fft<S>(w, p, k, v, num, q_first, k_first, true, 0, 1, direct);
        return num;
    };
    const row_matrix<S> num = mix(psi, kappa, vx);
    const row_matrix<double> psi_d = psi.template cast<double>(), kappa_d = kappa.template cast<double>(),
                             vx_d = vx.template cast<double>();
    const row_matrix<double> c = explicit_toeplitz(w, n, nk, k_first - q_first, true);
    const row_matrix<double> ref = ((psi_d * kappa_d.transpose()).array() * c.array()).matrix() * vx_d;
    // Each output sums dense parts and FFT rectangles (at most one per recursion level, ≤ log2 N of them),
    // each within the FFT's summation depth: fft_terms covers the longest, log2 N + 4 the additions.
    const double bound = test::error_bound(psi_d, kappa_d, c, vx_d, normalization::none, 0.0, test::unit_roundoff<S>(),
                                           m + nk + fft_terms(n, nk) + index(std::log2(double(n + 1))) + 4);
    const double err = test::abs_error(num, ref);
    CAPTURE(n, direct, history, err, bound);
    CHECK(err <= bound);
    // Future rows (queries after t and their keys) set to NaN / inf: rows <= t keep every bit.
    const index t = n / 2;
    for (const S poison : poisons<S>()) {
        row_matrix<S> p2 = psi, k2 = kappa, v2 = vx;
        p2.bottomRows(n - t - 1).setConstant(poison);
        k2.bottomRows(n - t - 1).setConstant(poison);
        v2.bottomRows(n - t - 1).setConstant(poison);
        const row_matrix<S> out = mix(p2, k2, v2);
        CAPTURE(double(poison));
        CHECK(test::bit_identical(row_matrix<S>(out.topRows(t + 1)), row_matrix<S>(num.topRows(t + 1))));
    }
}

TEMPLATE_TEST_CASE("Toeplitz attention is invariant to a global position shift", "[toeplitz][shift]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 90, d = 5, e = 3;
    const bool causal = GENERATE(false, true);
    const row_matrix<S> q = uniform<S>(n, d, 41), k = uniform<S>(n, d, 42), v = uniform<S>(n, e, 43);
    for (const toeplitz_algorithm algo : {toeplitz_algorithm::dense, toeplitz_algorithm::banded}) {
        options<S> opt;
        opt.mask = causal ? masking::causal : masking::none;
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, random_rpe<S>(1, 17, 44), opt);
        // Weights depend on key − query position only, so the same arithmetic runs: bit-identical.
        CHECK((attn(q, k, v, 0, 0).array() == attn(q, k, v, 0, 12345).array()).all());
    }
}

TEMPLATE_TEST_CASE("Extreme biases give finite outputs and positive denominators", "[toeplitz][numerics]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 400, d = 8, e = 4, t_max = 300;
    const bool causal = GENERATE(false, true);
    const int kind = GENERATE(0, 1); // 0: b_t = −5|t|; 1: b_t = 50·t/(T_max − 1), spanning ±50
    positional::toeplitz_rpe<S> pe(1, t_max);
    for (index t = -(t_max - 1); t < t_max; ++t)
        pe.bias(0, t + t_max - 1) = static_cast<S>(kind == 0 ? -5.0 * double(std::abs(t)) : 50.0 * double(t) / double(t_max - 1));
    const row_matrix<S> q = uniform<S>(n, d, 51), k = uniform<S>(n, d, 52), v = uniform<S>(n, e, 53);
    const row_matrix<S> ones = row_matrix<S>::Ones(n, 1);
    for (const toeplitz_algorithm algo : all_algorithms) {
        options<S> opt;
        opt.mask = causal ? masking::causal : masking::none;
        opt.toeplitz = algo;
        const elu_toeplitz<S> attn({}, pe, opt);
        const row_matrix<S> out = attn(q, k, v);
        // The denominator is the output of normalization::none for a single value column of ones.
        options<S> raw = opt;
        raw.norm = normalization::none;
        const elu_toeplitz<S> den_attn({}, pe, raw);
        const row_matrix<S> den = den_attn(q, k, ones);
        CAPTURE(name_of(algo), causal, kind);
        CHECK(out.allFinite());
        CHECK(den.allFinite());
        // Every row sees its own key with weight c_0 > 0, so the exact denominator is positive. Dense and
        // banded keep it so; the FFT clamps channels of one sign, so its denominators are >= 0, and the
        // divisor den + eps is positive.
        if (algo == toeplitz_algorithm::fft) CHECK((den.array() >= S(0)).all());
        else CHECK((den.array() > S(0)).all());
        if (algo != toeplitz_algorithm::fft) {
            // Automatic must not pick the FFT where its absolute rounding swamps small rows (kind 1).
            const row_matrix<double> ref = exact(attn, q, k, v, 0, 0, 0);
            const double err = rel_err(out, ref), tol = attention_bound(eps<S>(), n, n, d);
            CAPTURE(err, tol);
            CHECK(err <= tol);
        }
    }
}

TEMPLATE_TEST_CASE("Causal sum: huge biases at unused future offsets do not underflow the weights",
                   "[toeplitz][numerics][shift]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // b_t = 0 for t <= 0 and B for t > 0 (B = 200 in float, 1000 in double): a causal call sees only t <= 0,
    // so it is plain causal linear attention. Shifting by the max over all offsets made every causal weight
    // e^{−B} = 0.
    const index n = 120, d = 6, e = 4, t_max = 30;
    positional::toeplitz_rpe<S> pe(1, t_max);
    for (index t = 1; t < t_max; ++t) pe.bias(0, t + t_max - 1) = S(std::is_same<S, float>::value ? 200 : 1000);
    const row_matrix<S> q = uniform<S>(n, d, 301), k = uniform<S>(n, d, 302), v = uniform<S>(n, e, 303);
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = norm;
        const linear_attention<feature_maps::elu_plus_one, positional::none, S> plain({}, {}, opt);
        const row_matrix<S> expected = plain(q, k, v);
        for (const toeplitz_algorithm algo : all_algorithms) {
            opt.toeplitz = algo;
            const elu_toeplitz<S> attn({}, pe, opt);
            // The same sums in different orders: attention_bound for each against the exact value.
            const double err = rel_err(attn(q, k, v), expected), tol = 2.0 * attention_bound(eps<S>(), n, n, d);
            CAPTURE(name_of(algo), int(norm), err, tol);
            CHECK(err <= tol);
        }
    }
}

TEMPLATE_TEST_CASE("none and rms: biases beyond the exponent range give the finite exact result",
                   "[toeplitz][numerics][shift]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // b = B + r_t with e^B beyond the range of S (B = 100 in float, 800 in double), r_t in [−1, 1].
    // rms: out = num_r / sqrt(mean num_r² + eps·e^{−2B}) with num_r the numerator of the weights e^{r};
    // none: out = e^B num_r, representable because the values are scaled by 1e-30 (float) / 1e-300 (double).
    const bool is_float = std::is_same<S, float>::value;
    const double big = is_float ? 100.0 : 800.0, small = is_float ? 1e-30 : 1e-300;
    const index n = 150, nk = 157, d = 6, e = 4, t_max = 40;
    const bool causal = GENERATE(false, true);
    positional::toeplitz_rpe<S> pe(1, t_max), ripple(1, t_max);
    ripple.bias = uniform<S>(1, 2 * t_max - 1, 311);
    pe.bias = (ripple.bias.array() + S(big)).matrix();
    const index kn = causal ? n : nk, q_first = 4, k_first = causal ? 4 : 9;
    const row_matrix<S> q = uniform<S>(n, d, 312), k = uniform<S>(kn, d, 313), u = uniform<S>(kn, e, 314);
    const row_matrix<S> v_small = (u.array() * S(small)).matrix();
    for (const normalization norm : {normalization::none, normalization::rms}) {
        for (const toeplitz_algorithm algo : all_algorithms) {
            options<S> opt;
            opt.mask = causal ? masking::causal : masking::none;
            opt.norm = norm;
            opt.toeplitz = algo;
            const elu_toeplitz<S> attn({}, pe, opt), reference_attn({}, ripple, opt);
            const row_matrix<S> psi = attn.features(q, role::query, 0, q_first), kappa = attn.features(k, role::key, 0, k_first);
            // Weights e^{r} of the ripple alone, in double (reference_attn's W: its max |r| <= 1 cannot overflow).
            const row_matrix<double> w = reference_attn.mixing_matrix(n, kn, 0, q_first, k_first).template cast<double>();
            row_matrix<S> out(n, e);
            row_matrix<double> ref;
            if (norm == normalization::none) {
                attn.forward(q, k, v_small, out, 0, q_first, k_first);
                ref = reference::kernel_attention(psi, kappa, u, w, norm, 0.0) * std::exp(big + std::log(small));
            } else {
                attn.forward(q, k, u, out, 0, q_first, k_first);
                ref = reference::kernel_attention(psi, kappa, u, w, norm, double(opt.eps) * std::exp(-2.0 * big));
            }
            const double err = rel_err(out, ref), tol = attention_bound(eps<S>(), n, kn, d);
            CAPTURE(name_of(algo), causal, int(norm), err, tol);
            CHECK(out.allFinite());
            CHECK(err <= tol);
        }
    }
}

TEST_CASE("FAVOR+ with Toeplitz weights approaches softmax attention with the same bias", "[toeplitz][favor]")
{
    const index n = 48, d = 8, e = 4, t_max = 12;
    const row_matrix<double> q = uniform<double>(n, d, 61, -0.3, 0.3), k = uniform<double>(n, d, 62, -0.3, 0.3),
                             v = uniform<double>(n, e, 63);
    positional::toeplitz_rpe<double> pe = random_rpe<double>(1, t_max, 64, -1.0, 1.0);
    const auto bias = [&](index t) { return double(pe.offset_bias(0, t)); };
    for (const bool causal : {false, true}) {
        const row_matrix<double> target = reference::softmax_attention(q, k, v, causal ? masking::causal : masking::none, bias);
        std::vector<double> errors;
        for (const index m : {16, 256, 4096}) {
            // Mean over 4 independent draws of ω, so that one lucky or unlucky draw cannot decide.
            double total = 0;
            for (std::uint64_t seed = 1; seed <= 4; ++seed) {
                options<double> opt;
                opt.mask = causal ? masking::causal : masking::none;
                const linear_attention<feature_maps::favor, positional::toeplitz_rpe<double>, double> attn(
                    feature_maps::favor(d, m, seed), pe, opt);
                total += rel_err(attn(q, k, v), target);
            }
            errors.push_back(total / 4.0);
        }
        // FAVOR+ is unbiased with variance ∝ 1/M for each kernel value, and the output is a smooth ratio of
        // such sums, so its error shrinks like M^{−1/2}: ×4 per 16× more features. Allowing for the spread
        // of a 4-draw mean, require ×2 per step, and the M = 4096 error below 2× the M^{−1/2} extrapolation
        // from M = 16 (errors[0] / 16).
        CAPTURE(causal, errors[0], errors[1], errors[2]);
        CHECK(errors[1] < errors[0] / 2.0);
        CHECK(errors[2] < errors[1] / 2.0);
        CHECK(errors[2] < 2.0 * errors[0] / 16.0);
    }
}

TEST_CASE("Toeplitz RPE rejects bad inputs with a named argument", "[toeplitz][errors]")
{
    REQUIRE_THROWS_AS(positional::toeplitz_rpe<float>(2, 0), linrpe::error);
    REQUIRE_THROWS_WITH(positional::toeplitz_rpe<float>(2, 0), Catch::Contains("t_max"));
    REQUIRE_THROWS_WITH(positional::toeplitz_rpe<float>(0, 3), Catch::Contains("heads"));
    REQUIRE_THROWS_WITH(positional::toeplitz_rpe<float>(row_matrix<float>::Zero(2, 4)), Catch::Contains("bias columns"));
    positional::toeplitz_rpe<float> pe(2, 3);
    REQUIRE_THROWS_AS(pe.set_bias(0, vector<float>::Zero(4)), linrpe::error);
    REQUIRE_THROWS_WITH(pe.set_bias(0, vector<float>::Zero(4)), Catch::Contains("bias length"));
    REQUIRE_THROWS_WITH(pe.set_bias(2, vector<float>::Zero(5)), Catch::Contains("head"));

    const row_matrix<float> q = uniform<float>(6, 4, 1), k = uniform<float>(6, 4, 2), v = uniform<float>(6, 3, 3);
    {
        elu_toeplitz<float> attn({}, pe);
        REQUIRE_THROWS_AS(attn(q, k, v, 2), linrpe::error);
        REQUIRE_THROWS_WITH(attn(q, k, v, 2), Catch::Contains("head"));
        REQUIRE_THROWS_WITH(attn.mixing_matrix(6, 6, 5), Catch::Contains("head"));
    }
    {
        auto bad = pe;
        bad.bias(1, 2) = std::numeric_limits<float>::quiet_NaN();
        elu_toeplitz<float> attn({}, bad);
        REQUIRE_THROWS_AS(attn(q, k, v, 1), linrpe::error);
        REQUIRE_THROWS_WITH(attn(q, k, v, 1), Catch::Contains("bias"));
        CHECK_NOTHROW(attn(q, k, v, 0)); // only the head in use is checked
    }
    {
        auto bad = pe;
        bad.bias.resize(2, 4); // public data resized to a length that no t_max has
        elu_toeplitz<float> attn({}, bad);
        row_matrix<float> out = row_matrix<float>::Constant(6, 3, 7.f);
        REQUIRE_THROWS_WITH(attn.forward(q, k, v, out, 0), Catch::Contains("bias columns"));
        CHECK((out.array() == 7.f).all()); // nothing written before validation
    }
}

TEMPLATE_TEST_CASE("Batched views equal per-head calls", "[toeplitz][batched]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, h = 3, n = 70, d = 5, e = 4;
    std::vector<S> qb(b * h * n * d), kb(qb.size()), vb(b * h * n * e), ob(vb.size());
    const row_matrix<S> all_q = uniform<S>(1, qb.size(), 71), all_k = uniform<S>(1, kb.size(), 72), all_v = uniform<S>(1, vb.size(), 73);
    std::copy(all_q.data(), all_q.data() + qb.size(), qb.begin());
    std::copy(all_k.data(), all_k.data() + kb.size(), kb.begin());
    std::copy(all_v.data(), all_v.data() + vb.size(), vb.begin());
    // fft too: the batched call runs heads on several OpenMP threads, which must not race in FFT planning.
    const toeplitz_algorithm algo = GENERATE(toeplitz_algorithm::banded, toeplitz_algorithm::fft);
    options<S> opt;
    opt.mask = masking::causal;
    opt.toeplitz = algo;
    const elu_toeplitz<S> attn({}, random_rpe<S>(h, 9, 74), opt);
    attn.forward(view_bnhd<const S>(qb.data(), b, n, h, d), view_bnhd<const S>(kb.data(), b, n, h, d),
                 view_bnhd<const S>(vb.data(), b, n, h, e), view_bnhd(ob.data(), b, n, h, e), 4);
    for (index bi = 0; bi < b; ++bi)
        for (index hi = 0; hi < h; ++hi) {
            const auto sl = [&](const std::vector<S>& buf, index w) {
                return view_bnhd<const S>(buf.data(), b, n, h, w).slice(bi, hi);
            };
            row_matrix<S> out(n, e);
            attn.forward(sl(qb, d), sl(kb, d), sl(vb, e), out, hi, 4);
            CHECK((out.array() == row_matrix<S>(sl(ob, e)).array()).all());
        }
}


TEMPLATE_TEST_CASE("FFT mixer of one head is bit-identical for 1, 2 and 3 threads and within the bound",
                   "[toeplitz][fft][threads]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // Odd M: every work item's last lane is half empty; M = 17 is 9 lanes, so a tile of 8 plus a partial
    // tile whose unused lanes hold the previous item's inputs.
    const index m = GENERATE(5, 17);
    const bool causal = GENERATE(false, true);
    const index n = 300, nk = causal ? n : n + 7, ex = 4;
    const index q_first = causal ? 5 : 3, k_first = causal ? 5 : 10;
    const auto w = random_weights<S>(400, 201);
    // Positive features (as a positive feature map gives), values of either sign, and a column of ones like
    // the denominator channels, which the FFT clamps by sign.
    const row_matrix<S> psi = uniform<S>(n, m, 202, 0.0, 1.0), kappa = uniform<S>(nk, m, 203, 0.0, 1.0);
    row_matrix<S> vx = uniform<S>(nk, ex, 204);
    vx.col(ex - 1).setOnes();

    const row_matrix<double> psi_d = psi.template cast<double>(), kappa_d = kappa.template cast<double>(),
                             vx_d = vx.template cast<double>();
    const row_matrix<double> c = explicit_toeplitz(w, n, nk, k_first - q_first, causal);
    const row_matrix<double> ref = ((psi_d * kappa_d.transpose()).array() * c.array()).matrix() * vx_d;
    const double bound = test::error_bound(psi_d, kappa_d, c, vx_d, normalization::none, 0.0, test::unit_roundoff<S>(),
                                           m + nk + fft_terms(n, nk) + 4);

    std::vector<row_matrix<S>> nums;
    for (const int threads : {1, 2, 3}) {
        row_matrix<S> num(n, ex);
        detail::toeplitz_mix_fft<S>(w, psi, kappa, vx, num, q_first, k_first, causal, 0, threads);
        const double err = test::abs_error(num, ref);
        CAPTURE(m, causal, threads, err, bound);
        CHECK(err <= bound);
        nums.push_back(num);
    }
    CAPTURE(m, causal);
    // Work is split by value column, fixed by M and Ex alone: the thread count must not change one bit.
    CHECK(test::bit_identical(nums[0], nums[1]));
    CHECK(test::bit_identical(nums[0], nums[2]));
}

TEST_CASE("Automatic choice: banded for a short band, never the FFT for an ill-conditioned bias", "[toeplitz][automatic]")
{
    const auto w = random_weights<float>(128, 81);
    CHECK(detail::toeplitz_resolve<float>(toeplitz_algorithm::automatic, w, 16384, 16384, 64, 65, 0, false) ==
          toeplitz_algorithm::banded);
    CHECK(detail::toeplitz_resolve<float>(toeplitz_algorithm::automatic, w, 64, 64, 64, 65, 0, true) ==
          toeplitz_algorithm::dense);
    for (const toeplitz_algorithm forced : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded})
        CHECK(detail::toeplitz_resolve<float>(forced, w, 100, 100, 8, 9, 0, false) == forced);
    // b spanning ±50 over T_max = N: κ ≈ e^50, so the FFT is refused whatever it would cost.
    positional::toeplitz_rpe<float> pe(1, 65536);
    for (index t = -65535; t < 65536; ++t) pe.bias(0, t + 65535) = 50.f * float(t) / 65535.f;
    const auto wide = pe.mixing_weights<float>(0, -65535, 65535);
    CHECK(detail::toeplitz_resolve<float>(toeplitz_algorithm::automatic, wide, 65536, 65536, 64, 65, 0, false) !=
          toeplitz_algorithm::fft);
    // Flat b at 128k: the FFT (measured crossover with Eigen's FFT between 64k and 128k for M = E = 64).
    const auto flat = positional::toeplitz_rpe<float>(1, 131072).mixing_weights<float>(0, -131071, 131071);
    CHECK(detail::toeplitz_resolve<float>(toeplitz_algorithm::automatic, flat, 131072, 131072, 64, 65, 0, false) ==
          toeplitz_algorithm::fft);
    // Causal FFT: the divide and conquer halves only triangles of at least 2·direct_rows rows; below, it is the
    // dense algorithm, and the cost model predicts exactly the dense cost there (so automatic runs dense).
    const index direct = detail::toeplitz_fft_direct_rows<float>(64, 65);
    CHECK(direct >= 16);
    const auto below = detail::toeplitz_predict<float>(2 * direct - 1, 2 * direct - 1, 64, 65, 1 << 20, true);
    CHECK(below.fft == below.dense);
    const auto above = detail::toeplitz_predict<float>(8 * direct, 8 * direct, 64, 65, 1 << 20, true);
    CHECK(above.fft != above.dense);
    // Narrow heads (M = E = 8) make the FFT cheap per pair: its crossover is far below that of M = E = 64.
    CHECK(detail::toeplitz_fft_direct_rows<float>(8, 9) < direct);
}

// ---- composition --------------------------------------------------------------------------------------

/// Test-only pre-feature encoding: a position-dependent rotation of the first two input channels and a
/// width change R = D + 1 (the extra channel is a position-dependent constant), different for queries and keys.
struct test_pre {
    static constexpr bool has_pre_feature = true;
    static constexpr bool has_post_feature = false;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(index) const { return true; }
    index pre_output_dim(index d) const { return d + 1; }
    template <class S>
    void encode_pre(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> out, index first, index head,
                    role which) const
    {
        for (index i = 0; i < x.rows(); ++i) {
            const double a = 0.1 * double(first + i) + 0.3 * double(head);
            out.row(i).head(x.cols()) = x.row(i);
            out(i, 0) = static_cast<S>(std::cos(a) * x(i, 0) - std::sin(a) * x(i, 1));
            out(i, 1) = static_cast<S>(std::sin(a) * x(i, 0) + std::cos(a) * x(i, 1));
            out(i, x.cols()) = static_cast<S>(which == role::query ? 0.01 * double(first + i) : -0.02 * double(first + i));
        }
    }
};

/// Test-only post-feature encoding: multiplies φ by a positive position-dependent factor (keeps positivity).
struct test_post {
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(index) const { return true; }
    index post_output_dim(index m) const { return m; }
    template <class S>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, index first, index,
                     role) const
    {
        for (index i = 0; i < phi.rows(); ++i) out.row(i) = phi.row(i) * static_cast<S>(1.0 + 0.5 * std::sin(0.2 * double(first + i)));
    }
};

static_assert(detail::is_positional_encoding_v<positional::toeplitz_rpe<float>, float>, "toeplitz_rpe is a positional encoding");
static_assert(detail::is_positional_encoding_v<positional::compose<test_pre, positional::toeplitz_rpe<float>>, double>,
              "compose<pre, toeplitz> is a positional encoding");
static_assert(detail::is_positional_encoding_v<positional::compose<test_post, positional::toeplitz_rpe<double>>, double>,
              "compose<post, toeplitz> is a positional encoding");
static_assert(detail::is_positional_encoding_v<positional::compose<positional::none, positional::toeplitz_rpe<float>>, float>,
              "compose<none, toeplitz> is a positional encoding");

TEMPLATE_TEST_CASE("compose<none, toeplitz> is toeplitz_rpe", "[toeplitz][compose]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 50, d = 6, e = 3;
    const row_matrix<S> q = uniform<S>(n, d, 91), k = uniform<S>(n, d, 92), v = uniform<S>(n, e, 93);
    options<S> opt;
    opt.mask = masking::causal;
    const auto pe = random_rpe<S>(2, 11, 94);
    const elu_toeplitz<S> alone({}, pe, opt);
    const linear_attention<feature_maps::elu_plus_one, positional::compose<positional::none, positional::toeplitz_rpe<S>>, S>
        composed({}, {positional::none(), pe}, opt);
    CHECK((alone(q, k, v, 1, 3).array() == composed(q, k, v, 1, 3).array()).all());
    CHECK(composed.positional().mixing.t_max() == 11);
}

// Returns 1 per configuration compared, so the caller can require the whole sweep ran.
template <class A, class S>
int check_composed(bool causal, toeplitz_algorithm algo)
{
    const index n = 80, d = 6, e = 3;
    const row_matrix<S> q = uniform<S>(n, d, 95), k = uniform<S>(n, d, 96), v = uniform<S>(n, e, 97);
    options<S> opt;
    opt.mask = causal ? masking::causal : masking::none;
    opt.toeplitz = algo;
    using pe_t = positional::compose<A, positional::toeplitz_rpe<S>>;
    const linear_attention<feature_maps::elu_plus_one, pe_t, S> attn({}, pe_t(A(), random_rpe<S>(2, 13, 98)), opt);
    const row_matrix<S> out = attn(q, k, v, 1, 7);
    const row_matrix<double> ref = exact(attn, q, k, v, 1, 7, 7);
    const double err = rel_err(out, ref), tol = attention_bound(eps<S>(), n, n, d + 1);
    CAPTURE(causal, name_of(algo), err, tol);
    CHECK(err <= tol);
    return 1;
}

TEMPLATE_TEST_CASE("compose of a feature-side encoding with toeplitz equals the reference", "[toeplitz][compose]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    int checked = 0;
    for (const bool causal : {false, true})
        for (const toeplitz_algorithm algo : all_algorithms) {
            checked += check_composed<test_pre, S>(causal, algo);
            checked += check_composed<test_post, S>(causal, algo);
        }
    REQUIRE(checked == 2 * 2 * int(std::size(all_algorithms))); // masks × encodings × algorithms
}

} // namespace
} // namespace test_toeplitz_attention
