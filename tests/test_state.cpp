// attention_state: state passing (a sequence in k causal calls of random sizes equals one call, for every
// encoding; the backward through such a chain equals one call's), export → import → continue, thread
// independence, and the refusals of bad states and buffers (including random and mutated bytes fed to import).
#include "support_backward.hpp"
#include "support_state.hpp"

#include <algorithm>
#include <functional>
#include <random>
#include <vector>

// Wrapped so that the suites of a group share one translation unit (tests/CMakeLists.txt).
namespace test_state {

namespace {
using namespace state_test;
using linrpe::index;

// FFT mixing adds log-depth rounding (see test_compose): 4·log2 L·√(N + Nk) more terms; others need none.
index fft_terms(index n) { return index(4.0 * std::log2(double(4 * n)) * std::sqrt(double(2 * n))); }

// Runs `attn` over q, k, v in the given pieces from a fresh state; `between` sees the state after each piece.
template <class Attention, class S>
typename Attention::state_type run_pieces(const Attention& attn, const bhnd<S>& q, const bhnd<S>& k, const bhnd<S>& v, bhnd<S>& out,
                                          const std::vector<index>& pieces,
                                          const std::function<void(typename Attention::state_type&)>& between = {})
{
    auto state = attn.make_state(q.b, q.h);
    index t = 0;
    for (const index c : pieces) {
        attn.forward(q.in(t, c), k.in(t, c), v.in(t, c), out.out(t, c), state);
        t += c;
        if (between) between(state);
    }
    return state;
}

// k-call split vs one call vs the exact reference of each (b, h); returns 1 when checked.
template <class Attention>
int check_split(const Attention& attn, std::uint32_t seed, index extra_terms = 0)
{
    using S = typename Attention::scalar_type;
    const index b = 2, h = 2, n = 45, d = 6, e = 4;
    const bhnd<S> q(b, h, n, d, seed), k(b, h, n, d, seed + 1), v(b, h, n, e, seed + 2);
    bhnd<S> one(b, h, n, e, 0), split(b, h, n, e, 0);
    attn.forward(q.in(), k.in(), v.in(), one.out(0, n));
    const auto pieces = random_pieces(n, seed);
    const auto state = run_pieces(attn, q, k, v, split, pieces);
    for (index bi = 0; bi < b; ++bi)
        for (index hi = 0; hi < h; ++hi) {
            REQUIRE(state.position(bi, hi) == n);
            const auto [ref, bound] = test::reference_and_bound(attn, q.slice(bi, hi), k.slice(bi, hi), v.slice(bi, hi), hi, 0, 0, extra_terms);
            const double err_split = test::abs_error(split.slice(bi, hi), ref), err_one = test::abs_error(one.slice(bi, hi), ref);
            CAPTURE(seed, pieces.size(), bi, hi, err_split, err_one, bound);
            REQUIRE(err_split <= bound);
            REQUIRE(err_one <= bound);
        }
    return 1;
}

template <class S>
options<S> causal(normalization norm = normalization::sum)
{
    return make_options<S>(masking::causal, norm);
}

TEMPLATE_TEST_CASE("State passing: k calls of random sizes equal one call, every encoding", "[state][split]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index h = 2, d = 6;
    int checked = 0;
    for (std::uint32_t seed = 1; seed <= 3; ++seed) {
        checked += check_split(plain_attention<S>({}, {}, causal<S>()), seed);
        for (const lrpe_kind kind : {lrpe_kind::rotate, lrpe_kind::cosine, lrpe_kind::permutation})
            checked += check_split(linear_attention<feature_maps::elu_plus_one, positional::lrpe<S>, S>(
                                       {}, positional::lrpe<S>(kind, d, h), causal<S>(normalization::rms)),
                                   seed);
        checked += check_split(linear_attention<feature_maps::elu_plus_one, positional::sine_spe<S>, S>(
                                   {}, positional::sine_spe<S>(h, d, 3, 16, 7, true), causal<S>()),
                               seed);
        checked += check_split(linear_attention<feature_maps::elu_plus_one, positional::conv_spe<S>, S>(
                                   {}, positional::conv_spe<S>(h, d, 5, 16, 8, true), causal<S>()),
                               seed);
        for (const toeplitz_algorithm algo : {toeplitz_algorithm::dense, toeplitz_algorithm::fft, toeplitz_algorithm::banded,
                                              toeplitz_algorithm::automatic})
            for (const index t_max : {index(3), index(60)}) { // clipped window (far state used) and whole history
                options<S> opt = causal<S>();
                opt.toeplitz = algo;
                checked += check_split(toeplitz_attention<S>({}, random_bias<S>(h, t_max, seed + 10), opt), seed, fft_terms(45));
            }
        using pe_t = positional::compose<positional::conv_spe<S>, positional::toeplitz_rpe<S>>;
        checked += check_split(linear_attention<feature_maps::elu_plus_one, pe_t, S>(
                                   {}, pe_t(positional::conv_spe<S>(h, d, 4, 8, 2, true), random_bias<S>(h, 9, seed)), causal<S>()),
                               seed, fft_terms(45));
    }
    REQUIRE(checked == 3 * (1 + 3 + 2 + 4 * 2 + 1));
}

TEMPLATE_TEST_CASE("State passing: export -> import -> continue equals the uninterrupted run bit for bit", "[state][export]",
                   LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, h = 3, n = 40, d = 5, e = 3;
    const bhnd<S> q(b, h, n, d, 21), k(b, h, n, d, 22), v(b, h, n, e, 23);
    const auto pieces = random_pieces(n, 4);
    const auto round_trip = [](const auto& attn) {
        return [&attn](auto& state) {
            const std::vector<unsigned char> bytes = state.export_bytes(attn);
            auto restored = attn.make_state(1, 1);
            restored.import_bytes(bytes, attn);
            REQUIRE(restored.export_bytes(attn) == bytes);
            state = restored;
        };
    };
    const auto check = [&](const auto& attn) {
        bhnd<S> direct(b, h, n, e, 0), restored(b, h, n, e, 0);
        run_pieces(attn, q, k, v, direct, pieces);
        run_pieces(attn, q, k, v, restored, pieces, round_trip(attn));
        REQUIRE(test::bit_identical(direct.data, restored.data));
    };
    check(plain_attention<S>({}, {}, causal<S>()));
    check(plain_attention<S>({}, {}, causal<S>(normalization::rms)));
    for (const index t_max : {index(4), index(100)}) check(toeplitz_attention<S>({}, random_bias<S>(h, t_max, 3), causal<S>()));

    // One sequence moved out and back (sequence / assign), and restart of one sequence only.
    const plain_attention<S> attn({}, {}, causal<S>());
    bhnd<S> out(b, h, n, e, 0);
    auto state = run_pieces(attn, q, k, v, out, {n / 2});
    const auto bytes = state.export_bytes(attn);
    const auto second = state.sequence(1);
    state.restart(1, 7);
    CHECK(state.position(1, 2) == 7);
    CHECK(state.empty(1, 0));
    CHECK(state.position(0, 0) == n / 2);
    state.assign(1, second);
    CHECK(state.export_bytes(attn) == bytes);
}

TEST_CASE("State passing: results do not depend on the thread count", "[state][threads]")
{
    using S = double;
    const index b = 1, h = 2, n = 70, d = 5, e = 3;
    const bhnd<S> q(b, h, n, d, 31), k(b, h, n, d, 32), v(b, h, n, e, 33);
    const auto pieces = random_pieces(n, 9);
    const auto run = [&](auto attn) {
        std::vector<row_matrix<S>> outs;
        for (const int threads : {1, 2, 3}) {
            auto opt = attn.opts();
            opt.threads = threads;
            opt.segment_rows = 8; // long pieces run their segments in parallel
            attn.set_options(opt);
            bhnd<S> out(b, h, n, e, 0);
            const auto state = run_pieces(attn, q, k, v, out, pieces);
            outs.push_back(out.data);
        }
        CHECK(test::bit_identical(outs[0], outs[1]));
        CHECK(test::bit_identical(outs[0], outs[2]));
    };
    run(plain_attention<S>({}, {}, causal<S>()));
    options<S> opt = causal<S>();
    opt.toeplitz = toeplitz_algorithm::banded;
    run(toeplitz_attention<S>({}, random_bias<S>(h, 6, 2), opt));
}

TEST_CASE("State passing: a state of the wrong shape is refused, nothing written", "[state][errors]")
{
    using S = double;
    using Catch::Matchers::Contains;
    const index b = 2, h = 2, n = 6, d = 4, e = 3;
    const plain_attention<S> attn({}, {}, causal<S>());
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3);
    bhnd<S> out(b, h, n, e, 4);
    auto state = attn.make_state(b, h);
    attn.forward(q.in(0, 2), k.in(0, 2), v.in(0, 2), out.out(0, 2), state);
    const auto saved = state.export_bytes(attn);
    const row_matrix<S> after_first = out.data;

