//! The ingest role: a new event stored with its first hop (the write an acknowledgement waits
//! on), de-duplicated on its key, and proxy mode's forwards.

use async_trait::async_trait;

use crate::event::{Event, EventKey, EventSeq, EventStatus, Hop};
use crate::queue::Attempt;
use crate::StoreError;

/// A verified event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event, as every later step carries it.
    pub event: Event,
    /// Initial status.
    pub status: EventStatus,
    /// Quarantine reason.
    pub reason: Option<String>,
    /// Headers of interest (signature headers are not among them).
    pub headers: Vec<(String, String)>,
    /// Queue mode: where it goes next, due now; `None` when it stays (quarantined, no
    /// upstream, proxy mode).
    pub first_hop: Option<Hop>,
    /// Its ordering key, when its endpoint delivers to an ordered upstream: an ordered
    /// upstream takes it only once every earlier event of its merchant with this key is
    /// finished there (see [`DeliveryQueue::due_ordered_deliveries`](crate::DeliveryQueue::due_ordered_deliveries)).
    pub order_key: Option<String>,
    /// Set when this gateway hands the first hop to its own workers: a store that claims rows
    /// ([`DeliveryQueue::claims`](crate::DeliveryQueue::claims)) writes the hop's row already claimed by this gateway until
    /// then (unix ms), as if its poll had read it. No other replica takes the row meanwhile,
    /// and no poll of this gateway's reads back what it holds in memory: on PostgreSQL that
    /// read was a statement per poll (the claim, with the body). Stores that do not claim
    /// ignore it.
    pub claim_until_ms: Option<i64>,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// New: stored and durable, with its number.
    New(EventSeq),
    /// Already known; nothing was written. Its current status.
    Duplicate(EventStatus),
}

/// What ingress writes: new events (de-duplicated), and proxy mode's forwards.
#[async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Stores a new event and its pending deliveries in one durable commit, unless an event
    /// with the same key (merchant, scope, id) exists, in which case nothing is written.
    async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError>;

    /// Proxy mode: takes the right to forward an event whose last forward failed or whose
    /// forwarding lease (taken before `stale_before_ms`) ran out. True when taken.
    async fn claim_forward(
        &self,
        key: &EventKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Proxy mode: records a forward's attempt and sets the event delivered or failed.
    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError>;
}
