//! Signature verification: one `Verifier` per endpoint, built once from its configuration.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use subtle::{Choice, ConstantTimeEq};

use crate::encoding::Mac;
use crate::keyring::Keyring;
use crate::{parse, Encoding, Headers, Scheme, Signer, DEFAULT_TOLERANCE_SECS};

/// How an endpoint verifies: its scheme, secrets and options.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// The signature scheme.
    pub scheme: Scheme,
    /// One or more secrets; any one matching passes (rotation).
    pub secrets: Vec<String>,
    /// Largest accepted distance between the signed timestamp and `now`, both ways.
    pub tolerance_secs: u64,
    /// `payflow` only: refuse the untimestamped v0 form.
    pub require_timestamp: bool,
    /// `payflow` only: also accept the seed's algorithm, an HMAC over
    /// `JSON.stringify(JSON.parse(body))`, when the raw body does not match.
    pub json_compat: bool,
}

impl VerifierConfig {
    /// A configuration with the defaults: tolerance 300 s, v0 allowed, no JSON compat.
    pub fn new<I, S>(scheme: Scheme, secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        VerifierConfig {
            scheme,
            secrets: secrets.into_iter().map(Into::into).collect(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            require_timestamp: false,
            json_compat: false,
        }
    }
}

/// A configuration that cannot verify anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No secret at all.
    #[error("no secrets: an endpoint needs at least one")]
    NoSecrets,
    /// An empty secret would let anyone sign.
    #[error("secret #{} is empty", index + 1)]
    EmptySecret {
        /// Zero-based position in the list.
        index: usize,
    },
    /// A Standard Webhooks secret must be `whsec_` followed by base64.
    #[error("secret #{} is not a Standard Webhooks secret (whsec_ followed by base64)", index + 1)]
    BadStandardWebhooksSecret {
        /// Zero-based position in the list.
        index: usize,
    },
    /// `json_compat` only exists for PayFlow's seed algorithm.
    #[error("json_compat applies only to the payflow scheme, not {0}")]
    JsonCompatUnsupported(&'static str),
    /// Other timestamped schemes always require their timestamp; untimestamped ones have none.
    #[error("require_timestamp applies only to the payflow scheme, not {0}")]
    RequireTimestampUnsupported(&'static str),
    /// This build of the crate was made without the `json-compat` feature.
    #[error("json_compat is not in this build (the json-compat feature is off)")]
    JsonCompatUnavailable,
    /// The generic scheme needs to know where to look.
    #[error("the hmac scheme needs a header name")]
    EmptyHmacHeader,
}

/// Why a request failed verification, as named in the HTTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No signature header (or an empty one).
    MissingSignature,
    /// A signature header that holds no well-formed signature for the scheme.
    MalformedSignature,
    /// Well-formed, but no signature matches any secret.
    InvalidSignature,
    /// The signed timestamp is too far from now, either way.
    TimestampOutOfTolerance,
}

impl Reason {
    /// The reason as it appears in `{"error":"<reason>"}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingSignature => "missing_signature",
            Reason::MalformedSignature => "malformed_signature",
            Reason::InvalidSignature => "invalid_signature",
            Reason::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
        }
    }

    /// Every reason, in declaration order, for metrics that want a zero for each.
    pub const ALL: [Reason; 4] = [
        Reason::MissingSignature,
        Reason::MalformedSignature,
        Reason::InvalidSignature,
        Reason::TimestampOutOfTolerance,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed verification. The message names the reason and what was wrong with the header,
/// never which secret or how much of a signature matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// See [`Reason::MissingSignature`].
    #[error("missing_signature: {0}")]
    MissingSignature(&'static str),
    /// See [`Reason::MalformedSignature`].
    #[error("malformed_signature: {0}")]
    MalformedSignature(&'static str),
    /// See [`Reason::InvalidSignature`].
    #[error("invalid_signature: no signature matches any secret")]
    InvalidSignature,
    /// See [`Reason::TimestampOutOfTolerance`].
    #[error("timestamp_out_of_tolerance: signed {} s {}, tolerance {tolerance_secs} s", skew_secs.unsigned_abs(), if *skew_secs >= 0 { "in the past" } else { "in the future" })]
    TimestampOutOfTolerance {
        /// `now - timestamp`: positive for old signatures, negative for future ones.
        skew_secs: i64,
        /// The endpoint's tolerance.
        tolerance_secs: u64,
    },
}

/// A refusal's detail text. Builds without the `details` feature (the web package, whose API
/// reports the reason alone) get an empty one: there no caller could read the texts, and
/// leaving them out takes ~700 bytes off the module.
#[inline(always)]
const fn detail(text: &'static str) -> &'static str {
    if cfg!(feature = "details") {
        text
    } else {
        ""
    }
}

// The two refusals that carry a detail, built through `detail`. Inlined, so that without the
// `details` feature the texts at the call sites are unused and left out.
#[inline(always)]
pub(crate) fn malformed(why: &'static str) -> VerifyError {
    VerifyError::MalformedSignature(detail(why))
}

#[inline(always)]
pub(crate) fn missing(why: &'static str) -> VerifyError {
    VerifyError::MissingSignature(detail(why))
}

impl VerifyError {
    /// The reason, without detail.
    pub fn reason(&self) -> Reason {
        match self {
            VerifyError::MissingSignature(_) => Reason::MissingSignature,
            VerifyError::MalformedSignature(_) => Reason::MalformedSignature,
            VerifyError::InvalidSignature => Reason::InvalidSignature,
            VerifyError::TimestampOutOfTolerance { .. } => Reason::TimestampOutOfTolerance,
        }
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The signed timestamp, for timestamped forms.
    pub timestamp: Option<i64>,
    /// True when only the `json_compat` form matched.
    pub via_json_compat: bool,
}

/// Verifies requests for one endpoint. Cheap to share; immutable after construction.
#[derive(Clone)]
pub struct Verifier {
    /// The scheme and the keyed secrets: what signs is what verifies.
    signer: Signer,
    tolerance_secs: u64,
    require_timestamp: bool,
    json_compat: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("scheme", self.scheme())
            .field("secrets", &self.signer.keys.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .field("require_timestamp", &self.require_timestamp)
            .field("json_compat", &self.json_compat)
            .finish()
    }
}

impl Verifier {
    /// Checks the configuration and keys every secret once.
    pub fn new(config: VerifierConfig) -> Result<Self, ConfigError> {
        let payflow = config.scheme == Scheme::PayFlow;
        if config.json_compat && !payflow {
            return Err(ConfigError::JsonCompatUnsupported(config.scheme.name()));
        }
        if config.json_compat && !cfg!(feature = "json-compat") {
            return Err(ConfigError::JsonCompatUnavailable);
        }
        if config.require_timestamp && !payflow {
            return Err(ConfigError::RequireTimestampUnsupported(config.scheme.name()));
        }
        if matches!(&config.scheme, Scheme::Hmac(h) if h.header.trim_ascii().is_empty()) {
            return Err(ConfigError::EmptyHmacHeader);
        }
        Ok(Verifier {
            // Built in place rather than by `Signer::new`, whose `Result` the web build pays ~60
            // gzipped bytes to move.
            signer: Signer { keys: Keyring::new(&config.scheme, &config.secrets)?, scheme: config.scheme },
            tolerance_secs: config.tolerance_secs,
            require_timestamp: config.require_timestamp,
            json_compat: config.json_compat,
        })
    }

    /// The scheme this verifier checks.
    pub fn scheme(&self) -> &Scheme {
        &self.signer.scheme
    }

    /// What signs as this verifier accepts: the same scheme and secrets.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Verifies `body` (the raw request bytes) against the signature headers, with `now` in
    /// unix seconds.
    pub fn verify(
        &self,
        headers: &(impl Headers + ?Sized),
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let claim = match self.scheme() {
            Scheme::PayFlow => parse::payflow(headers),
            Scheme::StandardWebhooks => parse::standard_webhooks(headers),
            Scheme::Stripe => parse::stripe(headers),
            Scheme::GitHub => {
                parse::prefixed(headers, crate::header_names::GITHUB_SIGNATURE, "sha256=", Encoding::Hex)
            }
            Scheme::Shopify => {
                parse::prefixed(headers, crate::header_names::SHOPIFY_SIGNATURE, "", Encoding::Base64)
            }
            Scheme::Hmac(h) => parse::prefixed(headers, &h.header, &h.prefix, h.encoding),
        }?;
        let timestamp = claim.timestamp;
        match timestamp {
            // Checked before any hashing: a replayed or stale request costs no HMAC.
            Some(ts) => {
                let skew_secs = now.saturating_sub(ts);
                if skew_secs.unsigned_abs() > self.tolerance_secs {
                    return Err(VerifyError::TimestampOutOfTolerance {
                        skew_secs,
                        tolerance_secs: self.tolerance_secs,
                    });
                }
            }
            None if self.require_timestamp => {
                return Err(malformed("this endpoint requires the timestamped form t=<unix>,v1=<hex>"))
            }
            None => {}
        }
        let prefix = [&claim.prefix[..]];
        if self.any_matches(&claim.macs, &prefix, body) {
            return Ok(Verified { timestamp, via_json_compat: false });
        }
        #[cfg(feature = "json-compat")]
        if self.json_compat {
            if let Some(canonical) = crate::compat::js_canonical_json(body) {
                if canonical != body && self.any_matches(&claim.macs, &prefix, &canonical) {
                    return Ok(Verified { timestamp, via_json_compat: true });
                }
            }
        }
        Err(VerifyError::InvalidSignature)
    }

    /// Whether any secret's MAC equals any claimed MAC, compared in constant time and without
    /// stopping early, so timing says nothing about which secret or signature was close.
    fn any_matches(&self, claimed: &[Mac], prefix: &[&[u8]], body: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for mac in self.signer.keys.macs(prefix, body) {
            for candidate in claimed {
                found |= mac.ct_eq(candidate);
            }
        }
        found.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// The web package turns a reason into its code as `reason as u32`, which is its place in
    /// `ALL` only while `ALL` lists them in declaration order.
    #[test]
    fn reasons_are_listed_in_declaration_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason}");
        }
    }

    /// Without `details` (the web build) a refusal keeps its reason and loses only its text.
    /// `scripts/test.sh` runs this both ways.
    #[test]
    fn a_refusal_keeps_its_reason_and_has_text_only_with_details() {
        let verifier = Verifier::new(VerifierConfig::new(Scheme::Stripe, ["whsec_test"])).unwrap();
        let error = verifier.verify(&[("Stripe-Signature", "t=1700000000,v1=zz")][..], b"{}", 1_700_000_000);
        let error = error.unwrap_err();
        assert_eq!(error.reason(), Reason::MalformedSignature);
        let expected = if cfg!(feature = "details") {
            "malformed_signature: no well-formed v1= signature"
        } else {
            "malformed_signature: "
        };
        assert_eq!(error.to_string(), expected);
    }
}
