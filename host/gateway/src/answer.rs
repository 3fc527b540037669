//! How a webhook request ends: every answer the pipeline can give, the reply each one is
//! (the HTTP contract, in one table) and the outcome it is counted under
//! (`payflow_edge_requests_total{outcome}`). The pipeline decides which answer; only this
//! module writes replies. It must never decide anything itself.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use payflow_delivery::UpstreamReply;
use payflow_verify::Reason;
use serde_json::json;

use crate::http::{self, BodyError, Reply};

/// Every way a webhook request ends.
#[derive(Debug)]
pub enum Answer {
    /// Stored (and acknowledged, in queue mode).
    Received,
    /// Already stored: acknowledged again.
    Duplicate,
    /// Authentic but not a valid event: stored aside, acknowledged.
    Quarantined,
    /// A plugin dropped it (proxy mode), with its reason.
    Dropped(String),
    /// Its signature was refused.
    SignatureRefused(Reason),
    /// Its body could not be read: too large (declared or sent), too slow, or broken.
    Body(BodyError),
    /// Not a JSON event with an id: what is wrong with it.
    NotAnEvent(String),
    /// The store could not make it durable (or take the forward's claim).
    StoreUnavailable,
    /// A plugin failed (proxy mode), with what it said: the sender retries.
    PluginFailed(String),
    /// Proxy mode: forwarded, and this is the upstream's reply.
    Forwarded(UpstreamReply),
    /// Proxy mode: the upstream did not answer within its timeout.
    UpstreamTimeout,
    /// Proxy mode: the upstream could not be reached.
    UpstreamUnreachable,
    /// Proxy mode: a duplicate arrived while its first copy was being forwarded.
    InProgress,
    /// Proxy mode without an upstream (the configuration check makes this unreachable).
    NoUpstream,
}

/// The acknowledgements' bodies: one of them ends nearly every request, so they are fixed
/// text rather than a JSON map built and serialised each time.
const RECEIVED: &[u8] = br#"{"received":true}"#;
const DUPLICATE: &[u8] = br#"{"received":true,"duplicate":true}"#;

/// What a sender asked to retry later waits, in seconds.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("5");

impl Answer {
    /// The outcome it is counted under.
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Received => Outcome::Received,
            Answer::Duplicate => Outcome::Duplicate,
            Answer::Quarantined => Outcome::Quarantined,
            Answer::Dropped(_) => Outcome::Dropped,
            Answer::SignatureRefused(_) => Outcome::SignatureRefused,
            Answer::Body(BodyError::TooLarge(_)) => Outcome::TooLarge,
            Answer::Body(BodyError::Timeout(_)) => Outcome::BodyTimeout,
            Answer::Body(BodyError::Broken(_)) | Answer::NotAnEvent(_) => Outcome::BadRequest,
            Answer::StoreUnavailable => Outcome::StoreUnavailable,
            Answer::PluginFailed(_) => Outcome::PluginFailed,
            Answer::Forwarded(_) => Outcome::Forwarded,
            Answer::UpstreamTimeout | Answer::UpstreamUnreachable | Answer::NoUpstream => {
                Outcome::UpstreamFailed
            }
            Answer::InProgress => Outcome::InProgress,
        }
    }

    /// The reply the sender gets.
    pub fn into_reply(self) -> Reply {
        match self {
            Answer::Received | Answer::Quarantined => {
                http::json_text(StatusCode::OK, Bytes::from_static(RECEIVED))
            }
            Answer::Duplicate => http::json_text(StatusCode::OK, Bytes::from_static(DUPLICATE)),
            Answer::Dropped(reason) => {
                http::json(StatusCode::OK, &json!({ "received": true, "dropped": reason }))
            }
            Answer::SignatureRefused(reason) => http::error(StatusCode::UNAUTHORIZED, reason.as_str()),
            Answer::Body(e) => e.reply(),
            Answer::NotAnEvent(problem) => http::error(StatusCode::BAD_REQUEST, &problem),
            Answer::StoreUnavailable => http::error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Answer::PluginFailed(reason) => retry_later(http::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "plugin_failed", "message": reason }),
            )),
            Answer::Forwarded(reply) => {
                let mut response = Response::new(Full::new(reply.body));
                *response.status_mut() = reply.status;
                if let Some(ct) = reply.content_type {
                    response.headers_mut().insert(CONTENT_TYPE, ct);
                }
                response
            }
            Answer::UpstreamTimeout => http::error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Answer::UpstreamUnreachable => http::error(StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Answer::InProgress => retry_later(http::error(StatusCode::CONFLICT, "in_progress")),
            Answer::NoUpstream => http::error(StatusCode::INTERNAL_SERVER_ERROR, "no_upstream"),
        }
    }
}

fn retry_later(mut reply: Reply) -> Reply {
    reply.headers_mut().insert(RETRY_AFTER, RETRY_AFTER_SECS);
    reply
}

