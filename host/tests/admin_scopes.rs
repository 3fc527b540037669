//! The admin API's tokens: the operator sees every merchant; a merchant's token sees and
//! replays only that merchant's events (another's answer 404, like a missing one); no token
//! or a wrong one is 401. Health needs no token.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const ACME: &str = ACME_TOKEN;
const GLOBEX: &str = GLOBEX_TOKEN;

fn config(db: &std::path::Path, upstream: &str) -> String {
    two_merchants_config(db, upstream, "")
}

fn ids(listing: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        listing["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn merchant_tokens_see_and_replay_only_their_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &upstream.url()));
    let client = client();
    for (path, id) in [("/acme", "evt_a1"), ("/acme", "evt_a2"), ("/globex", "evt_g1")] {
        assert_eq!(send_event(&client, &gw.url(path), id).await.0, 200);
    }
    upstream.wait_for(Duration::from_secs(10), "three deliveries", |r| r.len() == 3).await;

    let list = gw.admin_url("/api/events");
    assert_eq!(ids(&admin_get(&client, &list, ADMIN_TOKEN).await.1), ["evt_a1", "evt_a2", "evt_g1"]);
    assert_eq!(ids(&admin_get(&client, &list, ACME).await.1), ["evt_a1", "evt_a2"]);
    assert_eq!(ids(&admin_get(&client, &list, GLOBEX).await.1), ["evt_g1"]);
    // A merchant cannot widen its scope with a query parameter.
    assert_eq!(
        ids(&admin_get(&client, &format!("{list}?merchant=globex"), ACME).await.1),
        ["evt_a1", "evt_a2"]
    );
    assert_eq!(ids(&admin_get(&client, &format!("{list}?merchant=globex"), ADMIN_TOKEN).await.1), ["evt_g1"]);

    let g1 = gw.admin_url("/api/events/evt_g1");
    assert_eq!(admin_get(&client, &g1, ACME).await.0, 404);
    assert_eq!(admin_get(&client, &g1, GLOBEX).await.0, 200);
    assert_eq!(admin_get(&client, &g1, ADMIN_TOKEN).await.1["merchant"], "globex");

    let replay = gw.admin_url("/api/events/evt_g1/replay");
    assert_eq!(admin_post(&client, &replay, ACME).await, 404);
    assert_eq!(upstream.received().len(), 3, "a refused replay delivers nothing");
    assert_eq!(admin_post(&client, &replay, GLOBEX).await, 202);
    upstream.wait_for(Duration::from_secs(10), "the replay", |r| r.len() == 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_or_wrong_token_is_401_and_health_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &upstream.url()));
    let client = client();
    let list = gw.admin_url("/api/events");
    let response = client.get(&list).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    for token in ["wrong", "operator-token-0123456789abcdeX", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1], ""] {
        assert_eq!(admin_get(&client, &list, token).await.0, 401, "{token:?}");
    }
    let response =
        client.get(&list).header("authorization", format!("Basic {ADMIN_TOKEN}")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let health = client.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Bad queries are explained, not ignored.
    for query in ["limit=0", "limit=abc", "before=zz", "colour=red"] {
        let (code, reply) = admin_get(&client, &format!("{list}?{query}"), ADMIN_TOKEN).await;
        assert_eq!(code, 400, "{query}: {reply}");
        assert!(reply["error"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_page_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &upstream.url()));
    let client = client();
    for i in 0..7 {
        assert_eq!(send_event(&client, &gw.url("/acme"), &format!("evt_page_{i}")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let body = event_body("evt_customer", "customer.created");
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "x");
    assert_eq!(post(&client, &gw.url("/acme"), &headers, body).await.0, 200);

    let mut seen = Vec::new();
    let mut url = gw.admin_url("/api/events?limit=3&type=payment.succeeded");
    loop {
        let (code, page) = admin_get(&client, &url, ACME).await;
        assert_eq!(code, 200);
        seen.extend(page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(cursor) => {
                url = gw.admin_url(&format!("/api/events?limit=3&type=payment.succeeded&before={cursor}"))
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("evt_page_{i}")).collect();
    assert_eq!(seen, expected);
    let (_, customers) = admin_get(&client, &gw.admin_url("/api/events?type=customer.created"), ACME).await;
    assert_eq!(ids(&customers), ["evt_customer"]);
}

/// One slow upload: the headers with `token`, then a body byte every 200 ms from `from`, for as
/// long as the gateway keeps the connection and `stop` is unset. Returns the status line if the
/// gateway answered.
async fn slow_upload(
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
    token: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(from).unwrap();
    let mut stream = socket.connect(to).await.ok()?;
    let head = format!(
        "PUT /api/plugins/p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut reply = [0u8; 64];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::select! {
            read = stream.read(&mut reply) => {
                let n = read.ok()?;
                return (n > 0).then(|| String::from_utf8_lossy(&reply[..n]).lines().next().unwrap_or("").to_string());
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                stream.write_all(b"\0").await.ok()?;
            }
        }
    }
    None
}

/// Regression (issue 16, item 10): a merchant's token opening ~70 slow uploads locked the
/// operator out of the admin listener: `/healthz`, `/metrics` and `/api/whoami` got no answer.
/// Now a token has at most two uploads in flight (429 beyond), one address at most 16 of the
/// 64 admin connections, and the operator is answered throughout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_uploads_by_a_merchant_never_lock_the_operator_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let config =
        config(&dir.path().join("db"), &upstream.url()) + "[[plugin]]\nname = \"p\"\nmerchant = \"acme\"\n";
    let gw = Gateway::start(dir.path(), &config);
    let admin = gw.admin.unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // 72 slow uploads from four addresses, more than the listener's 64 connections.
    let uploads: Vec<_> = (0..72)
        .map(|i| {
            let from: std::net::SocketAddr = format!("127.0.0.{}:0", 2 + i % 4).parse().unwrap();
            tokio::spawn(slow_upload(from, admin, ACME, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    for _ in 0..5 {
        for (path, token) in [("/healthz", ""), ("/metrics", ADMIN_TOKEN), ("/api/whoami", ADMIN_TOKEN)] {
            let response = client.get(gw.admin_url(path)).bearer_auth(token).send().await;
            let status = response.map(|r| r.status().as_u16());
            assert_eq!(status.ok(), Some(200), "{path} during the slow uploads");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for upload in uploads {
        answers.extend(upload.await.unwrap());
    }
    // Uploads beyond the token's two were told to come back later.
    assert!(answers.iter().any(|a| a.starts_with("HTTP/1.1 429")), "{answers:?}");
}

/// Regression (issue 16, item 13): when two merchants held the same id, the operator's
/// `GET /api/events/{id}` and replay always picked one of them, so the other could be neither
/// seen nor replayed, and replay re-sent the wrong one. The address is (merchant, id):
/// `?merchant=` picks one, and without it an id that two merchants hold is `409`.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_is_addressable_when_two_merchants_hold_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &upstream.url()));
    let client = client();
    for (path, amount) in [("/acme", 1111), ("/globex", 2222)] {
        let body = serde_json::to_vec(&payment_with_amount("evt_same", amount)).unwrap();
        let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "evt_same");
        assert_eq!(post(&client, &gw.url(path), &headers, body).await.0, 200);
    }
    upstream.wait_for(Duration::from_secs(10), "both deliveries", |r| r.len() == 2).await;

    let (code, reply) = admin_get(&client, &gw.admin_url("/api/events/evt_same"), ADMIN_TOKEN).await;
    assert_eq!((code, reply["error"].as_str()), (409, Some("ambiguous_event_id")), "{reply}");
    assert_eq!(reply["merchants"], serde_json::json!(["acme", "globex"]));
    for merchant in ["acme", "globex"] {
        let url = gw.admin_url(&format!("/api/events/evt_same?merchant={merchant}"));
        assert_eq!(admin_get(&client, &url, ADMIN_TOKEN).await.1["merchant"], merchant);
    }
    // A merchant's token addresses its own without saying so, and cannot name another's.
    assert_eq!(
        admin_get(&client, &gw.admin_url("/api/events/evt_same"), GLOBEX).await.1["merchant"],
        "globex"
    );
    let other = gw.admin_url("/api/events/evt_same?merchant=acme");
    assert_eq!(admin_get(&client, &other, GLOBEX).await.0, 404);

    // Replay re-sends the one named, and only that one.
    let replay = gw.admin_url("/api/events/evt_same/replay?merchant=globex");
    assert_eq!(admin_post(&client, &replay, ADMIN_TOKEN).await, 202);
    upstream.wait_for(Duration::from_secs(10), "the replay", |r| r.len() == 3).await;
    let replayed = &upstream.received()[2];
    assert!(String::from_utf8_lossy(&replayed.body).contains("2222"), "the wrong event was replayed");
    let ambiguous = gw.admin_url("/api/events/evt_same/replay");
    assert_eq!(admin_post(&client, &ambiguous, ADMIN_TOKEN).await, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_replay_revives_only_the_dead_events_the_filter_and_token_allow() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.set_default(400); // a permanent failure: dead at the first attempt
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &upstream.url()));
    let client = client();
    for (path, id, event_type) in [
        ("/acme", "evt_a1", "payment.succeeded"),
        ("/acme", "evt_a2", "payment.failed"),
        ("/globex", "evt_g1", "payment.failed"),
    ] {
        let body = event_body(id, event_type);
        let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, id);
        assert_eq!(post(&client, &gw.url(path), &headers, body).await.0, 200);
    }
    for id in ["evt_a1", "evt_a2", "evt_g1"] {
        wait_for_status(&client, &gw, id, "dead", Duration::from_secs(10)).await;
    }
    upstream.set_default(200);
    let bulk = |query: &str, token: &'static str| {
        let request = client.post(gw.admin_url(&format!("/api/events/replay{query}"))).bearer_auth(token);
        async move {
            let reply = request.send().await.unwrap();
            (reply.status().as_u16(), reply.json::<Value>().await.unwrap())
        }
    };

    // Only dead events are replayed in bulk, and the reply says how to ask.
    let (status, reply) = bulk("", ACME).await;
    assert_eq!(status, 400);
    assert!(reply["message"].as_str().unwrap().contains("status=dead"), "{reply}");
    assert_eq!(bulk("?status=quarantined", ACME).await.0, 400);
    assert_eq!(bulk("?status=dead&nonsense=1", ACME).await.0, 400);

    // The type filter narrows it to one event.
    let (status, reply) = bulk("?status=dead&type=payment.failed", ACME).await;
    assert_eq!((status, reply["replayed"].as_u64()), (200, Some(1)), "{reply}");
    assert_eq!(reply["more"], false);
    wait_for_status(&client, &gw, "evt_a2", "delivered", Duration::from_secs(10)).await;

    // A merchant's token cannot reach another's events, whatever the query says.
    let (_, reply) = bulk("?status=dead&merchant=globex", ACME).await;
    assert_eq!(reply["replayed"], 1, "{reply}");
    wait_for_status(&client, &gw, "evt_a1", "delivered", Duration::from_secs(10)).await;
    let (_, g1) = admin_get(&client, &gw.admin_url("/api/events/evt_g1"), ADMIN_TOKEN).await;
    assert_eq!(g1["status"], "dead", "globex's event was left alone");

    // The operator's token replays what is left; nothing dead remains to replay after it.
    assert_eq!(bulk("?status=dead", ADMIN_TOKEN).await.1["replayed"], 1);
    wait_for_status(&client, &gw, "evt_g1", "delivered", Duration::from_secs(10)).await;
    assert_eq!(bulk("?status=dead", ADMIN_TOKEN).await.1["replayed"], 0);
    let mut delivered = upstream.ids();
    delivered.sort();
    assert_eq!(delivered, ["evt_a1", "evt_a1", "evt_a2", "evt_a2", "evt_g1", "evt_g1"]);
}

/// Ordering and flow control are a merchant's own: its token sees only its upstreams' state and
/// its held keys, and cannot skip another merchant's dead head (which holds that merchant's
/// key), nor see that it exists.
#[tokio::test(flavor = "multi_thread")]
async fn held_keys_upstream_state_and_skips_stay_within_the_merchant() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.answer_event("evt_g_dead", 400, u32::MAX);
    let config = config(&dir.path().join("db"), &upstream.url())
        .replace(
            "name = \"globex-app\"\nmerchant = \"globex\"\n",
            "name = \"globex-app\"\nmerchant = \"globex\"\nordering_key = \"data.customer_email\"\nbreaker = { failures = 9 }\n",
        );
    assert!(config.contains("ordering_key"), "{config}");
    let gw = Gateway::start(dir.path(), &config);
    let client = client();
    for id in ["evt_g_dead", "evt_g_behind"] {
        assert_eq!(send_event(&client, &gw.url("/globex"), id).await.0, 200);
    }
    wait_for_status(&client, &gw, "evt_g_dead", "dead", Duration::from_secs(20)).await;

    let held = gw.admin_url("/api/ordering");
    assert_eq!(admin_get(&client, &held, GLOBEX).await.1["keys"][0]["event_id"], "evt_g_dead");
    assert_eq!(
        admin_get(&client, &held, ACME).await.1["keys"],
        serde_json::json!([]),
        "another merchant's key"
    );
    let upstreams = admin_get(&client, &gw.admin_url("/api/upstreams"), ACME).await.1;
    let names: Vec<&str> =
        upstreams["upstreams"].as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["acme-app"], "{upstreams}");

    let skip = gw.admin_url("/api/events/evt_g_dead/skip");
    assert_eq!(admin_post(&client, &skip, ACME).await, 404, "as if it did not exist");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!upstream.ids().contains(&"evt_g_behind".to_string()), "acme's token released globex's key");
    assert_eq!(admin_post(&client, &skip, GLOBEX).await, 200);
    wait_for_status(&client, &gw, "evt_g_behind", "delivered", Duration::from_secs(20)).await;
}
