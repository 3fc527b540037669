//! Flow control per upstream, in a real gateway process against a real upstream on loopback:
//! the rate limit holds deliveries to their rate (measured over seconds), and the circuit
//! breaker stops sending after failures in a row, keeps the events queued without using up
//! their attempts, then lets one probe through and closes; its state and transitions show in
//! the admin API and the metrics.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{admin_get, client, send_event, wait_for_status, Gateway, Upstream, ADMIN_TOKEN, SECRET};

const WAIT: Duration = Duration::from_secs(30);

fn config(db: &std::path::Path, url: &str, upstream_extra: &str) -> String {
    support::config_head(db)
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nupstream = \"legacy\"\n\
             [[upstream]]\nname = \"legacy\"\nurl = {url:?}\n{upstream_extra}\n"
        )
}

/// One sample of the metrics page.
async fn metric(client: &reqwest::Client, gateway: &Gateway, series: &str) -> f64 {
    let page = client
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line =
        page.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in\n{page}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `series` until it reads `value`, for at most [`WAIT`].
async fn wait_for_metric(client: &reqwest::Client, gateway: &Gateway, series: &str, value: f64, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(client, gateway, series).await;
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {series} is still {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn breaker(client: &reqwest::Client, gateway: &Gateway) -> Value {
    let (code, reply) = admin_get(client, &gateway.admin_url("/api/upstreams"), ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{reply}");
    reply["upstreams"][0]["breaker"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_deliveries_to_their_rate() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    let gateway =
        Gateway::start(dir.path(), &config(&dir.path().join("db.sqlite"), &legacy.url(), "rate = \"10/s\""));
    let client = client();
    let ids: Vec<String> = (0..40).map(|i| format!("evt_rate_{i:02}")).collect();
    let sent = Instant::now();
    for id in &ids {
        assert_eq!(send_event(&client, &gateway.url("/wh"), id).await.0, 200);
    }
    legacy.wait_for(WAIT, "all 40 deliveries", |r| r.len() >= 40).await;
    let took = sent.elapsed();
    // A bucket of 10, refilled at 10/s: the 30 after the first burst take three seconds at
    // least, whatever the machine's speed (a slow one only takes longer).
    assert!(took >= Duration::from_millis(2_900), "40 deliveries at 10/s took only {took:?}");
    // No second holds more than a burst plus a second's refill.
    let at: Vec<Instant> = legacy.received().iter().map(|r| r.at).collect();
    for (i, start) in at.iter().enumerate() {
        let within = at[i..].iter().take_while(|t| t.duration_since(*start) < Duration::from_secs(1)).count();
        assert!(within <= 21, "{within} deliveries within one second from #{i}");
    }
    assert!(
        metric(
            &client,
            &gateway,
            "payflow_edge_rate_limited_total{merchant=\"default\",upstream=\"legacy\"}"
        )
        .await
            >= 25.0
    );
    let (_, upstreams) = admin_get(&client, &gateway.admin_url("/api/upstreams"), ADMIN_TOKEN).await;
    assert_eq!(upstreams["upstreams"][0]["rate"], "10/s", "{upstreams}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_failures_in_a_row_holds_attempts_then_closes_after_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Upstream::start().await;
    legacy.set_default(503);
    let extra = "concurrency = 1\nmax_attempts = 4\nretry_base_ms = 50\nretry_max_ms = 50\n\
                 breaker = { failures = 3, cool_down_ms = 2000 }";
    let gateway = Gateway::start(dir.path(), &config(&dir.path().join("db.sqlite"), &legacy.url(), extra));
    let client = client();
    for i in 0..5 {
        assert_eq!(send_event(&client, &gateway.url("/wh"), &format!("evt_cb_{i}")).await.0, 200);
    }
    legacy.wait_for(WAIT, "three failures", |r| r.len() >= 3).await;
    // The upstream counts a request when it arrives; the gateway counts the failure only once
    // the 503 is back. Regression: read at once, the breaker could still be closed (CI, loaded).
    let state = "payflow_edge_breaker_state{merchant=\"default\",upstream=\"legacy\"}";
    wait_for_metric(&client, &gateway, state, 1.0, "open after three failures in a row").await;
    let opened = Instant::now();
    assert_eq!(breaker(&client, &gateway).await["state"], "open");
    // While open: nothing is sent, and nothing is used up (max_attempts = 4 would have made
    // every event dead by now at 50 ms between retries).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    if opened.elapsed() < Duration::from_millis(1_900) {
        assert_eq!(legacy.received().len(), 3, "attempts while the breaker was open");
    }
    // The deliveries the breaker holds are the upstream's backlog, due since before it opened.
    let (_, upstreams) = admin_get(&client, &gateway.admin_url("/api/upstreams"), ADMIN_TOKEN).await;
    let held = &upstreams["upstreams"][0];
    assert!(held["behind_ms"].as_i64().is_some_and(|ms| ms >= 1_000), "{held}");
    if opened.elapsed() < Duration::from_millis(1_900) {
        assert_eq!(held["pending"], 5, "{held}");
    }
    let (_, queued) = admin_get(&client, &gateway.admin_url("/api/events?status=queued"), ADMIN_TOKEN).await;
    assert_eq!(queued["events"].as_array().unwrap().len(), 5, "{queued}");

    legacy.set_default(200);
    for i in 0..5 {
        wait_for_status(&client, &gateway, &format!("evt_cb_{i}"), "delivered", WAIT).await;
    }
    let first_after = legacy.received().iter().find(|r| r.status == 200).unwrap().at;
    assert!(
        first_after.duration_since(opened) >= Duration::from_millis(1_900),
        "probed before the cool-down"
    );
    assert_eq!(metric(&client, &gateway, state).await, 0.0, "closed by the probe");
    let b = breaker(&client, &gateway).await;
    assert_eq!((&b["state"], &b["opened"], &b["closed"]), (&"closed".into(), &1.into(), &1.into()), "{b}");
    let (_, upstreams) = admin_get(&client, &gateway.admin_url("/api/upstreams"), ADMIN_TOKEN).await;
    let caught_up = &upstreams["upstreams"][0];
    assert_eq!((&caught_up["pending"], &caught_up["behind_ms"]), (&0.into(), &0.into()), "{caught_up}");
    let transitions = |to: &str| {
        format!(
            "payflow_edge_breaker_transitions_total{{merchant=\"default\",upstream=\"legacy\",to=\"{to}\"}}"
        )
    };
    assert_eq!(metric(&client, &gateway, &transitions("half-open")).await, 1.0);
    // The events that waited out the cool-down were sent once, not retried into `dead`.
    let (_, e4) = admin_get(&client, &gateway.admin_url("/api/events/evt_cb_4"), ADMIN_TOKEN).await;
    assert_eq!(e4["deliveries"][0]["attempts"], 1, "{e4}");
}
