//! Merchants' plugins, built from source, in a real gateway process: queue mode runs an
//! endpoint's plugins in order after the acknowledgement and delivers what they decided;
//! hostile plugins fail their event's step with the reason named and leave it `dead`, while
//! other endpoints keep being acknowledged and other merchants' plugins keep running; proxy
//! mode answers 503 when a plugin fails, so the sender retries.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{
    admin_get, admin_post, client, guests, send_event, wait_for_status, Gateway, Upstream, ADMIN_TOKEN,
    SECRET,
};

const WAIT: Duration = Duration::from_secs(30);

fn wasm(name: &str) -> String {
    guests().join(format!("{name}.wasm")).display().to_string()
}

fn base(db: &Path) -> String {
    support::config_head(db)
        + "[plugins]\nworkers = 2\nmax_attempts = 2\nretry_base_ms = 50\nretry_max_ms = 100\n"
}

fn endpoint(path: &str, merchant: &str, plugins: &[&str], upstream: Option<&str>, mode: &str) -> String {
    let list: Vec<String> = plugins.iter().map(|p| format!("{p:?}")).collect();
    let upstream = upstream.map(|u| format!("upstream = {u:?}")).unwrap_or_default();
    format!(
        "[[endpoint]]\nmerchant = {merchant:?}\npath = {path:?}\nsecrets = [\"{SECRET}\"]\nmode = {mode:?}\nplugins = [{}]\n{upstream}\n",
        list.join(", ")
    )
}

fn upstream(name: &str, merchant: &str, url: &str) -> String {
    format!("[[upstream]]\nname = {name:?}\nmerchant = {merchant:?}\nurl = {url:?}\nmax_attempts = 3\nretry_base_ms = 50\n")
}

fn plugin(name: &str, merchant: &str, file: &str, extra: &str) -> String {
    format!("[[plugin]]\nname = {name:?}\nmerchant = {merchant:?}\npath = {:?}\n{extra}\n", wasm(file))
}

/// A payment event with this amount and customer.
fn payment(id: &str, amount: i64, email: &str) -> Vec<u8> {
    let mut body = support::payment_with_amount(id, amount);
    body["data"]["customer_email"] = email.into();
    serde_json::to_vec(&body).unwrap()
}

async fn send(client: &reqwest::Client, url: &str, id: &str, body: Vec<u8>) -> (u16, Value) {
    let headers = support::sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id);
    support::post(client, url, &headers, body).await
}

async fn event(client: &reqwest::Client, gateway: &Gateway, id: &str) -> Value {
    admin_get(client, &gateway.admin_url(&format!("/api/events/{id}")), ADMIN_TOKEN).await.1
}

