//! A dry run: a candidate version of a plugin beside its active version, on events the
//! merchant actually received, to see what the candidate *would have* decided before it goes
//! live.
//!
//! Each side runs with the slot's limits and configuration, on the event as it was received,
//! in arrival order, and instantiated as live runs are: a fresh instance per event, or, for a
//! plugin with `warm = true`, one instance per side kept for the whole dry run (it starts
//! afresh, so state a live warm instance carries from earlier events is not there at first).
//! Each side has its own scratch key-value space that starts as a snapshot of the plugin's
//! committed space: reads see the snapshot plus that side's own earlier writes, and nothing is
//! ever written back. The outcome gets the chain's checks (reserved headers, forwards only to
//! the merchant's upstreams), so a candidate that would fail live fails here too. Runs are
//! timed in CPU time, held to the plugin's deadline: they run when the CPU is otherwise idle
//! (see the scheduler), so wall-clock time would measure the live traffic, not the plugin. The
//! two outcomes are then compared field by field.
//!
//! This module must never deliver, record a run, touch the committed kv or the slot's
//! counters, or swap a version in: a dry run leaves no trace but its report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::chain::check_outcome;
use super::registry::{Slot, Version};
use super::scheduler::thread_cpu_time;
use super::stats::RunPercentiles;
use super::{Action, Event, Failure, Limits, LoadedPlugin, MemoryKv, Outcome, WarmInstance};
use payflow_store::Event as StoredEvent;

/// Changes listed per event at most (a rewrite of a whole body would list every field).
const MAX_CHANGES: usize = 20;

/// The wall-clock deadline of a dry run's run, a backstop (see [`Trial::run`]).
const TRIAL_WALL_DEADLINE: Duration = Duration::from_secs(60);

/// Which of the two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The version live now.
    Active,
    /// The version being tried.
    Candidate,
}

/// The two versions with their scratch kv spaces. Shared by the scheduler's jobs of one dry
/// run.
pub struct Trial {
    slot: Arc<Slot>,
    active: Arc<Version>,
    candidate: LoadedPlugin,
    kv: [Arc<MemoryKv>; 2],
    /// Each side's instance kept between events, for a `warm` plugin. Besides being what live
    /// runs do, it spares a JS or Python dry run ~2,000 instantiations (and their memory maps,
    /// which contend with live runs' page faults) per thousand events.
    warm: [Mutex<Option<WarmInstance>>; 2],
    upstreams: Arc<BTreeSet<String>>,
}

/// What one side did with one event.
#[derive(Debug, Clone, Serialize)]
pub struct SideRun {
    /// `continue`, `drop`, or the failure's reason (`trap`, `fuel_exhausted`…).
    pub outcome: String,
    /// The drop's reason, or the failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fuel used.
    pub fuel: u64,
    /// CPU time, instantiation included (what the run costs, however long it waited for CPU).
    pub duration_us: u64,
    /// The run's log lines as `level: message`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// The outcome, when there was one, to compare with the other side's.
    #[serde(skip)]
    decided: Option<Outcome>,
}

/// One event of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct TrialEvent {
    /// The sender's event id.
    pub id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Endpoint it arrived on.
    pub endpoint: String,
    /// Its de-duplication scope (with the id, its address in the admin API).
    pub scope: String,
    /// Arrival, unix ms.
    pub received_at_ms: i64,
    /// `same`, `different`, or `failed` (the candidate failed).
    pub verdict: &'static str,
    /// What differs, one line each (`action: continue → drop (…)`, `body: data.amount: 5000 → 6000`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// The active version's run.
    pub active: SideRun,
    /// The candidate's run.
    pub candidate: SideRun,
}

impl Trial {
    /// A dry run of `candidate` against `active` in `slot`, both starting from the kv snapshot
    /// `kv`; `upstreams` are what the merchant's plugins may forward to.
    pub fn new(
        slot: Arc<Slot>,
        active: Arc<Version>,
        candidate: LoadedPlugin,
        kv: Vec<(String, Vec<u8>)>,
        upstreams: Arc<BTreeSet<String>>,
    ) -> Trial {
        let scratch = || Arc::new(MemoryKv::with(kv.iter().cloned()));
        Trial { slot, active, candidate, kv: [scratch(), scratch()], warm: Default::default(), upstreams }
    }

