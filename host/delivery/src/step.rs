//! The seam between the dispatcher and what runs before an event's deliveries.
//!
//! After the acknowledgement an event goes through an explicit sequence: stored → its step
//! (the gateway's plugin stage, when the endpoint has plugins) → its deliveries. The
//! dispatcher owns the queue, the claim and the retry policy of every hop, the step's
//! included; the step only decides and records. This module must never name the plugin
//! stage: the gateway implements the trait, so delivery depends on nothing above it.

use async_trait::async_trait;
use payflow_store::DueDelivery;

use crate::Upstream;

/// What runs an event's step before its deliveries.
#[async_trait]
pub trait Step: Send + Sync {
    /// Runs the step of `due` (a delivery of the step's own queue, `queue`, which carries the
    /// retry policy) and records its outcome. False when the store refused the record: the
    /// dispatcher keeps the delivery claimed and runs it again after its backoff.
    async fn run(&self, queue: &Upstream, due: DueDelivery) -> bool;
}
