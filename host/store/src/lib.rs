//! payflow-store: the durable store's contract, split by role ([`Ingest`], [`DeliveryQueue`],
//! [`PluginStore`], [`AdminQueries`], [`Lifecycle`]; [`Store`] is all of them), the rules and
//! SQL both backends share ([`settled_status`], [`takes_outcome!`], [`ordering`]), and the
//! conformance suite every backend passes (`conformance`, feature `conformance`). The backends
//! are crates of their own: `payflow-store-sqlite` (embedded) and `payflow-store-postgres`
//! (replicas). This crate links no database.
//!
//! What the store promises: a write that returns `Ok` is on disk (fsync'd) — the gateway
//! acknowledges a webhook only after it; de-duplication by [`EventKey`] (merchant, scope, event
//! id) is atomic; the raw body is kept byte for byte; every row carries its event's whole key.
//! What it must never do: half-write (a failed write leaves nothing behind), decide policy
//! beyond [`settled_status`] (retries and statuses are chosen by the pipeline, the stage and
//! the dispatcher, and only recorded here), or know of HTTP, wasmtime or metrics.

#![forbid(unsafe_code)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod ordering;

use std::sync::Arc;

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

/// How much of the store a plugin's versions may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionBounds {
    /// Versions kept per plugin (at least 2: the active one and the one before it).
    pub max_versions: u32,
    /// Bytes (components and compiled code) all of a merchant's plugin versions may take.
    pub merchant_bytes: u64,
}

/// A version that would take a merchant's plugins over their storage quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the merchant's plugin versions would take {needed} bytes; the quota is {quota} ([plugins] merchant_storage_mb); delete a plugin or lower [plugins] max_versions")]
pub struct QuotaExceeded {
    /// What they would take with the new version.
    pub needed: u64,
    /// The quota.
    pub quota: u64,
}

/// Told how long each commit took: the gateway's metrics listen, so the store needs none.
pub trait CommitObserver: Send + Sync + 'static {
    /// One commit (one fsync) took `took`.
    fn committed(&self, took: std::time::Duration);
}

/// Nobody listening.
impl CommitObserver for () {
    fn committed(&self, _took: std::time::Duration) {}
}

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
/// the event's attempts ([`Attempt::event_seq`]), to find the event's rows by it instead of by
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
/// [`ordering`]), or by a replay (which also resets or removes the deliveries, so none is left
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

/// Whether a row of the queue (a delivery or a plugin step) takes the outcome of an attempt
/// begun at `begun_at_ms`: an SQL condition that the row, due at `due_at_ms`, was due when the
/// attempt began. An attempt can begin only once its row is due (ingress hands over rows due at
/// once; a reader claims only rows due by its own clock, which then stamps the attempt), so every
/// attempt's row takes it, except a row replayed while the attempt was under way: the replay
/// made it due after the attempt began ([`replayed_due_at`]). Without this, the outcome of what
/// was sent before the replay landed on the replayed row, and the replay was lost: the row said
/// delivered, and what the replay asked for was never sent. Every backend's record applies
/// this one rule.
///
/// The rule needs stamps that do not go back: the gateway's do not within one process when the
/// wall clock is stepped back by up to a minute (`payflow_clock::NonDecreasing`), so on one
/// box, the only way SQLite runs, the rule holds through such steps. Across replicas it is
/// only as good as their clocks agree: an attempt begun within the skew of a replay's moment
/// would still take it. So a store that claims rows (the replicas' store) also asks that the
/// row still hold the lease the attempt's claim took ([`Attempt::claimed_until_ms`]): a replay
/// ends the lease, and no clock decides that. A row made due by a replica whose clock is ahead
/// of the attempt's has the outcome set aside; the row is sent again, once.
#[macro_export]
macro_rules! takes_outcome {
    ($due_at_ms:literal, $begun_at_ms:literal) => {
        concat!($due_at_ms, " <= ", $begun_at_ms)
    };
}

/// When a row replayed at `now_ms` becomes due: a millisecond later, so that an attempt begun
/// in the replay's own millisecond, before it, still counts as begun before the replay and
/// leaves the replayed row alone ([`takes_outcome!`]).
pub fn replayed_due_at(now_ms: i64) -> i64 {
    now_ms + 1
}

