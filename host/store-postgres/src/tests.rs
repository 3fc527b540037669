//! The backend's own tests, on a throw-away PostgreSQL server: the conformance suite, and what
//! only this backend has: replicas sharing one database (settles, kv spaces and their turns),
//! batches of plugin steps, statement plans that stay index lookups as tables grow, claims by
//! event number, and upgrades from the previous release's schema while it still runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use payflow_store::{
    AdminQueries, Attempt, AttemptInfo, AttemptOutcome, DeliveryQueue, Event, EventStatus, Hop, Ingest,
    KvRead, NewEvent, PluginStore, Store,
};

use super::*;
use crate::server::TestServer;

/// One server for the test binary; a fresh database per test.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = TestServer::start();
        // A static is never dropped: without this, every run of these tests left a
        // PostgreSQL server running, with its data directory, behind it.
        server.stop_when_this_process_exits();
        server
    })
}

async fn open() -> (Arc<dyn Store>, ()) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url = server().database(&format!("conformance_{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let store = connected(&url).await;
    (Arc::new(store), ())
}

payflow_store::conformance_tests!(open);

/// Two replicas on one fresh database, and a client to read its rows as they are.
async fn two_replicas(name: &str) -> (PostgresStore, PostgresStore, tokio_postgres::Client) {
    let url = server().database(name);
    let open = || PostgresStore::connect(&url, PostgresOptions::default(), Arc::new(()));
    let (one, two) = (open().await.expect("connects"), open().await.expect("connects"));
    (one, two, client_of(&url).await)
}

fn key(id: &str) -> EventKey {
    EventKey::new("acme", "/wh", id)
}

/// An event queued for upstream `a`, with a second delivery pending to `b` when `fanned`.
async fn queued(
    store: &PostgresStore,
    db: &tokio_postgres::Client,
    id: &str,
    order_key: Option<&str>,
    fanned: bool,
) {
    let new = NewEvent {
        event: Event {
            key: key(id),
            endpoint: "/wh".into(),
            event_type: Some("payment.succeeded".into()),
            body: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
            received_at_ms: 1,
            request_id: format!("req_{id}"),
            ordered: order_key.is_some(),
        },
        status: EventStatus::Queued,
        reason: None,
        headers: Vec::new(),
        first_hop: Some(Hop::Upstream("a".into())),
        order_key: order_key.map(str::to_string),
        claim_until_ms: None,
    };
    store.insert_event(new).await.unwrap();
    if fanned {
        db.execute(
            "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms)
             SELECT seq, merchant, scope, id, 'b', 'pending', 0, 1 FROM events WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    }
}

fn attempt(id: &str, upstream: &str, outcome: AttemptOutcome) -> Vec<Arc<Attempt>> {
    let status_code = Some(if outcome == AttemptOutcome::Delivered { 200 } else { 400 });
    let info = AttemptInfo {
        upstream: upstream.into(),
        number: 1,
        at_ms: 2,
        duration_ms: 3,
        status_code,
        error: None,
        response: None,
    };
    vec![Arc::new(Attempt {
        key: key(id),
        event_seq: None,
        ordered: true,
        claimed_until_ms: None,
        info,
        outcome,
    })]
}

async fn row_status(db: &tokio_postgres::Client, id: &str) -> String {
    db.query_one("SELECT status FROM events WHERE id = $1", &[&id]).await.unwrap().get(0)
}

/// `n` events written straight into the tables, each with a delivery to `a` due.
async fn with_deliveries_due(db: &tokio_postgres::Client, n: i32) {
    db.execute(
        "INSERT INTO events (merchant, scope, id, endpoint, status, body, headers, request_id, received_at_ms)
             SELECT 'acme', '/wh', 'evt_' || i, '/wh', 'queued', '', '[]', 'req', i FROM generate_series(1, $1) i",
        &[&n],
    )
    .await
    .unwrap();
    db.batch_execute(
        "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                 next_attempt_at_ms)
             SELECT seq, merchant, scope, id, 'a', 'pending', 0, received_at_ms FROM events",
    )
    .await
    .unwrap();
}

/// `plan` of `sql` on `db` under the transaction's `settings`: PREPAREd, then `EXPLAIN
/// EXECUTE` with a batch of 130 keys in each array parameter (`$n::type[]`).
async fn plan(db: &tokio_postgres::Client, settings: &str, sql: &str) -> String {
    let mut args = Vec::new();
    while let Some(at) = sql.find(&format!("${}::", args.len() + 1)) {
        let ty = sql[at..].split("::").nth(1).and_then(|t| t.split("[]").next()).unwrap().to_string();
        let items: Vec<String> = (1..=130)
            .map(|i| match ty.as_str() {
                "text" => format!("evt_{i}"),
                "bool" => "f".to_string(),
                _ => i.to_string(),
            })
            .collect();
        args.push(format!("'{{{}}}'::{ty}[]", items.join(",")));
    }
    plan_of(db, settings, sql, &args.join(", ")).await
}

/// The plan of `sql` on `db` under the transaction's `settings`, PREPAREd, then `EXPLAIN
/// EXECUTE`d with `args` (SQL literals): [`plan`] with arguments of the caller's.
async fn plan_of(db: &tokio_postgres::Client, settings: &str, sql: &str, args: &str) -> String {
    db.batch_execute(&format!("BEGIN; {settings}; PREPARE p AS {sql}")).await.unwrap();
    let rows = db.simple_query(&format!("EXPLAIN EXECUTE p({args})")).await.unwrap();
    db.batch_execute("DEALLOCATE p; ROLLBACK").await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The record statements (deliveries' outcomes and plugin steps') that join a batch's keys
/// against a table look each key up by index, on a plan made once, even where a scan and a
/// hash join look cheaper to the planner than 130 lookups: 30,000 rows that autovacuum has
/// not analyzed yet (a new database's first minute). Planned for each batch with the
/// planner free, the four of deliveries' outcomes scanned such tables whole, at about twice
/// the cost (bench/RESULTS.md).
#[tokio::test(flavor = "multi_thread")]
async fn record_statements_look_keys_up_by_index_where_a_scan_looks_cheaper() {
    let url = server().database("keyed_plans");
    let _migrated = connected(&url).await;
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    with_deliveries_due(&db, 30_000).await;
    let keyed = [
        record::LOCK_EVENTS,
        record::UPDATE_DELIVERIES,
        record::SETTLING_DELIVERIES,
        record::SETTLE_EVENTS,
        step_record::UPDATE_STEPS,
        step_record::STEP_ROWS,
        step_record::UPDATE_EVENTS,
    ];
    // The test can fail: left free, the planner scans at least one of them here.
    let mut free = String::new();
    for sql in keyed {
        free += &plan(&db, "SET LOCAL plan_cache_mode = force_custom_plan", sql).await;
    }
    assert!(free.contains("Seq Scan"), "the planner, left free, scans none of the tables:\n{free}");
    for sql in keyed {
        let keyed_plan = plan(&db, record::KEYED_PLANS, sql).await;
        assert!(
            !keyed_plan.contains("Seq Scan")
                && (keyed_plan.contains("Index Scan") || keyed_plan.contains("Index Only Scan")),
            "{sql}\n{keyed_plan}"
        );
    }
}

/// The kv statements reach each index only for what it is for, on plans made once before
/// the table's statistics caught up with a space that grew (a generic plan, as the step
/// batches' transactions use and a pool connection may come to): the check of the keys a
/// step batch's runs read goes by key; the read of what changed since goes by change
/// number, and the keys it is asked for by key. When the change numbers' index led with the
/// space's two columns, the check took it on such a plan and read the whole space for each
/// key: 6,000 rows per key and ~0.2 s per batch, under the space's lock (bench/RESULTS.md,
/// thirty-sixth look). With `key = ANY(…)`, the read of the keys asked for read the whole
/// space too.
#[tokio::test(flavor = "multi_thread")]
async fn a_kv_lookup_by_key_planned_before_a_space_grew_never_reads_the_whole_space() {
    let url = server().database("kv_plans");
    let _migrated = connected(&url).await;
    let db = client_of(&url).await;
    db.batch_execute(
        "INSERT INTO plugin_kv (merchant, plugin, key, value, version, change)
             SELECT 'acme', 'ledger', 'customer_' || i, '0', 1, i FROM generate_series(1, 6000) i",
    )
    .await
    .unwrap();
    let by_key = "'{acme,acme}', '{ledger,ledger}', '{customer_1,customer_2}'";
    let by_key = plan_of(&db, record::KEYED_PLANS, step_record::KV_NOW, by_key).await;
    assert!(by_key.contains("plugin_kv_pkey") && !by_key.contains("plugin_kv_by_change"), "{by_key}");
    let since = "'acme', 'ledger', 1, 0, 0, 3, '{customer_1}'";
    let since = plan_of(&db, record::KEYED_PLANS, plugins::KV_CHANGED_SINCE, since).await;
    let index_conditions: Vec<&str> = since.lines().filter(|l| l.contains("Index Cond")).collect();
    assert!(
        since.matches("plugin_kv_by_change").count() == 2
            && index_conditions.iter().any(|l| l.contains("(change > $6)"))
            && index_conditions.iter().any(|l| l.contains("(key = a.key)"))
            && !since.contains("Filter: (key"),
        "the highest number and the rows above it by change number, the keys asked for by key:\n{since}"
    );
}

/// A delivered attempt rewrites no unordered event's row (a new row version, and an entry in
/// each of its indexes); the event still reads as delivered. An ordered event's row is
/// marked, since the ordered scans read it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivered_event_is_settled_as_read_and_only_an_ordered_ones_row_is_rewritten() {
    let (store, _, db) = two_replicas("settled_as_read").await;
    for (id, order_key) in [("evt_plain", None), ("evt_ordered", Some("cus_1"))] {
        queued(&store, &db, id, order_key, false).await;
        store.record_attempts(attempt(id, "a", AttemptOutcome::Delivered)).await.unwrap();
    }
    assert_eq!(row_status(&db, "evt_plain").await, "queued", "the row is not rewritten");
    assert_eq!(row_status(&db, "evt_ordered").await, "delivered");
    for id in ["evt_plain", "evt_ordered"] {
        assert_eq!(store.get_event(&key(id)).await.unwrap().unwrap().summary.status, "delivered", "{id}");
    }
}

/// Two replicas record an event's two outcomes at the same moment. A dead one makes the
/// event dead whatever the other's order, though the delivered one locks nothing; an
/// ordered event's two deliveries leave its row delivered, each replica's settle waiting
/// for the other's (without that lock each would see the other's delivery pending, and
/// the key's later events would wait behind it for good).
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_settling_one_event_at_once_leave_it_as_its_deliveries_say() {
    let (one, two, db) = two_replicas("settled_at_once").await;
    const EVENTS: usize = 24;
    for i in 0..EVENTS {
        queued(&one, &db, &format!("evt_dead_{i}"), None, true).await;
        queued(&one, &db, &format!("evt_ordered_{i}"), Some(&format!("cus_{i}")), true).await;
    }
    for i in 0..EVENTS {
        let (dead, ordered) = (format!("evt_dead_{i}"), format!("evt_ordered_{i}"));
        // Alternate which replica records which outcome, so that either may commit first.
        let (x, y) = if i % 2 == 0 { (&one, &two) } else { (&two, &one) };
        let (r1, r2, r3, r4) = tokio::join!(
            x.record_attempts(attempt(&dead, "a", AttemptOutcome::Delivered)),
            y.record_attempts(attempt(&dead, "b", AttemptOutcome::Dead)),
            x.record_attempts(attempt(&ordered, "a", AttemptOutcome::Delivered)),
            y.record_attempts(attempt(&ordered, "b", AttemptOutcome::Delivered)),
        );
        for recorded in [r1, r2, r3, r4] {
            recorded.unwrap();
        }
    }
    for i in 0..EVENTS {
        let (dead, ordered) = (format!("evt_dead_{i}"), format!("evt_ordered_{i}"));
        assert_eq!(one.get_event(&key(&dead)).await.unwrap().unwrap().summary.status, "dead", "{dead}");
        assert_eq!(row_status(&db, &ordered).await, "delivered", "{ordered}");
    }
}

/// The count `sql` returns.
async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// A new unordered event `id` whose first hop is the plugins.
fn to_the_plugins(id: &str) -> NewEvent {
    NewEvent {
        event: Event {
            key: key(id),
            endpoint: "/wh".into(),
            event_type: None,
            body: Bytes::from_static(b"{}"),
            received_at_ms: 1,
            request_id: "req".into(),
            ordered: false,
        },
        status: EventStatus::Queued,
        reason: None,
        headers: Vec::new(),
        first_hop: Some(Hop::Plugins),
        order_key: None,
        claim_until_ms: None,
    }
}

/// A step that decided to deliver to `up`, for the event `id` (run 1, under no claim).
fn forwarding_step(id: &str) -> payflow_store::PluginStep {
    payflow_store::PluginStep {
        key: key(id),
        event_seq: None,
        number: 1,
        at_ms: 2,
        step: AttemptOutcome::Delivered,
        error: None,
        runs: vec![payflow_store::PluginRunInfo {
            plugin: "enrich".into(),
            version: 1,
            attempt: 1,
            at_ms: 2,
            duration_us: 40,
            fuel_used: 1000,
            outcome: "continue".into(),
            detail: None,
            logs: Vec::new(),
        }],
        kv: Vec::new(),
        kv_read: Vec::new(),
        status: EventStatus::Forwarding,
        reason: None,
        deliveries: vec![payflow_store::NewDelivery::to("up")],
        tags: Vec::new(),
        routes: None,
        claimed_until_ms: None,
    }
}

/// A replica reads, of a plugin's kv space, only the keys written since its last read, and
/// only once another wrote to the space: it counts the changes the others made, never its
/// own. A start folds every count into one row (no row per replica that ever ran), which
/// moves every replica's count but changes no key. A key deleted (a repair, the plugin
/// deleted) leaves no row to read: the space is read whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reads_only_the_keys_others_wrote_since_and_the_whole_space_after_a_delete() {
    let url = server().database("kv_changes");
    let (one, two, db) = (connected(&url).await, connected(&url).await, client_of(&url).await);
    async fn write(store: &PostgresStore, id: &str, keys: &[&str], value: &str) {
        let mut step = forwarding_step(id);
        step.kv = keys
            .iter()
            .map(|key| payflow_store::KvWrite {
                plugin: "ledger".into(),
                key: key.to_string(),
                value: value.into(),
                version: 1,
            })
            .collect();
        store.insert_event(to_the_plugins(id)).await.unwrap();
        store.finish_plugin_step(step).await.unwrap();
    }
    async fn since(store: &PostgresStore, read: &KvRead) -> Option<KvRead> {
        store.kv_changed_since("acme", "ledger", read.changes, &[]).await.unwrap()
    }
    let keys = |read: &KvRead| {
        let mut keys: Vec<String> = read.entries.iter().map(|e| e.key.clone()).collect();
        keys.sort();
        keys
    };
    let fill: Vec<String> = (0..50).map(|i| format!("customer_{i:02}")).collect();
    let fill: Vec<&str> = fill.iter().map(String::as_str).collect();
    write(&one, "evt_fill", &fill, "0").await;
    let (read_one, read_two) = (
        one.load_kv_space("acme", "ledger").await.unwrap(),
        two.load_kv_space("acme", "ledger").await.unwrap(),
    );
    assert_eq!((read_one.entries.len(), read_two.entries.len()), (50, 50));
    assert_eq!(
        (read_one.changes.elsewhere, read_two.changes.elsewhere),
        (0, 1),
        "one's own write is not a change for it"
    );

    write(&one, "evt_one", &["total"], "1").await;
    let one_now = since(&one, &read_one).await.unwrap();
    assert_eq!(one_now.changes.elsewhere, 0, "still its own");
    let two_now = since(&two, &read_two).await.unwrap();
    assert_eq!(keys(&two_now), ["total"], "the key one wrote since, not the 50 before");
    assert_eq!(two_now.entries[0].value, b"1");
    assert_eq!(two_now.changes.elsewhere, 2);
    assert_eq!(since(&two, &two_now).await.unwrap().entries, [], "nothing since that read");

    write(&two, "evt_two", &["total", "customer_07"], "2").await;
    let one_now = since(&one, &one_now).await.unwrap();
    assert_eq!(keys(&one_now), ["customer_07", "total"]);
    assert!(one_now.entries.iter().all(|e| e.value == b"2" && e.writer == two.kv_writer));

    let _three = connected(&url).await;
    let rows: i64 = db.query_one("SELECT count(*) FROM plugin_kv_changes", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "folded into one row");
    let (one_folded, two_folded) =
        (since(&one, &one_now).await.unwrap(), since(&two, &two_now).await.unwrap());
    assert!(
        one_folded.changes.elsewhere > one_now.changes.elsewhere
            && two_folded.changes.elsewhere > two_now.changes.elsewhere,
        "{one_folded:?}, {two_folded:?}"
    );
    assert!(keys(&one_folded).is_empty(), "no key changed");
    assert_eq!(keys(&two_folded), ["customer_07", "total"], "its own write since its last read");

    assert!(one.delete_kv("acme", "ledger", "total").await.unwrap());
    assert_eq!((since(&one, &one_folded).await, since(&two, &two_folded).await), (None, None), "a repair");
    let (one_read, two_read) = (
        one.load_kv_space("acme", "ledger").await.unwrap(),
        two.load_kv_space("acme", "ledger").await.unwrap(),
    );
    assert_eq!((one_read.entries.len(), two_read.entries.len()), (50, 50));
    assert!(one.delete_plugin("acme", "ledger").await.is_ok());
    assert_eq!(
        (since(&one, &one_read).await, since(&two, &two_read).await),
        (None, None),
        "a deleted plugin"
    );
}

/// During a rolling upgrade, a replica of an earlier release keeps writing kv: one of the
/// release before the kv change counts (schema 12) without naming itself, one of the
/// release before the change numbers (schema 15) naming itself. Neither numbers its writes,
/// so a replica of this release cannot find them among the keys changed since its last
/// read: they count as changes it cannot list, and it reads the space whole rather than
/// run the plugin on its copy, also after the earlier release's start folded the counts.
/// The keys written before the upgrade load as they were.
#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_releases_kv_writes_make_a_replica_read_the_space_whole() {
    for (schema, names_itself) in [(12, false), (15, true)] {
        let (url, previous) = as_release_of_schema(&format!("kv_upgrade_from_{schema}"), schema).await;
        if names_itself {
            previous.batch_execute("SET payflow.kv_writer = '77'").await.unwrap();
        }
        let write = |value: &'static str| {
            let previous = &previous;
            async move {
                previous
                    .execute(
                        "INSERT INTO plugin_kv (merchant, plugin, key, value, version) VALUES ('acme', 'ledger', 'total', $1, 1)
                         ON CONFLICT (merchant, plugin, key) DO UPDATE SET value = excluded.value",
                        &[&value.as_bytes()],
                    )
                    .await
                    .unwrap()
            }
        };
        write("before").await;
        let store = connected(&url).await;
        let read = store.load_kv_space("acme", "ledger").await.unwrap();
        assert_eq!(read.entries.len(), 1);
        assert_eq!(read.entries[0].value, b"before");
        write("during").await;
        let since = store.kv_changed_since("acme", "ledger", read.changes, &[]).await.unwrap();
        assert_eq!(since, None, "schema {schema}: the earlier release's write is read whole");
        let read = store.load_kv_space("acme", "ledger").await.unwrap();
        assert_eq!(read.entries[0].value, b"during");
        assert!(store.kv_changed_since("acme", "ledger", read.changes, &[]).await.unwrap().is_some());
        if names_itself {
            previous.batch_execute(plugins::FOLD_ALL).await.unwrap();
        }
        write("after its start").await;
        let since = store.kv_changed_since("acme", "ledger", read.changes, &[]).await.unwrap();
        assert_eq!(since, None, "schema {schema}: again");
    }
}

