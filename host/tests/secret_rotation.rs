//! Secrets with an end (`not_after`): a rotated-out secret is refused after its end while the
//! others pass, `serve` warns a day before one ends and once it has ended (never printing a
//! secret), and an end that is not a time is a start-up error naming the key.

mod support;

use payflow_gateway::samples::rfc3339;
use support::*;

const ENDED: &str = "whsec_rotated_out_0123456789";
const ENDS_SOON: &str = "whsec_ends_within_the_day_0123";
const CURRENT: &str = "whsec_current_secret_0123456789";

async fn post_signed_with(client: &reqwest::Client, url: &str, secret: &str, id: &str) -> u16 {
    let body = event_body(id, "payment.succeeded");
    let headers = sign(payflow_verify::Scheme::PayFlow, secret, &body, id);
    post(client, url, &headers, body).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ended_secret_is_refused_the_others_pass_and_serve_warns_about_both() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let config = config_head(&dir.path().join("db"))
        + &format!(
            r#"
[[endpoint]]
path = "/wh"
secrets = [
  {{ secret = "{ENDED}", not_after = "{}" }},
  {{ secret = "{ENDS_SOON}", not_after = "{}" }},
  "{CURRENT}",
]
"#,
            rfc3339(now - 10),
            rfc3339(now + 3 * 3600),
        );
    let gw = Gateway::start(dir.path(), &config);
    let client = client();
    let url = gw.url("/wh");
    assert_eq!(post_signed_with(&client, &url, ENDED, "evt_ended").await, 401);
    assert_eq!(post_signed_with(&client, &url, ENDS_SOON, "evt_soon").await, 200);
    assert_eq!(post_signed_with(&client, &url, CURRENT, "evt_current").await, 200);

    let logs = gw.logs();
    let ended = logs.lines().find(|l| l.contains("has ended")).unwrap_or_else(|| panic!("{logs}"));
    assert!(ended.contains("secrets[0]") && ended.contains("/wh"), "{ended}");
    let soon = logs.lines().find(|l| l.contains("within a day")).unwrap_or_else(|| panic!("{logs}"));
    assert!(soon.contains("secrets[1]") && soon.contains(&rfc3339(now + 3 * 3600)), "{soon}");
    for secret in [ENDED, ENDS_SOON, CURRENT] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[test]
fn an_end_that_is_not_a_time_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_head(&dir.path().join("db"))
        + &format!("[[endpoint]]\npath = \"/wh\"\nsecrets = [{{ secret = \"{CURRENT}\", not_after = \"next tuesday\" }}]\n");
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let (code, _, err) = cli(&["config", "check", "--config", dir.path().join("c.toml").to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("endpoint[0].secrets[0].not_after") && err.contains("RFC 3339"), "{err}");
    // A table without the secret is refused as what it is.
    let config = config_head(&dir.path().join("db"))
        + "[[endpoint]]\npath = \"/wh\"\nsecrets = [{ not_after = \"2026-12-31T23:59:59Z\" }]\n";
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let (code, _, err) = cli(&["serve", "--config", dir.path().join("c.toml").to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a secret: a string, or a table"), "{err}");
}

/// A fresh Ed25519 key pair made by Node's crypto, and a `v1a,` signature over
/// `{id}.{ts}.{body}` with it: (whpk_ public key, signature header value).
fn node_ed25519_signature(id: &str, ts: i64, body: &[u8]) -> (String, String) {
    // The body arrives on stdin, byte for byte.
    let script = "const c=require('crypto');const [id,ts]=process.argv.slice(1);\
        const b=require('fs').readFileSync(0);\
        const {publicKey,privateKey}=c.generateKeyPairSync('ed25519');\
        const pk=Buffer.from(publicKey.export({format:'jwk'}).x,'base64url').toString('base64');\
        const sig=c.sign(null,Buffer.concat([Buffer.from(id+'.'+ts+'.'),b]),privateKey).toString('base64');\
        process.stdout.write('whpk_'+pk+' v1a,'+sig)";
    let mut child = std::process::Command::new("node")
        .args(["-e", script, id, &ts.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/setup.sh installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (key, signature) =
        text.split_once(' ').unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (key.to_string(), signature.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_with_a_whpk_public_key_takes_ed25519_signatures_made_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let body = event_body("evt_ed25519", "payment.succeeded");
    let now = unix_now();
    let (public_key, signature) = node_ed25519_signature("evt_ed25519", now, &body);
    let config = config_head(&dir.path().join("db"))
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nscheme = \"standard-webhooks\"\nsecrets = [\"{public_key}\"]\n"
        );
    let gw = Gateway::start(dir.path(), &config);
    let client = client();
    let headers = |id: &str, signature: &str| {
        vec![
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), now.to_string()),
            ("webhook-signature".to_string(), signature.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ]
    };
    let url = gw.url("/wh");
    let (status, reply) = post(&client, &url, &headers("evt_ed25519", &signature), body.clone()).await;
    assert_eq!((status, reply), (200, serde_json::json!({"received": true})));
    // The same signature for another id, or over another body, is refused.
    let (status, reply) = post(&client, &url, &headers("evt_other", &signature), body.clone()).await;
    assert_eq!((status, reply["error"].as_str()), (401, Some("invalid_signature")));
    let tampered = String::from_utf8(body).unwrap().replace("2500", "9500").into_bytes();
    assert_eq!(post(&client, &url, &headers("evt_ed25519", &signature), tampered).await.0, 401);
    // A whpk_ key that is no key is a start-up error naming it.
    std::fs::write(
        dir.path().join("bad.toml"),
        config_head(&dir.path().join("db2"))
            + "[[endpoint]]\npath = \"/wh\"\nscheme = \"standard-webhooks\"\nsecrets = [\"whpk_AAAA\"]\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["serve", "--config", dir.path().join("bad.toml").to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("whpk_") && err.contains("endpoint[0]"), "{err}");
}
