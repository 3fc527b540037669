//! One event through an endpoint's plugins, in order: each sees the body as the one before it
//! left it; headers, forwards and tags add up; the first `drop` or failure ends the chain.
//!
//! Runs on a scheduler thread (blocking). The chain checks what plugins may not do: forward to
//! an upstream that is not their merchant's, or set a header the gateway owns. Its kv writes
//! are kept aside and become visible (and are committed by the caller) only if every plugin
//! succeeded: a failed step leaves no trace but its record.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;

use super::registry::{KvSpace, Slot};
use super::{Action, Event, Failure, Kv, Outcome, Registry, Run};
use crate::store::{KvWrite, NewDelivery, PluginRunInfo};

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

/// The event as the chain sees it.
#[derive(Debug, Clone)]
pub struct ChainInput {
    /// Owning merchant.
    pub merchant: String,
    /// Endpoint path.
    pub endpoint: String,
    /// Event id.
    pub event_id: String,
    /// Type ("" when none).
    pub event_type: String,
    /// The raw body.
    pub body: Bytes,
    /// Arrival, unix ms.
    pub received_at_ms: i64,
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
        /// Tags.
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
}

/// What the chain did.
#[derive(Debug)]
pub struct ChainResult {
    /// Each run, for the record.
    pub runs: Vec<PluginRunInfo>,
    /// kv writes to commit with the step (empty unless it continued or dropped).
    pub kv: Vec<KvWrite>,
    /// The outcome.
    pub outcome: ChainOutcome,
}

/// A run's view of a plugin's kv space: reads see the committed values and this run's own
/// writes; writes stay here until the step succeeds.
struct Overlay {
    slot: Arc<Slot>,
    writes: Mutex<HashMap<String, Vec<u8>>>,
}

impl Overlay {
    fn with_space<T>(&self, f: impl FnOnce(&HashMap<String, Vec<u8>>) -> T) -> T {
        let space = self.slot.kv.lock().unwrap_or_else(|p| p.into_inner());
        f(space.values.as_ref().unwrap_or(&HashMap::new()))
    }
}

impl Kv for Overlay {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(v) = self.writes.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Some(v.clone());
        }
        self.with_space(|values| values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), String> {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.with_space(|values| {
            let size = |k: &str| writes.get(k).or_else(|| values.get(k)).map_or(0, |v| k.len() + v.len());
            let committed: usize = values.keys().map(|k| size(k)).sum();
            let fresh: usize = writes.keys().filter(|k| !values.contains_key(*k)).map(|k| size(k)).sum();
            committed + fresh - size(key)
        });
        if used + key.len() + value.len() > quota_bytes {
            return Err(format!("kv quota of {quota_bytes} bytes exceeded"));
        }
        writes.insert(key.to_string(), value.to_vec());
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
    let mut body: Option<Bytes> = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut forwards: Vec<NewDelivery> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    let mut applied: Applied = Vec::new();
    for name in chain {
        let Some(slot) = registry.slot(&input.merchant, name).cloned() else {
            return failed(runs, format!("{name}: plugin_missing: not configured"));
        };
        let Some(version) = slot.active() else {
            return failed(runs, format!("{name}: plugin_missing: no version uploaded yet"));
        };
        // Runs of one plugin are serialized, so a read-modify-write of a key is never
        // interleaved with another run's.
        let _turn = slot.turn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ensure_loaded(registry, handle, &slot) {
            return failed(runs, format!("{name}: store_unavailable: {e}"));
        }
        let overlay = Arc::new(Overlay { slot: slot.clone(), writes: Mutex::new(HashMap::new()) });
        let event = Event {
            id: input.event_id.clone(),
            event_type: input.event_type.clone(),
            endpoint: input.endpoint.clone(),
            merchant: input.merchant.clone(),
            body: body.as_ref().unwrap_or(&input.body).to_vec(),
            received_at_ms: input.received_at_ms as u64,
        };
        let started = Instant::now();
        let run = if slot.warm {
            let mut instance = version.take_warm(&slot, overlay.clone());
            let run = instance.run(&event);
            version.put_warm(instance);
            run
        } else {
            version.plugin.run(&event, &slot.config, overlay.clone(), &slot.limits)
        };
        let checked = run
            .result
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|outcome| check_outcome(outcome, upstreams, own_upstream, &forwards));
        runs.push(record(name, version.info.version, input, &run, started, &checked));
        let outcome = match (run.result, checked) {
            (Ok(outcome), Ok(())) => outcome,
            (_, Err(failure)) | (Err(failure), _) => {
                return failed(runs, format!("{name}: {failure}"));
            }
        };
        let writes = std::mem::take(&mut *overlay.writes.lock().unwrap_or_else(|p| p.into_inner()));
        kv.extend(writes.iter().map(|(k, v)| KvWrite {
            plugin: name.clone(),
            key: k.clone(),
            value: v.clone(),
        }));
        applied.push((slot.clone(), writes));
        tags.extend(outcome.tags);
        if let Action::Drop(reason) = outcome.action {
            apply(applied);
            return ChainResult {
                runs,
                kv,
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
        }));
    }
    apply(applied);
    ChainResult { runs, kv, outcome: ChainOutcome::Continue { body, headers, forwards, tags } }
}

/// Each plugin's kv writes in a step, kept until the step has finished.
type Applied = Vec<(Arc<Slot>, HashMap<String, Vec<u8>>)>;

/// Makes a finished step's kv writes visible to the next runs (the caller commits them).
fn apply(applied: Applied) {
    for (slot, writes) in applied {
        if let Some(values) = &mut slot.kv.lock().unwrap_or_else(|p| p.into_inner()).values {
            values.extend(writes);
        }
    }
}

/// After a commit failed, what is in memory may be ahead of the store: read it again.
pub fn forget_kv(registry: &Registry, merchant: &str, plugins: &[String]) {
    for name in plugins {
        if let Some(slot) = registry.slot(merchant, name) {
            slot.kv.lock().unwrap_or_else(|p| p.into_inner()).values = None;
        }
    }
}

fn ensure_loaded(registry: &Registry, handle: &Handle, slot: &Slot) -> Result<(), String> {
    if slot.kv.lock().unwrap_or_else(|p| p.into_inner()).values.is_some() {
        return Ok(());
    }
    let rows =
        handle.block_on(registry.store().load_kv(&slot.merchant, &slot.name)).map_err(|e| e.to_string())?;
    let mut space = slot.kv.lock().unwrap_or_else(|p| p.into_inner());
    if space.values.is_none() {
        *space = KvSpace { values: Some(rows.into_iter().collect()) };
    }
    Ok(())
}

fn failed(runs: Vec<PluginRunInfo>, reason: String) -> ChainResult {
    ChainResult { runs, kv: Vec::new(), outcome: ChainOutcome::Failed { reason } }
}

/// What a plugin may not ask for, beyond what the sandbox already checked.
fn check_outcome(
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
    if run.logs_dropped_bytes > 0 {
        logs.push((
            "gateway".into(),
            format!("{} more log bytes dropped (log_bytes cap)", run.logs_dropped_bytes),
        ));
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
