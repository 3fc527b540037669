//! payflow-delivery: delivery to upstreams: the HTTP request to the merchant's app, the retry
//! policy, and the dispatcher that drains the durable queue (with the fair queue per
//! upstream, `fair_queue.rs`, and the [`Step`] an event may go through before its deliveries).
//!
//! At least once: a delivery is marked done only after the upstream answered 2xx and that was
//! recorded; a crash in between means it is sent again, with the same `X-PayFlow-Event-Id`
//! so the upstream can de-duplicate. This crate never invents events: it only sends what the
//! store holds. 2xx is success; 408, 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff and jitter (or the upstream's `Retry-After`); other 4xx are permanent.
//!
//! Acknowledgements come first: the dispatcher runs on its own thread ([`Dispatcher::start`])
//! at a lower CPU priority than ingress, so a burst is acknowledged at the speed of the store
//! and delivered as the CPU allows, instead of deliveries taking the CPU that senders, waiting
//! on their timeouts, need. Under sustained overload deliveries still get a share (a nice
//! value weighs, it never starves), and nothing is lost: the queue is durable.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payflow_verify::{Scheme, SignOptions, Signer};
use rand::Rng;
use tokio::sync::{watch, Notify};

mod fair_queue;
mod step;

use fair_queue::FairQueue;
pub use step::Step;

use payflow_clock::Clock;
use payflow_config::{PluginsConfig, UpstreamConfig};
use payflow_metrics::Counter;
use payflow_store::{Attempt, AttemptInfo, AttemptOutcome, DueDelivery, EventKey, Store, PLUGIN_STEP};

/// Header carrying the event id on every delivery.
pub const EVENT_ID_HEADER: &str = "x-payflow-event-id";
/// Header carrying the ingress request id, for tracing across hops.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The most of an upstream's reply that is read and kept.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Deliveries waiting in memory per upstream; beyond this they wait in the store only.
const QUEUE_CAPACITY: usize = 4096;
/// Deliveries one merchant may have waiting in memory per upstream: a merchant's backlog
/// must not fill the queue that another's new events are handed to.
const MERCHANT_QUEUE_SHARE: usize = QUEUE_CAPACITY / 4;
/// How often the store is polled while the workers are busy with what ingress handed them.
const BUSY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows read from the store per poll.
const POLL_PAGE: usize = 512;
/// How often the dispatcher polls the store for due retries when nothing else wakes it. A
/// retry may start up to this late; polling more often costs reads for nothing.
const STORE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest `Retry-After` obeyed; a larger one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The most of an upstream's reply stored with an attempt (for the admin view).
const STORED_REPLY_BYTES: usize = 1024;

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
    retry_base: Duration,
    retry_max: Duration,
    /// Deliveries in flight at once: the number of worker tasks.
    pub concurrency: usize,
    /// Deliveries one merchant may have in flight at once. Only the plugin step's queue is
    /// shared between merchants: there a merchant gets three quarters of the workers, so that
    /// while its steps run long (plugins spinning to their deadline) the rest take the others'
    /// at once. An HTTP upstream has one merchant, who gets every worker.
    merchant_in_flight: usize,
    /// One per delivery in flight, from the workers and from plugin steps that deliver their
    /// event's first attempt themselves: together they never exceed `concurrency`.
    permits: tokio::sync::Semaphore,
    /// Deliveries waiting for a worker, fed by ingress and by the store poller.
    queue: DeliveryQueue,
    /// Wakes the store poller before its interval is up.
    poll_now: Notify,
    /// Set while the store holds more due deliveries than the last poll could take: workers
    /// that run dry then ask for the next page at once instead of waiting for the interval.
    backlog: AtomicBool,
    /// Attempts, by outcome.
    pub counts: DeliveryCounts,
    /// Attempts made but not yet recorded (the store refused the write). Their deliveries stay
    /// claimed until they are recorded, so the store's stale row (still due, its attempts not
    /// counted) is never sent again: backoff and `max_attempts` hold while the store is full.
    unrecorded: Mutex<Vec<Arc<Attempt>>>,
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
    fn count(&self, outcome: &AttemptOutcome) {
        match outcome {
            AttemptOutcome::Delivered => self.delivered.inc(),
            AttemptOutcome::Retry { .. } => self.retry.inc(),
            AttemptOutcome::Dead => self.dead.inc(),
        }
    }
}

