// Trains the small causal transformer of examples/train/model.hpp (linrpe's attention, forward and backward)
// on lag recall with each positional-encoding family on the same budget, and measures what each buys:
// final train loss, accuracy at the training length N = 128 and beyond it (512, 2048), training time, and the
// largest gradient norm seen (Luo et al.'s stability claim for FAVOR+ with and without Toeplitz RPE).
// Families: none, LRPE rotate and cosine (learned θ), sineSPE (gated), convSPE, Toeplitz RPE (learned b,
// banded), sineSPE + Toeplitz (compose), FAVOR+ with and without Toeplitz. Every encoding parameter trains
// with the rest, through linrpe's parameter_gradients on the batched backward (train/encodings.hpp).
// Prints the table, writes it to docs/train_table.md (included by the README), and the loss curves to
// docs/train_curves.png (run from the repository root: ./scripts/run train).
//
//   train_lag [--steps S] [--only NAME] [--out DIR] [--jobs J] [--threads T] [--smoke]
// Runs go in parallel (--jobs, default: the cores), each on --threads threads (default 1).
#include "plot_png.hpp"
#include "train/encodings.hpp"

#include <linrpe/feature_maps/elu_plus_one.hpp>
#include <linrpe/feature_maps/favor.hpp>
#include <linrpe/positional/none.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
using linrpe::index;
using namespace linrpe;

// The budget every family gets, sized so that the whole comparison (9 families x 2 tasks, ~11 CPU-minutes,
// convSPE and sineSPE the dearest) runs in under 10 minutes on 2 cores.
struct settings {
    train::config model;
    train::schedule schedule;
    std::vector<index> eval_lengths{128, 512, 2048};
    index eval_tokens = 8192; ///< tokens per evaluation length (sequences = eval_tokens / length)
    std::string only, out = "docs";
};

struct task_entry {
    std::string name;
    train::lag_task task;
};

struct result {
    std::string family, task;
    train::history h;
    std::vector<double> accuracy; // at settings::eval_lengths
};

// Steps of the learning-rate warmup: gradient norms before them are the initialization's.
std::size_t warmup_steps(const settings& s) { return std::size_t(s.schedule.warmup * double(s.schedule.steps)); }

template <class Attention>
result run(const std::string& family, const task_entry& t, const settings& s,
           const std::function<Attention(index layer)>& make_attention)
{
    train::transformer<Attention> model(s.model, make_attention, /*seed=*/7);
    result r{family, t.name, train::fit(model, t.task, s.schedule), {}};
    for (const index n : s.eval_lengths)
        r.accuracy.push_back(train::evaluate(model, t.task, std::max<index>(1, s.eval_tokens / n), n, /*seed=*/1000 + n));
    // One line per run, written at once (runs finish concurrently).
    char buf[256];
    std::string line = "  " + family + " | " + t.name + " | loss ";
    std::snprintf(buf, sizeof buf, "%.4f  acc", r.h.final_loss());
    line += buf;
    for (const double a : r.accuracy) std::snprintf(buf, sizeof buf, " %.3f", a), line += buf;
    std::snprintf(buf, sizeof buf, "  max|g| %.3g (after warmup %.3g)  %.1f s\n", r.h.max_grad_norm(),
                  r.h.max_grad_norm(warmup_steps(s)), r.h.seconds);
    line += buf;
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
    return r;
}

options<float> causal(normalization norm = normalization::sum)
{
    options<float> opt;
    opt.mask = masking::causal;
    opt.norm = norm;
    opt.toeplitz = toeplitz_algorithm::banded; // O(N·T_max): the bias is clipped beyond T_max (ignored without Toeplitz)
    return opt;
}

using job = std::function<result()>;

// Queues one run of `family` on task t when --only is empty or names `key`. `make` builds the attention of
// a layer; the job runs later, concurrently: it captures by value, `s` by reference (main's).
template <class Attention, class Make>
void add(std::vector<job>& out, const settings& s, const task_entry& t, const char* key, const std::string& family, Make make)
{
    if (!s.only.empty() && s.only != key) return;
    out.push_back([=, &s] { return run<Attention>(family, t, s, make); });
}

