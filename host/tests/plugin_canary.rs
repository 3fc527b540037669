//! Canary rollouts with real components: `plugin upload NAME FILE --canary N%` gives a new
//! version a share of the events (chosen by event id), `plugin promote` makes it active for
//! all, and a canary that fails clearly more often than the active version is rolled back by
//! itself, with the reason shown, and no event lost.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    admin_get, client, event_body, guests, post, sign, wait_for_status, Gateway, Upstream, ACME_TOKEN,
    ADMIN_TOKEN, GLOBEX_TOKEN, SECRET,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(db: &std::path::Path, app: &str) -> String {
    support::config_head(db)
        + support::TWO_MERCHANTS
        + &format!(
            r#"
[plugins]
max_attempts = 100
retry_base_ms = 50
retry_max_ms = 200
canary_window = 6
canary_margin_percent = 20
[[endpoint]]
merchant = "acme"
path = "/acme"
secrets = ["{SECRET}"]
plugins = ["gate"]
upstream = "acme-app"
[[upstream]]
name = "acme-app"
merchant = "acme"
url = "{app}"
[[plugin]]
name = "gate"
merchant = "acme"
path = "{noop}"
[[plugin]]
name = "empty"
merchant = "acme"
"#,
            noop = guests().join("noop.wasm").display()
        )
}

fn cli_as_acme(gw: &Gateway, args: &[&str]) -> (Option<i32>, String, String) {
    support::admin_cli(gw, ACME_TOKEN, args)
}

async fn send(client: &reqwest::Client, gw: &Gateway, id: &str, event_type: &str) {
    let body = event_body(id, event_type);
    assert_eq!(
        post(client, &gw.url("/acme"), &sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id), body)
            .await
            .0,
        200
    );
}

/// The versions an event's plugin runs were on, oldest first.
async fn run_versions(client: &reqwest::Client, gw: &Gateway, id: &str) -> Vec<u64> {
    let (_, event) = admin_get(client, &gw.admin_url(&format!("/api/events/{id}")), ADMIN_TOKEN).await;
    event["plugin_runs"].as_array().unwrap().iter().map(|r| r["version"].as_u64().unwrap()).collect()
}

