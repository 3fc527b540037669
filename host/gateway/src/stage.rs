//! The plugin stage of the request path: after an event is stored (queue mode, from the
//! durable queue) or before it is forwarded (proxy mode), it goes through its endpoint's
//! plugins on the [`Scheduler`], and what they decided is recorded in one commit.
//!
//! Queue mode: the stage is the dispatcher's [`Step`]: the dispatcher hands it a due step, the
//! stage runs the chain and records what it decided (the runs, the kv writes, the deliveries
//! it created: the endpoint's upstream with the rewritten body and headers, and the plugins'
//! forwards) in one commit, and gives the created deliveries back for the dispatcher to queue.
//! A failure is retried under the `[plugins]` retry policy and leaves the event `dead` for
//! replay. The stage never sends and never queues a delivery: delivery is the next step's job.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use payflow_clock::Clock;
use payflow_delivery::route::Routes;
use payflow_delivery::{ClaimDeliveries, RetryPolicy, Step, StepDone};
use payflow_plugins::chain::{self, ChainInput, ChainOutcome, ChainResult, Published};
use payflow_plugins::{trial, Registry, RegistryError, Scheduler, Side, Trial, TrialEvent, TrialReport};
use payflow_store::{
    AttemptOutcome, DeliveryQueue, DueDelivery, DueStep, Event, EventSeq, EventStatus, KvReadOf, KvWrite,
    NewDelivery, PluginRunInfo, PluginStep, StepRecorded,
};
use payflow_telemetry::Telemetry;

use crate::trace::StepSpan;

/// An endpoint's plugins and routes.
#[derive(Debug, Clone)]
pub struct EndpointPlugins {
    /// Owning merchant.
    pub merchant: String,
    /// Plugin names, in order (none: the step only routes).
    pub chain: Vec<String>,
    /// The endpoint's own upstream.
    pub upstream: Option<String>,
    /// Its routes (with `upstream` as the default route), decided after the plugins.
    pub routes: Routes,
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
    /// Where each step's spans go.
    telemetry: Arc<Telemetry>,
    /// `[plugins] dry_run_timeout_ms`: the longest a dry run may take.
    dry_run_timeout: Duration,
}

impl PluginStage {
    /// A stage over these plugins; `upstreams` are the configured (merchant, upstream name)
    /// pairs, what each merchant's plugins may forward to. Call it on the runtime kv loads
    /// should run on.
    pub fn new(
        registry: Arc<Registry>,
        scheduler: Scheduler,
        store: Arc<dyn DeliveryQueue>,
        clock: Arc<dyn Clock>,
        endpoints: HashMap<String, EndpointPlugins>,
        upstreams: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut by_merchant: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (merchant, name) in upstreams {
            by_merchant.entry(merchant).or_default().insert(name);
        }
        let allowed = by_merchant.into_iter().map(|(m, names)| (m, Arc::new(names))).collect();
        let endpoints = endpoints.into_iter().map(|(path, e)| (path, Arc::new(e))).collect();
        let handle = Handle::current();
        let telemetry = Arc::new(Telemetry::disabled());
        let dry_run_timeout =
            Duration::from_millis(payflow_config::PluginsConfig::default().dry_run_timeout_ms);
        PluginStage {
            registry,
            scheduler,
            store,
            clock,
            handle,
            endpoints,
            allowed,
            telemetry,
            dry_run_timeout,
        }
    }

    /// Gives a dry run at most `timeout` (`[plugins] dry_run_timeout_ms`).
    pub fn with_dry_run_timeout(mut self, timeout: Duration) -> Self {
        self.dry_run_timeout = timeout;
        self
    }

    /// The longest a dry run may take ([`PluginStage::with_dry_run_timeout`]).
    pub fn dry_run_timeout(&self) -> Duration {
        self.dry_run_timeout
    }

