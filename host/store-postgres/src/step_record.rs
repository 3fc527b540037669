//! Plugin steps' outcomes, group-committed: the steps the plugin workers finish at the same time
//! are recorded in one transaction (each step's row, its runs, its kv writes, the deliveries it
//! created and its event's status), so a step costs a share of one commit instead of a commit
//! (a WAL flush) of its own, as new events (`ingest.rs`) and deliveries' outcomes
//! (`record.rs`) do.
//!
//! Each step is written by the same statements as before, one after another in the batch's
//! transaction, in key order, so two batches lock their events in one order. A batch that
//! fails is written again one step per transaction, so one step the database refuses (or a
//! deadlock with another replica) fails that step alone, and no step is ever told "done" for a
//! write that did not commit.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use payflow_store::{CommitObserver, EventSeq, PluginStep, StoreError};

use crate::group::GroupCommit;
use crate::{exec, key_params, pool_error, query_opt, unavailable};

/// Batches being written at once: one, so what finishes during a commit joins the next batch
/// (as for new events and deliveries' outcomes).
const BATCHES_IN_FLIGHT: usize = 1;

/// The group-commit task of plugin steps' outcomes. Its answers are each step's own: the batch's
/// commit, or the step's own transaction when the batch had to be written again.
pub(crate) struct StepRecorder(GroupCommit<PluginStep, Result<(), StoreError>>);

impl StepRecorder {
    pub(crate) fn start(pool: Pool, max_batch: usize, commits: Arc<dyn CommitObserver>) -> Self {
        StepRecorder(GroupCommit::start(
            max_batch,
            BATCHES_IN_FLIGHT,
            // No wait for company: the step's deliveries are queued only once it committed, and
            // with the plugin lane's many workers a busy gateway has steps finishing during
            // every commit anyway.
            Duration::ZERO,
            move |steps: Vec<PluginStep>| {
                let pool = pool.clone();
                async move { record_batch(&pool, steps).await }
            },
            move |took| commits.committed(took),
        ))
    }

    /// Records `step` with whatever other steps are being recorded; returns once it committed.
    pub(crate) async fn record(&self, step: PluginStep) -> Result<(), StoreError> {
        self.0.submit(step).await?
    }
}

/// Writes `steps` in one transaction, in key order; if that fails, each in a transaction of its
/// own. One answer per step, in the steps' order.
pub(crate) async fn record_batch(
    pool: &Pool,
    steps: Vec<PluginStep>,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut in_key_order: Vec<&PluginStep> = steps.iter().collect();
    in_key_order.sort_by(|a, b| a.key.cmp(&b.key));
    let together = async {
        let tx = client.transaction().await.map_err(unavailable)?;
        for step in in_key_order {
            write_step(&tx, step).await?;
        }
        tx.commit().await.map_err(unavailable)
    }
    .await;
    match together {
        Ok(()) => Ok(steps.iter().map(|_| Ok(())).collect()),
        Err(e) if steps.len() == 1 => Ok(vec![Err(e)]),
        Err(e) => {
            tracing::debug!(steps = steps.len(), error = %e, "a batch of plugin steps failed; writing each alone");
            let mut answers = Vec::with_capacity(steps.len());
            for step in &steps {
                let alone = async {
                    let tx = client.transaction().await.map_err(unavailable)?;
                    write_step(&tx, step).await?;
                    tx.commit().await.map_err(unavailable)
                }
                .await;
                answers.push(alone);
            }
            Ok(answers)
        }
    }
}

