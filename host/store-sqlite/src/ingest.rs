//! Ingress's writes: a new event with its first hop (a delivery, or a plugin step), a
//! duplicate answered with the stored event's status, and proxy mode's forwards. They are the
//! writes acknowledgements wait on. It must never store half an event: the event and its first
//! hop go in one write.

use async_trait::async_trait;
use payflow_store::{
    Attempt, AttemptOutcome, EventKey, EventSeq, EventStatus, Hop, Ingest, Inserted, NewEvent, StoreError,
};
use rusqlite::{params, Connection};

use crate::outcomes::{insert_attempt, status_of};
use crate::writer::Priority;
use crate::{key_of, SqliteStore};

/// Makes an event's first hop pending, due at `at_ms`: its plugin step, or a delivery. Nothing
/// when it is already there. `seq` is the event's number.
pub(crate) fn add_first_hop(
    conn: &Connection,
    key: &EventKey,
    seq: i64,
    hop: &Hop,
    at_ms: i64,
) -> rusqlite::Result<()> {
    let (merchant, scope, id) = key_of(key);
    match hop {
        Hop::Plugins => conn
            .prepare_cached(
                "INSERT INTO plugin_steps (event_seq, merchant, scope, event_id, status, attempts, next_attempt_at_ms)
             VALUES (?5, ?1, ?2, ?3, 'pending', 0, ?4)
             ON CONFLICT (event_seq) DO NOTHING",
            )?
            .execute(params![merchant, scope, id, at_ms, seq]),
        Hop::Upstream(upstream) => conn
            .prepare_cached(
                "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms)
             VALUES (?6, ?1, ?2, ?3, ?4, 'pending', 0, ?5)
             ON CONFLICT (event_seq, upstream) DO NOTHING",
            )?
            .execute(params![merchant, scope, id, upstream, at_ms, seq]),
    }
    .map(drop)
}

#[async_trait]
impl Ingest for SqliteStore {
    async fn insert_event(&self, new: NewEvent) -> Result<Inserted, StoreError> {
        let priority = Priority::event(&new.event.key.merchant, new.weight());
        self.write_with(priority, move |conn| {
            let NewEvent { event, status, reason, headers, first_hop, order_key, .. } = &new;
            let headers = serde_json::to_string(headers).unwrap_or_else(|_| "[]".into());
            let claimed = (*status == EventStatus::Forwarding).then_some(event.received_at_ms);
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO events (merchant, id, endpoint, event_type, status, reason, body, headers,
                                         request_id, received_at_ms, claimed_at_ms, scope, order_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (merchant, scope, id) DO NOTHING",
                )?
                .execute(params![
                    event.key.merchant,
                    event.key.id,
                    event.endpoint,
                    event.event_type,
                    status.as_str(),
                    reason,
                    &event.body[..],
                    headers,
                    event.request_id,
                    event.received_at_ms,
                    claimed,
                    event.key.scope,
                    order_key
                ])?;
            if inserted == 0 {
                return Ok(Inserted::Duplicate(status_of(conn, &event.key)?));
            }
            let seq = conn.last_insert_rowid();
            if let Some(hop) = first_hop {
                add_first_hop(conn, &event.key, seq, hop, event.received_at_ms)?;
            }
            Ok(Inserted::New(EventSeq(seq)))
        })
        .await
    }

    async fn claim_forward(
        &self,
        key: &EventKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            // Proxy mode's request path: prepared once, like ingress's statements.
            let n = conn
                .prepare_cached(
                    "UPDATE events SET status = 'forwarding', claimed_at_ms = ?3
                     WHERE merchant = ?1 AND scope = ?5 AND id = ?2
                       AND (status = 'failed' OR (status = 'forwarding' AND claimed_at_ms < ?4))",
                )?
                .execute(params![key.merchant, key.id, now_ms, stale_before_ms, key.scope])?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError> {
        self.write(move |conn| {
            insert_attempt(conn, &attempt)?;
            let (status, reason) = match attempt.outcome {
                AttemptOutcome::Delivered => (EventStatus::Delivered, None),
                _ => (
                    EventStatus::Failed,
                    Some(attempt.info.error.clone().unwrap_or_else(|| {
                        format!("upstream answered {}", attempt.info.status_code.unwrap_or_default())
                    })),
                ),
            };
            conn.prepare_cached(
                "UPDATE events SET status = ?3, reason = ?4 WHERE merchant = ?1 AND scope = ?5 AND id = ?2",
            )?
            .execute(params![
                attempt.key.merchant,
                attempt.key.id,
                status.as_str(),
                reason,
                attempt.key.scope
            ])?;
            Ok(())
        })
        .await
    }
}
