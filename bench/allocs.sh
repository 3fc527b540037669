#!/usr/bin/env bash
# Heap allocations per event, by thread (issue 21): a count, not a time, so unlike every CPU
# figure it does not move with this machine's ±50% swings and one run resolves a change of one
# allocation per event. One gateway (SQLite, new database) delivering to a bare upstream; 3,000
# events to warm up; then uprobes on mimalloc's entry points (`mi_malloc_aligned`,
# `mi_zalloc_aligned`, `mi_realloc_aligned`: what Rust's global allocator calls) count every
# allocation while one burst is stored (/stored) and, separately, one is stored and delivered
# (/queue), each at 64 connections. Prints, per path, allocations per event on each thread.
# Needs perf with uprobes (root). A burst lets deliveries fall behind, so some are read back
# from the store (the catch-up path), as in every other burst here.
# Usage: bench/allocs.sh [REQUESTS]   (default 10000); EDGE_BIN=… measures another build.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
edge_bin="${EDGE_BIN:-$bin/payflow-edge}"
n="${1:-10000}"
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port)
one_store allocs
edge_config "$edge" "$store" "$bare" > "$bench_work/g.toml"
start_edge "$edge_bin" "$bench_work/g.toml"; pid=$edge_pid
wait_port "$edge"; wait_port "$bare"
"$bin/loadgen" run --url "http://127.0.0.1:$edge/queue" --requests 3000 --label warm >/dev/null
delivered "$bare" 3000 >/dev/null

group=payflow_allocs
perf probe -q -d "$group:*" 2>/dev/null || true
trap 'perf probe -q -d "$group:*" 2>/dev/null || true; bench_cleanup' EXIT
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  perf probe -q -x "$edge_bin" -a "$group:$f=$f"
done
sent=3000
for path in stored queue; do
  sleep 1 # the warm-up's (or the last burst's) records and checkpoint
  perf stat -e "$group:*" --per-thread -x, -p "$pid" -o "$bench_work/$path.stat" &
  stat_pid=$!
  sleep 0.5
  "$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --requests "$n" --label "$path" >/dev/null
  if [[ $path == queue ]]; then sent=$((sent + n)); delivered "$bare" "$sent" >/dev/null; fi
  sleep 0.5
  kill -INT "$stat_pid"; wait "$stat_pid" || true
  # perf's CSV: "thread-tid,count,,event,…"; thread names lose their "-tid" suffix.
  python3 - "$bench_work/$path.stat" "$n" "$path" <<'PY'
import collections, sys
per = collections.Counter()
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 3 and f[1].isdigit():
        per[f[0].rsplit("-", 1)[0]] += int(f[1])
n = int(sys.argv[2])
threads = ", ".join(f"{t} {c / n:.1f}" for t, c in per.most_common() if c / n >= 0.05)
print(f"{sys.argv[3]}: {sum(per.values()) / n:.1f} allocations/event [{threads}]")
PY
done
