//! payflow-store: the durable store's contract, split by role ([`Ingest`], [`DeliveryQueue`],
//! [`PluginStore`], [`AdminQueries`], [`Lifecycle`]; [`Store`] is all of them), the rules and
//! SQL both backends share ([`settled_status`], [`takes_outcome!`], [`ordering`], what an
//! event weighs in a commit, [`EVENT_BYTES_PER_COMMIT`]), and the
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
//!
//! One file per role (`ingest.rs`, `queue.rs` with `step.rs`, `plugins.rs` with `kv.rs`,
//! `admin.rs`), their shared vocabulary in `event.rs`; this file holds the errors, the commit
//! observer, [`Lifecycle`] and [`Store`], the roles together.

#![forbid(unsafe_code)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod ordering;

use async_trait::async_trait;

mod admin;
mod event;
mod ingest;
mod kv;
mod plugins;
mod queue;
mod step;

pub use admin::{
    AdminQueries, Amount, DeliveryInfo, EventDetail, EventFilter, EventSummary, HeldKey, StepInfo,
    AMOUNT_BODY_LIMIT,
};
pub use event::{settled_status, Event, EventKey, EventSeq, EventStatus, Hop, KeyParts};
pub use ingest::{Ingest, Inserted, NewEvent, EVENT_BYTES_PER_COMMIT, ROW_BYTES};
pub use kv::{KvChanges, KvEntry, KvRead, KvReadOf, KvStamp, KvTurn, KvWrite};
pub use plugins::{
    Canary, NewPluginVersion, PluginHistory, PluginStore, PluginVersionInfo, QuotaExceeded, StoredPlugin,
    VersionBounds,
};
pub use queue::{
    replayed_due_at, Attempt, AttemptInfo, AttemptOutcome, Backlog, Claim, DeliveryQueue, DueCursor,
    DueDelivery, DueStep, NewDelivery, QueueDepth,
};
pub use step::{PluginRunInfo, PluginStep, StepRecorded};

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

/// Told how long each commit took: the gateway's metrics listen, so the store needs none.
pub trait CommitObserver: Send + Sync + 'static {
    /// One commit (one fsync) took `took`.
    fn committed(&self, took: std::time::Duration);
}

/// Nobody listening.
impl CommitObserver for () {
    fn committed(&self, _took: std::time::Duration) {}
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