/// Steps finishing together commit together; one the database refuses (its delivery names
/// an event that is not there) fails alone, and the others' batch is written again without
/// it: each recorded once, none lost, nothing of the refused one kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_plugin_steps_with_one_refused_records_every_other_step_once() {
    let url = server().database("steps_batch");
    let store = connected(&url).await;
    let db = client_of(&url).await;
    let ids: Vec<String> = (0..6).map(|i| format!("evt_step_{i}")).collect();
    for id in &ids {
        store.insert_event(to_the_plugins(id)).await.unwrap();
    }
    let mut steps: Vec<_> = ids.iter().map(|id| forwarding_step(id)).collect();
    steps.insert(3, forwarding_step("evt_not_stored"));

    let answers = step_record::record_batch(&store.pool, store.kv_writer, steps).await.unwrap();
    let refused: Vec<usize> =
        answers.iter().enumerate().filter(|(_, a)| a.is_err()).map(|(i, _)| i).collect();
    assert_eq!(refused, [3], "{answers:?}");
    for id in &ids {
        let detail = store.get_event(&key(id)).await.unwrap().unwrap();
        assert_eq!(detail.plugin_step.as_ref().map(|s| s.status.as_str()), Some("done"), "{id}");
        assert_eq!(detail.plugin_runs.len(), 1, "{id}: recorded once");
        assert_eq!(detail.deliveries.iter().map(|d| d.upstream.as_str()).collect::<Vec<_>>(), ["up"], "{id}");
    }
    let kept = count(&db, "SELECT COUNT(*) FROM plugin_runs WHERE event_id = 'evt_not_stored'").await;
    assert_eq!(kept, 0, "nothing of the refused step is kept");
    assert_eq!(store.due_deliveries("up", 10, None, 10).await.unwrap().len(), ids.len());
}

