// Backward from a carried Toeplitz state (docs/design.md §16): a sequence run in k causal calls of random
// sizes and differentiated by k calls in reverse equals one call's backward (dense, fft, banded; with and
// without eviction into the far state; db included), the gradient w.r.t. the initial window and far state
// equals central finite differences, thread counts give the same bits, bad states are refused before any
// write, and compose(LRPE, toeplitz) through a split chain is the derivative of one call.
#include "support_backward.hpp"
#include "support_state.hpp"

#include <linrpe/positional/compose.hpp>

#include <cmath>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_toeplitz_state_backward {

namespace {
using namespace state_test;
using linrpe::index;

constexpr toeplitz_algorithm algorithms[] = {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded};

// Summation depth the FFT adds to a product over n queries and nk keys (as test_toeplitz_backward derives it).
index fft_terms(index n, index nk) { return index(4.0 * std::log2(double(2 * (n + nk))) * std::sqrt(double(n + nk))); }

TEMPLATE_TEST_CASE("Toeplitz state backward: k calls of random sizes in reverse equal one call's backward",
                   "[toeplitz][state][backward]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, h = 1, n = 40, d = 4, e = 3;
    int checked = 0;
    for (const toeplitz_algorithm algo : algorithms)
        for (const index t_max : {4, 64}) // 4: every piece evicts into far; 64: the window holds the whole sequence
            for (const normalization norm : {normalization::sum, normalization::none}) {
                const std::uint32_t seed = std::uint32_t(10 * checked + 1);
                const toeplitz_attention<S> attn({}, random_bias<S>(h, t_max, seed), make_options<S>(masking::causal, norm, algo));
                const bhnd<S> q(b, h, n, d, seed + 1), k(b, h, n, d, seed + 2), v(b, h, n, e, seed + 3), dout(b, h, n, e, seed + 4);
                bhnd<S> dq1(b, h, n, d, 0), dk1(b, h, n, d, 0), dv1(b, h, n, e, 0), dq(b, h, n, d, 0), dk(b, h, n, d, 0), dv(b, h, n, e, 0);
                auto pg1 = attn.make_parameter_gradients(), pg = attn.make_parameter_gradients();
                const std::vector<index> one{n}, pieces = random_pieces(n, seed);
                const auto grad_one = backward_pieces(attn, q, k, v, dout, dq1, dk1, dv1, one, &pg1);
                const auto grad_split = backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces, &pg);
                // Rounding of the chain: the same products as one call over the same pairs, grouped by pieces. A
                // call sums over at most T_max + 17 window keys and, through far, over every evicted key and then
                // M' features; a window row's or an evicted row's gradient collects the contributions of at most
                // P = pieces.size() later calls (P more additions). So the one-call bound (support_backward.hpp,
                // M' + Nk + C + 4 terms) holds with P + the FFT's depth more terms.
                const index extra = index(pieces.size()) + (algo == toeplitz_algorithm::fft ? fft_terms(n, n) : 0);
                vector<double> db_exact = vector<double>::Zero(2 * t_max - 1);
                double db_bound = 0;
                for (index bi = 0; bi < b; ++bi) {
                    const auto ref = test::reference_backward(attn, q.slice(bi, 0), k.slice(bi, 0), v.slice(bi, 0),
                                                              dout.slice(bi, 0), extra);
                    CAPTURE(int(algo), t_max, int(norm), pieces.size(), bi);
                    test::require_within(dq.slice(bi, 0), dk.slice(bi, 0), dv.slice(bi, 0), ref);
                    test::require_within(dq1.slice(bi, 0), dk1.slice(bi, 0), dv1.slice(bi, 0), ref);
                    const auto bref = test::reference_bias_gradient(attn, q.slice(bi, 0), k.slice(bi, 0), v.slice(bi, 0),
                                                                    dout.slice(bi, 0), t_max, extra);
                    db_exact += bref.exact;
                    db_bound += bref.bound; // the batch entries' errors add
                    // From an empty state the gradient holds no window row and a far of (M', Ex).
                    REQUIRE(!grad_split.empty(bi));
                    REQUIRE(grad_split.position(bi) == 0);
                }
                const double err = (pg.biases.row(0).transpose() - db_exact).norm(),
                             err1 = (pg1.biases.row(0).transpose() - db_exact).norm();
                CAPTURE(int(algo), t_max, int(norm), err, err1, db_bound);
                REQUIRE(err <= db_bound);
                REQUIRE(err1 <= db_bound);
                ++checked;
            }
    REQUIRE(checked == 12);
}

