// Backward of Toeplitz RPE (docs/design.md §16): dq, dk, dv through the mixing and ∂L/∂b for dense, fft and
// banded, causal and not, every normalization; compose with a feature-side encoding that learns.
#include "support_backward.hpp"
#include "support_learned.hpp"

#include <linrpe/positional/compose.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_toeplitz_backward {

namespace {
using namespace linrpe;
using linrpe::index;

template <class S>
using toeplitz_attention = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;

constexpr toeplitz_algorithm algorithms[] = {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded};
constexpr normalization norms[] = {normalization::sum, normalization::none, normalization::rms};

template <class S>
options<S> make_options(masking mask, normalization norm, toeplitz_algorithm algo, int threads = 1)
{
    options<S> opt;
    opt.mask = mask;
    opt.norm = norm;
    opt.toeplitz = algo;
    opt.threads = threads;
    opt.chunk_size = 16;
    return opt;
}

// Summation depth the FFT adds to a product (as test_toeplitz_attention derives it): ≈ u·log2 L per
// transform pair, growing like √(N + Nk) in the contraction.
index fft_terms(index n, index nk) { return index(4.0 * std::log2(double(2 * (n + nk))) * std::sqrt(double(n + nk))); }
index extra_terms(toeplitz_algorithm algo, index n, index nk) { return algo == toeplitz_algorithm::fft ? fft_terms(n, nk) : 0; }

// Biases of either sign spanning ±1.5 (the sum shift max b then differs per call), one row per head.
positional::toeplitz_rpe<double> random_biases(index heads, index t_max, std::uint32_t seed)
{
    return positional::toeplitz_rpe<double>(test::uniform<double>(heads, 2 * t_max - 1, seed, 1.5));
}

// f(x) = ⟨dout, forward(x)⟩ for one head; its rounding is at most ‖dout‖·(the forward's bound) plus the
// dot's own n·E·u·Σ|dout||out| <= n·E·u·‖dout‖‖out‖.
template <class Attention>
double f_of(const Attention& attn, const row_matrix<double>& q, const row_matrix<double>& k, const row_matrix<double>& v,
            const row_matrix<double>& dout, index head, index q_first, index k_first)
{
    row_matrix<double> out(q.rows(), v.cols());
    attn.forward(q, k, v, out, head, q_first, k_first);
    return test::dot(dout, out);
}


TEST_CASE("Toeplitz backward equals central finite differences for q, k, v and b", "[toeplitz][backward][fd]")
{
    const index d = 3, e = 2, heads = 2, head = 1;
    for (const masking mask : {masking::none, masking::causal})
        for (const index n : {index(1), index(7), index(129)})
            for (const index t_max : {index(1), std::max<index>(1, n / 4), n, n + 3})
                for (const toeplitz_algorithm algo : algorithms)
                    for (const normalization norm : norms) {
                        const index q_first = 5, k_first = mask == masking::causal ? 5 : 2;
                        const auto pe = random_biases(heads, t_max, std::uint32_t(11 + n + t_max));
                        const toeplitz_attention<double> attn({}, pe, make_options<double>(mask, norm, algo));
                        // Under rms a row whose numerator nearly cancels is ill-conditioned (the forward's bound grows
                        // like 1/‖num_i‖ and the check could not fail): values there are kept positive.
                        const double shift = norm == normalization::rms ? 1.5 : 0.0;
                        const row_matrix<double> q = test::uniform<double>(n, d, 1, 0.7), k = test::uniform<double>(n, d, 2, 0.7),
                                                 v = (test::uniform<double>(n, e, 3).array() + shift).matrix(),
                                                 dout = test::uniform<double>(n, e, 4);
                        row_matrix<double> dq(n, d), dk(n, d), dv(n, e);
                        auto pg = attn.make_parameter_gradients();
                        attn.backward(q, k, v, dout, dq, dk, dv, head, q_first, k_first, nullptr, &pg);
                        CAPTURE(int(mask), n, t_max, int(algo), int(norm));
                        REQUIRE(pg.biases.row(0).isZero(0)); // another head's biases get nothing
                        if (mask == masking::causal)          // offsets t > 0 are never used
                            REQUIRE(pg.biases.row(head).tail(t_max - 1).isZero(0));

                        // f is evaluated by the dense forward, whose rounding bound is tight enough for the check at
                        // every size (the FFT's depth terms are not): all three compute the same function, so each
                        // algorithm's backward is checked against the gradient of that function.
                        const toeplitz_attention<double> dense({}, pe, make_options<double>(mask, norm, toeplitz_algorithm::dense));
                        row_matrix<double> out(n, e);
                        dense.forward(q, k, v, out, head, q_first, k_first);
                        const double bound = test::reference_and_bound(dense, q, k, v, head, q_first, k_first).second;
                        const double f_round = dout.norm() * bound + double(n * e) * test::unit_roundoff<double>() * dout.norm() * out.norm();
                        const auto f = [&](const row_matrix<double>& qq, const row_matrix<double>& kk, const row_matrix<double>& vv) {
                            return f_of(dense, qq, kk, vv, dout, head, q_first, k_first);
                        };
                        const row_matrix<double> uq = test::uniform<double>(n, d, 5), uk = test::uniform<double>(n, d, 6),
                                                 uv = test::uniform<double>(n, e, 7);
                        test::require_fd(test::central_difference([&](double h) { return f(q + h * uq, k, v); }, test::dot(dq, uq),
                                                                  f_round, dq.norm() * uq.norm(), uq.norm() / q.norm()));
                        test::require_fd(test::central_difference([&](double h) { return f(q, k + h * uk, v); }, test::dot(dk, uk),
                                                                  f_round, dk.norm() * uk.norm(), uk.norm() / k.norm()));
                        test::require_fd(test::central_difference([&](double h) { return f(q, k, v + h * uv); }, test::dot(dv, uv),
                                                                  f_round, dv.norm() * uv.norm(), uv.norm() / v.norm()));
                        const row_matrix<double> ub = test::uniform<double>(heads, 2 * t_max - 1, 8);
                        test::require_fd(test::central_difference(
                            [&](double h) {
                                positional::toeplitz_rpe<double> moved = pe;
                                moved.set_biases(row_matrix<double>(pe.bias + h * ub));
                                return f_of(toeplitz_attention<double>({}, moved, dense.opts()), q, k, v, dout, head, q_first, k_first);
                            },
                            test::dot(pg.biases, ub), f_round, pg.biases.norm() * ub.norm(), ub.norm() / pe.bias.norm()));
                    }
}

TEMPLATE_TEST_CASE("Toeplitz backward: dense, fft and banded agree with the exact double gradients (inputs and b)",
                   "[toeplitz][backward]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index d = 4, e = 3;
    for (const masking mask : {masking::none, masking::causal})
        for (const index n : {index(7), index(129), index(300)})
            for (const index t_max : {index(1), std::max<index>(1, n / 4), n, n + 3})
                for (const normalization norm : norms) {
                    const auto pe = random_biases(1, t_max, std::uint32_t(3 * n + t_max));
                    const row_matrix<S> q = test::uniform<S>(n, d, 21, 0.7), k = test::uniform<S>(n, d, 22, 0.7),
                                        v = test::uniform<S>(n, e, 23), dout = test::uniform<S>(n, e, 24);
                    std::vector<vector<double>> dbs;
                    std::vector<test::grads> all;
                    for (const toeplitz_algorithm algo : algorithms) {
                        const toeplitz_attention<S> attn({}, positional::toeplitz_rpe<S>(pe.bias.template cast<S>()),
                                                         make_options<S>(mask, norm, algo));
                        row_matrix<S> dq(n, d), dk(n, d), dv(n, e);
                        auto pg = attn.make_parameter_gradients();
                        attn.backward(q, k, v, dout, dq, dk, dv, 0, 0, 0, nullptr, &pg);
                        // Exact gradients in double and the derived bounds for S (support_backward.hpp, the FFT's
                        // depth added to the summation terms).
                        const auto ref = test::reference_backward(attn, q, k, v, dout, extra_terms(algo, n, n));
                        const auto bref = test::reference_bias_gradient(attn, q, k, v, dout, t_max, extra_terms(algo, n, n));
                        const double err_q = (dq.template cast<double>() - ref.exact.dq).norm(),
                                     err_k = (dk.template cast<double>() - ref.exact.dk).norm(),
                                     err_v = (dv.template cast<double>() - ref.exact.dv).norm(),
                                     err_b = (pg.biases.row(0).transpose() - bref.exact).norm();
                        CAPTURE(int(mask), n, t_max, int(norm), int(algo), err_q, ref.bound_dq, err_k, ref.bound_dk, err_v,
                                ref.bound_dv, err_b, bref.bound);
                        CHECK(err_q <= ref.bound_dq);
                        CHECK(err_k <= ref.bound_dk);
                        CHECK(err_v <= ref.bound_dv);
                        CHECK(err_b <= bref.bound);
                    }
                }
}

TEST_CASE("Toeplitz batched backward: b summed in batch order, bit-identical for 1, 2, 3 threads; accumulates",
          "[toeplitz][backward][threads]")
{
    const index batch = 2, heads = 2, n = 300, d = 4, e = 3, t_max = 40;
    const auto pe = random_biases(heads, t_max, 77);
    const row_matrix<double> q = test::uniform<double>(batch * heads * n, d, 31, 0.7), k = test::uniform<double>(batch * heads * n, d, 32, 0.7),
                             v = test::uniform<double>(batch * heads * n, e, 33), dout = test::uniform<double>(batch * heads * n, e, 34);
    const auto in = [&](const row_matrix<double>& x) { return view_bhnd(x.data(), batch, heads, n, x.cols()); };
    for (const masking mask : {masking::none, masking::causal})
        for (const toeplitz_algorithm algo : algorithms) {
            const auto run = [&](int threads, positional::toeplitz_rpe<double>::parameter_gradients& pg, row_matrix<double>& dq) {
                options<double> opt = make_options<double>(mask, normalization::sum, algo, threads);
                opt.segment_rows = 64;
                const toeplitz_attention<double> attn({}, pe, opt);
                row_matrix<double> dk(k.rows(), d), dv(v.rows(), e);
                dq.resize(q.rows(), d);
                attn.backward(in(q), in(k), in(v), in(dout), view_bhnd(dq.data(), batch, heads, n, d),
                              view_bhnd(dk.data(), batch, heads, n, d), view_bhnd(dv.data(), batch, heads, n, e), 3, nullptr, &pg);
            };
            auto pg = pe.make_parameter_gradients();
            row_matrix<double> dq1;
            run(1, pg, dq1);
            CAPTURE(int(mask), int(algo));
            REQUIRE(pg.biases.norm() > 0);
            for (const int threads : {2, 3}) {
                auto other = pe.make_parameter_gradients();
                row_matrix<double> dq;
                run(threads, other, dq);
                CAPTURE(threads);
                REQUIRE(test::bit_identical(other.biases, pg.biases));
                REQUIRE(test::bit_identical(dq, dq1));
            }
            auto twice = pg;
            row_matrix<double> dq;
            run(1, twice, dq); // accumulates: exactly 2·pg
            REQUIRE(test::bit_identical(twice.biases, (2.0 * pg.biases).eval()));
        }
}

TEST_CASE("Toeplitz backward refuses parameter gradients of the wrong shape before writing", "[toeplitz][backward][errors]")
{
    const index n = 20, d = 3, e = 2;
    const toeplitz_attention<double> attn({}, random_biases(2, 5, 5), make_options<double>(masking::causal, normalization::sum,
                                                                                           toeplitz_algorithm::banded));
    const row_matrix<double> q = test::uniform<double>(n, d, 1), k = test::uniform<double>(n, d, 2), v = test::uniform<double>(n, e, 3),
                             dout = test::uniform<double>(n, e, 4);
    for (const auto& shape : {std::pair<index, index>(3, 9), std::pair<index, index>(2, 7), std::pair<index, index>(0, 0)}) {
        positional::toeplitz_rpe<double>::parameter_gradients bad{row_matrix<double>::Constant(shape.first, shape.second, 5.0)};
        row_matrix<double> dq = row_matrix<double>::Constant(n, d, 7.0), dk = dq, dv = row_matrix<double>::Constant(n, e, 7.0);
        try {
            attn.backward(q, k, v, dout, dq, dk, dv, 0, 0, 0, nullptr, &bad);
            FAIL("no throw");
        } catch (const linrpe::error& err) {
            CHECK(std::string(err.what()).find("parameter_gradients.biases") != std::string::npos);
        }
        CHECK((dq.array() == 7.0).all());
        CHECK((dk.array() == 7.0).all());
        CHECK((dv.array() == 7.0).all());
        CHECK((bad.biases.array() == 5.0).all());
    }
    auto pe = random_biases(2, 5, 5);
    CHECK_THROWS_AS(pe.set_biases(row_matrix<double>(row_matrix<double>::Zero(2, 8))), linrpe::error);
}

TEST_CASE("compose(post-feature encoding that learns, toeplitz_rpe): both parts' gradients equal finite differences",
          "[toeplitz][backward][compose][fd]")
{
    using learned = test::learned_gain<test::stage::post_feature>; // queries φ ⊙ s_h, keys φ ⊙ s_h², after the feature map
    using pe_t = positional::compose<learned, positional::toeplitz_rpe<double>>;
    const index batch = 2, heads = 2, n = 150, d = 3, e = 2, t_max = 20;
    learned gain;
    gain.s = 0.5 + test::uniform<double>(heads, d, 9).array().abs(); // elu + 1: M = D
    const pe_t pe(gain, random_biases(heads, t_max, 13));
    const row_matrix<double> q = test::uniform<double>(batch * heads * n, d, 41, 0.6), k = test::uniform<double>(batch * heads * n, d, 42, 0.6),
                             v = test::uniform<double>(batch * heads * n, e, 43), dout = test::uniform<double>(batch * heads * n, e, 44);
    const auto in = [&](const row_matrix<double>& x) { return view_bhnd(x.data(), batch, heads, n, x.cols()); };
    for (const masking mask : {masking::none, masking::causal}) {
        options<double> opt = make_options<double>(mask, normalization::sum, toeplitz_algorithm::banded);
        opt.segment_rows = 64;
        const auto make = [&](const pe_t& p, int threads) {
            options<double> o = opt;
            o.threads = threads;
            return linear_attention<feature_maps::elu_plus_one, pe_t, double>({}, p, o);
        };
        const auto f = [&](const pe_t& p) {
            row_matrix<double> out(q.rows(), e);
            make(p, 1).forward(in(q), in(k), in(v), view_bhnd(out.data(), batch, heads, n, e), 7);
            return test::dot(dout, out);
        };
        const auto grads = [&](int threads) {
            const auto attn = make(pe, threads);
            auto pg = attn.make_parameter_gradients();
            row_matrix<double> dq(q.rows(), d), dk(k.rows(), d), dv(v.rows(), e);
            attn.backward(in(q), in(k), in(v), in(dout), view_bhnd(dq.data(), batch, heads, n, d), view_bhnd(dk.data(), batch, heads, n, d),
                          view_bhnd(dv.data(), batch, heads, n, e), 7, nullptr, &pg);
            return pg;
        };
        const auto pg = grads(1);
        const auto pg3 = grads(3);
        CAPTURE(int(mask));
        REQUIRE(test::bit_identical(pg3.feature_side.gain, pg.feature_side.gain));
        REQUIRE(test::bit_identical(pg3.mixing.biases, pg.mixing.biases));
        // Rounding of f: Σ over sequences (b, h) of ‖dout_bh‖·(the forward's bound, support.hpp) plus the dot's
        // own B·H·N·E·u·‖dout‖‖out‖.
        row_matrix<double> out(q.rows(), e);
        const auto attn = make(pe, 1);
        attn.forward(in(q), in(k), in(v), view_bhnd(out.data(), batch, heads, n, e), 7);
        double f_round = double(q.rows() * e) * test::unit_roundoff<double>() * dout.norm() * out.norm();
        for (index bh = 0; bh < batch * heads; ++bh) {
            const row_matrix<double> qs = q.middleRows(bh * n, n), ks = k.middleRows(bh * n, n), vs = v.middleRows(bh * n, n);
            f_round += dout.middleRows(bh * n, n).norm() * test::reference_and_bound(attn, qs, ks, vs, bh % heads, 7, 7).second;
        }
        const row_matrix<double> ua = test::uniform<double>(heads, d, 18), ub = test::uniform<double>(heads, 2 * t_max - 1, 19);
        test::require_fd(test::central_difference(
            [&](double h) {
                pe_t moved = pe;
                moved.feature_side.s = pe.feature_side.s + h * ua;
                return f(moved);
            },
            test::dot(pg.feature_side.gain, ua), f_round, pg.feature_side.gain.norm() * ua.norm(), ua.norm() / pe.feature_side.s.norm()));
        test::require_fd(test::central_difference(
            [&](double h) {
                pe_t moved = pe;
                moved.mixing.set_biases(row_matrix<double>(pe.mixing.bias + h * ub));
                return f(moved);
            },
            test::dot(pg.mixing.biases, ub), f_round, pg.mixing.biases.norm() * ub.norm(), ub.norm() / pe.mixing.bias.norm()));
    }
}

// The shipped feature-side encodings composed with Toeplitz weights: the chain through both parts, per head
// (head 1 of 2), every input and one learnable tensor of each part, against central finite differences.
// Returns the number of (mask, algorithm) configurations checked.
template <class FeatureSide, class Grad>
int check_compose_chain(const FeatureSide& side, row_matrix<double> FeatureSide::*param, Grad grad_of,
                         void (*set)(FeatureSide&, const row_matrix<double>&), index d, index t_max)
{
    using pe_t = positional::compose<FeatureSide, positional::toeplitz_rpe<double>>;
    const index n = 40, e = 3, head = 1, first = 5;
    const pe_t pe(side, random_biases(2, t_max, 23));
    const row_matrix<double> q = test::uniform<double>(n, d, 51, 0.6), k = test::uniform<double>(n, d, 52, 0.6),
                             v = test::uniform<double>(n, e, 53), dout = test::uniform<double>(n, e, 54);
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal})
        for (const toeplitz_algorithm algo : algorithms) {
            const options<double> opt = make_options<double>(mask, normalization::rms, algo);
            const auto make = [&](const pe_t& p) { return linear_attention<feature_maps::elu_plus_one, pe_t, double>({}, p, opt); };
            const auto attn = make(pe);
            auto pg = attn.make_parameter_gradients();
            row_matrix<double> dq(n, d), dk(n, d), dv(n, e);
            attn.backward(q, k, v, dout, dq, dk, dv, head, first, first, nullptr, &pg);
            const auto f = [&](const pe_t& p, const row_matrix<double>& qq) { return test::dot(dout, make(p)(qq, k, v, head, first)); };
            // Rounding of f: ‖dout‖ times the forward's bound (support.hpp), plus the dot's own N·E·u·‖dout‖‖out‖.
            const auto [out, bound] = test::reference_and_bound(attn, q, k, v, head, first, first, extra_terms(algo, n, n));
            const double f_round = dout.norm() * bound + double(n * e) * test::unit_roundoff<double>() * dout.norm() * out.norm();
            CAPTURE(int(mask), int(algo));
            const row_matrix<double> uq = test::uniform<double>(n, d, 55);
            test::require_fd(test::central_difference([&](double h) { return f(pe, q + h * uq); }, test::dot(dq, uq), f_round,
                                                      dq.norm() * uq.norm(), uq.norm() / q.norm()));
            const row_matrix<double>& g = grad_of(pg.feature_side);
            const row_matrix<double> ua = test::uniform<double>(g.rows(), g.cols(), 56);
            test::require_fd(test::central_difference(
                [&](double h) {
                    pe_t moved = pe;
                    set(moved.feature_side, (pe.feature_side.*param + h * ua).eval());
                    return f(moved, q);
                },
                test::dot(g, ua), f_round, g.norm() * ua.norm(), ua.norm() / (pe.feature_side.*param).norm()));
            const row_matrix<double> ub = test::uniform<double>(2, 2 * t_max - 1, 57);
            test::require_fd(test::central_difference(
                [&](double h) {
                    pe_t moved = pe;
                    moved.mixing.set_biases(row_matrix<double>(pe.mixing.bias + h * ub));
                    return f(moved, q);
                },
                test::dot(pg.mixing.biases, ub), f_round, pg.mixing.biases.norm() * ub.norm(), ub.norm() / pe.mixing.bias.norm()));
            ++checked;
        }
    return checked;
}