    /// Records a span of each step and of each plugin run in it.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The registry (for the admin API).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether events of `endpoint` go through plugin `name`.
    pub fn runs_plugin(&self, endpoint: &str, name: &str) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| e.chain.iter().any(|n| n == name))
    }

    /// Starts a dry run of `wasm` beside `merchant`'s plugin `name`: the candidate is checked
    /// and compiled; the events are then given one at a time ([`DryRun::try_event`]).
    pub async fn dry_run(
        &self,
        merchant: &str,
        name: &str,
        wasm: bytes::Bytes,
    ) -> Result<DryRun<'_>, RegistryError> {
        let upstreams = self.allowed.get(merchant).cloned().unwrap_or_default();
        let trial = Arc::new(self.registry.trial(merchant, name, wasm, upstreams).await?);
        Ok(DryRun { stage: self, trial, name: name.to_string(), tried: Vec::new() })
    }

    /// Whether events of `endpoint` go through plugins.
    pub fn has_plugins(&self, endpoint: &str) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| !e.chain.is_empty())
    }

    /// Runs the endpoint's chain on the scheduler (as attempt `number` of the step) and waits
    /// for it.
    async fn run_chain(&self, event: &Event, number: u32, at_ms: i64) -> ChainResult {
        let Some(plugins) = self.endpoints.get(&event.endpoint).cloned() else {
            return ChainResult::ran_nothing(ChainOutcome::Failed {
                reason: format!("endpoint {} is no longer configured", event.endpoint),
            });
        };
        if plugins.chain.is_empty() {
            // An endpoint with routes and no plugins: nothing to run, only to route.
            let outcome = ChainOutcome::Continue {
                body: None,
                headers: Vec::new(),
                forwards: Vec::new(),
                tags: Vec::new(),
            };
            return ChainResult::ran_nothing(outcome);
        }
        let merchant = event.key.merchant.clone();
        let chain_input = ChainInput { event: event.clone(), attempt: number, at_ms };
        let registry = self.registry.clone();
        let handle = self.handle.clone();
        let allowed = self.allowed.get(&merchant).cloned().unwrap_or_default();
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
        match self.scheduler.submit(&merchant, job).await {
            Ok(result) => result,
            Err(_) => ChainResult::ran_nothing(ChainOutcome::Failed {
                reason: "the plugin scheduler stopped".into(),
            }),
        }
    }

    /// Queue mode: runs a due plugin step under `policy` and records it, its deliveries to the
    /// upstreams `claim` names stored claimed by this gateway. The deliveries it created are
    /// given back, due now; none when the store refused the record (the step is still pending
    /// there and runs again).
    pub async fn run_queued(
        &self,
        policy: &RetryPolicy,
        due: DueStep,
        claim: Option<&ClaimDeliveries<'_>>,
    ) -> StepDone {
        if let Some(done) = until_not_stale(|| self.run_queued_once(policy, &due, claim)).await {
            return done;
        }
        tracing::warn!(
            event_id = %due.event.key.id, runs = STALE_RUNS,
            "another replica kept changing what the plugin step read; it will run again"
        );
        StepDone::Refused
    }

    /// [`PluginStage::run_queued`]'s step once: [`Recorded::Stale`] when a kv key its runs read
    /// changed before it committed.
    async fn run_queued_once(
        &self,
        policy: &RetryPolicy,
        due: &DueStep,
        claim: Option<&ClaimDeliveries<'_>>,
    ) -> Recorded<StepDone> {
        let event = &due.event;
        let mut number = due.attempts + 1;
        let at_ms = self.clock.now_ms();
        let ChainResult { runs, kv, kv_read, published, outcome } =
            self.run_chain(event, number, at_ms).await;
        let endpoint = self.endpoints.get(&event.endpoint).cloned();
        let mut routes = None;
        let (status, reason, step, mut deliveries, tags) = match outcome {
            ChainOutcome::Continue { body, headers, forwards, tags } => {
                let routing = endpoint.as_ref().map(|e| &e.routes);
                let delivered = body.as_ref().unwrap_or(&event.body);
                let routed = routing.map(|r| r.select(event.event_type.as_deref(), delivered, &tags));
                // A plugin's forward to an upstream a route also takes wins: it is explicit,
                // with its own body.
                let mut deliveries: Vec<NewDelivery> = routed
                    .iter()
                    .flat_map(|r| &r.upstreams)
                    .filter(|u| !forwards.iter().any(|f| &f.upstream == *u))
                    .map(|u| NewDelivery {
                        body: body.clone(),
                        headers: headers.clone(),
                        ..NewDelivery::to(u)
                    })
                    .collect();
                deliveries.extend(forwards);
                let has_routes = routing.is_some_and(Routes::any);
                let (status, reason) = match (deliveries.is_empty(), has_routes) {
                    (false, _) => (EventStatus::Queued, None),
                    (true, false) => (EventStatus::Stored, None),
                    (true, true) => (
                        EventStatus::Unrouted,
                        Some(format!(
                            "no route matched (type {})",
                            event.event_type.as_deref().unwrap_or("none")
                        )),
                    ),
                };
                if has_routes {
                    routes = routed.map(|r| r.matched);
                }
                (status, reason, AttemptOutcome::Delivered, deliveries, tags)
            }
            ChainOutcome::Drop { reason, tags } => {
                (EventStatus::Dropped, Some(reason), AttemptOutcome::Delivered, Vec::new(), tags)
            }
            ChainOutcome::Failed { reason } => {
                let step = policy.after_failure(number, None, self.clock.now_ms());
                let status =
                    if step == AttemptOutcome::Dead { EventStatus::Dead } else { EventStatus::Queued };
                (status, Some(reason), step, Vec::new(), Vec::new())
            }
            ChainOutcome::Waiting { reason } => {
                // Not an attempt: the event waits, queued, for as long as it takes.
                number = due.attempts;
                let next_at_ms = at_ms + waiting_recheck(at_ms - event.received_at_ms).as_millis() as i64;
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
            request_id = %event.request_id, merchant = %event.key.merchant, event_id = %event.key.id,
            attempt = number, status = status.as_str(), reason = reason.as_deref(), "plugin step"
        );
        if self.telemetry.enabled() {
            let name = if self.has_plugins(&event.endpoint) { "plugin step" } else { "route" };
            let failed = step != AttemptOutcome::Delivered;
            let error = reason.as_deref().filter(|_| failed);
            let span = StepSpan { name, number, at_ms, status: status.as_str(), error };
            crate::trace::record_step(&self.telemetry, event, span, &runs);
        }
        if let Some(claim) = claim {
            // The lease runs from the record on, as a poll's claim runs from its read.
            let until_ms = self.clock.now_ms() + claim.lease_ms;
            for d in deliveries.iter_mut().filter(|d| claim.covers(&d.upstream)) {
                d.claim_until_ms = Some(until_ms);
            }
        }
        let decision =
            Decision { step, status, reason, deliveries, tags, runs, kv, kv_read, published, routes };
        match self.commit(event, Some(due.seq), number, at_ms, due.claimed_until_ms, decision).await {
            Ok(Recorded::Done(created)) => {
                let due = |d: NewDelivery| DueDelivery {
                    body: d.body,
                    headers: d.headers,
                    claimed_until_ms: d.claim_until_ms,
                    ..DueDelivery::new(event.clone(), due.seq, d.upstream, at_ms)
                };
                Recorded::Done(StepDone::Recorded(created.into_iter().map(due).collect()))
            }
            Ok(Recorded::Stale) => Recorded::Stale,
            Err(e) => {
                tracing::warn!(event_id = %event.key.id, error = %e, "cannot record a plugin step; it will run again");
                Recorded::Done(StepDone::Refused)
            }
        }
    }

    /// Proxy mode: runs the chain before the forward and records it under the event's number
    /// `seq` (its insert's; none for a duplicate forwarded again). The event is left `dropped`
    /// or `failed` (the sender's retry runs the plugins again) as they decided; on `Continue`
    /// the caller forwards, and the plugins' extra forwards are queued.
    pub async fn run_proxied(&self, event: &Event, seq: Option<EventSeq>) -> ChainOutcome {
        if let Some(outcome) = until_not_stale(|| self.run_proxied_once(event, seq)).await {
            return outcome;
        }
        let reason = "cannot record the plugin step: another replica kept changing what it read";
        ChainOutcome::Failed { reason: reason.into() }
    }

    /// [`PluginStage::run_proxied`]'s step once, as [`PluginStage::run_queued_once`].
    async fn run_proxied_once(&self, event: &Event, seq: Option<EventSeq>) -> Recorded<ChainOutcome> {
        let at_ms = self.clock.now_ms();
        let result = self.run_chain(event, 1, at_ms).await;
        let (status, reason, deliveries, tags) = match &result.outcome {
            ChainOutcome::Continue { forwards, tags, .. } => {
                (EventStatus::Forwarding, None, forwards.clone(), tags.clone())
            }
            ChainOutcome::Drop { reason, tags } => {
                (EventStatus::Dropped, Some(reason.clone()), Vec::new(), tags.clone())
            }
            ChainOutcome::Failed { reason } | ChainOutcome::Waiting { reason } => {
                (EventStatus::Failed, Some(reason.clone()), Vec::new(), Vec::new())
            }
        };
        let ChainResult { runs, kv, kv_read, published, outcome } = result;
        let decision = Decision {
            step: AttemptOutcome::Delivered,
            status,
            reason,
            deliveries,
            tags,
            runs,
            kv,
            kv_read,
            published,
            routes: None,
        };
        match self.commit(event, seq, 1, at_ms, None, decision).await {
            Ok(Recorded::Done(_)) => Recorded::Done(outcome),
            Ok(Recorded::Stale) => Recorded::Stale,
            Err(e) => {
                Recorded::Done(ChainOutcome::Failed { reason: format!("cannot record the plugin step: {e}") })
            }
        }
    }

    /// Records a step of the event numbered `seq`, when the caller has it (run `number`, begun at `at_ms`, under the
    /// claim that ends at `claimed_until_ms` when there is one: its runs, kv writes and
    /// `decision`) in one commit and returns the deliveries it created, or [`Recorded::Stale`]
    /// when a key its runs read changed since (nothing recorded). The kv writes the chain
    /// made visible in memory are settled with the answer: forgotten unless they committed.
    async fn commit(
        &self,
        event: &Event,
        seq: Option<EventSeq>,
        number: u32,
        at_ms: i64,
        claimed_until_ms: Option<i64>,
        decision: Decision,
    ) -> Result<Recorded<Vec<NewDelivery>>, payflow_store::StoreError> {
        let Decision { step, status, reason, deliveries, tags, runs, kv, kv_read, published, routes } =
            decision;
        let failed = step != AttemptOutcome::Delivered;
        let record = PluginStep {
            key: event.key.clone(),
            event_seq: seq,
            number,
            at_ms,
            step,
            error: if failed { reason.clone() } else { None },
            runs,
            kv,
            kv_read,
            status,
            reason,
            deliveries: deliveries.clone(),
            tags,
            routes,
            claimed_until_ms,
        };
        // Written after the steps whose writes its runs read, so it finds them in the store.
        published.after_the_writes_read().await;
        let recorded =
            handed_on_first_poll(self.store.finish_plugin_step(record), || published.handed_to_the_store())
                .await;
        // The next run reads the plugins' kv spaces from the store again when the writes made
        // visible in memory were not committed, and, with replicas sharing the store, when the
        // store says another has written since (asked by the first run after each step).
        match recorded {
            Ok(StepRecorded::Stale) => published.settle_stale(),
            _ => published.settle(matches!(recorded, Ok(StepRecorded::Applied))),
        }
        if let Some(plugins) =
            self.endpoints.get(&event.endpoint).filter(|_| self.registry.store().shares_kv())
        {
            chain::doubt_kv(&self.registry, &event.key.merchant, &plugins.chain);
        }
        match recorded? {
            StepRecorded::Applied => Ok(Recorded::Done(deliveries)),
            // Regression (a replaced decision delivered): the event was replayed while the step
            // ran, and the deliveries it decided were not created; handed to the workers all the
            // same, they were sent. The replay's own step decides what is sent.
            StepRecorded::SetAside => {
                tracing::info!(event_id = %event.key.id, "the event was replayed while its plugin step ran; the step's decision is set aside");
                Ok(Recorded::Done(Vec::new()))
            }
            // The space was forgotten with the writes above: the run again loads it.
            StepRecorded::Stale => {
                tracing::debug!(event_id = %event.key.id, "a kv key the plugin step read changed before it committed; running it again");
                Ok(Recorded::Stale)
            }
        }
    }

    /// Stops the scheduler's threads once their queued work is done.
    pub fn stop(&self) {
        self.scheduler.stop();
    }
}