/// What one of the queues holds (a merchant's deliveries to an upstream, or its events waiting
/// for their plugins): how many rows are pending, and since when the earliest is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backlog {
    /// Rows pending: due now, under way, or waiting to retry.
    pub pending: u64,
    /// When the earliest of them fell due (or falls due, when every one is waiting to retry).
    /// An attempt under way keeps its row due until its outcome is recorded, so an upstream
    /// (or a plugin) that is slow to answer shows here as well as a dispatcher that cannot keep up.
    pub earliest_due_ms: i64,
}

impl Backlog {
    /// How long the earliest pending row has been due at `now_ms`: how far the queue is behind.
    /// 0 when nothing is pending or nothing is due yet.
    pub fn behind_ms(&self, now_ms: i64) -> i64 {
        if self.pending == 0 {
            return 0;
        }
        (now_ms - self.earliest_due_ms).max(0)
    }
}

/// One merchant's deliveries to one upstream ([`DeliveryQueue::queue_depth`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueDepth {
    /// The upstream's name.
    pub upstream: String,
    /// The merchant whose deliveries these are.
    pub merchant: String,
    /// What is pending.
    pub backlog: Backlog,
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
    /// Whether it has an ordering key ([`NewEvent::order_key`]): only then does an outcome of
    /// its deliveries other than a dead one write its row ([`Attempt::ordered`]).
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
    /// finished there (see [`DeliveryQueue::due_ordered_deliveries`]).
    pub order_key: Option<String>,
    /// Set when this gateway hands the first hop to its own workers: a store that claims rows
    /// ([`DeliveryQueue::claims`]) writes the hop's row already claimed by this gateway until
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

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The event it delivers.
    pub event: Event,
    /// The event's number.
    pub seq: EventSeq,
    /// Upstream name.
    pub upstream: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The body a plugin gave this delivery, sent instead of the event's.
    pub body: Option<Bytes>,
    /// Headers a plugin added to this delivery.
    pub headers: Vec<(String, String)>,
    /// When it became due (unix ms).
    pub next_attempt_at_ms: i64,
    /// The end of the lease this gateway's read took on the row (unix ms), when the store
    /// claims rows ([`DeliveryQueue::claims`]); what [`DeliveryQueue::release_claims`] hands back.
    pub claimed_until_ms: Option<i64>,
}

impl DueDelivery {
    /// A new delivery of `event` (number `seq`), due at `at_ms`, with the event's body.
    pub fn new(event: Event, seq: EventSeq, upstream: String, at_ms: i64) -> Self {
        DueDelivery {
            event,
            seq,
            upstream,
            attempts: 0,
            body: None,
            headers: Vec::new(),
            next_attempt_at_ms: at_ms,
            claimed_until_ms: None,
        }
    }

    /// What to send.
    pub fn body(&self) -> &Bytes {
        self.body.as_ref().unwrap_or(&self.event.body)
    }
}

/// An event whose plugin step is due.
#[derive(Debug, Clone)]
pub struct DueStep {
    /// The event, as it arrived.
    pub event: Event,
    /// The event's number.
    pub seq: EventSeq,
    /// Times the step ran before and failed.
    pub attempts: u32,
    /// When it became due (unix ms).
    pub next_attempt_at_ms: i64,
    /// As [`DueDelivery::claimed_until_ms`].
    pub claimed_until_ms: Option<i64>,
}

/// A due row this gateway claimed and will not start (it is stopping), to hand back with
/// [`DeliveryQueue::release_claims`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The row's event.
    pub key: EventKey,
    /// The event's number ([`DueDelivery::seq`]): a store keyed by it finds the row by it,
    /// checked against the key.
    pub seq: EventSeq,
    /// The delivery's upstream; `None` for the event's plugin step.
    pub upstream: Option<String>,
    /// The end of the lease the claim took ([`DueDelivery::claimed_until_ms`]): a row whose
    /// lease has since passed to another gateway is not this one's to hand back.
    pub until_ms: i64,
}

impl DueDelivery {
    /// This gateway's claim on the row, if the store claimed it.
    pub fn claim(&self) -> Option<Claim> {
        let until_ms = self.claimed_until_ms?;
        Some(Claim {
            key: self.event.key.clone(),
            seq: self.seq,
            upstream: Some(self.upstream.clone()),
            until_ms,
        })
    }
}

