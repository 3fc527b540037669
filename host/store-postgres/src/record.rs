//! Deliveries' outcomes, group-committed: the attempts the dispatcher's workers finish at the
//! same time are recorded in one transaction (their attempt rows, their deliveries' new state,
//! the settled status of the events whose rows an outcome changes), so a delivery costs a
//! share of one commit instead of a commit (a WAL flush) of its own, as ingest's new events do
//! (`ingest.rs`).
//!
//! The events to settle are locked first, in key order: two replicas settling two deliveries
//! of one event then go one after the other, each seeing the other's outcome, and two batches
//! never deadlock. An unordered event's delivered outcome leaves its row alone (see
//! `lock_events_to_settle`). A batch's statements join arrays of events' numbers (or, to settle,
//! keys) against the tables, and run in a transaction from `begin` that allows the planner
//! nothing but a nested loop of index lookups, on a plan made once per connection (see `begin`
//! for why). An attempt finds its event's rows by the number its delivery's claim read
//! (`Attempt::event_seq`), not by the key, whose index a lookup lands anywhere in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Object, Pool, Transaction};
use payflow_store::{Attempt, AttemptOutcome, CommitObserver, EventKey, EventSeq, StoreError};
use tokio_postgres::types::ToSql;

use crate::group::{GroupCommit, Shares};
use crate::{exec, key_at, pool_error, query, unavailable};

/// Batches being written at once: as for new events (`ingest.rs`), one, so what finishes
/// during a commit joins the next batch.
const BATCHES_IN_FLIGHT: usize = 1;

/// How long a record batch waits for more outcomes before it is written. A record transaction
/// costs the database its statements and a WAL flush whatever it carries, and no sender waits
/// on it (the delivery is done; only its row stays claimed meanwhile). At a steady 2,000
/// events/s a batch carried ~4.6 outcomes, what finished during the previous commit. Waiting
/// 2 ms took ~18% off the database's CPU per queue-mode event there and ~12% off the
/// gateway's; 5 ms took 3–6% more off the database's (bench/RESULTS.md, issue 21's fifteenth
/// look). The cost: an outcome is committed up to this much later, so the next event of an
/// ordered key, which waits for it, starts that much later (a key's events go one at a time).
const RECORD_GATHER: Duration = Duration::from_millis(5);

/// The group-commit task of deliveries' outcomes. Its items are the callers' sets of attempts,
/// each all in one transaction or none (as [`DeliveryQueue::record_attempts`] promises).
///
/// [`DeliveryQueue::record_attempts`]: payflow_store::DeliveryQueue::record_attempts
pub(crate) struct Recorder(GroupCommit<Vec<Arc<Attempt>>, ()>);

impl Recorder {
    pub(crate) fn start(pool: Pool, max_batch: usize, commits: Arc<dyn CommitObserver>) -> Self {
        Recorder(GroupCommit::start(
            max_batch,
            BATCHES_IN_FLIGHT,
            RECORD_GATHER,
            Shares::alike(),
            move |sets: Vec<Vec<Arc<Attempt>>>| {
                let pool = pool.clone();
                async move { record_batch(&pool, &sets.concat()).await.map(|()| vec![(); sets.len()]) }
            },
            move |took| commits.committed(took),
        ))
    }

    /// Records `attempts` with whatever else is being recorded; returns once they committed.
    pub(crate) async fn record(&self, attempts: Vec<Arc<Attempt>>) -> Result<(), StoreError> {
        self.0.submit(attempts).await
    }
}

/// Locks the events whose rows an outcome may change (`lock_events_to_settle`), or that plugin
/// steps will write (`step_record.rs`), found by number, in key order (as every earlier release locked them: two replicas of two releases
/// never lock one batch's events in opposite orders). This and the three below join a batch's
/// numbers or keys against a table, in a transaction from [`begin`]. A number finds only the
/// rows that also carry its key ([`payflow_store::EventSeq`]).
pub(crate) const LOCK_EVENTS: &str = "SELECT e.merchant, e.scope, e.id FROM events e
     JOIN UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::bool[]) AS k(seq, merchant, scope, id, always)
       ON e.seq = k.seq AND e.merchant = k.merchant AND e.scope = k.scope AND e.id = k.id
     WHERE k.always OR e.order_key IS NOT NULL
     ORDER BY e.merchant, e.scope, e.id
     FOR UPDATE OF e";

