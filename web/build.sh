#!/usr/bin/env bash
# Builds the npm package into web/pkg (not committed):
#   payflow-verify-web for wasm32-unknown-unknown (cargo profile `web`: size first)
#   → wasm-bindgen --target web (the CLI at exactly the crate's version)
#   → wasm-opt -Oz (npm's binaryen; Debian's wasm-opt 108 corrupts wasm-bindgen's output)
#   → the package: the JS API, its TypeScript types and README from web/js.
# Installs the wasm target, the wasm-bindgen CLI and the npm tooling when missing.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"

version=$(sed -n 's/^wasm-bindgen = .*version = "=\([^"]*\)".*$/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "web/Cargo.toml must pin wasm-bindgen exactly (=x.y.z)" >&2; exit 1; }
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$version" ]; then
  # Not --locked: the CLI's own lockfile can name versions the registry mirror lacks.
  cargo install wasm-bindgen-cli --version "$version"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

rm -rf pkg
# Two modules from one crate: the HMAC schemes (loaded with the package), and the same with
# Ed25519 (loaded by loadEd25519() only when a page verifies whpk_ keys). One build overwrites
# the other's .wasm, so each is bound right after it is built.
for features in "" ed25519; do
  name=payflow_verify_web${features:+_$features}
  cargo build -p payflow-verify-web --locked --target wasm32-unknown-unknown --profile web \
    ${features:+--features "$features"}
  wasm-bindgen --target web --no-typescript --out-dir pkg --out-name "$name" \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/web/payflow_verify_web.wasm"
  # The features rustc enables by default for wasm32 (all in Node 18+ and current browsers).
  # --converge repeats -Oz while it still shrinks the module (~70 bytes, ~300 gzipped); the
  # target_features section only tells linkers what the module uses, and nothing links it again.
  node_modules/.bin/wasm-opt -Oz --converge --strip-debug --strip-producers --strip-target-features \
    --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
    "pkg/${name}_bg.wasm" -o "pkg/${name}_bg.wasm"
done
cp js/index.js js/index.d.ts js/package.json js/README.md pkg/

raw=$(wc -c < pkg/payflow_verify_web_bg.wasm)
gz=$(gzip -9 -c pkg/payflow_verify_web_bg.wasm | wc -c)
echo "web/pkg: payflow_verify_web_bg.wasm is $raw bytes, $gz gzipped"
raw=$(wc -c < pkg/payflow_verify_web_ed25519_bg.wasm)
gz=$(gzip -9 -c pkg/payflow_verify_web_ed25519_bg.wasm | wc -c)
echo "web/pkg: payflow_verify_web_ed25519_bg.wasm (loaded on demand) is $raw bytes, $gz gzipped"