impl DueStep {
    /// This gateway's claim on the row, if the store claimed it.
    pub fn claim(&self) -> Option<Claim> {
        let until_ms = self.claimed_until_ms?;
        Some(Claim { key: self.event.key.clone(), seq: self.seq, upstream: None, until_ms })
    }
}

/// Where a page of due deliveries or steps ended: (due time, event key).
pub type DueCursor = (i64, EventKey);

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Retry at this time (unix ms).
    Retry {
        /// The retry's due time, unix ms.
        next_at_ms: i64,
    },
    /// No more attempts.
    Dead,
}

impl AttemptOutcome {
    /// The row a delivery is left in after an attempt with this outcome, as every backend
    /// stores it: (status, next attempt time when it is retried).
    pub fn delivery_row(self) -> (&'static str, Option<i64>) {
        match self {
            AttemptOutcome::Delivered => ("delivered", None),
            AttemptOutcome::Dead => ("dead", None),
            AttemptOutcome::Retry { next_at_ms } => ("pending", Some(next_at_ms)),
        }
    }

    /// The row a plugin step is left in after a run with this outcome: `done` when it
    /// finished, else as [`Self::delivery_row`].
    pub fn step_row(self) -> (&'static str, Option<i64>) {
        match self {
            AttemptOutcome::Delivered => ("done", None),
            other => other.delivery_row(),
        }
    }
}

/// One delivery attempt, to record.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The event's key.
    pub key: EventKey,
    /// The event's number, when the caller has it: an attempt of a delivery from the queue
    /// ([`DueDelivery::seq`]) does, a proxy-mode forward does not. The store finds the
    /// event's rows by it when it is there, and by the key when not.
    pub event_seq: Option<EventSeq>,
    /// Whether the event has an ordering key ([`Event::ordered`]). A delivered outcome of an
    /// event without one writes nothing on the event's row, so the store neither looks the
    /// row up nor locks it: the event reads as delivered once all its deliveries are
    /// ([`event_status!`]). Only the ordered scans, which read an ordered event's own row,
    /// need it written. A caller that cannot tell says true, which costs only that lookup.
    pub ordered: bool,
    /// The end of the lease its delivery's claim took ([`DueDelivery::claimed_until_ms`]),
    /// when the store claims rows and the caller has it. A store that claims takes the outcome
    /// only on a row that still holds that very lease: a replay (which ends the lease) since
    /// the attempt began sets it aside whatever the clocks of the replicas say
    /// ([`takes_outcome!`]). `None` leaves only the clock's rule.
    pub claimed_until_ms: Option<i64>,
    /// What happened, as the admin API shows it.
    pub info: AttemptInfo,
    /// What happens next.
    pub outcome: AttemptOutcome,
}

/// A delivery a plugin step created.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Upstream name.
    pub upstream: String,
    /// The body to send instead of the event's raw body.
    pub body: Option<Bytes>,
    /// Headers to add.
    pub headers: Vec<(String, String)>,
    /// Set when the gateway that ran the step starts the delivery itself: a store that claims
    /// rows ([`DeliveryQueue::claims`]) writes it already claimed by that gateway until then
    /// (unix ms), as [`NewEvent::claim_until_ms`] does an event's first hop, so that no poll
    /// (this gateway's or another replica's) reads back what its workers hold. Stores that do
    /// not claim ignore it.
    pub claim_until_ms: Option<i64>,
}

impl NewDelivery {
    /// A delivery to `upstream` of the event's own body, unclaimed.
    pub fn to(upstream: impl Into<String>) -> Self {
        NewDelivery { upstream: upstream.into(), body: None, headers: Vec::new(), claim_until_ms: None }
    }
}

/// One plugin's run in a plugin step, as recorded and shown.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRunInfo {
    /// Plugin name.
    pub plugin: String,
    /// The version that ran.
    pub version: u32,
    /// Which attempt of the plugin step.
    pub attempt: u32,
    /// Start, unix ms.
    pub at_ms: i64,
    /// Wall-clock time, instantiation included.
    pub duration_us: i64,
    /// Fuel used.
    pub fuel_used: u64,
    /// `continue`, `drop`, or the failure's reason (`trap`, `timeout`, `fuel_exhausted`…).
    pub outcome: String,
    /// The drop reason, or what the failure said.
    pub detail: Option<String>,
    /// The run's log: (level, message).
    pub logs: Vec<(String, String)>,
}

