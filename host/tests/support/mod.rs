//! Test support: the real `payflow-edge serve` process, a small fake upstream (the "legacy
//! app"), and helpers to sign and send events over loopback.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use payflow_verify::{Scheme, SignOptions, Signer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const SECRET: &str = "whsec_test_secret_0123456789";
pub const ADMIN_TOKEN: &str = "operator-token-0123456789abcdef";

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A running `payflow-edge serve` process, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub ingress: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub tls: bool,
    pub dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl Gateway {
    /// Writes `config` to `dir/payflow-edge.toml` and starts the gateway on it.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        Gateway::start_with_env(dir, config, &[])
    }

    /// [`Gateway::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Gateway {
        let path = dir.join("payflow-edge.toml");
        std::fs::write(&path, config).unwrap();
        let stderr_log = dir.join(format!("gateway-{}.log", Instant::now().elapsed().as_nanos()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("PAYFLOW_EDGE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("start payflow-edge serve");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut ingress, mut admin, mut tls) = (None, None, false);
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("payflow-edge: ingress listening on ") {
                tls = url.starts_with("https://");
                ingress = Some(url.split("://").nth(1).unwrap().parse().unwrap());
                if !config.contains("[admin]") {
                    break;
                }
            } else if let Some(url) = line.strip_prefix("payflow-edge: admin listening on http://") {
                admin = Some(url.parse().unwrap());
                break;
            }
        }
        let Some(ingress) = ingress else {
            let _ = child.wait();
            panic!("gateway did not start:\n{}", std::fs::read_to_string(&stderr_log).unwrap_or_default());
        };
        Gateway { child, ingress, admin, tls, dir: dir.to_path_buf(), stderr_log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", if self.tls { "https" } else { "http" }, self.ingress)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// kill -9: no chance to flush or finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the fake upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub at: Instant,
    /// What the upstream answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How the fake upstream answers: scripted statuses first (with optional headers), then
/// `default_status`; each reply after `delay`.
pub struct Behavior {
    pub script: VecDeque<(u16, Vec<(String, String)>)>,
    pub default_status: u16,
    pub delay: Duration,
    /// Events answered with a status of their own, before the script: (status, times left;
    /// `u32::MAX` for ever).
    pub by_event: std::collections::HashMap<String, (u16, u32)>,
}

/// A small HTTP server standing in for the merchant's legacy app.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behavior: Arc<Mutex<Behavior>>,
    /// Requests whose headers arrived, answered or not (a delayed reply is counted at once).
    pub started: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            started: Arc::default(),
            behavior: Arc::new(Mutex::new(Behavior {
                script: VecDeque::new(),
                default_status: 200,
                delay: Duration::ZERO,
                by_event: Default::default(),
            })),
        };
        let this = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.answer(request).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        upstream
    }

    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let event_id =
            request.headers().get("x-payflow-event-id").map_or("", |v| v.to_str().unwrap()).to_string();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let ((status, extra), delay) = {
            let mut b = self.behavior.lock().unwrap();
            let own = match b.by_event.get_mut(&event_id) {
                Some((status, left)) if *left > 0 => {
                    *left = left.saturating_sub(u32::from(*left != u32::MAX));
                    Some((*status, Vec::new()))
                }
                _ => None,
            };
            let reply = own.or_else(|| b.script.pop_front()).unwrap_or((b.default_status, Vec::new()));
            (reply, b.delay)
        };
        tokio::time::sleep(delay).await;
        // Recorded once the reply is decided, i.e. what the upstream "processed".
        self.received.lock().unwrap().push(Received {
            event_id: event_id.clone(),
            headers,
            body,
            at: Instant::now(),
            status,
        });
        let mut response =
            Response::new(Full::new(Bytes::from(format!("legacy says {status} to {event_id}"))));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in extra {
            response.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_str(&value).unwrap(),
            );
        }
        response
    }

    pub fn url(&self) -> String {
        format!("http://{}/payflow", self.addr)
    }

    pub fn set_default(&self, status: u16) {
        self.behavior.lock().unwrap().default_status = status;
    }

    pub fn script(&self, replies: &[(u16, &[(&str, &str)])]) {
        let mut b = self.behavior.lock().unwrap();
        for (status, headers) in replies {
            b.script
                .push_back((*status, headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()));
        }
    }

    /// Answers `event_id`'s requests with `status`, `times` times (`u32::MAX`: until told
    /// otherwise), whatever the script says.
    pub fn answer_event(&self, event_id: &str, status: u16, times: u32) {
        self.behavior.lock().unwrap().by_event.insert(event_id.to_string(), (status, times));
    }

    pub fn set_delay(&self, delay: Duration) {
        self.behavior.lock().unwrap().delay = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.event_id).collect()
    }

    /// Waits until `pred` holds for what was received, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.received()) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; upstream received {:?}", self.ids());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A seed-shaped event body.
