//! The backend's own tests: the conformance suite on a new SQLite file, and what only this
//! backend has (upgrades of older databases, the writer's batches, the WAL's bounds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use payflow_config::StoreConfig;
use payflow_store::Store;
use payflow_store::{
    AdminQueries, Attempt, AttemptInfo, AttemptOutcome, CommitObserver, DeliveryQueue, Event, EventKey,
    EventStatus, Hop, Ingest, Inserted, KvEntry, KvReadOf, KvWrite, Lifecycle, NewEvent, PluginStep,
    PluginStore, StepRecorded,
};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::WAL_KEPT_BYTES;
use crate::commit_delay::CommitDelay;
use crate::queue::due_sql;
use crate::step_record::step_records;
use crate::writer::{writer_loop, Job, Priority, WriteJob};
use crate::SqliteStore;

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

payflow_store::conformance_tests!(open);

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
        jobs.send(Box::new(Job { priority: Priority::shared(1), work, result: None, reply })).unwrap();
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

/// Runs the writer loop over `writes` (a name and a priority each), all queued before it
/// starts so that they wait at once; the names in the order they were written, and how many
/// commits that took.
fn write_in_turns(writes: Vec<(String, Priority)>) -> (Vec<String>, usize) {
    let (jobs, queued) = mpsc::channel::<Box<dyn WriteJob>>();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut answers = Vec::new();
    for (name, priority) in writes {
        let (reply, answer) = oneshot::channel();
        let order = order.clone();
        let work = move |_: &Connection| {
            order.lock().unwrap().push(name.clone());
            Ok(())
        };
        jobs.send(Box::new(Job { priority, work, result: None, reply })).unwrap();
        answers.push(answer);
    }
    drop(jobs);
    let commits = Commits::default();
    let conn = Connection::open_in_memory().unwrap();
    let delay = CommitDelay::new(std::time::Duration::ZERO);
    writer_loop(conn, queued, 512, delay, &commits, &AtomicBool::new(false));
    assert!(answers.into_iter().all(|a| a.blocking_recv().is_ok_and(|r| r.is_ok())), "every write done");
    let order = std::mem::take(&mut *order.lock().unwrap());
    (order, commits.0.load(Ordering::Relaxed))
}

/// The names starting with `prefix`, in the order written.
fn written<'a>(order: &'a [String], prefix: &str) -> Vec<&'a str> {
    order.iter().filter(|w| w.starts_with(prefix)).map(String::as_str).collect()
}

/// Queues `count` writes of "big" with `heavy`, then one of "small" with `light`, and runs the
/// writer: small's must be written second and big's in their order. How many commits it took.
fn one_light_write_behind_many_heavy(count: usize, heavy: Priority, light: Priority) -> usize {
    let big: Vec<_> = (0..count).map(|i| format!("big-{i}")).collect();
    let mut writes: Vec<_> = big.iter().map(|name| (name.clone(), heavy.clone())).collect();
    writes.push(("small".into(), light));
    let (order, commits) = write_in_turns(writes);
    assert_eq!(order.iter().position(|w| w == "small"), Some(1), "{order:?}");
    assert_eq!(written(&order, "big"), big, "big's writes in their order");
    commits
}

/// Regression (one merchant's heavy plugin steps held up another's): background writes were
/// taken first come first served, so a merchant whose plugin writes a thousand kv keys a run
/// put its whole backlog of steps ahead of another merchant's. Now the other's step is
/// committed after one of the heavy ones, and the heavy ones keep their order.
#[test]
fn a_merchants_step_waits_behind_one_of_anothers_heavy_steps_not_all_of_them() {
    let step = |merchant: &str, records| Priority::Background { records, owner: Some(merchant.into()) };
    let commits = one_light_write_behind_many_heavy(10, step("big", 1001), step("small", 3));
    // Each heavy step is a commit of its own (more than a batch's share of records), and so
    // is small's, between two of them.
    assert_eq!(commits, 11);
}