    auto wrong_batch = attn.make_state(b + 1, h);
    REQUIRE_THROWS_WITH(attn.forward(q.in(), k.in(), v.in(), out.out(0, n), wrong_batch), Contains("state batch"));
    auto wrong_heads = attn.make_state(b, h + 1);
    REQUIRE_THROWS_WITH(attn.forward(q.in(), k.in(), v.in(), out.out(0, n), wrong_heads), Contains("state heads"));
    // A state built for width D = 4 continued with D = 3 (other M') or E = 2.
    const bhnd<S> q3(b, h, n, 3, 5), k3(b, h, n, 3, 6), v2(b, h, n, 2, 7);
    bhnd<S> out2(b, h, n, 2, 8);
    REQUIRE_THROWS_WITH(attn.forward(q3.in(), k3.in(), v.in(), out.out(0, n), state), Contains("state slot sizes"));
    REQUIRE_THROWS_WITH(attn.forward(q.in(), k.in(), v2.in(), out2.out(0, n), state), Contains("state slot sizes"));
    // A state of another normalization (no z) under sum.
    const plain_attention<S> rms({}, {}, causal<S>(normalization::rms));
    auto rms_state = rms.make_state(b, h);
    rms.forward(q.in(0, 1), k.in(0, 1), v.in(0, 1), out.out(0, 1), rms_state);
    out.data = after_first;
    REQUIRE_THROWS_WITH(attn.forward(q.in(1, 1), k.in(1, 1), v.in(1, 1), out.out(1, 1), rms_state), Contains("state slot sizes"));
    // Non-causal attention has no state to continue.
    const plain_attention<S> full({}, {}, options<S>());
    REQUIRE_THROWS_WITH(full.forward(q.in(), k.in(), v.in(), out.out(0, n), state), Contains("options.mask"));
    CHECK(test::bit_identical(out.data, after_first));
    CHECK(state.export_bytes(attn) == saved);
    CHECK(state.position(0) == 2);
}

// Imports `bytes` into a state holding `saved`; requires a linrpe::error naming `what` and the state untouched.
template <class Attention>
void require_refused(const Attention& attn, const std::vector<unsigned char>& bytes, const char* what,
                     typename Attention::state_type& state, const std::vector<unsigned char>& saved)
{
    CAPTURE(what, bytes.size());
    REQUIRE_THROWS_WITH(state.import_bytes(bytes, attn), Catch::Matchers::Contains(what));
    REQUIRE(state.export_bytes(attn) == saved);
}

TEST_CASE("State import: buffers of other configurations, truncated or corrupted, are refused", "[state][import][errors]")
{
    using S = double;
    const index b = 2, h = 2, n = 9, d = 4, e = 3;
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3);
    bhnd<S> out(b, h, n, e, 4);
    const plain_attention<S> attn({}, {}, causal<S>());
    const auto state_of = [&](const auto& a) { return run_pieces(a, q, k, v, out, {n}); };
    auto state = state_of(attn);
    const auto good = state.export_bytes(attn);
    auto target = attn.make_state(1, 1);
    target.import_bytes(good, attn);
    const auto saved = target.export_bytes(attn);
    REQUIRE(saved == good);