/// Python's urllib decodes the form, not our own code.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, urllib.parse; print(json.dumps(urllib.parse.parse_qsl(sys.stdin.read(), keep_blank_values=True, strict_parsing=True)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body)?;
            child.wait_with_output()
        })
        .expect("python3 runs");
    assert!(out.status.success(), "python could not parse {:?}", String::from_utf8_lossy(body));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_runs_the_plugins_in_order_and_delivers_what_they_decided() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let config = base(&dir.path().join("db.sqlite"))
        + &endpoint(
            "/webhooks/payflow",
            "default",
            &["amount-threshold", "ledger", "legacy-form"],
            Some("legacy"),
            "queue",
        )
        + &upstream("legacy", "default", &legacy.url())
        + &plugin("amount-threshold", "default", "amount_threshold", "config = { min_amount = \"1000\" }")
        + &plugin("ledger", "default", "ledger", "")
        + &plugin("legacy-form", "default", "legacy_form", "");
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    let url = gateway.url("/webhooks/payflow");

    assert_eq!(send(&client, &url, "evt_small", payment("evt_small", 500, "ann@example.com")).await.0, 200);
    for (id, amount) in [("evt_a", 5000), ("evt_b", 2500)] {
        assert_eq!(send(&client, &url, id, payment(id, amount, "ann o'neil+1@example.com")).await.0, 200);
        wait_for_status(&client, &gateway, id, "delivered", WAIT).await;
    }
    wait_for_status(&client, &gateway, "evt_small", "dropped", WAIT).await;

    // The small payment was dropped by the first plugin, with its reason; nothing was sent.
    let small = event(&client, &gateway, "evt_small").await;
    assert_eq!(small["reason"], "amount-threshold: amount 500 is under min_amount 1000", "{small}");
    let runs = small["plugin_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "the chain stops at a drop: {small}");
    assert_eq!(runs[0]["outcome"], "drop");
    assert!(runs[0]["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(runs[0]["logs"][0][0], "info", "{small}");

    // The others went through all three, in order, and the legacy app got a form with the
    // ledger's running total.
    let received = legacy.received();
    assert_eq!(legacy.ids(), ["evt_a", "evt_b"]);
    for (r, total) in received.iter().zip(["5000 PKR", "7500 PKR"]) {
        assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(r.header("x-ledger-total"), Some(total), "{:?}", r.headers);
        assert_eq!(r.header("x-payflow-event-id"), Some(r.event_id.as_str()));
        let form = parse_form(&r.body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("event_id"), Some(r.event_id.as_str()));
        assert_eq!(get("event_type"), Some("payment.succeeded"));
        assert_eq!(get("data[customer_email]"), Some("ann o'neil+1@example.com"));
    }
    let a = event(&client, &gateway, "evt_a").await;
    let names: Vec<&str> =
        a["plugin_runs"].as_array().unwrap().iter().map(|r| r["plugin"].as_str().unwrap()).collect();
    assert_eq!(names, ["amount-threshold", "ledger", "legacy-form"], "{a}");

    // A replay runs the plugins again; the ledger counts each event once.
    let replay = admin_post(&client, &gateway.admin_url("/api/events/evt_a/replay"), ADMIN_TOKEN).await;
    assert_eq!(replay, 202);
    legacy.wait_for(WAIT, "the replayed evt_a", |r| r.len() == 3).await;
    assert_eq!(legacy.received()[2].header("x-ledger-total"), Some("7500 PKR"));
}

/// A gateway whose `/webhooks/slow` endpoint runs a plugin that sleeps 1.5 s, then delivers to
/// the upstream returned; `evt_1` has just been acknowledged there.
async fn one_event_in_a_slow_plugin(dir: &Path) -> (Upstream, Gateway, reqwest::Client) {
    let legacy = Upstream::start().await;
    let config = base(&dir.join("db.sqlite"))
        + &endpoint("/webhooks/slow", "default", &["slow"], Some("legacy"), "queue")
        + &upstream("legacy", "default", &legacy.url())
        + &plugin("slow", "default", "clocks", "timeout_ms = 10000\nconfig = { sleep_ms = \"1500\" }");
    let gateway = Gateway::start(dir, &config);
    let client = client();
    let url = gateway.url("/webhooks/slow");
    assert_eq!(send(&client, &url, "evt_1", payment("evt_1", 5000, "ann@example.com")).await.0, 200);
    (legacy, gateway, client)
}

/// Regression (a replaced decision delivered): an event replayed while its plugin step ran
/// had that step's decision set aside by the store (only its run is kept), but the gateway
/// handed the delivery the step had decided to its workers all the same. The upstream got the
/// event from the old decision, then again from the replay's. It gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_replayed_while_its_plugin_step_runs_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, gateway, client) = one_event_in_a_slow_plugin(dir.path()).await;
    // The first step sleeps in its plugin for 1.5 s; the replay comes meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replay = admin_post(&client, &gateway.admin_url("/api/events/evt_1/replay"), ADMIN_TOKEN).await;
    assert_eq!(replay, 202);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let e = event(&client, &gateway, "evt_1").await;
        if e["plugin_runs"].as_array().map_or(0, Vec::len) == 2 && e["status"] == "delivered" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replay's step did not run and deliver: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a second delivery, had one been handed to the workers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(legacy.ids(), ["evt_1"], "delivered once, by the replay's step");
}

/// An event held in a slow plugin shows as its merchant's plugin lag (how long the earliest
/// event waiting for its plugins has been due) until its step is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_held_in_a_slow_plugin_shows_as_plugin_lag_until_its_step_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, gateway, client) = one_event_in_a_slow_plugin(dir.path()).await;
    // The step sleeps in its plugin for 1.5 s.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sample = |page: &str, name: &str| {
        let prefix = format!("{name}{{merchant=\"default\"}} ");
        page.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse::<f64>().unwrap())
    };
    let scrape = || async {
        let response =
            client.get(gateway.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        response.text().await.unwrap()
    };
    let page = scrape().await;
    assert_eq!(sample(&page, "payflow_edge_plugin_queue_depth"), Some(1.0), "{page}");
    let lag = sample(&page, "payflow_edge_plugin_lag_seconds").unwrap_or_else(|| panic!("no lag in\n{page}"));
    assert!(lag >= 0.5, "the event has waited at least 1 s for its plugin, not {lag}");

    legacy.wait_for(WAIT, "the event, once its plugin is done", |r| r.len() == 1).await;
    let page = scrape().await;
    assert_eq!(sample(&page, "payflow_edge_plugin_lag_seconds"), None, "nothing waits:\n{page}");
}

