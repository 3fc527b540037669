//! The tables and indexes as a new database gets them, and the upgrades that bring an older
//! gateway's database to them in place, at open. It must never lose or rewrite what an older
//! database holds beyond the upgrade's documented change, and never run after the writer
//! thread has started.

use rusqlite::Connection;

/// The tables, as a new database gets them. Every row of an event's carries its whole key
/// (merchant, scope, id): see [`payflow_store::EventKey`]. A delivery, a plugin step and a plugin run
/// are also keyed by their event's number (`events.seq`, the row's own key, in arrival order):
/// see [`migrate_to_event_numbers`] and [`migrate_steps_to_event_numbers`] for why.
pub(crate) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS health (
    id              INTEGER PRIMARY KEY,
    checked_at_ms   BIGINT  NOT NULL
);
CREATE TABLE IF NOT EXISTS health_room (
    room            BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY,
    merchant        TEXT    NOT NULL,
    scope           TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    endpoint        TEXT    NOT NULL,
    event_type      TEXT,
    status          TEXT    NOT NULL,
    reason          TEXT,
    body            BLOB    NOT NULL,
    headers         TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    received_at_ms  BIGINT  NOT NULL,
    claimed_at_ms   BIGINT,
    tags            TEXT,
    forced_by       TEXT,
    order_key       TEXT,
    UNIQUE (merchant, scope, id)
);
CREATE TABLE IF NOT EXISTS deliveries (
    -- The event's `seq`. The key columns after it say whose delivery the row is, but the
    -- statements find an event's deliveries by this.
    event_seq           INTEGER NOT NULL,
    merchant            TEXT    NOT NULL,
    scope               TEXT    NOT NULL,
    event_id            TEXT    NOT NULL,
    upstream            TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    next_attempt_at_ms  BIGINT  NOT NULL,
    body                BLOB,
    headers             TEXT,
    -- The delivery's latest attempt (its number is `attempts`); earlier ones are in `attempts`.
    -- A first attempt that succeeds, nearly every delivery's only one, writes no row of its own.
    last_at_ms          BIGINT,
    last_duration_ms    BIGINT,
    last_status_code    INTEGER,
    last_error          TEXT,
    last_response       TEXT,
    PRIMARY KEY (event_seq, upstream)
);
CREATE TABLE IF NOT EXISTS plugin_steps (
    -- The event's `seq`, as for deliveries: an event has one step at most.
    event_seq           INTEGER PRIMARY KEY,
    merchant            TEXT    NOT NULL,
    scope               TEXT    NOT NULL,
    event_id            TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    next_attempt_at_ms  BIGINT  NOT NULL,
    error               TEXT,
    routes              TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    merchant     TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    upstream     TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    at_ms        BIGINT  NOT NULL,
    duration_ms  BIGINT  NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    response     TEXT
);
CREATE TABLE IF NOT EXISTS plugin_runs (
    event_seq    INTEGER NOT NULL,
    merchant     TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    plugin       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    at_ms        BIGINT  NOT NULL,
    duration_us  BIGINT  NOT NULL,
    fuel_used    BIGINT  NOT NULL,
    outcome      TEXT    NOT NULL,
    detail       TEXT,
    logs         TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS plugins (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    active_version  INTEGER,
    file_sha256     TEXT,
    PRIMARY KEY (merchant, name)
);
CREATE TABLE IF NOT EXISTS plugin_versions (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    sha256          TEXT    NOT NULL,
    wasm            BLOB    NOT NULL,
    source          TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (merchant, name, version)
);
CREATE TABLE IF NOT EXISTS plugin_canaries (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    percent         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    reason          TEXT,
    at_ms           BIGINT  NOT NULL,
    PRIMARY KEY (merchant, name)
);
CREATE TABLE IF NOT EXISTS plugin_compiled (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    engine          TEXT    NOT NULL,
    compiled        BLOB    NOT NULL,
    PRIMARY KEY (merchant, name, version, engine)
);
CREATE TABLE IF NOT EXISTS plugin_kv (
    merchant  TEXT  NOT NULL,
    plugin    TEXT  NOT NULL,
    key       TEXT  NOT NULL,
    value     BLOB  NOT NULL,
    version   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant, plugin, key)
);
";

