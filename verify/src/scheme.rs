//! The signature schemes a verifier understands, by their configuration names.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// A webhook signature scheme. See the table in DESIGN.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `X-PayFlow-Signature`: v0 `<hex>` over the raw body, or v1 `t=<unix>,v1=<hex>…` over
    /// `"{t}.{body}"`.
    PayFlow,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), also accepted
    /// under Svix's `svix-*` header names. Secrets are `whsec_<base64>`.
    StandardWebhooks,
    /// `Stripe-Signature: t=<ts>,v1=<hex>…`; every scheme but v1 is ignored.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>` over the raw body.
    GitHub,
    /// `X-Shopify-Hmac-Sha256: <base64>` over the raw body.
    Shopify,
    /// HMAC-SHA256 over the raw body in a configurable header.
    Hmac(HmacScheme),
}

/// How the generic `hmac` scheme carries its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HmacScheme {
    /// Header name, matched case-insensitively.
    pub header: String,
    /// Text before the encoded signature, e.g. `sha256=`; may be empty.
    pub prefix: String,
    /// Encoding of the signature after the prefix.
    pub encoding: Encoding,
}

/// Encoding of a signature in a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Lowercase hexadecimal (64 characters for SHA-256).
    Hex,
    /// Standard base64 with padding (44 characters for SHA-256).
    Base64,
}

impl Scheme {
    /// The configuration name (`payflow`, `standard-webhooks`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::PayFlow => "payflow",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Stripe => "stripe",
            Scheme::GitHub => "github",
            Scheme::Shopify => "shopify",
            Scheme::Hmac(_) => "hmac",
        }
    }

    /// Whether the scheme carries a timestamp that is checked against the tolerance.
    pub fn is_timestamped(&self) -> bool {
        matches!(self, Scheme::PayFlow | Scheme::StandardWebhooks | Scheme::Stripe)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scheme name that is not one of the configuration names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scheme {0:?}: expected payflow, standard-webhooks (or svix), stripe, github, shopify or hmac"
)]
pub struct UnknownScheme(pub String);

impl FromStr for Scheme {
    type Err = UnknownScheme;

    /// Parses a configuration name. `hmac` yields the generic scheme with its defaults
    /// (`X-Signature`, no prefix, hex); set its fields for other layouts.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scheme::from_name(name).ok_or_else(|| UnknownScheme(name.into()))
    }
}

impl Scheme {
    /// The scheme a configuration name stands for, like [`str::parse`] but without an error
    /// value to allocate. `hmac` yields the generic scheme with its defaults.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "payflow" => Scheme::PayFlow,
            "standard-webhooks" | "svix" => Scheme::StandardWebhooks,
            "stripe" => Scheme::Stripe,
            "github" => Scheme::GitHub,
            "shopify" => Scheme::Shopify,
            "hmac" => Scheme::Hmac(HmacScheme::default()),
            _ => return None,
        })
    }
}

impl Default for HmacScheme {
    fn default() -> Self {
        HmacScheme { header: "X-Signature".into(), prefix: String::new(), encoding: Encoding::Hex }
    }
}

/// An encoding name other than `hex` or `base64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoding {0:?}: expected hex or base64")]
pub struct UnknownEncoding(pub String);

impl FromStr for Encoding {
    type Err = UnknownEncoding;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encoding::from_name(s).ok_or_else(|| UnknownEncoding(s.into()))
    }
}

impl Encoding {
    /// `hex` or `base64`, like [`str::parse`] but without an error value to allocate.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }
}