/// What one statement per table could get wrong in a batch, each written as one step after
/// another would leave it: two steps writing one kv key (the higher version wins though it
/// is the earlier step in key order and in the order given, and the batch commits whole);
/// one step creating two deliveries to one upstream (its last one stays); and a step whose
/// row was replayed since it began beside two that were not (only its run is kept).
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_plugin_steps_leaves_what_one_step_after_another_would() {
    let url = server().database("steps_batch_as_one");
    let store = connected(&url).await;
    let db = client_of(&url).await;
    for id in ["evt_a", "evt_b", "evt_replayed"] {
        store.insert_event(to_the_plugins(id)).await.unwrap();
    }
    let kv = |value: &[u8], version| {
        vec![payflow_store::KvWrite {
            plugin: "enrich".into(),
            key: "last".into(),
            value: value.to_vec(),
            version,
        }]
    };
    let delivery = |body: &'static [u8]| payflow_store::NewDelivery {
        body: Some(Bytes::from_static(body)),
        ..payflow_store::NewDelivery::to("up")
    };
    let b = payflow_store::PluginStep {
        kv: kv(b"from b", 1),
        deliveries: vec![delivery(b"first"), delivery(b"second")],
        ..forwarding_step("evt_b")
    };
    let a = payflow_store::PluginStep { kv: kv(b"from a", 2), ..forwarding_step("evt_a") };
    let replayed =
        payflow_store::PluginStep { kv: kv(b"from the replayed", 3), ..forwarding_step("evt_replayed") };
    // The replay, after the step began (at 2): its row is due later.
    db.execute("UPDATE plugin_steps SET next_attempt_at_ms = 3 WHERE event_id = 'evt_replayed'", &[])
        .await
        .unwrap();

    let answers =
        step_record::record_batch(&store.pool, store.kv_writer, vec![b, replayed, a]).await.unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    use payflow_store::StepRecorded::{Applied, SetAside};
    assert_eq!(answers, [Applied, SetAside, Applied], "each step's own answer, in the order given");
    assert_eq!(
        store.load_kv("acme", "enrich").await.unwrap(),
        [payflow_store::KvEntry {
            key: "last".into(),
            value: b"from a".to_vec(),
            version: 2,
            writer: store.kv_writer
        }],
        "the highest version wins, the replayed step's write is not applied"
    );
    let bodies: Vec<Vec<u8>> = db
        .query("SELECT body FROM deliveries WHERE event_id = 'evt_b'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies, [b"second".to_vec()], "the step's last delivery to the upstream");
    let replayed = store.get_event(&key("evt_replayed")).await.unwrap().unwrap();
    assert_eq!(replayed.summary.status, "queued", "{replayed:?}");
    assert!(replayed.deliveries.is_empty() && replayed.plugin_runs.len() == 1, "{replayed:?}");
    assert_eq!(replayed.plugin_step.map(|s| s.status), Some("pending".to_string()));
    for id in ["evt_a", "evt_b"] {
        let detail = store.get_event(&key(id)).await.unwrap().unwrap();
        assert_eq!(detail.summary.status, "forwarding", "{id}");
        assert_eq!(detail.plugin_step.map(|s| s.status), Some("done".to_string()), "{id}");
    }
}

