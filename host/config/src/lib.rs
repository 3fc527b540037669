//! payflow-config: the TOML configuration: parsing, `${VAR}` expansion from the environment, and validation
//! with errors that name the key and the problem. Nothing here opens sockets or files other
//! than the config file itself; the result is a checked [`Config`] the gateway is built from.
//! It must never depend on the crates it configures: each takes the section it needs.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use payflow_verify::{Encoding, HmacScheme, PayFlowForm, Scheme, Signer, Verifier, VerifierConfig};
use serde::Deserialize;

/// The merchant that owns everything not explicitly assigned.
pub const DEFAULT_MERCHANT: &str = "default";

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read. (Its error is part of the message, not a `source`: printed
    /// with its causes, it would be said twice.)
    #[error("cannot read {}: {error}{}", path.display(), missing_file_hint(error))]
    Read {
        /// The path given.
        path: PathBuf,
        /// The operating system's error (not found, permission denied…).
        error: std::io::Error,
    },
    /// What is wrong in a file, named.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem in it.
        error: Box<ConfigError>,
    },
    /// TOML syntax or shape (unknown key, wrong type), with toml's line and column.
    #[error("{0}")]
    Toml(toml::de::Error),
    /// A key whose value is wrong.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key, e.g. `endpoint[0].upstream`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// For a config file that is not there: where to start one.
fn missing_file_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::NotFound {
        " (start from the example: copy payflow-edge.example.toml from the repository to this \
         path and edit it; `payflow-edge demo` runs without one)"
    } else {
        ""
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ingress listener and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The durable store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin listener (absent: no admin API).
    pub admin: Option<AdminConfig>,
    /// Merchants (tenants); without any, everything belongs to `default`.
    #[serde(default)]
    pub merchant: Vec<MerchantConfig>,
    /// Webhook endpoints.
    #[serde(default)]
    pub endpoint: Vec<EndpointConfig>,
    /// Upstreams events are delivered to.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// Plugins endpoints run, by name.
    #[serde(default)]
    pub plugin: Vec<PluginConfig>,
    /// How plugins are run.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Traces of each event's way (OpenTelemetry, over OTLP/HTTP).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector (`http://host:4318`, or its full `/v1/traces` URL); without it
    /// no span is recorded.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, service_name: "payflow-edge".into() }
    }
}

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
const MIN_MAX_HEADER_BYTES: usize = 8 << 10;
/// Past this, a connection's header block costs more memory than any real sender needs.
const MAX_MAX_HEADER_BYTES: usize = 1 << 20;

/// Past this a commit delay holds every acknowledgement for longer than the commits it saves
/// are worth: at 1 ms the writes a steady stream brings already share a commit.
const MAX_COMMIT_DELAY_US: u64 = 10_000;

/// `[store] wal_prefill_mb` by default: the SQLite store's WAL working size (it starts over
/// past 32,768 frames of 4 KiB pages).
const DEFAULT_WAL_PREFILL_MB: u64 = 128;

