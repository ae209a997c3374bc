// Context parallelism over MPI (run by ctest under mpirun with 1, 2 and 3 ranks): every rank holds a
// contiguous shard of one sequence; the forward must equal the exact single-process reference and the backward
// of both masks (parameter gradients included) the single-process backward, within derived bounds, both be
// bit-identical between two runs (the parameter gradients on every rank too), and bad shards must raise
// linrpe::error on every rank.
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

TEST_CASE("context parallel backward: bad gradient views and parameter gradients are refused on every rank", "[mpi][backward]")
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
    // A non-causal backward with parameter gradients asked for on rank 0 only: refused on every rank (the
    // reduction is a collective); with one rank there is nothing to disagree on.
    const attention full({}, {}, opts<S>(masking::none, normalization::sum));
    const distributed::context_parallel<attention> cp_full(full, MPI_COMM_WORLD);
    attention::parameter_gradients none;
    threw = false;
    try {
        cp_full.backward(in, in, in, in, out, out, out, rank * n, rank == 0 ? &none : nullptr);
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains("pg"));
    }
    CHECK(threw == (size > 1));
    if (size == 1) g.setConstant(7.0); // the valid call wrote it
    // LRPE θ gradients of the wrong shape on the last rank: every rank throws, that one naming the member.
    using rotate = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;
    const rotate lr({}, positional::lrpe<S>(lrpe_kind::rotate, 2 * d, row_matrix<double>::Constant(1, d, 0.5)),
                    opts<S>(masking::none, normalization::none));
    const distributed::context_parallel<rotate> cp_lr(lr, MPI_COMM_WORLD);
    const row_matrix<S> x2 = test::uniform<S>(n, 2 * d, 5);
    row_matrix<S> g2 = row_matrix<S>::Constant(n, 2 * d, 7.0);
    const auto in2 = view_bhnd<const S>(x2.data(), 1, 1, n, 2 * d);
    const auto out2 = view_bhnd(g2.data(), 1, 1, n, 2 * d);
    auto pg = lr.make_parameter_gradients();
    if (rank == size - 1) pg.theta = row_matrix<double>::Zero(1, d + 1);
    const auto kept = pg.theta;
    threw = false;
    try {
        cp_lr.backward(in2, in2, in2, in2, out2, out2, out2, rank * n, &pg);
    } catch (const linrpe::error& err) {
        threw = true;
        CHECK_THAT(err.what(), Catch::Contains(rank == size - 1 ? "parameter_gradients.theta" : "invalid shard on rank"));
    }
    CHECK(threw);
    CHECK((g2.array() == S(7)).all());
    CHECK(test::bit_identical(pg.theta, kept));
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

