//! Log lines never contain a secret or a whole signature, whatever happens: accepted, forged,
//! quarantined and proxied events, retried and re-signed deliveries. They do carry the
//! request id from ingress to delivery.

mod support;

use std::time::Duration;

use payflow_verify::Scheme;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_signature_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.script(&[(503, &[])]);
    let hop = "whsec_hop_secret_never_logged_42";
    let config = queue_config(
        &dir.path().join("db"),
        &upstream.url(),
        &format!("sign_secret = \"{hop}\"\nretry_base_ms = 50"),
    );
    let gw = Gateway::start(dir.path(), &config);
    let (client, url) = (client(), gw.url("/webhooks/payflow"));

    let mut signatures = Vec::new();
    for (id, secret) in [("evt_log_ok", SECRET), ("evt_log_forged", "whsec_forger_secret_0000")] {
        let body = event_body(id, "payment.succeeded");
        let headers = sign(Scheme::PayFlow, secret, &body, id);
        signatures.extend(headers.iter().filter(|(n, _)| n == "X-PayFlow-Signature").map(|(_, v)| v.clone()));
        let _ = client
            .post(&url)
            .header("x-request-id", format!("req-{id}"))
            .body(body.clone())
            .headers(headers.iter().map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap())).collect())
            .send()
            .await
            .unwrap();
    }
    let mut invalid: serde_json::Value =
        serde_json::from_slice(&event_body("evt_log_bad", "payment.failed")).unwrap();
    invalid["data"]["amount"] = serde_json::json!(1.5);
    let body = serde_json::to_vec(&invalid).unwrap();
    let (status, _) = post(&client, &url, &sign(Scheme::PayFlow, SECRET, &body, "x"), body).await;
    assert_eq!(status, 200);

    upstream.wait_for(Duration::from_secs(10), "delivery after one retry", |r| r.len() == 2).await;
    signatures.extend(
        upstream.received().iter().filter_map(|r| r.header("x-payflow-signature").map(str::to_string)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.logs();
    assert!(logs.contains("req-evt_log_ok"), "the request id is carried into delivery logs:\n{logs}");
    assert!(logs.contains("quarantined"), "{logs}");
    assert!(logs.contains("signature refused"), "{logs}");
    for secret in [SECRET, hop, "whsec_forger_secret_0000"] {
        assert!(!logs.contains(secret), "a secret is in the logs:\n{logs}");
    }
    for signature in &signatures {
        let hex = signature.rsplit("v1=").next().unwrap();
        assert_eq!(hex.len(), 64);
        assert!(!logs.contains(hex), "a signature is in the logs:\n{logs}");
    }
}

/// `PAYFLOW_EDGE_LOG_FORMAT=json`: every line is one JSON object, and a webhook's request id
/// (the sender's `X-Request-Id`, or one the gateway made and answered with) ties its ingress
/// line to its delivery line and to the request the upstream received.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_tie_ingress_to_delivery_by_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let config = queue_config(&dir.path().join("db"), &upstream.url(), "");
    let env = [("PAYFLOW_EDGE_LOG_FORMAT", "json"), ("PAYFLOW_EDGE_LOG", "payflow_edge=debug")];
    let gw = Gateway::start_with_env(dir.path(), &config, &env);
    let client = client();
    let url = gw.url("/webhooks/payflow");

    let mut request_ids = Vec::new();
    for (id, given) in [("evt_json_given", Some("req-from-payflow-7")), ("evt_json_made", None)] {
        let body = event_body(id, "payment.succeeded");
        let mut request = client.post(&url).body(body.clone());
        for (name, value) in sign(Scheme::PayFlow, SECRET, &body, id) {
            request = request.header(name, value);
        }
        if let Some(given) = given {
            request = request.header("x-request-id", given);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 200);
        let echoed = reply.headers()["x-request-id"].to_str().unwrap().to_string();
        if let Some(given) = given {
            assert_eq!(echoed, given);
        } else {
            assert!(echoed.starts_with("req_"), "{echoed}");
        }
        request_ids.push((id, echoed));
    }
    upstream.wait_for(Duration::from_secs(10), "two deliveries", |r| r.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines: Vec<serde_json::Value> = gw
        .logs()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for (id, request_id) in &request_ids {
        let about = |message: &str| {
            lines.iter().any(|l| {
                l["fields"]["message"] == message
                    && l["fields"]["request_id"] == request_id.as_str()
                    && l["fields"]["event_id"] == *id
            })
        };
        assert!(about("stored"), "no ingress line for {id} with {request_id}");
        assert!(about("delivery attempt"), "no delivery line for {id} with {request_id}");
        let sent =
            upstream.received().into_iter().find(|r| r.header("x-payflow-event-id") == Some(id)).unwrap();
        assert_eq!(sent.header("x-request-id"), Some(request_id.as_str()));
    }
}
