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
