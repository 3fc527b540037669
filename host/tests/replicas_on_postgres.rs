//! Several gateway replicas on one PostgreSQL database (a real server, started for the test),
//! each a real `payflow-edge serve` process: the same event sent to every replica at once is
//! stored once and delivered once, distinct events spread over the replicas are each
//! delivered once, and any replica's admin API answers for all of them.

mod support;

use std::path::Path;
use std::time::Duration;

use payflow_store_postgres::server::TestServer;
use support::{client, queue_config, send_event, wait_for_status, Gateway, Upstream};

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
    let replicas: Vec<Gateway> = dirs.iter().map(|d| Gateway::start(d.path(), &config)).collect();
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
}