/// Regression (a set-aside step's kv write counted in its batch): a step whose row was
/// replayed since it began writes no kv, yet in its batch's check its write counted for
/// the steps that read it, which then committed values built on a write never applied (a
/// ledger then counted the replayed event twice: once in the later totals, once more when
/// the replay ran). Those steps are stale now, and so is one that read theirs.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_read_a_set_aside_steps_kv_write_in_its_batch_is_stale() {
    let url = server().database("steps_read_set_aside");
    let store = connected(&url).await;
    let db = client_of(&url).await;
    let me = store.kv_writer;
    let ids = ["evt_set_aside", "evt_reads_it", "evt_reads_that"];
    for id in ids {
        store.insert_event(to_the_plugins(id)).await.unwrap();
    }
    // Each adds to the total what the one before left there, before any of them committed.
    let adding = |id: &str, found: Option<i64>, total: &str, version| payflow_store::PluginStep {
        kv: vec![payflow_store::KvWrite {
            plugin: "enrich".into(),
            key: "total".into(),
            value: total.into(),
            version,
        }],
        kv_read: vec![payflow_store::KvReadOf {
            plugin: "enrich".into(),
            key: "total".into(),
            found: found.map(|version| payflow_store::KvStamp { version, writer: me }),
        }],
        ..forwarding_step(id)
    };
    let steps = vec![
        adding(ids[2], Some(2), "15", 3),
        adding(ids[0], None, "5", 1),
        adding(ids[1], Some(1), "12", 2),
    ];
    // The replay, after the first step began (at 2): its row is due later.
    db.execute("UPDATE plugin_steps SET next_attempt_at_ms = 3 WHERE event_id = 'evt_set_aside'", &[])
        .await
        .unwrap();

    let answers = step_record::record_batch(&store.pool, me, steps).await.unwrap();
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    use payflow_store::StepRecorded::{SetAside, Stale};
    assert_eq!(answers, [Stale, SetAside, Stale], "each step's own answer, in the order given");
    assert_eq!(store.load_kv("acme", "enrich").await.unwrap(), [], "no total was written");
    for id in &ids[1..] {
        let detail = store.get_event(&key(id)).await.unwrap().unwrap();
        assert!(detail.plugin_runs.is_empty() && detail.deliveries.is_empty(), "{id}: {detail:?}");
        assert_eq!(detail.plugin_step.map(|s| s.status), Some("pending".to_string()), "{id}: runs again");
    }
    let set_aside = store.get_event(&key(ids[0])).await.unwrap().unwrap();
    assert_eq!(set_aside.plugin_runs.len(), 1, "only its run is kept: {set_aside:?}");
}

/// A kv space's turn is one replica's at a time: another asking waits until it is dropped,
/// or held past its time, and gets none past the store's wait. It is the space's alone (not
/// another space's, nor the lock the space's step batches take), and no pooled connection
/// keeps it after it is given up (and when given up with `give_up`, not even a moment).
#[tokio::test(flavor = "multi_thread")]
async fn a_kv_turn_is_one_replicas_at_a_time_until_given_up() {
    use std::time::Duration;
    let (one, two, db) = two_replicas("kv_turns").await;
    let long = Duration::from_secs(30);
    let first = one.kv_turn("acme", "enrich", long).await.unwrap().expect("nobody holds it");
    assert!(!first.waited());
    let other = two.kv_turn("acme", "ledger", long).await.unwrap().expect("another space's turn");
    assert!(!other.waited());
    let mut second = Box::pin(two.kv_turn("acme", "enrich", long));
    let waiting = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(waiting.is_err(), "it waits while the first is held");

    // The space's step batches do not wait for its turn.
    one.insert_event(to_the_plugins("evt_in_a_turn")).await.unwrap();
    let step = payflow_store::PluginStep {
        kv: vec![payflow_store::KvWrite {
            plugin: "enrich".into(),
            key: "seen".into(),
            value: b"1".to_vec(),
            version: 1,
        }],
        kv_read: vec![payflow_store::KvReadOf { plugin: "enrich".into(), key: "seen".into(), found: None }],
        ..forwarding_step("evt_in_a_turn")
    };
    let recorded = tokio::time::timeout(Duration::from_secs(5), one.finish_plugin_step(step)).await;
    assert_eq!(recorded.expect("not held up by the turn").unwrap(), payflow_store::StepRecorded::Applied);

    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(1), second).await.expect("given up when dropped");
    let second = second.unwrap().expect("taken");
    assert!(second.waited());
    let none = one.kv_turn("acme", "enrich", long).await.unwrap();
    assert!(none.is_none(), "no turn past the store's wait");

    let short = one.kv_turn("acme", "short", Duration::from_millis(100)).await.unwrap().unwrap();
    let after = tokio::time::timeout(Duration::from_millis(900), two.kv_turn("acme", "short", long)).await;
    let after = after.expect("given up by itself past its time").unwrap().expect("taken");
    assert!(after.waited());

    let mine = one.kv_turn("acme", "mine", long).await.unwrap().unwrap();
    mine.give_up().await;
    let next = one.kv_turn("acme", "mine", long).await.unwrap().unwrap();
    assert!(!next.waited(), "a turn given up is gone before the next is asked for");

    drop((short, after, second, other, next));
    let held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                WHERE l.locktype = 'advisory' AND d.datname = current_database()";
    for _ in 0..100 {
        if count(&db, held).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a connection still holds a turn: {} advisory locks", count(&db, held).await);
}

