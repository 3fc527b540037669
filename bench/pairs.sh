#!/usr/bin/env bash
# A/B of two gateway builds in bench/side_by_side.sh rounds (issue 21): ROUNDS rounds, A first
# in odd rounds and B first in even ones, each round's table as it comes, then
# bench/pair_ratios.py's summary: B ÷ A per round (median, range), the order effect, and the
# smallest difference this many rounds resolve. The same binary as A and B (or two copies of
# it) is an A/A series: the noise floor that any lever's B ÷ A must clear.
# Usage: bench/pairs.sh ROUNDS BIN_A BIN_B [REQUESTS]   (default 20000 requests per burst)
# The load generator is built once here (unless BENCH_NO_BUILD=1); the builds compared are
# whatever BIN_A and BIN_B are. SQLite; on PostgreSQL, bench/postgres.sh with SIDE_BY_SIDE.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 3 ]] || { echo "usage: bench/pairs.sh ROUNDS BIN_A BIN_B [REQUESTS]" >&2; exit 2; }
source bench/lib.sh
build_release
rounds="$1"; a="$2"; b="$3"; n="${4:-20000}"
tables="$bench_work/tables"
for round in $(seq "$rounds"); do
  if (( round % 2 )); then order=("$a" "$b"); else order=("$b" "$a"); fi
  echo "round $round:"
  BENCH_NO_BUILD=1 bench/side_by_side.sh "$n" "${order[@]}" | grep '^|' | tee -a "$tables"
done
echo
python3 bench/pair_ratios.py "$tables" "$(basename "$a")" "$(basename "$b")"
