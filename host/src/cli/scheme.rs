//! The scheme and secret options that `sign` and `verify` share.

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use payflow_verify::{Encoding, HmacScheme, PayFlowForm, Scheme};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemeName {
    /// X-PayFlow-Signature; signs the timestamped v1 form, verifies v0 and v1
    Payflow,
    /// X-PayFlow-Signature: <hex>, untimestamped: what PayFlow sends and its page checks
    PayflowV0,
    /// webhook-id / webhook-timestamp / webhook-signature
    StandardWebhooks,
    /// Standard Webhooks under the svix-* header names (verify accepts both)
    Svix,
    /// Stripe-Signature
    Stripe,
    /// X-Hub-Signature-256
    Github,
    /// X-Shopify-Hmac-Sha256
    Shopify,
    /// HMAC-SHA256 in a header of your choice (--hmac-header, --hmac-prefix, --hmac-encoding)
    Hmac,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EncodingName {
    Hex,
    Base64,
}

#[derive(Args, Debug)]
pub struct SchemeArgs {
    /// Signature scheme.
    #[arg(long, value_enum, default_value = "payflow")]
    pub scheme: SchemeName,
    /// Webhook secret; repeat for several (rotation). Defaults to $PAYFLOW_WEBHOOK_SECRET.
    #[arg(
        long = "secret",
        value_name = "SECRET",
        env = "PAYFLOW_WEBHOOK_SECRET",
        hide_env_values = true,
        required = true
    )]
    pub secrets: Vec<String>,
    /// hmac scheme: the header carrying the signature.
    #[arg(long, default_value = "X-Signature")]
    pub hmac_header: String,
    /// hmac scheme: text before the signature, e.g. "sha256=".
    #[arg(long, default_value = "")]
    pub hmac_prefix: String,
    /// hmac scheme: encoding of the signature.
    #[arg(long, value_enum, default_value = "hex")]
    pub hmac_encoding: EncodingName,
}

impl SchemeArgs {
    pub fn scheme(&self) -> Scheme {
        match self.scheme {
            SchemeName::Payflow | SchemeName::PayflowV0 => Scheme::PayFlow,
            SchemeName::StandardWebhooks | SchemeName::Svix => Scheme::StandardWebhooks,
            SchemeName::Stripe => Scheme::Stripe,
            SchemeName::Github => Scheme::GitHub,
            SchemeName::Shopify => Scheme::Shopify,
            SchemeName::Hmac => Scheme::Hmac(HmacScheme {
                header: self.hmac_header.clone(),
                prefix: self.hmac_prefix.clone(),
                encoding: match self.hmac_encoding {
                    EncodingName::Hex => Encoding::Hex,
                    EncodingName::Base64 => Encoding::Base64,
                },
            }),
        }
    }

    pub fn payflow_form(&self) -> PayFlowForm {
        if self.scheme == SchemeName::PayflowV0 {
            PayFlowForm::V0
        } else {
            PayFlowForm::V1
        }
    }
}

/// Parses `Name: value`.
pub fn parse_header(line: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let (name, value) = line
        .split_once(':')
        .with_context(|| format!("--header {line:?} is not of the form 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        anyhow::bail!("--header {line:?} has no valid header name before ':'");
    }
    Ok((name.to_string(), value.trim().as_bytes().to_vec()))
}
