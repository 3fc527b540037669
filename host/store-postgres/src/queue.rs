//! The durable queue: due deliveries and plugin steps, claimed by the read that returns them;
//! attempts and steps recorded, each ending its claim.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Object;
use payflow_store::{
    Attempt, Backlog, Claim, DeliveryQueue, DueCursor, DueDelivery, DueStep, Event, EventKey, EventSeq,
    PluginStep, QueueDepth, StepRecorded, StoreError,
};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::{query, unavailable, PostgresStore};

/// The `events` columns [`event_at`] reads, as `e`.
const EVENT_COLUMNS: &str =
    "e.merchant, e.scope, e.id, e.endpoint, e.event_type, e.body, e.received_at_ms, e.request_id, e.seq,
     e.order_key IS NOT NULL";

/// The event of a row and its number, read from [`EVENT_COLUMNS`] starting at column `at`.
fn event_at(r: &Row, at: usize) -> (Event, EventSeq) {
    let event = Event {
        key: EventKey::new(r.get::<_, String>(at), r.get::<_, String>(at + 1), r.get::<_, String>(at + 2)),
        endpoint: r.get(at + 3),
        event_type: r.get(at + 4),
        body: Bytes::from(r.get::<_, Vec<u8>>(at + 5)),
        received_at_ms: r.get(at + 6),
        request_id: r.get(at + 7),
        ordered: r.get(at + 9),
    };
    (event, EventSeq(r.get(at + 8)))
}

/// Where a claimed row's own `columns` start: after its due time and its event.
const CLAIMED: usize = 11;

/// A table of due rows, as a claim leases them and a hand-back frees them.
struct Queue {
    name: &'static str,
    /// The columns that, with the upstream where there is one, pick out one of its rows.
    row: &'static str,
    /// The condition that `t` is the row the claim's `due` picked out.
    same_row: &'static str,
    /// The condition that `e` is row `t`'s event.
    its_event: &'static str,
    /// The condition that row `t` is the one claim `r` names: its event's number `r.seq`,
    /// checked against its key `r.m`, `r.s`, `r.i` (and its upstream, `r.u`).
    of_claim: &'static str,
}

/// A delivery names its event by number (`event_seq`): see [`crate::event_numbers`].
const DELIVERIES: Queue = Queue {
    name: "deliveries",
    row: "event_seq",
    same_row: "t.event_seq = due.event_seq",
    its_event: "e.seq = t.event_seq",
    of_claim: "t.event_seq = r.seq AND t.upstream = r.u
               AND t.merchant = r.m AND t.scope = r.s AND t.event_id = r.i",
};

/// So does a plugin step.
const PLUGIN_STEPS: Queue = Queue {
    name: "plugin_steps",
    row: "event_seq",
    same_row: "t.event_seq = due.event_seq",
    its_event: "e.seq = t.event_seq",
    of_claim: "t.event_seq = r.seq AND t.merchant = r.m AND t.scope = r.s AND t.event_id = r.i",
};

