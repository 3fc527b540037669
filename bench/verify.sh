#!/usr/bin/env bash
# Benchmarks payflow-verify against bare HMAC-SHA256 in one run and prints the ratios.
# Usage: bench/verify.sh   (results go to stdout as a Markdown table; see bench/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
cargo bench -p payflow-verify --bench verify --locked -- --noplot >&2
python3 - "$CARGO_TARGET_DIR/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]
def ns(group, fn, stat="median"):
    with open(os.path.join(root, group, fn, "new", "estimates.json")) as f:
        return json.load(f)[stat]["point_estimate"]
print("| body | bare HMAC | bare HMAC, pre-keyed | verify (payflow v1) | verify / bare | verify / pre-keyed |")
print("|---|---|---|---|---|---|")
for label, size in [("1KiB", 1024), ("64KiB", 65536), ("1MiB", 1048576)]:
    g = f"verify_{label}"
    bare, pre, ver = ns(g, "bare_hmac"), ns(g, "bare_hmac_prekeyed"), ns(g, "verify")
    fmt = lambda t: f"{t/1000:.2f} µs ({size / t * 1e9 / 2**20:.0f} MiB/s)"
    print(f"| {label} | {fmt(bare)} | {fmt(pre)} | {fmt(ver)} | {ver/bare:.3f} | {ver/pre:.3f} |")
PY