TEST_CASE("Toeplitz state backward: the gradient w.r.t. the initial window and far state equals central finite "
          "differences", "[toeplitz][state][backward][fd]")
{
    using S = double;
    const index n = 6, d = 3, e = 2, t_max = 4;
    int checked = 0;
    for (const toeplitz_algorithm algo : algorithms)
        for (const normalization norm : {normalization::sum, normalization::none})
            for (const index prefix : {3, 9}) {
                const toeplitz_attention<S> attn({}, random_bias<S>(1, t_max, 70), make_options<S>(masking::causal, norm, algo));
                // s0 at position 3 (3 window rows, far not used yet: its gradient is the final far's) or 9 (> T_max:
                // T_max window rows and an evicted far); the call evicts 5 or 6 rows, window rows among them. The
                // final state's weights in the loss from a window of the same structure (T_max rows, evicted).
                const auto s0 = state_after(attn, 1, 1, prefix, d, e, 40), weights = state_after(attn, 1, 1, 5, d, e, 50);
                const std::vector<double> x0 = slot_data(attn, s0), wx = slot_data(attn, weights);
                const bhnd<S> q(1, 1, n, d, 1), k(1, 1, n, d, 2), v(1, 1, n, e, 3), dout(1, 1, n, e, 4);
                bhnd<S> dq(1, 1, n, d, 0), dk(1, 1, n, d, 0), dv(1, 1, n, e, 0);
                auto grad = attn.make_state(1, 1);
                attn.backward(q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), dv.out(), s0, grad, &weights);
                const std::vector<double> gx = slot_data(attn, grad);
                REQUIRE(gx.size() == x0.size());
                // L(s0) = ⟨dout, out⟩ + ⟨W, final window and far⟩, along a random direction of every entry of s0.
                const row_matrix<double> u = test::uniform<double>(index(x0.size()), 1, 60);
                double loss_abs = 0;
                const auto loss = [&](double hstep) {
                    std::vector<double> x = x0;
                    for (std::size_t i = 0; i < x.size(); ++i) x[i] += hstep * u(index(i), 0);
                    auto st = with_slot_data(attn, s0, x);
                    bhnd<S> out(1, 1, n, e, 0);
                    attn.forward(q.in(), k.in(), v.in(), out.out(), st);
                    const std::vector<double> fx = slot_data(attn, st);
                    double l = test::dot(dout.data, out.data);
                    loss_abs = (dout.data.cwiseAbs().array() * out.data.cwiseAbs().array()).sum();
                    for (std::size_t i = 0; i < fx.size(); ++i) {
                        l += wx[i] * fx[i];
                        loss_abs += std::abs(wx[i] * fx[i]);
                    }
                    return l;
                };
                double analytic = 0, norm_grad = 0, norm_u = 0, norm_x = 0;
                for (std::size_t i = 0; i < gx.size(); ++i) {
                    analytic += gx[i] * u(index(i), 0);
                    norm_grad += gx[i] * gx[i];
                    norm_u += u(index(i), 0) * u(index(i), 0);
                    norm_x += x0[i] * x0[i];
                }
                loss(0.0);
                // Rounding of L: each out_i is a sum over at most T_max + N window keys and the far term (M' more
                // terms), the final far a sum of at most N + 1 terms (γ relative to the sum of absolute terms),
                // doubled for the normalization, plus the N·E + size(s0) terms of the dot products themselves.
                const double terms = double(attn.encoded_dim(d) + t_max + 2 * n + 8 + n * e) + double(x0.size());
                const double f_round = 4.0 * terms * test::unit_roundoff<double>() * loss_abs;
                CAPTURE(int(algo), int(norm), prefix, analytic);
                test::require_fd(test::central_difference(loss, analytic, f_round, std::sqrt(norm_grad * norm_u),
                                                          std::sqrt(norm_u / norm_x)));
                ++checked;
            }
    REQUIRE(checked == 12);
}

