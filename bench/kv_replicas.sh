#!/usr/bin/env bash
# Two replicas on one PostgreSQL database, both running the ledger example on every queue-mode
# event (loadgen's events all pay one customer, so every run reads and writes one kv key: the
# most two replicas can contend for a key). Per build and round, on a new database: a burst of
# REQUESTS events spread over both replicas (64 connections), then, once all are delivered,
# what it cost and what the store holds:
#   - CPU µs/event of both gateways together and of the database, acks/s, ack p99, delivered/s;
#   - the ledger's stored total against the events acknowledged (each adds 2500): "lost" is
#     how many events the total misses;
#   - plugin runs per event, from both gateways' payflow_edge_plugin_runs_total: a run made
#     again because another replica changed the key before its step committed counts twice
#     there, not in the store.
# Usage: bench/kv_replicas.sh [REQUESTS] [ROUNDS] BIN…   (defaults 20000 and 2; the builds
# alternate in order within a round, rotated each round). PLUGIN_WASM: the ledger component.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
n="${1:-20000}"; rounds="${2:-2}"; shift 2 || shift $#
build_release
bins=("$@"); [[ ${#bins[@]} -gt 0 ]] || bins=("$bin/payflow-edge")
[[ -n "${BENCH_NO_BUILD:-}" ]] || scripts/build-plugins.sh >&2
wasm="${PLUGIN_WASM:-$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/ledger.wasm}"
work="$bench_work"; hz=$(getconf CLK_TCK); token="bench-admin-token"
start_postgres
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"; wait_port "$bare"
echo "$(nproc) cores, $n events per run, 2 replicas, ledger on one key"
echo "| round | build | gateways µs/event | database µs/event | acks/s | p99 ms | delivered/s | lost | runs/event |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
  order=("${bins[@]:$(( (round - 1) % ${#bins[@]} ))}" "${bins[@]:0:$(( (round - 1) % ${#bins[@]} ))}")
  for b in "${order[@]}"; do
    db="kv_${round}_$(basename "$b" | tr -c 'a-z0-9\n' '_')"
    pg_psql -d postgres -qc "CREATE DATABASE $db"
    ports=(); admins=(); gws=(); urls=()
    for r in 1 2; do
      port=$(free_port); admin=$(free_port); ports+=("$port"); admins+=("$admin")
      QUEUE_EXTRA="plugins = [\"ledger\"]
[[plugin]]
name = \"ledger\"
path = \"$wasm\"" SERVER_EXTRA="replica = \"r$r\"" \
        edge_config "$port" "url = \"postgres://payflow@127.0.0.1:$pg_port/$db\"" "$bare" > "$work/r$r.toml"
      printf '[admin]\nlisten = "127.0.0.1:%s"\ntoken = "%s"\n' "$admin" "$token" >> "$work/r$r.toml"
      start_edge "$b" "$work/r$r.toml"; gws+=("$edge_pid")
      wait_port "$port"   # one at a time: the first migrates while the other would wait
      urls+=(--url "http://127.0.0.1:$port/queue")
    done
    ticks() { local t=0 p; for p in "${gws[@]}"; do t=$(( t + $(proc_ticks "$p") )); done; echo "$t"; }
    before=$(delivered "$bare")
    t0=$(ticks); d0=$(db_ticks); started=$(date +%s.%N)
    line=$("$bin/loadgen" run "${urls[@]}" --concurrency 64 --requests "$n" --label queue)
    delivered "$bare" $(( before + n )) >/dev/null
    rate=$(python3 -c "import time; print(round($n / (time.time() - $started)))")
    sleep 1 # the last commits
    t1=$(ticks); d1=$(db_ticks)
    total=$(pg_psql -d "$db" -tAc "SELECT split_part(convert_from(value, 'UTF8'), E'\n', 1) FROM plugin_kv WHERE plugin = 'ledger'")
    runs=0
    for admin in "${admins[@]}"; do
      runs=$(( runs + $(plugin_runs "$admin" "$token" | cut -d' ' -f1) ))
    done
    for p in "${gws[@]}"; do kill "$p"; done
    echo "| $round | $(basename "$b") | $(us_per_event "$t0" "$t1" "$n") | $(us_per_event "$d0" "$d1" "$n") |" \
      "$(cut -d'|' -f5 <<<"$line" | xargs) | $(cut -d'|' -f8 <<<"$line" | xargs) | $rate |" \
      "$(( n - ${total:-0} / 2500 )) | $(python3 -c "print(round($runs / $n, 3))") |"
  done
done
