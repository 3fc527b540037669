#!/usr/bin/env bash
# Installs what the build and the tests need, on a fresh machine that has only rustup.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true
installed=$(rustup target list --installed)
for target in wasm32-unknown-unknown wasm32-wasip2 wasm32v1-none; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

# Node and Python run the third-party signature libraries that make our test vectors.
need_apt=()
# npm and pip fetch over HTTPS: the CA certificates are only recommended by their packages.
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The Python plugin is built with componentize-py from pip, in a venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
# Headless Chromium for the web package's browser tests: Debian's, never a downloaded one.
# (A font of its own: a recommendation only, and without one pages render no text.)
[ -x /usr/bin/chromium ] || need_apt+=(chromium fonts-liberation)
# PostgreSQL for the replicated store's tests (a throwaway server per test run, on loopback).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# systemd-analyze checks the systemd unit in docs/deploy (nothing is started with it).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# Without the packages' recommendations: about 90 of the 133 packages a fresh machine
# installed came only from them (mostly Chromium's: printing, Samba, Avahi, desktop Perl
# modules), each downloaded and set up for nothing. None is a library Chromium links (ldd).
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# npm packages: the third-party signature SDKs that make test vectors.
for dir in verify/tests/vectors; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] \
     || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

# The plugins' guest toolchains (componentize-js from npm, componentize-py from pip) are
# installed by scripts/build-plugins.sh, which the tests run.
# The web package's build tools (wasm-bindgen CLI at the crate's version, npm binaryen and
# playwright-core) are installed by web/build.sh, which the tests run.

# cargo-fuzz drives libFuzzer; on stable it runs with RUSTC_BOOTSTRAP=1 (see scripts/fuzz.sh).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