TEST_CASE("Toeplitz state backward: results do not depend on the thread count", "[toeplitz][state][backward][threads]")
{
    using S = double;
    const index b = 1, h = 2, n = 70, d = 5, e = 3, t_max = 6;
    const bhnd<S> q(b, h, n, d, 31), k(b, h, n, d, 32), v(b, h, n, e, 33), dout(b, h, n, e, 34);
    const auto pieces = random_pieces(n, 9);
    int checked = 0;
    for (const toeplitz_algorithm algo : algorithms) {
        std::vector<row_matrix<S>> grads;
        std::vector<std::vector<unsigned char>> windows;
        for (const int threads : {1, 2, 3}) {
            auto opt = make_options<S>(masking::causal, normalization::sum, algo);
            opt.threads = threads;
            opt.segment_rows = 8; // long pieces could run their segments in parallel
            const toeplitz_attention<S> attn({}, random_bias<S>(h, t_max, 35), opt);
            bhnd<S> dq(b, h, n, d, 0), dk(b, h, n, d, 0), dv(b, h, n, e, 0);
            auto pg = attn.make_parameter_gradients();
            const auto g = backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces, &pg);
            row_matrix<S> all = row_matrix<S>::Zero(3 * b * h * n + h, std::max<index>(std::max(d, e), 2 * t_max - 1));
            all.topLeftCorner(b * h * n, d) = dq.data;
            all.block(b * h * n, 0, b * h * n, d) = dk.data;
            all.block(2 * b * h * n, 0, b * h * n, e) = dv.data;
            all.bottomLeftCorner(h, 2 * t_max - 1) = pg.biases;
            grads.push_back(all);
            windows.push_back(g.export_bytes(attn));
        }
        CAPTURE(int(algo));
        CHECK(test::bit_identical(grads[0], grads[1]));
        CHECK(test::bit_identical(grads[0], grads[2]));
        CHECK(windows[0] == windows[1]);
        CHECK(windows[0] == windows[2]);
        ++checked;
    }
    REQUIRE(checked == 3);
}

TEST_CASE("Toeplitz state backward: states of the wrong shape are refused, nothing written",
          "[toeplitz][state][backward][errors]")
{
    using S = double;
    using Catch::Matchers::Contains;
    const index b = 2, h = 2, n = 6, d = 4, e = 3, t_max = 8;
    const toeplitz_attention<S> attn({}, random_bias<S>(h, t_max, 3), make_options<S>(masking::causal));
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3), dout(b, h, n, e, 4);
    bhnd<S> dq(b, h, n, d, 5), dk(b, h, n, d, 6), dv(b, h, n, e, 7);
    const auto after = [&](index tokens, index dd, index ee) { return state_after(attn, b, h, tokens, dd, ee, 9); };
    const auto state = after(2, d, e); // the call of n = 6 leaves min(2 + 6, 8) = 8 window rows
    auto grad = attn.make_state(b, h);
    attn.backward(q.in(0, 2), k.in(0, 2), v.in(0, 2), dout.in(0, 2), dq.out(0, 2), dk.out(0, 2), dv.out(0, 2), state, grad);
    const auto grad_saved = grad.export_bytes(attn);
    const row_matrix<S> dq0 = dq.data, dk0 = dk.data, dv0 = dv.data;
    const auto backward = [&](const auto& initial, const auto* final_grad) {
        attn.backward(q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), dv.out(), initial, grad, final_grad);
    };
    const decltype(state)* none = nullptr;
    // Windows of width D = 3 (other M') or E = 2 continued at D = 4, E = 3; as initial or final_grad.
    const auto other_d = after(1, 3, e);
    require_shape_refusals(attn, backward, state, other_d, after(1, d, 2));
    REQUIRE_THROWS_WITH(backward(state, &other_d), Contains("final_grad state slot sizes"));
    // A final_grad window of 5 rows where the call leaves 8.
    const auto short_window = after(5, d, e);
    REQUIRE_THROWS_WITH(backward(state, &short_window), Contains("final_grad state history"));
    const auto full_window = after(12, d, e); // 8 rows: accepted
    REQUIRE_NOTHROW(backward(state, &full_window));
    REQUIRE(!(dq.data.array() == dq0.array()).all()); // the accepted call wrote: the refusals above did not
    // Nothing was written by the refused calls: replay them against the accepted result.
    const row_matrix<S> dq1 = dq.data, dk1 = dk.data, dv1 = dv.data;
    const auto grad1 = grad.export_bytes(attn);
    REQUIRE_THROWS(backward(state, &short_window));
    REQUIRE_THROWS(backward(other_d, none));
    CHECK(test::bit_identical(dq.data, dq1));
    CHECK(test::bit_identical(dk.data, dk1));
    CHECK(test::bit_identical(dv.data, dv1));
    CHECK(grad.export_bytes(attn) == grad1);
    CHECK(grad_saved != grad1);
}

