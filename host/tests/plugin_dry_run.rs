//! `plugin try` / `POST /api/plugins/{name}/try`: a candidate run beside the active version on
//! the merchant's recorded events, with real components built from source (Rust, JavaScript,
//! Python). A dry run finds the events whose outcome would change, reports a candidate that
//! traps, keeps its kv writes in scratch, and leaves no trace: nothing delivered, stored or
//! recorded, and never another merchant's events.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    admin_get, client, guests, payment_with_amount, post, sign, wait_for_status, Gateway, Upstream,
    ACME_TOKEN, GLOBEX_TOKEN, SECRET,
};

const WAIT: Duration = Duration::from_secs(30);
/// acme's amounts; the threshold candidate drops only the 700.
const AMOUNTS: [i64; 4] = [5000, 700, 2500, 1200];

/// The test config; `gate` is the plugin dry runs try, with `gate_options` added to it.
fn config(db: &std::path::Path, app: &str, gate_options: &str) -> String {
    support::config_head(db)
        + support::TWO_MERCHANTS
        + &format!(
            r#"
[[endpoint]]
merchant = "acme"
path = "/acme"
secrets = ["{SECRET}"]
plugins = ["gate"]
upstream = "acme-app"
[[endpoint]]
merchant = "globex"
path = "/globex"
secrets = ["{SECRET}"]
plugins = ["g-gate"]
upstream = "globex-app"
[[upstream]]
name = "acme-app"
merchant = "acme"
url = "{app}"
[[upstream]]
name = "chat"
merchant = "acme"
url = "{app}"
[[upstream]]
name = "globex-app"
merchant = "globex"
url = "{app}"
[[plugin]]
name = "gate"
merchant = "acme"
path = "{noop}"
config = {{ min_amount = "1000" }}
{gate_options}
[[plugin]]
name = "g-gate"
merchant = "globex"
path = "{noop}"
[[plugin]]
name = "empty"
merchant = "acme"
"#,
            noop = guests().join("noop.wasm").display()
        )
}

/// A gateway with acme's four events and two of globex's (one of 100, which the threshold
/// would drop were it ever picked) delivered.
async fn gateway_with_history(dir: &std::path::Path, app: &Upstream) -> Gateway {
    gateway_with_history_and(dir, app, "").await
}

/// [`gateway_with_history`], with `gate_options` in the `gate` plugin's config.
async fn gateway_with_history_and(dir: &std::path::Path, app: &Upstream, gate_options: &str) -> Gateway {
    let gw = Gateway::start(dir, &config(&dir.join("db"), &app.url(), gate_options));
    let client = client();
    let sent = AMOUNTS
        .iter()
        .enumerate()
        .map(|(i, &a)| ("/acme", format!("evt_acme_{i}"), a))
        .chain([("/globex", "evt_globex_0".to_string(), 100), ("/globex", "evt_globex_1".to_string(), 9000)]);
    for (path, id, amount) in sent {
        let body = serde_json::to_vec(&payment_with_amount(&id, amount)).unwrap();
        assert_eq!(
            post(&client, &gw.url(path), &sign(payflow_verify::Scheme::PayFlow, SECRET, &body, &id), body)
                .await
                .0,
            200
        );
        wait_for_status(&client, &gw, &id, "delivered", WAIT).await;
    }
    gw
}