    // Another scalar, encoding kind, normalization, or feature map.
    {
        const plain_attention<float> f({}, {}, causal<float>());
        bhnd<float> outf(b, h, n, e, 4);
        auto sf = f.make_state(b, h);
        const bhnd<float> qf(b, h, n, d, 1), kf(b, h, n, d, 2), vf(b, h, n, e, 3);
        f.forward(qf.in(), kf.in(), vf.in(), outf.out(0, n), sf);
        require_refused(attn, sf.export_bytes(f), "scalar size", target, saved);
    }
    require_refused(attn, state_of(toeplitz_attention<S>({}, random_bias<S>(h, 4, 1), causal<S>())).export_bytes(
                              toeplitz_attention<S>({}, random_bias<S>(h, 4, 1), causal<S>())),
                    "kind", target, saved);
    const plain_attention<S> rms({}, {}, causal<S>(normalization::rms));
    require_refused(attn, state_of(rms).export_bytes(rms), "with_den", target, saved);
    const linear_attention<feature_maps::relu, positional::none, S> relu({}, {}, causal<S>());
    require_refused(attn, state_of(relu).export_bytes(relu), "configuration tag", target, saved);
    // The same Toeplitz type with another T_max: the window does not fit.
    {
        const toeplitz_attention<S> t5({}, random_bias<S>(h, 5, 1), causal<S>()), t3({}, random_bias<S>(h, 3, 1), causal<S>());
        auto t3_state = t3.make_state(1, 1);
        const auto t3_saved = t3_state.export_bytes(t3);
        require_refused(t3, state_of(t5).export_bytes(t5), "history", t3_state, t3_saved);
    }
    // Every truncation, one byte more, and every single flipped byte.
    for (std::size_t len = 0; len < good.size(); ++len)
        require_refused(attn, std::vector<unsigned char>(good.begin(), good.begin() + std::ptrdiff_t(len)), "state buffer", target, saved);
    auto longer = good;
    longer.push_back(0);
    require_refused(attn, longer, "state buffer", target, saved);
    for (std::size_t i = 0; i < good.size(); ++i) {
        auto bad = good;
        bad[i] ^= 0x20;
        require_refused(attn, bad, "state buffer", target, saved);
    }
    // A well-formed buffer (checksum recomputed) with an inconsistent slot table.
    const auto reseal = [](std::vector<unsigned char> bytes) {
        const std::uint64_t sum = detail::state_checksum(bytes.data(), bytes.size());
        std::memcpy(bytes.data() + detail::state_checksum_at, &sum, sizeof(sum));
        return bytes;
    };
    const auto set_field = [&](std::size_t slot, int field, std::int64_t value) {
        auto bytes = good;
        std::memcpy(bytes.data() + detail::state_header_bytes + slot * detail::state_slot_bytes + std::size_t(field) * 8, &value, 8);
        return reseal(bytes);
    };
    require_refused(attn, set_field(0, 0, -1), "positions", target, saved);     // negative position
    require_refused(attn, set_field(1, 1, n + 1), "positions", target, saved);  // origin after position
    require_refused(attn, set_field(2, 1, n), "positions", target, saved);      // non-empty slot, no token
    require_refused(attn, set_field(3, 2, 5), "slot sizes", target, saved);     // M' differs between slots
    require_refused(attn, set_field(0, 2, -3), "sizes", target, saved);         // negative M'
    require_refused(attn, set_field(0, 4, 2), "history", target, saved);        // a window without weights
    require_refused(attn, set_field(0, 3, 1 << 30), "sizes", target, saved);    // E beyond the limit
    {
        auto nan = good;
        const S x = std::numeric_limits<S>::quiet_NaN();
        std::memcpy(nan.data() + nan.size() - sizeof(S), &x, sizeof(S));
        require_refused(attn, reseal(nan), "finite", target, saved);
    }
}

