// SPE gradients (docs/design.md §16): central finite differences for q, k, v and every learnable parameter
// (sineSPE and convSPE, gated or not, causal or not, N ∈ {1, 7, 129}, first positions 0 and 100003), the float
// fast path against the double backward within a derived bound, batched parameter gradients bit-identical for
// 1, 2 and 3 threads, realizations as data (export → import, the documented formula against the exact
// reference, thread counts and the decoder), and bad shapes.
#include "support_backward.hpp"
#include "support_spe.hpp"
#include "support_state.hpp"

#include <linrpe/decoder.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/reference/kernel_attention.hpp>

#include <initializer_list>
#include <string>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_spe_backward {

namespace {
using namespace linrpe;
using linrpe::index;
using positional::conv_spe;
using positional::sine_spe;

constexpr index heads = 2, dim = 3, reals = 6, sines = 2, values = 3;

// Captured errors of double runs need more than Catch's default 10 digits to be readable.
const bool digits_set = (Catch::StringMaker<double>::precision = 17, true);

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
    int checked = 0;
    for (const bool gated : {false, true})
        for (const masking mask : {masking::none, masking::causal})
            for (const linrpe::index n : {linrpe::index(1), linrpe::index(7), linrpe::index(129)})
                for (const linrpe::index first : {linrpe::index(0), linrpe::index(100003)}) {
                    CAPTURE(gated, int(mask), n, first);
                    check_fd(make_sine<double>(gated), mask, n, first);
                    ++checked;
                    for (const linrpe::index width : {linrpe::index(5), linrpe::index(20)}) { // shifted products, banded GEMM tiles
                        CAPTURE(width);
                        check_fd(make_conv<double>(gated, width), mask, n, first);
                        ++checked;
                    }
                }
    REQUIRE(checked == 2 * 2 * 3 * 2 * 3); // gated × mask × n × first × (sine, conv W = 5, conv W = 20)
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
    int checked = 0;
    for (const bool gated : {false, true})
        for (const masking mask : {masking::none, masking::causal})
            for (const linrpe::index first : {linrpe::index(0), linrpe::index(100003)}) {
                CAPTURE(gated, int(mask), first);
                check_float(make_sine<float>(gated), mask, first);
                check_float(with_window(make_conv<float>(gated, 20), first + 129 + 19, 40), mask, first);
                checked += 2;
            }
    REQUIRE(checked == 2 * 2 * 2 * 2); // gated × mask × first × (sine, conv)
}

namespace {
constexpr index batch = 2, tokens = 150;

// Batched (B, H, N, ·) inputs and a call of the batched forward or backward of attention_of<Spe> (double).
struct batched_inputs {
    row_matrix<double> q = test::uniform<double>(batch * heads * tokens, dim, 31, 0.5),
                       k = test::uniform<double>(batch * heads * tokens, dim, 32, 0.5),
                       v = test::uniform<double>(batch * heads * tokens, values, 33),
                       dout = test::uniform<double>(batch * heads * tokens, values, 34);
    static tensor_view<const double> in(const row_matrix<double>& x) { return view_bhnd(x.data(), batch, heads, tokens, x.cols()); }
    static tensor_view<double> out(row_matrix<double>& x) { return view_bhnd(x.data(), batch, heads, tokens, x.cols()); }

    template <class Spe>
    row_matrix<double> forward(const attention_of<Spe>& attn, index first) const
    {
        row_matrix<double> o(q.rows(), values);
        attn.forward(in(q), in(k), in(v), out(o), first);
        return o;
    }
    template <class Spe>
    row_matrix<double> backward(const attention_of<Spe>& attn, index first, typename Spe::parameter_gradients& pg) const
    {
        row_matrix<double> dq(q.rows(), dim), dk(k.rows(), dim), dv(v.rows(), values);
        attn.backward(in(q), in(k), in(v), in(dout), out(dq), out(dk), out(dv), first, nullptr, &pg);
        return dq;
    }
};

template <class Spe>
attention_of<Spe> with_threads(const Spe& spe, masking mask, int threads)
{
    options<double> opt = fd_options(mask);
    opt.threads = threads;
    return attention_of<Spe>({}, spe, opt);
}

// Returns the number of masks checked.
template <class Spe>
int check_threads(const Spe& spe)
{
    const batched_inputs in;
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal}) {
        CAPTURE(int(mask));
        auto pg = spe.make_parameter_gradients();
        const row_matrix<double> dq = in.backward(with_threads(spe, mask, 1), 7, pg);
        for (const int threads : {2, 3}) {
            CAPTURE(threads);
            auto other = spe.make_parameter_gradients();
            REQUIRE(test::bit_identical(in.backward(with_threads(spe, mask, threads), 7, other), dq));
            REQUIRE(flat_of(other) == flat_of(pg)); // bit for bit (no NaNs here)
        }
        auto twice = pg;
        in.backward(with_threads(spe, mask, 2), 7, twice); // accumulates: exactly 2·pg
        std::vector<double> doubled = flat_of(pg);
        for (double& x : doubled) x *= 2;
        REQUIRE(flat_of(twice) == doubled);
        ++checked;
    }
    return checked;
}

