//! The request path of a webhook, top to bottom in one place:
//!
//! receive → limits → verify → parse → de-duplicate + persist → acknowledge (queue mode;
//!                                                           plugins and deliveries follow
//!                                                           from the durable queue)
//!                                                           → plugins → forward and answer
//!                                                           (proxy mode)
//!
//! Each stage is a call into its own module (`http` for limits, `payflow_verify` for verify
//! and parse, `store` for persistence, `plugins` for the merchant's plugins, `delivery` for
//! forwarding); no stage reaches around another. This module decides the HTTP reply for every outcome (DESIGN's contract) and must
//! never acknowledge an event before the store said it is durable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::{HeaderName, CONTENT_TYPE, USER_AGENT};
use hyper::Request;
use payflow_verify::{event, Reason, Verifier};

use crate::answer::Answer;
pub use crate::answer::Outcome;
use crate::http::{self, BodyError, HttpHeaders, Reply, RequestBody};
use payflow_clock::Clock;
use payflow_config::Mode;
use payflow_delivery::{
    classify, fields, AttemptStart, HandOff, Lane, Reserved, SendError, Upstream, UpstreamClient, Verdict,
};
use payflow_metrics::{Counter, CounterMap};
use payflow_plugins::ChainOutcome;

use crate::stage::PluginStage;
use crate::trace::Timeline;
use payflow_store::{
    AttemptOutcome, DueDelivery, DueStep, Event, EventKey, EventSeq, EventStatus, Hop, Ingest, Inserted,
    NewEvent,
};
use payflow_telemetry::Telemetry;

/// Request headers kept with a stored event (never the signature headers). Names, not
/// strings: a lookup by string parses and lower-cases it first, seven times per event.
const KEPT_HEADERS: [HeaderName; 7] = [
    CONTENT_TYPE,
    USER_AGENT,
    HeaderName::from_static("webhook-id"),
    HeaderName::from_static("webhook-timestamp"),
    HeaderName::from_static("svix-id"),
    HeaderName::from_static("svix-timestamp"),
    HeaderName::from_static("x-forwarded-for"),
];

/// One configured endpoint, ready to serve.
pub struct Endpoint {
    /// Owning merchant.
    pub merchant: String,
    /// URL path.
    pub path: String,
    /// Where its event ids are de-duplicated (its path unless it shares a `dedup_scope`).
    pub scope: String,
    /// Queue or proxy.
    pub mode: Mode,
    /// Its signature verifier.
    pub verifier: Verifier,
    /// Where its events go.
    pub upstream: Option<Arc<Upstream>>,
    /// The path of its events' ordering key, when they may reach an ordered upstream.
    pub ordering: Option<Vec<String>>,
    /// Queue mode: where a stored event goes first.
    pub first_hop: Option<FirstHop>,
    /// What became of its requests.
    pub counts: EndpointCounts,
}

/// Queue mode: where a stored event goes first, stored → plugins → deliveries.
#[derive(Clone)]
pub enum FirstHop {
    /// The plugin steps' lane: the endpoint has plugins.
    Plugins(Arc<Lane<DueStep>>),
    /// The endpoint's upstream: it has no plugins.
    Upstream(Arc<Upstream>),
}

impl FirstHop {
    /// As the store records it.
    pub fn hop(&self) -> Hop {
        match self {
            FirstHop::Plugins(_) => Hop::Plugins,
            FirstHop::Upstream(u) => Hop::Upstream(u.name.clone()),
        }
    }

    /// Hands a just-stored event (number `seq`, stored unclaimed: this gateway alone drains the
    /// store) to the hop's workers, due now, if its queue has room.
    pub fn hand_off(&self, event: Event, seq: EventSeq) {
        match self {
            FirstHop::Plugins(lane) => lane.hand_off(first_step(event, seq, None)),
            FirstHop::Upstream(u) => u.hand_off(first_delivery(u, event, seq, None)),
        }
    }

    /// Holds a place in the hop's queue for one of `merchant`'s, if it has room now: the event
    /// is then stored claimed by this gateway and handed off into it ([`Place::hand_off`]).
    fn reserve(&self, merchant: &str) -> Option<Place<'_>> {
        match self {
            FirstHop::Plugins(lane) => lane.reserve(merchant).map(Place::Step),
            FirstHop::Upstream(u) => u.reserve(merchant).map(|place| Place::Delivery(u, place)),
        }
    }

    /// Tells the hop's poller the store has due rows it has not seen (after a replay).
    pub fn poll_store_now(&self) {
        match self {
            FirstHop::Plugins(lane) => lane.poll_store_now(),
            FirstHop::Upstream(u) => u.poll_store_now(),
        }
    }
}

