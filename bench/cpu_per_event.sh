#!/usr/bin/env bash
# Gateway CPU time per event, queue mode with and without an upstream. Steadier than req/s on
# a shared machine: it counts the gateway's own user+system time (/proc/PID/stat) per event.
# Usage: bench/cpu_per_event.sh [REQUESTS]   (default 30000; 64 connections)
# A/B: EDGE_BIN=/path/to/other/payflow-edge bench/cpu_per_event.sh measures that build instead;
# with BENCH_NO_BUILD=1 nothing is rebuilt between runs. STORE_URL=postgres://… measures the
# gateway on that PostgreSQL database instead of SQLite, and the database server's own CPU per
# event too (its processes' time, when they run on this machine as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
# BENCH_NO_BUILD=1: measure what is built (an A/B series must not rebuild between runs).
[[ -n "${BENCH_NO_BUILD:-}" ]] || cargo build --release --locked -p payflow-edge -p payflow-bench >&2
bin="$CARGO_TARGET_DIR/release"
n="${1:-30000}"
source bench/lib.sh
work="$bench_work"
bare=$(free_port); edge=$(free_port)
start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
cat > "$work/e.toml" <<TOML
[server]
listen = "127.0.0.1:$edge"
[store]
$(if [[ -n "${STORE_URL:-}" ]]; then echo "url = \"$STORE_URL\""; else echo "path = \"$work/b.db\""; fi)
[[endpoint]]
path = "/queue"
secrets = ["whsec_bench_secret"]
upstream = "bare"
[[endpoint]]
path = "/stored"
secrets = ["whsec_bench_secret"]
[[upstream]]
name = "bare"
url = "http://127.0.0.1:$bare/"
concurrency = 32
TOML
PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$bin/payflow-edge}" serve --config "$work/e.toml"
gw="${bench_pids[-1]}"
wait_port "$bare"; wait_port "$edge"
ticks() { awk '{print $14+$15}' "/proc/$gw/stat"; }
# The database server's processes (PostgreSQL forks one per connection): their user+system time.
db_ticks() {
  local total=0 pid
  for pid in $(pgrep -u postgres 2>/dev/null); do
    total=$(( total + $(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
for path in stored queue; do
  t0=$(ticks); d0=$(db_ticks)
  line=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --concurrency 64 --requests "$n" --label "$path")
  sleep 2 # let queued deliveries finish: their CPU belongs to these events
  t1=$(ticks); d1=$(db_ticks)
  db=""; [[ -z "${STORE_URL:-}" ]] || db=", database CPU $(( (d1 - d0) * 1000000 / hz / n )) µs/event"
  echo "$path: $(cut -d'|' -f5 <<<"$line" | xargs) req/s, gateway CPU $(( (t1 - t0) * 1000000 / hz / n )) µs/event$db"
done
