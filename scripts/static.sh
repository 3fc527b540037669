#!/usr/bin/env bash
# Builds the static release binary (x86_64-unknown-linux-musl) that the README's Install section
# ships, and smoke-tests it: no dynamic loader or libraries, the demo with the embedded example
# plugins, and a served dashboard with the embedded signature checker.
#   scripts/static.sh            → $CARGO_TARGET_DIR/dist/payflow-edge (release, debug info
#                                  stripped: ~34 MB instead of ~150 MB; symbols stay for backtraces)
#   scripts/static.sh --profile static-ci   what CI builds and checks: the same code and embedded
#                                  assets; a rebuild after a change is incremental, where the
#                                  release profile's LTO optimises the whole program again (see Cargo.toml)
# Installs the musl target (rustup) and musl-gcc (Debian's musl-tools; SQLite, ring and mimalloc
# have C parts) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
target=x86_64-unknown-linux-musl

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v musl-gcc >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends musl-tools
fi

profile=release
if [ "${1:-}" = --profile ]; then profile=${2:?--profile needs a name}; fi
# The release profile without its line tables (bench/ profiles with them): a smaller binary.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --profile "$profile" --locked -p payflow-edge --target "$target"
mkdir -p "$CARGO_TARGET_DIR/dist"
bin="$CARGO_TARGET_DIR/dist/payflow-edge"
[ "$profile" = release ] || bin="$bin-$profile"
cp "$CARGO_TARGET_DIR/$target/$profile/payflow-edge" "$bin"
fail() { echo "static binary: $*" >&2; exit 1; }

# Static: no program interpreter (dynamic loader) and no shared libraries needed.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then fail "$bin asks for a dynamic loader"; fi
if readelf -d "$bin" | grep -q '(NEEDED)'; then fail "$bin needs shared libraries: $(readelf -d "$bin" | grep NEEDED)"; fi

# The demo: the whole flow with the embedded example plugins; it exits non-zero on any surprise.
demo=$("$bin" demo) || fail "the demo failed: $demo"
for expected in 'plugins   amount-threshold' 'amount-threshold: amount 500 is under min_amount 1000' \
                'X-Ledger-Total: 2500 PKR'; do
  grep -qF "$expected" <<<"$demo" || fail "the demo's output lacks \"$expected\" (are the plugins embedded?)"
done

# serve: the dashboard and its signature checker come from the binary itself.
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/payflow-edge.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[store]
path = "$dir/edge.db"
[admin]
listen = "127.0.0.1:0"
token = "static-smoke-token-0123456789"
[[endpoint]]
path = "/webhooks/payflow"
secrets = ["whsec_static_smoke"]
TOML
"$bin" serve --config "$dir/payflow-edge.toml" >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q 'admin listening on' "$dir/out" && break; sleep 0.1; done
admin=$(sed -n 's/^payflow-edge: admin listening on //p' "$dir/out")
ingress=$(sed -n 's/^payflow-edge: ingress listening on //p' "$dir/out")
[ -n "$admin" ] && [ -n "$ingress" ] || fail "serve did not start: $(cat "$dir/err")"
fetch() { # prints the body's size, fails unless 200
  node -e 'fetch(process.argv[1]).then(async (r) => { const b = await r.arrayBuffer();
    if (r.status !== 200) { console.error(r.status); process.exit(1); } console.log(b.byteLength); })' "$1"
}
for asset in / /assets/app.js /assets/payflow-verify/index.js /assets/payflow-verify/payflow_verify_web_bg.wasm; do
  size=$(fetch "$admin$asset") || fail "GET $asset did not answer 200"
  [ "$size" -gt 0 ] || fail "GET $asset is empty"
done
# And it takes a webhook, signed as PayFlow signs, with its own send command.
"$bin" send --url "$ingress/webhooks/payflow" --secret whsec_static_smoke >/dev/null \
  || fail "send to the static binary's own gateway failed"
echo "static binary: $bin ($(du -h "$bin" | cut -f1)) is static; demo, dashboard, checker and ingress answer"
