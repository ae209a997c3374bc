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
  "$exe" --benchmark_out="$out/$name.json" --benchmark_out_format=json "$@"
done
echo "JSON written to $out"
/usr/bin/python3 "$(dirname "$0")/render_report.py" "$out" "$(cd "$dir/../../.." && pwd)/docs"