/// A value a plugin stored, committed with its step.
#[derive(Debug, Clone)]
pub struct KvWrite {
    /// Plugin name.
    pub plugin: String,
    /// Key within the plugin's space.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Vec<u8>,
    /// The plugin's count of runs that wrote, at the run that wrote this (see the plugins'
    /// `kv_space`). Steps may commit out of their runs' order; the store keeps, per key, the
    /// write of the highest version, so an earlier run's write never replaces a later one's.
    pub version: i64,
}

/// A key of a plugin's key-value space as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Key within the plugin's space.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Vec<u8>,
    /// The version of the write that stored it ([`KvWrite::version`]; 0 before versions).
    pub version: i64,
    /// The gateway whose write stored it ([`PluginStore::kv_writer`]; 0 for a store that
    /// does not share kv, a write from before writers were kept, or a write of no gateway's).
    pub writer: i64,
}

impl KvEntry {
    /// The write that stored it.
    pub fn stamp(&self) -> KvStamp {
        KvStamp { version: self.version, writer: self.writer }
    }
}

/// Which write a key's value came from: its version and its writer. Two gateways' versions
/// may be equal (each counts its own runs), so the writer tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvStamp {
    /// [`KvWrite::version`].
    pub version: i64,
    /// [`PluginStore::kv_writer`] of the gateway that wrote it.
    pub writer: i64,
}

/// A key a step's run read, and what it found there: the write its value came from, or
/// nothing. The step commits only while every key its runs read still holds what they found
/// ([`StepRecorded::Stale`]), so a run never writes over a change it did not see (another
/// gateway's, a repair), nor builds on a write that was never applied (a run reads the last
/// run's writes before their step commits, and that step may fail or be set aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvReadOf {
    /// Plugin name.
    pub plugin: String,
    /// Key within the plugin's space.
    pub key: String,
    /// The write the run read; `None` when the key was absent.
    pub found: Option<KvStamp>,
}

/// This gateway's turn on a plugin's key-value space among the gateways sharing the store
/// ([`PluginStore::kv_turn`]): while it is held, another gateway asking for a turn on the space
/// waits. Dropping it gives the turn up; the store also gives it up by itself after a while, so
/// a gateway that stops running the plugin never holds the others back for long.
///
/// A turn only spares runs made again: it must never be what keeps an update from being lost.
/// The store's check of what a step's runs read ([`PluginStep::kv_read`]) does that, turn or
/// not (a turn may have run out, or been taken by a gateway that does not ask for turns).
pub struct KvTurn {
    waited: bool,
    /// Dropped when the turn is given up.
    release: Option<tokio::sync::oneshot::Sender<()>>,
    /// Answered (or dropped) once the store has given the turn up.
    given_up: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl KvTurn {
    /// A turn taken after waiting for another gateway's (`waited`), or at once. The store gives
    /// it up when `release` is dropped, then answers `given_up`.
    pub fn new(
        waited: bool,
        release: tokio::sync::oneshot::Sender<()>,
        given_up: tokio::sync::oneshot::Receiver<()>,
    ) -> Self {
        KvTurn { waited, release: Some(release), given_up: Some(given_up) }
    }

    /// Whether another gateway held the turn when this one was asked for.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Gives the turn up, and returns once the store has: a turn asked for next, by this
    /// gateway or another, then never waits for this one. (Dropped, it is given up as well, a
    /// moment later.)
    pub async fn give_up(mut self) {
        drop(self.release.take());
        if let Some(given_up) = self.given_up.take() {
            let _ = given_up.await;
        }
    }
}

/// Where a read of a plugin's key-value space stands in the store's history: what a gateway
/// keeps with its copy of the space, and gives back to the store to learn what changed since
/// ([`PluginStore::kv_changed_since`]). Only the store that made it reads its fields; a store
/// one gateway owns leaves them 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvChanges {
    /// How many times the space was changed other than by this gateway's own steps: by other
    /// gateways sharing the store, by the admin API's repairs, by anything else that writes to
    /// the store. It never reads the same again once it moved, so while it reads the same,
    /// nobody else changed the stored space and a gateway may run the plugin on its copy.
    pub elsewhere: i64,
    /// How many changes were made to the space, by anyone, that a read of what changed cannot
    /// list: keys deleted (they leave nothing to read), and writes the store could not mark as
    /// changes. The keys written since a read can be read alone, but when this moved, the space
    /// is read whole.
    pub unlisted: i64,
    /// The point in the store's history the read saw: every change made after it is later.
    pub since: i64,
}

