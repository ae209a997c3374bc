#pragma once
// One random attention call, decoded from a stream of 32-bit words (a seeded generator in test_fuzz.cpp,
// the fuzzer's bytes in fuzz_attention.cpp), run, and judged:
//   - refused: a linrpe::error whose message names an argument ("linrpe: <argument>: expected .., got ..")
//     and every output buffer bit-identical to its contents before the call;
//   - accepted: every output finite and within the derived rounding bound of the exact reference
//     (reference::kernel_attention in double from features() and mixing_matrix() of the same attention),
//     and every output element outside the views (padding) untouched.
// Bound: test::error_bound (support.hpp: γ_terms of |Ψ||Κ|ᵀ ⊙ |W| times |V|, through the normalization,
// times 2) with terms = M' + Nk + min(chunk, N) + 4, plus fft_terms for sequence-mixing encodings (the
// FFT's log-depth transforms and its √(N + Nk) contraction, as in test_toeplitz_attention.cpp).
#include "../support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fuzz {
using namespace linrpe;
using linrpe::index;

/// 32-bit words from bytes (zeros once they run out) or from a seeded std::mt19937.
class source {
public:
    source(const std::uint8_t* data, std::size_t size) : m_data(data), m_size(size) {}
    explicit source(std::uint32_t seed) : m_gen(seed), m_random(true) {}

    std::uint32_t next()
    {
        if (m_random) return static_cast<std::uint32_t>(m_gen());
        std::uint32_t w = 0;
        for (int b = 0; b < 4 && m_pos < m_size; ++b) w |= std::uint32_t(m_data[m_pos++]) << (8 * b);
        return w;
    }
    /// Uniform in [0, n) (0 for n = 0).
    index below(index n) { return n <= 0 ? 0 : index(next() % std::uint32_t(n)); }
    index between(index lo, index hi) { return lo + below(hi - lo + 1); }
    bool percent(int p) { return below(100) < p; }

private:
    const std::uint8_t* m_data = nullptr;
    std::size_t m_size = 0, m_pos = 0;
    std::mt19937 m_gen;
    bool m_random = false;
};

enum class encoding { none, lrpe, sine_spe, conv_spe, toeplitz, lrpe_toeplitz, spe_toeplitz, count };
enum class mode { batched, single, decoder };

/// Everything that defines one case (plain data, so a failure can print it).
struct spec {
    bool use_double = true;
    encoding enc = encoding::none;
    mode how = mode::batched;
    index batch = 1, heads = 1, pe_heads = 1, n = 1, nk = 1, d = 1, e = 1;
    int mask = 0, norm = 0, toeplitz = 0, threads = 0;
    double eps = 1e-6;
    index chunk = 32, segment = 4096;
    index q_first = 0, k_first = 0, head = 0;
    bool bnhd[4] = {false, false, false, false};
    index pad[4][3] = {}; // per tensor q, k, v, out: padding of the token, head and batch strides
    bool alias_out_v = false, overlapping_out = false;
    int lrpe_kind_value = 0;
    index lrpe_dim_offset = 0, t_max = 1, sines = 1, realizations = 1, width = 1;
    double bias_scale = 1.0, input_scale = 1.0;
    std::uint32_t seed = 0;
    std::vector<index> pieces; // decoder: tokens per call (1 = step)

    std::string describe() const
    {
        return detail::concat("double=", use_double, " enc=", int(enc), " mode=", int(how), " B=", batch, " H=", heads,
                              " H_pe=", pe_heads, " N=", n, " Nk=", nk, " D=", d, " E=", e, " mask=", mask, " norm=", norm,
                              " toeplitz=", toeplitz, " threads=", threads, " eps=", eps, " chunk=", chunk,
                              " segment=", segment, " q_first=", q_first, " k_first=", k_first, " head=", head,
                              " layouts=", bnhd[0], bnhd[1], bnhd[2], bnhd[3], " alias=", alias_out_v,
                              " overlap=", overlapping_out, " lrpe_kind=", lrpe_kind_value, " lrpe_dim+=", lrpe_dim_offset,
                              " t_max=", t_max, " K=", sines, " R=", realizations, " W=", width, " seed=", seed);
    }
};

inline index pick_length(source& s)
{
    const index r = s.below(10);
    if (r < 4) return s.below(4);       // 0..3
    if (r < 8) return s.between(4, 40); // short
    return s.between(41, 160);          // beyond segments and blocks
}

