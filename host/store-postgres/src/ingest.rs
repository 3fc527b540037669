//! Ingress's writes: new events, group-committed, and proxy mode's forwards.
//!
//! Group commit: `insert_event` queues the event for the batcher task, which takes what is
//! waiting (up to `max_batch`, and about [`EVENT_BYTES_PER_COMMIT`] of events, in turn between
//! merchants by their events' bytes) and writes it with one statement (a transaction of its
//! own, one round trip): a multi-row insert per table. What arrives while a batch commits waits for the
//! next one (`BATCHES_IN_FLIGHT`). Rows go in key order, so two batches (or two
//! replicas) that share keys wait on each other instead of deadlocking.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use payflow_store::{
    Attempt, AttemptOutcome, CommitObserver, EventKey, EventSeq, EventStatus, Hop, Ingest, Inserted,
    NewEvent, StoreError, EVENT_BYTES_PER_COMMIT,
};

use crate::group::{GroupCommit, Shares};
use crate::record::insert_attempts;
use crate::{exec, key_at, key_params, pool_error, query, query_opt, unavailable, PostgresStore};

/// Batches in flight at once. One: the next batch gathers while the last one commits, so a
/// batch holds whatever arrived during a commit. Measured with 64 connections on 2 cores, one
/// in flight against two and four: batches of ~31 events against ~15 and ~8, database CPU
/// 35–42 µs per event against 50–55 and 68–81, gateway CPU 44–53 against 54–57 and 56–66,
/// and no lower throughput or p99 (bench/RESULTS.md). A longer round trip to the database
/// makes the batches larger, not the throughput lower, up to `max_batch`.
const BATCHES_IN_FLIGHT: usize = 1;

/// The group-commit task of new events.
pub(crate) struct Batcher(GroupCommit<NewEvent, Inserted>);

impl Batcher {
    pub(crate) fn start(pool: Pool, max_batch: usize, commits: Arc<dyn CommitObserver>) -> Self {
        Batcher(GroupCommit::start(
            max_batch,
            BATCHES_IN_FLIGHT,
            // Acknowledgements wait on these commits, and a wait for company measured no gain
            // for them (bench/RESULTS.md, issue 21's sixth look).
            Duration::ZERO,
            // Taken first come first served, a merchant sending 256 KiB events filled each
            // statement with up to sixty-four of them, and another merchant's ack p99 was
            // 9–13 s at a thousand events a second; in turn, 70–465 ms, and the large events
            // were acknowledged a quarter faster (bench/RESULTS.md, forty-fourth look).
            Shares {
                weight: NewEvent::weight,
                owner: |e| &e.event.key.merchant,
                budget: EVENT_BYTES_PER_COMMIT,
            },
            move |events| {
                let pool = pool.clone();
                async move { insert_batch(&pool, &events).await }
            },
            move |took| commits.committed(took),
        ))
    }
}

