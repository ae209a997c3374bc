#pragma once
// Helpers of the state, varlen and serving tests: small-call options, random Toeplitz biases, the
// attentions they use most, and a (B, H, N, W) buffer with token-range views.
#include "support.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace state_test {
using namespace linrpe;
using linrpe::index;

/// Options of the small calls of these tests: chunks of 8 rows, one thread (the thread tests set theirs).
template <class S>
options<S> make_options(masking mask, normalization norm = normalization::sum, toeplitz_algorithm algo = toeplitz_algorithm::automatic)
{
    options<S> opt;
    opt.mask = mask;
    opt.norm = norm;
    opt.chunk_size = 8;
    opt.toeplitz = algo;
    opt.threads = 1;
    return opt;
}

/// A Toeplitz encoding with biases uniform in [-1.5, 1.5].
template <class S>
positional::toeplitz_rpe<S> random_bias(index heads, index t_max, std::uint32_t seed)
{
    positional::toeplitz_rpe<S> rpe(heads, t_max);
    rpe.bias = test::uniform<S>(heads, 2 * t_max - 1, seed, 1.5);
    return rpe;
}

template <class S>
using plain_attention = linear_attention<feature_maps::elu_plus_one, positional::none, S>;
template <class S>
using toeplitz_attention = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;

/// A contiguous (B, H, N, W) buffer with views of token ranges [t0, t0 + count) of every (b, h).
template <class S>
struct bhnd {
    index b, h, n, w;
    row_matrix<S> data;
    bhnd(index b_, index h_, index n_, index w_, std::uint32_t seed) : b(b_), h(h_), n(n_), w(w_), data(test::uniform<S>(b * h * n, w, seed)) {}
    tensor_view<const S> in(index t0, index count) const { return tensor_view<const S>(data.data() + t0 * w, b, h, count, w, h * n * w, n * w, w); }
    tensor_view<S> out(index t0, index count) { return tensor_view<S>(data.data() + t0 * w, b, h, count, w, h * n * w, n * w, w); }
    tensor_view<const S> in() const { return in(0, n); }
    tensor_view<S> out() { return out(0, n); }
    row_matrix<S> slice(index bi, index hi) const { return in().slice(bi, hi); }
};

/// Batch entry b of a view, as a view of batch 1.
template <class T>
tensor_view<T> entry(const tensor_view<T>& v, index b)
{
    return tensor_view<T>(v.data() + b * v.stride(0), 1, v.heads(), v.tokens(), v.channels(), v.stride(0), v.stride(1), v.stride(2));
}

// Random piece sizes summing to n, with a 0 and a 1 among them.
inline std::vector<index> random_pieces(index n, std::uint32_t seed)
{
    std::mt19937 gen(seed);
    std::vector<index> sizes{0, 1};
    index left = n - 1;
    while (left > 0) {
        const index s = std::min<index>(left, 1 + index(gen() % 17));
        sizes.push_back(s);
        left -= s;
    }
    std::shuffle(sizes.begin(), sizes.end(), gen);
    return sizes;
}

/// \brief The backward of a sequence run in `pieces` causal calls from an empty state at position `first`:
/// the forwards (keeping the state each call started from), then the backwards in reverse order, each
/// passing the gradient w.r.t. its initial state on as the final_grad of the call before (the same object:
/// initial_grad may alias it). Parameter gradients are added to `pg` when given. Returns the gradient
/// w.r.t. the empty initial state.
template <class Attention, class S>
typename Attention::state_type backward_pieces(const Attention& attn, const bhnd<S>& q, const bhnd<S>& k, const bhnd<S>& v,
                                               const bhnd<S>& dout, bhnd<S>& dq, bhnd<S>& dk, bhnd<S>& dv,
                                               const std::vector<index>& pieces,
                                               typename Attention::parameter_gradients* pg = nullptr, index first = 0)
{
    std::vector<typename Attention::state_type> initial;
    auto state = attn.make_state(q.b, q.h);
    for (index bi = 0; bi < q.b; ++bi) state.restart(bi, first);
    bhnd<S> out(q.b, q.h, q.n, v.w, 0);
    index t = 0;
    for (const index c : pieces) {
        initial.push_back(state);
        attn.forward(q.in(t, c), k.in(t, c), v.in(t, c), out.out(t, c), state);
        t += c;
    }
    auto grad = attn.make_state(q.b, q.h);
    for (std::size_t p = pieces.size(); p-- > 0;) {
        const index c = pieces[p];
        t -= c;
        attn.backward(q.in(t, c), k.in(t, c), v.in(t, c), dout.in(t, c), dq.out(t, c), dk.out(t, c), dv.out(t, c), initial[p],
                      grad, p + 1 < pieces.size() ? &grad : nullptr, nullptr, pg);
    }
    return grad;
}

