//! `payflow-edge demo`: the whole flow on loopback with embedded defaults, narrated.
//!
//! Starts a sample legacy app (an HTTP server that just records what it receives) and the
//! gateway in front of it (queue mode, a temporary SQLite file), then sends the events a real
//! endpoint meets: valid ones of each seed type, a duplicate, forgeries, a stale replay, an
//! authentic but invalid event. It prints what the gateway answered and what the legacy app
//! saw, and exits non-zero if anything differs from what DESIGN promises, so it doubles as a
//! smoke test.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use payflow_edge::config::Config;
use payflow_edge::gateway::Gateway;
use payflow_edge::samples::sample_event;
use payflow_verify::{SignOptions, Signer};
use serde_json::Value;
use tokio::net::TcpListener;

use super::client::HttpClient;
use super::{unix_now, Failure};

const SECRET: &str = "whsec_demo_secret_do_not_use_in_production";
const ADMIN_TOKEN: &str = "demo-admin-token-0123456789";

/// What the sample legacy app received: (X-PayFlow-Event-Id, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;
/// Signature headers as (name, value).
type Headers = Vec<(String, String)>;

pub fn run() -> Result<(), Failure> {
    Ok(super::runtime()?.block_on(narrate())?)
}

async fn legacy_app() -> anyhow::Result<(String, Received)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/payflow", listener.local_addr()?);
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let id = request.headers().get("x-payflow-event-id").and_then(|v| v.to_str().ok());
                        let id = id.unwrap_or("").to_string();
                        let body =
                            request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, String::from_utf8_lossy(&body).into()));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"OK"))))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((url, received))
}

async fn narrate() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("payflow-edge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (legacy_url, received) = legacy_app().await?;
    let config_text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{db}"
[admin]
listen = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
[[endpoint]]
path = "/webhooks/payflow"
scheme = "payflow"
secrets = ["{SECRET}"]
upstream = "legacy"
[[upstream]]
name = "legacy"
url = "{legacy_url}"
retry_base_ms = 200
"#,
        db = dir.join("demo.db").display()
    );
    let config = Config::parse(&config_text, |_| None).context("the demo's embedded config")?;
    let gateway = Gateway::start(config).await?;
    let url = format!("http://{}/webhooks/payflow", gateway.ingress_addr);
    println!("payflow-edge demo: everything on loopback, embedded defaults\n");
    println!("  gateway   {url}  (queue mode, store {})", dir.join("demo.db").display());
    println!("  legacy    {legacy_url}  (a sample app that records what it receives)");
    println!("  admin     http://{}\n", gateway.admin_addr.map(|a| a.to_string()).unwrap_or_default());

    let now = unix_now();
    let signer = Signer::new(payflow_verify::Scheme::PayFlow, &[SECRET])?;
    let attacker = Signer::new(payflow_verify::Scheme::PayFlow, &["whsec_attacker"])?;
    let event = |t: &str, id: &str| serde_json::to_vec(&sample_event(t, id, now)).unwrap_or_default();
    let paid = event("payment.succeeded", "evt_demo_paid");
    let customer = event("customer.created", "evt_demo_customer");
    let mut invalid: Value = sample_event("payment.failed", "evt_demo_invalid", now);
    invalid["data"]["amount"] = serde_json::json!(25.5);
    let invalid = serde_json::to_vec(&invalid)?;
    let tampered =
        String::from_utf8_lossy(&paid).replace("2500", "1").replace("evt_demo_paid", "evt_demo_tampered");

    let sign = |s: &Signer, body: &[u8], at: i64| s.sign(body, &SignOptions::at(at)).unwrap_or_default();
    let cases: Vec<(&str, Vec<u8>, Headers, u16)> = vec![
        ("payment.succeeded, signed", paid.clone(), sign(&signer, &paid, now), 200),
        ("the same event again (PayFlow retry)", paid.clone(), sign(&signer, &paid, now), 200),
        ("customer.created, signed", customer.clone(), sign(&signer, &customer, now), 200),
        ("signed with the wrong secret", paid.clone(), sign(&attacker, &paid, now), 401),
        ("amount changed after signing", tampered.clone().into_bytes(), sign(&signer, &paid, now), 401),
        ("replayed 10 minutes later", paid.clone(), sign(&signer, &paid, now - 600), 401),
        ("no signature", paid.clone(), Vec::new(), 401),
        ("authentic, amount 25.5 (invalid)", invalid.clone(), sign(&signer, &invalid, now), 200),
        ("authentic, not JSON", b"amount=2500".to_vec(), sign(&signer, b"amount=2500", now), 400),
    ];
    let client = HttpClient::new();
    println!("{:<40} {:<6} gateway's reply", "sent", "status");
    let mut surprises = Vec::new();
    for (label, body, headers, expected) in cases {
        let (status, reply) = client.request(Method::POST, &url, &headers, body).await?;
        println!("{label:<40} {:<6} {}", status.as_u16(), String::from_utf8_lossy(&reply));
        if status.as_u16() != expected {
            surprises.push(format!("{label}: expected {expected}, got {}", status.as_u16()));
        }
    }

    // Deliveries run from the durable queue: wait for the two valid events to arrive.
    for _ in 0..100 {
        if received.lock().map(|r| r.len()).unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // a third delivery would show up now
    println!("\nthe legacy app received:");
    let seen = received.lock().map(|r| r.clone()).unwrap_or_default();
    for (id, body) in &seen {
        let ev: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        println!("  X-PayFlow-Event-Id: {id:<22} {}", ev["type"].as_str().unwrap_or("?"));
    }
    let mut ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    if ids != ["evt_demo_customer", "evt_demo_paid"] {
        surprises
            .push(format!("the legacy app should see exactly the two valid events once each, saw {ids:?}"));
    }

    let admin = format!("http://{}/api/events", gateway.admin_addr.context("admin listener")?);
    let auth = vec![("Authorization".to_string(), format!("Bearer {ADMIN_TOKEN}"))];
    let (_, listing) = client.request(Method::GET, &admin, &auth, Vec::new()).await?;
    let listing: Value = serde_json::from_slice(&listing)?;
    println!("\nthe store (admin API, GET /api/events):");
    for e in listing["events"].as_array().into_iter().flatten() {
        let reason = e["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default();
        println!(
            "  {:<22} {:<18} {}{reason}",
            e["id"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or("")
        );
    }
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if !surprises.is_empty() {
        bail!("the demo saw something unexpected:\n  {}", surprises.join("\n  "));
    }
    println!("\nforgeries were refused with their reason, the duplicate was acknowledged but not");
    println!("delivered twice, the invalid event was kept (quarantined) but not delivered.");
    Ok(())
}
