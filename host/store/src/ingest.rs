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

impl NewEvent {
    /// What storing this event weighs when a backend's commit takes waiting events in turn
    /// between merchants (`payflow-turns`): its body's bytes and about what its rows cost
    /// besides ([`ROW_BYTES`]).
    pub fn weight(&self) -> usize {
        ROW_BYTES + self.event.body.len()
    }
}

/// About what an event's rows cost besides its body, in bytes: their other columns, their index
/// entries and the hop's row. Only a weight for taking turns, not a measure.
pub const ROW_BYTES: usize = 512;

/// Events join one commit only until they weigh this much ([`NewEvent::weight`]; the first
/// always joins, whatever it weighs). Every acknowledgement waits for its whole commit: a
/// merchant sending 256 KiB events made commits of 8–17 MiB on SQLite, and another merchant's
/// ack p99 was 1.9–2.9 s; commits of 2 MiB made it 45–386 ms, and wrote more bytes a second
/// (bench/RESULTS.md, forty-third look). On PostgreSQL, statements of up to 16 MiB held it at
/// 9–13 s; 2 MiB made it 70–465 ms and cost the database a fifth less CPU per event (forty-fourth
/// look). Events of a few KB never reach it: a whole batch of 512 of them is under 2 MiB.
pub const EVENT_BYTES_PER_COMMIT: usize = 2 << 20;

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
