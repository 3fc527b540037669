//! One event through an endpoint's plugins, in order: each sees the body as the one before it
//! left it; headers, forwards and tags add up; the first `drop` or failure ends the chain.
//!
//! Runs on a scheduler thread (blocking). The chain checks what plugins may not do: forward to
//! an upstream that is not their merchant's, or set a header the gateway owns. A run's kv
//! writes are kept aside while it runs, made visible to the plugin's next run as soon as it
//! succeeds (still within its turn, so no run of that plugin reads a value older than the last
//! successful run's), and committed by the caller with the step, under the version the space
//! gave them ([`KvSpace::publish`](crate::kv_space::KvSpace::publish)), so steps committing out
//! of their runs' order leave the latest run's value. The caller settles them with the step's
//! answer ([`Published::settle`]). If a later plugin fails, or the commit does, the plugins'
//! spaces are read again from the store: a failed step leaves no trace in the store but its
//! record. A run that overlapped it may have seen its writes: each run notes the write every key
//! it read came from, and its step commits only while the store holds those writes
//! ([`StepRecorded::Stale`](payflow_store::StepRecorded::Stale) else, and it runs again), so
//! nothing built on a write never applied is kept, whichever store.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;

use super::kv_space::KvSpace;
use super::registry::{Slot, Version};
use super::{check_quota, Action, Event, Failure, Kv, KvMap, KvQuotaExceeded, Outcome, Registry, Run};
use payflow_store::{
    Event as StoredEvent, KvReadOf, KvStamp, KvWrite, NewDelivery, PluginRunInfo, StoreError,
};

/// Headers the gateway sets itself; a plugin may not set or override them.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "x-payflow-event-id",
    "x-request-id",
    "x-payflow-signature",
    "webhook-signature",
    "stripe-signature",
];

/// An event's turn through the chain.
#[derive(Debug, Clone)]
pub struct ChainInput {
    /// The event, as it arrived.
    pub event: StoredEvent,
    /// Which attempt of the plugin step this is (1-based).
    pub attempt: u32,
    /// Start of the step, unix ms.
    pub at_ms: i64,
}

/// How the chain ended.
#[derive(Debug, Clone)]
pub enum ChainOutcome {
    /// Every plugin continued.
    Continue {
        /// The body to deliver (rewritten, or the original).
        body: Option<Bytes>,
        /// Headers to add to the endpoint's own delivery.
        headers: Vec<(String, String)>,
        /// Extra deliveries to named upstreams.
        forwards: Vec<NewDelivery>,
        /// Tags the plugins put on the event.
        tags: Vec<String>,
    },
    /// A plugin dropped the event.
    Drop {
        /// `plugin: reason`.
        reason: String,
        /// Tags given up to then.
        tags: Vec<String>,
    },
    /// A plugin failed (or was missing); the step is retried.
    Failed {
        /// `plugin: reason: detail`.
        reason: String,
    },
    /// A plugin of the chain has no version yet (declared without a file, nothing uploaded):
    /// nothing ran, and the step waits for one without using up its attempts.
    Waiting {
        /// `waiting: …`, naming the plugin and how to give it a version.
        reason: String,
    },
}

/// What the chain did.
#[derive(Debug)]
pub struct ChainResult {
    /// Each run, for the record.
    pub runs: Vec<PluginRunInfo>,
    /// kv writes to commit with the step (empty unless it continued or dropped).
    pub kv: Vec<KvWrite>,
    /// What its runs read from kv, when gateways share the store (empty unless it continued
    /// or dropped): the step commits only while those keys hold what the runs found.
    pub kv_read: Vec<KvReadOf>,
    /// The same writes, visible in the plugins' spaces until the step's answer settles them.
    pub published: Published,
    /// How the chain ended.
    pub outcome: ChainOutcome,
}

impl ChainResult {
    /// A chain that ran nothing (and wrote nothing).
    pub fn ran_nothing(outcome: ChainOutcome) -> Self {
        ChainResult {
            runs: Vec::new(),
            kv: Vec::new(),
            kv_read: Vec::new(),
            published: Published::default(),
            outcome,
        }
    }
}

