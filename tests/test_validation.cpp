// Front-end validation: position bounds, chunk and segment bounds, aliasing and overlapping outputs, enum
// values, compose's width check, view head counts, the fused-QKV views, the default Scalar and the public
// Toeplitz choice. Every refusal names its argument and leaves the output untouched.
#include "support.hpp"

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_validation {

namespace {
using namespace linrpe;
using linrpe::index;
using elu = linear_attention<feature_maps::elu_plus_one, positional::none, double>;
using elu_toeplitz = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<double>, double>;

template <class F>
void throws_naming(F&& f, const std::string& name)
{
    CAPTURE(name);
    REQUIRE_THROWS_AS(f(), linrpe::error);
    REQUIRE_THROWS_WITH(f(), Catch::Contains(name));
}

options<double> causal_options()
{
    options<double> o;
    o.mask = masking::causal;
    return o;
}

positional::toeplitz_rpe<double> toeplitz(linrpe::index heads, linrpe::index t_max, std::uint32_t seed)
{
    positional::toeplitz_rpe<double> pe(heads, t_max);
    pe.bias = test::uniform<double>(heads, 2 * t_max - 1, seed);
    return pe;
}

// A feature map that names its scalar: linear_attention<F> then computes in it.
struct double_identity_plus {
    using scalar_type = double;
    static constexpr bool is_positive = true;
    linrpe::index output_dim(linrpe::index d) const { return d; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const feature_context&) const
    {
        phi = x.array().abs().matrix();
    }
};
} // namespace

TEST_CASE("positions near 2^53 are refused before first + N overflows", "[validation][positions]")
{
    const row_matrix<double> q = test::uniform<double>(8, 4, 1), k = test::uniform<double>(8, 4, 2), v = test::uniform<double>(8, 3, 3);
    row_matrix<double> out = row_matrix<double>::Constant(8, 3, 42.0);
    const row_matrix<double> sentinel = out;
    for (const options<double>& o : {options<double>(), causal_options()}) {
        const elu attn({}, {}, o);
        const linrpe::index huge = std::numeric_limits<linrpe::index>::max() - 3;
        throws_naming([&] { attn.forward(q, k, v, out, 0, huge); }, "first_position");
        throws_naming([&] { attn.forward(q, k, v, out, 0, max_position - 7); }, "first_position");
        REQUIRE_NOTHROW(attn.forward(q, k, v, out, 0, max_position - 8));
        out = sentinel;
        std::vector<double> o4(2 * 8 * 3, 42.0);
        throws_naming([&] { attn.forward(view_bhnd(q.data(), 1, 1, 8, 4), view_bhnd(k.data(), 1, 1, 8, 4),
                                          view_bhnd(v.data(), 1, 1, 8, 3), view_bhnd(o4.data(), 1, 1, 8, 3), huge); },
                      "first_position");
        REQUIRE(o4 == std::vector<double>(o4.size(), 42.0));
        throws_naming([&] { attn.features(q, role::query, 0, huge); }, "first_position");
        throws_naming([&] { attn.mixing_matrix(8, 8, 0, huge, 0); }, "first_position");
    }
    // Keys get their own bound (non-causal calls may place them elsewhere).
    const elu attn;
    throws_naming([&] { attn.forward(q, k, v, out, 0, 0, max_position - 2); }, "key first_position");
    REQUIRE(out == sentinel);
    // The decoder's running position is bounded by the same check.
    auto dec = elu({}, {}, causal_options()).decoder();
    row_matrix<double> o1(1, 3);
    REQUIRE_NOTHROW(dec.step(q.topRows(1), k.topRows(1), v.topRows(1), o1));
}

TEST_CASE("chunk_size and segment_rows: absurd values refused or clamped to the sequence", "[validation][chunk]")
{
    options<double> o = causal_options();
    o.chunk_size = options<double>::max_chunk_size + 1;
    throws_naming([&] { elu({}, {}, o); }, "options.chunk_size");
    o.chunk_size = std::numeric_limits<linrpe::index>::max();
    throws_naming([&] { elu({}, {}, o); }, "options.chunk_size");

    // The largest accepted chunk on 8 tokens runs one chunk of 8 (no 4096² scratch): same bits as chunk 8.
    const row_matrix<double> q = test::uniform<double>(8, 4, 1), k = test::uniform<double>(8, 4, 2), v = test::uniform<double>(8, 3, 3);
    o.chunk_size = options<double>::max_chunk_size;
    const row_matrix<double> big = elu({}, {}, o)(q, k, v);
    o.chunk_size = 8;
    REQUIRE(test::bit_identical(big, elu({}, {}, o)(q, k, v)));

    // segment_rows near INT64_MAX: the banded Toeplitz path used to overflow (n + segment − 1) and crash.
    for (const masking mask : {masking::none, masking::causal}) {
        options<double> t;
        t.mask = mask;
        t.toeplitz = toeplitz_algorithm::banded;
        t.segment_rows = std::numeric_limits<linrpe::index>::max();
        const elu_toeplitz huge({}, toeplitz(1, 3, 4), t);
        t.segment_rows = 8;
        const elu_toeplitz one({}, toeplitz(1, 3, 4), t);
        REQUIRE(test::bit_identical(huge(q, k, v), one(q, k, v)));
        t.segment_rows = 9; // beyond N as well
        REQUIRE(test::bit_identical(elu_toeplitz({}, toeplitz(1, 3, 4), t)(q, k, v), one(q, k, v)));
    }
}

TEST_CASE("invalid enum values in options and conv_spe are refused", "[validation][enums]")
{
    options<double> o;
    o.mask = static_cast<masking>(7);
    throws_naming([&] { elu({}, {}, o); }, "options.mask");
    o = {};
    o.norm = static_cast<normalization>(-1);
    throws_naming([&] { elu({}, {}, o); }, "options.norm");
    o = {};
    o.toeplitz = static_cast<toeplitz_algorithm>(9);
    throws_naming([&] { elu_toeplitz({}, toeplitz(1, 2, 1), o); }, "options.toeplitz");
    elu attn;
    o = {};
    o.mask = static_cast<masking>(2);
    throws_naming([&] { attn.set_options(o); }, "options.mask");
    REQUIRE(attn.opts().mask == masking::none); // a refused set_options keeps the old options

    positional::conv_spe<double> spe(1, 4, 3, 8, 1);
    spe.algorithm = static_cast<positional::conv_algorithm>(5);
    const linear_attention<feature_maps::elu_plus_one, positional::conv_spe<double>> c({}, spe);
    const row_matrix<double> x = test::uniform<double>(5, 4, 1), v = test::uniform<double>(5, 2, 2);
    row_matrix<double> out = row_matrix<double>::Constant(5, 2, 42.0);
    throws_naming([&] { c.forward(x, x, v, out); }, "conv_spe algorithm");
    REQUIRE(out == row_matrix<double>::Constant(5, 2, 42.0));
}

TEST_CASE("an output that shares memory with an input is refused", "[validation][alias]")
{
    for (const options<double>& o : {options<double>(), causal_options()}) {
        const elu attn({}, {}, o);
        row_matrix<double> q = test::uniform<double>(6, 3, 1), k = test::uniform<double>(6, 3, 2), v = test::uniform<double>(6, 3, 3);
        const row_matrix<double> v0 = v, q0 = q;
        throws_naming([&] { attn.forward(q, k, v, v); }, "out");
        REQUIRE(v == v0);
        throws_naming([&] { attn.forward(q, k, v, q); }, "memory that does not overlap q");
        REQUIRE(q == q0);
        // A block of a larger buffer overlapping v's rows.
        row_matrix<double> buf = test::uniform<double>(12, 3, 4);
        const row_matrix<double> buf0 = buf;
        throws_naming([&] { attn.forward(q, k, buf.topRows(6), buf.middleRows(5, 6)); }, "out");
        REQUIRE(buf == buf0);
        // Adjacent, non-overlapping blocks of one buffer are fine.
        REQUIRE_NOTHROW(attn.forward(q, k, buf.topRows(6), buf.bottomRows(6)));

        // Views: out = v in a (B, N, H, E) buffer, and out interleaved with v in one token row.
        const linrpe::index b = 2, h = 2, n = 5, d = 3;
        std::vector<double> qs(b * n * h * d, 0.5), fused(b * n * 2 * h * d, 0.25);
        const auto qv = view_bnhd(static_cast<const double*>(qs.data()), b, n, h, d);
        const auto same = view_bnhd(fused.data(), b, n, h, d);
        const std::vector<double> fused0 = fused;
        throws_naming([&] { attn.forward(qv, qv, same, same); }, "out view");
        REQUIRE(fused == fused0);
        // (B, N, 2, H, D): v in the first half of each token row, out in the second: disjoint elements.
        const tensor_view<double> vh(fused.data(), b, h, n, d, n * 2 * h * d, d, 2 * h * d, 1);
        const tensor_view<double> oh(fused.data() + h * d, b, h, n, d, n * 2 * h * d, d, 2 * h * d, 1);
        REQUIRE_NOTHROW(attn.forward(qv, qv, vh, oh));
        // Shifted by one channel: the halves overlap.
        const tensor_view<double> shifted(fused.data() + h * d - 1, b, h, n, d, n * 2 * h * d, d, 2 * h * d, 1);
        std::vector<double> before = fused;
        throws_naming([&] { attn.forward(qv, qv, vh, shifted); }, "out view");
        REQUIRE(fused == before);
    }
}

TEST_CASE("an output view whose elements overlap is refused", "[validation][alias]")
{
    const elu attn;
    const linrpe::index b = 1, h = 3, n = 4, d = 2;
    std::vector<double> q(b * h * n * d, 0.5), o(64, 42.0);
    const auto qv = view_bhnd(static_cast<const double*>(q.data()), b, h, n, d);
    // Heads 1 apart with 2 channels: heads overlap.
    const tensor_view<double> heads_overlap(o.data(), b, h, n, d, 64, 1, 8, 1);
    throws_naming([&] { attn.forward(qv, qv, qv, heads_overlap); }, "out view");
    // Head stride equal to the token stride: heads and tokens collide.
    const tensor_view<double> collide(o.data(), b, h, n, d, 64, 2, 2, 1);
    throws_naming([&] { attn.forward(qv, qv, qv, collide); }, "out view");
    REQUIRE(o == std::vector<double>(64, 42.0));
    // A padded layout is fine: token stride 3 > 2 channels, head stride 13 > span of the tokens (3·3 + 1).
    const tensor_view<double> padded(o.data(), b, h, n, d, 64, 13, 3, 1);
    REQUIRE_NOTHROW(attn.forward(qv, qv, qv, padded));
    // Extents × strides beyond 2^62 elements are refused before any pointer arithmetic.
    const tensor_view<double> absurd(o.data(), 2, 1, 1, 2, linrpe::index(1) << 62, 1, 2, 1);
    throws_naming([&] { absurd.validate("out view"); }, "2^62");
}

TEST_CASE("compose<lrpe, toeplitz> checks the LRPE width against the feature width", "[validation][compose]")
{
    using pe_type = positional::compose<positional::lrpe<double>, positional::toeplitz_rpe<double>>;
    options<double> o;
    o.norm = normalization::rms; // rotations make scores signed
    const linear_attention<feature_maps::elu_plus_one, pe_type> attn(
        {}, pe_type(positional::lrpe<double>(lrpe_kind::rotate, 6), toeplitz(1, 3, 2)), o);
    const row_matrix<double> q = test::uniform<double>(5, 4, 1), v = test::uniform<double>(5, 2, 2);
    row_matrix<double> out = row_matrix<double>::Constant(5, 2, 42.0);
    throws_naming([&] { attn.forward(q, q, v, out); }, "lrpe");
    throws_naming([&] { attn.features(q, role::query); }, "lrpe");
    REQUIRE(out == row_matrix<double>::Constant(5, 2, 42.0));
    const row_matrix<double> q6 = test::uniform<double>(5, 6, 1);
    REQUIRE_NOTHROW(attn.forward(q6, q6, v, out));
}

TEST_CASE("a view with more heads than the encoding names the view's heads", "[validation][heads]")
{
    const elu_toeplitz attn({}, toeplitz(2, 3, 1));
    const linrpe::index b = 1, h = 3, n = 4, d = 2;
    std::vector<double> q(b * h * n * d, 0.5), o(b * h * n * d, 42.0);
    const auto qv = view_bhnd(static_cast<const double*>(q.data()), b, h, n, d);
    throws_naming([&] { attn.forward(qv, qv, qv, view_bhnd(o.data(), b, h, n, d)); }, "q view heads");
    throws_naming([&] { attn.forward(qv, qv, qv, view_bhnd(o.data(), b, h, n, d)); }, "head 2");
    REQUIRE(o == std::vector<double>(o.size(), 42.0));
}

TEST_CASE("mixing_matrix validates sizes, head and positions", "[validation][mixing]")
{
    const elu_toeplitz attn({}, toeplitz(2, 3, 1));
    throws_naming([&] { attn.mixing_matrix(-1, 3); }, "mixing_matrix rows");
    throws_naming([&] { attn.mixing_matrix(3, -2); }, "mixing_matrix cols");
    throws_naming([&] { attn.mixing_matrix(3, 3, -1); }, "head");
    throws_naming([&] { attn.mixing_matrix(3, 3, 2); }, "head");
    throws_naming([&] { attn.mixing_matrix(3, 3, 0, -1); }, "first_position");
    throws_naming([&] { attn.mixing_matrix(3, 3, 0, 0, max_position); }, "key first_position");
    REQUIRE(attn.mixing_matrix(0, 0).size() == 0);
}

TEST_CASE("the Toeplitz decoder with value width 0 keeps its history across calls", "[validation][decoder]")
{
    options<double> o = causal_options();
    o.norm = normalization::none; // Ex = E = 0
    const elu_toeplitz attn({}, toeplitz(1, 3, 1), o);
    auto dec = attn.decoder();
    const row_matrix<double> x = test::uniform<double>(1, 2, 1);
    row_matrix<double> v(1, 0), out(1, 0);
    for (int t = 0; t < 6; ++t) REQUIRE_NOTHROW(dec.step(x, x, v, out));
    REQUIRE(dec.position() == 6);
}

TEST_CASE("view_qkv reads a fused (B, N, 3, H, D) projection", "[validation][views]")
{
    const linrpe::index b = 2, n = 5, h = 3, d = 4;
    const row_matrix<double> fused = test::uniform<double>(b * n, 3 * h * d, 11); // row (b, n): [q | k | v]
    const auto views = view_qkv(fused.data(), b, n, h, d);
    // Explicit copies into (B, H, N, D) buffers.
    std::vector<double> parts[3];
    for (int p = 0; p < 3; ++p) {
        parts[p].resize(b * h * n * d);
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index hi = 0; hi < h; ++hi)
                for (linrpe::index t = 0; t < n; ++t)
                    for (linrpe::index c = 0; c < d; ++c)
                        parts[p][((bi * h + hi) * n + t) * d + c] = fused(bi * n + t, p * h * d + hi * d + c);
    }
    const tensor_view<const double> got[3] = {views.q, views.k, views.v};
    for (int p = 0; p < 3; ++p) {
        got[p].validate("qkv view");
        const auto want = view_bhnd(static_cast<const double*>(parts[p].data()), b, h, n, d);
        for (linrpe::index bi = 0; bi < b; ++bi)
            for (linrpe::index hi = 0; hi < h; ++hi) REQUIRE(row_matrix<double>(got[p].slice(bi, hi)) == row_matrix<double>(want.slice(bi, hi)));
    }
    // The three are disjoint: an attention call reads them and writes into a separate buffer.
    const elu attn;
    std::vector<double> out(b * h * n * d), ref(out.size());
    attn.forward(views.q, views.k, views.v, view_bhnd(out.data(), b, h, n, d));
    attn.forward(view_bhnd(static_cast<const double*>(parts[0].data()), b, h, n, d),
                 view_bhnd(static_cast<const double*>(parts[1].data()), b, h, n, d),
                 view_bhnd(static_cast<const double*>(parts[2].data()), b, h, n, d), view_bhnd(ref.data(), b, h, n, d));
    // Same formula, GEMMs on differently strided operands: each within the derived bound of the reference.
    for (linrpe::index bi = 0; bi < b; ++bi)
        for (linrpe::index hi = 0; hi < h; ++hi) {
            const auto slice = [&](const std::vector<double>& x) {
                return row_matrix<double>(view_bhnd(static_cast<const double*>(x.data()), b, h, n, d).slice(bi, hi));
            };
            const auto [exact, bound] = test::reference_and_bound(attn, slice(parts[0]), slice(parts[1]), slice(parts[2]));
            const double err_views = test::abs_error(slice(out), exact), err_copies = test::abs_error(slice(ref), exact);
            CAPTURE(bi, hi, err_views, err_copies, bound);
            REQUIRE(err_views <= bound);
            REQUIRE(err_copies <= bound);
        }
    // Writing the output into the v slot of the same buffer would alias it: refused.
    row_matrix<double> writable = fused;
    const auto w = view_qkv(writable.data(), b, n, h, d);
    throws_naming([&] { attn.forward(w.q, w.k, w.v, w.v); }, "out view");
    REQUIRE(writable == fused);
    // ... while writing it into the q slot after reading only k and v for the output is still aliasing of q.
    throws_naming([&] { attn.forward(w.q, w.k, w.v, w.q); }, "memory that does not overlap q view");
}