/// ⟨dout, out⟩ of one batched causal call of q, k, v with every sequence from position `first`: the function
/// whose gradient a chain of backward_pieces from `first` computes. `out_norm` receives ‖out‖_F when given.
template <class Attention, class S>
double call_loss(const Attention& attn, const bhnd<S>& q, const bhnd<S>& k, const bhnd<S>& v, const bhnd<S>& dout, index first,
                 double* out_norm = nullptr)
{
    bhnd<S> out(q.b, q.h, q.n, v.w, 0);
    attn.forward_positions(q.in(), k.in(), v.in(), out.out(), std::vector<index>(static_cast<std::size_t>(q.b), first));
    if (out_norm) *out_norm = double(out.data.norm());
    return double((dout.data.array() * out.data.array()).sum());
}

/// The matrices of a one-slot double state in the order export_bytes writes them (S then z; Toeplitz: far,
/// history κ, history vx), row by row: a gradient state of the same structure pairs entry by entry.
template <class Attention>
std::vector<double> slot_data(const Attention& attn, const typename Attention::state_type& st)
{
    const std::vector<unsigned char> bytes = st.export_bytes(attn);
    const std::size_t at = detail::state_header_bytes + detail::state_slot_bytes;
    std::vector<double> x((bytes.size() - at) / sizeof(double));
    std::memcpy(x.data(), bytes.data() + at, x.size() * sizeof(double));
    return x;
}

/// A copy of the one-slot double state `s0` whose matrices are `x` (slot_data's order), through its bytes
/// (no setter is public).
template <class Attention>
typename Attention::state_type with_slot_data(const Attention& attn, const typename Attention::state_type& s0,
                                              const std::vector<double>& x)
{
    std::vector<unsigned char> bytes = s0.export_bytes(attn);
    const std::size_t at = detail::state_header_bytes + detail::state_slot_bytes;
    REQUIRE(bytes.size() == at + x.size() * sizeof(double));
    std::memcpy(bytes.data() + at, x.data(), x.size() * sizeof(double));
    const std::uint64_t sum = detail::state_checksum(bytes.data(), bytes.size());
    std::memcpy(bytes.data() + detail::state_checksum_at, &sum, sizeof(sum));
    auto out = attn.make_state(1, 1);
    out.import_bytes(bytes, attn);
    return out;
}

/// The state of `batch` × `heads` slots after one call of `len` tokens (q, k of width d, v of width e,
/// seeded from `seed`, `seed` + 1, `seed` + 2).
template <class Attention>
typename Attention::state_type state_after(const Attention& attn, index batch, index heads, index len, index d, index e,
                                           std::uint32_t seed)
{
    using S = typename Attention::scalar_type;
    const bhnd<S> q(batch, heads, len, d, seed), k(batch, heads, len, d, seed + 1), v(batch, heads, len, e, seed + 2);
    bhnd<S> out(batch, heads, len, e, 0);
    auto st = attn.make_state(batch, heads);
    attn.forward(q.in(), k.in(), v.in(), out.out(), st);
    return st;
}

/// The refusals every backward from a state shares (`backward(initial, final_grad)` runs one): an initial
/// state of another batch or heads, a final_grad of other heads, and states whose M' (`other_d`) or E
/// (`other_e`) differs, as initial or final_grad.
template <class Attention, class Backward>
void require_shape_refusals(const Attention& attn, const Backward& backward, const typename Attention::state_type& state,
                            const typename Attention::state_type& other_d, const typename Attention::state_type& other_e)
{
    using Catch::Matchers::Contains;
    const index b = state.batch(), h = state.heads();
    const typename Attention::state_type* none = nullptr;
    REQUIRE_THROWS_WITH(backward(attn.make_state(b + 1, h), none), Contains("initial state"));
    REQUIRE_THROWS_WITH(backward(attn.make_state(b, h + 1), none), Contains("initial state"));
    const auto wrong_heads = attn.make_state(b, h + 1);
    REQUIRE_THROWS_WITH(backward(state, &wrong_heads), Contains("final_grad state"));
    REQUIRE_THROWS_WITH(backward(other_d, none), Contains("initial state slot sizes"));
    REQUIRE_THROWS_WITH(backward(other_e, none), Contains("initial state slot sizes"));
    REQUIRE_THROWS_WITH(backward(state, &other_e), Contains("final_grad state slot sizes"));
}