namespace {
// ---- the backward of both masks with parameter gradients, against the single-process backward --------------

inline double norm_of(const std::vector<double>& x)
{
    double s = 0;
    for (const double y : x) s += y * y;
    return std::sqrt(s);
}

// The computed features ψ̂ = x of one head, taken as exact inputs, in the shape test::reference_backward reads
// (identity features, the attention's mixing at head h, positions p0..): its exact gradients are those at ψ̂,
// κ̂, and its bound_dq / bound_dk bound ‖dΨ̂ − dΨ*‖_F / ‖dΚ̂ − dΚ*‖_F of any fast path computing from them
// (>= 2‖bpsi‖: the identity's ‖J_i‖_F = √M' >= 1).
template <class Attention>
struct on_features {
    struct identity_map {
        template <class T>
        void apply_backward(const Eigen::Ref<const row_matrix<T>>&, const Eigen::Ref<const row_matrix<T>>&,
                            const Eigen::Ref<const row_matrix<T>>& dfeat, Eigen::Ref<row_matrix<T>> dx, const feature_context&) const
        {
            dx = dfeat;
        }
    };
    const Attention* attn;
    index head, first;
    options<double> opt;
    identity_map map;
    const options<double>& opts() const { return opt; }
    const identity_map& feature_map() const { return map; }
    template <class S>
    row_matrix<double> features(const row_matrix<S>& x, role) const
    {
        return x.template cast<double>();
    }
    row_matrix<double> mixing_matrix(index n, index nk) const
    {
        return attn->mixing_matrix(n, nk, head, first, first).template cast<double>();
    }
};

// Per-row ‖J_i‖_F of the features' input Jacobian (n) by M' probes of features_backward, and per-row ‖H_i‖_F of
// their parameter Jacobian (∂feat_i/∂θ) by M' probes of each row alone (empty without parameters).
template <class Attention, class S>
void feature_jacobians(const Attention& attn, const row_matrix<S>& x, role which, index head, index first,
                       vector<double>& j, vector<double>& h)
{
    const index n = x.rows(), m = attn.encoded_dim(x.cols());
    j = vector<double>::Zero(n);
    h = vector<double>::Zero(n);
    row_matrix<S> probe(n, m), dx(n, x.cols());
    for (index r = 0; r < m; ++r) {
        probe.setZero();
        probe.col(r).setOnes();
        attn.features_backward(x, which, head, first, probe, dx);
        j += dx.template cast<double>().rowwise().squaredNorm();
        for (index i = 0; i < n; ++i) {
            auto pg = attn.make_parameter_gradients();
            row_matrix<S> dxi(1, x.cols());
            attn.features_backward(x.middleRows(i, 1), which, head, first + i, probe.middleRows(i, 1), dxi, &pg);
            const double s = norm_of(test::flatten(pg, 0));
            h[i] += s * s;
        }
    }
    j = j.cwiseSqrt();
    h = h.cwiseSqrt();
}

// The bounds on ‖context parallel − single process‖_F of one head's dq, dk, dv and (summed over heads by the
// caller in squares) its parameter gradient. Both compute from the same features up to their rounding (the
// features are taken in S as exact inputs; their rounding in S enters like `feature_terms` more inner terms)
// and differ in how the sums regroup (`size` more terms), so each is within the identity reference's bound of
// the exact gradients at ψ̂, κ̂ (test::reference_backward's derivation), and
//   dψ, dκ:  ‖δdΨ‖_F <= B_ψ, ‖δdΚ‖_F <= B_κ for either path, so 2 B_ψ between them;
//   dq_i = J_iᵀ dψ_i:  ‖dq_cp − dq_sp‖_F <= max_i ‖J_i‖_F · 2 B_ψ + 2 · 4γ_vjp ‖(‖J_i‖_F ‖dψ*_i‖)_i‖ (each side's
//            VJP rounding, γ_vjp = 2(M' + D + 4)u as the reference's); dk likewise;
//   dv:      2 bound_dv;
//   θ:       Σ_i H_iᵀ dψ_i + Σ_j H'_jᵀ dκ_j (H_i = ∂ψ_i/∂θ, the same tables on both sides):
//            <= ‖(‖H_i‖)‖₂ 2 B_ψ + ‖(‖H'_j‖)‖₂ 2 B_κ (Cauchy–Schwarz) + 2 · 4γ_h (Σ_i ‖H_i‖‖dψ*_i‖ + Σ_j ‖H'_j‖‖dκ*_j‖),
//            γ_h = 2(N + M' + D + R + 16)u the hooks' and the row sums' own rounding (R: SPE's realizations);
// each times a safety factor 2 for second-order terms.
struct head_bounds {
    double dq, dk, dv, params;
};
template <class Attention, class S>
head_bounds backward_bounds(const Attention& attn, const row_matrix<S>& q, const row_matrix<S>& k, const row_matrix<S>& v,
                            const row_matrix<S>& dout, index head, index p0, index extra, index feature_terms, index hook_terms)
{
    const row_matrix<S> psi = attn.features(q, role::query, head, p0), kappa = attn.features(k, role::key, head, p0);
    on_features<Attention> id{&attn, head, p0, {}, {}};
    id.opt.mask = attn.opts().mask;
    id.opt.norm = attn.opts().norm;
    id.opt.eps = double(attn.opts().eps);
    id.opt.chunk_size = attn.opts().chunk_size;
    const auto ref = test::reference_backward(id, psi, kappa, v, dout, extra + feature_terms);
    vector<double> jq, hq, jk, hk;
    feature_jacobians(attn, q, role::query, head, p0, jq, hq);
    feature_jacobians(attn, k, role::key, head, p0, jk, hk);
    const double u = test::unit_roundoff<S>(), m = double(psi.cols()), d = double(q.cols()), n = double(q.rows());
    const double gamma_vjp = 2.0 * (m + d + 4) * u, gamma_h = 2.0 * (n + m + d + double(hook_terms) + 16) * u;
    const vector<double> dpsi = ref.exact.dq.rowwise().norm(), dkappa = ref.exact.dk.rowwise().norm();
    head_bounds b;
    b.dq = 2.0 * (jq.maxCoeff() * 2.0 * ref.bound_dq + 2.0 * 4.0 * gamma_vjp * jq.cwiseProduct(dpsi).norm());
    b.dk = 2.0 * (jk.maxCoeff() * 2.0 * ref.bound_dk + 2.0 * 4.0 * gamma_vjp * jk.cwiseProduct(dkappa).norm());
    b.dv = 2.0 * ref.bound_dv;
    b.params = 2.0 * (hq.norm() * 2.0 * ref.bound_dq + hk.norm() * 2.0 * ref.bound_dk +
                      2.0 * 4.0 * gamma_h * (hq.dot(dpsi) + hk.dot(dkappa)));
    return b;
}

// The backward context-parallel over the world, with parameter gradients, against the single-process
// backward of the whole sequence (per head, positions p0..) within backward_bounds; twice (bit-identical),
// and the parameter gradients the same bits on every rank. Returns the rows compared over all ranks and heads.
template <class S, class Attention>
index check_sharded_gradients(const Attention& attn, index n, index d, index e, index heads, index p0, int pattern,
                              index feature_terms, index hook_terms)
{
    const int rank = world_rank(), size = world_size();
    const sharding<S> sh(n, heads, pattern);
    const index start = sh.start, mine = sh.mine;
    const row_matrix<S> q = test::uniform<S>(heads * n, d, 1, 0.5), k = test::uniform<S>(heads * n, d, 2, 0.5),
                        v = test::uniform<S>(heads * n, e, 3), dout = test::uniform<S>(heads * n, e, 4);
    const auto shard = [&](const row_matrix<S>& x) { return sh.view(x); };
    const index rows = heads * std::max<index>(mine, 1);
    row_matrix<S> dq(rows, d), dk(rows, d), dv(rows, e), dq2 = dq, dk2 = dk, dv2 = dv;
    distributed::context_parallel<Attention> cp(attn, MPI_COMM_WORLD);
    auto pg = attn.make_parameter_gradients(), pg2 = pg;
    const auto run = [&](row_matrix<S>& gq, row_matrix<S>& gk, row_matrix<S>& gv, decltype(pg)& g) {
        cp.backward(shard(q), shard(k), shard(v), shard(dout), view_bhnd(gq.data(), 1, heads, mine, d),
                    view_bhnd(gk.data(), 1, heads, mine, d), view_bhnd(gv.data(), 1, heads, mine, e), p0 + start, &g);
    };
    run(dq, dk, dv, pg);
    run(dq2, dk2, dv2, pg2);
    CHECK(test::bit_identical(dq, dq2));
    CHECK(test::bit_identical(dk, dk2));
    CHECK(test::bit_identical(dv, dv2));
    const std::vector<double> flat = test::flatten(pg, 0);
    CHECK(test::flatten(pg2, 0) == flat);
    std::vector<double> root = flat; // rank 0's, on every rank
    MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
    CHECK(std::memcmp(root.data(), flat.data(), flat.size() * sizeof(double)) == 0);

    auto pg_sp = attn.make_parameter_gradients();
    double bound_params_sq = 0;
    index compared = 0;
    for (index h = 0; h < heads; ++h) {
        const row_matrix<S> qh = q.middleRows(h * n, n), kh = k.middleRows(h * n, n), vh = v.middleRows(h * n, n),
                            dh = dout.middleRows(h * n, n);
        row_matrix<S> sq(n, d), sk(n, d), sv(n, e);
        attn.backward(qh, kh, vh, dh, sq, sk, sv, h, p0, p0, nullptr, &pg_sp);
        const head_bounds b = backward_bounds(attn, qh, kh, vh, dh, h, p0, size, feature_terms, hook_terms);
        bound_params_sq += b.params * b.params;
        const double eq = test::abs_error(row_matrix<S>(dq.middleRows(h * mine, mine)), sq.middleRows(start, mine)),
                     ek = test::abs_error(row_matrix<S>(dk.middleRows(h * mine, mine)), sk.middleRows(start, mine)),
                     ev = test::abs_error(row_matrix<S>(dv.middleRows(h * mine, mine)), sv.middleRows(start, mine));
        CAPTURE(rank, size, pattern, h, eq, b.dq, ek, b.dk, ev, b.dv);
        CHECK(eq <= b.dq);
        CHECK(ek <= b.dk);
        CHECK(ev <= b.dv);
        compared += mine;
    }
    const std::vector<double> want = test::flatten(pg_sp, 0);
    double err = 0;
    for (std::size_t i = 0; i < want.size(); ++i) err += (flat[i] - want[i]) * (flat[i] - want[i]);
    err = std::sqrt(err);
    const double bound = std::sqrt(bound_params_sq), scale = norm_of(want);
    CAPTURE(rank, size, pattern, err, bound, scale);
    CHECK(flat.size() == want.size());
    CHECK(err <= bound);
    // A bound that can fail, in double (measured there: bound/‖∇‖ <= 2e-6). In float the derived bound is
    // loose: ∇θ cancels between queries and keys, ‖H‖‖dΨ‖/‖∇θ‖ ~ 50–1000 here, and the float reference bound
    // of dΨ is itself ~ 1e-3–3e-2 of ‖dΨ‖ (measured: bound/‖∇‖ 0.2–4); float checks the bound only.
    if (!want.empty() && std::is_same<S, double>::value) CHECK(bound < 1e-2 * scale);
    index total = compared;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    return total;
}
} // namespace