/// A place held in a first hop's queue ([`FirstHop::reserve`]); given back if dropped unused.
enum Place<'a> {
    Step(Reserved<'a, DueStep>),
    Delivery(&'a Upstream, Reserved<'a, DueDelivery>),
}

impl Place<'_> {
    /// Hands a just-stored event (number `seq`), stored claimed by this gateway until
    /// `claimed_until_ms` ([`NewEvent::claim_until_ms`]), into the place held for it.
    fn hand_off(self, event: Event, seq: EventSeq, claimed_until_ms: i64) {
        match self {
            Place::Step(place) => place.hand_off(first_step(event, seq, Some(claimed_until_ms))),
            Place::Delivery(u, place) => {
                place.hand_off(first_delivery(u, event, seq, Some(claimed_until_ms)))
            }
        }
    }
}

/// A new event's plugin step, due now.
fn first_step(event: Event, seq: EventSeq, claimed_until_ms: Option<i64>) -> DueStep {
    DueStep { event, seq, attempts: 0, next_attempt_at_ms: 0, claimed_until_ms }
}

/// A new event's delivery to `upstream`, due now.
fn first_delivery(
    upstream: &Upstream,
    event: Event,
    seq: EventSeq,
    claimed_until_ms: Option<i64>,
) -> DueDelivery {
    DueDelivery { claimed_until_ms, ..DueDelivery::new(event, seq, upstream.name.clone(), 0) }
}

/// An endpoint's request counts.
#[derive(Debug, Default)]
pub struct EndpointCounts {
    requests: [Counter; Outcome::ALL.len()],
    /// Refused signatures, by reason.
    pub verification_failures: CounterMap,
}

impl EndpointCounts {
    /// Requests that ended with `outcome`.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].get()
    }
}

/// What every request on the path shares.
pub struct Pipeline {
    /// The durable store.
    pub store: Arc<dyn Ingest>,
    /// Arrival times, signature tolerance and forward leases read it (a test drives it).
    pub clock: Arc<dyn Clock>,
    /// For proxy-mode forwards.
    pub client: UpstreamClient,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Time allowed for the body to arrive.
    pub body_timeout: Duration,
    /// Merchants' plugins, when any are configured.
    pub plugins: Option<Arc<PluginStage>>,
    /// Where the requests' spans go.
    pub telemetry: Arc<Telemetry>,
    /// How a stored event reaches this gateway's workers.
    pub hand_off: HandOff,
}

impl Pipeline {
    /// Handles one POST to `endpoint`.
    pub async fn receive(
        &self,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        request_id: &str,
    ) -> Reply {
        let mut timeline = self.telemetry.enabled().then(Timeline::start);
        let answer = self.answer(endpoint, request, request_id, timeline.as_mut()).await;
        endpoint.counts.requests[answer.outcome() as usize].inc();
        if let Some(timeline) = timeline {
            timeline.record(&self.telemetry, &endpoint.path, request_id, answer.outcome());
        }
        answer.into_reply()
    }

