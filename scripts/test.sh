#!/usr/bin/env bash
# Runs every test of payflow-edge. This is the README's test command and what CI runs.
# It installs what it needs first (scripts/setup.sh), so a fresh machine with rustup suffices.
set -euo pipefail
cd "$(dirname "$0")/.."
# A build cache outside the clone, so fresh CI clones on one machine reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
export CARGO_TERM_COLOR=never

# Each step is stamped with the minutes since the start, so a slow fresh machine shows where
# its time went (CI's limit is 90 minutes; we aim under 45).
step() { printf '\n=== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step setup
scripts/setup.sh

step "web package: build (wasm-bindgen, wasm-opt); the gateway embeds it for the dashboard"
web/build.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Module docs are where the code says what a part is for: their links must resolve.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q

step "payflow-verify is no_std + alloc (wasm32v1-none has no std at all) and builds for wasm"
cargo build -p payflow-verify --locked --target wasm32v1-none
cargo build -p payflow-verify --locked --target wasm32v1-none --no-default-features
cargo build -p payflow-verify --locked --target wasm32-unknown-unknown --release

step "plugins: Rust, JavaScript and Python examples and the hostile fixtures, from source"
scripts/build-plugins.sh

step "tests"
cargo test --workspace --locked
# The verifier's own tests as the web package builds it: without json-compat and details.
cargo test -p payflow-verify --locked --no-default-features --lib

step "the static binary (musl): built, then its demo, dashboard and checker smoke-tested"
# The static-ci profile: the release binary's code and assets, rebuilt incrementally (a release
# build's LTO takes ~6 min after any change; see Cargo.toml).
scripts/static.sh --profile static-ci

step "dashboard: headless Chromium against a running gateway (screenshots in tests/dashboard/artifacts)"
PAYFLOW_EDGE_REQUIRE_CHECKER=1 node --test --test-concurrency=1 tests/dashboard/*.test.mjs

step "web package: Node and headless Chromium tests"
(cd web && npm test)

step "fuzz targets, briefly (longer: scripts/fuzz.sh 600)"
scripts/fuzz.sh "${PAYFLOW_FUZZ_SECONDS:-20}"
step "all passed"