/// Regression (a sender of large events held up another merchant's acknowledgements): a
/// batch took every acknowledgement waiting, first come first served, so another merchant's
/// ack waited for a transaction of up to sixty-four 256 KiB events, and for the one before.
/// Now a batch carries about 2 MiB of events, taken in turn between merchants: the other's ack
/// is in the first batch, and the large events keep their order.
#[test]
fn a_merchants_ack_waits_for_a_bounded_commit_not_anothers_backlog_of_large_events() {
    let commits = one_light_write_behind_many_heavy(
        64,
        Priority::event("big", payflow_store::ROW_BYTES + (256 << 10)),
        Priority::event("small", payflow_store::ROW_BYTES + 1_000),
    );
    // Seven 256 KiB events (and some) to a commit of 2 MiB: ten commits for 64, not one.
    assert_eq!(commits, 10);
}

/// A plugin step weighs what it writes and reads in the writer's batches, so a step with
/// many kv keys shares a batch with acknowledgements as that many records would.
#[test]
fn a_plugin_step_weighs_its_rows_in_the_writers_batches() {
    let k = EventKey::new("acme", "/wh", "evt_heavy");
    let plain = payflow_store::conformance::step(&k, 1, 1, AttemptOutcome::Delivered, &["legacy"]);
    let base = step_records(&plain);
    assert_eq!((plain.runs.len(), plain.deliveries.len()), (1, 1));
    assert_eq!(base, 3, "the step, its run and its delivery");
    let write = |i: usize| KvWrite { plugin: "p".into(), key: format!("k{i}"), value: vec![1], version: 1 };
    let read = |i: usize| KvReadOf { plugin: "p".into(), key: format!("r{i}"), found: None };
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
    assert_eq!(a.attempts.iter().map(|t| (t.number, t.status_code)).collect::<Vec<_>>(), [(1, Some(200))]);

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
async fn the_due_indexes_hold_pending_rows_only_and_replace_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    SqliteStore::open(&config_in(&dir), Arc::new(())).unwrap().close().await;
    // A database from before: the indexes over every delivery and every plugin step.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE INDEX deliveries_due ON deliveries (upstream, status, next_attempt_at_ms);
             DROP INDEX plugin_steps_pending;
             CREATE INDEX plugin_steps_due ON plugin_steps (status, next_attempt_at_ms);",
        )
        .unwrap();
    let store = SqliteStore::open(&config_in(&dir), Arc::new(())).unwrap();
    for (table, pending) in [("deliveries", "deliveries_pending"), ("plugin_steps", "plugin_steps_pending")] {
        let indexes: Vec<(String, String)> = store
            .reader
            .lock()
            .unwrap()
            .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")
            .unwrap()
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(indexes.len(), 1, "{indexes:?}");
        assert_eq!(indexes[0].0, pending);
        assert!(indexes[0].1.ends_with("WHERE status = 'pending'"), "{}", indexes[0].1);
    }
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
                    let new =
                        stored_with(&format!("evt_{w}_{written}"), Bytes::from(vec![b'x'; 2048]), written);
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
    assert!(largest > WAL_KEPT_BYTES as u64, "the writers filled the WAL past its bound ({largest} bytes)");
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
        .prepare(
            "SELECT s.event_seq, e.id FROM plugin_steps s JOIN events e ON e.seq = s.event_seq ORDER BY 1",
        )
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
    assert_eq!(due.iter().map(|d| (d.event.key.id.as_str(), d.attempts)).collect::<Vec<_>>(), [("evt_a", 1)]);
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
    store.insert_event(payflow_store::conformance::event(&k, 1, Some(Hop::Plugins))).await.unwrap();
    let write = KvWrite { plugin: "ledger".into(), key: "total".into(), value: b"5700".to_vec(), version: 1 };
    let step = PluginStep {
        kv: vec![write],
        kv_read: Vec::new(),
        ..payflow_store::conformance::step(&k, 1, 1, AttemptOutcome::Delivered, &[])
    };
    assert_eq!(store.finish_plugin_step(step).await.unwrap(), StepRecorded::Applied);
    assert_eq!(store.load_kv("acme", "ledger").await.unwrap(), [total("5700", 1)]);
    store.close().await;
}
