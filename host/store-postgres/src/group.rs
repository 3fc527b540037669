//! Group commit: many callers' writes, one transaction. A caller submits its item and waits
//! for its own answer; one task takes whatever is waiting (up to a batch's size), writes it
//! with the batch's writer, and answers every caller from the result. A failed batch answers
//! each of its callers with the same error, so nobody is told "done" for a write that did not
//! commit.
//!
//! It must never reorder answers (the writer returns one per item, in the items' order) and
//! never start a batch before a previous one is out of the way when only one may be in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payflow_store::StoreError;
use tokio::sync::{mpsc, oneshot, Semaphore};

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// The mailbox of one group-commit task.
pub(crate) struct GroupCommit<T, R> {
    queue: mpsc::UnboundedSender<(T, Reply<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts the task: batches of at most `max_batch` items, at most `in_flight` batches being
    /// written at once. Each batch is handed to `write`, which returns one answer per item, in
    /// order; `committed` hears how long each batch took.
    pub(crate) fn start<W, F>(
        max_batch: usize,
        in_flight: usize,
        write: W,
        committed: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Self
    where
        W: Fn(Vec<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<(T, Reply<R>)>();
        let (write, committed) = (Arc::new(write), Arc::new(committed));
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(in_flight.max(1)));
            while let Some(first) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                // Taken after the slot: what arrived while the batches in flight committed joins.
                let mut batch = vec![first];
                while batch.len() < max_batch.max(1) {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (write, committed) = (write.clone(), committed.clone());
                tokio::spawn(async move {
                    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let count = items.len();
                    let started = Instant::now();
                    let written = write(items).await;
                    committed(started.elapsed());
                    drop(slot);
                    match written {
                        Ok(answers) => {
                            debug_assert_eq!(answers.len(), replies.len());
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(items = count, error = %e, "store commit failed; nothing of it was written");
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        GroupCommit { queue }
    }

    /// Submits `item` and waits for its batch to commit (or fail).
    pub(crate) async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}
