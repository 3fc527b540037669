//! Proxy mode: verify, de-duplicate, forward synchronously and answer with the upstream's
//! reply. A failed forward is not marked done: the sender's retry is forwarded again.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn proxy_config(db: &std::path::Path, upstream: &str) -> String {
    queue_config(db, upstream, "timeout_ms = 500")
        .replace("upstream = \"legacy\"", "upstream = \"legacy\"\nmode = \"proxy\"")
}

async fn post_raw(client: &reqwest::Client, url: &str, id: &str) -> (u16, String) {
    let body = event_body(id, "payment.succeeded");
    let mut request = client.post(url).body(body.clone());
    for (n, v) in sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id) {
        request = request.header(n, v);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_with_the_upstreams_reply_and_deduplicates_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.script(&[(201, &[])]);
    let gw = Gateway::start(dir.path(), &proxy_config(&dir.path().join("db"), &upstream.url()));
    let (client, url) = (client(), gw.url("/webhooks/payflow"));
    assert_eq!(post_raw(&client, &url, "evt_p1").await, (201, "legacy says 201 to evt_p1".into()));
    assert_eq!(
        send_event(&client, &url, "evt_p1").await,
        (200, json!({"received": true, "duplicate": true}))
    );
    assert_eq!(upstream.ids(), ["evt_p1"]);
    wait_for_status(&client, &gw, "evt_p1", "delivered", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_forward_is_forwarded_again_on_the_senders_retry() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.script(&[(500, &[])]);
    let gw = Gateway::start(dir.path(), &proxy_config(&dir.path().join("db"), &upstream.url()));
    let (client, url) = (client(), gw.url("/webhooks/payflow"));
    assert_eq!(post_raw(&client, &url, "evt_p2").await, (500, "legacy says 500 to evt_p2".into()));
    wait_for_status(&client, &gw, "evt_p2", "failed", Duration::from_secs(2)).await;
    assert_eq!(post_raw(&client, &url, "evt_p2").await, (200, "legacy says 200 to evt_p2".into()));
    assert_eq!(
        send_event(&client, &url, "evt_p2").await,
        (200, json!({"received": true, "duplicate": true}))
    );
    assert_eq!(upstream.ids(), ["evt_p2", "evt_p2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_timeout_is_504_and_an_unreachable_one_502() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500)); // timeout_ms = 500
    let gw = Gateway::start(dir.path(), &proxy_config(&dir.path().join("db"), &upstream.url()));
    let (client, url) = (client(), gw.url("/webhooks/payflow"));
    assert_eq!(send_event(&client, &url, "evt_slow").await, (504, json!({"error": "upstream_timeout"})));
    upstream.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1200)).await; // let the slow reply finish
    assert_eq!(post_raw(&client, &url, "evt_slow").await.0, 200, "the retry is forwarded again");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gateway::start(
        dir2.path(),
        &proxy_config(&dir2.path().join("db"), &format!("http://127.0.0.1:{port}/")),
    );
    let reply = send_event(&client, &gw2.url("/webhooks/payflow"), "evt_nowhere").await;
    assert_eq!(reply, (502, json!({"error": "upstream_unreachable"})));
}