// `far`: the largest valid positions an encoding computes consistently at. LRPE reduces p·θ exactly only
// while |p·θ| < 2^29·2π (detail::reduced_angle; beyond, ulp(p·θ)/2, 0.5 rad at 2^53), and features() and
// forward() anchor their angle blocks at different positions, so LRPE cases stay below 2^31.
inline index pick_position(source& s, index length, index far)
{
    switch (s.below(8)) {
    case 0: // at the edge of the valid range: for max_position the last one or two are refused
        return far == max_position ? max_position - length - s.below(3) + 1 : far - length;
    case 1: return s.percent(50) ? std::numeric_limits<index>::max() - s.below(4) : -index(s.below(3)) - 1;
    case 2: return std::min(index(1) << 40, far - length);
    case 3:
    case 4: return s.below(1000);
    default: return 0;
    }
}

inline spec decode(source& s)
{
    spec c;
    c.use_double = s.percent(50);
    c.enc = encoding(s.below(index(encoding::count)));
    c.how = mode(s.below(3));
    c.batch = s.percent(10) ? 0 : s.between(1, 2);
    c.heads = s.percent(10) ? 0 : s.between(1, 3);
    c.pe_heads = std::max<index>(1, c.heads - (s.percent(8) ? 1 : 0));
    c.n = pick_length(s);
    c.mask = s.percent(2) ? 5 : int(s.below(2));
    if (c.how == mode::decoder && s.percent(90)) c.mask = 1;
    c.nk = (c.mask == 0 && s.percent(50)) ? pick_length(s) : c.n;
    c.d = s.percent(5) ? 0 : s.between(1, 7);
    c.e = s.percent(5) ? 0 : s.between(1, 5);
    c.norm = s.percent(2) ? 7 : int(s.below(3));
    if ((c.enc == encoding::lrpe || c.enc == encoding::lrpe_toeplitz) && s.percent(70)) c.norm = 2; // rms: signed scores
    c.toeplitz = s.percent(2) ? 9 : int(s.below(4));
    c.threads = int(s.below(3));
    const double epsilons[] = {1e-6, 1e-3, 1.0, 0.0, std::numeric_limits<double>::quiet_NaN(), 1e-6};
    c.eps = s.percent(95) ? epsilons[s.below(3)] : epsilons[s.below(6)];
    switch (s.below(8)) {
    case 0: c.chunk = 0; break;
    case 1: c.chunk = options<double>::max_chunk_size + s.below(2); break;
    case 2: c.chunk = 1; break;
    default: c.chunk = s.between(1, 40);
    }
    switch (s.below(6)) {
    case 0: c.segment = s.percent(30) ? 0 : std::numeric_limits<index>::max() - s.below(2); break;
    case 1:
    case 2: c.segment = s.between(1, 64); break;
    default: c.segment = 4096;
    }
    const bool lrpe_inside = c.enc == encoding::lrpe || c.enc == encoding::lrpe_toeplitz;
    const index far = lrpe_inside ? index(1) << 31 : max_position;
    c.q_first = pick_position(s, c.n, far);
    c.k_first = (c.mask == 0 && c.how == mode::single && s.percent(40)) ? pick_position(s, c.nk, far) : c.q_first;
    if (c.how == mode::decoder) c.q_first = c.k_first = 0; // a decoder starts at position 0
    c.head = s.percent(90) ? s.below(c.pe_heads) : c.pe_heads;
    for (int t = 0; t < 4; ++t) {
        c.bnhd[t] = s.percent(50);
        for (int a = 0; a < 3; ++a) c.pad[t][a] = s.percent(60) ? 0 : s.between(1, 3);
    }
    c.alias_out_v = s.percent(4);
    c.overlapping_out = s.percent(3);
    c.lrpe_kind_value = int(s.below(3));
    c.lrpe_dim_offset = s.percent(5) ? 1 : 0;
    c.t_max = s.percent(20) ? s.between(100, 300) : s.between(1, 12);
    c.sines = s.between(1, 3);
    c.realizations = s.between(1, 8);
    c.width = s.between(1, 6);
    c.bias_scale = s.percent(80) ? 1.0 : 0.1;
    c.input_scale = s.percent(80) ? 1.0 : 3.0;
    c.seed = s.next();
    for (index left = c.n; left > 0;) {
        const index p = std::min(left, s.percent(50) ? 1 : s.between(1, 20));
        c.pieces.push_back(p);
        left -= p;
    }
    if (c.pieces.empty() || s.percent(10)) c.pieces.insert(c.pieces.begin(), 0); // an empty prefill
    return c;
}

