//! SQLite (WAL) in one file: the embedded default store.
//!
//! Group commit: every write goes to one writer thread, which takes whatever writes are
//! waiting (up to `max_batch`), applies them in one transaction (redoing each alone if one
//! fails) and commits once: one fsync for the whole batch. A write is answered only after that
//! commit. While one batch is being fsync'd the next one queues up, so under load the commit
//! rate, not the request rate, is bounded by the disk. Under steady traffic, too light for
//! writes to queue up during a commit, a write that finds the writer idle may first wait for
//! others to share its commit (`[store] commit_delay_us`, [`crate::commit_delay`]). Writes that
//! a sender's acknowledgement waits on go first: delivery bookkeeping takes at most a few
//! places in a batch while they wait. Reads use a separate connection (WAL lets them run beside
//! the writer).
//!
//! A checkpointer thread copies the WAL back into the database file. It must never let the WAL
//! grow without bound, and never hold the writer up for more than the copy of the last few
//! frames (see [`WAL_RESTART_FRAMES`]). At open, before the threads start, the WAL's working
//! size is written ahead ([`crate::wal_prefill`]).
//!
//! SQL stays portable (`ON CONFLICT … DO NOTHING`, no SQLite-only types), as the PostgreSQL
//! backend shares much of it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::commit_delay::CommitDelay;
use super::{
    settled_status, AdminQueries, Amount, Attempt, AttemptInfo, AttemptOutcome, Backlog, Canary,
    CommitObserver, DeliveryInfo, DeliveryQueue, DueCursor, DueDelivery, DueStep, Event, EventDetail,
    EventFilter, EventKey, EventSeq, EventStatus, EventSummary, HeldKey, Hop, Ingest, Inserted, KvEntry,
    KvReadOf, KvStamp, Lifecycle, NewEvent, NewPluginVersion, PluginHistory, PluginRunInfo, PluginStep,
    PluginStore, PluginVersionInfo, QueueDepth, QuotaExceeded, StepInfo, StepRecorded, StoreError,
    StoredPlugin, VersionBounds,
};
use payflow_config::StoreConfig;

/// The number (`events.seq`) of the event whose key is `?1`, `?2`, `?3` (merchant, scope, id):
/// how a statement given a key finds the event's deliveries.
macro_rules! seq_of_key {
    () => {
        "(SELECT seq FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3)"
    };
}

/// The number in parameter `$n` ([`Attempt::event_seq`]), or when it is null, [`seq_of_key!`]'s.
/// SQLite evaluates `COALESCE`'s arguments in order and only as far as the first that is not
/// null, so a number given skips the key's lookup. A statement that finds rows by it also
/// compares their key columns with `?1`..`?3`, so a number that is not the key's finds nothing.
macro_rules! seq_or_key {
    ($n:literal) => {
        concat!("COALESCE(", $n, ", ", seq_of_key!(), ")")
    };
}

/// What the readiness probe writes (and deletes): more than a typical event with its rows.
const READY_ROOM_BYTES: i64 = 64 << 10;

/// The tables, as a new database gets them. Every row of an event's carries its whole key
/// (merchant, scope, id): see [`super::EventKey`]. A delivery, a plugin step and a plugin run
/// are also keyed by their event's number (`events.seq`, the row's own key, in arrival order):
/// see [`migrate_to_event_numbers`] and [`migrate_steps_to_event_numbers`] for why.
const TABLES: &str = "
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
CREATE INDEX IF NOT EXISTS plugin_steps_due ON plugin_steps (status, next_attempt_at_ms);
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

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// How urgent a write is. Someone is waiting on an acknowledgement for an `Ack` write (a
/// sender with a timeout); a `Background` write records what the dispatcher did, which no
/// one waits on (its delivery stays claimed in memory until it is recorded).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Priority {
    Ack,
    /// Bookkeeping no sender waits on, with how many records it writes (a delivery's attempts
    /// come in batches): the writer shares its batches by records, not by writes.
    Background(usize),
}

/// While acknowledgements are waiting, background writes join a batch only until they carry
/// this many records (the first always joins, whatever it carries), so delivery bookkeeping
/// cannot lengthen the commits senders wait on; it still progresses, and takes a batch of its
/// own ([`BACKGROUND_ALONE_BATCH`]) whenever no acknowledgement is waiting.
const BACKGROUND_PER_BUSY_BATCH: usize = 8;

/// With no acknowledgement waiting, background writes take a batch of their own only until it
/// carries this many records: an acknowledgement that arrives meanwhile waits for that batch's
/// commit. With 512 plugin steps in flight, whole batches of their records (up to 512) held a
/// burst's acks at 7.6–10.8 ms p99; 256 gave 7.3–7.9 ms at 0.97 the delivery rate, 64 gave 6.2
/// ms but delivered at 0.90 (bench/RESULTS.md, twenty-eighth look).
const BACKGROUND_ALONE_BATCH: usize = 256;

/// A write waiting for the writer thread. It may run twice: once in its batch and, if another
/// write in the batch failed, again in a transaction of its own.
trait WriteJob: Send {
    /// Runs (again), keeping the result; false if it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the write's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
    /// Its priority.
    fn priority(&self) -> Priority;
}

struct Job<T, F> {
    priority: Priority,
    work: F,
    result: Option<rusqlite::Result<T>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: Fn(&Connection) -> rusqlite::Result<T> + Send> WriteJob for Job<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.result) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(e))) => Err(unavailable(e)),
            (Ok(()), None) => Err(StoreError::Unavailable("write was not run".into())),
        };
        let _ = self.reply.send(answer);
    }

    fn priority(&self) -> Priority {
        self.priority
    }
}

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// Dropping it stops the checkpointer thread.
    checkpointer: Mutex<Option<mpsc::Sender<()>>>,
}

/// How often WAL frames are copied back into the database file. SQLite's automatic
/// checkpoint would do it inside a commit on the writer thread, stalling every request in
/// that batch; a PASSIVE checkpoint on its own connection never blocks the writer.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The WAL size (in frames, a page each) past which the writer is asked to let the WAL start
/// over. The checkpointer copies frames back but cannot make SQLite reuse the file: that
/// happens only when a write begins with every frame copied, and while commits come faster
/// than a checkpoint runs one always lands mid-checkpoint. Without this the WAL grew by
/// 66 MB/s at a steady 4,000 events/s (1.3 GB in 20 s, against a 68 MB database), until the
/// disk was full, and every page read searched a longer WAL index (bench/RESULTS.md, issue 21).
/// Each start-over holds the writer up for a few fsyncs (its checkpoint's two took 3–7 ms
/// here, then the new WAL header's), so it should be rare: 32,768 frames is 128 MiB at the default 4 KiB
/// pages, once per ~20,000 events of a burst. Small in tests, to reach it quickly.
const WAL_RESTART_FRAMES: i64 = if cfg!(test) { 256 } else { 32_768 };

/// What the WAL file is cut back to when it starts over after a lull, in bytes. Twice the
/// bound, so that under load, when the WAL starts over near the bound, the file is reused as it
/// is: cutting it (and growing it again) cost the next commit ~10 ms where overwriting costs
/// nothing more than appending.
const WAL_KEPT_BYTES: i64 = 2 * WAL_RESTART_FRAMES * 4096;

/// A checkpoint short enough that what was committed meanwhile is little for the writer to
/// copy (see [`let_the_wal_start_over`]): the writer's own copy holds up acknowledgements.
const QUICK_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(5);

/// Checkpoints of a full WAL before the writer is asked: each copies what came in during the
/// one before, so they get shorter as long as copying outpaces committing.
const CATCH_UP_CHECKPOINTS: usize = 4;

/// Copies what it can of the WAL back without waiting for anyone; the WAL's size in frames.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>, wal_full: Arc<AtomicBool>) {
    let checkpoint = || passive_checkpoint(&conn);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        match checkpoint() {
            Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                for _ in 0..CATCH_UP_CHECKPOINTS {
                    let started = std::time::Instant::now();
                    if checkpoint().is_err() || started.elapsed() <= QUICK_CHECKPOINT {
                        break;
                    }
                }
                wal_full.store(true, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "passive checkpoint skipped"),
        }
    }
}

/// On the writer thread, between batches, once the checkpointer found the WAL past
/// [`WAL_RESTART_FRAMES`]: a PASSIVE checkpoint of the frames committed since the
/// checkpointer's (no commit can land during it, the writer being the only one), so that the
/// next write finds every frame copied and starts the WAL over. It never waits: a reader still
/// in the WAL, or the checkpointer mid-run, only puts it off to the next signal.
fn let_the_wal_start_over(conn: &Connection) {
    if let Err(e) = passive_checkpoint(conn) {
        tracing::debug!(error = %e, "the writer's checkpoint was skipped");
    }
}

