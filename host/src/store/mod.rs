//! The durable store, behind one trait so a PostgreSQL backend can follow SQLite.
//!
//! What the store promises: a write that returns `Ok` is on disk (fsync'd) — the gateway
//! acknowledges a webhook only after it; de-duplication by (merchant, event id) is atomic; the
//! raw body is kept byte for byte; every row carries its merchant. What it must never do:
//! half-write (a failed write leaves nothing behind) or decide policy (retries, statuses are
//! chosen by the pipeline and the dispatcher and only recorded here).

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

/// A store that cannot serve the request. Ingress answers 503 so the sender retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the operation (locked, full, I/O error…).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store was shut down.
    #[error("store is closed")]
    Closed,
}

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
}

impl EventStatus {
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
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => EventStatus::Queued,
            "delivered" => EventStatus::Delivered,
            "dead" => EventStatus::Dead,
            "quarantined" => EventStatus::Quarantined,
            "stored" => EventStatus::Stored,
            "forwarding" => EventStatus::Forwarding,
            "failed" => EventStatus::Failed,
            _ => return None,
        })
    }
}

/// A verified event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Owning merchant.
    pub merchant: String,
    /// Event id (de-duplication key within the merchant).
    pub id: String,
    /// Endpoint path it arrived on.
    pub endpoint: String,
    /// `type`, when it is a string.
    pub event_type: Option<String>,
    /// Initial status.
    pub status: EventStatus,
    /// Quarantine reason.
    pub reason: Option<String>,
    /// The raw body, byte for byte (shared, not copied, with the hand-off to delivery).
    pub body: Bytes,
    /// Headers of interest (signature headers are not among them).
    pub headers: Vec<(String, String)>,
    /// Arrival time, unix milliseconds.
    pub received_at_ms: i64,
    /// Upstreams to deliver to, each as a pending delivery due now.
    pub deliveries: Vec<String>,
    /// Request id carried from ingress to delivery logs.
    pub request_id: String,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// New: stored and durable.
    New,
    /// Already known; nothing was written. Its current status.
    Duplicate(EventStatus),
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// Owning merchant.
    pub merchant: String,
    /// Event id.
    pub event_id: String,
    /// Upstream name.
    pub upstream: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The event's raw body.
    pub body: Bytes,
    /// The event's type.
    pub event_type: Option<String>,
    /// Request id of the ingress request that stored it.
    pub request_id: String,
    /// When it became due (unix ms).
    pub next_attempt_at_ms: i64,
}

/// Where a page of due deliveries ended: (next attempt time, merchant, event id).
pub type DueCursor = (i64, String, String);

impl DueDelivery {
    /// The cursor just after this delivery.
    pub fn cursor(&self) -> DueCursor {
        (self.next_attempt_at_ms, self.merchant.clone(), self.event_id.clone())
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Retry at this time (unix ms).
    Retry {
        /// When.
        next_at_ms: i64,
    },
    /// No more attempts.
    Dead,
}

/// One delivery attempt, to record.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Owning merchant.
    pub merchant: String,
    /// Event id.
    pub event_id: String,
    /// What happened, as the admin API shows it.
    pub info: AttemptInfo,
    /// What happens next.
    pub outcome: AttemptOutcome,
}

/// Filters for listing events. `merchant: None` means every merchant (operator).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this merchant's events.
    pub merchant: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Only this endpoint.
    pub endpoint: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Page after this (received_at_ms, merchant, id) cursor, newest first.
    pub before: Option<(i64, String, String)>,
}

/// An event as listed.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// Event id.
    pub id: String,
    /// Owning merchant.
    pub merchant: String,
    /// Endpoint path.
    pub endpoint: String,
    /// Type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Status.
    pub status: String,
    /// Quarantine or failure reason.
    pub reason: Option<String>,
    /// Arrival, unix ms.
    pub received_at_ms: i64,
}

/// A delivery as shown.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    /// Upstream name.
    pub upstream: String,
    /// pending, delivered or dead.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt, unix ms (pending only).
    pub next_attempt_at_ms: Option<i64>,
}

/// A delivery attempt as shown.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptInfo {
    /// Upstream name.
    pub upstream: String,
    /// 1-based attempt number.
    pub number: u32,
    /// Start, unix ms.
    pub at_ms: i64,
    /// Duration.
    pub duration_ms: i64,
    /// HTTP status.
    pub status_code: Option<u16>,
    /// Error, when no response.
    pub error: Option<String>,
    /// The start of the reply body.
    pub response: Option<String>,
}

/// An event with everything known about it.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    /// The listing fields.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The raw body (lossy UTF-8 for display; the stored bytes are exact).
    pub body: String,
    /// Headers of interest.
    pub headers: Vec<(String, String)>,
    /// Request id.
    pub request_id: String,
    /// Deliveries.
    pub deliveries: Vec<DeliveryInfo>,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptInfo>,
}

/// The durable store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new event and its pending deliveries in one durable commit, unless an event
    /// with the same (merchant, id) exists, in which case nothing is written.
    async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError>;

    /// Proxy mode: takes the right to forward an event whose last forward failed or whose
    /// forwarding lease (taken before `stale_before_ms`) ran out. True when taken.
    async fn claim_forward(
        &self,
        merchant: &str,
        id: &str,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Proxy mode: records a forward's attempt and sets the event delivered or failed.
    async fn finish_forward(&self, attempt: Attempt) -> Result<(), StoreError>;

    /// Pending deliveries to `upstream` due at `now_ms`, oldest first, after `cursor`.
    async fn due_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError>;

    /// Records an attempt and its outcome; updates the event's status.
    async fn record_attempt(&self, attempt: Attempt) -> Result<(), StoreError>;

    /// Lists events, newest first.
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    /// One event with its deliveries and attempts; `merchant: None` searches all merchants.
    async fn get_event(&self, merchant: Option<&str>, id: &str) -> Result<Option<EventDetail>, StoreError>;

    /// Makes an event's deliveries pending again (attempts reset), adding one to `upstream`
    /// if it has none (e.g. a quarantined event). False when the event is not found.
    async fn replay(
        &self,
        merchant: Option<&str>,
        id: &str,
        upstream: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Flushes and closes; later calls fail with `Closed`.
    async fn close(&self);
}
