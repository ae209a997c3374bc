// Gradients, properties: causal gradients never read the wrong side (bit-exactly), chunk sizes and segment
// splits agree with the reference, batched views (both layouts) and thread counts, the workspace, a
// feature-side encoding with VJP hooks, and bad input.
#include "support_backward.hpp"
#include "support_learned.hpp"

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_backward_properties {

namespace {
using namespace linrpe;
using linrpe::index;

template <class S>
struct head_grads {
    row_matrix<S> dq, dk, dv;
};

template <class Attention, class S>
head_grads<S> run(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v,
                  const row_matrix<S>& dout)
{
    head_grads<S> g{row_matrix<S>(q.rows(), q.cols()), row_matrix<S>(k.rows(), k.cols()), row_matrix<S>(v.rows(), v.cols())};
    attn.backward(q, k, v, dout, g.dq, g.dk, g.dv);
    return g;
}

// Compares one configuration with the reference within the derived bound (support_backward.hpp).
template <class S, class Map>
void require_reference(const linear_attention<Map, positional::none, S>& attn, const row_matrix<S>& q, const row_matrix<S>& k,
                       const row_matrix<S>& v, const row_matrix<S>& dout, const head_grads<S>& g)
{
    test::require_within(g.dq, g.dk, g.dv, test::reference_backward(attn, q, k, v, dout));
}
} // namespace

TEMPLATE_TEST_CASE("causal gradients: dK_j, dV_j ignore dOut before j; dQ_i ignores tokens after i (bit-exact)",
                   "[backward][causal]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 300, d = 6, e = 5, t = 137; // t inside a chunk and a segment
    int checked = 0;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
        for (const linrpe::index segment_rows : {linrpe::index(64), linrpe::index(4096)}) { // split into segments, or one pass
            options<S> opt;
            opt.mask = masking::causal;
            opt.norm = norm;
            opt.chunk_size = 16;
            opt.segment_rows = segment_rows;
            const linear_attention<feature_maps::favor, positional::none, S> attn(feature_maps::favor(d, 12, 9), {}, opt);
            const row_matrix<S> q = test::uniform<S>(n, d, 1, 0.5), k = test::uniform<S>(n, d, 2, 0.5), v = test::uniform<S>(n, e, 3),
                                dout = test::uniform<S>(n, e, 4);
            const auto base = run(attn, q, k, v, dout);
            CAPTURE(int(norm), segment_rows);
            // dOut rows before t change: dK_j, dV_j for j >= t keep their bits.
            row_matrix<S> dout2 = dout;
            dout2.topRows(t) = test::uniform<S>(t, e, 5, 100.0);
            const auto past = run(attn, q, k, v, dout2);
            REQUIRE(test::bit_identical(row_matrix<S>(base.dk.bottomRows(n - t)), row_matrix<S>(past.dk.bottomRows(n - t))));
            REQUIRE(test::bit_identical(row_matrix<S>(base.dv.bottomRows(n - t)), row_matrix<S>(past.dv.bottomRows(n - t))));
            REQUIRE(!test::bit_identical(base.dk, past.dk)); // the change does reach the earlier keys
            // Every token after t changes (queries, keys, values, dOut): dQ_i for i <= t keeps its bits.
            row_matrix<S> q3 = q, k3 = k, v3 = v, dout3 = dout;
            q3.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, d, 6, 3.0);
            k3.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, d, 7, 3.0);
            v3.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, e, 8, 50.0);
            dout3.bottomRows(n - t - 1) = test::uniform<S>(n - t - 1, e, 9, 50.0);
            const auto future = run(attn, q3, k3, v3, dout3);
            REQUIRE(test::bit_identical(row_matrix<S>(base.dq.topRows(t + 1)), row_matrix<S>(future.dq.topRows(t + 1))));
            REQUIRE(!test::bit_identical(base.dq, future.dq));
            ++checked;
        }
    REQUIRE(checked == 6);
}

