#!/usr/bin/env bash
# One merchant's large kv space against another merchant, on the shared database (issue 21,
# thirty-second look). One gateway on a throw-away PostgreSQL serves two merchants, each with
# an upstream of its own (`loadgen bare`): "big", whose /big events go through the ledger
# example (or $PLUGIN_WASM) with its kv space filled with KV_FILL keys of 900 bytes (default
# 1000), and "small", whose /small events go straight to its upstream. "small" offers RATE
# events a second (default 1000) for SECONDS (default 10); two seconds in, "big" sends a burst
# of REQUESTS events (default 20000, 64 connections). Prints one line: small's ack p99, how long
# after its offer ended its upstream had every event, big's acks/s and delivered/s, and the
# gateway's and the database's CPU per event of both. Small's deliveries are also sampled every
# 200 ms while it offers: the most they fell behind its offer at any time.
# REPLICAS=N: N gateways share the database, each merchant's events spread over them (the
# gateways' CPU summed); with KV_FILL=0 and one customer in every event, the replicas contend
# for one kv key (thirty-fourth look).
# CUSTOMERS=N: big's events pay N customers in turn, so the ledger keeps N totals and replicas
# seldom contend for one (the plugin's kv quota is raised to 8 MB to hold them beside the fill).
# BIG_CONFIG: big's plugin's config table (e.g. '{ writes = "1000" }' with the kv-scan fixture as
# PLUGIN_WASM: a plugin that writes a thousand keys a run). SMALL_PLUGIN=WASM: small's events go
# through that plugin too (amount-threshold's config), so that its steps are recorded beside
# big's on the shared database and "all delivered … after its offer" includes their records.
# BIG_PAD=BYTES: big's events are padded to about that size (loadgen --pad): a sender of large
# events against another's acknowledgements.
# SQLITE=1: on a SQLite file instead (one gateway; its writer is the one both merchants'
# acknowledgements and plugin steps share).
# KV_STATS=1: the database also counts its statements (pg_stat_statements), and the run prints,
# before its line, the costliest on plugin_kv: calls, rows, milliseconds (thirty-fifth look).
# Usage: bench/kv_neighbour.sh [EDGE_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
[[ -n "${BENCH_NO_BUILD:-}" ]] || scripts/build-plugins.sh >&2
edge_bin="${1:-$bin/payflow-edge}"
wasm="${PLUGIN_WASM:-$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/ledger.wasm}"
fill="${KV_FILL:-1000}"; customers=(${CUSTOMERS:+--customers "$CUSTOMERS"}); n="${REQUESTS:-20000}"; rate="${RATE:-1000}"; seconds="${SECONDS_OFFERED:-10}"
small_n=$((rate * seconds))
work="$bench_work"
small_chain=""; [[ -z "${SMALL_PLUGIN:-}" ]] || small_chain='plugins = ["threshold"]'
pg=1; [[ -z "${SQLITE:-}" ]] || pg=
if [[ -n "${SQLITE:-}" ]]; then
  PG= one_store neighbour
elif [[ -n "${KV_STATS:-}" ]]; then
  PG=1 PG_OPTS="-c shared_preload_libraries=pg_stat_statements" one_store neighbour
  pg_psql -d neighbour -qc "CREATE EXTENSION pg_stat_statements"
else
  PG=1 one_store neighbour
fi
big_up=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$big_up"
small_up=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$small_up"
cat > "$work/n.toml" <<TOML
[server]
listen = "127.0.0.1:EDGE_PORT"
replica = "EDGE_REPLICA"
[store]
$store
[[merchant]]
id = "big"
token = "big-token-0123456789abcdef"
[[merchant]]
id = "small"
token = "small-token-0123456789abcdef"
[[endpoint]]
merchant = "big"
path = "/big"
secrets = ["whsec_bench_secret"]
upstream = "big-app"
plugins = ["ledger"]
[[endpoint]]
merchant = "small"
path = "/small"
secrets = ["whsec_bench_secret"]
upstream = "small-app"
$small_chain
[[upstream]]
name = "big-app"
merchant = "big"
url = "http://127.0.0.1:$big_up/"
concurrency = 32
[[upstream]]
name = "small-app"
merchant = "small"
url = "http://127.0.0.1:$small_up/"
concurrency = 32
[[plugin]]
name = "ledger"
merchant = "big"
path = "$wasm"
${CUSTOMERS:+kv_bytes = 8388608}
${BIG_CONFIG:+config = $BIG_CONFIG}
TOML
if [[ -n "${SMALL_PLUGIN:-}" ]]; then
  cat >> "$work/n.toml" <<TOML
