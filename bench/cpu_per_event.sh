#!/usr/bin/env bash
# Gateway CPU time per event, queue mode with and without an upstream. Steadier than req/s on
# a shared machine: it counts the gateway's own user+system time (/proc/PID/stat) per event.
# Usage: bench/cpu_per_event.sh [REQUESTS]   (default 30000; CONNECTIONS, default 64, spread
# over the replicas)
# A/B: EDGE_BIN=/path/to/other/payflow-edge bench/cpu_per_event.sh measures that build instead;
# with BENCH_NO_BUILD=1 nothing is rebuilt between runs. STORE_URL=postgres://… measures the
# gateway on that PostgreSQL database instead of SQLite, and the database server's own CPU per
# event too (its processes' time, when they run on this machine as the postgres user); with
# REPLICAS=N (PostgreSQL only), N gateways share that database and the load is spread over
# them, and the gateway CPU is theirs summed. QUEUE_EXTRA (TOML lines) goes into the /queue
# endpoint and UPSTREAM_EXTRA into its upstream, e.g. a route or an ordering key:
#   QUEUE_EXTRA=$'[[endpoint.route]]\nupstream = "bare"\ntypes = ["payment.*"]'
#   UPSTREAM_EXTRA='ordering_key = "data.id"'   (loadgen's events each have their own data.id)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
n="${1:-30000}"
work="$bench_work"
replicas="${REPLICAS:-1}"
if [[ "$replicas" != 1 && -z "${STORE_URL:-}" ]]; then echo "REPLICAS needs STORE_URL" >&2; exit 2; fi
bare=$(free_port)
start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
ports=(); gws=()
for r in $(seq 1 "$replicas"); do
  edge=$(free_port); ports+=("$edge")
  if [[ -n "${STORE_URL:-}" ]]; then store="url = \"$STORE_URL\""; else store="path = \"$work/b.db\""; fi
  SERVER_EXTRA="replica = \"r$r\"" edge_config "$edge" "$store" "$bare" > "$work/e$r.toml"
  PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$bin/payflow-edge}" serve --config "$work/e$r.toml"
  gws+=("${bench_pids[-1]}")
  # One at a time: the first applies the migrations while the others would wait on its lock.
  wait_port "$edge"
done
wait_port "$bare"
ticks() { local total=0 pid; for pid in "${gws[@]}"; do total=$(( total + $(awk '{print $14+$15}' "/proc/$pid/stat") )); done; echo "$total"; }
hz=$(getconf CLK_TCK)
for path in stored queue; do
  t0=$(ticks); d0=$(db_ticks); started=$(date +%s.%N)
  urls=(); for port in "${ports[@]}"; do urls+=(--url "http://127.0.0.1:$port/$path"); done
  line=$("$bin/loadgen" run "${urls[@]}" --concurrency "${CONNECTIONS:-64}" --requests "$n" --label "$path")
  delivered_rate=""
  if [[ $path == queue ]]; then
    # Every queued delivery done (their CPU belongs to these events), and how fast, counted
    # from the first request.
    delivered "$bare" "$n" >/dev/null
    delivered_rate=", all delivered at $(python3 -c "import time; print(round($n / (time.time() - $started)))")/s"
  fi
  sleep 1 # the last commits and the pollers' idle rounds
  t1=$(ticks); d1=$(db_ticks)
  db=""; [[ -z "${STORE_URL:-}" ]] || db=", database CPU $(( (d1 - d0) * 1000000 / hz / n )) µs/event"
  echo "$path: $(cut -d'|' -f5 <<<"$line" | xargs) req/s, p99 $(cut -d'|' -f8 <<<"$line" | xargs) ms, gateway CPU $(( (t1 - t0) * 1000000 / hz / n )) µs/event$db$delivered_rate"
done