TEMPLATE_TEST_CASE("causal backward: chunk sizes and segment splits agree with the reference", "[backward][causal]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index d = 6, e = 5;
    int checked = 0;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
        for (const linrpe::index n : {linrpe::index(65), linrpe::index(300)}) {
            const row_matrix<S> q = test::uniform<S>(n, d, 11, 0.5), k = test::uniform<S>(n, d, 12, 0.5), v = test::uniform<S>(n, e, 13),
                                dout = test::uniform<S>(n, e, 14);
            // C = 32: {1, C − 1, C, C + 1, >= N} with one pass, then segment splits at C = 16.
            for (const auto& cs : {std::pair<linrpe::index, linrpe::index>{1, 4096}, {31, 4096}, {32, 4096}, {33, 4096}, {2000, 4096}, {16, 1},
                                   {16, 64}, {16, 100}, {16, 200}}) {
                options<S> opt;
                opt.mask = masking::causal;
                opt.norm = norm;
                opt.chunk_size = cs.first;
                opt.segment_rows = cs.second;
                const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
                CAPTURE(int(norm), n, cs.first, cs.second);
                require_reference(attn, q, k, v, dout, run(attn, q, k, v, dout));
                ++checked;
            }
        }
    // Segments of two blocks (C = 32: blocks of 512 rows, segments of 1024): the suffix state crosses a block
    // boundary inside a segment, and the later segment's share is added to dk, dv after the VJP; eps ≠ default.
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        const linrpe::index n = 1100;
        const row_matrix<S> q = test::uniform<S>(n, d, 15, 0.5), k = test::uniform<S>(n, d, 16, 0.5), v = test::uniform<S>(n, e, 17),
                            dout = test::uniform<S>(n, e, 18);
        options<S> opt;
        opt.mask = masking::causal;
        opt.norm = norm;
        opt.segment_rows = 1024;
        opt.eps = S(0.25);
        const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
        CAPTURE(int(norm), n);
        require_reference(attn, q, k, v, dout, run(attn, q, k, v, dout));
        ++checked;
    }
    REQUIRE(checked == 57);
}

TEMPLATE_TEST_CASE("batched backward: both layouts equal the reference; thread counts 1, 2, 3 bit-identical",
                   "[backward][batched]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index b = 2, h = 3, d = 6, e = 5;
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal})
        for (const bool bnhd : {false, true}) {
            // causal: 300 tokens in segments of 64 (B·H = 6 < 8 sequences: the segments take the threads);
            // non-causal: 1100 queries (three blocks) against 1030 keys.
            const linrpe::index n = mask == masking::causal ? 300 : 1100, nk = mask == masking::causal ? n : 1030;
            const auto make = [&](linrpe::index tokens, linrpe::index width, std::uint32_t seed, double scale) {
                const row_matrix<S> flat = test::uniform<S>(b * h * tokens, width, seed, scale);
                return std::vector<S>(flat.data(), flat.data() + flat.size());
            };
            const std::vector<S> q = make(n, d, 21, 0.5), k = make(nk, d, 22, 0.5), v = make(nk, e, 23, 1.0), dout = make(n, e, 24, 1.0);
            const auto view = [&](auto* p, linrpe::index tokens, linrpe::index width) {
                return bnhd ? view_bnhd(p, b, tokens, h, width) : view_bhnd(p, b, h, tokens, width);
            };
            std::vector<std::vector<S>> results;
            for (const int threads : {1, 2, 3}) {
                options<S> opt;
                opt.mask = mask;
                opt.segment_rows = 64;
                opt.threads = threads;
                const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
                std::vector<S> dq(q.size()), dk(k.size()), dv(v.size());
                attn.backward(view(q.data(), n, d), view(k.data(), nk, d), view(v.data(), nk, e), view(dout.data(), n, e),
                              view(dq.data(), n, d), view(dk.data(), nk, d), view(dv.data(), nk, e));
                std::vector<S> all(dq);
                all.insert(all.end(), dk.begin(), dk.end());
                all.insert(all.end(), dv.begin(), dv.end());
                results.push_back(all);
                if (threads == 1) {
                    for (linrpe::index bb = 0; bb < b; ++bb)
                        for (linrpe::index hh = 0; hh < h; ++hh) {
                            const auto slice = [&](const std::vector<S>& x, linrpe::index tokens, linrpe::index width) {
                                return row_matrix<S>(view(x.data(), tokens, width).slice(bb, hh));
                            };
                            CAPTURE(int(mask), bnhd, bb, hh);
                            require_reference(attn, slice(q, n, d), slice(k, nk, d), slice(v, nk, e), slice(dout, n, e),
                                              head_grads<S>{slice(dq, n, d), slice(dk, nk, d), slice(dv, nk, e)});
                        }
                }
            }
            CAPTURE(int(mask), bnhd);
            REQUIRE(results[1] == results[0]);
            REQUIRE(results[2] == results[0]);
            ++checked;
        }
    REQUIRE(checked == 4);
}

