// Backward through LRPE (docs/design.md §16): dQ, dK, dV and the gradients of θ and of the learned Householder
// vector by central finite differences in double, the float fast path against the exact reference with
// derived bounds, thread-count independence of batched parameter gradients, and refused gradient shapes.
#include "support_backward.hpp"
#include "support_state.hpp"

#include <string>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_lrpe_backward {

using namespace linrpe;
using idx = linrpe::index; // plain `index` would be ambiguous with strings.h's index()
using test::row_matrix;

namespace {

// One configuration of the kind × layout × P × θ grid; together they cover every kind, every P and both layouts.
struct config {
    lrpe_kind kind;
    lrpe_layout layout;
    idx dim, rotate_pairs; // rotate_pairs −1: all pairs
    lrpe_basis basis;
    bool learned_householder, explicit_theta;
    normalization norm;
    const char* name;
};

const std::vector<config>& configs()
{
    static const std::vector<config> all = {
        {lrpe_kind::rotate, lrpe_layout::interleaved, 8, -1, lrpe_basis::identity, false, true, normalization::rms, "rotate/interleaved/I"},
        {lrpe_kind::rotate, lrpe_layout::half_split, 8, 2, lrpe_basis::householder, true, true, normalization::none,
         "rotate/half_split/partial/householder(learned)"},
        {lrpe_kind::rotate, lrpe_layout::interleaved, 7, 2, lrpe_basis::dct, false, true, normalization::rms, "rotate/interleaved/odd/partial/dct"},
        {lrpe_kind::cosine, lrpe_layout::interleaved, 8, -1, lrpe_basis::odd_even, false, true, normalization::rms, "cosine/odd_even"},
        {lrpe_kind::cosine, lrpe_layout::interleaved, 8, -1, lrpe_basis::householder, false, true, normalization::none,
         "cosine/householder(fixed)"},
        {lrpe_kind::cosine, lrpe_layout::interleaved, 8, -1, lrpe_basis::identity, false, false, normalization::sum, "cosine/I/cosformer/sum"},
        {lrpe_kind::permutation, lrpe_layout::interleaved, 8, -1, lrpe_basis::dct, false, false, normalization::rms, "permutation/dct"},
        {lrpe_kind::permutation, lrpe_layout::interleaved, 8, -1, lrpe_basis::householder, true, false, normalization::rms,
         "permutation/householder(learned)"},
    };
    return all;
}

constexpr idx heads = 2, e_width = 3, head_used = 1; // head 1 of 2: the gradient lands in its own rows
constexpr idx max_len = 200000;                     // cosFormer θ: offsets stay within max_len

template <class S>
positional::lrpe<S> make_encoding(const config& c)
{
    lrpe_options opt;
    opt.layout = c.layout;
    opt.rotate_pairs = c.kind == lrpe_kind::rotate ? c.rotate_pairs : -1;
    opt.basis = c.basis;
    opt.seed = 11;
    if (!c.explicit_theta && c.kind == lrpe_kind::cosine) {
        opt.theta = lrpe_theta::cosformer;
        opt.max_len = max_len;
    }
    positional::lrpe<S> pe(c.kind, c.dim, heads, opt);
    if (c.explicit_theta) // trained-looking values: RoPE-like magnitudes, distinct per head
        pe.set_theta((0.1 + 0.9 * test::uniform<double>(heads, pe.theta_count(), 21).array().abs()).matrix());
    if (c.learned_householder) // non-unit norm on purpose: the gradient goes through v/(‖v‖ + 1e-6)
        pe.set_householder((1.5 * test::uniform<double>(heads, c.dim, 22)).eval(), true);
    return pe;
}

template <class S>
using attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;

template <class S>
attention<S> make_attention(const positional::lrpe<S>& pe, normalization norm, masking mask, int threads = 1)
{
    options<S> opt;
    opt.norm = norm;
    opt.mask = mask;
    opt.chunk_size = 16;
    opt.segment_rows = 64; // several blocks per head at N = 129 and 150
    opt.threads = threads;
    return attention<S>({}, pe, opt);
}

struct inputs {
    row_matrix<double> q, k, v, dout;
};
inputs make_inputs(idx n, idx d, std::uint32_t seed)
{
    return {test::uniform<double>(n, d, seed, 0.7), test::uniform<double>(n, d, seed + 1, 0.7), test::uniform<double>(n, e_width, seed + 2),
            test::uniform<double>(n, e_width, seed + 3)};
}

// ⟨dout, forward⟩ of one head and the gradients of the per-head backward, both in S.
template <class S>
struct evaluation {
    row_matrix<double> out, dq, dk, dv;
    typename positional::lrpe<S>::parameter_gradients pg;
};
template <class S>
evaluation<S> evaluate(const attention<S>& attn, const inputs& in, idx first)
{
    const row_matrix<S> q = in.q.cast<S>(), k = in.k.cast<S>(), v = in.v.cast<S>(), dout = in.dout.cast<S>();
    row_matrix<S> out(q.rows(), e_width), dq(q.rows(), q.cols()), dk(k.rows(), k.cols()), dv(v.rows(), e_width);
    attn.forward(q, k, v, out, head_used, first, first);
    evaluation<S> r;
    r.pg = attn.make_parameter_gradients();
    attn.backward(q, k, v, dout, dq, dk, dv, head_used, first, first, nullptr, &r.pg);
    r.out = out.template cast<double>();
    r.dq = dq.template cast<double>();
    r.dk = dk.template cast<double>();
    r.dv = dv.template cast<double>();
    return r;
}

// ψ(x) = T(φ(x)) at positions first.. of one head, as a "feature map" for test::reference_backward: its VJP is the
// exact chain J_φᵀ Pᵀ Λᵀ (the encoding's double hook, FD-checked below), so that reference's exact gradients and
// its per-row Jacobian norms (‖J_ψ‖_F = ‖J_φ‖_F, T being an isometry) are those of the LRPE attention.
struct chained_map {
    const attention<double>* attn;
    idx first;
    template <class T>
    void apply_backward(const Eigen::Ref<const row_matrix<T>>& x, const Eigen::Ref<const row_matrix<T>>&,
                        const Eigen::Ref<const row_matrix<T>>& dpsi, Eigen::Ref<row_matrix<T>> dx, const feature_context& ctx) const
    {
        row_matrix<double> phi(x.rows(), x.cols()), dphi(x.rows(), x.cols());
        attn->feature_map().template apply<double>(x, phi, ctx);
        attn->positional().template encode_post_backward<double>(phi, dpsi, dphi, first, head_used, ctx.which, nullptr);
        attn->feature_map().template apply_backward<double>(x, phi, dphi, dx, ctx);
    }
};
// The attention-like view test::reference_backward reads: double features and mixing at positions first...
struct chained_attention {
    const attention<double>* attn;
    idx first;
    chained_map map{attn, first};
    const options<double>& opts() const { return attn->opts(); }
    const chained_map& feature_map() const { return map; }
    template <class S>
    row_matrix<double> features(const row_matrix<S>& x, role which) const
    {
        return attn->features(x.template cast<double>(), which, head_used, first);
    }
    row_matrix<double> mixing_matrix(idx n, idx nk) const { return attn->mixing_matrix(n, nk, head_used, first, first); }
};

// Rounding of f = ⟨dout, forward⟩ in double: per output (M' + M + 2 + N + C + 4) terms (the post transform's
// P (M) and Λ (2) inner dimensions on top of the core's D + N + C + 4, test_backward_properties), u each, over
// Σ|dout||out| <= ‖dout‖‖out‖; factor 2 for the normalization's own roundings.
double f_round(const config& c, idx n, const row_matrix<double>& dout, const row_matrix<double>& out)
{
    const idx m_out = c.kind == lrpe_kind::cosine ? 2 * c.dim : c.dim;
    return 2.0 * double(m_out + c.dim + 2 + n + 16 + 4) * test::unit_roundoff<double>() * dout.norm() * out.norm();
}
} // namespace