/// Awaits `store_write` (a store's write), calling `handed` once it was first polled: the
/// stores take a write's place among theirs on its first poll (`DeliveryQueue::finish_plugin_step`).
async fn handed_on_first_poll<T>(store_write: impl Future<Output = T>, handed: impl FnOnce()) -> T {
    let mut store_write = std::pin::pin!(store_write);
    let mut handed = Some(handed);
    std::future::poll_fn(|cx| {
        let poll = store_write.as_mut().poll(cx);
        if let Some(handed) = handed.take() {
            handed();
        }
        poll
    })
    .await
}

/// How long an event whose plugin has no version yet waits before it looks again, after
/// waiting `waited`: a second at first, then a quarter of the time waited, at most 30 s. A
/// fixed short interval would rewrite every waiting event's step each second for as long as
/// nobody uploads; growing, an upload reaches an event within a quarter of its age.
fn waiting_recheck(waited_ms: i64) -> Duration {
    Duration::from_millis((waited_ms / 4).clamp(1_000, 30_000) as u64)
}

/// Queue mode: the dispatcher's step before an event's deliveries.
#[async_trait::async_trait]
impl Step for PluginStage {
    async fn run(&self, policy: &RetryPolicy, due: DueStep, claim: Option<&ClaimDeliveries<'_>>) -> StepDone {
        self.run_queued(policy, due, claim).await
    }
}

