// LRPE through the core: attention equals the O(N²) reference built from the explicit ψ, κ; batched (both
// layouts) and per head; causal no-leak; prefill + steps equals the batched call; cosFormer equivalence;
// normalization and shape errors.
#include <catch2/catch.hpp>

#include "support_lrpe.hpp"

#include <linrpe/decoder.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/feature_maps/relu.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/reference/kernel_attention.hpp>
#include <linrpe/views.hpp>

#include <cmath>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_lrpe_attention {

namespace {
using namespace linrpe;
using linrpe::index;
using namespace lrpe_test;

template <class S>
using attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;

std::vector<config> attention_configs()
{
    return {
        {lrpe_kind::rotate, lrpe_layout::interleaved, 1.0, lrpe_basis::identity, false},
        {lrpe_kind::rotate, lrpe_layout::interleaved, 1.0, lrpe_basis::householder, false},
        {lrpe_kind::rotate, lrpe_layout::half_split, 0.5, lrpe_basis::dct, false},
        {lrpe_kind::cosine, lrpe_layout::interleaved, 1.0, lrpe_basis::odd_even, false},
        {lrpe_kind::cosine, lrpe_layout::interleaved, 1.0, lrpe_basis::householder, true},
        {lrpe_kind::permutation, lrpe_layout::interleaved, 1.0, lrpe_basis::householder, false},
        {lrpe_kind::permutation, lrpe_layout::interleaved, 1.0, lrpe_basis::identity, false},
    };
}

/// \brief Frobenius bound on ‖out − ref‖ for outputs computed from the same ψ, κ (Higham, first order):
/// every entry of num = (ΨΚᵀ ⊙ W) V is a sum of M'·Nk products in some order (dense, chunked or state
/// form alike), so |δnum_ie| ≤ γ_{M'+Nk+2} Σ_j |w_ij| |ψ_i|·|κ_j| |v_je|, plus `extra`·eps for an encoding
/// error of ψ, κ not in the reference. Normalizers map it on: sum — |δout| ≤ (|δnum| + |out| |δden|)/|den|;
/// rms — the row map has Lipschitz constant ≤ 2/rms_i; none — as is. Factor 2 covers second-order terms.
template <class S>
double error_bound(const row_matrix<double>& psi, const row_matrix<double>& kappa, const row_matrix<double>& v,
                   const row_matrix<double>& w, const row_matrix<double>& ref, normalization norm, double eps_norm,
                   double extra = 0.0)
{
    const double units = (double(psi.cols() + kappa.rows()) + 2.0 + extra) * eps<S>();
    const row_matrix<double> abs_a = ((psi.cwiseAbs() * kappa.cwiseAbs().transpose()).array() * w.cwiseAbs().array()).matrix();
    const row_matrix<double> a = ((psi * kappa.transpose()).array() * w.array()).matrix();
    const row_matrix<double> b = abs_a * v.cwiseAbs(); // (N, E)
    const row_matrix<double> num = a * v;
    double total = 0;
    for (linrpe::index i = 0; i < ref.rows(); ++i) {
        const double e_num = units * b.row(i).norm();
        double e = e_num;
        if (norm == normalization::sum) {
            const double den = a.row(i).sum() + eps_norm;
            e = (e_num + ref.row(i).norm() * units * abs_a.row(i).sum()) / std::abs(den);
        } else if (norm == normalization::rms) {
            e = 2.0 * e_num / std::sqrt(num.row(i).squaredNorm() / double(std::max<linrpe::index>(v.cols(), 1)) + eps_norm);
        }
        total += e * e;
    }
    return 2.0 * std::sqrt(total);
}

template <class S>
row_matrix<double> to_double(const row_matrix<S>& m) { return m.template cast<double>(); }

} // namespace