    /// The active version's number.
    pub fn active_version(&self) -> u32 {
        self.active.info.version
    }

    /// Runs one side on `event` (which arrived on an endpoint whose own upstream is
    /// `own_upstream`). Blocking: call it from a scheduler thread.
    pub fn run(&self, side: Side, event: &StoredEvent, own_upstream: Option<&str>) -> SideRun {
        let index = match side {
            Side::Active => 0,
            Side::Candidate => 1,
        };
        let plugin = if index == 0 { &self.active.plugin } else { &self.candidate };
        let kv = &self.kv[index];
        // Under SCHED_IDLE a run may wait long for CPU: the wall-clock deadline is only a
        // backstop, and the run's own CPU time is held to the plugin's deadline instead.
        let limits =
            Limits { timeout: self.slot.limits.timeout.max(TRIAL_WALL_DEADLINE), ..self.slot.limits.clone() };
        let started = thread_cpu_time();
        let event_in = Event::of(event, &event.body);
        let run = if self.slot.warm {
            let mut kept = self.warm[index].lock().unwrap_or_else(|p| p.into_inner());
            kept.get_or_insert_with(|| plugin.warm(&self.slot.config, kv.clone(), &limits)).run(&event_in)
        } else {
            plugin.run(&event_in, &self.slot.config, kv.clone(), &limits)
        };
        let cpu = thread_cpu_time().saturating_sub(started);
        let result = match run.result {
            Ok(_) if cpu > self.slot.limits.timeout => Err(Failure::Timeout),
            result => result,
        };
        let duration_us = cpu.as_micros() as u64;
        let checked = result.and_then(|o| check_outcome(&o, &self.upstreams, own_upstream, &[]).map(|()| o));
        let logs = run.logs.iter().map(|l| format!("{}: {}", l.level, l.message)).collect();
        let (outcome, detail) = match &checked {
            Ok(o) => match &o.action {
                Action::Continue => ("continue".to_string(), None),
                Action::Drop(reason) => ("drop".to_string(), Some(reason.clone())),
            },
            Err(failure) => (failure.reason().to_string(), Some(failure.to_string())),
        };
        SideRun { outcome, detail, fuel: run.fuel_used, duration_us, logs, decided: checked.ok() }
    }
}

/// Compares the two sides' runs on `event`.
pub fn compare(event: &StoredEvent, active: SideRun, candidate: SideRun) -> TrialEvent {
    let mut changes = Vec::new();
    let verdict = match (&active.decided, &candidate.decided) {
        (_, None) => {
            changes.push(format!(
                "candidate failed: {}",
                candidate.detail.as_deref().unwrap_or(&candidate.outcome)
            ));
            "failed"
        }
        (None, Some(_)) => {
            changes.push(format!(
                "active failed ({}); candidate: {}",
                active.detail.as_deref().unwrap_or(&active.outcome),
                candidate.outcome
            ));
            "different"
        }
        (Some(a), Some(c)) => {
            differences(a, c, &event.body, &mut changes);
            if changes.is_empty() {
                "same"
            } else {
                "different"
            }
        }
    };
    changes.truncate(MAX_CHANGES);
    TrialEvent {
        id: event.key.id.clone(),
        event_type: event.event_type.clone(),
        endpoint: event.endpoint.clone(),
        scope: event.key.scope.clone(),
        received_at_ms: event.received_at_ms,
        verdict,
        changes,
        active,
        candidate,
    }
}

fn action_text(action: &Action) -> String {
    match action {
        Action::Continue => "continue".into(),
        Action::Drop(reason) => format!("drop ({reason})"),
    }
}