/// Indexes, created once the tables (old ones migrated) have every column they name.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_by_time ON events (received_at_ms);
-- Pending deliveries only, as on PostgreSQL: the due scans and the queue depths read nothing
-- else, and the index that held every delivery ever made (upstream, status, time) grew by one
-- entry per delivered event for good and moved it at each delivery.
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (upstream, next_attempt_at_ms) WHERE status = 'pending';
-- Pending plugin steps only, likewise (PostgreSQL's is partial too): the one over every step
-- grew by an entry per event that ever went through plugins, and moved it at each step.
DROP INDEX IF EXISTS plugin_steps_due;
CREATE INDEX IF NOT EXISTS plugin_steps_pending ON plugin_steps (next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS attempts_by_key ON attempts (merchant, scope, event_id);
CREATE INDEX IF NOT EXISTS plugin_runs_by_seq ON plugin_runs (event_seq);
CREATE INDEX IF NOT EXISTS events_in_order ON events (merchant, order_key, status) WHERE order_key IS NOT NULL;
";

/// Columns added after the first release, for databases created before them.
const ADDED_COLUMNS: [(&str, &str, &str); 12] = [
    ("events", "tags", "TEXT"),
    ("deliveries", "body", "BLOB"),
    ("deliveries", "headers", "TEXT"),
    ("events", "forced_by", "TEXT"),
    ("events", "order_key", "TEXT"),
    ("plugin_steps", "routes", "TEXT"),
    ("deliveries", "last_at_ms", "BIGINT"),
    ("deliveries", "last_duration_ms", "BIGINT"),
    ("deliveries", "last_status_code", "INTEGER"),
    ("deliveries", "last_error", "TEXT"),
    ("deliveries", "last_response", "TEXT"),
    ("plugin_kv", "version", "INTEGER NOT NULL DEFAULT 0"),
];

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
        [column],
        |r| r.get(0),
    )
}

pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    if !has_column(conn, "events", "scope")? {
        // A database from before de-duplication scopes: each event's scope becomes the endpoint
        // it arrived on, exactly the default scope, so every stored event keeps its identity and
        // a sender's retry of one is still a duplicate. Ids were unique per merchant then, so
        // joining the other tables on (merchant, id) is exact. `events` and `deliveries` change
        // primary key, which SQLite can only do by copying them into new tables.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             ALTER TABLE events RENAME TO events_unscoped;
             ALTER TABLE deliveries RENAME TO deliveries_unscoped;
             DROP INDEX IF EXISTS events_by_time;
             DROP INDEX IF EXISTS deliveries_due;
             DROP INDEX IF EXISTS attempts_by_event;
             DROP INDEX IF EXISTS plugin_runs_by_event;
             {TABLES}
             INSERT INTO events (seq, merchant, scope, id, endpoint, event_type, status, reason, body, headers,
                                 request_id, received_at_ms, claimed_at_ms, tags)
                 SELECT rowid, merchant, endpoint, id, endpoint, event_type, status, reason, body, headers,
                        request_id, received_at_ms, claimed_at_ms, tags
                 FROM events_unscoped;
             INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms, body, headers)
                 SELECT e.rowid, d.merchant, e.endpoint, d.event_id, d.upstream, d.status, d.attempts,
                        d.next_attempt_at_ms, d.body, d.headers
                 FROM deliveries_unscoped d JOIN events_unscoped e ON e.merchant = d.merchant AND e.id = d.event_id;
             ALTER TABLE attempts ADD COLUMN scope TEXT NOT NULL DEFAULT '';
             UPDATE attempts SET scope = COALESCE((SELECT e.endpoint FROM events_unscoped e
                 WHERE e.merchant = attempts.merchant AND e.id = attempts.event_id), '');
             ALTER TABLE plugin_runs ADD COLUMN scope TEXT NOT NULL DEFAULT '';
             UPDATE plugin_runs SET scope = COALESCE((SELECT e.endpoint FROM events_unscoped e
                 WHERE e.merchant = plugin_runs.merchant AND e.id = plugin_runs.event_id), '');
             DROP TABLE deliveries_unscoped;
             DROP TABLE events_unscoped;
             COMMIT;"
        ))?;
    }
    if has_column(conn, "plugin_versions", "compiled")? {
        // A database from before compiled code was kept per engine: the one artifact it held
        // has no engine to go with, so it goes, and each version is compiled once more, by the
        // first engine that loads it (an upgrade would mostly have made it unusable anyway).
        conn.execute_batch("ALTER TABLE plugin_versions DROP COLUMN compiled")?;
    }
    migrate_to_event_numbers(conn)?;
    migrate_steps_to_event_numbers(conn)?;
    // A database from before plugin steps had a table of their own kept each step as a
    // delivery to the sentinel upstream `@plugins`, and its failures as that upstream's
    // attempts: each becomes its event's step, with its last failure (the runs' own records,
    // which say which plugin failed and how, stay as they are).
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT INTO plugin_steps (event_seq, merchant, scope, event_id, status, attempts, next_attempt_at_ms,
                                   error)
             SELECT d.event_seq, d.merchant, d.scope, d.event_id,
                    CASE d.status WHEN 'delivered' THEN 'done' ELSE d.status END, d.attempts, d.next_attempt_at_ms,
                    (SELECT a.error FROM attempts a WHERE a.merchant = d.merchant AND a.scope = d.scope
                       AND a.event_id = d.event_id AND a.upstream = '@plugins' ORDER BY a.number DESC LIMIT 1)
             FROM deliveries d WHERE d.upstream = '@plugins'
             ON CONFLICT (event_seq) DO NOTHING;
         DELETE FROM deliveries WHERE upstream = '@plugins';
         DELETE FROM attempts WHERE upstream = '@plugins';
         COMMIT;",
    )?;
    conn.execute_batch(INDEXES)
}

