#!/usr/bin/env bash
# Runs every benchmark binary in $1 and writes build/bench/<name>.json; extra args go to each binary.
set -euo pipefail
dir=$1; shift
out=$(cd "$dir/../.." && pwd)/bench
mkdir -p "$out"
for exe in "$dir"/bm_*; do
  [ -x "$exe" ] || continue
  name=$(basename "$exe")
  echo "== $name"
  if [ "$name" = bm_context_parallel ]; then
    # One sequence sharded over 1 and then 2 ranks, one thread each (loopback / shared memory only).
    for np in 1 2; do
      OMP_NUM_THREADS=1 mpirun -np $np --oversubscribe --allow-run-as-root --mca btl self,vader --mca oob_tcp_if_include lo \
        "$exe" --benchmark_out="$out/${name}_np$np.json" --benchmark_out_format=json "$@"
    done
    continue
  fi
  if [ "$name" = bm_as_called ]; then
    # One fresh process per case: a case never runs on a heap that another case (or a roofline) warmed.
    rm -rf "$out/as_called" && mkdir -p "$out/as_called"
    i=0
    "$exe" --benchmark_list_tests | grep "^as_called/" | while read -r case; do
      i=$((i + 1))
      "$exe" --benchmark_filter="^${case}\$" --benchmark_out="$out/as_called/$i.json" --benchmark_out_format=json "$@"
    done
    /usr/bin/python3 - "$out/as_called" "$out/$name.json" <<'PY'
import json, os, sys
parts = [json.load(open(os.path.join(sys.argv[1], f))) for f in sorted(os.listdir(sys.argv[1]), key=lambda f: int(f[:-5]))]
merged = {"context": parts[0]["context"] if parts else {}, "benchmarks": [b for p in parts for b in p["benchmarks"]]}
json.dump(merged, open(sys.argv[2], "w"), indent=1)
PY
    continue
  fi
  "$exe" --benchmark_out="$out/$name.json" --benchmark_out_format=json "$@"
done
echo "JSON written to $out"
/usr/bin/python3 "$(dirname "$0")/render_report.py" "$out" "$(cd "$dir/../../.." && pwd)/docs"
