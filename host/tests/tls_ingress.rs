//! TLS on ingress: a self-signed certificate made with rcgen is served, and a client that
//! trusts only that certificate verifies it and delivers a webhook over HTTPS. `send` and the
//! admin's test webhooks speak HTTPS too.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, cert_path) = tls_gateway(dir.path());
    let cert_pem = std::fs::read(cert_path).unwrap();
    assert!(gw.tls, "serve must announce an https listener");
    let port = gw.ingress.port();

    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).unwrap())
        .resolve("localhost", gw.ingress)
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/wh");
    assert_eq!(send_event(&trusting, &url, "evt_tls").await, (200, json!({"received": true})));

    // A client that does not trust the certificate refuses the connection…
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve("localhost", gw.ingress)
        .build()
        .unwrap();
    assert!(untrusting.post(&url).body("{}").send().await.is_err());
    // …and plain HTTP to the TLS port gets no HTTP answer.
    assert!(client().post(format!("http://127.0.0.1:{port}/wh")).body("{}").send().await.is_err());
}

/// A gateway on 127.0.0.1 with a self-signed certificate for `localhost`, and an admin
/// listener. Returns the gateway and the certificate's PEM file.
fn tls_gateway(dir: &std::path::Path) -> (Gateway, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[store]\npath = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\n",
        cert_path.display(),
        key_path.display(),
        dir.join("db").display()
    );
    (Gateway::start(dir, &config), cert_path)
}

#[test]
fn send_over_https_trusts_the_cacert_or_insecure_and_names_the_fix_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, cert) = tls_gateway(dir.path());
    let port = gw.ingress.port();
    let by_name = format!("https://localhost:{port}/wh");
    let by_address = format!("https://127.0.0.1:{port}/wh");
    let cert = cert.to_str().unwrap();

    let (code, out, err) = cli(&["send", "--url", &by_name, "--secret", SECRET, "--cacert", cert]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("200") && out.contains("\"received\":true"), "{out}");

    // The system's roots do not know a self-signed certificate: the error says what to pass.
    let (code, out, err) = cli(&["send", "--url", &by_name, "--secret", SECRET]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("--cacert") && err.contains("--insecure") && err.contains(&by_name), "{err}");

    // The certificate names localhost, not 127.0.0.1: refused even with --cacert…
    let (code, _, err) = cli(&["send", "--url", &by_address, "--secret", SECRET, "--cacert", cert]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    // …and accepted with --insecure, which checks neither.
    let (code, out, err) = cli(&["send", "--url", &by_address, "--secret", SECRET, "--insecure"]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A CA file that is not one is a usage error naming the flag.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (code, _, err) =
        cli(&["send", "--url", &by_name, "--secret", SECRET, "--cacert", junk.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--cacert") && err.contains("junk.pem"), "{err}");
    // The two flags contradict each other.
    let (code, _, err) =
        cli(&["send", "--url", &by_name, "--secret", SECRET, "--cacert", cert, "--insecure"]);
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_webhooks_reach_an_ingress_that_speaks_only_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = tls_gateway(dir.path());
    let reply = client()
        .post(gw.admin_url("/api/test-webhook"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "endpoint": "/wh" }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let reply: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["reply"], json!({"received": true}), "{reply}");
}

#[test]
fn unreadable_tls_material_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{0}/cert.pem\"\ntls_key = \"{0}/missing.pem\"\n[store]\npath = \"{0}/db\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"s\"]\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(["serve", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_cert") || stderr.contains("tls_key"), "{stderr}");
}
