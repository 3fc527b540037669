//! Several gateway replicas on one PostgreSQL database (a real server, started for the test),
//! each a real `payflow-edge serve` process: the same event sent to every replica at once is
//! stored once and delivered once, distinct events spread over the replicas are each
//! delivered once, and any replica's admin API answers for all of them. Under load, a replica
//! killed (-9) or the database restarted loses no acknowledged event.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use payflow_store_postgres::server::TestServer;
use serde_json::Value;
use support::{
    admin_get, client, guests, queue_config, send_event, sigterm_mid_delivery_then_restart, try_send_event,
    wait_for_status, Gateway, Upstream, ADMIN_TOKEN,
};

const WAIT: Duration = Duration::from_secs(30);

/// A queue-mode config whose store is the PostgreSQL database at `url`.
fn replica_config(url: &str, upstream: &str) -> String {
    queue_config(Path::new("unused.db"), upstream, "")
        .replace("[store]\n", &format!("[store]\nurl = {url:?}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_copies_over_three_replicas_are_stored_once_and_delivered_once() {
    let pg = TestServer::start();
    let url = pg.database("replicas");
    let legacy = Upstream::start().await;
    let config = replica_config(&url, &legacy.url());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Gateway> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Gateway::start(
                d.path(),
                &config.replace("[server]\n", &format!("[server]\nreplica = \"edge-{i}\"\n")),
            )
        })
        .collect();
    let client = client();

    // 60 copies of one event, 20 to each replica, all at once.
    let copies: Vec<_> = (0..60)
        .map(|i| {
            let (client, url) = (client.clone(), replicas[i % 3].url("/webhooks/payflow"));
            tokio::spawn(async move { send_event(&client, &url, "evt_once").await })
        })
        .collect();
    let mut new = 0;
    for copy in copies {
        let (status, reply) = copy.await.unwrap();
        assert_eq!(status, 200, "{reply}");
        new += usize::from(reply.get("duplicate").is_none());
    }
    assert_eq!(new, 1, "exactly one copy was new; the others were duplicates");

    // 30 distinct events spread over the replicas.
    for i in 0..30 {
        let (status, reply) =
            send_event(&client, &replicas[i % 3].url("/webhooks/payflow"), &format!("evt_{i:02}")).await;
        assert_eq!(status, 200, "{reply}");
    }
    legacy.wait_for(WAIT, "31 deliveries", |r| r.len() >= 31).await;
    for replica in &replicas {
        // Any replica answers for every event, whichever stored or delivered it.
        wait_for_status(&client, replica, "evt_once", "delivered", WAIT).await;
        wait_for_status(&client, replica, "evt_29", "delivered", WAIT).await;
    }
    // Long enough for a second claim of any of them to have been made and delivered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids = legacy.ids();
    ids.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("evt_{i:02}")).collect();
    expected.push("evt_once".into());
    expected.sort();
    assert_eq!(ids, expected, "each event delivered exactly once");

    // Each replica's metrics carry its name; their delivery counts add up to one per event.
    let mut delivered = 0;
    for (i, replica) in replicas.iter().enumerate() {
        let page = client.get(replica.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let page = page.text().await.unwrap();
        let series = format!(
            "payflow_edge_deliveries_total{{merchant=\"default\",upstream=\"legacy\",outcome=\"delivered\",replica=\"edge-{i}\"}} "
        );
        let line = page
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series} in:\n{page}"));
        delivered += line[series.len()..].parse::<u64>().unwrap();
        assert!(page
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.contains(&format!("replica=\"edge-{i}\""))));
    }
    assert_eq!(delivered, 31, "the replicas' delivery counts add up to one per event");
}