/// The deliveries waiting for an upstream's workers, and every one claimed (queued or in
/// flight), so that neither ingress nor the store poller can start one twice.
#[derive(Default)]
struct DeliveryQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    /// In turn: merchants, then their endpoints, round robin (see [`fair_queue`]).
    waiting: FairQueue<DueDelivery>,
    claimed: HashSet<EventKey>,
    /// Deliveries finished (recorded, then released) since the poller's last read began, with
    /// the sequence number of their release. A row the poller read as pending may have been
    /// finished while the read ran; without this, it would be queued and sent again.
    finished: HashMap<EventKey, u64>,
    released: u64,
}

impl DeliveryQueue {
    /// Queues a delivery unless it is already claimed or the queue is full (the store keeps it
    /// either way). True when queued.
    fn push(&self, delivery: DueDelivery) -> bool {
        let queued = self.state.lock().is_ok_and(|mut s| {
            if s.waiting.len() >= QUEUE_CAPACITY
                || s.waiting.waiting(&delivery.key.merchant) >= MERCHANT_QUEUE_SHARE
                || !s.claimed.insert(delivery.key.clone())
            {
                return false;
            }
            let (merchant, endpoint) = (delivery.key.merchant.clone(), delivery.endpoint.clone());
            s.waiting.push(&merchant, &endpoint, delivery);
            true
        });
        if queued {
            self.ready.notify_one();
        }
        queued
    }

    /// Queues what the poller read in a read that began at `since` (see [`Self::since`]),
    /// except deliveries finished after that: the read may predate their record. True when
    /// queued.
    fn push_polled(&self, delivery: DueDelivery, since: u64) -> bool {
        let stale =
            self.state.lock().is_ok_and(|s| s.finished.get(&delivery.key).is_some_and(|&at| at > since));
        !stale && self.push(delivery)
    }

    /// The release sequence a poll's read starts at.
    fn since(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.released)
    }

    /// After a poll that began at `since`: releases up to it are visible to every later read.
    fn forget_finished(&self, since: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.finished.retain(|_, at| *at > since);
        }
    }

    /// The next delivery in turn of a merchant with fewer than `max_in_flight` popped and not
    /// yet released.
    fn pop(&self, max_in_flight: usize) -> Option<DueDelivery> {
        self.state.lock().ok()?.waiting.pop(max_in_flight)
    }

    /// Called once the delivery's outcome is recorded in the store.
    fn release(&self, key: &EventKey) {
        if let Ok(mut s) = self.state.lock() {
            s.claimed.remove(key);
            s.waiting.finish(&key.merchant);
            s.released += 1;
            let at = s.released;
            s.finished.insert(key.clone(), at);
        }
    }

    fn waiting(&self) -> usize {
        self.state.lock().map_or(0, |s| s.waiting.len())
    }

    fn room(&self) -> usize {
        self.state.lock().map_or(0, |s| QUEUE_CAPACITY.saturating_sub(s.waiting.len()))
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

    fn with(config: &UpstreamConfig, target: Target) -> Self {
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

/// An upstream's answer.
#[derive(Debug)]
pub struct UpstreamReply {
    /// Status.
    pub status: StatusCode,
    /// Its content type, passed back in proxy mode.
    pub content_type: Option<HeaderValue>,
    /// `Retry-After` as a delay from now, when given (either form).
    pub retry_after: Option<Duration>,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No complete answer within the upstream's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect, or the connection broke.
    #[error("connection failed: {0}")]
    Connection(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Try again (408, 429, 5xx, no answer).
    Retry,
    /// Never succeed (other 4xx, 3xx).
    Permanent,
}

/// The retry policy: 2xx delivered; 408, 429, 5xx and no reply retried; any other status
/// permanent.
pub fn classify(result: &Result<UpstreamReply, SendError>) -> Verdict {
    match result {
        Ok(r) if r.status.is_success() => Verdict::Delivered,
        Ok(r) if r.status == StatusCode::REQUEST_TIMEOUT || r.status == StatusCode::TOO_MANY_REQUESTS => {
            Verdict::Retry
        }
        Ok(r) if r.status.is_server_error() => Verdict::Retry,
        Ok(_) => Verdict::Permanent,
        Err(_) => Verdict::Retry,
    }
}

/// The HTTP client for upstreams (HTTP/1.1, pooled keep-alive connections).
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        UpstreamClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl UpstreamClient {
    /// POSTs an event's body to the upstream with `X-PayFlow-Event-Id` (and a fresh
    /// signature when the upstream has a `sign_secret`), plus the headers plugins added (a
    /// plugin's `content-type` replaces the JSON one).
    pub async fn send(
        &self,
        upstream: &Upstream,
        event_id: &str,
        request_id: &str,
        body: Bytes,
        headers: &[(String, String)],
        now_secs: i64,
    ) -> Result<UpstreamReply, SendError> {
        let Target::Http { uri, signer } = &upstream.target else {
            return Err(SendError::Connection(format!("{} is not an HTTP upstream", upstream.name)));
        };
        let typed = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        let mut request = Request::post(uri.clone());
        if !typed {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut request = request
            .header(USER_AGENT, concat!("payflow-edge/", env!("CARGO_PKG_VERSION")))
            .header(EVENT_ID_HEADER, event_id)
            .header(REQUEST_ID_HEADER, request_id);
        if let Some(signer) = signer {
            if let Ok(headers) = signer.sign(&body, &SignOptions::at(now_secs)) {
                for (name, value) in headers {
                    request = request.header(name, value);
                }
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Connection(e.to_string()))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| SendError::Connection(error_chain(&e)))?;
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_secs));
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(UpstreamReply { status, content_type, retry_after, body })
        };
        tokio::time::timeout(upstream.timeout, exchange)
            .await
            .map_err(|_| SendError::Timeout(upstream.timeout))?
    }
}

/// A `Retry-After` value as a delay from `now_secs` (unix): RFC 9110 allows whole seconds or
/// an HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must
/// accept). A date already past means "now". `None` for anything else, so the usual backoff
/// applies.
pub fn parse_retry_after(value: &str, now_secs: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at_secs.saturating_sub(now_secs).max(0) as u64))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a reply body, for the admin view.
pub fn reply_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(STORED_REPLY_BYTES)]);
    text.into_owned()
}