/// Each hostile plugin on its own endpoint, with a stream of events to a well-behaved merchant
/// going on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_their_step_with_the_reason_named_and_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let good = Upstream::start().await;
    // Deadlines far beyond what each needs, except where the deadline is the point: the test
    // machine may be busy, and a slow run must not turn another reason into `timeout`.
    let cases = [
        ("spin", "fuel_exhausted", "fuel = 50000000\ntimeout_ms = 30000"),
        ("spin-deadline", "timeout", "fuel = 100000000000\ntimeout_ms = 100"),
        ("memory_bomb", "memory_exhausted", "memory_mb = 16\ntimeout_ms = 30000"),
        ("deep_recursion", "trap", "timeout_ms = 30000"),
        ("panic", "trap", "timeout_ms = 30000"),
        ("huge_output", "bad_output", "timeout_ms = 30000"),
        ("kv_flood", "plugin_error", "kv_bytes = 262144\ntimeout_ms = 30000"),
        ("forward_unknown", "unknown_upstream", "timeout_ms = 30000"),
    ];
    let mut config = base(&dir.path().join("db.sqlite"))
        + "[[merchant]]\nid = \"evil\"\n[[merchant]]\nid = \"good\"\n"
        + &upstream("legacy", "evil", &legacy.url())
        + &upstream("good-app", "good", &good.url())
        + &plugin("threshold", "good", "amount_threshold", "config = { min_amount = \"1\" }")
        + &endpoint("/good", "good", &["threshold"], Some("good-app"), "queue")
        + &endpoint("/evil/log-flood", "evil", &["log-flood"], Some("legacy"), "queue")
        + &plugin("log-flood", "evil", "log_flood", "log_bytes = 4096");
    for (name, _, limits) in &cases {
        let file = if *name == "spin-deadline" { "spin" } else { name };
        let plugin_name = name.replace('_', "-");
        config += &plugin(&plugin_name, "evil", file, limits);
        config +=
            &endpoint(&format!("/evil/{plugin_name}"), "evil", &[&plugin_name], Some("legacy"), "queue");
    }
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();

    // The attack: every hostile plugin gets events, two attempts each.
    for (name, _, _) in &cases {
        let path = format!("/evil/{}", name.replace('_', "-"));
        for i in 0..3 {
            let id = format!("evt_{name}_{i}");
            assert_eq!(send_event(&client, &gateway.url(&path), &id).await.0, 200, "{path}");
        }
    }
    assert_eq!(send_event(&client, &gateway.url("/evil/log-flood"), "evt_log_flood").await.0, 200);
    // Meanwhile the good merchant's events are acknowledged and its plugin runs.
    for i in 0..20 {
        let id = format!("evt_good_{i}");
        assert_eq!(send_event(&client, &gateway.url("/good"), &id).await.0, 200);
    }
    good.wait_for(WAIT, "the good merchant's events", |r| r.len() >= 20).await;

    for (name, reason, _) in &cases {
        for i in 0..3 {
            let id = format!("evt_{name}_{i}");
            wait_for_status(&client, &gateway, &id, "dead", WAIT).await;
            let e = event(&client, &gateway, &id).await;
            let runs = e["plugin_runs"].as_array().unwrap();
            assert_eq!(runs.len(), 2, "{name}: one run per attempt: {e}");
            for run in runs {
                assert_eq!(run["outcome"], *reason, "{name}: {e}");
            }
            assert!(e["reason"].as_str().unwrap().contains(reason), "{name}: {e}");
        }
    }
    // A log flood is capped, and the run still succeeds.
    wait_for_status(&client, &gateway, "evt_log_flood", "delivered", WAIT).await;
    assert_eq!(legacy.ids(), ["evt_log_flood"], "nothing of a failed step is delivered");
    let flood = event(&client, &gateway, "evt_log_flood").await;
    let logs = flood["plugin_runs"][0]["logs"].as_array().unwrap();
    let kept: usize = logs.iter().map(|l| l[1].as_str().unwrap().len()).sum();
    assert!(kept < 8192, "kept {kept} bytes of log");
    assert!(logs.iter().any(|l| l[1].as_str().unwrap().contains("more log bytes dropped")), "{flood}");

    // The kv flood wrote nothing: a failed run leaves no trace in the store.
    drop(gateway);
    let db = rusqlite_count(&dir.path().join("db.sqlite"), "SELECT COUNT(*) FROM plugin_kv");
    assert_eq!(db, 0);
}

