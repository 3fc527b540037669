//! kill -9 in the middle of a load of thousands of events, then a restart on the same
//! database: every acknowledged event is delivered (at least once), and nothing is delivered
//! that was not stored.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    // Slow-ish upstream so that many deliveries are pending or in flight at the kill.
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(5));
    let config = queue_config(&db, &upstream.url(), "concurrency = 4\nretry_base_ms = 50");
    let mut gw = Gateway::start(dir.path(), &config);
    let url = gw.url("/webhooks/payflow");
    let client = client();

    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for worker in 0..32 {
        let (client, url, acknowledged, sent, stop) =
            (client.clone(), url.clone(), acknowledged.clone(), sent.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("evt_{worker:02}_{i:05}");
                sent.lock().unwrap().insert(id.clone());
                let body = event_body(&id, "payment.succeeded");
                let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, &id);
                let mut request = client.post(&url).body(body);
                for (n, v) in &headers {
                    request = request.header(n, v);
                }
                match request.send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    _ => {} // killed mid-request: not acknowledged, may or may not be stored
                }
            }
        }));
    }
    // Let thousands through, then kill -9 while requests and deliveries are in flight.
    while acknowledged.lock().unwrap().len() < 3000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.kill9();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let delivered_before = upstream.received().len();

    // Restart on the same database: the dispatcher resumes from the durable queue.
    let gw = Gateway::start(dir.path(), &config);
    upstream
        .wait_for(Duration::from_secs(120), "every acknowledged event delivered", |r| {
            let ids: HashSet<&str> = r.iter().map(|x| x.event_id.as_str()).collect();
            acknowledged.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;

    let sent = sent.lock().unwrap().clone();
    let client = support::client();
    let mut checked = HashSet::new();
    for r in upstream.received() {
        assert!(sent.contains(&r.event_id), "delivered {} which was never sent", r.event_id);
        // Everything delivered is in the store (nothing is delivered that was not stored).
        if checked.insert(r.event_id.clone()) {
            let (code, event) =
                admin_get(&client, &gw.admin_url(&format!("/api/events/{}", r.event_id)), ADMIN_TOKEN).await;
            assert_eq!(code, 200, "delivered {} is not in the store", r.event_id);
            assert_eq!(event["body"].as_str().unwrap().as_bytes(), &r.body[..], "body changed in storage");
        }
    }
    eprintln!(
        "acknowledged {} of {} sent; {} deliveries before the kill, {} in all ({} distinct)",
        acknowledged.len(),
        sent.len(),
        delivered_before,
        upstream.received().len(),
        checked.len()
    );
}
