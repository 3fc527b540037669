//! The writer thread: every write of the store is a job sent here, batched with whatever else
//! waits, run in one transaction and answered after that transaction's commit (one fsync).
//! Acknowledgements' writes go first, up to a bounded number of bytes a batch; background
//! bookkeeping takes a bounded share of a batch; both are taken in turn between their owners
//! (`payflow-turns`).
//! It must never answer a write before its commit, and never let one failed write fail the
//! others of its batch (they are run again, each alone).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use payflow_store::{CommitObserver, StoreError, EVENT_BYTES_PER_COMMIT, ROW_BYTES};
use payflow_turns::Turns;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::let_the_wal_start_over;
use crate::commit_delay::CommitDelay;
use crate::unavailable;

/// Whose a write is, for [`Turns`]: a merchant's, or shared (`None`).
pub(crate) type Owner = Option<Box<str>>;

/// How urgent a write is. Someone is waiting on an acknowledgement for an `Ack` write (a
/// sender with a timeout); a `Background` write records what the dispatcher did, which no
/// one waits on (its delivery stays claimed in memory until it is recorded).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A write someone waits on, with about how many bytes it writes (an event's body and its
    /// row) and whose it is: the writer bounds a batch's acknowledgements by bytes, and takes
    /// them in turn between their owners ([`Turns`]).
    Ack { bytes: usize, owner: Owner },
    /// Bookkeeping no sender waits on, with how many records it writes (a delivery's attempts
    /// come in batches) and whose it is: the writer shares its batches by records, not by
    /// writes, and takes background writes in turn between their owners ([`Turns`]).
    Background { records: usize, owner: Owner },
}

impl Priority {
    /// Background bookkeeping of no one merchant's (the deliveries' attempts, upkeep).
    pub(crate) fn shared(records: usize) -> Priority {
        Priority::Background { records, owner: None }
    }

    /// A write someone waits on, of a row or a few, that takes no merchant's turn (the admin
    /// API's, proxy mode's forwards).
    pub(crate) fn ack() -> Priority {
        Priority::Ack { bytes: ROW_BYTES, owner: None }
    }

    /// Storing an event of `merchant`'s weighing `bytes` ([`NewEvent::weight`]).
    ///
    /// [`NewEvent::weight`]: payflow_store::NewEvent::weight
    pub(crate) fn event(merchant: &str, bytes: usize) -> Priority {
        Priority::Ack { bytes, owner: Some(merchant.into()) }
    }

    /// Whose the write is.
    fn owner(&self) -> &Owner {
        match self {
            Priority::Ack { owner, .. } | Priority::Background { owner, .. } => owner,
        }
    }
}

/// While acknowledgements are waiting, background writes join a batch only until they carry
/// this many records (the first always joins, whatever it carries), so delivery bookkeeping
/// cannot lengthen the commits senders wait on; it still progresses, and takes a batch of its
/// own ([`BACKGROUND_ALONE_BATCH`]) whenever no acknowledgement is waiting.
const BACKGROUND_PER_BUSY_BATCH: usize = 8;

/// With no acknowledgement waiting, background writes take a batch of their own only until it
/// carries this many records: an acknowledgement that arrives meanwhile waits for that batch's
/// commit. With 512 plugin steps in flight, whole batches of their records (up to 512) held a
/// burst's acks at 7.6–10.8 ms p99; 256 gave 7.3–7.9 ms at 0.97 the delivery rate, 64 gave 6.2
/// ms but delivered at 0.90 (bench/RESULTS.md, twenty-eighth look).
const BACKGROUND_ALONE_BATCH: usize = 256;

/// A write waiting for the writer thread. It may run twice: once in its batch and, if another
/// write in the batch failed, again in a transaction of its own.
pub(crate) trait WriteJob: Send {
    /// Runs (again), keeping the result; false if it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the write's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
    /// Its priority.
    fn priority(&self) -> &Priority;
}

pub(crate) struct Job<T, F> {
    pub(crate) priority: Priority,
    pub(crate) work: F,
    pub(crate) result: Option<rusqlite::Result<T>>,
    pub(crate) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: Fn(&Connection) -> rusqlite::Result<T> + Send> WriteJob for Job<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.result) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(e))) => Err(unavailable(e)),
            (Ok(()), None) => Err(StoreError::Unavailable("write was not run".into())),
        };
        let _ = self.reply.send(answer);
    }

    fn priority(&self) -> &Priority {
        &self.priority
    }
}

