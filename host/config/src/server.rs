//! `[server]`: the ingress listener (address, TLS, the replica's name) and what it accepts
//! (body and header sizes, timeouts, connections in all and per client), with the bounds the
//! check holds them to.

use std::path::PathBuf;

use serde::Deserialize;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest accepted body; larger requests get 413 without being read.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_timeout_ms: u64,
    /// Time a client has to send its whole body once the headers are in.
    pub body_timeout_ms: u64,
    /// Connections served at once. A new one beyond this closes the connection that has waited
    /// longest for a request (never one whose request is being answered).
    pub max_connections: usize,
    /// Connections at once from one client address; a client over it loses its own
    /// longest-waiting connection. Behind a proxy every sender has the proxy's address: set it
    /// to `max_connections` there.
    pub max_connections_per_client: usize,
    /// Largest request line plus headers; a larger block is answered 431 and the connection
    /// closed. hyper buffers an unfinished block in full, so this is what each connection that
    /// trickles headers can cost in memory (hyper's own default is ~400 KB).
    pub max_header_bytes: usize,
    /// PEM certificate chain; with `tls_key`, ingress speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// This replica's name, the `replica` label of its metrics when replicas share a store
    /// (`[store] url`); the host name when unset.
    pub replica: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            max_connections: 1024,
            max_connections_per_client: 256,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            tls_cert: None,
            tls_key: None,
            replica: None,
        }
    }
}

/// `server.max_header_bytes` by default: PayFlow's and the other providers' requests carry a
/// few hundred bytes of headers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// hyper's smallest read buffer (it refuses anything below).
pub(crate) const MIN_MAX_HEADER_BYTES: usize = 8 << 10;
/// Past this, a connection's header block costs more memory than any real sender needs.
pub(crate) const MAX_MAX_HEADER_BYTES: usize = 1 << 20;
