// No leak from the future on the causal paths without Toeplitz weights: core (every feature map), LRPE
// (rotate, cosine, permutation with Householder P), sineSPE (gated) and convSPE; single calls with chunk
// sizes {1, 7, 32}, batched calls cut into segments, and decoder prefill + steps. Rows after t of q, k and v
// (each alone, and all three) are set to NaN, ±Inf or ±1e30: the outputs at positions <= t must keep their
// bytes. A masked GEMM (0 · NaN = NaN) or a state that saw a later token would fail here.
#include "support.hpp"

#include <limits>
#include <type_traits>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_no_leak {

namespace {
using namespace linrpe;
using linrpe::index;

constexpr index n = 48, d = 8, e = 8, heads = 2;
// t = 17 shares its chunk with later rows for chunk sizes 7 ([14, 21)) and 32 ([0, 32)); t = 40 lies in the
// second segment of the batched call (segment_rows 16 → segments of 32 rows) and in the decoder's steps.
const index cuts[] = {17, 40};
const index chunks[] = {1, 7, 32};
constexpr index prefill_rows = 30;

template <class S>
std::vector<S> poisons()
{
    const S inf = std::numeric_limits<S>::infinity();
    return {std::numeric_limits<S>::quiet_NaN(), inf, -inf, static_cast<S>(1e30), static_cast<S>(-1e30)};
}

// Which of q, k, v the poison goes into: bit 0 q, bit 1 k, bit 2 v.
const int targets[] = {1, 2, 4, 7};

template <class S>
struct inputs {
    row_matrix<S> q, k, v; // (heads·n, d|e): head h is rows h·n .. h·n + n − 1
};

template <class S>
inputs<S> make_inputs()
{
    return {test::uniform<S>(heads * n, d, 1, 0.5), test::uniform<S>(heads * n, d, 2, 0.5), test::uniform<S>(heads * n, e, 3)};
}

// The inputs with rows after t of every head poisoned in the targeted tensors.
template <class S>
inputs<S> poisoned(const inputs<S>& in, index t, int target, S value)
{
    inputs<S> out = in;
    const index rows = n - t - 1;
    for (index h = 0; h < heads; ++h) {
        if (target & 1) out.q.middleRows(h * n + t + 1, rows).setConstant(value);
        if (target & 2) out.k.middleRows(h * n + t + 1, rows).setConstant(value);
        if (target & 4) out.v.middleRows(h * n + t + 1, rows).setConstant(value);
    }
    return out;
}

// The three ways of running `attn`, each returning (heads·n, e).
enum class path { single, segments, decoder };

template <class Attention, class S>
row_matrix<S> run(const Attention& attn, const inputs<S>& in, path how)
{
    row_matrix<S> out(heads * n, e);
    switch (how) {
    case path::single:
        for (index h = 0; h < heads; ++h)
            out.middleRows(h * n, n) = attn(in.q.middleRows(h * n, n), in.k.middleRows(h * n, n), in.v.middleRows(h * n, n), h);
        break;
    case path::segments: // B·H = 2 < 8 and n > segment_rows: each head runs in segments
        attn.forward(view_bhnd(in.q.data(), 1, heads, n, d), view_bhnd(in.k.data(), 1, heads, n, d),
                     view_bhnd(in.v.data(), 1, heads, n, e), view_bhnd(out.data(), 1, heads, n, e));
        break;
    case path::decoder: {
        auto dec = attn.decoder(1, heads);
        const auto sub = [&](auto* data, index channels, index first, index count) {
            using T = std::remove_pointer_t<decltype(data)>;
            return tensor_view<T>(data + first * channels, 1, heads, count, channels, heads * n * channels, n * channels, channels);
        };
        dec.prefill(sub(in.q.data(), d, 0, prefill_rows), sub(in.k.data(), d, 0, prefill_rows),
                    sub(in.v.data(), e, 0, prefill_rows), sub(out.data(), e, 0, prefill_rows));
        for (index t = prefill_rows; t < n; ++t)
            dec.step(sub(in.q.data(), d, t, 1), sub(in.k.data(), d, t, 1), sub(in.v.data(), e, t, 1), sub(out.data(), e, t, 1));
        break;
    }
    }
    return out;
}

// Rows <= t of every head.
template <class S>
row_matrix<S> past(const row_matrix<S>& out, index t)
{
    row_matrix<S> p((t + 1) * heads, out.cols());
    for (index h = 0; h < heads; ++h) p.middleRows(h * (t + 1), t + 1) = out.middleRows(h * n, t + 1);
    return p;
}

// Runs every path, chunk size, cut, poison and target for the attention made by make(options); returns the
// number of comparisons (each one REQUIREd bit-identical).
template <class S, class Make>
int check_no_leak(const char* name, const Make& make, normalization norm)
{
    const inputs<S> clean = make_inputs<S>();
    int compared = 0;
    for (const index chunk : chunks) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = norm;
        opt.allow_signed_normalizer = true;
        opt.chunk_size = chunk;
        opt.segment_rows = 16;
        opt.threads = 1; // results do not depend on it; small calls on a loaded machine run far faster serial
        const auto attn = make(opt);
        for (const path how : {path::single, path::segments, path::decoder}) {
            const row_matrix<S> base = run(attn, clean, how);
            for (const index t : cuts)
                for (const int target : targets)
                    for (const S value : poisons<S>()) {
                        const row_matrix<S> got = run(attn, poisoned(clean, t, target, value), how);
                        const row_matrix<S> a = past(base, t), b = past(got, t);
                        CAPTURE(name, int(norm), chunk, int(how), t, target, double(value));
                        REQUIRE(test::bit_identical(a, b));
                        REQUIRE_FALSE(test::bit_identical(base, got)); // the poison did reach the later rows
                        ++compared;
                    }
        }
    }
    return compared;
}