/// Largest `[store] wal_prefill_mb` taken: more is a typo, not a plan.
const MAX_WAL_PREFILL_MB: u64 = 4_096;

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (the embedded store, one gateway on one machine).
    pub path: String,
    /// A PostgreSQL database (`postgres://user:pass@host:port/db` or `postgresql://…`) shared
    /// by several gateway replicas; when set, `path` is not used.
    pub url: Option<String>,
    /// PostgreSQL: how long a replica's claim on a due delivery or plugin step lasts before
    /// another replica may take it over (after a crash). Longer than any upstream's
    /// `timeout_ms` and any plugin's, or a slow delivery is made twice.
    pub lease_ms: u64,
    /// PostgreSQL: connections per replica.
    pub pool_size: usize,
    /// How long a write waits for a lock held by another process before answering 503.
    pub busy_timeout_ms: u64,
    /// Largest number of writes shared by one commit (one fsync).
    pub max_batch: usize,
    /// SQLite: how long, in microseconds, a write that finds the writer idle shortly after a
    /// commit waits for others to share its commit. Under steady traffic it trades that much
    /// acknowledgement latency for less CPU per event (a quarter less at 2,000 events/s); a
    /// write after a quiet spell, from a lone client or in a burst goes at once. 0 turns it off.
    pub commit_delay_us: u64,
    /// Optional cap on the database size; writes past it fail (503) instead of filling the disk.
    pub max_size_mb: Option<u64>,
    /// SQLite: how much of the write-ahead log, in MiB, is written (with zeros) at start-up,
    /// before the first event. A WAL that grows into new blocks costs every commit their
    /// allocation and a journal flush; one written ahead is overwritten in place. The default
    /// is the size the WAL reaches under sustained load anyway, so a freshly started gateway
    /// takes a burst (a sender's retries after a restart) as cheaply as one that has run for a
    /// while. It takes that much disk from the start, and start-up time (0.1 s for 128 MiB on
    /// the machine the benchmarks ran on); 0 turns it off.
    pub wal_prefill_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "payflow-edge.db".into(),
            url: None,
            lease_ms: 60_000,
            pool_size: 16,
            busy_timeout_ms: 2_000,
            max_batch: 512,
            commit_delay_us: 1_000,
            max_size_mb: None,
            wal_prefill_mb: DEFAULT_WAL_PREFILL_MB,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The operator's bearer token (sees every merchant).
    pub token: String,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `[[merchant]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantConfig {
    /// Merchant id.
    pub id: String,
    /// Admin token scoped to this merchant.
    pub token: Option<String>,
}

/// How an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Acknowledge after the durable write; deliver from the queue with retries.
    #[default]
    Queue,
    /// Forward synchronously and answer with the upstream's reply.
    Proxy,
}

/// One of an endpoint's secrets: a string, or a table that also says when it stops being
/// accepted, for a rotation with a known end.
#[derive(Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a secret: a string, or a table { secret = \"…\", not_after = \"2026-12-31T23:59:59Z\" }"
)]
pub enum SecretEntry {
    /// Accepted until it is removed from the configuration.
    Plain(String),
    /// Accepted through `not_after` (RFC 3339, inclusive to the second), refused after it.
    Dated {
        /// The secret.
        secret: String,
        /// The last moment it is accepted, as written (see [`SecretEntry::not_after`]).
        not_after: String,
    },
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself.
        match self {
            SecretEntry::Plain(_) => f.write_str("SecretEntry(…)"),
            SecretEntry::Dated { not_after, .. } => write!(f, "SecretEntry(…, not_after {not_after})"),
        }
    }
}

impl SecretEntry {
    /// The secret.
    pub fn value(&self) -> &str {
        match self {
            SecretEntry::Plain(secret) | SecretEntry::Dated { secret, .. } => secret,
        }
    }

    fn value_mut(&mut self) -> &mut String {
        match self {
            SecretEntry::Plain(secret) | SecretEntry::Dated { secret, .. } => secret,
        }
    }

    /// The last unix second it is accepted at; `None` when it has no end (or, before
    /// validation, when `not_after` is not a time).
    pub fn not_after(&self) -> Option<i64> {
        match self {
            SecretEntry::Plain(_) => None,
            SecretEntry::Dated { not_after, .. } => payflow_verify::event::rfc3339_to_unix(not_after),
        }
    }
}

impl From<&str> for SecretEntry {
    fn from(secret: &str) -> Self {
        SecretEntry::Plain(secret.to_string())
    }
}

/// `[[endpoint]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Owning merchant.
    #[serde(default = "default_merchant")]
    pub merchant: String,
    /// URL path, e.g. `/webhooks/payflow`.
    pub path: String,
    /// Signature scheme name.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Secrets; any one matching passes. Each may end at a known time (`not_after`).
    pub secrets: Vec<SecretEntry>,
    /// Timestamp tolerance, both ways.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// payflow: refuse v0.
    #[serde(default)]
    pub require_timestamp: bool,
    /// payflow: also accept PayFlow's documented algorithm, an HMAC over
    /// `JSON.stringify(JSON.parse(body))` (for senders that re-serialise their JSON).
    #[serde(default)]
    pub json_compat: bool,
    /// Queue or proxy.
    #[serde(default)]
    pub mode: Mode,
    /// Plugin names, in order (issue 4).
    #[serde(default)]
    pub plugins: Vec<String>,
    /// The default route: the upstream that gets the events no `[[endpoint.route]]` takes (all
    /// of them when the endpoint has no routes).
    pub upstream: Option<String>,
    /// More upstreams, each for the events its filters match (`[[endpoint.route]]`), decided
    /// after the plugins, on what they gave back.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// hmac scheme: header name.
    pub hmac_header: Option<String>,
    /// hmac scheme: prefix before the signature.
    pub hmac_prefix: Option<String>,
    /// hmac scheme: `hex` or `base64`.
    pub hmac_encoding: Option<String>,
    /// Where this endpoint's event ids are de-duplicated: by default its own path, so ids
    /// from different senders never collide. Endpoints that receive the same stream (a move
    /// to a new path, two paths behind one sender) name one shared scope: a name, or the path
    /// of the endpoint whose scope they join.
    pub dedup_scope: Option<String>,
}

impl EndpointConfig {
    /// The de-duplication scope of this endpoint's events, within its merchant.
    pub fn scope(&self) -> &str {
        self.dedup_scope.as_deref().unwrap_or(&self.path)
    }
}

/// `[[endpoint.route]]`: an upstream that gets the endpoint's events its filters match. Every
/// filter given must match; a route without filters takes every event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The upstream, of the endpoint's merchant.
    pub upstream: String,
    /// Globs over the event's `type` (`*` matches any run of characters); any one matching.
    #[serde(default)]
    pub types: Vec<String>,
    /// Tags the plugins put on the event; all of them present.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Dotted JSON paths into the delivered body and the value each must have (a list: any
    /// one of them).
    #[serde(default, rename = "where")]
    pub fields: BTreeMap<String, FieldValue>,
}

/// A value a route's `where` compares a body field with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// A string.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// Any one of these.
    AnyOf(Vec<FieldValue>),
}

/// A dotted JSON path (`data.customer.email`) as a route or an ordering key names it: its
/// segments, each an object's key (or, all digits, an array's index). `None` when one is
/// empty.
pub fn json_path(path: &str) -> Option<Vec<String>> {
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    (!path.is_empty() && segments.iter().all(|s| !s.is_empty())).then_some(segments)
}

/// An upstream's `rate`: at most `per_second` deliveries started per second, in bursts of at
/// most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Deliveries per second, on average.
    pub per_second: f64,
    /// The bucket's size: one second's worth, at least one.
    pub burst: u32,
}

impl Rate {
    /// Parses `"50/s"`, `"600/m"` or `"1000/h"`.
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|&n| n > 0)?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return None,
        };
        let per_second = f64::from(count) / seconds;
        Some(Rate { per_second, burst: (per_second.ceil() as u32).max(1) })
    }
}