/// An attempt under way: started now, recorded by [`AttemptStart::finish`] with its result.
pub struct AttemptStart {
    key: EventKey,
    number: u32,
    at_ms: i64,
    started: Instant,
}

impl AttemptStart {
    /// Starts attempt `number` of delivering the event `key` at `at_ms`.
    pub fn new(key: EventKey, number: u32, at_ms: i64) -> Self {
        AttemptStart { key, number, at_ms, started: Instant::now() }
    }

    /// The record of this attempt, to store.
    pub fn finish(
        self,
        upstream: &Upstream,
        result: &Result<UpstreamReply, SendError>,
        outcome: AttemptOutcome,
    ) -> Attempt {
        upstream.counts.count(&outcome);
        Attempt {
            key: self.key,
            info: AttemptInfo {
                upstream: upstream.name.clone(),
                number: self.number,
                at_ms: self.at_ms,
                duration_ms: self.started.elapsed().as_millis() as i64,
                status_code: result.as_ref().ok().map(|r| r.status.as_u16()),
                error: result.as_ref().err().map(ToString::to_string),
                response: result.as_ref().ok().map(|r| reply_excerpt(&r.body)),
            },
            outcome,
        }
    }
}

/// How much lower than ingress the delivery thread's CPU priority is. Linux weighs nice 10
/// against nice 0 at about 1:10: under contention deliveries get a tenth of a core per busy
/// ingress core; when ingress is quiet they get all the CPU there is.
pub const DELIVERY_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`DELIVERY_NICE`] (Linux, where a nice value is
/// per thread). Elsewhere, or if refused, deliveries simply run at normal priority.
pub fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id, with no memory passed.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + DELIVERY_NICE) != 0 {
            tracing::debug!("could not lower the delivery thread's priority");
        }
    }
}

/// Drains the durable queue: one loop per upstream, each with its own concurrency limit, so a
/// slow upstream never holds back another's deliveries.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    client: UpstreamClient,
    upstreams: HashMap<String, Arc<Upstream>>,
    step: Option<Arc<dyn Step>>,
}