TEST_CASE("compose(sine_spe, toeplitz_rpe) and compose(lrpe, toeplitz_rpe): the chain through both parts equals "
          "finite differences", "[toeplitz][backward][compose][fd]")
{
    SECTION("gated sineSPE: q and the gain logits, and b")
    {
        positional::sine_spe<double> spe(2, 4, 3, 16, 7, true);
        spe.freqs.array() += 2.0; // phases turn visibly within 40 positions
        REQUIRE(check_compose_chain<positional::sine_spe<double>>(
                    spe, &positional::sine_spe<double>::gains, [](const auto& g) -> const row_matrix<double>& { return g.gains; },
                    [](positional::sine_spe<double>& s, const row_matrix<double>& x) { s.set_parameters(s.freqs, s.offsets, x); },
                    4, 9) == 2 * int(std::size(algorithms)));
    }
    SECTION("LRPE rotate with learned θ: q and θ, and b")
    {
        positional::lrpe<double> lr(lrpe_kind::rotate, 4, 2);
        lr.set_theta((0.1 + 0.9 * test::uniform<double>(2, lr.theta_count(), 21).array().abs()).matrix());
        REQUIRE(check_compose_chain<positional::lrpe<double>>(
                    lr, &positional::lrpe<double>::theta, [](const auto& g) -> const row_matrix<double>& { return g.theta; },
                    [](positional::lrpe<double>& p, const row_matrix<double>& x) { p.set_theta(x); }, 4, 9) ==
                2 * int(std::size(algorithms)));
    }
}
} // namespace
} // namespace test_toeplitz_backward