TEST_CASE("LRPE backward: dQ, dK, dV, θ and the learned Householder vector against central finite differences",
          "[lrpe][backward][fd]")
{
    for (const config& c : configs())
        for (const masking mask : {masking::none, masking::causal})
            for (const idx first : {idx(0), idx(100003)})
                for (const idx n : {idx(1), idx(7), idx(129)}) {
                    const auto pe = make_encoding<double>(c);
                    const auto attn = make_attention(pe, c.norm, mask);
                    const inputs in = make_inputs(n, c.dim, 31);
                    const evaluation<double> base = evaluate(attn, in, first);
                    const double fr = f_round(c, n, in.dout, base.out);
                    CAPTURE(c.name, int(mask), first, n);
                    const auto f_inputs = [&](const inputs& x) {
                        row_matrix<double> out(n, e_width);
                        attn.forward(x.q, x.k, x.v, out, head_used, first, first);
                        return test::dot(in.dout, out);
                    };
                    const auto check_input = [&](row_matrix<double> inputs::*member, const row_matrix<double>& grad, std::uint32_t seed) {
                        const row_matrix<double>& x0 = in.*member;
                        const row_matrix<double> u = test::uniform<double>(x0.rows(), x0.cols(), seed);
                        test::require_fd(test::central_difference(
                            [&](double h) {
                                inputs shifted = in;
                                shifted.*member = x0 + h * u;
                                return f_inputs(shifted);
                            },
                            test::dot(grad, u), fr, grad.norm() * u.norm(), u.norm() / x0.norm()));
                    };
                    check_input(&inputs::q, base.dq, 41);
                    check_input(&inputs::k, base.dk, 42);
                    check_input(&inputs::v, base.dv, 43);

                    // Frozen parts report nothing; the unused head's rows stay zero.
                    REQUIRE(base.pg.theta.size() == (pe.theta_trainable() ? heads * pe.theta_count() : 0));
                    REQUIRE(base.pg.householder.size() == (c.learned_householder ? heads * c.dim : 0));
                    REQUIRE(pe.theta_trainable() == (c.explicit_theta && c.kind != lrpe_kind::permutation));
                    if (base.pg.theta.size()) REQUIRE((base.pg.theta.row(0).array() == 0.0).all());
                    if (base.pg.householder.size()) REQUIRE((base.pg.householder.row(0).array() == 0.0).all());

                    const auto f_encoding = [&](const positional::lrpe<double>& shifted) {
                        row_matrix<double> out(n, e_width);
                        make_attention(shifted, c.norm, mask).forward(in.q, in.k, in.v, out, head_used, first, first);
                        return test::dot(in.dout, out);
                    };
                    if (pe.theta_trainable()) {
                        // Angles move by s·h·u: the direction is scaled by 1/(last position + 1) so that the
                        // finite difference stays in its h² regime at first = 100003 as at 0.
                        const row_matrix<double> u = test::uniform<double>(heads, pe.theta_count(), 44) / double(first + n);
                        test::require_fd(test::central_difference(
                            [&](double h) {
                                auto shifted = pe;
                                shifted.set_theta((pe.theta + h * u).eval());
                                return f_encoding(shifted);
                            },
                            test::dot(base.pg.theta, u), fr, base.pg.theta.norm() * u.norm(),
                            u.norm() * double(first + n) / pe.theta.norm())); // relative size of the angle change
                    }
                    if (c.learned_householder) {
                        const row_matrix<double> u = test::uniform<double>(heads, c.dim, 45);
                        test::require_fd(test::central_difference(
                            [&](double h) {
                                auto shifted = pe;
                                shifted.set_householder((pe.householder + h * u).eval(), true);
                                return f_encoding(shifted);
                            },
                            test::dot(base.pg.householder, u), fr, base.pg.householder.norm() * u.norm(),
                            u.norm() / pe.householder.norm()));
                    }
                }
}

