//! Small HTTP helpers shared by ingress, admin and delivery: JSON replies, bounded body
//! reading, the adapter that lets `payflow-verify` read hyper's headers, and the small
//! client the CLI and the admin's test webhooks use.

mod client;
mod request_body;

pub use client::{Client, ClientError, Trust};
pub use request_body::{BodyEnd, RequestBody};

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// Every reply the gateway sends has a complete body.
pub type Reply = Response<Full<Bytes>>;

/// A JSON reply.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    json_text(status, Bytes::from(value.to_string()))
}

/// A JSON reply whose body is already JSON text (a fixed answer, built once).
pub fn json_text(status: StatusCode, body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text reply.
pub fn text(status: StatusCode, text: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `{"error": "<reason>"}` with a status.
pub fn error(status: StatusCode, reason: &str) -> Reply {
    json(status, &serde_json::json!({ "error": reason }))
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than the limit; reading stopped there.
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client did not send the whole body in time.
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    /// The connection failed mid-body.
    #[error("body could not be read: {0}")]
    Broken(String),
}

impl BodyError {
    /// The reply to a request whose body this was: `413 body_too_large`, `408 body_timeout` or
    /// `400 body_unreadable`.
    pub fn reply(&self) -> Reply {
        match self {
            BodyError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            BodyError::Timeout(_) => error(StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BodyError::Broken(_) => error(StatusCode::BAD_REQUEST, "body_unreadable"),
        }
    }
}

/// Reads a whole body, stopping as soon as it passes `limit` bytes or `timeout` elapses.
pub async fn read_body<B>(mut body: B, limit: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| BodyError::Timeout(timeout))?
}

/// hyper's headers as `payflow-verify` reads them.
pub struct HttpHeaders<'a>(pub &'a HeaderMap);

impl payflow_verify::Headers for HttpHeaders<'_> {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.0.get_all(name).iter().map(HeaderValue::as_bytes).collect()
    }
}

/// A `Content-Length` header's value, when present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(hyper::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Decodes `%XX` and `+` in a query component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query string's `key=value` pairs, decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("payment.succeeded"), "payment.succeeded");
        assert_eq!(percent_decode("%2Fwebhooks%2Fpayflow+x"), "/webhooks/payflow x");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
