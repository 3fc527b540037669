//! Who holds a listener's connections, and who gives one up when a new client needs it.
//!
//! A connection cap that stops `accept` when full hands the listener to whoever fills it: a
//! client that opens a thousand connections and trickles header bytes on each (slowloris)
//! keeps real senders waiting in the kernel's queue, however short the header timeout, because
//! it reopens each one as soon as it is cut. So `accept` never stops. Each connection is either
//! *busy* (a request is being answered) or *waiting* (for a request's headers: new, trickling,
//! or kept alive between requests). A new connection is admitted if its client address is
//! under `per_client` and the listener under `max`; otherwise the client's own (or, at `max`,
//! anyone's) connection that has been waiting longest is closed to make room. Only when every
//! such connection is busy is the newcomer closed instead. A flood from one address thus costs
//! that address, and an honest sender, whose connections wait for milliseconds, is never the
//! longest-waiting one.
//!
//! This module only keeps the table and picks whom to close; it never reads or writes a socket
//! (the listener does, see [`crate::ingress`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// The caps of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Connections at once.
    pub max: usize,
    /// Connections at once from one client address.
    pub per_client: usize,
}

struct Entry {
    client: IpAddr,
    /// `None` while busy; else since when it has been waiting for a request.
    waiting_since: Option<Instant>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
    next_id: u64,
    evicted: u64,
    refused: u64,
}

/// See the module docs.
#[derive(Clone)]
pub struct Connections {
    caps: Caps,
    table: Arc<Mutex<Table>>,
}

/// An admitted connection: marks it busy or waiting, and leaves the table when dropped.
pub struct Admitted {
    id: u64,
    table: Arc<Mutex<Table>>,
    /// Notified when the connection must close to make room for another.
    pub close: Arc<Notify>,
}

/// How many connections were closed to make room, and how many newcomers were turned away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Open now.
    pub open: usize,
    /// Waiting connections closed for a newcomer.
    pub evicted: u64,
    /// Newcomers closed because every connection they could replace was busy.
    pub refused: u64,
}

impl Connections {
    /// An empty table with these caps (each at least 1).
    pub fn new(caps: Caps) -> Self {
        let caps = Caps { max: caps.max.max(1), per_client: caps.per_client.max(1) };
        Connections { caps, table: Arc::default() }
    }

    /// Admits a new connection from `client`, closing the longest-waiting connection of that
    /// client (over `per_client`) or of anyone (at `max`) to make room; `None` when every one
    /// it could replace is busy.
    pub fn admit(&self, client: IpAddr) -> Option<Admitted> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.per_client.get(&client).copied().unwrap_or(0) >= self.caps.per_client
            && !table.evict_longest_waiting(Some(client))
        {
            table.refused += 1;
            return None;
        }
        if table.entries.len() >= self.caps.max && !table.evict_longest_waiting(None) {
            table.refused += 1;
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = Arc::new(Notify::new());
        table.entries.insert(id, Entry { client, waiting_since: Some(Instant::now()), close: close.clone() });
        *table.per_client.entry(client).or_default() += 1;
        Some(Admitted { id, table: self.table.clone(), close })
    }

    /// What the table holds and has done.
    pub fn counts(&self) -> Counts {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Counts { open: table.entries.len(), evicted: table.evicted, refused: table.refused }
    }
}

impl Table {
    /// Closes the waiting connection (of `client`, if given) that has waited longest, and
    /// takes it out of the table; false if there is none.
    fn evict_longest_waiting(&mut self, client: Option<IpAddr>) -> bool {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| client.is_none_or(|c| e.client == c))
            .filter_map(|(id, e)| e.waiting_since.map(|since| (since, *id)))
            .min();
        let Some((_, id)) = oldest else { return false };
        if let Some(entry) = self.remove(id) {
            // `notify_one` stores the wake-up if the connection is not polling right now.
            entry.close.notify_one();
        }
        self.evicted += 1;
        true
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&entry.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&entry.client);
            }
        }
        Some(entry)
    }
}

impl Admitted {
    /// A request is being answered: the connection cannot be evicted.
    pub fn busy(&self) {
        self.set_waiting(None);
    }

    /// The answer is sent: the connection waits for its next request (keep-alive).
    pub fn waiting(&self) {
        self.set_waiting(Some(Instant::now()));
    }

    fn set_waiting(&self, since: Option<Instant>) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = table.entries.get_mut(&self.id) {
            entry.waiting_since = since;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_client_over_its_share_loses_its_own_longest_waiting_connection() {
        let table = Connections::new(Caps { max: 10, per_client: 2 });
        let first = table.admit(ip(2)).unwrap();
        let second = table.admit(ip(2)).unwrap();
        let other = table.admit(ip(1)).unwrap();
        let third = table.admit(ip(2)).unwrap();
        // The first of 127.0.0.2's was told to close; nobody else was.
        assert!(futures_ready(&first.close));
        assert!(
            !futures_ready(&second.close) && !futures_ready(&other.close) && !futures_ready(&third.close)
        );
        assert_eq!(table.counts(), Counts { open: 3, evicted: 1, refused: 0 });
    }

    #[test]
    fn at_the_cap_the_longest_waiting_goes_and_busy_ones_stay() {
        let table = Connections::new(Caps { max: 2, per_client: 10 });
        let busy = table.admit(ip(1)).unwrap();
        busy.busy();
        let waiting = table.admit(ip(2)).unwrap();
        let newcomer = table.admit(ip(3)).unwrap();
        assert!(futures_ready(&waiting.close));
        assert!(!futures_ready(&busy.close));
        // Both left are busy: the next newcomer is turned away.
        newcomer.busy();
        assert!(table.admit(ip(4)).is_none());
        assert_eq!(table.counts(), Counts { open: 2, evicted: 1, refused: 1 });
        // A connection that finished its request waits again, and can make room.
        busy.waiting();
        let fourth = table.admit(ip(4));
        assert!(fourth.is_some() && futures_ready(&busy.close));
        assert_eq!(table.counts(), Counts { open: 2, evicted: 2, refused: 1 });
        // An evicted connection that ends later does not count twice.
        drop((waiting, busy));
        assert_eq!(table.counts().open, 2);
    }

    /// Whether a `notify_one` is stored for this connection.
    fn futures_ready(close: &Notify) -> bool {
        let notified = close.notified();
        tokio::pin!(notified);
        let waker = std::task::Waker::noop();
        let ready = notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready();
        if ready {
            close.notify_one(); // put it back for the next look
        }
        ready
    }

    use std::future::Future as _;
}
