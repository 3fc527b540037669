//! The HTTP client to upstreams: one POST per attempt with `X-PayFlow-Event-Id` and the
//! request id, re-signed when the upstream has a `sign_secret`; the reply read up to a cap,
//! `Retry-After` in both its forms. It must never follow a redirect or decide a retry.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payflow_verify::SignOptions;

use crate::upstream::Upstream;

/// Header carrying the event id on every delivery.
pub const EVENT_ID_HEADER: &str = "x-payflow-event-id";
/// Header carrying the ingress request id, for tracing across hops.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The most of an upstream's reply that is read and kept.
pub(crate) const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Longest `Retry-After` obeyed; a larger one is taken as this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The most of an upstream's reply stored with an attempt (for the admin view).
pub(crate) const STORED_REPLY_BYTES: usize = 1024;

/// An upstream's answer.
#[derive(Debug)]
pub struct UpstreamReply {
    /// The upstream's HTTP status: 2xx delivered, else classified by the retry policy.
    pub status: StatusCode,
    /// Its content type, passed back in proxy mode.
    pub content_type: Option<HeaderValue>,
    /// `Retry-After` as a delay from now, when given (either form).
    pub retry_after: Option<Duration>,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No complete answer within the upstream's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect, or the connection broke.
    #[error("connection failed: {0}")]
    Connection(String),
}

/// The HTTP client for upstreams (HTTP/1.1, pooled keep-alive connections).
#[derive(Clone)]
pub struct UpstreamClient {
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        UpstreamClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl UpstreamClient {
    /// POSTs an event's body to the upstream with `X-PayFlow-Event-Id` (and a fresh
    /// signature in its `sign_scheme` when the upstream has a `sign_secret`), plus the headers plugins added (a
    /// plugin's `content-type` replaces the JSON one).
    pub async fn send(
        &self,
        upstream: &Upstream,
        event_id: &str,
        request_id: &str,
        body: Bytes,
        headers: &[(String, String)],
        now_secs: i64,
    ) -> Result<UpstreamReply, SendError> {
        let (uri, signer) = (&upstream.uri, &upstream.signer);
        let typed = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        let mut request = Request::post(uri.clone());
        // The fixed names and values are static: parsed from text, each was an allocation and
        // a copy per delivery.
        if !typed {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut request = request
            .header(USER_AGENT, HeaderValue::from_static(concat!("payflow-edge/", env!("CARGO_PKG_VERSION"))))
            .header(HeaderName::from_static(EVENT_ID_HEADER), event_id)
            .header(HeaderName::from_static(REQUEST_ID_HEADER), request_id);
        if let Some((signer, payflow_form)) = signer {
            // Standard Webhooks signs a message id: the event's, which the upstream also gets as
            // X-PayFlow-Event-Id. The configuration check proved the secret can sign.
            let options =
                SignOptions { timestamp: now_secs, id: Some(event_id), payflow_form: *payflow_form };
            if let Ok(headers) = signer.sign(&body, &options) {
                for (name, value) in headers {
                    request = request.header(name, value);
                }
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Connection(e.to_string()))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| SendError::Connection(error_chain(&e)))?;
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_secs));
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(UpstreamReply { status, content_type, retry_after, body })
        };
        tokio::time::timeout(upstream.timeout, exchange)
            .await
            .map_err(|_| SendError::Timeout(upstream.timeout))?
    }
}

/// A `Retry-After` value as a delay from `now_secs` (unix): RFC 9110 allows whole seconds or
/// an HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must
/// accept). A date already past means "now". `None` for anything else, so the usual backoff
/// applies.
pub fn parse_retry_after(value: &str, now_secs: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at_secs.saturating_sub(now_secs).max(0) as u64))
}

/// An error with its sources, as one line: hyper's own message ("client error (Connect)")
/// says nothing of the refused connection beneath it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a reply body, for the admin view.
pub fn reply_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(STORED_REPLY_BYTES)]);
    text.into_owned()
}
