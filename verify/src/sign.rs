//! Signing, for the CLI's `sign`/`send`, re-signing deliveries for upstreams, and tests of
//! our own senders. (Test vectors for verification come from independent implementations.)

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::encoding::decimal;
use crate::error::ConfigError;
use crate::headers::header_names as names;
use crate::keyring::Keyring;
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
    /// Every key is a public key (`whpk_`): it verifies, but nothing here can sign with it.
    #[error("only public keys (whpk_) are configured: they verify, and signing needs a whsec_ secret")]
    NoSigningKey,
    /// The scheme's header holds one signature, so only one secret can sign.
    #[error("the {0} scheme carries one signature per header: sign with a single secret")]
    OneSignatureOnly(&'static str),
}

/// Produces signature headers with one or more secrets.
#[derive(Clone)]
pub struct Signer {
    pub(crate) scheme: Scheme,
    pub(crate) keys: Keyring,
}

impl Signer {
    /// Keys every secret once; the same secret rules as verification apply.
    pub fn new<S: AsRef<str>>(scheme: Scheme, secrets: &[S]) -> Result<Self, ConfigError> {
        Ok(Signer { keys: Keyring::new(&scheme, secrets)?, scheme })
    }

    /// The headers (name, value) that sign `body`.
    pub fn sign(&self, body: &[u8], options: &SignOptions<'_>) -> Result<Vec<(String, String)>, SignError> {
        let mut headers = Vec::new();
        self.sign_each(body, options, |name, value| headers.push((name.to_string(), value.to_string())))?;
        Ok(headers)
    }

    /// Like [`Signer::sign`], handing each header to `header` in order instead of collecting
    /// them; on an error, none is handed over.
    pub fn sign_each(
        &self,
        body: &[u8],
        options: &SignOptions<'_>,
        mut header: impl FnMut(&str, &str),
    ) -> Result<(), SignError> {
        let t = decimal(u64::try_from(options.timestamp).map_err(|_| SignError::BadTimestamp)?);
        let id = options.id.filter(|id| !id.is_empty());
        let timestamped: [&[u8]; 2] = [t.as_bytes(), b"."];
        // Standard Webhooks signs "{id}.{t}." (its arm refuses a missing id).
        let with_id: [&[u8]; 4] = [id.unwrap_or_default().as_bytes(), b".", t.as_bytes(), b"."];
        let mut id_header = None;
        // Every scheme's header is one shape: a head, then each secret's MAC (in the scheme's
        // encoding, over the scheme's signed prefix and the body), a separator between them.
        // One path for all six keeps the web build small.
        let (name, head, separator, encoding, signed): (&str, [&str; 3], &str, Encoding, &[&[u8]]) =
            match &self.scheme {
                Scheme::PayFlow if options.payflow_form == PayFlowForm::V0 => {
                    (names::PAYFLOW_SIGNATURE, ["", "", ""], ",", Encoding::Hex, &[])
                }
                Scheme::PayFlow => {
                    (names::PAYFLOW_SIGNATURE, ["t=", &t, ",v1="], ",v1=", Encoding::Hex, &timestamped)
                }
                Scheme::Stripe => {
                    (names::STRIPE_SIGNATURE, ["t=", &t, ",v1="], ",v1=", Encoding::Hex, &timestamped)
                }
                Scheme::StandardWebhooks => {
                    id_header = Some(id.ok_or(SignError::MissingId)?);
                    (names::WEBHOOK_SIGNATURE, ["v1,", "", ""], " v1,", Encoding::Base64, &with_id)
                }
                Scheme::GitHub => (names::GITHUB_SIGNATURE, ["sha256=", "", ""], "", Encoding::Hex, &[]),
                Scheme::Shopify => (names::SHOPIFY_SIGNATURE, ["", "", ""], "", Encoding::Base64, &[]),
                Scheme::Hmac(h) => (&h.header, [&h.prefix, "", ""], "", h.encoding, &[]),
            };
        if self.keys.len() == 0 {
            return Err(SignError::NoSigningKey);
        }
        // A scheme without a separator carries exactly one signature.
        if separator.is_empty() && self.keys.len() != 1 {
            return Err(SignError::OneSignatureOnly(self.scheme.name()));
        }
        let mut value = String::new();
        head.iter().for_each(|part| value.push_str(part));
        for (i, mac) in self.keys.macs(signed, body).enumerate() {
            if i > 0 {
                value.push_str(separator);
            }
            encoding.append(&mut value, &mac);
        }
        if let Some(id) = id_header {
            header(names::WEBHOOK_ID, id);
            header(names::WEBHOOK_TIMESTAMP, &t);
        }
        header(name, &value);
        Ok(())
    }
}
