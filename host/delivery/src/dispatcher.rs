//! The dispatcher: per upstream, a store poller and `concurrency` workers, on a thread of its
//! own at a lower CPU priority than ingress. It drains the queue, makes each attempt (or runs
//! the step), and records it; an attempt the store refuses is kept in memory until it is taken.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::UpstreamClient;
use crate::policy::attempt;
use crate::step::Step;
use crate::upstream::{Target, Upstream};
use payflow_clock::Clock;
use payflow_store::{DueDelivery, Store};

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

/// Drains the durable queue: one loop per upstream, each with its own concurrency limit, so a
/// slow upstream never holds back another's deliveries.
pub struct Dispatcher {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) client: UpstreamClient,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    pub(crate) step: Option<Arc<dyn Step>>,
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
    pub(crate) fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
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
    pub(crate) async fn work(self: Arc<Self>, upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
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
    pub(crate) async fn poll(self: Arc<Self>, upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
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
    pub(crate) async fn deliver(&self, upstream: &Upstream, d: DueDelivery) -> bool {
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
    pub(crate) async fn record_unrecorded(&self, upstream: &Upstream) {
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