pub fn event_body(id: &str, event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&payflow_gateway::samples::sample_event(event_type, id, unix_now())).unwrap()
}

/// A seed-shaped `payment.succeeded` event with this amount, to change further or serialise.
pub fn payment_with_amount(id: &str, amount: i64) -> Value {
    let mut body: Value = serde_json::from_slice(&event_body(id, "payment.succeeded")).unwrap();
    body["data"]["amount"] = amount.into();
    body
}

/// Signature headers for `body` under `scheme` (our signer, itself checked against Python's
/// hmac in cli_sign_verify.rs; the verifier is checked against third-party vectors).
pub fn sign(scheme: Scheme, secret: &str, body: &[u8], id: &str) -> Vec<(String, String)> {
    let signer = Signer::new(scheme, &[secret]).unwrap();
    let mut headers =
        signer.sign(body, &SignOptions { id: Some(id), ..SignOptions::at(unix_now()) }).unwrap();
    headers.push(("content-type".into(), "application/json".into()));
    headers
}

pub fn client() -> reqwest::Client {
    // The gateway closes a kept-alive connection that has waited `header_timeout_ms` (5 s) for
    // a request. A pooled connection reused at that moment is reset under the request: a test
    // that slept 5 s and then asked the admin API failed on CI that way. A client must drop
    // idle connections sooner than the server does, as this one does.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// POSTs a payflow-v1-signed body; returns (status, JSON reply).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    try_post(client, url, headers, body).await.expect("request")
}

/// [`post`], or the error when no reply came (the connection was refused or cut).
pub async fn try_post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(json!({ "raw": text }))))
}

/// Sends one signed event (payflow v1 with SECRET).
pub async fn send_event(client: &reqwest::Client, url: &str, id: &str) -> (u16, Value) {
    try_send_event(client, url, id).await.expect("request")
}

/// [`send_event`], or the error when no reply came.
pub async fn try_send_event(
    client: &reqwest::Client,
    url: &str,
    id: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let body = event_body(id, "payment.succeeded");
    try_post(client, url, &sign(Scheme::PayFlow, SECRET, &body, id), body).await
}

/// `name{labels} value` lines of a `/metrics` scrape, by `name{labels}`.
pub fn samples(page: &str) -> std::collections::BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The operator's scrape of `gw`'s `/metrics`, by `name{labels}`.
pub async fn metrics(gw: &Gateway) -> std::collections::BTreeMap<String, f64> {
    let response = client().get(gw.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    samples(&response.text().await.unwrap())
}

/// GET on the admin API with a token.
pub async fn admin_get(client: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(token).send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An empty POST on the admin API with a token (a replay, say); returns the status.
pub async fn admin_post(client: &reqwest::Client, url: &str, token: &str) -> u16 {
    client.post(url).bearer_auth(token).send().await.expect("admin request").status().as_u16()
}

/// Polls the admin API until the event has `status`, or panics.
pub async fn wait_for_status(
    client: &reqwest::Client,
    gateway: &Gateway,
    id: &str,
    status: &str,
    timeout: Duration,
) {
    wait_for_status_at(client, &gateway.admin_url(""), id, status, timeout).await
}

/// [`wait_for_status`] on the admin API at `admin` (its base URL), of a gateway run in any way.
pub async fn wait_for_status_at(
    client: &reqwest::Client,
    admin: &str,
    id: &str,
    status: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let (code, event) = admin_get(client, &format!("{admin}/api/events/{id}"), ADMIN_TOKEN).await;
        if code == 200 && event["status"] == status {
            return;
        }
        last = event;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("event {id} never reached {status}; last seen {last}");
}

/// The lines every test gateway's config starts with: loopback listeners on free ports, the
/// store at `db`, the admin API with the operator's token.
pub fn config_head(db: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n",
        db.display().to_string()
    )
}

/// Admin tokens of the two merchants of [`TWO_MERCHANTS`].
pub const ACME_TOKEN: &str = "acme-token-0123456789abcdef";
pub const GLOBEX_TOKEN: &str = "globex-token-0123456789abcdef";
/// Two merchants, `acme` and `globex`, each with its scoped admin token.
pub const TWO_MERCHANTS: &str = "[[merchant]]\nid = \"acme\"\ntoken = \"acme-token-0123456789abcdef\"\n[[merchant]]\nid = \"globex\"\ntoken = \"globex-token-0123456789abcdef\"\n";

/// [`TWO_MERCHANTS`], each with a queue endpoint (`/acme`, `/globex`) delivering to its own
/// upstream (`acme-app`, `globex-app`, both at `upstream_url`); `acme_extra` goes into acme's
/// endpoint (say, its plugins).
pub fn two_merchants_config(db: &Path, upstream_url: &str, acme_extra: &str) -> String {
    config_head(db)
        + TWO_MERCHANTS
        + &format!(
            r#"
[[endpoint]]
merchant = "acme"
path = "/acme"
secrets = ["{SECRET}"]
upstream = "acme-app"
{acme_extra}
[[endpoint]]
merchant = "globex"
path = "/globex"
secrets = ["{SECRET}"]
upstream = "globex-app"
[[upstream]]
name = "acme-app"
merchant = "acme"
url = "{upstream_url}"
[[upstream]]
name = "globex-app"
merchant = "globex"
url = "{upstream_url}"
"#
        )
}

/// A config with one payflow queue endpoint delivering to `upstream_url`.
pub fn queue_config(db: &Path, upstream_url: &str, extra_upstream: &str) -> String {
    config_head(db)
        + &format!(
            r#"
[[endpoint]]
path = "/webhooks/payflow"
secrets = ["{SECRET}"]
upstream = "legacy"
[[upstream]]
name = "legacy"
url = "{upstream_url}"
{extra_upstream}
"#
        )
}

/// Builds every example and hostile plugin from source (Rust, JavaScript, Python; once per
/// test run, by scripts/build-plugins.sh) and returns the folder holding their .wasm files.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = manifest_dir().parent().unwrap().to_path_buf();
        let target =
            std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo.join("target"));
        let status = Command::new(repo.join("scripts/build-plugins.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("scripts/build-plugins.sh runs");
        assert!(status.success(), "building the plugins failed (scripts/setup.sh installs what it needs)");
        target.join("guests/wasm32-wasip2/release")
    })
}

