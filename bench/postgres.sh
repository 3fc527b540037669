#!/usr/bin/env bash
# The gateway on PostgreSQL against the gateway on SQLite, side by side in one run:
# bench/cpu_per_event.sh (queue mode, stored only and stored+delivered, 64 connections) on
# SQLite, on PostgreSQL with one replica and with three (the connections spread over them),
# interleaved over PAIRS rounds. PostgreSQL is a throwaway server started here (initdb into
# a temporary directory, a loopback port, as the postgres user when run as root), synchronous
# commit on: an acknowledgement waits for the WAL flush, as SQLite's waits for its fsync.
# Usage: bench/postgres.sh [REQUESTS] [PAIRS]   (defaults 20000 and 3)
# A/B of two builds on PostgreSQL: PG_ONLY=1 skips the SQLite runs, PG_REPLICAS= (empty) the
# three-replica ones; EDGE_BIN and BENCH_NO_BUILD pass through to bench/cpu_per_event.sh.
# SIDE_BY_SIDE="BIN_A BIN_B": instead, per pair, bench/side_by_side.sh on PostgreSQL with those
# gateway builds (bare hyper and the seed's Express receiver in the same run), A first in odd
# pairs and B first in even ones, then bench/pair_ratios.py's summary of the pairs. With
# FIXED_RATES="RATE…" as well, each build runs bench/fixed_rate.sh at those offered rates
# instead (a fresh database each), in the same order.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
n="${1:-20000}"; pairs="${2:-3}"
[[ -n "${BENCH_NO_BUILD:-}" ]] || cargo build --release --locked -p payflow-edge -p payflow-bench >&2
source bench/lib.sh
start_postgres
port=$pg_port
echo "$(nproc) cores; PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'), $n requests per run"
for pair in $(seq 1 "$pairs"); do
  if [[ -n "${SIDE_BY_SIDE:-}" ]]; then
    read -r a b <<<"$SIDE_BY_SIDE"; if (( pair % 2 )); then bins=("$a" "$b"); else bins=("$b" "$a"); fi
    if [[ -n "${FIXED_RATES:-}" ]]; then
      for i in 0 1; do
        pg_psql -d postgres -qc "CREATE DATABASE fixed_${pair}_$i"
        echo "pair $pair: $(basename "${bins[$i]}")"
        # shellcheck disable=SC2086 # the rates are words
        BENCH_NO_BUILD=1 EDGE_BIN="${bins[$i]}" STORE_URL="postgres://payflow@127.0.0.1:$port/fixed_${pair}_$i" \
          bench/fixed_rate.sh $FIXED_RATES | grep '^| rate'
      done
      continue
    fi
    pg_psql -d postgres -qc "CREATE DATABASE side_$pair"
    echo "pair $pair:"
    BENCH_NO_BUILD=1 STORE_URL="postgres://payflow@127.0.0.1:$port/side_$pair" bench/side_by_side.sh "$n" "${bins[@]}" |
      grep '^|' | tee -a "$bench_work/tables"
    continue
  fi
  if [[ -z "${PG_ONLY:-}" ]]; then
    echo "pair $pair, sqlite:"; BENCH_NO_BUILD=1 bench/cpu_per_event.sh "$n" | sed 's/^/  /'
  fi
  for replicas in 1 ${PG_REPLICAS-3}; do
    db="bench_${pair}_$replicas"
    pg_psql -d postgres -qc "CREATE DATABASE $db"
    echo "pair $pair, postgres, $replicas replica(s):"
    BENCH_NO_BUILD=1 REPLICAS=$replicas STORE_URL="postgres://payflow@127.0.0.1:$port/$db" \
      bench/cpu_per_event.sh "$n" | sed 's/^/  /'
  done
done
if [[ -f "$bench_work/tables" ]]; then
  echo; read -r a b <<<"$SIDE_BY_SIDE"; python3 bench/pair_ratios.py "$bench_work/tables" "$(basename "$a")" "$(basename "$b")"
fi
