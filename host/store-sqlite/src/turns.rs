//! The order in which the writer takes the writes of one priority: shared fairly between their
//! owners, by what the writes weigh, never first come first served.
//!
//! Acknowledgements weigh their event's bytes and belong to its merchant: one merchant sending
//! large events delays another's acknowledgement by about one of its own, not by the whole
//! backlog of them in one commit; first come first served, another merchant's acks waited
//! seconds behind commits of up to sixty-four 256 KiB events (bench/RESULTS.md, forty-third
//! look). Background writes weigh their records: a merchant's plugin steps are its own, and
//! the dispatcher's bookkeeping (the deliveries' attempts, which mix merchants in one write)
//! and the store's own upkeep share one owner; queued first come first served, a merchant
//! whose plugin writes a thousand kv keys a run held another merchant's deliveries seconds
//! behind its offer (forty-second look).
//!
//! The writer takes next the first write of the owner that has had the least weight written
//! while it waited (start-time fair queueing, as the plugin scheduler shares its threads), and
//! an owner that starts waiting again starts level with those already waiting, with no credit
//! saved up.
//!
//! One owner's writes keep their order: a step goes to the store after the steps whose kv
//! writes it read, and those are always its own merchant's. This module must never reorder
//! one owner's writes, nor look inside a write.

use std::collections::{BTreeMap, VecDeque};

/// Whose a write is, for [`Turns`]: a merchant's, or shared (`None`).
pub(crate) type Owner = Option<Box<str>>;

/// See the module docs.
pub(crate) struct Turns<T> {
    /// Owners with something waiting. Ordered, so that owners level on weight take turns in
    /// one order run after run.
    waiting: BTreeMap<Owner, Waiting<T>>,
}

struct Waiting<T> {
    /// The weight of this owner's writes taken since it started waiting, plus where it started
    /// (the least of those already waiting then).
    served: u64,
    writes: VecDeque<(usize, T)>,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Turns { waiting: BTreeMap::new() }
    }
}

impl<T> Turns<T> {
    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Writes waiting, in all.
    pub(crate) fn len(&self) -> usize {
        self.waiting.values().map(|w| w.writes.len()).sum()
    }

    /// Queues `write`, weighing `weight`, last of its owner's (`owner_of` reads it from the
    /// write, which runs for every write: the owner is copied only when it starts waiting).
    pub(crate) fn push(&mut self, weight: usize, write: T, owner_of: impl Fn(&T) -> &Owner) {
        if let Some(waiting) = self.waiting.get_mut(owner_of(&write)) {
            waiting.writes.push_back((weight, write));
            return;
        }
        let level = self.waiting.values().map(|w| w.served).min().unwrap_or(0);
        let owner = owner_of(&write).clone();
        self.waiting.insert(owner, Waiting { served: level, writes: VecDeque::from([(weight, write)]) });
    }

    /// The weight of the write [`Turns::pop`] would take: the first of the owner
    /// with the least weight served, the first in order among equals (`min_by_key` keeps the
    /// first of equal keys).
    pub(crate) fn front_weight(&self) -> Option<usize> {
        let (_, waiting) = self.waiting.iter().min_by_key(|(_, w)| w.served)?;
        waiting.writes.front().map(|&(weight, _)| weight)
    }

    /// Takes the next write in turn (the owner [`Turns::front_weight`] reads from).
    pub(crate) fn pop(&mut self) -> Option<T> {
        let (owner, waiting) = self.waiting.iter_mut().min_by_key(|(_, w)| w.served)?;
        let (weight, write) = waiting.writes.pop_front()?;
        waiting.served += weight as u64;
        if waiting.writes.is_empty() {
            let owner = owner.clone();
            self.waiting.remove(&owner);
        }
        Some(write)
    }