/// An upstream's circuit breaker: after `failures` failed attempts in a row, no attempt for
/// `cool_down_ms`, then one probe: its success closes the breaker, its failure opens it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed attempts in a row (retryable failures: 408, 429, 5xx, no answer) that open it.
    pub failures: u32,
    /// How long it stays open before the probe.
    #[serde(default = "default_cool_down")]
    pub cool_down_ms: u64,
}

fn default_cool_down() -> u64 {
    30_000
}

fn default_merchant() -> String {
    DEFAULT_MERCHANT.into()
}
fn default_scheme() -> String {
    "payflow".into()
}
fn default_tolerance() -> u64 {
    payflow_verify::DEFAULT_TOLERANCE_SECS
}

/// `[[upstream]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name endpoints refer to.
    pub name: String,
    /// Owning merchant.
    #[serde(default = "default_merchant")]
    pub merchant: String,
    /// `http://host:port/path`.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Attempts before a delivery is `dead`.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Requests in flight to this upstream at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// First retry delay; doubles each attempt (with jitter).
    #[serde(default = "default_retry_base")]
    pub retry_base_ms: u64,
    /// Longest delay between attempts.
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Re-sign each delivery with this secret, in the form `sign_scheme` names.
    pub sign_secret: Option<String>,
    /// How deliveries are signed with `sign_secret`: `payflow-v0` when not given (what PayFlow
    /// itself sends, so an app that checks signatures as PayFlow's page says accepts them).
    pub sign_scheme: Option<SignScheme>,
    /// Deliver in order per key: a dotted JSON path into the delivered body (`data.id`).
    /// Events with the same key go one at a time, in the order they were received; different
    /// keys in parallel. Events without the field are not ordered.
    pub ordering_key: Option<String>,
    /// Start at most this many deliveries: `"50/s"`, `"600/m"`, `"1000/h"` (a token bucket
    /// holding one second's worth). Checked as text so the error can show the form.
    pub rate: Option<String>,
    /// Stop sending for a cool-down after this many failures in a row.
    pub breaker: Option<BreakerConfig>,
}

/// The form an upstream's deliveries are signed in (`sign_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignScheme {
    /// `X-PayFlow-Signature: <hex>`: hex HMAC-SHA256 of the delivered body, exactly what PayFlow
    /// sends and what its page tells apps to check.
    PayflowV0,
    /// `X-PayFlow-Signature: t=<unix>,v1=<hex>` over `"{t}.{body}"`: timestamped, so a replay
    /// of an old delivery can be refused.
    Payflow,
    /// Standard Webhooks (`webhook-id` = the event id, `webhook-timestamp`,
    /// `webhook-signature`); the secret is a `whsec_…` key.
    StandardWebhooks,
    /// Deliveries are not signed.
    None,
}

impl SignScheme {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            SignScheme::PayflowV0 => "payflow-v0",
            SignScheme::Payflow => "payflow",
            SignScheme::StandardWebhooks => "standard-webhooks",
            SignScheme::None => "none",
        }
    }
}

impl UpstreamConfig {
    /// `rate`, parsed (the configuration check refuses one that does not parse).
    pub fn rate(&self) -> Option<Rate> {
        self.rate.as_deref().and_then(Rate::parse)
    }

    /// `ordering_key`, as path segments.
    pub fn ordering_path(&self) -> Option<Vec<String>> {
        self.ordering_key.as_deref().and_then(json_path)
    }

    /// What signs deliveries to this upstream, and in which PayFlow form; `None` when they are
    /// not signed. Fails when the secret cannot sign in that scheme (a Standard Webhooks key
    /// that is not `whsec_` and base64).
    pub fn signer(&self) -> Result<Option<(Signer, PayFlowForm)>, payflow_verify::ConfigError> {
        let Some(secret) = &self.sign_secret else { return Ok(None) };
        let (scheme, form) = match self.sign_scheme.unwrap_or(SignScheme::PayflowV0) {
            SignScheme::PayflowV0 => (Scheme::PayFlow, PayFlowForm::V0),
            SignScheme::Payflow => (Scheme::PayFlow, PayFlowForm::V1),
            SignScheme::StandardWebhooks => (Scheme::StandardWebhooks, PayFlowForm::V1),
            SignScheme::None => return Ok(None),
        };
        Ok(Some((Signer::new(scheme, &[secret])?, form)))
    }
}

/// `[[plugin]]`: a plugin and its sandbox limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name endpoints and the admin API refer to.
    pub name: String,
    /// Owning merchant.
    #[serde(default = "default_merchant")]
    pub merchant: String,
    /// The `.wasm` component to load at start. Without it the plugin is uploaded through the
    /// admin API; until then its endpoints' events are acknowledged and wait for it (queued,
    /// no attempt used up), `serve` warns at start-up and `/readyz` says why.
    pub path: Option<PathBuf>,
    /// Fuel per run (roughly, wasm instructions).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline per run.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u64,
    /// Linear memory cap.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The outcome's bodies, headers and tags together.
    #[serde(default = "default_output_bytes")]
    pub output_bytes: usize,
    /// Log kept per run.
    #[serde(default = "default_log_bytes")]
    pub log_bytes: usize,
    /// The plugin's key-value space, keys and values together.
    #[serde(default = "default_kv_bytes")]
    pub kv_bytes: usize,
    /// Keep one instance alive between events (for JS and Python, whose start-up is costly).
    #[serde(default)]
    pub warm: bool,
    /// What the plugin reads with `config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_fuel() -> u64 {
    100_000_000
}
fn default_plugin_timeout() -> u64 {
    1_000
}
fn default_memory_mb() -> u64 {
    32
}
fn default_output_bytes() -> usize {
    1 << 20
}
fn default_log_bytes() -> usize {
    16 << 10
}
fn default_kv_bytes() -> usize {
    1 << 20
}

