#!/usr/bin/env bash
# What bounds a burst (issue 21): one burst at 64 connections against a fresh gateway, after a
# 3,000-event warm-up, and while it runs:
#   - how busy the machine's cores were (/proc/stat), so a CPU-bound burst can be told from one
#     that waits (on the disk, or on its own round trips);
#   - the CPU per event of the gateway's threads (through the last delivery, in queue mode) and
#     of the load generator (user+system);
#   - the store's commits while the burst was sent: how many, events per commit, and how much
#     of the burst's wall time they took (payflow_edge_store_commit_seconds, read with curl);
#   - bytes the gateway wrote per event (/proc/PID/io `wchar`: every write call, the WAL's and
#     the checkpoints' and the sockets' alike) and write calls per event.
# Usage: bench/burst_anatomy.sh [REQUESTS] [stored|queue]   (default 20000 stored).
# EDGE_BIN=… measures another build; PAGE_SIZE=… creates the SQLite database with that page
# size first (the gateway keeps an existing database's).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
edge_bin="${EDGE_BIN:-$bin/payflow-edge}"
n="${1:-20000}"; path="${2:-stored}"
work="$bench_work"
hz=$(getconf CLK_TCK)

bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port); admin=$(free_port); token="bench-admin-token-0123456789"
if [[ -n "${PAGE_SIZE:-}" ]]; then
  python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA page_size=$PAGE_SIZE'); c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE x(a)'); c.execute('DROP TABLE x'); c.close()" "$work/g.db"
fi
edge_config "$edge" "path = \"$work/g.db\"" "$bare" > "$work/g.toml"
printf '[admin]\nlisten = "127.0.0.1:%s"\ntoken = "%s"\n' "$admin" "$token" >> "$work/g.toml"
PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$work/g.toml"; pid=${bench_pids[-1]}
wait_port "$edge"; wait_port "$bare"; wait_port "$admin"
"$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --concurrency 64 --requests 3000 --label warm >/dev/null
[[ $path != queue ]] || delivered "$bare" 3000 >/dev/null
sleep 1

threads() { thread_ticks "$pid" | sort; }
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
io() { awk -v k="$1" '$1==k":" {print $2}' "/proc/$pid/io"; }
commits() { commit_seconds "$admin" "$token"; }

threads > "$work/t0"; read -r b0 a0 < <(busy); w0=$(io wchar); s0=$(io syscw); read -r cs0 cc0 < <(commits)
start=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$work/loadgen.time" \
  "$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --concurrency 64 --requests "$n" --label "$path" > "$work/line"
end=$(date +%s.%N)
read -r b1 a1 < <(busy); read -r cs1 cc1 < <(commits)
[[ $path != queue ]] || delivered "$bare" $((3000 + n)) >/dev/null
sleep 1
threads > "$work/t1"; w1=$(io wchar); s1=$(io syscw)

echo "$n events to /$path, 64 connections, $(nproc) cores: $(basename "$edge_bin")"
echo
cat "$work/line"
python3 - "$n" "$hz" "$start" "$end" "$b0" "$a0" "$b1" "$a1" "$w0" "$w1" "$s0" "$s1" "$cs0" "$cc0" "$cs1" "$cc1" \
  "$(cat "$work/loadgen.time")" "$work/t0" "$work/t1" <<'PY'
import sys
a = sys.argv[1:]
n, hz = int(a[0]), int(a[1])
start, end = float(a[2]), float(a[3])
b0, a0, b1, a1 = map(int, a[4:8])
w0, w1, s0, s1 = map(int, a[8:12])
cs0, cc0, cs1, cc1 = map(float, a[12:16])
lu, ls = map(float, a[16].split())
t0 = dict(l.split() for l in open(a[17]))
t1 = dict(l.split() for l in open(a[18]))
wall = end - start
print(f"machine busy during the burst: {100 * (b1 - b0) / (a1 - a0):.0f}% of its cores")
print(f"load generator: {(lu + ls) * 1e6 / n:.1f} µs/event")
per = {k: (int(v) - int(t0.get(k, 0))) * 1e6 / hz / n for k, v in t1.items()}
print("gateway: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.5)
      + f" µs/event (total {sum(per.values()):.1f}; burst and its deliveries)")
c = cc1 - cc0
if c:
    print(f"commits: {c:.0f}, {n / c:.1f} events each, {(cs1 - cs0) / c * 1e3:.2f} ms each on average, "
          f"{100 * (cs1 - cs0) / wall:.0f}% of the burst's {wall:.2f} s")
print(f"written: {(w1 - w0) / n:.0f} bytes/event in {(s1 - s0) / n:.2f} write calls/event")
PY
