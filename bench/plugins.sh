#!/usr/bin/env bash
# Plugin benchmarks (issue 4), each side by side in one run:
#   1. per-event overhead (instantiate + call) of the Rust, JavaScript and Python examples,
#      fresh instance per event and warm instance reused, interleaved;
#   2. queue-mode throughput with one Rust plugin (amount-threshold) in the path and without,
#      end to end (acknowledged, run, delivered to a bare upstream), alternating rounds;
#   3. the gateway's RSS with ten plugins loaded: ten Rust ones, and a mix with the JS and
#      Python examples; at start and after events went through them.
# Usage: bench/plugins.sh [RUST_RUNS] [REQUESTS]   (defaults 20000 and 20000)
#        PLUGIN_BENCH=2 bench/plugins.sh ...       (only part 2; any of 1, 2, 3, e.g. "13")
# A/B: EDGE_BIN=/path/to/other/payflow-edge measures that gateway build instead; with
# BENCH_NO_BUILD=1 nothing is rebuilt between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
runs="${1:-20000}"
requests="${2:-20000}"
secret="whsec_bench_secret"
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
  cargo build --release --locked -p payflow-edge -p payflow-bench >&2
  scripts/build-plugins.sh >&2
fi
bin="$CARGO_TARGET_DIR/release"
wasm="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release"
source bench/lib.sh
work="$bench_work"

echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
parts="${PLUGIN_BENCH:-123}"
if [[ $parts == *1* ]]; then
echo "### 1. Per-event overhead"
echo
first=1
for plugin in "noop $runs" "amount_threshold $runs" "js_enrich $((runs / 40))" "notifier $((runs / 100))"; do
  set -- $plugin
  "$bin/plugin-overhead" "$wasm/$1.wasm" "$2" | { if [ $first = 1 ]; then cat; else tail -n +3; fi; }
  first=0
done

fi
if [[ $parts == *2* ]]; then
echo
echo "### 2. Queue mode, end to end, with and without a Rust plugin"
echo
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port)
cat > "$work/edge.toml" <<TOML
[server]
listen = "127.0.0.1:$edge"
[store]
path = "$work/throughput.db"
[[endpoint]]
path = "/plain"
secrets = ["$secret"]
upstream = "bare"
[[endpoint]]
path = "/plugin"
secrets = ["$secret"]
upstream = "bare"
plugins = ["amount-threshold"]
[[upstream]]
name = "bare"
url = "http://127.0.0.1:$bare/"
concurrency = 32
[[plugin]]
name = "amount-threshold"
path = "$wasm/amount_threshold.wasm"
config = { min_amount = "1000" }
TOML
PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$bin/payflow-edge}" serve --config "$work/edge.toml"
wait_port "$bare"; wait_port "$edge"
echo "| round | path | requests | ack req/s | ack p99 ms | delivered/s (first request → last delivery) |"
echo "|---|---|---|---|---|---|"
declare -A total
for round in 1 2 3; do
  for path in plain plugin; do
    before=$(delivered "$bare"); t0=$(date +%s.%N)
    line=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/$path" --concurrency 64 --requests "$requests" \
      --secret "$secret" --sign payflow --label "$path")
    delivered "$bare" $((before + requests)) >/dev/null
    rate=$(python3 -c "print(f'{$requests / ($(date +%s.%N) - $t0):.0f}')")
    total[$path]=$(( ${total[$path]:-0} + rate ))
    ack=$(cut -d'|' -f5 <<<"$line" | xargs); p99=$(cut -d'|' -f8 <<<"$line" | xargs)
    echo "| $round | /$path | $requests | $ack | $p99 | $rate |"
  done
done
echo
python3 -c "print(f'end-to-end throughput with the plugin: {${total[plugin]} / ${total[plain]}:.0%} of without it (sum of the rounds)')"
kill "${bench_pids[@]}" 2>/dev/null || true; bench_pids=()
fi
if [[ $parts == *3* ]]; then

echo
echo "### 3. RSS with ten plugins loaded"
echo
rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
measure() { # measure LABEL FILE... : ten [[plugin]]s from these files (cycled), one endpoint each
  local label=$1; shift
  local files=("$@") port conf="$work/rss.toml" db="$work/rss-$RANDOM.db"
  port=$(free_port)
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\npath = "%s"\n' "$port" "$db" > "$conf"
  for i in $(seq 0 9); do
    local file=${files[$((i % ${#files[@]}))]}
    printf '[[plugin]]\nname = "p%s"\npath = "%s"\nwarm = %s\n' "$i" "$wasm/$file.wasm" \
      "$([[ $file == js_enrich || $file == notifier ]] && echo true || echo false)" >> "$conf"
    printf '[[endpoint]]\npath = "/p%s"\nsecrets = ["%s"]\nplugins = ["p%s"]\n' "$i" "$secret" "$i" >> "$conf"
  done
  PAYFLOW_EDGE_LOG=warn "$bin/payflow-edge" serve --config "$conf" >/dev/null &
  local pid=$!
  wait_port "$port" 1200 # JS and Python components take seconds each to compile
  local at_start; at_start=$(rss $pid)
  for i in $(seq 0 9); do
    "$bin/loadgen" run --url "http://127.0.0.1:$port/p$i" --concurrency 8 --requests 200 --secret "$secret" \
      --sign payflow --label x >/dev/null
  done
  sleep 2 # the plugin steps run from the queue
  echo "| $label | $at_start | $(rss $pid) |"
  kill $pid; wait $pid 2>/dev/null || true
}
echo "| ten plugins | RSS at start, MB | RSS after 200 events through each, MB |"
echo "|---|---|---|"
measure "Rust: the 3 examples and log-flood, cycled" amount_threshold ledger legacy_form log_flood
measure "mix: Rust ×6, JS ×3 (warm), Python ×1 (warm)" amount_threshold js_enrich ledger js_enrich legacy_form js_enrich notifier amount_threshold ledger legacy_form
fi
