#!/usr/bin/env bash
# Sustained load at fixed offered rates (issue 21): does delivery keep pace with the
# acknowledgements? For each rate, 8 s of signed events to a queue endpoint delivering to a bare
# upstream: the loadgen line (latency counted from each request's due time), how many were
# delivered when the offer ended, how long the rest took, the gateway's CPU per event (user+
# system, offer and drain), the size of the SQLite WAL file then, and how many deliveries the
# upstream accepted twice (the store records every attempt; none may). Before each rate, the
# same offer goes to the bare upstream itself: a bare hyper request's CPU at that rate, the
# side-by-side base (a sleeping server pays a wake-up per request, so every server costs more
# per request at a steady rate than in a burst). Usage: bench/fixed_rate.sh [RATE…] (default
# 3000 6000 9000); EDGE_BIN=… measures another build, SECONDS_PER_RATE=… (8), STORE_URL=
# postgres://… the gateway on that database (and the database server's CPU per event, as the
# postgres user's processes; no WAL size then), PG=1 the same on a throw-away PostgreSQL
# (start_postgres), STORE_EXTRA=… TOML lines for [store], PLUGIN=1 the events through the
# amount-threshold example plugin (as in aged.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
work="$bench_work"
L="$bin/loadgen"
bare=$(free_port); edge=$(free_port)
[[ -z "${PLUGIN:-}" ]] || through_the_example_plugin
if [[ -n "${PG:-}" ]]; then one_store fixed; STORE_URL="postgres://payflow@127.0.0.1:$pg_port/fixed"; fi
if [[ -n "${STORE_URL:-}" ]]; then store="url = \"$STORE_URL\""; else store="path = \"$work/b.db\""; fi
edge_config "$edge" "$store" "$bare" > "$work/e.toml"
start_bg "$L" bare --listen "127.0.0.1:$bare"
bare_pid=${bench_pids[-1]}
PAYFLOW_EDGE_LOG=warn start_bg "${EDGE_BIN:-$CARGO_TARGET_DIR/release/payflow-edge}" serve --config "$work/e.toml"
pid=${bench_pids[-1]}
ticks() { awk '{print $14+$15}' "/proc/${1:-$pid}/stat"; }
wait_port "$edge"; wait_port "$bare"
rates=("$@"); [[ ${#rates[@]} -gt 0 ]] || rates=(3000 6000 9000)
for rate in "${rates[@]}"; do
  n=$((rate * ${SECONDS_PER_RATE:-8}))
  b0=$(ticks "$bare_pid")
  $L run --url http://127.0.0.1:$bare/ --concurrency 64 --requests $n --rate $rate --label bare >/dev/null 2>&1
  sleep 0.5; b1=$(ticks "$bare_pid")
  before=$($L count --url http://127.0.0.1:$bare/); c0=$(ticks); d0=$(db_ticks)
  t0=$(date +%s.%N)
  line=$($L run --url http://127.0.0.1:$edge/queue --concurrency 64 --requests $n --rate $rate --label "rate $rate" 2>"$work/late.txt")
  t1=$(date +%s.%N)
  at_end=$(( $($L count --url http://127.0.0.1:$bare/) - before ))
  $L count --url http://127.0.0.1:$bare/ --at-least $((before + n)) >/dev/null
  t2=$(date +%s.%N); c1=$(ticks); d1=$(db_ticks)
  # Deliveries the upstream answered 2xx more than once, so far (the store records every attempt).
  twice="SELECT count(*) FROM (SELECT 1 FROM attempts GROUP BY merchant, scope, event_id, upstream
         HAVING sum(CASE WHEN status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END) > 1) t"
  if [[ -n "${STORE_URL:-}" ]]; then
    db="| database CPU $(( (d1 - d0) * 1000000 / $(getconf CLK_TCK) / n )) µs/event"
    again=$(psql "$STORE_URL" -tAc "$twice")
  else
    db="| WAL $(( $(stat -c %s "$work/b.db-wal") >> 20 )) MB"
    again=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])" "$work/b.db" "$twice")
  fi
  db="$db | delivered twice so far: $again"
  python3 -c "
n=$n; t0=$t0; t1=$t1; t2=$t2; at_end=$at_end
print('$line'.strip(), '| backlog at the end of the offer:', n-at_end, '| delivered by then: %.0f%%' % (100*at_end/n), '| drained %.1f s later' % (t2-t1), '| delivery rate over the run %.0f/s' % (n/(t2-t0)), '| gateway CPU %.0f µs/event' % (($c1-$c0)*1e6/$(getconf CLK_TCK)/n), '| bare hyper %.1f µs/request' % (($b1-$b0)*1e6/$(getconf CLK_TCK)/n), '(gateway × %.1f)' % (($c1-$c0)/max($b1-$b0, 1)), '$db')"
  cat "$work/late.txt"
done
if [[ -n "${STORE_URL:-}" ]]; then # the next run starts on an empty database, as SQLite's does
  kill "$pid"; wait "$pid" 2>/dev/null || true
  psql "$STORE_URL" -qc "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null 2>&1
fi
