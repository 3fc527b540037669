//! The delivery queue's statements: the due scans (in arrival order, and ordered keys' heads
//! alone), attempts' and plugin steps' records (written by `outcomes.rs` and `step_record.rs`),
//! and the depths the metrics read. On one box no row is claimed: ingress hands each new row to
//! this gateway's own workers. It must never hand out a delivery or step that is not due, nor
//! two of one ordered key at once.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use payflow_store::{
    Attempt, Backlog, DeliveryQueue, DueCursor, DueDelivery, DueStep, Event, EventKey, EventSeq, PluginStep,
    QueueDepth, StepRecorded, StoreError,
};
use rusqlite::params;

use crate::outcomes::apply_attempt;
use crate::step_record::{self, step_records};
use crate::writer::Priority;
use crate::SqliteStore;

/// A [`Backlog`] from a row's `COUNT(*)` and `MIN(next_attempt_at_ms)`, at columns `at` and
/// `at + 1`.
fn backlog_at(row: &rusqlite::Row, at: usize) -> rusqlite::Result<Backlog> {
    Ok(Backlog { pending: row.get::<_, i64>(at)? as u64, earliest_due_ms: row.get(at + 1)? })
}

/// The event of a due row and its number, read from `events` columns in [`EVENT_COLUMNS`]
/// order from `at`.
fn event_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<(Event, EventSeq)> {
    let event = Event {
        key: EventKey::new(r.get::<_, String>(at)?, r.get::<_, String>(at + 1)?, r.get::<_, String>(at + 2)?),
        endpoint: r.get(at + 3)?,
        event_type: r.get(at + 4)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(at + 5)?),
        received_at_ms: r.get(at + 6)?,
        request_id: r.get(at + 7)?,
        ordered: r.get(at + 9)?,
    };
    Ok((event, EventSeq(r.get(at + 8)?)))
}

/// The `events` columns [`event_at`] reads, as `e`.
const EVENT_COLUMNS: &str =
    "e.merchant, e.scope, e.id, e.endpoint, e.event_type, e.body, e.received_at_ms, e.request_id, e.seq,
     e.order_key IS NOT NULL";

/// The condition on an ordered upstream's due delivery (see [`payflow_store::ordering`]): events are
/// numbered in arrival order by `seq`.
static IN_ORDER: LazyLock<String> = LazyLock::new(|| payflow_store::ordering::in_order("d", "seq", "?1"));

/// The due-deliveries read, with `condition` (empty, or [`IN_ORDER`]) on each delivery.
pub(crate) fn due_sql(condition: &str) -> String {
    format!(
        "SELECT d.upstream, d.attempts, d.body, d.headers, d.next_attempt_at_ms, {EVENT_COLUMNS}
         FROM deliveries d
         JOIN events e ON e.seq = d.event_seq
         WHERE d.upstream = ?1 AND d.status = 'pending' AND d.next_attempt_at_ms <= ?2
           AND (?4 IS NULL
                OR (d.next_attempt_at_ms, d.merchant, d.scope, d.event_id) > (?4, ?5, ?7, ?6))
           {condition}
         ORDER BY d.next_attempt_at_ms, d.merchant, d.scope, d.event_id LIMIT ?3"
    )
}

/// The parts of a page's cursor key as a due read binds them, merchant, scope and id (none on
/// the first page).
fn cursor_key(key: &Option<EventKey>) -> [Option<&str>; 3] {
    let part = |f: fn(&payflow_store::KeyParts) -> &str| key.as_ref().map(|k| f(k));
    [part(|k| &k.merchant), part(|k| &k.scope), part(|k| &k.id)]
}