// The families, each on the same model, data and budget. Head width D = width / heads. Seeds of the random
// parts (FAVOR+ projections, SPE filters and noise) differ per layer and are fixed.
void add_jobs(const settings& s, const std::vector<task_entry>& tasks, std::vector<job>& out)
{
    using feature_maps::elu_plus_one;
    using feature_maps::favor;
    using positional::compose;
    using positional::conv_spe;
    using positional::lrpe;
    using positional::sine_spe;
    using toeplitz = positional::toeplitz_rpe<float>;
    const index h = s.model.heads, d = s.model.width / s.model.heads;
    const index t_max = 32;                    // Toeplitz offsets learned one by one; farther ones share b_{±31}
    const index sines = 5, sine_r = 32;        // sineSPE: K sinusoids, R realizations, FAVOR+ with 32 features
    const index conv_w = 16, conv_r = 8;       // convSPE: filter width, R realizations (its cost is O(N·W·D·R))
    const auto seed = [](index layer, std::uint64_t base) { return base + std::uint64_t(layer); };
    // LRPE with learned θ, initialised at the RoPE frequencies: set_theta makes them explicit, hence trainable.
    const auto learned_lrpe = [=](lrpe_kind kind) {
        lrpe<float> pe(kind, d, h);
        pe.set_theta(pe.theta);
        return pe;
    };
    for (const auto& t : tasks) {
        {
            using A = linear_attention<elu_plus_one, positional::none, float>;
            add<A>(out, s, t, "none", "none (elu+1)", [](index) { return A({}, {}, causal()); });
        }
        {
            // Rotations make scores signed: rms normalization (sum needs non-negative scores).
            using A = linear_attention<elu_plus_one, lrpe<float>, float>;
            add<A>(out, s, t, "rotate", "LRPE rotate", [=](index) { return A({}, learned_lrpe(lrpe_kind::rotate), causal(normalization::rms)); });
            add<A>(out, s, t, "cosine", "LRPE cosine", [=](index) { return A({}, learned_lrpe(lrpe_kind::cosine), causal(normalization::rms)); });
        }
        {
            using A = linear_attention<favor, sine_spe<float>, float>;
            add<A>(out, s, t, "sine", "sineSPE (gated)", [=](index layer) {
                return A(favor(sine_r, 32, seed(layer, 100), true, false, h), sine_spe<float>(h, d, sines, sine_r, seed(layer, 200), true), causal());
            });
        }
        {
            using A = linear_attention<favor, conv_spe<float>, float>;
            add<A>(out, s, t, "conv", "convSPE", [=](index layer) {
                return A(favor(conv_r, 16, seed(layer, 100), true, false, h), conv_spe<float>(h, d, conv_w, conv_r, seed(layer, 200)), causal());
            });
        }
        {
            using A = linear_attention<elu_plus_one, toeplitz, float>;
            add<A>(out, s, t, "toeplitz", "Toeplitz RPE", [=](index) { return A({}, toeplitz(h, t_max), causal()); });
        }
        {
            using A = linear_attention<favor, compose<sine_spe<float>, toeplitz>, float>;
            add<A>(out, s, t, "sine+toeplitz", "sineSPE + Toeplitz", [=](index layer) {
                return A(favor(sine_r, 32, seed(layer, 100), true, false, h),
                         {sine_spe<float>(h, d, sines, sine_r, seed(layer, 200), true), toeplitz(h, t_max)}, causal());
            });
        }
        {
            // Luo et al.'s pair: FAVOR+ with r = D features (the Performer's positive softmax estimator), ± Toeplitz.
            using A = linear_attention<favor, positional::none, float>;
            add<A>(out, s, t, "favor", "FAVOR+", [=](index layer) { return A(favor(d, d, seed(layer, 100), true, false, h), {}, causal()); });
            using B = linear_attention<favor, toeplitz, float>;
            add<B>(out, s, t, "favor+toeplitz", "FAVOR+ + Toeplitz", [=](index layer) {
                return B(favor(d, d, seed(layer, 100), true, false, h), toeplitz(h, t_max), causal());
            });
        }
    }
}

