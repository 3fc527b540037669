//! `payflow-edge listen --forward-to URL` as a developer runs it: no config; it prints a signing
//! secret that stays the same across restarts (kept in its data directory), forwards what it
//! verifies to the app re-signed with that secret as PayFlow signs, and prints each event's
//! delivery live.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use support::{client, post, Upstream};

struct Listen {
    child: Child,
    lines: Receiver<String>,
}

impl Listen {
    fn start(data: &std::path::Path, port: u16, forward_to: &str) -> Listen {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
            .args([
                "listen",
                "--forward-to",
                forward_to,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .env("PAYFLOW_EDGE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Listen { child, lines }
    }

    /// Lines until one contains every one of `words`; that one.
    fn until(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("no line with {words:?}"));
            if words.iter().all(|w| line.contains(w)) {
                return line;
            }
        }
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_keeps_its_secret_forwards_resigned_and_shows_deliveries() {
    let data = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = Listen::start(data.path(), port, &app.url());
    assert!(listen.until(&["Ready!"]).contains(&app.url()));
    let secret = listen.until(&["signing secret is"]).rsplit(' ').next().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path().join("listen-secret")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the secret is readable by its owner only");
    // A developer's listener takes a few events: no 128 MiB WAL written ahead in their data dir.
    let wal = std::fs::metadata(data.path().join("listen.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(wal < 1 << 20, "the listener's WAL is {wal} bytes");

    // Signed with the printed secret, as PayFlow would: forwarded, re-signed, shown live.
    let body = support::event_body("evt_listened", "payment.succeeded");
    let headers = support::sign(payflow_verify::Scheme::PayFlow, &secret, &body, "evt_listened");
    let url = format!("http://127.0.0.1:{port}/webhooks/payflow");
    assert_eq!(post(&client(), &url, &headers, body.clone()).await.0, 200);
    // Shown live: the line that says it was delivered (a `queued` one may come first).
    listen.until(&["evt_listened", "delivered"]);
    app.wait_for(Duration::from_secs(10), "the forward", |r| !r.is_empty()).await;
    let forwarded = &app.received()[0];
    let expected = hmac_hex(&secret, &forwarded.body);
    assert_eq!(forwarded.header("x-payflow-signature"), Some(expected.as_str()));
    // A wrong secret is refused.
    let forged = support::sign(payflow_verify::Scheme::PayFlow, "whsec_not_it", &body, "evt_forged");
    assert_eq!(post(&client(), &url, &forged, body).await.0, 401);
    drop(listen);

    // Restarted: the same secret.
    let again = Listen::start(data.path(), port, &app.url());
    again.until(&["Ready!"]);
    assert!(again.until(&["signing secret is"]).ends_with(&secret));
}

/// Hex HMAC-SHA256 by Python's hmac (not our code).
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            secret,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