TEMPLATE_TEST_CASE("lrpe attention equals the O(N^2) reference from the explicit psi, kappa", "[lrpe][attention]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index heads = 3, head = 2;
    for (const config& c : attention_configs())
        for (linrpe::index d : {linrpe::index(8), linrpe::index(63)})
            for (masking mask : {masking::none, masking::causal})
                for (normalization norm : {normalization::rms, normalization::none})
                    for (linrpe::index n : {linrpe::index(1), linrpe::index(65), linrpe::index(150)}) {
                        options<S> opt;
                        opt.mask = mask;
                        opt.norm = norm;
                        opt.chunk_size = 16;
                        const attention<S> attn({}, make<S>(c, d, heads), opt);
                        const linrpe::index nk = mask == masking::causal ? n : n + 5;
                        const linrpe::index q_first = mask == masking::causal ? 999990 : 1000003, k_first = mask == masking::causal ? q_first : 1000000;
                        const row_matrix<S> q = uniform<S>(n, d, 1), k = uniform<S>(nk, d, 2), v = uniform<S>(nk, 5, 3);
                        row_matrix<S> out(n, 5);
                        attn.forward(q, k, v, out, head, q_first, k_first);
                        const row_matrix<double> psi = to_double<S>(attn.features(q, role::query, head, q_first));
                        const row_matrix<double> kappa = to_double<S>(attn.features(k, role::key, head, k_first));
                        const row_matrix<double> w = to_double<S>(attn.mixing_matrix(n, nk, head, q_first, k_first));
                        const row_matrix<double> ref = reference::kernel_attention(psi, kappa, to_double<S>(v), w, norm, double(opt.eps));
                        const double err = (to_double<S>(out) - ref).norm();
                        const double bound = error_bound<S>(psi, kappa, to_double<S>(v), w, ref, norm, double(opt.eps));
                        CAPTURE(c.name(), d, int(mask), int(norm), n, err, bound);
                        CHECK(err <= bound);
                    }
}

TEMPLATE_TEST_CASE("lrpe attention: batched views (both layouts) equal per-head results", "[lrpe][batched]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 2, heads = 3, n = 70, d = 8, e = 5, p0 = 4321;
    for (const config& c : attention_configs())
        for (masking mask : {masking::none, masking::causal}) {
            options<S> opt;
            opt.mask = mask;
            opt.norm = normalization::rms;
            const attention<S> attn({}, make<S>(c, d, heads), opt);
            for (bool bnhd : {false, true}) {
                const row_matrix<S> qb = uniform<S>(b * heads * n, d, 4), kb = uniform<S>(b * heads * n, d, 5),
                                    vb = uniform<S>(b * heads * n, e, 6);
                row_matrix<S> ob(b * heads * n, e);
                const auto view = [&](auto* p, linrpe::index ch) {
                    return bnhd ? view_bnhd(p, b, n, heads, ch) : view_bhnd(p, b, heads, n, ch);
                };
                attn.forward(view(qb.data(), d), view(kb.data(), d), view(vb.data(), e), view(ob.data(), e), p0);
                for (linrpe::index bi = 0; bi < b; ++bi)
                    for (linrpe::index h = 0; h < heads; ++h) {
                        const auto slice = [&](const row_matrix<S>& m, linrpe::index ch) {
                            return row_matrix<S>(view(m.data(), ch).slice(bi, h));
                        };
                        const row_matrix<S> q = slice(qb, d), k = slice(kb, d), v = slice(vb, e), o = slice(ob, e);
                        const row_matrix<double> psi = to_double<S>(attn.features(q, role::query, h, p0));
                        const row_matrix<double> kappa = to_double<S>(attn.features(k, role::key, h, p0));
                        const row_matrix<double> w = to_double<S>(attn.mixing_matrix(n, n, h, p0, p0));
                        const row_matrix<double> ref = reference::kernel_attention(psi, kappa, to_double<S>(v), w, opt.norm, double(opt.eps));
                        const double err = (to_double<S>(o) - ref).norm();
                        const double bound = error_bound<S>(psi, kappa, to_double<S>(v), w, ref, opt.norm, double(opt.eps));
                        CAPTURE(c.name(), int(mask), bnhd, bi, h, err, bound);
                        CHECK(err <= bound);
                        // Heads have their own parameters: the per-head call reproduces the slice.
                        row_matrix<S> single(n, e);
                        attn.forward(q, k, v, single, h, p0);
                        CHECK((to_double<S>(single) - to_double<S>(o)).norm() <= bound);
                    }
            }
        }
}

