//! The admin API's role: listings and details of events (with deliveries, attempts, plugin
//! runs and the amount read from a body), held ordered keys, replays and skips.

use async_trait::async_trait;
use serde::Serialize;

use crate::event::{EventKey, Hop};
use crate::queue::AttemptInfo;
use crate::step::PluginRunInfo;
use crate::StoreError;

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
    /// Events per page (clamped to 1..=1000).
    pub limit: usize,
    /// Page after this (received_at_ms, merchant, scope, id) cursor, newest first.
    pub before: Option<(i64, String, String, String)>,
}

/// An event as listed.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    /// The sender's event id.
    pub id: String,
    /// Owning merchant.
    pub merchant: String,
    /// De-duplication scope (the endpoint path unless endpoints share a `dedup_scope`).
    pub scope: String,
    /// Endpoint path.
    pub endpoint: String,
    /// The event's `type`, when it is a string.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Its [`EventStatus`](crate::EventStatus), as stored.
    pub status: String,
    /// Quarantine, drop or failure reason.
    pub reason: Option<String>,
    /// Arrival, unix ms.
    pub received_at_ms: i64,
    /// Tags plugins put on it.
    pub tags: Vec<String>,
    /// Who forced a replay of it although it was quarantined, and when.
    pub forced_by: Option<String>,
    /// `data.amount` and `data.currency` of the body as received, when it has them.
    pub amount: Option<Amount>,
}

/// A payment's amount as PayFlow sends it: in the currency's smallest unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Amount {
    /// In the smallest unit (2500 PKR is 25.00 rupees).
    pub value: i64,
    /// Three upper-case letters, when the event says.
    pub currency: Option<String>,
}

/// Bodies the events list looks into for an [`Amount`]; larger ones are listed without one,
/// so a page of the list never reads more than `limit` × this. PayFlow's events are ~300 bytes.
pub const AMOUNT_BODY_LIMIT: usize = 64 * 1024;

impl Amount {
    /// `data.amount` (an integer) and `data.currency` of a JSON body, if it has them. Never
    /// fails: anything else (not JSON, no amount, a fraction) is `None`.
    pub fn of(body: &[u8]) -> Option<Amount> {
        if body.len() > AMOUNT_BODY_LIMIT {
            return None;
        }
        let event: serde_json::Value = serde_json::from_slice(body).ok()?;
        let data = event.get("data")?;
        Some(Amount {
            value: data.get("amount")?.as_i64()?,
            currency: data.get("currency").and_then(|c| c.as_str()).map(str::to_string),
        })
    }
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

/// An event's plugin step as shown.
#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    /// pending, done or dead.
    pub status: String,
    /// Times it ran.
    pub attempts: u32,
    /// Next run, unix ms (pending only).
    pub next_attempt_at_ms: Option<i64>,
    /// Why its last run failed (the runs' records say which plugin and how), or `waiting: …`
    /// while a plugin of its chain has no version yet.
    pub error: Option<String>,
    /// What the endpoint's routes matched, when it has routes (empty: none did).
    pub routes: Option<Vec<String>>,
}

/// An ordering key held back by its head event: the oldest unfinished event with that key,
/// failing (retrying) or dead. Later events with the key wait for it; other keys do not.
#[derive(Debug, Clone, Serialize)]
pub struct HeldKey {
    /// Owning merchant.
    pub merchant: String,
    /// The key's value.
    pub key: String,
    /// The head event's id.
    pub event_id: String,
    /// The head event's de-duplication scope.
    pub scope: String,
    /// The head event's status: `queued` (retrying) or `dead` (held until an operator skips
    /// or replays it).
    pub status: String,
    /// Attempts made on the head (its deliveries' most, or its plugin step's).
    pub attempts: u32,
    /// When the head is tried next, unix ms (while it retries).
    pub next_attempt_at_ms: Option<i64>,
    /// Events with this key waiting behind the head.
    pub waiting: u64,
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
    /// Its ordering key, while it has one (ordered upstreams; released by a skip).
    pub order_key: Option<String>,
    /// Its plugin step, when its endpoint has plugins.
    pub plugin_step: Option<StepInfo>,
    /// Deliveries.
    pub deliveries: Vec<DeliveryInfo>,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptInfo>,
    /// Plugin runs, oldest first.
    pub plugin_runs: Vec<PluginRunInfo>,
}

/// What the admin API reads and replays.
#[async_trait]
pub trait AdminQueries: Send + Sync + 'static {
    /// Lists events, newest first.
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    /// The keys of the events with sender id `id`, narrowed to a merchant and a scope when
    /// given; at most `limit`, in key order. How the admin API resolves a partial address.
    async fn find_events(
        &self,
        merchant: Option<&str>,
        scope: Option<&str>,
        id: &str,
        limit: usize,
    ) -> Result<Vec<EventKey>, StoreError>;

    /// One event with its deliveries and attempts.
    async fn get_event(&self, key: &EventKey) -> Result<Option<EventDetail>, StoreError>;

    /// Makes an event's deliveries pending again (attempts reset), entering at `first_hop`
    /// if it has none (e.g. a quarantined event). An event with a plugin step, or replayed
    /// into [`Hop::Plugins`], replays from that step: the deliveries it created are removed,
    /// and the plugins decide again. `forced_by` (who forced the replay of a quarantined
    /// event, and when) is kept on the event for good. False when the event is not found. The
    /// rows are due at [`replayed_due_at`](crate::replayed_due_at)`(now_ms)`, so that an attempt or a step under way
    /// leaves them alone.
    async fn replay(
        &self,
        key: &EventKey,
        first_hop: &Hop,
        now_ms: i64,
        forced_by: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Ordering keys whose head event is failing or dead, oldest first, of `merchant` when
    /// given; at most `limit`.
    async fn held_keys(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<HeldKey>, StoreError>;

    /// Skips a dead event in its key's order: it keeps its status and can be replayed, but no
    /// longer holds later events with its key back (nor will it, replayed). False when the
    /// event is not found, not dead, or has no ordering key.
    async fn skip_in_order(&self, key: &EventKey) -> Result<bool, StoreError>;
}