    async fn answer(
        &self,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        request_id: &str,
        mut timeline: Option<&mut Timeline>,
    ) -> Answer {
        // Limits: a declared oversize body is refused before a byte of it is read.
        let (parts, body) = request.into_parts();
        if http::content_length(&parts.headers).is_some_and(|n| n > self.max_body_bytes as u64) {
            return Answer::Body(BodyError::TooLarge(self.max_body_bytes));
        }
        let body = match http::read_body(body, self.max_body_bytes, self.body_timeout).await {
            Ok(body) => body,
            Err(e) => return Answer::Body(e),
        };

        // Verify: over the raw bytes, before anything looks inside them.
        let (headers, now) = (HttpHeaders(&parts.headers), self.clock.wall_secs());
        let verify_started = timeline.is_some().then(SystemTime::now);
        let verified = endpoint.verifier.verify(&headers, &body, now);
        if let (Some(t), Some(started)) = (timeline.as_deref_mut(), verify_started) {
            t.verified(started, verified.as_ref().err().map(|e| e.reason().as_str()));
        }
        if let Err(e) = verified {
            // Only on a refusal, only for payflow endpoints: one more HMAC over the re-serialised
            // body, so the operator learns why an app's own signatures fail. The sender's reply
            // stays `invalid_signature`.
            if e.reason() == Reason::InvalidSignature
                && endpoint.verifier.would_match_json_compat(&headers, &body, now)
            {
                tracing::warn!(
                    request_id,
                    endpoint = %endpoint.path,
                    reason = %e.reason(),
                    "signature refused, but it matches PayFlow's documented algorithm (HMAC over \
                     JSON.stringify(JSON.parse(body))): the sender re-serialised its JSON. Set \
                     json_compat = true on this [[endpoint]] to accept such requests"
                );
            } else {
                tracing::info!(request_id, endpoint = %endpoint.path, reason = %e.reason(), "signature refused");
            }
            endpoint.counts.verification_failures.inc(e.reason().as_str());
            return Answer::SignatureRefused(e.reason());
        }

        // Parse: no JSON object with an id means nothing to store or de-duplicate. Only the
        // verdict is needed here, not the typed event (`check` keeps none of its text).
        let parsed = match event::check(&body) {
            Ok(parsed) => parsed,
            Err(e) => return Answer::NotAnEvent(e.to_string()),
        };

        // De-duplicate and persist. Authentic but invalid events are kept, quarantined.
        let (status, reason) = match (&parsed.checked, endpoint.mode, &endpoint.first_hop) {
            (Err(problem), _, _) => (EventStatus::Quarantined, Some(problem.to_string())),
            (Ok(_), Mode::Proxy, _) => (EventStatus::Forwarding, None),
            (Ok(_), Mode::Queue, Some(_)) => (EventStatus::Queued, None),
            (Ok(_), Mode::Queue, None) => (EventStatus::Stored, None),
        };
        let first_hop = match (status, &endpoint.first_hop) {
            (EventStatus::Queued, Some(hop)) => Some(hop),
            _ => None,
        };
        let mut event = Event {
            key: EventKey::new(endpoint.merchant.clone(), endpoint.scope.clone(), parsed.id),
            endpoint: endpoint.path.clone(),
            event_type: parsed.event_type,
            body,
            received_at_ms: self.clock.now_ms(),
            request_id: request_id.to_string(),
            ordered: false,
        };
        // Read from the event as received, so a plugin's rewrite never reorders it.
        let order_key = match (&endpoint.ordering, first_hop) {
            (Some(path), Some(_)) => {
                fields::field(&fields::parse(&event.body), path).and_then(fields::key_text)
            }
            _ => None,
        };
        event.ordered = order_key.is_some();
        // Either the row is stored claimed into a place held in the hop's queue, or its
        // hand-off is under way until it is handed off below (the guard lives to the end of this
        // function).
        let (claimed, under_way) = match (&self.hand_off, first_hop) {
            (HandOff::Claimed { lease_ms }, Some(hop)) => {
                let place = hop.reserve(&event.key.merchant);
                (place.map(|place| (place, event.received_at_ms + lease_ms)), None)
            }
            (HandOff::Direct(hand_offs), Some(_)) => (None, Some(hand_offs.begin(&event.key))),
            _ => (None, None),
        };
        let claim_until_ms = claimed.as_ref().map(|c| c.1);
        let new = NewEvent {
            event: event.clone(),
            status,
            reason: reason.clone(),
            headers: kept_headers(&parts.headers),
            first_hop: first_hop.map(FirstHop::hop),
            order_key,
            claim_until_ms,
        };
        let store_started = timeline.is_some().then(SystemTime::now);
        let inserted = self.store.insert_event(new).await;
        if let (Some(t), Some(started)) = (timeline, store_started) {
            let error = inserted.as_ref().err().map(ToString::to_string);
            t.stored(started, &event, matches!(inserted, Ok(Inserted::New(_))), error);
        }
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(e) => {
                tracing::warn!(request_id, event_id = %event.key.id, error = %e, "not stored; answering 503");
                return Answer::StoreUnavailable;
            }
        };
        if let Some(reason) = &reason {
            tracing::info!(request_id, event_id = %event.key.id, %reason, "quarantined");
        }
        // Debug, not info: one line per accepted webhook costs the hot path a write to stderr;
        // the delivery and plugin lines carry the same request id at info.
        tracing::debug!(request_id, merchant = %endpoint.merchant, event_id = %event.key.id, duplicate = matches!(inserted, Inserted::Duplicate(_)), "stored");