/// How many times a step runs in a row while another replica keeps changing a kv key its runs
/// read before it commits ([`StepRecorded::Stale`]). Each time, some replica's step committed;
/// past this, the step is left to run again later, after its retry backoff. With 8, two
/// replicas adding to one total left hundreds of steps to that backoff in a 20,000-event burst
/// (a tail of a minute); with 64 and [`stale_pause`], none.
const STALE_RUNS: usize = 64;

/// Makes a step (`once`) until it is not stale, at most [`STALE_RUNS`] times, each run after
/// the first after [`stale_pause`]; `None` when every run was stale.
async fn until_not_stale<T, F: std::future::Future<Output = Recorded<T>>>(
    mut once: impl FnMut() -> F,
) -> Option<T> {
    for stale in 0..STALE_RUNS {
        stale_pause(stale).await;
        if let Recorded::Done(done) = once().await {
            return Some(done);
        }
    }
    None
}

/// Before a step's run after `stale` stale ones: none the first time; then a random pause of up
/// to 1, 2, 4 … 64 ms. Another replica whose steps keep changing the key commits a batch every
/// few milliseconds while it has work, and a run made again at once mostly lost to its next
/// batch: with two replicas adding to one total, 3.1–3.8 runs per event without the pause
/// (bench/RESULTS.md, thirty-fourth look).
async fn stale_pause(stale: usize) {
    use rand::Rng;
    if stale == 0 {
        return;
    }
    let most = 1u64 << (stale - 1).min(6);
    let pause = rand::rng().random_range(0..=most * 1000);
    tokio::time::sleep(Duration::from_micros(pause)).await;
}