/// The columns `events` and `deliveries` share between the release that keyed deliveries by
/// their event's key and this one, in which a delivery also names its event by `seq`.
const EVENT_ROW: &str =
    "merchant, scope, id, endpoint, event_type, status, reason, body, headers, request_id,
    received_at_ms, claimed_at_ms, tags, forced_by, order_key";
const DELIVERY_ROW: &str = "merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms, body,
    headers, last_at_ms, last_duration_ms, last_status_code, last_error, last_response";

/// A database from before events were numbered gets `events.seq` and deliveries keyed by it.
///
/// Why: an event's key is the sender's id, which lands anywhere in an index on it, while its
/// number lands at the end. Keyed by the event's key, each delivery put an entry at a random
/// place in one more index, and each attempt's record looked it up there: on a database that
/// had run a while, with ids in no order, those pages were mostly out of the cache, and a
/// queue-mode event cost ~1.2× the CPU it costs keyed by the number (bench/RESULTS.md, issue
/// 21's twenty-first look). The
/// number is the events' `INTEGER PRIMARY KEY`, not the bare rowid, because only such a
/// column keeps its values through a `VACUUM`.
///
/// SQLite cannot change a table's key in place, so both tables are copied, once, in one
/// transaction: each event keeps its rowid as its number, so arrival order (what ordered
/// delivery goes by) is unchanged. A delivery whose event is gone (none is left by this
/// gateway) goes with the copy: nothing could deliver it.
fn migrate_to_event_numbers(conn: &Connection) -> rusqlite::Result<()> {
    if has_column(conn, "events", "seq")? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let events: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    // 13.5 s for a million events on the bench machine (bench/RESULTS.md): worth saying first.
    tracing::info!(
        events,
        "store: numbering the stored events for the deliveries' new key, once: both tables are copied, \
         about 15 s per million events, and the file grows by the copy (its freed pages are reused)"
    );
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DROP INDEX IF EXISTS events_by_time;
         DROP INDEX IF EXISTS events_in_order;
         DROP INDEX IF EXISTS deliveries_pending;
         DROP INDEX IF EXISTS deliveries_due;
         ALTER TABLE events RENAME TO events_by_key;
         ALTER TABLE deliveries RENAME TO deliveries_by_key;
         {TABLES}
         INSERT INTO events (seq, {EVENT_ROW}) SELECT rowid, {EVENT_ROW} FROM events_by_key;
         INSERT INTO deliveries (event_seq, {DELIVERY_ROW})
             SELECT e.rowid, {delivery_row}
             FROM deliveries_by_key d
             JOIN events_by_key e ON e.merchant = d.merchant AND e.scope = d.scope AND e.id = d.event_id;
         DROP TABLE deliveries_by_key;
         DROP TABLE events_by_key;
         COMMIT;",
        delivery_row = columns_of(DELIVERY_ROW, "d")
    ))?;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "store: events numbered");
    Ok(())
}