/// \brief No leak from the future through a backward from a state (test_no_leak_backward.cpp's properties on
/// the API that carries a state). A call of n tokens continues the state of a `prefix`-token call, and its
/// final_grad comes from the backward of a later call of `later` tokens, as in a training chain:
///   (a) NaN, ±Inf or ±1e30 in rows >= t of the call's q, k, v and dOut leave its out and dQ rows < t
///       bit-identical (per slot);
///   (b) the same poisons in rows < t of q and dOut leave dK, dV rows >= t bit-identical;
///   (c) the later call poisoned whole (its initial_grad, our final_grad, is then not finite): out and dQ of
///       the call read no final state and keep their bits, while dK, dV (which do read it) change.
/// Every comparison also checks that the poisoned side did change, so that it can fail. Returns the number of
/// poisons checked (5), for the caller to REQUIRE.
template <class Attention>
int require_state_no_leak(const Attention& attn, index b, index h, index d, index e, index prefix, index n, index t, index later)
{
    using S = typename Attention::scalar_type;
    using state = typename Attention::state_type;
    REQUIRE((0 < t && t < n));
    const state initial = state_after(attn, b, h, prefix, d, e, 91);
    struct call {
        bhnd<S> q, k, v, dout;
        call(index b_, index h_, index len, index d_, index e_, std::uint32_t seed)
            : q(b_, h_, len, d_, seed), k(b_, h_, len, d_, seed + 1), v(b_, h_, len, e_, seed + 2), dout(b_, h_, len, e_, seed + 3) {}
    };
    struct result {
        bhnd<S> out, dq, dk, dv;
    };
    // Forward of `c` from `initial`, the later call forward and backward from the state it left, then the
    // backward of `c` with the later call's initial_grad as final_grad.
    const auto run = [&](const call& c, const call& next) {
        result r{bhnd<S>(b, h, n, e, 0), bhnd<S>(b, h, n, d, 0), bhnd<S>(b, h, n, d, 0), bhnd<S>(b, h, n, e, 0)};
        state st = initial;
        attn.forward(c.q.in(), c.k.in(), c.v.in(), r.out.out(), st);
        const state mid = st;
        bhnd<S> out2(b, h, later, e, 0), dq2(b, h, later, d, 0), dk2(b, h, later, d, 0), dv2(b, h, later, e, 0);
        attn.forward(next.q.in(), next.k.in(), next.v.in(), out2.out(), st);
        auto pg = attn.make_parameter_gradients();
        state final_grad = attn.make_state(b, h), initial_grad = attn.make_state(b, h);
        attn.backward(next.q.in(), next.k.in(), next.v.in(), next.dout.in(), dq2.out(), dk2.out(), dv2.out(), mid, final_grad,
                      nullptr, nullptr, &pg);
        attn.backward(c.q.in(), c.k.in(), c.v.in(), c.dout.in(), r.dq.out(), r.dk.out(), r.dv.out(), initial, initial_grad,
                      &final_grad, nullptr, &pg);
        return r;
    };
    // Sets rows [from, to) of every slot of x.
    const auto poison = [](bhnd<S>& x, index from, index to, S value) {
        for (index s = 0; s < x.b * x.h; ++s) x.data.middleRows(s * x.n + from, to - from).setConstant(value);
    };
    // Rows [from, to) of every slot of x and y bit-identical.
    const auto same_rows = [&](const bhnd<S>& x, const bhnd<S>& y, index from, index to) {
        bool same = true;
        for (index s = 0; s < b * h; ++s)
            same = same && test::bit_identical(x.data.middleRows(s * n + from, to - from).eval(),
                                               y.data.middleRows(s * n + from, to - from).eval());
        return same;
    };
    const call c(b, h, n, d, e, 101), next(b, h, later, d, e, 105);
    const result base = run(c, next);
    const S inf = std::numeric_limits<S>::infinity();
    int checked = 0;
    for (const S value : {std::numeric_limits<S>::quiet_NaN(), inf, -inf, S(1e30), S(-1e30)}) {
        CAPTURE(double(value));
        call ca = c; // (a)
        for (bhnd<S>* x : {&ca.q, &ca.k, &ca.v, &ca.dout}) poison(*x, t, n, value);
        const result a = run(ca, next);
        REQUIRE(same_rows(base.out, a.out, 0, t));
        REQUIRE(same_rows(base.dq, a.dq, 0, t));
        REQUIRE_FALSE(test::bit_identical(base.out.data, a.out.data));
        REQUIRE_FALSE(test::bit_identical(base.dq.data, a.dq.data));
        call cb = c; // (b)
        poison(cb.q, 0, t, value);
        poison(cb.dout, 0, t, value);
        const result rb = run(cb, next);
        REQUIRE(same_rows(base.dk, rb.dk, t, n));
        REQUIRE(same_rows(base.dv, rb.dv, t, n));
        REQUIRE_FALSE(test::bit_identical(base.dk.data, rb.dk.data));
        REQUIRE_FALSE(test::bit_identical(base.dv.data, rb.dv.data));
        call nc = next; // (c)
        for (bhnd<S>* x : {&nc.q, &nc.k, &nc.v, &nc.dout}) x->data.setConstant(value);
        const result rc = run(c, nc);
        REQUIRE(test::bit_identical(base.out.data, rc.out.data));
        REQUIRE(test::bit_identical(base.dq.data, rc.dq.data));
        REQUIRE_FALSE(test::bit_identical(base.dk.data, rc.dk.data));
        ++checked;
    }
    return checked;
}

} // namespace state_test
