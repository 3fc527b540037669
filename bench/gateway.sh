#!/usr/bin/env bash
# Side-by-side ingress benchmark, all in one run on this machine:
#   (a) bare hyper: read the body, answer 200 (the ceiling)
#   (b) the seed's Express example (express.json() + verifyWebhookSignature)
#   (c) payflow-edge, queue mode: verify, parse, durable (fsync'd) store, then 200;
#       deliveries to (a) run at the same time
#   (d) payflow-edge, proxy mode: verify, store, forward to (a), answer with its reply
#   (c0) payflow-edge, queue mode on an endpoint without upstream: ingress and the store alone
#   (e) the floor for (c) on this machine: answer 200, deliver to (a) in the background, with
#       no verification and no storage (loadgen forward)
# Usage: bench/gateway.sh [CONCURRENCY] [REQUESTS]   (defaults 64 and 40000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
conc="${1:-64}"
requests="${2:-40000}"
secret="whsec_bench_secret"
cargo build --release --locked -p payflow-edge -p payflow-bench >&2
bin="$CARGO_TARGET_DIR/release"
(cd bench/express && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error >&2)

source bench/lib.sh
work="$bench_work"

bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
fwd=$(free_port); start_bg "$bin/loadgen" forward --listen "127.0.0.1:$fwd" --upstream "http://127.0.0.1:$bare/"
express=$(free_port); start_bg node bench/express/server.js "$express" "$secret"
edge=$(free_port)
cat > "$work/edge.toml" <<TOML
[server]
listen = "127.0.0.1:$edge"
[store]
path = "$work/bench.db"
[[endpoint]]
path = "/queue"
secrets = ["$secret"]
upstream = "bare"
[[endpoint]]
path = "/stored"
secrets = ["$secret"]
[[endpoint]]
path = "/proxy"
secrets = ["$secret"]
mode = "proxy"
upstream = "bare"
[[upstream]]
name = "bare"
url = "http://127.0.0.1:$bare/"
concurrency = 32
TOML
PAYFLOW_EDGE_LOG=warn start_bg "$bin/payflow-edge" serve --config "$work/edge.toml"
wait_port "$bare"; wait_port "$fwd"; wait_port "$express"; wait_port "$edge"

echo "concurrency $conc, $requests requests per target, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
echo "| target | requests | non-2xx | req/s | p50 ms | p90 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|---|"
run() { "$bin/loadgen" run --url "$1" --concurrency "$conc" --requests "$requests" --secret "$secret" --sign "$2" --label "$3"; }
run "http://127.0.0.1:$bare/" payflow "(a) bare hyper"
run "http://127.0.0.1:$express/webhooks/payflow" seed "(b) seed Express"
before=$(delivered "$bare"); t0=$(date +%s.%N)
run "http://127.0.0.1:$edge/queue" payflow "(c) payflow-edge queue"
# Acknowledged is not delivered: wait for (c)'s deliveries to reach (a), and say how long.
delivered "$bare" $((before + requests)) >/dev/null
drain="(c) delivered all $requests to (a) $(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')") s after its first request"
run "http://127.0.0.1:$edge/proxy" payflow "(d) payflow-edge proxy"
run "http://127.0.0.1:$edge/stored" payflow "(c0) queue, no upstream"
run "http://127.0.0.1:$fwd/" payflow "(e) floor: ack, then forward"
echo
echo "$drain"