TEMPLATE_TEST_CASE("context parallel backward = the single-process backward, parameter gradients included "
                   "(both masks: none, LRPE θ; non-causal: gated sineSPE)", "[mpi][backward]", float, double)
{
    using S = TestType;
    const linrpe::index n = 61, d = 6, e = 5, heads = 2;
    using lrpe_attention = linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>;
    using spe_attention = linear_attention<feature_maps::elu_plus_one, positional::sine_spe<S>, S>;
    // The parameter gradients of LRPE and SPE act at absolute positions but the scores depend on offsets only:
    // the per-row terms grow with the position p (∂ψ_i/∂θ ∝ p_i for LRPE, phases f·p for SPE) and cancel
    // between queries and keys to a gradient of the offsets' size, so any computation in S carries an error
    // ~ (p/N)·u relative to it. At p ~ 1e5 that is below the bound's 1e-2 only in double; float runs from 7.
    const linrpe::index far = std::is_same<S, double>::value ? 100003 : 7;
    // Learned-looking θ, distinct per head.
    const row_matrix<double> theta = (0.1 + 0.9 * test::uniform<double>(heads, d / 2, 21).array().abs()).matrix();
    for (int pattern = 0; pattern < 2; ++pattern) {
        CAPTURE(pattern);
        for (const masking mask : {masking::none, masking::causal})
            for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
                CAPTURE(int(mask), int(norm));
                const linear_attention<feature_maps::elu_plus_one, positional::none, S> plain({}, {}, opts<S>(mask, norm));
                CHECK(check_sharded_gradients<S>(plain, n, d, e, heads, 11, pattern, 0, 0) == heads * n);
            }
        for (const masking mask : {masking::none, masking::causal}) {
            CAPTURE(int(mask));
            // LRPE's features in S: its P (M terms) and Λ (2) after φ, as test_lrpe_backward counts them.
            const lrpe_attention rotate({}, positional::lrpe<S>(lrpe_kind::rotate, d, theta), opts<S>(mask, normalization::none));
            CHECK(check_sharded_gradients<S>(rotate, n, d, e, heads, far, pattern, d + 2, 0) == heads * n);
        }
        // sineSPE's codes: a (b, R) × (R, ·) GEMM and the K sines per entry before φ.
        const linrpe::index reals = 16, sines = 3;
        const spe_attention sine({}, positional::sine_spe<S>(heads, d, sines, reals, 5, true), opts<S>(masking::none, normalization::sum));
        CHECK(check_sharded_gradients<S>(sine, n, d, e, heads, far, pattern, reals + 2 * sines + 4, reals) == heads * n);
    }
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
