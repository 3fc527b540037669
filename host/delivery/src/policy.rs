//! The retry policy: how many attempts and how far apart ([`RetryPolicy`], for deliveries and
//! plugin steps alike), which replies are delivered, retried or permanent, and an attempt's
//! record with what happens next. It must never touch the store.

use std::time::{Duration, Instant, SystemTime};

use hyper::StatusCode;
use rand::Rng;

use crate::client::{reply_excerpt, SendError, UpstreamClient, UpstreamReply, MAX_RETRY_AFTER};
use crate::upstream::Upstream;
use payflow_clock::Clock;
use payflow_store::{Attempt, AttemptInfo, AttemptOutcome, DueDelivery, Event, EventKey, EventSeq};
use payflow_telemetry::{new_span_id, traceparent, Attribute, EventTrace, SpanRecord, Telemetry};

/// How often, and how far apart, a delivery or a plugin step is tried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// The first retry's delay, doubled for each one after it.
    pub base: Duration,
    /// The longest delay between two attempts.
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, with jitter
    /// in [½, 1] of it so that a burst of failures does not retry in lockstep. A
    /// `Retry-After` from the upstream wins: retrying sooner than it asked would not be
    /// honouring it, so `retry_max_ms` does not shorten it (only a one-day sanity bound does).
    pub fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        let exp = self.base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
    }

    /// What follows failed attempt `number` at `now_ms`: dead after the last, else a retry
    /// after the backoff.
    pub fn after_failure(&self, number: u32, retry_after: Option<Duration>, now_ms: i64) -> AttemptOutcome {
        if number >= self.max_attempts {
            return AttemptOutcome::Dead;
        }
        AttemptOutcome::Retry { next_at_ms: now_ms + self.backoff(number, retry_after).as_millis() as i64 }
    }
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

/// An attempt under way: started now, recorded by [`AttemptStart::finish`] with its result.
pub struct AttemptStart {
    pub(crate) key: EventKey,
    pub(crate) event_seq: Option<EventSeq>,
    pub(crate) ordered: bool,
    pub(crate) claimed_until_ms: Option<i64>,
    pub(crate) number: u32,
    pub(crate) at_ms: i64,
    pub(crate) started: Instant,
}

impl AttemptStart {
    /// Starts the next attempt of the due delivery `d` at `at_ms`, under its claim.
    pub fn of(d: &DueDelivery, at_ms: i64) -> Self {
        AttemptStart {
            event_seq: Some(d.seq),
            claimed_until_ms: d.claimed_until_ms,
            ..AttemptStart::forward(&d.event, d.attempts + 1, at_ms)
        }
    }

    /// Starts attempt `number` of a proxy-mode forward of `event` at `at_ms`, which has neither
    /// its event's number at hand ([`Attempt::event_seq`]) nor a claim.
    pub fn forward(event: &Event, number: u32, at_ms: i64) -> Self {
        let (key, ordered) = (event.key.clone(), event.ordered);
        AttemptStart {
            key,
            event_seq: None,
            ordered,
            claimed_until_ms: None,
            number,
            at_ms,
            started: Instant::now(),
        }
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
            event_seq: self.event_seq,
            ordered: self.ordered,
            claimed_until_ms: self.claimed_until_ms,
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

/// Makes delivery attempt `d.attempts + 1` and decides what follows under the upstream's
/// retry policy. The caller records the result. With `telemetry` on, the attempt is a
/// `deliver UPSTREAM` span under its event's `receive`, and the upstream gets its
/// `traceparent` (replacing one a plugin set: the gateway's own trace is the one continued).
pub async fn attempt(
    client: &UpstreamClient,
    clock: &dyn Clock,
    upstream: &Upstream,
    d: &DueDelivery,
    telemetry: &Telemetry,
) -> Attempt {
    let attempt = AttemptStart::of(d, clock.now_ms());
    let (number, e) = (attempt.number, &d.event);
    let traced = telemetry.enabled().then(|| {
        let trace = EventTrace::of(&e.key.merchant, &e.key.scope, &e.key.id, e.received_at_ms);
        (trace, new_span_id(), SystemTime::now())
    });
    let traced_headers: Vec<(String, String)>;
    let headers = match &traced {
        Some((trace, span, _)) => {
            let own = d.headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("traceparent"));
            traced_headers = own
                .cloned()
                .chain([("traceparent".to_string(), traceparent(trace.trace_id, *span))])
                .collect();
            &traced_headers
        }
        None => &d.headers,
    };
    let result =
        client.send(upstream, &e.key.id, &e.request_id, d.body().clone(), headers, clock.wall_secs()).await;
    let outcome = match classify(&result) {
        Verdict::Delivered => AttemptOutcome::Delivered,
        Verdict::Permanent => AttemptOutcome::Dead,
        Verdict::Retry => {
            let retry_after = result.as_ref().ok().and_then(|r| r.retry_after);
            upstream.lane.policy.after_failure(number, retry_after, clock.now_ms())
        }
    };
    let status = result.as_ref().map(|r| r.status.as_u16()).ok();
    let error = result.as_ref().err().map(ToString::to_string);
    // Typed fields: a number, a string, or (when there is none) no field at all; never the
    // Debug text of an Option (`"Some(200)"`, `"None"`) in JSON logs.
    let (next, next_attempt_at_ms) = match outcome {
        AttemptOutcome::Delivered => ("delivered", None),
        AttemptOutcome::Dead => ("dead", None),
        AttemptOutcome::Retry { next_at_ms } => ("retry", Some(next_at_ms)),
    };
    tracing::info!(
        request_id = %e.request_id, merchant = %e.key.merchant, event_id = %e.key.id, upstream = %upstream.name,
        attempt = number, status, error = error.as_deref(), outcome = next, next_attempt_at_ms, "delivery attempt"
    );
    if let Some((trace, span_id, start)) = traced {
        let mut attributes = vec![
            Attribute::new("payflow.event_id", e.key.id.clone()),
            Attribute::new("payflow.upstream", upstream.name.clone()),
            Attribute::new("payflow.attempt", i64::from(number)),
            Attribute::new("payflow.outcome", next),
        ];
        attributes.extend(status.map(|s| Attribute::new("http.response.status_code", i64::from(s))));
        let failed = !matches!(outcome, AttemptOutcome::Delivered);
        telemetry.record(SpanRecord {
            name: format!("deliver {}", upstream.name),
            trace_id: trace.trace_id,
            span_id,
            parent: Some(trace.receive),
            kind: payflow_telemetry::SpanKind::Client,
            start,
            end: SystemTime::now(),
            attributes,
            error: failed.then(|| {
                error.clone().unwrap_or_else(|| format!("upstream answered {}", status.unwrap_or(0)))
            }),
        });
    }
    attempt.finish(upstream, &result, outcome)
}
