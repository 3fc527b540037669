//! `[[upstream]]`: where events are delivered, and how: timeouts, retries, concurrency, rate,
//! circuit breaker, ordering key and the signature it adds.

use payflow_verify::{PayFlowForm, Scheme, Signer};
use serde::Deserialize;

use crate::default_merchant;
use crate::route::json_path;

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
