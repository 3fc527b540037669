#!/usr/bin/env bash
# Where PostgreSQL's time goes per queue-mode event (issue 21): a throw-away PostgreSQL server
# with pg_stat_statements loaded (planning tracked too), a gateway on it delivering to a bare
# upstream, 3,000 events to warm up, the statistics reset, then one burst at 64 connections
# and every delivery. Prints each statement's calls, rows, and execution and planning time per
# event of the burst, costliest first. PLANS=1 also loads auto_explain and counts, per
# statement, the plans over 1 ms that scanned a whole table ("Seq Scan"): a statement meant to
# look a batch's keys up by index should have none. The times are PostgreSQL's own (wall clock
# inside each statement), so on a machine whose cores the load generator and the gateways
# share they include time spent waiting for a core: compare statements within one run.
# Usage: bench/pg_statements.sh [REQUESTS]   (default 20000); EDGE_BIN=… measures another build;
# REPLICAS=N runs N gateways on the database, the load spread over them; RATE=R offers the
# events at R a second instead of as one burst (a steady load's statements, batched less).
# PLUGIN=1 (and PLUGIN_WASM) puts the example plugin in front of the deliveries, as aged.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
[[ -z "${PLUGIN:-}" ]] || through_the_example_plugin
edge_bin="${EDGE_BIN:-$bin/payflow-edge}"
n="${1:-20000}"
libs=pg_stat_statements; [[ -z "${PLANS:-}" ]] || libs=pg_stat_statements,auto_explain
start_postgres -c shared_preload_libraries=$libs -c pg_stat_statements.track_planning=on \
  -c auto_explain.log_min_duration=1 -c auto_explain.log_nested_statements=on
pg_psql -d postgres -qc "CREATE DATABASE statements"
pg_psql -d statements -qc "CREATE EXTENSION pg_stat_statements"

bare=$(free_port); start_bg "$bin/loadgen" bare --listen "127.0.0.1:$bare"
urls=()
for r in $(seq 1 "${REPLICAS:-1}"); do
  edge=$(free_port); urls+=(--url "http://127.0.0.1:$edge/queue")
  SERVER_EXTRA="replica = \"r$r\"" \
    edge_config "$edge" "url = \"postgres://payflow@127.0.0.1:$pg_port/statements\"" "$bare" > "$bench_work/g$r.toml"
  PAYFLOW_EDGE_LOG=warn start_bg "$edge_bin" serve --config "$bench_work/g$r.toml"
  wait_port "$edge" # one at a time: the first applies the migrations
done
wait_port "$bare"
"$bin/loadgen" run "${urls[@]}" --concurrency 64 --requests 3000 --label warm >/dev/null
delivered "$bare" 3000 >/dev/null
pg_psql -d statements -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
log_from=$(wc -l < "$pg_dir/log")
"$bin/loadgen" run "${urls[@]}" --concurrency 64 --requests "$n" ${RATE:+--rate "$RATE"} --label queue
delivered "$bare" $((3000 + n)) >/dev/null

echo
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'), $n queue-mode events${RATE:+ at $RATE/s}, ${REPLICAS:-1} replica(s) of $(basename "$edge_bin"):"
echo
echo "| calls | rows | exec µs/event | plan µs/event | statement |"
echo "|---|---|---|---|---|"
pg_psql -d statements -qAt -F ' | ' -c "
  SELECT calls, rows, round((total_exec_time * 1000 / $n)::numeric, 1), round((total_plan_time * 1000 / $n)::numeric, 1),
         left(regexp_replace(query, '\s+', ' ', 'g'), 100)
  FROM pg_stat_statements
  WHERE query NOT LIKE '%pg_stat_statements%' AND total_exec_time + total_plan_time > 0
  ORDER BY total_exec_time + total_plan_time DESC LIMIT 12" | sed 's/^/| /; s/$/ |/'
if [[ -n "${PLANS:-}" ]]; then
  echo
  echo "plans over 1 ms during the burst that scanned a table, by statement:"
  tail -n +"$((log_from + 1))" "$pg_dir/log" | awk '
    /Query Text:/ { sub(/.*Query Text: */, ""); q = substr($0, 1, 60) }
    /Seq Scan on/ { n[q]++ }
    END { for (k in n) printf "  %5d  %s\n", n[k], k; if (!length(n)) print "  none" }'
fi
