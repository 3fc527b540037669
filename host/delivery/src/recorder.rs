//! Attempt records on their way to the store. A worker does not wait for its attempt's record
//! before it takes the next delivery (the delivery stays claimed until then): it hands the
//! record here and goes on. One task takes whatever records have gathered, up to
//! [`RECORD_BATCH`], and sends them to the store as one write
//! ([`DeliveryQueue::record_attempts`]), so a batch costs one write job, one answer and one
//! wake-up of this thread instead of one per attempt, and the store commits every worker's
//! last attempts together rather than a small batch per round of the workers (bench/RESULTS.md,
//! issue 21).
//!
//! It must never lose a record: one the store refuses goes back to its upstream's
//! `unrecorded`, to be recorded again before the next poll, and the dispatcher stops only once
//! every record has arrived (a record dropped at shutdown would send its delivery again after a
//! restart). It must never grow without bound either: past [`MAX_RECORDING`] records on their
//! way, workers wait.
//!
//! [`DeliveryQueue::record_attempts`]: payflow_store::DeliveryQueue::record_attempts

use std::sync::{Arc, Mutex};

use payflow_store::{Attempt, Store};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::upstream::Upstream;

/// The most attempt records on their way to the store at once, for all upstreams: a few
/// hundred bytes each, and more than a busy writer commits in a few batches.
const MAX_RECORDING: u32 = 4096;

/// The most records in one write. While acknowledgements wait, the SQLite writer lets only one
/// such write into a commit senders wait on; 32 records there cost about what 32 background
/// writes per busy batch did, which measured no different from 8 (bench/RESULTS.md, issue 21).
const RECORD_BATCH: usize = 32;

/// A record and what it needs once the store has it.
struct Record {
    upstream: Arc<Upstream>,
    attempt: Arc<Attempt>,
    /// Its room among the [`MAX_RECORDING`], freed once it has arrived (or gone back).
    _room: OwnedSemaphorePermit,
}

/// The dispatcher's records on their way, and the task that takes them to the store.
pub(crate) struct Recorder {
    room: Arc<Semaphore>,
    records: mpsc::UnboundedSender<Record>,
    /// The task's end, until [`Recorder::start`] takes it.
    gathered: Mutex<Option<mpsc::UnboundedReceiver<Record>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let (records, gathered) = mpsc::unbounded_channel();
        Recorder {
            room: Arc::new(Semaphore::new(MAX_RECORDING as usize)),
            records,
            gathered: Mutex::new(Some(gathered)),
        }
    }
}

impl Recorder {
    /// Starts the task that takes records to `store`, on the current runtime. Only the first
    /// call starts one.
    pub(crate) fn start(&self, store: Arc<dyn Store>) {
        let Some(mut gathered) = self.gathered.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(RECORD_BATCH);
            while gathered.recv_many(&mut batch, RECORD_BATCH).await > 0 {
                let records = std::mem::replace(&mut batch, Vec::with_capacity(RECORD_BATCH));
                tokio::spawn(write(store.clone(), records));
            }
        });
    }

    /// Sends `attempt`'s record on its way, once there is room.
    pub(crate) async fn send(&self, upstream: Arc<Upstream>, attempt: Arc<Attempt>) {
        let room = self.room.clone().acquire_owned().await.expect("the semaphore is never closed");
        if let Err(mpsc::error::SendError(record)) =
            self.records.send(Record { upstream, attempt, _room: room })
        {
            // Only if the task is gone (its runtime shutting down): keep it for the next try.
            record.upstream.keep_unrecorded(vec![record.attempt]);
        }
    }

    /// Once every record sent has arrived (or gone back to its upstream).
    pub(crate) async fn drained(&self) {
        let _ = self.room.acquire_many(MAX_RECORDING).await;
    }
}

/// Records one batch; on success each delivery is released, on failure each attempt goes back
/// to its upstream, none recorded (the write is all or nothing).
async fn write(store: Arc<dyn Store>, records: Vec<Record>) {
    let attempts = records.iter().map(|r| r.attempt.clone()).collect();
    match store.record_attempts(attempts).await {
        Ok(()) => records.iter().for_each(|r| r.upstream.recorded(&r.attempt)),
        Err(e) => {
            tracing::warn!(attempts = records.len(), error = %e, "cannot record delivery attempts; kept until the store takes them");
            for r in records {
                r.upstream.keep_unrecorded(vec![r.attempt]);
            }
        }
    }
}
