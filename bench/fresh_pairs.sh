#!/usr/bin/env bash
# A/B of two gateway builds, each burst on a fresh gateway and database (issue 21): per pair,
# bench/burst_anatomy.sh once with each build, A first in odd pairs and B first in even ones;
# one line per pair with each build's gateway CPU per event (all its threads, through the last
# delivery in queue mode) and acks/s, then the medians and ranges of B ÷ A per pair and the
# smallest difference that many pairs resolve (bench/pair_ratios.py's noise floor). Fresh
# per run because a gateway's first burst is what a restart meets: side_by_side.sh runs the
# queue burst on the gateway its stored burst has warmed.
# Usage: bench/fresh_pairs.sh PAIRS stored|queue BIN_A BIN_B [REQUESTS]   (default 20000)
# The load generator is built once here (unless BENCH_NO_BUILD=1); the builds compared are
# whatever BIN_A and BIN_B are.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
pairs="$1"; path="$2"; a="$3"; b="$4"; n="${5:-20000}"
out="$bench_work/pairs"
for pair in $(seq "$pairs"); do
  if (( pair % 2 )); then order=("$a" "$b"); else order=("$b" "$a"); fi
  for bin in "${order[@]}"; do
    report=$(EDGE_BIN="$bin" BENCH_NO_BUILD=1 bench/burst_anatomy.sh "$n" "$path")
    cpu=$(grep -o 'total [0-9.]*' <<<"$report" | cut -d' ' -f2)
    rate=$(grep "^| $path " <<<"$report" | cut -d'|' -f5 | xargs)
    echo "$pair $([[ $bin == "$a" ]] && echo A || echo B) $cpu $rate" >> "$out"
  done
  echo "pair $pair: $(grep "^$pair " "$out" | sort -k2 | awk '{printf "%s %s µs/event %s acks/s   ", $2, $3, $4}')"
done
python3 - "$out" "$(basename "$a")" "$(basename "$b")" <<'PY'
import sys
sys.path.insert(0, "bench")
from pair_ratios import floor, show
rows = {}
for line in open(sys.argv[1]):
    pair, which, cpu, rate = line.split()
    rows.setdefault(pair, {})[which] = (float(cpu), float(rate))
for i, what in enumerate(["CPU per event", "acks/s"]):
    a = [r["A"][i] for r in rows.values()]
    b = [r["B"][i] for r in rows.values()]
    ratio = [y / x for x, y in zip(a, b)]
    print(f"{what}: A ({sys.argv[2]}) {show(a)}, B ({sys.argv[3]}) {show(b)}, B ÷ A {show(ratio)}, "
          f"B lower in {sum(r < 1 for r in ratio)} of {len(ratio)}; {floor(ratio)}")
PY