/// Result of running one case: passed, or why not.
struct outcome {
    bool passed = true, refused = false;
    std::string why;
};

// Tensor t of a case (0 q, 1 k, 2 v, 3 out) laid out as the case says, with its buffer.
template <class S>
struct buffer_view {
    std::vector<S> data;
    index strides[4] = {0, 0, 0, 1};
    index extents[4] = {0, 0, 0, 0};
};

template <class S>
buffer_view<S> make_buffer(const spec& c, int t, index tokens, index width, source& fill)
{
    buffer_view<S> b;
    const index h = c.heads, pt = c.pad[t][0], ph = c.pad[t][1], pb = c.pad[t][2];
    index ts, hs, bs;
    if (c.bnhd[t]) {
        hs = width + ph;
        ts = h * hs + pt;
        bs = tokens * ts + pb;
    } else {
        ts = width + pt;
        hs = tokens * ts + ph;
        bs = h * hs + pb;
    }
    if (t == 3 && c.overlapping_out && width > 1) hs = 1; // heads one element apart: overlapping output
    const index ext[4] = {c.batch, h, tokens, width}, str[4] = {bs, hs, ts, 1};
    index span = 0;
    bool empty = false;
    for (int a = 0; a < 4; ++a) {
        b.extents[a] = ext[a];
        b.strides[a] = str[a];
        empty = empty || ext[a] == 0;
        if (ext[a] > 0) span += (ext[a] - 1) * str[a];
    }
    b.data.resize(empty ? 0 : std::size_t(span + 1 + pt));
    for (S& x : b.data) x = static_cast<S>(c.input_scale * (2.0 * (fill.next() / 4294967295.0) - 1.0));
    return b;
}

template <class T, class S>
tensor_view<T> as_view(buffer_view<S>& b, index t0, index tokens)
{
    T* base = b.data.empty() ? nullptr : b.data.data() + t0 * b.strides[2];
    return tensor_view<T>(base, b.extents[0], b.extents[1], tokens, b.extents[3], b.strides[0], b.strides[1], b.strides[2], 1);
}

template <class S>
bool all_finite(const row_matrix<S>& m)
{
    return m.allFinite();
}

/// Whether `what` has the shape of a message naming an argument.
inline bool names_argument(const std::string& what)
{
    const auto expected = what.find(": expected ");
    return what.rfind("linrpe: ", 0) == 0 && expected != std::string::npos && expected > 8 &&
           what.find(", got ", expected) != std::string::npos;
}

// The encodings of a case: one per enum value.
template <class S>
positional::toeplitz_rpe<S> make_toeplitz(const spec& c, source& s)
{
    positional::toeplitz_rpe<S> pe(c.pe_heads, c.t_max);
    for (index i = 0; i < pe.bias.size(); ++i)
        pe.bias.data()[i] = static_cast<S>(c.bias_scale * (2.0 * (s.next() / 4294967295.0) - 1.0));
    return pe;
}
template <class S>
positional::lrpe<S> make_lrpe(const spec& c, index feature_dim)
{
    lrpe_options o;
    o.seed = c.seed;
    return positional::lrpe<S>(lrpe_kind(c.lrpe_kind_value), std::max<index>(1, feature_dim + c.lrpe_dim_offset), c.pe_heads, o);
}
template <class S>
positional::sine_spe<S> make_sine(const spec& c)
{
    return positional::sine_spe<S>(c.pe_heads, std::max<index>(1, c.d), c.sines, c.realizations, c.seed, c.seed % 2 == 1);
}

template <class S>
options<S> make_options(const spec& c)
{
    options<S> o;
    o.mask = static_cast<masking>(c.mask);
    o.norm = static_cast<normalization>(c.norm);
    o.toeplitz = static_cast<toeplitz_algorithm>(c.toeplitz);
    o.threads = c.threads;
    o.eps = static_cast<S>(c.eps);
    o.chunk_size = c.chunk;
    o.segment_rows = c.segment;
    return o;
}

