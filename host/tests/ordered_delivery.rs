//! Ordered delivery (`ordering_key` on an upstream), in a real gateway process on a real
//! SQLite file: events with the same key reach the upstream one at a time in the order they
//! were received, through retries, a dead head (held until an operator skips or replays it) and
//! a kill -9; other keys, and events without the key, go on meanwhile. (The same rules on
//! PostgreSQL, shared by replicas, are the store conformance suite's.)

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    admin_get, client, event_body, post, sign, wait_for_status, Gateway, Received, Upstream, ADMIN_TOKEN,
    SECRET,
};

const WAIT: Duration = Duration::from_secs(30);

fn config(db: &std::path::Path, url: &str, upstream_extra: &str) -> String {
    support::config_head(db)
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nupstream = \"ledger\"\n\
             [[upstream]]\nname = \"ledger\"\nurl = {url:?}\nordering_key = \"data.customer_email\"\nconcurrency = 4\n\
             {upstream_extra}\n"
        )
}

/// A payment of customer `key` (none: the field is absent).
async fn send(client: &reqwest::Client, gateway: &Gateway, id: &str, key: Option<&str>) {
    let mut body: Value = serde_json::from_slice(&event_body(id, "payment.succeeded")).unwrap();
    match key {
        Some(key) => body["data"]["customer_email"] = format!("{key}@example.com").into(),
        None => drop(body["data"].as_object_mut().unwrap().remove("customer_email")),
    }
    let body = serde_json::to_vec(&body).unwrap();
    let (status, reply) =
        post(client, &gateway.url("/wh"), &sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id), body)
            .await;
    assert_eq!(status, 200, "{id}: {reply}");
}

/// The requests for these events, in the order the upstream answered them, as `id:status`.
fn requests(upstream: &Upstream, ids: &[&str]) -> Vec<String> {
    let received: Vec<Received> = upstream.received();
    received
        .iter()
        .filter(|r| ids.contains(&r.event_id.as_str()))
        .map(|r| format!("{}:{}", r.event_id, r.status))
        .collect()
}

fn answered_at(upstream: &Upstream, id: &str, status: u16) -> std::time::Instant {
    upstream.received().into_iter().find(|r| r.event_id == id && r.status == status).expect("answered").at
}