/// The versions a step's runs wrote their kv writes under, visible in their plugins' spaces
/// before the step commits, and the plugins whose runs read kv. Dropped unsettled (the step's
/// future given up), the writes count as not committed: the spaces are read again from the
/// store.
#[derive(Default)]
#[must_use = "settle it with the step's answer"]
pub struct Published {
    writes: Vec<(Arc<Slot>, i64)>,
    /// The writes of other steps, not handed to the store yet, that these runs read
    /// ([`KvSpace::unsent`](crate::kv_space::KvSpace::unsent)).
    leans_on: Vec<(Arc<Slot>, i64)>,
    /// The plugins whose runs read kv: a stale answer counts a conflict against them
    /// ([`PluginCounts::kv_conflicts`](crate::registry::PluginCounts::kv_conflicts)), a read
    /// of theirs changed, whether or not their run wrote (the ledger writes nothing for an event
    /// its total already holds); and every answer counts toward their turns with other replicas
    /// ([`ReplicaTurn::answered`](crate::replica_turn::ReplicaTurn::answered)).
    readers: Vec<Arc<Slot>>,
}

impl Published {
    /// The step is answered: its writes `committed`, or not (the spaces that had them are read
    /// again from the store before their next run).
    pub fn settle(mut self, committed: bool) {
        self.settle_each(committed);
    }

    /// The step was stale (a kv key its runs read had been changed elsewhere): its writes, and
    /// the later runs' that may have read them, are forgotten
    /// ([`KvSpace::settle_stale`](crate::kv_space::KvSpace::settle_stale)), and each plugin
    /// whose run read kv counts a conflict.
    pub fn settle_stale(mut self) {
        for slot in self.readers.drain(..) {
            slot.counts.kv_conflicts.inc();
            slot.replica_turn.answered(true);
        }
        for (slot, version) in self.writes.drain(..) {
            slot.kv.lock().unwrap_or_else(|p| p.into_inner()).settle_stale(version);
            slot.handed.notify_waiters();
        }
    }

    fn settle_each(&mut self, committed: bool) {
        for slot in self.readers.drain(..) {
            slot.replica_turn.answered(false);
        }
        for (slot, version) in self.writes.drain(..) {
            slot.kv.lock().unwrap_or_else(|p| p.into_inner()).settle(version, committed);
            slot.handed.notify_waiters();
        }
    }

    /// Waits until every step whose writes these runs read has been handed to the store, or
    /// answered (it failed before), but no longer than 100 ms (`HANDED_WITHIN`): handed to the store
    /// after them, this step is written after them, and finds their writes there.
    pub async fn after_the_writes_read(&self) {
        let deadline = tokio::time::Instant::now() + HANDED_WITHIN;
        for (slot, version) in &self.leans_on {
            if !until_handed(&slot.kv, &slot.handed, *version, deadline).await {
                return;
            }
        }
    }

    /// The step is handed to the store (its place among the store's writes is taken): the steps
    /// whose runs read its writes may follow it ([`Published::after_the_writes_read`]).
    pub fn handed_to_the_store(&self) {
        for (slot, version) in &self.writes {
            slot.kv.lock().unwrap_or_else(|p| p.into_inner()).handed_to_the_store(*version);
            slot.handed.notify_waiters();
        }
    }
}

/// How long a step waits for the steps whose kv writes its runs read to be handed to the store
/// ([`Published::after_the_writes_read`]). Those steps' runs came first, and they are usually
/// handed on within a millisecond; one whose chain goes on with slow plugins takes longer. But
/// two steps may each have read the other's write (two endpoints of a merchant running the
/// same two plugins in opposite orders), and then neither would ever be handed on. Past this,
/// the step goes to the store as it is, and is stale if what it read is not there.
const HANDED_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits until the step that commits the writes of `version` in `space` is handed to the store
/// or answered (`handed` is woken each time one is), or until `deadline`: false then.
async fn until_handed(
    space: &Mutex<KvSpace>,
    handed: &tokio::sync::Notify,
    version: i64,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        let handed = handed.notified();
        let mut handed = std::pin::pin!(handed);
        // Woken by any hand-off from now on, so none between the look and the wait is missed.
        handed.as_mut().enable();
        if !space.lock().unwrap_or_else(|p| p.into_inner()).is_unsent(version) {
            return true;
        }
        if tokio::time::timeout_at(deadline, handed).await.is_err() {
            return false;
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.settle_each(false);
    }
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.writes.iter().map(|(slot, version)| (&slot.name, version))).finish()
    }
}

