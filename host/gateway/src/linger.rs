//! Lingering close: before a connection's socket is closed, what its client is still sending
//! is read and thrown away for a short while, so that a reply sent before the request's body
//! was read (a `401`, `404` or `413`) reaches the client.
//!
//! Why: hyper stops reading a connection whose handler dropped the request's body unread, and
//! closes it once the reply is written. Closing a TCP socket with unread bytes in its receive
//! buffer makes the kernel send a reset instead of a FIN, and a reset makes the client's kernel
//! drop what it has received but not yet read: the reply. A client still uploading then sees
//! the connection cut and no status (reqwest's `IncompleteMessage`). Shutting down our sending
//! side first (a FIN after the reply) and draining the client's bytes until it closes too is
//! what nginx's `lingering_close` does for the same reason.
//!
//! Bounds, so a client cannot hold a connection by sending forever: the drain ends after
//! [`LINGER_TIME`] or [`LINGER_BYTES`], whichever comes first, and then the socket closes as
//! before. Meanwhile the connection counts as waiting, not busy, so it is among the first
//! closed to make room for a newcomer ([`crate::connections`]).
//!
//! This wraps only `poll_shutdown`: it never changes a byte that is read or written while the
//! connection serves requests.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest a closing connection reads what its client still sends. A client that has our reply
/// reads it within a round trip; this only has to outlast that.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes a closing connection reads and throws away; past this the socket closes (with a
/// reset if more is coming), as it would without lingering.
pub const LINGER_BYTES: usize = 32 << 20;

/// A stream whose shutdown lingers (see the module docs).
pub struct Linger<S> {
    inner: S,
    time: Duration,
    bytes: usize,
    state: State,
}

enum State {
    Open,
    Draining { deadline: Pin<Box<Sleep>>, left: usize },
    Closed,
}

impl<S> Linger<S> {
    /// Wraps `inner`; nothing changes until hyper shuts it down.
    pub fn new(inner: S) -> Self {
        Self::with_bounds(inner, LINGER_TIME, LINGER_BYTES)
    }

    fn with_bounds(inner: S, time: Duration, bytes: usize) -> Self {
        Linger { inner, time, bytes, state: State::Open }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Linger<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    let shut = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if shut.is_err() {
                        this.state = State::Closed;
                        return Poll::Ready(shut);
                    }
                    let deadline = Box::pin(tokio::time::sleep(this.time));
                    this.state = State::Draining { deadline, left: this.bytes };
                }
                State::Draining { deadline, left } => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.state = State::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => {
                            *left = left.saturating_sub(buf.filled().len());
                            if *left == 0 {
                                this.state = State::Closed;
                            }
                        }
                        // The client closed its side (or the connection broke): nothing to lose.
                        _ => this.state = State::Closed,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn shutdown_sends_a_fin_and_ends_when_the_client_closes() {
        let (server, mut client) = pair().await;
        // A day to linger: only the client's close can end this drain in the test's time.
        let mut server = Linger::with_bounds(server, Duration::from_secs(86_400), usize::MAX);
        client.write_all(b"unread upload").await.unwrap();
        server.write_all(b"reply").await.unwrap();
        let closing = tokio::spawn(async move { server.shutdown().await });
        // The client reads the whole reply and then an orderly end, not a reset.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(60), closing).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the drain ends at the client's close: {ended:?}");
    }

    #[tokio::test]
    async fn a_client_that_never_closes_is_cut_after_the_linger_time() {
        let (server, client) = pair().await;
        let mut server = Linger::with_bounds(server, Duration::from_millis(200), usize::MAX);
        let started = std::time::Instant::now();
        server.shutdown().await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "cut after {waited:?}, before its time");
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_sends_forever_is_cut_after_the_byte_budget() {
        let (server, mut client) = pair().await;
        // Far more than loopback's socket buffers hold, so only a drain lets this much through.
        let budget = 64 << 20;
        // A day to linger: only the byte budget can end this drain.
        let mut server = Linger::with_bounds(server, Duration::from_secs(86_400), budget);
        let sender = tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        server.shutdown().await.unwrap();
        drop(server);
        let sent = sender.await.unwrap();
        assert!(sent >= budget, "the drain ended before reading its budget: {sent} bytes sent");
    }
}