/// A plugin's key-value space as one read found it ([`PluginStore::load_kv_space`]), or the
/// part of it that changed since an earlier read ([`PluginStore::kv_changed_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvRead {
    /// Its keys, in no order.
    pub entries: Vec<KvEntry>,
    /// Where the read stands.
    pub changes: KvChanges,
}

/// The result of an event's plugin step, written in one commit: the runs, the plugins' kv
/// writes, the step's own outcome, the event's new status and the deliveries it created. The
/// chain gives no kv writes for a failed step, so a run that failed leaves nothing behind but
/// its record.
#[derive(Debug, Clone)]
pub struct PluginStep {
    /// The event's key.
    pub key: EventKey,
    /// The event's number, when the caller has it ([`DueStep::seq`], or the insert's in proxy
    /// mode). The store finds the event's rows by it when it is there, and by the key when
    /// not, as for [`Attempt::event_seq`].
    pub event_seq: Option<EventSeq>,
    /// Which run of the step this was (1-based).
    pub number: u32,
    /// When it started, unix ms: the created deliveries are due then.
    pub at_ms: i64,
    /// What becomes of the step: delivered (it finished), retry or dead.
    pub step: AttemptOutcome,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Each plugin that ran.
    pub runs: Vec<PluginRunInfo>,
    /// kv writes, applied with the step. The chain gives none for a step that failed.
    pub kv: Vec<KvWrite>,
    /// What its runs read from kv (each key once, with what the first read found): the step
    /// is recorded only while those keys still hold what the runs found.
    pub kv_read: Vec<KvReadOf>,
    /// The event's status after the step.
    pub status: EventStatus,
    /// Its reason (drop reason, failure).
    pub reason: Option<String>,
    /// Deliveries to create, due now.
    pub deliveries: Vec<NewDelivery>,
    /// Tags plugins put on the event.
    pub tags: Vec<String>,
    /// What its endpoint's routes matched (`route[0]: crm`, `upstream: legacy`), when the
    /// endpoint has routes; empty when none did.
    pub routes: Option<Vec<String>>,
    /// The end of the lease the step's claim took ([`DueStep::claimed_until_ms`]), as for
    /// [`Attempt::claimed_until_ms`]. `None` for a step with no row (proxy mode) or a store
    /// that does not claim.
    pub claimed_until_ms: Option<i64>,
}

/// What became of a recorded plugin step's decision ([`DeliveryQueue::finish_plugin_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRecorded {
    /// Its kv writes, the deliveries it created and its event's status are in the store.
    Applied,
    /// Its event was replayed (or its claim passed to another reader) since it began: only its
    /// runs were kept, and the replay's own step decides.
    SetAside,
    /// A key its runs read ([`PluginStep::kv_read`]) holds another write than they found:
    /// nothing of the step was recorded, and its step row is as it was. Its caller runs the
    /// step again on the space as stored now. Recorded, the step would have overwritten a
    /// change its runs never saw (two replicas adding to one total, each from the same old
    /// value; a repair), or kept a value built on a write never applied (a ledger's total
    /// counting an event whose step failed after the ledger ran).
    Stale,
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone)]
pub struct NewPluginVersion {
    /// Owning merchant.
    pub merchant: String,
    /// Plugin name.
    pub name: String,
    /// The component.
    pub wasm: Bytes,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// The engine's compiled artifact, so a restart need not compile again.
    pub compiled: Vec<u8>,
    /// The fingerprint of the engine that compiled it: only an engine with the same one (the
    /// same wasmtime build and settings) may load it.
    pub engine: String,
    /// `file` (from the config's path) or `upload`.
    pub source: String,
    /// When, unix ms.
    pub created_at_ms: i64,
    /// Whether it becomes the active version. A canary's is stored beside the active one
    /// instead ([`PluginStore::set_canary`] then gives it its share of events).
    pub activate: bool,
}

/// A plugin's canary: a stored version that runs on `percent` of the events (chosen by event
/// id) beside the active version, or how the last one ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canary {
    /// The version tried.
    pub version: u32,
    /// Share of events it runs on, 1 to 100.
    pub percent: u8,
    /// `running`, or how it ended: `promoted`, `rolled_back`, `cancelled`.
    pub state: String,
    /// Why it ended (a rollback's failure rates, or what replaced it).
    pub reason: Option<String>,
    /// When it started or ended, unix ms.
    pub at_ms: i64,
}

