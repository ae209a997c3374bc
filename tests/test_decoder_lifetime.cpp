// The decoder owns a snapshot of its attention: it outlives temporaries and reallocating containers, and
// later changes to the attention (parameters, options, realization) never reach a live decoder.
#include "support.hpp"

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_decoder_lifetime {

namespace {
using namespace linrpe;
using linrpe::index;

template <class S>
using lrpe_attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;
template <class S>
using toeplitz_attention = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;

template <class S>
options<S> causal_rms()
{
    options<S> o;
    o.mask = masking::causal;
    o.norm = normalization::rms; // rotations make scores signed
    return o;
}

template <class S>
lrpe_attention<S> make_lrpe(index dim)
{
    return lrpe_attention<S>({}, positional::lrpe<S>(lrpe_kind::rotate, dim), causal_rms<S>());
}

template <class S>
toeplitz_attention<S> make_toeplitz(index t_max, std::uint32_t seed)
{
    positional::toeplitz_rpe<S> pe(1, t_max);
    pe.bias = test::uniform<S>(1, 2 * t_max - 1, seed);
    options<S> o;
    o.mask = masking::causal;
    return toeplitz_attention<S>({}, pe, o);
}

// Streams the rows of q, k, v one token at a time (after a prefill of `prefill` rows): (N, E).
template <class Decoder, class S>
row_matrix<S> stream(Decoder& dec, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v, index prefill)
{
    row_matrix<S> out(q.rows(), v.cols());
    dec.prefill(q.topRows(prefill), k.topRows(prefill), v.topRows(prefill), out.topRows(prefill));
    for (index t = prefill; t < q.rows(); ++t) {
        row_matrix<S> o(1, v.cols());
        dec.step(q.row(t), k.row(t), v.row(t), o);
        out.row(t) = o;
    }
    return out;
}
} // namespace

TEMPLATE_TEST_CASE("a decoder made from a temporary attention works (ASan-clean)", "[decoder][lifetime]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 12, d = 6, e = 3;
    const row_matrix<S> q = test::uniform<S>(n, d, 1), k = test::uniform<S>(n, d, 2), v = test::uniform<S>(n, e, 3);
    auto dec = make_lrpe<S>(d).decoder(); // the attention is destroyed at the end of this statement
    const row_matrix<S> streamed = stream(dec, q, k, v, 5);
    const auto attn = make_lrpe<S>(d);
    auto fresh = attn.decoder();
    REQUIRE(test::bit_identical(streamed, stream(fresh, q, k, v, 5)));
    // And the streamed result is the batched causal call to rounding.
    const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
    const double err = test::abs_error(streamed, ref);
    CAPTURE(err, bound);
    REQUIRE(err <= bound);

    auto tdec = make_toeplitz<S>(4, 9).decoder();
    const row_matrix<S> t_streamed = stream(tdec, q, k, v, 3);
    auto tfresh = make_toeplitz<S>(4, 9).decoder();
    REQUIRE(test::bit_identical(t_streamed, stream(tfresh, q, k, v, 3)));
}

TEMPLATE_TEST_CASE("decoders of a vector of layers survive its reallocation", "[decoder][lifetime]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 10, d = 4, e = 2;
    const row_matrix<S> q = test::uniform<S>(n, d, 4), k = test::uniform<S>(n, d, 5), v = test::uniform<S>(n, e, 6);
    std::vector<toeplitz_attention<S>> layers;
    std::vector<decoder<toeplitz_attention<S>>> decoders;
    for (linrpe::index layer = 0; layer < 9; ++layer) { // push_back reallocates both vectors several times
        layers.push_back(make_toeplitz<S>(3, std::uint32_t(10 + layer)));
        decoders.push_back(layers.back().decoder());
    }
    for (linrpe::index layer = 0; layer < 9; ++layer) {
        CAPTURE(layer);
        const row_matrix<S> streamed = stream(decoders[std::size_t(layer)], q, k, v, 4);
        auto fresh = make_toeplitz<S>(3, std::uint32_t(10 + layer)).decoder();
        REQUIRE(test::bit_identical(streamed, stream(fresh, q, k, v, 4)));
    }
}

TEMPLATE_TEST_CASE("changing the attention after creating a decoder does not change the decoder", "[decoder][lifetime]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 9, d = 4, e = 3;
    const row_matrix<S> q = test::uniform<S>(n, d, 7), k = test::uniform<S>(n, d, 8), v = test::uniform<S>(n, e, 9);
    const auto expected_toeplitz = [&] {
        auto dec = make_toeplitz<S>(3, 1).decoder();
        return stream(dec, q, k, v, 2);
    }();

    SECTION("parameters (Toeplitz bias) mid-stream")
    {
        auto attn = make_toeplitz<S>(3, 1);
        auto dec = attn.decoder();
        row_matrix<S> out(n, e);
        dec.prefill(q.topRows(2), k.topRows(2), v.topRows(2), out.topRows(2));
        attn.positional().bias.setConstant(S(3)); // would change every later weight of a decoder by reference
        for (linrpe::index t = 2; t < n; ++t) {
            row_matrix<S> o(1, e);
            dec.step(q.row(t), k.row(t), v.row(t), o);
            out.row(t) = o;
        }
        REQUIRE(test::bit_identical(out, expected_toeplitz));
        REQUIRE(dec.attention().positional().bias == make_toeplitz<S>(3, 1).positional().bias);
    }
    SECTION("options (set_options) mid-stream: no desynchronized state")
    {
        auto attn = make_toeplitz<S>(3, 1);
        auto dec = attn.decoder();
        row_matrix<S> out(n, e);
        dec.prefill(q.topRows(2), k.topRows(2), v.topRows(2), out.topRows(2));
        options<S> o = attn.opts();
        o.norm = normalization::rms; // the live state holds the ones column of `sum`: by reference this would misread it
        o.eps = S(0.5);
        attn.set_options(o);
        for (linrpe::index t = 2; t < n; ++t) {
            row_matrix<S> r(1, e);
            dec.step(q.row(t), k.row(t), v.row(t), r);
            out.row(t) = r;
        }
        REQUIRE(test::bit_identical(out, expected_toeplitz));
        REQUIRE(dec.attention().opts().norm == normalization::sum);
    }
    SECTION("LRPE angles and the options of a causal (no mixing) decoder")
    {
        auto attn = make_lrpe<S>(d);
        auto dec = attn.decoder();
        auto reference_dec = make_lrpe<S>(d).decoder();
        attn.positional().set_theta(row_matrix<double>::Constant(1, d / 2, 0.25));
        options<S> o = attn.opts();
        o.mask = masking::none;
        attn.set_options(o);
        REQUIRE(test::bit_identical(stream(dec, q, k, v, 3), stream(reference_dec, q, k, v, 3)));
    }
    SECTION("copies of a decoder have their own snapshot and state")
    {
        auto attn = make_toeplitz<S>(3, 1);
        auto dec = attn.decoder();
        auto copy = dec;
        REQUIRE(test::bit_identical(stream(dec, q, k, v, 2), expected_toeplitz));
        REQUIRE(copy.position() == 0);
        REQUIRE(test::bit_identical(stream(copy, q, k, v, 2), expected_toeplitz));
    }
}
} // namespace test_decoder_lifetime