TEST_CASE("backward: a caller's workspace gives the same bits as a temporary one, call after call", "[backward]")
{
    options<float> opt;
    opt.mask = masking::causal;
    opt.segment_rows = 64;
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn({}, {}, opt);
    const linrpe::index n = 200;
    const row_matrix<float> q = test::uniform<float>(n, 4, 1), k = test::uniform<float>(n, 4, 2), v = test::uniform<float>(n, 3, 3),
                            dout = test::uniform<float>(n, 3, 4);
    const auto base = run(attn, q, k, v, dout);
    workspace<float> ws;
    for (int call = 0; call < 3; ++call) {
        row_matrix<float> dq(n, 4), dk(n, 4), dv(n, 3);
        attn.backward(q, k, v, dout, dq, dk, dv, 0, 0, 0, &ws);
        REQUIRE(test::bit_identical(dq, base.dq));
        REQUIRE(test::bit_identical(dk, base.dk));
        REQUIRE(test::bit_identical(dv, base.dv));
    }
    REQUIRE(ws.capacity_bytes() > 0);
}

namespace {
// A post-feature encoding with its VJP hook: T(x, s) = (−1)^s x (unitary, its own transpose).
struct alternating {
    using scalar_type = double;
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(linrpe::index max_offset) const { return max_offset == 0; }
    linrpe::index post_output_dim(linrpe::index feature_dim) const { return feature_dim; }
    template <class S>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, linrpe::index first, linrpe::index, role) const
    {
        for (linrpe::index i = 0; i < phi.rows(); ++i) out.row(i) = ((first + i) % 2 ? S(-1) : S(1)) * phi.row(i);
    }
    template <class S>
    void encode_post_backward(const Eigen::Ref<const row_matrix<S>>&, const Eigen::Ref<const row_matrix<S>>& dpsi,
                              Eigen::Ref<row_matrix<S>> dphi, linrpe::index first, linrpe::index, role which, double*) const
    {
        encode_post<S>(dpsi, dphi, first, 0, which);
    }
};
} // namespace

TEST_CASE("parameter gradients of a learned encoding: finite differences, accumulation, batch order, thread counts",
          "[backward][fd][parameters]")
{
    const linrpe::index batch = 2, heads = 2, n = 150, d = 4, e = 3;
    using learned = test::learned_gain<test::stage::pre_feature>; // queries x ⊙ s_h, keys x ⊙ s_h², before the feature map
    learned pe;
    pe.s = 0.5 + test::uniform<double>(heads, d, 9).array().abs();
    const row_matrix<double> q = test::uniform<double>(batch * heads * n, d, 1, 0.5), k = test::uniform<double>(batch * heads * n, d, 2, 0.5),
                             v = test::uniform<double>(batch * heads * n, e, 3), dout = test::uniform<double>(batch * heads * n, e, 4);
    const auto in = [&](const row_matrix<double>& x) { return view_bhnd(x.data(), batch, heads, n, x.cols()); };
    for (const masking mask : {masking::none, masking::causal}) {
        options<double> opt;
        opt.mask = mask;
        opt.chunk_size = 16;
        opt.segment_rows = 64; // several blocks per head: the per-block buffers and their order are exercised
        const auto make = [&](const learned& p, int threads) {
            options<double> o = opt;
            o.threads = threads;
            return linear_attention<feature_maps::elu_plus_one, learned, double>({}, p, o);
        };
        const auto grads = [&](int threads, learned::parameter_gradients& pg) {
            const auto attn = make(pe, threads);
            row_matrix<double> dq(q.rows(), d), dk(k.rows(), d), dv(v.rows(), e);
            attn.backward(in(q), in(k), in(v), in(dout), view_bhnd(dq.data(), batch, heads, n, d), view_bhnd(dk.data(), batch, heads, n, d),
                          view_bhnd(dv.data(), batch, heads, n, e), 5, nullptr, &pg);
        };
        auto pg = make(pe, 1).make_parameter_gradients();
        grads(1, pg);
        for (const int threads : {2, 3}) {
            auto other = make(pe, threads).make_parameter_gradients();
            grads(threads, other);
            CAPTURE(threads);
            REQUIRE(test::bit_identical(other.gain, pg.gain));
        }
        auto twice = pg;
        grads(1, twice); // accumulates: exactly 2·pg (doubling is exact)
        REQUIRE(test::bit_identical(twice.gain, (2.0 * pg.gain).eval()));

        // ⟨pg, U⟩ against central differences of f(a) = ⟨dout, forward(a)⟩ (support_backward.hpp derives the bound).
        const auto f = [&](const row_matrix<double>& a) {
            learned shifted = pe;
            shifted.s = a;
            row_matrix<double> out(q.rows(), e);
            make(shifted, 1).forward(in(q), in(k), in(v), view_bhnd(out.data(), batch, heads, n, e), 5);
            return test::dot(dout, out);
        };
        row_matrix<double> out(q.rows(), e);
        make(pe, 1).forward(in(q), in(k), in(v), view_bhnd(out.data(), batch, heads, n, e), 5);
        // Rounding of f: (D + N + C + 4) terms per output, u each, over Σ|dout||out| <= ‖dout‖‖out‖ (sum: the
        // ratio num/den adds 2 more roundings, inside the factor 2).
        const double f_round = 2.0 * (d + n + 16 + 4) * test::unit_roundoff<double>() * dout.norm() * out.norm();
        const row_matrix<double> u = test::uniform<double>(heads, d, 8);
        CAPTURE(int(mask));
        test::require_fd(test::central_difference([&](double h) { return f(pe.s + h * u); }, test::dot(pg.gain, u), f_round,
                                                  pg.gain.norm() * u.norm(), u.norm() / pe.s.norm()));

        // A gradient value of the wrong shape is refused before anything is written.
        learned::parameter_gradients bad{row_matrix<double>::Zero(heads + 1, d)};
        row_matrix<double> dq = row_matrix<double>::Constant(q.rows(), d, 7.0), dk(k.rows(), d), dv(v.rows(), e);
        REQUIRE_THROWS_AS(make(pe, 1).backward(in(q), in(k), in(v), in(dout), view_bhnd(dq.data(), batch, heads, n, d),
                                               view_bhnd(dk.data(), batch, heads, n, d), view_bhnd(dv.data(), batch, heads, n, e), 5,
                                               nullptr, &bad),
                          linrpe::error);
        REQUIRE((dq.array() == 7.0).all());
    }
}