TEST_CASE("the default Scalar: encoding's, else feature map's, else float", "[validation][scalar]")
{
    STATIC_REQUIRE(std::is_same<linear_attention<feature_maps::elu_plus_one>::scalar_type, float>::value);
    STATIC_REQUIRE(std::is_same<linear_attention<feature_maps::elu_plus_one, positional::none>::scalar_type, float>::value);
    STATIC_REQUIRE(std::is_same<linear_attention<feature_maps::elu_plus_one, positional::lrpe<double>>::scalar_type, double>::value);
    STATIC_REQUIRE(std::is_same<linear_attention<double_identity_plus>::scalar_type, double>::value);
    STATIC_REQUIRE(std::is_same<linear_attention<double_identity_plus, positional::none>::scalar_type, double>::value);
    // The catch-all that turns a double call on a float attention into a static_assert is selected only
    // for foreign scalars (instantiating it would stop compilation with the message).
    STATIC_REQUIRE(detail::has_foreign_scalar_v<float, row_matrix<double>, row_matrix<double>, row_matrix<double>>);
    STATIC_REQUIRE(detail::has_foreign_scalar_v<float, tensor_view<const double>, int>);
    STATIC_REQUIRE(!detail::has_foreign_scalar_v<float, row_matrix<float>, tensor_view<float>, linrpe::index, int>);
    const linear_attention<double_identity_plus> attn;
    const row_matrix<double> x = test::uniform<double>(3, 2, 1);
    const row_matrix<double> out = attn(x, x, x);
    const auto [ref, bound] = test::reference_and_bound(attn, x, x, x);
    const double err = test::abs_error(out, ref);
    CAPTURE(err, bound);
    REQUIRE(err <= bound);
}