[[plugin]]
name = "threshold"
merchant = "small"
path = "$SMALL_PLUGIN"
config = { min_amount = "1000" }
TOML
fi
pids=(); small_urls=(); big_urls=()
for r in $(seq 1 "${REPLICAS:-1}"); do
  edge=$(free_port)
  sed "s/EDGE_PORT/$edge/; s/EDGE_REPLICA/r$r/" "$work/n.toml" > "$work/n$r.toml"
  start_edge "$edge_bin" "$work/n$r.toml"; pids+=("$edge_pid")
  wait_port "$edge"   # one at a time: the first migrates while the others would wait
  small_urls+=(--url "http://127.0.0.1:$edge/small"); big_urls+=(--url "http://127.0.0.1:$edge/big")
done
wait_port "$big_up"; wait_port "$small_up"
((fill == 0)) || PG=$pg fill_kv neighbour big ledger "$fill"
ticks() { local t=0 p; for p in "${pids[@]}"; do t=$(( t + $(proc_ticks "$p") )); done; echo "$t"; }
t0=$(ticks); d0=$(db_ticks)
"$bin/loadgen" run "${small_urls[@]}" --requests "$small_n" --rate "$rate" --label small \
  > "$work/small.txt" 2>/dev/null &
small_pid=$!
# Small's upstream's count every 200 ms while small offers: how far its deliveries fell behind
# its offer at worst, including while big's burst ran (not only once it was over).
# Then how long after the offer ended its upstream had every event (measured here, since big's
# deliveries may outlast small's offer).
small_start=$(date +%s.%N)
(while kill -0 "$small_pid" 2>/dev/null; do
   echo "$(date +%s.%N) $(delivered "$small_up")"; sleep 0.2
 done > "$work/small_counts.txt"
 offered=$(date +%s.%N)
 delivered "$small_up" "$small_n" >/dev/null
 python3 -c "print(round(($(date +%s.%N) - $offered) * 1000))" > "$work/small_behind.txt") &
sampler_pid=$!
sleep 2
t=$(date +%s.%N)
big=$("$bin/loadgen" run "${big_urls[@]}" --requests "$n" --ids random "${customers[@]}" ${BIG_PAD:+--pad "$BIG_PAD"} --label big)
delivered "$big_up" "$n" >/dev/null
big_dl=$(python3 -c "print(round($n / ($(date +%s.%N) - $t)))")
wait "$small_pid" "$sampler_pid"
small_behind=$(cat "$work/small_behind.txt")
# Behind at a sample: what the offer had sent by then (RATE a second from its start) less what
# the upstream had; its worst, in events and in the offer's milliseconds.
worst=$(awk -v s="$small_start" -v r="$rate" -v n="$small_n" '{o = ($1 - s) * r; if (o > n) o = n; b = o - $2; if (b > w) w = b}
  END {printf "%d events (%d ms)", w, w * 1000 / r}' "$work/small_counts.txt")
[[ -z "${KV_STATS:-}" ]] || pg_psql -d neighbour -c "SELECT calls, rows, round(total_exec_time::numeric) AS ms,
    left(regexp_replace(query, '\s+', ' ', 'g'), 80) AS statement FROM pg_stat_statements
    WHERE query ILIKE '%plugin_kv%' ORDER BY total_exec_time DESC LIMIT 4"
sleep 1
cpu=$(us_per_event "$t0" "$(ticks)" $((n + small_n))); db=$(us_per_event "$d0" "$(db_ticks)" $((n + small_n)))
small=$(cat "$work/small.txt")
echo "kv $fill keys${CUSTOMERS:+, $CUSTOMERS customers}: small p99 $(cut -d'|' -f8 <<<"$small" | xargs) ms, at most $worst behind its offer, all delivered ${small_behind} ms after it;" \
  "big $(cut -d'|' -f5 <<<"$big" | xargs) acks/s, delivered ${big_dl}/s; gateway $cpu µs/event, database $db µs/event"
