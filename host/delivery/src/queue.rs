//! A lane's in-memory queue in front of the durable one: deliveries (or plugin steps) handed
//! over by ingress, the plugin step and the store poller, fair between merchants and endpoints,
//! each claimed once until its outcome is recorded. It must never be the only copy of one: the
//! store keeps every one.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::fair_queue::FairQueue;
use payflow_store::{Claim, DueCursor, DueDelivery, DueStep, Event, EventKey};

/// What a lane queues: a due row of the store, for one event.
pub trait Queued: Send + Sync + 'static {
    /// The event it is for.
    fn event(&self) -> &Event;
    /// When it became due (unix ms).
    fn due_at_ms(&self) -> i64;
    /// The store's paging cursor just after it.
    fn cursor(&self) -> DueCursor {
        (self.due_at_ms(), self.event().key.clone())
    }
    /// The claim this gateway's read took on it, if the store claims rows.
    fn claim(&self) -> Option<Claim>;
}

impl Queued for DueDelivery {
    fn event(&self) -> &Event {
        &self.event
    }
    fn due_at_ms(&self) -> i64 {
        self.next_attempt_at_ms
    }
    fn claim(&self) -> Option<Claim> {
        DueDelivery::claim(self)
    }
}

impl Queued for DueStep {
    fn event(&self) -> &Event {
        &self.event
    }
    fn due_at_ms(&self) -> i64 {
        self.next_attempt_at_ms
    }
    fn claim(&self) -> Option<Claim> {
        DueStep::claim(self)
    }
}

/// Deliveries waiting in memory per lane; beyond this they wait in the store only.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Deliveries one merchant may have waiting in memory per upstream: a merchant's backlog
/// must not fill the queue that another's new events are handed to.
pub(crate) const MERCHANT_QUEUE_SHARE: usize = QUEUE_CAPACITY / 4;

/// What waits for a lane's workers, and every one claimed (queued or in flight), so that
/// neither ingress nor the store poller can start one twice.
pub(crate) struct WaitQueue<T> {
    pub(crate) state: Mutex<QueueState<T>>,
    pub(crate) ready: Notify,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue { state: Mutex::new(QueueState::default()), ready: Notify::new() }
    }
}

pub(crate) struct QueueState<T> {
    /// In turn: merchants, then their endpoints, round robin (see [`fair_queue`]).
    pub(crate) waiting: FairQueue<T>,
    pub(crate) claimed: HashSet<EventKey>,
    /// Deliveries finished (recorded, then released) since the poller's last read began, with
    /// the sequence number of their release. A row the poller read as pending may have been
    /// finished while the read ran; without this, it would be queued and sent again.
    pub(crate) finished: HashMap<EventKey, u64>,
    pub(crate) released: u64,
    /// Places held for hand-offs on their way (see [`WaitQueue::try_reserve`]), per merchant
    /// (entries are kept once made: there are as many as configured merchants), and in all.
    reserved: HashMap<String, usize>,
    reserved_total: usize,
}

impl<T> Default for QueueState<T> {
    fn default() -> Self {
        QueueState {
            waiting: FairQueue::default(),
            claimed: HashSet::new(),
            finished: HashMap::new(),
            released: 0,
            reserved: HashMap::new(),
            reserved_total: 0,
        }
    }
}

impl<T> QueueState<T> {
    /// Whether one more of `merchant`'s fits beside what waits and the places held.
    fn has_room(&self, merchant: &str) -> bool {
        let held = self.reserved.get(merchant).copied().unwrap_or(0);
        self.waiting.len() + self.reserved_total < QUEUE_CAPACITY
            && self.waiting.waiting(merchant) + held < MERCHANT_QUEUE_SHARE
    }

    /// Gives back a place held for one of `merchant`'s.
    fn unreserve(&mut self, merchant: &str) {
        if let Some(n) = self.reserved.get_mut(merchant).filter(|n| **n > 0) {
            *n -= 1;
            self.reserved_total -= 1;
        }
    }

    fn unclaim(&mut self, key: &EventKey) {
        self.claimed.remove(key);
        self.released += 1;
        let at = self.released;
        self.finished.insert(key.clone(), at);
    }
}

impl<T: Queued> WaitQueue<T> {
    /// Queues a delivery unless it is already claimed or the queue is full (the store keeps it
    /// either way); gives back what it did not queue.
    pub(crate) fn try_push(&self, due: T) -> Result<(), T> {
        let Ok(s) = self.state.lock() else { return Err(due) };
        if !s.has_room(&due.event().key.merchant) {
            return Err(due);
        }
        self.push_unclaimed(s, due)
    }