pub(crate) fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    max_batch: usize,
    mut delay: CommitDelay,
    commits: &dyn CommitObserver,
    wal_full: &AtomicBool,
) {
    let mut acks = Turns::default();
    let mut background = Turns::default();
    loop {
        let mut waited = false;
        if acks.is_empty() && background.is_empty() {
            match jobs.recv() {
                Ok(job) => sort(&mut acks, &mut background, job),
                Err(_) => break,
            }
            // A sleep, not a wait on the channel: writes arriving meanwhile must not wake the
            // writer one by one, which would cost the wake-ups the delay is there to save.
            if let Some(wait) = delay.wait(std::time::Instant::now()) {
                std::thread::sleep(wait);
                waited = true;
            }
        }
        // Everything waiting (bounded: every caller awaits its write), sorted by priority.
        while let Ok(job) = jobs.try_recv() {
            sort(&mut acks, &mut background, job);
        }
        if waited {
            delay.waited(acks.len() + background.len() - 1);
        }
        let mut batch = Vec::new();
        acks.take_into(&mut batch, max_batch, EVENT_BYTES_PER_COMMIT);
        let acks_in_batch = batch.len();
        let share = if batch.is_empty() { BACKGROUND_ALONE_BATCH } else { BACKGROUND_PER_BUSY_BATCH };
        background.take_into(&mut batch, max_batch, share);
        let started = std::time::Instant::now();
        let outcomes = run_batch(&conn, &mut batch);
        commits.committed(started.elapsed());
        delay.committed(std::time::Instant::now(), acks_in_batch);
        for (job, committed) in batch.into_iter().zip(outcomes) {
            job.finish(committed);
        }
        if wal_full.swap(false, Ordering::AcqRel) {
            let_the_wal_start_over(&conn);
        }
    }
    // Every sender is gone: fold the WAL back into the main file so the db is self-contained.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
}

/// Queues `job` among the acknowledgements' writes or the background ones.
fn sort(
    acks: &mut Turns<Owner, Box<dyn WriteJob>>,
    background: &mut Turns<Owner, Box<dyn WriteJob>>,
    job: Box<dyn WriteJob>,
) {
    match *job.priority() {
        Priority::Ack { bytes, .. } => acks.push(bytes, job, |job| job.priority().owner()),
        Priority::Background { records, .. } => background.push(records, job, |job| job.priority().owner()),
    }
}

/// Runs one of the batch's fixed control statements, prepared once per connection.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Commits the batch in one transaction (one fsync). If any write in it fails, the batch is
/// rolled back and each write is redone in a transaction of its own, so one failure (a full
/// disk, say) never takes the others down. Savepoints would isolate writes too, but cost a
/// page copy into the statement journal for every page each write touches, on every batch.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Vec<Result<(), StoreError>> {
    let all = transaction(conn, |conn| {
        let mut ok = true;
        for job in batch.iter_mut() {
            ok &= job.run(conn);
        }
        ok
    });
    match all {
        Ok(true) => batch.iter().map(|_| Ok(())).collect(),
        Err(e) => {
            tracing::warn!(writes = batch.len(), error = %e, "store commit failed; answering 503");
            batch.iter().map(|_| Err(e.clone())).collect()
        }
        Ok(false) => batch.iter_mut().map(|job| transaction(conn, |conn| job.run(conn)).map(drop)).collect(),
    }
}

/// Runs `work` in a transaction: committed when it returns true, rolled back when false.
fn transaction(conn: &Connection, work: impl FnOnce(&Connection) -> bool) -> Result<bool, StoreError> {
    control(conn, "BEGIN IMMEDIATE").map_err(unavailable)?;
    if !work(conn) {
        control(conn, "ROLLBACK").map_err(unavailable)?;
        return Ok(false);
    }
    control(conn, "COMMIT").map_err(|e| {
        let _ = control(conn, "ROLLBACK");
        unavailable(e)
    })?;
    Ok(true)
}