fn rusqlite_count(db: &Path, sql: &str) -> i64 {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute({sql:?}).fetchone()[0])"
            ),
            db.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_answers_503_when_a_plugin_fails_and_forwards_what_plugins_rewrote() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let config = base(&dir.path().join("db.sqlite"))
        + &endpoint("/proxy/form", "default", &["threshold", "legacy-form"], Some("legacy"), "proxy")
        + &endpoint("/proxy/panic", "default", &["panic"], Some("legacy"), "proxy")
        + &upstream("legacy", "default", &legacy.url())
        + &plugin("threshold", "default", "amount_threshold", "config = { min_amount = \"1000\" }")
        + &plugin("legacy-form", "default", "legacy_form", "")
        + &plugin("panic", "default", "panic", "");
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();

    let (status, reply) =
        send(&client, &gateway.url("/proxy/form"), "evt_p1", payment("evt_p1", 5000, "a@b.c")).await;
    assert_eq!(status, 200, "{reply}");
    let received = legacy.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("content-type"), Some("application/x-www-form-urlencoded"));

    let (status, reply) =
        send(&client, &gateway.url("/proxy/form"), "evt_p2", payment("evt_p2", 10, "a@b.c")).await;
    assert_eq!(
        (status, reply["dropped"].as_str()),
        (200, Some("threshold: amount 10 is under min_amount 1000"))
    );

    for _ in 0..2 {
        // The sender's retry runs the plugin again, and fails again.
        let (status, reply) = send_event(&client, &gateway.url("/proxy/panic"), "evt_p3").await;
        assert_eq!(status, 503, "{reply}");
        assert_eq!(reply["error"], "plugin_failed");
        assert!(reply["message"].as_str().unwrap().starts_with("panic: trap"), "{reply}");
    }
    let e = event(&client, &gateway, "evt_p3").await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["plugin_runs"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(legacy.received().len(), 1, "nothing forwarded after a failed plugin");
}