/// Every way outcome `c` differs from `a`, one line each. `original` is the body a side
/// delivers when it rewrites none.
fn differences(a: &Outcome, c: &Outcome, original: &[u8], out: &mut Vec<String>) {
    if a.action != c.action {
        out.push(format!("action: {} → {}", action_text(&a.action), action_text(&c.action)));
    }
    let body = |o: &Outcome| o.body.clone().unwrap_or_else(|| original.to_vec());
    body_differences("body", &body(a), &body(c), out);
    let headers =
        |o: &Outcome| o.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.clone())).collect();
    set_differences("header", &headers(a), &headers(c), out);
    let (fa, fc) = (forwards_by_upstream(a), forwards_by_upstream(c));
    for (upstream, f) in &fc {
        match fa.get(upstream) {
            None => out.push(format!("forward: + {upstream}")),
            Some(g) => {
                let forward_body = |f: &super::Forward| f.body.clone().unwrap_or_else(|| body(c));
                body_differences(
                    &format!("forward {upstream} body"),
                    &forward_body(g),
                    &forward_body(f),
                    out,
                );
                let h = |f: &super::Forward| {
                    f.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.clone())).collect()
                };
                set_differences(&format!("forward {upstream} header"), &h(g), &h(f), out);
            }
        }
    }
    out.extend(fa.keys().filter(|u| !fc.contains_key(*u)).map(|u| format!("forward: - {u}")));
    let tags = |o: &Outcome| o.tags.iter().map(|t| (t.clone(), String::new())).collect();
    set_differences("tag", &tags(a), &tags(c), out);
}

fn forwards_by_upstream(o: &Outcome) -> BTreeMap<&str, &super::Forward> {
    o.forwards.iter().map(|f| (f.upstream.as_str(), f)).collect()
}

/// Pairs (name, value) present on one side only, as `what: + name: value` / `- …`.
fn set_differences(
    what: &str,
    a: &BTreeSet<(String, String)>,
    c: &BTreeSet<(String, String)>,
    out: &mut Vec<String>,
) {
    let show = |(name, value): &(String, String)| {
        if value.is_empty() {
            name.clone()
        } else {
            format!("{name}: {value}")
        }
    };
    out.extend(a.difference(c).map(|p| format!("{what}: - {}", show(p))));
    out.extend(c.difference(a).map(|p| format!("{what}: + {}", show(p))));
}

/// How two bodies differ: by JSON path when both are JSON, else by size.
fn body_differences(what: &str, a: &[u8], c: &[u8], out: &mut Vec<String>) {
    if a == c {
        return;
    }
    match (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(c)) {
        (Ok(va), Ok(vc)) => {
            let before = out.len();
            json_differences(what, "", &va, &vc, out);
            if out.len() == before {
                out.push(format!("{what}: same JSON, different bytes ({} → {} bytes)", a.len(), c.len()));
            }
        }
        _ => out.push(format!("{what}: {} bytes → {} bytes, not JSON on both sides", a.len(), c.len())),
    }
}

fn json_differences(what: &str, path: &str, a: &Value, c: &Value, out: &mut Vec<String>) {
    if out.len() > MAX_CHANGES || a == c {
        return;
    }
    let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (a, c) {
        (Value::Object(ma), Value::Object(mc)) => {
            for (k, va) in ma {
                match mc.get(k) {
                    Some(vc) => json_differences(what, &at(k), va, vc, out),
                    None => out.push(format!("{what}: - {} ({va})", at(k))),
                }
            }
            for (k, vc) in mc.iter().filter(|(k, _)| !ma.contains_key(*k)) {
                out.push(format!("{what}: + {} ({vc})", at(k)));
            }
        }
        _ => {
            let shown = if path.is_empty() { "(whole)" } else { path };
            out.push(format!("{what}: {shown}: {a} → {c}"));
        }
    }
}

/// Medians, p99 and totals of one side over a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideFigures {
    /// Runs.
    pub runs: usize,
    /// Runs that failed, by reason.
    pub failures: BTreeMap<String, usize>,
    /// Over every run of this side.
    #[serde(flatten)]
    pub percentiles: RunPercentiles,
}