impl Canary {
    /// Whether it still takes its share of events.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// A stored plugin version.
#[derive(Debug, Clone)]
pub struct StoredPlugin {
    /// Its version number (1, 2, …, per merchant and name).
    pub version: u32,
    /// The component.
    pub wasm: Bytes,
    /// The compiled artifact of the engine asked for, if that engine saved one. Replicas of
    /// different builds (an upgrade one replica at a time) each keep their own.
    pub compiled: Option<Vec<u8>>,
    /// Its hash, size, source and time, as listed.
    pub info: PluginVersionInfo,
}

/// A plugin version as listed.
#[derive(Debug, Clone, Serialize)]
pub struct PluginVersionInfo {
    /// Version number.
    pub version: u32,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Size of the component.
    pub size: usize,
    /// `file` or `upload`.
    pub source: String,
    /// When it was stored, unix ms.
    pub created_at_ms: i64,
}

/// A plugin's versions and which one is active.
#[derive(Debug, Clone, Default)]
pub struct PluginHistory {
    /// The active version, if any.
    pub active: Option<u32>,
    /// SHA-256 of the config file last imported.
    pub file_sha256: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<PluginVersionInfo>,
    /// Its canary, running or the last one's end.
    pub canary: Option<Canary>,
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
    /// Its [`EventStatus`], as stored.
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

/// A delivery attempt as shown.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptInfo {
    /// Upstream name.
    pub upstream: String,
    /// 1-based attempt number.
    pub number: u32,
    /// Start, unix ms.
    pub at_ms: i64,
    /// How long the attempt took, ms.
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

/// The durable queue the dispatcher drains: due deliveries, their attempts, plugin steps.
#[async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Pending deliveries to `upstream` due at `now_ms`, oldest first, after `cursor`.
    async fn due_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError>;

