#!/usr/bin/env python3
"""Markdown table, crossovers and the automatic-vs-best check from bm_toeplitz's JSON output.

    build/release/benchmarks/bm_toeplitz --benchmark_min_time=0.05 \
        --benchmark_out=bm_toeplitz.json --benchmark_out_format=json
    python3 benchmarks/bm_toeplitz_table.py bm_toeplitz.json

(add --benchmark_repetitions=3 for a shared machine: the fastest repetition is used; --cpu tabulates CPU
time instead of the manual wall time, the fairer measure on a loaded machine when OMP_NUM_THREADS=1;
several JSON files may be given, later runs of a benchmark replacing earlier ones)
"""
import json
import sys
from collections import defaultdict

files = [a for a in sys.argv[1:] if a.endswith(".json")]
time_key = "cpu_time" if "--cpu" in sys.argv else "real_time"
latest = {}
for f in files:
    for r in json.load(open(f))["benchmarks"]:
        latest[r["name"] + "#" + str(r.get("repetition_index", 0))] = r
runs = list(latest.values())
ms = defaultdict(dict)  # (label, T) -> {N: ms}
chosen = {}
for r in runs:
    if r.get("run_type") == "aggregate" or r["name"].startswith("calibrate"):
        continue
    parts = r["name"].split("/")
    label, n, t = parts[0], int(parts[1]), int(parts[2])
    t = "N" if t == 0 else str(t)
    # unit: ms (kMillisecond); with --benchmark_repetitions the fastest repetition is kept (the machine is
    # shared: contention only ever adds time)
    prev = ms[(label, t)].get(n)
    ms[(label, t)][n] = r[time_key] if prev is None else min(prev, r[time_key])
    if label in ("toeplitz_automatic", "toeplitz_automatic_causal"):
        chosen[(label, t, n)] = {1: "dense", 2: "fft", 3: "banded"}.get(int(r.get("algo", 0)), "?")

labels = ["softmax_reference", "toeplitz_dense", "toeplitz_fft", "toeplitz_banded", "toeplitz_automatic"]
causal_labels = ["toeplitz_dense_causal", "toeplitz_fft_causal", "toeplitz_banded_causal", "toeplitz_automatic_causal"]
for title, labs, auto_label, algos in [("", labels, "toeplitz_automatic", labels[1:4]),
                                       ("causal, ", causal_labels, "toeplitz_automatic_causal", causal_labels[:3])]:
  for t in ["128", "N"]:
    ns = sorted({n for (lab, tt), d in ms.items() if tt == t and lab in labs for n in d})
    print(f"\n{title}T_max = {t} (ms per head, M = E = 64, float)\n")
    print("| N | " + " | ".join(l.replace("toeplitz_", "") for l in labs) + " | automatic ran | auto / best |")
    print("|---" * (len(labs) + 3) + "|")
    for n in ns:
        row = [ms[(l, t)].get(n) for l in labs]
        measured = [v for l, v in zip(labs, row) if v is not None and l in algos]
        best = min(measured) if measured else None
        auto = ms[(auto_label, t)].get(n)
        cells = ["%.3g" % v if v is not None else "–" for v in row]
        ratio = "%.2f" % (auto / best) if auto and best else "–"
        print(f"| {n} | " + " | ".join(cells) + f" | {chosen.get((auto_label, t, n), '–')} | {ratio} |")
    if labs is not labels:
        continue
    # crossovers: first N where one algorithm becomes faster than another; automatic's runs count as
    # measurements of the algorithm it ran (dense beyond 8k)
    for n, v in ms[("toeplitz_automatic", t)].items():
        lab = "toeplitz_" + chosen.get(("toeplitz_automatic", t, n), "")
        if lab in labels and n not in ms[(lab, t)]:
            ms[(lab, t)][n] = v
    for a, b in [("toeplitz_fft", "toeplitz_dense"), ("toeplitz_banded", "toeplitz_dense"),
                 ("toeplitz_dense", "softmax_reference"), ("toeplitz_fft", "softmax_reference"),
                 ("toeplitz_banded", "softmax_reference")]:
        common = sorted(set(ms[(a, t)]) & set(ms[(b, t)]))
        cross = next((n for n in common if ms[(a, t)][n] < ms[(b, t)][n]), None)
        print(f"\n- {a} faster than {b} from N = {cross if cross else '(not within the measured range)'}", end="")
    print()

# Optional plot: python3 bm_toeplitz_table.py FILE.json --plot OUT.png (needs matplotlib)
if "--plot" in sys.argv:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = sys.argv[sys.argv.index("--plot") + 1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, t in zip(axes, ["128", "N"]):
        for l in labels:
            pts = sorted(ms[(l, t)].items())
            if len(pts) > 1:
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=l.replace("toeplitz_", ""))
        ax.set_title(f"Toeplitz RPE, T_max = {t} (one head, M = E = 64, float, 1 thread)")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("time per call [ms]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
