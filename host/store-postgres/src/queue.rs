//! The durable queue: due deliveries and plugin steps, claimed by the read that returns them;
//! attempts and steps recorded, each ending its claim.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use payflow_store::{
    Attempt, AttemptOutcome, DeliveryQueue, DueCursor, DueDelivery, DueStep, Event, EventKey, PluginStep,
    StoreError,
};
use tokio_postgres::Row;

use crate::ingest::insert_attempt;
use crate::{key_params, unavailable, PostgresStore};

/// The `events` columns [`event_at`] reads, as `e`.
pub(crate) const EVENT_COLUMNS: &str =
    "e.merchant, e.scope, e.id, e.endpoint, e.event_type, e.body, e.received_at_ms, e.request_id";

/// The event of a row, read from [`EVENT_COLUMNS`] starting at column `at`.
pub(crate) fn event_at(r: &Row, at: usize) -> Event {
    Event {
        key: EventKey { merchant: r.get(at), scope: r.get(at + 1), id: r.get(at + 2) },
        endpoint: r.get(at + 3),
        event_type: r.get(at + 4),
        body: Bytes::from(r.get::<_, Vec<u8>>(at + 5)),
        received_at_ms: r.get(at + 6),
        request_id: r.get(at + 7),
    }
}

/// Locks the event's row for the rest of the transaction: two replicas finishing two of its
/// deliveries at once then settle it one after the other, each seeing the other's outcome.
async fn lock_event(tx: &impl GenericClient, key: &EventKey) -> Result<(), tokio_postgres::Error> {
    let [m, s, i] = key_params(key);
    tx.query_opt("SELECT 1 FROM events WHERE merchant = $1 AND scope = $2 AND id = $3 FOR UPDATE", &[m, s, i])
        .await
        .map(drop)
}

