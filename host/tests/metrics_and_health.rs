//! What operators see without reading the database: `/metrics` counts known traffic exactly
//! (and a merchant's token scrapes only its own series), `/healthz` and `/readyz` say what they
//! promise, "Send Test Webhook" takes the real path, and every route in the OpenAPI document
//! answers as documented.

mod support;

use std::time::Duration;

use payflow_verify::Scheme;
use serde_json::{json, Value};
use support::*;

/// Two merchants: acme's endpoint runs the `noop` plugin, globex's has none; bodies over 4 KiB
/// are refused.
fn config(db: &std::path::Path, upstream: &str, noop: &std::path::Path) -> String {
    let config = two_merchants_config(db, upstream, r#"plugins = ["noop"]"#)
        + &format!("[[plugin]]\nname = \"noop\"\nmerchant = \"acme\"\npath = {noop:?}\n");
    config.replace("[store]", "max_body_bytes = 4096\n[store]")
}

/// A gateway on [`config`] (edited by `edit`) and its upstream, in a temporary directory.
async fn start(edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, Upstream, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let config = edit(config(&dir.path().join("db"), &upstream.url(), &noop()));
    let gw = Gateway::start(dir.path(), &config);
    (dir, upstream, gw)
}

fn noop() -> std::path::PathBuf {
    guests().join("noop.wasm")
}

async fn scrape(client: &reqwest::Client, gw: &Gateway, token: &str) -> (u16, String) {
    let response = client.get(gw.admin_url("/metrics")).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    }
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic_and_scope_series_to_the_merchant() {
    let (_dir, _upstream, gw) = start(|c| c).await;
    let client = client();

    // acme: three new events, one duplicate, a wrong secret, an oversize body.
    for id in ["evt_a1", "evt_a2", "evt_a3", "evt_a1"] {
        assert_eq!(send_event(&client, &gw.url("/acme"), id).await.0, 200);
    }
    let body = event_body("evt_a4", "payment.succeeded");
    let wrong = sign(Scheme::PayFlow, "whsec_not_the_secret_at_all", &body, "evt_a4");
    assert_eq!(post(&client, &gw.url("/acme"), &wrong, body).await.0, 401);
    let huge = vec![b' '; 8192];
    let signed = sign(Scheme::PayFlow, SECRET, &huge, "evt_a5");
    assert_eq!(post(&client, &gw.url("/acme"), &signed, huge).await.0, 413);
    // globex: two new events, no signature at all, a signed body that is not JSON.
    for id in ["evt_g1", "evt_g2"] {
        assert_eq!(send_event(&client, &gw.url("/globex"), id).await.0, 200);
    }
    let body = event_body("evt_g3", "payment.succeeded");
    let unsigned = vec![("content-type".to_string(), "application/json".to_string())];
    assert_eq!(post(&client, &gw.url("/globex"), &unsigned, body).await.0, 401);
    let not_json = b"{not json".to_vec();
    let signed = sign(Scheme::PayFlow, SECRET, &not_json, "x");
    assert_eq!(post(&client, &gw.url("/globex"), &signed, not_json).await.0, 400);

    for id in ["evt_a1", "evt_a2", "evt_a3", "evt_g1", "evt_g2"] {
        wait_for_status(&client, &gw, id, "delivered", Duration::from_secs(20)).await;
    }

    let (status, page) = scrape(&client, &gw, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{page}");
    let s = samples(&page);
    let get = |key: &str| *s.get(key).unwrap_or_else(|| panic!("no sample {key} in\n{page}"));
    let requests = |m: &str, e: &str, o: &str| {
        get(&format!("payflow_edge_requests_total{{merchant=\"{m}\",endpoint=\"{e}\",outcome=\"{o}\"}}"))
    };
    assert_eq!(requests("acme", "/acme", "received"), 3.0);
    assert_eq!(requests("acme", "/acme", "duplicate"), 1.0);
    assert_eq!(requests("acme", "/acme", "signature_refused"), 1.0);
    assert_eq!(requests("acme", "/acme", "body_too_large"), 1.0);
    assert_eq!(requests("acme", "/acme", "bad_request"), 0.0);
    assert_eq!(requests("globex", "/globex", "received"), 2.0);
    assert_eq!(requests("globex", "/globex", "signature_refused"), 1.0);
    assert_eq!(requests("globex", "/globex", "bad_request"), 1.0);
    let failures = |m: &str, e: &str, r: &str| {
        get(&format!(
            "payflow_edge_verification_failures_total{{merchant=\"{m}\",endpoint=\"{e}\",reason=\"{r}\"}}"
        ))
    };
    assert_eq!(failures("acme", "/acme", "invalid_signature"), 1.0);
    assert_eq!(failures("acme", "/acme", "missing_signature"), 0.0);
    assert_eq!(failures("globex", "/globex", "missing_signature"), 1.0);
    let deliveries = |m: &str, u: &str, o: &str| {
        get(&format!("payflow_edge_deliveries_total{{merchant=\"{m}\",upstream=\"{u}\",outcome=\"{o}\"}}"))
    };
    assert_eq!(deliveries("acme", "acme-app", "delivered"), 3.0);
    assert_eq!(deliveries("globex", "globex-app", "delivered"), 2.0);
    assert_eq!(deliveries("globex", "globex-app", "retry"), 0.0);
    assert_eq!(get("payflow_edge_queue_depth{merchant=\"acme\",upstream=\"acme-app\"}"), 0.0);
    assert_eq!(get("payflow_edge_queue_depth{merchant=\"globex\",upstream=\"globex-app\"}"), 0.0);
    assert_eq!(
        get("payflow_edge_plugin_runs_total{merchant=\"acme\",plugin=\"noop\",outcome=\"continue\"}"),
        3.0
    );
    assert_eq!(get("payflow_edge_plugin_duration_seconds_count{merchant=\"acme\",plugin=\"noop\"}"), 3.0);
    assert_eq!(get("payflow_edge_plugin_fuel_used_count{merchant=\"acme\",plugin=\"noop\"}"), 3.0);
    assert!(get("payflow_edge_plugin_fuel_used_sum{merchant=\"acme\",plugin=\"noop\"}") > 0.0);
    // The same runs by version, with the version's time quantiles.
    assert_eq!(
        get("payflow_edge_plugin_version_runs_total{merchant=\"acme\",plugin=\"noop\",version=\"1\",outcome=\"continue\"}"),
        3.0
    );
    let p99 = get("payflow_edge_plugin_version_duration_seconds{merchant=\"acme\",plugin=\"noop\",version=\"1\",quantile=\"0.99\"}");
    assert!(p99 > 0.0 && p99 < 10.0, "{p99}");
    // Every stored event and every recorded attempt went through a commit.
    let commits = get("payflow_edge_store_commit_seconds_count");
    assert!(commits >= 5.0, "{commits} commits");
    assert_eq!(get("payflow_edge_store_commit_seconds_bucket{le=\"+Inf\"}"), commits);

    // A merchant's token scrapes its own series only; no token, or a wrong one, none at all.
    let (status, globex) = scrape(&client, &gw, GLOBEX_TOKEN).await;
    assert_eq!(status, 200);
    assert!(globex.contains("merchant=\"globex\"") && !globex.contains("acme"), "{globex}");
    assert!(!globex.contains("payflow_edge_store_commit_seconds"), "the store is the operator's");
    let (_, acme) = scrape(&client, &gw, ACME_TOKEN).await;
    assert!(acme.contains("plugin=\"noop\"") && !acme.contains("globex"), "{acme}");
    assert_eq!(client.get(gw.admin_url("/metrics")).send().await.unwrap().status(), 401);
    assert_eq!(scrape(&client, &gw, "not-a-token").await.0, 401);

    // The dashboard's chart reads the same counters, in the token's scope.
    let (_, stats) = admin_get(&client, &gw.admin_url("/api/stats"), GLOBEX_TOKEN).await;
    assert_eq!(
        (stats["received"].as_u64(), stats["delivered"].as_u64(), stats["failed"].as_u64()),
        (Some(4), Some(2), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_every_plugin_and_healthz_only_for_the_process() {
    // `noop` declared without a file: nothing to run until one is uploaded.
    let (_dir, _upstream, gw) = start(|c| c.replace(&format!("path = {:?}\n", noop()), "")).await;
    let client = client();
    let health = client.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "not_ready");
    assert!(ready["problems"].to_string().contains("plugin noop"), "{ready}");

    let uploaded = client
        .put(gw.admin_url("/api/plugins/noop"))
        .bearer_auth(ACME_TOKEN)
        .body(std::fs::read(noop()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let ready = client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn test_webhooks_are_signed_sent_through_ingress_and_delivered() {
    let (_dir, upstream, gw) = start(|c| c).await;
    let client = client();
    let send = |token: &'static str, body: Value| {
        let request = client.post(gw.admin_url("/api/test-webhook")).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, sent) = send(
        ACME_TOKEN,
        json!({ "endpoint": "/acme", "type": "payment.failed", "set": { "data.amount": 5000 } }),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["status"], 200, "the ingress accepted it: {sent}");
    assert_eq!(sent["reply"], json!({ "received": true }));
    let id = sent["id"].as_str().unwrap().to_string();
    wait_for_status(&client, &gw, &id, "delivered", Duration::from_secs(20)).await;
    let got = upstream.received().into_iter().find(|r| r.header("x-payflow-event-id") == Some(&id)).unwrap();
    let event: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["data"]["amount"].as_i64()),
        (Some("payment.failed"), Some(5000))
    );

    // Bad requests say what is wrong; another merchant's endpoint does not exist for this token.
    let cases = [
        (GLOBEX_TOKEN, json!({ "endpoint": "/acme" }), 404, "unknown_endpoint"),
        (ADMIN_TOKEN, json!({ "endpoint": "/nowhere" }), 404, "unknown_endpoint"),
        (ADMIN_TOKEN, json!({ "path": "/acme" }), 400, "invalid_request"),
        (ADMIN_TOKEN, json!({ "endpoint": "/acme", "set": { "id": "evt_mine" } }), 400, "invalid_request"),
        (ADMIN_TOKEN, json!({ "endpoint": "/acme", "set": { "data..x": 1 } }), 400, "invalid_request"),
        (ADMIN_TOKEN, json!({ "endpoint": "/acme", "set": { "id.x": 1 } }), 400, "invalid_request"),
    ];
    for (token, body, want, error) in cases {
        let (status, reply) = send(token, body.clone()).await;
        assert_eq!((status, reply["error"].as_str()), (want, Some(error)), "{body}: {reply}");
    }
    let raw = client
        .post(gw.admin_url("/api/test-webhook"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let big = client
        .post(gw.admin_url("/api/test-webhook"))
        .bearer_auth(ADMIN_TOKEN)
        .body(vec![b' '; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let unauthorized =
        client.post(gw.admin_url("/api/test-webhook")).json(&json!({ "endpoint": "/acme" })).send().await;
    assert_eq!(unauthorized.unwrap().status(), 401);
    // Nothing but the one good test webhook was delivered.
    assert_eq!(upstream.received().len(), 1);
}

/// Calls every operation of the OpenAPI document against a live gateway and checks that the
/// status is one the document lists for it; and that the router has no route the document
/// leaves out (a sample of near misses answers 404).
#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_answers_as_documented() {
    let (_dir, _upstream, gw) = start(|c| c).await;
    let client = client();
    assert_eq!(send_event(&client, &gw.url("/acme"), "evt_doc").await.0, 200);
    wait_for_status(&client, &gw, "evt_doc", "delivered", Duration::from_secs(20)).await;

    let doc: Value = client.get(gw.admin_url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let checked_in: Value = serde_json::from_slice(
        &std::fs::read(manifest_dir().join("gateway/src/admin/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc, checked_in, "the served document is the one in the repository");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations.push((path.clone(), method.clone(), op.clone()));
        }
    }
    // DELETE last: it removes the plugin the other calls use.
    operations.sort_by_key(|(_, method, _)| method == "delete");
    assert!(operations.len() >= 16, "{} operations", operations.len());
    for (path, method, op) in operations {
        let mut url = gw.admin_url(
            &path
                .replace("{id}", "evt_doc")
                .replace("{name}", "noop")
                .replace("{version}", "1")
                .replace("{key}", "k"),
        );
        if path == "/api/events/replay" {
            url.push_str("?status=dead"); // a bulk replay names what it replays
        }
        let mut request = client.request(method.to_uppercase().parse().unwrap(), &url);
        if op.get("security").is_some() {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        request = match (path.as_str(), method.as_str()) {
            // A component other than the configured one: the same one again would be the same
            // version, and the rollback after it would have nothing to return to.
            // A dry run of a different component beside the active one.
            ("/api/plugins/{name}", "put") | ("/api/plugins/{name}/try", "post") => {
                request.body(std::fs::read(guests().join("amount_threshold.wasm")).unwrap())
            }
            ("/api/test-webhook", _) => request.json(&json!({ "endpoint": "/acme" })),
            _ => request,
        };
        let status = request.send().await.unwrap().status().as_u16().to_string();
        let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            documented.contains(&&status),
            "{method} {path} answered {status}, documented {documented:?}"
        );
        // A delivered event holds no ordering key back: its skip is refused, as documented; and
        // with no canary running there is nothing to promote.
        let expected = match (path.as_str(), method.as_str()) {
            ("/api/events/{id}/skip" | "/api/plugins/{name}/promote", _) => "409",
            // The noop plugin writes no kv: the key asked for is not there.
            ("/api/plugins/{name}/kv/{key}", "get") => "404",
            _ => "2",
        };
        assert!(status.starts_with(expected), "{method} {path} answered {status}");
        if op.get("security").is_some() {
            let anonymous =
                client.request(method.to_uppercase().parse().unwrap(), &url).send().await.unwrap();
            assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
        }
    }
    for near_miss in [
        "/api",
        "/api/event",
        "/api/events/evt_doc/deliveries",
        "/api/plugin",
        "/metrics/x",
        "/assets/none.js",
    ] {
        let response = client.get(gw.admin_url(near_miss)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 404, "{near_miss}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let (_dir, _upstream, gw) = start(|c| c).await;
    let client = client();
    let page = client.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    // Nothing is fetched from anywhere but the gateway itself.
    assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    for asset in ["/assets/app.js", "/assets/app.css"] {
        assert_eq!(client.get(gw.admin_url(asset)).send().await.unwrap().status(), 200, "{asset}");
    }
    let (_, who) = admin_get(&client, &gw.admin_url("/api/whoami"), ACME_TOKEN).await;
    assert_eq!((who["merchant"].as_str(), who["operator"].as_bool()), (Some("acme"), Some(false)));
    let wasm =
        client.get(gw.admin_url("/assets/payflow-verify/payflow_verify_web_bg.wasm")).send().await.unwrap();
    let expected = if who["checker"] == true { 200 } else { 404 };
    assert_eq!(wasm.status(), expected, "checker assets present exactly when whoami says so");
}

/// A plugin that traps: its failures show on the plugin (by reason, with the latest event and
/// message, as the dashboard lists them) and in the metrics, and the event ends `dead`.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugins_recent_failures_are_listed_by_reason() {
    let panics = guests().join("panic.wasm");
    let (_dir, _upstream, gw) = start(|c| {
        c.replace(r#"plugins = ["noop"]"#, r#"plugins = ["noop", "panicky"]"#)
            + &format!("[[plugin]]\nname = \"panicky\"\nmerchant = \"acme\"\npath = {panics:?}\n")
            + "[plugins]\nmax_attempts = 2\nretry_base_ms = 10\nretry_max_ms = 20\n"
    })
    .await;
    let client = client();
    for id in ["evt_trap_1", "evt_trap_2"] {
        assert_eq!(send_event(&client, &gw.url("/acme"), id).await.0, 200);
    }
    for id in ["evt_trap_1", "evt_trap_2"] {
        wait_for_status(&client, &gw, id, "dead", Duration::from_secs(20)).await;
    }
    let (status, plugin) = admin_get(&client, &gw.admin_url("/api/plugins/panicky"), ACME_TOKEN).await;
    assert_eq!(status, 200);
    let failures = plugin["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{plugin}");
    assert_eq!(failures[0]["reason"], "trap");
    assert_eq!(failures[0]["count"], 4, "two events, two attempts each: {plugin}");
    assert!(failures[0]["last_event_id"].as_str().unwrap().starts_with("evt_trap_"));
    assert!(failures[0]["last_message"].as_str().unwrap().contains("unreachable"), "{plugin}");
    assert_eq!(plugin["runs"], json!({ "trap": 4 }));
    // The plugin before it ran fine each time, and has no failures.
    let (_, noop) = admin_get(&client, &gw.admin_url("/api/plugins/noop"), ACME_TOKEN).await;
    assert_eq!(
        (noop["runs"]["continue"].as_u64(), noop["recent_failures"].as_array().unwrap().len()),
        (Some(4), 0)
    );

    let (_, page) = scrape(&client, &gw, ACME_TOKEN).await;
    let s = samples(&page);
    assert_eq!(
        s["payflow_edge_plugin_runs_total{merchant=\"acme\",plugin=\"panicky\",outcome=\"trap\"}"],
        4.0
    );
    assert_eq!(
        s["payflow_edge_requests_total{merchant=\"acme\",endpoint=\"/acme\",outcome=\"received\"}"],
        2.0
    );
}

/// Deliveries that fall behind show as lag: how long the earliest pending delivery to an
/// upstream has been due. One merchant's upstream holding its deliveries is that merchant's
/// lag only, and not in another merchant's scrape; the lag ends once they are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_held_up_by_a_slow_upstream_show_as_its_lag_until_they_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (slow, fast) = (Upstream::start().await, Upstream::start().await);
    slow.set_delay(Duration::from_secs(2));
    let globex_at = |url: &str| format!("merchant = \"globex\"\nurl = \"{url}\"");
    let config = two_merchants_config(&dir.path().join("db"), &slow.url(), "")
        .replace("name = \"acme-app\"\n", "name = \"acme-app\"\nconcurrency = 1\ntimeout_ms = 10000\n")
        .replace(&globex_at(&slow.url()), &globex_at(&fast.url()));
    assert!(config.contains(&fast.url()), "{config}");
    let gw = Gateway::start(dir.path(), &config);
    let client = client();
    let held = ["evt_held1", "evt_held2", "evt_held3"];
    for id in held {
        assert_eq!(send_event(&client, &gw.url("/acme"), id).await.0, 200);
    }
    assert_eq!(send_event(&client, &gw.url("/globex"), "evt_quick").await.0, 200);
    fast.wait_for(Duration::from_secs(10), "globex's delivery", |r| r.len() == 1).await;
    // The first of acme's is under way (2 s at the upstream), the others wait their turn.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (_, page) = scrape(&client, &gw, ADMIN_TOKEN).await;
    let s = samples(&page);
    let get = |name: &str, m: &str, u: &str| {
        let key = format!("{name}{{merchant=\"{m}\",upstream=\"{u}\"}}");
        *s.get(&key).unwrap_or_else(|| panic!("no sample {key} in\n{page}"))
    };
    let lag = get("payflow_edge_delivery_lag_seconds", "acme", "acme-app");
    assert!(lag >= 1.0, "acme's deliveries have waited at least 1.5 s, not {lag}");
    assert_eq!(get("payflow_edge_queue_depth", "acme", "acme-app"), 3.0);
    assert_eq!(get("payflow_edge_delivery_lag_seconds", "globex", "globex-app"), 0.0);
    assert_eq!(get("payflow_edge_queue_depth", "globex", "globex-app"), 0.0);
    let (status, globex_page) = scrape(&client, &gw, GLOBEX_TOKEN).await;
    assert_eq!(status, 200);
    assert!(globex_page.contains("payflow_edge_delivery_lag_seconds{merchant=\"globex\""), "{globex_page}");
    assert!(!globex_page.contains("merchant=\"acme\""), "another merchant's series:\n{globex_page}");

    slow.set_delay(Duration::ZERO);
    for id in held {
        wait_for_status(&client, &gw, id, "delivered", Duration::from_secs(20)).await;
    }
    let (_, page) = scrape(&client, &gw, ADMIN_TOKEN).await;
    let s = samples(&page);
    assert_eq!(
        s["payflow_edge_delivery_lag_seconds{merchant=\"acme\",upstream=\"acme-app\"}"], 0.0,
        "{page}"
    );
    assert_eq!(s["payflow_edge_queue_depth{merchant=\"acme\",upstream=\"acme-app\"}"], 0.0, "{page}");
}
