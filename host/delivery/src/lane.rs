//! A lane: one hop of the sequence after the acknowledgement (an upstream's deliveries, or the
//! plugin steps), as the dispatcher drains it: its retry policy, its workers' number, its
//! in-memory queue in front of the store's and the poller's state. A lane never sends or
//! runs anything itself: the dispatcher does, by what the lane holds.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use payflow_store::Claim;
use tokio::sync::Notify;

use crate::policy::RetryPolicy;
use crate::queue::{Queued, WaitQueue};

/// See the module docs. `T` is what it queues: [`payflow_store::DueDelivery`] or
/// [`payflow_store::DueStep`].
pub struct Lane<T> {
    /// Attempts and backoff.
    pub policy: RetryPolicy,
    /// In flight at once: the number of worker tasks.
    pub concurrency: usize,
    /// In flight at once for one merchant. An upstream has one merchant, who gets every
    /// worker; the plugin steps' lane is shared, and there a merchant gets three quarters of
    /// the workers, so that while its steps run long (plugins spinning to their deadline) the
    /// rest take the others' at once.
    pub(crate) merchant_in_flight: usize,
    /// Waiting for a worker, fed by ingress, the plugin step and the store poller.
    pub(crate) queue: WaitQueue<T>,
    /// Wakes the store poller before its interval is up.
    pub(crate) poll_now: Notify,
    /// Set while the store holds more due rows than the last poll could take: workers that
    /// run dry then ask for the next page at once instead of waiting for the interval.
    pub(crate) backlog: AtomicBool,
    /// Claims this gateway holds on rows nothing in memory will start: taken at insert for
    /// hand-offs the queue refused (see [`Lane::hand_off`]), or by a poll's read for rows it
    /// did not queue. The poller hands them back to the store.
    refused: Mutex<Vec<Claim>>,
}

impl<T: Queued> Lane<T> {
    /// A lane whose merchants share its `concurrency` workers; `merchant_in_flight` bounds one
    /// merchant's share.
    pub fn new(policy: RetryPolicy, concurrency: usize, merchant_in_flight: usize) -> Self {
        Lane {
            policy,
            concurrency,
            merchant_in_flight,
            queue: WaitQueue::default(),
            poll_now: Notify::new(),
            backlog: AtomicBool::new(false),
            refused: Mutex::default(),
        }
    }

    /// Hands a just-stored row to the workers, so they need not read back what was just
    /// written. The store stays the source of truth: if the queue is full the poller finds it.
    /// A row stored claimed by this gateway (the store claims rows) would wait out its claim
    /// there, so a refused one's claim goes to the poller to hand back at once.
    pub fn hand_off(&self, due: T) {
        if let Err(refused) = self.queue.try_push(due) {
            self.refused(refused);
        }
    }

    /// Holds a place in the queue for a hand-off of `merchant`'s, if there is room now. A
    /// gateway on a store that claims rows stores a row claimed only with a place held, and
    /// hands it off into that place ([`Reserved::hand_off`]) once stored: a full queue would
    /// refuse it and its claim would be handed back.
    ///
    /// Regression: with only a look at the room before the write, the hand-offs of the moment
    /// between (64 connections' worth in one group commit) filled a merchant's share, and
    /// ~4,500 of a 20,000-event burst through a plugin were stored claimed, refused and
    /// handed back, then claimed again by a poll.
    pub fn reserve(&self, merchant: &str) -> Option<Reserved<'_, T>> {
        let place = || Reserved { lane: self, merchant: merchant.to_string(), used: false };
        self.queue.try_reserve(merchant).then(place)
    }

    /// Keeps claims of rows nothing in memory will start, for the poller to hand back.
    pub(crate) fn keep_refused(&self, claims: impl IntoIterator<Item = Claim>) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).extend(claims);
    }

    /// Takes the claims kept to hand back.
    pub(crate) fn take_refused(&self) -> Vec<Claim> {
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Tells the poller the store has due rows it has not seen (e.g. after a replay).
    pub fn poll_store_now(&self) {
        self.poll_now.notify_one();
    }

    /// What to do with a row the queue refused: a claim this gateway holds on it goes to the
    /// poller to hand back at once (else the row would wait out the claim in the store).
    fn refused(&self, refused: T) {
        if let Some(claim) = refused.claim() {
            self.keep_refused([claim]);
            self.poll_now.notify_one();
        }
    }
}

/// A place held in a lane's queue for one hand-off ([`Lane::reserve`]); given back if dropped
/// unused (the write failed, or the event was a duplicate).
pub struct Reserved<'a, T: Queued> {
    lane: &'a Lane<T>,
    merchant: String,
    used: bool,
}

impl<T: Queued> Reserved<'_, T> {
    /// Hands the just-stored row to the workers, into the place held for it. Refused only if
    /// it is already claimed in memory; then its claim is handed back as for [`Lane::hand_off`].
    pub fn hand_off(mut self, due: T) {
        self.used = true;
        if let Err(refused) = self.lane.queue.push_reserved(&self.merchant, due) {
            self.lane.refused(refused);
        }
    }
}

impl<T: Queued> Drop for Reserved<'_, T> {
    fn drop(&mut self) {
        if !self.used {
            self.lane.queue.unreserve(&self.merchant);
        }
    }
}