/// A replica holds kv turns on a quarter of its pool's connections at most: past that, a
/// turn is refused at once (the run goes without one), and ingest keeps its connections.
#[tokio::test(flavor = "multi_thread")]
async fn kv_turns_take_a_quarter_of_the_pool_at_most() {
    use std::time::Duration;
    let url = server().database("kv_turns_capped");
    let options = PostgresOptions { pool_size: 8, ..PostgresOptions::default() };
    let store = PostgresStore::connect(&url, options, Arc::new(())).await.expect("connects");
    let long = Duration::from_secs(30);
    let one = store.kv_turn("acme", "one", long).await.unwrap().expect("the first");
    let two = store.kv_turn("acme", "two", long).await.unwrap().expect("the second");
    let refused =
        tokio::time::timeout(Duration::from_millis(200), store.kv_turn("acme", "three", long)).await;
    assert!(refused.expect("at once").unwrap().is_none(), "a third of eight connections' turns");
    store.insert_event(to_the_plugins("evt_beside_turns")).await.unwrap();
    one.give_up().await;
    assert!(store.kv_turn("acme", "three", long).await.unwrap().is_some(), "one given up, one more");
    drop(two);
}

/// A step that changes nothing about its event (a first run that continued, untagged) does
/// not rewrite its row, as on SQLite; one that drops it, or tags it, does.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_step_rewrites_its_events_row_only_when_it_changes_it() {
    let url = server().database("steps_unchanged_event");
    let store = connected(&url).await;
    let db = client_of(&url).await;
    let version = |id: &'static str| {
        let db = &db;
        async move {
            let sql = "SELECT xmin::text FROM events WHERE id = $1";
            db.query_one(sql, &[&id]).await.unwrap().get::<_, String>(0)
        }
    };
    let continued =
        |id: &str| payflow_store::PluginStep { status: EventStatus::Queued, ..forwarding_step(id) };
    let steps = [
        ("evt_continued", continued("evt_continued"), false),
        (
            "evt_tagged",
            payflow_store::PluginStep { tags: vec!["vip".into()], ..continued("evt_tagged") },
            true,
        ),
        (
            "evt_dropped",
            payflow_store::PluginStep {
                status: EventStatus::Dropped,
                reason: Some("under min_amount".into()),
                deliveries: Vec::new(),
                ..forwarding_step("evt_dropped")
            },
            true,
        ),
    ];
    for (id, step, rewritten) in steps {
        store.insert_event(to_the_plugins(id)).await.unwrap();
        let before = version(id).await;
        store.finish_plugin_step(step).await.unwrap();
        assert_eq!(version(id).await != before, rewritten, "{id}");
    }
    let detail = store.get_event(&key("evt_dropped")).await.unwrap().unwrap();
    assert_eq!(detail.summary.status, "dropped");
    let tagged = store.get_event(&key("evt_tagged")).await.unwrap().unwrap();
    assert_eq!(tagged.summary.tags, ["vip"]);
}

/// Two steps of one event in one batch (proxy mode forwarding a duplicate twice at once)
/// are both recorded, one after the other: one statement per table could apply only one.
#[tokio::test(flavor = "multi_thread")]
async fn two_plugin_steps_of_one_event_in_one_batch_are_both_recorded() {
    let url = server().database("steps_batch_one_event");
    let store = connected(&url).await;
    store.insert_event(to_the_plugins("evt_twice")).await.unwrap();
    let second = payflow_store::PluginStep { number: 2, at_ms: 3, ..forwarding_step("evt_twice") };
    let answers =
        step_record::record_batch(&store.pool, store.kv_writer, vec![forwarding_step("evt_twice"), second])
            .await
            .unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let detail = store.get_event(&key("evt_twice")).await.unwrap().unwrap();
    assert_eq!(detail.plugin_runs.len(), 2, "{detail:?}");
    assert_eq!(detail.plugin_step.map(|s| s.attempts), Some(2), "the second, written after the first");
}

/// Every text column of an index on any table in the schema, and whether it compares in
/// byte order (its own query, not the one `collation.rs` converts by: a table that module
/// does not know of shows here).
async fn indexed_text_columns(db: &tokio_postgres::Client) -> Vec<(String, String, bool)> {
    let rows = db
        .query(
            "SELECT DISTINCT c.relname::text, a.attname::text, a.attcollation = 'pg_catalog.\"C\"'::regcollation
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
             WHERE n.nspname = 'public' AND a.atttypid = 'text'::regtype ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

/// A store on the database at `url`, with the default options (migrated on connecting).
async fn connected(url: &str) -> PostgresStore {
    PostgresStore::connect(url, PostgresOptions::default(), Arc::new(())).await.expect("connects")
}

async fn client_of(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

/// Waits until no client is connected to database `name` (at `url`): the backends of
/// closed connections end a moment after them, and would count as other clients.
async fn no_clients_left(url: &str, name: &str) {
    let postgres = client_of(&url.replace(&format!("/{name}"), "/postgres")).await;
    for _ in 0..200 {
        let row = postgres
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&name])
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("clients still connected to {name} after 10 s");
}

/// A new database, migrated, with its keys in the database's collation (as a release
/// before `collation.rs` left them), and no client connected; its URL.
async fn as_the_previous_release_left_it(name: &str) -> String {
    let url = server().database(name);
    let store = connected(&url).await;
    payflow_store::Lifecycle::close(&store).await;
    drop(store);
    let db = client_of(&url).await;
    for (table, column, _) in indexed_text_columns(&db).await {
        db.batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE text COLLATE \"default\""))
            .await
            .unwrap();
    }
    assert!(indexed_text_columns(&db).await.iter().all(|(_, _, bytes)| !bytes));
    drop(db);
    no_clients_left(&url, name).await;
    url
}

/// Replicas started together: while one converts under the migrations' lock, another
/// waiting for that lock is connected but has prepared nothing, and does not hold the
/// conversion back.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_waiting_to_migrate_does_not_hold_the_conversion_back() {
    let url = as_the_previous_release_left_it("keys_waiting_replica").await;
    let mut first = client_of(&url).await;
    first.execute("SELECT pg_advisory_lock($1)", &[&schema::MIGRATION_LOCK]).await.unwrap();
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { PostgresStore::connect(&url, PostgresOptions::default(), Arc::new(())).await.map(drop) }
    });
    let mut waiters = 0;
    for _ in 0..200 {
        let row = first
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'", &[])
            .await
            .unwrap();
        waiters = row.get::<_, i64>(0);
        if waiters == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(waiters, 1, "the second replica waits for the lock");
    let keys = collation::keys_in_byte_order(&mut first, false).await.unwrap();
    assert!(matches!(keys, KeyCollation::Converted { columns: 20, .. }), "{keys:?}");
    first.execute("SELECT pg_advisory_unlock($1)", &[&schema::MIGRATION_LOCK]).await.unwrap();
    waiting.await.unwrap().expect("the second replica starts");
    assert!(indexed_text_columns(&first).await.iter().all(|(_, _, bytes)| *bytes));
}

