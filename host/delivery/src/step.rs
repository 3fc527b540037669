//! The seam between the dispatcher and what runs before an event's deliveries.
//!
//! After the acknowledgement an event goes through an explicit sequence: stored → its plugin
//! step (when the endpoint has plugins) → its deliveries. The dispatcher owns the queues, the
//! claims and the retry policy of every hop, the plugin step's included; the step only decides
//! and records, and gives back the deliveries it created, which the dispatcher queues. Data
//! flows one way: the step never sends, never queues, and never calls back into delivery.
//! This module must never name the plugin stage: the gateway implements the trait, so delivery
//! depends on nothing above it.

use std::time::Duration;

use async_trait::async_trait;
use payflow_config::PluginsConfig;
use payflow_store::{DueDelivery, DueStep};

use crate::lane::Lane;
use crate::policy::RetryPolicy;

/// What runs an event's plugin step before its deliveries.
#[async_trait]
pub trait Step: Send + Sync {
    /// Runs the step of `due` under `policy` (which decides its retries) and records the
    /// outcome in the store; the deliveries it creates to the upstreams `claim` names, when
    /// there is one, stored claimed by this gateway (see [`ClaimDeliveries`]).
    async fn run(&self, policy: &RetryPolicy, due: DueStep, claim: Option<&ClaimDeliveries<'_>>) -> StepDone;
}

/// On a store that claims rows, which of the deliveries a step creates this gateway's workers
/// start at once: those to these upstreams (the event's merchant's, unordered, each with a
/// place held in its queue for the step's delivery), stored claimed for `lease_ms` from the
/// step's record, as ingress stores an event's first hop. The others are left to whichever
/// replica's poll claims them.
///
/// Why: else every delivery a step created was read back by a poll's claim (a statement with
/// its body), and with replicas taken by whichever replica's poll came first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimDeliveries<'a> {
    /// How long the claim lasts (`[store] lease_ms`): if this gateway dies holding it, another
    /// replica takes the delivery then.
    pub lease_ms: i64,
    /// Upstream names (borrowed: a step is no reason to copy them).
    pub upstreams: Vec<&'a str>,
}

impl ClaimDeliveries<'_> {
    /// Whether a delivery to `upstream` is stored claimed.
    pub fn covers(&self, upstream: &str) -> bool {
        self.upstreams.contains(&upstream)
    }
}

/// How a step ended, for the dispatcher.
pub enum StepDone {
    /// Its outcome is in the store; these deliveries were created by it, due now (those stored
    /// claimed with [`DueDelivery::claimed_until_ms`] set).
    Recorded(Vec<DueDelivery>),
    /// The store refused the record: the step stays claimed and runs again after its backoff,
    /// once the store takes writes again.
    Refused,
}

/// The plugin steps' lane, from `[plugins]`: shared by every merchant, three quarters of its
/// workers at most for one (see [`Lane`]).
pub fn plugin_steps(config: &PluginsConfig) -> Lane<DueStep> {
    let policy = RetryPolicy {
        max_attempts: config.max_attempts,
        base: Duration::from_millis(config.retry_base_ms),
        max: Duration::from_millis(config.retry_max_ms),
    };
    let concurrency = config.concurrency;
    Lane::new(policy, concurrency, (concurrency - concurrency / 4).max(1))
}