/// The package's directory, read when the test runs: a test binary may be reused from a build in
/// another checkout that shares the build cache, so `env!("CARGO_MANIFEST_DIR")` (fixed at
/// compile time) can name a directory that no longer exists.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}

/// The signature PayFlow's page computes for `body`: hex HMAC-SHA256 over
/// `JSON.stringify(JSON.parse(body))`, by Node's own crypto and JSON (not our code).
pub fn payflow_page_signature(secret: &str, body: &str) -> String {
    let node = std::process::Command::new("node")
        .args([
            "-e",
            "const c=require('crypto');const [s,b]=process.argv.slice(1);\
             process.stdout.write(c.createHmac('sha256',s).update(JSON.stringify(JSON.parse(b))).digest('hex'))",
            secret,
            body,
        ])
        .output()
        .expect("node (scripts/setup.sh installs it)");
    let hex = String::from_utf8(node.stdout).unwrap();
    assert_eq!(hex.len(), 64, "{}", String::from_utf8_lossy(&node.stderr));
    hex
}

/// Runs `payflow-edge ARGS…` to completion: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(args)
        .env_remove("PAYFLOW_WEBHOOK_SECRET")
        .env_remove("PAYFLOW_EDGE_ADMIN_TOKEN")
        .output()
        .expect("payflow-edge runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `payflow-edge ARGS…` against `gw`'s admin API with `token` (an admin command:
/// `plugin`, `events`…): (exit code, stdout, stderr).
pub fn admin_cli(gw: &Gateway, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let admin = gw.admin_url("");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", &admin, "--token", token]);
    cli(&all)
}

/// Sends 40 events through a gateway on `config` (a queue endpoint to `upstream`, 8 workers),
/// SIGTERMs it while every worker holds a delivery (the upstream answers slowly), restarts it,
/// and checks that each event reached the upstream exactly once: every attempt made before
/// the exit was recorded.
pub async fn sigterm_mid_delivery_then_restart(dir: &Path, config: &str, upstream: &Upstream) {
    upstream.set_delay(Duration::from_millis(300));
    let mut gw = Gateway::start(dir, config);
    let (client, url) = (client(), gw.url("/webhooks/payflow"));
    let ids: Vec<String> = (0..40).map(|i| format!("evt_sigterm_{i:02}")).collect();
    for id in &ids {
        assert_eq!(send_event(&client, &url, id).await.0, 200);
    }
    upstream.wait_for(Duration::from_secs(10), "the first deliveries", |r| !r.is_empty()).await;
    let (status, logs) = tokio::task::spawn_blocking(move || (gw.terminate(), gw.logs())).await.unwrap();
    assert!(status.success(), "exit status {status:?}\n{logs}");
    let before_restart = upstream.ids().len();
    assert!(before_restart < ids.len(), "all delivered before SIGTERM: the test proves nothing");

    upstream.set_delay(Duration::ZERO);
    let _gw = Gateway::start(dir, config);
    upstream
        .wait_for(Duration::from_secs(30), "every event delivered", |r| {
            let mut seen: Vec<&str> = r.iter().map(|r| r.event_id.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() == ids.len()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a second sending would have come by now
    let mut received = upstream.ids();
    received.sort();
    let mut once = received.clone();
    once.dedup();
    assert_eq!(received.len(), once.len(), "sent twice: {received:?} ({before_restart} before the restart)");
}
