//! Re-signing deliveries for the merchant's app (`sign_secret`, `sign_scheme`), checked by a
//! receiver written from PayFlow's own webhook page (`receivers/payflow_page.js`: Node's
//! crypto and the page's `verifyWebhookSignature`, not our code). By default the gateway signs
//! as PayFlow does, so such an app accepts every delivery; the timestamped form, which PayFlow
//! never sends, is refused by it (why the default matters); Standard Webhooks is checked by the
//! same receiver's own implementation of that specification.
//!
//! Regression: with `sign_secret` the gateway used to sign only in the `t=…,v1=…` form, so an
//! app that verifies as PayFlow's page says answered 401 and every event went `dead`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{client, manifest_dir, queue_config, send_event, wait_for_status, Gateway};

const WAIT: Duration = Duration::from_secs(20);
const APP_SECRET: &str = "legacy_app_secret_from_payflow_dashboard";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The merchant's app, as PayFlow's page tells them to write it.
struct PageReceiver {
    child: Child,
    port: u16,
}

impl PageReceiver {
    fn start() -> PageReceiver {
        let script = manifest_dir().join("tests/receivers/payflow_page.js");
        let mut child = Command::new("node")
            .arg(&script)
            .args([APP_SECRET, SW_SECRET])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (scripts/setup.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect(&line);
        PageReceiver { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/payflow", self.port)
    }

    /// What it received: (event id, accepted, signature header).
    async fn received(&self) -> Vec<(String, bool, String)> {
        let url = format!("http://127.0.0.1:{}/received", self.port);
        let seen: Vec<Value> = client().get(url).send().await.unwrap().json().await.unwrap();
        seen.iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                (id, r["ok"].as_bool().unwrap(), r["signature"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }
}

impl Drop for PageReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway delivering to the page's receiver with `upstream_extra` on its `[[upstream]]`.
fn gateway(dir: &std::path::Path, app: &PageReceiver, upstream_extra: &str) -> Gateway {
    let config = queue_config(
        &dir.join("db"),
        &app.url(),
        &format!("{upstream_extra}\nmax_attempts = 2\nretry_base_ms = 20"),
    );
    Gateway::start(dir, &config)
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_deliveries_are_signed_as_payflow_signs_and_the_pages_app_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let app = PageReceiver::start();
    let gw = gateway(dir.path(), &app, &format!("sign_secret = \"{APP_SECRET}\""));
    let client = client();
    for id in ["evt_page_1", "evt_page_2"] {
        assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), id).await.0, 200);
        wait_for_status(&client, &gw, id, "delivered", WAIT).await;
    }
    let received = app.received().await;
    assert_eq!(received.len(), 2, "{received:?}");
    for (id, ok, signature) in &received {
        assert!(ok, "{id} refused by the page's check");
        assert!(
            signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
            "bare hex: {signature}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timestamped_form_is_refused_by_the_pages_app_so_it_is_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let app = PageReceiver::start();
    let gw = gateway(dir.path(), &app, &format!("sign_secret = \"{APP_SECRET}\"\nsign_scheme = \"payflow\""));
    let client = client();
    assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), "evt_v1_form").await.0, 200);
    wait_for_status(&client, &gw, "evt_v1_form", "dead", WAIT).await;
    let received = app.received().await;
    assert!(
        !received.is_empty() && received.iter().all(|(_, ok, sig)| !ok && sig.starts_with("t=")),
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_and_none_sign_as_named() {
    let dir = tempfile::tempdir().unwrap();
    let app = PageReceiver::start();
    let gw = gateway(
        dir.path(),
        &app,
        &format!("sign_secret = \"{SW_SECRET}\"\nsign_scheme = \"standard-webhooks\""),
    );
    let client = client();
    assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), "evt_sw").await.0, 200);
    wait_for_status(&client, &gw, "evt_sw", "delivered", WAIT).await;
    let received = app.received().await;
    assert_eq!(received.len(), 1);
    assert!(received[0].1 && received[0].2.starts_with("v1,"), "{received:?}");
    drop(gw);

    // Unsigned: the page's app refuses it, and nothing claims to be a signature.
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &app, "sign_scheme = \"none\"");
    assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), "evt_unsigned").await.0, 200);
    wait_for_status(&client, &gw, "evt_unsigned", "dead", WAIT).await;
    let unsigned: Vec<_> = app.received().await.into_iter().filter(|r| r.0 == "evt_unsigned").collect();
    assert!(
        !unsigned.is_empty() && unsigned.iter().all(|(_, ok, sig)| !ok && sig.is_empty()),
        "{unsigned:?}"
    );
}
