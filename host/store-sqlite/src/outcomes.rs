//! What a delivery attempt's outcome writes: the delivery's row (which keeps its latest
//! attempt), the event's attempt history (earlier attempts, filed when the next one comes or the
//! rows start over) and the event's settled status. Shared by the queue's records, the plugin
//! steps' records and replays. It must never change a row an attempt did not take (one replayed
//! since the attempt began, see `takes_outcome!`).

use payflow_store::{settled_status, Attempt, AttemptOutcome, EventKey, EventStatus};
use rusqlite::{params, Connection};

use crate::key_of;

pub(crate) fn status_of(conn: &Connection, key: &EventKey) -> rusqlite::Result<EventStatus> {
    let s: String = conn.query_row(
        concat!(
            "SELECT ",
            payflow_store::event_status!(),
            " FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3"
        ),
        params![key.merchant, key.scope, key.id],
        |r| r.get(0),
    )?;
    Ok(EventStatus::parse(&s).unwrap_or(EventStatus::Stored))
}

pub(crate) fn insert_attempt(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    let a = &attempt.info;
    conn.prepare_cached(
        "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code,
                               error, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        attempt.key.merchant,
        attempt.key.scope,
        attempt.key.id,
        a.upstream,
        a.number,
        a.at_ms,
        a.duration_ms,
        a.status_code,
        a.error,
        a.response
    ])?;
    Ok(())
}

