//! Uploading plugins through the admin API: validation with clear refusals, merchant scoping,
//! an atomic swap under load (no event lost or run on a half-loaded plugin), rollback, and a
//! restart that loads every version from the compiled cache instead of compiling again.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{client, guests, send_event, wait_for_status, Gateway, Upstream, ADMIN_TOKEN, SECRET};

const ACME: &str = support::ACME_TOKEN;
const GLOBEX: &str = support::GLOBEX_TOKEN;
const WAIT: Duration = Duration::from_secs(30);

fn config(db: &std::path::Path, acme_app: &str, globex_app: &str) -> String {
    support::config_head(db)
        + support::TWO_MERCHANTS
        + &format!(
            r#"
[plugins]
max_attempts = 100
retry_base_ms = 50
retry_max_ms = 200
max_upload_bytes = 400000
[[endpoint]]
merchant = "acme"
path = "/acme"
secrets = ["{SECRET}"]
plugins = ["transform"]
upstream = "acme-app"
[[endpoint]]
merchant = "globex"
path = "/globex"
secrets = ["{SECRET}"]
plugins = ["g-threshold"]
upstream = "globex-app"
[[upstream]]
name = "acme-app"
merchant = "acme"
url = "{acme_app}"
[[upstream]]
name = "globex-app"
merchant = "globex"
url = "{globex_app}"
[[plugin]]
name = "transform"
merchant = "acme"
[[plugin]]
name = "g-threshold"
merchant = "globex"
path = "{threshold}"
config = {{ min_amount = "1" }}
"#,
            threshold = guests().join("amount_threshold.wasm").display()
        )
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let response = client.request(method, url).bearer_auth(token).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guests().join(format!("{name}.wasm"))).unwrap()
}