fn open(path: &Path, config: &StoreConfig) -> rusqlite::Result<Connection> {
    // Each commit's WAL frames reach the kernel in one write per 128 KiB, not two per page.
    // That VFS serves only connections whose commits sync the WAL, as every one here does
    // (synchronous=FULL below, before anything is written).
    let vfs = payflow_wal_vfs::register().map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(e.to_string()),
        )
    })?;
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?;
    conn.busy_timeout(std::time::Duration::from_millis(config.busy_timeout_ms))?;
    // Room for every statement the gateway prepares, so none is ever re-parsed.
    conn.set_prepared_statement_cache_capacity(64);
    // WAL lets reads run beside the writer; synchronous=FULL makes every commit an fsync, which
    // is what "acknowledged after the durable write" means (NORMAL would survive kill -9 but
    // not a power cut).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A prepared statement keeps its plan whatever is bound to it. Without this, SQLite marks
    // a statement whose plan looked at a bound value (any `LIMIT ?`) to be planned again on
    // the first step after every bind, so the dispatcher's due scans and the event listings
    // were parsed and planned anew on every run despite the statement cache. The plans that
    // depend on values need `ANALYZE` statistics, which the store never gathers.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Savepoint (statement) journals and sorts stay in memory: they never need to survive.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if let Some(mb) = config.max_size_mb {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", (mb as i64 * 1024 * 1024) / page_size)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts the writer thread, which tells
    /// `commits` how long each commit took.
    pub fn open(config: &StoreConfig, commits: Arc<dyn CommitObserver>) -> Result<Self, StoreError> {
        let path = Path::new(&config.path);
        let writer_conn = open(path, config)
            .map_err(|e| StoreError::Unavailable(format!("cannot open database {}: {e}", path.display())))?;
        writer_conn.execute_batch(TABLES).map_err(unavailable)?;
        migrate(&writer_conn).map_err(unavailable)?;
        writer_conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
        writer_conn.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES).map_err(unavailable)?;
        crate::wal_prefill::prefill(&writer_conn, path, config.wal_prefill_mb);
        let reader = open(path, config).map_err(unavailable)?;
        let (stop_checkpoints, stopped) = mpsc::channel();
        let checkpoint_conn = open(path, config).map_err(unavailable)?;
        let wal_full = Arc::new(AtomicBool::new(false));
        let signal = wal_full.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped, signal))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let max_batch = config.max_batch;
        let delay = CommitDelay::new(std::time::Duration::from_micros(config.commit_delay_us));
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, max_batch, delay, &*commits, &wal_full))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reader: Arc::new(Mutex::new(reader)),
            checkpointer: Mutex::new(Some(stop_checkpoints)),
        })
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_with(Priority::Ack, work).await
    }

    async fn write_with<T, F>(&self, priority: Priority, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job { priority, work, result: None, reply });
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            work(&conn).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    max_batch: usize,
    mut delay: CommitDelay,
    commits: &dyn CommitObserver,
    wal_full: &AtomicBool,
) {
    let mut queues: [VecDeque<Box<dyn WriteJob>>; 2] = Default::default();
    let sort = |queues: &mut [VecDeque<_>; 2], job: Box<dyn WriteJob>| {
        queues[usize::from(job.priority() != Priority::Ack)].push_back(job)
    };
    loop {
        let mut waited = false;
        if queues.iter().all(VecDeque::is_empty) {
            match jobs.recv() {
                Ok(job) => sort(&mut queues, job),
                Err(_) => break,
            }
            // A sleep, not a wait on the channel: writes arriving meanwhile must not wake the
            // writer one by one, which would cost the wake-ups the delay is there to save.
            if let Some(wait) = delay.wait(std::time::Instant::now()) {
                std::thread::sleep(wait);
                waited = true;
            }
        }
        // Everything waiting (bounded: every caller awaits its write), sorted by priority.
        while let Ok(job) = jobs.try_recv() {
            sort(&mut queues, job);
        }
        if waited {
            delay.waited(queues.iter().map(VecDeque::len).sum::<usize>() - 1);
        }
        let [acks, background] = &mut queues;
        let mut batch: Vec<_> = acks.drain(..acks.len().min(max_batch)).collect();
        let acks_in_batch = batch.len();
        let share = if batch.is_empty() { BACKGROUND_ALONE_BATCH } else { BACKGROUND_PER_BUSY_BATCH };
        let mut records = 0;
        while let Some(Priority::Background(carries)) = background.front().map(|job| job.priority()) {
            if batch.len() == max_batch || (records > 0 && records + carries > share) {
                break;
            }
            records += carries;
            batch.extend(background.pop_front());
        }
        let started = std::time::Instant::now();
        let outcomes = run_batch(&conn, &mut batch);
        commits.committed(started.elapsed());
        delay.committed(std::time::Instant::now(), acks_in_batch);
        for (job, committed) in batch.into_iter().zip(outcomes) {
            job.finish(committed);
        }
        if wal_full.swap(false, Ordering::AcqRel) {
            let_the_wal_start_over(&conn);
        }
    }
    // Every sender is gone: fold the WAL back into the main file so the db is self-contained.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}

/// Runs one of the batch's fixed control statements, prepared once per connection.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Commits the batch in one transaction (one fsync). If any write in it fails, the batch is
/// rolled back and each write is redone in a transaction of its own, so one failure (a full
/// disk, say) never takes the others down. Savepoints would isolate writes too, but cost a
/// page copy into the statement journal for every page each write touches, on every batch.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Vec<Result<(), StoreError>> {
    let all = transaction(conn, |conn| {
        let mut ok = true;
        for job in batch.iter_mut() {
            ok &= job.run(conn);
        }
        ok
    });
    match all {
        Ok(true) => batch.iter().map(|_| Ok(())).collect(),
        Err(e) => {
            tracing::warn!(writes = batch.len(), error = %e, "store commit failed; answering 503");
            batch.iter().map(|_| Err(e.clone())).collect()
        }
        Ok(false) => batch.iter_mut().map(|job| transaction(conn, |conn| job.run(conn)).map(drop)).collect(),
    }
}

/// Runs `work` in a transaction: committed when it returns true, rolled back when false.
fn transaction(conn: &Connection, work: impl FnOnce(&Connection) -> bool) -> Result<bool, StoreError> {
    control(conn, "BEGIN IMMEDIATE").map_err(unavailable)?;
    if !work(conn) {
        control(conn, "ROLLBACK").map_err(unavailable)?;
        return Ok(false);
    }
    control(conn, "COMMIT").map_err(|e| {
        let _ = control(conn, "ROLLBACK");
        unavailable(e)
    })?;
    Ok(true)
}

fn status_of(conn: &Connection, key: &EventKey) -> rusqlite::Result<EventStatus> {
    let s: String = conn.query_row(
        concat!(
            "SELECT ",
            crate::event_status!(),
            " FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3"
        ),
        params![key.merchant, key.scope, key.id],
        |r| r.get(0),
    )?;
    Ok(EventStatus::parse(&s).unwrap_or(EventStatus::Stored))
}

fn insert_attempt(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    let a = &attempt.info;
    conn.prepare_cached(
        "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code,
                               error, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        attempt.key.merchant,
        attempt.key.scope,
        attempt.key.id,
        a.upstream,
        a.number,
        a.at_ms,
        a.duration_ms,
        a.status_code,
        a.error,
        a.response
    ])?;
    Ok(())
}

/// Records an attempt on its delivery's row: the delivery's status, attempt count and next
/// attempt time from the outcome, and the attempt itself as the row's latest. The caller has
/// filed the row's previous attempt first ([`file_latest_attempt`]). Only a row that was due
/// when the attempt began takes it ([`crate::takes_outcome!`]); returns whether one did.
fn record_on_delivery(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<bool> {
    let a = &attempt.info;
    let (status, next_at_ms) = attempt.outcome.delivery_row();
    let (merchant, scope, event_id) = key_of(&attempt.key);
    conn.prepare_cached(concat!(
        "UPDATE deliveries
         SET status = ?5, attempts = ?6, next_attempt_at_ms = COALESCE(?7, next_attempt_at_ms),
             last_at_ms = ?8, last_duration_ms = ?9, last_status_code = ?10, last_error = ?11,
             last_response = ?12
         WHERE event_seq = ",
        seq_or_key!("?13"),
        " AND upstream = ?4 AND merchant = ?1 AND scope = ?2 AND event_id = ?3 AND ",
        crate::takes_outcome!("next_attempt_at_ms", "?8")
    ))?
    .execute(params![
        merchant,
        scope,
        event_id,
        a.upstream,
        status,
        a.number,
        next_at_ms,
        a.at_ms,
        a.duration_ms,
        a.status_code,
        a.error,
        a.response,
        attempt.event_seq.map(|s| s.0)
    ])
    .map(|changed| changed > 0)
}

/// Copies the latest attempt kept on an event's delivery rows (one upstream's, or all of them)
/// into `attempts`, where the earlier ones are. Needed before a row's latest is replaced: with
/// `begun_at_ms`, by an attempt begun then, which replaces it only on a row that takes its
/// outcome ([`crate::takes_outcome!`]).
fn file_latest_attempt(
    conn: &Connection,
    key: &EventKey,
    upstream: Option<&str>,
    begun_at_ms: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(concat!(
        "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code,
                               error, response)
         SELECT merchant, scope, event_id, upstream, attempts, last_at_ms, last_duration_ms, last_status_code,
                last_error, last_response
         FROM deliveries
         WHERE event_seq = ",
        seq_of_key!(),
        " AND (?4 IS NULL OR upstream = ?4) AND last_at_ms IS NOT NULL AND (?5 IS NULL OR ",
        crate::takes_outcome!("next_attempt_at_ms", "?5"),
        ")
         ORDER BY upstream",
    ))?
    .execute(params![key.merchant, key.scope, key.id, upstream, begun_at_ms])?;
    Ok(())
}

/// Files every delivery's latest attempt of an event and clears it from the rows: before the
/// rows' attempt counts start over (a replay, a plugin's new decision) or the rows go.
fn file_latest_attempts(conn: &Connection, key: &EventKey) -> rusqlite::Result<()> {
    file_latest_attempt(conn, key, None, None)?;
    conn.prepare_cached(concat!(
        "UPDATE deliveries
         SET last_at_ms = NULL, last_duration_ms = NULL, last_status_code = NULL, last_error = NULL,
             last_response = NULL
         WHERE event_seq = ",
        seq_of_key!(),
        " AND last_at_ms IS NOT NULL",
    ))?
    .execute(params![key.merchant, key.scope, key.id])?;
    Ok(())
}

/// Records a delivery attempt: on the delivery's row, with the row's previous attempt (there
/// is one from the second attempt on) filed in `attempts`, and what its outcome changes about
/// the event. A first attempt, the only one of nearly every delivery, is one row update: an
/// `attempts` row of its own cost a queue-mode event ~4% more CPU (bench/RESULTS.md).
///
/// An attempt begun before its row was replayed changes neither the row nor the event: it is
/// filed in the event's history, as what was sent, and the replay's delivery goes ahead.
fn apply_attempt(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    let begun_at_ms = attempt.info.at_ms;
    if attempt.info.number > 1 {
        file_latest_attempt(conn, &attempt.key, Some(&attempt.info.upstream), Some(begun_at_ms))?;
    }
    if record_on_delivery(conn, attempt)? {
        return settle_after(conn, attempt);
    }
    let (merchant, scope, id) = key_of(&attempt.key);
    let event_is_there = conn
        .prepare_cached(concat!(
            "SELECT 1 FROM events WHERE seq = ",
            seq_or_key!("?4"),
            " AND merchant = ?1 AND scope = ?2 AND id = ?3"
        ))?
        .exists(params![merchant, scope, id, attempt.event_seq.map(|s| s.0)])?;
    if event_is_there {
        insert_attempt(conn, attempt)?;
    }
    Ok(())
}

/// A [`Backlog`] from a row's `COUNT(*)` and `MIN(next_attempt_at_ms)`, at columns `at` and
/// `at + 1`.
fn backlog_at(row: &rusqlite::Row, at: usize) -> rusqlite::Result<Backlog> {
    Ok(Backlog { pending: row.get::<_, i64>(at)? as u64, earliest_due_ms: row.get(at + 1)? })
}

/// An event key as the statements bind it: (merchant, scope, id).
fn key_of(key: &EventKey) -> (&str, &str, &str) {
    (&key.merchant, &key.scope, &key.id)
}

/// What a plugin step weighs in the writer's batches ([`Priority::Background`]): its rows, one
/// per kv key it writes or reads (each an upsert or a lookup), one per run and delivery, and
/// the step's own. Counted as one, a step writing a thousand keys joined batches of up to 256
/// steps while acknowledgements waited behind them: their p99 went to 220 ms
/// (bench/RESULTS.md, thirty-ninth look).
fn step_records(step: &PluginStep) -> usize {
    1 + step.kv.len() + step.kv_read.len() + step.runs.len() + step.deliveries.len()
}

