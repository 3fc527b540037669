#!/usr/bin/env bash
# The queue burst on a warmed gateway, and its stalls (issue 21): one gateway, 20,000 events
# stored only, a second's pause, then 20,000 in queue mode (side_by_side.sh's order), each at
# 64 connections. A stall is a cluster of at least 32 requests over 12 ms finishing within
# 3 ms of each other: the whole gateway held, not a slow run (`loadgen run --timeline`).
# Usage: bench/warmed_stalls.sh [EDGE_BIN] [VAR=VALUE…]   (the gateway runs with those in its
# environment, e.g. MIMALLOC_PURGE_DELAY=-1). PG=1: on a throw-away PostgreSQL instead of a
# SQLite file (start_postgres: its WAL warmed unless PG_COLD_WAL=1), its CPU added to the line.
# Prints one line: CPU µs/event of each burst (the queue one through its last delivery), the
# queue burst's ack p99, acks/s and stalls, and the gateway's resident size afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
edge_bin="${1:-$bin/payflow-edge}"; shift || true
work="$bench_work"; n=20000
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port)
one_store stalls
edge_config "$edge" "$store" "$bare" > "$work/g.toml"
start_edge "$edge_bin" "$work/g.toml" "$@"; pid=$edge_pid
wait_port "$edge"; wait_port "$bare"
ticks() { proc_ticks "$pid"; }
per_event() { us_per_event "$1" "$2" "$n"; }
t0=$(ticks)
"$bin/loadgen" run --url "http://127.0.0.1:$edge/stored" --concurrency 64 --requests "$n" --label stored >/dev/null
sleep 1; t1=$(ticks); d1=$(db_ticks)
q=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/queue" --concurrency 64 --requests "$n" --label queue --timeline "$work/timeline.csv")
delivered "$bare" "$n" >/dev/null; sleep 1; t2=$(ticks); d2=$(db_ticks)
stalls=$(python3 - "$work/timeline.csv" <<'PY'
import sys
done = sorted(int(s) + int(l) for s, l in (line.split(',') for line in open(sys.argv[1])) if int(l) > 12000)
stalls, size, last = 0, 0, None
for t in done + [None]:
    if t is None or (last is not None and t - last > 3000):
        stalls += size >= 32
        size = 0
    size += 1
    last = t
print(stalls)
PY
)
echo "stored $(per_event "$t0" "$t1") µs/event; queue $(per_event "$t1" "$t2") µs/event," \
  "p99 $(cut -d'|' -f8 <<<"$q" | xargs) ms, $(cut -d'|' -f5 <<<"$q" | xargs) acks/s, $stalls stalls;" \
  "resident $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB${PG:+; database $(per_event "$d1" "$d2") µs/queue event}"
