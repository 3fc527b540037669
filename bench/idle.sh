#!/usr/bin/env bash
# What gateways cost when nothing arrives: their polls of the store (due deliveries, plugin
# uploads, health) and the database's work answering them. One gateway on SQLite, then one and
# three on one PostgreSQL database (a throwaway server, as in bench/postgres.sh), each measured
# over SECONDS (default 20) after 3 s to settle, from /proc.
# Usage: bench/idle.sh [SECONDS]   (EDGE_BIN and BENCH_NO_BUILD as in bench/cpu_per_event.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
seconds="${1:-20}"
edge_bin="${EDGE_BIN:-$bin/payflow-edge}"
start_postgres
bare=$(free_port)
start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
# measure LABEL PID…: the gateways' and the database's CPU over the interval, in ms.
measure() {
  local label=$1; shift
  sleep 3
  local g0=0 g1=0 d0 d1 p
  for p in "$@"; do g0=$((g0 + $(proc_ticks "$p"))); done; d0=$(db_ticks)
  sleep "$seconds"
  for p in "$@"; do g1=$((g1 + $(proc_ticks "$p"))); done; d1=$(db_ticks)
  local ms=$((1000 / $(getconf CLK_TCK)))
  echo "$label: gateways $(((g1 - g0) * ms)) ms of CPU in $seconds s, database $(((d1 - d0) * ms)) ms"
}
port=$(free_port)
edge_config "$port" "path = \"$bench_work/idle.db\"" "$bare" > "$bench_work/sqlite.toml"
PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$bench_work/sqlite.toml"
wait_port "$port"
measure "SQLite, one gateway" "${bench_pids[-1]}"
kill "${bench_pids[-1]}"
pg_psql -d postgres -qc "CREATE DATABASE idle"
gateways=()
for r in 1 2 3; do
  port=$(free_port)
  SERVER_EXTRA="replica = \"r$r\"" edge_config "$port" "url = \"postgres://payflow@127.0.0.1:$pg_port/idle\"" "$bare" \
    > "$bench_work/pg$r.toml"
  PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$bench_work/pg$r.toml"
  wait_port "$port"
  gateways+=("${bench_pids[-1]}")
  if [[ $r == 1 ]]; then measure "PostgreSQL, one replica" "${gateways[@]}"; fi
done
measure "PostgreSQL, three replicas" "${gateways[@]}"