/// The test server's databases are in a language's collation (`server.rs`), so this fails
/// unless the keys were converted. Another client is connected from the start: the tables
/// are new, so it cannot hold a statement the conversion would break.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_database_compares_every_indexed_text_column_in_byte_order() {
    let url = server().database("keys_new");
    let other = client_of(&url).await;
    let _store = connected(&url).await;
    let columns = indexed_text_columns(&other).await;
    assert!(columns.len() >= 18, "every table's keys are there: {columns:?}");
    let unconverted: Vec<_> = columns.iter().filter(|(_, _, bytes)| !bytes).collect();
    assert!(unconverted.is_empty(), "in the database's collation: {unconverted:?}");
}

/// A database the previous release left with its keys in the database's collation, and a
/// replica of that release still connected, holding a prepared statement that returns a
/// key: a start-up leaves the keys as they are (converting them would make that statement
/// fail, and that replica answer 503), and the store works. The first start-up with no
/// other client connected converts them, and every event is still there, listed in byte
/// order.
#[tokio::test(flavor = "multi_thread")]
async fn keys_in_use_by_another_client_keep_their_collation_until_a_start_up_with_none() {
    let name = "keys_converted_later";
    let url = as_the_previous_release_left_it(name).await;
    let old = client_of(&url).await;
    let old_statement = old.prepare("SELECT id FROM events WHERE merchant = $1 ORDER BY id").await.unwrap();

    let mut starting = client_of(&url).await;
    let migrated = schema::migrate(&mut starting).await.unwrap();
    assert!(
        matches!(&migrated.keys, Ok(KeyCollation::Left { others: 1, collation, .. }) if collation == "en-US"),
        "left, for the one other client: {:?}",
        migrated.keys
    );
    let store = connected(&url).await;
    for id in ["evt_a", "evt_B"] {
        queued(&store, &old, id, None, false).await;
    }
    let ids = |rows: Vec<Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    assert_eq!(
        ids(old.query(&old_statement, &[&"acme"]).await.unwrap()),
        ["evt_a", "evt_B"],
        "its collation"
    );
    payflow_store::Lifecycle::close(&store).await;
    drop((store, old, starting));

    no_clients_left(&url, name).await;
    let mut starting = client_of(&url).await;
    let migrated = schema::migrate(&mut starting).await.unwrap();
    assert!(matches!(migrated.keys, Ok(KeyCollation::Converted { .. })), "converted: {:?}", migrated.keys);
    assert!(indexed_text_columns(&starting).await.iter().all(|(_, _, bytes)| *bytes));
    let store = connected(&url).await;
    let listed =
        store.list_events(payflow_store::EventFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["evt_a", "evt_B"], "byte order");
}