TEMPLATE_TEST_CASE("lrpe attention: causal outputs ignore later tokens (bit-identical)", "[lrpe][causal]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 100, d = 8, t = 37;
    for (const config& c : attention_configs()) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = normalization::rms;
        opt.chunk_size = 16;
        const attention<S> attn({}, make<S>(c, d, 2), opt);
        row_matrix<S> q = uniform<S>(n, d, 7), k = uniform<S>(n, d, 8), v = uniform<S>(n, 4, 9);
        const row_matrix<S> before = attn(q, k, v, 1, 777);
        q.bottomRows(n - t - 1) = uniform<S>(n - t - 1, d, 10);
        k.bottomRows(n - t - 1) = uniform<S>(n - t - 1, d, 11);
        v.bottomRows(n - t - 1) = uniform<S>(n - t - 1, 4, 12);
        const row_matrix<S> after = attn(q, k, v, 1, 777);
        CAPTURE(c.name());
        CHECK(before.topRows(t + 1) == after.topRows(t + 1));
        CHECK(before.bottomRows(n - t - 1) != after.bottomRows(n - t - 1));
    }
}

TEMPLATE_TEST_CASE("lrpe attention: prefill + prefill + steps equal one batched causal call", "[lrpe][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 2, heads = 2, n = 40, d = 8, e = 3, n0 = 17, n1 = 29;
    for (const config& c : attention_configs()) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = normalization::rms;
        opt.chunk_size = 8;
        const attention<S> attn({}, make<S>(c, d, heads), opt);
        // (B, N, H, D) buffers, so that a token range is a pointer offset with the same strides.
        const row_matrix<S> qb = uniform<S>(b * n * heads, d, 13), kb = uniform<S>(b * n * heads, d, 14),
                            vb = uniform<S>(b * n * heads, e, 15);
        row_matrix<S> full(b * n * heads, e), streamed(b * n * heads, e);
        const auto part = [&](auto* p, linrpe::index ch, linrpe::index first, linrpe::index count) {
            return tensor_view<std::remove_pointer_t<decltype(p)>>(p + first * heads * ch, b, heads, count, ch, n * heads * ch, ch,
                                                                  heads * ch);
        };
        attn.forward(part(qb.data(), d, 0, n), part(kb.data(), d, 0, n), part(vb.data(), e, 0, n), part(full.data(), e, 0, n));
        auto dec = attn.decoder(b, heads);
        dec.prefill(part(qb.data(), d, 0, n0), part(kb.data(), d, 0, n0), part(vb.data(), e, 0, n0), part(streamed.data(), e, 0, n0));
        dec.prefill(part(qb.data(), d, n0, n1 - n0), part(kb.data(), d, n0, n1 - n0), part(vb.data(), e, n0, n1 - n0),
                    part(streamed.data(), e, n0, n1 - n0)); // starts at absolute position 17
        for (linrpe::index t = n1; t < n; ++t)
            dec.step(part(qb.data(), d, t, 1), part(kb.data(), d, t, 1), part(vb.data(), e, t, 1), part(streamed.data(), e, t, 1));
        REQUIRE(dec.position() == n);
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index h = 0; h < heads; ++h) {
                const auto slice = [&](const row_matrix<S>& m, linrpe::index ch) {
                    return row_matrix<S>(part(m.data(), ch, 0, n).slice(bi, h));
                };
                const row_matrix<S> q = slice(qb, d), k = slice(kb, d), v = slice(vb, e);
                const row_matrix<double> psi = to_double<S>(attn.features(q, role::query, h, 0));
                const row_matrix<double> kappa = to_double<S>(attn.features(k, role::key, h, 0));
                const row_matrix<double> w = to_double<S>(attn.mixing_matrix(n, n, h));
                const row_matrix<double> ref = reference::kernel_attention(psi, kappa, to_double<S>(v), w, opt.norm, double(opt.eps));
                // Both runs are within `bound` of the same reference (each row's ψ/κ depend only on the
                // token and its absolute position, so the streamed features equal these).
                const double bound = error_bound<S>(psi, kappa, to_double<S>(v), w, ref, opt.norm, double(opt.eps));
                const double err = (to_double<S>(slice(streamed, e)) - to_double<S>(slice(full, e))).norm();
                CAPTURE(c.name(), bi, h, err, bound);
                CHECK(err <= 2.0 * bound);
                CHECK((to_double<S>(slice(streamed, e)) - ref).norm() <= bound);
            }
    }
}

