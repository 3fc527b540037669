#!/usr/bin/env bash
# A queue-mode burst and its catch-up, second by second (issue 21): every 200 ms, how many
# events the upstream has received and each gateway thread's CPU so far (ticks of 1/CLK_TCK s,
# from /proc/PID/task/*/stat), while the load generator is still sending and after. It shows
# which thread, if any, is saturated while the burst is acknowledged and while the backlog is
# delivered. At the end, how much of the wall time the store's commits took (the writer's
# statements and fsync, from the payflow_edge_store_commit_seconds metric, read with curl).
# Usage: bench/catch_up.sh [REQUESTS] (default 40000, 64 connections); EDGE_BIN=… measures
# another build, CONCURRENCY=… sets the upstream's workers (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
edge_bin="${EDGE_BIN:-$bin/payflow-edge}"
n="${1:-40000}"
work="$bench_work"

bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port)
edge_config "$edge" "path = \"$work/g.db\"" "$bare" \
  | sed "s/^concurrency = 32$/concurrency = ${CONCURRENCY:-32}/" > "$work/g.toml"
admin=$(free_port); token="bench-admin-token-0123456789"
printf '[admin]\nlisten = "127.0.0.1:%s"\ntoken = "%s"\n' "$admin" "$token" >> "$work/g.toml"
PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$work/g.toml"; pid=${bench_pids[-1]}
wait_port "$edge"; wait_port "$bare"

# "thread=ticks …" for the gateway, summed by thread name.
threads() { thread_ticks "$pid" | awk '{printf "%s=%d ", $1, $2}'; }
"$bin/loadgen" run --url "http://127.0.0.1:$edge/queue" --concurrency 64 --requests "$n" > "$work/run.txt" &
sender=$!
start=$(date +%s.%N)
while :; do
  got=$(delivered "$bare")
  sending=$(kill -0 "$sender" 2>/dev/null && echo sending || echo sent)
  printf '%5.1f s  delivered %6d  %s %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$got" "$sending" "$(threads)"
  [[ "$got" -ge "$n" ]] && break
  sleep 0.2
done
wait "$sender"
echo "loadgen: $(cat "$work/run.txt")"
# The writer's busy time: its commits (statements and fsync) added up, against the wall clock.
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
commit_seconds "$admin" "$token" |
  awk -v e="$elapsed" '{printf "commits took %.2f s of %.2f s (%.0f%%)\n%d commits\n", $1, e, 100*$1/e, $2}'
