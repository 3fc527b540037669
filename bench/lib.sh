# Shared by the bench scripts (source it): ports, readiness, and cleanup of started servers.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT [TENTHS_OF_SECONDS]
  for _ in $(seq "${2:-100}"); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2; return 1
}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/payflow-edge-target}"
# build_release: builds the gateway and loadgen (release) and sets $bin to where they are.
# BENCH_NO_BUILD=1 measures what is built: an A/B series must not rebuild between runs.
build_release() {
  [[ -n "${BENCH_NO_BUILD:-}" ]] || cargo build --release --locked -p payflow-edge -p payflow-bench >&2
  bin="$CARGO_TARGET_DIR/release"
}
bench_pids=()
bench_work=$(mktemp -d)
pg_dir=""
bench_cleanup() {
  kill "${bench_pids[@]}" 2>/dev/null || true
  if [[ -n "$pg_dir" ]]; then as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$pg_dir"; fi
  rm -rf "$bench_work"
}
trap bench_cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# start_postgres [-c NAME=VALUE…]: a throw-away PostgreSQL server (initdb into a temporary
# directory, trust auth for user payflow, a loopback port; as the postgres user when run as
# root, which PostgreSQL refuses), with those settings and any in $PG_OPTS (e.g.
# PG_OPTS="-c random_page_cost=1.1"), stopped and removed when the script
# exits. $PG_INITDB goes to initdb, e.g. PG_INITDB="--locale-provider=icu --icu-locale=en-US"
# for the collation most servers are created with (the environment's here is C.UTF-8). Sets $pg_bin, $pg_dir (its log is $pg_dir/log) and $pg_port; pg_psql runs psql on it.
start_postgres() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pg_dir=$(mktemp -d /tmp/payflow-bench-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir"
  pg_port=$(free_port)
  as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U payflow --auth=trust -E UTF8 ${PG_INITDB:-} >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w start \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 $* ${PG_OPTS:-}" >/dev/null
  [[ -n "${PG_COLD_WAL:-}" ]] || warm_wal
}
# warm_wal: leaves the server writing its WAL into recycled segment files, as one that has run
# a while does. A new server creates and zero-fills a 16 MB file for each segment instead: at
# ~10,000 queue-mode events/s that is one every second or so, each stalling the commits behind
# it for 15-25 ms and spending the database's CPU (bench/RESULTS.md, fourteenth look). 48
# segments written and checkpointed here are recycled for the runs to come (PG_COLD_WAL=1
# keeps the new server as it is).
warm_wal() {
  pg_psql -d postgres -q >/dev/null <<'SQL'
CREATE TABLE wal_warm (x int);
DO $$ BEGIN FOR i IN 1..48 LOOP INSERT INTO wal_warm VALUES (i); PERFORM pg_switch_wal(); END LOOP; END $$;
DROP TABLE wal_warm;
CHECKPOINT;
SQL
}
pg_psql() { "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U payflow "$@"; }
# start_bg CMD...: runs a server in the background, stopped when the script exits.
start_bg() { "$@" >/dev/null & bench_pids+=($!); }
# delivered PORT [N]: how many POSTs the `loadgen bare` server on PORT has answered; with N, once
# it has answered N. Polls inside one process: a python3 started per poll would take ~0.2 s of
# the CPU the gateway under test is using to deliver (needs $bin, the release directory).
delivered() { "$bin/loadgen" count --url "http://127.0.0.1:$1/" ${2:+--at-least "$2"}; }
# edge_config PORT STORE_LINE BARE_PORT: a gateway config with /stored (no upstream) and /queue
# (delivered to the `loadgen bare` server on BARE_PORT); TOML lines in $SERVER_EXTRA go into
# [server], $STORE_EXTRA into [store], $UPSTREAM_EXTRA into the upstream, $QUEUE_EXTRA into the
# /queue endpoint.
edge_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
${SERVER_EXTRA:-}
[store]
$2
${STORE_EXTRA:-}
[[endpoint]]
path = "/stored"
secrets = ["whsec_bench_secret"]
[[upstream]]
name = "bare"
url = "http://127.0.0.1:$3/"
concurrency = 32
${UPSTREAM_EXTRA:-}
[[endpoint]]
path = "/queue"
secrets = ["whsec_bench_secret"]
upstream = "bare"
${QUEUE_EXTRA:-}
TOML
}
# db_ticks: user+system ticks of the database server's processes (PostgreSQL forks one per
# connection), when they run on this machine as the postgres user.
db_ticks() {
  local total=0 pid
  for pid in $(pgrep -u postgres 2>/dev/null); do
    total=$(( total + $(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
# thread_ticks PID: user+system ticks of a process's live threads, summed by thread name
# ("name ticks" lines, spaces in names as _), from /proc/PID/task/*/stat.
# proc_ticks PID: the process's user+system CPU time so far, in clock ticks.
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# us_per_event TICKS_BEFORE TICKS_AFTER EVENTS: the CPU time between, in µs per event.
us_per_event() { python3 -c "print(round(($2 - $1) * 1e6 / $(getconf CLK_TCK) / $3, 1))"; }
# through_the_example_plugin: the /queue endpoint of edge_config runs the amount-threshold
# example plugin (built by scripts/build-plugins.sh unless BENCH_NO_BUILD, or $PLUGIN_WASM, with
# the config table $PLUGIN_CONFIG), so its events go through plugin steps and runs ($QUEUE_EXTRA).
through_the_example_plugin() {
  [[ -n "${BENCH_NO_BUILD:-}" ]] || scripts/build-plugins.sh >&2
  local wasm="${PLUGIN_WASM:-$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/amount_threshold.wasm}"
  local config='{ min_amount = "1000" }'
  QUEUE_EXTRA="plugins = [\"amount-threshold\"]
[[plugin]]
name = \"amount-threshold\"
path = \"$wasm\"
config = ${PLUGIN_CONFIG:-$config}"
}
# one_store NAME: sets $store to a gateway config's store line: a SQLite file NAME.db in
# $bench_work, or with PG set, a new database NAME on a throw-away PostgreSQL (start_postgres).
one_store() {
  store="path = \"$bench_work/$1.db\""
  if [[ -n "${PG:-}" ]]; then
    start_postgres; pg_psql -d postgres -qc "CREATE DATABASE $1"
    store="url = \"postgres://payflow@127.0.0.1:$pg_port/$1\""
  fi
}
# fill_kv DATABASE MERCHANT PLUGIN N: fills the plugin's kv space with N keys of 900 bytes
# (fill:1 … fill:N), directly in the store, as a plugin that remembers many customers would have
# it: on PostgreSQL (PG set) the database DATABASE, else the SQLite file $bench_work/DATABASE.db.
fill_kv() {
  if [[ -n "${PG:-}" ]]; then
    pg_psql -d "$1" -qc "INSERT INTO plugin_kv (merchant, plugin, key, value, version)
      SELECT '$2', '$3', 'fill:' || g, convert_to(repeat('x', 900), 'UTF8'), 0 FROM generate_series(1, $4) AS g"
  else
    python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA busy_timeout = 10000')
c.execute(\"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < $4) \" +
          \"INSERT INTO plugin_kv (merchant, plugin, key, value, version) \" +
          \"SELECT '$2', '$3', 'fill:' || g, CAST(printf('%.900c', 'x') AS BLOB), 0 FROM s\"); c.commit()" \
      "$bench_work/$1.db"
  fi
}
# start_edge BIN CONFIG [VAR=VALUE…]: the gateway serving CONFIG, with those in its environment
# and only warnings in its log; sets $edge_pid (stopped when the script exits).
start_edge() {
  local bin=$1 config=$2; shift 2
  start_bg env "$@" PAYFLOW_EDGE_LOG=warn "$bin" serve --config "$config"
  edge_pid=${bench_pids[-1]}
}
thread_ticks() {
  local t s name f
  for t in /proc/"$1"/task/*; do
    s=$(cat "$t/stat" 2>/dev/null) || continue
    name=${s#*(}; name=${name%)*}; read -r -a f <<<"${s##*) }"
    echo "${name// /_} $((f[11] + f[12]))"
  done | awk '{t[$1]+=$2} END {for (k in t) print k, t[k]}'
}
# plugin_runs ADMIN_PORT TOKEN: "RUNS CONFLICTS", the gateway's plugin runs so far and how many
# of its steps were run again after a kv conflict (payflow_edge_plugin_runs_total and
# payflow_edge_plugin_kv_conflicts_total, every plugin).
plugin_runs() {
  curl -s -H "Authorization: Bearer $2" "http://127.0.0.1:$1/metrics" |
    awk '/^payflow_edge_plugin_runs_total\{/ {r+=$2} /^payflow_edge_plugin_kv_conflicts_total\{/ {c+=$2} END {printf "%d %d\n", r, c}'
}
# commit_seconds ADMIN_PORT TOKEN: "sum count" of the gateway's payflow_edge_store_commit_seconds.
commit_seconds() {
  curl -s -H "Authorization: Bearer $2" "http://127.0.0.1:$1/metrics" |
    awk '/^payflow_edge_store_commit_seconds_sum/ {s=$2} /^payflow_edge_store_commit_seconds_count/ {c=$2} END {print s+0, c+0}'
}