/// `plugin try NAME FILE ARGS… --json` as acme; the parsed report.
fn try_json(gw: &Gateway, name: &str, wasm: &str, args: &[&str]) -> Value {
    let file = guests().join(wasm);
    let mut all = vec!["plugin", "try", name, file.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = support::admin_cli(gw, ACME_TOKEN, &all);
    assert_eq!(code, Some(0), "plugin try failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e["verdict"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_finds_the_one_event_whose_outcome_changed_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history(dir.path(), &app).await;
    let client = client();
    let (_, before) = admin_get(&client, &gw.admin_url("/api/events/evt_acme_1"), ACME_TOKEN).await;

    let report = try_json(&gw, "gate", "amount_threshold.wasm", &[]);
    assert_eq!(
        verdicts(&report),
        [("evt_acme_0", "same"), ("evt_acme_1", "different"), ("evt_acme_2", "same"), ("evt_acme_3", "same")]
            .map(|(id, v)| (id.to_string(), v.to_string())),
        "acme's events only, oldest first: {report:#}"
    );
    let changed = &report["events"][1];
    assert_eq!(
        changed["changes"][0], "action: continue → drop (amount 700 is under min_amount 1000)",
        "{changed:#}"
    );
    assert_eq!(
        (changed["active"]["outcome"].as_str(), changed["candidate"]["outcome"].as_str()),
        (Some("continue"), Some("drop"))
    );
    assert!(
        changed["candidate"]["logs"][0].as_str().unwrap().contains("700"),
        "the candidate's log: {changed:#}"
    );
    assert_eq!(
        (report["totals"]["same"].as_u64(), report["totals"]["different"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(report["active_version"], 1);
    assert!(
        report["candidate"]["fuel_p50"].as_u64().unwrap() > 0 && report["active"]["runs"] == 4,
        "{report:#}"
    );

    // The newest two only; a type nothing has; the human form names the changed event.
    assert_eq!(verdicts(&try_json(&gw, "gate", "amount_threshold.wasm", &["--last", "2"])).len(), 2);
    assert_eq!(
        try_json(&gw, "gate", "amount_threshold.wasm", &["--type", "customer.created"])["totals"]["events"],
        0
    );
    let file = guests().join("amount_threshold.wasm");
    let (code, out, err) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "try", "gate", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("4 events: 3 same, 1 different, 0 failed") && out.contains("different evt_acme_1"),
        "{out}"
    );

    // No trace: nothing more delivered, no version stored, no run recorded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.received().len(), 6, "a dry run delivered something");
    let (_, plugin) = admin_get(&client, &gw.admin_url("/api/plugins/gate"), ACME_TOKEN).await;
    assert_eq!(
        (plugin["active_version"].as_u64(), plugin["versions"].as_array().map(Vec::len)),
        (Some(1), Some(1)),
        "{plugin:#}"
    );
    let (_, after) = admin_get(&client, &gw.admin_url("/api/events/evt_acme_1"), ACME_TOKEN).await;
    assert_eq!(after["plugin_runs"], before["plugin_runs"], "a dry run recorded a run");
    assert_eq!(after["status"], "delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_that_traps_is_reported_failed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history(dir.path(), &app).await;
    let report = try_json(&gw, "gate", "panic.wasm", &[]);
    assert_eq!(report["totals"]["failed"], 4, "{report:#}");
    assert_eq!(report["candidate"]["failures"]["trap"], 4, "{report:#}");
    assert!(report["active"]["failures"].as_object().unwrap().is_empty());
    let first = &report["events"][0];
    assert!(first["changes"][0].as_str().unwrap().starts_with("candidate failed: trap"), "{first:#}");
}

/// The candidate's kv writes accumulate in scratch, in arrival order, and are never committed:
/// the ledger tried on four events counts them all, and once uploaded for real it starts from
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn kv_writes_of_a_dry_run_stay_in_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history(dir.path(), &app).await;
    let report = try_json(&gw, "gate", "ledger.wasm", &[]);
    let total: i64 = AMOUNTS.iter().sum();
    let last = report["events"][3]["changes"].to_string();
    assert!(
        last.contains(&format!("header: + x-ledger-total: {total} ")),
        "the running total in scratch: {last}"
    );

    let client = client();
    let wasm = std::fs::read(guests().join("ledger.wasm")).unwrap();
    let put = client
        .put(gw.admin_url("/api/plugins/gate"))
        .bearer_auth(ACME_TOKEN)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let body = serde_json::to_vec(&payment_with_amount("evt_acme_live", 300)).unwrap();
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "evt_acme_live");
    assert_eq!(post(&client, &gw.url("/acme"), &headers, body).await.0, 200);
    app.wait_for(WAIT, "the live event", |r| r.iter().any(|r| r.event_id == "evt_acme_live")).await;
    let live = app.received().into_iter().find(|r| r.event_id == "evt_acme_live").unwrap();
    let seen = live.header("x-ledger-total").unwrap().to_string();
    assert!(seen.starts_with("300 "), "the dry run's writes reached the live kv: {seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_python_candidates_are_tried_too() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history(dir.path(), &app).await;

    let js = try_json(&gw, "gate", "js_enrich.wasm", &[]);
    assert_eq!(js["totals"]["different"], 4, "{js:#}");
    let changes = js["events"][0]["changes"].to_string();
    assert!(
        changes.contains("body: + data.amount_display") && changes.contains("x-event-count"),
        "{changes}"
    );

    let py = try_json(&gw, "gate", "notifier.wasm", &[]);
    assert_eq!(py["totals"]["different"], 4, "{py:#}");
    let changes = py["events"][0]["changes"].to_string();
    assert!(changes.contains("forward: + chat") && changes.contains("tag: + notified"), "{changes}");
    assert!(py["candidate"]["time_us_p50"].as_u64().unwrap() > 0);
}

/// The candidate counts its runs in its own memory. A plugin with `warm = true` keeps one
/// instance across events live, so its dry run must too (1, 2, 3, 4); any other gets a fresh
/// instance per event (always 1).
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_instantiates_as_live_runs_do_one_warm_instance_per_side_or_fresh_per_event() {
    let runs_seen = |report: &Value| -> Vec<String> {
        report["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let changes = e["changes"].to_string();
                let at = changes.find("x-instance-runs").unwrap_or_else(|| panic!("{changes}"));
                changes[at..].split(['"', ',']).next().unwrap().to_string()
            })
            .collect()
    };
    for (options, expected) in [("warm = true", ["1", "2", "3", "4"]), ("", ["1", "1", "1", "1"])] {
        let dir = tempfile::tempdir().unwrap();
        let app = Upstream::start().await;
        let gw = gateway_with_history_and(dir.path(), &app, options).await;
        let report = try_json(&gw, "gate", "counter.wasm", &[]);
        let expected: Vec<String> = expected.iter().map(|n| format!("x-instance-runs: {n}")).collect();
        assert_eq!(runs_seen(&report), expected, "{options:?}: {report:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_refuses_what_it_cannot_do_and_other_merchants_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history(dir.path(), &app).await;
    let client = client();
    let noop = std::fs::read(guests().join("noop.wasm")).unwrap();
    let try_as = |token: &'static str, path: &str, body: Vec<u8>| {
        let request = client.post(gw.admin_url(path)).bearer_auth(token).body(body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Another merchant's plugin is not there for this token.
    let (status, reply) = try_as(GLOBEX_TOKEN, "/api/plugins/gate/try", noop.clone()).await;
    assert_eq!((status, reply["error"].as_str()), (404, Some("unknown_plugin")));
    // A query it cannot mean, a body that is no component, a plugin with no version yet.
    let (status, reply) = try_as(ACME_TOKEN, "/api/plugins/gate/try?last=5000", noop.clone()).await;
    assert_eq!((status, reply["error"].as_str()), (400, Some("bad_query")), "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("1 to 1000"));
    let (status, reply) = try_as(ACME_TOKEN, "/api/plugins/gate/try?since=yesterday", noop.clone()).await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = try_as(ACME_TOKEN, "/api/plugins/gate/try", b"not wasm".to_vec()).await;
    assert_eq!((status, reply["error"].as_str()), (400, Some("invalid_plugin")), "{reply}");
    let (status, reply) = try_as(ACME_TOKEN, "/api/plugins/empty/try", noop).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("upload one first"), "{reply}");
    let get = client.get(gw.admin_url("/api/plugins/gate/try")).bearer_auth(ACME_TOKEN).send().await.unwrap();
    assert_eq!(get.status(), 405);
    // globex's own dry run sees only globex's events.
    let (status, report) = try_as(
        GLOBEX_TOKEN,
        "/api/plugins/g-gate/try",
        std::fs::read(guests().join("amount_threshold.wasm")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        verdicts(&report),
        [("evt_globex_0".to_string(), "same".to_string()), ("evt_globex_1".to_string(), "same".to_string())],
        "no min_amount configured for g-gate: nothing dropped"
    );
}

/// Busy loops on every CPU at normal priority, as another process's work would be, until
/// dropped.
struct CpuHogs(std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl CpuHogs {
    fn start() -> CpuHogs {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuHogs(stop, threads)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// Regression: with every CPU kept busy by other work, a dry run (whose runs take only idle
/// CPU) waited without end, and `plugin try` with it: 48 minutes under two busy loops on two
/// cores before it was killed. It now answers `503 dry_run_timed_out` once `[plugins]
/// dry_run_timeout_ms` is up, saying how far it got and what to do, and the same dry run on a
/// machine with CPU to spare still completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_on_a_machine_with_no_idle_cpu_answers_503_at_its_timeout_instead_of_waiting_forever() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = gateway_with_history_and(dir.path(), &app, "[plugins]\ndry_run_timeout_ms = 3000\n").await;
    let file = guests().join("amount_threshold.wasm");
    let try_it = || {
        let request = client()
            .post(gw.admin_url("/api/plugins/gate/try"))
            .bearer_auth(ACME_TOKEN)
            .body(std::fs::read(&file).unwrap());
        async move {
            let started = std::time::Instant::now();
            let response = request.send().await.expect("no answer within the client's timeout");
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (
                response.status().as_u16(),
                retry_after,
                response.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        }
    };
    let hogs = CpuHogs::start();
    let (status, retry_after, reply, took) = try_it().await;
    // `plugin try`, which waited with it, now ends too, exit 1 with the API's reason.
    let (code, _, err) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "try", "gate", file.to_str().unwrap()]);
    drop(hogs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("503 dry_run_timed_out") && err.contains("dry_run_timeout_ms"), "{err}");
    assert_eq!((status, reply["error"].as_str()), (503, Some("dry_run_timed_out")), "{reply}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    assert!(took >= Duration::from_secs(3), "answered before its timeout: {took:?}");
    let message = reply["message"].as_str().unwrap();
    for part in ["of 4 events in 3 s", "[plugins] dry_run_timeout_ms", "fewer events"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert!(reply["tried"].as_u64().unwrap() < 4, "{reply}");
    // Not a timeout too short for any dry run: with the CPUs free again, the same one completes.
    let (status, _, report, _) = try_it().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["totals"]["events"], 4, "{report}");
}
