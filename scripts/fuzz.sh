#!/usr/bin/env bash
# Runs each cargo-fuzz target of payflow-verify for SECONDS (default 20).
# Usage: scripts/fuzz.sh [SECONDS]   e.g. scripts/fuzz.sh 600 for a longer hunt by hand.
# cargo-fuzz needs nightly-only sanitizer flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain,
# the only one on these machines, accept them.
set -euo pipefail
cd "$(dirname "$0")/../verify/fuzz"
seconds="${1:-20}"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}/fuzz"
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run "$target" --target-dir "$target_dir" -- \
      -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed: the input is in verify/fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$log" || true
done
rm -f "$log"