    /// Queues `due` (under the lock `s`) unless it is already claimed.
    fn push_unclaimed(&self, mut s: MutexGuard<'_, QueueState<T>>, due: T) -> Result<(), T> {
        if !s.claimed.insert(due.event().key.clone()) {
            return Err(due);
        }
        s.waiting.push(due, |due| (&due.event().key.merchant, &due.event().endpoint));
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Holds a place for one of `merchant`'s, if there is room: until it is used
    /// ([`Self::push_reserved`]) or given back ([`Self::unreserve`]), every other push and
    /// reservation sees it taken. Whoever stores a row claimed and hands it off a commit later
    /// holds one, so that the hand-offs of that moment cannot fill the merchant's share first.
    pub(crate) fn try_reserve(&self, merchant: &str) -> bool {
        let Ok(mut s) = self.state.lock() else { return false };
        if !s.has_room(merchant) {
            return false;
        }
        match s.reserved.get_mut(merchant) {
            Some(n) => *n += 1,
            None => {
                s.reserved.insert(merchant.to_string(), 1);
            }
        }
        s.reserved_total += 1;
        true
    }

    /// Gives back a place [`Self::try_reserve`] held for one of `merchant`'s, unused.
    pub(crate) fn unreserve(&self, merchant: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.unreserve(merchant);
        }
    }

    /// Queues `due` in a place [`Self::try_reserve`] held for one of `merchant`'s (whatever the
    /// room now), unless it is already claimed; the place is used either way. Gives back what
    /// it did not queue.
    pub(crate) fn push_reserved(&self, merchant: &str, due: T) -> Result<(), T> {
        let Ok(mut s) = self.state.lock() else { return Err(due) };
        s.unreserve(merchant);
        self.push_unclaimed(s, due)
    }

    /// Whether the event's delivery is claimed in memory: queued, or in flight until its
    /// record.
    pub(crate) fn holds(&self, key: &EventKey) -> bool {
        self.state.lock().is_ok_and(|s| s.claimed.contains(key))
    }

    /// Queues what the poller read in a read that began at `since` (see [`Self::since`]),
    /// except deliveries finished after that: the read may predate their record. Gives back
    /// what it did not queue.
    pub(crate) fn push_polled(&self, due: T, since: u64) -> Result<(), T> {
        let stale =
            self.state.lock().is_ok_and(|s| s.finished.get(&due.event().key).is_some_and(|&at| at > since));
        if stale {
            return Err(due);
        }
        self.try_push(due)
    }

    /// The release sequence a poll's read starts at.
    pub(crate) fn since(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.released)
    }

    /// After a poll that began at `since`: releases up to it are visible to every later read.
    pub(crate) fn forget_finished(&self, since: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.finished.retain(|_, at| *at > since);
        }
    }

    /// The next delivery in turn of a merchant with fewer than `max_in_flight` popped and not
    /// yet released.
    pub(crate) fn pop(&self, max_in_flight: usize) -> Option<T> {
        self.state.lock().ok()?.waiting.pop(max_in_flight)
    }

    /// Called once the delivery's outcome is recorded in the store: its worker's turn and its
    /// claim end together ([`Self::attempted`] and [`Self::unclaim`] in one).
    pub(crate) fn release(&self, key: &EventKey) {
        if let Ok(mut s) = self.state.lock() {
            s.waiting.finish(&key.merchant);
            s.unclaim(key);
        }
    }

    /// Called when a worker is done with one of `merchant`'s, before its outcome is recorded:
    /// the merchant's turn is free for its next one, while the claim stays until
    /// [`Self::unclaim`].
    pub(crate) fn attempted(&self, merchant: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.waiting.finish(merchant);
        }
    }

    /// Called once the delivery's outcome is recorded in the store: from now on a read of the
    /// store sees the record, and the delivery may be queued again (a retry that came due).
    pub(crate) fn unclaim(&self, key: &EventKey) {
        if let Ok(mut s) = self.state.lock() {
            s.unclaim(key);
        }
    }

    /// Takes everything still waiting (the dispatcher is stopping): none of it was started.
    pub(crate) fn take_waiting(&self) -> Vec<T> {
        self.state
            .lock()
            .map_or_else(|_| Vec::new(), |mut s| std::iter::from_fn(|| s.waiting.pop(usize::MAX)).collect())
    }

    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().map_or(0, |s| s.waiting.len())
    }

    pub(crate) fn room(&self) -> usize {
        self.state.lock().map_or(0, |s| QUEUE_CAPACITY.saturating_sub(s.waiting.len()))
    }
}
