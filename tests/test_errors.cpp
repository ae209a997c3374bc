// Every invalid input throws linrpe::error naming the argument, and outputs stay untouched.
#include "support.hpp"

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_errors {

namespace {
using namespace linrpe;
using attention = linear_attention<feature_maps::elu_plus_one, positional::none, double>;

template <class F>
void throws_naming(F&& f, const std::string& name)
{
    CAPTURE(name);
    REQUIRE_THROWS_AS(f(), linrpe::error);
    REQUIRE_THROWS_AS(f(), std::invalid_argument);
    REQUIRE_THROWS_WITH(f(), Catch::Contains(name));
}
} // namespace

TEST_CASE("shape errors name the argument and leave the output untouched", "[errors]")
{
    const attention attn;
    const row_matrix<double> q = test::uniform<double>(5, 4, 1), k = test::uniform<double>(6, 4, 2), v = test::uniform<double>(6, 3, 3);
    row_matrix<double> out = row_matrix<double>::Constant(5, 3, 42.0);
    const row_matrix<double> sentinel = out;
    throws_naming([&] { attn.forward(q, test::uniform<double>(6, 5, 4), v, out); }, "k columns");
    throws_naming([&] { attn.forward(q, k, test::uniform<double>(7, 3, 4), out); }, "v rows");
    row_matrix<double> wrong(5, 2);
    throws_naming([&] { attn.forward(q, k, v, wrong); }, "out shape");
    throws_naming([&] { attn.forward(q, k, v, out, -1); }, "head");
    throws_naming([&] { attn.forward(q, k, v, out, 0, -3); }, "first_position");
    REQUIRE(out == sentinel);

    options<double> causal;
    causal.mask = masking::causal;
    const attention c({}, {}, causal);
    throws_naming([&] { c.forward(q, k, v, out); }, "k rows");
    throws_naming([&] { c.forward(q, k.topRows(5), v.topRows(5), out, 0, 2, 3); }, "key first_position");
    REQUIRE(out == sentinel);
}

TEST_CASE("option errors name the option", "[errors]")
{
    for (const double eps : {0.0, -1e-6, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
        options<double> o;
        o.eps = eps;
        throws_naming([&] { attention({}, {}, o); }, "options.eps");
    }
    options<double> o;
    o.chunk_size = 0;
    throws_naming([&] { attention({}, {}, o); }, "options.chunk_size");
    o = {};
    o.threads = -1;
    throws_naming([&] { attention({}, {}, o); }, "options.threads");
    // Signed features under `sum` are refused unless the user opts in.
    throws_naming([&] { linear_attention<feature_maps::identity, positional::none, double>(); }, "options.norm");
    throws_naming([&] { linear_attention<feature_maps::trig_features, positional::none, double>(feature_maps::trig_features(4, 8)); },
                  "options.norm");
    o = {};
    o.allow_signed_normalizer = true;
    REQUIRE_NOTHROW(linear_attention<feature_maps::identity, positional::none, double>({}, {}, o));
    attention a;
    options<double> bad;
    bad.eps = -1;
    throws_naming([&] { a.set_options(bad); }, "options.eps");
}

TEST_CASE("feature-map parameter errors name the parameter", "[errors]")
{
    throws_naming([] { feature_maps::favor(4, 0); }, "favor features");
    throws_naming([] { feature_maps::favor(0, 8); }, "favor input_dim");
    throws_naming([] { feature_maps::favor(4, 8, 0, true, false, 0); }, "favor heads");
    throws_naming([] { feature_maps::trig_features(4, -2); }, "trig_features features");
    throws_naming([] { feature_maps::relu(-1.0); }, "relu shift");
    throws_naming([] { feature_maps::relu(std::numeric_limits<double>::quiet_NaN()); }, "relu shift");
    const linear_attention<feature_maps::favor, positional::none, double> attn(feature_maps::favor(4, 8, 0, true, false, 2));
    const row_matrix<double> x = test::uniform<double>(3, 5, 1), v = test::uniform<double>(3, 2, 2);
    throws_naming([&] { attn(x, x, v); }, "favor input_dim");
    const row_matrix<double> y = test::uniform<double>(3, 4, 1);
    throws_naming([&] { attn(y, y, v, 2); }, "head");
    REQUIRE_NOTHROW(attn(y, y, v, 1));
}

TEST_CASE("view errors name the view", "[errors][batched]")
{
    const attention attn;
    std::vector<double> q(2 * 3 * 4 * 5, 0.1), k(q), v(2 * 3 * 4 * 2, 0.2), out(v.size(), 7.0);
    const auto sentinel = out;
    const auto qv = view_bhnd<const double>(q.data(), 2, 3, 4, 5), kv = view_bhnd<const double>(k.data(), 2, 3, 4, 5);
    const auto vv = view_bhnd<const double>(v.data(), 2, 3, 4, 2);
    throws_naming([&] { attn.forward(qv, view_bhnd<const double>(k.data(), 2, 2, 4, 5), vv, view_bhnd(out.data(), 2, 3, 4, 2)); }, "k view extents");
    throws_naming([&] { attn.forward(qv, kv, view_bhnd<const double>(v.data(), 1, 3, 4, 2), view_bhnd(out.data(), 2, 3, 4, 2)); }, "v view extents");
    throws_naming([&] { attn.forward(qv, kv, vv, view_bhnd(out.data(), 2, 3, 3, 2)); }, "out view extents");
    throws_naming([&] { attn.forward(qv, kv, view_bhnd<const double>(v.data(), 2, 3, 3, 2), view_bhnd(out.data(), 2, 3, 4, 2)); }, "v rows");
    const tensor_view<const double> strided(q.data(), 2, 3, 4, 5, 60, 20, 5, 2);
    throws_naming([&] { attn.forward(strided, kv, vv, view_bhnd(out.data(), 2, 3, 4, 2)); }, "q view");
    const tensor_view<const double> overlapping(q.data(), 2, 3, 4, 5, 60, 20, 3, 1);
    throws_naming([&] { attn.forward(overlapping, kv, vv, view_bhnd(out.data(), 2, 3, 4, 2)); }, "token stride");
    const tensor_view<const double> negative(q.data(), 2, 3, -4, 5, 60, 20, 5, 1);
    throws_naming([&] { attn.forward(negative, kv, vv, view_bhnd(out.data(), 2, 3, 4, 2)); }, "q view");
    throws_naming([&] { attn.forward(tensor_view<const double>(nullptr, 2, 3, 4, 5, 60, 20, 5, 1), kv, vv, view_bhnd(out.data(), 2, 3, 4, 2)); },
                  "q view");
    REQUIRE(out == sentinel);
}

TEST_CASE("decoder errors name the argument", "[errors][decoder]")
{
    const attention non_causal;
    throws_naming([&] { non_causal.decoder(); }, "options.mask");
    options<double> o;
    o.mask = masking::causal;
    const attention attn({}, {}, o);
    throws_naming([&] { attn.decoder(0, 1); }, "decoder batch");
    throws_naming([&] { attn.decoder(1, 0); }, "decoder heads");
    auto dec = attn.decoder(1, 2);
    std::vector<double> q(2 * 3 * 4, 0.1), v(2 * 3 * 2, 0.3), out(v.size(), 5.0);
    const auto sentinel = out;
    throws_naming([&] {
        dec.step(view_bhnd<const double>(q.data(), 1, 2, 3, 4), view_bhnd<const double>(q.data(), 1, 2, 3, 4),
                 view_bhnd<const double>(v.data(), 1, 2, 3, 2), view_bhnd(out.data(), 1, 2, 3, 2));
    }, "q view tokens");
    throws_naming([&] {
        dec.prefill(view_bhnd<const double>(q.data(), 2, 1, 3, 4), view_bhnd<const double>(q.data(), 2, 1, 3, 4),
                    view_bhnd<const double>(v.data(), 2, 1, 3, 2), view_bhnd(out.data(), 2, 1, 3, 2));
    }, "q view (decoder)");
    dec.prefill(view_bhnd<const double>(q.data(), 1, 2, 3, 4), view_bhnd<const double>(q.data(), 1, 2, 3, 4),
                view_bhnd<const double>(v.data(), 1, 2, 3, 2), view_bhnd(out.data(), 1, 2, 3, 2));
    REQUIRE(dec.position() == 3);
    std::vector<double> q3(2 * 3, 0.1), o1(2 * 2, 9.0);
    throws_naming([&] {
        dec.step(view_bhnd<const double>(q3.data(), 1, 2, 1, 3), view_bhnd<const double>(q3.data(), 1, 2, 1, 3),
                 view_bhnd<const double>(v.data(), 1, 2, 1, 2), view_bhnd(o1.data(), 1, 2, 1, 2));
    }, "q view channels");
    REQUIRE(dec.position() == 3);
    REQUIRE(o1 == std::vector<double>(4, 9.0));
    row_matrix<double> m(1, 4), mo(1, 2);
    throws_naming([&] { dec.step(m, m, mo, mo); }, "decoder batch x heads");
}
} // namespace test_errors
