//! payflow-turns: the order in which a store's commits take waiting writes, shared fairly
//! between their owners by what the writes weigh, never first come first served. Both backends
//! batch many callers' writes into one commit, and every caller waits for its whole batch:
//! taken first come first served, one owner's backlog of heavy writes fills the batches another
//! owner's light write waits on.
//!
//! The writer takes next the first write of the owner that has had the least weight written
//! while it waited (start-time fair queueing, as the plugin scheduler shares its threads), and
//! an owner that starts waiting again starts level with those already waiting, with no credit
//! saved up. A batch is filled in that order up to a weight ([`Turns::take_into`]), so an owner
//! waits behind about one of another's writes, not behind all of them in one commit.
//!
//! What a write weighs and whose it is are the caller's to say (an event's bytes and its
//! merchant, a plugin step's records, nobody's for shared bookkeeping): what that buys is
//! measured in bench/RESULTS.md (forty-second to forty-fourth looks).
//!
//! One owner's writes keep their order: a plugin step goes to the store after the steps whose
//! kv writes it read, and those are always its own merchant's. This crate must never reorder
//! one owner's writes, nor look inside a write.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};

/// Writes of type `T` waiting, in turn between owners of type `O` (see the crate docs).
pub struct Turns<O, T> {
    /// Owners with something waiting. Ordered, so that owners level on weight take turns in
    /// one order run after run.
    waiting: BTreeMap<O, Waiting<T>>,
}

struct Waiting<T> {
    /// The weight of this owner's writes taken since it started waiting, plus where it started
    /// (the least of those already waiting then).
    served: u64,
    writes: VecDeque<(usize, T)>,
}

impl<O, T> Default for Turns<O, T> {
    fn default() -> Self {
        Turns { waiting: BTreeMap::new() }
    }
}

impl<O: Ord + Clone, T> Turns<O, T> {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Writes waiting, in all.
    pub fn len(&self) -> usize {
        self.waiting.values().map(|w| w.writes.len()).sum()
    }

    /// Queues `write`, weighing `weight`, last of its owner's (`owner_of` reads it from the
    /// write, which runs for every write: the owner is copied only when it starts waiting).
    pub fn push(&mut self, weight: usize, write: T, owner_of: impl Fn(&T) -> &O) {
        if let Some(waiting) = self.waiting.get_mut(owner_of(&write)) {
            waiting.writes.push_back((weight, write));
            return;
        }
        let level = self.waiting.values().map(|w| w.served).min().unwrap_or(0);
        let owner = owner_of(&write).clone();
        self.waiting.insert(owner, Waiting { served: level, writes: VecDeque::from([(weight, write)]) });
    }

    /// Takes the next write in turn: the first of the owner with the least weight served, the
    /// first in order among equals (`min_by_key` keeps the first of equal keys).
    pub fn pop(&mut self) -> Option<T> {
        self.take_next(|_| true)
    }

    /// Moves writes into `batch` in turn until it holds `max_len` writes or the next would take
    /// the weight moved past `budget` (the first always goes, whatever it weighs).
    pub fn take_into(&mut self, batch: &mut Vec<T>, max_len: usize, budget: usize) {
        let mut taken = 0;
        while batch.len() < max_len {
            let fits = |weight| {
                if taken > 0 && taken + weight > budget {
                    return false;
                }
                taken += weight;
                true
            };
            match self.take_next(fits) {
                Some(write) => batch.push(write),
                None => break,
            }
        }
    }

