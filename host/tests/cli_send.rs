//! `payflow-edge send` against the real gateway: sample events of a seed type with `--set`
//! overrides, `--count`, a repeated `--id` (de-duplication seen from the sender), another
//! scheme, and a wrong secret (exit 1).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn send(args: &[&str]) -> (Option<i32>, String, String) {
    cli(&[&["send"], args].concat())
}

#[tokio::test(flavor = "multi_thread")]
async fn send_delivers_sample_events_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &queue_config(&dir.path().join("db"), &upstream.url(), ""));
    let url = gw.url("/webhooks/payflow");

    let (code, stdout, stderr) = send(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--type",
        "payment.failed",
        "--set",
        "data.amount=5000",
        "--count",
        "3",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("sent 3: 200×3"), "{stdout}");
    upstream.wait_for(Duration::from_secs(10), "three deliveries", |r| r.len() == 3).await;
    for r in upstream.received() {
        let event: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (event["type"].as_str(), event["data"]["amount"].as_i64()),
            (Some("payment.failed"), Some(5000))
        );
        assert_eq!(event["data"]["status"], "failed");
    }

    // The same id three times: one new, two duplicates.
    let (code, stdout, _) = send(&["--url", &url, "--secret", SECRET, "--id", "evt_again", "--count", "3"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.matches("\"duplicate\":true").count(), 2, "{stdout}");

    // A wrong secret: refused, exit 1, the reason shown.
    let (code, stdout, stderr) = send(&["--url", &url, "--secret", "whsec_wrong"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("invalid_signature"), "{stdout}");
    assert!(stderr.contains("1 of 1 requests were not accepted"), "{stderr}");

    // Bad usage: exit 2.
    let (code, _, stderr) = send(&["--url", &url, "--secret", SECRET, "--set", "nonsense"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) = send(&["--url", "http://127.0.0.1:1/nowhere", "--secret", SECRET]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_signs_with_the_chosen_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let sw_secret = "whsec_c2VuZC1zdGFuZGFyZC13ZWJob29rcy1rZXk=";
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n[[endpoint]]\npath = \"/sw\"\nscheme = \"standard-webhooks\"\nsecrets = [\"{sw_secret}\"]\n",
        dir.path().join("db").display()
    );
    let gw = Gateway::start(dir.path(), &config);
    let (code, stdout, stderr) = send(&[
        "--url",
        &gw.url("/sw"),
        "--secret",
        sw_secret,
        "--scheme",
        "standard-webhooks",
        "--type",
        "customer.created",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("{\"received\":true}"), "{stdout}");
}

/// By default `send` signs as PayFlow does (`X-PayFlow-Signature: <hex>` over the body,
/// checked here with Node's crypto as PayFlow's page computes it), not in the timestamped form;
/// a URL without `http://` gets the fix suggested, and a refused connection names the address.
#[tokio::test(flavor = "multi_thread")]
async fn send_signs_as_payflow_does_by_default_and_says_what_to_fix() {
    let app = Upstream::start().await;
    let (code, _, stderr) = send(&["--url", &app.url(), "--secret", SECRET, "--id", "evt_form"]);
    assert_eq!(code, Some(0), "{stderr}");
    let received = app.received();
    let signature = received[0].header("x-payflow-signature").unwrap().to_string();
    let body = std::str::from_utf8(&received[0].body).unwrap();
    assert_eq!(signature, payflow_page_signature(SECRET, body), "the page's check accepts it");

    let bare = app.url().trim_start_matches("http://").to_string();
    let (code, _, stderr) = send(&["--url", &bare, "--secret", SECRET]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains(&format!("http://{bare}")), "{stderr}");

    let (code, _, stderr) = send(&["--url", "http://127.0.0.1:1/webhooks", "--secret", SECRET]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("127.0.0.1:1") && stderr.contains("refused"), "{stderr}");
}
