//! When the store cannot take a write, the sender gets 503 (so PayFlow retries) and nothing
//! is acknowledged or half-written. The fault is real: another process holds SQLite's write
//! lock on the database file (as a backup tool or a second gateway might), and the gateway's
//! `busy_timeout_ms` runs out.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::json;
use support::*;

/// Sends a signed event with ~3.5 KB of data, so that a 1 MB database fills within a few
/// hundred.
async fn post_large_event(client: &reqwest::Client, url: &str, id: &str) -> (u16, serde_json::Value) {
    let mut event: serde_json::Value = serde_json::from_slice(&event_body(id, "payment.succeeded")).unwrap();
    event["data"]["note"] = json!("x".repeat(3500));
    let body = serde_json::to_vec(&event).unwrap();
    post(client, url, &sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id), body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_database_answers_503_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let upstream = Upstream::start().await;
    let config = queue_config(&db, &upstream.url(), "").replace("[store]", "[store]\nbusy_timeout_ms = 300");
    let gw = Gateway::start(dir.path(), &config);
    let (client, url) = (client(), gw.url("/webhooks/payflow"));
    assert_eq!(send_event(&client, &url, "evt_before").await, (200, json!({"received": true})));

    // Another process takes the write lock and holds it until its stdin closes.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n\
             c.execute('ROLLBACK')",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");

    assert_eq!(send_event(&client, &url, "evt_during").await, (503, json!({"error": "store_unavailable"})));

    // Release the lock: nothing of the refused event was kept, so it is new when retried.
    drop(locker.stdin.take().unwrap().flush());
    locker.wait().unwrap();
    let (code, _) = admin_get(&client, &gw.admin_url("/api/events/evt_during"), ADMIN_TOKEN).await;
    assert_eq!(code, 404, "a refused event must not be stored");
    assert_eq!(send_event(&client, &url, "evt_during").await, (200, json!({"received": true})));
    upstream.wait_for(std::time::Duration::from_secs(10), "both events delivered", |r| r.len() == 2).await;
    assert_eq!(upstream.ids(), ["evt_before", "evt_during"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_database_answers_503_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\nmax_size_mb = 1\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\n",
        db.display()
    );
    let gw = Gateway::start(dir.path(), &config);
    let (client, url) = (client(), gw.url("/wh"));
    // ~3.5 KB events into a 1 MB database: it fills up within a few hundred.
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..600 {
        let id = format!("evt_fill_{i:04}");
        match post_large_event(&client, &url, &id).await {
            (200, _) => acknowledged.push(id),
            (503, reply) => {
                assert_eq!(reply, json!({"error": "store_unavailable"}));
                refused += 1;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(refused > 0 && acknowledged.len() > 50, "{} acknowledged, {refused} refused", acknowledged.len());
    for id in &acknowledged {
        let (code, event) =
            admin_get(&client, &gw.admin_url(&format!("/api/events/{id}")), ADMIN_TOKEN).await;
        assert_eq!(code, 200, "acknowledged {id} is missing");
        assert!(event["body"].as_str().unwrap().contains(id));
    }
}

/// Regression (issue 16, item 11): with the store full, a delivery attempt that could not be
/// recorded left its event due with 0 attempts, and it was sent again ~5 times a second (75
/// events, ~350 upstream requests). An unrecorded attempt is now kept in memory, its delivery
/// claimed, until the store takes it: backoff holds (one request per event here, with a
/// 60 s backoff), and `/readyz` answers 503 while the store refuses writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_never_turns_retries_into_a_delivery_storm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let upstream = Upstream::start().await;
    upstream.set_default(503);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\nmax_size_mb = 1\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nupstream = \"legacy\"\n[[upstream]]\nname = \"legacy\"\nurl = \"{}\"\nretry_base_ms = 60000\n",
        db.display(),
        upstream.url()
    );
    let gw = Gateway::start(dir.path(), &config);
    let (client, url) = (client(), gw.url("/wh"));
    let ready = || {
        let (client, url) = (client.clone(), gw.admin_url("/readyz"));
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready().await, 200);
    let mut acknowledged = 0;
    for i in 0..600 {
        if post_large_event(&client, &url, &format!("evt_full_{i:04}")).await.0 == 200 {
            acknowledged += 1;
        }
    }
    assert!(acknowledged > 50 && acknowledged < 600, "{acknowledged} acknowledged");
    assert_eq!(ready().await, 503, "ready while the store refuses writes");
    // Time for a storm: the poller reads due rows every 200 ms.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let received = upstream.ids();
    let mut per_event = std::collections::HashMap::<String, usize>::new();
    for id in &received {
        *per_event.entry(id.clone()).or_default() += 1;
    }
    let most = per_event.values().max().copied().unwrap_or(0);
    assert!(
        most <= 1,
        "an event was sent {most} times in 3 s; {} requests for {acknowledged} events",
        received.len()
    );
    assert!(received.len() <= acknowledged, "{} requests for {acknowledged} events", received.len());
}
