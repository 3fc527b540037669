//! The order in which an upstream's workers take waiting deliveries: round robin between
//! merchants, and within a merchant between its endpoints, never first come first served. One
//! merchant's burst (or one endpoint's) then waits behind itself only: another's delivery is
//! next but one however long the burst. A merchant may also be held to a number of deliveries
//! in flight, so that when a step takes long (a plugin spinning to its deadline) the workers
//! left can still take the others' at once.
//!
//! This module only orders; it never looks inside what it queues.

use std::collections::{HashMap, VecDeque};

/// See the module docs.
pub struct FairQueue<T> {
    merchants: HashMap<String, Merchant<T>>,
    /// Merchants with something waiting, in turn order.
    turn: VecDeque<String>,
    len: usize,
}

struct Merchant<T> {
    endpoints: HashMap<String, VecDeque<T>>,
    /// Endpoints with something waiting, in turn order.
    turn: VecDeque<String>,
    waiting: usize,
    in_flight: usize,
}

impl<T> Default for Merchant<T> {
    fn default() -> Self {
        Merchant { endpoints: HashMap::new(), turn: VecDeque::new(), waiting: 0, in_flight: 0 }
    }
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue { merchants: HashMap::new(), turn: VecDeque::new(), len: 0 }
    }
}

impl<T> FairQueue<T> {
    /// Items waiting, in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Items of `merchant` waiting.
    pub fn waiting(&self, merchant: &str) -> usize {
        self.merchants.get(merchant).map_or(0, |m| m.waiting)
    }

    /// Queues `item` for the merchant and endpoint `names` reads from it, last of that endpoint's.
    pub fn push(&mut self, item: T, names: impl Fn(&T) -> (&str, &str)) {
        let queue = {
            // The names are borrowed from the item, since this runs for every delivery. They
            // are copied only the first time a merchant or endpoint is seen (entries are kept
            // once made: there are as many as configured endpoints) and when one starts waiting
            // again.
            let (merchant, endpoint) = names(&item);
            if !self.merchants.contains_key(merchant) {
                self.merchants.insert(merchant.to_string(), Merchant::default());
            }
            let m = self.merchants.get_mut(merchant).expect("inserted above");
            if m.waiting == 0 {
                self.turn.push_back(merchant.to_string());
            }
            if !m.endpoints.contains_key(endpoint) {
                m.endpoints.insert(endpoint.to_string(), VecDeque::new());
            }
            m.waiting += 1;
            let queue = m.endpoints.get_mut(endpoint).expect("inserted above");
            if queue.is_empty() {
                m.turn.push_back(endpoint.to_string());
            }
            queue
        };
        queue.push_back(item);
        self.len += 1;
    }

    /// The next item in turn of a merchant with fewer than `max_in_flight` taken and not yet
    /// [`finished`](Self::finish); `None` if every merchant with items waiting is at that cap.
    pub fn pop(&mut self, max_in_flight: usize) -> Option<T> {
        for _ in 0..self.turn.len() {
            let merchant = self.turn.pop_front()?;
            let Some(m) = self.merchants.get_mut(&merchant) else { continue };
            if m.in_flight >= max_in_flight {
                self.turn.push_back(merchant);
                continue;
            }
            let endpoint = m.turn.pop_front()?;
            let queue = m.endpoints.get_mut(&endpoint)?;
            let item = queue.pop_front()?;
            if !queue.is_empty() {
                m.turn.push_back(endpoint);
            }
            m.waiting -= 1;
            m.in_flight += 1;
            if m.waiting > 0 {
                self.turn.push_back(merchant);
            }
            self.len -= 1;
            return Some(item);
        }
        None
    }

    /// An item of `merchant` taken by [`pop`](Self::pop) is done.
    pub fn finish(&mut self, merchant: &str) {
        if let Some(m) = self.merchants.get_mut(merchant) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue<&'static str>, cap: usize) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop(cap)).collect()
    }

    #[test]
    fn merchants_take_turns_whatever_their_backlog() {
        let mut queue = FairQueue::default();
        for item in ["a1", "a2", "a3", "a4"] {
            queue.push(item, |_| ("a", "/a"));
        }
        queue.push("b1", |_| ("b", "/b"));
        queue.push("c1", |_| ("c", "/c"));
        assert_eq!(drain(&mut queue, usize::MAX), ["a1", "b1", "c1", "a2", "a3", "a4"]);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_merchants_endpoints_take_turns_within_its_share() {
        let mut queue = FairQueue::default();
        for item in ["x1", "x2", "x3"] {
            queue.push(item, |_| ("a", "/x"));
        }
        queue.push("y1", |_| ("a", "/y"));
        queue.push("b1", |_| ("b", "/b"));
        assert_eq!(drain(&mut queue, usize::MAX), ["x1", "b1", "y1", "x2", "x3"]);
    }

    #[test]
    fn a_merchant_at_its_in_flight_cap_waits_and_the_others_go_first() {
        let mut queue = FairQueue::default();
        for item in ["a1", "a2", "a3"] {
            queue.push(item, |_| ("a", "/a"));
        }
        assert_eq!(queue.pop(2), Some("a1"));
        assert_eq!(queue.pop(2), Some("a2"));
        assert_eq!(queue.pop(2), None, "a has two in flight");
        queue.push("b1", |_| ("b", "/b"));
        assert_eq!(queue.pop(2), Some("b1"));
        queue.finish("a");
        assert_eq!(queue.pop(2), Some("a3"));
        assert_eq!((queue.len(), queue.waiting("a")), (0, 0));
    }
}
