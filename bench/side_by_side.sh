#!/usr/bin/env bash
# Issue 21's figures, side by side in one run: CPU per request of bare hyper, of the seed's
# Express receiver and of the gateway (stored only; stored and delivered), each the process's
# own user+system time over the run (/proc/PID/stat), the gateway's also per thread; with the
# acknowledgement rate and p99 of each, and for queue mode how fast the burst was delivered;
# for the gateway also its threads' context switches per request (voluntary and not, from
# /proc/PID/task/*/status): how often a thread slept and was woken, which CPU time hides.
# Usage: bench/side_by_side.sh [REQUESTS] [EDGE_BIN…]   (default 20000 requests, 64 connections)
# With several gateway binaries they run one after another against the same bare and Express
# servers, each on a fresh SQLite file: an A/B pair in one run. STORE_URL=postgres://… measures
# the gateway on that database (and the database server's CPU, as the postgres user's processes);
# each gateway of the run is stopped after its bursts and its schema dropped, so the next one
# starts on a new schema of the same server (bench/postgres.sh alternates the order).
# Between two gateways it waits SETTLE_SECS (default 8) for the machine to settle.
# Prints one markdown row per target; ratios are to bare hyper in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
(cd bench/express && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error >&2)
n="${1:-20000}"; shift || true
edges=("$@"); [[ ${#edges[@]} -gt 0 ]] || edges=("$bin/payflow-edge")
secret="whsec_bench_secret"
work="$bench_work"
hz=$(getconf CLK_TCK)

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
us() { python3 -c "print(round($1 * 1e6 / $hz / $n, 1))"; }
# Context switches of a process's live threads, summed.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }

bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"; bare_pid=${bench_pids[-1]}
express=$(free_port); start_bg node bench/express/server.js "$express" "$secret"; express_pid=${bench_pids[-1]}
wait_port "$bare"; wait_port "$express"

# load LABEL URL SIGN PID: runs the load, prints "req/s p99 µs_per_request"
load() {
  local t0 t1 line
  t0=$(ticks "$4")
  line=$("$bin/loadgen" run --url "$2" --concurrency 64 --requests "$n" --secret "$secret" --sign "$3" --label "$1")
  sleep 0.5
  t1=$(ticks "$4")
  echo "$(cut -d'|' -f5 <<<"$line" | xargs) $(cut -d'|' -f8 <<<"$line" | xargs) $(us $((t1 - t0)))"
}

echo "$n requests per target, 64 connections, $(nproc) cores"
echo
echo "| target | req/s | ack p99 ms | CPU µs/req | × bare | delivered/s (× ack rate) | per thread µs/req | switches/req |"
echo "|---|---|---|---|---|---|---|---|"
read -r b_rate b_p99 b_cpu < <(load "bare hyper" "http://127.0.0.1:$bare/" payflow "$bare_pid")
echo "| bare hyper | $b_rate | $b_p99 | $b_cpu | 1.0 | | | |"
read -r x_rate x_p99 x_cpu < <(load "seed Express" "http://127.0.0.1:$express/webhooks/payflow" seed "$express_pid")
echo "| seed Express | $x_rate | $x_p99 | $x_cpu | $(python3 -c "print(round($x_cpu / $b_cpu, 1))") | | | |"

i=0
for edge_bin in "${edges[@]}"; do
  i=$((i + 1))
  edge=$(free_port)
  if [[ -n "${STORE_URL:-}" ]]; then store="url = \"$STORE_URL\""; else store="path = \"$work/g$i.db\""; fi
  edge_config "$edge" "$store" "$bare" > "$work/g$i.toml"
  PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$work/g$i.toml"
  pid=${bench_pids[-1]}
  wait_port "$edge"
  for path in stored queue; do
    before_threads=$(thread_ticks "$pid"); t0=$(ticks "$pid"); d0=$(db_ticks); s0=$(switches "$pid")
    posted=$(delivered "$bare"); started=$(date +%s.%N)
    line=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --concurrency 64 --requests "$n" --label "$path")
    drate=""
    if [[ $path == queue ]]; then
      delivered "$bare" $((posted + n)) >/dev/null
      drate=$(python3 -c "import time; print(round($n / (time.time() - $started)))")
    fi
    sleep 1 # the last commits and the pollers' idle rounds
    t1=$(ticks "$pid"); d1=$(db_ticks); s1=$(switches "$pid")
    after_threads=$(thread_ticks "$pid")
    per_thread=$(join -a2 -e0 -o 0,1.2,2.2 <(sort <<<"$before_threads") <(sort <<<"$after_threads") |
      awk -v hz="$hz" -v n="$n" '{d=($3-$2)*1e6/hz/n; if (d >= 0.5) printf "%s %.0f, ", $1, d}' | sed 's/, $//')
    rate=$(cut -d'|' -f5 <<<"$line" | xargs); p99=$(cut -d'|' -f8 <<<"$line" | xargs)
    cpu=$(us $((t1 - t0)))
    [[ -z "${STORE_URL:-}" ]] || per_thread="$per_thread; database $(us $((d1 - d0)))"
    shown=""; [[ -z "$drate" ]] || shown="$drate ($(python3 -c "print(round($drate / $rate, 2))"))"
    echo "| $(basename "$edge_bin") $path | $rate | $p99 | $cpu | $(python3 -c "print(round($cpu / $b_cpu, 1))") | $shown | $per_thread | $(python3 -c "print(round(($s1 - $s0) / $n, 2))") |"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [[ -z "${STORE_URL:-}" ]] || psql "$STORE_URL" -qc "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null 2>&1
  # A pause before the next gateway: without it, the gateway run second in an A/A series (one
  # build twice) had 1.14-1.29x the first's stored p99 and 1.03-1.11x its stored CPU, and the
  # stored figures' spread was 2-3x wider; with 8 s, 1.0-1.03x (bench/RESULTS.md, nineteenth
  # look). What settles is not known: deleting the database and a `sync` did not help.
  [[ $i -eq ${#edges[@]} ]] || sleep "${SETTLE_SECS:-8}"
done
