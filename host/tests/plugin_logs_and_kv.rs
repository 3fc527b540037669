//! What a merchant debugs a plugin with, against the ledger example built from source:
//! `plugin logs NAME --follow` prints each run's lines as they are written, once each, and
//! `plugin kv NAME list|get|delete` shows what the plugin remembers and repairs it. Another
//! merchant's token sees neither.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use payflow_store_postgres::server::TestServer;
use support::{
    client, guests, payment_with_amount, post, sign, Gateway, Upstream, ACME_TOKEN, GLOBEX_TOKEN, SECRET,
};

const WAIT: Duration = Duration::from_secs(30);
const TOTAL_KEY: &str = "total:customer@example.com:PKR";

fn config(db: &std::path::Path, app: &str) -> String {
    support::two_merchants_config(db, app, r#"plugins = ["ledger"]"#)
        + &format!(
            r#"
[[plugin]]
name = "ledger"
merchant = "acme"
path = "{}"
"#,
            guests().join("ledger.wasm").display()
        )
}

/// `config` on the PostgreSQL database at `url` instead of its SQLite file.
fn on_postgres(config: &str, url: &str) -> String {
    config.replace("[store]\n", &format!("[store]\nurl = {url:?}\n"))
}

async fn send(gw: &Gateway, id: &str, amount: i64) {
    send_to(gw.url("/acme"), id.to_string(), amount).await
}

async fn send_to(url: String, id: String, amount: i64) {
    let body = serde_json::to_vec(&payment_with_amount(&id, amount)).unwrap();
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, &id);
    assert_eq!(post(&client(), &url, &headers, body).await.0, 200);
}

/// Waits for a line of `lines` containing `needle`; every line read is kept in `seen`.
fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} within {WAIT:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_logs_follow_prints_each_runs_lines_live_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &app.url()));
    send(&gw, "evt_log_1", 5000).await;
    app.wait_for(WAIT, "the first event", |r| r.len() == 1).await;

    let admin = gw.admin_url("");
    let mut follow = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(["plugin", "logs", "ledger", "--follow", "--admin", &admin, "--token", ACME_TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // The run before the follow started: among the latest lines.
    wait_line(&lines, &mut seen, "evt_log_1");
    // Runs after it: printed as they happen, with their version.
    send(&gw, "evt_log_2", 700).await;
    wait_line(&lines, &mut seen, "evt_log_2");
    send(&gw, "evt_log_3", 300).await;
    wait_line(&lines, &mut seen, "evt_log_3");
    follow.kill().unwrap();
    let _ = follow.wait();
    let line = seen.iter().find(|l| l.contains("evt_log_2")).unwrap();
    assert!(line.contains("v1") && line.contains("info: customer@example.com: +700 = 5700 PKR"), "{line}");
    for id in ["evt_log_1", "evt_log_2", "evt_log_3"] {
        assert_eq!(
            seen.iter().filter(|l| l.contains(id)).count(),
            1,
            "{id} printed once:\n{}",
            seen.join("\n")
        );
    }

    // Without --follow: the latest lines, then done; JSON on request; others' tokens see nothing.
    let (code, out, _) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "logs", "ledger", "--lines", "2", "--json"]);
    assert_eq!(code, Some(0));
    let last: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(last.len(), 2);
    assert_eq!(last[1]["event_id"], "evt_log_3");
    let (code, _, err) = support::admin_cli(&gw, GLOBEX_TOKEN, &["plugin", "logs", "ledger"]);
    assert_eq!(code, Some(1), "{err}");
    let bad = client()
        .get(gw.admin_url("/api/plugins/ledger/logs?after=soon"))
        .bearer_auth(ACME_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_kv_is_listed_read_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&dir.path().join("db"), &app.url()));
    send(&gw, "evt_kv_1", 5000).await;
    send(&gw, "evt_kv_2", 700).await;
    app.wait_for(WAIT, "both events", |r| r.len() == 2).await;

    let (code, out, err) = support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("1 keys,") && out.contains(TOTAL_KEY) && out.contains("5700"), "{out}");
    let (code, out, _) = support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "get", TOTAL_KEY]);
    assert_eq!(code, Some(0));
    assert_eq!(out, "5700\nevt_kv_1\nevt_kv_2\n", "the whole value, as the plugin wrote it");
    let (_, out, _) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "get", TOTAL_KEY, "--json"]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["size"], 22);

    // Another merchant cannot read or delete it; a key that is not there says so.
    let (code, _, _) =
        support::admin_cli(&gw, GLOBEX_TOKEN, &["plugin", "kv", "ledger", "delete", TOTAL_KEY]);
    assert_eq!(code, Some(1));
    let (code, _, err) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "get", "total:nobody:PKR"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no key"), "{err}");

    // The repair: the total is reset, and the next run starts from nothing.
    let (code, out, _) =
        support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "delete", TOTAL_KEY]);
    assert_eq!(code, Some(0));
    assert!(out.contains("deleted"), "{out}");
    let (_, out, _) = support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "list"]);
    assert!(out.starts_with("0 keys,"), "{out}");
    let (code, _, _) = support::admin_cli(&gw, ACME_TOKEN, &["plugin", "kv", "ledger", "delete", TOTAL_KEY]);
    assert_eq!(code, Some(1), "already gone");
    send(&gw, "evt_kv_3", 300).await;
    app.wait_for(WAIT, "the event after the repair", |r| r.len() == 3).await;
    let after = app.received().into_iter().find(|r| r.event_id == "evt_kv_3").unwrap();
    assert_eq!(
        after.header("x-ledger-total"),
        Some("300 PKR"),
        "the run after the repair read the old total"
    );
}

