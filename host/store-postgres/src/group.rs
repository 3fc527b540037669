//! Group commit: many callers' writes, one transaction. A caller submits its item and waits
//! for its own answer; one task takes whatever is waiting (up to a batch's size), writes it
//! with the batch's writer, and answers every caller from the result. A failed batch answers
//! each of its callers with the same error, so nobody is told "done" for a write that did not
//! commit.
//!
//! A batch may wait a little before it is taken (`gather`), so that more items join it: on
//! PostgreSQL every transaction costs its statements' round trips and a WAL flush whatever it
//! carries, and at a steady load a batch otherwise carries only what arrived during the last
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
    /// written at once, each taken `gather` after a slot for it is free (zero: at once). Each
    /// batch is handed to `write`, which returns one answer per item, in order; `committed`
    /// hears how long each batch took.
    pub(crate) fn start<W, F>(
        max_batch: usize,
        in_flight: usize,
        gather: Duration,
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
                if !gather.is_zero() {
                    tokio::time::sleep(gather).await;
                }
                // Taken after the slot (and the gather): what arrived while the batches in flight
                // committed joins.
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The batches a writer was given, in order.
    type Written = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A group commit whose writer keeps each batch it is given, and answers every item.
    fn recording(gather: Duration) -> (GroupCommit<u32, ()>, Written) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let kept = batches.clone();
        let group = GroupCommit::start(
            16,
            1,
            gather,
            move |items: Vec<u32>| {
                let answers = vec![(); items.len()];
                kept.lock().unwrap().push(items);
                async move { Ok(answers) }
            },
            |_| {},
        );
        (group, batches)
    }

    /// Two items 1 ms apart, submitted to a group commit with `gather`: the batches written.
    async fn two_items_a_millisecond_apart(gather: Duration) -> Vec<Vec<u32>> {
        let (group, batches) = recording(gather);
        let group = Arc::new(group);
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        group.submit(2).await.unwrap();
        first.await.unwrap().unwrap();
        let written = batches.lock().unwrap().clone();
        written
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_arriving_within_the_gather_time_joins_the_batch() {
        assert_eq!(two_items_a_millisecond_apart(Duration::from_millis(2)).await, vec![vec![1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_gather_time_an_idle_group_commit_writes_at_once() {
        assert_eq!(two_items_a_millisecond_apart(Duration::ZERO).await, vec![vec![1], vec![2]]);
    }
}
