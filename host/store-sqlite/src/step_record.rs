//! A plugin step's record: its row, its runs, its kv writes, the deliveries it created and its
//! event's status, in one write. A step is written only while every kv key its runs read still
//! holds the write they found (else `Stale`, and nothing of it is written); a step whose row was
//! replayed since it began keeps only its runs (`SetAside`). It must never write a stale step's
//! runs, nor a set-aside step's decisions.

use payflow_store::{EventStatus, KvReadOf, KvStamp, PluginStep, StepRecorded};
use rusqlite::{params, Connection, OptionalExtension};

use crate::key_of;
use crate::outcomes::file_latest_attempts;

/// What a plugin step weighs in the writer's batches ([`Priority::Background`]): its rows, one
/// per kv key it writes or reads (each an upsert or a lookup), one per run and delivery, and
/// the step's own. Counted as one, a step writing a thousand keys joined batches of up to 256
/// steps while acknowledgements waited behind them: their p99 went to 220 ms
/// (bench/RESULTS.md, thirty-ninth look).
pub(crate) fn step_records(step: &PluginStep) -> usize {
    1 + step.kv.len() + step.kv_read.len() + step.runs.len() + step.deliveries.len()
}

/// Whether every key a plugin step's runs read (of `merchant`'s plugins) still holds the write
/// they found. Nobody else writes here, yet a read can still be wrong: a run reads the writes of
/// the plugin's last run before that run's step commits, and that step may never apply them
/// (a later plugin of its chain failed, its commit failed, or its event was replayed while it
/// ran and it was set aside); a repair may have deleted the key since. A step built on such a
/// read is stale. A primary-key lookup per key read, in the writer's transaction, so checked
/// and written with nothing between them.
fn reads_hold(conn: &Connection, merchant: &str, reads: &[KvReadOf]) -> rusqlite::Result<bool> {
    if reads.is_empty() {
        return Ok(true);
    }
    let mut now = conn
        .prepare_cached("SELECT version FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2 AND key = ?3")?;
    for read in reads {
        let version: Option<i64> =
            now.query_row(params![merchant, read.plugin, read.key], |r| r.get(0)).optional()?;
        // This store stamps every write with writer 0 (`PluginStore::kv_writer`).
        if version.map(|version| KvStamp { version, writer: 0 }) != read.found {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `step` (see the module's doc): `Applied`, `SetAside` (only its runs written) or
/// `Stale` (nothing written). Run by the writer, perhaps twice (see `writer.rs`).
pub(crate) fn record(conn: &Connection, step: &PluginStep) -> rusqlite::Result<StepRecorded> {
    let (merchant, scope, id) = key_of(&step.key);
    let (status, next_at_ms) = step.step.step_row();
    let routes = step.routes.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
    // The event's number: the step's own, or its key's (proxy mode's steps have none).
    let seq: Option<i64> = match step.event_seq {
        Some(seq) => Some(seq.0),
        None => conn
            .prepare_cached(concat!("SELECT ", seq_of_key!()))?
            .query_row(params![merchant, scope, id], |r| r.get(0))?,
    };
    if !reads_hold(conn, merchant, &step.kv_read)? {
        return Ok(StepRecorded::Stale);
    }
    let took =
        conn.prepare_cached(concat!(
            "UPDATE plugin_steps
             SET status = ?4, attempts = ?5, next_attempt_at_ms = COALESCE(?6, next_attempt_at_ms),
                 error = ?7, routes = ?8
             WHERE event_seq = ?10 AND merchant = ?1 AND scope = ?2 AND event_id = ?3 AND ",
            payflow_store::takes_outcome!("next_attempt_at_ms", "?9")
        ))?
        .execute(params![
            merchant,
            scope,
            id,
            status,
            step.number,
            next_at_ms,
            step.error,
            routes,
            step.at_ms,
            seq
        ])? > 0;
    // Proxy mode's steps have no row (they run inside the sender's request); a row the step
    // did not take was replayed since it began.
    let replayed_since =
        !took && conn.prepare_cached("SELECT 1 FROM plugin_steps WHERE event_seq = ?1")?.exists([seq])?;
    let mut run = conn.prepare_cached(
        "INSERT INTO plugin_runs (event_seq, merchant, scope, event_id, plugin, version, attempt, at_ms,
                                  duration_us, fuel_used, outcome, detail, logs)
         VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for r in &step.runs {
        let logs = serde_json::to_string(&r.logs).unwrap_or_else(|_| "[]".into());
        run.execute(params![
            merchant,
            scope,
            id,
            r.plugin,
            r.version,
            r.attempt,
            r.at_ms,
            r.duration_us,
            r.fuel_used as i64,
            r.outcome,
            r.detail,
            logs,
            seq
        ])?;
    }
    if replayed_since {
        // Only its runs are kept, as what ran: the replay's own run decides.
        return Ok(StepRecorded::SetAside);
    }
    if !step.kv.is_empty() {
        let mut kv = conn.prepare_cached(
            "INSERT INTO plugin_kv (merchant, plugin, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (merchant, plugin, key) DO UPDATE SET value = excluded.value, version = excluded.version
             WHERE excluded.version >= plugin_kv.version",
        )?;
        for w in &step.kv {
            kv.execute(params![merchant, w.plugin, w.key, w.value, w.version])?;
        }
    }
    let mut add = conn.prepare_cached(concat!(
        "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                 next_attempt_at_ms, body, headers)
         VALUES (",
        seq_or_key!("?8"),
        ", ?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?7)
         ON CONFLICT (event_seq, upstream) DO UPDATE
         SET status = 'pending', attempts = 0, next_attempt_at_ms = excluded.next_attempt_at_ms,
             body = excluded.body, headers = excluded.headers",
    ))?;
    if !step.deliveries.is_empty() {
        // A delivery the plugins route to again starts its count over.
        file_latest_attempts(conn, &step.key, seq)?;
    }
    for d in &step.deliveries {
        let headers = (!d.headers.is_empty()).then(|| serde_json::to_string(&d.headers).unwrap_or_default());
        add.execute(params![merchant, scope, id, d.upstream, step.at_ms, d.body.as_deref(), headers, seq])?;
    }
    let tags = (!step.tags.is_empty()).then(|| serde_json::to_string(&step.tags).unwrap_or_default());
    // The common case changes nothing about the event: a first attempt (ingress left it
    // queued, without a reason) that continued, untagged.
    let unchanged =
        step.number == 1 && step.status == EventStatus::Queued && step.reason.is_none() && tags.is_none();
    if !unchanged {
        conn.prepare_cached(
            "UPDATE events SET status = ?3, reason = ?4, tags = COALESCE(?5, tags)
             WHERE merchant = ?1 AND scope = ?6 AND id = ?2",
        )?
        .execute(params![merchant, id, step.status.as_str(), step.reason, tags, scope])?;
    }
    Ok(StepRecorded::Applied)
}