/// The columns of `table`'s primary key, in order.
async fn primary_key(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    db.query(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = $1::text::regclass AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The names of `table`'s indexes, in order.
async fn indexes_of(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let rows = db
        .query("SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1", &[&table])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The triggers on our tables that keep rows keyed for an earlier release, by name (not
/// those that count changes to the plugins' kv spaces, which stay).
async fn triggers(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgrelid <> 'plugin_kv'::regclass
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A new database keys each delivery, attempt, plugin step and plugin run by its event's
/// number alone, even with another client connected from the start: the tables are new, so
/// no replica of an earlier release uses them.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_database_keys_each_delivery_attempt_step_and_run_by_its_events_number() {
    let url = server().database("numbers_new");
    let other = client_of(&url).await;
    let _store = connected(&url).await;
    assert_eq!(primary_key(&other, "deliveries").await, ["event_seq", "upstream"]);
    assert_eq!(indexes_of(&other, "attempts").await, ["attempts_by_event", "attempts_pkey"]);
    assert_eq!(primary_key(&other, "plugin_steps").await, ["event_seq"]);
    assert_eq!(indexes_of(&other, "plugin_steps").await, ["plugin_steps_claimable", "plugin_steps_pkey"]);
    assert_eq!(indexes_of(&other, "plugin_runs").await, ["plugin_runs_by_event", "plugin_runs_pkey"]);
    assert!(triggers(&other).await.is_empty(), "{:?}", triggers(&other).await);
}

/// Each new event puts an entry at a random place (by the sender's id) of one index: its
/// key, which leads with the id and so also serves a lookup by id alone. The others are
/// appended to (by number, by time) or hold only ordered events.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_event_lands_by_its_id_in_one_index_only() {
    let url = server().database("events_indexes");
    let _store = connected(&url).await;
    let db = client_of(&url).await;
    let indexes: Vec<(String, String)> = db
        .query("SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = 'events' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["events_by_seq", "events_by_time", "events_in_order", "events_pkey"], "{indexes:?}");
    assert!(indexes[3].1.contains("(id, merchant, scope)"), "{indexes:?}");
}

/// A new database as the release of schema `version` left it (its old keys already gone),
/// and a client of it: that release's replica. Its URL.
async fn as_release_of_schema(name: &str, version: i32) -> (String, tokio_postgres::Client) {
    let url = server().database(name);
    let mut previous = client_of(&url).await;
    schema::apply(&mut previous, version).await.unwrap();
    assert!(matches!(
        event_numbers::by_number_alone(&mut previous, true).await,
        Ok(EventNumbers::Converted { .. })
    ));
    (url, previous)
}

/// A start-up once every other client is gone: it drops the old keys. Its client.
async fn started_alone(url: &str, name: &str) -> tokio_postgres::Client {
    no_clients_left(url, name).await;
    let mut starting = client_of(url).await;
    let migrated = schema::migrate(&mut starting).await.unwrap();
    assert!(matches!(migrated.numbers, Ok(EventNumbers::Converted { .. })), "{:?}", migrated.numbers);
    starting
}

/// The previous release's ingest, as it wrote an event and its delivery: the delivery
/// without its event's number.
const PREVIOUS_INGEST: &str = "
    WITH inserted AS (
        INSERT INTO events (merchant, scope, id, endpoint, status, body, headers, request_id, received_at_ms)
        VALUES ('acme', '/wh', $1, '/wh', 'queued', convert_to('{}', 'UTF8'), '[]', 'req', 1)
        ON CONFLICT (merchant, scope, id) DO NOTHING
        RETURNING merchant, scope, id)
    INSERT INTO deliveries (merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms,
                            lease_until_ms)
    SELECT merchant, scope, id, 'a', 'pending', 0, 1, NULL FROM inserted
    ON CONFLICT DO NOTHING";

/// An upgrade from the release that keyed deliveries by their event's key, one replica at a
/// time: while a replica of that release is connected, the deliveries keep that key beside
/// the number, and both releases store and deliver, each finding the other's deliveries.
/// The first start-up with no other client connected drops the old key, and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_keep_the_old_key_while_the_previous_release_runs_and_lose_it_at_a_start_up_alone() {
    let name = "numbers_later";
    let url = server().database(name);
    let old = client_of(&url).await;
    schema::apply(&mut client_of(&url).await, 7).await.unwrap();
    old.execute(PREVIOUS_INGEST, &[&"evt_before"]).await.unwrap();

    let store = connected(&url).await;
    assert_eq!(
        primary_key(&old, "deliveries").await,
        ["merchant", "scope", "event_id", "upstream"],
        "the old key stays"
    );
    old.execute(PREVIOUS_INGEST, &[&"evt_during"]).await.unwrap();
    let again = old
        .execute(
            "INSERT INTO deliveries (merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms)
             VALUES ('acme', '/wh', 'evt_during', 'a', 'pending', 0, 1)
             ON CONFLICT (merchant, scope, event_id, upstream) DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(again, 0, "the previous release's conflict target still works");
    queued(&store, &old, "evt_after", None, false).await;
    let mut due: Vec<String> = store
        .due_deliveries("a", 10_000, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event.key.id.clone())
        .collect();
    due.sort();
    assert_eq!(due, ["evt_after", "evt_before", "evt_during"], "each release's deliveries are due");
    for id in ["evt_after", "evt_before", "evt_during"] {
        store.record_attempts(attempt(id, "a", AttemptOutcome::Delivered)).await.unwrap();
    }
    payflow_store::Lifecycle::close(&store).await;
    drop((store, old));

    let starting = started_alone(&url, name).await;
    assert_eq!(primary_key(&starting, "deliveries").await, ["event_seq", "upstream"]);
    let store = connected(&url).await;
    for id in ["evt_after", "evt_before", "evt_during"] {
        let event = store.get_event(&key(id)).await.unwrap().unwrap();
        assert_eq!((event.summary.status.as_str(), event.deliveries.len()), ("delivered", 1), "{id}");
    }
}

/// The previous release's record of an attempt, and its read of an event's attempts: both
/// by the event's key, without its number.
const PREVIOUS_ATTEMPT: &str = "
    INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code)
    VALUES ('acme', '/wh', $1, 'a', 1, $2, 3, 200)";
const PREVIOUS_HISTORY: &str = "
    SELECT at_ms FROM attempts WHERE merchant = 'acme' AND scope = '/wh' AND event_id = $1
    ORDER BY at_ms, seq";

/// An upgrade from the release that kept attempts under their event's key (schema 9, its
/// deliveries' old key already gone), one replica at a time: while a replica of that
/// release is connected, its attempts are numbered by the trigger and its reads by key
/// keep their index; both releases' attempts are in the event's history. The first
/// start-up with no other client connected drops that index, and no attempt is lost.
#[tokio::test(flavor = "multi_thread")]
async fn attempts_keep_their_old_index_while_the_previous_release_runs_and_lose_it_at_a_start_up_alone() {
    let name = "attempts_later";
    let (url, previous) = as_release_of_schema(name, 9).await;
    assert_eq!(triggers(&previous).await, Vec::<String>::new(), "as the previous release left it");
    let store = connected(&url).await;
    previous.execute(PREVIOUS_INGEST_NUMBERED, &[&"evt_1"]).await.unwrap();
    previous.execute(PREVIOUS_ATTEMPT, &[&"evt_1", &10i64]).await.unwrap();
    assert!(indexes_of(&previous, "attempts").await.contains(&"attempts_by_key".to_string()), "it stays");
    // This release's record of the event's second delivery attempt, then the previous one's.
    let mut mine = attempt("evt_1", "a", AttemptOutcome::Delivered);
    Arc::make_mut(&mut mine[0]).info.at_ms = 20;
    store.record_attempts(mine).await.unwrap();
    previous.execute(PREVIOUS_ATTEMPT, &[&"evt_1", &30i64]).await.unwrap();
    let history = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
    assert_eq!(history(previous.query(PREVIOUS_HISTORY, &[&"evt_1"]).await.unwrap()), [10, 20, 30]);
    let shown = |e: payflow_store::EventDetail| e.attempts.iter().map(|a| a.at_ms).collect::<Vec<_>>();
    assert_eq!(shown(store.get_event(&key("evt_1")).await.unwrap().unwrap()), [10, 20, 30]);
    let unnumbered = count(&previous, "SELECT count(*) FROM attempts WHERE event_seq IS NULL").await;
    assert_eq!(unnumbered, 0, "the trigger numbered the previous release's");
    payflow_store::Lifecycle::close(&store).await;
    drop((store, previous));

    let starting = started_alone(&url, name).await;
    assert_eq!(indexes_of(&starting, "attempts").await, ["attempts_by_event", "attempts_pkey"]);
    assert!(triggers(&starting).await.is_empty());
    let store = connected(&url).await;
    assert_eq!(shown(store.get_event(&key("evt_1")).await.unwrap().unwrap()), [10, 20, 30]);
}

/// The previous release's ingest (schema 9): an event and its delivery, with its number.
const PREVIOUS_INGEST_NUMBERED: &str = "
    WITH inserted AS (
        INSERT INTO events (merchant, scope, id, endpoint, status, body, headers, request_id, received_at_ms)
        VALUES ('acme', '/wh', $1, '/wh', 'queued', convert_to('{}', 'UTF8'), '[]', 'req', 1)
        ON CONFLICT (merchant, scope, id) DO NOTHING
        RETURNING merchant, scope, id, seq)
    INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                            next_attempt_at_ms, lease_until_ms)
    SELECT seq, merchant, scope, id, 'a', 'pending', 0, 1, NULL FROM inserted
    ON CONFLICT DO NOTHING";

/// The previous release's (schema 10) ingest of an event whose first hop is the plugins:
/// its step without its event's number.
const PREVIOUS_STEP: &str = "
    WITH inserted AS (
        INSERT INTO events (merchant, scope, id, endpoint, status, body, headers, request_id, received_at_ms)
        VALUES ('acme', '/wh', $1, '/wh', 'queued', convert_to('{}', 'UTF8'), '[]', 'req', 1)
        ON CONFLICT (merchant, scope, id) DO NOTHING
        RETURNING merchant, scope, id)
    INSERT INTO plugin_steps (merchant, scope, event_id, status, attempts, next_attempt_at_ms)
    SELECT merchant, scope, id, 'pending', 0, 1 FROM inserted
    ON CONFLICT DO NOTHING";
/// Its record of a plugin run, and its read of an event's runs: by the event's key.
const PREVIOUS_RUN: &str = "
    INSERT INTO plugin_runs (merchant, scope, event_id, plugin, version, attempt, at_ms, duration_us,
                             fuel_used, outcome, logs)
    VALUES ('acme', '/wh', $1, 'enrich', 1, 1, $2, 40, 1000, 'continue', '[]')";
const PREVIOUS_RUNS: &str = "
    SELECT at_ms FROM plugin_runs WHERE merchant = 'acme' AND scope = '/wh' AND event_id = $1
    ORDER BY at_ms, seq";

/// An upgrade from the release that kept plugin steps and runs under their event's key
/// (schema 10), one replica at a time: a step that release stored before the upgrade is
/// numbered by the migration, one it stores during it by the trigger, and this release
/// claims and records both by number while that release's reads by key keep their index;
/// both releases' runs are in the event's history. The first start-up with no other
/// client connected drops the old keys, and no step or run is lost.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_steps_and_runs_keep_their_old_keys_while_the_previous_release_runs_and_lose_them_at_a_start_up_alone(
) {
    let name = "steps_later";
    let (url, previous) = as_release_of_schema(name, 10).await;
    previous.execute(PREVIOUS_STEP, &[&"evt_before"]).await.unwrap();
    previous.execute(PREVIOUS_RUN, &[&"evt_before", &10i64]).await.unwrap();

    let store = connected(&url).await;
    assert_eq!(primary_key(&previous, "plugin_steps").await, ["merchant", "scope", "event_id"], "it stays");
    assert!(indexes_of(&previous, "plugin_runs").await.contains(&"plugin_runs_by_key".to_string()));
    previous.execute(PREVIOUS_STEP, &[&"evt_during"]).await.unwrap();
    let due = store.due_steps(10_000, None, 10).await.unwrap();
    let mut ids: Vec<&str> = due.iter().map(|d| d.event.key.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["evt_before", "evt_during"], "each release's steps are due");
    for d in &due {
        let mut step = forwarding_step(&d.event.key.id);
        step.event_seq = Some(d.seq);
        step.claimed_until_ms = d.claimed_until_ms;
        step.runs[0].at_ms = 20;
        store.finish_plugin_step(step).await.unwrap();
    }
    previous.execute(PREVIOUS_RUN, &[&"evt_before", &30i64]).await.unwrap();
    let history = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
    assert_eq!(history(previous.query(PREVIOUS_RUNS, &[&"evt_before"]).await.unwrap()), [10, 20, 30]);
    for table in ["plugin_steps", "plugin_runs"] {
        let unnumbered =
            count(&previous, &format!("SELECT count(*) FROM {table} WHERE event_seq IS NULL")).await;
        assert_eq!(unnumbered, 0, "{table}: the migration and the trigger numbered the previous release's");
    }
    payflow_store::Lifecycle::close(&store).await;
    drop((store, previous));

    let starting = started_alone(&url, name).await;
    assert_eq!(primary_key(&starting, "plugin_steps").await, ["event_seq"]);
    assert_eq!(indexes_of(&starting, "plugin_runs").await, ["plugin_runs_by_event", "plugin_runs_pkey"]);
    assert!(triggers(&starting).await.is_empty());
    let store = connected(&url).await;
    let runs = |e: &payflow_store::EventDetail| e.plugin_runs.iter().map(|r| r.at_ms).collect::<Vec<_>>();
    for (id, shown) in [("evt_before", vec![10, 20, 30]), ("evt_during", vec![20])] {
        let event = store.get_event(&key(id)).await.unwrap().unwrap();
        assert_eq!(runs(&event), shown, "{id}");
        assert_eq!(event.plugin_step.as_ref().map(|s| s.status.as_str()), Some("done"), "{id}");
        assert_eq!(event.deliveries.iter().map(|d| d.upstream.as_str()).collect::<Vec<_>>(), ["up"], "{id}");
    }
}

/// The tables of an event's path, by how many sequential scans they have had.
async fn sequential_scans(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let rows = db
        .query(
            "SELECT relname::text, seq_scan FROM pg_stat_user_tables
             WHERE relname IN ('events', 'deliveries', 'plugin_steps', 'attempts', 'plugin_runs')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Every statement on an event's way (its insert, its step's claim and record, its
/// delivery's claim and attempt, its read) is served by an index, even on plans made while
/// the tables were empty, as a new database's are. Left free, the planner chose scans of
/// the empty tables and went on running them as the tables grew: every claim scanned
/// `deliveries` and `events` whole (bench/RESULTS.md, twenty-sixth look).
#[tokio::test(flavor = "multi_thread")]
async fn an_events_way_scans_no_table_whole_on_plans_made_while_the_tables_were_empty() {
    let name = "no_table_scans";
    let url = server().database(name);
    let created = connected(&url).await;
    payflow_store::Lifecycle::close(&created).await;
    drop(created);
    no_clients_left(&url, name).await;
    client_of(&url).await.execute("SELECT pg_stat_reset()", &[]).await.unwrap();
    no_clients_left(&url, name).await;

    let store = connected(&url).await;
    for round in 0..3 {
        for i in 0..40 {
            store.insert_event(to_the_plugins(&format!("evt_{round}_{i}"))).await.unwrap();
        }
        let mut stepped = 0;
        while stepped < 40 {
            let due = store.due_steps(10_000, None, 16).await.unwrap();
            assert!(!due.is_empty(), "round {round}: {stepped} of 40 steps claimed");
            for d in due {
                let mut step = forwarding_step(&d.event.key.id);
                (step.event_seq, step.claimed_until_ms) = (Some(d.seq), d.claimed_until_ms);
                step.status = EventStatus::Queued;
                store.finish_plugin_step(step).await.unwrap();
                stepped += 1;
            }
        }
        let mut delivered = 0;
        while delivered < 40 {
            let due = store.due_deliveries("up", 10_000, None, 16).await.unwrap();
            assert!(!due.is_empty(), "round {round}: {delivered} of 40 deliveries claimed");
            for d in due {
                let mut attempts = attempt(&d.event.key.id, "up", AttemptOutcome::Delivered);
                let a = Arc::make_mut(&mut attempts[0]);
                (a.event_seq, a.claimed_until_ms, a.ordered) =
                    (Some(d.seq), d.claimed_until_ms, d.event.ordered);
                store.record_attempts(attempts).await.unwrap();
                delivered += 1;
            }
        }
        let read = store.get_event(&key(&format!("evt_{round}_0"))).await.unwrap().unwrap();
        assert_eq!(read.summary.status, "delivered");
    }
    payflow_store::Lifecycle::close(&store).await;
    drop(store);
    no_clients_left(&url, name).await;
    let scans = sequential_scans(&client_of(&url).await).await;
    assert_eq!(scans.len(), 5, "{scans:?}");
    assert!(scans.iter().all(|(_, n)| *n == 0), "sequential scans: {scans:?}");
}

/// How many index entries of `events_by_seq` statements have read.
async fn event_numbers_read(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'events_by_seq'", &[])
        .await
        .unwrap()
        .get(0)
}

/// A hand-back finds its row by the event's number only where the row also carries the
/// claim's key: a claim naming one event's number and another's key frees neither.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_back_whose_number_and_key_disagree_frees_nothing() {
    let url = server().database("hand_back_by_number");
    let store = connected(&url).await;
    for id in ["evt_a", "evt_b"] {
        let to_up = NewEvent { first_hop: Some(Hop::Upstream("up".into())), ..to_the_plugins(id) };
        store.insert_event(to_up).await.unwrap();
    }
    let claimed = store.due_deliveries("up", 10, None, 10).await.unwrap();
    let claims: Vec<payflow_store::Claim> = claimed.iter().filter_map(|d| d.claim()).collect();
    assert_eq!(claims.len(), 2);
    let crossed = payflow_store::Claim { key: claims[1].key.clone(), ..claims[0].clone() };
    store.release_claims(vec![crossed]).await.unwrap();
    assert!(store.due_deliveries("up", 11, None, 10).await.unwrap().is_empty(), "neither was freed");
    store.release_claims(vec![claims[0].clone()]).await.unwrap();
    let due = store.due_deliveries("up", 12, None, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| &d.event.key).collect::<Vec<_>>(), [&claims[0].key]);
}

/// A claim is planned for the tables as they are when it runs. Kept from claims on a new
/// database's empty tables, its plan read every entry of `events_by_seq` once per claimed
/// row (bench/RESULTS.md, twenty-sixth look): here 100 claimed deliveries read ~100
/// entries, where that plan read 5,050 (each claim walked the index from its start to
/// each of its rows).
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_reads_its_own_events_only_after_claims_on_empty_tables() {
    let name = "claims_planned_now";
    let url = server().database(name);
    let store = connected(&url).await;
    for _ in 0..10 {
        assert!(store.due_deliveries("a", 10_000, None, 20).await.unwrap().is_empty());
    }
    let db = client_of(&url).await;
    with_deliveries_due(&db, 3_000).await;
    drop(db);
    let mut claimed = 0;
    for _ in 0..5 {
        claimed += store.due_deliveries("a", 10_000, None, 20).await.unwrap().len() as i64;
    }
    assert_eq!(claimed, 100);
    payflow_store::Lifecycle::close(&store).await;
    drop(store);
    no_clients_left(&url, name).await;
    // Nothing else reads that index here: the claims on empty tables found no entry.
    let read = event_numbers_read(&client_of(&url).await).await;
    assert!(read <= 3 * claimed, "{read} entries of events_by_seq read for {claimed} claimed deliveries");
}