TEST_CASE("State import fuzz: random and mutated bytes never crash", "[state][import][fuzz]")
{
    using S = double;
    const index b = 2, h = 2, n = 9, d = 4, e = 3;
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3);
    bhnd<S> out(b, h, n, e, 4);
    const toeplitz_attention<S> attn({}, random_bias<S>(h, 4, 1), causal<S>());
    const auto good = run_pieces(attn, q, k, v, out, {n}).export_bytes(attn);
    std::mt19937 gen(2024);
    const int trials = 2000;
    int unsealed = 0, unsealed_refused = 0, resealed_imported = 0;
    for (int trial = 0; trial < trials; ++trial) {
        std::vector<unsigned char> bytes;
        bool resealed = false;
        if (trial % 3 == 0) { // random bytes of a random length
            bytes.resize(gen() % (2 * good.size()));
            for (auto& x : bytes) x = static_cast<unsigned char>(gen());
        } else { // a valid buffer with a few bytes changed (resealed half of the time) or cut
            bytes = good;
            for (int i = 0, flips = 1 + int(gen() % 4); i < flips; ++i) bytes[gen() % bytes.size()] = static_cast<unsigned char>(gen());
            if (gen() % 4 == 0) bytes.resize(gen() % bytes.size());
            if (trial % 2 == 0 && bytes.size() >= detail::state_header_bytes) {
                const std::uint64_t sum = detail::state_checksum(bytes.data(), bytes.size());
                std::memcpy(bytes.data() + detail::state_checksum_at, &sum, sizeof(sum));
                resealed = true;
            }
        }
        // A changed byte may leave the buffer equal to `good` (same value written): then it imports.
        const bool changed = bytes != good;
        auto state = attn.make_state(1, 1);
        bool refused = false;
        try {
            state.import_bytes(bytes, attn);
            // Accepted: continuing it either works or is refused as a state of the wrong shape.
            if (state.batch() == b && state.heads() == h) {
                bhnd<S> o(b, h, 1, e, 0);
                attn.forward(q.in(0, 1), k.in(0, 1), v.in(0, 1), o.out(0, 1), state);
            }
        } catch (const linrpe::error&) {
            refused = true;
        }
        if (resealed) resealed_imported += refused ? 0 : 1;
        else if (changed) unsealed += 1, unsealed_refused += refused ? 1 : 0;
    }
    // Without a matching checksum nothing is accepted; resealed data bytes decode to other finite numbers.
    CAPTURE(unsealed, unsealed_refused, resealed_imported);
    CHECK(unsealed_refused == unsealed);
    CHECK(unsealed > trials / 2); // every random buffer and half of the mutated ones
}