// Checks one accepted call: out (tokens [0, done) of every (b, h)) against the reference, padding untouched.
template <class Attention, class S>
void check_result(const Attention& attn, const spec& c, buffer_view<S>& q, buffer_view<S>& k, buffer_view<S>& v,
                  const std::vector<S>& out_before, buffer_view<S>& out, index done, outcome& r)
{
    std::vector<char> inside(out.data.size(), 0);
    const index heads = c.heads;
    const auto qv = as_view<const S>(q, 0, c.n), kv = as_view<const S>(k, 0, c.nk), vv = as_view<const S>(v, 0, c.nk);
    const auto ov = as_view<const S>(out, 0, c.n);
    for (index b = 0; b < c.batch; ++b)
        for (index h = 0; h < heads; ++h) {
            const index pe_head = c.how == mode::single ? c.head : h;
            for (index t = 0; t < done; ++t) // tokens a refused decoder call did not reach stay as they were
                for (index ch = 0; ch < c.e; ++ch)
                    inside[std::size_t(b * out.strides[0] + h * out.strides[1] + t * out.strides[2] + ch)] = 1;
            const row_matrix<S> got = ov.slice(b, h).topRows(done);
            if (!all_finite(got)) {
                r = {false, false, detail::concat("non-finite output at (b, h) = (", b, ", ", h, ")")};
                return;
            }
            const row_matrix<S> qs = row_matrix<S>(qv.slice(b, h)).topRows(done), ks = kv.slice(b, h), vs = vv.slice(b, h);
            // Causal rows < done see keys < done only.
            const index keys = c.mask == 1 ? done : c.nk;
            const row_matrix<double> psi = attn.features(qs, role::query, pe_head, c.q_first).template cast<double>();
            const row_matrix<double> kappa = attn.features(ks.topRows(keys), role::key, pe_head, c.k_first).template cast<double>();
            const row_matrix<double> w = attn.mixing_matrix(done, keys, pe_head, c.q_first, c.k_first).template cast<double>();
            const row_matrix<double> vd = vs.topRows(keys).template cast<double>();
            const auto& opt = attn.opts();
            const row_matrix<double> ref = reference::kernel_attention(psi, kappa, vd, w, opt.norm, double(opt.eps));
            index terms = psi.cols() + keys + std::min(opt.chunk_size, std::max<index>(c.n, 1)) + 4;
            if constexpr (Attention::positional_encoding_type::has_mixing)
                terms += index(4.0 * std::log2(double(2 * (done + keys) + 2)) * std::sqrt(double(done + keys)));
            const double bound = test::error_bound(psi, kappa, w, vd, opt.norm, double(opt.eps), test::unit_roundoff<S>(), terms);
            const double err = test::abs_error(got, ref);
            if (!(err <= bound)) {
                r = {false, false, detail::concat("error ", err, " > bound ", bound, " at (b, h) = (", b, ", ", h, ")")};
                return;
            }
        }
    for (std::size_t i = 0; i < out.data.size(); ++i)
        if (!inside[i] && std::memcmp(&out.data[i], &out_before[i], sizeof(S)) != 0) {
            r = {false, false, detail::concat("padding element ", i, " of out was written")};
            return;
        }
}

