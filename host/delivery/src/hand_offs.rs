//! How a row a writer of this gateway stores reaches its workers ([`HandOff`]): the writer
//! (ingress, the first hop of a new event; a plugin step, the deliveries it creates) hands it
//! over itself once it is stored, either stored claimed (a store shared by replicas) or with
//! the hand-off marked under way ([`HandOffs`]): the events whose rows are being stored, which
//! the store pollers leave alone until the hand-off is done.
//!
//! Why: a row is visible to the pollers from its commit, and its writer hands it off a moment
//! later. A poll in between queued it, and if a worker delivered it and released it before the
//! hand-off came, the hand-off queued it again: the upstream got it twice (seen at 4,000
//! events/s as more deliveries than events). Only a store that does not claim rows needs
//! this: on one that does, the row is stored claimed and no read can take it.
//!
//! It must never be the reason a row is not delivered: a hand-off always ends (its guard is
//! dropped, also when the request is abandoned), and a row skipped meanwhile is read again by
//! the next poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use payflow_store::EventKey;

/// How a row a writer of this gateway stores reaches this gateway's workers (an event's first
/// hop from ingress, a delivery from its plugin step), by whether replicas share the store.
#[derive(Clone)]
pub enum HandOff {
    /// Straight away: this gateway alone drains the store. The hand-off is under way in
    /// [`HandOffs`] (shared by ingress and the dispatcher) from before the write until it is
    /// done, so that the store poller, which sees the row from its commit, leaves it alone
    /// meanwhile.
    Direct(Arc<HandOffs>),
    /// Replicas share the store ([`payflow_store::DeliveryQueue::claims`]): stored claimed by
    /// this gateway for `lease_ms` (as a poll's read would claim it) and handed over, when
    /// its lane's queue has room; otherwise left to whichever replica's poll claims it, and
    /// this gateway's poller told to read.
    Claimed {
        /// How long the claim lasts (`[store] lease_ms`): if this gateway dies holding it,
        /// another replica takes the row then.
        lease_ms: i64,
    },
}

impl HandOff {
    /// Whether a hand-off of `key`'s rows is under way: a poll must not queue them.
    pub(crate) fn under_way(&self, key: &EventKey) -> bool {
        match self {
            HandOff::Direct(hand_offs) => hand_offs.under_way(key),
            // Stored claimed: no read gets the row while its writer holds it.
            HandOff::Claimed { .. } => false,
        }
    }
}

/// See the module docs. Shared by a gateway's ingress and its dispatcher.
#[derive(Default)]
pub struct HandOffs {
    /// Events with a hand-off under way, and how many (two requests may carry the same id).
    under_way: Mutex<HashMap<EventKey, u32>>,
}

impl HandOffs {
    /// Marks a hand-off of `key`'s rows as under way until the guard is dropped: begin before
    /// the write that makes them visible, drop after handing them off.
    pub fn begin(&self, key: &EventKey) -> UnderWay<'_> {
        *self.lock().entry(key.clone()).or_default() += 1;
        UnderWay { hand_offs: self, key: key.clone() }
    }

    /// Whether a hand-off of `key`'s rows is under way: a poll must not queue them.
    pub(crate) fn under_way(&self, key: &EventKey) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EventKey, u32>> {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A hand-off under way (see [`HandOffs::begin`]); it ends when dropped.
pub struct UnderWay<'a> {
    hand_offs: &'a HandOffs,
    key: EventKey,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        let mut under_way = self.hand_offs.lock();
        if let Some(n) = under_way.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                under_way.remove(&self.key);
            }
        }
    }
}