/// The columns `plugin_steps` has kept under both of its keys.
const STEP_ROW: &str = "merchant, scope, event_id, status, attempts, next_attempt_at_ms, error, routes";
/// The columns `plugin_runs` has kept before and since it named its event by number.
const RUN_ROW: &str =
    "merchant, scope, event_id, plugin, version, attempt, at_ms, duration_us, fuel_used, outcome,
    detail, logs";

/// A database from before plugin steps and runs were keyed by their event's number gets them
/// so, as deliveries were before ([`migrate_to_event_numbers`]).
///
/// Why: keyed by the event's key, each plugin event put an entry at a random place of two
/// indexes (the steps' key and the runs' index on it), and the step's record found its row
/// there again. On a database that had run a while, with ids in no order, a queue-mode event
/// through a plugin cost ~1.35× what it cost on a new one, nearly all of it the store writer's
/// (bench/RESULTS.md, issue 21's twenty-fifth look). Keyed by the number, a step is a row at
/// the end of its table (no index of its own) and a run an entry at the end of one index.
///
/// Each table that still names its events by key alone is copied, once, in one transaction; a
/// step or run whose event is gone (none is left by this gateway) goes with the copy.
fn migrate_steps_to_event_numbers(conn: &Connection) -> rusqlite::Result<()> {
    let steps = !has_column(conn, "plugin_steps", "event_seq")?;
    let runs = !has_column(conn, "plugin_runs", "event_seq")?;
    if !steps && !runs {
        return Ok(());
    }
    let started = std::time::Instant::now();
    tracing::info!(
        "store: keying plugin steps and runs by their event's number, once: the tables are copied, \
         and the file grows by the copy (its freed pages are reused)"
    );
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    if steps {
        sql += "DROP INDEX IF EXISTS plugin_steps_due;
                ALTER TABLE plugin_steps RENAME TO plugin_steps_by_key;\n";
    }
    if runs {
        sql += "DROP INDEX IF EXISTS plugin_runs_by_key;
                ALTER TABLE plugin_runs RENAME TO plugin_runs_by_key;\n";
    }
    sql += TABLES;
    if steps {
        sql += &format!(
            "INSERT INTO plugin_steps (event_seq, {STEP_ROW})
                 SELECT e.seq, {s_row} FROM plugin_steps_by_key s
                 JOIN events e ON e.merchant = s.merchant AND e.scope = s.scope AND e.id = s.event_id;
             DROP TABLE plugin_steps_by_key;\n",
            s_row = columns_of(STEP_ROW, "s")
        );
    }
    if runs {
        sql += &format!(
            "INSERT INTO plugin_runs (event_seq, {RUN_ROW})
                 SELECT e.seq, {r_row} FROM plugin_runs_by_key r
                 JOIN events e ON e.merchant = r.merchant AND e.scope = r.scope AND e.id = r.event_id
                 ORDER BY r.rowid;
             DROP TABLE plugin_runs_by_key;\n",
            r_row = columns_of(RUN_ROW, "r")
        );
    }
    sql += "COMMIT;";
    conn.execute_batch(&sql)?;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "store: plugin steps and runs keyed");
    Ok(())
}

/// A list of columns as `table`'s: `a, b` as `t.a, t.b`.
fn columns_of(row: &str, table: &str) -> String {
    row.split(',').map(|c| format!("{table}.{}", c.trim())).collect::<Vec<_>>().join(", ")
}