impl SqliteStore {
    /// Due deliveries to `upstream`, with `condition` (empty, or [`IN_ORDER`]) on each.
    async fn due(
        &self,
        upstream: &str,
        condition: String,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let upstream = upstream.to_string();
        // The key moves into the read shared, not copied.
        let (at, key) = cursor.cloned().unzip();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&due_sql(&condition))?;
            let [merchant, scope, id] = cursor_key(&key);
            let rows =
                stmt.query_map(params![upstream, now_ms, limit as i64, at, merchant, id, scope], |r| {
                    let (event, seq) = event_at(r, 5)?;
                    Ok(DueDelivery {
                        upstream: r.get(0)?,
                        attempts: r.get(1)?,
                        body: r.get::<_, Option<Vec<u8>>>(2)?.map(Bytes::from),
                        headers: r
                            .get::<_, Option<String>>(3)?
                            .and_then(|h| serde_json::from_str(&h).ok())
                            .unwrap_or_default(),
                        next_attempt_at_ms: r.get(4)?,
                        event,
                        seq,
                        claimed_until_ms: None,
                    })
                })?;
            rows.collect()
        })
        .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn due_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.due(upstream, String::new(), now_ms, cursor, limit).await
    }

    async fn due_ordered_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.due(upstream, IN_ORDER.clone(), now_ms, cursor, limit).await
    }

    async fn due_steps(
        &self,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        // The key moves into the read shared, not copied.
        let (at, key) = cursor.cloned().unzip();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT s.attempts, s.next_attempt_at_ms, {EVENT_COLUMNS}
                 FROM plugin_steps s
                 JOIN events e ON e.seq = s.event_seq
                 WHERE s.status = 'pending' AND s.next_attempt_at_ms <= ?1
                   AND (?3 IS NULL
                        OR (s.next_attempt_at_ms, s.merchant, s.scope, s.event_id) > (?3, ?4, ?5, ?6))
                 ORDER BY s.next_attempt_at_ms, s.merchant, s.scope, s.event_id LIMIT ?2"
            ))?;
            let [merchant, scope, id] = cursor_key(&key);
            let rows = stmt.query_map(params![now_ms, limit as i64, at, merchant, scope, id], |r| {
                let (event, seq) = event_at(r, 2)?;
                Ok(DueStep {
                    attempts: r.get(0)?,
                    next_attempt_at_ms: r.get(1)?,
                    event,
                    seq,
                    claimed_until_ms: None,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn record_attempts(&self, attempts: Vec<Arc<Attempt>>) -> Result<(), StoreError> {
        let records = attempts.len();
        self.write_with(Priority::shared(records), move |conn| {
            attempts.iter().try_for_each(|attempt| apply_attempt(conn, attempt))
        })
        .await
    }

    async fn finish_plugin_step(&self, step: PluginStep) -> Result<StepRecorded, StoreError> {
        // A merchant's steps take their turn beside other merchants' (`payflow-turns`).
        let priority = Priority::Background {
            records: step_records(&step),
            owner: Some(step.key.merchant.as_str().into()),
        };
        self.write_with(priority, move |conn| step_record::record(conn, &step)).await
    }

    async fn queue_depth(&self, upstreams: Vec<String>) -> Result<Vec<QueueDepth>, StoreError> {
        self.read(move |conn| {
            // Per upstream, so each count is a range of the `deliveries_pending` index.
            let mut statement = conn.prepare_cached(
                "SELECT merchant, COUNT(*), MIN(next_attempt_at_ms) FROM deliveries
                 WHERE upstream = ?1 AND status = 'pending' GROUP BY merchant",
            )?;
            let mut depths = Vec::new();
            for upstream in upstreams {
                let rows = statement.query_map(params![upstream], |r| {
                    Ok(QueueDepth {
                        upstream: upstream.clone(),
                        merchant: r.get(0)?,
                        backlog: backlog_at(r, 1)?,
                    })
                })?;
                depths.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(depths)
        })
        .await
    }

    async fn steps_pending(&self) -> Result<Vec<(String, Backlog)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, COUNT(*), MIN(next_attempt_at_ms) FROM plugin_steps WHERE status = 'pending'
                 GROUP BY merchant",
            )?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, backlog_at(r, 1)?)))?
            .collect()
        })
        .await
    }
}
