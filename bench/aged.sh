#!/usr/bin/env bash
# The gateway on a database that has run a while, with ids in no order (issue 21): every other
# script measures a new database and ids that count up, so each insert lands at the end of
# every index on the id, the cheapest case there is. A real database holds days of events, and
# ids from many merchants (or drawn at random) land all over those indexes.
# Usage: bench/aged.sh [PREFILL] [IDS] [EDGE_BIN] [VAR=VALUE…]   (defaults 300000, random)
# One gateway on a new SQLite file first takes PREFILL queue-mode events with random ids (all
# delivered), then a 20,000-event stored burst and a queue-mode burst with ids IDS (sequential
# or random), 64 connections; the gateway runs with VAR=VALUE… in its environment. Bare
# hyper's CPU per request is measured in the same run. Prints one line: how long the prefill
# took to be acknowledged and delivered; per burst, the gateway's CPU µs/event (× bare),
# acks/s (and the queue burst's delivered/s), ack p99 and CPU per thread; the database's size.
# PG=1: on a throw-away PostgreSQL instead (start_postgres; PG_INITDB and PG_OPTS apply), the
# database server's CPU per event added to each burst.
# PLUGIN=1: the queue-mode endpoint runs the amount-threshold example plugin (built by
# scripts/build-plugins.sh, or PLUGIN_WASM), so the prefill and the queue burst go through
# plugin steps and runs as well (PLUGIN_WASM and PLUGIN_CONFIG: another plugin, another config).
# EVENTS=N: each burst has N events instead of 20,000.
# With PLUGIN, the queue burst also says how many plugin runs it made per event, and how many
# steps were run again after a kv conflict (from the gateway's metrics, on an admin listener).
# KV_FILL=N (with PLUGIN): before the bursts, the plugin's kv space is filled with N keys of
# 900 bytes each (directly in the store, as a plugin that remembers many customers would have
# it), so that what reading the space costs shows in the queue burst.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
[[ -z "${PLUGIN:-}" ]] || through_the_example_plugin
prefill="${1:-300000}"; ids="${2:-random}"; edge_bin="${3:-$bin/payflow-edge}"; shift 3 || shift $#
work="$bench_work"; hz=$(getconf CLK_TCK); n="${EVENTS:-20000}"
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"; bare_pid=${bench_pids[-1]}
edge=$(free_port)
one_store aged
token="bench-admin-token-0123456789"
if [[ -n "${PLUGIN:-}" ]]; then
  admin=$(free_port)
  SERVER_EXTRA="[admin]
listen = \"127.0.0.1:$admin\"
token = \"$token\""
fi
SERVER_EXTRA="${SERVER_EXTRA:-}" edge_config "$edge" "$store" "$bare" > "$work/g.toml"
start_edge "$edge_bin" "$work/g.toml" "$@"; pid=$edge_pid
wait_port "$edge"; wait_port "$bare"; [[ -z "${PLUGIN:-}" ]] || wait_port "$admin"
filled=""
if [[ -n "${KV_FILL:-}" ]]; then
  fill_kv aged default amount-threshold "$KV_FILL"
  filled=" (kv filled with $KV_FILL keys)"
fi
if ((prefill > 0)); then
  # How long the prefill took to be acknowledged, and to be delivered: the backlog's catch-up
  # on a growing database (the twenty-second look found it 5-10x slower on PostgreSQL before).
  t=$(date +%s.%N)
  "$bin/loadgen" run --url "http://127.0.0.1:$edge/queue" --requests "$prefill" --ids random --label prefill >/dev/null
  acked=$(date +%s.%N)
  delivered "$bare" "$prefill" >/dev/null
  filled=" (prefill acked in $(python3 -c "print(round($acked - $t))") s, delivered in $(python3 -c "print(round($(date +%s.%N) - $t))") s)"
  sleep 3 # the last records and a checkpoint
fi
t0=$(proc_ticks "$bare_pid")
"$bin/loadgen" run --url "http://127.0.0.1:$bare/" --requests "$n" --label bare >/dev/null
sleep 0.5
b_cpu=$(us_per_event "$t0" "$(proc_ticks "$bare_pid")" "$n")
out="bare $b_cpu µs/request;"
for path in stored queue; do
  [[ -z "${PLUGIN:-}" ]] || read -r runs0 conflicts0 < <(plugin_runs "$admin" "$token")
  t0=$(proc_ticks "$pid"); d0=$(db_ticks); posted=$(delivered "$bare"); before=$(thread_ticks "$pid")
  t=$(date +%s.%N)
  line=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --requests "$n" --ids "$ids" --label "$path")
  pace=""
  if [[ $path != stored ]]; then
    # The burst's delivery rate: its events over the time from its first request until the
    # upstream had answered the last, against the acks/s beside it.
    delivered "$bare" $((posted + n)) >/dev/null
    pace=", delivered $(python3 -c "print(round($n / ($(date +%s.%N) - $t)))")/s"
  fi
  sleep 1 # the last commits and the pollers' idle rounds
  cpu=$(us_per_event "$t0" "$(proc_ticks "$pid")" "$n"); d1=$(db_ticks); after=$(thread_ticks "$pid")
  if [[ $path != stored && -n "${PLUGIN:-}" ]]; then
    # Read after the CPU, so that the metrics' own request is not counted in it.
    read -r runs1 conflicts1 < <(plugin_runs "$admin" "$token")
    pace="$pace, plugin runs/event $(python3 -c "print(round(($runs1 - $runs0) / $n, 3))"), kv conflicts $((conflicts1 - conflicts0))"
  fi
  threads=$(join -a2 -e0 -o 0,1.2,2.2 <(sort <<<"$before") <(sort <<<"$after") |
    awk -v hz="$hz" -v n="$n" '{d=($3-$2)*1e6/hz/n; if (d >= 0.5) printf "%s %.0f, ", $1, d}' | sed 's/, $//')
  out="$out $path $cpu µs/event ($(python3 -c "print(round($cpu / $b_cpu, 2))")× bare)"
  [[ -z "${PG:-}" ]] || threads="$threads; database $(us_per_event "$d0" "$d1" "$n")"
  out="$out $(cut -d'|' -f5 <<<"$line" | xargs)/s$pace p99 $(cut -d'|' -f8 <<<"$line" | xargs) ms [$threads];"
done
if [[ -n "${PG:-}" ]]; then
  size=$(pg_psql -d aged -Atc "SELECT pg_database_size('aged') / 1048576")
else
  size=$(du -m "$work/aged.db" | cut -f1)
fi
echo "prefill $prefill$filled, ids $ids: $out database $size MB"
