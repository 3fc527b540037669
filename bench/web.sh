#!/usr/bin/env bash
# The web package, measured (issue 5): the .wasm's size, and verify() of a 1 KiB payflow v1
# webhook in ops/s next to the platform's own HMAC in the same run — node:crypto in Node,
# WebCrypto (crypto.subtle, key imported once) in headless Chromium.
# Usage: bench/web.sh
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh >&2
wasm=web/pkg/payflow_verify_web_bg.wasm
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%F)"
echo
echo "| .wasm | raw bytes | gzip -9 bytes |"
echo "|---|---|---|"
echo "| payflow_verify_web_bg.wasm | $(wc -c < $wasm) | $(gzip -9 -c $wasm | wc -c) |"
echo
echo "| runtime | payflow-verify (wasm) ops/s | platform HMAC ops/s | wasm / platform |"
echo "|---|---|---|---|"
for runner in node.mjs browser.mjs; do
  node "web/bench/$runner" | node -e '
    const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const [ours, theirs] = Object.entries(r).filter(([k]) => k !== "runtime");
    console.log(`| ${r.runtime} | ${Math.round(ours[1])} | ${theirs[0]}: ${Math.round(theirs[1])} | ${(ours[1] / theirs[1]).toFixed(2)} |`);'
done