// ---- backward from a state -----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("State backward: k calls of random sizes in reverse equal one call's backward", "[state][backward]", LINRPE_TEST_SCALARS)
{
    using S = TestType;
    const index b = 2, h = 2, n = 45, d = 6, e = 4;
    int checked = 0;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms})
        for (std::uint32_t seed = 1; seed <= 2; ++seed) {
            const plain_attention<S> attn({}, {}, causal<S>(norm));
            const bhnd<S> q(b, h, n, d, seed), k(b, h, n, d, seed + 1), v(b, h, n, e, seed + 2), dout(b, h, n, e, seed + 3);
            bhnd<S> dq1(b, h, n, d, 0), dk1(b, h, n, d, 0), dv1(b, h, n, e, 0), dq(b, h, n, d, 0), dk(b, h, n, d, 0), dv(b, h, n, e, 0);
            auto grad_one = attn.make_state(b, h);
            attn.backward(q.in(), k.in(), v.in(), dout.in(), dq1.out(), dk1.out(), dv1.out(), attn.make_state(b, h), grad_one);
            const auto pieces = random_pieces(n, seed);
            const auto grad_split = backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces);
            for (index bi = 0; bi < b; ++bi)
                for (index hi = 0; hi < h; ++hi) {
                    // The bound of the one-call reference holds for the chain: its products are the same sums
                    // over at most M' + N + C + 4 terms, grouped at the pieces' ends instead of the chunks'.
                    const auto ref = test::reference_backward(attn, q.slice(bi, hi), k.slice(bi, hi), v.slice(bi, hi),
                                                              dout.slice(bi, hi));
                    CAPTURE(int(norm), seed, pieces.size(), bi, hi);
                    test::require_within(dq.slice(bi, hi), dk.slice(bi, hi), dv.slice(bi, hi), ref);
                    test::require_within(dq1.slice(bi, hi), dk1.slice(bi, hi), dv1.slice(bi, hi), ref);
                    // dS0 = Σ_i ψ_i [g_i, g_den,i]ᵀ from an empty state, for the whole sequence either way: the
                    // chain's sum is grouped by pieces. Both hold every row's term (the gradient of an earlier
                    // call is checked above through dk, dv of its rows, which take V̄ dS_finalᵀ and Κ dS_final).
                    REQUIRE(grad_one.kv(bi, hi).rows() == attn.encoded_dim(d));
                    REQUIRE(grad_split.kv(bi, hi).cols() == e);
                    REQUIRE(grad_split.key_sum(bi, hi).size() == (norm == normalization::sum ? attn.encoded_dim(d) : 0));
                    REQUIRE(grad_split.position(bi, hi) == 0);
                }
            ++checked;
        }
    REQUIRE(checked == 6);
}

// A copy of the one-slot state `s0` with S += h·us and z += h·uz.
template <class Attention>
typename Attention::state_type shifted(const Attention& attn, const typename Attention::state_type& s0,
                                       const row_matrix<double>& us, const vector<double>& uz, double h)
{
    std::vector<double> x = slot_data(attn, s0); // S row by row, then z
    REQUIRE(x.size() == std::size_t(us.size() + uz.size()));
    std::size_t at = 0;
    for (index i = 0; i < us.rows(); ++i)
        for (index j = 0; j < us.cols(); ++j) x[at++] += h * us(i, j);
    for (index i = 0; i < uz.size(); ++i) x[at++] += h * uz[i];
    return with_slot_data(attn, s0, x);
}

