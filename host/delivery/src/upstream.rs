//! An upstream as the dispatcher drives it: where its deliveries go (HTTP, or the event's
//! step), its retry policy (attempts, backoff, concurrency), its queue and its counts.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Uri;
use payflow_verify::{Scheme, Signer};
use rand::Rng;
use tokio::sync::Notify;

use crate::client::MAX_RETRY_AFTER;
use crate::queue::DeliveryQueue;
use payflow_config::{PluginsConfig, UpstreamConfig};
use payflow_metrics::Counter;
use payflow_store::{Attempt, AttemptOutcome, DueDelivery, PLUGIN_STEP};

/// What a due delivery of an upstream does.
pub enum Target {
    /// An HTTP POST to the merchant's app, re-signed when it has a `sign_secret`.
    Http {
        /// Target URL.
        uri: Uri,
        /// Re-signs each delivery.
        signer: Option<Signer>,
    },
    /// The plugin step ([`PLUGIN_STEP`]): handed to the plugin stage. It shares the queue,
    /// workers, retry policy and poller of HTTP upstreams; nothing is sent from here.
    PluginStep,
}

/// A configured upstream, ready to send to.
pub struct Upstream {
    /// Name.
    pub name: String,
    /// Owning merchant.
    pub merchant: String,
    /// Where its deliveries go.
    pub target: Target,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts before `dead`.
    pub max_attempts: u32,
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    /// Deliveries in flight at once: the number of worker tasks.
    pub concurrency: usize,
    /// Deliveries one merchant may have in flight at once. Only the plugin step's queue is
    /// shared between merchants: there a merchant gets three quarters of the workers, so that
    /// while its steps run long (plugins spinning to their deadline) the rest take the others'
    /// at once. An HTTP upstream has one merchant, who gets every worker.
    pub(crate) merchant_in_flight: usize,
    /// One per delivery in flight, from the workers and from plugin steps that deliver their
    /// event's first attempt themselves: together they never exceed `concurrency`.
    pub(crate) permits: tokio::sync::Semaphore,
    /// Deliveries waiting for a worker, fed by ingress and by the store poller.
    pub(crate) queue: DeliveryQueue,
    /// Wakes the store poller before its interval is up.
    pub(crate) poll_now: Notify,
    /// Set while the store holds more due deliveries than the last poll could take: workers
    /// that run dry then ask for the next page at once instead of waiting for the interval.
    pub(crate) backlog: AtomicBool,
    /// Attempts, by outcome.
    pub counts: DeliveryCounts,
    /// Attempts made but not yet recorded (the store refused the write). Their deliveries stay
    /// claimed until they are recorded, so the store's stale row (still due, its attempts not
    /// counted) is never sent again: backoff and `max_attempts` hold while the store is full.
    pub(crate) unrecorded: Mutex<Vec<Arc<Attempt>>>,
}

/// An upstream's delivery attempts by outcome: `payflow_edge_deliveries_total{outcome}`.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    /// 2xx.
    pub delivered: Counter,
    /// Failed; will be tried again.
    pub retry: Counter,
    /// Failed; no more attempts (`dead`, or proxy mode's one forward).
    pub dead: Counter,
}

impl DeliveryCounts {
    pub(crate) fn count(&self, outcome: &AttemptOutcome) {
        match outcome {
            AttemptOutcome::Delivered => self.delivered.inc(),
            AttemptOutcome::Retry { .. } => self.retry.inc(),
            AttemptOutcome::Dead => self.dead.inc(),
        }
    }
}

impl Upstream {
    /// Builds an upstream from validated configuration.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let signer = match &config.sign_secret {
            Some(secret) => Some(Signer::new(Scheme::PayFlow, &[secret])?),
            None => None,
        };
        let uri = config.url.parse()?;
        Ok(Upstream::with(config, Target::Http { uri, signer }))
    }

    /// The plugin step's upstream ([`Target::PluginStep`]).
    pub fn plugin_step(config: &PluginsConfig) -> Self {
        let policy = UpstreamConfig {
            name: PLUGIN_STEP.into(),
            merchant: String::new(),
            url: String::new(),
            timeout_ms: 0,
            max_attempts: config.max_attempts,
            concurrency: config.concurrency,
            retry_base_ms: config.retry_base_ms,
            retry_max_ms: config.retry_max_ms,
            sign_secret: None,
        };
        let mut step = Upstream::with(&policy, Target::PluginStep);
        step.merchant_in_flight = (step.concurrency - step.concurrency / 4).max(1);
        step
    }

    pub(crate) fn with(config: &UpstreamConfig, target: Target) -> Self {
        Upstream {
            name: config.name.clone(),
            merchant: config.merchant.clone(),
            target,
            timeout: Duration::from_millis(config.timeout_ms),
            max_attempts: config.max_attempts,
            retry_base: Duration::from_millis(config.retry_base_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
            concurrency: config.concurrency,
            merchant_in_flight: config.concurrency,
            permits: tokio::sync::Semaphore::new(config.concurrency),
            queue: DeliveryQueue::default(),
            poll_now: Notify::new(),
            backlog: AtomicBool::new(false),
            counts: DeliveryCounts::default(),
            unrecorded: Mutex::default(),
        }
    }

    /// Hands a just-stored event to the workers, so they need not read back what ingress just
    /// wrote. The store stays the source of truth: if the queue is full the poller finds it.
    pub fn hand_off(&self, delivery: DueDelivery) {
        self.queue.push(delivery);
    }

    /// Tells the poller the store has due deliveries it has not seen (e.g. after a replay).
    pub fn poll_store_now(&self) {
        self.poll_now.notify_one();
    }

    /// The delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, with jitter
    /// in [½, 1] of it so that a burst of failures does not retry in lockstep. A
    /// `Retry-After` from the upstream wins: retrying sooner than it asked would not be
    /// honouring it, so `retry_max_ms` does not shorten it (only a one-day sanity bound does).
    pub fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        let exp = self.retry_base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.retry_max);
        let half = capped / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
    }
}

/// An upstream configuration that cannot be used (the configuration check refuses both first).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `sign_secret` cannot sign.
    #[error("sign_secret: {0}")]
    SignSecret(#[from] payflow_verify::ConfigError),
    /// `url` is not a URL.
    #[error("url: {0}")]
    Url(#[from] hyper::http::uri::InvalidUri),
}
