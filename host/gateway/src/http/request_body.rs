//! A request's body that remembers whether it was read to its end, so the listener can tell
//! the client that a connection whose body was left unread is closing.
//!
//! Why: a handler may answer before it reads the body (a `404` for an unknown path, a `401`,
//! a `413` from `Content-Length` alone). hyper then cannot reuse the connection: the rest of
//! the body is still coming on it. But it has already written the reply's head as if it
//! could, without `Connection: close`, so the client puts the connection back in its pool and
//! may write its next request into a connection the gateway is closing; the client sees it
//! cut (`IncompleteMessage`) and, for a POST, may not know whether it was received. Saying
//! `Connection: close` on such a reply is what RFC 9112 (§9.6) asks of a server that closes.
//!
//! This only watches the body's frames go by; it must never change, buffer or hold them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::Request;

/// A request body, as hyper delivers it, that records reaching its end.
pub struct RequestBody {
    inner: Incoming,
    ended: Option<Arc<AtomicBool>>,
}

/// Whether the body of a request handed to a handler was read to its end.
pub struct BodyEnd(Option<Arc<AtomicBool>>);

impl RequestBody {
    /// Wraps `request`'s body; the [`BodyEnd`] tells, once the handler is done, whether it
    /// read the body to its end.
    pub fn wrap(request: Request<Incoming>) -> (Request<RequestBody>, BodyEnd) {
        let (parts, inner) = request.into_parts();
        // A request without a body (most GETs, every acknowledgement's follow-up) needs no flag.
        let ended = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let end = BodyEnd(ended.clone());
        (Request::from_parts(parts, RequestBody { inner, ended }), end)
    }
}

impl BodyEnd {
    /// True when the request had no body or its handler read it to its end.
    pub fn reached(&self) -> bool {
        self.0.as_ref().is_none_or(|ended| ended.load(Ordering::Relaxed))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(None), Some(ended)) = (&polled, &self.ended) {
            ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