/// Regression (a plugin's kv update lost): runs of one plugin take turns and each sees the
/// last run's writes at once, but their steps commit in whatever order the plugin workers
/// reach the store. An earlier run's step committing after a later one's put the older total
/// back in the store; memory kept the right one, so it showed only in the store (the kv API)
/// and after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn regression_a_plugins_stored_total_counts_every_event_whatever_order_their_steps_commit() {
    stored_total_counts_every_event(None).await;
}

/// As on SQLite, on the shared store: a load (here after each round's repair) while other
/// steps' writes are still committing must not miss them.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_stored_total_on_postgres_counts_every_event_whatever_order_their_steps_commit() {
    let pg = TestServer::start();
    stored_total_counts_every_event(Some(&pg.database("ledger_rounds"))).await;
}

/// Rounds of events sent at once through the ledger, so that their steps run side by side:
/// after each round, the stored total counts every event so far, and each run read the total
/// the run before it left; after a kill -9, so does the first run. Amid each round, a repair
/// of a key nobody uses makes the next run load the space from the store while other runs'
/// steps are committing. On the PostgreSQL database at `url`, else on SQLite.
async fn stored_total_counts_every_event(url: Option<&str>) {
    const ROUNDS: usize = 30;
    const AT_ONCE: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    // More plugin threads than cores: a step's task waits longer for a core between its run
    // and its commit, as on a busy machine.
    let mut config = config(&dir.path().join("db"), &app.url()) + "[plugins]\nworkers = 6\n";
    if let Some(url) = url {
        config = on_postgres(&config, url);
    }
    let mut gw = Gateway::start(dir.path(), &config);
    for round in 0..ROUNDS {
        let mut senders = tokio::task::JoinSet::new();
        for n in 0..AT_ONCE {
            senders.spawn(send_to(gw.url("/acme"), format!("evt_sum_{round}_{n}"), 1));
            if n == AT_ONCE / 2 {
                senders.spawn(repair(gw.admin_url("/api/plugins/ledger/kv/unused")));
            }
        }
        senders.join_all().await;
        let sent = (round + 1) * AT_ONCE;
        app.wait_for(WAIT, "the round's events", |r| r.len() == sent).await;
        assert_eq!(stored_total(&gw).await, sent, "after round {round}");
    }
    each_run_read_the_last_runs_total(&app, ROUNDS * AT_ONCE);
    // Regression (half a hot key's steps run again on SQLite): each step is checked against
    // what its runs read, and one that reached the store before the step whose write it read
    // was stale. A lone gateway hands a step to the store after those, so none is.
    let m = support::metrics(&gw).await;
    let conflicts: Vec<_> =
        m.iter().filter(|(k, _)| k.starts_with("payflow_edge_plugin_kv_conflicts_total{")).collect();
    assert!(conflicts.iter().all(|(_, v)| **v == 0.0), "{conflicts:?}");

    gw.kill9();
    let gw = Gateway::start(dir.path(), &config);
    send(&gw, "evt_sum_after_restart", 1).await;
    app.wait_for(WAIT, "the event after the restart", |r| r.len() == ROUNDS * AT_ONCE + 1).await;
    let after = app.received().into_iter().find(|r| r.event_id == "evt_sum_after_restart").unwrap();
    assert_eq!(after.header("x-ledger-total"), Some(format!("{} PKR", ROUNDS * AT_ONCE + 1).as_str()));
    // The restarted gateway's one run read the space whole, once, and nothing else.
    let m = support::metrics(&gw).await;
    let reads: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("payflow_edge_plugin_kv_")).collect();
    assert!(reads.len() == 1 && reads[0].0.contains("read=\"whole\"") && *reads[0].1 == 1.0, "{reads:?}");
}