    /// Takes the next write in turn if `fits` its weight; one look for the owner in turn.
    fn take_next(&mut self, fits: impl FnOnce(usize) -> bool) -> Option<T> {
        let (owner, waiting) = self.waiting.iter_mut().min_by_key(|(_, w)| w.served)?;
        let &(weight, _) = waiting.writes.front()?;
        if !fits(weight) {
            return None;
        }
        let (_, write) = waiting.writes.pop_front()?;
        waiting.served += weight as u64;
        if waiting.writes.is_empty() {
            let owner = owner.clone();
            self.waiting.remove(&owner);
        }
        Some(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owner = Option<Box<str>>;

    fn owner(name: &str) -> Owner {
        Some(name.into())
    }

    type Queue = Turns<Owner, (Owner, &'static str)>;

    /// Queues a write named `name` of `owner`'s.
    fn push(queue: &mut Queue, owner: Owner, records: usize, name: &'static str) {
        queue.push(records, (owner, name), |(owner, _)| owner);
    }

    /// Queues `count` writes of `name`'s, each weighing `weight` and named after its owner.
    fn push_many(queue: &mut Queue, name: &'static str, count: usize, weight: usize) {
        for _ in 0..count {
            push(queue, owner(name), weight, name);
        }
    }

    fn drain(queue: &mut Queue) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop().map(|(_, name)| name)).collect()
    }

    #[test]
    fn a_light_owner_waits_behind_one_heavy_write_not_the_heavy_owners_backlog() {
        let mut queue = Turns::default();
        push_many(&mut queue, "big", 20, 1000);
        push(&mut queue, owner("small"), 3, "small");
        let order = drain(&mut queue);
        assert_eq!(order.iter().position(|&w| w == "small"), Some(1), "{order:?}");
        assert_eq!(order.len(), 21);
    }

    #[test]
    fn owners_share_by_weight_not_by_writes() {
        let mut queue = Turns::default();
        push_many(&mut queue, "heavy", 4, 10);
        push_many(&mut queue, "light", 40, 1);
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
        push_many(&mut queue, "busy", 10, 100);
        for _ in 0..5 {
            queue.pop();
        }
        // Another comes now, with much less served than busy's 500 so far: it starts level
        // with busy, so the two alternate instead of the newcomer taking all its writes first.
        push_many(&mut queue, "new", 3, 100);
        assert_eq!(drain(&mut queue), ["busy", "new", "busy", "new", "busy", "new", "busy", "busy"]);
    }

    #[test]
    fn counts_follow_the_turns_and_level_owners_go_in_order() {
        let mut queue = Turns::default();
        assert!(queue.is_empty());
        push(&mut queue, owner("b"), 7, "b");
        push(&mut queue, owner("a"), 5, "a");
        assert_eq!(queue.len(), 2);
        // Level, so the first in order goes first.
        assert_eq!(queue.pop().map(|(_, name)| name), Some("a"));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop().map(|(_, name)| name), Some("b"));
        assert!(queue.is_empty());
        assert_eq!(queue.pop(), None);
    }

    /// The names `take_into` moves into one batch.
    fn one_batch(queue: &mut Queue, max_len: usize, budget: usize) -> Vec<&'static str> {
        let mut batch = Vec::new();
        queue.take_into(&mut batch, max_len, budget);
        batch.into_iter().map(|(_, name)| name).collect()
    }

    #[test]
    fn a_batch_stops_before_the_write_that_would_pass_its_budget_but_always_takes_one() {
        let mut queue = Turns::default();
        push(&mut queue, owner("big"), 300, "huge");
        push_many(&mut queue, "big", 3, 40);
        push(&mut queue, owner("small"), 1, "small");
        // Heavier than the budget alone, yet taken (nothing would ever take it otherwise), and
        // alone: even the lightest write would pass the budget after it.
        assert_eq!(one_batch(&mut queue, 10, 100), ["huge"]);
        // Small's turn first (big has had 300); then 1 + 40 + 40 fit in 100, another 40 would not.
        assert_eq!(one_batch(&mut queue, 10, 100), ["small", "big", "big"]);
        assert_eq!(one_batch(&mut queue, 10, 100), ["big"]);
        assert!(queue.is_empty());
        assert_eq!(one_batch(&mut queue, 10, 100), Vec::<&str>::new());
    }

    #[test]
    fn a_batch_holds_at_most_its_length_whatever_the_budget() {
        let mut queue = Turns::default();
        for _ in 0..5 {
            push(&mut queue, None, 1, "shared");
        }
        assert_eq!(one_batch(&mut queue, 3, usize::MAX).len(), 3);
        assert_eq!(queue.len(), 2);
    }
}
