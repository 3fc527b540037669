//! A minimal HTTP/1.1 client over plain HTTP or TLS: the admin API's test webhooks and the
//! CLI's commands (`send`, `events`, `plugin`). Not the delivery path's client, which has its
//! own limits and pool (`payflow-delivery`).
//!
//! TLS trusts the system's roots unless told otherwise: a CA file (`--cacert`, for a private
//! CA or the gateway's own self-signed certificate) or nothing at all (`--insecure`, which
//! still checks the handshake's signatures but not who signed the certificate). It must never
//! fall back to trusting everything on its own: only an explicit [`Trust::Insecure`] does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Whose certificates an `https://` URL's server may present.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// The system's root certificates (`/etc/ssl/certs` and friends).
    #[default]
    System,
    /// Only the certificates in this PEM file (a private CA, or a self-signed certificate).
    CaFile(PathBuf),
    /// Any certificate, for any name: for a test certificate on loopback. Signatures in the
    /// handshake are still checked, so the connection is encrypted, but not authenticated.
    Insecure,
}

/// Why a [`Client`] request got no reply, or the client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("--cacert {path}: {error}")]
    CaFile {
        /// The file named.
        path: String,
        /// What was wrong with it.
        error: String,
    },
    /// The URL or a header is unusable.
    #[error("bad request to {url}: {error}")]
    Request {
        /// The URL requested.
        url: String,
        /// What made the request unusable.
        error: String,
    },
    /// The server's certificate was not trusted (or the TLS handshake failed otherwise).
    #[error("cannot reach {url}: the TLS handshake failed ({error}); if the server uses a private or self-signed certificate, pass --cacert FILE (e.g. the gateway's tls_cert), or --insecure for a test certificate")]
    Tls {
        /// The URL requested.
        url: String,
        /// rustls's reason.
        error: String,
    },
    /// No connection, or no reply.
    #[error("cannot reach {url}: {error}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The connection's or hyper's error, as text for the log.
        error: String,
    },
    /// The reply's body broke off.
    #[error("the reply from {0} was cut short")]
    CutShort(String),
}

/// A minimal HTTP/1.1 client for `http://` and `https://` URLs.
#[derive(Clone)]
pub struct Client(hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>);

impl Default for Client {
    /// Trusts the system's roots.
    fn default() -> Self {
        Client::with_config(system_config())
    }
}

impl Client {
    /// A client with its own connection pool that trusts the system's roots.
    pub fn new() -> Self {
        Client::default()
    }

    /// A client that trusts whom `trust` says.
    pub fn with_trust(trust: &Trust) -> Result<Self, ClientError> {
        let config = match trust {
            Trust::System => system_config(),
            Trust::CaFile(path) => ca_file_config(path)?,
            Trust::Insecure => insecure_config(),
        };
        Ok(Client::with_config(config))
    }

    fn with_config(config: rustls::ClientConfig) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Client(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        )
    }

    /// Sends a request and reads the whole reply.
    pub async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Request { url: url.to_string(), error: e.to_string() })?;
        let response = self.0.request(request).await.map_err(|e| {
            let tls = tls_cause(&e);
            let error = payflow_delivery::error_chain(&e);
            match tls {
                Some(reason) => ClientError::Tls { url: url.to_string(), error: reason },
                None => ClientError::Unreachable { url: url.to_string(), error },
            }
        })?;
        let status = response.status();
        let body =
            response.into_body().collect().await.map_err(|_| ClientError::CutShort(url.to_string()))?;
        Ok((status, body.to_bytes()))
    }
}

/// rustls's reason, when a connection failed in the TLS handshake. The connectors wrap it in
/// `io::Error`s (one inside another), whose `source()` skips the payload, so those are opened.
fn tls_cause(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        cause = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
}

fn config_with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    builder().with_root_certificates(roots).with_no_client_auth()
}

fn system_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable or missing system certificates leave the store short; the handshake then
    // fails with a reason that names --cacert.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    config_with_roots(roots)
}

fn ca_file_config(path: &Path) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let problem = |error: String| ClientError::CaFile { path: path.display().to_string(), error };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(e.to_string()))?;
    if certs.is_empty() {
        return Err(problem("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| problem(e.to_string()))?;
    }
    Ok(config_with_roots(roots))
}

fn insecure_config() -> rustls::ClientConfig {
    builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth()
}

/// Accepts any certificate but still checks the handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