/// Sets an event's status from its deliveries' by [`payflow_store::settled_status`].
pub(crate) async fn settle_event(
    tx: &impl GenericClient,
    key: &EventKey,
) -> Result<(), tokio_postgres::Error> {
    let [m, s, i] = key_params(key);
    let rows = tx
        .query(
            "SELECT status FROM deliveries WHERE merchant = $1 AND scope = $2 AND event_id = $3",
            &[m, s, i],
        )
        .await?;
    let statuses: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(status) = payflow_store::settled_status(statuses.iter().map(String::as_str)) {
        tx.execute(
            "UPDATE events SET status = $4 WHERE merchant = $1 AND scope = $2 AND id = $3",
            &[m, s, i, &status.as_str()],
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl DeliveryQueue for PostgresStore {
    /// Claims what is due; the cursor is not needed: claimed rows are not due for anyone.
    async fn due_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        _cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH due AS (
                         SELECT merchant, scope, event_id FROM deliveries
                         WHERE upstream = $1 AND status = 'pending' AND next_attempt_at_ms <= $2
                           AND COALESCE(lease_until_ms, 0) < $2
                         ORDER BY next_attempt_at_ms, merchant, scope, event_id LIMIT $3
                         FOR UPDATE SKIP LOCKED)
                     UPDATE deliveries d SET lease_until_ms = $2 + $4
                     FROM due, events e
                     WHERE d.upstream = $1 AND d.merchant = due.merchant AND d.scope = due.scope
                       AND d.event_id = due.event_id
                       AND e.merchant = d.merchant AND e.scope = d.scope AND e.id = d.event_id
                     RETURNING d.attempts, d.body, d.headers, d.next_attempt_at_ms, {EVENT_COLUMNS}"
                ),
                &[&upstream, &now_ms, &(limit as i64), &self.lease_ms],
            )
            .await
            .map_err(unavailable)?;
        let mut due: Vec<DueDelivery> = rows
            .iter()
            .map(|r| DueDelivery {
                upstream: upstream.to_string(),
                attempts: r.get::<_, i32>(0) as u32,
                body: r.get::<_, Option<Vec<u8>>>(1).map(Bytes::from),
                headers: r
                    .get::<_, Option<String>>(2)
                    .and_then(|h| serde_json::from_str(&h).ok())
                    .unwrap_or_default(),
                next_attempt_at_ms: r.get(3),
                event: event_at(r, 4),
            })
            .collect();
        due.sort_by(|a, b| (a.next_attempt_at_ms, &a.event.key).cmp(&(b.next_attempt_at_ms, &b.event.key)));
        Ok(due)
    }

    async fn due_steps(
        &self,
        now_ms: i64,
        _cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH due AS (
                         SELECT merchant, scope, event_id FROM plugin_steps
                         WHERE status = 'pending' AND next_attempt_at_ms <= $1 AND COALESCE(lease_until_ms, 0) < $1
                         ORDER BY next_attempt_at_ms, merchant, scope, event_id LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE plugin_steps s SET lease_until_ms = $1 + $3
                     FROM due, events e
                     WHERE s.merchant = due.merchant AND s.scope = due.scope AND s.event_id = due.event_id
                       AND e.merchant = s.merchant AND e.scope = s.scope AND e.id = s.event_id
                     RETURNING s.attempts, s.next_attempt_at_ms, {EVENT_COLUMNS}"
                ),
                &[&now_ms, &(limit as i64), &self.lease_ms],
            )
            .await
            .map_err(unavailable)?;
        let mut due: Vec<DueStep> = rows
            .iter()
            .map(|r| DueStep {
                attempts: r.get::<_, i32>(0) as u32,
                next_attempt_at_ms: r.get(1),
                event: event_at(r, 2),
            })
            .collect();
        due.sort_by(|a, b| (a.next_attempt_at_ms, &a.event.key).cmp(&(b.next_attempt_at_ms, &b.event.key)));
        Ok(due)
    }

    async fn record_attempt(&self, attempt: Arc<Attempt>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        lock_event(&tx, &attempt.key).await.map_err(unavailable)?;
        insert_attempt(&tx, &attempt).await.map_err(unavailable)?;
        let (status, next_at_ms) = attempt.outcome.delivery_row();
        let [m, s, i] = key_params(&attempt.key);
        tx.execute(
            "UPDATE deliveries
             SET status = $5, attempts = $6, next_attempt_at_ms = COALESCE($7, next_attempt_at_ms),
                 lease_until_ms = NULL
             WHERE merchant = $1 AND scope = $2 AND event_id = $3 AND upstream = $4",
            &[m, s, i, &attempt.info.upstream, &status, &(attempt.info.number as i32), &next_at_ms],
        )
        .await
        .map_err(unavailable)?;
        if !matches!(attempt.outcome, AttemptOutcome::Retry { .. }) {
            settle_event(&tx, &attempt.key).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn finish_plugin_step(&self, step: PluginStep) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let [m, s, i] = key_params(&step.key);
        lock_event(&tx, &step.key).await.map_err(unavailable)?;
        for r in &step.runs {
            let logs = serde_json::to_string(&r.logs).unwrap_or_else(|_| "[]".into());
            tx.execute(
                "INSERT INTO plugin_runs (merchant, scope, event_id, plugin, version, attempt, at_ms, duration_us,
                                          fuel_used, outcome, detail, logs)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    m,
                    s,
                    i,
                    &r.plugin,
                    &(r.version as i32),
                    &(r.attempt as i32),
                    &r.at_ms,
                    &r.duration_us,
                    &(r.fuel_used as i64),
                    &r.outcome,
                    &r.detail,
                    &logs,
                ],
            )
            .await
            .map_err(unavailable)?;
        }
        let (status, next_at_ms) = step.step.step_row();
        tx.execute(
            "UPDATE plugin_steps
             SET status = $4, attempts = $5, next_attempt_at_ms = COALESCE($6, next_attempt_at_ms), error = $7,
                 lease_until_ms = NULL
             WHERE merchant = $1 AND scope = $2 AND event_id = $3",
            &[m, s, i, &status, &(step.number as i32), &next_at_ms, &step.error],
        )
        .await
        .map_err(unavailable)?;
        for w in &step.kv {
            tx.execute(
                "INSERT INTO plugin_kv (merchant, plugin, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (merchant, plugin, key) DO UPDATE SET value = excluded.value",
                &[m, &w.plugin, &w.key, &w.value],
            )
            .await
            .map_err(unavailable)?;
        }
        for d in &step.deliveries {
            let headers =
                (!d.headers.is_empty()).then(|| serde_json::to_string(&d.headers).unwrap_or_default());
            tx.execute(
                "INSERT INTO deliveries (merchant, scope, event_id, upstream, status, attempts, next_attempt_at_ms,
                                         body, headers)
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7)
                 ON CONFLICT (merchant, scope, event_id, upstream) DO UPDATE
                 SET status = 'pending', attempts = 0, next_attempt_at_ms = excluded.next_attempt_at_ms,
                     body = excluded.body, headers = excluded.headers, lease_until_ms = NULL",
                &[m, s, i, &d.upstream, &step.at_ms, &d.body.as_deref(), &headers],
            )
            .await
            .map_err(unavailable)?;
        }
        let tags = (!step.tags.is_empty()).then(|| serde_json::to_string(&step.tags).unwrap_or_default());
        tx.execute(
            "UPDATE events SET status = $4, reason = $5, tags = COALESCE($6, tags)
             WHERE merchant = $1 AND scope = $2 AND id = $3",
            &[m, s, i, &step.status.as_str(), &step.reason, &tags],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn queue_depth(&self, upstreams: Vec<String>) -> Result<Vec<(String, String, u64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT upstream, merchant, COUNT(*) FROM deliveries
                 WHERE upstream = ANY($1) AND status = 'pending' GROUP BY upstream, merchant",
                &[&upstreams],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64)).collect())
    }

    async fn steps_pending(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT merchant, COUNT(*) FROM plugin_steps WHERE status = 'pending' GROUP BY merchant",
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
    }

    fn claims(&self) -> bool {
        true
    }
}
