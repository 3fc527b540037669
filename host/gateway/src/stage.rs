//! The plugin stage of the request path: after an event is stored (queue mode, from the
//! durable queue) or before it is forwarded (proxy mode), it goes through its endpoint's
//! plugins on the [`Scheduler`], and what they decided is recorded in one commit.
//!
//! Queue mode: the step is the event's [`PLUGIN_STEP`] delivery; when it finishes it creates
//! the real deliveries (the endpoint's upstream with the rewritten body and headers, and the
//! plugins' forwards), and a failure is retried like a delivery and leaves the event `dead`
//! for replay. The first attempt to the endpoint's own upstream is made by the step itself,
//! before its commit, so that runs and that attempt are recorded together (one commit and one
//! queue hop less per event); retries and forwards go to the dispatcher.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;

use payflow_clock::Clock;
use payflow_delivery::{Step, Upstream, UpstreamClient};
use payflow_plugins::chain::{self, ChainInput, ChainOutcome, ChainResult};
use payflow_plugins::{Registry, Scheduler};
use payflow_store::{
    Attempt, AttemptInfo, AttemptOutcome, DeliveryQueue, DueDelivery, EventKey, EventStatus, KvWrite,
    NewDelivery, PluginRunInfo, PluginStep, PLUGIN_STEP,
};

/// An endpoint's plugins.
#[derive(Debug, Clone)]
pub struct EndpointPlugins {
    /// Owning merchant.
    pub merchant: String,
    /// Plugin names, in order.
    pub chain: Vec<String>,
    /// The endpoint's own upstream.
    pub upstream: Option<String>,
}

/// See the module docs.
pub struct PluginStage {
    registry: Arc<Registry>,
    scheduler: Scheduler,
    store: Arc<dyn DeliveryQueue>,
    clock: Arc<dyn Clock>,
    handle: Handle,
    /// Shared with each step's job, so a step clones a pointer, not the chain.
    endpoints: HashMap<String, Arc<EndpointPlugins>>,
    /// Upstream names per merchant: what its plugins may forward to.
    allowed: HashMap<String, Arc<BTreeSet<String>>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    client: UpstreamClient,
}

/// An event as the stage takes it.
pub struct StepInput {
    /// The event's key.
    pub key: EventKey,
    /// Endpoint path.
    pub endpoint: String,
    /// Type.
    pub event_type: Option<String>,
    /// Raw body.
    pub body: Bytes,
    /// Arrival, unix ms.
    pub received_at_ms: i64,
    /// Request id, for logs and hand-offs.
    pub request_id: String,
    /// Attempts of the step so far.
    pub attempts: u32,
}

impl PluginStage {
    /// A stage over these plugins and upstreams. Call it on the runtime kv loads should run on.
    pub fn new(
        registry: Arc<Registry>,
        scheduler: Scheduler,
        store: Arc<dyn DeliveryQueue>,
        clock: Arc<dyn Clock>,
        endpoints: HashMap<String, EndpointPlugins>,
        upstreams: HashMap<String, Arc<Upstream>>,
        client: UpstreamClient,
    ) -> Self {
        let mut by_merchant: HashMap<String, BTreeSet<String>> = HashMap::new();
        for u in upstreams.values() {
            by_merchant.entry(u.merchant.clone()).or_default().insert(u.name.clone());
        }
        let allowed = by_merchant.into_iter().map(|(m, names)| (m, Arc::new(names))).collect();
        let endpoints = endpoints.into_iter().map(|(path, e)| (path, Arc::new(e))).collect();
        let handle = Handle::current();
        PluginStage { registry, scheduler, store, clock, handle, endpoints, allowed, upstreams, client }
    }