/// `[plugins]`: how the plugin step runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Threads running plugins (0: one per CPU). Plugins never run on the ingress threads.
    pub workers: usize,
    /// Plugin steps in flight at once. A step spends most of its time waiting (for a plugin
    /// thread, then for its group commit), not running: this many keep the plugin threads busy
    /// and each commit's batch large while earlier steps are committed. An in-flight step costs
    /// a task and its event in memory; the scheduler shares the threads fairly however many
    /// wait. With 64, PostgreSQL recorded the steps in short batches, one after another, and
    /// delivered a burst through a plugin at ~0.4 of its acknowledgement rate; with 512, at
    /// 0.95 of it, for 0.7 the gateway's and database's CPU per event (bench/RESULTS.md,
    /// twenty-eighth look).
    pub concurrency: usize,
    /// Attempts of an event's plugin step before the event is `dead`.
    pub max_attempts: u32,
    /// First retry delay of a failed plugin step; doubles each attempt (with jitter).
    pub retry_base_ms: u64,
    /// Longest delay between attempts.
    pub retry_max_ms: u64,
    /// Largest component accepted by `PUT /api/plugins/{name}`.
    pub max_upload_bytes: usize,
    /// Versions kept per plugin; the oldest beyond are deleted (never the active one nor the
    /// one before it, which rollback returns to).
    pub max_versions: u32,
    /// What all of one merchant's plugin versions (components and compiled code) may take in
    /// the store; an upload beyond is refused.
    pub merchant_storage_mb: u64,
    /// Runs of a canary (and of the active version beside it) its failure rate is taken over.
    /// Fewer would roll back on one unlucky event; more would wait longer on a broken one.
    pub canary_window: usize,
    /// How many percentage points the canary's failure rate may exceed the active version's
    /// over the window before it is rolled back by itself.
    pub canary_margin_percent: u32,
    /// The longest a dry run (`POST /api/plugins/{name}/try`) may take before it answers
    /// `503 dry_run_timed_out`. Its runs take only CPU nothing else wants, so on a machine kept
    /// busy (by live traffic or by other processes) it would otherwise wait without end, and
    /// its client with it.
    pub dry_run_timeout_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            workers: 0,
            concurrency: 512,
            max_attempts: 3,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_upload_bytes: 32 << 20,
            max_versions: 5,
            merchant_storage_mb: 1024,
            canary_window: 20,
            canary_margin_percent: 20,
            // About four times what a 1,000-event dry run takes beside sustained live traffic
            // (see the plugin scheduler), so only a machine with no CPU to spare reaches it.
            dry_run_timeout_ms: 120_000,
        }
    }
}

