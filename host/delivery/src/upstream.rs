//! An upstream as the dispatcher drives it: where its deliveries go (the merchant's app, over
//! HTTP, re-signed or not), its lane (retry policy, workers, queue) and its counts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Uri;
use payflow_verify::{PayFlowForm, Signer};

use crate::flow::Flow;
use crate::lane::{Lane, Reserved};
use crate::policy::RetryPolicy;
use payflow_config::UpstreamConfig;
use payflow_metrics::Counter;
use payflow_store::{Attempt, AttemptOutcome, DueDelivery};

/// A configured upstream, ready to send to.
pub struct Upstream {
    /// Its name in the config, as deliveries and metrics carry it.
    pub name: String,
    /// Owning merchant.
    pub merchant: String,
    /// Target URL.
    pub uri: Uri,
    /// Re-signs each delivery when the upstream has a `sign_secret`, in the PayFlow form its
    /// `sign_scheme` names (ignored by the other schemes).
    pub signer: Option<(Signer, PayFlowForm)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Its deliveries, as the dispatcher drains them.
    pub lane: Lane<DueDelivery>,
    /// Attempts, by outcome.
    pub counts: DeliveryCounts,
    /// Its rate limit and circuit breaker.
    pub flow: Flow,
    /// `ordering_key`, as path segments: same key, one at a time, in arrival order.
    pub ordering: Option<Vec<String>>,
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
        let signer = config.signer()?;
        let policy = RetryPolicy {
            max_attempts: config.max_attempts,
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
        };
        Ok(Upstream {
            name: config.name.clone(),
            merchant: config.merchant.clone(),
            uri: config.url.parse()?,
            signer,
            timeout: Duration::from_millis(config.timeout_ms),
            lane: Lane::new(policy, config.concurrency, config.concurrency),
            counts: DeliveryCounts::default(),
            flow: Flow::new(config.rate(), config.breaker),
            ordering: config.ordering_path(),
            unrecorded: Mutex::default(),
        })
    }

    /// Hands a just-stored delivery to the workers (see [`Lane::hand_off`]). An ordered
    /// upstream's come from the store only, which gives each key's head alone: the poller is
    /// woken instead.
    pub fn hand_off(&self, delivery: DueDelivery) {
        match self.ordering {
            Some(_) => self.lane.poll_store_now(),
            None => self.lane.hand_off(delivery),
        }
    }

    /// Holds a place for a hand-off of `merchant`'s ([`Lane::reserve`]) if there is room now:
    /// never on an ordered upstream (see [`Upstream::hand_off`]).
    pub fn reserve(&self, merchant: &str) -> Option<Reserved<'_, DueDelivery>> {
        self.ordering.is_none().then(|| self.lane.reserve(merchant)).flatten()
    }

    /// Tells the poller the store has due deliveries it has not seen (e.g. after a replay).
    pub fn poll_store_now(&self) {
        self.lane.poll_store_now();
    }

    /// Once `attempt` is recorded: its delivery is released, and on an ordered upstream the
    /// next of its key may be due now, which the store alone knows (see [`Upstream::hand_off`]).
    pub(crate) fn recorded(&self, attempt: &Attempt) {
        self.lane.queue.unclaim(&attempt.key);
        if self.ordering.is_some() {
            self.poll_store_now();
        }
    }

    /// Keeps attempts the store refused (their deliveries stay claimed) until it takes them.
    pub(crate) fn keep_unrecorded(&self, attempts: Vec<Arc<Attempt>>) {
        self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()).extend(attempts);
    }

    /// Takes the attempts the store refused before, to record them again.
    pub(crate) fn take_unrecorded(&self) -> Vec<Arc<Attempt>> {
        std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()))
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