TEST_CASE("LRPE backward in float against the exact double reference, with derived bounds", "[lrpe][backward][float]")
{
    const idx n = 129;
    std::size_t checked = 0;
    for (const config& c : configs())
        for (const masking mask : {masking::none, masking::causal})
            for (const idx first : {idx(0), idx(100003)}) {
                const auto attn_f = make_attention(make_encoding<float>(c), c.norm, mask);
                const auto attn_d = make_attention(make_encoding<double>(c), c.norm, mask);
                const inputs in = make_inputs(n, c.dim, 51);
                const row_matrix<float> qf = in.q.cast<float>(), kf = in.k.cast<float>(), vf = in.v.cast<float>(),
                                        df = in.dout.cast<float>();
                const evaluation<float> fast = evaluate(attn_f, in, first);
                const chained_attention chain{&attn_d, first};
                // Feature rounding in float (P: M terms, Λ: 2) enters the products like M + 2 more inner terms.
                const test::reference_grads ref = test::reference_backward(chain, qf, kf, vf, df, c.dim + 2);
                CAPTURE(c.name, int(mask), first);
                test::require_within(fast.dq, fast.dk, fast.dv, ref);
                // The parameter gradients' float path is checked at the hook (next test case, sharp bound on the same
                // inputs): end to end, the only bound at hand for the float dψ is the reference's worst case, loose
                // by orders of magnitude under rms, which would make a parameter check there unable to fail.
                ++checked;
            }
    REQUIRE(checked == 4 * configs().size()); // 2 masks × 2 first positions per configuration
}