/// Runs `version` of the plugin in `slot` on `event` once, over a fresh view of its kv space
/// (`loaded`: whether the space was loaded for it); the view, the run and when it began.
fn run_once(
    slot: &Arc<Slot>,
    version: &Version,
    event: &Event,
    loaded: bool,
) -> (Arc<Overlay>, Run, Instant) {
    let overlay = Arc::new(Overlay {
        slot: slot.clone(),
        loaded,
        missed: AtomicBool::new(false),
        writes: Mutex::default(),
    });
    let started = Instant::now();
    let run = if slot.warm {
        let mut instance = version.take_warm(slot, overlay.clone());
        let run = instance.run(event);
        version.put_warm(instance);
        run
    } else {
        version.plugin.run(event, &slot.config, overlay.clone(), &slot.limits)
    };
    (overlay, run, started)
}

/// A run's view of a plugin's kv space: reads see the committed values and this run's own
/// writes; writes stay here until the run succeeds.
struct Overlay {
    slot: Arc<Slot>,
    /// Whether the space was loaded for this run. If not, the run is stopped at its first kv
    /// call and marked `missed`, to be made again with the space loaded.
    loaded: bool,
    missed: AtomicBool,
    writes: Mutex<Writes>,
}

/// A run's writes, and how many bytes they add to the space (negative when they shrink it).
#[derive(Default)]
struct Writes {
    values: HashMap<String, Vec<u8>>,
    growth: isize,
    /// The keys it read from the space (not its own writes), each with the write it found
    /// there first.
    found: HashMap<String, Option<KvStamp>>,
    /// Of those writes, the versions of this gateway's whose steps were not handed to the
    /// store yet ([`KvSpace::unsent`](crate::kv_space::KvSpace::unsent)).
    leans_on: Vec<i64>,
}

impl Overlay {
    fn with_space<T>(&self, f: impl FnOnce(&KvMap) -> T) -> T {
        f(self.slot.kv.lock().unwrap_or_else(|p| p.into_inner()).values())
    }
}

