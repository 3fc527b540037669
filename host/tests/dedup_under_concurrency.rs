//! 100 concurrent copies of one event: exactly one is stored and delivered, the other 99 are
//! answered `duplicate`, and nothing runs twice.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_concurrent_copies_store_and_deliver_once() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &queue_config(&dir.path().join("db"), &upstream.url(), ""));
    let client = client();
    let url = gw.url("/webhooks/payflow");
    let body = event_body("evt_same", "payment.succeeded");
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "evt_same");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url, headers, body, barrier) =
                (client.clone(), url.clone(), headers.clone(), body.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                post(&client, &url, &headers, body).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let new = replies.iter().filter(|r| **r == (200, json!({"received": true}))).count();
    let dup = replies.iter().filter(|r| **r == (200, json!({"received": true, "duplicate": true}))).count();
    assert_eq!((new, dup), (1, 99), "{replies:?}");

    upstream.wait_for(Duration::from_secs(10), "the delivery", |r| !r.is_empty()).await;
    wait_for_status(&client, &gw, "evt_same", "delivered", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a second delivery would arrive by now
    assert_eq!(upstream.ids(), ["evt_same"]);
    let (_, listing) = admin_get(&client, &gw.admin_url("/api/events"), ADMIN_TOKEN).await;
    assert_eq!(listing["events"].as_array().unwrap().len(), 1);
}