TEST_CASE("Toeplitz state backward: compose(LRPE rotate, toeplitz_rpe) through k calls is the derivative of one call",
          "[toeplitz][state][backward][compose][fd]")
{
    using pe_t = positional::compose<positional::lrpe<double>, positional::toeplitz_rpe<double>>;
    using attention_t = linear_attention<feature_maps::elu_plus_one, pe_t, double>;
    const index n = 30, d = 4, e = 3, t_max = 5, first = 7;
    positional::lrpe<double> lr(lrpe_kind::rotate, d, 1);
    lr.set_theta((0.1 + 0.9 * test::uniform<double>(1, lr.theta_count(), 21).array().abs()).matrix());
    const pe_t pe(lr, positional::toeplitz_rpe<double>(test::uniform<double>(1, 2 * t_max - 1, 22, 1.5)));
    const bhnd<double> q(1, 1, n, d, 51), k(1, 1, n, d, 52), v(1, 1, n, e, 53), dout(1, 1, n, e, 54);
    const auto pieces = random_pieces(n, 5);
    int checked = 0;
    for (const toeplitz_algorithm algo : algorithms) {
        const auto make = [&](const pe_t& p) { return attention_t({}, p, make_options<double>(masking::causal, normalization::none, algo)); };
        const auto attn = make(pe);
        bhnd<double> dq(1, 1, n, d, 0), dk(1, 1, n, d, 0), dv(1, 1, n, e, 0);
        auto pg = attn.make_parameter_gradients();
        backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces, &pg, first);
        // f = ⟨dout, one call's forward from position `first`⟩ of the moved inputs or parameters.
        const auto f = [&](const pe_t& p, const row_matrix<double>& qq, const row_matrix<double>& kk) {
            return test::dot(dout.data, make(p)(qq, kk, v.data, 0, first));
        };
        // Rounding of f: ‖dout‖ times the forward's bound (support.hpp), plus the dot's own N·E·u·‖dout‖‖out‖.
        const auto [out, bound] = test::reference_and_bound(attn, q.data, k.data, v.data, 0, first, first,
                                                            algo == toeplitz_algorithm::fft ? fft_terms(n, n) : 0);
        const double f_round = dout.data.norm() * bound + double(n * e) * test::unit_roundoff<double>() * dout.data.norm() * out.norm();
        CAPTURE(int(algo));
        const row_matrix<double> uq = test::uniform<double>(n, d, 55), uk = test::uniform<double>(n, d, 56);
        test::require_fd(test::central_difference([&](double hs) { return f(pe, q.data + hs * uq, k.data); },
                                                  test::dot(dq.data, uq), f_round, dq.data.norm() * uq.norm(), uq.norm() / q.data.norm()));
        test::require_fd(test::central_difference([&](double hs) { return f(pe, q.data, k.data + hs * uk); },
                                                  test::dot(dk.data, uk), f_round, dk.data.norm() * uk.norm(), uk.norm() / k.data.norm()));
        const row_matrix<double> ua = test::uniform<double>(1, lr.theta_count(), 57);
        test::require_fd(test::central_difference(
            [&](double hs) {
                pe_t moved = pe;
                moved.feature_side.set_theta(row_matrix<double>(pe.feature_side.theta + hs * ua));
                return f(moved, q.data, k.data);
            },
            test::dot(pg.feature_side.theta, ua), f_round, pg.feature_side.theta.norm() * ua.norm(),
            ua.norm() / pe.feature_side.theta.norm()));
        const row_matrix<double> ub = test::uniform<double>(1, 2 * t_max - 1, 58);
        test::require_fd(test::central_difference(
            [&](double hs) {
                pe_t moved = pe;
                moved.mixing.set_biases(row_matrix<double>(pe.mixing.bias + hs * ub));
                return f(moved, q.data, k.data);
            },
            test::dot(pg.mixing.biases, ub), f_round, pg.mixing.biases.norm() * ub.norm(), ub.norm() / pe.mixing.bias.norm()));
        ++checked;
    }
    REQUIRE(checked == 3);
}


TEMPLATE_TEST_CASE("Toeplitz state backward: no leak from the future through a state call or a poisoned later call",
                   "[toeplitz][state][backward][no_leak]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // T_max = 16: a prefix of 5 leaves a window that the call's first rows still see, one of 21 has evicted
    // into far; t = 29 inside a banded block of 16 and a chunk of 8 (support_state.hpp's properties).
    int checked = 0;
    for (const toeplitz_algorithm algo : algorithms)
        for (const normalization norm : {normalization::sum, normalization::none})
            for (const index prefix : {5, 21}) {
                CAPTURE(int(algo), int(norm), prefix);
                const toeplitz_attention<S> attn({}, random_bias<S>(2, 16, 7), make_options<S>(masking::causal, norm, algo));
                checked += require_state_no_leak(attn, 2, 2, 4, 3, prefix, 60, 29, 11);
            }
    REQUIRE(checked == 12 * 5); // 5 poisons per configuration
}

} // namespace
} // namespace test_toeplitz_state_backward