TEST_CASE("toeplitz_choice returns the algorithm forward runs", "[validation][toeplitz]")
{
    options<double> o;
    const elu_toeplitz attn({}, toeplitz(1, 4, 3), o);
    // Short sequences: dense; long ones with a short band: banded (the cost model, detail::toeplitz_resolve).
    for (const linrpe::index n : {linrpe::index(1), linrpe::index(16), linrpe::index(4096)}) {
        const toeplitz_algorithm got = attn.toeplitz_choice(n, n, 8, 8);
        CAPTURE(n, int(got));
        const auto w = attn.positional().mixing_weights<double>(0, 1 - n, n - 1);
        REQUIRE(got == detail::toeplitz_resolve<double>(toeplitz_algorithm::automatic, w, n, n, attn.encoded_dim(8), 9, 0, false));
        REQUIRE(got != toeplitz_algorithm::automatic);
    }
    REQUIRE(attn.toeplitz_choice(8192, 8192, 8, 8) == toeplitz_algorithm::banded);
    for (const toeplitz_algorithm forced : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded}) {
        o.toeplitz = forced;
        REQUIRE(elu_toeplitz({}, toeplitz(1, 4, 3), o).toeplitz_choice(100, 100, 8, 8) == forced);
    }
    throws_naming([&] { attn.toeplitz_choice(-1, 3, 8, 8); }, "toeplitz_choice rows");
    throws_naming([&] { attn.toeplitz_choice(3, 3, 8, 8, 1); }, "head");
    // Without sequence mixing the option is returned unchanged (and unused).
    REQUIRE(elu().toeplitz_choice(10, 10, 4, 4) == toeplitz_algorithm::automatic);
}
} // namespace test_validation