/// The JavaScript and Python examples, with warm instances: the JS one rewrites the body and
/// counts events in kv; the Python one forwards a chat message to the merchant's `chat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_plugins_rewrite_count_and_forward_to_chat() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let chat = Upstream::start().await;
    let config = base(&dir.path().join("db.sqlite"))
        + &endpoint("/shop", "default", &["js-enrich", "notifier"], Some("legacy"), "queue")
        + &upstream("legacy", "default", &legacy.url())
        + &upstream("chat", "default", &chat.url())
        + &plugin("js-enrich", "default", "js_enrich", "warm = true")
        + &plugin("notifier", "default", "notifier", "warm = true\nmemory_mb = 64");
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    for (i, amount) in [500050, 1999, 100].into_iter().enumerate() {
        let id = format!("evt_shop_{i}");
        assert_eq!(
            send(&client, &gateway.url("/shop"), &id, payment(&id, amount, "bo@example.com")).await.0,
            200
        );
        // One at a time, so that the counts arrive in order.
        wait_for_status(&client, &gateway, &id, "delivered", WAIT).await;
    }
    let received = legacy.received();
    for (i, (r, display)) in received.iter().zip(["5,000.50 PKR", "19.99 PKR", "1.00 PKR"]).enumerate() {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["amount_display"], display, "{body}");
        assert_eq!(r.header("x-event-count"), Some((i + 1).to_string().as_str()));
    }
    let messages: Vec<String> = chat
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(
        messages[0].starts_with("✅ Payment of 5,000.50 PKR from bo@example.com succeeded"),
        "{messages:?}"
    );
    let e = event(&client, &gateway, "evt_shop_0").await;
    assert_eq!(e["tags"], serde_json::json!(["currency:PKR", "notified"]), "{e}");
}

/// Fairness between merchants: one merchant's plugin spins to its deadline on every event and
/// has a long backlog; another merchant's events, sent after it, are all delivered while that
/// backlog is still being worked through (it may hold only one of the two plugin threads).
/// Merchants `slow`, whose plugin spins to its `timeout_ms` deadline on every event (at
/// `/slow`), and `fast`, whose plugin is quick (at `/fast`), each delivering to its own app.
fn slow_and_fast(dir: &Path, slow_app: &Upstream, fast_app: &Upstream, timeout_ms: u64) -> String {
    base(&dir.join("db.sqlite"))
        + "[[merchant]]\nid = \"slow\"\n[[merchant]]\nid = \"fast\"\n"
        + &upstream("slow-app", "slow", &slow_app.url())
        + &upstream("fast-app", "fast", &fast_app.url())
        + &plugin("spin", "slow", "spin", &format!("fuel = 100000000000\ntimeout_ms = {timeout_ms}"))
        + &plugin("threshold", "fast", "amount_threshold", "")
        + &endpoint("/slow", "slow", &["spin"], Some("slow-app"), "queue")
        + &endpoint("/fast", "fast", &["threshold"], Some("fast-app"), "queue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_flooding_slow_plugins_does_not_starve_another() {
    let dir = tempfile::tempdir().unwrap();
    let slow_app = Upstream::start().await;
    let fast_app = Upstream::start().await;
    let config = slow_and_fast(dir.path(), &slow_app, &fast_app, 300);
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    // 20 events × 2 attempts × 300 ms: 12 s of plugin time for the slow merchant.
    for i in 0..20 {
        assert_eq!(send_event(&client, &gateway.url("/slow"), &format!("evt_slow_{i}")).await.0, 200);
    }
    for i in 0..20 {
        assert_eq!(send_event(&client, &gateway.url("/fast"), &format!("evt_fast_{i}")).await.0, 200);
    }
    fast_app.wait_for(WAIT, "the fast merchant's events", |r| r.len() == 20).await;
    // First come, first served would have run all 20 slow first attempts (3 s on both threads)
    // before any fast event.
    let mut slow_runs = 0;
    for i in 0..20 {
        slow_runs +=
            event(&client, &gateway, &format!("evt_slow_{i}")).await["plugin_runs"].as_array().unwrap().len();
    }
    assert!(slow_runs < 12, "the fast merchant waited for {slow_runs} runs of the slow merchant's plugin");
}

/// The plugin step makes the first delivery attempt itself; when that fails, the delivery is
/// retried from the queue like any other, with the plugin's rewritten body, and the plugin does
/// not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_delivery_after_the_plugins_is_retried_without_running_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    legacy.script(&[(503, &[]), (500, &[])]);
    let config = base(&dir.path().join("db.sqlite"))
        + &endpoint("/form", "default", &["legacy-form"], Some("legacy"), "queue")
        + &upstream("legacy", "default", &legacy.url())
        + &plugin("legacy-form", "default", "legacy_form", "");
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    assert_eq!(send_event(&client, &gateway.url("/form"), "evt_retry").await.0, 200);
    wait_for_status(&client, &gateway, "evt_retry", "delivered", WAIT).await;
    let received = legacy.received();
    assert_eq!(received.len(), 3, "two failures, then delivered");
    assert!(received.iter().all(|r| r.header("content-type") == Some("application/x-www-form-urlencoded")));
    let e = event(&client, &gateway, "evt_retry").await;
    assert_eq!(e["plugin_runs"].as_array().unwrap().len(), 1, "{e}");
    let codes: Vec<u64> =
        e["attempts"].as_array().unwrap().iter().filter_map(|a| a["status_code"].as_u64()).collect();
    assert_eq!(codes, [503, 500, 200], "{e}");
}