impl PostgresStore {
    /// Claims up to `limit` rows of `queue` ([`DELIVERIES`] to `upstream`, or [`PLUGIN_STEPS`])
    /// due at `now_ms` that no claim holds: locked past any concurrent claimant (`SKIP
    /// LOCKED`, so two replicas never take the same row) and leased until `now + lease`. A row
    /// is claimable from the later of its due time and its lease's end: the `*_claimable`
    /// indexes hold exactly that, so a claim reads a range and never steps over the rows in
    /// flight (filtering them out after the due index cost each poll a scan of every claimed
    /// row). It reads in the index's order and stops at `limit`: a tie-break on the key in
    /// the `ORDER BY` made every claim read and sort the whole backlog (28 ms per claim of 400
    /// with 20,000 due). Each row comes back as its due time, its event ([`EVENT_COLUMNS`]),
    /// `columns` (of the row as `t`), then the lease's end (see [`claimed_until`]), oldest
    /// first (ties in key order). Planned at each claim ([`planned_now`]).
    async fn claim(
        &self,
        queue: &Queue,
        upstream: Option<&str>,
        now_ms: i64,
        limit: usize,
        columns: &str,
        condition: &str,
    ) -> Result<Vec<Row>, StoreError> {
        let Queue { name: table, row, same_row, its_event, .. } = queue;
        // Steps have no upstream: there $4 is NULL, and named once so that its type is known.
        let (due_filter, row_filter) = match upstream {
            Some(_) => ("AND upstream = $4", "AND t.upstream = $4"),
            None => ("AND $4::text IS NULL", ""),
        };
        let client = self.client().await?;
        let mut rows = planned_now(
            &client,
            &format!(
                "WITH due AS (
                         SELECT {row} FROM {table} c
                         WHERE status = 'pending' {due_filter}
                           AND GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0)) <= $1
                           {condition}
                         ORDER BY GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0))
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE {table} t SET lease_until_ms = $1 + $3
                     FROM due, events e
                     WHERE {same_row} {row_filter} AND {its_event}
                     RETURNING t.next_attempt_at_ms, {EVENT_COLUMNS}, {columns}, t.lease_until_ms"
            ),
            &[
                (&now_ms, Type::INT8),
                (&(limit as i64), Type::INT8),
                (&self.lease_ms, Type::INT8),
                (&upstream, Type::TEXT),
            ],
        )
        .await
        .map_err(unavailable)?;
        rows.sort_by_cached_key(|r| {
            (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3))
        });
        Ok(rows)
    }
}

/// The condition on an ordered upstream's claimable delivery `c` (see
/// [`payflow_store::ordering`]); `$4` is the upstream.
static IN_ORDER: LazyLock<String> =
    LazyLock::new(|| payflow_store::ordering::in_order("c", "order_seq", "$4"));

/// Runs `sql`, planned for this run: with its parameters and the tables as they are now
/// (PostgreSQL's unnamed statement, in one round trip), never on a plan kept from an earlier
/// run. For the statements that join many rows of the queue to their events: a plan kept from
/// a new database's empty tables scanned `events` once per claimed row (a claim of 47
/// deliveries read 20,000 index entries 47 times: 345 ms), and autovacuum's next analysis of
/// the tables, which would have the plan made again, is up to a minute away. Planning costs a
/// claim a fraction of a millisecond, and a claim takes up to a batch of rows.
async fn planned_now(
    client: &Object,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    client.query_typed(sql, params).await
}

/// Clears the leases of `claims` on `queue`'s rows (see [`DeliveryQueue::release_claims`]),
/// each found by its event's number and checked against its key. A plugin step's claim has no
/// upstream (`r.u` is empty), and `plugin_steps` no such column. (Found through `events` by
/// key, as before, a hand-back took ~100 µs of execution a row, mostly waiting on locks: the
/// database's CPU per event did not move.) Planned for each run, as the claims are
/// ([`planned_now`]).
async fn hand_back(client: &Object, queue: &Queue, claims: &[Claim]) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Claim) -> &str| claims.iter().map(|c| f(c).to_owned()).collect::<Vec<String>>();
    let (m, s, i) = (text(|c| &c.key.merchant), text(|c| &c.key.scope), text(|c| &c.key.id));
    let u = text(|c| c.upstream.as_deref().unwrap_or_default());
    let l: Vec<i64> = claims.iter().map(|c| c.until_ms).collect();
    let seqs: Vec<i64> = claims.iter().map(|c| c.seq.0).collect();
    let Queue { name: table, of_claim, .. } = queue;
    planned_now(
        client,
        &format!(
            "UPDATE {table} t SET lease_until_ms = NULL
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
                 AS r(m, s, i, u, l, seq)
             WHERE {of_claim}
               AND t.lease_until_ms = r.l AND t.status = 'pending'"
        ),
        &[
            (&m, Type::TEXT_ARRAY),
            (&s, Type::TEXT_ARRAY),
            (&i, Type::TEXT_ARRAY),
            (&u, Type::TEXT_ARRAY),
            (&l, Type::INT8_ARRAY),
            (&seqs, Type::INT8_ARRAY),
        ],
    )
    .await
    .map(drop)
    .map_err(unavailable)
}

