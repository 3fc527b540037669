//! payflow-telemetry: OpenTelemetry traces of an event's way through the gateway, exported over
//! OTLP/HTTP when `[telemetry] otlp_endpoint` is set: `receive` (with `verify` and `store`
//! under it), then, from the durable queue, `plugin step` (one `plugin NAME` per run under it)
//! and one `deliver UPSTREAM` per attempt, whose W3C `traceparent` goes to the upstream.
//!
//! An event's trace outlives the request that stored it (the step and the deliveries run later,
//! perhaps after a restart, perhaps on another replica), so nothing is kept in memory or in
//! the store to join them: the `receive` span of a stored event has ids derived from the event
//! itself ([`EventTrace::of`]: its key and arrival time), and every later span names that span
//! as its parent by deriving the same ids again. Spans are recorded once their work is done,
//! with the times it took ([`Telemetry::record`]), so the request path holds no span open and a
//! disabled telemetry costs a branch.
//!
//! This crate never decides anything about an event and never blocks the caller: export runs
//! on the SDK's own thread, and a collector that is down loses spans, never events.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, IdGenerator, SdkTracerProvider};
use sha2::{Digest, Sha256};

pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::KeyValue as Attribute;

/// How often finished spans are sent: soon enough to follow a live event, rarely enough to
/// batch a busy gateway's spans into few requests.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// Spans waiting to be sent at most; beyond it (a collector down for long) the newest are
/// dropped, so memory stays bounded.
const MAX_QUEUED_SPANS: usize = 8_192;

/// The telemetry pipeline cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    #[error("otlp_endpoint: {0}")]
    Exporter(String),
}

/// Where spans go: nowhere (disabled), or to an OTLP collector.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
}

/// The trace and the `receive` span of one stored event, derived from the event itself so
/// that every later stage finds them again (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTrace {
    /// The event's trace.
    pub trace_id: TraceId,
    /// Its `receive` span: the parent of everything after it.
    pub receive: SpanId,
}

impl EventTrace {
    /// The trace of the event with this key (merchant, scope, id) received at `received_at_ms`.
    pub fn of(merchant: &str, scope: &str, id: &str, received_at_ms: i64) -> Self {
        let mut hash = Sha256::new();
        for part in [merchant.as_bytes(), scope.as_bytes(), id.as_bytes(), &received_at_ms.to_be_bytes()] {
            // Length-prefixed, so ("a", "bc") and ("ab", "c") never collide.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        let trace: [u8; 16] = digest[..16].try_into().expect("16 bytes");
        let span: [u8; 8] = digest[16..24].try_into().expect("8 bytes");
        EventTrace { trace_id: TraceId::from_bytes(trace), receive: SpanId::from_bytes(span) }
    }

    /// A trace of its own, for a request that stored nothing (refused, duplicate).
    pub fn random() -> Self {
        EventTrace { trace_id: TraceId::from(rand::random::<u128>()), receive: new_span_id() }
    }
}

/// A span id for a span about to be recorded (e.g. a delivery attempt whose `traceparent` is
/// sent before the span is recorded).
pub fn new_span_id() -> SpanId {
    SpanId::from(rand::random::<u64>().max(1))
}

/// The W3C `traceparent` header naming `span` of `trace` as the parent (sampled).
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// One finished piece of work, as [`Telemetry::record`] takes it.
pub struct SpanRecord {
    /// What it was: `receive`, `verify`, `deliver legacy`…
    pub name: String,
    /// Its trace.
    pub trace_id: TraceId,
    /// Its own id (chosen by the caller: derived, or [`new_span_id`]).
    pub span_id: SpanId,
    /// The span it belongs under; `None` for a trace's root.
    pub parent: Option<SpanId>,
    /// Server (a request received), client (a request sent) or internal.
    pub kind: SpanKind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// What it was about.
    pub attributes: Vec<KeyValue>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

thread_local! {
    /// The ids of the one span this thread is recording (see [`ChosenIds`]).
    static CHOSEN: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The SDK asks its id generator for each new span's ids; [`Telemetry::record`] has chosen
/// them already (derived from the event, or picked before a request went out), and leaves them
/// here for the span it is building on this thread. Without such a choice, random ids.
#[derive(Debug)]
struct ChosenIds;

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN.with(|c| c.get()).map_or_else(|| TraceId::from(rand::random::<u128>()), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN.with(|c| c.get()).map_or_else(new_span_id, |(_, s)| s)
    }
}

impl Telemetry {
    /// No spans: every [`record`](Self::record) is a no-op.
    pub fn disabled() -> Self {
        Telemetry { provider: None, tracer: None }
    }

    /// Spans exported to the OTLP/HTTP collector at `endpoint` (its base URL,
    /// `http://host:4318`, or the full `…/v1/traces`), as service `service`.
    pub fn otlp(endpoint: &str, service: &str) -> Result<Self, TelemetryError> {
        let url = match endpoint.trim_end_matches('/') {
            e if e.ends_with("/v1/traces") => e.to_string(),
            e => format!("{e}/v1/traces"),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_EVERY)
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
            .with_id_generator(ChosenIds)
            .with_resource(
                opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "payflow-edge");
        Ok(Telemetry { provider: Some(provider), tracer: Some(tracer) })
    }

    /// Whether spans are recorded (callers skip building attributes otherwise).
    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Records a finished span.
    pub fn record(&self, span: SpanRecord) {
        let Some(tracer) = &self.tracer else { return };
        let parent = match span.parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                span.trace_id,
                parent,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        CHOSEN.with(|c| c.set(Some((span.trace_id, span.span_id))));
        let mut built = tracer
            .span_builder(span.name)
            .with_kind(span.kind)
            .with_start_time(span.start)
            .with_attributes(span.attributes)
            .start_with_context(tracer, &parent);
        CHOSEN.with(|c| c.set(None));
        if let Some(error) = span.error {
            opentelemetry::trace::Span::set_status(&mut built, Status::error(error));
        }
        opentelemetry::trace::Span::end_with_timestamp(&mut built, span.end);
    }

    /// Sends what is still queued and stops the export thread (at shutdown).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_trace_is_derived_from_its_key_and_arrival_alone() {
        let a = EventTrace::of("acme", "/wh", "evt_1", 1_000);
        assert_eq!(a, EventTrace::of("acme", "/wh", "evt_1", 1_000), "found again by later stages");
        for other in [
            EventTrace::of("acme", "/wh", "evt_1", 1_001),
            EventTrace::of("acme", "/wh2", "evt_1", 1_000),
            EventTrace::of("globex", "/wh", "evt_1", 1_000),
            EventTrace::of("acme", "/w", "h/evt_1", 1_000),
        ] {
            assert_ne!(a.trace_id, other.trace_id);
        }
        assert_ne!(a.trace_id, TraceId::INVALID);
        assert_eq!(
            traceparent(a.trace_id, a.receive),
            format!("00-{:032x}-{:016x}-01", a.trace_id, a.receive),
            "W3C: version, 32 hex trace id, 16 hex parent id, sampled"
        );
    }
}