TEMPLATE_TEST_CASE("lrpe attention: causal chunk sizes 1, C-1, C, C+1, N agree", "[lrpe][chunks]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 97, d = 8, e = 4;
    for (const config& c : attention_configs()) {
        const row_matrix<S> q = uniform<S>(n, d, 51), k = uniform<S>(n, d, 52), v = uniform<S>(n, e, 53);
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = normalization::none;
        const attention<S> ref_attn({}, make<S>(c, d, 1), opt);
        const row_matrix<double> psi = to_double<S>(ref_attn.features(q, role::query, 0, 500)),
                                 kappa = to_double<S>(ref_attn.features(k, role::key, 0, 500)),
                                 w = to_double<S>(ref_attn.mixing_matrix(n, n, 0, 500, 500));
        const row_matrix<double> ref = reference::kernel_attention(psi, kappa, to_double<S>(v), w, opt.norm, double(opt.eps));
        const double bound = error_bound<S>(psi, kappa, to_double<S>(v), w, ref, opt.norm, double(opt.eps));
        for (linrpe::index chunk : {linrpe::index(1), linrpe::index(15), linrpe::index(16), linrpe::index(17), n}) {
            opt.chunk_size = chunk;
            const attention<S> attn({}, make<S>(c, d, 1), opt);
            const double err = (to_double<S>(attn(q, k, v, 0, 500)) - ref).norm();
            CAPTURE(c.name(), chunk, err, bound);
            CHECK(err <= bound);
        }
    }
}

TEMPLATE_TEST_CASE("lrpe attention: cosine + cosFormer theta + relu + sum is cosFormer", "[lrpe][cosformer]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index d = 16, e = 6;
    for (masking mask : {masking::none, masking::causal})
        for (linrpe::index n : {linrpe::index(1), linrpe::index(50), linrpe::index(128)}) {
            const linrpe::index max_len = 128; // cosFormer's M ≥ every offset in the sequence
            options<S> opt;
            opt.mask = mask;
            opt.norm = normalization::sum;
            const linear_attention<feature_maps::relu, positional::lrpe<S>, S> attn({}, positional::lrpe<S>::cosformer(d, max_len), opt);
            const row_matrix<S> q = uniform<S>(n, d, 21), k = uniform<S>(n, d, 22), v = uniform<S>(n, e, 23);
            const row_matrix<S> out = attn(q, k, v, 0, 3000);
            // cosFormer (Qin et al., ICLR 2022), written quadratically: weights relu(q_i)·relu(k_j)·cos(π(i−j)/(2M)),
            // causal j ≤ i, out_i = Σ_j w_ij v_j / (Σ_j w_ij + eps).
            row_matrix<double> ref(n, e), a(n, n);
            const row_matrix<double> rq = to_double<S>(q).cwiseMax(0.0), rk = to_double<S>(k).cwiseMax(0.0);
            for (linrpe::index i = 0; i < n; ++i)
                for (linrpe::index j = 0; j < n; ++j)
                    a(i, j) = (mask == masking::causal && j > i) ? 0.0
                                                                : rq.row(i).dot(rk.row(j)) * std::cos(M_PI * double(i - j) / (2.0 * double(max_len)));
            for (linrpe::index i = 0; i < n; ++i) ref.row(i) = (a.row(i) * to_double<S>(v)) / (a.row(i).sum() + double(opt.eps));
            // Bound of error_bound on the features (ψ = [φ cos ; φ sin] has norm ‖φ‖), plus 4 eps of encoding
            // error (the reference is not built from the computed ψ, κ).
            const row_matrix<double> psi = to_double<S>(attn.features(q, role::query, 0, 3000)),
                                     kappa = to_double<S>(attn.features(k, role::key, 0, 3000)),
                                     w = to_double<S>(attn.mixing_matrix(n, n));
            const double bound = error_bound<S>(psi, kappa, to_double<S>(v), w, ref, opt.norm, double(opt.eps), 8.0);
            const double err = (to_double<S>(out) - ref).norm();
            CAPTURE(int(mask), n, err, bound);
            CHECK(err <= bound);
            CHECK(err <= 1e3 * eps<S>() * ref.norm()); // and the bound itself is meaningful (not vacuous)
        }
}