    /// The registry (for the admin API).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether events of `endpoint` go through plugins.
    pub fn has_plugins(&self, endpoint: &str) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| !e.chain.is_empty())
    }

    /// Runs the endpoint's chain on the scheduler and waits for it.
    async fn run_chain(&self, input: &StepInput, at_ms: i64) -> ChainResult {
        let Some(plugins) = self.endpoints.get(&input.endpoint).cloned() else {
            return ChainResult {
                runs: Vec::new(),
                kv: Vec::new(),
                outcome: ChainOutcome::Failed {
                    reason: format!("endpoint {} is no longer configured", input.endpoint),
                },
            };
        };
        let chain_input = ChainInput {
            key: input.key.clone(),
            endpoint: input.endpoint.clone(),
            event_type: input.event_type.clone().unwrap_or_default(),
            body: input.body.clone(),
            received_at_ms: input.received_at_ms,
            attempt: input.attempts + 1,
            at_ms,
        };
        let registry = self.registry.clone();
        let handle = self.handle.clone();
        let allowed = self.allowed.get(&input.key.merchant).cloned().unwrap_or_default();
        let job = move || {
            chain::run(
                &registry,
                &handle,
                &plugins.chain,
                &allowed,
                plugins.upstream.as_deref(),
                &chain_input,
            )
        };
        match self.scheduler.submit(&input.key.merchant, job).await {
            Ok(result) => result,
            Err(_) => ChainResult {
                runs: Vec::new(),
                kv: Vec::new(),
                outcome: ChainOutcome::Failed { reason: "the plugin scheduler stopped".into() },
            },
        }
    }

    /// Queue mode: runs the plugin step of a due [`PLUGIN_STEP`] delivery and records it.
    /// `step` carries the retry policy. False when the store refused the record.
    pub async fn run_queued(&self, step: &Upstream, d: DueDelivery) -> bool {
        let input = StepInput {
            key: d.key,
            endpoint: d.endpoint,
            event_type: d.event_type,
            body: d.body,
            received_at_ms: d.received_at_ms,
            request_id: d.request_id,
            attempts: d.attempts,
        };
        let at_ms = self.clock.now_ms();
        let started = Instant::now();
        let ChainResult { runs, kv, outcome } = self.run_chain(&input, at_ms).await;
        let number = input.attempts + 1;
        let own = self.endpoints.get(&input.endpoint).and_then(|e| e.upstream.clone());
        let (status, reason, outcome, deliveries, tags) = match outcome {
            ChainOutcome::Continue { body, headers, forwards, tags } => {
                let mut deliveries = match own {
                    Some(upstream) => vec![NewDelivery { upstream, body, headers }],
                    None => Vec::new(),
                };
                deliveries.extend(forwards);
                let status = if deliveries.is_empty() { EventStatus::Stored } else { EventStatus::Queued };
                (status, None, AttemptOutcome::Delivered, deliveries, tags)
            }
            ChainOutcome::Drop { reason, tags } => {
                (EventStatus::Dropped, Some(reason), AttemptOutcome::Delivered, Vec::new(), tags)
            }
            ChainOutcome::Failed { reason } if number >= step.max_attempts => {
                (EventStatus::Dead, Some(reason), AttemptOutcome::Dead, Vec::new(), Vec::new())
            }
            ChainOutcome::Failed { reason } => {
                let next_at_ms = self.clock.now_ms() + step.backoff(number, None).as_millis() as i64;
                (
                    EventStatus::Queued,
                    Some(reason),
                    AttemptOutcome::Retry { next_at_ms },
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        tracing::info!(
            request_id = %input.request_id, merchant = %input.key.merchant, event_id = %input.key.id,
            attempt = number, status = status.as_str(), reason = ?reason, "plugin step"
        );
        let first_delivery = match (status, deliveries.first()) {
            (EventStatus::Queued, Some(own)) if Some(&own.upstream) == self.own_upstream(&input.endpoint) => {
                self.first_attempt(&input, own, at_ms).await
            }
            _ => None,
        };
        let decision = Decision { step: outcome, status, reason, deliveries, tags, runs, kv, first_delivery };
        if let Err(e) = self.commit(&input, number, at_ms, started, decision).await {
            // Still pending in the store: the step runs again.
            tracing::warn!(event_id = %input.key.id, error = %e, "cannot record a plugin step; it will run again");
            return false;
        }
        true
    }

    /// Proxy mode: runs the chain before the forward and records it. The event is left
    /// `dropped` or `failed` (the sender's retry runs the plugins again) as they decided;
    /// on `Continue` the caller forwards, and the plugins' extra forwards are queued.
    pub async fn run_proxied(&self, input: StepInput) -> ChainOutcome {
        let at_ms = self.clock.now_ms();
        let started = Instant::now();
        let result = self.run_chain(&input, at_ms).await;
        let (status, reason, deliveries, tags) = match &result.outcome {
            ChainOutcome::Continue { forwards, tags, .. } => {
                (EventStatus::Forwarding, None, forwards.clone(), tags.clone())
            }
            ChainOutcome::Drop { reason, tags } => {
                (EventStatus::Dropped, Some(reason.clone()), Vec::new(), tags.clone())
            }
            ChainOutcome::Failed { reason } => {
                (EventStatus::Failed, Some(reason.clone()), Vec::new(), Vec::new())
            }
        };
        let (runs, kv) = (result.runs, result.kv);
        let decision = Decision {
            step: AttemptOutcome::Delivered,
            status,
            reason,
            deliveries,
            tags,
            runs,
            kv,
            first_delivery: None,
        };
        if let Err(e) = self.commit(&input, 1, at_ms, started, decision).await {
            return ChainOutcome::Failed { reason: format!("cannot record the plugin step: {e}") };
        }
        result.outcome
    }

    /// Records a step (its runs, kv writes and `decision`) in one commit, then hands the
    /// deliveries it created to their upstreams. If the commit fails, the kv writes the chain
    /// made visible in memory are forgotten (they were not committed).
    async fn commit(
        &self,
        input: &StepInput,
        number: u32,
        at_ms: i64,
        started: Instant,
        decision: Decision,
    ) -> Result<(), payflow_store::StoreError> {
        let Decision { step, status, reason, deliveries, tags, runs, kv, first_delivery } = decision;
        // The delivery the step already attempted is in the store now (delivered, or due later).
        let to_hand_off: Vec<NewDelivery> = deliveries
            .iter()
            .filter(|d| first_delivery.as_ref().is_none_or(|a| a.info.upstream != d.upstream))
            .cloned()
            .collect();
        let record = PluginStep {
            key: input.key.clone(),
            attempt: step_attempt(number, at_ms, started, status, reason.as_deref(), &deliveries),
            step,
            runs,
            kv,
            status,
            reason,
            deliveries,
            tags,
            first_delivery,
        };
        if let Err(e) = self.store.finish_plugin_step(record).await {
            chain::forget_kv(&self.registry, &input.key.merchant, &self.chain_of(&input.endpoint));
            return Err(e);
        }
        self.hand_off(input, at_ms, to_hand_off);
        Ok(())
    }

    /// Hands just-recorded deliveries to their upstreams' workers (the store stays the source
    /// of truth if one is full).
    fn hand_off(&self, input: &StepInput, at_ms: i64, deliveries: Vec<NewDelivery>) {
        for d in &deliveries {
            if let Some(upstream) = self.upstreams.get(&d.upstream) {
                upstream.hand_off(due(input, d, at_ms));
            }
        }
    }

    fn own_upstream(&self, endpoint: &str) -> Option<&String> {
        self.endpoints.get(endpoint).and_then(|e| e.upstream.as_ref())
    }

    /// The first attempt of the endpoint's own delivery, made by the step (see the module docs).
    async fn first_attempt(&self, input: &StepInput, own: &NewDelivery, at_ms: i64) -> Option<Attempt> {
        let upstream = self.upstreams.get(&own.upstream)?;
        Some(payflow_delivery::attempt(&self.client, &*self.clock, upstream, &due(input, own, at_ms)).await)
    }

    fn chain_of(&self, endpoint: &str) -> Vec<String> {
        self.endpoints.get(endpoint).map(|e| e.chain.clone()).unwrap_or_default()
    }

    /// Stops the scheduler's threads once their queued work is done.
    pub fn stop(&self) {
        self.scheduler.stop();
    }
}

/// Queue mode: the dispatcher's step before an event's deliveries.
#[async_trait::async_trait]
impl Step for PluginStage {
    async fn run(&self, queue: &Upstream, due: DueDelivery) -> bool {
        self.run_queued(queue, due).await
    }
}

/// A delivery the step created, as the dispatcher takes it (first attempt, due now).
fn due(input: &StepInput, d: &NewDelivery, at_ms: i64) -> DueDelivery {
    DueDelivery {
        key: input.key.clone(),
        upstream: d.upstream.clone(),
        endpoint: input.endpoint.clone(),
        attempts: 0,
        body: d.body.clone().unwrap_or_else(|| input.body.clone()),
        headers: d.headers.clone(),
        event_type: input.event_type.clone(),
        request_id: input.request_id.clone(),
        next_attempt_at_ms: at_ms,
        received_at_ms: input.received_at_ms,
    }
}

/// What a step decided about its event.
struct Decision {
    step: AttemptOutcome,
    status: EventStatus,
    reason: Option<String>,
    deliveries: Vec<NewDelivery>,
    tags: Vec<String>,
    runs: Vec<PluginRunInfo>,
    kv: Vec<KvWrite>,
    first_delivery: Option<Attempt>,
}

/// The step as an attempt, for the event's history.
fn step_attempt(
    number: u32,
    at_ms: i64,
    started: Instant,
    status: EventStatus,
    reason: Option<&str>,
    deliveries: &[NewDelivery],
) -> AttemptInfo {
    let failed =
        matches!(status, EventStatus::Dead | EventStatus::Failed | EventStatus::Queued) && reason.is_some();
    let response = match status {
        EventStatus::Dropped => format!("dropped: {}", reason.unwrap_or_default()),
        _ if failed => String::new(),
        _ => {
            let to: Vec<&str> = deliveries.iter().map(|d| d.upstream.as_str()).collect();
            if to.is_empty() {
                "continue".into()
            } else {
                format!("continue → {}", to.join(", "))
            }
        }
    };
    AttemptInfo {
        upstream: PLUGIN_STEP.to_string(),
        number,
        at_ms,
        duration_ms: started.elapsed().as_millis() as i64,
        status_code: None,
        error: failed.then(|| reason.unwrap_or_default().to_string()),
        response: (!failed).then_some(response),
    }
}
