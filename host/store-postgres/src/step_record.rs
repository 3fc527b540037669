//! Plugin steps' outcomes, group-committed: the steps the plugin workers finish at the same time
//! are recorded in one transaction (each step's row, its runs, its kv writes, the deliveries it
//! created and its event's status), so a step costs a share of one commit instead of a commit
//! (a WAL flush) of its own, as new events (`ingest.rs`) and deliveries' outcomes
//! (`record.rs`) do.
//!
//! A batch is written by one statement per table, each joining arrays of the steps' values
//! against the table by the events' numbers (as `record.rs` does, in a transaction from its
//! `begin`): a batch of 20 steps is 6 statements, not 120. Its events are locked first, in key
//! order, as every other writer of their rows locks them, so two batches never deadlock. A
//! batch that fails is written again one step per transaction, by the same code, so one step the
//! database refuses (or a deadlock with another replica) fails that step alone, and no step is
//! ever told "done" for a write that did not commit.
//!
//! Replicas share the plugins' kv spaces, and each runs a plugin on its copy of a space. A step
//! is written only while every key its runs read still holds the write they found
//! (`PluginStep::kv_read`); else it is answered `Stale` and nothing of it is written, and its
//! gateway runs it again on the space as stored. The spaces a batch reads or writes are locked
//! (an advisory lock each, in one order, after the events) from that check to the commit, so
//! no other replica's step or repair lands between them.
//!
//! It must never write a step's kv writes, deliveries or event status when the step's row was
//! replayed (or claimed by another) since the step began: only its runs are kept then. It must
//! never write anything of a stale step, not even its runs: they are made again; and a step that
//! read such a set-aside step's kv write is stale, for that write is never applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool, Transaction};
use payflow_store::{
    CommitObserver, EventKey, EventSeq, EventStatus, KvStamp, KvWrite, PluginStep, StepRecorded, StoreError,
};
use tokio_postgres::types::ToSql;

use crate::group::{GroupCommit, Shares};
use crate::record::{begin, key_arrays, lock_events, numbers_of};
use crate::{exec, pool_error, query, unavailable};

/// Batches being written at once: one, so what finishes during a commit joins the next batch
/// (as for new events and deliveries' outcomes).
const BATCHES_IN_FLIGHT: usize = 1;

/// The group-commit task of plugin steps' outcomes. Its answers are each step's own: the batch's
/// commit, or the step's own transaction when the batch had to be written again.
pub(crate) struct StepRecorder(GroupCommit<PluginStep, Result<StepRecorded, StoreError>>);

impl StepRecorder {
    /// `writer`: the replica's number, stamped on its kv writes (`PluginStore::kv_writer`).
    pub(crate) fn start(pool: Pool, writer: i64, max_batch: usize, commits: Arc<dyn CommitObserver>) -> Self {
        StepRecorder(GroupCommit::start(
            max_batch,
            BATCHES_IN_FLIGHT,
            // No wait for company: the step's deliveries are queued only once it committed, and
            // with the plugin lane's many workers a busy gateway has steps finishing during
            // every commit anyway.
            Duration::ZERO,
            Shares::alike(),
            move |steps: Vec<PluginStep>| {
                let pool = pool.clone();
                async move { record_batch(&pool, writer, steps).await }
            },
            move |took| commits.committed(took),
        ))
    }

    /// Records `step` with whatever other steps are being recorded; returns once it committed.
    pub(crate) async fn record(&self, step: PluginStep) -> Result<StepRecorded, StoreError> {
        self.0.submit(step).await?
    }
}