impl Kv for Overlay {
    fn available(&self) -> bool {
        if !self.loaded {
            self.missed.store(true, Ordering::Relaxed);
        }
        self.loaded
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if !self.available() {
            return None;
        }
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = writes.values.get(key) {
            return Some(v.clone());
        }
        let space = self.slot.kv.lock().unwrap_or_else(|p| p.into_inner());
        if !writes.found.contains_key(key) {
            let found = space.stamp(key);
            writes.leans_on.extend(space.unsent(found));
            writes.found.insert(key.to_string(), found);
        }
        space.values().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), KvQuotaExceeded> {
        if !self.available() {
            return Err(KvQuotaExceeded { quota_bytes });
        }
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let (committed, old) = self.with_space(|space| (space.used(), space.size(key)));
        let old = writes.values.get(key).map_or(old, |v| key.len() + v.len());
        let used = committed.saturating_add_signed(writes.growth);
        check_quota(used, old, key, value, quota_bytes)?;
        writes.growth += (key.len() + value.len()) as isize - old as isize;
        writes.values.insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

/// Runs `chain` (plugin names, in order) on `input`. `upstreams` are the names the merchant's
/// plugins may forward to; `own_upstream` the endpoint's (forwards may not name it). Blocking.
pub fn run(
    registry: &Registry,
    handle: &Handle,
    chain: &[String],
    upstreams: &BTreeSet<String>,
    own_upstream: Option<&str>,
    input: &ChainInput,
) -> ChainResult {
    let mut runs = Vec::new();
    let mut kv = Vec::new();
    let mut kv_read = Vec::new();
    let mut body: Option<Bytes> = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut forwards: Vec<NewDelivery> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    // Writes visible in memory but not committed yet.
    let mut published = Published::default();
    let failed = |runs, published: Published, reason| {
        published.settle(false);
        ChainResult { runs, ..ChainResult::ran_nothing(ChainOutcome::Failed { reason }) }
    };
    for name in chain {
        let Some(slot) = registry.slot(&input.event.key.merchant, name).cloned() else {
            return failed(runs, published, format!("{name}: plugin_missing: not configured"));
        };
        // The canary for its share of event ids, else the active version.
        let Some((version, _)) = slot.version_for(&input.event.key.id) else {
            published.settle(false);
            let reason = format!(
                "waiting: plugin {name} has no version yet (upload one: payflow-edge plugin upload {name} FILE.wasm)"
            );
            return ChainResult { runs, ..ChainResult::ran_nothing(ChainOutcome::Waiting { reason }) };
        };
        // Runs of one plugin are serialized, so a read-modify-write of a key is never
        // interleaved with another run's.
        let _turn = slot.turn.lock().unwrap_or_else(|p| p.into_inner());
        // A version seen to use kv has its space loaded before the run, outside its deadline.
        // One not seen to yet runs without: most plugins never touch kv, and with a shared
        // store a load is a query per step (its skip measured in bench/RESULTS.md, thirty-first
        // look). If it does touch kv, that run is stopped at its first kv call, set aside
        // unrecorded, and made again with the space loaded. A warm instance keeps state between
        // events, so it never runs an event twice: its space is always loaded first.
        let load_first = slot.warm || version.uses_kv();
        if load_first {
            if let Err(e) = ensure_loaded(registry, handle, &slot) {
                return failed(runs, published, format!("{name}: store_unavailable: {e}"));
            }
        }
        let event = Event::of(&input.event, body.as_ref().unwrap_or(&input.event.body));
        let (mut overlay, mut run, mut started) = run_once(&slot, &version, &event, load_first);
        if overlay.missed.load(Ordering::Relaxed) {
            version.mark_uses_kv();
            if let Err(e) = ensure_loaded(registry, handle, &slot) {
                return failed(runs, published, format!("{name}: store_unavailable: {e}"));
            }
            (overlay, run, started) = run_once(&slot, &version, &event, true);
        }
        let checked = run
            .result
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|outcome| check_outcome(outcome, upstreams, own_upstream, &forwards));
        let info = record(name, version.info.version, input, &run, started, &checked);
        slot.counts.record(&info, &input.event.key);
        slot.logs.push(&info, &input.event.key.id);
        let failure = (info.outcome != "continue" && info.outcome != "drop").then(|| failure_text(&info));
        if let Some((canary, why)) = slot.observe(version.info.version, failure.as_deref()) {
            // Out of service already; this records it (rare: once per canary).
            if let Err(e) = handle.block_on(registry.roll_back_canary(&slot.merchant, name, canary, why)) {
                tracing::warn!(plugin = %name, error = %e, "cannot record the canary's rollback; it stays out of service here");
            }
        }
        runs.push(info);
        let outcome = match (run.result, checked) {
            (Ok(outcome), Ok(())) => outcome,
            (_, Err(failure)) | (Err(failure), _) => {
                return failed(runs, published, format!("{name}: {failure}"));
            }
        };
        let Writes { values: writes, found, leans_on, .. } =
            std::mem::take(&mut *overlay.writes.lock().unwrap_or_else(|p| p.into_inner()));
        published.leans_on.extend(leans_on.into_iter().map(|version| (slot.clone(), version)));
        if !found.is_empty() {
            slot.replica_turn.note_reads(found.keys());
            published.readers.push(slot.clone());
        }
        kv_read.extend(found.into_iter().map(|(key, found)| KvReadOf { plugin: name.clone(), key, found }));
        if !writes.is_empty() {
            let version = slot.kv.lock().unwrap_or_else(|p| p.into_inner()).publish(&writes);
            kv.extend(writes.into_iter().map(|(key, value)| KvWrite {
                plugin: name.clone(),
                key,
                value,
                version,
            }));
            published.writes.push((slot.clone(), version));
        }
        tags.extend(outcome.tags);
        if let Action::Drop(reason) = outcome.action {
            return ChainResult {
                runs,
                kv,
                kv_read,
                published,
                outcome: ChainOutcome::Drop { reason: format!("{name}: {reason}"), tags },
            };
        }
        if let Some(new_body) = outcome.body {
            body = Some(Bytes::from(new_body));
        }
        headers.extend(outcome.headers.into_iter().map(|h| (h.name, h.value)));
        forwards.extend(outcome.forwards.into_iter().map(|f| NewDelivery {
            upstream: f.upstream,
            body: f.body.map(Bytes::from),
            headers: f.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            claim_until_ms: None,
        }));
    }
    ChainResult {
        runs,
        kv,
        kv_read,
        published,
        outcome: ChainOutcome::Continue { body, headers, forwards, tags },
    }
}

/// Tells the key-value spaces of the plugins of `chain` that another gateway may have written
/// to them since they were loaded: after each step when gateways share the store. Their next
/// run asks the store whether one did ([`KvSpace::doubt`](crate::kv_space::KvSpace::doubt)).
pub fn doubt_kv(registry: &Registry, merchant: &str, chain: &[String]) {
    for slot in chain.iter().filter_map(|name| registry.slot(merchant, name)) {
        slot.kv.lock().unwrap_or_else(|p| p.into_inner()).doubt();
    }
}

/// Makes the plugin's space in memory fit for its next run: loaded if it is not; if it is
/// doubted ([`doubt_kv`]), with what the store says was changed elsewhere since its last read
/// laid over it (another gateway's step, an admin repair), or loaded whole when a key was
/// deleted since. That is one small query; before, the space was read whole whenever the
/// store counted a change made elsewhere, which for replicas taking turns on one plugin was
/// after a third of their steps (bench/RESULTS.md, thirty-second and thirty-fifth looks).
/// With replicas contending for the space, first holds this replica's turn on it, and then
/// tells it what the read found ([`crate::replica_turn`]).
fn ensure_loaded(registry: &Registry, handle: &Handle, slot: &Slot) -> Result<(), StoreError> {
    let store = registry.store();
    if !store.shares_kv() {
        return read_space(registry, handle, slot);
    }
    slot.replica_turn.before_run(slot, store.as_ref(), handle);
    let read = read_space(registry, handle, slot);
    slot.replica_turn.after_read(&slot.kv.lock().unwrap_or_else(|p| p.into_inner()));
    read
}

/// [`ensure_loaded`]'s read of the store: what changed, or the whole space.
fn read_space(registry: &Registry, handle: &Handle, slot: &Slot) -> Result<(), StoreError> {
    let space = || slot.kv.lock().unwrap_or_else(|p| p.into_inner());
    let store = registry.store();
    let refresh = space().begin_refresh();
    if let Some(refresh) = refresh {
        // Outside the space's lock, as a load is: a step's answer settles its writes meanwhile.
        // Runs of the plugin take turns, so no other read happens meanwhile.
        let read =
            handle.block_on(store.kv_changed_since(&slot.merchant, &slot.name, refresh.since, &refresh.keys));
        slot.counts.kv_refreshes.inc();
        match read {
            Ok(Some(read)) => space().finish_refresh(refresh, read),
            Ok(None) => {
                let mut space = space();
                space.abandon_refresh(refresh);
                space.forget();
            }
            Err(e) => {
                space().abandon_refresh(refresh);
                return Err(e);
            }
        }
    }
    let load = {
        let mut space = space();
        if space.is_fresh() {
            return Ok(());
        }
        space.begin_load()
    };
    // Outside the space's lock: a step's answer settles its writes meanwhile.
    slot.counts.kv_loads.inc();
    match handle.block_on(store.load_kv_space(&slot.merchant, &slot.name)) {
        Ok(read) => {
            space().finish_load(load, read);
            Ok(())
        }
        Err(e) => {
            space().abandon_load(load);
            Err(e)
        }
    }
}

/// A failed run as a canary's rollback names it: the failure, and the run's last log line
/// (a panic's message is there, not in the trap).
fn failure_text(run: &PluginRunInfo) -> String {
    let failure = run.detail.clone().unwrap_or_else(|| run.outcome.clone());
    match run.logs.last() {
        Some((level, line)) => {
            format!("{failure} (log: {level}: {})", crate::truncate(line.trim().to_string(), 200))
        }
        None => failure,
    }
}

/// What a plugin may not ask for, beyond what the sandbox already checked.
pub(crate) fn check_outcome(
    outcome: &Outcome,
    upstreams: &BTreeSet<String>,
    own_upstream: Option<&str>,
    earlier: &[NewDelivery],
) -> Result<(), Failure> {
    let reserved = |name: &str| RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name));
    let all_headers = outcome.headers.iter().chain(outcome.forwards.iter().flat_map(|f| &f.headers));
    if let Some(h) = all_headers.into_iter().find(|h| reserved(&h.name)) {
        return Err(Failure::BadOutput(format!("header {:?} is set by the gateway, not by plugins", h.name)));
    }
    for (i, f) in outcome.forwards.iter().enumerate() {
        if !upstreams.contains(&f.upstream) {
            return Err(Failure::UnknownUpstream(f.upstream.clone()));
        }
        if own_upstream == Some(f.upstream.as_str()) {
            return Err(Failure::BadOutput(format!(
                "forward to {:?}, the endpoint's own upstream: change the outcome's body and headers instead",
                f.upstream
            )));
        }
        let twice =
            outcome.forwards[..i].iter().map(|g| &g.upstream).chain(earlier.iter().map(|d| &d.upstream));
        if twice.into_iter().any(|u| *u == f.upstream) {
            return Err(Failure::BadOutput(format!("two forwards to {:?}", f.upstream)));
        }
    }
    Ok(())
}