TEST_CASE("lrpe attention: argument errors name the argument", "[lrpe][errors]")
{
    const row_matrix<float> x = row_matrix<float>::Ones(10, 8), v = row_matrix<float>::Ones(10, 4);
    row_matrix<float> out(10, 4);
    options<float> sum_opt; // default normalization::sum
    // Signed scores: sum is refused (use rms or none), at construction since rotate can never keep scores >= 0.
    REQUIRE_THROWS_AS(attention<float>({}, positional::lrpe<float>::rope(8), sum_opt), linrpe::error);
    REQUIRE_THROWS_WITH(attention<float>({}, positional::lrpe<float>::rope(8), sum_opt), Catch::Contains("options.norm"));
    // cosFormer beyond max_len: cos can go negative.
    const linear_attention<feature_maps::relu, positional::lrpe<float>, float> cf({}, positional::lrpe<float>::cosformer(8, 5), sum_opt);
    REQUIRE_THROWS_WITH(cf.forward(x, x, v, out), Catch::Contains("options.norm"));
    options<float> rms;
    rms.norm = normalization::rms;
    // Feature width: φ gives 8 channels, the encoding was built for 6.
    const attention<float> narrow({}, positional::lrpe<float>::rope(6), rms);
    REQUIRE_THROWS_AS(narrow.forward(x, x, v, out), linrpe::error);
    REQUIRE_THROWS_WITH(narrow.forward(x, x, v, out), Catch::Contains("lrpe dim"));
    REQUIRE_THROWS_WITH(narrow.features(x, role::query), Catch::Contains("lrpe dim"));
    // Head out of range, single head and batched.
    const attention<float> two({}, positional::lrpe<float>::rope(8, 2), rms);
    REQUIRE_THROWS_WITH(two.forward(x, x, v, out, 2), Catch::Contains("head"));
    std::vector<float> buf(3 * 10 * 8), vbuf(3 * 10 * 4), obuf(3 * 10 * 4);
    REQUIRE_THROWS_WITH(two.forward(view_bhnd(buf.data(), 1, 3, 10, 8), view_bhnd(buf.data(), 1, 3, 10, 8),
                                    view_bhnd(vbuf.data(), 1, 3, 10, 4), view_bhnd(obuf.data(), 1, 3, 10, 4)),
                        Catch::Contains("head"));
    // Public θ edited to a wrong shape: caught before any work.
    attention<float> edited({}, positional::lrpe<float>::rope(8, 2), rms);
    edited.positional().theta.resize(2, 3);
    out.setConstant(7.0f);
    REQUIRE_THROWS_WITH(edited.forward(x, x, v, out, 1), Catch::Contains("theta"));
    CHECK(out.isConstant(7.0f)); // nothing written before validation
}
} // namespace test_lrpe_attention
