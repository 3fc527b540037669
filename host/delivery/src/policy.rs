//! The retry policy applied to one attempt: which replies are delivered, retried or permanent,
//! and the attempt's record with what happens next. It must never touch the store.

use std::time::Instant;

use hyper::StatusCode;

use crate::client::{reply_excerpt, SendError, UpstreamClient, UpstreamReply};
use crate::upstream::Upstream;
use payflow_clock::Clock;
use payflow_store::{Attempt, AttemptInfo, AttemptOutcome, DueDelivery, EventKey};

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
    pub(crate) number: u32,
    pub(crate) at_ms: i64,
    pub(crate) started: Instant,
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
