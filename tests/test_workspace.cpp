// Workspace reuse: scratch that persists across calls never changes a result, is bounded by the block
// sizes (not by N) on the linear paths, serves concurrent calls correctly, and can be released.
#include "support.hpp"

#include <thread>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_workspace {

namespace {
using namespace linrpe;

template <class S>
linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S> make(masking mask, int threads)
{
    options<S> opt;
    opt.mask = mask;
    opt.norm = normalization::rms;
    opt.threads = threads;
    opt.segment_rows = 512; // several segments on the causal path, so several arenas are used in parallel
    return linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>({}, positional::lrpe<S>(lrpe_kind::cosine, 8, 2), opt);
}
} // namespace

TEMPLATE_TEST_CASE("a reused workspace gives the bits of a fresh one", "[workspace]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    for (const masking mask : {masking::none, masking::causal}) {
        CAPTURE(int(mask));
        const auto attn = make<S>(mask, 2);
        const linrpe::index b = 1, h = 2, n = 1500, d = 8, e = 5;
        const row_matrix<S> q = test::uniform<S>(b * h * n, d, 1), k = test::uniform<S>(b * h * n, d, 2),
                            v = test::uniform<S>(b * h * n, e, 3);
        const auto call = [&](workspace<S>* ws, linrpe::index tokens) {
            row_matrix<S> out = row_matrix<S>::Constant(b * h * tokens, e, S(7));
            const auto qv = view_bhnd<const S>(q.data(), b, h, tokens, d), kv = view_bhnd<const S>(k.data(), b, h, tokens, d);
            const auto vv = view_bhnd<const S>(v.data(), b, h, tokens, e);
            if (ws) attn.forward(qv, kv, vv, view_bhnd(out.data(), b, h, tokens, e), 0, *ws);
            else attn.forward(qv, kv, vv, view_bhnd(out.data(), b, h, tokens, e));
            return out;
        };
        workspace<S> mine;
        const row_matrix<S> fresh = call(nullptr, n);
        call(&mine, 700); // leaves other shapes' data behind in the arenas
        const row_matrix<S> reused = call(&mine, n);
        const row_matrix<S> own_again = call(nullptr, n);
        REQUIRE(test::bit_identical(fresh, reused));
        REQUIRE(test::bit_identical(fresh, own_again));
        REQUIRE(mine.capacity_bytes() > 0);
        mine.release();
        REQUIRE(mine.capacity_bytes() == 0);
        REQUIRE(test::bit_identical(fresh, call(&mine, n)));
    }
}

TEST_CASE("the linear paths' workspace does not grow with N", "[workspace]")
{
    for (const masking mask : {masking::none, masking::causal}) {
        CAPTURE(int(mask));
        auto attn = make<float>(mask, 1);
        const linrpe::index d = 8, e = 4;
        std::size_t bytes[2];
        const linrpe::index lengths[2] = {2048, 8192};
        for (int i = 0; i < 2; ++i) {
            const row_matrix<float> q = test::uniform<float>(lengths[i], d, 1), v = test::uniform<float>(lengths[i], e, 2);
            row_matrix<float> out(lengths[i], e);
            attn.release_workspace();
            attn.forward(q, q, v, out);
            bytes[i] = attn.workspace_bytes();
        }
        CAPTURE(bytes[0], bytes[1]);
        REQUIRE(bytes[0] > 0);
        REQUIRE(bytes[1] == bytes[0]); // per-block features only: O(block·(M + M')) whatever N is
    }
}

TEST_CASE("concurrent calls on one attention object are correct", "[workspace]")
{
    const auto attn = make<double>(masking::causal, 1);
    const linrpe::index n = 900, d = 8, e = 3;
    const row_matrix<double> q = test::uniform<double>(n, d, 4), k = test::uniform<double>(n, d, 5), v = test::uniform<double>(n, e, 6);
    const row_matrix<double> expected = attn(q, k, v);
    row_matrix<double> outs[4];
    std::vector<std::thread> pool;
    for (auto& o : outs) pool.emplace_back([&] { for (int r = 0; r < 5; ++r) o = attn(q, k, v); });
    for (auto& t : pool) t.join();
    for (const auto& o : outs) REQUIRE(test::bit_identical(o, expected));
}
} // namespace test_workspace
