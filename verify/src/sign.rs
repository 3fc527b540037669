//! Signing, for the CLI's `sign`/`send`, re-signing deliveries for upstreams, and tests of
//! our own senders. (Test vectors for verification come from independent implementations.)

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::encoding::{decimal, to_base64, to_hex};
use crate::headers::header_names as names;
use crate::keyring::Keyring;
use crate::verifier::ConfigError;
use crate::{Encoding, Scheme};

/// Which PayFlow form to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayFlowForm {
    /// `X-PayFlow-Signature: <hex>` over the raw body (the seed's form).
    V0,
    /// `X-PayFlow-Signature: t=<unix>,v1=<hex>` over `"{t}.{body}"`.
    #[default]
    V1,
}

/// Per-message inputs to signing.
#[derive(Clone, Debug)]
pub struct SignOptions<'a> {
    /// Unix seconds to sign with (timestamped schemes).
    pub timestamp: i64,
    /// Message id (Standard Webhooks `webhook-id`).
    pub id: Option<&'a str>,
    /// PayFlow form.
    pub payflow_form: PayFlowForm,
}

impl SignOptions<'_> {
    /// Options for signing at `timestamp`, with no id and the PayFlow v1 form.
    pub fn at(timestamp: i64) -> Self {
        SignOptions { timestamp, id: None, payflow_form: PayFlowForm::V1 }
    }
}

/// Why a message could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Standard Webhooks signs a message id.
    #[error("standard-webhooks signs a message id: give one (it becomes the webhook-id header)")]
    MissingId,
    /// Timestamps are unix seconds, not negative.
    #[error("the timestamp must be a non-negative unix time in seconds")]
    BadTimestamp,
    /// The scheme's header holds one signature, so only one secret can sign.
    #[error("the {0} scheme carries one signature per header: sign with a single secret")]
    OneSignatureOnly(&'static str),
}

/// Produces signature headers with one or more secrets.
#[derive(Clone)]
pub struct Signer {
    scheme: Scheme,
    keys: Keyring,
}

impl Signer {
    /// Keys every secret once; the same secret rules as verification apply.
    pub fn new<S: AsRef<str>>(scheme: Scheme, secrets: &[S]) -> Result<Self, ConfigError> {
        Ok(Signer { keys: Keyring::new(&scheme, secrets)?, scheme })
    }

    /// The headers (name, value) that sign `body`.
    pub fn sign(&self, body: &[u8], options: &SignOptions<'_>) -> Result<Vec<(String, String)>, SignError> {
        let t = decimal(u64::try_from(options.timestamp).map_err(|_| SignError::BadTimestamp)?);
        let timestamped: [&[u8]; 2] = [t.as_bytes(), b"."];
        let header = |name: &str, value: String| (name.to_string(), value);
        Ok(match &self.scheme {
            Scheme::PayFlow if options.payflow_form == PayFlowForm::V0 => {
                alloc::vec![header(
                    names::PAYFLOW_SIGNATURE,
                    list(&[], self.keys.macs(&[], body).map(|m| to_hex(&m)), ",")
                )]
            }
            Scheme::PayFlow | Scheme::Stripe => {
                let name = if self.scheme == Scheme::PayFlow {
                    names::PAYFLOW_SIGNATURE
                } else {
                    names::STRIPE_SIGNATURE
                };
                alloc::vec![header(
                    name,
                    list(&["t=", &t, ",v1="], self.keys.macs(&timestamped, body).map(|m| to_hex(&m)), ",v1=")
                )]
            }
            Scheme::StandardWebhooks => {
                let id = options.id.filter(|id| !id.is_empty()).ok_or(SignError::MissingId)?;
                let prefix: [&[u8]; 4] = [id.as_bytes(), b".", t.as_bytes(), b"."];
                let signatures = self.keys.macs(&prefix, body).map(|m| to_base64(&m));
                alloc::vec![
                    header(names::WEBHOOK_ID, id.to_string()),
                    header(names::WEBHOOK_TIMESTAMP, t.clone()),
                    header(names::WEBHOOK_SIGNATURE, list(&["v1,"], signatures, " v1,")),
                ]
            }
            Scheme::GitHub => alloc::vec![header(
                names::GITHUB_SIGNATURE,
                list(&["sha256="], core::iter::once(self.single(body, Encoding::Hex)?), "")
            )],
            Scheme::Shopify => {
                alloc::vec![header(names::SHOPIFY_SIGNATURE, self.single(body, Encoding::Base64)?)]
            }
            Scheme::Hmac(h) => alloc::vec![header(
                &h.header,
                list(&[&h.prefix], core::iter::once(self.single(body, h.encoding)?), "")
            )],
        })
    }

    fn single(&self, body: &[u8], encoding: Encoding) -> Result<String, SignError> {
        if self.keys.len() != 1 {
            return Err(SignError::OneSignatureOnly(self.scheme.name()));
        }
        let mac = self.keys.macs(&[], body).next().ok_or(SignError::OneSignatureOnly(self.scheme.name()))?;
        Ok(match encoding {
            Encoding::Hex => to_hex(&mac),
            Encoding::Base64 => to_base64(&mac),
        })
    }
}

/// `head` then the items, `separator` between them: the shape of every signature header value.
/// (One loop instead of `format!`/`concat`/`join`, which would each add code to the web build.)
fn list(head: &[&str], items: impl Iterator<Item = String>, separator: &str) -> String {
    let mut out = String::new();
    head.iter().for_each(|part| out.push_str(part));
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(&item);
    }
    out
}