/// Writes a batch of new events; the answers are in the batch's order.
///
/// One statement, so one round trip and one commit (autocommit: it is its own transaction,
/// durable when the reply comes): the events' insert and the new events' first hops (only for
/// the rows actually inserted), each claimed from the start when the gateway hands it to its
/// own workers ([`NewEvent::claim_until_ms`]). Only when some keys were already there are
/// their statuses read, by a second statement. Reading them in the first one too (a join on
/// `events`) made the statement's cached generic plan, chosen while the table was small, scan
/// the whole table on every batch as it grew: 400 µs of database CPU per event instead of 80.
async fn insert_batch(pool: &Pool, events: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
    // The batch's distinct keys in key order (rows locked in one order across batches and
    // replicas, so two never deadlock); a stable sort keeps each key's first copy first. The
    // statement inserts them in the same order, bytes' (`COLLATE "C"`, as the key columns
    // compare): its input's columns would otherwise sort in the database's collation, through
    // `strcoll` (`collation.rs`).
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| events[a].event.key.cmp(&events[b].event.key));
    order.dedup_by(|later, first| events[*later].event.key == events[*first].event.key);
    let column = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        order.iter().map(|&i| f(&events[i])).collect()
    };
    let merchants = column(&|e| Some(e.event.key.merchant.clone()));
    let scopes = column(&|e| Some(e.event.key.scope.clone()));
    let ids = column(&|e| Some(e.event.key.id.clone()));
    let endpoints = column(&|e| Some(e.event.endpoint.clone()));
    let types = column(&|e| e.event.event_type.clone());
    let statuses = column(&|e| Some(e.status.as_str().to_string()));
    let reasons = column(&|e| e.reason.clone());
    let headers = column(&|e| Some(serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into())));
    let request_ids = column(&|e| Some(e.event.request_id.clone()));
    let hops = column(&|e| match &e.first_hop {
        Some(Hop::Plugins) => Some("plugins".into()),
        Some(Hop::Upstream(_)) => Some("upstream".into()),
        None => None,
    });
    let upstreams = column(&|e| match &e.first_hop {
        Some(Hop::Upstream(name)) => Some(name.clone()),
        _ => None,
    });
    let order_keys = column(&|e| e.order_key.clone());
    // Arrival order within the batch: ordered events are numbered in it (rows are inserted in
    // key order, for the locks).
    let arrival: Vec<i64> = order.iter().map(|&i| i as i64).collect();
    let bodies: Vec<&[u8]> = order.iter().map(|&i| &events[i].event.body[..]).collect();
    let received: Vec<i64> = order.iter().map(|&i| events[i].event.received_at_ms).collect();
    let leases: Vec<Option<i64>> = order.iter().map(|&i| events[i].claim_until_ms).collect();
    let claimed: Vec<Option<i64>> = order
        .iter()
        .map(|&i| (events[i].status == EventStatus::Forwarding).then_some(events[i].event.received_at_ms))
        .collect();

    let client = pool.get().await.map_err(pool_error)?;
    let rows = query(
        &client,
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::bytea[], $9::text[], $10::text[], $11::int8[], $12::int8[],
                                  $13::text[], $14::text[], $15::text[], $16::int8[], $17::int8[])
                 AS i(merchant, scope, id, endpoint, event_type, status, reason, body, headers, request_id,
                      received_at_ms, claimed_at_ms, hop, upstream, order_key, arrival, lease_until_ms)
         ), numbered AS (
             SELECT n.*, CASE WHEN n.order_key IS NOT NULL THEN nextval('events_order_seq') END AS order_seq
             FROM (SELECT * FROM input ORDER BY arrival) n
         ), inserted AS (
             INSERT INTO events (merchant, scope, id, endpoint, event_type, status, reason, body, headers,
                                 request_id, received_at_ms, claimed_at_ms, order_key, order_seq)
             SELECT merchant, scope, id, endpoint, event_type, status, reason, body, headers, request_id,
                    received_at_ms, claimed_at_ms, order_key, order_seq
             FROM numbered ORDER BY merchant COLLATE \"C\", scope COLLATE \"C\", id COLLATE \"C\"
             ON CONFLICT (merchant, scope, id) DO NOTHING
             RETURNING merchant, scope, id, seq
         ), steps AS (
             INSERT INTO plugin_steps (event_seq, merchant, scope, event_id, status, attempts,
                                       next_attempt_at_ms, lease_until_ms)
             SELECT inserted.seq, i.merchant, i.scope, i.id, 'pending', 0, i.received_at_ms, i.lease_until_ms
             FROM inserted JOIN input i USING (merchant, scope, id)
             WHERE i.hop = 'plugins'
             ON CONFLICT DO NOTHING
         ), deliveries AS (
             INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms, lease_until_ms)
             SELECT inserted.seq, i.merchant, i.scope, i.id, i.upstream, 'pending', 0, i.received_at_ms,
                    i.lease_until_ms
             FROM inserted JOIN input i USING (merchant, scope, id)
             WHERE i.hop = 'upstream'
             ON CONFLICT DO NOTHING
         )
         SELECT merchant, scope, id, seq FROM inserted",
        &[
            &merchants,
            &scopes,
            &ids,
            &endpoints,
            &types,
            &statuses,
            &reasons,
            &bodies,
            &headers,
            &request_ids,
            &received,
            &claimed,
            &hops,
            &upstreams,
            &order_keys,
            &arrival,
            &leases,
        ],
    )
    .await
    .map_err(unavailable)?;
    // A key's row: new with its number when this statement inserted it, else a duplicate with
    // the status it already had.
    let mut found: HashMap<EventKey, Inserted> =
        rows.iter().map(|r| (key_at(r), Inserted::New(EventSeq(r.get(3))))).collect();
    let known: Vec<&EventKey> =
        order.iter().map(|&i| &events[i].event.key).filter(|k| !found.contains_key(*k)).collect();
    if !known.is_empty() {
        let part = |f: fn(&EventKey) -> &String| -> Vec<&String> { known.iter().map(|k| f(k)).collect() };
        // Not a cached statement: planned for these keys each time, so never a generic plan
        // that scans the table (see above). Duplicates are the rare case.
        let rows = client
            .query(
                concat!(
                    "SELECT events.merchant, events.scope, events.id, ",
                    payflow_store::event_status!(),
                    " FROM events
                     JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(merchant, scope, id)
                       ON events.merchant = k.merchant AND events.scope = k.scope AND events.id = k.id"
                ),
                &[&part(|k| &k.merchant), &part(|k| &k.scope), &part(|k| &k.id)],
            )
            .await
            .map_err(unavailable)?;
        for r in &rows {
            let status: String = r.get(3);
            let key = key_at(r);
            found
                .insert(key, Inserted::Duplicate(EventStatus::parse(&status).unwrap_or(EventStatus::Stored)));
        }
    }

    // Each new key is new for the batch's first copy only; the others are duplicates of it.
    let mut written = vec![false; events.len()];
    for &i in &order {
        written[i] = true;
    }
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| match found.get(&e.event.key) {
            Some(Inserted::New(seq)) if written[i] => Inserted::New(*seq),
            Some(Inserted::New(_)) => Inserted::Duplicate(e.status),
            Some(duplicate) => *duplicate,
            // Neither inserted nor found: deleted in between (retention); it was there.
            None => Inserted::Duplicate(EventStatus::Stored),
        })
        .collect())
}

