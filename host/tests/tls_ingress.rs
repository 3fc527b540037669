//! TLS on ingress: a self-signed certificate made with rcgen is served, and a client that
//! trusts only that certificate verifies it and delivers a webhook over HTTPS.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[store]\npath = \"{}\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\n",
        cert_path.display(),
        key_path.display(),
        dir.path().join("db").display()
    );
    let gw = Gateway::start(dir.path(), &config);
    assert!(gw.tls, "serve must announce an https listener");
    let port = gw.ingress.port();

    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
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