/// Whether every key a plugin step's runs read (of `merchant`'s plugins) still holds the write
/// they found. Nobody else writes here, yet a read can still be wrong: a run reads the writes of
/// the plugin's last run before that run's step commits, and that step may never apply them
/// (a later plugin of its chain failed, its commit failed, or its event was replayed while it
/// ran and it was set aside); a repair may have deleted the key since. A step built on such a
/// read is stale. A primary-key lookup per key read, in the writer's transaction, so checked
/// and written with nothing between them.
fn reads_hold(conn: &Connection, merchant: &str, reads: &[KvReadOf]) -> rusqlite::Result<bool> {
    if reads.is_empty() {
        return Ok(true);
    }
    let mut now = conn
        .prepare_cached("SELECT version FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2 AND key = ?3")?;
    for read in reads {
        let version: Option<i64> =
            now.query_row(params![merchant, read.plugin, read.key], |r| r.get(0)).optional()?;
        // This store stamps every write with writer 0 (`PluginStore::kv_writer`).
        if version.map(|version| KvStamp { version, writer: 0 }) != read.found {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What an attempt's outcome changes about its event, by [`settled_status`]: a retry leaves
/// the delivery pending, which changes nothing; a dead delivery settles the event. A delivered
/// one, the outcome of nearly every attempt, is the rule's "delivered once all are", which
/// [`crate::event_status!`] applies as the event is read: the event's row is left as it is.
/// Rewriting it (body and all) cost a queue-mode event ~8% more WAL bytes and a few per cent
/// more CPU (bench/RESULTS.md). Only an event with an ordering key is still marked here, in one
/// statement (run only for an attempt that says its event is ordered, [`Attempt::ordered`]),
/// because the ordered scans narrow a key's history by the row's status
/// ([`crate::ordering`]). (The subquery names the row's columns, not the parameters, so that
/// SQLite runs it after the cheap test on `order_key` instead of once up front for every
/// event.) PostgreSQL's recorder does the same; the conformance suite holds both to the same
/// answers.
fn settle_after(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    match attempt.outcome {
        AttemptOutcome::Retry { .. } => Ok(()),
        AttemptOutcome::Delivered if !attempt.ordered => Ok(()),
        AttemptOutcome::Dead => settle_event(conn, &attempt.key),
        AttemptOutcome::Delivered => {
            let k = &attempt.key;
            conn.prepare_cached(concat!(
                "UPDATE events SET status = 'delivered' WHERE seq = ",
                seq_or_key!("?4"),
                " AND merchant = ?1 AND scope = ?2 AND id = ?3
                   AND order_key IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM deliveries d
                                   WHERE d.event_seq = events.seq AND d.status <> 'delivered')",
            ))?
            .execute(params![k.merchant, k.scope, k.id, attempt.event_seq.map(|s| s.0)])?;
            Ok(())
        }
    }
}

/// Sets an event's status from its deliveries', by the one rule every backend applies
/// ([`settled_status`]). An event without deliveries keeps its status.
fn settle_event(conn: &Connection, key: &EventKey) -> rusqlite::Result<()> {
    let statuses: Vec<String> = conn
        .prepare_cached(concat!("SELECT status FROM deliveries WHERE event_seq = ", seq_of_key!()))?
        .query_map(params![key.merchant, key.scope, key.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(status) = settled_status(statuses.iter().map(String::as_str)) {
        conn.prepare_cached("UPDATE events SET status = ?4 WHERE merchant = ?1 AND scope = ?2 AND id = ?3")?
            .execute(params![key.merchant, key.scope, key.id, status.as_str()])?;
    }
    Ok(())
}

/// Makes an event's first hop pending, due at `at_ms`: its plugin step, or a delivery. Nothing
/// when it is already there. `seq` is the event's number.
fn add_first_hop(conn: &Connection, key: &EventKey, seq: i64, hop: &Hop, at_ms: i64) -> rusqlite::Result<()> {
    let (merchant, scope, id) = key_of(key);
    match hop {
        Hop::Plugins => conn
            .prepare_cached(
                "INSERT INTO plugin_steps (event_seq, merchant, scope, event_id, status, attempts, next_attempt_at_ms)
             VALUES (?5, ?1, ?2, ?3, 'pending', 0, ?4)
             ON CONFLICT (event_seq) DO NOTHING",
            )?
            .execute(params![merchant, scope, id, at_ms, seq]),
        Hop::Upstream(upstream) => conn
            .prepare_cached(
                "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms)
             VALUES (?6, ?1, ?2, ?3, ?4, 'pending', 0, ?5)
             ON CONFLICT (event_seq, upstream) DO NOTHING",
            )?
            .execute(params![merchant, scope, id, upstream, at_ms, seq]),
    }
    .map(drop)
}

/// The event of a due row and its number, read from `events` columns in [`EVENT_COLUMNS`]
/// order from `at`.
fn event_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<(Event, EventSeq)> {
    let event = Event {
        key: EventKey::new(r.get::<_, String>(at)?, r.get::<_, String>(at + 1)?, r.get::<_, String>(at + 2)?),
        endpoint: r.get(at + 3)?,
        event_type: r.get(at + 4)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(at + 5)?),
        received_at_ms: r.get(at + 6)?,
        request_id: r.get(at + 7)?,
        ordered: r.get(at + 9)?,
    };
    Ok((event, EventSeq(r.get(at + 8)?)))
}

/// The `events` columns [`event_at`] reads, as `e`.
const EVENT_COLUMNS: &str =
    "e.merchant, e.scope, e.id, e.endpoint, e.event_type, e.body, e.received_at_ms, e.request_id, e.seq,
     e.order_key IS NOT NULL";

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventSummary> {
    Ok(EventSummary {
        merchant: row.get(0)?,
        id: row.get(1)?,
        endpoint: row.get(2)?,
        event_type: row.get(3)?,
        status: row.get(4)?,
        reason: row.get(5)?,
        received_at_ms: row.get(6)?,
        scope: row.get(8)?,
        forced_by: row.get(9)?,
        amount: row.get::<_, Option<Vec<u8>>>(10)?.and_then(|body| Amount::of(&body)),
        tags: row
            .get::<_, Option<String>>(7)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
    })
}

/// How many columns [`SUMMARY_COLUMNS`] names.
const SUMMARY_WIDTH: usize = 11;
/// The last column is the body, for its [`Amount`], when it is small enough to look into.
const SUMMARY_COLUMNS: &str = concat!(
    "merchant, id, endpoint, event_type, ",
    crate::event_status!(),
    ", reason, received_at_ms, tags, scope, forced_by, CASE WHEN length(body) <= 65536 THEN body END"
);

/// The condition on an ordered upstream's due delivery (see [`crate::ordering`]): events are
/// numbered in arrival order by `seq`.
static IN_ORDER: LazyLock<String> = LazyLock::new(|| crate::ordering::in_order("d", "seq", "?1"));

/// The due-deliveries read, with `condition` (empty, or [`IN_ORDER`]) on each delivery.
fn due_sql(condition: &str) -> String {
    format!(
        "SELECT d.upstream, d.attempts, d.body, d.headers, d.next_attempt_at_ms, {EVENT_COLUMNS}
         FROM deliveries d
         JOIN events e ON e.seq = d.event_seq
         WHERE d.upstream = ?1 AND d.status = 'pending' AND d.next_attempt_at_ms <= ?2
           AND (?4 IS NULL
                OR (d.next_attempt_at_ms, d.merchant, d.scope, d.event_id) > (?4, ?5, ?7, ?6))
           {condition}
         ORDER BY d.next_attempt_at_ms, d.merchant, d.scope, d.event_id LIMIT ?3"
    )
}

/// The parts of a page's cursor key as a due read binds them, merchant, scope and id (none on
/// the first page).
fn cursor_key(key: &Option<EventKey>) -> [Option<&str>; 3] {
    let part = |f: fn(&crate::KeyParts) -> &str| key.as_ref().map(|k| f(k));
    [part(|k| &k.merchant), part(|k| &k.scope), part(|k| &k.id)]
}

impl SqliteStore {
    /// Due deliveries to `upstream`, with `condition` (empty, or [`IN_ORDER`]) on each.
    async fn due(
        &self,
        upstream: &str,
        condition: String,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let upstream = upstream.to_string();
        // The key moves into the read shared, not copied.
        let (at, key) = cursor.cloned().unzip();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&due_sql(&condition))?;
            let [merchant, scope, id] = cursor_key(&key);
            let rows =
                stmt.query_map(params![upstream, now_ms, limit as i64, at, merchant, id, scope], |r| {
                    let (event, seq) = event_at(r, 5)?;
                    Ok(DueDelivery {
                        upstream: r.get(0)?,
                        attempts: r.get(1)?,
                        body: r.get::<_, Option<Vec<u8>>>(2)?.map(Bytes::from),
                        headers: r
                            .get::<_, Option<String>>(3)?
                            .and_then(|h| serde_json::from_str(&h).ok())
                            .unwrap_or_default(),
                        next_attempt_at_ms: r.get(4)?,
                        event,
                        seq,
                        claimed_until_ms: None,
                    })
                })?;
            rows.collect()
        })
        .await
    }
}

#[async_trait]
impl Ingest for SqliteStore {
    async fn insert_event(&self, new: NewEvent) -> Result<Inserted, StoreError> {
        self.write(move |conn| {
            let NewEvent { event, status, reason, headers, first_hop, order_key, .. } = &new;
            let headers = serde_json::to_string(headers).unwrap_or_else(|_| "[]".into());
            let claimed = (*status == EventStatus::Forwarding).then_some(event.received_at_ms);
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO events (merchant, id, endpoint, event_type, status, reason, body, headers,
                                         request_id, received_at_ms, claimed_at_ms, scope, order_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (merchant, scope, id) DO NOTHING",
                )?
                .execute(params![
                    event.key.merchant,
                    event.key.id,
                    event.endpoint,
                    event.event_type,
                    status.as_str(),
                    reason,
                    &event.body[..],
                    headers,
                    event.request_id,
                    event.received_at_ms,
                    claimed,
                    event.key.scope,
                    order_key
                ])?;
            if inserted == 0 {
                return Ok(Inserted::Duplicate(status_of(conn, &event.key)?));
            }
            let seq = conn.last_insert_rowid();
            if let Some(hop) = first_hop {
                add_first_hop(conn, &event.key, seq, hop, event.received_at_ms)?;
            }
            Ok(Inserted::New(EventSeq(seq)))
        })
        .await
    }

