// The tour of linrpe: every positional-encoding family on one problem, against the exact references.
//   ./scripts/run demo                 N = 4096, H = 8, D = M = E = 64, float, causal
//   tour --smoke                       small sizes (the test suite runs this)
//   tour --out DIR                     where the pictures go (default: tour_output)
// Prints one table: error against the exact reference (deterministic families: reference::kernel_attention
// from the same ψ, κ, w, head 0; stochastic SPE: against its softmax-RPE target at N = 512), the runtime of
// the batched call over all heads, and the speedup over exact softmax attention with a relative bias
// (a blocked GEMM implementation in float, the fast way to compute the O(N²) target). Then writes pictures.
#include "plot_png.hpp"

#include <linrpe.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace {
using namespace linrpe;
using linrpe::index;
using clock_type = std::chrono::steady_clock;

struct problem {
    index heads, n, d;
    std::vector<float> q, k, v;
    tensor_view<const float> view(const std::vector<float>& x) const { return view_bhnd(x.data(), 1, heads, n, d); }
    row_matrix<float> head(const std::vector<float>& x, index h, index rows) const { return view(x).slice(0, h).topRows(rows); }
};

problem make_problem(index heads, index n, index d)
{
    problem p{heads, n, d, {}, {}, {}};
    const random::philox_stream s(2021, random::purpose::user);
    for (auto* x : {&p.q, &p.k, &p.v}) x->resize(static_cast<std::size_t>(heads * n * d));
    s.fill_normal(0, p.q.data(), index(p.q.size()));
    s.fill_normal(p.q.size(), p.k.data(), index(p.k.size()));
    s.fill_normal(2 * p.q.size(), p.v.data(), index(p.v.size()));
    for (auto* x : {&p.q, &p.k}) for (float& f : *x) f *= 0.35f; // moderate logits, as after a learned scale
    return p;
}

double bias_of(index t) { return -0.02 * double(std::abs(t)) + 0.3 * std::cos(0.1 * double(t)); }

/// Exact causal softmax attention with bias b_{j−i}, float, blocked GEMMs, all heads: the O(N²) baseline.
double softmax_seconds(const problem& p, std::vector<float>& out)
{
    out.assign(p.q.size(), 0.f);
    const float scale = 1.0f / std::sqrt(float(p.d));
    std::vector<float> bias(static_cast<std::size_t>(2 * p.n));
    for (index t = -p.n + 1; t < p.n; ++t) bias[t + p.n] = float(bias_of(t));
    const auto t0 = clock_type::now();
    detail::parallel_for(p.heads, 0, [&](index h) {
        const row_matrix<float> q = p.view(p.q).slice(0, h), k = p.view(p.k).slice(0, h), v = p.view(p.v).slice(0, h);
        auto o = view_bhnd(out.data(), 1, p.heads, p.n, p.d).slice(0, h);
        const index block = 256;
        row_matrix<float> s;
        for (index r0 = 0; r0 < p.n; r0 += block) {
            const index rows = std::min(block, p.n - r0), cols = std::min(p.n, r0 + rows); // causal: keys < r0 + rows
            s.noalias() = (q.middleRows(r0, rows) * k.topRows(cols).transpose()) * scale;
            for (index i = 0; i < rows; ++i) {
                float top = -1e30f;
                for (index j = 0; j <= r0 + i; ++j) top = std::max(top, s(i, j) += bias[j - (r0 + i) + p.n]);
                float sum = 0;
                for (index j = 0; j < cols; ++j) sum += s(i, j) = j <= r0 + i ? std::exp(s(i, j) - top) : 0.f;
                s.row(i) /= sum;
            }
            o.middleRows(r0, rows).noalias() = s * v.topRows(cols);
        }
    });
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

template <class Attention>
double run(const Attention& attn, const problem& p, std::vector<float>& out)
{
    out.assign(p.q.size(), 0.f);
    double best = 1e30;
    for (int r = 0; r < 2; ++r) { // best of two: the first call also pays page faults
        const auto t0 = clock_type::now();
        attn.forward(p.view(p.q), p.view(p.k), p.view(p.v), view_bhnd(out.data(), 1, p.heads, p.n, p.d));
        best = std::min(best, std::chrono::duration<double>(clock_type::now() - t0).count());
    }
    return best;
}

/// Relative error of head 0 against reference::kernel_attention built from the same ψ, κ and weights.
template <class Attention>
double exact_error(const Attention& attn, const problem& p, const std::vector<float>& out, index rows)
{
    const row_matrix<float> q = p.head(p.q, 0, rows), k = p.head(p.k, 0, rows), v = p.head(p.v, 0, rows);
    const row_matrix<double> ref = reference::kernel_attention(attn.features(q, role::query), attn.features(k, role::key), v,
                                                               attn.mixing_matrix(rows, rows), attn.opts().norm, attn.opts().eps);
    const row_matrix<float> got = view_bhnd(out.data(), 1, p.heads, p.n, p.d).slice(0, 0).topRows(rows);
    return (got.cast<double>() - ref).norm() / ref.norm();
}

/// Head 0's normalized attention weights A_ij = w_ij⟨ψ_i, κ_j⟩ / Σ_j |…| over the first `rows` tokens.
template <class Attention>
std::vector<double> weights(const Attention& attn, const problem& p, index rows)
{
    const row_matrix<float> q = p.head(p.q, 0, rows), k = p.head(p.k, 0, rows);
    row_matrix<double> a = ((attn.features(q, role::query).template cast<double>() *
                             attn.features(k, role::key).template cast<double>().transpose())
                                .array() *
                            attn.mixing_matrix(rows, rows).template cast<double>().array())
                               .matrix();
    for (index i = 0; i < rows; ++i) a.row(i) /= std::max(1e-30, a.row(i).cwiseAbs().sum());
    return std::vector<double>(a.data(), a.data() + a.size());
}

struct row_out {
    std::string name;
    double error;
    std::string against;
    double seconds;
};

void print(const row_out& r, double softmax_s)
{
    std::printf("%-30s %11.2e  %-36s %10.2f %9.1fx\n", r.name.c_str(), r.error, r.against.c_str(), 1e3 * r.seconds,
                softmax_s / r.seconds);
}
} // namespace

