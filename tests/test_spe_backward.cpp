// SPE gradients (docs/design.md §16): central finite differences for q, k, v and every learnable parameter
// (sineSPE and convSPE, gated or not, causal or not, N ∈ {1, 7, 129}, first positions 0 and 100003), the float
// fast path against the double backward within a derived bound, batched parameter gradients bit-identical for
// 1, 2 and 3 threads, realizations as data (export → import, the documented formula against the exact
// reference, thread counts and the decoder), and bad shapes.
#include "support_backward.hpp"
#include "support_spe.hpp"

#include <linrpe/decoder.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/reference/kernel_attention.hpp>

#include <initializer_list>
#include <string>
#include <vector>

namespace {
using namespace linrpe;
using linrpe::index;
using positional::conv_spe;
using positional::sine_spe;

constexpr index heads = 2, dim = 3, reals = 6, sines = 2, values = 3;

template <class Spe>
using attention_of = linear_attention<feature_maps::elu_plus_one, Spe, typename Spe::scalar_type>;

template <class S>
sine_spe<S> make_sine(bool gated)
{
    sine_spe<S> spe(heads, dim, sines, reals, 11, gated);
    spe.freqs.array() += S(2); // f around 0.06: the phases turn visibly within 129 positions
    return spe;
}
template <class S>
conv_spe<S> make_conv(bool gated, index width)
{
    return conv_spe<S>(heads, dim, width, reals, 12, gated);
}

options<double> fd_options(masking mask)
{
    options<double> opt;
    opt.mask = mask;
    opt.chunk_size = 4;
    opt.segment_rows = 64; // N = 129: several blocks per role, so per-block buffers are summed
    return opt;
}

// A learnable tensor and its gradient member. `position_scaled`: a_f moves every phase by 2π·m·f'(a_f), so its
// direction is shrunk by the largest position to keep the central difference's h² term as small as at m ~ 100.
template <class Spe>
struct tensor_entry {
    using grads = typename Spe::parameter_gradients;
    const char* name;
    row_matrix<double> Spe::*value;
    row_matrix<double> grads::*gradient;
    bool position_scaled;
};
std::vector<tensor_entry<sine_spe<double>>> tensors(const sine_spe<double>&)
{
    using P = sine_spe<double>;
    using G = P::parameter_gradients;
    return {{"freqs", &P::freqs, &G::freqs, true}, {"offsets", &P::offsets, &G::offsets, false},
            {"gains", &P::gains, &G::gains, false}, {"gate", &P::gate, &G::gate, false}};
}
std::vector<tensor_entry<conv_spe<double>>> tensors(const conv_spe<double>&)
{
    using P = conv_spe<double>;
    using G = P::parameter_gradients;
    return {{"query_filter", &P::query_filter, &G::query_filter, false},
            {"key_filter", &P::key_filter, &G::key_filter, false},
            {"gate", &P::gate, &G::gate, false}};
}
// Products per code entry: (2K + 1)·D for sine (the GEMM over [cos | sin | gate] columns), W·D + D for conv.
index code_terms(const sine_spe<double>& spe) { return (2 * spe.sines() + 1) * spe.dim(); }
index code_terms(const conv_spe<double>& spe) { return (spe.width() + 1) * spe.dim(); }

// f = ⟨dout, forward⟩ of head 1 at positions first.. and its central differences along random directions of
// q, k, v and of every parameter tensor, against the backward's ⟨∇f, u⟩ (support_backward.hpp).
template <class Spe>
void check_fd(const Spe& spe, masking mask, index n, index first)
{
    const options<double> opt = fd_options(mask);
    const attention_of<Spe> attn({}, spe, opt);
    const row_matrix<double> q = test::uniform<double>(n, dim, 1, 0.5), k = test::uniform<double>(n, dim, 2, 0.5),
                             v = test::uniform<double>(n, values, 3), dout = test::uniform<double>(n, values, 4);
    row_matrix<double> dq(n, dim), dk(n, dim), dv(n, values);
    auto pg = attn.make_parameter_gradients();
    attn.backward(q, k, v, dout, dq, dk, dv, 1, first, first, nullptr, &pg);
    const auto f = [&](const attention_of<Spe>& a, const row_matrix<double>& qq, const row_matrix<double>& kk,
                       const row_matrix<double>& vv) { return test::dot(dout, a(qq, kk, vv, 1, first)); };
    // Rounding of f: each output sums code_terms (codes), R (φ's input is R-wide, elu is elementwise), N + C
    // (the mixing) and 4 more products, u each, over Σ|dout||out| <= ‖dout‖‖out‖; `sum`'s ratio adds 2
    // roundings, inside the factor 2.
    const row_matrix<double> out = attn(q, k, v, 1, first);
    const double f_round = 2.0 * double(code_terms(spe) + reals + n + opt.chunk_size + 4) * test::unit_roundoff<double>() *
                           dout.norm() * out.norm();
    const row_matrix<double> uq = test::uniform<double>(n, dim, 5), uk = test::uniform<double>(n, dim, 6),
                             uv = test::uniform<double>(n, values, 7);
    test::require_fd(test::central_difference([&](double h) { return f(attn, q + h * uq, k, v); }, test::dot(dq, uq), f_round,
                                              dq.norm() * uq.norm(), uq.norm() / q.norm()));
    test::require_fd(test::central_difference([&](double h) { return f(attn, q, k + h * uk, v); }, test::dot(dk, uk), f_round,
                                              dk.norm() * uk.norm(), uk.norm() / k.norm()));
    test::require_fd(test::central_difference([&](double h) { return f(attn, q, k, v + h * uv); }, test::dot(dv, uv), f_round,
                                              dv.norm() * uv.norm(), uv.norm() / v.norm()));
    std::uint32_t seed = 20;
    for (const auto& t : tensors(spe)) {
        const row_matrix<double>& value = spe.*t.value;
        const row_matrix<double>& grad = pg.*t.gradient;
        CAPTURE(t.name);
        REQUIRE(grad.rows() == value.rows());
        REQUIRE(grad.cols() == value.cols());
        if (std::string(t.name) == "gate" && !spe.gated) {
            REQUIRE(grad.isZero(0.0)); // the logits do not enter the function
            continue;
        }
        const double shrink = t.position_scaled ? std::min(1.0, 128.0 / double(first + n)) : 1.0;
        const row_matrix<double> u = shrink * test::uniform<double>(value.rows(), value.cols(), seed++);
        const auto shifted = [&](double h) {
            Spe moved = spe;
            moved.*t.value += h * u;
            return f(attention_of<Spe>({}, moved, opt), q, k, v);
        };
        test::require_fd(test::central_difference(shifted, test::dot(grad, u), f_round, grad.norm() * u.norm(), u.norm() / value.norm()));
    }
}
} // namespace

