//! The spans of one webhook request and of its plugin step, recorded once the work is done
//! (`payflow_telemetry` says why): `receive` (server), with `verify` and `store` under it, and
//! later `plugin step` (or `route`, when the endpoint only routes) with one `plugin NAME` per
//! run. A stored event's `receive` has its trace's derived ids, so its step and deliveries find
//! it again; a request that stored nothing gets a trace of its own. This module only records:
//! it never changes what the request path or the step decide.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payflow_store::{Event, EventKey, PluginRunInfo};
use payflow_telemetry::{new_span_id, Attribute, EventTrace, SpanKind, SpanRecord, Telemetry};

use crate::answer::Outcome;

/// What one request did, when, as the pipeline notes it (only with telemetry on).
pub(crate) struct Timeline {
    start: SystemTime,
    verify: Option<(SystemTime, SystemTime, Option<&'static str>)>,
    store: Option<(SystemTime, SystemTime, Option<String>)>,
    event_id: Option<String>,
    /// The new event it stored: its trace is derived from it.
    stored: Option<EventTrace>,
}

impl Timeline {
    /// A request starting now.
    pub(crate) fn start() -> Self {
        Timeline { start: SystemTime::now(), verify: None, store: None, event_id: None, stored: None }
    }

    /// Verification, started at `start`, ended now; refused for `reason`.
    pub(crate) fn verified(&mut self, start: SystemTime, refused: Option<&'static str>) {
        self.verify = Some((start, SystemTime::now(), refused));
    }

    /// The store's write of `event`, started at `start`, ended now: new (`stored`), a
    /// duplicate, or refused (`error`).
    pub(crate) fn stored(&mut self, start: SystemTime, event: &Event, stored: bool, error: Option<String>) {
        self.store = Some((start, SystemTime::now(), error));
        self.event_id = Some(event.key.id.clone());
        if stored {
            self.stored = Some(event_trace(&event.key, event.received_at_ms));
        }
    }

    /// Records the request's spans.
    pub(crate) fn record(self, telemetry: &Telemetry, endpoint: &str, request_id: &str, outcome: Outcome) {
        let trace = self.stored.unwrap_or_else(EventTrace::random);
        let mut attributes = vec![
            Attribute::new("http.route", endpoint.to_string()),
            Attribute::new("payflow.request_id", request_id.to_string()),
            Attribute::new("payflow.outcome", outcome.as_str()),
        ];
        attributes.extend(self.event_id.map(|id| Attribute::new("payflow.event_id", id)));
        let child = |name: &str, start, end, error: Option<String>| SpanRecord {
            name: name.to_string(),
            trace_id: trace.trace_id,
            span_id: new_span_id(),
            parent: Some(trace.receive),
            kind: SpanKind::Internal,
            start,
            end,
            attributes: Vec::new(),
            error,
        };
        if let Some((start, end, refused)) = self.verify {
            telemetry.record(child("verify", start, end, refused.map(str::to_string)));
        }
        if let Some((start, end, error)) = self.store {
            telemetry.record(child("store", start, end, error));
        }
        telemetry.record(SpanRecord {
            name: "receive".into(),
            trace_id: trace.trace_id,
            span_id: trace.receive,
            parent: None,
            kind: SpanKind::Server,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error: None,
        });
    }
}

/// The trace of a stored event (see `payflow_telemetry::EventTrace::of`).
pub(crate) fn event_trace(key: &EventKey, received_at_ms: i64) -> EventTrace {
    EventTrace::of(&key.merchant, &key.scope, &key.id, received_at_ms)
}

/// A plugin step as its span shows it.
pub(crate) struct StepSpan<'a> {
    /// `plugin step`, or `route` for an endpoint without plugins.
    pub name: &'a str,
    /// Which run of the step.
    pub number: u32,
    /// When it started, unix ms.
    pub at_ms: i64,
    /// The event's status after it.
    pub status: &'a str,
    /// Why it failed, when it did.
    pub error: Option<&'a str>,
}

/// Records a plugin step, from its start until now, and each of its plugin runs under it.
pub(crate) fn record_step(
    telemetry: &Telemetry,
    event: &Event,
    step_span: StepSpan<'_>,
    runs: &[PluginRunInfo],
) {
    let StepSpan { name, number, at_ms, status, error } = step_span;
    let trace = event_trace(&event.key, event.received_at_ms);
    let step = new_span_id();
    let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    // A run keeps its step's start time and its own duration; the chain ran them one after
    // the other, so each starts where the one before it ended.
    let mut start = at(at_ms);
    for run in runs {
        let end = start + Duration::from_micros(run.duration_us.max(0) as u64);
        telemetry.record(SpanRecord {
            name: format!("plugin {}", run.plugin),
            trace_id: trace.trace_id,
            span_id: new_span_id(),
            parent: Some(step),
            kind: SpanKind::Internal,
            start,
            end,
            attributes: vec![
                Attribute::new("payflow.plugin", run.plugin.clone()),
                Attribute::new("payflow.plugin.version", i64::from(run.version)),
                Attribute::new("payflow.plugin.outcome", run.outcome.clone()),
                Attribute::new("payflow.plugin.fuel_used", run.fuel_used as i64),
            ],
            error: run.detail.clone().filter(|_| run.outcome != "continue" && run.outcome != "drop"),
        });
        start = end;
    }
    telemetry.record(SpanRecord {
        name: name.to_string(),
        trace_id: trace.trace_id,
        span_id: step,
        parent: Some(trace.receive),
        kind: SpanKind::Internal,
        start: at(at_ms),
        end: SystemTime::now(),
        attributes: vec![
            Attribute::new("payflow.event_id", event.key.id.clone()),
            Attribute::new("payflow.attempt", i64::from(number)),
            Attribute::new("payflow.status", status.to_string()),
        ],
        error: error.map(str::to_string),
    });
}