#[async_trait]
impl Ingest for PostgresStore {
    async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        self.ingest.0.submit(event).await
    }

    async fn claim_forward(
        &self,
        key: &EventKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let [m, s, i] = key_params(key);
        let n = exec(
            &self.client().await?,
            "UPDATE events SET status = 'forwarding', claimed_at_ms = $4
                 WHERE merchant = $1 AND scope = $2 AND id = $3
                   AND (status = 'failed' OR (status = 'forwarding' AND claimed_at_ms < $5))",
            &[m, s, i, &now_ms, &stale_before_ms],
        )
        .await
        .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// The event's row first: its number, which the attempt's row is kept under, comes back
    /// from its update. An event gone meanwhile has no history left to add to.
    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let (status, reason) = match attempt.outcome {
            AttemptOutcome::Delivered => (EventStatus::Delivered, None),
            _ => (
                EventStatus::Failed,
                Some(attempt.info.error.clone().unwrap_or_else(|| {
                    format!("upstream answered {}", attempt.info.status_code.unwrap_or_default())
                })),
            ),
        };
        let [m, s, i] = key_params(&attempt.key);
        let updated = query_opt(
            &tx,
            "UPDATE events SET status = $4, reason = $5 WHERE merchant = $1 AND scope = $2 AND id = $3
             RETURNING seq",
            &[m, s, i, &status.as_str(), &reason],
        )
        .await
        .map_err(unavailable)?;
        if let Some(row) = updated {
            insert_attempts(&tx, &[(&attempt, EventSeq(row.get(0)))]).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }
}
