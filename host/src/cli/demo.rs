//! `payflow-edge demo`: the whole flow on loopback with embedded defaults, narrated.
//!
//! Starts a sample legacy app (an HTTP server that just records what it receives) and the
//! gateway in front of it (queue mode, a temporary SQLite file) with three example plugins
//! built into this binary (amount-threshold, ledger, legacy-form), then sends the events a real
//! endpoint meets: valid ones of each seed type, a duplicate, forgeries, a stale replay, an
//! authentic but invalid event, a payment under the threshold. It prints what the gateway
//! answered and what the legacy app saw, and exits non-zero if anything differs from what
//! DESIGN promises, so it doubles as a smoke test.

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
use payflow_config::Config;
use payflow_gateway::samples::sample_event;
use payflow_gateway::Gateway;
use payflow_verify::{SignOptions, Signer};
use serde_json::Value;
use tokio::net::TcpListener;

use super::client::HttpClient;
use super::{unix_now, Failure};

const SECRET: &str = "whsec_demo_secret_do_not_use_in_production";
const ADMIN_TOKEN: &str = "demo-admin-token-0123456789";

/// What the sample legacy app received: (X-PayFlow-Event-Id, headers of interest, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// The example plugins, built from plugins/ by build.rs (empty if that failed).
const PLUGINS: [(&str, &[u8], &str); 3] = [
    (
        "amount-threshold",
        include_bytes!(concat!(env!("OUT_DIR"), "/amount_threshold.wasm")),
        "config = { min_amount = \"1000\" }",
    ),
    ("ledger", include_bytes!(concat!(env!("OUT_DIR"), "/ledger.wasm")), ""),
    ("legacy-form", include_bytes!(concat!(env!("OUT_DIR"), "/legacy_form.wasm")), ""),
];
const PLUGINS_PROBLEM: &str = include_str!(concat!(env!("OUT_DIR"), "/demo-plugins-problem.txt"));
/// Signature headers as (name, value).
type Headers = Vec<(String, String)>;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// After the narration, keep the gateway running (Ctrl-C stops it) to explore the
    /// dashboard at the admin address.
    #[arg(long)]
    stay: bool,
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    Ok(super::runtime()?.block_on(narrate(args.stay))?)
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
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let id = header("x-payflow-event-id");
                        let shown = format!(
                            "{}; X-Ledger-Total: {}",
                            header("content-type"),
                            Some(header("x-ledger-total")).filter(|t| !t.is_empty()).unwrap_or("-".into())
                        );
                        let body =
                            request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        log.lock().unwrap_or_else(|p| p.into_inner()).push((
                            id,
                            shown,
                            String::from_utf8_lossy(&body).into(),
                        ));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"OK"))))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((url, received))
}

async fn narrate(stay: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("payflow-edge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (legacy_url, received) = legacy_app().await?;
    let with_plugins = PLUGINS.iter().all(|(_, wasm, _)| !wasm.is_empty());
    let mut plugins_config = String::new();
    if with_plugins {
        for (name, wasm, extra) in PLUGINS {
            let path = dir.join(format!("{name}.wasm"));
            std::fs::write(&path, wasm)?;
            plugins_config += &format!("[[plugin]]\nname = {name:?}\npath = {:?}\n{extra}\n", path.display());
        }
    }
    let chain = if with_plugins { r#"["amount-threshold", "ledger", "legacy-form"]"# } else { "[]" };
    let config_text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{db}"
wal_prefill_mb = 0  # a few local events: no WAL written ahead (the default 128 MiB) for them
[admin]
listen = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
[[endpoint]]
path = "/webhooks/payflow"
scheme = "payflow"
secrets = ["{SECRET}"]
upstream = "legacy"
plugins = {chain}
[[upstream]]
name = "legacy"
url = "{legacy_url}"
retry_base_ms = 200
{plugins_config}"#,
        db = dir.join("demo.db").display()
    );
    let config = Config::parse(&config_text, |_| None).context("the demo's embedded config")?;
    let gateway = Gateway::start(config).await?;
    let url = format!("http://{}/webhooks/payflow", gateway.ingress_addr);
    println!("payflow-edge demo: everything on loopback, embedded defaults\n");
    println!("  gateway   {url}  (queue mode, store {})", dir.join("demo.db").display());
    println!("  legacy    {legacy_url}  (a sample app that records what it receives)");
    println!("  admin     http://{}", gateway.admin_addr.map(|a| a.to_string()).unwrap_or_default());
    if with_plugins {
        println!("  plugins   amount-threshold (min_amount 1000) → ledger → legacy-form, in wasmtime\n");
    } else {
        println!("  plugins   none: {}\n", PLUGINS_PROBLEM.trim());
    }

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
    let mut small: Value = sample_event("payment.succeeded", "evt_demo_small", now);
    small["data"]["amount"] = serde_json::json!(500);
    let small = serde_json::to_vec(&small)?;

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
        ("payment.succeeded, amount 500", small.clone(), sign(&signer, &small, now), 200),
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

    // Plugins and deliveries run from the durable queue: wait for the valid events to arrive.
    for _ in 0..100 {
        if received.lock().map(|r| r.len()).unwrap_or(0) >= 2 + usize::from(!with_plugins) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // a third delivery would show up now
    println!("\nthe legacy app received:");
    let seen = received.lock().map(|r| r.clone()).unwrap_or_default();
    for (id, headers, body) in &seen {
        println!("  X-PayFlow-Event-Id: {id:<22} {headers}");
        println!("    {}", body.chars().take(110).collect::<String>());
    }
    let mut ids: Vec<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    let expected: &[&str] = if with_plugins {
        &["evt_demo_customer", "evt_demo_paid"]
    } else {
        &["evt_demo_customer", "evt_demo_paid", "evt_demo_small"]
    };
    if ids != expected {
        surprises.push(format!("the legacy app should see exactly {expected:?} once each, saw {ids:?}"));
    }

    let admin = format!("http://{}/api/events", gateway.admin_addr.context("admin listener")?);
    let auth = vec![("Authorization".to_string(), format!("Bearer {ADMIN_TOKEN}"))];
    let (_, listing) = client.request(Method::GET, &admin, &auth, Vec::new()).await?;
    let listing: Value = serde_json::from_slice(&listing)?;
    println!("\nthe store (admin API, GET /api/events):");
    let small_status = listing["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["id"] == "evt_demo_small"))
        .and_then(|e| e["status"].as_str())
        .unwrap_or("missing");
    if with_plugins && small_status != "dropped" {
        surprises.push(format!("amount-threshold should have dropped evt_demo_small; it is {small_status}"));
    }
    for e in listing["events"].as_array().into_iter().flatten() {
        let reason = e["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default();
        println!(
            "  {:<22} {:<18} {}{reason}",
            e["id"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or("")
        );
    }
    if stay {
        let admin = gateway.admin_addr.context("admin listener")?;
        println!("\ndashboard: http://{admin}/  (token {ADMIN_TOKEN}); Ctrl-C stops the demo");
        tokio::signal::ctrl_c().await?;
    }
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if !surprises.is_empty() {
        bail!("the demo saw something unexpected:\n  {}", surprises.join("\n  "));
    }
    println!("\nforgeries were refused with their reason, the duplicate was acknowledged but not");
    println!("delivered twice, the invalid event was kept (quarantined) but not delivered.");
    if with_plugins {
        println!("the plugins dropped the small payment, kept a running total per customer, and");
        println!("rewrote the rest as the form posts an old PHP app expects.");
    }
    Ok(())
}