// Loss against step, one curve per family, smoothed by a centred moving average of 9 steps.
bool plot_curves(const std::vector<result>& results, const std::string& task, const std::string& path, const settings& s)
{
    static const plot::rgb colors[] = {{200, 60, 40}, {30, 90, 200}, {40, 150, 60}, {150, 60, 170}, {230, 140, 20},
                                       {20, 160, 170}, {120, 120, 120}, {0, 0, 0}, {190, 150, 0}};
    std::vector<plot::series> all;
    std::size_t c = 0;
    for (const auto& r : results) {
        if (r.task != task) continue;
        plot::series line{r.family, {}, colors[c++ % 9]};
        const auto& l = r.h.loss;
        for (std::size_t i = 0; i < l.size(); ++i) {
            const std::size_t lo = i < 4 ? 0 : i - 4, hi = std::min(l.size(), i + 5);
            double sum = 0;
            for (std::size_t j = lo; j < hi; ++j) sum += l[j];
            line.points.push_back({double(i), sum / double(hi - lo)});
        }
        all.push_back(line);
    }
    if (all.empty()) return true;
    const plot::line_plot_text text{
        "Training loss on " + task + " (N = " + std::to_string(s.schedule.tokens) + ")", "AdamW step",
        "cross-entropy (nats)",
        {"Each family trains the same 2-layer causal transformer (width " + std::to_string(s.model.width) + ", " +
             std::to_string(s.model.heads) + " heads, vocabulary " + std::to_string(s.model.vocab) + ", " +
             std::to_string(s.schedule.sequences) + " sequences of " + std::to_string(s.schedule.tokens) +
             " tokens per step) whose attention is linrpe's, forward and backward; curves are centred moving averages over 9 steps.",
         "Chance level is ln(vocabulary) = " + plot::fmt(std::log(double(s.model.vocab))) + " nats."}};
    return plot::line_plot(all, text, path);
}
// Luo et al.'s stability claim: the gradient norm (before clipping) against step for the FAVOR+ runs.
bool plot_gradients(const std::vector<result>& results, const std::string& task, const std::string& path, const settings& s)
{
    static const plot::rgb colors[] = {{200, 60, 40}, {30, 90, 200}, {40, 150, 60}};
    std::vector<plot::series> all;
    std::size_t c = 0;
    for (const auto& r : results) {
        if (r.task != task || r.family.rfind("FAVOR+", 0) != 0) continue;
        plot::series line{r.family + " (max after warmup " + plot::fmt(r.h.max_grad_norm(warmup_steps(s))) + ")", {}, colors[c++ % 3]};
        for (std::size_t i = 0; i < r.h.grad_norm.size(); ++i) line.points.push_back({double(i), r.h.grad_norm[i]});
        all.push_back(line);
    }
    if (all.empty()) return true;
    const plot::line_plot_text text{"FAVOR+ training stability on " + task, "AdamW step", "global gradient norm (before clipping)",
                                    {"Luo et al. (NeurIPS 2021) report that Toeplitz RPE stabilizes the training of FAVOR+ "
                                     "(Performer) features; here both runs share the model, data, seed and clipping at norm 1.",
                                     "Each curve is the norm of the whole model's gradient at every step; the legend gives its maximum."}};
    return plot::line_plot(all, text, path);
}
// The results as a markdown table (printed, and written to train_table.md for the README).
std::string markdown_table(const std::vector<result>& results, const settings& s)
{
    char buf[128];
    std::string out = "| family | task | final train loss |";
    for (const index n : s.eval_lengths) std::snprintf(buf, sizeof buf, " acc N=%ld |", long(n)), out += buf;
    out += " max grad norm | after warmup | train time (s) |\n|---|---|---:|";
    for (std::size_t i = 0; i < s.eval_lengths.size(); ++i) out += "---:|";
    out += "---:|---:|---:|\n";
    for (const auto& r : results) {
        std::snprintf(buf, sizeof buf, "| %s | %s | %.3f |", r.family.c_str(), r.task.c_str(), r.h.final_loss());
        out += buf;
        for (const double a : r.accuracy) std::snprintf(buf, sizeof buf, " %.2f |", a), out += buf;
        std::snprintf(buf, sizeof buf, " %.3g | %.3g | %.0f |\n", r.h.max_grad_norm(), r.h.max_grad_norm(warmup_steps(s)), r.h.seconds);
        out += buf;
    }
    return out;
}
} // namespace