/// Leaves deliveries as their attempts' outcomes say (`update_deliveries`), found by their
/// event's number: the end of `deliveries_by_event`, where the recent rows are, and no lookup
/// of `events` by key, which lands anywhere in its index.
pub(crate) const UPDATE_DELIVERIES: &str = concat!(
    "UPDATE deliveries d
     SET status = a.status, attempts = a.number, next_attempt_at_ms = COALESCE(a.next_at, d.next_attempt_at_ms),
         lease_until_ms = NULL
     FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::int8[],
                 $9::int8[], $10::int8[])
         AS a(seq, merchant, scope, event_id, upstream, status, number, next_at, begun_at, claimed_until)
     WHERE d.event_seq = a.seq AND d.upstream = a.upstream
       AND d.merchant = a.merchant AND d.scope = a.scope AND d.event_id = a.event_id
       AND ",
    payflow_store::takes_outcome!("d.next_attempt_at_ms", "a.begun_at"),
    " AND ",
    holds_claim!("d.lease_until_ms", "a.claimed_until")
);

/// The numbers of the events an attempt names by key alone (`numbered`).
const NUMBERS_OF_KEYS: &str = "SELECT e.merchant, e.scope, e.id, e.seq FROM events e
     JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(merchant, scope, id) USING (merchant, scope, id)";

/// The deliveries' statuses of the events to settle (`settle_events`).
pub(crate) const SETTLING_DELIVERIES: &str = "SELECT e.merchant, e.scope, e.id, d.status FROM events e
     JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(merchant, scope, id) USING (merchant, scope, id)
     JOIN deliveries d ON d.event_seq = e.seq";

/// Writes the events' settled statuses (`settle_events`).
pub(crate) const SETTLE_EVENTS: &str = "UPDATE events e SET status = x.status
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(merchant, scope, id, status)
     WHERE e.merchant = x.merchant AND e.scope = x.scope AND e.id = x.id AND e.status <> x.status";

/// What a transaction from [`begin`] allows the planner: its statements join a batch's keys
/// (arrays) against a table by primary key, and the one plan that suits them at any table size
/// is a nested loop of index lookups, made once per connection and kept (the generic plan).
/// - Left free, the planner scanned the whole table where its statistics were missing or
///   stale (a new database's first minute; a table grown since autovacuum last analyzed it): a
///   scan and a hash join looked cheaper to it than ~130 lookups, and took about twice their
///   time. A generic plan chosen while a table was small kept scanning it as it grew: 40,000
///   deliveries took 850–1,850 µs of database CPU each instead of ~290.
/// - Planned for each batch instead (`force_custom_plan`, as they were before), the statements
///   cost more to plan than to run at a steady load, where a batch carries a few attempts:
///   ~17% of the database's CPU at 2,000 events/s (bench/RESULTS.md, fourteenth look).
///
/// Scans and hash or merge joins are only priced out (`enable_*`), not forbidden, so a statement
/// with no index to use still runs. A prepared statement keeps the one generic plan it made
/// first, whatever the settings of a later transaction: so the statements that need these plans
/// ([`LOCK_EVENTS`] and the three after it) run only in transactions from [`begin`].
pub(crate) const KEYED_PLANS: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// A transaction whose statements look keys up by index, on plans made once ([`KEYED_PLANS`]).
pub(crate) async fn begin(client: &mut Object) -> Result<Transaction<'_>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(KEYED_PLANS).await?;
    Ok(tx)
}

async fn record_batch(pool: &Pool, attempts: &[Arc<Attempt>]) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = begin(&mut client).await.map_err(unavailable)?;
    let all: Vec<&Attempt> = attempts.iter().map(|a| &**a).collect();
    let numbered = numbered(&tx, &all).await.map_err(unavailable)?;
    let to_settle = lock_events_to_settle(&tx, &numbered).await.map_err(unavailable)?;
    insert_attempts(&tx, &numbered).await.map_err(unavailable)?;
    // One update per round, each delivery at most once in a round: a batch never holds two
    // attempts of one delivery today (its next attempt waits for this record), but if it did
    // both would apply, in order.
    let mut rounds: Vec<Vec<Numbered>> = Vec::new();
    for attempt in numbered {
        let same = |a: &Numbered| a.1 == attempt.1 && a.0.info.upstream == attempt.0.info.upstream;
        match rounds.iter_mut().find(|round| !round.iter().any(same)) {
            Some(round) => round.push(attempt),
            None => rounds.push(vec![attempt]),
        }
    }
    for round in rounds {
        update_deliveries(&tx, &round).await.map_err(unavailable)?;
    }
    settle_events(&tx, &to_settle.iter().collect()).await.map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)
}