TEMPLATE_TEST_CASE("LRPE batched backward: parameter gradients bit-identical for 1, 2, 3 threads; bad shapes refused",
                   "[lrpe][backward][threads]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const idx batch = 2, n = 150;
    for (const config& c : {configs()[1], configs()[3]}) // rotate + learned Householder, cosine + odd-even
        for (const masking mask : {masking::none, masking::causal}) {
            const auto pe = make_encoding<S>(c);
            const idx d = c.dim;
            const row_matrix<S> q = test::uniform<S>(batch * heads * n, d, 1, 0.7), k = test::uniform<S>(batch * heads * n, d, 2, 0.7),
                                v = test::uniform<S>(batch * heads * n, e_width, 3), dout = test::uniform<S>(batch * heads * n, e_width, 4);
            const auto view = [&](const row_matrix<S>& x) { return view_bhnd(x.data(), batch, heads, n, x.cols()); };
            const auto grads = [&](int threads, row_matrix<S>& dq, typename positional::lrpe<S>::parameter_gradients& pg) {
                row_matrix<S> dk(k.rows(), d), dv(v.rows(), e_width);
                make_attention(pe, c.norm, mask, threads)
                    .backward(view(q), view(k), view(v), view(dout), view_bhnd(dq.data(), batch, heads, n, d),
                              view_bhnd(dk.data(), batch, heads, n, d), view_bhnd(dv.data(), batch, heads, n, e_width), 100003,
                              nullptr, &pg);
            };
            CAPTURE(c.name, int(mask));
            row_matrix<S> dq(q.rows(), d);
            auto pg = make_attention(pe, c.norm, mask).make_parameter_gradients();
            grads(1, dq, pg);
            REQUIRE(pg.theta.norm() > 0);
            for (const int threads : {2, 3}) {
                auto other = make_attention(pe, c.norm, mask, threads).make_parameter_gradients();
                grads(threads, dq, other);
                CAPTURE(threads);
                REQUIRE(test::bit_identical(other.theta, pg.theta));
                REQUIRE(test::bit_identical(other.householder, pg.householder));
            }

            // Wrong shapes: refused naming the member, nothing written (dq keeps its sentinel, pg its values).
            for (const bool bad_theta : {true, false}) {
                auto bad = pg;
                if (bad_theta)
                    bad.theta = row_matrix<double>::Zero(heads, pe.theta_count() + 1);
                else
                    bad.householder = row_matrix<double>::Zero(heads + 1, c.learned_householder ? d : 0);
                const auto kept = bad;
                row_matrix<S> sentinel = row_matrix<S>::Constant(q.rows(), d, S(7));
                REQUIRE_THROWS_WITH(grads(1, sentinel, bad),
                                    Catch::Contains(bad_theta ? "parameter_gradients.theta" : "parameter_gradients.householder"));
                REQUIRE((sentinel.array() == S(7)).all());
                REQUIRE(test::bit_identical(bad.theta, kept.theta));
                REQUIRE(test::bit_identical(bad.householder, kept.householder));
            }
        }
}

