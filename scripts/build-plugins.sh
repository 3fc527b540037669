#!/usr/bin/env bash
# Builds every example and hostile plugin from source into $CARGO_TARGET_DIR/guests/wasm32-wasip2/release:
#   Rust (plugins/, tests/fixtures/plugins/) with cargo for wasm32-wasip2,
#   JavaScript (plugins/js-enrich) with componentize-js (npm, pinned in its package-lock.json),
#   Python (plugins/notifier) with componentize-py (pip, pinned below, in a venv in the build dir).
# The JS and Python builds take ~10-20 s each and are redone only when their sources change.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target="${CARGO_TARGET_DIR:-$repo/target}/guests"
out="$target/wasm32-wasip2/release"
COMPONENTIZE_PY=0.25.1

for project in plugins tests/fixtures/plugins; do
  (cd "$project" && CARGO_TARGET_DIR="$target" env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS cargo build --quiet --locked --release --target wasm32-wasip2)
done

# newer OUT SOURCES...: true when OUT is missing or older than any source.
stale() {
  local out=$1; shift
  [[ ! -f $out ]] && return 0
  for source in "$@"; do [[ $source -nt $out ]] && return 0; done
  return 1
}

# Installed even when the component is up to date: the guide's test builds a copy of this
# template against these packages (a work tree restored without its ignored files once had
# the component built but no node_modules, and that test failed).
(cd plugins/js-enrich
 [[ -d node_modules/@bytecodealliance/componentize-js ]] || npm ci --no-audit --no-fund --loglevel=error)
if stale "$out/js_enrich.wasm" plugins/js-enrich/*.js plugins/js-enrich/*.mjs plugins/js-enrich/package-lock.json wit/plugin.wit; then
  (cd plugins/js-enrich
   node build.mjs "$out/js_enrich.wasm.tmp")
  mv "$out/js_enrich.wasm.tmp" "$out/js_enrich.wasm"
fi

if stale "$out/notifier.wasm" plugins/notifier/*.py wit/plugin.wit; then
  venv="$target/pyenv"
  if [[ ! -x $venv/bin/componentize-py ]] || [[ $("$venv/bin/componentize-py" --version) != "componentize-py $COMPONENTIZE_PY" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
  fi
  "$venv/bin/componentize-py" -d wit -w plugin componentize app -p plugins/notifier -o "$out/notifier.wasm.tmp" >/dev/null
  mv "$out/notifier.wasm.tmp" "$out/notifier.wasm"
  echo "notifier: $out/notifier.wasm ($(( $(stat -c %s "$out/notifier.wasm") / 1000000 )) MB)" >&2
fi