    /// Moves writes into `batch` in turn until it holds `max_len` writes or the next would take
    /// the weight moved past `budget` (the first always goes, whatever it weighs).
    pub(crate) fn take_into(&mut self, batch: &mut Vec<T>, max_len: usize, budget: usize) {
        let mut taken = 0;
        while let Some(weight) = self.front_weight() {
            if batch.len() >= max_len || (taken > 0 && taken + weight > budget) {
                break;
            }
            taken += weight;
            batch.extend(self.pop());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str) -> Owner {
        Some(name.into())
    }

    type Queue = Turns<(Owner, &'static str)>;

    /// Queues a write named `name` of `owner`'s.
    fn push(queue: &mut Queue, owner: Owner, records: usize, name: &'static str) {
        queue.push(records, (owner, name), |(owner, _)| owner);
    }

    fn drain(queue: &mut Queue) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop().map(|(_, name)| name)).collect()
    }

    #[test]
    fn a_light_owner_waits_behind_one_heavy_write_not_the_heavy_owners_backlog() {
        let mut queue = Turns::default();
        for _ in 0..20 {
            push(&mut queue, owner("big"), 1000, "big");
        }
        push(&mut queue, owner("small"), 3, "small");
        let order = drain(&mut queue);
        assert_eq!(order.iter().position(|&w| w == "small"), Some(1), "{order:?}");
        assert_eq!(order.len(), 21);
    }

    #[test]
    fn owners_share_by_weight_not_by_writes() {
        let mut queue = Turns::default();
        for _ in 0..4 {
            push(&mut queue, owner("heavy"), 10, "heavy");
        }
        for _ in 0..40 {
            push(&mut queue, owner("light"), 1, "light");
        }
        let order = drain(&mut queue);
        // After its first write, each of heavy's waits for ten of light's.
        let heavy: Vec<usize> =
            order.iter().enumerate().filter(|(_, &w)| w == "heavy").map(|(i, _)| i).collect();
        assert_eq!(heavy, [0, 11, 22, 33], "{order:?}");
    }

    #[test]
    fn one_owners_writes_keep_their_order() {
        let mut queue = Turns::default();
        for (i, write) in ["a1", "a2", "a3"].into_iter().enumerate() {
            push(&mut queue, owner("a"), 1 + i * 100, write);
            push(&mut queue, None, 1, "shared");
        }
        let order: Vec<_> = drain(&mut queue).into_iter().filter(|w| w.starts_with('a')).collect();
        assert_eq!(order, ["a1", "a2", "a3"]);
    }

    #[test]
    fn an_owner_that_starts_waiting_again_has_no_credit_saved_up() {
        let mut queue = Turns::default();
        // Busy alone for a while: a weight of a thousand served.
        for _ in 0..10 {
            push(&mut queue, owner("busy"), 100, "busy");
        }
        for _ in 0..5 {
            queue.pop();
        }
        // Another comes now, with much less served than busy's 500 so far: it starts level
        // with busy, so the two alternate instead of the newcomer taking all its writes first.
        for _ in 0..3 {
            push(&mut queue, owner("new"), 100, "new");
        }
        assert_eq!(drain(&mut queue), ["busy", "new", "busy", "new", "busy", "new", "busy", "busy"]);
    }

    #[test]
    fn counts_and_the_front_follow_the_turns() {
        let mut queue = Turns::default();
        assert!(queue.is_empty());
        assert_eq!(queue.front_weight(), None);
        push(&mut queue, owner("b"), 7, "b");
        push(&mut queue, owner("a"), 5, "a");
        assert_eq!(queue.len(), 2);
        // Level, so the first in order goes first.
        assert_eq!(queue.front_weight(), Some(5));
        assert_eq!(queue.pop().map(|(_, name)| name), Some("a"));
        assert_eq!(queue.front_weight(), Some(7));
        assert_eq!(queue.pop().map(|(_, name)| name), Some("b"));
        assert!(queue.is_empty());
        assert_eq!(queue.pop(), None);
    }
}