/// The replica holding acknowledged events' deliveries is killed (-9) mid-delivery: their
/// claims run out (`lease_ms`) and another replica, started afterwards, delivers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_claimed_by_a_killed_replica_are_taken_over_when_their_lease_runs_out() {
    let pg = TestServer::start();
    let url = pg.database("takeover");
    // The first replica's upstream holds every request far past the upstream's timeout: its
    // deliveries are in flight, claimed, when it dies.
    let stuck = Upstream::start().await;
    stuck.set_delay(Duration::from_secs(60));
    let legacy = Upstream::start().await;
    let config = |upstream: &str| {
        queue_config(Path::new("unused.db"), upstream, "timeout_ms = 2000\n")
            .replace("[store]\n", &format!("[store]\nurl = {url:?}\nlease_ms = 3000\n"))
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Gateway::start(dir_a.path(), &config(&stuck.url()));
    let client = client();
    for i in 0..10 {
        let (status, reply) = send_event(&client, &a.url("/webhooks/payflow"), &format!("evt_k{i}")).await;
        assert_eq!(status, 200, "{reply}");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while stuck.started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the first replica never started a delivery");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill9();

    let b = Gateway::start(dir_b.path(), &config(&legacy.url()));
    legacy.wait_for(WAIT, "the ten deliveries, taken over", |r| r.len() >= 10).await;
    let mut ids = legacy.ids();
    ids.sort();
    assert_eq!(ids, (0..10).map(|i| format!("evt_k{i}")).collect::<Vec<_>>(), "each once");
    for i in 0..10 {
        wait_for_status(&client, &b, &format!("evt_k{i}"), "delivered", WAIT).await;
    }
    assert!(stuck.received().is_empty(), "the first replica never got an answer");
}

/// A replica hands what it acknowledges to its own workers, stored already claimed by it: a
/// second replica polling the same database (its own copy of the upstream, here a second
/// server, so each delivery shows who made it) takes none of them, and each is delivered
/// once. Before the claim at insert, the other replica's poll could take a row in the moment
/// between the commit and the acknowledging replica's own read (the build before failed this
/// test in one run of three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_replica_acknowledged_are_delivered_by_it_while_another_polls_the_same_store() {
    delivered_by_the_replica_that_acknowledged("own_events", |config| config, 0, 60).await;
}

/// The same for the deliveries a replica's plugin step creates: they are stored claimed by
/// the replica that ran the step and handed to its own workers. Before, they were stored
/// unclaimed and left to whichever replica's poll read them first (with the claims turned
/// off, the other replica took 32 and 3 of 200 in two runs of three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_replicas_plugin_step_created_are_delivered_by_it_while_another_polls() {
    let with_plugin = |config: String| {
        config.replace("upstream = \"legacy\"\n", "upstream = \"legacy\"\nplugins = [\"noop\"]\n")
            + &format!("[[plugin]]\nname = \"noop\"\npath = {:?}\n", guests().join("noop.wasm"))
    };
    delivered_by_the_replica_that_acknowledged("own_steps", with_plugin, 0, 200).await;
}

/// A hostile sender's copies of one event do not use up the places a replica holds in its
/// queue for its hand-offs: each copy holds one while it is stored and gives it back as a
/// duplicate. After 1,100 copies (more than a merchant's share of the queue, 1,024), the new
/// events are still stored claimed and delivered by the replica that acknowledged them. (With
/// a duplicate's place kept, the other replica took all 200: the places used up, the replica
/// that acknowledged them could queue nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_copies_of_one_event_do_not_use_up_a_replicas_hand_off_places() {
    delivered_by_the_replica_that_acknowledged("copies", |config| config, 1_100, 200).await;
}