TEST_CASE("backward through a post-feature encoding with a VJP hook equals finite differences", "[backward][fd]")
{
    int checked = 0;
    for (const masking mask : {masking::none, masking::causal}) {
        options<double> opt;
        opt.mask = mask;
        opt.norm = normalization::rms;
        opt.chunk_size = 4;
        const linear_attention<feature_maps::elu_plus_one, alternating, double> attn({}, {}, opt);
        const linrpe::index n = 11, d = 4, e = 3;
        const row_matrix<double> q = test::uniform<double>(n, d, 1, 0.5), k = test::uniform<double>(n, d, 2, 0.5),
                                 v = test::uniform<double>(n, e, 3), dout = test::uniform<double>(n, e, 4);
        row_matrix<double> dq(n, d), dk(n, d), dv(n, e);
        attn.backward(q, k, v, dout, dq, dk, dv, 0, 3);
        const auto f = [&](const row_matrix<double>& qq, const row_matrix<double>& kk, const row_matrix<double>& vv) {
            return test::dot(dout, attn(qq, kk, vv, 0, 3));
        };
        // Rounding of f: the forward's terms (M + N + C + 4) times u over Σ|dout| |out| <= ‖dout‖ ‖out‖ · 2 (rms).
        const row_matrix<double> out = attn(q, k, v, 0, 3);
        const double f_round = 2.0 * (d + n + 8) * test::unit_roundoff<double>() * dout.norm() * out.norm() * 4.0;
        const row_matrix<double> uq = test::uniform<double>(n, d, 5), uk = test::uniform<double>(n, d, 6), uv = test::uniform<double>(n, e, 7);
        CAPTURE(int(mask));
        test::require_fd(test::central_difference([&](double h) { return f(q + h * uq, k, v); }, test::dot(dq, uq), f_round,
                                                  dq.norm() * uq.norm(), uq.norm() / q.norm()));
        test::require_fd(test::central_difference([&](double h) { return f(q, k + h * uk, v); }, test::dot(dk, uk), f_round,
                                                  dk.norm() * uk.norm(), uk.norm() / k.norm()));
        test::require_fd(test::central_difference([&](double h) { return f(q, k, v + h * uv); }, test::dot(dv, uv), f_round,
                                                  dv.norm() * uv.norm(), uv.norm() / v.norm()));
        ++checked;
    }
    REQUIRE(checked == 2);
}

namespace {
template <class F>
void require_error_naming(const F& call, const std::string& argument)
{
    try {
        call();
    } catch (const linrpe::error& err) {
        CAPTURE(err.what(), argument);
        REQUIRE(std::string(err.what()).find(argument) != std::string::npos);
        return;
    }
    FAIL("no linrpe::error for " << argument);
}
} // namespace