/// Writes `steps` in one transaction; if that fails, each in a transaction of its own. One
/// answer per step, in the steps' order. Two steps of one event (proxy mode forwarding a
/// duplicate twice at once) are always written one after the other, each alone: one statement
/// per table could not apply both, in order.
pub(crate) async fn record_batch(
    pool: &Pool,
    writer: i64,
    steps: Vec<PluginStep>,
) -> Result<Vec<Result<StepRecorded, StoreError>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut in_key_order: Vec<&PluginStep> = steps.iter().collect();
    in_key_order.sort_by(|a, b| a.key.cmp(&b.key));
    let one_each = in_key_order.windows(2).all(|w| w[0].key != w[1].key);
    if one_each {
        match committed(&mut client, writer, &in_key_order).await {
            Ok(not_applied) => return Ok(steps.iter().map(|s| Ok(not_applied.answer(&s.key))).collect()),
            Err(e) if steps.len() == 1 => return Ok(vec![Err(e)]),
            Err(e) => {
                tracing::debug!(steps = steps.len(), error = %e, "a batch of plugin steps failed; writing each alone")
            }
        }
    }
    let mut answers = Vec::with_capacity(steps.len());
    for step in &steps {
        answers.push(
            committed(&mut client, writer, &[step]).await.map(|not_applied| not_applied.answer(&step.key)),
        );
    }
    Ok(answers)
}

/// Writes `steps` ([`write_steps`]) in a transaction of their own, committed.
async fn committed<'a>(
    client: &mut Object,
    writer: i64,
    steps: &[&'a PluginStep],
) -> Result<NotApplied<'a>, StoreError> {
    let tx = begin(client).await.map_err(unavailable)?;
    let not_applied = write_steps(&tx, writer, steps).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(not_applied)
}

/// The steps of a batch whose decisions were not written.
#[derive(Default)]
struct NotApplied<'a> {
    /// Replayed since they began: only their runs were written.
    set_aside: BTreeSet<&'a EventKey>,
    /// Read a kv key that holds another write now: nothing of them was written.
    stale: BTreeSet<&'a EventKey>,
}

impl NotApplied<'_> {
    fn answer(&self, key: &EventKey) -> StepRecorded {
        if self.stale.contains(key) {
            StepRecorded::Stale
        } else if self.set_aside.contains(key) {
            StepRecorded::SetAside
        } else {
            StepRecorded::Applied
        }
    }
}

/// Updates the steps' rows, each only while it still holds the claim the step ran under and
/// was due when the step began; returns the numbers of the rows it updated.
pub(crate) const UPDATE_STEPS: &str = concat!(
    "UPDATE plugin_steps p
     SET status = u.status, attempts = u.number, next_attempt_at_ms = COALESCE(u.next_at, p.next_attempt_at_ms),
         error = u.error, lease_until_ms = NULL, routes = u.routes
     FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::int8[], $5::text[], $6::text[], $7::int8[], $8::int8[])
         AS u(seq, status, number, next_at, error, routes, begun_at, claimed_until)
     WHERE p.event_seq = u.seq AND ",
    payflow_store::takes_outcome!("p.next_attempt_at_ms", "u.begun_at"),
    " AND ",
    holds_claim!("p.lease_until_ms", "u.claimed_until"),
    " RETURNING p.event_seq"
);

/// Which of the events have a step row.
pub(crate) const STEP_ROWS: &str = "SELECT p.event_seq FROM plugin_steps p
     JOIN UNNEST($1::int8[]) AS u(seq) ON p.event_seq = u.seq";

/// Of the steps' rows, whether `UPDATE_STEPS` would take each (as its `WHERE` says), locked
/// until the commit. A step without a row (proxy mode) is not listed.
pub(crate) const STEPS_GIVING_WAY: &str = concat!(
    "SELECT p.event_seq, (",
    payflow_store::takes_outcome!("p.next_attempt_at_ms", "u.begun_at"),
    " AND ",
    holds_claim!("p.lease_until_ms", "u.claimed_until"),
    ") IS TRUE
     FROM plugin_steps p
     JOIN UNNEST($1::int8[], $2::int8[], $3::int8[]) AS u(seq, begun_at, claimed_until) ON p.event_seq = u.seq
     FOR NO KEY UPDATE OF p"
);

/// Appends the plugins' runs, under their events' numbers (`plugin_runs_by_event`).
const INSERT_RUNS: &str =
    "INSERT INTO plugin_runs (event_seq, merchant, scope, event_id, plugin, version, attempt, at_ms,
                              duration_us, fuel_used, outcome, detail, logs)
     SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[],
                          $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::text[], $13::text[])";

