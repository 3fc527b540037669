//! Where event ids are de-duplicated: within the endpoint they arrive on by default, so ids
//! from different senders never collide; endpoints that receive one stream share a
//! `dedup_scope`. The admin API addresses an event by (merchant, scope, id), and a database
//! written before scopes existed keeps every event and its duplicates.

mod support;

use std::time::Duration;

use payflow_verify::Scheme;
use serde_json::Value;
use support::*;

/// The payflow endpoint of [`queue_config`] and a GitHub one, both delivering to `upstream_url`.
fn two_senders_config(db: &std::path::Path, upstream_url: &str) -> String {
    let github = format!(
        "[[endpoint]]\npath = \"/webhooks/github\"\nscheme = \"github\"\nsecrets = [\"{SECRET}\"]\nupstream = \"legacy\"\n"
    );
    queue_config(db, upstream_url, &github)
}

/// Sends event `id` signed under `scheme`; its amount tells the two senders' events apart.
async fn send_signed(gw: &Gateway, path: &str, scheme: Scheme, id: &str, amount: i64) -> Value {
    let body = serde_json::to_vec(&payment_with_amount(id, amount)).unwrap();
    let (code, reply) = post(&client(), &gw.url(path), &sign(scheme, SECRET, &body, id), body).await;
    assert_eq!(code, 200, "{path}: {reply}");
    reply
}

/// Regression (issue 16, item 12): ids were de-duplicated per merchant, so a GitHub delivery
/// whose id equalled an earlier PayFlow event's id on another endpoint was acknowledged as a
/// duplicate and never delivered.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_id_from_two_senders_is_two_events_each_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &two_senders_config(&dir.path().join("db"), &upstream.url()));

    let first = send_signed(&gw, "/webhooks/payflow", Scheme::PayFlow, "evt_shared", 1111).await;
    let second = send_signed(&gw, "/webhooks/github", Scheme::GitHub, "evt_shared", 2222).await;
    assert_eq!(first, serde_json::json!({ "received": true }));
    assert_eq!(second, serde_json::json!({ "received": true }), "the GitHub delivery is not a duplicate");
    upstream.wait_for(Duration::from_secs(10), "both deliveries", |r| r.len() == 2).await;
    let mut amounts: Vec<bool> =
        upstream.received().iter().map(|r| String::from_utf8_lossy(&r.body).contains("2222")).collect();
    amounts.sort();
    assert_eq!(amounts, [false, true], "one delivery of each sender's event");
    assert!(upstream.received().iter().all(|r| r.header("x-payflow-event-id") == Some("evt_shared")));

    // Within its own endpoint, each is still de-duplicated.
    for (path, scheme) in [("/webhooks/payflow", Scheme::PayFlow), ("/webhooks/github", Scheme::GitHub)] {
        let again = send_signed(&gw, path, scheme, "evt_shared", 1).await;
        assert_eq!(again["duplicate"], true, "{path}: {again}");
    }

    // The admin API names both, and `?scope=` picks one.
    let client = client();
    let (code, reply) = admin_get(&client, &gw.admin_url("/api/events/evt_shared"), ADMIN_TOKEN).await;
    assert_eq!((code, reply["error"].as_str()), (409, Some("ambiguous_event_id")), "{reply}");
    assert_eq!(
        reply["events"],
        serde_json::json!([
            { "merchant": "default", "scope": "/webhooks/github" },
            { "merchant": "default", "scope": "/webhooks/payflow" },
        ])
    );
    let github = gw.admin_url("/api/events/evt_shared?scope=/webhooks/github");
    let (code, event) = admin_get(&client, &github, ADMIN_TOKEN).await;
    assert_eq!(
        (code, event["endpoint"].as_str(), event["scope"].as_str()),
        (200, Some("/webhooks/github"), Some("/webhooks/github"))
    );
    assert!(event["body"].as_str().unwrap().contains("2222"), "{event}");
    let (_, listing) = admin_get(&client, &gw.admin_url("/api/events"), ADMIN_TOKEN).await;
    assert_eq!(listing["events"].as_array().unwrap().len(), 2, "{listing}");

    // Replay re-sends the one named.
    let replay = gw.admin_url("/api/events/evt_shared/replay?scope=/webhooks/github");
    assert_eq!(admin_post(&client, &replay, ADMIN_TOKEN).await, 202);
    upstream.wait_for(Duration::from_secs(10), "the replay", |r| r.len() == 3).await;
    assert!(
        String::from_utf8_lossy(&upstream.received()[2].body).contains("2222"),
        "the wrong event was replayed"
    );
}

