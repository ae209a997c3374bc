// Context parallelism over MPI (run by ctest under mpirun with 1, 2 and 3 ranks): every rank holds a
// contiguous shard of one sequence; the result (forward, and the causal backward) must equal the exact
// single-process reference within the derived bound, be bit-identical between two runs, and bad shards must
// raise linrpe::error on every rank.
// CHECK, not REQUIRE, before collectives: a rank that stopped early would leave the others waiting.
#define CATCH_CONFIG_RUNNER
#include "support_backward.hpp"

#include <linrpe/distributed/context_parallel.hpp>

#include <mpi.h>

namespace {
using namespace linrpe;
using linrpe::index;

int world_rank()
{
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int world_size()
{
    int p = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    return p;
}

// Shard lengths of n tokens over p ranks: uneven, and (pattern 1, p >= 2) one rank with no tokens at all.
std::vector<index> shard_lengths(index n, int p, int pattern)
{
    std::vector<index> len(static_cast<std::size_t>(p), 0);
    if (pattern == 0) {
        index left = n;
        for (int r = 0; r < p; ++r) {
            len[r] = r + 1 == p ? left : std::min(left, n / (p + 1) + 3 * r + 1);
            left -= len[r];
        }
    } else {
        len[0] = p > 1 ? 5 : n;
        if (p > 1) len[p - 1] = n - 5; // ranks 1 .. p−2 hold nothing
    }
    return len;
}

// This rank's shard of a sequence of n tokens: its first token and length, and its views of (1, H, N, W)
// buffers of the whole sequence.
template <class S>
struct sharding {
    index n, heads, start = 0, mine = 0;
    sharding(index n_, index heads_, int pattern) : n(n_), heads(heads_)
    {
        const auto len = shard_lengths(n, world_size(), pattern);
        for (int r = 0; r < world_rank(); ++r) start += len[r];
        mine = len[world_rank()];
    }
    tensor_view<const S> view(const row_matrix<S>& x) const
    {
        return tensor_view<const S>(x.data() + start * x.cols(), 1, heads, mine, x.cols(), heads * n * x.cols(), n * x.cols(), x.cols());
    }
};

// Runs `attn` context-parallel over the world and checks this rank's shard against the reference of the
// whole sequence; returns the number of shard rows compared (every rank of every head).
template <class S, class Attention>
index check_sharded(const Attention& attn, index n, index d, index e, index heads, index p0, int pattern)
{
    const int rank = world_rank(), size = world_size();
    const sharding<S> sh(n, heads, pattern);
    const index start = sh.start, mine = sh.mine;
    // (1, H, N, D) buffers of the whole sequence (every rank makes the same ones), and this rank's views.
    const row_matrix<S> q = test::uniform<S>(heads * n, d, 1, 0.5), k = test::uniform<S>(heads * n, d, 2, 0.5),
                        v = test::uniform<S>(heads * n, e, 3);
    const auto shard = [&](const row_matrix<S>& x) { return sh.view(x); };
    row_matrix<S> out = row_matrix<S>::Constant(heads * std::max<index>(mine, 1), e, S(7)), again = out;
    distributed::context_parallel<Attention> cp(attn, MPI_COMM_WORLD);
    cp.forward(shard(q), shard(k), shard(v), view_bhnd(out.data(), 1, heads, mine, e), p0 + start);
    cp.forward(shard(q), shard(k), shard(v), view_bhnd(again.data(), 1, heads, mine, e), p0 + start);
    CHECK(test::bit_identical(out, again));
    index compared = 0;
    for (index h = 0; h < heads; ++h) {
        const row_matrix<S> qh = q.middleRows(h * n, n), kh = k.middleRows(h * n, n), vh = v.middleRows(h * n, n);
        // Regrouping the key sums over ranks adds at most `size` terms to every inner sum of the bound.
        const auto [ref, bound] = test::reference_and_bound(attn, qh, kh, vh, h, p0, p0, size + 4096);
        const row_matrix<S> got = out.middleRows(h * mine, mine);
        const double err = test::abs_error(got, ref.middleRows(start, mine));
        CAPTURE(rank, size, pattern, h, err, bound);
        CHECK(err <= bound);
        compared += mine;
    }
    // Every row of every head was compared on some rank.
    index total = compared;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

// The causal backward context-parallel over the world vs the exact reference gradients of the whole sequence
// (support_backward.hpp) for this rank's rows; returns the rows compared over all ranks and heads.
template <class S, class Attention>
index check_sharded_backward(const Attention& attn, index n, index d, index e, index heads, index p0, int pattern)
{
    const int rank = world_rank(), size = world_size();
    const sharding<S> sh(n, heads, pattern);
    const index start = sh.start, mine = sh.mine;
    const row_matrix<S> q = test::uniform<S>(heads * n, d, 1, 0.5), k = test::uniform<S>(heads * n, d, 2, 0.5),
                        v = test::uniform<S>(heads * n, e, 3), dout = test::uniform<S>(heads * n, e, 4);
    const auto shard = [&](const row_matrix<S>& x) { return sh.view(x); };
    const index rows = heads * std::max<index>(mine, 1);
    row_matrix<S> dq(rows, d), dk(rows, d), dv(rows, e);
    row_matrix<S> dq2 = dq, dk2 = dk, dv2 = dv;
    distributed::context_parallel<Attention> cp(attn, MPI_COMM_WORLD);
    cp.backward(shard(q), shard(k), shard(v), shard(dout), view_bhnd(dq.data(), 1, heads, mine, d), view_bhnd(dk.data(), 1, heads, mine, d),
                view_bhnd(dv.data(), 1, heads, mine, e), p0 + start);
    cp.backward(shard(q), shard(k), shard(v), shard(dout), view_bhnd(dq2.data(), 1, heads, mine, d),
                view_bhnd(dk2.data(), 1, heads, mine, d), view_bhnd(dv2.data(), 1, heads, mine, e), p0 + start);
    CHECK(test::bit_identical(dq, dq2));
    CHECK(test::bit_identical(dk, dk2));
    CHECK(test::bit_identical(dv, dv2));
    index compared = 0;
    for (index h = 0; h < heads; ++h) {
        const row_matrix<S> qh = q.middleRows(h * n, n), kh = k.middleRows(h * n, n), vh = v.middleRows(h * n, n),
                            dh = dout.middleRows(h * n, n);
        // As the forward: the rank-ordered sums of the states (prefix S_in, suffix dS_out) regroup the inner
        // sums of the single-process backward and add at most `size` terms to each.
        const auto ref = test::reference_backward(attn, qh, kh, vh, dh, size);
        const double eq = test::abs_error(row_matrix<S>(dq.middleRows(h * mine, mine)), ref.exact.dq.middleRows(start, mine)),
                     ek = test::abs_error(row_matrix<S>(dk.middleRows(h * mine, mine)), ref.exact.dk.middleRows(start, mine)),
                     ev = test::abs_error(row_matrix<S>(dv.middleRows(h * mine, mine)), ref.exact.dv.middleRows(start, mine));
        CAPTURE(rank, size, pattern, h, eq, ref.bound_dq, ek, ref.bound_dk, ev, ref.bound_dv);
        CHECK(eq <= ref.bound_dq);
        CHECK(ek <= ref.bound_dk);
        CHECK(ev <= ref.bound_dv);
        compared += mine;
    }
    index total = compared;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

template <class S>
options<S> opts(masking mask, normalization norm)
{
    options<S> o;
    o.mask = mask;
    o.norm = norm;
    o.chunk_size = 8;
    return o;
}
} // namespace

TEMPLATE_TEST_CASE("context parallel = the single-process reference (none, LRPE, sineSPE)", "[mpi]", float, double)
{
    using S = TestType;
    const linrpe::index n = 61, d = 6, e = 5, heads = 2;
    for (const masking mask : {masking::none, masking::causal})
        for (int pattern = 0; pattern < 2; ++pattern) {
            CAPTURE(int(mask), pattern);
            for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
                const linear_attention<feature_maps::elu_plus_one, positional::none, S> plain({}, {}, opts<S>(mask, norm));
                CHECK(check_sharded<S>(plain, n, d, e, heads, 0, pattern) == heads * n);
            }
            const linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S> rotate(
                {}, positional::lrpe<S>(lrpe_kind::rotate, d, heads), opts<S>(mask, normalization::rms));
            CHECK(check_sharded<S>(rotate, n, d, e, heads, 100003, pattern) == heads * n);
            const linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S> cosine(
                {}, positional::lrpe<S>(lrpe_kind::cosine, d, heads), opts<S>(mask, normalization::none));
            CHECK(check_sharded<S>(cosine, n, d, e, heads, 7, pattern) == heads * n);
            const linear_attention<feature_maps::elu_plus_one, positional::sine_spe<S>, S> sine(
                {}, positional::sine_spe<S>(heads, d, 3, 16, 5, true), opts<S>(mask, normalization::sum));
            CHECK(check_sharded<S>(sine, n, d, e, heads, 100003, pattern) == heads * n);
        }
}

TEMPLATE_TEST_CASE("context parallel causal backward = the single-process reference (none)", "[mpi][backward]", float, double)
{
    using S = TestType;
    const linrpe::index n = 61, d = 6, e = 5, heads = 2;
    for (int pattern = 0; pattern < 2; ++pattern)
        for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
            CAPTURE(pattern, int(norm));
            const linear_attention<feature_maps::elu_plus_one, positional::none, S> plain({}, {}, opts<S>(masking::causal, norm));
            CHECK(check_sharded_backward<S>(plain, n, d, e, heads, 11, pattern) == heads * n);
        }
}

TEST_CASE("context parallel backward: bad gradient views and a non-causal attention are refused on every rank", "[mpi][backward]")
{
    using S = double;
    using attention = linear_attention<feature_maps::elu_plus_one, positional::none, S>;
    const int rank = world_rank(), size = world_size();
    const linrpe::index n = 4, d = 3;
    const row_matrix<S> x = test::uniform<S>(n, d, 1);
    row_matrix<S> g = row_matrix<S>::Constant(n, d, 7.0), narrow = row_matrix<S>::Constant(n, d - 1, 7.0);
    const auto in = view_bhnd<const S>(x.data(), 1, 1, n, d);
    const auto out = view_bhnd(g.data(), 1, 1, n, d);
    const attention causal({}, {}, opts<S>(masking::causal, normalization::sum));
    const distributed::context_parallel<attention> cp(causal, MPI_COMM_WORLD);
    // The last rank's dk has the wrong width: every rank throws, the others naming that rank.
    const auto dk = rank == size - 1 ? view_bhnd(narrow.data(), 1, 1, n, d - 1) : out;
    bool threw = false;
    try {
        cp.backward(in, in, in, in, out, dk, out, rank * n);
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains(rank == size - 1 ? "dk view" : "invalid shard on rank"));
    }
    CHECK(threw);
    const attention full({}, {}, opts<S>(masking::none, normalization::sum));
    const distributed::context_parallel<attention> cp_full(full, MPI_COMM_WORLD);
    threw = false;
    try {
        cp_full.backward(in, in, in, in, out, out, out, rank * n);
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains("options.mask")); // every rank fails its own check
    }
    CHECK(threw);
    CHECK((g.array() == 7.0).all());
    CHECK((narrow.array() == 7.0).all());
}