/// Which version's behaviour a delivery shows: v1 (legacy-form) sends a form, v2 (ledger)
/// JSON with a running total. Never both, never neither.
fn version_seen(r: &support::Received) -> u64 {
    let form = r.header("content-type") == Some("application/x-www-form-urlencoded");
    let ledger = r.header("x-ledger-total").is_some();
    match (form, ledger) {
        (true, false) => 1,
        (false, true) => 2,
        _ => panic!("delivery of {} shows neither or both versions: {:?}", r.event_id, r.headers),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_validate_scope_hot_swap_rollback_and_restart_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let acme_app = Upstream::start().await;
    let globex_app = Upstream::start().await;
    let text = config(&dir.path().join("db.sqlite"), &acme_app.url(), &globex_app.url());
    let mut gateway = Gateway::start(dir.path(), &text);
    let client = client();
    let plugin_url = |g: &Gateway, rest: &str| g.admin_url(&format!("/api/plugins/transform{rest}"));
    use reqwest::Method;

    // Not uploaded yet: an event waits, retried, with the reason shown.
    assert_eq!(send_event(&client, &gateway.url("/acme"), "evt_early").await.0, 200);
    let (code, listed) = call(&client, Method::GET, gateway.admin_url("/api/plugins"), ACME, vec![]).await;
    assert_eq!(code, 200);
    let names: Vec<&str> =
        listed["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["transform"], "a merchant sees only its own plugins");
    assert_eq!(listed["plugins"][0]["active_version"], Value::Null);

    // Refusals, each with a clear message.
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let cases: [(Vec<u8>, u16, &str); 4] = [
        (b"\0asm\x01\0\0\0".to_vec(), 400, "core WebAssembly module"),
        (random, 400, "not WebAssembly"),
        (wasm("foreign_import"), 400, "evil:escape"),
        (vec![0; 500_000], 413, "the limit is 400000"),
    ];
    for (body, status, message) in cases {
        let (code, reply) = call(&client, Method::PUT, plugin_url(&gateway, ""), ACME, body).await;
        assert_eq!(code, status, "{reply}");
        assert!(reply["message"].as_str().unwrap_or("").contains(message), "{reply}");
    }
    // Another merchant's token cannot see, upload or roll back acme's plugin.
    for (method, rest) in
        [(Method::GET, ""), (Method::PUT, ""), (Method::POST, "/rollback"), (Method::DELETE, "")]
    {
        let (code, reply) =
            call(&client, method.clone(), plugin_url(&gateway, rest), GLOBEX, wasm("ledger")).await;
        assert_eq!((code, reply["error"].as_str()), (404, Some("unknown_plugin")), "{method} {rest}");
    }

    // v1: the waiting event goes through it.
    let (code, v1) = call(&client, Method::PUT, plugin_url(&gateway, ""), ACME, wasm("legacy_form")).await;
    assert_eq!((code, v1["active_version"].as_u64()), (200, Some(1)), "{v1}");
    wait_for_status(&client, &gateway, "evt_early", "delivered", WAIT).await;
    assert_eq!(version_seen(&acme_app.received()[0]), 1);

    // Hot swap under load: events keep coming while v2 is uploaded.
    let swap_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (client, url, swap_done) = (client.clone(), gateway.url("/acme"), swap_done.clone());
        tokio::spawn(async move {
            // Until the swap is done, and 30 more after it.
            let mut sent = Vec::new();
            let mut after = 0;
            for i in 0.. {
                if swap_done.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                    if after > 30 {
                        break;
                    }
                }
                let id = format!("evt_swap_{i}");
                let started = std::time::Instant::now();
                let (code, _) = send_event(&client, &url, &id).await;
                assert_eq!(code, 200, "{id}");
                sent.push((id, started));
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, v2) = call(&client, Method::PUT, plugin_url(&gateway, ""), ACME, wasm("ledger")).await;
    let swapped = std::time::Instant::now();
    swap_done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!((code, v2["active_version"].as_u64()), (200, Some(2)), "{v2}");
    let sent = sender.await.unwrap();
    let expected = sent.len() + 1;
    acme_app.wait_for(WAIT, "every event of the swap", |r| r.len() >= expected).await;
    let received = acme_app.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((ids.len(), received.len()), (expected, expected), "no event lost or delivered twice");
    assert!(
        received.iter().any(|r| version_seen(r) == 1 && r.event_id.starts_with("evt_swap_")),
        "v1 ran some"
    );
    // An event sent after the upload answered was stored after the swap: v2 ran it.
    let late: Vec<&String> = sent.iter().filter(|(_, at)| *at > swapped).map(|(id, _)| id).collect();
    for id in late {
        let r = received.iter().find(|r| &r.event_id == id).unwrap();
        assert_eq!(version_seen(r), 2, "{id} was sent after the swap");
    }
    // Each recorded run names the version that ran, and it matches what was delivered.
    for r in received.iter().filter(|r| r.event_id.starts_with("evt_swap_")).take(40) {
        let (_, e) = support::admin_get(
            &client,
            &gateway.admin_url(&format!("/api/events/{}", r.event_id)),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(e["plugin_runs"][0]["version"].as_u64(), Some(version_seen(r)), "{e}");
    }

    // Rollback: v1 again, for the next event.
    let (code, back) = call(&client, Method::POST, plugin_url(&gateway, "/rollback"), ACME, vec![]).await;
    assert_eq!((code, back["active_version"].as_u64()), (200, Some(1)), "{back}");
    assert_eq!(send_event(&client, &gateway.url("/acme"), "evt_rolled_back").await.0, 200);
    acme_app
        .wait_for(WAIT, "the event after the rollback", |r| r.iter().any(|r| r.event_id == "evt_rolled_back"))
        .await;
    assert_eq!(
        version_seen(acme_app.received().iter().find(|r| r.event_id == "evt_rolled_back").unwrap()),
        1
    );

    // Restart: the active version (v1) comes back from the compiled cache, not a compile.
    assert!(gateway.terminate().success());
    let gateway = Gateway::start(dir.path(), &text);
    for (token, name) in [(ACME, "transform"), (GLOBEX, "g-threshold")] {
        let url = gateway.admin_url(&format!("/api/plugins/{name}"));
        let (code, status) = call(&client, Method::GET, url, token, vec![]).await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(status["loaded_from_cache"], true, "{status}");
        assert_eq!(status["versions"].as_array().unwrap().len(), if name == "transform" { 2 } else { 1 });
    }
    assert_eq!(send_event(&client, &gateway.url("/acme"), "evt_restarted").await.0, 200);
    acme_app
        .wait_for(WAIT, "the event after the restart", |r| r.iter().any(|r| r.event_id == "evt_restarted"))
        .await;
    assert_eq!(version_seen(acme_app.received().iter().find(|r| r.event_id == "evt_restarted").unwrap()), 1);

    // Delete: gone, and events wait again.
    let (code, deleted) = call(&client, Method::DELETE, plugin_url(&gateway, ""), ACME, vec![]).await;
    assert_eq!((code, deleted["deleted"].as_bool()), (200, Some(true)));
    let (_, status) = call(&client, Method::GET, plugin_url(&gateway, ""), ACME, vec![]).await;
    assert_eq!(
        (status["active_version"].clone(), status["versions"].as_array().map(Vec::len)),
        (Value::Null, Some(0))
    );
}

/// The version numbers a plugin's status lists, oldest first, and the active one.
fn versions(status: &Value) -> (Vec<u64>, u64) {
    let list =
        status["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    (list, status["active_version"].as_u64().unwrap_or(0))
}

/// Regression (issue 16, item 5): six uploads of one 7 MiB component added six versions, and
/// a merchant's token could fill the disk. The same component is one version; each plugin keeps
/// `[plugins] max_versions` (the active one and the one before it always); a merchant's
/// versions fit `merchant_storage_mb`, or the upload is refused (507) and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_versions_are_bounded_in_number_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let (acme_app, globex_app) = (Upstream::start().await, Upstream::start().await);
    let bounded = config(&dir.path().join("db"), &acme_app.url(), &globex_app.url()).replace(
        "max_upload_bytes = 400000",
        "max_upload_bytes = 400000\nmax_versions = 3\nmerchant_storage_mb = 4",
    );
    let gw = Gateway::start(dir.path(), &bounded);
    let client = client();
    let url = gw.admin_url("/api/plugins/transform");
    let put = |name: &str| call(&client, reqwest::Method::PUT, url.clone(), ACME, wasm(name));

    for _ in 0..6 {
        let (code, status) = put("legacy_form").await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(versions(&status), (vec![1], 1), "the same component twice is one version");
    }
    for name in ["ledger", "amount_threshold", "clocks"] {
        assert_eq!(put(name).await.0, 200, "{name}");
    }
    let (_, status) = call(&client, reqwest::Method::GET, url.clone(), ACME, vec![]).await;
    assert_eq!(versions(&status), (vec![2, 3, 4], 4), "at most three versions, the newest kept");

    // A component that is already stored is activated again, not stored twice.
    let (_, status) = put("amount_threshold").await;
    assert_eq!(versions(&status), (vec![2, 3, 4], 3));
    // The active (3) and the one it replaced (4) survive the next upload; the oldest goes.
    let (_, status) = put("loud").await;
    assert_eq!(versions(&status), (vec![3, 4, 5], 5));
    let rolled = call(&client, reqwest::Method::POST, format!("{url}/rollback"), ACME, vec![]).await;
    assert_eq!(versions(&rolled.1).1, 4, "{rolled:?}");

    drop(gw);

    // A 1 MiB quota fills within a few versions (components with their compiled code): the
    // upload that would pass it is refused by name, and the versions stay as they were.
    let dir = tempfile::tempdir().unwrap();
    let tight = config(&dir.path().join("db"), &acme_app.url(), &globex_app.url())
        .replace("max_upload_bytes = 400000", "max_upload_bytes = 400000\nmerchant_storage_mb = 1");
    let gw = Gateway::start(dir.path(), &tight);
    let url = gw.admin_url("/api/plugins/transform");
    let put = |name: &str| call(&client, reqwest::Method::PUT, url.clone(), ACME, wasm(name));
    let mut stored = 0;
    let mut refused = None;
    for name in ["legacy_form", "ledger", "amount_threshold", "clocks", "loud", "spin", "panic", "log_flood"]
    {
        let (code, reply) = put(name).await;
        if code == 507 {
            refused = Some(reply);
            break;
        }
        assert_eq!(code, 200, "{name}: {reply}");
        stored += 1;
    }
    let reply = refused.expect("the 1 MiB quota never filled");
    assert_eq!(reply["error"], "storage_quota_exceeded", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("merchant_storage_mb"), "{reply}");
    let (_, after) = call(&client, reqwest::Method::GET, url.clone(), ACME, vec![]).await;
    assert_eq!(after["versions"].as_array().unwrap().len(), stored, "{after}");
}

/// Regression: events arriving before a declared plugin had a version went `dead` within ~3 s
/// (three failed attempts) although PayFlow had its 200. Now, with the default retry policy
/// (three attempts), they wait, queued, using up no attempt, for as long as nobody uploads;
/// `serve` warns at start-up, `/readyz` says why, and the upload delivers them.
#[tokio::test(flavor = "multi_thread")]
async fn events_for_a_plugin_without_a_version_wait_for_one_instead_of_dying() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let config = support::queue_config(&dir.path().join("db"), &app.url(), "")
        .replace("upstream = \"legacy\"\n", "upstream = \"legacy\"\nplugins = [\"shape\"]\n")
        + "[[plugin]]\nname = \"shape\"\n";
    let gw = Gateway::start(dir.path(), &config);
    assert!(
        gw.logs().contains("plugin shape has no version yet") && gw.logs().contains("/webhooks/payflow"),
        "serve warns at start-up:\n{}",
        gw.logs()
    );
    let client = client();
    let (status, ready) = support::admin_get(&client, &gw.admin_url("/readyz"), ADMIN_TOKEN).await;
    assert_eq!(status, 503);
    assert!(ready["problems"].to_string().contains("plugin shape: no version"), "{ready}");

    assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), "evt_early").await.0, 200);
    // Longer than three attempts with the default backoff (1 s, 2 s) would have taken.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, event) = support::admin_get(&client, &gw.admin_url("/api/events/evt_early"), ADMIN_TOKEN).await;
    assert_eq!(event["status"], "queued", "{event}");
    let step = &event["plugin_step"];
    assert_eq!(step["status"], "pending", "{event}");
    assert_eq!(step["attempts"], 0, "waiting uses up no attempt: {event}");
    assert!(
        step["error"].as_str().unwrap_or_default().starts_with("waiting: plugin shape has no version"),
        "{event}"
    );
    assert!(app.received().is_empty());

    let wasm = std::fs::read(guests().join("legacy_form.wasm")).unwrap();
    let reply =
        client.put(gw.admin_url("/api/plugins/shape")).bearer_auth(ADMIN_TOKEN).body(wasm).send().await;
    assert_eq!(reply.unwrap().status(), 200);
    wait_for_status(&client, &gw, "evt_early", "delivered", WAIT).await;
    assert_eq!(app.ids(), ["evt_early"]);
    let (status, _) = support::admin_get(&client, &gw.admin_url("/readyz"), ADMIN_TOKEN).await;
    assert_eq!(status, 200);

    // `plugin list`: a header that names its columns, a row under it; --json for programs.
    let list = |extra: &[&str]| {
        let admin = gw.admin_url("");
        let mut args = vec!["plugin", "list", "--admin", &admin, "--token", ADMIN_TOKEN];
        args.extend_from_slice(extra);
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_payflow-edge")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = list(&[]);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..4], ["name", "merchant", "active", "versions"], "{table}");
    assert_eq!(lines[1][..5], ["shape", "default", "v1", "1", "upload"], "{table}");
    let json: Value = serde_json::from_str(&list(&["--json"])).unwrap();
    assert_eq!(json["plugins"][0]["name"], "shape");

    // `plugin activate NAME VERSION` rolls back and forward again; an unknown version is named.
    let wasm = std::fs::read(guests().join("ledger.wasm")).unwrap();
    let reply =
        client.put(gw.admin_url("/api/plugins/shape")).bearer_auth(ADMIN_TOKEN).body(wasm).send().await;
    assert_eq!(reply.unwrap().status(), 200);
    let cli = |args: &[&str]| {
        let admin = gw.admin_url("");
        let mut all = vec!["plugin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin", &admin, "--token", ADMIN_TOKEN]);
        std::process::Command::new(env!("CARGO_BIN_EXE_payflow-edge")).args(&all).output().unwrap()
    };
    for (version, line) in [("1", "shape is at v1"), ("2", "shape is at v2")] {
        let out = cli(&["activate", "shape", version]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(line),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&["activate", "shape", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("404 unknown_version") && stderr.contains("kept: 1, 2"), "{stderr}");
}
