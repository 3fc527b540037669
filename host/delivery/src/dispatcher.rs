//! The dispatcher: per lane (each upstream's deliveries, and the plugin steps), a store
//! poller and `concurrency` workers, on a thread of its own at a lower CPU priority than
//! ingress. It drains the durable queue in the one direction events flow, stored → plugin step
//! → deliveries: a worker runs a due step, queues the deliveries it created, and makes and
//! records delivery attempts; an attempt the store refuses is kept in memory until it is taken.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::client::UpstreamClient;
use crate::flow::{Flow, Permit};
use crate::hand_offs::HandOff;
use crate::lane::{Lane, Reserved};
use crate::policy::attempt;
use crate::queue::Queued;
use crate::recorder::Recorder;
use crate::step::{ClaimDeliveries, Step, StepDone};
use crate::upstream::Upstream;
use payflow_clock::Clock;
use payflow_store::{Claim, DueCursor, DueDelivery, DueStep, Store, StoreError};
use payflow_telemetry::Telemetry;

/// How often the store is polled while the workers are busy with what ingress handed them.
pub(crate) const BUSY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows read from the store per poll.
pub(crate) const POLL_PAGE: usize = 512;
/// How often the dispatcher polls the store for due retries when nothing else wakes it. A
/// retry may start up to this late; polling more often costs reads for nothing.
pub(crate) const STORE_POLL_INTERVAL: Duration = Duration::from_millis(200);

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

/// Drains the durable queue: one loop per lane, each with its own concurrency limit, so a
/// slow upstream never holds back another's deliveries, nor the plugins anyone's.
pub struct Dispatcher {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) client: UpstreamClient,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    steps: Option<Arc<Steps>>,
    /// Where each attempt's span goes (disabled unless [`Dispatcher::with_telemetry`]).
    telemetry: Arc<Telemetry>,
    /// Attempt records on their way to the store.
    recorder: Recorder,
    /// How the rows this gateway's writers store reach its workers (and, on a store that
    /// does not claim rows, which ones the pollers leave alone meanwhile).
    hand_off: HandOff,
    /// Each merchant's upstreams: those its plugin steps' deliveries may go to.
    by_merchant: HashMap<String, Vec<Arc<Upstream>>>,
}

/// The plugin steps' lane and what runs them, as [`Dispatcher::new`] takes them.
pub type StepLane = (Arc<Lane<DueStep>>, Arc<dyn Step>);

/// The plugin steps' lane and what runs them.
struct Steps {
    lane: Arc<Lane<DueStep>>,
    step: Arc<dyn Step>,
}

/// One poll's read: what is due at `now_ms`, after `cursor`, at most `limit`.
#[derive(Clone, Copy)]
struct Page<'a> {
    now_ms: i64,
    cursor: Option<&'a DueCursor>,
    limit: usize,
}

/// One lane as the dispatcher drains it: where its due rows come from and what a worker does
/// with one.
#[async_trait]
trait Drain: Send + Sync + 'static {
    type Due: Queued;
    fn lane(&self) -> &Lane<Self::Due>;
    /// For logs.
    fn name(&self) -> &str;
    async fn due(&self, store: &dyn Store, page: Page<'_>) -> Result<Vec<Self::Due>, StoreError>;
    /// Before each poll: what the store refused to record before.
    async fn before_poll(&self, _dispatcher: &Dispatcher) {}
    /// What admits each attempt (rate limit, breaker), if anything.
    fn flow(&self) -> Option<&Flow> {
        None
    }
    /// Runs one, under `permit` when the lane has flow control. True when its outcome is
    /// recorded and it can be released now.
    async fn run(
        self: Arc<Self>,
        dispatcher: Arc<Dispatcher>,
        due: Self::Due,
        permit: Option<Permit>,
    ) -> bool;
}

#[async_trait]
impl Drain for Upstream {
    type Due = DueDelivery;
    fn lane(&self) -> &Lane<DueDelivery> {
        &self.lane
    }
    fn name(&self) -> &str {
        &self.name
    }
    async fn due(&self, store: &dyn Store, page: Page<'_>) -> Result<Vec<DueDelivery>, StoreError> {
        match self.ordering {
            Some(_) => store.due_ordered_deliveries(&self.name, page.now_ms, page.cursor, page.limit).await,
            None => store.due_deliveries(&self.name, page.now_ms, page.cursor, page.limit).await,
        }
    }
    async fn before_poll(&self, dispatcher: &Dispatcher) {
        dispatcher.record_unrecorded(self).await;
    }
    fn flow(&self) -> Option<&Flow> {
        Some(&self.flow)
    }
    async fn run(
        self: Arc<Self>,
        dispatcher: Arc<Dispatcher>,
        due: DueDelivery,
        permit: Option<Permit>,
    ) -> bool {
        dispatcher.deliver(self, due, permit).await;
        false // released once its attempt is recorded
    }
}

