#!/usr/bin/env python3
"""Renders build/bench/*.json (Google Benchmark output) into docs/benchmarks.md and docs/scaling.png.

Usage: render_report.py BENCH_DIR DOCS_DIR
Every figure in the report comes from the JSON files of one `./scripts/run bench` run.
"""
import json
import os
import re
import sys
from collections import defaultdict


def load(bench_dir):
    runs = {}
    context = None
    for name in sorted(os.listdir(bench_dir)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(bench_dir, name)) as f:
            data = json.load(f)
        context = context or data.get("context", {})
        runs[name[:-5]] = [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    return context, runs


def label_and_n(bench):
    """Splits a benchmark name into (series label, N): N is the first numeric (or N:...) argument, the label
    is the name without it (and without the run-type suffixes), so that other arguments stay apart."""
    parts = [p for p in bench["name"].split("/")
             if p not in ("real_time", "manual_time", "process_time") and not p.startswith("iterations:")]
    label, n = [], None
    for p in parts:
        key, sep, val = p.partition(":")
        if n is None and (p.isdigit() or (sep and key in ("N", "n") and val.isdigit())):
            n = int(p if p.isdigit() else val)
            continue
        label.append(p)
    return "/".join(label), n


def ms(bench):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[bench.get("time_unit", "ns")]
    return bench["real_time"] * scale


def table(benches):
    keys = []
    for b in benches:
        for k in b:
            if k in ("name", "run_name", "run_type", "repetitions", "repetition_index", "threads", "iterations",
                     "real_time", "cpu_time", "time_unit", "family_index", "per_family_instance_index",
                     "aggregate_name", "aggregate_unit", "error_occurred", "error_message"):
                continue
            if isinstance(b[k], (int, float)) and k not in keys:
                keys.append(k)
    lines = ["| benchmark | time [ms] | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for b in benches:
        cells = []
        for k in keys:
            v = b.get(k)
            cells.append("" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
        lines.append(f"| `{b['name']}` | {ms(b):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find(runs, binary, name):
    """The run of `binary` called `name` (without the /iterations:k, /real_time and /manual_time parts), or None."""
    for b in runs.get(binary, []):
        if re.sub(r"/(iterations:\d+|real_time|manual_time)", "", b["name"]) == name:
            return b
    return None


# Series of the scaling plot: (binary, name with {n} for N, legend).
SCALING = [
    ("bm_core", "linear_noncausal/N:{n}/threads:0", "linear, non-causal"),
    ("bm_core", "linear_causal/N:{n}/threads:0", "linear, causal (chunked)"),
    ("bm_core", "naive_causal_rank1/{n}", "naive rank-1 causal loop (baseline)"),
    ("bm_lrpe", "causal/rotate/{n}", "LRPE rotate, causal"),
    ("bm_spe", "sine_spe/{n}/0/5", "sineSPE K=5, non-causal"),
    ("bm_spe", "conv_spe/{n}/0/128/0", "convSPE W=128, non-causal"),
    ("bm_toeplitz", "toeplitz_banded/{n}/128", "Toeplitz banded, T_max=128 (1 head)"),
    ("bm_toeplitz", "toeplitz_fft/{n}/0", "Toeplitz FFT, T_max=N (1 head)"),
    ("bm_toeplitz", "causal_fft_recursion/{n}/1024", "Toeplitz causal FFT, divide and conquer from 1024 rows (1 head)"),
    ("bm_toeplitz", "softmax_reference/{n}/0", "exact softmax + bias, O(N^2) (1 head)"),
]

# Points a sweep leaves to a scaling_* benchmark (too slow to run twice): series -> (benchmark, N of big_ms).
EXTRA_POINTS = {
    ("bm_spe", "conv_spe/{n}/0/128/0"): ("scaling_conv_spe/16384/65536/0/128", 65536),
}


def plot(runs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    drawn = 0
    for binary, pattern, legend in SCALING:
        prefix, _, suffix = pattern.partition("{n}")
        pts = []
        for b in runs.get(binary, []):
            name = b["name"].replace("/real_time", "").replace("/manual_time", "")
            if name.startswith(prefix) and name.endswith(suffix):
                middle = name[len(prefix):len(name) - len(suffix)]
                if middle.isdigit():
                    pts.append((int(middle), ms(b)))
        extra = EXTRA_POINTS.get((binary, pattern))
        if extra and not any(n == extra[1] for n, _ in pts):
            b = find(runs, binary, extra[0])
            if b:
                pts.append((extra[1], b["big_ms"]))
        pts.sort()
        if len(pts) > 1:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=legend)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_title("time per call (B = 1, H = 8 unless noted, D = M = E = 64, float)")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("time per call [ms]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def headline(runs):
    """The targets of the performance issue, each as a ratio of two runs of one benchmark binary."""
    rows = []

    def add(what, value, target, ok, source):
        rows.append(f"| {what} | {value} | {target} | {'yes' if ok else '**no**'} | `{source}` |")

    def time_ratio(binary, big, small):
        a, b = find(runs, binary, big), find(runs, binary, small)
        return None if a is None or b is None else ms(a) / ms(b)

    for mask, target in (("noncausal", 0.6), ("causal", 0.45)):
        b = find(runs, "bm_core", f"linear_{mask}/N:16384/threads:0")
        if b:
            add(f"{mask} N = 16k: share of the GEMM roofline", f"{b['roofline_ratio']:.2f}", f">= {target}",
                b["roofline_ratio"] >= target, "bm_core")
    r = time_ratio("bm_core", "naive_causal_rank1/16384", "linear_causal/N:16384/threads:0")
    if r:
        add("causal N = 16k: speedup over the naive rank-1 loop", f"{r:.1f}x", ">= 3x", r >= 3, "bm_core")
    ratio = find(runs, "bm_decoder", "decoder_step_ratio/1024/65536")
    r = ratio["scaling"] if ratio else None
    step = find(runs, "bm_decoder", "decoder_step/65536")
    if r and step:
        add("decoder step after 64k tokens / after 1k (median of paired runs)", f"{r:.2f} ({step['tokens_per_s']:.3g} tokens/s, B·H = 8)",
            "<= 1.2", r <= 1.2, "bm_decoder")
    for bh in (1, 8, 64):
        b = find(runs, "bm_decoder", f"decoder_threads_ratio/{bh}")
        one, two = (find(runs, "bm_decoder", f"decoder_step_threads/{bh}/{t}") for t in (1, 2))
        if b and one and two:
            # Best times, not the median pair ratio: which decoder's per-step temporaries land at the top of
            # glibc's heap (and so get trimmed and re-grown every step) varies from run to run.
            r = b["threads_ratio_best"]
            add(f"decoder step, B·H = {bh}: time with 2 threads / 1 thread, best of paired runs",
                f"{r:.2f} (per step: 1 thread {ms(one) * 1e3:.3g} µs, 2 threads {ms(two) * 1e3:.3g} µs)", "<= 1.1", r <= 1.1, "bm_decoder")
    # Every scaling_* benchmark runs both lengths in each iteration; `scaling` is the median pair ratio.
    lrpe = [("bm_lrpe", f"scaling/{mask}/{kind}/16384/65536", f"LRPE {kind} {label}", 4.4)
            for kind in ("rotate", "cosine", "permutation") for mask, label in (("noncausal", "non-causal"), ("causal", "causal"))]
    for binary, name, what, limit in [
            ("bm_core", "scaling_noncausal/16384/65536", "linear non-causal", 4.4),
            ("bm_core", "scaling_causal/16384/65536", "linear causal", 4.4)] + lrpe + [
            ("bm_spe", "scaling_sine_spe/16384/65536/0/5", "sineSPE K=5 non-causal", 4.4),
            ("bm_spe", "scaling_sine_spe/16384/65536/1/5", "sineSPE K=5 causal", 4.4),
            ("bm_spe", "scaling_conv_spe/16384/65536/0/128", "convSPE W=128 non-causal", 4.4),
            ("bm_toeplitz", "scaling_banded/3/128", "Toeplitz banded (T_max = 128, 1 head)", 4.4),
            ("bm_toeplitz", "scaling_fft/2/0", "Toeplitz FFT (T_max = N, 1 head)", 5.0)]:
        b = find(runs, binary, name)
        if b:
            r = b["scaling"]
            add(f"time(64k) / time(16k), median of paired runs: {what}", f"{r:.2f}", f"<= {limit}", r <= limit, binary)
    for mask in ("noncausal", "causal"):
        b = find(runs, "bm_core", f"threads_speedup_{mask}/16384")
        r = b["speedup"] if b else None
        if r:
            add(f"{mask} N = 16k: 2 threads over 1, median of paired runs (bit-identical: tests/test_core.cpp)", f"{r:.2f}x", ">= 1.7x",
                r >= 1.7, "bm_core")
    b = find(runs, "bm_memory", "long_context_noncausal_8_heads/1048576")
    if b:
        add("1M tokens, 8 heads, non-causal elu+1: time, peak RSS", f"{ms(b) / 1e3:.2f} s, {b['peak_rss_MiB'] / 1024:.2f} GiB",
            "RSS < 3 GiB", b["peak_rss_MiB"] < 3 * 1024, "bm_memory")
    for b in runs.get("bm_memory", []):
        label, n = label_and_n(b)
        if n == 16384 and label.startswith("memory_"):
            big = next((x for x in runs["bm_memory"] if label_and_n(x) == (label, 65536)), None)
            if big and b["extra_MiB"] > 0:
                r = big["extra_MiB"] / b["extra_MiB"]
                add(f"extra memory 64k / 16k: {label[len('memory_'):].replace('_', ' ')}",
                    f"{r:.2f} ({big['bytes_per_token']:.0f} B/token at 64k)", "<= 4 (+1% allocator slack): O(N)", r <= 4.04, "bm_memory")
    for mask, label in (("0", "non-causal"), ("1", "causal")):
        for n in (262144, 1048576):
            one = find(runs, "bm_context_parallel_np1", f"context_parallel/N:{n}/causal:{mask}")
            two = find(runs, "bm_context_parallel_np2", f"context_parallel/N:{n}/causal:{mask}")
            if one and two:
                r = ms(one) / ms(two)
                need = mask == "1" and n == 1048576
                add(f"context parallel {label} N = {n // 1024}k: 2 ranks over 1 (1 thread each; {two['bytes_sent']:.0f} bytes sent per rank)",
                    f"{r:.2f}x", ">= 1.7x" if need else "reported", r >= 1.7 or not need, "bm_context_parallel")
    if not rows:
        return []
    return ["## Headline", "", "| target | measured | required | met | binary |", "|---|---|---|---|---|"] + rows + [""]


# "As called" cases (bm_as_called, one fresh process each) and the in-benchmark run each one shadows.
AS_CALLED = [
    ("linear_noncausal/16384", "bm_core", "linear_noncausal/N:16384/threads:0"),
    ("linear_causal/16384", "bm_core", "linear_causal/N:16384/threads:0"),
] + [(f"{mask}/{kind}/16384", "bm_lrpe", f"{mask}/{kind}/16384")
     for mask, kind in (("noncausal", "rotate"), ("causal", "rotate"), ("noncausal", "cosine"), ("causal", "cosine"),
                        ("causal", "permutation"))] + [
    ("sine_spe/16384/0/5", "bm_spe", "sine_spe/16384/0/5"),
    ("conv_spe/16384/0/128/0", "bm_spe", "conv_spe/16384/0/128/0"),
    ("toeplitz_banded/16384/128", "bm_toeplitz", "toeplitz_banded/16384/128"),
    ("toeplitz_fft/16384/0", "bm_toeplitz", "toeplitz_fft/16384/0"),
    ("toeplitz_dense/8192/0", "bm_toeplitz", "toeplitz_dense/8192/0"),
]


def as_called(runs):
    """Each headline configuration as a plain program calls it, beside the in-benchmark time of the same case."""
    rows = []
    for case, binary, name in AS_CALLED:
        a, b = find(runs, "bm_as_called", "as_called/" + case), find(runs, binary, name)
        if a is None:
            continue
        inb = f"{ms(b):.2f}" if b else "–"
        ratio = ms(a) / ms(b) if b else None
        rows.append(f"| `{case}` | {ms(a):.2f} | {inb} | `{binary}` | " +
                    (f"{ratio:.2f} | {'yes' if ratio <= 1.10 else '**no**'} |" if ratio else "– | – |"))
    if not rows:
        return []
    return ["## As called", "",
            "`bm_as_called` runs each configuration as a plain program does: the public batched API in a loop on",
            "the same buffers, the default allocator, nothing kept alive but the inputs, the output and the",
            "attention object (which keeps its workspace), each case in a fresh process (`benchmarks/run_all.sh`).",
            "The in-benchmark time is the same configuration in its topic binary (mean kernel time).", "",
            "| case | as called [ms] | in-benchmark [ms] | binary | ratio | within 10 % |",
            "|---|---:|---:|---|---:|---|"] + rows + [""]


def main():
    bench_dir, docs_dir = sys.argv[1], sys.argv[2]
    context, runs = load(bench_dir)
    os.makedirs(docs_dir, exist_ok=True)
    out = ["# Benchmarks", "",
           "Generated by `./scripts/run bench` (benchmarks/render_report.py) from the JSON in `build/bench/`.",
           "A kernel's `roofline_ratio` is the best time of an Eigen GEMM pass with the same shapes and FLOP count",
           "(4·N·M·E per head), timed alternately with the kernel in the same benchmark, divided by the kernel's",
           "best time. `scaling_*` rows run both lengths in every iteration; `scaling` is the median over iterations",
           "of the ratio within each pair, `scaling_best` the ratio of the best times: the machine is a shared VM",
           "whose speed drifts by ±30% over seconds, which moves both runs of a pair alike.", ""]
    if context:
        out += [f"Machine: {context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
                f"date {context.get('date')}; linrpe in a Release build with -march=native (Debian's Google "
                f"Benchmark library itself reports build type `{context.get('library_build_type')}`).", ""]
    out += headline(runs)
    out += as_called(runs)
    has_plot = plot(runs, os.path.join(docs_dir, "scaling.png"))
    if has_plot:
        out += ["![time per call against N](scaling.png)", ""]
    for binary, benches in sorted(runs.items()):
        out += [f"## {binary}", "", table(benches), ""]
    with open(os.path.join(docs_dir, "benchmarks.md"), "w") as f:
        f.write("\n".join(out))
    print(f"wrote {os.path.join(docs_dir, 'benchmarks.md')}" + (" and scaling.png" if has_plot else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