/// Applies the plugins' kv writes (one per key: see `write_kv`), each unless the key holds a
/// later version's write already, stamped with the replica's number (`$6`) and numbered: one
/// change number for the statement (an uncorrelated subquery runs once), taken under the
/// spaces' locks ([`LOCK_SPACES`]), so that in each space the numbers grow in commit order
/// (`plugins::KV_CHANGED_SINCE` relies on it).
const WRITE_KV: &str = "INSERT INTO plugin_kv (merchant, plugin, key, value, version, writer, change)
     SELECT m, p, k, v, n, $6, (SELECT nextval('plugin_kv_change_numbers'))
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int8[]) AS u(m, p, k, v, n)
     ON CONFLICT (merchant, plugin, key) DO UPDATE
     SET value = excluded.value, version = excluded.version, writer = excluded.writer, change = excluded.change
     WHERE excluded.version >= plugin_kv.version";

/// Takes the advisory locks of the kv spaces `$1` ([`space_lock`]), in the array's order
/// (ascending): every batch takes them so, after its events, so two batches never deadlock.
/// Volatile, the lock is taken after the sort.
const LOCK_SPACES: &str =
    "SELECT pg_advisory_xact_lock(s.lock) FROM UNNEST($1::int8[]) AS s(lock) ORDER BY s.lock";

/// The write each key read holds now (none: absent), by the key's place in the arrays.
pub(crate) const KV_NOW: &str = "SELECT r.n, k.version, k.writer
     FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS r(merchant, plugin, key, n)
     JOIN plugin_kv k ON k.merchant = r.merchant AND k.plugin = r.plugin AND k.key = r.key";

/// Creates the deliveries the steps asked for, due when their steps began (one per event and
/// upstream: see `insert_deliveries`), claimed by the gateway that ran the step when it starts
/// them itself (`NewDelivery::claim_until_ms`); a replayed event's earlier row starts over.
const INSERT_DELIVERIES: &str =
    "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                             next_attempt_at_ms, body, headers, lease_until_ms)
     SELECT d.seq, d.merchant, d.scope, d.event_id, d.upstream, 'pending', 0, d.due_at, d.body, d.headers,
            d.claim_until
     FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::bytea[], $8::text[],
                 $9::int8[])
         AS d(seq, merchant, scope, event_id, upstream, due_at, body, headers, claim_until)
     ON CONFLICT (event_seq, upstream) DO UPDATE
     SET status = 'pending', attempts = 0, next_attempt_at_ms = excluded.next_attempt_at_ms,
         body = excluded.body, headers = excluded.headers, lease_until_ms = excluded.lease_until_ms";

/// Writes the events' statuses after their steps, and the plugins' tags.
pub(crate) const UPDATE_EVENTS: &str = "UPDATE events e
     SET status = u.status, reason = u.reason, tags = COALESCE(u.tags, e.tags)
     FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[]) AS u(seq, status, reason, tags)
     WHERE e.seq = u.seq";

/// A step and its event's number.
type Numbered<'a> = (&'a PluginStep, i64);