/// Sends `count` events to `url`, one at a time, and returns the median time from sending each
/// to `app` receiving it.
async fn median_to_upstream(
    client: &reqwest::Client,
    url: &str,
    app: &Upstream,
    prefix: &str,
    count: usize,
) -> Duration {
    let mut took = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}_{i}");
        let sent = std::time::Instant::now();
        assert_eq!(send_event(client, url, &id).await.0, 200);
        app.wait_for(WAIT, &id, |r| r.iter().any(|r| r.event_id == id)).await;
        let at = app.received().into_iter().find(|r| r.event_id == id).unwrap().at;
        took.push(at - sent);
    }
    took.sort();
    took[count / 2]
}

/// Regression (issue 16, item 7): plugin steps waited in one first-come-first-served queue
/// before the fair scheduler saw them, so 160 events of one merchant whose plugin spins to its
/// deadline raised another merchant's webhook-to-upstream time from a 3 ms median to ~10 s.
/// Every queue on the way is now fair between merchants: the other's median stays within 3×
/// of its unloaded value (asserted loosely here; measured in bench/RESULTS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_saturating_its_plugins_leaves_anothers_latency_within_three_times() {
    // 480 events from eight senders: with 160, as in the report, the step's 64 workers were
    // not always all held (measured: the build before the fix then passed too).
    const FLOOD_PER_TASK: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let slow_app = Upstream::start().await;
    let fast_app = Upstream::start().await;
    let config = slow_and_fast(dir.path(), &slow_app, &fast_app, 100);
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    let fast = gateway.url("/fast");
    let unloaded = median_to_upstream(&client, &fast, &fast_app, "evt_calm", 15).await;

    // 480 events × 2 attempts × 100 ms: 96 s of plugin time, far more than the step's 64
    // workers can hold at once.
    let floods: Vec<_> = (0..8)
        .map(|t| {
            let (client, url) = (client.clone(), gateway.url("/slow"));
            tokio::spawn(async move {
                for i in 0..FLOOD_PER_TASK {
                    assert_eq!(send_event(&client, &url, &format!("evt_slow_{t}_{i}")).await.0, 200);
                }
            })
        })
        .collect();
    for flood in floods {
        flood.await.unwrap();
    }
    let loaded = median_to_upstream(&client, &fast, &fast_app, "evt_busy", 15).await;
    eprintln!(
        "fairness: unloaded median {unloaded:?}, while another merchant saturates its plugins {loaded:?}"
    );
    // Loosely: 3× plus 100 ms of slack for this shared machine's swings.
    assert!(loaded <= unloaded * 3 + Duration::from_millis(100), "{unloaded:?} unloaded, {loaded:?} loaded");
    // The flood was really running: most of the slow merchant's events were still waiting.
    let db = dir.path().join("db.sqlite");
    let pending =
        rusqlite_count(&db, "select count(*) from events where merchant = 'slow' and status = 'queued'");
    assert!(pending > 100, "only {pending} of the slow merchant's events were still queued");
}