/// Sends `copies` copies of one event, then `count` events, to replica A of two on database
/// `db` (their configs changed by `configure`) and checks that A alone delivered them, each once.
async fn delivered_by_the_replica_that_acknowledged(
    db: &str,
    configure: impl Fn(String) -> String,
    copies: usize,
    count: usize,
) {
    let pg = TestServer::start();
    let url = pg.database(db);
    let (mine, theirs) = (Upstream::start().await, Upstream::start().await);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(dir_a.path(), &configure(replica_config(&url, &mine.url())));
    let _b = Gateway::start(dir_b.path(), &configure(replica_config(&url, &theirs.url())));
    let client = client();
    let copier = |n: usize| {
        let (client, url) = (client.clone(), a.url("/webhooks/payflow"));
        tokio::spawn(async move {
            for _ in 0..n {
                let (status, reply) = send_event(&client, &url, "evt_copied").await;
                assert_eq!(status, 200, "{reply}");
            }
        })
    };
    let copiers: Vec<_> = (0..8).map(|i| copier(copies / 8 + usize::from(i < copies % 8))).collect();
    for copier in copiers {
        copier.await.unwrap();
    }
    let id = |i: usize| format!("evt_own{i:03}");
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let (client, url, id) = (client.clone(), a.url("/webhooks/payflow"), id(i));
            tokio::spawn(async move { send_event(&client, &url, &id).await })
        })
        .collect();
    for send in sends {
        let (status, reply) = send.await.unwrap();
        assert_eq!(status, 200, "{reply}");
    }
    let expected: BTreeSet<String> =
        (0..count).map(id).chain((copies > 0).then(|| "evt_copied".to_string())).collect();
    let all = expected.len();
    mine.wait_for(WAIT, "every delivery", |r| r.len() + theirs.received().len() >= all).await;
    for i in 0..count {
        wait_for_status(&client, &a, &id(i), "delivered", WAIT).await;
    }
    assert!(
        theirs.received().is_empty(),
        "the other replica took {} of {count}: {:?}",
        theirs.received().len(),
        theirs.ids()
    );
    let mut ids = mine.ids();
    ids.sort();
    assert_eq!(ids, expected.into_iter().collect::<Vec<_>>(), "each once");
}

