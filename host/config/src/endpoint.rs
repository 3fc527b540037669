//! `[[endpoint]]`: a path that receives webhooks: how it verifies them (scheme, secrets with
//! their ends, tolerance), how it answers (mode) and where its events go (upstream, routes,
//! plugins); and the verifier and signer built from it. It must never build a verifier that
//! accepts what the settings do not say (an `hmac_*` key on another scheme is an error).

use payflow_verify::{Encoding, HmacScheme, Scheme, Signer, Verifier, VerifierConfig};
use serde::Deserialize;

use crate::default_merchant;
use crate::route::RouteConfig;

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

    pub(crate) fn value_mut(&mut self) -> &mut String {
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

fn default_scheme() -> String {
    "payflow".into()
}
fn default_tolerance() -> u64 {
    payflow_verify::DEFAULT_TOLERANCE_SECS
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