/// Regression (issue 17): the plugin step posed as an upstream named `@plugins`, listed among
/// an event's deliveries and attempts and in the queue-depth metric. It is its own hop now:
/// shown as the event's plugin step, followed by the deliveries it created, and replayed from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_step_is_shown_apart_from_the_deliveries_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let config = base(&dir.path().join("db.sqlite"))
        + &endpoint("/ok", "default", &["threshold"], Some("legacy"), "queue")
        + &endpoint("/panics", "default", &["panic"], Some("legacy"), "queue")
        + &upstream("legacy", "default", &legacy.url())
        + &plugin("threshold", "default", "amount_threshold", "config = { min_amount = \"1000\" }")
        + &plugin("panic", "default", "panic", "");
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();

    assert_eq!(send(&client, &gateway.url("/ok"), "evt_ok", payment("evt_ok", 5000, "a@b.c")).await.0, 200);
    assert_eq!(send_event(&client, &gateway.url("/panics"), "evt_panics").await.0, 200);
    wait_for_status(&client, &gateway, "evt_ok", "delivered", WAIT).await;
    wait_for_status(&client, &gateway, "evt_panics", "dead", WAIT).await;

    let ok = event(&client, &gateway, "evt_ok").await;
    assert_eq!(
        (&ok["plugin_step"]["status"], &ok["plugin_step"]["attempts"]),
        (&"done".into(), &1.into()),
        "{ok}"
    );
    let upstreams = |e: &Value, list: &str| -> Vec<String> {
        e[list].as_array().unwrap().iter().map(|d| d["upstream"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(upstreams(&ok, "deliveries"), ["legacy"], "{ok}");
    assert_eq!(upstreams(&ok, "attempts"), ["legacy"], "{ok}");

    let dead = event(&client, &gateway, "evt_panics").await;
    let step = &dead["plugin_step"];
    assert_eq!((&step["status"], &step["attempts"]), (&"dead".into(), &2.into()), "{dead}");
    assert!(step["error"].as_str().unwrap().starts_with("panic: trap"), "{dead}");
    assert!(upstreams(&dead, "deliveries").is_empty() && upstreams(&dead, "attempts").is_empty(), "{dead}");
    assert_eq!(dead["plugin_runs"].as_array().unwrap().len(), 2, "{dead}");

    let metrics = client.get(gateway.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(!metrics.contains('@'), "no pseudo-upstream in the metrics:\n{metrics}");
    assert!(
        metrics.contains("payflow_edge_queue_depth{merchant=\"default\",upstream=\"legacy\"} 0"),
        "{metrics}"
    );

    // Replay starts over at the plugins: the step runs (and fails) twice more.
    let url = gateway.admin_url("/api/events/evt_panics/replay");
    let reply: Value = client.post(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!((&reply["plugins"], &reply["upstream"]), (&true.into(), &"legacy".into()), "{reply}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let e = event(&client, &gateway, "evt_panics").await;
        if e["plugin_runs"].as_array().unwrap().len() == 4 && e["plugin_step"]["status"] == "dead" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replayed step did not run twice: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(legacy.ids(), ["evt_ok"], "nothing the plugins failed on is delivered");
}