/// The advisory lock of merchant `merchant`'s plugin `plugin`'s kv space: the batches that read
/// or write it take it, and so does a repair (`plugins::delete_kv`). FNV-1a over the two names:
/// stable across replicas and releases. Two spaces sharing a lock only wait for each other.
pub(crate) fn space_lock(merchant: &str, plugin: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in merchant.bytes().chain([0x1f]).chain(plugin.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Writes the outcomes of `steps` (in key order, one per event) in `tx`, a transaction from
/// `begin`: their events locked, then the kv spaces they use; of each step that is not stale
/// ([`stale_steps`]), its row and its runs, and, unless its row was replayed since it began,
/// its kv writes (stamped `writer`), the deliveries it created and its event's status. Fails
/// as a whole if any step's event is not in the store; else returns the steps not applied.
async fn write_steps<'a>(
    tx: &Transaction<'_>,
    writer: i64,
    steps: &[&'a PluginStep],
) -> Result<NotApplied<'a>, StoreError> {
    let numbers = numbers_of(tx, steps.iter().filter(|s| s.event_seq.is_none()).map(|s| &s.key))
        .await
        .map_err(unavailable)?;
    let mut numbered: Vec<Numbered> = Vec::with_capacity(steps.len());
    for step in steps {
        match step.event_seq.or_else(|| numbers.get(&step.key).copied()) {
            Some(EventSeq(seq)) => numbered.push((step, seq)),
            None => return Err(not_in_the_store(&step.key)),
        }
    }
    // Locked whatever their order: each step writes its event's row.
    let to_lock: BTreeMap<&EventKey, (EventSeq, bool)> =
        numbered.iter().map(|&(step, seq)| (&step.key, (EventSeq(seq), true))).collect();
    let locked = lock_events(tx, &to_lock).await.map_err(unavailable)?;
    if let Some((step, _)) = numbered.iter().find(|(step, _)| !locked.contains(&step.key)) {
        return Err(not_in_the_store(&step.key));
    }
    let stale = stale_steps(tx, writer, &numbered).await.map_err(unavailable)?;
    let stale: BTreeSet<&EventKey> =
        numbered.iter().zip(&stale).filter(|(_, &s)| s).map(|((s, _), _)| &s.key).collect();
    numbered.retain(|(step, _)| !stale.contains(&step.key));
    let took = update_steps(tx, &numbered).await.map_err(unavailable)?;
    // Proxy mode's steps have no row (they run inside the sender's request); a row the step
    // did not take was replayed since it began (or, its lease run out, claimed by another).
    let not_taken: Vec<i64> = numbered.iter().map(|n| n.1).filter(|seq| !took.contains(seq)).collect();
    let replayed_since: BTreeSet<i64> = if not_taken.is_empty() {
        BTreeSet::new()
    } else {
        let rows = query(tx, STEP_ROWS, &[&not_taken]).await.map_err(unavailable)?;
        rows.iter().map(|r| r.get(0)).collect()
    };
    insert_runs(tx, &numbered).await.map_err(unavailable)?;
    // Of a step replayed since, only its runs are kept, as what ran: the replay's own run decides.
    let set_aside =
        numbered.iter().filter(|(_, seq)| replayed_since.contains(seq)).map(|(s, _)| &s.key).collect();
    numbered.retain(|(_, seq)| !replayed_since.contains(seq));
    insert_deliveries(tx, &numbered).await.map_err(unavailable)?;
    update_events(tx, &numbered).await.map_err(unavailable)?;
    // Last: a key's row stays locked from its write until the commit (bench/RESULTS.md,
    // thirty-second look). Replicas using one space wait for each other on its advisory lock
    // anyway, but a repair of a key (`plugins::delete_kv`) also waits on the row.
    write_kv(tx, writer, &numbered).await.map_err(unavailable)?;
    Ok(NotApplied { set_aside, stale })
}

/// Locks the kv spaces the steps read or write, then tells, for each step, whether it is stale:
/// a key its runs read holds another write now than the one they found. Steps are taken in
/// turns ([`take_in_turns`]): a step whose reads all match is taken, and its writes count for
/// the steps after it (one of this replica's runs reads the last one's writes before they
/// commit, so a batch may hold both, in any order). What is left when no step can be taken is
/// stale. A step whose row was replayed since it began writes no kv ([`write_steps`]), so its
/// writes count for nobody: when a step was taken on another's write, the rows of the steps
/// leaned on are locked and looked at ([`giving_way`]), and the turns are taken again without
/// the writes of those that will be set aside. A batch that reads and writes no kv takes no
/// lock and makes no query.
async fn stale_steps(
    tx: &Transaction<'_>,
    writer: i64,
    steps: &[Numbered<'_>],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let spaces: BTreeSet<i64> = steps
        .iter()
        .flat_map(|(step, _)| {
            let read = step.kv_read.iter().map(|r| &r.plugin);
            let written = step.kv.iter().map(|w| &w.plugin);
            read.chain(written).map(|plugin| space_lock(&step.key.merchant, plugin))
        })
        .collect();
    if spaces.is_empty() {
        return Ok(vec![false; steps.len()]);
    }
    let spaces: Vec<i64> = spaces.into_iter().collect();
    exec(tx, LOCK_SPACES, &[&spaces]).await?;
    let mut read: Vec<Key> = steps
        .iter()
        .flat_map(|(step, _)| {
            step.kv_read.iter().map(|r| (&step.key.merchant[..], &r.plugin[..], &r.key[..]))
        })
        .collect();
    read.sort_unstable();
    read.dedup();
    if read.is_empty() {
        return Ok(vec![false; steps.len()]);
    }
    let mut now: HashMap<Key, Option<KvStamp>> = read.iter().map(|&k| (k, None)).collect();
    let merchant: Vec<&str> = read.iter().map(|k| k.0).collect();
    let plugin: Vec<&str> = read.iter().map(|k| k.1).collect();
    let key: Vec<&str> = read.iter().map(|k| k.2).collect();
    for row in query(tx, KV_NOW, &[&merchant, &plugin, &key]).await? {
        let n: i64 = row.get(0);
        now.insert(read[n as usize - 1], Some(KvStamp { version: row.get(1), writer: row.get(2) }));
    }
    let mut looked_at = BTreeSet::new();
    let mut set_aside = BTreeSet::new();
    loop {
        let turns = take_in_turns(steps.iter().map(|(step, _)| *step), &now, writer, &set_aside);
        let unseen: Vec<usize> = turns.leaned_on.difference(&looked_at).copied().collect();
        if unseen.is_empty() {
            return Ok(turns.stale);
        }
        looked_at.extend(unseen.iter().copied());
        let newly = giving_way(tx, &unseen.iter().map(|&i| steps[i]).collect::<Vec<_>>()).await?;
        if newly.is_empty() {
            return Ok(turns.stale);
        }
        set_aside.extend(newly.into_iter().map(|n| unseen[n]));
    }
}

/// A kv key: merchant, plugin, key.
type Key<'k> = (&'k str, &'k str, &'k str);

/// What [`take_in_turns`] found.
struct Turns {
    /// Per step, in the order given: whether it is stale.
    stale: Vec<bool>,
    /// The steps (by place) whose writes a step taken after them read.
    leaned_on: BTreeSet<usize>,
}

/// The check of [`stale_steps`], once the keys' writes `now` are known (every key a step read;
/// none: absent): a step whose reads all find what `now` holds is taken, and its writes (as
/// `WRITE_KV` applies them, stamped `writer`) are what the steps after it find, unless it is
/// one of `set_aside`, whose writes are not applied; rounds until no step is taken. The steps
/// of `set_aside` are taken or stale by their own reads like any other.
fn take_in_turns<'a>(
    steps: impl Iterator<Item = &'a PluginStep> + Clone,
    now: &HashMap<Key<'a>, Option<KvStamp>>,
    writer: i64,
    set_aside: &BTreeSet<usize>,
) -> Turns {
    // Each key's write, and the step of this batch that wrote it (none: the store's).
    let mut now: HashMap<Key, (Option<KvStamp>, Option<usize>)> =
        now.iter().map(|(&k, &stamp)| (k, (stamp, None))).collect();
    let mut stale = vec![true; steps.clone().count()];
    let mut leaned_on = BTreeSet::new();
    loop {
        let mut took_one = false;
        for (i, step) in steps.clone().enumerate() {
            let merchant = &step.key.merchant[..];
            let found = |r: &payflow_store::KvReadOf| now[&(merchant, &r.plugin[..], &r.key[..])];
            if !stale[i] || !step.kv_read.iter().all(|r| found(r).0 == r.found) {
                continue;
            }
            leaned_on.extend(step.kv_read.iter().filter_map(|r| found(r).1));
            stale[i] = false;
            took_one = true;
            if set_aside.contains(&i) {
                continue;
            }
            for w in &step.kv {
                // As `WRITE_KV` applies it; keys nobody read need no account.
                if let Some((held, by)) = now.get_mut(&(merchant, &w.plugin[..], &w.key[..])) {
                    if held.is_none_or(|h| w.version >= h.version) {
                        *held = Some(KvStamp { version: w.version, writer });
                        *by = Some(i);
                    }
                }
            }
        }
        if !took_one {
            return Turns { stale, leaned_on };
        }
    }
}