async fn held(client: &reqwest::Client, gateway: &Gateway) -> Vec<Value> {
    let (code, reply) = admin_get(client, &gateway.admin_url("/api/ordering"), ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{reply}");
    reply["keys"].as_array().cloned().unwrap_or_default()
}

async fn wait_until_held(
    client: &reqwest::Client,
    gateway: &Gateway,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let keys = held(client, gateway).await;
        if pred(&keys) {
            return keys;
        }
        assert!(std::time::Instant::now() < deadline, "held keys never as expected: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_back_only_its_key_and_each_key_arrives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Upstream::start().await;
    ledger.answer_event("a1", 503, 3);
    let gateway = Gateway::start(
        dir.path(),
        &config(
            &dir.path().join("db.sqlite"),
            &ledger.url(),
            "max_attempts = 10\nretry_base_ms = 500\nretry_max_ms = 1000",
        ),
    );
    let client = client();
    for (id, key) in [
        ("a1", Some("a")),
        ("b1", Some("b")),
        ("a2", Some("a")),
        ("b2", Some("b")),
        ("a3", Some("a")),
        ("n1", None),
    ] {
        send(&client, &gateway, id, key).await;
    }
    // While a1 retries, its key is shown held, with the two behind it.
    let keys = wait_until_held(&client, &gateway, |k| !k.is_empty()).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        (&keys[0]["key"], &keys[0]["event_id"], &keys[0]["status"]),
        (&"a@example.com".into(), &"a1".into(), &"queued".into())
    );
    assert_eq!(keys[0]["waiting"], 2);
    for id in ["a1", "a2", "a3", "b1", "b2", "n1"] {
        wait_for_status(&client, &gateway, id, "delivered", WAIT).await;
    }
    assert_eq!(
        requests(&ledger, &["a1", "a2", "a3"]),
        ["a1:503", "a1:503", "a1:503", "a1:200", "a2:200", "a3:200"],
        "key a: one at a time, in arrival order, through the head's retries"
    );
    assert_eq!(requests(&ledger, &["b1", "b2"]), ["b1:200", "b2:200"]);
    let a1_done = answered_at(&ledger, "a1", 200);
    for other in ["b2", "n1"] {
        assert!(answered_at(&ledger, other, 200) < a1_done, "{other} waited for another key's head");
    }
    assert!(held(&client, &gateway).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_head_holds_its_key_until_an_operator_skips_or_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Upstream::start().await;
    ledger.answer_event("a1", 400, u32::MAX);
    ledger.answer_event("c1", 400, u32::MAX);
    let gateway = Gateway::start(
        dir.path(),
        &config(&dir.path().join("db.sqlite"), &ledger.url(), "max_attempts = 2\nretry_base_ms = 50"),
    );
    let client = client();
    for (id, key) in [("a1", "a"), ("a2", "a"), ("c1", "c"), ("c2", "c"), ("b1", "b")] {
        send(&client, &gateway, id, Some(key)).await;
    }
    wait_for_status(&client, &gateway, "a1", "dead", WAIT).await;
    wait_for_status(&client, &gateway, "c1", "dead", WAIT).await;
    wait_for_status(&client, &gateway, "b1", "delivered", WAIT).await;
    let keys = wait_until_held(&client, &gateway, |k| k.len() == 2).await;
    assert_eq!(
        (&keys[0]["event_id"], &keys[0]["status"], &keys[0]["waiting"]),
        (&"a1".into(), &"dead".into(), &1.into())
    );
    // Dead is not a release: a2 stays queued, however long.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(requests(&ledger, &["a2", "c2"]), Vec::<String>::new(), "a later event passed a dead head");

    // Only a dead event is skipped; skipping releases its key.
    let admin = gateway.admin_url("");
    let cli = |args: &[&str]| {
        let mut all = vec!["events"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin", &admin, "--token", ADMIN_TOKEN]);
        support::cli(&all)
    };
    let (code, _, err) = cli(&["skip", "b1"]);
    assert_eq!(code, Some(1), "a delivered event is not skipped");
    assert!(err.contains("holds no ordering key back") || err.contains("only a dead event"), "{err}");
    let (code, out, err) = cli(&["skip", "a1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"skipped\": true"), "{out}");
    wait_for_status(&client, &gateway, "a2", "delivered", WAIT).await;
    wait_for_status(&client, &gateway, "a1", "dead", WAIT).await;
    let (code, _, err) = cli(&["skip", "a1"]);
    assert_eq!(code, Some(1), "skipped twice");
    assert!(err.contains("nothing to skip"), "{err}");

    // A replay releases it too, by delivering it first.
    ledger.answer_event("c1", 200, u32::MAX);
    let (code, out, _) = cli(&["held"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("c@example.com") && out.contains("c1") && out.contains("dead"), "{out}");
    let (code, _, err) = cli(&["replay", "c1"]);
    assert_eq!(code, Some(0), "{err}");
    wait_for_status(&client, &gateway, "c2", "delivered", WAIT).await;
    assert_eq!(
        requests(&ledger, &["c1", "c2"]),
        ["c1:400", "c1:200", "c2:200"],
        "a 400 is final: dead at once"
    );
    assert!(held(&client, &gateway).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_of_a_key_holds_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Upstream::start().await;
    ledger.answer_event("a1", 503, u32::MAX);
    let config = config(
        &dir.path().join("db.sqlite"),
        &ledger.url(),
        "max_attempts = 50\nretry_base_ms = 100\nretry_max_ms = 200",
    );
    let mut gateway = Gateway::start(dir.path(), &config);
    let client = client();
    for (id, key) in [("a1", "a"), ("a2", "a"), ("a3", "a")] {
        send(&client, &gateway, id, Some(key)).await;
    }
    ledger
        .wait_for(WAIT, "a1's first attempts", |r| r.iter().filter(|r| r.event_id == "a1").count() >= 2)
        .await;
    gateway.kill9();
    ledger.answer_event("a1", 200, u32::MAX);
    let gateway = Gateway::start(dir.path(), &config);
    for id in ["a1", "a2", "a3"] {
        wait_for_status(&client, &gateway, id, "delivered", WAIT).await;
    }
    let seen = requests(&ledger, &["a1", "a2", "a3"]);
    let first_success = seen.iter().position(|r| r == "a1:200").expect("a1 delivered");
    assert!(seen[..first_success].iter().all(|r| r == "a1:503"), "{seen:?}");
    assert_eq!(&seen[first_success..], ["a1:200", "a2:200", "a3:200"], "{seen:?}");
}
