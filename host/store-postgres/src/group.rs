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
//! What waits is taken in turn between its owners by weight, up to a weight a batch
//! ([`Shares`], `payflow-turns`), never first come first served: every caller waits for its
//! whole batch, and one merchant's backlog of large events must not fill the batch another
//! merchant's event waits on.
//!
//! It must never reorder answers (the writer returns one per item, in the items' order), nor
//! one owner's items, and never start a batch before a previous one is out of the way when
//! only one may be in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payflow_store::StoreError;
use payflow_turns::Turns;
use tokio::sync::{mpsc, oneshot, Semaphore};

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// How a group commit shares its batches: what an item weighs, whose it is, and the weight a
/// batch takes at most (the first item always goes, whatever it weighs).
pub(crate) struct Shares<T, O> {
    pub(crate) weight: fn(&T) -> usize,
    pub(crate) owner: fn(&T) -> &O,
    pub(crate) budget: usize,
}

impl<T> Shares<T, ()> {
    /// Every item alike and nobody's: first come first served, batches bounded by their length.
    pub(crate) fn alike() -> Self {
        Shares { weight: |_| 1, owner: |_| &(), budget: usize::MAX }
    }
}

/// The mailbox of one group-commit task.
pub(crate) struct GroupCommit<T, R> {
    queue: mpsc::UnboundedSender<(T, Reply<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts the task: batches of at most `max_batch` items, taken in turn as `shares` says,
    /// at most `in_flight` batches being written at once, each taken `gather` after a slot for
    /// it is free (zero: at once). Each batch is handed to `write`, which returns one answer
    /// per item, in order; `committed` hears how long each batch took.
    pub(crate) fn start<O, W, F>(
        max_batch: usize,
        in_flight: usize,
        gather: Duration,
        shares: Shares<T, O>,
        write: W,
        committed: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Self
    where
        O: Ord + Clone + Send + 'static,
        W: Fn(Vec<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let (queue, mut arriving) = mpsc::unbounded_channel::<(T, Reply<R>)>();
        let (write, committed) = (Arc::new(write), Arc::new(committed));
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(in_flight.max(1)));
            let mut waiting = Turns::<O, (T, Reply<R>)>::default();
            let wait = |waiting: &mut Turns<O, (T, Reply<R>)>, item: (T, Reply<R>)| {
                waiting.push((shares.weight)(&item.0), item, |(item, _)| (shares.owner)(item))
            };
            loop {
                if waiting.is_empty() {
                    let Some(first) = arriving.recv().await else { break };
                    wait(&mut waiting, first);
                }
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                if !gather.is_zero() {
                    tokio::time::sleep(gather).await;
                }
                // Taken after the slot (and the gather): what arrived while the batches in flight
                // committed takes its turn.
                while let Ok(next) = arriving.try_recv() {
                    wait(&mut waiting, next);
                }
                let mut batch = Vec::new();
                waiting.take_into(&mut batch, max_batch.max(1), shares.budget);
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
    type Written<T> = Arc<Mutex<Vec<Vec<T>>>>;

    /// A group commit of batches of at most 16, one in flight, whose writer keeps each batch it
    /// is given, and answers every item.
    fn recording<T, O>(gather: Duration, shares: Shares<T, O>) -> (GroupCommit<T, ()>, Written<T>)
    where
        T: Clone + Send + 'static,
        O: Ord + Clone + Send + 'static,
    {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let kept = batches.clone();
        let group = GroupCommit::start(
            16,
            1,
            gather,
            shares,
            move |items: Vec<T>| {
                let answers = vec![(); items.len()];
                kept.lock().unwrap().push(items);
                async move { Ok(answers) }
            },
            |_| {},
        );
        (group, batches)
    }

    /// Submits `items` at once (each from a task of its own, in order) and waits for them all.
    async fn submit_all<T: Clone + Send + 'static>(group: GroupCommit<T, ()>, items: &[T]) {
        let group = Arc::new(group);
        let waits: Vec<_> = items
            .iter()
            .cloned()
            .map(|item| {
                let group = group.clone();
                tokio::spawn(async move { group.submit(item).await })
            })
            .collect();
        for wait in waits {
            wait.await.unwrap().unwrap();
        }
    }

    /// Two items 1 ms apart, submitted to a group commit with `gather`: the batches written.
    async fn two_items_a_millisecond_apart(gather: Duration) -> Vec<Vec<u32>> {
        let (group, batches) = recording(gather, Shares::alike());
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

    /// An item of a merchant's: its owner, its number among that owner's, its weight.
    type Item = (&'static str, usize, usize);

    /// Regression (a sender of large events held up another merchant's acknowledgements on
    /// PostgreSQL): a batch took whatever waited, first come first served, up to `max_batch`,
    /// so another merchant's event waited for a statement of up to sixty-four 256 KiB events.
    /// Now a batch carries about its budget, taken in turn between owners: the other's item is
    /// in the first batch, that batch is within budget, and the heavy items keep their order.
    #[tokio::test(start_paused = true)]
    async fn a_merchants_item_waits_for_a_bounded_batch_not_anothers_backlog_of_heavy_items() {
        let shares = Shares { weight: |i: &Item| i.2, owner: |i: &Item| &i.0, budget: 1000 };
        // The gather time lets every item wait before the first batch is taken.
        let (group, batches) = recording(Duration::from_millis(1), shares);
        let mut items: Vec<Item> = (0..10).map(|n| ("big", n, 300)).collect();
        items.push(("small", 0, 1));
        submit_all(group, &items).await;
        let batches = batches.lock().unwrap().clone();
        assert!(batches[0].contains(&("small", 0, 1)), "{batches:?}");
        for batch in &batches {
            let weight: usize = batch.iter().map(|i| i.2).sum();
            assert!(weight <= 1000 || batch.len() == 1, "{batches:?}");
        }
        let big: Vec<usize> = batches.concat().iter().filter(|i| i.0 == "big").map(|i| i.1).collect();
        assert_eq!(big, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn items_alike_go_first_come_first_served_up_to_the_batch_length() {
        let (group, batches) = recording(Duration::from_millis(1), Shares::alike());
        let items: Vec<u32> = (0..20).collect();
        submit_all(group, &items).await;
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches, [(0..16).collect::<Vec<_>>(), (16..20).collect()]);
    }
}