TEST_CASE("State backward: the gradient w.r.t. the initial state equals central finite differences", "[state][backward][fd]")
{
    using S = double;
    const index n = 7, d = 3, e = 2;
    int checked = 0;
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        const plain_attention<S> attn({}, {}, causal<S>(norm));
        const index m = attn.encoded_dim(d);
        const bool with_den = norm == normalization::sum;
        // S0 from a prefix of 5 tokens; the weights of the final state in the loss from another sequence.
        const auto s0 = state_after(attn, 1, 1, 5, d, e, 40), weights = state_after(attn, 1, 1, 4, d, e, 50);
        const bhnd<S> q(1, 1, n, d, 1), k(1, 1, n, d, 2), v(1, 1, n, e, 3), dout(1, 1, n, e, 4);
        bhnd<S> dq(1, 1, n, d, 0), dk(1, 1, n, d, 0), dv(1, 1, n, e, 0);
        auto grad = attn.make_state(1, 1);
        attn.backward(q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), dv.out(), s0, grad, &weights);
        // L(S0) = ⟨dout, out⟩ + ⟨W_S, S_final⟩ + ⟨w_z, z_final⟩, along a random direction (us, uz).
        const row_matrix<double> us = test::uniform<double>(m, e, 60);
        const vector<double> uz = with_den ? vector<double>(test::uniform<double>(m, 1, 61)) : vector<double>();
        double loss_abs = 0;
        const auto loss = [&](double hstep) {
            auto st = shifted(attn, s0, us, uz, hstep);
            bhnd<S> out(1, 1, n, e, 0);
            attn.forward(q.in(), k.in(), v.in(), out.out(), st);
            double l = test::dot(dout.data, out.data) + test::dot(weights.kv(0), st.kv(0));
            loss_abs = (dout.data.cwiseAbs().array() * out.data.cwiseAbs().array()).sum() +
                       (weights.kv(0).cwiseAbs().array() * st.kv(0).cwiseAbs().array()).sum();
            if (with_den) {
                l += weights.key_sum(0).dot(st.key_sum(0));
                loss_abs += weights.key_sum(0).cwiseAbs().dot(st.key_sum(0).cwiseAbs());
            }
            return l;
        };
        const double analytic = test::dot(grad.kv(0), us) + (with_den ? grad.key_sum(0).dot(uz) : 0.0);
        loss(0.0);
        // Rounding of L: each out_i and S_final entry is a sum of at most M' + N + C + 4 terms (γ relative to
        // the sum of absolute terms), doubled for the normalization, plus the N·E + M'·(E + 1) terms of the
        // dot products themselves.
        const double terms = double(m + n + 8 + 4 + n * e + m * (e + 1));
        const double f_round = 4.0 * terms * test::unit_roundoff<double>() * loss_abs;
        const double norm_grad = std::sqrt(grad.kv(0).squaredNorm() + (with_den ? grad.key_sum(0).squaredNorm() : 0.0));
        const double norm_u = std::sqrt(us.squaredNorm() + uz.squaredNorm());
        const double norm_s0 = std::sqrt(s0.kv(0).squaredNorm() + s0.key_sum(0).squaredNorm());
        CAPTURE(int(norm), analytic);
        test::require_fd(test::central_difference(loss, analytic, f_round, norm_grad * norm_u, norm_u / norm_s0));
        ++checked;
    }
    REQUIRE(checked == 3);
}