/// Locks the event's row for the rest of the transaction, and returns its number: two writers
/// changing its status at once (a step's record, a delivery's outcome, a replay) then go one
/// after the other, each seeing the other's change. Found by the number the step carries
/// (the end of `events_by_seq`, where recent events are) and checked against its key; by the
/// key only when it carries none (proxy mode forwarding a duplicate again).
async fn lock_event(tx: &Transaction<'_>, step: &PluginStep) -> Result<i64, StoreError> {
    let [m, s, i] = key_params(&step.key);
    let found = match step.event_seq {
        Some(EventSeq(seq)) => query_opt(
            tx,
            "SELECT seq FROM events WHERE seq = $4 AND merchant = $1 AND scope = $2 AND id = $3 FOR UPDATE",
            &[m, s, i, &seq],
        )
        .await,
        None => {
            query_opt(
                tx,
                "SELECT seq FROM events WHERE merchant = $1 AND scope = $2 AND id = $3 FOR UPDATE",
                &[m, s, i],
            )
            .await
        }
    };
    match found.map_err(unavailable)? {
        Some(row) => Ok(row.get(0)),
        None => Err(StoreError::Unavailable(format!(
            "the plugin step's event {}/{}/{} is not in the store",
            step.key.merchant, step.key.scope, step.key.id
        ))),
    }
}

/// Writes one step's outcome in `tx`: its row (only while the row still holds the claim the
/// step ran under, and was due when the step began), its runs, and, unless the row was replayed
/// since, its kv writes, the deliveries it created and its event's status. Every row is
/// found by the event's number.
async fn write_step(tx: &Transaction<'_>, step: &PluginStep) -> Result<(), StoreError> {
    let seq = lock_event(tx, step).await?;
    let [m, s, i] = key_params(&step.key);
    let (status, next_at_ms) = step.step.step_row();
    let routes = step.routes.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
    let took = exec(
        tx,
        concat!(
            "UPDATE plugin_steps
             SET status = $2, attempts = $3, next_attempt_at_ms = COALESCE($4, next_attempt_at_ms), error = $5,
                 lease_until_ms = NULL, routes = $6
             WHERE event_seq = $1 AND ",
            payflow_store::takes_outcome!("next_attempt_at_ms", "$7"),
            " AND ",
            holds_claim!("lease_until_ms", "$8::int8")
        ),
        &[
            &seq,
            &status,
            &(step.number as i32),
            &next_at_ms,
            &step.error,
            &routes,
            &step.at_ms,
            &step.claimed_until_ms,
        ],
    )
    .await
    .map_err(unavailable)?
        > 0;
    // Proxy mode's steps have no row (they run inside the sender's request); a row the step
    // did not take was replayed since it began (or, its lease run out, claimed by another).
    let replayed_since = !took
        && query_opt(tx, "SELECT 1 FROM plugin_steps WHERE event_seq = $1", &[&seq])
            .await
            .map_err(unavailable)?
            .is_some();
    for r in &step.runs {
        let logs = serde_json::to_string(&r.logs).unwrap_or_else(|_| "[]".into());
        exec(
            tx,
            "INSERT INTO plugin_runs (event_seq, merchant, scope, event_id, plugin, version, attempt, at_ms,
                                      duration_us, fuel_used, outcome, detail, logs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &seq,
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
    if replayed_since {
        // Only its runs are kept, as what ran: the replay's own run decides.
        return Ok(());
    }
    for w in &step.kv {
        exec(
            tx,
            "INSERT INTO plugin_kv (merchant, plugin, key, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT (merchant, plugin, key) DO UPDATE SET value = excluded.value",
            &[m, &w.plugin, &w.key, &w.value],
        )
        .await
        .map_err(unavailable)?;
    }
    for d in &step.deliveries {
        let headers = (!d.headers.is_empty()).then(|| serde_json::to_string(&d.headers).unwrap_or_default());
        exec(
            tx,
            "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                     next_attempt_at_ms, body, headers)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8)
             ON CONFLICT (event_seq, upstream) DO UPDATE
             SET status = 'pending', attempts = 0, next_attempt_at_ms = excluded.next_attempt_at_ms,
                 body = excluded.body, headers = excluded.headers, lease_until_ms = NULL",
            &[&seq, m, s, i, &d.upstream, &step.at_ms, &d.body.as_deref(), &headers],
        )
        .await
        .map_err(unavailable)?;
    }
    let tags = (!step.tags.is_empty()).then(|| serde_json::to_string(&step.tags).unwrap_or_default());
    exec(
        tx,
        "UPDATE events SET status = $2, reason = $3, tags = COALESCE($4, tags) WHERE seq = $1",
        &[&seq, &step.status.as_str(), &step.reason, &tags],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}