#[async_trait]
impl Drain for Steps {
    type Due = DueStep;
    fn lane(&self) -> &Lane<DueStep> {
        &self.lane
    }
    fn name(&self) -> &str {
        "plugin steps"
    }
    async fn due(&self, store: &dyn Store, page: Page<'_>) -> Result<Vec<DueStep>, StoreError> {
        store.due_steps(page.now_ms, page.cursor, page.limit).await
    }
    async fn run(self: Arc<Self>, dispatcher: Arc<Dispatcher>, due: DueStep, _: Option<Permit>) -> bool {
        let (key, attempts) = (due.event.key.clone(), due.attempts);
        // The deliveries the step creates are visible to the pollers from its record on: either
        // the hand-off is under way until they are handed off, or they are stored claimed.
        let (under_way, mut places, lease_ms) = match &dispatcher.hand_off {
            HandOff::Direct(hand_offs) => (Some(hand_offs.begin(&key)), Vec::new(), None),
            HandOff::Claimed { lease_ms } => (None, dispatcher.places(&key.merchant), Some(*lease_ms)),
        };
        let claim = lease_ms.map(|lease_ms| {
            let upstreams = places.iter().map(|&(u, _)| u.name.as_str()).collect();
            ClaimDeliveries { lease_ms, upstreams }
        });
        match self.step.run(&self.lane.policy, due, claim.as_ref()).await {
            StepDone::Recorded(deliveries) => {
                for d in deliveries {
                    // A step creates one delivery per upstream at most: one place each.
                    let place = match d.claimed_until_ms {
                        Some(_) => places.iter().position(|(u, _)| u.name == d.upstream),
                        None => None,
                    };
                    match (dispatcher.upstreams.get(&d.upstream), place) {
                        (Some(_), Some(i)) => places.swap_remove(i).1.hand_off(d),
                        // Stored unclaimed on a shared store: taken by the read that claims it.
                        (Some(upstream), None) if under_way.is_none() && d.claimed_until_ms.is_none() => {
                            upstream.poll_store_now()
                        }
                        (Some(upstream), None) => upstream.hand_off(d),
                        (None, _) => {
                            tracing::warn!(upstream = %d.upstream, "a plugin step created a delivery to an unknown upstream")
                        }
                    }
                }
                drop(under_way);
                true
            }
            StepDone::Refused => {
                drop((under_way, places));
                // Runs again, but not before its backoff and not before the store takes
                // writes again.
                tokio::spawn(async move {
                    tokio::time::sleep(self.lane.policy.backoff(attempts + 1, None)).await;
                    while dispatcher.store.check_writable(dispatcher.clock.now_ms()).await.is_err() {
                        tokio::time::sleep(BUSY_POLL_INTERVAL).await;
                    }
                    self.lane.queue.release(&key);
                });
                false
            }
        }
    }
}

