//! A plugin's stdout and stderr: kept up to the log cap, the rest counted and dropped. Writes
//! never fail (a failing stdout would make Rust's `println!` panic). It must never block.

use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The plugin's stdout and stderr: kept up to a cap, the rest counted and dropped. Writes never
/// fail (a failing stdout would make Rust's `println!` panic, turning a chatty plugin into a
/// broken one).
#[derive(Clone)]
pub(crate) struct CappedOutput {
    pub(crate) cap: usize,
    pub(crate) kept: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CappedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        CappedOutput { cap, kept: Arc::default() }
    }

    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(kept.0.len()).min(bytes.len());
        kept.0.extend_from_slice(&bytes[..room]);
        kept.1 += bytes.len() - room;
    }

    /// What was kept, and how many bytes were dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, usize) {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}
