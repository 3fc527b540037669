#!/usr/bin/env bash
# Sustained load at fixed offered rates (issue 21): does delivery keep pace with the
# acknowledgements? For each rate, 8 s of signed events to a queue endpoint delivering to a bare
# upstream: the loadgen line (latency counted from each request's due time), how many were
# delivered when the offer ended, and how long the rest took. Usage: bench/fixed_rate.sh
# [RATE…] (default 3000 6000 9000); EDGE_BIN=… measures another build.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
work="$bench_work"
L="$bin/loadgen"
bare=$(free_port); edge=$(free_port)
edge_config "$edge" "path = \"$work/b.db\"" "$bare" > "$work/e.toml"
start_bg "$L" bare --listen "127.0.0.1:$bare"
PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$CARGO_TARGET_DIR/release/payflow-edge}" serve --config "$work/e.toml"
wait_port "$edge"; wait_port "$bare"
rates=("$@"); [[ ${#rates[@]} -gt 0 ]] || rates=(3000 6000 9000)
for rate in "${rates[@]}"; do
  n=$((rate * 8))
  before=$($L count --url http://127.0.0.1:$bare/)
  t0=$(date +%s.%N)
  line=$($L run --url http://127.0.0.1:$edge/queue --concurrency 64 --requests $n --rate $rate --label "rate $rate" 2>"$work/late.txt")
  t1=$(date +%s.%N)
  at_end=$(( $($L count --url http://127.0.0.1:$bare/) - before ))
  $L count --url http://127.0.0.1:$bare/ --at-least $((before + n)) >/dev/null
  t2=$(date +%s.%N)
  python3 -c "
n=$n; t0=$t0; t1=$t1; t2=$t2; at_end=$at_end
print('$line'.strip(), '| backlog at the end of the offer:', n-at_end, '| delivered by then: %.0f%%' % (100*at_end/n), '| drained %.1f s later' % (t2-t1), '| delivery rate over the run %.0f/s' % (n/(t2-t0)))"
  cat "$work/late.txt"
done
