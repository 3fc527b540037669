//! Listeners: accepting connections (optionally TLS), the limits that protect them, graceful
//! shutdown, and the webhook router that hands each request to the pipeline.
//!
//! Limits and why: connection caps, in all and per client address, so a flood cannot exhaust
//! file descriptors or memory nor crowd out other senders (a full listener closes the
//! connection that has waited longest for a request, see [`crate::connections`], and never
//! stops accepting); a header read timeout so a slow client cannot hold a connection open by
//! trickling headers (slowloris); a cap on the header block (431); the body timeout and size
//! cap are applied by the pipeline; a reply that leaves its request's body unread says
//! `Connection: close`, so the client does not reuse a connection hyper is closing (see
//! [`crate::http::RequestBody`]); a closing connection lingers to read what its client still
//! sends, so that a refusal answered before the body was read still reaches the client (see
//! [`crate::linger`]). On shutdown the listener stops accepting at once and in-flight requests
//! are given time to finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::connections::{Caps, Connections};
use crate::http::{self, Reply, RequestBody};
use crate::linger::Linger;
use crate::pipeline::{Endpoint, Pipeline};
use payflow_delivery::REQUEST_ID_HEADER;

/// Longest time in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Something that answers requests.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    async fn handle(&self, request: Request<RequestBody>) -> Reply;
}

/// How a listener treats its connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// Time allowed for a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// Connections at once, in all and per client address (see [`crate::connections`]).
    pub caps: Caps,
    /// Request line plus headers; larger is answered 431.
    pub max_header_bytes: usize,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
}

/// Serves `listener` until `shutdown` turns true, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Connections::new(options.caps);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Full of busy connections: closing the newcomer at once lets its client retry.
        let Some(admitted) = connections.admit(peer.ip()) else { continue };
        let _ = stream.set_nodelay(true);
        let (handler, options, watcher) = (handler.clone(), options.clone(), graceful.watcher());
        tokio::spawn(async move {
            let close = admitted.close.clone();
            let admitted = Arc::new(admitted);
            let max_header_bytes = options.max_header_bytes;
            let service = service_fn(move |request| {
                let (handler, admitted) = (handler.clone(), admitted.clone());
                async move {
                    admitted.busy();
                    let (request, body_end) = RequestBody::wrap(request);
                    // hyper's buffer cap stops a block that is still arriving, but it is checked
                    // between reads: a block that arrives whole may pass it by up to twice.
                    let mut reply = if header_bytes(&request) > max_header_bytes {
                        http::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "header_fields_too_large")
                    } else {
                        handler.handle(request).await
                    };
                    // The rest of an unread body is still coming: hyper will close rather than
                    // read it, and the client must know before it reuses the connection.
                    if !body_end.reached() {
                        reply.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    admitted.waiting();
                    Ok::<_, Infallible>(reply)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_timeout)
                .max_buf_size(options.max_header_bytes);
            let served = async {
                match options.tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(Linger::new(stream)), service))
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(options.header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                watcher
                                    .watch(builder.serve_connection(TokioIo::new(Linger::new(tls)), service))
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => Ok(()),
                        }
                    }
                }
            };
            tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                // Dropping the connection closes it.
                _ = close.notified() => tracing::debug!(%peer, "connection closed to make room for another"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
}

/// The size of a request's line and header block, as sent (to within the separators).
fn header_bytes(request: &Request<RequestBody>) -> usize {
    let line = request.method().as_str().len()
        + request.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len();
    let headers: usize = request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    line + headers + 2
}

/// A certificate or key the TLS listener cannot use; each names the config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read as PEM.
    #[error("server.tls_cert: cannot read {}: {source}", path.display())]
    ReadCert {
        /// The file.
        path: std::path::PathBuf,
        /// What the PEM parser refused.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("server.tls_cert: {} holds no certificate", .0.display())]
    NoCertificate(std::path::PathBuf),
    /// The key file cannot be read as PEM.
    #[error("server.tls_key: cannot read {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: std::path::PathBuf,
        /// What the PEM parser refused.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("server.tls_cert/tls_key: {0}")]
    Refused(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCert { path: cert.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::ReadKey { path: key.to_path_buf(), source })?;
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A request id: the caller's `X-Request-Id` when it is short and printable, else a new one.
pub fn request_id(request: &Request<RequestBody>) -> String {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("req_{:016x}", rand::rng().random::<u64>()), str::to_string)
}

/// Routes webhook requests to their endpoint's pipeline.
pub struct WebhookRouter {
    /// Endpoints by path.
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// The shared request path.
    pub pipeline: Pipeline,
}

#[async_trait]
impl Handler for WebhookRouter {
    async fn handle(&self, request: Request<RequestBody>) -> Reply {
        let id = request_id(&request);
        let mut reply = match self.endpoints.get(request.uri().path()) {
            None => http::error(StatusCode::NOT_FOUND, "not_found"),
            Some(_) if request.method() != Method::POST => {
                let mut reply = http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
                reply.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
                reply
            }
            Some(endpoint) => self.pipeline.receive(endpoint, request, &id).await,
        };
        if let Ok(value) = HeaderValue::from_str(&id) {
            // A static name: parsed from text, it was an allocation and a copy per request.
            reply.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
        reply
    }
}