fn default_timeout() -> u64 {
    5_000
}
fn default_attempts() -> u32 {
    8
}
fn default_concurrency() -> usize {
    16
}
fn default_retry_base() -> u64 {
    1_000
}
fn default_retry_max() -> u64 {
    3_600_000
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Config::parse(&text, |name| std::env::var(name).ok())
            .map_err(|error| ConfigError::InFile { path: path.to_path_buf(), error: Box::new(error) })
    }

    /// Parses TOML text, expanding `${VAR}` with `env`, and validates the result.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let config = Config::parse_unchecked(text, env)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::parse`] without the validation: what `config check` lists [`Config::problems`]
    /// of. Fails only on TOML and on `${VAR}` expansion.
    pub fn parse_unchecked(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(ConfigError::Toml)?;
        config.expand(&env)?;
        Ok(config)
    }

    fn expand(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let x = |key: String, value: &mut String| expand_vars(&key, value, env);
        x("server.listen".into(), &mut self.server.listen)?;
        x("store.path".into(), &mut self.store.path)?;
        if let Some(url) = &mut self.store.url {
            x("store.url".into(), url)?;
        }
        if let Some(admin) = &mut self.admin {
            x("admin.listen".into(), &mut admin.listen)?;
            x("admin.token".into(), &mut admin.token)?;
        }
        for (i, m) in self.merchant.iter_mut().enumerate() {
            if let Some(token) = &mut m.token {
                x(format!("merchant[{i}].token"), token)?;
            }
        }
        for (i, e) in self.endpoint.iter_mut().enumerate() {
            x(format!("endpoint[{i}].path"), &mut e.path)?;
            for (j, s) in e.secrets.iter_mut().enumerate() {
                x(format!("endpoint[{i}].secrets[{j}]"), s.value_mut())?;
            }
        }
        for (i, p) in self.plugin.iter_mut().enumerate() {
            for (k, v) in p.config.iter_mut() {
                x(format!("plugin[{i}].config.{k}"), v)?;
            }
        }
        for (i, u) in self.upstream.iter_mut().enumerate() {
            x(format!("upstream[{i}].url"), &mut u.url)?;
            if let Some(s) = &mut u.sign_secret {
                x(format!("upstream[{i}].sign_secret"), s)?;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem of an expanded configuration, for `config check`: each section, each
    /// merchant, upstream and endpoint is checked on its own, and reports its first problem
    /// (a later check of one entry may depend on an earlier one). Empty when it is valid.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems: Vec<ConfigError> =
            [self.check_server(), self.check_store(), self.check_admin(), self.check_telemetry()]
                .into_iter()
                .filter_map(Result::err)
                .collect();
        let mut merchants = BTreeSet::from([DEFAULT_MERCHANT.to_string()]);
        for (i, m) in self.merchant.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                if m.id.is_empty() || !m.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(invalid(format!("merchant[{i}].id"), "must be letters, digits, '-' or '_'"));
                }
                if m.id != DEFAULT_MERCHANT && !merchants.insert(m.id.clone()) {
                    return Err(invalid(
                        format!("merchant[{i}].id"),
                        format!("{:?} is declared twice", m.id),
                    ));
                }
                if let Some(token) = &m.token {
                    if token.trim().len() < 16 {
                        return Err(invalid(
                            format!("merchant[{i}].token"),
                            "must be at least 16 characters",
                        ));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }

        let mut upstreams = BTreeMap::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                let key = |k: &str| format!("upstream[{i}].{k}");
                // `@` stays reserved: databases from before plugin steps had a table of their own
                // held them as deliveries to `@plugins` (migrated at start-up), and names the
                // gateway may need for itself must never be a merchant's.
                if u.name.is_empty() || u.name.starts_with('@') {
                    return Err(invalid(key("name"), "must not be empty or start with '@'"));
                }
                if upstreams.insert(u.name.clone(), u).is_some() {
                    return Err(invalid(key("name"), format!("{:?} is declared twice", u.name)));
                }
                if !merchants.contains(&u.merchant) {
                    return Err(invalid(key("merchant"), format!("unknown merchant {:?}", u.merchant)));
                }
                let uri: http::Uri = u
                    .url
                    .parse()
                    .map_err(|e| invalid(key("url"), format!("{:?} is not a URL: {e}", u.url)))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(invalid(
                        key("url"),
                        format!(
                            "{:?} must be an http:// URL with a host (https upstreams are not supported yet)",
                            u.url
                        ),
                    ));
                }
                if u.max_attempts == 0 {
                    return Err(invalid(key("max_attempts"), "must be at least 1"));
                }
                if u.concurrency == 0 {
                    return Err(invalid(key("concurrency"), "must be at least 1"));
                }
                if u.timeout_ms == 0 {
                    return Err(invalid(key("timeout_ms"), "must be at least 1"));
                }
                if matches!(&u.sign_secret, Some(s) if s.is_empty()) {
                    return Err(invalid(key("sign_secret"), "must not be empty"));
                }
                match (u.sign_scheme, &u.sign_secret) {
                (Some(SignScheme::None), Some(_)) => {
                    return Err(invalid(
                        key("sign_scheme"),
                        "\"none\" with a sign_secret: remove sign_secret, or choose payflow-v0, payflow or standard-webhooks",
                    ))
                }
                (Some(scheme), None) if scheme != SignScheme::None => {
                    return Err(invalid(
                        key("sign_secret"),
                        format!("sign_scheme = \"{}\" needs a sign_secret to sign with", scheme.as_str()),
                    ))
                }
                _ => {}
            }
                if let Err(e) = u.signer() {
                    return Err(invalid(key("sign_secret"), e.to_string()));
                }
                if let Some(rate) = &u.rate {
                    if Rate::parse(rate).is_none() {
                        return Err(invalid(
                            key("rate"),
                            format!(
                                "{rate:?} is not a rate: write a whole number per s, m or h, e.g. \"50/s\""
                            ),
                        ));
                    }
                }
                if let Some(path) = &u.ordering_key {
                    if json_path(path).is_none() {
                        return Err(invalid(
                            key("ordering_key"),
                            format!("{path:?} is not a dotted JSON path, e.g. \"data.id\""),
                        ));
                    }
                }
                if let Some(breaker) = &u.breaker {
                    if breaker.failures == 0 {
                        return Err(invalid(key("breaker.failures"), "must be at least 1"));
                    }
                    if breaker.cool_down_ms == 0 {
                        return Err(invalid(key("breaker.cool_down_ms"), "must be at least 1"));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }

        // Without the plugins' table the endpoints' plugin lists are not checked: each would
        // only repeat that the table is wrong.
        let plugins = match self.validate_plugins(&merchants) {
            Ok(plugins) => Some(plugins),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        let mut paths = BTreeSet::new();
        for (i, e) in self.endpoint.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                let key = |k: &str| format!("endpoint[{i}].{k}");
                if !e.path.starts_with('/') || e.path.starts_with("/api/") {
                    return Err(invalid(
                        key("path"),
                        format!("{:?} must start with '/' (and not /api/)", e.path),
                    ));
                }
                if !paths.insert(e.path.clone()) {
                    return Err(invalid(key("path"), format!("{:?} is used by two endpoints", e.path)));
                }
                if !merchants.contains(&e.merchant) {
                    return Err(invalid(key("merchant"), format!("unknown merchant {:?}", e.merchant)));
                }
                if e.secrets.is_empty() || e.secrets.iter().any(|s| s.value().is_empty()) {
                    return Err(invalid(key("secrets"), "needs at least one non-empty secret"));
                }
                for (j, secret) in e.secrets.iter().enumerate() {
                    if let SecretEntry::Dated { not_after, .. } = secret {
                        if secret.not_after().is_none() {
                            return Err(invalid(
                                key(&format!("secrets[{j}].not_after")),
                                format!(
                                    "{not_after:?} is not an RFC 3339 time, e.g. \"2026-12-31T23:59:59Z\""
                                ),
                            ));
                        }
                    }
                }
                e.verifier().map_err(|problem| invalid(key("scheme"), problem.to_string()))?;
                let owned = |at: String, name: &str| match upstreams.get(name) {
                    None => Err(invalid(at, format!("unknown upstream {name:?}"))),
                    Some(u) if u.merchant != e.merchant => Err(invalid(
                        at,
                        format!(
                            "upstream {name:?} belongs to merchant {:?}, not {:?}",
                            u.merchant, e.merchant
                        ),
                    )),
                    Some(_) => Ok(()),
                };
                match (&e.upstream, e.mode) {
                    (None, Mode::Proxy) => return Err(invalid(key("upstream"), "is required in proxy mode")),
                    (Some(name), _) => owned(key("upstream"), name)?,
                    (None, Mode::Queue) => {}
                }
                if e.mode == Mode::Proxy && !e.routes.is_empty() {
                    return Err(invalid(
                        key("route"),
                        "routes need mode = \"queue\": a proxy answers with its one upstream's reply \
                         (move the routes to a queue-mode endpoint, or use a plugin's forwards)",
                    ));
                }
                let mut ordered = self.ordered_upstreams(e);
                if let Some((first, path)) = ordered.next() {
                    if let Some((other, other_path)) = ordered.find(|(_, p)| p != &path) {
                        return Err(invalid(
                            key("upstream"),
                            format!(
                                "its events may reach upstreams {first:?} (ordering_key = {path:?}) and {other:?} \
                                 (ordering_key = {other_path:?}): an endpoint's events have one ordering key, so \
                                 give those upstreams the same one"
                            ),
                        ));
                    }
                }
                for (j, route) in e.routes.iter().enumerate() {
                    let at = |k: &str| format!("endpoint[{i}].route[{j}].{k}");
                    owned(at("upstream"), &route.upstream)?;
                    if let Some(t) = route.types.iter().find(|t| t.is_empty()) {
                        return Err(invalid(at("types"), format!("{t:?}: a type glob must not be empty")));
                    }
                    for (path, value) in &route.fields {
                        if json_path(path).is_none() {
                            return Err(invalid(
                                at("where"),
                                format!("{path:?} is not a dotted JSON path, e.g. \"data.currency\""),
                            ));
                        }
                        if let FieldValue::AnyOf(values) = value {
                            if values.is_empty() || values.iter().any(|v| matches!(v, FieldValue::AnyOf(_))) {
                                return Err(invalid(
                                    at("where"),
                                    format!("{path:?}: a list must hold one or more plain values"),
                                ));
                            }
                        }
                    }
                }
                let Some(plugins) = &plugins else { return Ok(()) };
                for (j, name) in e.plugins.iter().enumerate() {
                    match plugins.get(name) {
                        None => {
                            return Err(invalid(
                                format!("endpoint[{i}].plugins[{j}]"),
                                format!("unknown plugin {name:?} (declare it with [[plugin]])"),
                            ))
                        }
                        Some(p) if p.merchant != e.merchant => {
                            return Err(invalid(
                                format!("endpoint[{i}].plugins[{j}]"),
                                format!(
                                    "plugin {name:?} belongs to merchant {:?}, not {:?}",
                                    p.merchant, e.merchant
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                    if e.plugins[..j].contains(name) {
                        return Err(invalid(
                            format!("endpoint[{i}].plugins[{j}]"),
                            format!("{name:?} is listed twice"),
                        ));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }
        if self.endpoint.is_empty() {
            problems.push(invalid("endpoint", "at least one [[endpoint]] is needed"));
        }
        problems.extend(self.validate_scopes().err());
        problems
    }

    /// The ordered upstreams an endpoint's events may reach, with their `ordering_key`: its
    /// default upstream and its routes', and, when it has plugins (whose forwards may name
    /// any of the merchant's upstreams), every ordered upstream of its merchant.
    fn ordered_upstreams<'a>(
        &'a self,
        e: &'a EndpointConfig,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let routed: Vec<&str> = e
            .upstream
            .iter()
            .map(String::as_str)
            .chain(e.routes.iter().map(|r| r.upstream.as_str()))
            .collect();
        self.upstream
            .iter()
            .filter(move |u| {
                u.merchant == e.merchant && (routed.contains(&u.name.as_str()) || !e.plugins.is_empty())
            })
            .filter_map(|u| Some((u.name.as_str(), u.ordering_key.as_deref()?)))
    }

    /// The path of an endpoint's events' ordering key (see [`UpstreamConfig::ordering_key`]):
    /// read from the event as received, once, for every ordered upstream it may reach (which
    /// the configuration check requires to agree). `None` when it reaches none.
    pub fn ordering_path(&self, e: &EndpointConfig) -> Option<Vec<String>> {
        self.ordered_upstreams(e).next().and_then(|(_, path)| json_path(path))
    }

    /// `[server]`.
    fn check_server(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.max_connections_per_client == 0 {
            return Err(invalid("server.max_connections_per_client", "must be at least 1"));
        }
        if !(MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&self.server.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                format!("must be from {MIN_MAX_HEADER_BYTES} to {MAX_MAX_HEADER_BYTES} (default {DEFAULT_MAX_HEADER_BYTES})"),
            ));
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => return Err(invalid("server.tls_key", "is required with server.tls_cert")),
            (None, Some(_)) => return Err(invalid("server.tls_cert", "is required with server.tls_key")),
            _ => {}
        }
        Ok(())
    }

    /// `[store]`.
    fn check_store(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "store.url",
                    "must be a PostgreSQL URL (postgres://user:pass@host:port/db); for SQLite set store.path",
                ));
            }
            let slowest = self.upstream.iter().map(|u| u.timeout_ms).max().unwrap_or(0);
            if self.store.lease_ms <= slowest {
                return Err(invalid(
                    "store.lease_ms",
                    format!("must be longer than the slowest upstream's timeout_ms ({slowest})"),
                ));
            }
            if self.store.pool_size < 2 {
                return Err(invalid("store.pool_size", "must be at least 2"));
            }
        }
        if self.store.max_batch == 0 {
            return Err(invalid("store.max_batch", "must be at least 1"));
        }
        if self.store.commit_delay_us > MAX_COMMIT_DELAY_US {
            return Err(invalid(
                "store.commit_delay_us",
                format!("must be at most {MAX_COMMIT_DELAY_US} (10 ms); 1000 is the default, 0 turns it off"),
            ));
        }
        if self.store.wal_prefill_mb > MAX_WAL_PREFILL_MB {
            return Err(invalid(
                "store.wal_prefill_mb",
                format!(
                    "must be at most {MAX_WAL_PREFILL_MB} (MiB); {DEFAULT_WAL_PREFILL_MB} is the default, 0 turns it off"
                ),
            ));
        }
        Ok(())
    }

    /// `[telemetry]`.
    fn check_telemetry(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.telemetry.otlp_endpoint {
            let uri: Option<http::Uri> = url.parse().ok();
            if !uri.is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some()) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    format!(
                        "{url:?} must be the http:// URL of an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\" \
                         (https collectors are not supported yet: run one on loopback or a private network)"
                    ),
                ));
            }
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        Ok(())
    }

    /// `[admin]`.
    fn check_admin(&self) -> Result<(), ConfigError> {
        if let Some(admin) = &self.admin {
            parse_addr("admin.listen", &admin.listen)?;
            if admin.token.trim().len() < 16 {
                return Err(invalid(
                    "admin.token",
                    "must be at least 16 characters (it guards the admin API)",
                ));
            }
        }
        Ok(())
    }

    /// A shared scope must be one the reader can see is shared on purpose: a plain name, or
    /// the path of an endpoint of the same merchant that keeps its own scope; and endpoints
    /// sharing one answer duplicates the same way (one mode).
    fn validate_scopes(&self) -> Result<(), ConfigError> {
        let mut modes: BTreeMap<(&str, &str), Mode> = BTreeMap::new();
        for e in &self.endpoint {
            modes.entry((&e.merchant, e.scope())).or_insert(e.mode);
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            let key = format!("endpoint[{i}].dedup_scope");
            let Some(scope) = &e.dedup_scope else { continue };
            if scope.starts_with('/') {
                let joined = self.endpoint.iter().find(|o| o.path == *scope);
                match joined {
                    Some(o) if o.merchant != e.merchant => {
                        return Err(invalid(
                            key,
                            format!("{scope:?} is an endpoint of merchant {:?}, not {:?}", o.merchant, e.merchant),
                        ))
                    }
                    Some(o) if o.dedup_scope.is_some() && o.path != e.path => {
                        return Err(invalid(
                            key,
                            format!(
                                "endpoint {scope:?} de-duplicates in scope {:?}: name that scope instead",
                                o.scope()
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        return Err(invalid(
                            key,
                            format!("{scope:?} is no endpoint's path; a shared scope is a name without '/' or an endpoint's path"),
                        ))
                    }
                }
            } else if scope.is_empty()
                || scope.len() > 64
                || !scope.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    key,
                    "must be up to 64 letters, digits, '-', '_' or '.', or an endpoint's path",
                ));
            }
            if modes[&(e.merchant.as_str(), e.scope())] != e.mode {
                return Err(invalid(
                    key,
                    format!("endpoints sharing scope {:?} must use one mode (queue or proxy)", e.scope()),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(
        &self,
        merchants: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, &PluginConfig>, ConfigError> {
        let p = &self.plugins;
        if p.max_attempts == 0 {
            return Err(invalid("plugins.max_attempts", "must be at least 1"));
        }
        if p.max_versions < 2 {
            return Err(invalid(
                "plugins.max_versions",
                "must be at least 2 (the active version and the one before it)",
            ));
        }
        if !(1..=10_000).contains(&p.canary_window) {
            return Err(invalid("plugins.canary_window", "must be 1 to 10000 runs"));
        }
        if p.canary_margin_percent > 100 {
            return Err(invalid("plugins.canary_margin_percent", "must be 0 to 100 (percentage points)"));
        }
        if !(1_000..=3_600_000).contains(&p.dry_run_timeout_ms) {
            return Err(invalid("plugins.dry_run_timeout_ms", "must be 1000 to 3600000 (1 s to 1 h)"));
        }
        if p.merchant_storage_mb == 0 {
            return Err(invalid("plugins.merchant_storage_mb", "must be at least 1"));
        }
        if p.concurrency == 0 {
            return Err(invalid("plugins.concurrency", "must be at least 1"));
        }
        if p.max_upload_bytes < 1024 {
            return Err(invalid("plugins.max_upload_bytes", "must be at least 1024"));
        }
        let mut plugins = BTreeMap::new();
        for (i, p) in self.plugin.iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            if !valid_plugin_name(&p.name) {
                return Err(invalid(key("name"), "must be 1 to 64 letters, digits, '-' or '_'"));
            }
            if plugins.insert(p.name.clone(), p).is_some() {
                return Err(invalid(key("name"), format!("{:?} is declared twice", p.name)));
            }
            if !merchants.contains(&p.merchant) {
                return Err(invalid(key("merchant"), format!("unknown merchant {:?}", p.merchant)));
            }
            // Bounds that keep one plugin from taking the gateway with it: a deadline of a
            // minute or memory of 4 GiB is a misconfiguration, not a plugin.
            let ranges: [(&str, u64, u64, u64); 6] = [
                ("fuel", p.fuel, 1_000, 100_000_000_000),
                ("timeout_ms", p.timeout_ms, 1, 60_000),
                ("memory_mb", p.memory_mb, 1, 256),
                ("output_bytes", p.output_bytes as u64, 1, 64 << 20),
                ("log_bytes", p.log_bytes as u64, 0, 16 << 20),
                ("kv_bytes", p.kv_bytes as u64, 0, 256 << 20),
            ];
            for (name, value, min, max) in ranges {
                if !(min..=max).contains(&value) {
                    return Err(invalid(key(name), format!("must be between {min} and {max}")));
                }
            }
        }
        Ok(plugins)
    }

    /// The merchant an admin token belongs to: `Some(None)` for the operator, `Some(Some(id))`
    /// for a merchant, `None` for no match. Compared in constant time.
    pub fn token_scope(&self, token: &str) -> Option<Option<String>> {
        use subtle::ConstantTimeEq;
        let matches = |t: &str| bool::from(t.as_bytes().ct_eq(token.as_bytes()));
        let mut scope = None;
        if self.admin.as_ref().is_some_and(|a| matches(&a.token)) {
            scope = Some(None);
        }
        for m in &self.merchant {
            if m.token.as_deref().is_some_and(matches) {
                scope = Some(Some(m.id.clone()));
            }
        }
        scope
    }
}

/// Why an endpoint's scheme settings cannot verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// `scheme` names no scheme.
    #[error(transparent)]
    UnknownScheme(#[from] payflow_verify::UnknownScheme),
    /// `hmac_encoding` names no encoding.
    #[error(transparent)]
    UnknownEncoding(#[from] payflow_verify::UnknownEncoding),
    /// `hmac_*` keys on another scheme.
    #[error("hmac_header/hmac_prefix/hmac_encoding apply only to scheme = \"hmac\"")]
    HmacKeysOnOtherScheme,
    /// The verifier refused the combination (secrets, json_compat, require_timestamp…).
    #[error(transparent)]
    Verifier(#[from] payflow_verify::ConfigError),
}

impl EndpointConfig {
    /// The endpoint's verifier, or why it cannot be built.
    pub fn verifier(&self) -> Result<Verifier, SchemeError> {
        let mut config =
            VerifierConfig::new(self.signature_scheme()?, self.secrets.iter().map(|s| s.value().to_string()));
        config.not_after = self.secrets.iter().map(SecretEntry::not_after).collect();
        config.tolerance_secs = self.tolerance_secs;
        config.require_timestamp = self.require_timestamp;
        config.json_compat = self.json_compat;
        Ok(Verifier::new(config)?)
    }

    /// A signer that the endpoint's verifier accepts, for the admin API's test webhooks: with
    /// the first secret that never ends, else the one that ends last.
    pub fn signer(&self) -> Result<Signer, SchemeError> {
        let longest = self
            .secrets
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (s.not_after().unwrap_or(i64::MAX), std::cmp::Reverse(*i)));
        let secrets: Vec<&str> = longest.map(|(_, s)| s.value()).into_iter().collect();
        Ok(Signer::new(self.signature_scheme()?, &secrets)?)
    }

    fn signature_scheme(&self) -> Result<Scheme, SchemeError> {
        let mut scheme: Scheme = self.scheme.parse()?;
        if let Scheme::Hmac(h) = &mut scheme {
            *h = HmacScheme {
                header: self.hmac_header.clone().unwrap_or(h.header.clone()),
                prefix: self.hmac_prefix.clone().unwrap_or_default(),
                encoding: match self.hmac_encoding.as_deref() {
                    None => Encoding::Hex,
                    Some(e) => e.parse()?,
                },
            };
        } else if self.hmac_header.is_some() || self.hmac_prefix.is_some() || self.hmac_encoding.is_some() {
            return Err(SchemeError::HmacKeysOnOtherScheme);
        }
        Ok(scheme)
    }
}

/// Plugin names travel in URL paths and log lines: keep them plain.
pub fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| invalid(key, format!("{value:?} is not an address such as 127.0.0.1:8080")))
}

/// Replaces each `${NAME}` with the variable's value; an unset variable is an error naming
/// both the key and the variable. `$$` is no escape: values with `${` are rare in secrets.
fn expand_vars(
    key: &str,
    value: &mut String,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if !value.contains("${") {
        return Ok(());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| invalid(key, "has an unterminated ${"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(key, format!("${{{name}}} is not a valid environment variable name")));
        }
        let var = env(name).ok_or_else(|| invalid(key, format!("environment variable {name} is not set")))?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    *value = out;
    Ok(())
}
