//! Routes, in a real gateway process with real upstreams on loopback: an endpoint fans its
//! events out to several upstreams by type glob, body field and the tags its plugins gave, the
//! endpoint's own `upstream` taking only what no route took; an event no route takes is kept
//! (`unrouted`, with the reason), never lost; and what matched is shown.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    admin_get, client, event_body, guests, post, sign, wait_for_status, Gateway, Upstream, ADMIN_TOKEN,
    SECRET,
};

const WAIT: Duration = Duration::from_secs(30);

fn upstream(name: &str, url: &str) -> String {
    format!("[[upstream]]\nname = {name:?}\nurl = {url:?}\nmax_attempts = 3\nretry_base_ms = 50\n")
}

async fn send(client: &reqwest::Client, gateway: &Gateway, id: &str, body: Vec<u8>) {
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id);
    let (status, reply) = post(client, &gateway.url("/wh"), &headers, body).await;
    assert_eq!(status, 200, "{id}: {reply}");
}

fn payment(id: &str, event_type: &str, currency: &str, amount: i64) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&event_body(id, event_type)).unwrap();
    body["data"]["currency"] = currency.into();
    body["data"]["amount"] = amount.into();
    serde_json::to_vec(&body).unwrap()
}

async fn routes_of(client: &reqwest::Client, gateway: &Gateway, id: &str) -> Value {
    let (code, event) =
        admin_get(client, &gateway.admin_url(&format!("/api/events/{id}")), ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{event}");
    event["plugin_step"]["routes"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_by_type_and_the_default_upstream_takes_only_what_no_route_took() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, ledger, crm) = (Upstream::start().await, Upstream::start().await, Upstream::start().await);
    let config = support::config_head(&dir.path().join("db.sqlite"))
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nupstream = \"legacy\"\n\
             [[endpoint.route]]\nupstream = \"ledger\"\ntypes = [\"payment.*\"]\n\
             [[endpoint.route]]\nupstream = \"crm\"\ntypes = [\"customer.*\", \"payment.failed\"]\n"
        )
        + &upstream("legacy", &legacy.url())
        + &upstream("ledger", &ledger.url())
        + &upstream("crm", &crm.url());
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    for (id, event_type) in [
        ("evt_paid", "payment.succeeded"),
        ("evt_failed", "payment.failed"),
        ("evt_customer", "customer.created"),
        ("evt_payout", "payout.sent"),
    ] {
        send(&client, &gateway, id, event_body(id, event_type)).await;
    }
    for id in ["evt_paid", "evt_failed", "evt_customer", "evt_payout"] {
        wait_for_status(&client, &gateway, id, "delivered", WAIT).await;
    }
    let sorted = |u: &Upstream| {
        let mut ids = u.ids();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&ledger), ["evt_failed", "evt_paid"]);
    assert_eq!(sorted(&crm), ["evt_customer", "evt_failed"]);
    assert_eq!(sorted(&legacy), ["evt_payout"], "the default route takes only what no route took");
    assert_eq!(
        routes_of(&client, &gateway, "evt_failed").await,
        serde_json::json!(["route[0]: ledger", "route[1]: crm"])
    );
    assert_eq!(routes_of(&client, &gateway, "evt_payout").await, serde_json::json!(["upstream: legacy"]));

    // `events show` says what matched.
    let (code, out, err) = support::cli(&[
        "events",
        "show",
        "evt_failed",
        "--admin",
        &gateway.admin_url(""),
        "--token",
        ADMIN_TOKEN,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("routes: route[0]: ledger, route[1]: crm"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_filter_routes_on_the_body_and_an_event_no_route_takes_is_kept_unrouted() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Upstream::start().await;
    let config = support::config_head(&dir.path().join("db.sqlite"))
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\n\
             [[endpoint.route]]\nupstream = \"fx\"\nwhere = {{ \"data.currency\" = [\"PKR\", \"INR\"], \"data.amount\" = 2500 }}\n"
        )
        + &upstream("fx", &fx.url());
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    send(&client, &gateway, "evt_pkr", payment("evt_pkr", "payment.succeeded", "PKR", 2500)).await;
    send(&client, &gateway, "evt_usd", payment("evt_usd", "payment.succeeded", "USD", 2500)).await;
    send(&client, &gateway, "evt_pkr_more", payment("evt_pkr_more", "payment.succeeded", "PKR", 9900)).await;
    wait_for_status(&client, &gateway, "evt_pkr", "delivered", WAIT).await;
    wait_for_status(&client, &gateway, "evt_usd", "unrouted", WAIT).await;
    wait_for_status(&client, &gateway, "evt_pkr_more", "unrouted", WAIT).await;
    assert_eq!(fx.ids(), ["evt_pkr"]);
    let (_, usd) = admin_get(&client, &gateway.admin_url("/api/events/evt_usd"), ADMIN_TOKEN).await;
    assert_eq!(usd["reason"], "no route matched (type payment.succeeded)", "{usd}");
    assert_eq!(usd["plugin_step"]["routes"], serde_json::json!([]), "{usd}");
    // Kept, listed by its status, and (like any event) replayable: the routes decide again.
    let (_, listed) =
        admin_get(&client, &gateway.admin_url("/api/events?status=unrouted"), ADMIN_TOKEN).await;
    let mut ids: Vec<&str> =
        listed["events"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["evt_pkr_more", "evt_usd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_decided_on_the_tags_the_plugins_gave() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, review) = (Upstream::start().await, Upstream::start().await);
    let wasm = guests().join("amount_threshold.wasm").display().to_string();
    let config = support::config_head(&dir.path().join("db.sqlite"))
        + &format!(
            "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"{SECRET}\"]\nplugins = [\"amount-threshold\"]\nupstream = \"legacy\"\n\
             [[endpoint.route]]\nupstream = \"review\"\ntags = [\"high-value\"]\n\
             [[endpoint.route]]\nupstream = \"legacy\"\ntypes = [\"*\"]\n\
             [[plugin]]\nname = \"amount-threshold\"\npath = {wasm:?}\nconfig = {{ min_amount = \"0\", high_value = \"100000\" }}\n"
        )
        + &upstream("legacy", &legacy.url())
        + &upstream("review", &review.url());
    let gateway = Gateway::start(dir.path(), &config);
    let client = client();
    send(&client, &gateway, "evt_big", payment("evt_big", "payment.succeeded", "PKR", 250_000)).await;
    send(&client, &gateway, "evt_small", payment("evt_small", "payment.succeeded", "PKR", 2_500)).await;
    wait_for_status(&client, &gateway, "evt_big", "delivered", WAIT).await;
    wait_for_status(&client, &gateway, "evt_small", "delivered", WAIT).await;
    assert_eq!(review.ids(), ["evt_big"], "only the plugin's high-value event goes to review");
    let mut both = legacy.ids();
    both.sort();
    assert_eq!(both, ["evt_big", "evt_small"], "a catch-all route takes everything, the tagged one too");
    assert_eq!(
        routes_of(&client, &gateway, "evt_big").await,
        serde_json::json!(["route[0]: review", "route[1]: legacy"])
    );
}