/// The ledger's stored total, through `gw`'s admin API.
async fn stored_total(gw: &Gateway) -> usize {
    let url = gw.admin_url(&format!("/api/plugins/ledger/kv/{}", TOTAL_KEY.replace('@', "%40")));
    let answer = client().get(url).bearer_auth(ACME_TOKEN).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let value: serde_json::Value = answer.json().await.unwrap();
    value["text"].as_str().unwrap().lines().next().unwrap().parse::<usize>().unwrap()
}

/// The `sent` events of 1 each, delivered with the totals 1 to `sent`, each once: every run
/// read the total the run before it left.
fn each_run_read_the_last_runs_total(app: &Upstream, sent: usize) {
    let mut totals: Vec<usize> = app
        .received()
        .iter()
        .map(|r| r.header("x-ledger-total").unwrap().trim_end_matches(" PKR").parse().unwrap())
        .collect();
    totals.sort_unstable();
    assert_eq!(totals, (1..=sent).collect::<Vec<_>>(), "each run read the last run's total");
}

/// Regression (a total built on a failed step's write, on SQLite): a run reads the plugin's
/// last run's writes before that run's step commits. When a later plugin of the chain then
/// failed that step, its write was never applied, yet the step that read it committed a total
/// built on it: the ledger counted an event it never finished. Shown with a plugin after the
/// ledger that fails one event slowly, while another event's ledger run reads its total. That
/// step is now stale, and runs again on the total as stored. On PostgreSQL too.
#[tokio::test(flavor = "multi_thread")]
async fn regression_a_total_built_on_a_failed_steps_kv_write_is_run_again_without_it() {
    a_total_built_on_a_failed_steps_kv_write_is_run_again_without_it(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_total_built_on_a_failed_steps_kv_write_is_run_again_without_it() {
    let pg = TestServer::start();
    a_total_built_on_a_failed_steps_kv_write_is_run_again_without_it(Some(&pg.database("kv_failed_write")))
        .await;
}

async fn a_total_built_on_a_failed_steps_kv_write_is_run_again_without_it(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let mut config = support::two_merchants_config(
        &dir.path().join("db"),
        &app.url(),
        r#"plugins = ["ledger", "late-failure"]"#,
    ) + &format!(
        r#"
[[plugin]]
name = "ledger"
merchant = "acme"
path = "{}"
[[plugin]]
name = "late-failure"
merchant = "acme"
path = "{}"
timeout_ms = 10000
config = {{ sleep_ms = "1500" }}
[plugins]
workers = 4
"#,
        guests().join("ledger.wasm").display(),
        guests().join("late_failure.wasm").display()
    );
    if let Some(url) = url {
        config = on_postgres(&config, url);
    }
    let gw = Gateway::start(dir.path(), &config);
    let ledger_runs = || async {
        let m = support::metrics(&gw).await;
        let ours =
            |k: &String| k.starts_with("payflow_edge_plugin_runs_total{") && k.contains("plugin=\"ledger\"");
        m.iter().filter(|(k, _)| ours(k)).map(|(_, v)| *v).sum::<f64>()
    };

    send(&gw, "evt_doomed", 100).await;
    let deadline = std::time::Instant::now() + WAIT;
    while ledger_runs().await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the ledger never ran on evt_doomed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The ledger has added 100 for evt_doomed, which late-failure holds for 1.5 s, then fails.
    send(&gw, "evt_fine", 1).await;
    app.wait_for(WAIT, "evt_fine", |r| r.len() == 1).await;
    let fine = app.received().into_iter().next().unwrap();
    assert_eq!(fine.event_id, "evt_fine");
    assert_eq!(fine.header("x-ledger-total"), Some("1 PKR"), "evt_doomed's 100 was never applied");
    assert_eq!(stored_total(&gw).await, 1);
    let (_, doomed) =
        support::admin_get(&client(), &gw.admin_url("/api/events/evt_doomed"), ACME_TOKEN).await;
    let error = doomed["plugin_step"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("evt_doomed is doomed"), "{doomed}");

    // The ledger goes on from the stored total, whatever evt_doomed's retries do meanwhile.
    send(&gw, "evt_after", 2).await;
    app.wait_for(WAIT, "evt_after", |r| r.len() == 2).await;
    let after = app.received().into_iter().find(|r| r.event_id == "evt_after").unwrap();
    assert_eq!(after.header("x-ledger-total"), Some("3 PKR"));
    let m = support::metrics(&gw).await;
    let conflicts: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("payflow_edge_plugin_kv_conflicts_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(conflicts >= 1.0, "evt_fine's step ran again: {m:?}");
}

/// A repair of a plugin's kv through the admin API at `url` (`…/kv/KEY`): deleted, or not there.
async fn repair(url: String) {
    let answer = client().delete(url).bearer_auth(ACME_TOKEN).send().await.unwrap();
    assert!(matches!(answer.status().as_u16(), 200 | 204 | 404), "{answer:?}");
}

/// With replicas sharing a PostgreSQL store, a gateway runs a plugin on its copy of the
/// plugin's space, and reads the store again only once it counts a change made elsewhere:
/// another replica's step, a repair through any replica, an operator's own SQL. Before, it
/// loaded the whole space after every step. Shown with a total changed behind every gateway's
/// back (with the database's triggers off, as no writer can): a run reads it only after such a
/// change. What it reads then is the keys written since (the repair, a delete, the whole
/// space), and the total is among them.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_plugins_space_is_loaded_again_only_after_a_change_made_elsewhere() {
    let pg = TestServer::start();
    let url = pg.database("kv_changes");
    let app = Upstream::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| on_postgres(&config(&dir.join("db"), &app.url()), &url);
    // Both started first: a start alone makes every replica load its spaces again.
    let a = Gateway::start(dir_a.path(), &config(dir_a.path()));
    let b = Gateway::start(dir_b.path(), &config(dir_b.path()));
    let set_total = |total: u64| {
        format!("UPDATE plugin_kv SET value = convert_to('{total}', 'UTF8') WHERE key = '{TOTAL_KEY}'")
    };
    let behind_their_backs = |total: u64| {
        pg.sql("kv_changes", &format!("SET session_replication_role = replica; {}", set_total(total)))
    };
    let mut sent = 0;
    let mut total_after = |gw: &Gateway, id: &'static str, amount: i64| {
        sent += 1;
        let (url, app, sent) = (gw.url("/acme"), &app, sent);
        async move {
            send_to(url, id.to_string(), amount).await;
            app.wait_for(WAIT, id, |r| r.len() == sent).await;
            let received = app.received().into_iter().find(|r| r.event_id == id).unwrap();
            received.header("x-ledger-total").unwrap().to_string()
        }
    };

    assert_eq!(total_after(&a, "evt_a1", 5000).await, "5000 PKR");
    behind_their_backs(1_000_000);
    assert_eq!(total_after(&a, "evt_a2", 700).await, "5700 PKR", "nobody else changed it: A's copy");

    behind_their_backs(2_000_000);
    assert_eq!(total_after(&b, "evt_b1", 300).await, "2000300 PKR", "B's first run loads it");
    assert_eq!(total_after(&a, "evt_a3", 40).await, "2000340 PKR", "B's step changed it: A loads it again");
    assert_eq!(total_after(&a, "evt_a4", 2).await, "2000342 PKR", "A's own step did not");

    pg.sql("kv_changes", &set_total(3_000_000));
    assert_eq!(total_after(&a, "evt_a5", 5).await, "3000005 PKR", "an operator's own SQL counts");
    repair(b.admin_url(&format!("/api/plugins/ledger/kv/{}", TOTAL_KEY.replace('@', "%40")))).await;
    assert_eq!(total_after(&a, "evt_a6", 6).await, "6 PKR", "a repair through B counts for A");
}

/// Two replicas running one plugin at once, each on its copy of the space, never write over
/// each other's changes: events sent at once, half to each replica, all add to one customer's
/// total, and after each round the stored total counts every event and each run read a total
/// no other run read. Before, both replicas read the same total and the last write won: the
/// stored total fell behind the events sent (regression).
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_adding_to_one_total_at_once_count_every_event() {
    const ROUNDS: usize = 12;
    const AT_ONCE: usize = 8;
    let pg = TestServer::start();
    let url = pg.database("kv_two_replicas");
    let app = Upstream::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| {
        on_postgres(&config(&dir.join("db"), &app.url()), &url) + "[plugins]\nworkers = 4\n"
    };
    let a = Gateway::start(dir_a.path(), &config(dir_a.path()));
    let b = Gateway::start(dir_b.path(), &config(dir_b.path()));
    for round in 0..ROUNDS {
        let mut senders = tokio::task::JoinSet::new();
        for n in 0..AT_ONCE {
            let replica = if n % 2 == 0 { &a } else { &b };
            senders.spawn(send_to(replica.url("/acme"), format!("evt_two_{round}_{n}"), 1));
        }
        senders.join_all().await;
        let sent = (round + 1) * AT_ONCE;
        app.wait_for(WAIT, "the round's events", |r| r.len() == sent).await;
        assert_eq!(stored_total(&a).await, sent, "after round {round}");
    }
    each_run_read_the_last_runs_total(&app, ROUNDS * AT_ONCE);

    // What an operator sees of it: every run of the ledger beyond one per event is a step run
    // again after a conflict, counted on the replica that ran it; each replica read the space
    // whole once at least, and read what the other changed after its own steps.
    let ledger = |m: &std::collections::BTreeMap<String, f64>, name: &str, label: &str| -> f64 {
        let ours = |k: &String| k.starts_with(&format!("{name}{{")) && k.contains("plugin=\"ledger\"");
        m.iter().filter(|(k, _)| ours(k) && k.contains(label)).map(|(_, v)| v).sum()
    };
    let (mut runs, mut conflicts) = (0.0, 0.0);
    for (replica, gw) in [("a", &a), ("b", &b)] {
        let m = support::metrics(gw).await;
        runs += ledger(&m, "payflow_edge_plugin_runs_total", "outcome=\"continue\"");
        conflicts += ledger(&m, "payflow_edge_plugin_kv_conflicts_total", "");
        for read in ["whole", "changes"] {
            let reads = ledger(&m, "payflow_edge_plugin_kv_reads_total", &format!("read=\"{read}\""));
            assert!(reads >= 1.0, "replica {replica}: no {read} read: {m:?}");
        }
    }
    assert_eq!(runs, (ROUNDS * AT_ONCE) as f64 + conflicts, "every run is an event's or a conflict's");
}

/// A plugin that never reads or writes kv runs without its space being loaded (with a shared
/// store, a load was a query on every step). Shown with a kv table the gateway cannot read:
/// the amount-threshold example keeps passing events, while the ledger, which uses kv, fails
/// its step with `store_unavailable`, as any plugin did before.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_never_touches_kv_runs_without_its_space_being_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let db = dir.path().join("db");
    let config = support::two_merchants_config(&db, &app.url(), r#"plugins = ["amount-threshold"]"#)
        .replace("path = \"/globex\"\n", "path = \"/globex\"\nplugins = [\"ledger\"]\n")
        + &format!(
            r#"
[[plugin]]
name = "amount-threshold"
merchant = "acme"
path = "{}"
config = {{ min_amount = "100" }}
[[plugin]]
name = "ledger"
merchant = "globex"
path = "{}"
"#,
            guests().join("amount_threshold.wasm").display(),
            guests().join("ledger.wasm").display()
        );
    let gw = Gateway::start(dir.path(), &config);
    // The kv table out of the gateway's reach, from another connection, before any run.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("ALTER TABLE plugin_kv RENAME TO plugin_kv_away").unwrap();

    send(&gw, "evt_no_kv", 5000).await;
    app.wait_for(WAIT, "the event through amount-threshold", |r| r.len() == 1).await;
    let body = serde_json::to_vec(&payment_with_amount("evt_uses_kv", 5000)).unwrap();
    let headers = sign(payflow_verify::Scheme::PayFlow, SECRET, &body, "evt_uses_kv");
    assert_eq!(post(&client(), &gw.url("/globex"), &headers, body).await.0, 200);
    let deadline = std::time::Instant::now() + WAIT;
    let step = loop {
        let url = gw.admin_url("/api/events/evt_uses_kv");
        let (_, event) = support::admin_get(&client(), &url, GLOBEX_TOKEN).await;
        if event["plugin_step"]["attempts"].as_u64().unwrap_or(0) >= 1 {
            break event["plugin_step"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the ledger's step never ran: {event}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = step["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("ledger: store_unavailable"), "{step}");
    assert_eq!(app.received().len(), 1, "the ledger's event was not delivered");
}
