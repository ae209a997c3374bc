// Feature-side encodings composed with Toeplitz mixing (positional::compose): SPE + Toeplitz and
// LRPE + Toeplitz against the exact reference, every Toeplitz algorithm, and streaming decode.
#include "support.hpp"

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_compose {

namespace {
using namespace linrpe;

constexpr toeplitz_algorithm algorithms[] = {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded,
                                             toeplitz_algorithm::automatic};

template <class S>
positional::toeplitz_rpe<S> random_bias(linrpe::index heads, linrpe::index t_max, std::uint32_t seed)
{
    positional::toeplitz_rpe<S> rpe(heads, t_max);
    rpe.bias = test::uniform<S>(heads, 2 * t_max - 1, seed, 1.5);
    return rpe;
}

// Extra summation depth of the FFT algorithm: its rounding is ≈ u·log2 L per transform pair and grows
// like √(N + Nk) in the contraction (reference/toeplitz_rpe_and_core.md §1.10); 4·log2 L·√(N + Nk)
// terms cover it, and the dense/banded paths need none.
linrpe::index fft_terms(linrpe::index n, linrpe::index nk)
{
    return linrpe::index(4.0 * std::log2(double(2 * (n + nk))) * std::sqrt(double(n + nk)));
}

// Returns 1 per configuration compared, so the callers can require the whole sweep ran.
template <class S, class Map, class Feature>
int check(const Map& map, const Feature& feature, normalization norm, masking mask, toeplitz_algorithm algo)
{
    const linrpe::index n = 90, nk = mask == masking::causal ? n : n + 7, d = 6, e = 4, head = 1, p0 = 11;
    using pe_t = positional::compose<Feature, positional::toeplitz_rpe<S>>;
    options<S> opt;
    opt.mask = mask;
    opt.norm = norm;
    opt.toeplitz = algo;
    const linear_attention<Map, pe_t, S> attn(map, pe_t(feature, random_bias<S>(2, 17, 5)), opt);
    const row_matrix<S> q = test::uniform<S>(n, d, 1, 0.7), k = test::uniform<S>(nk, d, 2, 0.7), v = test::uniform<S>(nk, e, 3);
    row_matrix<S> out(n, e);
    attn.forward(q, k, v, out, head, p0, p0);
    const auto [ref, bound] = test::reference_and_bound(attn, q, k, v, head, p0, p0, fft_terms(n, nk));
    const double err = test::abs_error(out, ref);
    CAPTURE(int(norm), int(mask), int(algo), err, bound);
    REQUIRE(err <= bound);
    return 1;
}
} // namespace

TEMPLATE_TEST_CASE("SPE + Toeplitz equals the exact reference for every algorithm", "[compose][spe][toeplitz]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const positional::sine_spe<S> sine(2, 6, 3, 16, 7, true);
    const positional::conv_spe<S> conv(2, 6, 5, 16, 8, true);
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal})
        for (const toeplitz_algorithm algo : algorithms) {
            checked += check<S>(feature_maps::elu_plus_one{}, sine, normalization::sum, mask, algo);
            checked += check<S>(feature_maps::favor(16, 24, 3), conv, normalization::sum, mask, algo);
            checked += check<S>(feature_maps::relu(1e-3), sine, normalization::rms, mask, algo);
        }
    REQUIRE(checked == 2 * 4 * 3); // masks × algorithms × configurations
}

TEMPLATE_TEST_CASE("LRPE + Toeplitz equals the exact reference for every algorithm", "[compose][lrpe][toeplitz]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const auto rope = positional::lrpe<S>::rope(6, 2);
    const positional::lrpe<S> cosine(lrpe_kind::cosine, 6, 2);
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal})
        for (const toeplitz_algorithm algo : algorithms)
            for (const normalization norm : {normalization::rms, normalization::none}) {
                checked += check<S>(feature_maps::elu_plus_one{}, rope, norm, mask, algo);
                checked += check<S>(feature_maps::elu_plus_one{}, cosine, norm, mask, algo);
            }
    REQUIRE(checked == 2 * 4 * 2 * 2); // masks × algorithms × normalizations × cores
}

TEMPLATE_TEST_CASE("SPE + Toeplitz: prefill + steps equals the batched causal call", "[compose][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 1, h = 2, n = 70, d = 6, e = 3;
    using pe_t = positional::compose<positional::conv_spe<S>, positional::toeplitz_rpe<S>>;
    options<S> opt;
    opt.mask = masking::causal;
    const linear_attention<feature_maps::elu_plus_one, pe_t, S> attn({}, pe_t(positional::conv_spe<S>(h, d, 4, 8, 2, true),
                                                                            random_bias<S>(h, 9, 6)), opt);
    const row_matrix<S> qm = test::uniform<S>(h * n, d, 1), km = test::uniform<S>(h * n, d, 2), vm = test::uniform<S>(h * n, e, 3);
    row_matrix<S> batched(h * n, e), streamed(h * n, e);
    const auto q = view_bhnd(qm.data(), b, h, n, d), k = view_bhnd(km.data(), b, h, n, d);
    const auto v = view_bhnd(vm.data(), b, h, n, e);
    attn.forward(q, k, v, view_bhnd(batched.data(), b, h, n, e));
    auto dec = attn.decoder(b, h);
    const auto rows = [&](auto view, linrpe::index first, linrpe::index count) {
        using T = typename decltype(view)::element_type;
        return tensor_view<T>(view.data() + first * view.stride(2), b, h, count, view.channels(), view.stride(0), view.stride(1),
                              view.stride(2));
    };
    const auto out = view_bhnd(streamed.data(), b, h, n, e);
    dec.prefill(rows(q, 0, 30), rows(k, 0, 30), rows(v, 0, 30), rows(out, 0, 30));
    for (linrpe::index t = 30; t < n; ++t) dec.step(rows(q, t, 1), rows(k, t, 1), rows(v, t, 1), rows(out, t, 1));
    for (linrpe::index hi = 0; hi < h; ++hi) {
        const row_matrix<S> x = out.slice(0, hi), y = view_bhnd(batched.data(), b, h, n, e).slice(0, hi);
        const row_matrix<S> qq = q.slice(0, hi), kk = k.slice(0, hi), vv = v.slice(0, hi);
        const auto [ref, bound] = test::reference_and_bound(attn, qq, kk, vv, hi);
        CAPTURE(hi, bound);
        REQUIRE(test::abs_error(x, ref) <= bound);
        REQUIRE(test::abs_error(y, ref) <= bound);
    }
}
} // namespace test_compose