/// Two paths that receive one stream (a sender moved to a new path, say) share a scope: an id
/// seen on either is a duplicate on the other, and is delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_sharing_a_dedup_scope_deduplicate_together() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let config = config_head(&dir.path().join("db"))
        + &format!(
            r#"
[[endpoint]]
path = "/old"
secrets = ["{SECRET}"]
upstream = "legacy"
[[endpoint]]
path = "/new"
secrets = ["{SECRET}"]
upstream = "legacy"
dedup_scope = "/old"
[[endpoint]]
path = "/a"
secrets = ["{SECRET}"]
upstream = "legacy"
dedup_scope = "orders"
[[endpoint]]
path = "/b"
secrets = ["{SECRET}"]
upstream = "legacy"
dedup_scope = "orders"
[[upstream]]
name = "legacy"
url = "{}"
"#,
            upstream.url()
        );
    let gw = Gateway::start(dir.path(), &config);

    let client = client();
    let duplicate = |reply: &Value| reply["duplicate"] == true;
    assert!(!duplicate(&send_event(&client, &gw.url("/old"), "evt_1").await.1));
    assert!(duplicate(&send_event(&client, &gw.url("/new"), "evt_1").await.1), "joined /old's scope");
    assert!(!duplicate(&send_event(&client, &gw.url("/a"), "evt_1").await.1), "another scope");
    assert!(duplicate(&send_event(&client, &gw.url("/b"), "evt_1").await.1), "shares \"orders\" with /a");
    upstream.wait_for(Duration::from_secs(10), "two deliveries", |r| r.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.received().len(), 2, "each scope's event is delivered once");

    let (_, event) = admin_get(&client, &gw.admin_url("/api/events/evt_1?scope=orders"), ADMIN_TOKEN).await;
    assert_eq!(
        (event["scope"].as_str(), event["endpoint"].as_str()),
        (Some("orders"), Some("/a")),
        "{event}"
    );
}

/// The tables as released before de-duplication scopes (the ones scopes changed).
const UNSCOPED_TABLES: &str = "
CREATE TABLE events (
    merchant TEXT NOT NULL, id TEXT NOT NULL, endpoint TEXT NOT NULL, event_type TEXT,
    status TEXT NOT NULL, reason TEXT, body BLOB NOT NULL, headers TEXT NOT NULL,
    request_id TEXT NOT NULL, received_at_ms BIGINT NOT NULL, claimed_at_ms BIGINT, tags TEXT,
    PRIMARY KEY (merchant, id)
);
CREATE INDEX events_by_time ON events (received_at_ms);
CREATE TABLE deliveries (
    merchant TEXT NOT NULL, event_id TEXT NOT NULL, upstream TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_at_ms BIGINT NOT NULL, body BLOB, headers TEXT,
    PRIMARY KEY (merchant, event_id, upstream)
);
CREATE INDEX deliveries_due ON deliveries (upstream, status, next_attempt_at_ms);
CREATE TABLE attempts (
    merchant TEXT NOT NULL, event_id TEXT NOT NULL, upstream TEXT NOT NULL, number INTEGER NOT NULL,
    at_ms BIGINT NOT NULL, duration_ms BIGINT NOT NULL, status_code INTEGER, error TEXT, response TEXT
);
CREATE INDEX attempts_by_event ON attempts (merchant, event_id);
CREATE TABLE plugin_runs (
    merchant TEXT NOT NULL, event_id TEXT NOT NULL, plugin TEXT NOT NULL, version INTEGER NOT NULL,
    attempt INTEGER NOT NULL, at_ms BIGINT NOT NULL, duration_us BIGINT NOT NULL,
    fuel_used BIGINT NOT NULL, outcome TEXT NOT NULL, detail TEXT, logs TEXT NOT NULL
);
CREATE INDEX plugin_runs_by_event ON plugin_runs (merchant, event_id);
";

/// An upgrade must lose nothing: an event stored before scopes keeps its attempts, its
/// pending delivery is made, and the sender's retry of it is still a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_scopes_keeps_its_events_and_their_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let now = unix_now() * 1000;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(UNSCOPED_TABLES).unwrap();
        let body = event_body("evt_old", "payment.succeeded");
        conn.execute(
            "INSERT INTO events VALUES ('default', 'evt_old', '/webhooks/payflow', 'payment.succeeded', 'queued',
                                        NULL, ?1, '[]', 'req_old', ?2, NULL, NULL)",
            rusqlite::params![body, now - 60_000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO deliveries VALUES ('default', 'evt_old', 'legacy', 'pending', 1, ?1, NULL, NULL)",
            [now - 1_000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO attempts VALUES ('default', 'evt_old', 'legacy', 1, ?1, 5, 500, NULL, 'busy')",
            [now - 50_000],
        )
        .unwrap();
    }
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &queue_config(&db, &upstream.url(), ""));

    upstream.wait_for(Duration::from_secs(10), "the pending delivery", |r| r.len() == 1).await;
    assert_eq!(upstream.received()[0].header("x-payflow-event-id"), Some("evt_old"));
    let client = client();
    wait_for_status(&client, &gw, "evt_old", "delivered", Duration::from_secs(10)).await;
    let (_, event) = admin_get(&client, &gw.admin_url("/api/events/evt_old"), ADMIN_TOKEN).await;
    assert_eq!(event["scope"], "/webhooks/payflow", "{event}");
    let numbers: Vec<u64> =
        event["attempts"].as_array().unwrap().iter().map(|a| a["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2], "the attempt made before the upgrade is kept: {event}");

    let (code, reply) = send_event(&client, &gw.url("/webhooks/payflow"), "evt_old").await;
    assert_eq!((code, reply["duplicate"].as_bool()), (200, Some(true)), "{reply}");
}