        // Acknowledge (queue mode), or forward and answer with the upstream's reply (proxy).
        match (endpoint.mode, inserted) {
            (Mode::Queue, Inserted::New(seq)) => {
                match (first_hop, claimed) {
                    (Some(_), Some((place, until_ms))) => place.hand_off(event, seq, until_ms),
                    (Some(hop), None) if under_way.is_some() => hop.hand_off(event, seq),
                    (Some(hop), None) => hop.poll_store_now(),
                    (None, _) => {}
                }
                if status == EventStatus::Quarantined {
                    Answer::Quarantined
                } else {
                    Answer::Received
                }
            }
            (Mode::Queue, Inserted::Duplicate(_)) => Answer::Duplicate,
            (Mode::Proxy, Inserted::New(_)) if status == EventStatus::Quarantined => Answer::Quarantined,
            (Mode::Proxy, Inserted::New(seq)) => self.proxy(endpoint, event, Some(seq)).await,
            (Mode::Proxy, Inserted::Duplicate(EventStatus::Failed | EventStatus::Forwarding)) => {
                self.forward_again(endpoint, event).await
            }
            (Mode::Proxy, Inserted::Duplicate(_)) => Answer::Duplicate,
        }
    }

    /// Proxy mode: the endpoint's plugins, then the forward, for the event numbered `seq` when
    /// the caller has it. A plugin failure answers 503 so the sender retries (and the plugins
    /// run again); a drop answers 200.
    async fn proxy(&self, endpoint: &Endpoint, event: Event, seq: Option<EventSeq>) -> Answer {
        let Some(plugins) = self.plugins.as_ref().filter(|p| p.has_plugins(&endpoint.path)) else {
            let body = event.body.clone();
            return self.forward(endpoint, &event, body, &[]).await;
        };
        match plugins.run_proxied(&event, seq).await {
            ChainOutcome::Continue { body, headers, .. } => {
                let body = body.unwrap_or_else(|| event.body.clone());
                self.forward(endpoint, &event, body, &headers).await
            }
            ChainOutcome::Drop { reason, .. } => Answer::Dropped(reason),
            ChainOutcome::Failed { reason } | ChainOutcome::Waiting { reason } => {
                tracing::info!(request_id = event.request_id, event_id = event.key.id, %reason, "plugin step failed");
                Answer::PluginFailed(reason)
            }
        }
    }

    /// Proxy mode: a duplicate whose earlier forward failed is forwarded again, once, by
    /// whichever request claims it; a duplicate arriving while one is in flight is told to
    /// retry later.
    async fn forward_again(&self, endpoint: &Endpoint, event: Event) -> Answer {
        let timeout = endpoint.upstream.as_ref().map_or(Duration::from_secs(5), |u| u.timeout);
        let now = self.clock.now_ms();
        // A forward still marked in flight after twice its timeout was cut short by a crash.
        let stale_before = now - 2 * timeout.as_millis() as i64;
        match self.store.claim_forward(&event.key, now, stale_before).await {
            Ok(true) => self.proxy(endpoint, event, None).await,
            Ok(false) => Answer::InProgress,
            Err(_) => Answer::StoreUnavailable,
        }
    }

    async fn forward(
        &self,
        endpoint: &Endpoint,
        event: &Event,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Answer {
        let Some(upstream) = &endpoint.upstream else {
            return Answer::NoUpstream;
        };
        let (key, request_id) = (&event.key, event.request_id.as_str());
        let attempt = AttemptStart::forward(event, 1, self.clock.now_ms());
        let result =
            self.client.send(upstream, &key.id, request_id, body, headers, self.clock.wall_secs()).await;
        let outcome = match classify(&result) {
            Verdict::Delivered => AttemptOutcome::Delivered,
            _ => AttemptOutcome::Dead,
        };
        if let Err(e) = self.store.finish_forward(attempt.finish(upstream, &result, outcome)).await {
            // The claim's lease runs out and the sender's retry forwards again.
            tracing::warn!(request_id, event_id = key.id, error = %e, "cannot record the forward");
        }
        match result {
            Ok(reply) => Answer::Forwarded(reply),
            Err(SendError::Timeout(_)) => Answer::UpstreamTimeout,
            Err(SendError::Connection(_)) => Answer::UpstreamUnreachable,
        }
    }
}

fn kept_headers(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_string(), value.chars().take(256).collect()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::HeaderMap;

    #[test]
    fn kept_headers_are_the_listed_ones_in_order_cut_to_256_chars_and_never_a_signature() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.7".to_string()),
            ("webhook-signature", "v1,c2VjcmV0".to_string()),
            ("svix-signature", "v1,c2VjcmV0".to_string()),
            ("payflow-signature", "t=1,v1=00".to_string()),
            ("authorization", "Bearer hunter2".to_string()),
            ("User-Agent", "a".repeat(300)),
            ("webhook-id", "msg_1".to_string()),
            ("content-type", "application/json".to_string()),
        ] {
            headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let kept = kept_headers(&headers);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "user-agent", "webhook-id", "x-forwarded-for"]);
        assert_eq!(kept[1].1, "a".repeat(256));
        assert_eq!(kept[3].1, "203.0.113.7");
    }
}