// Realization export → import: a second encoding, drawn from another seed, given the first one's parameters and
// realization, computes the same bits (batched, causal; positions from 7).
template <class Spe, class Copy>
void check_round_trip(const Spe& a, Spe b, const Copy& copy_parameters)
{
    const batched_inputs in;
    copy_parameters(a, b);
    const row_matrix<double> ya = in.forward(with_threads(a, masking::causal, 1), 7);
    REQUIRE_FALSE(test::bit_identical(in.forward(with_threads(b, masking::causal, 1), 7), ya)); // other noise
    b.set_realization(a.realization());
    REQUIRE(test::bit_identical(in.forward(with_threads(b, masking::causal, 1), 7), ya));
}

// A realization set by hand: the same bits for 1 and 3 threads; the decoder (prefill of 9 tokens, then steps)
// equals the batched causal call up to the summation order of the causal state (<= (N + M)·eps, as in
// test_spe_attention.cpp).
template <class Spe>
void check_threads_and_decoder(const Spe& spe)
{
    const batched_inputs in;
    const row_matrix<double> y = in.forward(with_threads(spe, masking::causal, 1), 0);
    REQUIRE(test::bit_identical(in.forward(with_threads(spe, masking::causal, 3), 0), y));
    const auto attn = with_threads(spe, masking::causal, 1);
    auto dec = attn.decoder(batch, heads);
    const auto window = [&](const row_matrix<double>& m, index t0, index len) {
        const index c = m.cols();
        return tensor_view<const double>(m.data() + t0 * c, batch, heads, len, c, heads * tokens * c, tokens * c, c);
    };
    row_matrix<double> streamed(y.rows(), values);
    const auto out_window = [&](index t0, index len) {
        return tensor_view<double>(streamed.data() + t0 * values, batch, heads, len, values, heads * tokens * values, tokens * values, values);
    };
    const index pre = 9;
    dec.prefill(window(in.q, 0, pre), window(in.k, 0, pre), window(in.v, 0, pre), out_window(0, pre));
    for (index t = pre; t < tokens; ++t) dec.step(window(in.q, t, 1), window(in.k, t, 1), window(in.v, t, 1), out_window(t, 1));
    const double err = spe_test::rel_frobenius(streamed, y), tol = double(tokens + reals) * std::numeric_limits<double>::epsilon();
    CAPTURE(err, tol);
    REQUIRE(err <= tol);
}

// The message of the linrpe::error `call` throws ("" when it throws none).
template <class F>
std::string error_of(const F& call)
{
    try {
        call();
    } catch (const linrpe::error& err) {
        return err.what();
    }
    return "";
}
} // namespace

TEST_CASE("SPE batched parameter gradients: bit-identical for 1, 2 and 3 threads, accumulated", "[spe][backward][threads]")
{
    REQUIRE(check_threads(make_sine<double>(true)) == 2);
    REQUIRE(check_threads(make_conv<double>(true, 20)) == 2);
}