/// The end of the lease a claimed row took: its last column.
fn claimed_until(r: &Row) -> Option<i64> {
    r.get(r.len() - 1)
}

/// Claimed delivery rows (see `claim`'s columns) as due deliveries to `upstream`.
fn due_deliveries(upstream: &str, rows: &[Row]) -> Vec<DueDelivery> {
    rows.iter()
        .map(|r| (r, event_at(r, 1)))
        .map(|(r, (event, seq))| DueDelivery {
            upstream: upstream.to_string(),
            next_attempt_at_ms: r.get(0),
            event,
            seq,
            attempts: r.get::<_, i32>(CLAIMED).max(0) as u32,
            body: r.get::<_, Option<Vec<u8>>>(CLAIMED + 1).map(Bytes::from),
            headers: r
                .get::<_, Option<String>>(CLAIMED + 2)
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            claimed_until_ms: claimed_until(r),
        })
        .collect()
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
            .claim(&DELIVERIES, Some(upstream), now_ms, limit, "t.attempts, t.body, t.headers", "")
            .await?;
        Ok(due_deliveries(upstream, &rows))
    }

    async fn due_ordered_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        _cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let columns = "t.attempts, t.body, t.headers";
        let rows = self.claim(&DELIVERIES, Some(upstream), now_ms, limit, columns, &IN_ORDER).await?;
        Ok(due_deliveries(upstream, &rows))
    }

    async fn due_steps(
        &self,
        now_ms: i64,
        _cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        let rows = self.claim(&PLUGIN_STEPS, None, now_ms, limit, "t.attempts", "").await?;
        Ok(rows
            .iter()
            .map(|r| (r, event_at(r, 1)))
            .map(|(r, (event, seq))| DueStep {
                next_attempt_at_ms: r.get(0),
                event,
                seq,
                attempts: r.get::<_, i32>(CLAIMED).max(0) as u32,
                claimed_until_ms: claimed_until(r),
            })
            .collect())
    }

    async fn record_attempts(&self, attempts: Vec<Arc<Attempt>>) -> Result<(), StoreError> {
        self.recorder.record(attempts).await
    }

    /// One statement per table, the claims as arrays; a row is handed back only while it still
    /// holds the very lease this gateway's claim took.
    async fn release_claims(&self, claims: Vec<Claim>) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (steps, deliveries): (Vec<Claim>, Vec<Claim>) =
            claims.into_iter().partition(|c| c.upstream.is_none());
        hand_back(&client, &DELIVERIES, &deliveries).await?;
        hand_back(&client, &PLUGIN_STEPS, &steps).await
    }

    async fn finish_plugin_step(&self, step: PluginStep) -> Result<StepRecorded, StoreError> {
        self.steps.record(step).await
    }

    async fn queue_depth(&self, upstreams: Vec<String>) -> Result<Vec<QueueDepth>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT upstream, merchant, COUNT(*), MIN(next_attempt_at_ms) FROM deliveries
                 WHERE upstream = ANY($1) AND status = 'pending' GROUP BY upstream, merchant",
            &[&upstreams],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| QueueDepth { upstream: r.get(0), merchant: r.get(1), backlog: backlog_at(r, 2) })
            .collect())
    }

    async fn steps_pending(&self) -> Result<Vec<(String, Backlog)>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT merchant, COUNT(*), MIN(next_attempt_at_ms) FROM plugin_steps WHERE status = 'pending'
                 GROUP BY merchant",
            &[],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), backlog_at(r, 1))).collect())
    }

    fn claims(&self) -> bool {
        true
    }
}

/// A [`Backlog`] from a row's `COUNT(*)` and `MIN(next_attempt_at_ms)`, at columns `at` and
/// `at + 1`.
fn backlog_at(row: &tokio_postgres::Row, at: usize) -> Backlog {
    Backlog { pending: row.get::<_, i64>(at) as u64, earliest_due_ms: row.get(at + 1) }
}