fn record(
    name: &str,
    version: u32,
    input: &ChainInput,
    run: &Run,
    started: Instant,
    checked: &Result<(), Failure>,
) -> PluginRunInfo {
    let (outcome, detail) = match (&run.result, checked) {
        (Err(failure), _) | (Ok(_), Err(failure)) => {
            (failure.reason().to_string(), Some(failure.to_string()))
        }
        (Ok(o), Ok(())) => match &o.action {
            Action::Continue => ("continue".to_string(), None),
            Action::Drop(reason) => ("drop".to_string(), Some(reason.clone())),
        },
    };
    let mut logs: Vec<(String, String)> =
        run.logs.iter().map(|l| (l.level.to_string(), l.message.clone())).collect();
    if let Some(dropped) = run.dropped() {
        logs.push(("gateway".into(), dropped));
    }
    PluginRunInfo {
        plugin: name.to_string(),
        version,
        attempt: input.attempt,
        at_ms: input.at_ms,
        duration_us: started.elapsed().as_micros() as i64,
        fuel_used: run.fuel_used,
        outcome,
        detail,
        logs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published_in(space: &Mutex<KvSpace>) -> i64 {
        let writes = HashMap::from([("total".to_string(), b"1".to_vec())]);
        space.lock().unwrap().publish(&writes)
    }

    #[tokio::test]
    async fn a_step_waits_until_the_write_it_read_is_handed_to_the_store_or_answered() {
        let space = Arc::new(Mutex::new(KvSpace::default()));
        let handed = Arc::new(tokio::sync::Notify::new());
        let (sent, failed) = (published_in(&space), published_in(&space));
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        for (version, hand_on) in [(sent, true), (failed, false)] {
            let waiting = {
                let (space, handed) = (space.clone(), handed.clone());
                tokio::spawn(async move { until_handed(&space, &handed, version, far).await })
            };
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(!waiting.is_finished(), "version {version} waits");
            if hand_on {
                space.lock().unwrap().handed_to_the_store(version);
            } else {
                space.lock().unwrap().settle(version, false);
            }
            handed.notify_waiters();
            assert!(waiting.await.unwrap(), "version {version} goes on");
        }
    }

    /// Two steps that each read the other's write (two endpoints running the same two plugins
    /// in opposite orders) would wait for each other for ever: each goes on after
    /// `HANDED_WITHIN`, and the store decides.
    #[tokio::test]
    async fn steps_that_read_each_others_writes_go_on_after_a_while() {
        let (a, b) = (Mutex::new(KvSpace::default()), Mutex::new(KvSpace::default()));
        let (first_in_a, second_in_b) = (published_in(&a), published_in(&b));
        let handed = tokio::sync::Notify::new();
        let deadline = tokio::time::Instant::now() + HANDED_WITHIN;
        let (first, second) = tokio::join!(
            until_handed(&b, &handed, second_in_b, deadline),
            until_handed(&a, &handed, first_in_a, deadline)
        );
        assert_eq!((first, second), (false, false));
        assert!(tokio::time::Instant::now() >= deadline);
    }
}
