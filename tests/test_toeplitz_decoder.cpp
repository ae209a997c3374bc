// Streaming decoder with Toeplitz weights: band history of the last T_max tokens plus a lagged far state
// (finite T_max), or the whole history (T_max beyond the sequence); prefill + steps == one batched call.
#include "support_toeplitz.hpp"

#include <linrpe/decoder.hpp>
#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/compose.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

#include <catch2/catch.hpp>

#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_toeplitz_decoder {

namespace {
using namespace linrpe;
using linrpe::index;
using namespace toeplitz_test;

template <class S>
using elu_toeplitz = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<S>, S>;

template <class S>
std::vector<S> values(index count, std::uint64_t seed)
{
    const row_matrix<S> r = uniform<S>(1, count, seed);
    return std::vector<S>(r.data(), r.data() + count);
}

// Both sides compute the same sums in different orders (history blocks and far state vs one pass): each
// within 8·(N + M)·eps of the exact value (see test_toeplitz_attention), so within twice that of each other.
double bound(double e, index n, index m) { return 16.0 * e * double(2 * n + m); }

TEMPLATE_TEST_CASE("Toeplitz decoder: prefill + steps equals the batched causal call", "[toeplitz][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, h = 2, n = 90, d = 6, e = 4;
    const index t_max = GENERATE(1, 7, 40, 500); // 500 > n: the unclipped form, whole history kept
    const toeplitz_algorithm algo = GENERATE(toeplitz_algorithm::automatic, toeplitz_algorithm::dense,
                                             toeplitz_algorithm::fft, toeplitz_algorithm::banded);
    const normalization norm = GENERATE(normalization::sum, normalization::rms);
    options<S> opt;
    opt.mask = masking::causal;
    opt.toeplitz = algo;
    opt.norm = norm;
    positional::toeplitz_rpe<S> pe(h, t_max);
    pe.bias = uniform<S>(h, 2 * t_max - 1, 5 + t_max);
    const elu_toeplitz<S> attn({}, pe, opt);

    // (B, N, H, D) buffers, as a fused projection lays them out.
    const auto q = values<S>(b * n * h * d, 1), k = values<S>(b * n * h * d, 2), v = values<S>(b * n * h * e, 3);
    std::vector<S> full(b * n * h * e), streamed(full.size());
    attn.forward(view_bnhd(q.data(), b, n, h, d), view_bnhd(k.data(), b, n, h, d), view_bnhd(v.data(), b, n, h, e),
                 view_bnhd(full.data(), b, n, h, e));

    // Token range [t0, t1) of a (B, N, H, W) buffer as a (B, H, t1 − t0, W) view.
    const auto range = [&](auto* data, index t0, index t1, index w) {
        using T = std::remove_pointer_t<decltype(data)>;
        return tensor_view<T>(data + t0 * h * w, b, h, t1 - t0, w, n * h * w, w, h * w, 1);
    };
    auto dec = attn.decoder(b, h);
    // Two prefills (30 and 25 tokens: the second starts at position 30 with history), then single steps.
    index t = 0;
    for (const index chunk : {index(30), index(25)}) {
        dec.prefill(range(q.data(), t, t + chunk, d), range(k.data(), t, t + chunk, d), range(v.data(), t, t + chunk, e),
                    range(streamed.data(), t, t + chunk, e));
        t += chunk;
    }
    for (; t < n; ++t)
        dec.step(range(q.data(), t, t + 1, d), range(k.data(), t, t + 1, d), range(v.data(), t, t + 1, e),
                 range(streamed.data(), t, t + 1, e));
    CHECK(dec.position() == n);
    const Eigen::Map<const row_matrix<S>> a(full.data(), b * n * h, e), s(streamed.data(), b * n * h, e);
    const double err = rel_err(s, a), tol = bound(eps<S>(), n, d);
    CAPTURE(t_max, int(algo), int(norm), err, tol);
    CHECK(s.allFinite());
    CHECK(err <= tol);
}

TEMPLATE_TEST_CASE("Toeplitz decoder: single-sequence steps, reset, compose", "[toeplitz][decoder]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 60, d = 5, e = 3, t_max = 9;
    options<S> opt;
    opt.mask = masking::causal;
    using pe_t = positional::compose<positional::none, positional::toeplitz_rpe<S>>;
    positional::toeplitz_rpe<S> rpe(1, t_max);
    rpe.bias = uniform<S>(1, 2 * t_max - 1, 17);
    const linear_attention<feature_maps::elu_plus_one, pe_t, S> attn({}, pe_t(positional::none(), rpe), opt);
    const row_matrix<S> q = uniform<S>(n, d, 11), k = uniform<S>(n, d, 12), v = uniform<S>(n, e, 13);
    const row_matrix<S> full = attn(q, k, v);
    auto dec = attn.decoder();
    row_matrix<S> out(n, e);
    for (int pass = 0; pass < 2; ++pass) { // the second pass after reset() must repeat the first exactly
        row_matrix<S> step_out(1, e);
        for (index t = 0; t < n; ++t) {
            dec.step(q.row(t), k.row(t), v.row(t), step_out);
            out.row(t) = step_out;
        }
        const double err = rel_err(out, full), tol = bound(eps<S>(), n, d);
        CAPTURE(pass, err, tol);
        CHECK(err <= tol);
        dec.reset();
        CHECK(dec.position() == 0);
    }
}

} // namespace

namespace {
using namespace linrpe;
using linrpe::index;
using namespace toeplitz_test;

TEMPLATE_TEST_CASE("Toeplitz decoder: past outputs of prefills and steps are bit-identical whatever the future holds",
                   "[toeplitz][decoder][causal][leak]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index n = 300, d = 6, e = 4;
    const index t_max = GENERATE(7, 500); // a far state, and the whole history kept
    const normalization norm = GENERATE(normalization::sum, normalization::none, normalization::rms);
    for (const toeplitz_algorithm algo : {toeplitz_algorithm::automatic, toeplitz_algorithm::dense, toeplitz_algorithm::fft,
                                          toeplitz_algorithm::banded}) {
        options<S> opt;
        opt.mask = masking::causal;
        opt.toeplitz = algo;
        opt.norm = norm;
        positional::toeplitz_rpe<S> pe(1, t_max);
        pe.bias = uniform<S>(1, 2 * t_max - 1, 21 + t_max);
        const elu_toeplitz<S> attn({}, pe, opt);
        // Prefills of 100 and 150 tokens (the second with history), then single steps.
        const auto decode = [&](const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v) {
            auto dec = attn.decoder();
            row_matrix<S> out(n, e);
            index t = 0;
            for (const index chunk : {index(100), index(150)}) {
                row_matrix<S> o(chunk, e);
                dec.prefill(q.middleRows(t, chunk), k.middleRows(t, chunk), v.middleRows(t, chunk), o);
                out.middleRows(t, chunk) = o;
                t += chunk;
            }
            for (row_matrix<S> o(1, e); t < n; ++t) {
                dec.step(q.row(t), k.row(t), v.row(t), o);
                out.row(t) = o;
            }
            return out;
        };
        CAPTURE(t_max, int(norm), int(algo));
        // t inside the first prefill and inside the second (future tokens in the same call as t); the
        // steps after them see no future at all.
        for (const index t : {index(40), index(137)}) CHECK(check_no_leak<S>(decode, n, d, e, t) > 0);
    }
}

} // namespace
} // namespace test_toeplitz_decoder
