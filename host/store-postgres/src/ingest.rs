//! Ingress's writes: new events, group-committed, and proxy mode's forwards.
//!
//! Group commit: `insert_event` queues the event for the batcher task, which takes whatever is
//! waiting (up to `max_batch`) and writes it in one transaction, with one multi-row insert per
//! table; a few batches may be in flight at once, each on its own connection, so a commit's
//! round trip does not stall the next. Rows go in key order, so two batches (or two
//! replicas) that share keys wait on each other instead of deadlocking.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use payflow_store::{
    Attempt, AttemptOutcome, CommitObserver, EventKey, EventStatus, Hop, Ingest, Inserted, NewEvent,
    StoreError,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{exec, key_params, pool_error, query, unavailable, PostgresStore};

/// Batches in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Inserted, StoreError>>;

/// The group-commit task's mailbox.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<(NewEvent, Reply)>,
}

impl Batcher {
    pub(crate) fn start(pool: Pool, max_batch: usize, commits: Arc<dyn CommitObserver>) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<(NewEvent, Reply)>();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = waiting.recv().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                // Taken after the permit: what arrived while every batch was in flight joins.
                let mut batch = vec![first];
                while batch.len() < max_batch.max(1) {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (pool, commits) = (pool.clone(), commits.clone());
                tokio::spawn(async move {
                    let (events, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let started = std::time::Instant::now();
                    let inserted = insert_batch(&pool, &events).await;
                    commits.committed(started.elapsed());
                    match inserted {
                        Ok(answers) => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(events = events.len(), error = %e, "store commit failed; answering 503");
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Batcher { queue }
    }
}

/// Writes a batch of new events in one transaction; the answers are in the batch's order.
async fn insert_batch(pool: &Pool, events: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| events[a].event.key.cmp(&events[b].event.key));
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
    let bodies: Vec<&[u8]> = order.iter().map(|&i| &events[i].event.body[..]).collect();
    let received: Vec<i64> = order.iter().map(|&i| events[i].event.received_at_ms).collect();
    let claimed: Vec<Option<i64>> = order
        .iter()
        .map(|&i| (events[i].status == EventStatus::Forwarding).then_some(events[i].event.received_at_ms))
        .collect();

    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    let inserted = query(
        &tx,
        "INSERT INTO events (merchant, scope, id, endpoint, event_type, status, reason, body, headers,
                                 request_id, received_at_ms, claimed_at_ms)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::bytea[], $9::text[], $10::text[], $11::int8[], $12::int8[])
             ON CONFLICT (merchant, scope, id) DO NOTHING
             RETURNING merchant, scope, id",
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
        ],
    )
    .await
    .map_err(unavailable)?;
    let mut new: HashMap<EventKey, bool> = inserted
        .iter()
        .map(|r| (EventKey { merchant: r.get(0), scope: r.get(1), id: r.get(2) }, true))
        .collect();

    // Each new key is new for the first of the batch's copies only; the others are duplicates.
    let mut answers = vec![Inserted::New; events.len()];
    let mut known: Vec<usize> = Vec::new();
    let mut firsts: Vec<usize> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match new.get_mut(&e.event.key) {
            Some(first @ true) => {
                *first = false;
                firsts.push(i);
            }
            Some(false) => answers[i] = Inserted::Duplicate(e.status),
            None => known.push(i),
        }
    }
    if !known.is_empty() {
        let keys = |f: fn(&EventKey) -> &String| -> Vec<&String> {
            known.iter().map(|&i| f(&events[i].event.key)).collect()
        };
        let rows = query(
            &tx,
            "SELECT e.merchant, e.scope, e.id, e.status FROM events e
                 JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(merchant, scope, id)
                   ON e.merchant = k.merchant AND e.scope = k.scope AND e.id = k.id",
            &[&keys(|k| &k.merchant), &keys(|k| &k.scope), &keys(|k| &k.id)],
        )
        .await
        .map_err(unavailable)?;
        let statuses: HashMap<EventKey, EventStatus> = rows
            .iter()
            .map(|r| {
                let status: String = r.get(3);
                let key = EventKey { merchant: r.get(0), scope: r.get(1), id: r.get(2) };
                (key, EventStatus::parse(&status).unwrap_or(EventStatus::Stored))
            })
            .collect();
        for i in known {
            let status = statuses.get(&events[i].event.key).copied().unwrap_or(EventStatus::Stored);
            answers[i] = Inserted::Duplicate(status);
        }
    }

    // The new events' first hops, due at their arrival.
    let mut steps: [Vec<&String>; 3] = Default::default();
    let mut step_at = Vec::new();
    let mut deliveries: [Vec<&String>; 4] = Default::default();
    let mut delivery_at = Vec::new();
    for &i in &firsts {
        let e = &events[i];
        let k = &e.event.key;
        match &e.first_hop {
            Some(Hop::Plugins) => {
                for (column, value) in steps.iter_mut().zip([&k.merchant, &k.scope, &k.id]) {
                    column.push(value);
                }
                step_at.push(e.event.received_at_ms);
            }
            Some(Hop::Upstream(upstream)) => {
                for (column, value) in deliveries.iter_mut().zip([&k.merchant, &k.scope, &k.id, upstream]) {
                    column.push(value);
                }
                delivery_at.push(e.event.received_at_ms);
            }
            None => {}
        }
    }
    if !step_at.is_empty() {
        exec(&tx,
            "INSERT INTO plugin_steps (merchant, scope, event_id, status, attempts, next_attempt_at_ms)
             SELECT m, s, i, 'pending', 0, t FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS u(m, s, i, t)
             ON CONFLICT DO NOTHING",
            &[&steps[0], &steps[1], &steps[2], &step_at],
        )
        .await
        .map_err(unavailable)?;
    }
    if !delivery_at.is_empty() {
        exec(&tx,
            "INSERT INTO deliveries (merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms)
             SELECT m, s, i, u, 'pending', 0, t
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) AS x(m, s, i, u, t)
             ON CONFLICT DO NOTHING",
            &[&deliveries[0], &deliveries[1], &deliveries[2], &deliveries[3], &delivery_at],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(answers)
}

/// Records an attempt row.
pub(crate) async fn insert_attempt(
    tx: &impl deadpool_postgres::GenericClient,
    attempt: &Attempt,
) -> Result<(), tokio_postgres::Error> {
    let a = &attempt.info;
    let k = &attempt.key;
    exec(
        tx,
        "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code,
                               error, response)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &k.merchant,
            &k.scope,
            &k.id,
            &a.upstream,
            &(a.number as i32),
            &a.at_ms,
            &a.duration_ms,
            &a.status_code.map(i32::from),
            &a.error,
            &a.response,
        ],
    )
    .await
    .map(drop)
}

#[async_trait]
impl Ingest for PostgresStore {
    async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ingest.queue.send((event, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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

    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        insert_attempt(&tx, &attempt).await.map_err(unavailable)?;
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
        exec(
            &tx,
            "UPDATE events SET status = $4, reason = $5 WHERE merchant = $1 AND scope = $2 AND id = $3",
            &[m, s, i, &status.as_str(), &reason],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }
}