TEST_CASE("SPE realizations as data: export → import, the documented formula, threads and the decoder", "[spe][realization]")
{
    SECTION("export → import reproduces the outputs bit for bit")
    {
        check_round_trip(make_sine<double>(true), sine_spe<double>(heads, dim, sines, reals, 99, true), [](const auto& a, auto& b) {
            b.set_parameters(a.freqs, a.offsets, a.gains);
            b.set_gate(a.gate);
        });
        const auto copy_filters = [](const auto& a, auto& b) {
            b.set_filters(a.query_filter, a.key_filter);
            b.set_gate(a.gate);
        };
        check_round_trip(make_conv<double>(true, 20), conv_spe<double>(heads, dim, 20, reals, 99, true), copy_filters);
        check_round_trip(with_window(make_conv<double>(true, 20), tokens + 7 + 19, 41), conv_spe<double>(heads, dim, 20, reals, 99, true),
                         copy_filters);
    }
    SECTION("a realization set by hand gives the codes of the documented formula (exact reference)")
    {
        // sineSPE at positions 100003.. and convSPE (explicit window, exactly as long as the positions need) at
        // 5..; head 1, causal, `sum`. Codes from the formulas of sine_spe_realization / conv_spe_realization in
        // double (sine phases in long double: 2π f m at m ~ 1e5 would lose 1e-11 in double), then φ = elu + 1
        // and reference::kernel_attention. Bound: test::error_bound with the codes' products added to the
        // nested sums (each ψ entry is φ of a sum of code_terms products, elu' <= 1).
        const linrpe::index n = 40, head = 1, w = 20;
        auto sine = make_sine<double>(true);
        sine.set_realization({spe_test::gaussian<double>(heads * dim * 2 * sines, reals, 51), spe_test::gaussian<double>(heads * dim, reals, 52)});
        const auto conv = with_window(make_conv<double>(true, w), 5 + n + w - 1, 53);
        const double scale = std::pow(double(reals * dim), -0.25);
        const auto gate_of = [](double a) { return 1.0 / (1.0 + std::exp(-a)); };
        const auto elu1 = [](const row_matrix<double>& u) { return (u.array() > 0).select(u.array() + 1, u.array().exp()).matrix().eval(); };
        const row_matrix<double> q = test::uniform<double>(n, dim, 61, 0.5), k = test::uniform<double>(n, dim, 62, 0.5),
                                 v = test::uniform<double>(n, values, 63);
        row_matrix<double> causal = row_matrix<double>::Zero(n, n);
        for (linrpe::index i = 0; i < n; ++i) causal.row(i).head(i + 1).setOnes();
        const auto check = [&](const auto& spe, linrpe::index first, const auto& code_entry, linrpe::index terms) {
            row_matrix<double> uq = row_matrix<double>::Zero(n, reals), uk = uq;
            for (linrpe::index i = 0; i < n; ++i)
                for (linrpe::index d = 0; d < dim; ++d)
                    for (linrpe::index r = 0; r < reals; ++r) {
                        uq(i, r) += q(i, d) * code_entry(role::query, first + i, d, r);
                        uk(i, r) += k(i, d) * code_entry(role::key, first + i, d, r);
                    }
            const row_matrix<double> psi = elu1(uq), kappa = elu1(uk);
            const options<double> opt = fd_options(masking::causal);
            const row_matrix<double> ref = reference::kernel_attention(psi, kappa, v, causal, opt.norm, opt.eps);
            const row_matrix<double> got = attention_of<std::decay_t<decltype(spe)>>({}, spe, opt)(q, k, v, head, first);
            const double err = test::abs_error(got, ref),
                         bound = test::error_bound(psi, kappa, causal, v, opt.norm, opt.eps, test::unit_roundoff<double>(),
                                                   terms + reals + n + opt.chunk_size + 4);
            CAPTURE(err, bound);
            REQUIRE(err <= bound);
        };
        const auto sine_r = sine.realization();
        check(sine, 100003,
              [&](role which, linrpe::index m, linrpe::index d, linrpe::index r) {
                  const linrpe::index row = head * dim + d;
                  const double g = gate_of(sine.gate(head, d));
                  double c = std::sqrt(g) * scale * sine_r.gate_noise(row, r);
                  for (linrpe::index kk = 0; kk < sines; ++kk) {
                      // f = σ(a_f)/2 rounded to double as the encoding evaluates it (its phases are exact for
                      // that f; a differently rounded f would move the phase by 2π·m·ulp(f) ~ 1e-11 here).
                      const double a = sine.freqs(row, kk);
                      const long double f = 0.5 * (a >= 0 ? 1.0 / (1.0 + std::exp(-a)) : std::exp(a) / (1.0 + std::exp(a)));
                      const long double phase = 6.283185307179586476925286766559L * f * (long double)m +
                                                (which == role::query ? (long double)sine.offsets(row, kk) : 0.0L);
                      const double lambda = std::log1p(std::exp(sine.gains(row, kk)));
                      c += std::sqrt((1 - g) / double(2 * sines)) * scale * lambda *
                           (double(std::cos(phase)) * sine_r.noise(row * 2 * sines + 2 * kk, r) +
                            double(std::sin(phase)) * sine_r.noise(row * 2 * sines + 2 * kk + 1, r));
                  }
                  return c;
              },
              code_terms(sine));
        const auto conv_r = conv.realization();
        check(conv, 5,
              [&](role which, linrpe::index m, linrpe::index d, linrpe::index r) {
                  const linrpe::index row = head * dim + d;
                  const double g = gate_of(conv.gate(head, d));
                  const auto& filter = which == role::query ? conv.query_filter : conv.key_filter;
                  double c = std::sqrt(g) * scale * conv_r.gate_noise(row, r);
                  for (linrpe::index j = 0; j < w; ++j) c += std::sqrt(1 - g) * scale * filter(row, j) * conv_r.noise(row * reals + r, m + j);
                  return c;
              },
              code_terms(conv));
        // One position past the window is refused.
        REQUIRE(error_of([&] { attention_of<conv_spe<double>>({}, conv, fd_options(masking::causal))(q, k, v, head, 6); })
                    .find("last position") != std::string::npos);
    }
    SECTION("a realization set by hand: the same bits for 1 and 3 threads, and the decoder")
    {
        auto sine = make_sine<double>(true);
        sine.set_realization({spe_test::gaussian<double>(heads * dim * 2 * sines, reals, 71), spe_test::gaussian<double>(heads * dim, reals, 72)});
        check_threads_and_decoder(sine);
        check_threads_and_decoder(with_window(make_conv<double>(true, 20), tokens + 19, 73));
    }
}