/// A step's record, or [`StepRecorded::Stale`]: run it again.
enum Recorded<T> {
    Done(T),
    Stale,
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
    kv_read: Vec<KvReadOf>,
    published: Published,
    routes: Option<Vec<String>>,
}

/// A dry run under way ([`PluginStage::dry_run`]). Nothing it does is recorded, delivered or
/// written to kv.
pub struct DryRun<'a> {
    stage: &'a PluginStage,
    trial: Arc<Trial>,
    name: String,
    tried: Vec<TrialEvent>,
}

impl DryRun<'_> {
    /// Runs both versions on `event` (the next oldest), each as an idle job on the scheduler,
    /// after every live one ([`Scheduler::submit_idle`]).
    pub async fn try_event(&mut self, event: Event) -> Result<(), RegistryError> {
        let event = Arc::new(event);
        let own = self.stage.endpoints.get(&event.endpoint).and_then(|e| e.upstream.clone());
        let side = |side: Side| {
            let (trial, event, own) = (self.trial.clone(), event.clone(), own.clone());
            self.stage.scheduler.submit_idle(move || trial.run(side, &event, own.as_deref()))
        };
        let stopped =
            || RegistryError::NoVersion("the gateway is stopping: try again once it is back".into());
        let active = side(Side::Active).await.map_err(|_| stopped())?;
        let candidate = side(Side::Candidate).await.map_err(|_| stopped())?;
        self.tried.push(trial::compare(&event, active, candidate));
        Ok(())
    }

    /// The report on the events tried.
    pub fn report(self) -> TrialReport {
        TrialReport::new(&self.name, self.trial.active_version(), self.tried)
    }
}