/// An attempt and its event's number.
pub(crate) type Numbered<'a> = (&'a Attempt, EventSeq);

/// The attempts with their events' numbers: the number each carries ([`Attempt::event_seq`],
/// which every attempt of a delivery from the queue does), else the one its key has, read in
/// one statement. An attempt whose event is gone is left out, as a lookup by its key would
/// find nothing to change.
async fn numbered<'a>(
    tx: &Transaction<'_>,
    attempts: &[&'a Attempt],
) -> Result<Vec<Numbered<'a>>, tokio_postgres::Error> {
    let numbers = numbers_of(tx, attempts.iter().filter(|a| a.event_seq.is_none()).map(|a| &a.key)).await?;
    Ok(attempts
        .iter()
        .filter_map(|a| Some((*a, a.event_seq.or_else(|| numbers.get(&a.key).copied())?)))
        .collect())
}

/// The numbers of the events of `keys` that are in the store, read in one statement (none
/// when there are no keys).
pub(crate) async fn numbers_of<'a>(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = &'a EventKey>,
) -> Result<BTreeMap<EventKey, EventSeq>, tokio_postgres::Error> {
    let keys: BTreeSet<&EventKey> = keys.collect();
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let [m, s, i] = key_arrays(keys.iter().copied());
    let rows = query(tx, NUMBERS_OF_KEYS, &[&m, &s, &i]).await?;
    Ok(rows.iter().map(|r| (key_at(r), EventSeq(r.get(3)))).collect())
}

/// The parts of each of `keys` as three array parameters: merchants, scopes, ids.
pub(crate) fn key_arrays<'a>(keys: impl Iterator<Item = &'a EventKey> + Clone) -> [Vec<&'a String>; 3] {
    [
        keys.clone().map(|k| &k.merchant).collect(),
        keys.clone().map(|k| &k.scope).collect(),
        keys.map(|k| &k.id).collect(),
    ]
}

/// Of the events the attempts finish, the ones whose rows an outcome may change, locked for
/// the rest of the transaction in key order: an event with a dead delivery (it becomes dead)
/// and an ordered event (the ordered scans read its row's status, so it is marked delivered
/// when its last delivery is). A delivered attempt of any other event changes nothing on its
/// row ([`payflow_store::event_status!`] reads it as delivered once every delivery is), and a
/// retry changes nothing either; their events are neither locked nor written. An attempt that
/// says its event is unordered ([`Attempt::ordered`]) and was delivered is not even looked up:
/// the lookup of each delivered event by number cost the database 2.2–2.4 µs per queue-mode event,
/// for nothing (bench/RESULTS.md, twenty-third look). Writing each
/// delivered event's row (a new row version and an entry in each of its indexes) cost the
/// database more than any other record statement (bench/RESULTS.md).
///
/// The lock is what makes two replicas' settles of one event see each other's outcomes: the
/// second waits for the first to commit, then reads every delivery's status. An event whose
/// delivered outcome takes no lock needs none: "dead if any is dead" is written by the dead
/// outcome's settle, whatever the others' are, and "delivered" is never written for it.
async fn lock_events_to_settle(
    tx: &Transaction<'_>,
    attempts: &[Numbered<'_>],
) -> Result<BTreeSet<EventKey>, tokio_postgres::Error> {
    // Each finished event, its number, and whether one of its outcomes here is a dead delivery.
    let mut finished: BTreeMap<&EventKey, (EventSeq, bool)> = BTreeMap::new();
    for &(a, seq) in attempts {
        match a.outcome {
            AttemptOutcome::Retry { .. } => {}
            // Nothing to write on an unordered event's row (see the doc above).
            AttemptOutcome::Delivered if !a.ordered => {}
            AttemptOutcome::Dead => finished.entry(&a.key).or_insert((seq, false)).1 = true,
            AttemptOutcome::Delivered => {
                finished.entry(&a.key).or_insert((seq, false));
            }
        }
    }
    lock_events(tx, &finished).await
}

/// Locks the rows of the events in `events` ([`LOCK_EVENTS`]), each found by its key and
/// number: every ordered one, and the others whose flag says "always". Returns the keys locked.
pub(crate) async fn lock_events(
    tx: &Transaction<'_>,
    events: &BTreeMap<&EventKey, (EventSeq, bool)>,
) -> Result<BTreeSet<EventKey>, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(BTreeSet::new());
    }
    let [m, s, i] = key_arrays(events.keys().copied());
    let seqs: Vec<i64> = events.values().map(|f| f.0 .0).collect();
    let always: Vec<bool> = events.values().map(|f| f.1).collect();
    let rows = query(tx, LOCK_EVENTS, &[&seqs, &m, &s, &i, &always]).await?;
    Ok(rows.iter().map(key_at).collect())
}