    async fn claim_forward(
        &self,
        key: &EventKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            // Proxy mode's request path: prepared once, like ingress's statements.
            let n = conn
                .prepare_cached(
                    "UPDATE events SET status = 'forwarding', claimed_at_ms = ?3
                     WHERE merchant = ?1 AND scope = ?5 AND id = ?2
                       AND (status = 'failed' OR (status = 'forwarding' AND claimed_at_ms < ?4))",
                )?
                .execute(params![key.merchant, key.id, now_ms, stale_before_ms, key.scope])?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError> {
        self.write(move |conn| {
            insert_attempt(conn, &attempt)?;
            let (status, reason) = match attempt.outcome {
                AttemptOutcome::Delivered => (EventStatus::Delivered, None),
                _ => (
                    EventStatus::Failed,
                    Some(attempt.info.error.clone().unwrap_or_else(|| {
                        format!("upstream answered {}", attempt.info.status_code.unwrap_or_default())
                    })),
                ),
            };
            conn.prepare_cached(
                "UPDATE events SET status = ?3, reason = ?4 WHERE merchant = ?1 AND scope = ?5 AND id = ?2",
            )?
            .execute(params![
                attempt.key.merchant,
                attempt.key.id,
                status.as_str(),
                reason,
                attempt.key.scope
            ])?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn due_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.due(upstream, String::new(), now_ms, cursor, limit).await
    }

    async fn due_ordered_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.due(upstream, IN_ORDER.clone(), now_ms, cursor, limit).await
    }

    async fn due_steps(
        &self,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        // The key moves into the read shared, not copied.
        let (at, key) = cursor.cloned().unzip();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT s.attempts, s.next_attempt_at_ms, {EVENT_COLUMNS}
                 FROM plugin_steps s
                 JOIN events e ON e.seq = s.event_seq
                 WHERE s.status = 'pending' AND s.next_attempt_at_ms <= ?1
                   AND (?3 IS NULL
                        OR (s.next_attempt_at_ms, s.merchant, s.scope, s.event_id) > (?3, ?4, ?5, ?6))
                 ORDER BY s.next_attempt_at_ms, s.merchant, s.scope, s.event_id LIMIT ?2"
            ))?;
            let [merchant, scope, id] = cursor_key(&key);
            let rows = stmt.query_map(params![now_ms, limit as i64, at, merchant, scope, id], |r| {
                let (event, seq) = event_at(r, 2)?;
                Ok(DueStep {
                    attempts: r.get(0)?,
                    next_attempt_at_ms: r.get(1)?,
                    event,
                    seq,
                    claimed_until_ms: None,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn record_attempts(&self, attempts: Vec<Arc<Attempt>>) -> Result<(), StoreError> {
        let records = attempts.len();
        self.write_with(Priority::Background(records), move |conn| {
            attempts.iter().try_for_each(|attempt| apply_attempt(conn, attempt))
        })
        .await
    }

    async fn finish_plugin_step(&self, step: PluginStep) -> Result<StepRecorded, StoreError> {
        self.write_with(Priority::Background(step_records(&step)), move |conn| {
            let (merchant, scope, id) = key_of(&step.key);
            let (status, next_at_ms) = step.step.step_row();
            let routes = step.routes.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
            // The event's number: the step's own, or its key's (proxy mode's steps have none).
            let seq: Option<i64> = match step.event_seq {
                Some(seq) => Some(seq.0),
                None => conn
                    .prepare_cached(concat!("SELECT ", seq_of_key!()))?
                    .query_row(params![merchant, scope, id], |r| r.get(0))?,
            };
            if !reads_hold(conn, merchant, &step.kv_read)? {
                return Ok(StepRecorded::Stale);
            }
            let took = conn
                .prepare_cached(concat!(
                    "UPDATE plugin_steps
                     SET status = ?4, attempts = ?5, next_attempt_at_ms = COALESCE(?6, next_attempt_at_ms),
                         error = ?7, routes = ?8
                     WHERE event_seq = ?10 AND merchant = ?1 AND scope = ?2 AND event_id = ?3 AND ",
                    crate::takes_outcome!("next_attempt_at_ms", "?9")
                ))?
                .execute(params![
                    merchant,
                    scope,
                    id,
                    status,
                    step.number,
                    next_at_ms,
                    step.error,
                    routes,
                    step.at_ms,
                    seq
                ])?
                > 0;
            // Proxy mode's steps have no row (they run inside the sender's request); a row the step
            // did not take was replayed since it began.
            let replayed_since = !took
                && conn.prepare_cached("SELECT 1 FROM plugin_steps WHERE event_seq = ?1")?.exists([seq])?;
            let mut run = conn.prepare_cached(
                "INSERT INTO plugin_runs (event_seq, merchant, scope, event_id, plugin, version, attempt, at_ms,
                                          duration_us, fuel_used, outcome, detail, logs)
                 VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in &step.runs {
                let logs = serde_json::to_string(&r.logs).unwrap_or_else(|_| "[]".into());
                run.execute(params![
                    merchant,
                    scope,
                    id,
                    r.plugin,
                    r.version,
                    r.attempt,
                    r.at_ms,
                    r.duration_us,
                    r.fuel_used as i64,
                    r.outcome,
                    r.detail,
                    logs,
                    seq
                ])?;
            }
            if replayed_since {
                // Only its runs are kept, as what ran: the replay's own run decides.
                return Ok(StepRecorded::SetAside);
            }
            if !step.kv.is_empty() {
                let mut kv = conn.prepare_cached(
                    "INSERT INTO plugin_kv (merchant, plugin, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (merchant, plugin, key) DO UPDATE SET value = excluded.value, version = excluded.version
                     WHERE excluded.version >= plugin_kv.version",
                )?;
                for w in &step.kv {
                    kv.execute(params![merchant, w.plugin, w.key, w.value, w.version])?;
                }
            }
            let mut add = conn.prepare_cached(concat!(
                "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                         next_attempt_at_ms, body, headers)
                 VALUES (",
                seq_of_key!(),
                ", ?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?7)
                 ON CONFLICT (event_seq, upstream) DO UPDATE
                 SET status = 'pending', attempts = 0, next_attempt_at_ms = excluded.next_attempt_at_ms,
                     body = excluded.body, headers = excluded.headers",
            ))?;
            if !step.deliveries.is_empty() {
                // A delivery the plugins route to again starts its count over.
                file_latest_attempts(conn, &step.key)?;
            }
            for d in &step.deliveries {
                let headers =
                    (!d.headers.is_empty()).then(|| serde_json::to_string(&d.headers).unwrap_or_default());
                add.execute(params![merchant, scope, id, d.upstream, step.at_ms, d.body.as_deref(), headers])?;
            }
            let tags = (!step.tags.is_empty()).then(|| serde_json::to_string(&step.tags).unwrap_or_default());
            // The common case changes nothing about the event: a first attempt (ingress left it
            // queued, without a reason) that continued, untagged.
            let unchanged = step.number == 1
                && step.status == EventStatus::Queued
                && step.reason.is_none()
                && tags.is_none();
            if !unchanged {
                conn.prepare_cached(
                    "UPDATE events SET status = ?3, reason = ?4, tags = COALESCE(?5, tags)
                     WHERE merchant = ?1 AND scope = ?6 AND id = ?2",
                )?
                .execute(params![merchant, id, step.status.as_str(), step.reason, tags, scope])?;
            }
            Ok(StepRecorded::Applied)
        })
        .await
    }

    async fn queue_depth(&self, upstreams: Vec<String>) -> Result<Vec<QueueDepth>, StoreError> {
        self.read(move |conn| {
            // Per upstream, so each count is a range of the `deliveries_pending` index.
            let mut statement = conn.prepare_cached(
                "SELECT merchant, COUNT(*), MIN(next_attempt_at_ms) FROM deliveries
                 WHERE upstream = ?1 AND status = 'pending' GROUP BY merchant",
            )?;
            let mut depths = Vec::new();
            for upstream in upstreams {
                let rows = statement.query_map(params![upstream], |r| {
                    Ok(QueueDepth {
                        upstream: upstream.clone(),
                        merchant: r.get(0)?,
                        backlog: backlog_at(r, 1)?,
                    })
                })?;
                depths.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(depths)
        })
        .await
    }

    async fn steps_pending(&self) -> Result<Vec<(String, Backlog)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, COUNT(*), MIN(next_attempt_at_ms) FROM plugin_steps WHERE status = 'pending'
                 GROUP BY merchant",
            )?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, backlog_at(r, 1)?)))?
            .collect()
        })
        .await
    }
}

