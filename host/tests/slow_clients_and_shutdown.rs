//! Slow clients cannot hold the gateway: headers must arrive within `header_timeout_ms`, the
//! body within `body_timeout_ms` (408), and at most `max_connections` are served at once. On
//! SIGTERM it stops accepting, finishes the request in flight, and exits 0.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn config(db: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 500\nbody_timeout_ms = 500\n{extra}\n[store]\npath = \"{}\"\n[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\n",
        db.display()
    )
}

/// Reads until the peer closes (or 10 s pass); returns what arrived.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn a_client_trickling_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), ""));
    let mut stream = TcpStream::connect(gw.ingress).unwrap();
    stream.write_all(b"POST /wh HTTP/1.1\r\nHost: x\r\n").unwrap(); // and never the rest
    let started = Instant::now();
    let _ = read_to_close(&mut stream);
    // Closed by the gateway, not by our 10 s read timeout.
    assert!(started.elapsed() < Duration::from_secs(9), "connection held for {:?}", started.elapsed());
}

#[test]
fn a_client_stalling_its_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), ""));
    let mut stream = TcpStream::connect(gw.ingress).unwrap();
    stream.write_all(b"POST /wh HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":").unwrap();
    let reply = read_to_close(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_timeout"), "{reply}");
}

async fn try_send(client: &reqwest::Client, url: &str, id: &str) -> Result<u16, reqwest::Error> {
    let body = event_body(id, "payment.succeeded");
    let mut request = client.post(url).body(body.clone());
    for (n, v) in sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id) {
        request = request.header(n, v);
    }
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("db"), "max_connections = 1")
        .replace("header_timeout_ms = 500", "header_timeout_ms = 5000");
    let gw = Gateway::start(dir.path(), &config);
    let url = gw.url("/wh");
    // One idle connection takes the only slot: a request on a second one is not served…
    let idle = TcpStream::connect(gw.ingress).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    assert!(try_send(&impatient, &url, "evt_cap").await.is_err(), "served beyond max_connections");
    // …until the slot is free again.
    drop(idle);
    assert_eq!(try_send(&client(), &url, "evt_cap").await.unwrap(), 200);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        config(&dir.path().join("db"), "").replace("body_timeout_ms = 500", "body_timeout_ms = 5000");
    let mut gw = Gateway::start(dir.path(), &config);
    let body = event_body("evt_in_flight", "payment.succeeded");
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "evt_in_flight");
    let mut request = format!("POST /wh HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
    for (n, v) in &headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(gw.ingress).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // SIGTERM while the body is still arriving.
    std::process::Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(TcpStream::connect(gw.ingress).is_err(), "still accepting after SIGTERM");
    stream.write_all(&body[10..]).unwrap();
    let reply = read_to_close(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("{\"received\":true}"), "{reply}");
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", gw.logs());

    // The acknowledged event is in the (flushed) database.
    let out = std::process::Command::new("python3")
        .args(["-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select id from events').fetchall())"])
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("evt_in_flight"));
}

/// Sends a request whose one header holds `filler` bytes, and returns the reply's status line.
fn status_with_header_of(addr: std::net::SocketAddr, path: &str, filler: usize) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(filler)
    );
    // The gateway may answer and close before it has read everything: a broken pipe is fine.
    let _ = stream.write_all(request.as_bytes());
    read_to_close(&mut stream).lines().next().unwrap_or_default().to_string()
}

/// Regression (issue 16, item 9): hyper's default ~400 KB header buffer let each connection
/// trickling an unfinished header block cost ~600 KiB. The block is now capped by
/// `server.max_header_bytes` (64 KiB by default) on ingress and admin alike, answered 431.
#[test]
fn header_blocks_over_max_header_bytes_get_431_on_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let with_admin = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n",
        config(&dir.path().join("db"), "")
    );
    let gw = Gateway::start(dir.path(), &with_admin);
    let admin = gw.admin.unwrap();
    for (addr, path) in [(gw.ingress, "/wh"), (admin, "/healthz")] {
        // 100 KB: accepted by hyper's default, refused under the 64 KiB default cap.
        let status = status_with_header_of(addr, path, 100_000);
        assert!(status.starts_with("HTTP/1.1 431"), "{path}: {status}");
        // Ordinary headers still pass (ingress answers 401 for the missing signature).
        let status = status_with_header_of(addr, path, 2_000);
        assert!(!status.contains("431"), "{path}: {status}");
    }
    drop(gw);

    // A smaller cap is honoured; one below hyper's minimum buffer is refused by name.
    let config = config(&dir.path().join("db"), "max_header_bytes = 16384");
    let gw = Gateway::start(dir.path(), &config);
    assert!(status_with_header_of(gw.ingress, "/wh", 20_000).starts_with("HTTP/1.1 431"));
    drop(gw);
}