int main(int argc, char** argv)
{
    settings s;
    s.model.threads = 1; // runs go in parallel instead (--jobs): no barriers, and robust to a busy machine
    bool smoke = false;
    int jobs = 0;        // concurrent runs; 0: the OpenMP default (the cores)
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "train_lag: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--steps") s.schedule.steps = std::atol(next().c_str());
        else if (a == "--only") s.only = next();
        else if (a == "--out") s.out = next();
        else if (a == "--threads") s.model.threads = std::atoi(next().c_str());
        else if (a == "--jobs") jobs = std::atoi(next().c_str());
        else if (a == "--smoke") smoke = true;
        else {
            std::fprintf(stderr, "usage: train_lag [--steps S] [--only none|rotate|cosine|sine|conv|toeplitz|sine+toeplitz|favor|favor+toeplitz] [--out DIR] [--jobs J] [--threads T] [--smoke]\n");
            return 2;
        }
    }
    if (smoke) { // a few steps of a tiny model: checks the program end to end in a second
        s.schedule.steps = 4;
        s.schedule.sequences = 2;
        s.model.width = 16;
        s.model.mlp = 32;
        s.eval_lengths = {128, 256};
        s.eval_tokens = 512;
        jobs = 1;
    }
    const std::vector<task_entry> tasks{{"lag 8", {s.model.vocab, 8, 0}},
                                        {"lags 3 / 8 (by token half)", {s.model.vocab, 3, 8}}};
    std::printf("lag recall: train N = %ld, %ld steps x %ld sequences; width %ld, %ld heads, %ld layers, vocabulary %ld\n",
                long(s.schedule.tokens), long(s.schedule.steps), long(s.schedule.sequences), long(s.model.width),
                long(s.model.heads), long(s.model.layers), long(s.model.vocab));
    std::vector<job> work;
    add_jobs(s, tasks, work);
    std::vector<result> results(work.size());
    bool failed = false;
    // Whole runs in parallel, each on one thread by default: every run is bit-identical whatever runs beside it.
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs > 0 ? jobs : omp_get_max_threads())
#else
    (void)jobs;
#endif
    for (std::size_t i = 0; i < work.size(); ++i) {
        try {
            results[i] = work[i]();
        } catch (const std::exception& e) {
#if defined(_OPENMP)
#pragma omp critical
#endif
            {
                std::fprintf(stderr, "train_lag: run %zu failed: %s\n", i, e.what());
                failed = true;
            }
        }
    }
    if (failed) return 1;

    const std::string table = markdown_table(results, s);
    std::printf("\n%s", table.c_str());
    bool ok = true;
    if (std::FILE* f = std::fopen((s.out + "/train_table.md").c_str(), "w")) {
        std::fputs(table.c_str(), f);
        ok &= std::fclose(f) == 0;
    } else {
        std::fprintf(stderr, "train_lag: cannot write %s/train_table.md\n", s.out.c_str());
        ok = false;
    }
    const std::string ext = plot::extension();
    ok &= plot_curves(results, tasks[0].name, s.out + "/train_curves." + ext, s);
    ok &= plot_curves(results, tasks[1].name, s.out + "/train_curves_two_lags." + ext, s);
    ok &= plot_gradients(results, tasks[0].name, s.out + "/train_stability." + ext, s);
    std::printf("\ntable written to %s/train_table.md; pictures: train_curves.%s, train_curves_two_lags.%s (loss), train_stability.%s (FAVOR+ "
                "gradient norms)\n", s.out.c_str(), ext.c_str(), ext.c_str(), ext.c_str());
    return ok ? 0 : 1;
}