int main(int argc, char** argv)
{
    using linrpe::index; // a block-scope using-declaration hides POSIX ::index from <strings.h>
    bool smoke = false;
    std::string dir = "tour_output";
    for (int a = 1; a < argc; ++a) {
        if (!std::strcmp(argv[a], "--smoke")) smoke = true;
        else if (!std::strcmp(argv[a], "--out") && a + 1 < argc) dir = argv[++a];
    }
    const index heads = 8, n = smoke ? 256 : 4096, d = 64, check_rows = smoke ? 256 : 1024, spe_n = smoke ? 128 : 512;
    const problem p = make_problem(heads, n, d);
    std::printf("linrpe %s tour: B = 1, H = %ld, N = %ld, D = M = E = %ld, float, causal; errors on head 0%s\n\n",
                LINRPE_VERSION_STRING, long(heads), long(n), long(d),
                check_rows < n ? (" over the first " + std::to_string(check_rows) + " tokens").c_str() : "");
    std::vector<float> out;
    const double soft_s = softmax_seconds(p, out);
    std::printf("%-30s %11s  %-36s %10s %10s\n", "configuration", "rel. error", "against", "time [ms]", "speedup");
    std::printf("%-30s %11s  %-36s %10.2f %9.1fx\n", "exact softmax + rel. bias", "-", "(the O(N^2) baseline)", 1e3 * soft_s, 1.0);

    options<float> sum_opt, rms_opt;
    sum_opt.mask = rms_opt.mask = masking::causal;
    rms_opt.norm = normalization::rms;
    std::vector<row_out> rows;
    const std::string exact = "exact kernel attention";

    // none
    const linear_attention<feature_maps::elu_plus_one, positional::none, float> plain({}, {}, sum_opt);
    double t = run(plain, p, out);
    print({"none (elu+1)", exact_error(plain, p, out, check_rows), exact, t}, soft_s);
    const auto w_none = weights(plain, p, 128);

    // LRPE
    using lrpe_attn = linear_attention<feature_maps::elu_plus_one, positional::lrpe<float>, float>;
    lrpe_options perm_opt;
    perm_opt.seed = 3;
    const lrpe_attn rotate({}, positional::lrpe<float>::rope(d, heads), rms_opt);
    const lrpe_attn cosine({}, positional::lrpe<float>(lrpe_kind::cosine, d, heads), rms_opt);
    const lrpe_attn permute({}, positional::lrpe<float>(lrpe_kind::permutation, d, heads, perm_opt), rms_opt);
    t = run(rotate, p, out);
    print({"LRPE rotate (RoPE), rms", exact_error(rotate, p, out, check_rows), exact, t}, soft_s);
    t = run(cosine, p, out);
    print({"LRPE cosine, rms", exact_error(cosine, p, out, check_rows), exact, t}, soft_s);
    t = run(permute, p, out);
    print({"LRPE permutation, rms", exact_error(permute, p, out, check_rows), exact, t}, soft_s);
    const auto w_rotate = weights(rotate, p, 128);

    // SPE (gated), FAVOR+ features on R = 64 realizations: error against the softmax-RPE target at spe_n.
    const index r = 64, favor_m = 256;
    using sine_attn = linear_attention<feature_maps::favor, positional::sine_spe<float>, float>;
    using conv_attn = linear_attention<feature_maps::favor, positional::conv_spe<float>, float>;
    const sine_attn sine(feature_maps::favor(r, favor_m, 11), positional::sine_spe<float>(heads, d, 5, r, 1, true), sum_opt);
    const conv_attn conv(feature_maps::favor(r, favor_m, 12), positional::conv_spe<float>(heads, d, 32, r, 2, true), sum_opt);
    const auto spe_error = [&](const auto& attn) {
        const row_matrix<float> q = p.head(p.q, 0, spe_n), k = p.head(p.k, 0, spe_n), v = p.head(p.v, 0, spe_n);
        const row_matrix<float> got = attn(q, k, v);
        const auto& pe = attn.positional();
        const row_matrix<double> target = reference::softmax_rpe_attention(
            q, k, v, masking::causal, [&](index dim, index delta) { return pe.expected_kernel(0, dim, delta); });
        return (got.cast<double>() - target).norm() / target.norm();
    };
    const std::string target = "softmax-RPE, N = " + std::to_string(spe_n);
    t = run(sine, p, out);
    print({"sineSPE K=5 gated, favor", spe_error(sine), target, t}, soft_s);
    t = run(conv, p, out);
    print({"convSPE W=32 gated, favor", spe_error(conv), target, t}, soft_s);
    const auto w_sine = weights(sine, p, 128);

    // Toeplitz RPE, T_max = 128, the same bias as the softmax baseline
    positional::toeplitz_rpe<float> rpe(heads, 128);
    for (index h = 0; h < heads; ++h)
        for (index tt = -127; tt <= 127; ++tt) rpe.bias(h, tt + 127) = float(bias_of(tt));
    using toe_attn = linear_attention<feature_maps::elu_plus_one, positional::toeplitz_rpe<float>, float>;
    std::vector<double> w_toeplitz;
    for (const auto& [algo, name] : {std::pair{toeplitz_algorithm::dense, "Toeplitz dense"}, std::pair{toeplitz_algorithm::fft, "Toeplitz fft"},
                                     std::pair{toeplitz_algorithm::banded, "Toeplitz banded"},
                                     std::pair{toeplitz_algorithm::automatic, "Toeplitz automatic"}}) {
        options<float> o = sum_opt;
        o.toeplitz = algo;
        const toe_attn attn({}, rpe, o);
        t = run(attn, p, out);
        print({std::string(name) + ", T_max=128", exact_error(attn, p, out, check_rows), exact, t}, soft_s);
        if (w_toeplitz.empty()) w_toeplitz = weights(attn, p, 128);
    }
    using both_pe = positional::compose<positional::sine_spe<float>, positional::toeplitz_rpe<float>>;
    const linear_attention<feature_maps::favor, both_pe, float> both(feature_maps::favor(r, favor_m, 13),
                                                                     both_pe(positional::sine_spe<float>(heads, d, 5, r, 1, true), rpe), sum_opt);
    t = run(both, p, out);
    print({"sineSPE + Toeplitz, favor", exact_error(both, p, out, std::min<index>(check_rows, 512)), exact + " (this draw)", t}, soft_s);

    // Pictures: each says in its title and caption what it shows, so that it reads on its own.
    mkdir(dir.c_str(), 0755);
    const std::string ext = plot::extension();
    bool ok = true;
    {   // Attention weights of head 0 over the first 128 tokens, one picture per family.
        const int shown = 128;
        plot::heatmap_scale positive;
        positive.masked = [](int i, int j) { return j > i; };
        plot::heatmap_scale signed_scale = positive;
        signed_scale.signed_data = true;
        const std::vector<std::string> how{
            "Weights a_ij = w_ij \u27e8\u03c8_i, \u03ba_j\u27e9 / \u03a3_j |w_ij \u27e8\u03c8_i, \u03ba_j\u27e9| of head 0 over the first "
            "128 tokens of random q, k, v (N = " + std::to_string(n) + ", causal: grey cells j > i are masked), shown as "
            "(i + 1)\u00b7a_ij so that every row reads against uniform attention over its i + 1 keys (= 1)."};
        const auto picture = [&](std::vector<double> w, const std::string& title, const std::string& extra,
                                 const plot::heatmap_scale& scale, const std::string& file) {
            for (int i = 0; i < shown; ++i)
                for (int j = 0; j < shown; ++j) w[std::size_t(i) * shown + j] *= double(i + 1);
            plot::heatmap_text text;
            text.title = title;
            text.value_label = "(i + 1)\u00b7a_ij   (1 = uniform)";
            text.caption = how;
            if (!extra.empty()) text.caption.push_back(extra);
            return plot::heatmap(w, shown, shown, text, dir + "/" + file + "." + ext, scale, 3);
        };
        ok &= picture(w_none, "No positional encoding (elu+1): attention weights", "", positive, "weights_none");
        index negative = 0, visible = 0;
        double lowest = 0;
        for (int i = 0; i < shown; ++i)
            for (int j = 0; j <= i; ++j) {
                const double a = w_rotate[std::size_t(i) * shown + j];
                negative += a < 0, ++visible, lowest = std::min(lowest, a * (i + 1));
            }
        ok &= picture(w_rotate, "LRPE rotate (RoPE), elu+1: signed attention weights",
                      "LRPE scores can be negative, so the map diverges around 0: red > 0, white = 0, blue < 0 (rms normalization). " +
                          (negative ? "Here " + std::to_string(negative) + " of the " + std::to_string(visible) +
                                      " visible weights are negative (lowest " + plot::fmt(lowest) + ")."
                                : "Here none of the " + std::to_string(visible) +
                                      " visible weights is negative: with positive elu+1 features these RoPE scores stay "
                                      "positive, which nothing guarantees in general."),
                      signed_scale, "weights_lrpe_rotate");
        plot::heatmap_scale clipped = positive;
        clipped.clip_quantile = 0.995; // a few isolated large weights of the random draw would flatten the rest
        ok &= picture(w_sine, "sineSPE (K = 5, gated) + FAVOR+: attention weights",
                      "One draw of R = 64 realizations; FAVOR+ with M = 256 features on the R-wide codes. Colour range "
                      "clipped at the 99.5th percentile (a few isolated large weights).",
                      clipped, "weights_sine_spe");
        ok &= picture(w_toeplitz, "Toeplitz RPE (T_max = 128), elu+1: attention weights",
                      "w_ij = exp(b_{j\u2212i}) with the bias of the Toeplitz weight plot: decaying with |j \u2212 i|, a ripple of period "
                      "2\u03c0/0.1 \u2248 63.",
                      positive, "weights_toeplitz");
    }
    {   // SPE: one draw's code kernel (mean over the R realizations) against the closed form P_d(δ), d = 0
        const auto& pe = sine.positional();
        const index span = 64, m0 = 200;
        const auto qc = pe.code(role::query, 0, 0, m0, 1);
        const auto kc = pe.code(role::key, 0, 0, m0 - span, 2 * span + 1);
        plot::series emp{"one draw, mean of R = 64", {}, {200, 60, 40}, true}, exp_{"expected P\u2080(\u03b4)", {}, {30, 90, 200}};
        plot::band sd{"\u00b11 std. dev. of the mean", {}, {205, 222, 242}};
        const double scale = std::sqrt(double(r) * d) / double(r); // codes carry (R·D)^{-1/4} each
        const double var = pe.code_variance(0, 0);                  // σ² of a unit code entry
        for (index j = 0; j <= 2 * span; ++j) {
            const index delta = span - j; // m − n with n = m0 − span + j
            const double p = pe.expected_kernel(0, 0, delta);
            // Isserlis: Var(Q̃ K̃) = σ⁴ + P² for one realization; the mean over R independent ones divides it by R.
            const double sd_mean = std::sqrt((var * var + p * p) / double(r));
            emp.points.push_back({double(delta), scale * double(qc.row(0).dot(kc.row(j)))});
            exp_.points.push_back({double(delta), p});
            sd.points.push_back({double(delta), p - sd_mean, p + sd_mean});
        }
        std::sort(emp.points.begin(), emp.points.end());
        std::sort(exp_.points.begin(), exp_.points.end());
        std::sort(sd.points.begin(), sd.points.end());
        const plot::line_plot_text text{"sineSPE: code kernel of one draw against its expectation P\u2080(\u03b4)",
                                        "offset \u03b4 = m \u2212 n (query position m = 200, key position n)",
                                        "kernel (head 0, dimension d = 0)",
                                        {"Dots: Q\u0304\u2080(m)\u00b7K\u0304\u2080(n) averaged over the R = 64 realizations of one draw (K = 5 sines, gated). "
                        "Line: the closed form (1 \u2212 g) P\u2080(\u03b4) + g.",
                        "The gap between them is the Monte-Carlo error of R = 64 realizations; the band is \u00b11 standard deviation "
                        "\u221a((\u03c3\u2074 + P\u2080(\u03b4)\u00b2)/R).",
                        "Neighbouring offsets share the draw, so the error is smooth in \u03b4; it shrinks like 1/\u221aR (tests: test_spe_unbiased)."}};
        ok &= plot::line_plot({emp, exp_}, text, dir + "/spe_kernel." + ext, {sd});
    }
    {   // LRPE: score <T(q, s), T(k, s + t)> against the offset t, for three cores
        const row_matrix<float> q = p.head(p.q, 0, 1), k = p.head(p.k, 1, 1);
        const row_matrix<float> fq = (q.array().min(0.f).exp() + q.array().max(0.f)).matrix(),
                                fk = (k.array().min(0.f).exp() + k.array().max(0.f)).matrix();
        std::vector<plot::series> all;
        const plot::rgb colors[] = {{200, 60, 40}, {30, 90, 200}, {40, 150, 60}};
        int c = 0;
        for (const auto* attn : {&rotate, &cosine, &permute}) {
            plot::series s{c == 0 ? "rotate (RoPE \u03b8)" : c == 1 ? "cosine" : "permutation", {}, colors[c]};
            const auto& pe = attn->positional();
            const row_matrix<float> tq = pe.transform(fq, 1000);
            for (index off = -64; off <= 64; ++off) s.points.push_back({double(off), double(tq.row(0).dot(pe.transform(fk, 1000 + off).row(0)))});
            all.push_back(s);
            ++c;
        }
        const plot::line_plot_text text{"LRPE: the score depends on the offset t only",
                                        "offset t = (key position) \u2212 (query position)",
                                        "score \u27e8T(\u03c6(q), s), T(\u03c6(k), s + t)\u27e9",
                                        {"One query and one key (elu+1 features, M = 64, head 0) at query position s = 1000; T(x, s) = \u039b^(s) P x with P = I.",
                        "rotate: pairs turned by s\u00b7\u03b8_i, \u03b8_i = 10000^(\u22122i/M); cosine: [x cos s\u03b8 ; x sin s\u03b8]; "
                        "permutation: \u03a0^s of a seeded random permutation.",
                        "Any other s gives the same curves (the transform is unitary and \u039b^(s)\u1d40\u039b^(s+t) = \u039b^(t))."}};
        ok &= plot::line_plot(all, text, dir + "/lrpe_score." + ext);
    }
    {   // Toeplitz: weights c_t = exp(b_t), clipped at |t| >= T_max
        plot::series s{"c_t = exp(b_t)", {}, {30, 90, 200}};
        for (index tt = -300; tt <= 300; ++tt) s.points.push_back({double(tt), std::exp(double(rpe.offset_bias(0, tt)))});
        double top = 0;
        for (const auto& pt : s.points) top = std::max(top, pt.second);
        plot::series edge{"|t| = T_max \u2212 1 = 127", {{-127.0, 0.0}, {-127.0, top}}, {150, 150, 150}};
        plot::series edge2{"", {{127.0, 0.0}, {127.0, top}}, {150, 150, 150}};
        const plot::line_plot_text text{"Toeplitz RPE: the mixing weight c_t against the offset t",
                                        "offset t = j \u2212 i (key position \u2212 query position)",
                                        "weight c_t",
                                        {"The tour's bias b_t = \u22120.02|t| + 0.3 cos(0.1 t), head 0, stored for |t| < T_max = 128 and clipped beyond it.",
                        "Beyond the grey lines the weight is constant on each side: the banded algorithm treats those keys as "
                        "plain (lagged) linear attention.",
                        "Causal attention uses t \u2264 0 only."}};
        ok &= plot::line_plot({s, edge, edge2}, text, dir + "/toeplitz_weights." + ext);
    }
    std::printf("\npictures (%s) written to %s/%s\n", ext.c_str(), dir.c_str(),
#if defined(LINRPE_HAVE_STB)
                ""
#else
                "  (libstb-dev not found: portable PPM instead of PNG, and no text labels)"
#endif
    );
    return ok ? 0 : 1;
}
