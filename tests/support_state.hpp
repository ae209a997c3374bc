#pragma once
// Helpers of the state, varlen and serving tests: small-call options, random Toeplitz biases, the
// attentions they use most, and a (B, H, N, W) buffer with token-range views.
#include "support.hpp"

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

} // namespace state_test
