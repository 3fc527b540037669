//! An event as the store keeps it: its key (merchant, scope, id), its number, its status and
//! the rule that settles a status from its deliveries' ([`settled_status`], and the one SQL
//! expression both backends read it with, `event_status!`), the stored event and its first hop.
//! It must never let two backends disagree on a status: the rule is written once, here.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

/// Where a stored event lives. A sender's ids are unique only among its own events, so an id
/// is de-duplicated within its merchant's *scope*: by default the endpoint it arrived on (a
/// GitHub delivery id never collides with a PayFlow event id on another endpoint); endpoints
/// that receive the same stream share a scope by naming it (`dedup_scope`).
///
/// Its parts are shared, so a clone is a reference count, not three allocations: every stage
/// keeps the key of each event it holds (ingress's hand-offs, the delivery queue's claims and
/// its record of what finished, each attempt), and with its parts copied each clone cost three
/// allocations, most of them freed on another thread than the one that made them
/// (bench/RESULTS.md, issue 21's twenty-fourth look). Read its parts through it (`key.id`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(Arc<KeyParts>);

/// The parts of an [`EventKey`].
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KeyParts {
    /// Owning merchant.
    pub merchant: String,
    /// De-duplication scope within the merchant.
    pub scope: String,
    /// The sender's event id.
    pub id: String,
}

impl EventKey {
    /// The key of event `id` in `merchant`'s de-duplication scope `scope`.
    pub fn new(merchant: impl Into<String>, scope: impl Into<String>, id: impl Into<String>) -> Self {
        EventKey(Arc::new(KeyParts { merchant: merchant.into(), scope: scope.into(), id: id.into() }))
    }
}

impl std::ops::Deref for EventKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KeyParts { merchant, scope, id } = &*self.0;
        f.debug_struct("EventKey").field("merchant", merchant).field("scope", scope).field("id", id).finish()
    }
}

impl Serialize for EventKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// An event's number in the store that holds it: its row's own key, in arrival order. The
/// store hands it out with the event (its write's answer, its due reads) and takes it back with
/// the event's attempts ([`Attempt::event_seq`](crate::Attempt::event_seq)), to find the event's rows by it instead of by
/// the key. A key's place in the key's index is anywhere (ids come in no order), so in a
/// database of many events that lookup is a random read; a number's is at the end, where the
/// recent rows are (bench/RESULTS.md, issue 21's twenty-second look). It means nothing to
/// another store and never comes from a sender; a store still checks the key on the rows it
/// finds by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventSeq(pub i64);

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Stored, deliveries pending (queue mode).
    Queued,
    /// Every delivery succeeded.
    Delivered,
    /// A delivery failed for good; replay to try again.
    Dead,
    /// Authentic but invalid: kept with the reason, not delivered.
    Quarantined,
    /// Stored; the endpoint has no upstream.
    Stored,
    /// Proxy mode: a request is forwarding it now.
    Forwarding,
    /// Proxy mode: the last forward failed; the sender's retry forwards it again.
    Failed,
    /// A plugin dropped it (the reason is kept); nothing is delivered.
    Dropped,
    /// No route of its endpoint took it, and the endpoint has no default `upstream` (the
    /// reason says what it was); kept, and replayable once a route would take it.
    Unrouted,
}

impl EventStatus {
    /// Every status.
    pub const ALL: [EventStatus; 9] = [
        EventStatus::Queued,
        EventStatus::Delivered,
        EventStatus::Dead,
        EventStatus::Quarantined,
        EventStatus::Stored,
        EventStatus::Forwarding,
        EventStatus::Failed,
        EventStatus::Dropped,
        EventStatus::Unrouted,
    ];

    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Delivered => "delivered",
            EventStatus::Dead => "dead",
            EventStatus::Quarantined => "quarantined",
            EventStatus::Stored => "stored",
            EventStatus::Forwarding => "forwarding",
            EventStatus::Failed => "failed",
            EventStatus::Dropped => "dropped",
            EventStatus::Unrouted => "unrouted",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        EventStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// An event's status from its deliveries' statuses (`pending`, `delivered`, `dead`): dead if
/// any is dead, delivered once all are, else queued. `None` for an event without deliveries,
/// which keeps its status (stored, quarantined, dropped). The one rule every backend applies
/// after an attempt or a replay; the policy lives here, not in a backend's queries.
pub fn settled_status<'a>(deliveries: impl IntoIterator<Item = &'a str>) -> Option<EventStatus> {
    let (mut any, mut dead, mut unfinished) = (false, false, false);
    for status in deliveries {
        any = true;
        dead |= status == "dead";
        unfinished |= status != "delivered";
    }
    match (any, dead, unfinished) {
        (false, _, _) => None,
        (true, true, _) => Some(EventStatus::Dead),
        (true, false, true) => Some(EventStatus::Queued),
        (true, false, false) => Some(EventStatus::Delivered),
    }
}

/// An event's status as every backend reports it, an SQL expression over a row of `events`
/// (named `events`, not aliased); its deliveries are those whose `event_seq` is its `seq`.
/// Neither backend rewrites an unordered event's row when its deliveries succeed: a row that
/// says `queued` is `delivered` once the event has deliveries and every one of them is,
/// [`settled_status`]'s "delivered once all are", read instead of written. Every other status
/// is the row's own: one written at insert, by a plugin step, by a dead delivery (which any
/// backend writes), by the settle of an ordered event (whose row the ordered scans read,
/// [`ordering`](crate::ordering)), or by a replay (which also resets or removes the deliveries, so none is left
/// delivered behind a `queued` row). Rewriting the row at each delivery cost a queue-mode event
/// a second copy of its row, body included (bench/RESULTS.md).
#[macro_export]
macro_rules! event_status {
    () => {
        "(CASE WHEN events.status = 'queued'
                AND EXISTS (SELECT 1 FROM deliveries sd WHERE sd.event_seq = events.seq)
                AND NOT EXISTS (SELECT 1 FROM deliveries sd
                                WHERE sd.event_seq = events.seq AND sd.status <> 'delivered')
           THEN 'delivered' ELSE events.status END)"
    };
}

/// An event as every stage after verification sees it: ingress stores it, the plugin step
/// and the deliveries carry it (embedded, never copied field by field), and the plugins get it
/// as their WIT `event` record through one conversion (`payflow-plugins`).
#[derive(Debug, Clone)]
pub struct Event {
    /// Its key: the sender's id within its merchant's de-duplication scope.
    pub key: EventKey,
    /// Endpoint path it arrived on.
    pub endpoint: String,
    /// `type`, when it is a string.
    pub event_type: Option<String>,
    /// The raw body, byte for byte as the sender signed it (shared, not copied, between the
    /// store's write and the hand-offs).
    pub body: Bytes,
    /// Arrival time, unix milliseconds.
    pub received_at_ms: i64,
    /// Id of the ingress request that stored it, carried into the plugin and delivery logs.
    pub request_id: String,
    /// Whether it has an ordering key ([`NewEvent::order_key`](crate::NewEvent::order_key)): only then does an outcome of
    /// its deliveries other than a dead one write its row ([`Attempt::ordered`](crate::Attempt::ordered)).
    pub ordered: bool,
}

/// Where a stored event goes after the acknowledgement: the steps run in this order, stored →
/// plugins → deliveries, and an event enters at the first its endpoint has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// The endpoint's plugins decide first; their step creates the deliveries.
    Plugins,
    /// Straight to this upstream.
    Upstream(String),
}