impl Dispatcher {
    /// A dispatcher over these upstreams (with the step's queue among them when `step`).
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        client: UpstreamClient,
        upstreams: HashMap<String, Arc<Upstream>>,
        step: Option<Arc<dyn Step>>,
    ) -> Self {
        Dispatcher { store, clock, client, upstreams, step }
    }

    /// Starts the dispatcher on a thread of its own ("payflow-deliver", CPU priority lowered by
    /// [`DELIVERY_NICE`]) with, per upstream, its store poller and `concurrency` workers. They
    /// stop when `shutdown` turns true, the workers after the delivery in hand; the returned
    /// receiver completes then.
    pub fn start(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (done, stopped) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("payflow-deliver".into()).spawn(move || {
            lower_this_threads_priority();
            runtime.block_on(async move {
                for task in self.spawn(shutdown) {
                    let _ = task.await;
                }
            });
            let _ = done.send(());
        })?;
        Ok(stopped)
    }

    /// Spawns the pollers and workers on the current runtime.
    fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for upstream in this.upstreams.values() {
            let (me, up, stop) = (this.clone(), upstream.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { me.poll(up, stop).await }));
            for _ in 0..upstream.concurrency {
                let (me, up, stop) = (this.clone(), upstream.clone(), shutdown.clone());
                tasks.push(tokio::spawn(async move { me.work(up, stop).await }));
            }
        }
        tasks
    }

    /// A worker: one delivery at a time, from the upstream's queue.
    async fn work(self: Arc<Self>, upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match upstream.queue.pop(upstream.merchant_in_flight) {
                Some(delivery) => {
                    let key = delivery.key.clone();
                    let attempts = delivery.attempts;
                    if self.deliver(&upstream, delivery).await {
                        upstream.queue.release(&key);
                    } else if let Target::PluginStep = upstream.target {
                        // A step whose record the store refused runs again, but not before its
                        // backoff and not before the store takes writes again.
                        let (me, up) = (self.clone(), upstream.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(up.backoff(attempts + 1, None)).await;
                            while me.store.check_writable(me.clock.now_ms()).await.is_err() {
                                tokio::time::sleep(BUSY_POLL_INTERVAL).await;
                            }
                            up.queue.release(&key);
                        });
                    }
                }
                None => {
                    // Ran dry: with a backlog in the store, have the poller fetch the next page now.
                    // (Without one, polling here would re-read rows already in flight.)
                    if upstream.backlog.load(Ordering::Acquire) {
                        upstream.poll_now.notify_one();
                    }
                    tokio::select! {
                        _ = upstream.queue.ready.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// The store poller: retries that came due, replays, and what a crash left behind. It pages
    /// through due rows with a cursor so a large backlog drains at delivery speed, and starts
    /// over from the oldest when it reaches the end.
    async fn poll(self: Arc<Self>, upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = None;
        let mut last_poll: Option<Instant> = None;
        while !*shutdown.borrow() {
            self.record_unrecorded(&upstream).await;
            // While the workers have enough queued in memory, the store is read only at a slow
            // pace (for retries that came due): its due rows are then mostly the very events
            // already queued, and reading them again would cost more than delivering them.
            let busy = upstream.queue.waiting() >= upstream.concurrency;
            let stale = last_poll.is_none_or(|t| t.elapsed() >= BUSY_POLL_INTERVAL);
            let mut added = 0;
            if !busy || stale {
                let page = upstream.queue.room().min(POLL_PAGE);
                if page > 0 {
                    let since = upstream.queue.since();
                    match self
                        .store
                        .due_deliveries(&upstream.name, self.clock.now_ms(), cursor.as_ref(), page)
                        .await
                    {
                        Ok(due) => {
                            cursor =
                                (due.len() == page).then(|| due.last().map(DueDelivery::cursor)).flatten();
                            upstream.backlog.store(cursor.is_some(), Ordering::Release);
                            added = due
                                .into_iter()
                                .map(|d| upstream.queue.push_polled(d, since))
                                .filter(|&queued| queued)
                                .count();
                            upstream.queue.forget_finished(since);
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %upstream.name, error = %e, "cannot read due deliveries")
                        }
                    }
                    last_poll = Some(Instant::now());
                }
            }
            if added > 0 && cursor.is_some() && upstream.queue.waiting() < upstream.concurrency {
                continue; // a backlog in the store, and the workers are running low
            }
            tokio::select! {
                _ = upstream.poll_now.notified() => {}
                _ = tokio::time::sleep(STORE_POLL_INTERVAL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Makes the attempt (or runs the plugin step) and records it; false when the store refused
    /// the record, and the delivery must stay claimed (see [`Upstream::unrecorded`]).
    async fn deliver(&self, upstream: &Upstream, d: DueDelivery) -> bool {
        if let Target::PluginStep = upstream.target {
            return match &self.step {
                Some(step) => step.run(upstream, d).await,
                None => {
                    tracing::warn!(event_id = %d.key.id, "a plugin step is due but no plugins are configured");
                    true
                }
            };
        }
        let attempt = Arc::new(attempt(&self.client, &*self.clock, upstream, &d).await);
        if let Err(e) = self.store.record_attempt(attempt.clone()).await {
            tracing::warn!(event_id = %d.key.id, error = %e, "cannot record a delivery attempt; kept until the store takes it");
            upstream.unrecorded.lock().unwrap_or_else(|p| p.into_inner()).push(attempt);
            return false;
        }
        true
    }

    /// Records the attempts the store refused before, releasing each delivery once it is.
    async fn record_unrecorded(&self, upstream: &Upstream) {
        let attempts = std::mem::take(&mut *upstream.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for attempt in attempts {
            if !left.is_empty() {
                left.push(attempt); // the store is still refusing: try the rest next time
                continue;
            }
            match self.store.record_attempt(attempt.clone()).await {
                Ok(()) => upstream.queue.release(&attempt.key),
                Err(_) => left.push(attempt),
            }
        }
        upstream.unrecorded.lock().unwrap_or_else(|p| p.into_inner()).extend(left);
    }
}

/// Makes delivery attempt `d.attempts + 1` (within the upstream's concurrency) and decides
/// what follows under the retry policy. The caller records the result.
pub async fn attempt(
    client: &UpstreamClient,
    clock: &dyn Clock,
    upstream: &Upstream,
    d: &DueDelivery,
) -> Attempt {
    let number = d.attempts + 1;
    let _permit = upstream.permits.acquire().await;
    let attempt = AttemptStart::new(d.key.clone(), number, clock.now_ms());
    let result =
        client.send(upstream, &d.key.id, &d.request_id, d.body.clone(), &d.headers, clock.now_secs()).await;
    let outcome = match classify(&result) {
        Verdict::Delivered => AttemptOutcome::Delivered,
        Verdict::Permanent => AttemptOutcome::Dead,
        Verdict::Retry if number >= upstream.max_attempts => AttemptOutcome::Dead,
        Verdict::Retry => {
            let retry_after = result.as_ref().ok().and_then(|r| r.retry_after);
            let delay = upstream.backoff(number, retry_after);
            AttemptOutcome::Retry { next_at_ms: clock.now_ms() + delay.as_millis() as i64 }
        }
    };
    let status = result.as_ref().map(|r| r.status.as_u16()).ok();
    let error = result.as_ref().err().map(ToString::to_string);
    tracing::info!(
        request_id = %d.request_id, merchant = %d.key.merchant, event_id = %d.key.id, upstream = %upstream.name,
        attempt = number, status = ?status, error = ?error, outcome = ?outcome, "delivery attempt"
    );
    attempt.finish(upstream, &result, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream::new(&UpstreamConfig {
            name: "u".into(),
            merchant: "default".into(),
            url: "http://127.0.0.1:1/".into(),
            timeout_ms: 100,
            max_attempts: 5,
            concurrency: 1,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            sign_secret: None,
        })
        .unwrap()
    }

    fn due(id: &str) -> DueDelivery {
        DueDelivery {
            key: EventKey { merchant: "m".into(), scope: "/e".into(), id: id.into() },
            upstream: "u".into(),
            endpoint: "/e".into(),
            attempts: 0,
            body: Bytes::new(),
            headers: Vec::new(),
            event_type: None,
            request_id: String::new(),
            next_attempt_at_ms: 0,
            received_at_ms: 0,
        }
    }

    /// Regression: a poll whose read began before a delivery was recorded saw it still pending
    /// and queued it again after the worker released it, so it was sent twice.
    #[test]
    fn a_delivery_finished_during_a_poll_is_not_queued_again() {
        let queue = DeliveryQueue::default();
        assert!(queue.push(due("evt_1")));
        let since = queue.since(); // the poller's read begins
        let taken = queue.pop(usize::MAX).unwrap(); // a worker delivers it, records it, releases it
        queue.release(&taken.key);
        assert!(!queue.push_polled(due("evt_1"), since), "the stale row must not be queued");
        assert!(queue.push_polled(due("evt_2"), since), "other rows are");
        queue.forget_finished(since);
        // A read that began after the release sees the record; if the row is still due then
        // (a retry), it is queued.
        let later = queue.since();
        queue.forget_finished(later);
        assert!(queue.pop(usize::MAX).is_some());
        assert!(queue.push_polled(due("evt_1"), later));
    }

    /// The retry policy through the clock seam, without sleeping: a failed attempt is due
    /// again at the clock's time plus its backoff, and the last allowed attempt is dead.
    #[tokio::test]
    async fn a_failed_attempt_is_due_again_after_its_backoff_and_the_last_is_dead() {
        let (client, u) = (UpstreamClient::default(), upstream()); // 127.0.0.1:1 refuses
        let clock = payflow_clock::ManualClock::at(1_700_000_000_000);
        let mut d = due("evt_retry");
        d.attempts = 2;
        let third = attempt(&client, &clock, &u, &d).await;
        let AttemptOutcome::Retry { next_at_ms } = third.outcome else { panic!("{:?}", third.outcome) };
        let wait = next_at_ms - clock.now_ms();
        assert!((2_000..=4_000).contains(&wait), "third attempt backs off 2-4 s, not {wait} ms");
        assert_eq!((third.info.number, third.info.at_ms), (3, 1_700_000_000_000));

        clock.advance(wait);
        d.attempts = u.max_attempts - 1;
        let last = attempt(&client, &clock, &u, &d).await;
        assert_eq!(last.outcome, AttemptOutcome::Dead, "attempt {} of {}", last.info.number, u.max_attempts);
        assert_eq!(last.info.at_ms, next_at_ms);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let u = upstream();
        for attempts in 1..=10u32 {
            let full = Duration::from_millis((1_000u64 << (attempts - 1)).min(60_000));
            for _ in 0..50 {
                let d = u.backoff(attempts, None);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert_eq!(u.backoff(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        // Retry-After beats retry_max (60 s here); only a day bounds it.
        assert_eq!(u.backoff(1, Some(Duration::from_secs(7_000))), Duration::from_secs(7_000));
        assert_eq!(u.backoff(1, Some(Duration::from_secs(10_000_000))), MAX_RETRY_AFTER);
    }

    /// Regression (issue 16, item 16): only the integer form was read, so an upstream asking
    /// for a pause with an HTTP-date was retried on the short backoff.
    #[test]
    fn retry_after_is_honoured_in_both_of_its_forms() {
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's own example, in each of its three forms.
        let example = 784_111_777;
        for date in
            ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"]
        {
            assert_eq!(parse_retry_after(date, example - 120), Some(Duration::from_secs(120)), "{date}");
            assert_eq!(parse_retry_after(date, example + 5), Some(Duration::ZERO), "{date} (past)");
        }
        assert_eq!(parse_retry_after(" 30 ", example), Some(Duration::from_secs(30)));
        for bad in ["", "soon", "-5", "1.5", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, example), None, "{bad:?}");
        }
    }

    #[test]
    fn classification_follows_design() {
        let reply = |code: u16| -> Result<UpstreamReply, SendError> {
            Ok(UpstreamReply {
                status: StatusCode::from_u16(code).unwrap(),
                content_type: None,
                retry_after: None,
                body: Bytes::new(),
            })
        };
        for (code, verdict) in [
            (200, Verdict::Delivered),
            (204, Verdict::Delivered),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
            (400, Verdict::Permanent),
            (404, Verdict::Permanent),
            (301, Verdict::Permanent),
        ] {
            assert_eq!(classify(&reply(code)), verdict, "{code}");
        }
        assert_eq!(classify(&Err(SendError::Timeout(Duration::ZERO))), Verdict::Retry);
    }
}