TEST_CASE("State backward: results do not depend on the thread count", "[state][backward][threads]")
{
    using S = double;
    const index b = 1, h = 2, n = 70, d = 5, e = 3;
    const bhnd<S> q(b, h, n, d, 31), k(b, h, n, d, 32), v(b, h, n, e, 33), dout(b, h, n, e, 34);
    const auto pieces = random_pieces(n, 9);
    std::vector<row_matrix<S>> grads;
    for (const int threads : {1, 2, 3}) {
        auto opt = causal<S>();
        opt.threads = threads;
        opt.segment_rows = 8; // long pieces run their segments in parallel
        const plain_attention<S> attn({}, {}, opt);
        bhnd<S> dq(b, h, n, d, 0), dk(b, h, n, d, 0), dv(b, h, n, e, 0);
        const auto g = backward_pieces(attn, q, k, v, dout, dq, dk, dv, pieces);
        row_matrix<S> all(3 * b * h * n + 2 * h, std::max(d, e) * std::max<index>(attn.encoded_dim(d), 1));
        all.setZero();
        all.topLeftCorner(b * h * n, d) = dq.data;
        all.block(b * h * n, 0, b * h * n, d) = dk.data;
        all.block(2 * b * h * n, 0, b * h * n, e) = dv.data;
        for (index hi = 0; hi < h; ++hi) {
            const row_matrix<S>& kv = g.kv(0, hi);
            all.row(3 * b * h * n + 2 * hi).head(kv.size()) = Eigen::Map<const vector<S>>(kv.data(), kv.size()).transpose();
            all.row(3 * b * h * n + 2 * hi + 1).head(g.key_sum(0, hi).size()) = g.key_sum(0, hi).transpose();
        }
        grads.push_back(all);
    }
    CHECK(test::bit_identical(grads[0], grads[1]));
    CHECK(test::bit_identical(grads[0], grads[2]));
}

TEST_CASE("State backward: states of the wrong shape are refused, nothing written", "[state][backward][errors]")
{
    using S = double;
    using Catch::Matchers::Contains;
    const index b = 2, h = 2, n = 6, d = 4, e = 3;
    const plain_attention<S> attn({}, {}, causal<S>());
    const bhnd<S> q(b, h, n, d, 1), k(b, h, n, d, 2), v(b, h, n, e, 3), dout(b, h, n, e, 4);
    bhnd<S> dq(b, h, n, d, 5), dk(b, h, n, d, 6), dv(b, h, n, e, 7), out(b, h, n, e, 8);
    auto state = attn.make_state(b, h);
    attn.forward(q.in(0, 2), k.in(0, 2), v.in(0, 2), out.out(0, 2), state);
    auto grad = attn.make_state(b, h);
    attn.backward(q.in(2, 4), k.in(2, 4), v.in(2, 4), dout.in(2, 4), dq.out(2, 4), dk.out(2, 4), dv.out(2, 4), state, grad);
    const auto grad_saved = grad.export_bytes(attn);
    const row_matrix<S> dq0 = dq.data, dk0 = dk.data, dv0 = dv.data;
    const auto backward = [&](const auto& initial, const auto* final_grad) {
        attn.backward(q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), dv.out(), initial, grad, final_grad);
    };
    const decltype(state)* none = nullptr;
    // A state of width D = 3 (other M') or E = 2 continued at D = 4, E = 3; as initial or final_grad.
    require_shape_refusals(attn, backward, state, state_after(attn, b, h, 1, 3, e, 9), state_after(attn, b, h, 1, d, 2, 9));
    // A state of another normalization (no z) under sum.
    const plain_attention<S> rms({}, {}, causal<S>(normalization::rms));
    auto rms_state = rms.make_state(b, h);
    rms.forward(q.in(0, 1), k.in(0, 1), v.in(0, 1), out.out(0, 1), rms_state);
    REQUIRE_THROWS_WITH(backward(rms_state, none), Contains("initial state slot sizes"));
    // Non-causal attention has no state; a bad view is refused before the states are looked at.
    const plain_attention<S> full({}, {}, options<S>());
    REQUIRE_THROWS_WITH(full.backward(q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), dv.out(), state, grad),
                        Contains("options.mask"));
    REQUIRE_THROWS_WITH(attn.backward(q.in(), k.in(), v.in(), dout.in(0, 2), dq.out(), dk.out(), dv.out(), state, grad),
                        Contains("dout view"));
    CHECK(test::bit_identical(dq.data, dq0));
    CHECK(test::bit_identical(dk.data, dk0));
    CHECK(test::bit_identical(dv.data, dv0));
    CHECK(grad.export_bytes(attn) == grad_saved);
}


TEMPLATE_TEST_CASE("State backward: no leak from the future through a state call or a poisoned later call",
                   "[state][backward][no_leak]", LINRPE_TEST_SCALARS)
{
    // t = 29 inside a chunk of 8; prefix 13 and a later call of 11 tokens (support_state.hpp's properties).
    for (const normalization norm : {normalization::sum, normalization::none, normalization::rms}) {
        CAPTURE(int(norm));
        REQUIRE(require_state_no_leak(plain_attention<TestType>({}, {}, causal<TestType>(norm)), 2, 2, 6, 4, 13, 60, 29, 11) == 5);
    }
}

} // namespace
} // namespace test_state
