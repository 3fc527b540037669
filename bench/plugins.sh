#!/usr/bin/env bash
# Per-event plugin overhead in the gateway's sandbox (issue 4): the Rust example plugin, a fresh
# instance per event and a warm instance reused, interleaved in one run.
# Usage: bench/plugins.sh [RUNS]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
cargo build --release --locked -p payflow-bench --bin plugin-overhead >&2
(cd plugins/amount-threshold && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/guests" cargo build --release --target wasm32-wasip2 >&2)
"$CARGO_TARGET_DIR/release/plugin-overhead" "$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/amount_threshold.wasm" "${1:-20000}"