async fn plugin(client: &reqwest::Client, gw: &Gateway, name: &str) -> Value {
    admin_get(client, &gw.admin_url(&format!("/api/plugins/{name}")), ACME_TOKEN).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_traps_on_some_events_is_rolled_back_by_itself_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &app.url()));
    let client = client();
    let picky = guests().join("picky.wasm");
    let (code, out, err) =
        cli_as_acme(&gw, &["plugin", "upload", "gate", picky.to_str().unwrap(), "--canary", "50%"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("a canary on 50% of events beside v1"), "{out}");

    let ids: Vec<String> = (0..40).map(|i| format!("evt_canary_{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        send(&client, &gw, id, if i % 2 == 0 { "payment.succeeded" } else { "payment.failed" }).await;
    }
    for id in &ids {
        wait_for_status(&client, &gw, id, "delivered", WAIT).await;
    }

    let status = plugin(&client, &gw, "gate").await;
    assert_eq!(status["active_version"], 1, "{status:#}");
    let canary = &status["canary"];
    assert_eq!(
        (canary["version"].as_u64(), canary["state"].as_str()),
        (Some(2), Some("rolled_back")),
        "{status:#}"
    );
    let reason = canary["reason"].as_str().unwrap();
    assert!(
        reason.contains("trap") && reason.contains("no receipt"),
        "the reason names the failure: {reason}"
    );
    let (_, out, _) = cli_as_acme(&gw, &["plugin", "list"]);
    assert!(out.contains("last canary v2: rolled back: the canary failed"), "{out}");
    // Per-version figures: the canary's traps are its own, the active version's runs are clean.
    let by_version = status["by_version"].as_array().unwrap();
    let figures =
        |v: u64| by_version.iter().find(|f| f["version"] == v).unwrap_or_else(|| panic!("v{v}: {status:#}"));
    assert!(
        figures(2)["outcomes"]["trap"].as_u64().unwrap() >= 3
            && figures(2)["outcomes"]["continue"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert_eq!(
        (figures(1)["failed"].as_u64(), figures(1)["runs"].as_u64() > Some(0)),
        (Some(0), true),
        "{status:#}"
    );
    assert!(figures(1)["time_us_p99"].as_u64().unwrap() > 0 && figures(2)["fuel_p50"].as_u64().unwrap() > 0);
    assert!(out.contains("v2: ") && out.contains("trap"), "plugin list shows each version's runs: {out}");

    // The canary did take its share: some events continued on it before it was rolled back.
    let mut on_canary = 0;
    for id in &ids {
        let versions = run_versions(&client, &gw, id).await;
        // An event stays on its version; only the rollback moves the canary's to v1, for good.
        assert!(versions.windows(2).all(|w| w[0] >= w[1]), "{id} went back to the canary: {versions:?}");
        if versions.contains(&2) {
            on_canary += 1;
        }
    }
    assert!((5..=35).contains(&on_canary), "{on_canary} of 40 events ran on a 50% canary");
    let mut delivered = app.ids();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 40, "every event reached the app: {delivered:?}");

    // After the rollback, every event runs on v1, whatever its id.
    for i in 0..6 {
        let id = format!("evt_after_{i}");
        send(&client, &gw, &id, "payment.failed").await;
        wait_for_status(&client, &gw, &id, "delivered", WAIT).await;
        assert_eq!(run_versions(&client, &gw, &id).await, [1], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_takes_a_stable_share_until_promoted_and_an_upload_cancels_one() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &app.url()));
    let client = client();
    let threshold = guests().join("amount_threshold.wasm");
    let (code, _, err) =
        cli_as_acme(&gw, &["plugin", "upload", "gate", threshold.to_str().unwrap(), "--canary", "30"]);
    assert_eq!(code, Some(0), "{err}");
    let ids: Vec<String> = (0..30).map(|i| format!("evt_share_{i:02}")).collect();
    for id in &ids {
        send(&client, &gw, id, "payment.succeeded").await;
    }
    let mut chosen = Vec::new();
    for id in &ids {
        wait_for_status(&client, &gw, id, "delivered", WAIT).await;
        let versions = run_versions(&client, &gw, id).await;
        assert_eq!(versions.len(), 1, "{id}: {versions:?}");
        chosen.push(versions[0]);
    }
    assert!(chosen.contains(&1) && chosen.contains(&2), "a 30% canary took {chosen:?}");
    // The same event id goes to the same version again: a replay runs where it ran.
    let first_on_canary = &ids[chosen.iter().position(|v| *v == 2).unwrap()];
    let replayed = client
        .post(gw.admin_url(&format!("/api/events/{first_on_canary}/replay")))
        .bearer_auth(ACME_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 202);
    let deadline = std::time::Instant::now() + WAIT;
    while run_versions(&client, &gw, first_on_canary).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the replay never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run_versions(&client, &gw, first_on_canary).await, [2, 2]);

    let (code, out, err) = cli_as_acme(&gw, &["plugin", "promote", "gate"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("gate v2 is active for every event"), "{out}");
    let status = plugin(&client, &gw, "gate").await;
    assert_eq!(
        (status["active_version"].as_u64(), status["canary"]["state"].as_str()),
        (Some(2), Some("promoted"))
    );
    for id in ["evt_promoted_a", "evt_promoted_b", "evt_promoted_c"] {
        send(&client, &gw, id, "payment.succeeded").await;
        wait_for_status(&client, &gw, id, "delivered", WAIT).await;
        assert_eq!(run_versions(&client, &gw, id).await, [2], "{id}");
    }

    // A plain upload while a canary runs replaces it: the canary is cancelled, with the reason.
    let ledger = guests().join("ledger.wasm");
    assert_eq!(
        cli_as_acme(&gw, &["plugin", "upload", "gate", ledger.to_str().unwrap(), "--canary", "10%"]).0,
        Some(0)
    );
    let noop = guests().join("noop.wasm");
    assert_eq!(cli_as_acme(&gw, &["plugin", "upload", "gate", noop.to_str().unwrap()]).0, Some(0));
    let status = plugin(&client, &gw, "gate").await;
    assert_eq!(
        (status["canary"]["version"].as_u64(), status["canary"]["state"].as_str()),
        (Some(3), Some("cancelled")),
        "{status:#}"
    );
    assert!(
        status["canary"]["reason"].as_str().unwrap().contains("made active for every event"),
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_refuses_what_it_cannot_do_and_other_merchants_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &app.url()));
    let client = client();
    let threshold = std::fs::read(guests().join("amount_threshold.wasm")).unwrap();
    let put = |token: &'static str, path: &str, body: Vec<u8>| {
        let request = client.put(gw.admin_url(path)).bearer_auth(token).body(body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for bad in ["0", "101", "ten", "-5%"] {
        let (status, reply) =
            put(ACME_TOKEN, &format!("/api/plugins/gate?canary={bad}"), threshold.clone()).await;
        assert_eq!((status, reply["error"].as_str()), (400, Some("bad_query")), "canary={bad}: {reply}");
    }
    let (code, _, err) = cli_as_acme(
        &gw,
        &[
            "plugin",
            "upload",
            "gate",
            guests().join("amount_threshold.wasm").to_str().unwrap(),
            "--canary",
            "0%",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1% to 100%"), "{err}");
    // The active version's own component is no canary; nor can a plugin without one have one.
    let noop = std::fs::read(guests().join("noop.wasm")).unwrap();
    let (status, reply) = put(ACME_TOKEN, "/api/plugins/gate?canary=10", noop).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("the active version"), "{reply}");
    let (status, reply) = put(ACME_TOKEN, "/api/plugins/empty?canary=10", threshold.clone()).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("without --canary"), "{reply}");
    // Nothing to promote; another merchant's plugin is not there.
    let (code, _, err) = cli_as_acme(&gw, &["plugin", "promote", "gate"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no canary running"), "{err}");
    let (status, _) = put(GLOBEX_TOKEN, "/api/plugins/gate?canary=10", threshold).await;
    assert_eq!(status, 404);
    let promote = client
        .post(gw.admin_url("/api/plugins/gate/promote"))
        .bearer_auth(GLOBEX_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), 404);
    assert_eq!(
        plugin(&client, &gw, "gate").await["versions"].as_array().unwrap().len(),
        1,
        "nothing was stored"
    );
}