TEST_CASE("SPE backward equals central finite differences for q, k, v and every parameter", "[spe][backward][fd]")
{
    for (const bool gated : {false, true})
        for (const masking mask : {masking::none, masking::causal})
            for (const linrpe::index n : {linrpe::index(1), linrpe::index(7), linrpe::index(129)})
                for (const linrpe::index first : {linrpe::index(0), linrpe::index(100003)}) {
                    CAPTURE(gated, int(mask), n, first);
                    check_fd(make_sine<double>(gated), mask, n, first);
                    for (const linrpe::index width : {linrpe::index(5), linrpe::index(20)}) { // shifted products, banded GEMM tiles
                        CAPTURE(width);
                        check_fd(make_conv<double>(gated, width), mask, n, first);
                    }
                }
}

namespace {
// The same function in double: parameters and realization cast exactly (convSPE: with an explicit window, since
// float and double runs of a stream agree only to float rounding).
sine_spe<double> to_double(const sine_spe<float>& s)
{
    sine_spe<double> d(s.heads(), s.dim(), s.sines(), s.realizations(), s.seed(), s.gated);
    d.set_parameters(s.freqs.cast<double>(), s.offsets.cast<double>(), s.gains.cast<double>());
    d.gate = s.gate.cast<double>();
    const auto r = s.realization();
    d.set_realization({r.noise.cast<double>(), r.gate_noise.cast<double>()});
    return d;
}
conv_spe<double> to_double(const conv_spe<float>& s)
{
    conv_spe<double> d(s.heads(), s.dim(), s.width(), s.realizations(), s.seed(), s.gated);
    d.set_filters(s.query_filter.cast<double>(), s.key_filter.cast<double>());
    d.gate = s.gate.cast<double>();
    const auto r = s.realization();
    d.set_realization({r.noise_seed, r.noise.cast<double>(), r.gate_noise.cast<double>()});
    return d;
}

// |C| of every code entry at positions first.. (rows i·D + d, R columns), an upper bound on the absolute value
// of each product the codes sum: sine (|cos|, |sin| <= 1, so position-free) (R·D)^{−1/4}(√(1 − g)/√(2K)
// Σ_k λ_k (|Z_2k| + |Z_2k+1|) + √g |ε|); conv the codes of |φ| on the window |Z| and |ε| (the same formula).
row_matrix<double> code_abs(const sine_spe<double>& s, role, index head, index, index n)
{
    const auto r = s.realization();
    const double scale = std::pow(double(s.realizations() * s.dim()), -0.25);
    row_matrix<double> one(s.dim(), s.realizations());
    for (index d = 0; d < s.dim(); ++d) {
        const double g = s.gated ? 1.0 / (1.0 + std::exp(-s.gate(head, d))) : 0.0;
        one.row(d) = std::sqrt(g) * scale * r.gate_noise.row(head * s.dim() + d).cwiseAbs();
        for (index k = 0; k < s.sines(); ++k) {
            const double lambda = std::log1p(std::exp(s.gains(head * s.dim() + d, k)));
            const index row = (head * s.dim() + d) * 2 * s.sines() + 2 * k;
            one.row(d) += std::sqrt((1.0 - g) / double(2 * s.sines())) * scale * lambda *
                          (r.noise.row(row).cwiseAbs() + r.noise.row(row + 1).cwiseAbs());
        }
    }
    return one.replicate(n, 1);
}
row_matrix<double> code_abs(const conv_spe<double>& s, role which, index head, index first, index n)
{
    conv_spe<double> a = s;
    a.set_filters(s.query_filter.cwiseAbs(), s.key_filter.cwiseAbs());
    const auto r = s.realization();
    a.set_realization({r.noise_seed, r.noise.cwiseAbs(), r.gate_noise.cwiseAbs()});
    row_matrix<double> out(n * s.dim(), s.realizations());
    for (index d = 0; d < s.dim(); ++d) {
        const row_matrix<double> c = a.code(which, head, d, first, n); // (n, R)
        for (index i = 0; i < n; ++i) out.row(i * s.dim() + d) = c.row(i);
    }
    return out;
}
index hook_terms(const sine_spe<double>& s) { return s.realizations() + 2 * s.sines() + 2; }
index hook_terms(const conv_spe<double>& s) { return s.realizations() + s.width() + 2; }

// One role of the float check: dx against Σ_r du[r] C(m, r) with the exact double codes (code(): the forward's
// own unit-vector codes) and du the exact reference gradient at the float features; returns the bound.
//   ‖δdx_i‖ <= ‖C_i‖ ‖δdu_i‖ + γ_T ‖|C_i| |du_i|‖: the first from the mixer and φ (support_backward.hpp, at the
//   float features the fast path forms), the second the hook's own products (R in the GEMM, then the sum
//   over the code's columns), ‖C_i‖_2 <= ‖|C|_i‖_F; times 2 for second-order terms.
template <class Spe64>
double dx_bound(const Spe64& spe, role which, index head, index first, const row_matrix<double>& du, double bound_du,
                row_matrix<double>& dx_ref, const row_matrix<double>& x)
{
    const index n = du.rows();
    const row_matrix<double> cabs = code_abs(spe, which, head, first, n);
    dx_ref.resize(n, spe.dim());
    for (index d = 0; d < spe.dim(); ++d) {
        const row_matrix<double> c = spe.code(which, head, d, first, n);
        dx_ref.col(d) = (c.array() * du.array()).rowwise().sum().matrix();
    }
    (void)x;
    const double u = test::unit_roundoff<float>(), gamma = 2.0 * double(hook_terms(spe)) * u;
    double max_c = 0, own = 0;
    for (index i = 0; i < n; ++i) {
        const auto ci = cabs.middleRows(i * spe.dim(), spe.dim());
        max_c = std::max(max_c, ci.norm());
        own += (gamma * (ci * du.row(i).cwiseAbs().transpose())).squaredNorm();
    }
    return 2.0 * (max_c * bound_du + std::sqrt(own));
}

// ‖J‖_F of the map du ↦ parameter gradient of one role (the double hook on unit probes e_{i,r}).
template <class Spe64>
double gradient_jacobian_norm(const Spe64& spe, const row_matrix<double>& x, role which, index head, index first)
{
    double sq = 0;
    std::vector<double> g(static_cast<std::size_t>(spe.gradient_size()));
    row_matrix<double> probe(1, spe.realizations()), dx(1, spe.dim());
    for (index i = 0; i < x.rows(); ++i)
        for (index r = 0; r < spe.realizations(); ++r) {
            probe.setZero();
            probe(0, r) = 1;
            std::fill(g.begin(), g.end(), 0.0);
            spe.template encode_pre_backward<double>(x.row(i), probe, dx, first + i, head, which, g.data());
            for (const double v : g) sq += v * v;
        }
    return std::sqrt(sq);
}

std::vector<double> concat(std::initializer_list<const row_matrix<double>*> parts)
{
    std::vector<double> out;
    for (const auto* m : parts) out.insert(out.end(), m->data(), m->data() + m->size());
    return out;
}
std::vector<double> flat_of(const sine_spe<float>::parameter_gradients& g) { return concat({&g.freqs, &g.offsets, &g.gains, &g.gate}); }
std::vector<double> flat_of(const sine_spe<double>::parameter_gradients& g) { return concat({&g.freqs, &g.offsets, &g.gains, &g.gate}); }
std::vector<double> flat_of(const conv_spe<float>::parameter_gradients& g) { return concat({&g.query_filter, &g.key_filter, &g.gate}); }
std::vector<double> flat_of(const conv_spe<double>::parameter_gradients& g) { return concat({&g.query_filter, &g.key_filter, &g.gate}); }

template <class Spe32>
void check_float(const Spe32& spe32, masking mask, index first)
{
    const index n = 129, head = 1;
    options<float> opt;
    opt.mask = mask;
    opt.chunk_size = 16;
    const attention_of<Spe32> attn({}, spe32, opt);
    const auto spe = to_double(spe32);
    const row_matrix<float> q = test::uniform<float>(n, dim, 1, 0.5), k = test::uniform<float>(n, dim, 2, 0.5),
                            v = test::uniform<float>(n, values, 3), dout = test::uniform<float>(n, values, 4);
    row_matrix<float> dq(n, dim), dk(n, dim), dv(n, values);
    auto pg32 = attn.make_parameter_gradients();
    attn.backward(q, k, v, dout, dq, dk, dv, head, first, first, nullptr, &pg32);

    // The features' inputs in float, as the fast path forms them, and the exact gradients at them.
    row_matrix<float> uq(n, reals), uk(n, reals);
    spe32.template encode_pre<float>(q, uq, first, head, role::query);
    spe32.template encode_pre<float>(k, uk, first, head, role::key);
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> plain({}, {}, opt);
    const auto ref = test::reference_backward(plain, uq, uk, v, dout);
    row_matrix<double> dq_ref, dk_ref;
    const row_matrix<double> qd = q.cast<double>(), kd = k.cast<double>();
    const double bq = dx_bound(spe, role::query, head, first, ref.exact.dq, ref.bound_dq, dq_ref, qd);
    const double bk = dx_bound(spe, role::key, head, first, ref.exact.dk, ref.bound_dk, dk_ref, kd);
    const double eq = test::abs_error(dq, dq_ref), ek = test::abs_error(dk, dk_ref), ev = test::abs_error(dv, ref.exact.dv);
    CAPTURE(eq, bq, ek, bk, ev, ref.bound_dv);
    REQUIRE(eq <= bq);
    REQUIRE(ek <= bk);
    REQUIRE(ev <= ref.bound_dv);

    // Parameter gradients: the double hook on the exact du. ‖δpg‖ <= Σ_role ‖J‖_F (‖δdu‖ + c γ_T ‖du‖): the
    // mixer's error through the hook's linear map J, and the hook's own rounding (T = N + R + 2K + 4 nested
    // sums, c the largest count of terms of one entry of J: 2K + 2 sine, W + 1 conv, which |J| may exceed J
    // by), Cauchy–Schwarz over the (i, r) sums; times 2.
    std::vector<double> flat(static_cast<std::size_t>(spe.gradient_size()), 0.0);
    row_matrix<double> dx(n, dim);
    spe.template encode_pre_backward<double>(qd, ref.exact.dq, dx, first, head, role::query, flat.data());
    spe.template encode_pre_backward<double>(kd, ref.exact.dk, dx, first, head, role::key, flat.data());
    auto pg_ref = spe.make_parameter_gradients();
    spe.add_gradients(head, flat.data(), pg_ref);
    const std::vector<double> a = flat_of(pg32), b = flat_of(pg_ref);
    double ep = 0;
    for (std::size_t i = 0; i < a.size(); ++i) ep += (a[i] - b[i]) * (a[i] - b[i]);
    ep = std::sqrt(ep);
    const double c = double(hook_terms(spe) - reals), gamma = 2.0 * double(n + hook_terms(spe) + 2) * test::unit_roundoff<float>();
    const double jq = gradient_jacobian_norm(spe, qd, role::query, head, first), jk = gradient_jacobian_norm(spe, kd, role::key, head, first);
    const double bp = 2.0 * (jq * (ref.bound_dq + c * gamma * ref.exact.dq.norm()) + jk * (ref.bound_dk + c * gamma * ref.exact.dk.norm()));
    CAPTURE(ep, bp);
    REQUIRE(ep <= bp);
}

template <class S>
conv_spe<S> with_window(conv_spe<S> spe, index samples, std::uint64_t seed)
{
    auto r = spe.realization();
    r.noise = spe_test::gaussian<S>(spe.heads() * spe.dim() * spe.realizations(), samples, seed);
    spe.set_realization(r);
    return spe;
}
} // namespace

TEST_CASE("SPE backward in float: within the derived bound of the double backward", "[spe][backward][float]")
{
    for (const bool gated : {false, true})
        for (const masking mask : {masking::none, masking::causal})
            for (const linrpe::index first : {linrpe::index(0), linrpe::index(100003)}) {
                CAPTURE(gated, int(mask), first);
                check_float(make_sine<float>(gated), mask, first);
                check_float(with_window(make_conv<float>(gated, 20), first + 129 + 19, 40), mask, first);
            }
}
