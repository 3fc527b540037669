#!/usr/bin/env bash
# Issue 22: does a dry run (`plugin try`) delay live events? Live events go through a plugin
# (the JavaScript example, warm instances) and are delivered to a bare upstream; in alternate
# rounds a loop of dry runs (the same component, on the latest 1000 events: 2,000 JS runs, in
# warm instances as the plugin's live runs are, from builds after 2026-12-02; fresh ones
# before) runs beside them. Per round: the live events'
# ack rate and p99, how fast all of them were delivered (counted from the first request), the
# gateway's CPU per live event, and how many dry runs finished meanwhile.
# Usage: bench/dry_run.sh [REQUESTS] [PAIRS]   (defaults 5000 and 3; 64 connections)
# EDGE_BIN=/path/to/payflow-edge measures that build (BENCH_NO_BUILD=1: nothing rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
  cargo build --release --locked -p payflow-edge -p payflow-bench >&2
  scripts/build-plugins.sh >&2
fi
bin="$CARGO_TARGET_DIR/release"
wasm="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release"
n="${1:-5000}"; pairs="${2:-3}"
secret="whsec_bench_secret"; token="bench-admin-token-0123456789"
source bench/lib.sh
work="$bench_work"
hz=$(getconf CLK_TCK)
bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
edge=$(free_port); admin=$(free_port)
cat > "$work/edge.toml" <<TOML
[server]
listen = "127.0.0.1:$edge"
[store]
path = "$work/dry.db"
[admin]
listen = "127.0.0.1:$admin"
token = "$token"
[[endpoint]]
path = "/live"
secrets = ["$secret"]
upstream = "bare"
plugins = ["enrich"]
[[upstream]]
name = "bare"
url = "http://127.0.0.1:$bare/"
concurrency = 32
[[plugin]]
name = "enrich"
path = "$wasm/js_enrich.wasm"
warm = true
memory_mb = 64
TOML
PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$bin/payflow-edge}" serve --config "$work/edge.toml"
pid=${bench_pids[-1]}
wait_port "$edge" 1200; wait_port "$admin" # the first start compiles the JS component
# History for the dry runs to read.
"$bin/loadgen" run --url "http://127.0.0.1:$edge/live" --concurrency 64 --requests 1000 --secret "$secret" --label history >/dev/null
delivered "$bare" 1000 >/dev/null

tries="$work/tries"
# One dry run before the rounds: the gateway compiles the candidate once (seconds of CPU for a
# JavaScript component) and keeps it, so the rounds measure dry runs, not that compile.
curl -sf -o /dev/null -X POST --data-binary "@$wasm/js_enrich.wasm" -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$admin/api/plugins/enrich/try?last=10"
dry_loop() {
  while :; do
    # The API directly: the CLI would also compile the component to check it, on this machine.
    curl -sf -o /dev/null -X POST --data-binary "@$wasm/js_enrich.wasm" -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$admin/api/plugins/enrich/try?last=1000" && echo >> "$tries"
  done
}

echo "$n live events per round, 64 connections, $(nproc) cores; the plugin: js_enrich (warm)"
echo
echo "| round | dry runs beside | acks/s | ack p99 ms | delivered/s | CPU µs per live event | dry runs finished |"
echo "|---|---|---|---|---|---|---|"
round() { # round LABEL WITH_DRY
  : > "$tries"
  local loop=""
  if [[ $2 == yes ]]; then dry_loop & loop=$!; sleep 2; fi
  local posted t0 started line rate p99 drate t1
  posted=$(delivered "$bare"); t0=$(awk '{print $14+$15}' "/proc/$pid/stat"); started=$(date +%s.%N)
  line=$("$bin/loadgen" run --url "http://127.0.0.1:$edge/live" --concurrency 64 --requests "$n" --secret "$secret" --label "$1")
  delivered "$bare" $((posted + n)) >/dev/null
  drate=$(python3 -c "import time; print(round($n / (time.time() - $started)))")
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  if [[ -n $loop ]]; then kill "$loop" 2>/dev/null; wait "$loop" 2>/dev/null || true; pkill -f "plugins/enrich/try" || true; fi
  rate=$(cut -d'|' -f5 <<<"$line" | xargs); p99=$(cut -d'|' -f8 <<<"$line" | xargs)
  echo "| $1 | $2 | $rate | $p99 | $drate | $(python3 -c "print(round(($t1 - $t0) * 1e6 / $hz / $n, 1))") | $(wc -l < "$tries") |"
  sleep 1
}
for p in $(seq 1 "$pairs"); do
  if (( p % 2 )); then round "$p a" no; round "$p b" yes; else round "$p a" yes; round "$p b" no; fi
done