TEST_CASE("backward: bad shapes and views throw linrpe::error naming the argument; outputs untouched", "[backward][errors]")
{
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> attn;
    const linrpe::index n = 8, nk = 6, d = 4, e = 3;
    const row_matrix<float> q = test::uniform<float>(n, d, 1), k = test::uniform<float>(nk, d, 2), v = test::uniform<float>(nk, e, 3),
                            dout = test::uniform<float>(n, e, 4);
    row_matrix<float> dq = row_matrix<float>::Constant(n, d, 7.f), dk = row_matrix<float>::Constant(nk, d, 7.f),
                      dv = row_matrix<float>::Constant(nk, e, 7.f);
    const auto untouched = [&] {
        REQUIRE((dq.array() == 7.f).all());
        REQUIRE((dk.array() == 7.f).all());
        REQUIRE((dv.array() == 7.f).all());
    };
    row_matrix<float> wrong_dout(n + 1, e), wrong_dq(n, d + 1), wrong_dk(nk - 1, d), wrong_dv(nk, e + 2), wrong_v(nk + 1, e);
    require_error_naming([&] { attn.backward(q, k, v, wrong_dout, dq, dk, dv); }, "dout shape");
    require_error_naming([&] { attn.backward(q, k, wrong_v, dout, dq, dk, dv); }, "v rows");
    untouched();
    require_error_naming([&] { attn.backward(q, k, v, dout, wrong_dq, dk, dv); }, "dq shape");
    require_error_naming([&] { attn.backward(q, k, v, dout, dq, wrong_dk, dv); }, "dk shape");
    require_error_naming([&] { attn.backward(q, k, v, dout, dq, dk, wrong_dv); }, "dv shape");
    untouched();

    // Batched: (B, H) = (1, 2).
    std::vector<float> bq(2 * n * d, 0.5f), bk(2 * nk * d, 0.5f), bv(2 * nk * e, 0.5f), bd(2 * n * e, 1.f);
    std::vector<float> gq(2 * n * d, 7.f), gk(2 * nk * d, 7.f), gv(2 * nk * e, 7.f);
    const auto cview = [](const std::vector<float>& x, linrpe::index t, linrpe::index c) { return view_bhnd(x.data(), 1, 2, t, c); };
    const auto mview = [](std::vector<float>& x, linrpe::index t, linrpe::index c) { return view_bhnd(x.data(), 1, 2, t, c); };
    const auto all_seven = [&] {
        for (const auto* g : {&gq, &gk, &gv})
            for (const float x : *g) REQUIRE(x == 7.f);
    };
    require_error_naming([&] { attn.backward(cview(bq, n, d), cview(bk, nk, d), cview(bv, nk, e), view_bhnd(bd.data(), 1, 2, n - 1, e),
                                             mview(gq, n, d), mview(gk, nk, d), mview(gv, nk, e)); },
                         "dout view extents");
    require_error_naming([&] { attn.backward(cview(bq, n, d), cview(bk, nk, d), cview(bv, nk, e), cview(bd, n, e),
                                             view_bhnd(gq.data(), 1, 2, n, d - 1), mview(gk, nk, d), mview(gv, nk, e)); },
                         "dq view");
    require_error_naming([&] { attn.backward(cview(bq, n, d), cview(bk, nk, d), cview(bv, nk, e), cview(bd, n, e),
                                             mview(gq, n, d), view_bhnd(gk.data(), 1, 1, nk, d), mview(gv, nk, e)); },
                         "dk view");
    const tensor_view<float> strided(gv.data(), 1, 2, nk, e, 2 * nk * e, nk * e, e, 2); // channel stride 2
    require_error_naming([&] { attn.backward(cview(bq, n, d), cview(bk, nk, d), cview(bv, nk, e), cview(bd, n, e),
                                             mview(gq, n, d), mview(gk, nk, d), strided); },
                         "dv view");
    const tensor_view<const float> bad_dout(bd.data(), 1, 2, n, e, 2 * n * e, n * e, e, 3);
    require_error_naming([&] { attn.backward(cview(bq, n, d), cview(bk, nk, d), cview(bv, nk, e), bad_dout,
                                             mview(gq, n, d), mview(gk, nk, d), mview(gv, nk, e)); },
                         "dout view");
    all_seven();
}
} // namespace test_backward_properties