/// Senders that keep webhooks coming, as PayFlow would: `senders` tasks, each sending its own
/// `per_sender` events, one after another. A request answered 503, or never answered (its
/// replica died), is sent again (to the next replica in `urls`, as a load balancer would)
/// until it gets a 200: every event ends acknowledged. Every reply must be a 200 or a `503
/// store_unavailable`. `acked` counts the acknowledgements as they come.
struct Load {
    acked: Arc<AtomicUsize>,
    /// The id of each acknowledged event, with the URL that acknowledged it.
    by: Arc<Mutex<BTreeMap<String, String>>>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: Vec<String>, senders: usize, per_sender: usize) -> Load {
        let acked = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let by = Arc::new(Mutex::new(BTreeMap::new()));
        let client = client();
        let tasks = (0..senders)
            .map(|s| {
                let (urls, acked, refused, by, client) =
                    (urls.clone(), acked.clone(), refused.clone(), by.clone(), client.clone());
                tokio::spawn(async move {
                    let mut next = s;
                    for n in 0..per_sender {
                        let id = format!("evt_s{s}_{n:03}");
                        let deadline = Instant::now() + WAIT;
                        loop {
                            assert!(Instant::now() < deadline, "{id} was never acknowledged");
                            let url = &urls[next % urls.len()];
                            next += 1;
                            match try_send_event(&client, url, &id).await {
                                Ok((200, _)) => {
                                    by.lock().unwrap().insert(id, url.clone());
                                    acked.fetch_add(1, Ordering::SeqCst);
                                    break;
                                }
                                Ok((503, reply)) => {
                                    assert_eq!(reply["error"], "store_unavailable", "{id}: {reply}");
                                    refused.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok((status, reply)) => panic!("{id}: {status} {reply}"),
                                Err(_) => {} // The replica is gone: the next one.
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Load { acked, by, refused, tasks }
    }

    async fn wait_until_acked(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "never {n} acknowledgements");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for every sender; returns each event with the URL that acknowledged it.
    async fn finish(self) -> BTreeMap<String, String> {
        for task in self.tasks {
            task.await.expect("a sender failed");
        }
        Arc::try_unwrap(self.by).unwrap().into_inner().unwrap()
    }
}

/// Three replicas under load; one is killed (-9) while it is acknowledging events and holding
/// claimed deliveries. Every event it acknowledged is delivered (by the others, after its
/// claims' lease), and so is every other one: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_acknowledged_event() {
    let pg = TestServer::start();
    let url = pg.database("kill_under_load");
    let legacy = Upstream::start().await;
    // Slow enough that the replica to be killed has deliveries in flight when it dies.
    legacy.set_delay(Duration::from_millis(30));
    let config = queue_config(Path::new("unused.db"), &legacy.url(), "timeout_ms = 2000\n")
        .replace("[store]\n", &format!("[store]\nurl = {url:?}\nlease_ms = 3000\n"));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: Vec<Gateway> = dirs.iter().map(|d| Gateway::start(d.path(), &config)).collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url("/webhooks/payflow")).collect();

    let load = Load::start(urls.clone(), 6, 40);
    load.wait_until_acked(60).await;
    replicas[0].kill9();
    let acked_at_kill = load.acked.load(Ordering::SeqCst);
    let acked = load.finish().await;
    assert_eq!(acked.len(), 240, "every event acknowledged, by a replica left alive after the kill");
    let by_killed: BTreeSet<&String> =
        acked.iter().filter(|(_, u)| **u == urls[0]).map(|(id, _)| id).collect();
    assert!(!by_killed.is_empty(), "the killed replica had acknowledged events");
    eprintln!(
        "{} acknowledged when replica 0 was killed, {} of them by it; {} acknowledged in all",
        acked_at_kill,
        by_killed.len(),
        acked.len()
    );

    legacy
        .wait_for(WAIT, "every acknowledged event delivered", |r| {
            let got: BTreeSet<&str> = r.iter().map(|r| r.event_id.as_str()).collect();
            acked.keys().all(|id| got.contains(id.as_str()))
        })
        .await;
    let client = client();
    for id in &by_killed {
        wait_for_status(&client, &replicas[1], id, "delivered", WAIT).await;
    }
}

/// One replica under load while PostgreSQL is stopped (immediately, as a crash would) and
/// started again: every reply is a 200 or a `503 store_unavailable`, the senders' retries are
/// acknowledged once the database is back, without restarting the replica, and every event
/// that got a 200, before, during or after, is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_acknowledged_event() {
    let pg = TestServer::start();
    let url = pg.database("restart_under_load");
    let legacy = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A claim the server committed while its reply was lost to the stop cannot be known to the
    // replica: those deliveries wait for their lease (at least once, later). A short lease keeps
    // that wait inside the test's.
    let config = queue_config(Path::new("unused.db"), &legacy.url(), "timeout_ms = 2000\n")
        .replace("[store]\n", &format!("[store]\nurl = {url:?}\nlease_ms = 3000\n"));
    let gw = Gateway::start(dir.path(), &config);

    let load = Load::start(vec![gw.url("/webhooks/payflow")], 6, 40);
    load.wait_until_acked(60).await;
    tokio::task::block_in_place(|| pg.stop());
    let refused_before = load.refused.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_while_down = load.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(load.acked.load(Ordering::SeqCst), acked_while_down, "no 200 while the database is down");
    tokio::task::block_in_place(|| pg.restart());
    let refused = load.refused.clone();
    let acked = load.finish().await;
    assert_eq!(acked.len(), 240);
    assert!(refused.load(Ordering::SeqCst) > refused_before, "the senders were refused while it was down");

    legacy
        .wait_for(WAIT, "every acknowledged event delivered", |r| {
            let got: BTreeSet<&str> = r.iter().map(|r| r.event_id.as_str()).collect();
            acked.keys().all(|id| got.contains(id.as_str()))
        })
        .await;
}

/// PostgreSQL stopped: webhooks get `503 store_unavailable` (never a 200 that was not
/// committed) and `/readyz` 503, while `/api/upstreams` still shows flow control (the backlog
/// unknown). Started again: the same replica recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_503_and_the_replica_recovers_when_it_is_back() {
    let pg = TestServer::start();
    let url = pg.database("faults");
    let legacy = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &replica_config(&url, &legacy.url()));
    let client = client();
    let webhooks = gw.url("/webhooks/payflow");
    assert_eq!(send_event(&client, &webhooks, "evt_before").await.0, 200);
    let ready = |client: reqwest::Client| {
        let url = gw.admin_url("/readyz");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(client.clone()).await, 200);

    pg.stop();
    let (status, reply) = send_event(&client, &webhooks, "evt_during").await;
    assert_eq!((status, &reply["error"]), (503, &"store_unavailable".into()), "{reply}");
    assert_eq!(ready(client.clone()).await, 503);
    // The upstreams' flow control still answers; only their backlog is unknown.
    let (code, upstreams) = admin_get(&client, &gw.admin_url("/api/upstreams"), ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{upstreams}");
    let legacy_upstream = &upstreams["upstreams"][0];
    assert!(legacy_upstream["pending"].is_null() && legacy_upstream["behind_ms"].is_null(), "{upstreams}");
    assert!(legacy_upstream["delivered"].is_u64(), "{upstreams}");

    pg.restart();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, reply) = send_event(&client, &webhooks, "evt_during").await;
        if status == 200 {
            break;
        }
        assert_eq!(reply["error"], "store_unavailable", "{reply}");
        assert!(std::time::Instant::now() < deadline, "the replica did not recover: {status} {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(client.clone()).await, 200);
    legacy.wait_for(WAIT, "both events", |r| r.len() >= 2).await;
    let mut ids = legacy.ids();
    ids.sort();
    assert_eq!(ids, ["evt_before", "evt_during"], "the refused copy was not stored; its retry was");
}

/// A plugin uploaded, replaced and rolled back through one replica's admin API is live on the
/// other replica without a restart (it follows the store's active versions every second), and
/// events arriving there run that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_upload_or_rollback_on_one_replica_is_live_on_the_other() {
    let pg = TestServer::start();
    let url = pg.database("plugins");
    let legacy = Upstream::start().await;
    let config = replica_config(&url, &legacy.url())
        .replace("upstream = \"legacy\"\n", "upstream = \"legacy\"\nplugins = [\"shape\"]\n")
        + "[[plugin]]\nname = \"shape\"\n";
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(dir_a.path(), &config);
    let b = Gateway::start(dir_b.path(), &config);
    let client = client();
    let wasm = |name: &str| std::fs::read(guests().join(format!("{name}.wasm"))).unwrap();
    let change = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        let request = client.request(method, a.admin_url(&format!("/api/plugins/shape{path}")));
        async move { request.bearer_auth(ADMIN_TOKEN).body(body).send().await.unwrap().status().as_u16() }
    };
    // The version replica B has loaded (not what the store says: what it runs).
    let loaded_on_b = || async {
        let url = b.admin_url("/api/plugins/shape");
        let reply: Value =
            client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
        reply["active_version"].as_u64()
    };
    let wait_on_b = |version: u64| async move {
        let started = std::time::Instant::now();
        while loaded_on_b().await != Some(version) {
            assert!(started.elapsed() < WAIT, "replica B never loaded version {version}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "replica B runs version {version} {} ms after the change on A",
            started.elapsed().as_millis()
        );
    };

    assert_eq!(change(reqwest::Method::PUT, "", wasm("legacy_form")).await, 200);
    wait_on_b(1).await;
    assert_eq!(send_event(&client, &b.url("/webhooks/payflow"), "evt_v1").await.0, 200);
    assert_eq!(change(reqwest::Method::PUT, "", wasm("ledger")).await, 200);
    wait_on_b(2).await;
    // The ledger's running total lives in the shared kv: B, then A, then B again each add to
    // what the other replica committed (B's second run must not read its own stale copy).
    for (n, (replica, id)) in [(&b, "evt_v2"), (&a, "evt_v2a"), (&b, "evt_v2b")].into_iter().enumerate() {
        assert_eq!(send_event(&client, &replica.url("/webhooks/payflow"), id).await.0, 200);
        legacy.wait_for(WAIT, id, |r| r.len() >= n + 2).await;
    }
    assert_eq!(change(reqwest::Method::POST, "/rollback", Vec::new()).await, 200);
    wait_on_b(1).await;

    let received = legacy.received();
    let total = |id: &str| -> i64 {
        let r = received.iter().find(|r| r.event_id == id).unwrap();
        let header =
            r.header("x-ledger-total").unwrap_or_else(|| panic!("v2 (ledger) shapes {id}: {:?}", r.headers));
        header.split(' ').next().unwrap().parse().unwrap()
    };
    let first = total("evt_v2");
    assert_eq!((total("evt_v2a"), total("evt_v2b")), (2 * first, 3 * first), "one total across the replicas");
    let v1 = received.iter().find(|r| r.event_id == "evt_v1").unwrap();
    assert_eq!(
        v1.header("content-type"),
        Some("application/x-www-form-urlencoded"),
        "v1 (legacy-form) shapes evt_v1"
    );
    assert_eq!(received.len(), 4);
}

/// A canary started through one replica runs on the other too, and when the other rolls it
/// back (its runs trap), the first follows: every replica stops sending events to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_started_on_one_replica_runs_on_the_other_and_its_rollback_is_followed() {
    let pg = TestServer::start();
    let url = pg.database("canary");
    let legacy = Upstream::start().await;
    let config = replica_config(&url, &legacy.url())
        .replace("upstream = \"legacy\"\n", "upstream = \"legacy\"\nplugins = [\"shape\"]\n")
        + "[[plugin]]\nname = \"shape\"\n[plugins]\ncanary_window = 4\nretry_base_ms = 50\nretry_max_ms = 200\nmax_attempts = 100\n";
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(dir_a.path(), &config);
    let b = Gateway::start(dir_b.path(), &config);
    let client = client();
    let put = |path: &str, name: &str| {
        let request = client
            .put(a.admin_url(&format!("/api/plugins/shape{path}")))
            .bearer_auth(ADMIN_TOKEN)
            .body(std::fs::read(guests().join(format!("{name}.wasm"))).unwrap());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(put("", "noop").await, 200);
    assert_eq!(put("?canary=100", "picky").await, 200);
    // Events sent to `replica` until one is delivered carrying (or not) the canary's tag.
    let serial = AtomicUsize::new(0);
    let until_tagged = |replica: &Gateway, tagged: bool, event_type: &'static str| {
        let url = replica.url("/webhooks/payflow");
        let (client, serial, legacy) = (client.clone(), &serial, &legacy);
        let admin = replica.admin_url("/api/events/");
        async move {
            let started = Instant::now();
            loop {
                assert!(started.elapsed() < WAIT, "no event on {url} was tagged={tagged}");
                let id = format!("evt_canary_{}", serial.fetch_add(1, Ordering::SeqCst));
                let body = support::event_body(&id, event_type);
                let headers = support::sign(payflow_verify::Scheme::PayFlow, support::SECRET, &body, &id);
                assert_eq!(support::post(&client, &url, &headers, body).await.0, 200);
                legacy.wait_for(WAIT, &id, |r| r.iter().any(|r| r.event_id == id)).await;
                let (_, event) = support::admin_get(&client, &format!("{admin}{id}"), ADMIN_TOKEN).await;
                if event["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "picky")) == tagged {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // B follows the canary started on A: its events run on it.
    until_tagged(&b, true, "payment.succeeded").await;
    // On B the canary traps on failed payments and is rolled back (by B); A follows.
    for i in 0..4 {
        let body = support::event_body(&format!("evt_pf_{i}"), "payment.failed");
        let headers =
            support::sign(payflow_verify::Scheme::PayFlow, support::SECRET, &body, &format!("evt_pf_{i}"));
        assert_eq!(support::post(&client, &b.url("/webhooks/payflow"), &headers, body).await.0, 200);
    }
    let started = Instant::now();
    loop {
        let (_, status) = support::admin_get(&client, &a.admin_url("/api/plugins/shape"), ADMIN_TOKEN).await;
        if status["canary"]["state"] == "rolled_back" {
            assert!(status["canary"]["reason"].as_str().unwrap().contains("trap"), "{status}");
            break;
        }
        assert!(started.elapsed() < WAIT, "the canary was never rolled back: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_tagged(&a, false, "payment.succeeded").await;
    for i in 0..4 {
        support::wait_for_status(&client, &b, &format!("evt_pf_{i}"), "delivered", WAIT).await;
    }
}

/// On PostgreSQL a delivery attempt is recorded by the dispatcher's own task (there is no
/// writer thread to hand it to), which a worker no longer waits for: SIGTERM must wait for
/// those tasks, or the attempts they carry are lost and sent again after the restart. What it
/// had claimed but not started it hands back: with the default 60 s lease, a claim left
/// behind would hold its delivery past the test's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_records_every_attempt_and_hands_back_the_claims_it_never_started() {
    let pg = TestServer::start();
    let url = pg.database("sigterm");
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        replica_config(&url, &upstream.url()).replace("[[upstream]]\n", "[[upstream]]\nconcurrency = 8\n");
    sigterm_mid_delivery_then_restart(dir.path(), &config, &upstream).await;
}
