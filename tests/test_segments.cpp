// Long heads cut into segments (options::segment_rows): the causal core's parallel segments and the banded
// Toeplitz mixer's fused segments (key windows plus far states behind / ahead), against the exact O(N²)
// reference, for segment sizes from 1 row to more than N, offsets that put keys before, inside and beyond
// the queries' band, and bit-identical results for any thread count in both threading regimes (also for
// the dense and FFT Toeplitz mixers, which thread inside a head).
#include "support.hpp"

#include <linrpe/positional/toeplitz_rpe.hpp>

#include <array>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_segments {

namespace {
using namespace linrpe;

template <class S>
positional::toeplitz_rpe<S> random_rpe(linrpe::index heads, linrpe::index t_max, unsigned seed)
{
    positional::toeplitz_rpe<S> pe(heads, t_max);
    pe.bias = test::uniform<S>(heads, 2 * t_max - 1, seed, 1.0);
    return pe;
}

template <class S>
using elu_toeplitz = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;
} // namespace

TEMPLATE_TEST_CASE("banded Toeplitz by segments equals the reference", "[segments][toeplitz]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 300, d = 6, e = 4;
    // (q_first, k_first, extra keys): keys overlapping the queries; keys starting 200 positions before them
    // (the first window starts inside the keys, so segment 0 has a far state behind); keys starting 500
    // after them (with T_max = 3 every key is far ahead: empty windows, only the ahead states count).
    const std::array<std::array<linrpe::index, 3>, 3> placements{{{3, 10, 50}, {200, 0, 90}, {0, 500, 20}}};
    int compared = 0;
    for (const bool causal : {false, true})
        for (const normalization norm : {normalization::sum, normalization::rms})
            for (const linrpe::index t_max : {linrpe::index(3), linrpe::index(40)})
                for (const auto& place : placements) {
                    if (causal && place[2] != 50) continue; // causal: same positions for queries and keys
                    const linrpe::index q_first = causal ? 7 : place[0], k_first = causal ? 7 : place[1];
                    const linrpe::index nk = causal ? n : n + place[2];
                    const row_matrix<S> q = test::uniform<S>(n, d, 1, 0.5), k = test::uniform<S>(nk, d, 2, 0.5),
                                        v = test::uniform<S>(nk, e, 3);
                    for (const linrpe::index segment : {linrpe::index(1), linrpe::index(37), linrpe::index(64),
                                                        linrpe::index(100), linrpe::index(1000)}) {
                        options<S> opt;
                        opt.mask = causal ? masking::causal : masking::none;
                        opt.norm = norm;
                        opt.toeplitz = toeplitz_algorithm::banded;
                        opt.segment_rows = segment;
                        const elu_toeplitz<S> attn({}, random_rpe<S>(2, t_max, 40 + unsigned(t_max)), opt);
                        row_matrix<S> out(n, e);
                        attn.forward(q, k, v, out, 1, q_first, k_first);
                        const auto [ref, bound] = test::reference_and_bound(attn, q, k, v, 1, q_first, k_first);
                        const double err = test::abs_error(out, ref);
                        CAPTURE(causal, int(norm), t_max, q_first, k_first, nk, segment, err, bound);
                        REQUIRE(err <= bound);
                        ++compared;
                    }
                }
    REQUIRE(compared == 2 * 2 * 3 * 5 + 2 * 2 * 1 * 5);
}

TEMPLATE_TEST_CASE("segmented heads are bit-identical for 1, 2 and 3 threads", "[segments][threads]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    // One sequence per call (segments run in parallel) and 2 x 4 sequences (threads take whole heads, the
    // segments of each head run in order): both must not depend on the thread count.
    const linrpe::index n = 500, d = 5, e = 3;
    for (const auto& shape : {std::array<linrpe::index, 2>{1, 1}, std::array<linrpe::index, 2>{2, 4}}) {
        const linrpe::index b = shape[0], h = shape[1];
        const row_matrix<S> q = test::uniform<S>(b * h * n, d, 11, 0.5), k = test::uniform<S>(b * h * n, d, 12, 0.5),
                            v = test::uniform<S>(b * h * n, e, 13);
        // none: the core without weights; then Toeplitz mixing by each algorithm (dense threads over row
        // blocks, FFT over value columns, banded over segments).
        for (const bool causal : {false, true})
            for (const int variant : {0, 1, 2, 3}) {
                const bool toeplitz = variant > 0;
                std::vector<row_matrix<S>> outs;
                for (const int threads : {1, 2, 3}) {
                    options<S> opt;
                    opt.mask = causal ? masking::causal : masking::none;
                    opt.toeplitz = variant == 1 ? toeplitz_algorithm::dense
                                   : variant == 2 ? toeplitz_algorithm::fft
                                                  : toeplitz_algorithm::banded;
                    opt.segment_rows = 64;
                    opt.chunk_size = 16;
                    opt.threads = threads;
                    row_matrix<S> out(b * h * n, e);
                    const auto view = [&](const row_matrix<S>& m, linrpe::index w) { return view_bhnd(m.data(), b, h, n, w); };
                    if (toeplitz) {
                        const elu_toeplitz<S> attn({}, random_rpe<S>(h, 20, 14), opt);
                        attn.forward(view(q, d), view(k, d), view(v, e), view_bhnd(out.data(), b, h, n, e));
                    } else {
                        const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
                        attn.forward(view(q, d), view(k, d), view(v, e), view_bhnd(out.data(), b, h, n, e));
                    }
                    outs.push_back(out);
                }
                CAPTURE(b, h, causal, variant);
                REQUIRE(test::bit_identical(outs[0], outs[1]));
                REQUIRE(test::bit_identical(outs[0], outs[2]));
            }
    }
}

TEMPLATE_TEST_CASE("causal core: every segment size agrees with the reference", "[segments][causal]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const linrpe::index n = 700, d = 6, e = 4;
    const row_matrix<S> q = test::uniform<S>(n, d, 21, 0.5), k = test::uniform<S>(n, d, 22, 0.5), v = test::uniform<S>(n, e, 23);
    int compared = 0;
    for (const linrpe::index segment : {linrpe::index(1), linrpe::index(33), linrpe::index(512), linrpe::index(699),
                                        linrpe::index(5000)}) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.segment_rows = segment;
        const linear_attention<feature_maps::elu_plus_one, positional::none, S> attn({}, {}, opt);
        const row_matrix<S> out = attn(q, k, v);
        const auto [ref, bound] = test::reference_and_bound(attn, q, k, v);
        const double err = test::abs_error(out, ref);
        CAPTURE(segment, err, bound);
        REQUIRE(err <= bound);
        ++compared;
    }
    REQUIRE(compared == 5);
}

TEST_CASE("options.segment_rows must be at least 1", "[segments][errors]")
{
    options<float> opt;
    opt.segment_rows = 0;
    REQUIRE_THROWS_WITH((linear_attention<feature_maps::elu_plus_one>({}, {}, opt)), Catch::Contains("options.segment_rows"));
}
} // namespace test_segments
