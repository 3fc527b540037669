//! The delivery queue's role: due deliveries and plugin steps (claimed, on a store shared by
//! replicas), attempts and their outcomes, the rule for which outcome a row takes
//! (`takes_outcome!`), and the depths the metrics read. It must never hand out a row that is
//! not due, nor let an outcome land on a row replayed since its attempt began.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::event::{Event, EventKey, EventSeq};
use crate::step::{PluginStep, StepRecorded};
use crate::StoreError;

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
    /// ([`event_status!`](crate::event_status)). Only the ordered scans, which read an ordered event's own row,
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
    /// (unix ms), as [`NewEvent::claim_until_ms`](crate::NewEvent::claim_until_ms) does an event's first hop, so that no poll
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