    /// Like [`due_deliveries`](Self::due_deliveries), for an ordered upstream: a delivery of an
    /// event with an ordering key is due only while no earlier event of its merchant with that
    /// key (in arrival order) is unfinished for this upstream: a delivery to it pending or
    /// dead, or its plugin step (which decides the deliveries) pending or dead.
    async fn due_ordered_deliveries(
        &self,
        upstream: &str,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError>;

    /// Records attempts and their outcomes, and updates their events' statuses: all of them
    /// in one write, or none (so a caller that keeps them on an error records none twice).
    /// Attempts of one delivery apply in the order given. An attempt begun before its delivery
    /// was replayed is kept in the event's history and changes nothing else
    /// ([`takes_outcome!`]). Shared, so that a caller can keep the attempts (to record them
    /// again) if the store refuses them, without a copy.
    async fn record_attempts(&self, attempts: Vec<Arc<Attempt>>) -> Result<(), StoreError>;

    /// Records one attempt: [`record_attempts`](Self::record_attempts) of one.
    async fn record_attempt(&self, attempt: Arc<Attempt>) -> Result<(), StoreError> {
        self.record_attempts(vec![attempt]).await
    }

    /// Events whose plugin step is due at `now_ms`, oldest first, after `cursor`.
    async fn due_steps(
        &self,
        now_ms: i64,
        cursor: Option<&DueCursor>,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError>;

    /// Records a plugin step (see [`PluginStep`]). A step begun before its event was replayed
    /// keeps only its runs ([`takes_outcome!`]), and says so: the deliveries it decided were
    /// not created, and must not be sent.
    ///
    /// The step takes its place among the store's writes when the returned future is first
    /// polled, and a step is checked ([`PluginStep::kv_read`]) and written after those that
    /// took theirs before it (or beside them, in one batch that accounts for their writes): a
    /// gateway hands a step to the store once the steps whose kv writes its runs read have
    /// taken theirs, so it finds those writes there.
    async fn finish_plugin_step(&self, step: PluginStep) -> Result<StepRecorded, StoreError>;

    /// Pending deliveries (due now or later) to each of `upstreams`, by merchant; an upstream
    /// with none pending has no entry.
    async fn queue_depth(&self, upstreams: Vec<String>) -> Result<Vec<QueueDepth>, StoreError>;

    /// Pending plugin steps (due now or later), by merchant; a merchant with none pending has
    /// no entry.
    async fn steps_pending(&self) -> Result<Vec<(String, Backlog)>, StoreError>;

    /// True when several gateways share this store: then a due row is claimed by the read that
    /// returns it (until its outcome is recorded, or its lease runs out), and a gateway must
    /// not hand a row it wrote to its own workers without reading (claiming) it first.
    fn claims(&self) -> bool {
        false
    }

    /// Hands back rows this gateway claimed but will not start (it is stopping), so that the
    /// other gateways take them at once rather than when the lease runs out. A claim whose
    /// lease another gateway has taken since is left alone. Nothing to do for a store that
    /// makes no claims.
    async fn release_claims(&self, _claims: Vec<Claim>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Plugin versions and the plugins' key-value spaces, per merchant.
#[async_trait]
pub trait PluginStore: Send + Sync + 'static {
    /// A plugin's key-value space.
    async fn load_kv(&self, merchant: &str, plugin: &str) -> Result<Vec<KvEntry>, StoreError>;

    /// Whether other gateways may write the plugins' key-value spaces (they share the store):
    /// then a gateway's copy of a space is good only with what [`PluginStore::kv_changed_since`]
    /// tells laid over it. False by default: a store one gateway owns.
    fn shares_kv(&self) -> bool {
        false
    }

    /// A plugin's key-value space for its runs: its keys and, read at the same moment, where
    /// the read stands ([`KvChanges`]). A store that
    /// [`PluginStore::shares_kv`] must count every change but this gateway's own steps':
    /// other gateways' steps and every admin repair (whichever gateway made it). The default
    /// is for a store one gateway owns: nobody else writes to it, and that gateway's repairs
    /// drop its copy of the space themselves.
    async fn load_kv_space(&self, merchant: &str, plugin: &str) -> Result<KvRead, StoreError> {
        Ok(KvRead { entries: self.load_kv(merchant, plugin).await?, changes: KvChanges::default() })
    }

    /// What others changed in a plugin's key-value space since a read that stood at `since`
    /// ([`KvRead::changes`]), and the keys `keys` whatever changed: `Some` with the keys they
    /// wrote since and those of `keys` it holds, as stored now, and where this read stands;
    /// `None` when the space must be read whole again (a change it cannot list was made since,
    /// such as a delete: [`KvChanges::unlisted`]). A store that [`PluginStore::shares_kv`] must
    /// tell every change but this gateway's own steps': other gateways' steps and every admin
    /// repair (whichever gateway made it). Its answer may hold keys that did not change, never
    /// leave out one that did. One cheap read, made by the
    /// first run of a plugin that uses kv after each of its steps when gateways share the
    /// store: before, the whole space was read again. `keys` are those the gateway's copy may
    /// hold another value of (written by runs whose steps were [`StepRecorded::Stale`]). The
    /// default is for a store one gateway owns: nobody else writes to it, and that gateway's
    /// repairs drop its copy of the space themselves. Its steps are stale only when built on a
    /// write of its own that was never applied, which is rare: then `keys` are read with the
    /// whole space.
    async fn kv_changed_since(
        &self,
        _merchant: &str,
        _plugin: &str,
        since: KvChanges,
        keys: &[String],
    ) -> Result<Option<KvRead>, StoreError> {
        Ok(keys.is_empty().then(|| KvRead { entries: Vec::new(), changes: since }))
    }

    /// The number this gateway's kv writes are stamped with ([`KvStamp::writer`]): unique
    /// among the gateways sharing the store. 0 for a store one gateway owns.
    fn kv_writer(&self) -> i64 {
        0
    }

    /// Takes this gateway's turn on a plugin's key-value space ([`KvTurn`]), waiting while
    /// another gateway holds it, but not for long: `None` when the wait ran out, or when this
    /// gateway already holds as many turns as the store allows (the caller runs without one).
    /// The store gives the turn up by itself after `hold_at_most`, dropped or not. A gateway
    /// asks only while its steps on the space keep finding keys changed by another
    /// ([`StepRecorded::Stale`]). The default is for a store one gateway owns: nobody to take
    /// turns with.
    async fn kv_turn(
        &self,
        _merchant: &str,
        _plugin: &str,
        _hold_at_most: std::time::Duration,
    ) -> Result<Option<KvTurn>, StoreError> {
        Ok(None)
    }

    /// Deletes one key of a plugin's key-value space (an operator's or merchant's repair).
    /// False when it was not there.
    async fn delete_kv(&self, merchant: &str, plugin: &str, key: &str) -> Result<bool, StoreError>;

    /// Stores a new version of a plugin and makes it the active one; `file_sha256` records
    /// the config file it was imported from. In the same transaction, the plugin's versions
    /// beyond `bounds.max_versions` are deleted, oldest first (never the new one nor the one
    /// it replaces); if the merchant's versions would then take more than
    /// `bounds.merchant_bytes`, nothing is written. Returns the new version's number.
    async fn add_plugin_version(
        &self,
        version: NewPluginVersion,
        file_sha256: Option<String>,
        bounds: VersionBounds,
    ) -> Result<Result<u32, QuotaExceeded>, StoreError>;

    /// The active version of a plugin, with its bytes and the compiled artifact of the engine
    /// whose fingerprint is `engine`.
    async fn active_plugin(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError>;

    /// A stored version, as [`PluginStore::active_plugin`] gives the active one.
    async fn stored_plugin(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError>;

    /// Starts a canary (state `running`) or records how it ended. Ending one that is not the
    /// running canary of that version changes nothing and answers false (another replica
    /// ended it first).
    async fn set_canary(&self, merchant: &str, name: &str, canary: Canary) -> Result<bool, StoreError>;

    /// Every plugin's canary row: (merchant, name, canary). How a replica follows a canary
    /// another started or ended.
    async fn canaries(&self) -> Result<Vec<(String, String, Canary)>, StoreError>;

    /// Every plugin's active version: (merchant, name, version). How a replica follows what
    /// another activated (see `Registry::follow_store`).
    async fn active_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError>;

    /// A plugin's versions.
    async fn plugin_history(&self, merchant: &str, name: &str) -> Result<PluginHistory, StoreError>;

    /// Makes `version` the active one (it must exist). False when it does not.
    async fn activate_plugin(&self, merchant: &str, name: &str, version: u32) -> Result<bool, StoreError>;

    /// Saves (or replaces) the compiled artifact of a version for the engine whose fingerprint
    /// is `engine`: one engine's artifact never replaces another's, so two builds sharing a
    /// store do not compile the same version again and again.
    async fn save_compiled(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
        compiled: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Deletes a plugin: its versions and its kv. False when it had none.
    async fn delete_plugin(&self, merchant: &str, name: &str) -> Result<bool, StoreError>;
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
    /// rows are due at [`replayed_due_at`]`(now_ms)`, so that an attempt or a step under way
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

/// Readiness and shutdown.
#[async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    /// Proves the store can commit a write now (for readiness): a write as large as an event's
    /// and a row stamped `now_ms`, through the same path as every other write.
    async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError>;

    /// Flushes and closes; later calls fail with `Closed`.
    async fn close(&self);
}

/// The durable store: every role at once, as a backend implements it. Each part of the
/// gateway names the roles it uses.
pub trait Store: Ingest + DeliveryQueue + PluginStore + AdminQueries + Lifecycle {}

impl<T: Ingest + DeliveryQueue + PluginStore + AdminQueries + Lifecycle> Store for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_behind_by_the_time_its_earliest_row_has_been_due_and_never_less_than_nothing() {
        let backlog = Backlog { pending: 3, earliest_due_ms: 10_000 };
        assert_eq!(backlog.behind_ms(12_500), 2_500);
        assert_eq!(backlog.behind_ms(10_000), 0, "due this moment");
        assert_eq!(backlog.behind_ms(9_000), 0, "every row waits to retry");
        assert_eq!(Backlog::default().behind_ms(12_500), 0, "nothing pending");
        assert_eq!(Backlog { pending: 0, earliest_due_ms: 1 }.behind_ms(12_500), 0, "nothing pending");
    }

    #[test]
    fn an_event_is_dead_if_any_delivery_is_and_delivered_once_all_are() {
        assert_eq!(settled_status([]), None);
        assert_eq!(settled_status(["pending"]), Some(EventStatus::Queued));
        assert_eq!(settled_status(["delivered", "pending"]), Some(EventStatus::Queued));
        assert_eq!(settled_status(["delivered", "delivered"]), Some(EventStatus::Delivered));
        assert_eq!(settled_status(["delivered", "dead", "pending"]), Some(EventStatus::Dead));
    }
}