/// Which of `steps` (by place) will be set aside: their rows were replayed (or claimed by
/// another) since they began, so `UPDATE_STEPS` will not take them. Their rows are locked as
/// that update locks them (`FOR NO KEY UPDATE`, which a claim's `FOR UPDATE SKIP LOCKED` steps
/// over; after the events' and the spaces' locks, as nothing else locks a step row while it
/// waits for those), so no claim changes them before that update: what is found here is what
/// it does. In the two-replica hot-key bench it ran in a third of the batches and took ~2% of
/// the database's time (bench/RESULTS.md, thirty-eighth look).
async fn giving_way(
    tx: &Transaction<'_>,
    steps: &[Numbered<'_>],
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let seqs: Vec<i64> = steps.iter().map(|s| s.1).collect();
    let begun_at: Vec<i64> = steps.iter().map(|s| s.0.at_ms).collect();
    let claimed_until: Vec<Option<i64>> = steps.iter().map(|s| s.0.claimed_until_ms).collect();
    let rows = query(tx, STEPS_GIVING_WAY, &[&seqs, &begun_at, &claimed_until]).await?;
    let giving_way: BTreeSet<i64> = rows.iter().filter(|r| !r.get::<_, bool>(1)).map(|r| r.get(0)).collect();
    Ok(seqs.iter().enumerate().filter(|(_, seq)| giving_way.contains(seq)).map(|(i, _)| i).collect())
}

fn not_in_the_store(key: &EventKey) -> StoreError {
    StoreError::Unavailable(format!(
        "the plugin step's event {}/{}/{} is not in the store",
        key.merchant, key.scope, key.id
    ))
}

async fn update_steps(
    tx: &Transaction<'_>,
    steps: &[Numbered<'_>],
) -> Result<BTreeSet<i64>, tokio_postgres::Error> {
    let seqs: Vec<i64> = steps.iter().map(|s| s.1).collect();
    let rows: Vec<(&str, Option<i64>)> = steps.iter().map(|s| s.0.step.step_row()).collect();
    let status: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let next_at: Vec<Option<i64>> = rows.iter().map(|r| r.1).collect();
    let number: Vec<i32> = steps.iter().map(|s| s.0.number as i32).collect();
    let error: Vec<Option<&str>> = steps.iter().map(|s| s.0.error.as_deref()).collect();
    let routes: Vec<Option<String>> = steps
        .iter()
        .map(|s| s.0.routes.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default()))
        .collect();
    let begun_at: Vec<i64> = steps.iter().map(|s| s.0.at_ms).collect();
    let claimed_until: Vec<Option<i64>> = steps.iter().map(|s| s.0.claimed_until_ms).collect();
    let params: [&(dyn ToSql + Sync); 8] =
        [&seqs, &status, &number, &next_at, &error, &routes, &begun_at, &claimed_until];
    let rows = query(tx, UPDATE_STEPS, &params).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn insert_runs(tx: &Transaction<'_>, steps: &[Numbered<'_>]) -> Result<(), tokio_postgres::Error> {
    let runs: Vec<_> =
        steps.iter().flat_map(|&(step, seq)| step.runs.iter().map(move |r| (step, seq, r))).collect();
    if runs.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = runs.iter().map(|r| r.1).collect();
    let [m, s, i] = key_arrays(runs.iter().map(|r| &r.0.key));
    let plugin: Vec<&str> = runs.iter().map(|r| r.2.plugin.as_str()).collect();
    let version: Vec<i32> = runs.iter().map(|r| r.2.version as i32).collect();
    let attempt: Vec<i32> = runs.iter().map(|r| r.2.attempt as i32).collect();
    let at: Vec<i64> = runs.iter().map(|r| r.2.at_ms).collect();
    let duration: Vec<i64> = runs.iter().map(|r| r.2.duration_us).collect();
    let fuel: Vec<i64> = runs.iter().map(|r| r.2.fuel_used as i64).collect();
    let outcome: Vec<&str> = runs.iter().map(|r| r.2.outcome.as_str()).collect();
    let detail: Vec<Option<&str>> = runs.iter().map(|r| r.2.detail.as_deref()).collect();
    let logs: Vec<String> =
        runs.iter().map(|r| serde_json::to_string(&r.2.logs).unwrap_or_else(|_| "[]".into())).collect();
    let params: [&(dyn ToSql + Sync); 13] =
        [&seqs, &m, &s, &i, &plugin, &version, &attempt, &at, &duration, &fuel, &outcome, &detail, &logs];
    exec(tx, INSERT_RUNS, &params).await.map(drop)
}

/// One row per (merchant, plugin, key), the write of the highest version (the latest run's,
/// whatever order the steps reached the batch in): one statement may not change a row twice,
/// and one step after another the highest version stays.
async fn write_kv(
    tx: &Transaction<'_>,
    writer: i64,
    steps: &[Numbered<'_>],
) -> Result<(), tokio_postgres::Error> {
    let mut writes: BTreeMap<(&str, &str, &str), &KvWrite> = BTreeMap::new();
    for (step, _) in steps {
        for w in &step.kv {
            let newest = writes.entry((&step.key.merchant, &w.plugin, &w.key)).or_insert(w);
            if w.version >= newest.version {
                *newest = w;
            }
        }
    }
    if writes.is_empty() {
        return Ok(());
    }
    let merchant: Vec<&str> = writes.keys().map(|k| k.0).collect();
    let plugin: Vec<&str> = writes.keys().map(|k| k.1).collect();
    let key: Vec<&str> = writes.keys().map(|k| k.2).collect();
    let value: Vec<&[u8]> = writes.values().map(|w| &w.value[..]).collect();
    let version: Vec<i64> = writes.values().map(|w| w.version).collect();
    exec(tx, WRITE_KV, &[&merchant, &plugin, &key, &value, &version, &writer]).await.map(drop)
}

/// One row per event and upstream, the step's last one for it (as one insert after another
/// left it).
async fn insert_deliveries(
    tx: &Transaction<'_>,
    steps: &[Numbered<'_>],
) -> Result<(), tokio_postgres::Error> {
    let mut deliveries = BTreeMap::new();
    for &(step, seq) in steps {
        for d in &step.deliveries {
            deliveries.insert((seq, d.upstream.as_str()), (step, d));
        }
    }
    if deliveries.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = deliveries.keys().map(|k| k.0).collect();
    let upstream: Vec<&str> = deliveries.keys().map(|k| k.1).collect();
    let [m, s, i] = key_arrays(deliveries.values().map(|d| &d.0.key));
    let due_at: Vec<i64> = deliveries.values().map(|d| d.0.at_ms).collect();
    let body: Vec<Option<&[u8]>> = deliveries.values().map(|d| d.1.body.as_deref()).collect();
    let headers: Vec<Option<String>> = deliveries
        .values()
        .map(|d| (!d.1.headers.is_empty()).then(|| serde_json::to_string(&d.1.headers).unwrap_or_default()))
        .collect();
    let claim_until: Vec<Option<i64>> = deliveries.values().map(|d| d.1.claim_until_ms).collect();
    let params: [&(dyn ToSql + Sync); 9] =
        [&seqs, &m, &s, &i, &upstream, &due_at, &body, &headers, &claim_until];
    exec(tx, INSERT_DELIVERIES, &params).await.map(drop)
}

/// Leaves alone the events a step changes nothing about: a first run (ingress left the
/// event queued, without a reason) that continued, untagged, as on SQLite. Most steps are
/// such, and writing an event's row costs a new row version and an entry in each of its indexes.
async fn update_events(tx: &Transaction<'_>, steps: &[Numbered<'_>]) -> Result<(), tokio_postgres::Error> {
    let unchanged = |s: &PluginStep| {
        s.number == 1 && s.status == EventStatus::Queued && s.reason.is_none() && s.tags.is_empty()
    };
    let steps: Vec<&Numbered> = steps.iter().filter(|s| !unchanged(s.0)).collect();
    if steps.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = steps.iter().map(|s| s.1).collect();
    let status: Vec<&str> = steps.iter().map(|s| s.0.status.as_str()).collect();
    let reason: Vec<Option<&str>> = steps.iter().map(|s| s.0.reason.as_deref()).collect();
    let tags: Vec<Option<String>> = steps
        .iter()
        .map(|s| (!s.0.tags.is_empty()).then(|| serde_json::to_string(&s.0.tags).unwrap_or_default()))
        .collect();
    exec(tx, UPDATE_EVENTS, &[&seqs, &status, &reason, &tags]).await.map(drop)
}