TEST_CASE("SPE: bad realization and parameter-gradient shapes throw linrpe::error naming the argument; nothing changes",
          "[spe][errors]")
{
    const batched_inputs in;
    auto sine = make_sine<double>(true);
    auto conv = make_conv<double>(true, 20);
    const row_matrix<double> ys = in.forward(with_threads(sine, masking::none, 1), 0), yc = in.forward(with_threads(conv, masking::none, 1), 0);
    const auto r = sine.realization();
    const auto bad_rows = [](row_matrix<double> m) { return row_matrix<double>(m.topRows(m.rows() - 1)); };
    const auto non_finite = [](row_matrix<double> m) {
        m(0, 0) = std::numeric_limits<double>::quiet_NaN();
        return m;
    };
    REQUIRE(error_of([&] { sine.set_realization({bad_rows(r.noise), r.gate_noise}); }).find("sine_spe realization noise") != std::string::npos);
    REQUIRE(error_of([&] { sine.set_realization({r.noise, row_matrix<double>(r.gate_noise.leftCols(reals - 1))}); })
                .find("sine_spe realization gate_noise") != std::string::npos);
    REQUIRE(error_of([&] { sine.set_realization({non_finite(r.noise), r.gate_noise}); }).find("sine_spe realization noise") != std::string::npos);
    const auto rc = conv.realization();
    const row_matrix<double> short_window = row_matrix<double>::Zero(heads * dim * reals, 19), wrong_rows = row_matrix<double>::Zero(5, 40);
    REQUIRE(error_of([&] { conv.set_realization({rc.noise_seed, short_window, rc.gate_noise}); }).find("conv_spe realization noise") !=
            std::string::npos);
    REQUIRE(error_of([&] { conv.set_realization({rc.noise_seed, wrong_rows, rc.gate_noise}); }).find("conv_spe realization noise") !=
            std::string::npos);
    REQUIRE(error_of([&] { conv.set_realization({rc.noise_seed + 1, rc.noise, bad_rows(rc.gate_noise)}); })
                .find("conv_spe realization gate_noise") != std::string::npos);
    REQUIRE(test::bit_identical(in.forward(with_threads(sine, masking::none, 1), 0), ys));
    REQUIRE(test::bit_identical(in.forward(with_threads(conv, masking::none, 1), 0), yc));
    REQUIRE(conv.realization().noise_seed == rc.noise_seed);

    // Parameter gradients of the wrong shape: refused before dq (or the gradient) is written.
    auto pgs = sine.make_parameter_gradients();
    pgs.gains.resize(heads * dim, sines + 1);
    auto pgc = conv.make_parameter_gradients();
    pgc.key_filter.resize(heads * dim - 1, 20);
    row_matrix<double> dq = row_matrix<double>::Constant(in.q.rows(), dim, 7.0), dk(in.k.rows(), dim), dv(in.v.rows(), values);
    const auto call = [&](const auto& attn, auto& pg) {
        return error_of([&] {
            attn.backward(in.in(in.q), in.in(in.k), in.in(in.v), in.in(in.dout), in.out(dq), in.out(dk), in.out(dv), 0, nullptr, &pg);
        });
    };
    REQUIRE(call(with_threads(sine, masking::none, 1), pgs).find("sine_spe parameter_gradients.gains") != std::string::npos);
    REQUIRE(call(with_threads(conv, masking::causal, 1), pgc).find("conv_spe parameter_gradients.key_filter") != std::string::npos);
    REQUIRE((dq.array() == 7.0).all());
    REQUIRE(pgs.freqs.isZero(0.0));
    REQUIRE(pgc.query_filter.isZero(0.0));
}
TEST_CASE("SPE state backward: k calls of random sizes in reverse equal one call's backward, parameters included",
          "[spe][backward][state]")
{
    // Gated sineSPE, causal, both heads, from positions 0 and 100003: the chain's dq, dk, dv and every
    // parameter gradient against central differences of ONE call's forward from that position (the
    // one call's backward is checked the same way by the first test case), with check_fd's f_round.
    const index n = 40;
    const auto spe = make_sine<double>(true);
    const attention_of<sine_spe<double>> attn({}, spe, fd_options(masking::causal));
    using state_test::bhnd;
    const bhnd<double> q(1, heads, n, dim, 81), k(1, heads, n, dim, 82), v(1, heads, n, values, 83), dout(1, heads, n, values, 84);
    const auto pieces = state_test::random_pieces(n, 8);
    int checked = 0;
    for (const index first : {index(0), index(100003)}) {
        bhnd<double> dq(1, heads, n, dim, 0), dk(1, heads, n, dim, 0), dv(1, heads, n, values, 0);
        auto pg = attn.make_parameter_gradients();
        state_test::backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces, &pg, first);
        CAPTURE(first, pieces.size());
        double out_norm = 0;
        state_test::call_loss(attn, q, k, v, dout, first, &out_norm);
        const double f_round = 2.0 * double(code_terms(spe) + reals + n + fd_options(masking::causal).chunk_size + 4) *
                               test::unit_roundoff<double>() * dout.data.norm() * out_norm;
        std::uint32_t seed = 85;
        const auto check_input = [&](const bhnd<double>& x, const bhnd<double>& grad, int which) {
            const row_matrix<double> u = test::uniform<double>(x.data.rows(), x.data.cols(), seed++);
            test::require_fd(test::central_difference(
                [&](double h) {
                    bhnd<double> moved = x;
                    moved.data += h * u;
                    return state_test::call_loss(attn, which == 0 ? moved : q, which == 1 ? moved : k, which == 2 ? moved : v,
                                                 dout, first);
                },
                test::dot(grad.data, u), f_round, grad.data.norm() * u.norm(), u.norm() / x.data.norm()));
        };
        check_input(q, dq, 0);
        check_input(k, dk, 1);
        check_input(v, dv, 2);
        for (const auto& t : tensors(spe)) {
            const row_matrix<double>& value = spe.*t.value;
            const row_matrix<double>& grad = pg.*t.gradient;
            CAPTURE(t.name);
            const double shrink = t.position_scaled ? std::min(1.0, 128.0 / double(first + n)) : 1.0;
            const row_matrix<double> u = shrink * test::uniform<double>(value.rows(), value.cols(), seed++);
            test::require_fd(test::central_difference(
                [&](double h) {
                    sine_spe<double> moved = spe;
                    moved.*t.value += h * u;
                    return state_test::call_loss(attention_of<sine_spe<double>>({}, moved, fd_options(masking::causal)), q, k,
                                                 v, dout, first);
                },
                test::dot(grad, u), f_round, grad.norm() * u.norm(), u.norm() / value.norm()));
        }
        ++checked;
    }
    REQUIRE(checked == 2);
}
TEST_CASE("SPE state backward: no leak from the future through a state call or a poisoned later call",
          "[spe][backward][state][no_leak]")
{
    // Gated sineSPE from position 13 (support_state.hpp's properties), in double as the state test above.
    const attention_of<sine_spe<double>> attn({}, make_sine<double>(true), fd_options(masking::causal));
    REQUIRE(state_test::require_state_no_leak(attn, 1, heads, dim, values, 13, 60, 29, 11) == 5);
}

} // namespace test_spe_backward
