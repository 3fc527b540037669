#!/usr/bin/env bash
# How long a release's first start-up takes on a PostgreSQL database an earlier release left
# holding N events, with random ids, each with a delivered delivery and its attempt: the time to
# listen, and what the new replica logged of its migrations (issue 21: migrations 8 and 9 in the
# twenty-first look, 10 in the twenty-second).
# Usage: bench/pg_upgrade.sh OLD_BIN NEW_BIN [N]   (default 1,000,000 events)
# OLD_BIN creates the schema; the events are then inserted by SQL (700-byte bodies), which is
# much faster than through a gateway. A throw-away server (start_postgres; PG_INITDB applies).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: bench/pg_upgrade.sh OLD_BIN NEW_BIN [N]" >&2; exit 2; }
source bench/lib.sh
old="$1"; new="$2"; n="${3:-1000000}"
PG=1 one_store upgrade
edge=$(free_port)
edge_config "$edge" "$store" "$(free_port)" > "$bench_work/g.toml"
start_edge "$old" "$bench_work/g.toml"; wait_port "$edge"; kill "$edge_pid"; wait "$edge_pid" || true
# A release from migration 8 on numbers each delivery; an earlier one has no such column.
numbered=$(pg_psql -d upgrade -Atc "SELECT count(*) FROM information_schema.columns
  WHERE table_name = 'deliveries' AND column_name = 'event_seq'")
if ((numbered)); then seq_column="event_seq,"; seq_value="seq,"; else seq_column=""; seq_value=""; fi
pg_psql -d upgrade -q <<SQL
INSERT INTO events (merchant, scope, id, endpoint, event_type, status, body, headers, request_id, received_at_ms)
  SELECT 'default', '/queue', 'evt_' || md5(i::text), '/queue', 'payment.succeeded', 'queued',
         convert_to(repeat('x', 700), 'UTF8'), '[]', 'req', i FROM generate_series(1, $n) i;
INSERT INTO deliveries ($seq_column merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms)
  SELECT $seq_value merchant, scope, id, 'bare', 'delivered', 1, received_at_ms FROM events;
INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code)
  SELECT merchant, scope, id, 'bare', 1, received_at_ms, 1, 200 FROM events;
VACUUM ANALYZE;
SQL
before=$(pg_psql -d upgrade -Atc "SELECT pg_database_size('upgrade') / 1048576")
start=$(date +%s.%N)
PAYFLOW_EDGE_LOG=info "$new" serve --config "$bench_work/g.toml" > "$bench_work/new.log" 2>&1 &
pid=$!; bench_pids+=("$pid")
wait_port "$edge" 3000
listening=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
kill "$pid"; wait "$pid" || true
echo "$n events, $before MB: the new release listened after $listening s;" \
  "then $(pg_psql -d upgrade -Atc "SELECT pg_database_size('upgrade') / 1048576") MB"
grep -o 'store: [^"]*' "$bench_work/new.log" | cut -c1-160