template <class Attention>
outcome run_with(const spec& c, const Attention& attn, source& s)
{
    using S = typename Attention::scalar_type;
    outcome r;
    auto q = make_buffer<S>(c, 0, c.n, c.d, s), k = make_buffer<S>(c, 1, c.nk, c.d, s), v = make_buffer<S>(c, 2, c.nk, c.e, s);
    auto out = make_buffer<S>(c, 3, c.n, c.e, s);
    for (S& x : out.data) x = S(42);
    const bool alias = c.alias_out_v && c.nk == c.n;
    if (alias) out = v; // the output's buffer is v's: refused (both views walk the same elements)
    const std::vector<S> q0 = q.data, k0 = k.data, v0 = v.data;
    std::vector<S> before = out.data;
    index done = 0;
    const auto inputs_unchanged = [&] { return q.data == q0 && k.data == k0 && (alias || v.data == v0); };
    try {
        if (c.how == mode::batched) {
            attn.forward(as_view<const S>(q, 0, c.n), as_view<const S>(k, 0, c.nk), as_view<const S>(v, 0, c.nk),
                         as_view<S>(alias ? v : out, 0, c.n), c.q_first);
            done = c.n;
        } else if (c.how == mode::single) {
            // One (b, h) = (0, 0) slice of the views, as strided matrices; the encoding's head is c.head.
            if (c.batch == 0 || c.heads == 0) return r;
            const auto sl = [](auto view) { return view.slice(0, 0); };
            auto o = sl(as_view<S>(alias ? v : out, 0, c.n));
            attn.forward(sl(as_view<const S>(q, 0, c.n)), sl(as_view<const S>(k, 0, c.nk)), sl(as_view<const S>(v, 0, c.nk)), o,
                         c.head, c.q_first, c.k_first);
            done = c.n;
        } else {
            auto dec = attn.decoder(c.batch, c.heads);
            for (const index p : c.pieces) {
                before = (alias ? v : out).data;
                const auto qv = as_view<const S>(q, done, p), kv = as_view<const S>(k, done, p), vv = as_view<const S>(v, done, p);
                const auto ov = as_view<S>(alias ? v : out, done, p);
                if (p == 1) dec.step(qv, kv, vv, ov);
                else dec.prefill(qv, kv, vv, ov);
                done += p;
                if (dec.position() != done) {
                    r = {false, false, detail::concat("decoder position ", dec.position(), " after ", done, " tokens")};
                    return r;
                }
            }
        }
    } catch (const linrpe::error& e) {
        r.refused = true;
        const std::string what = e.what();
        if (!names_argument(what)) r = {false, true, "refusal does not name an argument: " + what};
        else if ((alias ? v : out).data != before)
            r = {false, true, "refused after writing the output: " + what};
        else if (!inputs_unchanged())
            r = {false, true, "refused after writing an input: " + what};
        if (!r.passed || c.how != mode::decoder || done == 0 || alias) return r;
        // A decoder refused mid-stream: the tokens before it must still be right.
    } catch (const std::exception& e) {
        return {false, false, std::string("unexpected exception: ") + e.what()};
    }
    const bool nonempty = c.batch > 0 && c.heads > 0 && c.n > 0 && c.e > 0;
    if (alias && nonempty && !r.refused) return {false, false, "an output aliasing v was accepted"};
    if (c.overlapping_out && nonempty && c.e > 1 && c.heads > 1 && c.how != mode::single && !r.refused)
        return {false, false, "an output view with overlapping heads was accepted"};
    if (!inputs_unchanged()) return {false, false, "an input was modified"};
    if (c.how == mode::single) {
        // Only slice (0, 0) is written; run the reference on it alone.
        spec one = c;
        one.batch = one.heads = 1;
        check_result(attn, one, q, k, v, before, out, done, r);
    } else {
        check_result(attn, c, q, k, v, before, out, done, r);
    }
    return r;
}

template <class S>
outcome run_scalar(const spec& c, source& s)
{
    using elu = feature_maps::elu_plus_one;
    try {
        const options<S> o = make_options<S>(c);
        const index m = c.d; // elu keeps the width
        switch (c.enc) {
        case encoding::none: return run_with(c, linear_attention<elu, positional::none, S>({}, {}, o), s);
        case encoding::lrpe: return run_with(c, linear_attention<elu, positional::lrpe<S>, S>({}, make_lrpe<S>(c, m), o), s);
        case encoding::sine_spe: return run_with(c, linear_attention<elu, positional::sine_spe<S>, S>({}, make_sine<S>(c), o), s);
        case encoding::conv_spe: {
            positional::conv_spe<S> pe(c.pe_heads, std::max<index>(1, c.d), c.width, c.realizations, c.seed, c.seed % 2 == 1);
            pe.algorithm = static_cast<positional::conv_algorithm>(c.seed % 3);
            return run_with(c, linear_attention<elu, positional::conv_spe<S>, S>({}, pe, o), s);
        }
        case encoding::toeplitz:
            return run_with(c, linear_attention<elu, positional::toeplitz_rpe<S>, S>({}, make_toeplitz<S>(c, s), o), s);
        case encoding::lrpe_toeplitz: {
            using pe = positional::compose<positional::lrpe<S>, positional::toeplitz_rpe<S>>;
            return run_with(c, linear_attention<elu, pe, S>({}, pe(make_lrpe<S>(c, m), make_toeplitz<S>(c, s)), o), s);
        }
        case encoding::spe_toeplitz:
        default: {
            using pe = positional::compose<positional::sine_spe<S>, positional::toeplitz_rpe<S>>;
            return run_with(c, linear_attention<elu, pe, S>({}, pe(make_sine<S>(c), make_toeplitz<S>(c, s)), o), s);
        }
        }
    } catch (const linrpe::error& e) { // refused at construction (options, encoding parameters)
        outcome r;
        r.refused = true;
        if (!names_argument(e.what())) r = {false, true, std::string("refusal does not name an argument: ") + e.what()};
        return r;
    } catch (const std::exception& e) {
        return {false, false, std::string("unexpected exception: ") + e.what()};
    }
}

/// Decodes one case from `s`, runs it and judges it.
inline outcome run_case(source& s, spec& c)
{
    c = decode(s);
    return c.use_double ? run_scalar<double>(c, s) : run_scalar<float>(c, s);
}

} // namespace fuzz