impl SideFigures {
    /// The figures of `runs`.
    pub fn of<'a>(runs: impl Iterator<Item = &'a SideRun>) -> SideFigures {
        let runs: Vec<&SideRun> = runs.collect();
        let mut failures = BTreeMap::new();
        for r in runs.iter().filter(|r| r.decided.is_none()) {
            *failures.entry(r.outcome.clone()).or_default() += 1;
        }
        SideFigures {
            runs: runs.len(),
            failures,
            percentiles: RunPercentiles::of(runs.iter().map(|r| (r.duration_us, r.fuel))),
        }
    }
}

/// A whole dry run's report: each event, the counts, and both sides' figures.
#[derive(Debug, Clone, Serialize)]
pub struct TrialReport {
    /// The plugin.
    pub plugin: String,
    /// The active version it was compared with.
    pub active_version: u32,
    /// Events tried, oldest first.
    pub events: Vec<TrialEvent>,
    /// How many were the same, different, failed.
    pub totals: TrialTotals,
    /// The active version's figures.
    pub active: SideFigures,
    /// The candidate's figures.
    pub candidate: SideFigures,
}

/// The counts of a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrialTotals {
    /// Events tried.
    pub events: usize,
    /// Same outcome.
    pub same: usize,
    /// Different outcome.
    pub different: usize,
    /// The candidate failed.
    pub failed: usize,
}

impl TrialReport {
    /// The report of `events`, tried against `active_version` of `plugin`.
    pub fn new(plugin: &str, active_version: u32, events: Vec<TrialEvent>) -> TrialReport {
        let count = |verdict| events.iter().filter(|e| e.verdict == verdict).count();
        let totals = TrialTotals {
            events: events.len(),
            same: count("same"),
            different: count("different"),
            failed: count("failed"),
        };
        TrialReport {
            plugin: plugin.to_string(),
            active_version,
            totals,
            active: SideFigures::of(events.iter().map(|e| &e.active)),
            candidate: SideFigures::of(events.iter().map(|e| &e.candidate)),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Forward, Header};

    fn outcome(action: Action, body: Option<&str>, headers: &[(&str, &str)], tags: &[&str]) -> Outcome {
        Outcome {
            action,
            body: body.map(|b| b.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: n.to_string(), value: v.to_string() })
                .collect(),
            forwards: Vec::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn diff(a: &Outcome, c: &Outcome) -> Vec<String> {
        let mut out = Vec::new();
        differences(a, c, br#"{"id":"evt_1","data":{"amount":5000}}"#, &mut out);
        out
    }

    #[test]
    fn identical_outcomes_have_no_changes_and_an_unrewritten_body_equals_a_rewrite_to_itself() {
        let a = outcome(Action::Continue, None, &[("X-A", "1")], &["t"]);
        let c = outcome(
            Action::Continue,
            Some(r#"{"id":"evt_1","data":{"amount":5000}}"#),
            &[("x-a", "1")],
            &["t"],
        );
        assert_eq!(diff(&a, &c), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let a = outcome(Action::Continue, None, &[("x-a", "1")], &["old"]);
        let mut c = outcome(
            Action::Drop("too small".into()),
            Some(r#"{"id":"evt_1","data":{"amount":6000,"note":"x"}}"#),
            &[("x-a", "2")],
            &["new"],
        );
        c.forwards.push(Forward { upstream: "crm".into(), body: None, headers: Vec::new() });
        let changes = diff(&a, &c);
        assert_eq!(
            changes,
            [
                "action: continue → drop (too small)",
                "body: data.amount: 5000 → 6000",
                r#"body: + data.note ("x")"#,
                "header: - x-a: 1",
                "header: + x-a: 2",
                "forward: + crm",
                "tag: - old",
                "tag: + new",
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_compared_by_bytes() {
        let a = outcome(Action::Continue, Some("a=1"), &[], &[]);
        let c = outcome(Action::Continue, Some("a=2&b=3"), &[], &[]);
        assert_eq!(diff(&a, &c), ["body: 3 bytes → 7 bytes, not JSON on both sides"]);
    }
}