/// Records an attempt on its delivery's row: the delivery's status, attempt count and next
/// attempt time from the outcome, and the attempt itself as the row's latest. The caller has
/// filed the row's previous attempt first ([`file_latest_attempt`]). Only a row that was due
/// when the attempt began takes it ([`payflow_store::takes_outcome!`]); returns whether one did.
fn record_on_delivery(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<bool> {
    let a = &attempt.info;
    let (status, next_at_ms) = attempt.outcome.delivery_row();
    let (merchant, scope, event_id) = key_of(&attempt.key);
    conn.prepare_cached(concat!(
        "UPDATE deliveries
         SET status = ?5, attempts = ?6, next_attempt_at_ms = COALESCE(?7, next_attempt_at_ms),
             last_at_ms = ?8, last_duration_ms = ?9, last_status_code = ?10, last_error = ?11,
             last_response = ?12
         WHERE event_seq = ",
        seq_or_key!("?13"),
        " AND upstream = ?4 AND merchant = ?1 AND scope = ?2 AND event_id = ?3 AND ",
        payflow_store::takes_outcome!("next_attempt_at_ms", "?8")
    ))?
    .execute(params![
        merchant,
        scope,
        event_id,
        a.upstream,
        status,
        a.number,
        next_at_ms,
        a.at_ms,
        a.duration_ms,
        a.status_code,
        a.error,
        a.response,
        attempt.event_seq.map(|s| s.0)
    ])
    .map(|changed| changed > 0)
}

/// Copies the latest attempt kept on an event's delivery rows (one upstream's, or all of them)
/// into `attempts`, where the earlier ones are, and says how many it copied. Needed before a
/// row's latest is replaced: with `begun_at_ms`, by an attempt begun then, which replaces it
/// only on a row that takes its outcome ([`payflow_store::takes_outcome!`]). The event is
/// found by its number `seq` when the caller has it ([`seq_or_key!`]).
fn file_latest_attempt(
    conn: &Connection,
    key: &EventKey,
    seq: Option<i64>,
    upstream: Option<&str>,
    begun_at_ms: Option<i64>,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(concat!(
        "INSERT INTO attempts (merchant, scope, event_id, upstream, number, at_ms, duration_ms, status_code,
                               error, response)
         SELECT merchant, scope, event_id, upstream, attempts, last_at_ms, last_duration_ms, last_status_code,
                last_error, last_response
         FROM deliveries
         WHERE event_seq = ",
        seq_or_key!("?6"),
        " AND merchant = ?1 AND scope = ?2 AND event_id = ?3
           AND (?4 IS NULL OR upstream = ?4) AND last_at_ms IS NOT NULL AND (?5 IS NULL OR ",
        payflow_store::takes_outcome!("next_attempt_at_ms", "?5"),
        ")
         ORDER BY upstream",
    ))?
    .execute(params![key.merchant, key.scope, key.id, upstream, begun_at_ms, seq])
}

/// Files every delivery's latest attempt of an event (numbered `seq`, when the caller has it)
/// and clears it from the rows: before the rows' attempt counts start over (a replay, a
/// plugin's new decision) or the rows go. A plugin step's record asks for every event it
/// creates deliveries for, and nearly always there is none to file (rows keep an attempt then
/// only when a step makes them again: proxy mode's duplicate forwarded again). That case costs
/// one read of the event's delivery rows, found by its number (by its key, a plugin burst's
/// store writer spent 15% of its time here: bench/RESULTS.md, forty-first look).
pub(crate) fn file_latest_attempts(
    conn: &Connection,
    key: &EventKey,
    seq: Option<i64>,
) -> rusqlite::Result<()> {
    if file_latest_attempt(conn, key, seq, None, None)? == 0 {
        return Ok(()); // no row keeps an attempt: nothing to clear
    }
    conn.prepare_cached(concat!(
        "UPDATE deliveries
         SET last_at_ms = NULL, last_duration_ms = NULL, last_status_code = NULL, last_error = NULL,
             last_response = NULL
         WHERE event_seq = ",
        seq_or_key!("?4"),
        " AND merchant = ?1 AND scope = ?2 AND event_id = ?3 AND last_at_ms IS NOT NULL",
    ))?
    .execute(params![key.merchant, key.scope, key.id, seq])?;
    Ok(())
}

/// Records a delivery attempt: on the delivery's row, with the row's previous attempt (there
/// is one from the second attempt on) filed in `attempts`, and what its outcome changes about
/// the event. A first attempt, the only one of nearly every delivery, is one row update: an
/// `attempts` row of its own cost a queue-mode event ~4% more CPU (bench/RESULTS.md).
///
/// An attempt begun before its row was replayed changes neither the row nor the event: it is
/// filed in the event's history, as what was sent, and the replay's delivery goes ahead.
pub(crate) fn apply_attempt(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    let begun_at_ms = attempt.info.at_ms;
    if attempt.info.number > 1 {
        let (seq, upstream) = (attempt.event_seq.map(|s| s.0), Some(attempt.info.upstream.as_str()));
        file_latest_attempt(conn, &attempt.key, seq, upstream, Some(begun_at_ms))?;
    }
    if record_on_delivery(conn, attempt)? {
        return settle_after(conn, attempt);
    }
    let (merchant, scope, id) = key_of(&attempt.key);
    let event_is_there = conn
        .prepare_cached(concat!(
            "SELECT 1 FROM events WHERE seq = ",
            seq_or_key!("?4"),
            " AND merchant = ?1 AND scope = ?2 AND id = ?3"
        ))?
        .exists(params![merchant, scope, id, attempt.event_seq.map(|s| s.0)])?;
    if event_is_there {
        insert_attempt(conn, attempt)?;
    }
    Ok(())
}

/// What an attempt's outcome changes about its event, by [`settled_status`]: a retry leaves
/// the delivery pending, which changes nothing; a dead delivery settles the event. A delivered
/// one, the outcome of nearly every attempt, is the rule's "delivered once all are", which
/// [`payflow_store::event_status!`] applies as the event is read: the event's row is left as it is.
/// Rewriting it (body and all) cost a queue-mode event ~8% more WAL bytes and a few per cent
/// more CPU (bench/RESULTS.md). Only an event with an ordering key is still marked here, in one
/// statement (run only for an attempt that says its event is ordered, [`Attempt::ordered`]),
/// because the ordered scans narrow a key's history by the row's status
/// ([`payflow_store::ordering`]). (The subquery names the row's columns, not the parameters, so that
/// SQLite runs it after the cheap test on `order_key` instead of once up front for every
/// event.) PostgreSQL's recorder does the same; the conformance suite holds both to the same
/// answers.
fn settle_after(conn: &Connection, attempt: &Attempt) -> rusqlite::Result<()> {
    match attempt.outcome {
        AttemptOutcome::Retry { .. } => Ok(()),
        AttemptOutcome::Delivered if !attempt.ordered => Ok(()),
        AttemptOutcome::Dead => settle_event(conn, &attempt.key),
        AttemptOutcome::Delivered => {
            let k = &attempt.key;
            conn.prepare_cached(concat!(
                "UPDATE events SET status = 'delivered' WHERE seq = ",
                seq_or_key!("?4"),
                " AND merchant = ?1 AND scope = ?2 AND id = ?3
                   AND order_key IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM deliveries d
                                   WHERE d.event_seq = events.seq AND d.status <> 'delivered')",
            ))?
            .execute(params![k.merchant, k.scope, k.id, attempt.event_seq.map(|s| s.0)])?;
            Ok(())
        }
    }
}

/// Sets an event's status from its deliveries', by the one rule every backend applies
/// ([`settled_status`]). An event without deliveries keeps its status.
pub(crate) fn settle_event(conn: &Connection, key: &EventKey) -> rusqlite::Result<()> {
    let statuses: Vec<String> = conn
        .prepare_cached(concat!("SELECT status FROM deliveries WHERE event_seq = ", seq_of_key!()))?
        .query_map(params![key.merchant, key.scope, key.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(status) = settled_status(statuses.iter().map(String::as_str)) {
        conn.prepare_cached("UPDATE events SET status = ?4 WHERE merchant = ?1 AND scope = ?2 AND id = ?3")?
            .execute(params![key.merchant, key.scope, key.id, status.as_str()])?;
    }
    Ok(())
}