// 3 chunk sizes · 3 paths · 2 cuts · 4 targets · 5 values.
constexpr int per_config = 3 * 3 * 2 * 4 * 5;

template <class Map, class S>
auto core(Map map)
{
    return [map](const options<S>& opt) { return linear_attention<Map, positional::none, S>(map, {}, opt); };
}

} // namespace

TEMPLATE_TEST_CASE("no leak: core causal path, every feature map", "[no_leak][core]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        REQUIRE(check_no_leak<S>("identity", core<feature_maps::identity, S>({}), norm) == per_config);
        REQUIRE(check_no_leak<S>("elu_plus_one", core<feature_maps::elu_plus_one, S>({}), norm) == per_config);
        REQUIRE(check_no_leak<S>("relu", core<feature_maps::relu, S>(feature_maps::relu(1e-3)), norm) == per_config);
        REQUIRE(check_no_leak<S>("favor", core<feature_maps::favor, S>(feature_maps::favor(d, 16, 1, true)), norm) == per_config);
        REQUIRE(check_no_leak<S>("favor hyperbolic", core<feature_maps::favor, S>(feature_maps::favor(d, 16, 1, false, true)), norm) ==
                per_config);
        REQUIRE(check_no_leak<S>("trig_features", core<feature_maps::trig_features, S>(feature_maps::trig_features(d, 8, 2)), norm) ==
                per_config);
    }
}

TEMPLATE_TEST_CASE("no leak: LRPE rotate, cosine and permutation with Householder P", "[no_leak][lrpe]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const lrpe_kind kind : {lrpe_kind::rotate, lrpe_kind::cosine, lrpe_kind::permutation}) {
        lrpe_options lo;
        lo.basis = lrpe_basis::householder;
        lo.seed = 5;
        const positional::lrpe<S> pe(kind, d, heads, lo);
        const auto make = [&](const options<S>& opt) {
            return linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>({}, pe, opt);
        };
        for (const normalization norm : {normalization::rms, normalization::none})
            REQUIRE(check_no_leak<S>("lrpe", make, norm) == per_config);
    }
}

TEMPLATE_TEST_CASE("no leak: sineSPE (gated) and convSPE", "[no_leak][spe]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index r = 16;
    const positional::sine_spe<S> sine(heads, d, 3, r, 7, true);
    const auto make_sine = [&](const options<S>& opt) {
        return linear_attention<feature_maps::relu, positional::sine_spe<S>, S>(feature_maps::relu(1e-3), sine, opt);
    };
    REQUIRE(check_no_leak<S>("sine_spe", make_sine, normalization::sum) == per_config);
    const positional::conv_spe<S> conv(heads, d, 5, r, 8, true);
    const auto make_conv = [&](const options<S>& opt) {
        return linear_attention<feature_maps::favor, positional::conv_spe<S>, S>(feature_maps::favor(r, 16, 3), conv, opt);
    };
    REQUIRE(check_no_leak<S>("conv_spe", make_conv, normalization::rms) == per_config);
}
} // namespace test_no_leak