impl Dispatcher {
    /// A dispatcher over these upstreams and, when `steps`, the plugin steps' lane with what
    /// runs them; `hand_off` is shared with the ingress that hands it stored events.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        client: UpstreamClient,
        upstreams: HashMap<String, Arc<Upstream>>,
        steps: Option<StepLane>,
        hand_off: HandOff,
    ) -> Self {
        let steps = steps.map(|(lane, step)| Arc::new(Steps { lane, step }));
        let mut by_merchant: HashMap<String, Vec<Arc<Upstream>>> = HashMap::new();
        for u in upstreams.values() {
            by_merchant.entry(u.merchant.clone()).or_default().push(u.clone());
        }
        Dispatcher {
            store,
            clock,
            client,
            upstreams,
            steps,
            telemetry: Arc::new(Telemetry::disabled()),
            recorder: Recorder::default(),
            hand_off,
            by_merchant,
        }
    }

    /// Places held for a step of `merchant`'s in the queues of its upstreams that have room
    /// now ([`Upstream::reserve`]: an ordered upstream's deliveries come from the store only):
    /// the deliveries it creates to those upstreams are stored claimed by this gateway (see
    /// [`ClaimDeliveries`]) and handed off into them.
    pub(crate) fn places(&self, merchant: &str) -> Vec<(&Arc<Upstream>, Reserved<'_, DueDelivery>)> {
        let upstreams = self.by_merchant.get(merchant).map(Vec::as_slice).unwrap_or_default();
        upstreams.iter().filter_map(|u| Some((u, u.reserve(merchant)?))).collect()
    }

    /// Records a span of each delivery attempt there (and sends its `traceparent`).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Starts the dispatcher on a thread of its own ("payflow-deliver", CPU priority lowered by
    /// [`DELIVERY_NICE`]) with, per lane, its store poller and `concurrency` workers. They
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
                let (this, tasks) = self.spawn(shutdown);
                for task in tasks {
                    let _ = task.await;
                }
                this.recorder.drained().await;
                this.release_claims().await;
            });
            let _ = done.send(());
        })?;
        Ok(stopped)
    }

    /// Spawns the pollers and workers on the current runtime.
    pub(crate) fn spawn(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let this = Arc::new(self);
        this.recorder.start(this.store.clone());
        let mut tasks = Vec::new();
        for upstream in this.upstreams.values() {
            tasks.extend(this.clone().drain(upstream.clone(), &shutdown));
        }
        if let Some(steps) = &this.steps {
            tasks.extend(this.clone().drain(steps.clone(), &shutdown));
        }
        (this, tasks)
    }

    /// A lane's poller and workers.
    fn drain<D: Drain>(
        self: Arc<Self>,
        lane: Arc<D>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let (me, l, stop) = (self.clone(), lane.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { me.poll(l, stop).await }));
        for _ in 0..lane.lane().concurrency {
            let (me, l, stop) = (self.clone(), lane.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { me.work(l, stop).await }));
        }
        tasks
    }

    /// A worker: one at a time, from the lane's queue.
    async fn work<D: Drain>(self: Arc<Self>, drain: Arc<D>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let lane = drain.lane();
            // Leave first, then a delivery: while the breaker is open (or the bucket empty)
            // deliveries stay queued, none taken and held.
            let permit = match drain.flow() {
                Some(flow) => tokio::select! {
                    permit = flow.admit() => Some(permit),
                    _ = shutdown.changed() => continue,
                },
                None => None,
            };
            match lane.queue.pop(lane.merchant_in_flight) {
                Some(due) => {
                    let key = due.event().key.clone();
                    if drain.clone().run(self.clone(), due, permit).await {
                        drain.lane().queue.release(&key);
                    }
                }
                None => {
                    if let (Some(flow), Some(permit)) = (drain.flow(), permit) {
                        flow.unused(permit);
                    }
                    // Ran dry: with a backlog in the store, have the poller fetch the next page now.
                    // (Without one, polling here would re-read rows already in flight.)
                    if lane.backlog.load(Ordering::Acquire) {
                        lane.poll_now.notify_one();
                    }
                    tokio::select! {
                        _ = lane.queue.ready.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// The store poller: retries that came due, replays, and what a crash left behind. It pages
    /// through due rows with a cursor so a large backlog drains at delivery speed, and starts
    /// over from the oldest when it reaches the end.
    async fn poll<D: Drain>(self: Arc<Self>, drain: Arc<D>, mut shutdown: watch::Receiver<bool>) {
        let lane = drain.lane();
        let mut cursor = None;
        let mut last_poll: Option<Instant> = None;
        while !*shutdown.borrow() {
            self.hand_back_refused(lane).await;
            drain.before_poll(&self).await;
            // While the workers have enough queued in memory, the store is read only at a slow
            // pace (for retries that came due): its due rows are then mostly the very events
            // already queued, and reading them again would cost more than delivering them.
            let busy = lane.queue.waiting() >= lane.concurrency;
            let stale = last_poll.is_none_or(|t| t.elapsed() >= BUSY_POLL_INTERVAL);
            // Nothing is fetched while the breaker is open: it would only wait in memory.
            let open = !drain.flow().is_none_or(Flow::accepting);
            let mut added = 0;
            if !open && (!busy || stale) {
                let page = lane.queue.room().min(POLL_PAGE);
                if page > 0 {
                    let since = lane.queue.since();
                    let read = Page { now_ms: self.clock.now_ms(), cursor: cursor.as_ref(), limit: page };
                    match drain.due(&*self.store, read).await {
                        Ok(due) => {
                            cursor = (due.len() == page).then(|| due.last().map(Queued::cursor)).flatten();
                            lane.backlog.store(cursor.is_some(), Ordering::Release);
                            // A row whose writer is about to hand it off is left to it. A row
                            // the queue has no room for waits in the store: the page is bounded
                            // by the queue's room, but not by each merchant's share of it. A row
                            // held in memory already (its lease ran out while it waited) keeps
                            // the claim this read took, so that no other replica takes it too.
                            // (The claim is only read off a row that was not queued: a row
                            // queued, the common case, costs no copy of its key and no second
                            // look at the queue.)
                            let mut not_queued = Vec::new();
                            for d in due {
                                let left = match self.hand_off.under_way(&d.event().key) {
                                    true => d,
                                    false => match lane.queue.push_polled(d, since) {
                                        Ok(()) => {
                                            added += 1;
                                            continue;
                                        }
                                        Err(d) => d,
                                    },
                                };
                                if !lane.queue.holds(&left.event().key) {
                                    not_queued.extend(left.claim());
                                }
                            }
                            lane.queue.forget_finished(since);
                            // Regression (a burst's tail waited out its lease): a store that
                            // claims rows claimed these by reading them, and nothing in memory
                            // will start them, so their claims go back at once (else ~5% of a
                            // 20,000-event burst waited the whole lease, 60 s).
                            if !not_queued.is_empty() {
                                lane.keep_refused(not_queued);
                                self.hand_back_refused(lane).await;
                            }
                        }
                        Err(e) => tracing::warn!(lane = drain.name(), error = %e, "cannot read what is due"),
                    }
                    last_poll = Some(Instant::now());
                }
            }
            if added > 0 && cursor.is_some() && lane.queue.waiting() < lane.concurrency {
                continue; // a backlog in the store, and the workers are running low
            }
            tokio::select! {
                _ = lane.poll_now.notified() => {}
                _ = tokio::time::sleep(STORE_POLL_INTERVAL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Makes the attempt, frees the worker's turn, and sends the record to the store without
    /// waiting for it (see [`Recorder`]): the delivery is released once it is recorded, or
    /// kept claimed if the store refused the record (see [`Upstream::unrecorded`]).
    pub(crate) async fn deliver(
        self: Arc<Self>,
        upstream: Arc<Upstream>,
        d: DueDelivery,
        permit: Option<Permit>,
    ) {
        let attempt = Arc::new(attempt(&self.client, &*self.clock, &upstream, &d, &self.telemetry).await);
        if let Some(permit) = permit {
            let info = &attempt.info;
            let failed = info.error.is_some() || matches!(info.status_code, Some(408 | 429 | 500..=599));
            upstream.flow.finished(permit, failed);
        }
        upstream.lane.queue.attempted(&d.event.key.merchant);
        self.recorder.send(upstream, attempt).await;
    }

    /// On stopping: hands back the rows this gateway claimed but never started, so that the
    /// other replicas take them at once instead of when their leases run out.
    async fn release_claims(&self) {
        fn held<T: Queued>(lane: &Lane<T>) -> impl Iterator<Item = Claim> {
            let waiting = lane.queue.take_waiting().into_iter().filter_map(|d| d.claim());
            lane.take_refused().into_iter().chain(waiting)
        }
        let mut claims: Vec<Claim> = self.upstreams.values().flat_map(|u| held(&u.lane)).collect();
        if let Some(steps) = &self.steps {
            claims.extend(held(&steps.lane));
        }
        if claims.is_empty() {
            return;
        }
        let count = claims.len();
        match self.store.release_claims(claims).await {
            Ok(()) => {
                tracing::info!(count, "handed back the deliveries and plugin steps claimed but not started")
            }
            Err(e) => {
                tracing::warn!(count, error = %e, "cannot hand back claims; the other replicas take them when their leases run out")
            }
        }
    }

    /// Hands back the claims kept for it (see [`Lane::keep_refused`]): rows stored claimed
    /// whose hand-off the lane's queue refused, and rows a poll read but did not queue, so
    /// that they are due at once, for the next poll too.
    /// Kept for the next poll if the store refuses; at worst they run out.
    async fn hand_back_refused<T: Queued>(&self, lane: &Lane<T>) {
        let claims = lane.take_refused();
        if claims.is_empty() {
            return;
        }
        if let Err(e) = self.store.release_claims(claims.clone()).await {
            tracing::warn!(count = claims.len(), error = %e, "cannot hand back the claims of refused hand-offs; trying again at the next poll");
            lane.keep_refused(claims);
        }
    }

    /// Records the attempts the store refused before (all in one write), releasing their
    /// deliveries once they are.
    pub(crate) async fn record_unrecorded(&self, upstream: &Upstream) {
        let attempts = upstream.take_unrecorded();
        if attempts.is_empty() {
            return;
        }
        match self.store.record_attempts(attempts.clone()).await {
            Ok(()) => attempts.iter().for_each(|a| upstream.recorded(a)),
            Err(_) => upstream.keep_unrecorded(attempts), // the store is still refusing: next time
        }
    }
}