/// Records attempt rows, one multi-row insert, each under its event's number
/// (`attempts_by_event`, where it is appended).
pub(crate) async fn insert_attempts(
    tx: &impl GenericClient,
    attempts: &[Numbered<'_>],
) -> Result<(), tokio_postgres::Error> {
    let [m, s, i] = key_arrays(attempts.iter().map(|a| &a.0.key));
    let column = |f: fn(&Attempt) -> Option<String>| -> Vec<Option<String>> {
        attempts.iter().map(|a| f(a.0)).collect()
    };
    let seqs: Vec<i64> = attempts.iter().map(|a| a.1 .0).collect();
    let number: Vec<i32> = attempts.iter().map(|a| a.0.info.number as i32).collect();
    let at: Vec<i64> = attempts.iter().map(|a| a.0.info.at_ms).collect();
    let duration: Vec<i64> = attempts.iter().map(|a| a.0.info.duration_ms).collect();
    let status_code: Vec<Option<i32>> =
        attempts.iter().map(|a| a.0.info.status_code.map(i32::from)).collect();
    exec(
        tx,
        "INSERT INTO attempts (event_seq, merchant, scope, event_id, upstream, number, at_ms, duration_ms,
                               status_code, error, response)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[],
                              $7::int8[], $8::int8[], $9::int4[], $10::text[], $11::text[])",
        &[
            &seqs,
            &m,
            &s,
            &i,
            &column(|a| Some(a.info.upstream.clone())),
            &number,
            &at,
            &duration,
            &status_code,
            &column(|a| a.info.error.clone()),
            &column(|a| a.info.response.clone()),
        ],
    )
    .await
    .map(drop)
}

/// Leaves each attempt's delivery as its outcome says, its claim ended.
async fn update_deliveries(
    tx: &Transaction<'_>,
    attempts: &[Numbered<'_>],
) -> Result<(), tokio_postgres::Error> {
    let [m, s, i] = key_arrays(attempts.iter().map(|a| &a.0.key));
    let upstreams: Vec<&String> = attempts.iter().map(|a| &a.0.info.upstream).collect();
    let rows: Vec<(&str, Option<i64>)> = attempts.iter().map(|a| a.0.outcome.delivery_row()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let next_at: Vec<Option<i64>> = rows.iter().map(|r| r.1).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.0.info.number as i32).collect();
    let seqs: Vec<i64> = attempts.iter().map(|a| a.1 .0).collect();
    let begun_at: Vec<i64> = attempts.iter().map(|a| a.0.info.at_ms).collect();
    let claimed_until: Vec<Option<i64>> = attempts.iter().map(|a| a.0.claimed_until_ms).collect();
    let params: [&(dyn ToSql + Sync); 10] =
        [&seqs, &m, &s, &i, &upstreams, &statuses, &numbers, &next_at, &begun_at, &claimed_until];
    exec(tx, UPDATE_DELIVERIES, &params).await.map(drop)
}

/// Sets each event's status from its deliveries' by [`payflow_store::settled_status`]. Call
/// it in a transaction from [`begin`], with the events locked.
pub(crate) async fn settle_events(
    tx: &Transaction<'_>,
    keys: &BTreeSet<&EventKey>,
) -> Result<(), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let [m, s, i] = key_arrays(keys.iter().copied());
    let rows = query(tx, SETTLING_DELIVERIES, &[&m, &s, &i]).await?;
    let mut deliveries: BTreeMap<EventKey, Vec<String>> = BTreeMap::new();
    for r in &rows {
        let key = key_at(r);
        deliveries.entry(key).or_default().push(r.get(3));
    }
    let settled: Vec<(&EventKey, &'static str)> = deliveries
        .iter()
        .filter_map(|(key, statuses)| {
            payflow_store::settled_status(statuses.iter().map(String::as_str)).map(|s| (key, s.as_str()))
        })
        .collect();
    if settled.is_empty() {
        return Ok(());
    }
    let status: Vec<&str> = settled.iter().map(|s| s.1).collect();
    let [m, s, i] = key_arrays(settled.iter().map(|s| s.0));
    exec(tx, SETTLE_EVENTS, &[&m, &s, &i, &status]).await.map(drop)
}