/// What became of a request: `payflow_edge_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (and acknowledged, in queue mode).
    Received,
    /// Already stored: acknowledged again.
    Duplicate,
    /// Authentic but not a valid event: stored aside.
    Quarantined,
    /// A plugin dropped it (proxy mode).
    Dropped,
    /// Its signature was refused.
    SignatureRefused,
    /// Its body was too large.
    TooLarge,
    /// Its body did not arrive in time.
    BodyTimeout,
    /// Unreadable body, or not a JSON event with an id.
    BadRequest,
    /// The store could not make it durable.
    StoreUnavailable,
    /// A plugin failed (proxy mode: the sender retries).
    PluginFailed,
    /// Proxy mode: forwarded, and the upstream's reply passed back.
    Forwarded,
    /// Proxy mode: the upstream did not answer.
    UpstreamFailed,
    /// Proxy mode: a duplicate arrived while its first copy was being forwarded.
    InProgress,
}

impl Outcome {
    /// Every outcome, in the order of [`crate::pipeline::EndpointCounts`]'s counters.
    pub const ALL: [Outcome; 13] = [
        Outcome::Received,
        Outcome::Duplicate,
        Outcome::Quarantined,
        Outcome::Dropped,
        Outcome::SignatureRefused,
        Outcome::TooLarge,
        Outcome::BodyTimeout,
        Outcome::BadRequest,
        Outcome::StoreUnavailable,
        Outcome::PluginFailed,
        Outcome::Forwarded,
        Outcome::UpstreamFailed,
        Outcome::InProgress,
    ];

    /// Whether the sender was told no (a 4xx or 5xx of ours, or none from the upstream).
    pub fn is_refusal(self) -> bool {
        !matches!(
            self,
            Outcome::Received
                | Outcome::Duplicate
                | Outcome::Quarantined
                | Outcome::Dropped
                | Outcome::Forwarded
        )
    }

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Duplicate => "duplicate",
            Outcome::Quarantined => "quarantined",
            Outcome::Dropped => "dropped",
            Outcome::SignatureRefused => "signature_refused",
            Outcome::TooLarge => "body_too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::PluginFailed => "plugin_failed",
            Outcome::Forwarded => "forwarded",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::InProgress => "in_progress",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One of each answer with the status and error code the HTTP contract gives it.
    fn table() -> Vec<(Answer, u16, Option<&'static str>)> {
        vec![
            (Answer::Received, 200, None),
            (Answer::Duplicate, 200, None),
            (Answer::Quarantined, 200, None),
            (Answer::Dropped("below minimum".into()), 200, None),
            (Answer::SignatureRefused(Reason::InvalidSignature), 401, Some("invalid_signature")),
            (Answer::Body(BodyError::TooLarge(10)), 413, Some("body_too_large")),
            (Answer::Body(BodyError::Timeout(Duration::from_secs(1))), 408, Some("body_timeout")),
            (Answer::Body(BodyError::Broken("reset".into())), 400, Some("body_unreadable")),
            (Answer::NotAnEvent("body is not a JSON object".into()), 400, Some("body is not a JSON object")),
            (Answer::StoreUnavailable, 503, Some("store_unavailable")),
            (Answer::PluginFailed("trap".into()), 503, Some("plugin_failed")),
            (Answer::UpstreamTimeout, 504, Some("upstream_timeout")),
            (Answer::UpstreamUnreachable, 502, Some("upstream_unreachable")),
            (Answer::InProgress, 409, Some("in_progress")),
            (Answer::NoUpstream, 500, Some("no_upstream")),
        ]
    }

    async fn body_of(reply: Reply) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = reply.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_answer_has_its_contract_reply_and_a_matching_outcome() {
        for (answer, status, error) in table() {
            let outcome = answer.outcome();
            let name = format!("{answer:?}");
            let reply = answer.into_reply();
            assert_eq!(reply.status().as_u16(), status, "{name}");
            // What the sender was told and what is counted agree: a refusal is never a 2xx.
            assert_eq!(outcome.is_refusal(), status >= 400, "{name} counted as {}", outcome.as_str());
            let retry_later = matches!(outcome, Outcome::PluginFailed | Outcome::InProgress);
            assert_eq!(reply.headers().contains_key(RETRY_AFTER), retry_later, "{name}");
            assert_eq!(body_of(reply).await["error"].as_str(), error, "{name}");
        }
    }

    #[tokio::test]
    async fn an_acknowledgement_says_received_and_marks_duplicates_and_drops() {
        assert_eq!(body_of(Answer::Received.into_reply()).await, json!({ "received": true }));
        assert_eq!(
            body_of(Answer::Duplicate.into_reply()).await,
            json!({ "received": true, "duplicate": true })
        );
        assert_eq!(
            body_of(Answer::Dropped("test".into()).into_reply()).await,
            json!({ "received": true, "dropped": "test" })
        );
    }

    #[test]
    fn every_outcome_is_counted_in_its_own_slot() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{}", outcome.as_str());
        }
    }

    /// The upstream's reply passes through as it came, status, type and body.
    #[tokio::test]
    async fn a_forward_passes_the_upstreams_reply_back() {
        let reply = Answer::Forwarded(UpstreamReply {
            status: StatusCode::ACCEPTED,
            content_type: Some(HeaderValue::from_static("application/json")),
            retry_after: None,
            body: bytes::Bytes::from_static(b"{\"legacy\":1}"),
        })
        .into_reply();
        assert_eq!(reply.status(), StatusCode::ACCEPTED);
        assert_eq!(reply.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(body_of(reply).await, json!({ "legacy": 1 }));
    }
}