#[async_trait]
impl PluginStore for SqliteStore {
    async fn load_kv(&self, merchant: &str, plugin: &str) -> Result<Vec<KvEntry>, StoreError> {
        let (merchant, plugin) = (merchant.to_string(), plugin.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT key, value, version FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2",
            )?
            .query_map(params![merchant, plugin], |r| {
                Ok(KvEntry { key: r.get(0)?, value: r.get(1)?, version: r.get(2)?, writer: 0 })
            })?
            .collect()
        })
        .await
    }

    async fn delete_kv(&self, merchant: &str, plugin: &str, key: &str) -> Result<bool, StoreError> {
        let (merchant, plugin, key) = (merchant.to_string(), plugin.to_string(), key.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2 AND key = ?3",
                params![merchant, plugin, key],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn add_plugin_version(
        &self,
        v: NewPluginVersion,
        file_sha256: Option<String>,
        bounds: VersionBounds,
    ) -> Result<Result<u32, QuotaExceeded>, StoreError> {
        self.write(move |conn| {
            let version: u32 = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_versions WHERE merchant = ?1 AND name = ?2",
                params![v.merchant, v.name],
                |r| r.get(0),
            )?;
            let active: Option<u32> = conn
                .query_row(
                    "SELECT active_version FROM plugins WHERE merchant = ?1 AND name = ?2",
                    params![v.merchant, v.name],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            // Kept: the new version, the one it replaces, and the newest others up to the cap.
            let others = bounds.max_versions.saturating_sub(1 + u32::from(active.is_some()));
            let pruned: Vec<(u32, u64)> = conn
                .prepare_cached(
                    "SELECT version, LENGTH(wasm) + (SELECT COALESCE(SUM(LENGTH(c.compiled)), 0) FROM plugin_compiled c
                                                     WHERE c.merchant = v.merchant AND c.name = v.name
                                                       AND c.version = v.version)
                     FROM plugin_versions v
                     WHERE merchant = ?1 AND name = ?2 AND version IS NOT ?3
                     ORDER BY version DESC LIMIT -1 OFFSET ?4",
                )?
                .query_map(params![v.merchant, v.name, active, others], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let used: u64 = conn.query_row(
                "SELECT (SELECT COALESCE(SUM(LENGTH(wasm)), 0) FROM plugin_versions WHERE merchant = ?1)
                      + (SELECT COALESCE(SUM(LENGTH(compiled)), 0) FROM plugin_compiled WHERE merchant = ?1)",
                params![v.merchant],
                |r| r.get(0),
            )?;
            let needed = used - pruned.iter().map(|(_, size)| size).sum::<u64>()
                + (v.wasm.len() + v.compiled.len()) as u64;
            if needed > bounds.merchant_bytes {
                return Ok(Err(QuotaExceeded { needed, quota: bounds.merchant_bytes }));
            }
            for (old, _) in &pruned {
                for table in ["plugin_versions", "plugin_compiled"] {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE merchant = ?1 AND name = ?2 AND version = ?3"
                    ))?
                    .execute(params![v.merchant, v.name, old])?;
                }
            }
            conn.execute(
                "INSERT INTO plugin_versions (merchant, name, version, sha256, wasm, source, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![v.merchant, v.name, version, v.sha256, &v.wasm[..], v.source, v.created_at_ms],
            )?;
            conn.execute(
                "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.merchant, v.name, version, v.engine, v.compiled],
            )?;
            conn.execute(
                "INSERT INTO plugins (merchant, name, active_version, file_sha256) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (merchant, name) DO UPDATE
                 SET active_version = COALESCE(excluded.active_version, plugins.active_version),
                     file_sha256 = COALESCE(excluded.file_sha256, plugins.file_sha256)",
                params![v.merchant, v.name, v.activate.then_some(version), file_sha256],
            )?;
            Ok(Ok(version))
        })
        .await
    }

    async fn active_plugin(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        self.stored_at(merchant, name, engine, None).await
    }

    async fn stored_plugin(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        self.stored_at(merchant, name, engine, Some(version)).await
    }

    async fn set_canary(&self, merchant: &str, name: &str, c: Canary) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = if c.running() {
                conn.execute(
                    "INSERT INTO plugin_canaries (merchant, name, version, percent, state, reason, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (merchant, name) DO UPDATE SET version = excluded.version,
                         percent = excluded.percent, state = excluded.state, reason = excluded.reason,
                         at_ms = excluded.at_ms",
                    params![merchant, name, c.version, c.percent, c.state, c.reason, c.at_ms],
                )?
            } else {
                conn.execute(
                    "UPDATE plugin_canaries SET state = ?4, reason = ?5, at_ms = ?6
                     WHERE merchant = ?1 AND name = ?2 AND version = ?3 AND state = 'running'",
                    params![merchant, name, c.version, c.state, c.reason, c.at_ms],
                )?
            };
            Ok(n == 1)
        })
        .await
    }

    async fn canaries(&self) -> Result<Vec<(String, String, Canary)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT merchant, name, version, percent, state, reason, at_ms FROM plugin_canaries
                 ORDER BY merchant, name",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, canary_at(r, 2)?)))?
            .collect()
        })
        .await
    }

    async fn active_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, name, active_version FROM plugins WHERE active_version IS NOT NULL
                 ORDER BY merchant, name",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
        })
        .await
    }

    async fn plugin_history(&self, merchant: &str, name: &str) -> Result<PluginHistory, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.read(move |conn| {
            let (active, file_sha256) = conn
                .query_row(
                    "SELECT active_version, file_sha256 FROM plugins WHERE merchant = ?1 AND name = ?2",
                    params![merchant, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((None, None));
            let versions = conn
                .prepare_cached(
                    "SELECT version, sha256, LENGTH(wasm), source, created_at_ms FROM plugin_versions
                     WHERE merchant = ?1 AND name = ?2 ORDER BY version",
                )?
                .query_map(params![merchant, name], |r| {
                    Ok(PluginVersionInfo {
                        version: r.get(0)?,
                        sha256: r.get(1)?,
                        size: r.get::<_, i64>(2)? as usize,
                        source: r.get(3)?,
                        created_at_ms: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let canary = conn
                .query_row(
                    "SELECT version, percent, state, reason, at_ms FROM plugin_canaries WHERE merchant = ?1 AND name = ?2",
                    params![merchant, name],
                    |r| canary_at(r, 0),
                )
                .optional()?;
            Ok(PluginHistory { active, file_sha256, versions, canary })
        })
        .await
    }

    async fn activate_plugin(&self, merchant: &str, name: &str, version: u32) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE plugins SET active_version = ?3 WHERE merchant = ?1 AND name = ?2
                   AND EXISTS (SELECT 1 FROM plugin_versions v WHERE v.merchant = ?1 AND v.name = ?2 AND v.version = ?3)",
                params![merchant, name, version],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn save_compiled(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
        compiled: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (merchant, name, engine) = (merchant.to_string(), name.to_string(), engine.to_string());
        self.write_with(Priority::Background(1), move |conn| {
            // Only for a version that still exists: one pruned meanwhile leaves nothing behind.
            conn.execute(
                "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS
                     (SELECT 1 FROM plugin_versions WHERE merchant = ?1 AND name = ?2 AND version = ?3)
                 ON CONFLICT (merchant, name, version, engine) DO UPDATE SET compiled = excluded.compiled",
                params![merchant, name, version, engine, compiled],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_plugin(&self, merchant: &str, name: &str) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = conn
                .execute("DELETE FROM plugins WHERE merchant = ?1 AND name = ?2", params![merchant, name])?;
            for sql in [
                "DELETE FROM plugin_versions WHERE merchant = ?1 AND name = ?2",
                "DELETE FROM plugin_compiled WHERE merchant = ?1 AND name = ?2",
                "DELETE FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2",
                "DELETE FROM plugin_canaries WHERE merchant = ?1 AND name = ?2",
            ] {
                conn.execute(sql, params![merchant, name])?;
            }
            Ok(n == 1)
        })
        .await
    }
}

impl SqliteStore {
    /// A stored version with the compiled artifact of `engine`: `version`, or the active one.
    async fn stored_at(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        let (merchant, name, engine) = (merchant.to_string(), name.to_string(), engine.to_string());
        self.read(move |conn| {
            conn.query_row(
                "SELECT v.version, v.wasm, c.compiled, v.sha256, v.source, v.created_at_ms
                 FROM plugins p JOIN plugin_versions v
                   ON v.merchant = p.merchant AND v.name = p.name AND v.version = COALESCE(?4, p.active_version)
                 LEFT JOIN plugin_compiled c
                   ON c.merchant = v.merchant AND c.name = v.name AND c.version = v.version AND c.engine = ?3
                 WHERE p.merchant = ?1 AND p.name = ?2",
                params![merchant, name, engine, version],
                |r| {
                    let wasm: Vec<u8> = r.get(1)?;
                    Ok(StoredPlugin {
                        version: r.get(0)?,
                        compiled: r.get(2)?,
                        info: PluginVersionInfo {
                            version: r.get(0)?,
                            sha256: r.get(3)?,
                            size: wasm.len(),
                            source: r.get(4)?,
                            created_at_ms: r.get(5)?,
                        },
                        wasm: Bytes::from(wasm),
                    })
                },
            )
            .optional()
        })
        .await
    }
}

/// A canary from its five columns (version, percent, state, reason, at_ms) starting at `at`.
fn canary_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Canary> {
    Ok(Canary {
        version: r.get(at)?,
        percent: r.get(at + 1)?,
        state: r.get(at + 2)?,
        reason: r.get(at + 3)?,
        at_ms: r.get(at + 4)?,
    })
}

#[async_trait]
impl AdminQueries for SqliteStore {
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut add = |clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
            if let Some(m) = filter.merchant {
                add(" AND merchant = ?", m.into());
            }
            if let Some(s) = filter.status {
                add(concat!(" AND ", crate::event_status!(), " = ?"), s.into());
            }
            if let Some(t) = filter.event_type {
                add(" AND event_type = ?", t.into());
            }
            if let Some(e) = filter.endpoint {
                add(" AND endpoint = ?", e.into());
            }
            if let Some((at, merchant, scope, id)) = filter.before {
                // Keyset paging on (received_at_ms, merchant, scope, id), newest first.
                add(" AND (received_at_ms, merchant, scope, id) < (?", at.into());
                add(", ?", merchant.into());
                add(", ?", scope.into());
                add(", ?)", id.into());
            }
            add(
                " ORDER BY received_at_ms DESC, merchant DESC, scope DESC, id DESC LIMIT ?",
                (filter.limit.clamp(1, 1000) as i64).into(),
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), summary)?;
            rows.collect()
        })
        .await
    }

    async fn find_events(
        &self,
        merchant: Option<&str>,
        scope: Option<&str>,
        id: &str,
        limit: usize,
    ) -> Result<Vec<EventKey>, StoreError> {
        let (merchant, scope, id) = (merchant.map(str::to_string), scope.map(str::to_string), id.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, scope FROM events
                 WHERE id = ?1 AND (?2 IS NULL OR merchant = ?2) AND (?3 IS NULL OR scope = ?3)
                 ORDER BY merchant, scope LIMIT ?4",
            )?
            .query_map(params![id, merchant, scope, limit as i64], |r| {
                Ok(EventKey::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?, id.clone()))
            })?
            .collect()
        })
        .await
    }

    async fn get_event(&self, key: &EventKey) -> Result<Option<EventDetail>, StoreError> {
        let key = key.clone();
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, body, headers, request_id, order_key FROM events
                         WHERE merchant = ?1 AND scope = ?2 AND id = ?3"
                    ),
                    params![key.merchant, key.scope, key.id],
                    |r| {
                        let body: Vec<u8> = r.get(SUMMARY_WIDTH)?;
                        let headers: String = r.get(SUMMARY_WIDTH + 1)?;
                        let order_key: Option<String> = r.get(SUMMARY_WIDTH + 3)?;
                        Ok((summary(r)?, body, headers, r.get::<_, String>(SUMMARY_WIDTH + 2)?, order_key))
                    },
                )
                .optional()?;
            let Some((summary, body, headers, request_id, order_key)) = found else { return Ok(None) };
            let plugin_step = conn
                .prepare_cached(concat!(
                    "SELECT status, attempts, next_attempt_at_ms, error, routes FROM plugin_steps
                     WHERE event_seq = ",
                    seq_of_key!()
                ))?
                .query_row(params![key.merchant, key.scope, key.id], |r| {
                    let status: String = r.get(0)?;
                    let next: i64 = r.get(2)?;
                    Ok(StepInfo {
                        next_attempt_at_ms: (status == "pending").then_some(next),
                        status,
                        attempts: r.get(1)?,
                        error: r.get(3)?,
                        routes: r.get::<_, Option<String>>(4)?.and_then(|t| serde_json::from_str(&t).ok()),
                    })
                })
                .optional()?;
            let deliveries = conn
                .prepare_cached(concat!(
                    "SELECT upstream, status, attempts, next_attempt_at_ms FROM deliveries WHERE event_seq = ",
                    seq_of_key!(),
                    " ORDER BY upstream"
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    let status: String = r.get(1)?;
                    let next: i64 = r.get(3)?;
                    Ok(DeliveryInfo {
                        upstream: r.get(0)?,
                        next_attempt_at_ms: (status == "pending").then_some(next),
                        status,
                        attempts: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let attempts = conn
                .prepare_cached(concat!(
                    // The filed attempts, then each delivery's latest (the newest of its own).
                    "SELECT upstream, number, at_ms, duration_ms, status_code, error, response FROM (
                         SELECT upstream, number, at_ms, duration_ms, status_code, error, response,
                                0 AS latest, rowid AS filed
                         FROM attempts WHERE merchant = ?1 AND scope = ?2 AND event_id = ?3
                         UNION ALL
                         SELECT upstream, attempts, last_at_ms, last_duration_ms, last_status_code, last_error,
                                last_response, 1, 0
                         FROM deliveries WHERE event_seq = ",
                    seq_of_key!(),
                    " AND last_at_ms IS NOT NULL)
                     ORDER BY at_ms, latest, filed, upstream",
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    Ok(AttemptInfo {
                        upstream: r.get(0)?,
                        number: r.get(1)?,
                        at_ms: r.get(2)?,
                        duration_ms: r.get(3)?,
                        status_code: r.get(4)?,
                        error: r.get(5)?,
                        response: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let plugin_runs = conn
                .prepare_cached(concat!(
                    "SELECT plugin, version, attempt, at_ms, duration_us, fuel_used, outcome, detail, logs
                     FROM plugin_runs WHERE event_seq = ",
                    seq_of_key!(),
                    " ORDER BY at_ms, rowid"
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    Ok(PluginRunInfo {
                        plugin: r.get(0)?,
                        version: r.get(1)?,
                        attempt: r.get(2)?,
                        at_ms: r.get(3)?,
                        duration_us: r.get(4)?,
                        fuel_used: r.get::<_, i64>(5)? as u64,
                        outcome: r.get(6)?,
                        detail: r.get(7)?,
                        logs: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(EventDetail {
                summary,
                body: String::from_utf8_lossy(&body).into_owned(),
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                request_id,
                order_key,
                plugin_step,
                deliveries,
                attempts,
                plugin_runs,
            }))
        })
        .await
    }

    async fn replay(
        &self,
        key: &EventKey,
        first_hop: &Hop,
        now_ms: i64,
        forced_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (key, first_hop, forced_by) = (key.clone(), first_hop.clone(), forced_by.map(str::to_string));
        // After now: an attempt under way leaves the replayed rows alone (`takes_outcome!`).
        let due_at_ms = crate::replayed_due_at(now_ms);
        self.write(move |conn| {
            let k = params![key.merchant, key.scope, key.id];
            let seq: Option<i64> = conn
                .query_row("SELECT seq FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3", k, |r| r.get(0))
                .optional()?;
            let Some(seq) = seq else { return Ok(false) };
            if let Some(who) = &forced_by {
                conn.execute(
                    "UPDATE events SET forced_by = ?4 WHERE merchant = ?1 AND scope = ?2 AND id = ?3",
                    params![key.merchant, key.scope, key.id, who],
                )?;
            }
            let has_step: bool =
                conn.query_row("SELECT COUNT(*) > 0 FROM plugin_steps WHERE event_seq = ?1", [seq], |r| r.get(0))?;
            // The attempts so far stay in the event's history; the rows start over or go.
            file_latest_attempts(conn, &key)?;
            if has_step || first_hop == Hop::Plugins {
                // The plugins decide again (perhaps a fixed version): what they created goes.
                conn.execute("DELETE FROM deliveries WHERE event_seq = ?1", [seq])?;
                conn.execute(
                    "UPDATE plugin_steps SET status = 'pending', attempts = 0, next_attempt_at_ms = ?2, error = NULL
                     WHERE event_seq = ?1",
                    params![seq, due_at_ms],
                )?;
                add_first_hop(conn, &key, seq, &Hop::Plugins, due_at_ms)?;
                conn.execute(
                    "UPDATE events SET status = 'queued', reason = NULL WHERE merchant = ?1 AND scope = ?2 AND id = ?3",
                    k,
                )?;
                return Ok(true);
            }
            conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at_ms = ?2 WHERE event_seq = ?1",
                params![seq, due_at_ms],
            )?;
            add_first_hop(conn, &key, seq, &first_hop, due_at_ms)?;
            settle_event(conn, &key)?;
            Ok(true)
        })
        .await
    }

    async fn held_keys(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<HeldKey>, StoreError> {
        let merchant = merchant.map(str::to_string);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&crate::ordering::held_keys("seq", "?1", "?2"))?;
            let rows = stmt.query_map(params![merchant, limit as i64], held_key)?;
            rows.collect()
        })
        .await
    }

    async fn skip_in_order(&self, key: &EventKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            conn.execute(&crate::ordering::skip("?1", "?2", "?3"), params![key.merchant, key.scope, key.id])
                .map(|n| n > 0)
        })
        .await
    }
}

fn held_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldKey> {
    let status: String = r.get(4)?;
    Ok(HeldKey {
        merchant: r.get(0)?,
        key: r.get(1)?,
        event_id: r.get(2)?,
        scope: r.get(3)?,
        attempts: r.get(5)?,
        next_attempt_at_ms: if status == "dead" { None } else { r.get(6)? },
        status,
        waiting: r.get::<_, i64>(7)?.max(0) as u64,
    })
}

#[async_trait]
impl Lifecycle for SqliteStore {
    async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError> {
        self.write_with(Priority::Background(1), move |conn| {
            // Room for a real write, not just the one-row stamp: a full database (max_size_mb,
            // or a full disk) may still update a row in place while refusing every event. The
            // blob is deleted in the same transaction; only the room is tried.
            conn.prepare_cached("INSERT INTO health_room (room) VALUES (zeroblob(?1))")?
                .execute(params![READY_ROOM_BYTES])?;
            conn.prepare_cached("DELETE FROM health_room")?.execute([])?;
            conn.prepare_cached(
                "INSERT INTO health (id, checked_at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_at_ms = excluded.checked_at_ms",
            )?
            .execute(params![now_ms])
            .map(drop)
        })
        .await
    }

    async fn close(&self) {
        self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// A store in `dir`, its WAL written ahead by 1 MiB rather than the default's 128.
    fn config_in(dir: &tempfile::TempDir) -> StoreConfig {
        StoreConfig {
            path: dir.path().join("db").display().to_string(),
            wal_prefill_mb: 1,
            ..StoreConfig::default()
        }
    }

    /// A store opened (and so upgraded) on a database in `dir` that an older gateway left as
    /// `older` made it.
    fn opened_after(dir: &tempfile::TempDir, older: &str) -> SqliteStore {
        let config = config_in(dir);
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch(older).unwrap();
        drop(conn);
        SqliteStore::open(&config, Arc::new(())).unwrap()
    }

    async fn open() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Arc::new(SqliteStore::open(&config_in(&dir), Arc::new(())).unwrap()), dir)
    }

    crate::conformance_tests!(open);

    /// Counts commits.
    #[derive(Default)]
    struct Commits(std::sync::atomic::AtomicUsize);

    impl CommitObserver for Commits {
        fn committed(&self, _took: std::time::Duration) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// With no acknowledgement waiting, background writes are committed `BACKGROUND_ALONE_BATCH`
    /// records at a time, not a whole batch (512): an acknowledgement that arrives meanwhile
    /// waits for no more than that. 600 queued at once are three commits (256, 256, 88).
    #[test]
    fn background_writes_alone_are_committed_a_bounded_share_at_a_time() {
        let (jobs, queued) = mpsc::channel::<Box<dyn WriteJob>>();
        let mut answers = Vec::new();
        for _ in 0..600 {
            let (reply, answer) = oneshot::channel();
            let work = |conn: &Connection| conn.execute_batch("SELECT 1");
            jobs.send(Box::new(Job { priority: Priority::Background(1), work, result: None, reply }))
                .unwrap();
            answers.push(answer);
        }
        drop(jobs);
        let commits = Commits::default();
        let conn = Connection::open_in_memory().unwrap();
        let delay = CommitDelay::new(std::time::Duration::ZERO);
        writer_loop(conn, queued, 512, delay, &commits, &AtomicBool::new(false));
        assert_eq!(commits.0.load(Ordering::Relaxed), 3);
        assert!(answers.into_iter().all(|a| a.blocking_recv().is_ok_and(|r| r.is_ok())), "every write done");
    }

    /// A plugin step weighs what it writes and reads in the writer's batches, so a step with
    /// many kv keys shares a batch with acknowledgements as that many records would.
    #[test]
    fn a_plugin_step_weighs_its_rows_in_the_writers_batches() {
        let k = EventKey::new("acme", "/wh", "evt_heavy");
        let plain = crate::conformance::step(&k, 1, 1, AttemptOutcome::Delivered, &["legacy"]);
        let base = step_records(&plain);
        assert_eq!((plain.runs.len(), plain.deliveries.len()), (1, 1));
        assert_eq!(base, 3, "the step, its run and its delivery");
        let write = |i: usize| crate::KvWrite {
            plugin: "p".into(),
            key: format!("k{i}"),
            value: vec![1],
            version: 1,
        };
        let read = |i: usize| crate::KvReadOf { plugin: "p".into(), key: format!("r{i}"), found: None };
        let heavy =
            PluginStep { kv: (0..1000).map(write).collect(), kv_read: (0..10).map(read).collect(), ..plain };
        assert_eq!(step_records(&heavy), base + 1010);
    }

    /// A store whose writer waits `delay_ms` for company, and its commit count.
    fn open_delayed(delay_ms: u64) -> (Arc<SqliteStore>, Arc<Commits>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { commit_delay_us: delay_ms * 1000, ..config_in(&dir) };
        let commits = Arc::new(Commits::default());
        (Arc::new(SqliteStore::open(&config, commits.clone()).unwrap()), commits, dir)
    }

    /// A new event `id` of acme's, stored only.
    fn stored(id: &str) -> NewEvent {
        stored_with(id, Bytes::from_static(b"{}"), 0)
    }

    fn stored_with(id: &str, body: Bytes, received_at_ms: i64) -> NewEvent {
        let key = EventKey::new("acme", "/wh", id);
        let event = Event {
            key,
            endpoint: "/wh".into(),
            event_type: None,
            body,
            received_at_ms,
            request_id: "req".into(),
            ordered: false,
        };
        NewEvent {
            event,
            status: EventStatus::Stored,
            reason: None,
            headers: Vec::new(),
            first_hop: None,
            order_key: None,
            claim_until_ms: None,
        }
    }

    /// A delivered attempt leaves its event's row alone unless the event has an ordering key,
    /// whose scans read a key's history by the row's status; the event reads as delivered
    /// either way.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_delivered_event_is_settled_as_read_and_only_an_ordered_ones_row_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let key = |id: &str| EventKey::new("acme", "/wh", id);
        for (id, order_key) in [("evt_plain", None), ("evt_ordered", Some("cus_1".to_string()))] {
            let new = NewEvent {
                first_hop: Some(Hop::Upstream("legacy".into())),
                order_key,
                status: EventStatus::Queued,
                ..stored(id)
            };
            store.insert_event(new).await.unwrap();
            let attempt = Attempt {
                key: key(id),
                event_seq: None,
                ordered: true,
                claimed_until_ms: None,
                info: AttemptInfo {
                    upstream: "legacy".into(),
                    number: 1,
                    at_ms: 1,
                    duration_ms: 3,
                    status_code: Some(200),
                    error: None,
                    response: None,
                },
                outcome: AttemptOutcome::Delivered,
            };
            store.record_attempts(vec![Arc::new(attempt)]).await.unwrap();
        }
        let row = |id: &str| {
            Connection::open(&config.path)
                .unwrap()
                .query_row("SELECT status FROM events WHERE id = ?1", [id], |r| r.get::<_, String>(0))
                .unwrap()
        };
        assert_eq!(row("evt_plain"), "queued", "the row is not rewritten");
        assert_eq!(row("evt_ordered"), "delivered");
        for id in ["evt_plain", "evt_ordered"] {
            let detail = store.get_event(&key(id)).await.unwrap().unwrap();
            assert_eq!(detail.summary.status, "delivered", "{id}");
        }
    }

    /// `events` and `deliveries` as released before events were numbered, with their indexes.
    const BY_KEY_TABLES: &str = "
        CREATE TABLE events (
            merchant TEXT NOT NULL, scope TEXT NOT NULL, id TEXT NOT NULL, endpoint TEXT NOT NULL,
            event_type TEXT, status TEXT NOT NULL, reason TEXT, body BLOB NOT NULL, headers TEXT NOT NULL,
            request_id TEXT NOT NULL, received_at_ms BIGINT NOT NULL, claimed_at_ms BIGINT, tags TEXT,
            forced_by TEXT, order_key TEXT, PRIMARY KEY (merchant, scope, id));
        CREATE TABLE deliveries (
            merchant TEXT NOT NULL, scope TEXT NOT NULL, event_id TEXT NOT NULL, upstream TEXT NOT NULL,
            status TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at_ms BIGINT NOT NULL, body BLOB,
            headers TEXT, last_at_ms BIGINT, last_duration_ms BIGINT, last_status_code INTEGER,
            last_error TEXT, last_response TEXT, PRIMARY KEY (merchant, scope, event_id, upstream));
        CREATE INDEX events_by_time ON events (received_at_ms);
        CREATE INDEX events_in_order ON events (merchant, order_key, status) WHERE order_key IS NOT NULL;
        CREATE INDEX deliveries_pending ON deliveries (upstream, next_attempt_at_ms) WHERE status = 'pending';";

    /// An upgrade from the release that keyed deliveries by their event's key loses nothing:
    /// each event keeps its arrival order, each delivery its state and latest attempt, and the
    /// queue goes on from where it was. A delivery whose event is gone is left behind.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_database_from_before_event_numbers_keeps_its_order_deliveries_and_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch(BY_KEY_TABLES).unwrap();
        // Arrival order c, a, b: not the ids' order.
        conn.execute_batch(
            "INSERT INTO events (merchant, scope, id, endpoint, status, body, headers, request_id, received_at_ms,
                                 order_key)
                 VALUES ('acme', '/wh', 'evt_c', '/wh', 'queued', X'7B7D', '[]', 'r1', 100, NULL),
                        ('acme', '/wh', 'evt_a', '/wh', 'queued', X'7B7D', '[]', 'r2', 200, NULL),
                        ('acme', '/wh', 'evt_b', '/wh', 'queued', X'7B7D', '[]', 'r3', 300, 'cus_1');
             INSERT INTO deliveries (merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms,
                                     last_at_ms, last_duration_ms, last_status_code, last_error)
                 VALUES ('acme', '/wh', 'evt_c', 'up', 'pending', 0, 1000, NULL, NULL, NULL, NULL),
                        ('acme', '/wh', 'evt_a', 'up', 'delivered', 1, 200, 500, 4, 200, NULL),
                        ('acme', '/wh', 'evt_b', 'up', 'pending', 2, 2000, 600, 5, 503, 'busy'),
                        ('acme', '/wh', 'evt_gone', 'up', 'pending', 0, 100, NULL, NULL, NULL, NULL);",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let key = |id: &str| EventKey::new("acme", "/wh", id);
        let conn = Connection::open(&config.path).unwrap();
        let numbered: Vec<(i64, String)> = conn
            .prepare("SELECT seq, id FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(numbered, [(1, "evt_c".into()), (2, "evt_a".into()), (3, "evt_b".into())]);
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 3, "the delivery of no event is left behind");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for index in ["deliveries_pending", "events_by_time", "events_in_order"] {
            assert!(indexes.iter().any(|i| i == index), "{index} is rebuilt: {indexes:?}");
        }

        let due = store.due_deliveries("up", 10_000, None, 10).await.unwrap();
        let due: Vec<(&str, u32)> = due.iter().map(|d| (d.event.key.id.as_str(), d.attempts)).collect();
        assert_eq!(due, [("evt_c", 0), ("evt_b", 2)]);
        let a = store.get_event(&key("evt_a")).await.unwrap().unwrap();
        assert_eq!(a.summary.status, "delivered");
        assert_eq!(
            a.attempts.iter().map(|t| (t.number, t.status_code)).collect::<Vec<_>>(),
            [(1, Some(200))]
        );

        let delivered = |id: &str, number: u32| {
            Arc::new(Attempt {
                key: key(id),
                event_seq: None,
                ordered: true,
                claimed_until_ms: None,
                info: AttemptInfo {
                    upstream: "up".into(),
                    number,
                    at_ms: 3_000,
                    duration_ms: 3,
                    status_code: Some(200),
                    error: None,
                    response: None,
                },
                outcome: AttemptOutcome::Delivered,
            })
        };
        store.record_attempts(vec![delivered("evt_c", 1), delivered("evt_b", 3)]).await.unwrap();
        let b = store.get_event(&key("evt_b")).await.unwrap().unwrap();
        assert_eq!(b.summary.status, "delivered");
        let b_attempts: Vec<_> = b.attempts.iter().map(|t| (t.number, t.status_code)).collect();
        assert_eq!(b_attempts, [(2, Some(503)), (3, Some(200))], "the attempt from before is filed");
        assert_eq!(store.get_event(&key("evt_c")).await.unwrap().unwrap().summary.status, "delivered");
        let again =
            store.insert_event(NewEvent { status: EventStatus::Queued, ..stored("evt_c") }).await.unwrap();
        assert!(matches!(again, Inserted::Duplicate(EventStatus::Delivered)), "{again:?}");
        assert!(store.due_deliveries("up", i64::MAX, None, 10).await.unwrap().is_empty());
        store.close().await;

        // A second start-up finds nothing to do.
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        assert_eq!(store.get_event(&key("evt_b")).await.unwrap().unwrap().attempts.len(), 2);
        store.close().await;
    }

    /// A first attempt lives on its delivery's row: no `attempts` row of its own. The second
    /// files the first there. A database from before, whose attempts are all in the table and
    /// whose rows hold none, lists them as it did.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_first_attempt_is_kept_on_its_delivery_row_and_filed_when_the_next_one_comes() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let filed = || {
            Connection::open(&config.path)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let key = |id: &str| EventKey::new("acme", "/wh", id);
        let attempt = |id: &str, number: u32, status: u16, outcome| {
            Arc::new(Attempt {
                key: key(id),
                event_seq: None,
                ordered: true,
                claimed_until_ms: None,
                info: AttemptInfo {
                    upstream: "legacy".into(),
                    number,
                    at_ms: number as i64,
                    duration_ms: 3,
                    status_code: Some(status),
                    error: None,
                    response: Some(format!("reply {number}")),
                },
                outcome,
            })
        };
        for id in ["evt_once", "evt_twice"] {
            let new = NewEvent { first_hop: Some(Hop::Upstream("legacy".into())), ..stored(id) };
            store.insert_event(new).await.unwrap();
        }
        store.record_attempts(vec![attempt("evt_once", 1, 200, AttemptOutcome::Delivered)]).await.unwrap();
        assert_eq!(filed(), 0, "a first attempt that succeeds writes no row of its own");
        let once = store.get_event(&key("evt_once")).await.unwrap().unwrap();
        assert_eq!(once.attempts.len(), 1);
        let a = &once.attempts[0];
        assert_eq!(
            (&a.upstream[..], a.number, a.at_ms, a.duration_ms, a.status_code, a.response.as_deref()),
            ("legacy", 1, 1, 3, Some(200), Some("reply 1"))
        );

        let retry = AttemptOutcome::Retry { next_at_ms: 10 };
        store.record_attempts(vec![attempt("evt_twice", 1, 503, retry)]).await.unwrap();
        store.record_attempts(vec![attempt("evt_twice", 2, 200, AttemptOutcome::Delivered)]).await.unwrap();
        assert_eq!(filed(), 1, "the first, filed when the second took its place");
        let twice = store.get_event(&key("evt_twice")).await.unwrap().unwrap();
        let shown: Vec<_> = twice.attempts.iter().map(|a| (a.number, a.status_code)).collect();
        assert_eq!(shown, [(1, Some(503)), (2, Some(200))]);

        // As a gateway from before wrote it: the attempts in the table, nothing on the row.
        store.close().await;
        Connection::open(&config.path)
            .unwrap()
            .execute_batch(
                "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code)
                     SELECT merchant, scope, event_id, upstream, attempts, last_at_ms, last_duration_ms,
                            last_status_code FROM deliveries WHERE last_at_ms IS NOT NULL;
                 UPDATE deliveries SET last_at_ms = NULL;",
            )
            .unwrap();
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let twice = store.get_event(&key("evt_twice")).await.unwrap().unwrap();
        let shown: Vec<_> = twice.attempts.iter().map(|a| (a.number, a.status_code)).collect();
        assert_eq!(shown, [(1, Some(503)), (2, Some(200))]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_soon_after_a_commit_wait_to_share_the_next_one() {
        let (store, commits, _dir) = open_delayed(500);
        store.insert_event(stored("evt_1")).await.unwrap();
        assert_eq!(commits.0.load(Ordering::Relaxed), 1, "the first write goes at once");
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.insert_event(stored("evt_2")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let third = store.insert_event(stored("evt_3")).await.unwrap();
        assert!(matches!((second.await.unwrap().unwrap(), third), (Inserted::New(_), Inserted::New(_))));
        assert_eq!(commits.0.load(Ordering::Relaxed), 2, "the second write waited for the third");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_due_index_holds_pending_deliveries_only_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        SqliteStore::open(&config_in(&dir), Arc::new(())).unwrap().close().await;
        // A database from before: the index over every delivery.
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE INDEX deliveries_due ON deliveries (upstream, status, next_attempt_at_ms)")
            .unwrap();
        let store = SqliteStore::open(&config_in(&dir), Arc::new(())).unwrap();
        let indexes: Vec<(String, String)> = store
            .reader
            .lock()
            .unwrap()
            .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'deliveries' AND sql IS NOT NULL")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(indexes.len(), 1, "{indexes:?}");
        assert_eq!(indexes[0].0, "deliveries_pending");
        assert!(indexes[0].1.ends_with("WHERE status = 'pending'"), "{}", indexes[0].1);
    }

    /// Regression: every due scan was parsed and planned again (SQLite's `LIMIT ?` marked the
    /// cached statement to be re-prepared whenever a value was bound to it).
    #[tokio::test(flavor = "multi_thread")]
    async fn regression_a_due_scan_is_planned_once_not_on_every_run() {
        let (store, _commits, _dir) = open_delayed(0);
        for limit in [10, 20, 10] {
            store.due_deliveries("up", 0, None, limit).await.unwrap();
        }
        let reader = store.reader.lock().unwrap();
        let stmt = reader.prepare_cached(&due_sql("")).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lone_client_writing_one_after_another_is_not_held_up_by_the_commit_delay() {
        let (store, commits, _dir) = open_delayed(300);
        let started = std::time::Instant::now();
        for i in 0..20 {
            store.insert_event(stored(&format!("evt_{i}"))).await.unwrap();
        }
        // Each write waiting would take 19 × 300 ms; the first wait finds nobody and stops
        // the waits but for one probe in `PROBE_EVERY`.
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(2_000), "20 sequential writes took {took:?}");
        assert_eq!(commits.0.load(Ordering::Relaxed), 20);
    }

    /// Regression: under writes without a lull the WAL file only grew (1.3 GB in 20 s at
    /// 4,000 events/s), because SQLite starts it over only when a write finds every frame
    /// checkpointed, which never happened while commits kept landing mid-checkpoint. Sixteen
    /// writers here keep the writer busy for several checkpoint intervals; the WAL must start
    /// over and be cut back while they write, and every event must still be there.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_wal_starts_over_under_writes_without_a_lull() {
        let (store, dir) = open().await;
        let wal = dir.path().join("db-wal");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(3000);
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut written = 0;
                    while std::time::Instant::now() < until {
                        let new = stored_with(
                            &format!("evt_{w}_{written}"),
                            Bytes::from(vec![b'x'; 2048]),
                            written,
                        );
                        assert!(matches!(store.insert_event(new).await.unwrap(), Inserted::New(_)));
                        written += 1;
                    }
                    written
                })
            })
            .collect();
        let (mut largest, mut cut_back) = (0, false);
        while std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            cut_back |= size < largest;
            largest = largest.max(size);
        }
        let mut written = 0;
        for w in writers {
            written += w.await.unwrap();
        }
        assert!(
            largest > WAL_KEPT_BYTES as u64,
            "the writers filled the WAL past its bound ({largest} bytes)"
        );
        assert!(
            cut_back,
            "the WAL never started over while {written} events were written (largest {largest} bytes)"
        );
        let conn = Connection::open(dir.path().join("db")).unwrap();
        let stored: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, written, "every acknowledged event is stored");
    }

    /// A database from before plugin steps had a table of their own: each `@plugins` delivery
    /// becomes its event's step (pending ones still due, failed ones with their last error),
    /// and nothing of the sentinel is left among deliveries or attempts.
    #[tokio::test(flavor = "multi_thread")]
    async fn plugin_steps_kept_as_sentinel_deliveries_are_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let key = |id: &str| EventKey::new("acme", "/wh", id);
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        for id in ["evt_waiting", "evt_failed"] {
            let event = Event {
                key: key(id),
                endpoint: "/wh".into(),
                event_type: None,
                body: Bytes::from_static(b"{}"),
                received_at_ms: 1_000,
                request_id: "req".into(),
                ordered: false,
            };
            let new = NewEvent {
                event,
                status: EventStatus::Queued,
                reason: None,
                headers: Vec::new(),
                first_hop: None,
                order_key: None,
                claim_until_ms: None,
            };
            store.insert_event(new).await.unwrap();
        }
        store.close().await;
        // What the older gateway wrote: its rows, in the tables of today.
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch(
            "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms)
                 SELECT seq, merchant, scope, id, '@plugins', CASE id WHEN 'evt_waiting' THEN 'pending' ELSE 'dead' END,
                        CASE id WHEN 'evt_waiting' THEN 0 ELSE 2 END, CASE id WHEN 'evt_waiting' THEN 1000 ELSE 1500 END
                 FROM events;
             INSERT INTO attempts VALUES ('acme', '/wh', 'evt_failed', '@plugins', 1, 1000, 5, NULL, 'p: trap', NULL);
             INSERT INTO attempts VALUES ('acme', '/wh', 'evt_failed', '@plugins', 2, 1500, 5, NULL, 'p: timeout', NULL);",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let due = store.due_steps(1_000, None, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.event.key.id.as_str()).collect::<Vec<_>>(), ["evt_waiting"]);
        let failed = store.get_event(&key("evt_failed")).await.unwrap().unwrap();
        let step = failed.plugin_step.clone().expect("the step is kept");
        assert_eq!((&step.status[..], step.attempts, step.error.as_deref()), ("dead", 2, Some("p: timeout")));
        assert!(failed.deliveries.is_empty() && failed.attempts.is_empty(), "{failed:?}");
        assert!(store.due_deliveries("@plugins", i64::MAX, None, 10).await.unwrap().is_empty());
        store.close().await;
    }

    /// `plugin_steps` and `plugin_runs` as released before they named their event by number.
    const STEPS_BY_KEY_TABLES: &str = "
        DROP TABLE plugin_steps;
        DROP TABLE plugin_runs;
        CREATE TABLE plugin_steps (
            merchant TEXT NOT NULL, scope TEXT NOT NULL, event_id TEXT NOT NULL, status TEXT NOT NULL,
            attempts INTEGER NOT NULL, next_attempt_at_ms BIGINT NOT NULL, error TEXT, routes TEXT,
            PRIMARY KEY (merchant, scope, event_id));
        CREATE TABLE plugin_runs (
            merchant TEXT NOT NULL, scope TEXT NOT NULL, event_id TEXT NOT NULL, plugin TEXT NOT NULL,
            version INTEGER NOT NULL, attempt INTEGER NOT NULL, at_ms BIGINT NOT NULL, duration_us BIGINT NOT NULL,
            fuel_used BIGINT NOT NULL, outcome TEXT NOT NULL, detail TEXT, logs TEXT NOT NULL);
        CREATE INDEX plugin_steps_due ON plugin_steps (status, next_attempt_at_ms);
        CREATE INDEX plugin_runs_by_key ON plugin_runs (merchant, scope, event_id);";

    /// An upgrade from the release that kept plugin steps and runs under their event's key
    /// loses nothing: each step keeps its state and is due as before, each run is listed in its
    /// order, and a step's record after the upgrade takes it. Rows of an event that is gone are
    /// left behind, and the old index goes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_database_whose_plugin_steps_are_keyed_by_event_key_keeps_its_steps_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let key = |id: &str| EventKey::new("acme", "/wh", id);
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        for id in ["evt_b", "evt_a"] {
            store.insert_event(NewEvent { status: EventStatus::Queued, ..stored(id) }).await.unwrap();
        }
        store.close().await;
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch(STEPS_BY_KEY_TABLES).unwrap();
        conn.execute_batch(
            "INSERT INTO plugin_steps VALUES ('acme', '/wh', 'evt_a', 'pending', 1, 5000, 'p: trap', NULL),
                                             ('acme', '/wh', 'evt_b', 'done', 1, 100, NULL, '[\"route[0]: up\"]'),
                                             ('acme', '/wh', 'evt_gone', 'pending', 0, 100, NULL, NULL);
             INSERT INTO plugin_runs VALUES ('acme', '/wh', 'evt_a', 'p', 1, 1, 100, 7, 70, 'trap', 'oops', '[]'),
                                            ('acme', '/wh', 'evt_b', 'p', 1, 1, 100, 8, 80, 'continue', NULL, '[]'),
                                            ('acme', '/wh', 'evt_a', 'q', 2, 1, 100, 9, 90, 'continue', NULL, '[]'),
                                            ('acme', '/wh', 'evt_gone', 'p', 1, 1, 100, 1, 1, 'continue', NULL, '[]');",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        let conn = Connection::open(&config.path).unwrap();
        let steps: Vec<(i64, String)> = conn
            .prepare("SELECT s.event_seq, e.id FROM plugin_steps s JOIN events e ON e.seq = s.event_seq ORDER BY 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(steps, [(1, "evt_b".into()), (2, "evt_a".into())], "each step under its event's number");
        let orphans: i64 = conn
            .query_row("SELECT COUNT(*) FROM plugin_runs WHERE event_id = 'evt_gone'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(orphans, 0, "the run of no event is left behind");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name LIKE 'plugin_%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(indexes.iter().any(|i| i == "plugin_runs_by_seq"), "{indexes:?}");
        assert!(!indexes.iter().any(|i| i == "plugin_runs_by_key"), "{indexes:?}");

        let due = store.due_steps(5_000, None, 10).await.unwrap();
        assert_eq!(
            due.iter().map(|d| (d.event.key.id.as_str(), d.attempts)).collect::<Vec<_>>(),
            [("evt_a", 1)]
        );
        let a = store.get_event(&key("evt_a")).await.unwrap().unwrap();
        let step = a.plugin_step.clone().expect("the step is kept");
        assert_eq!((&step.status[..], step.attempts, step.error.as_deref()), ("pending", 1, Some("p: trap")));
        let runs: Vec<(&str, &str)> =
            a.plugin_runs.iter().map(|r| (r.plugin.as_str(), r.outcome.as_str())).collect();
        assert_eq!(runs, [("p", "trap"), ("q", "continue")], "in their order");
        let b = store.get_event(&key("evt_b")).await.unwrap().unwrap();
        assert_eq!(b.plugin_step.unwrap().routes, Some(vec!["route[0]: up".to_string()]));

        // The step's next run is recorded on the row it was moved to.
        let finished = PluginStep {
            key: key("evt_a"),
            event_seq: Some(due[0].seq),
            number: 2,
            at_ms: 5_000,
            step: AttemptOutcome::Delivered,
            error: None,
            runs: Vec::new(),
            kv: Vec::new(),
            kv_read: Vec::new(),
            status: EventStatus::Dropped,
            reason: Some("not ours".into()),
            deliveries: Vec::new(),
            tags: Vec::new(),
            routes: None,
            claimed_until_ms: None,
        };
        store.finish_plugin_step(finished).await.unwrap();
        assert!(store.due_steps(i64::MAX, None, 10).await.unwrap().is_empty());
        let a = store.get_event(&key("evt_a")).await.unwrap().unwrap();
        assert_eq!((a.summary.status.as_str(), a.plugin_step.unwrap().attempts), ("dropped", 2));
        store.close().await;

        // A second start-up finds nothing to do.
        let store = SqliteStore::open(&config, Arc::new(())).unwrap();
        assert_eq!(store.get_event(&key("evt_a")).await.unwrap().unwrap().plugin_runs.len(), 2);
        store.close().await;
    }

    /// A database from before compiled code was kept per engine: its versions stay, active and
    /// loadable, and the one artifact each had (of an unknown engine) is not offered to any.
    #[tokio::test(flavor = "multi_thread")]
    async fn plugin_versions_with_one_compiled_artifact_are_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // The older gateway's table, as it made it.
        let store = opened_after(
            &dir,
            "CREATE TABLE plugin_versions (merchant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                 sha256 TEXT NOT NULL, wasm BLOB NOT NULL, compiled BLOB NOT NULL, source TEXT NOT NULL,
                 created_at_ms BIGINT NOT NULL, PRIMARY KEY (merchant, name, version));
             CREATE TABLE plugins (merchant TEXT NOT NULL, name TEXT NOT NULL, active_version INTEGER,
                 file_sha256 TEXT, PRIMARY KEY (merchant, name));
             INSERT INTO plugin_versions VALUES ('acme', 'p', 1, 'abc', X'0061736d', X'01020304', 'upload', 5);
             INSERT INTO plugins VALUES ('acme', 'p', 1, NULL);",
        );
        let active = store.active_plugin("acme", "p", "engine-a").await.unwrap().expect("still active");
        assert_eq!((active.version, &active.wasm[..], active.compiled), (1, &b"\0asm"[..], None));
        store.save_compiled("acme", "p", 1, "engine-a", vec![7; 4]).await.unwrap();
        let active = store.active_plugin("acme", "p", "engine-a").await.unwrap().unwrap();
        assert_eq!(active.compiled, Some(vec![7; 4]));
        store.close().await;
    }

    /// A database from before kv writes carried versions: its keys load as version 0, and the
    /// first versioned write replaces them.
    #[tokio::test(flavor = "multi_thread")]
    async fn plugin_kv_from_before_versions_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = opened_after(
            &dir,
            "CREATE TABLE plugin_kv (merchant TEXT NOT NULL, plugin TEXT NOT NULL, key TEXT NOT NULL,
                 value BLOB NOT NULL, PRIMARY KEY (merchant, plugin, key));
             INSERT INTO plugin_kv VALUES ('acme', 'ledger', 'total', X'35303030');",
        );
        let total =
            |value: &str, version| KvEntry { key: "total".into(), value: value.into(), version, writer: 0 };
        assert_eq!(store.load_kv("acme", "ledger").await.unwrap(), [total("5000", 0)]);
        let k = EventKey::new("acme", "/wh", "evt_after_upgrade");
        store.insert_event(crate::conformance::event(&k, 1, Some(Hop::Plugins))).await.unwrap();
        let write = crate::KvWrite {
            plugin: "ledger".into(),
            key: "total".into(),
            value: b"5700".to_vec(),
            version: 1,
        };
        let step = PluginStep {
            kv: vec![write],
            kv_read: Vec::new(),
            ..crate::conformance::step(&k, 1, 1, AttemptOutcome::Delivered, &[])
        };
        assert_eq!(store.finish_plugin_step(step).await.unwrap(), StepRecorded::Applied);
        assert_eq!(store.load_kv("acme", "ledger").await.unwrap(), [total("5700", 1)]);
        store.close().await;
    }
}