TEST_CASE("LRPE VJP hook in float against the double hook on the same inputs, with derived bounds", "[lrpe][backward][float]")
{
    // The hook's own rounding in float (its double version is FD-checked above through the whole attention).
    // With x = Pφ, g = Λᵀ dψ, γ_p = γ_{M+2}·3√M (P in float: inner dimension <= M, ‖|P|‖₂ <= ‖P‖_F = √M, <= 3
    // for Householder) and 5u for Λᵀ in float (two products and a sum per entry from float-rounded tables):
    //   ‖δdφ‖_F <= (5u + γ_p) ‖dΨ‖_F                                        (‖g_r‖ <= ‖dψ_r‖, Pᵀ in float)
    //   ‖δgθ‖   <= Σ_r s_r (‖δx_r‖ ‖g_r‖ + ‖x_r‖ ‖δg_r‖ + 5u ‖x_r‖ ‖dψ_r‖) <= (γ_p + 10u) Σ_r s_r ‖φ_r‖ ‖dψ_r‖
    //              (each row's terms pair x with a unit-norm combination of dψ; ‖x_r‖ = ‖φ_r‖, P orthogonal;
    //              the terms are formed in float: <= 3 roundings on |x|(|a| + |b|) <= √2 |x|‖(a, b)‖, hence 5u)
    //   ‖δgv‖   <= 4 Σ_r ‖φ_r‖ ‖δg_r‖ / (‖v‖ + 1e-6) <= 20u Σ_r ‖φ_r‖ ‖dψ_r‖ / (‖v‖ + 1e-6)
    //              (φ is the same input; ∂v̂/∂v has norm <= 1/(‖v‖ + 1e-6))
    // Accumulation in double adds O(n·u_double) relative, far below; factor 2 for second-order terms.
    const double u = test::unit_roundoff<float>();
    const idx n = 129;
    for (const config& c : configs())
        for (const idx first : {idx(0), idx(100003)}) {
            const auto pe_f = make_encoding<float>(c);
            const auto pe_d = make_encoding<double>(c);
            const idx m = c.dim, m_out = pe_d.post_output_dim(m), p = pe_d.gradient_size();
            const row_matrix<float> phi = (test::uniform<double>(n, m, 61).array().abs() + 0.2).matrix().cast<float>(),
                                    dpsi = test::uniform<float>(n, m_out, 62);
            row_matrix<float> dphi_f(n, m);
            row_matrix<double> dphi_d(n, m);
            std::vector<double> grad_f(std::size_t(p), 0.0), grad_d(std::size_t(p), 0.0);
            pe_f.encode_post_backward<float>(phi, dpsi, dphi_f, first, head_used, role::key, grad_f.data());
            pe_d.encode_post_backward<double>(phi.cast<double>(), dpsi.cast<double>(), dphi_d, first, head_used, role::key, grad_d.data());
            double weighted = 0, plain = 0; // Σ_r s_r ‖φ_r‖‖dψ_r‖, Σ_r ‖φ_r‖‖dψ_r‖
            for (idx r = 0; r < n; ++r) {
                const double t = double(phi.row(r).norm()) * double(dpsi.row(r).norm());
                weighted += double(first + r) * t;
                plain += t;
            }
            const double gamma_p = 2.0 * double(m + 2) * u * 3.0 * std::sqrt(double(m));
            CAPTURE(c.name, first);
            const double err_phi = test::abs_error(dphi_f, dphi_d), bound_phi = 2.0 * (5.0 * u + gamma_p) * dpsi.cast<double>().norm();
            CAPTURE(err_phi, bound_phi);
            REQUIRE(err_phi <= bound_phi);
            REQUIRE(bound_phi < 1e-3 * dphi_d.norm());
            const idx t = pe_d.theta_trainable() ? pe_d.theta_count() : 0;
            if (t > 0) {
                const Eigen::Map<const Eigen::RowVectorXd> gf(grad_f.data(), t), gd(grad_d.data(), t);
                const double err = (gf - gd).norm(), bound = 2.0 * (gamma_p + 10.0 * u) * weighted;
                CAPTURE(err, bound, gd.norm());
                REQUIRE(err <= bound);
                REQUIRE(bound < 1e-2 * gd.norm());
            }
            if (pe_d.householder_trainable()) {
                const Eigen::Map<const Eigen::RowVectorXd> gf(grad_f.data() + t, m), gd(grad_d.data() + t, m);
                const double err = (gf - gd).norm(),
                             bound = 2.0 * 20.0 * u * plain / (pe_d.householder.row(head_used).stableNorm() + 1e-6);
                CAPTURE(err, bound, gd.norm());
                REQUIRE(err <= bound);
                REQUIRE(bound < 1e-2 * gd.norm());
            }
        }
}
TEST_CASE("LRPE state backward: k calls of random sizes in reverse equal one call's backward, θ included",
          "[lrpe][backward][state]")
{
    const idx n = 40;
    int checked = 0;
    for (const config& c : {configs()[0], configs()[3]}) // rotate (rms), cosine with odd-even basis (rms); θ trained
        for (const idx first : {idx(0), idx(100003)}) {
            const auto pe = make_encoding<double>(c);
            const auto attn = make_attention(pe, c.norm, masking::causal);
            const state_test::bhnd<double> q(1, heads, n, c.dim, 71), k(1, heads, n, c.dim, 72), v(1, heads, n, e_width, 73),
                dout(1, heads, n, e_width, 74);
            state_test::bhnd<double> dq(1, heads, n, c.dim, 0), dk(1, heads, n, c.dim, 0), dv(1, heads, n, e_width, 0);
            auto pg = attn.make_parameter_gradients();
            const auto pieces = state_test::random_pieces(n, 7);
            state_test::backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces, &pg, first);
            CAPTURE(c.name, first, pieces.size());
            // Head 1 against the exact reference of one call from `first`: the chain forms the same products as
            // one call (S0 enters as keys before each piece), grouped at the pieces' ends, and a window of an
            // earlier piece collects P = pieces.size() later contributions: P more terms, and M + 2 for the
            // post transform's VJP (P and Λ) as in the float test above.
            const chained_attention chain{&attn, first};
            const test::reference_grads ref =
                test::reference_backward(chain, q.slice(0, head_used), k.slice(0, head_used), v.slice(0, head_used),
                                         dout.slice(0, head_used), idx(pieces.size()) + c.dim + 2);
            test::require_within(dq.slice(0, head_used), dk.slice(0, head_used), dv.slice(0, head_used), ref);
            // θ of both heads against central differences of one call's forward (no sharp bound of the chain's
            // θ against one call's is at hand: it sums per-row terms of dψ, whose bound the reference keeps
            // inside). Directions scaled by 1/(last position + 1) as in the first test case.
            const auto f = [&](const positional::lrpe<double>& p) {
                return state_test::call_loss(make_attention(p, c.norm, masking::causal), q, k, v, dout, first);
            };
            double out_norm = 0;
            state_test::call_loss(attn, q, k, v, dout, first, &out_norm);
            const double fr = f_round(c, n, dout.data, row_matrix<double>::Constant(1, 1, out_norm)); // uses ‖out‖ only
            const row_matrix<double> u = test::uniform<double>(heads, pe.theta_count(), 75) / double(first + n);
            test::require_fd(test::central_difference(
                [&](double h) {
                    auto shifted = pe;
                    shifted.set_theta((pe.theta + h * u).eval());
                    return f(shifted);
                },
                test::dot(pg.theta, u), fr, pg.theta.norm() * u.norm(), u.norm() * double(first + n) / pe.theta.norm()));
            ++checked;
        }
    REQUIRE(checked == 4);
}
TEST_CASE("LRPE state backward: no leak from the future through a state call or a poisoned later call",
          "[lrpe][backward][state][no_leak]")
{
    // Rotate and cosine (odd-even), θ trained, from position 13 (support_state.hpp's properties; in double,
    // the scalar of the state tests above: the float state path is the same code as the core's, tested in float).
    for (const config& c : {configs()[0], configs()[3]}) {
        CAPTURE(c.name);
        REQUIRE(state_test::require_state_no_leak(make_attention(make_encoding<double>(c), c.norm, masking::causal), 1, heads,
                                                  c.dim, e_width, 13, 60, 29, 11) == 5);
    }
}

} // namespace test_lrpe_backward