TEST_CASE("shards that do not tile one sequence are refused on every rank", "[mpi]")
{
    const int rank = world_rank(), size = world_size();
    const linrpe::index n = 4, d = 3;
    const linear_attention<feature_maps::elu_plus_one, positional::none, double> attn({}, {}, opts<double>(masking::causal, normalization::sum));
    distributed::context_parallel<linear_attention<feature_maps::elu_plus_one, positional::none, double>> cp(attn, MPI_COMM_WORLD);
    const row_matrix<double> x = test::uniform<double>(n, d, 1);
    row_matrix<double> out = row_matrix<double>::Constant(n, d, 7.0);
    const auto in = view_bhnd<const double>(x.data(), 1, 1, n, d);
    // A gap: rank r claims to start at r·(n + 1) (with one rank there is nothing to tile: a valid call).
    bool threw = false;
    try {
        cp.forward(in, in, in, view_bhnd(out.data(), 1, 1, n, d), rank * (n + 1));
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains("first_position"));
    }
    CHECK(threw == (size > 1));
    // One rank's values have the wrong width: every rank throws, the others naming that rank.
    const row_matrix<double> wide = test::uniform<double>(n, d + 1, 2);
    const auto v = rank == size - 1 ? view_bhnd<const double>(wide.data(), 1, 1, n, d + 1) : in;
    out.setConstant(7.0); // the first call was valid with one rank and wrote its output
    threw = false;
    try {
        cp.forward(in, in, v, view_bhnd(out.data(), 1, 1, n, d), rank * n);
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains(rank == size - 1 ? "out view extents" : "invalid shard on rank"));
    }
    CHECK(threw);
    CHECK((out.array() == 7.0).all()); // nothing written by a refused call
    // Toeplitz mixing is refused at construction, with the reason.
    using toeplitz = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<double>, double>;
    const toeplitz t({}, positional::toeplitz_rpe<double>(1, 4), opts<double>(masking::causal, normalization::sum));
    CHECK_THROWS_WITH(distributed::context_parallel<toeplitz>(t, MPI_COMM_WORLD), Catch::Contains("whole sequence"));
}

int main(int argc, char** argv)
{
    MPI_Init(&argc, &argv);
    const int result = Catch::Session().run(argc, argv);
    int worst = result;
    MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
