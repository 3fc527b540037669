#!/usr/bin/env bash
# Issue 16's two isolation figures, measured by the integration tests that assert them loosely,
# in release mode, for this build and (optionally) another, interleaved A/B:
#   flood:    signed webhooks from 127.0.0.1 during a 1,500-connection slow-header flood from
#             127.0.0.2 (host/tests/slow_clients_and_shutdown.rs)
#   fairness: another merchant's median webhook-to-upstream time, unloaded and while one
#             merchant's 160 events spin their plugin to its deadline (plugins_in_the_pipeline.rs)
# Usage: bench/isolation.sh [PAIRS] [OTHER_PAYFLOW_EDGE]   (default 3 pairs; without the other
# build, this build alone). The tests start the gateway from the path cargo built it at, so
# for the other build its binary is put there for the run and this build's put back after.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
pairs="${1:-3}"
other="${2:-}"
scripts/build-plugins.sh >&2
built=$(cargo test --release --locked -p payflow-edge --no-run \
  --test slow_clients_and_shutdown --test plugins_in_the_pipeline 2>&1 | tee /dev/stderr)
exe() { sed -n "s/.*Executable tests\/$1.rs (\(.*\))/\1/p" <<<"$built"; }
flood=$(exe slow_clients_and_shutdown)
fairness=$(exe plugins_in_the_pipeline)
gateway="$CARGO_TARGET_DIR/release/payflow-edge"
# The tests find their plugins from the manifest directory, as `cargo test` would tell them.
export CARGO_MANIFEST_DIR="$PWD/host"
cp "$gateway" "$gateway.this"
trap 'cp "$gateway.this" "$gateway"' EXIT

measure() { # LABEL: one run of each measurement with the gateway now in place
  # A build that misses a test's goal fails the test after printing its figure: keep going.
  local label=$1
  { "$flood" --exact a_slow_header_flood_from_one_address_does_not_hold_up_other_senders --nocapture 2>&1 || true; } |
    sed -n "s/^flood: /$label flood: /p"
  { "$fairness" --exact a_merchant_saturating_its_plugins_leaves_anothers_latency_within_three_times \
    --nocapture 2>&1 || true; } | sed -n "s/^fairness: /$label fairness: /p"
}

for pair in $(seq "$pairs"); do
  if [[ -n $other ]]; then
    cp "$other" "$gateway"
    measure "pair $pair, other build:"
  fi
  cp "$gateway.this" "$gateway"
  measure "pair $pair, this build:"
done
