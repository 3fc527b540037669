//! Signature verification: one `Verifier` per endpoint, built once from its configuration.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use subtle::{Choice, ConstantTimeEq};

use crate::encoding::Mac;
use crate::error::{malformed, ConfigError, VerifyError};
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
        self.verify_with(headers, body, now, self.json_compat)
    }

    /// Whether a request this verifier refuses as `invalid_signature` would pass with
    /// `json_compat` on: its signature is PayFlow's documented algorithm (HMAC over
    /// `JSON.stringify(JSON.parse(body))`) and the sender re-serialised its JSON. False for
    /// other schemes, and when `json_compat` is already on. The caller says so where its
    /// operator reads (a log, the CLI's message), naming the option, never in the reply to the
    /// sender, which learns the reason and nothing more.
    #[cfg(feature = "json-compat")]
    pub fn would_match_json_compat(&self, headers: &(impl Headers + ?Sized), body: &[u8], now: i64) -> bool {
        !self.json_compat
            && matches!(self.scheme(), Scheme::PayFlow)
            && self.verify_with(headers, body, now, true).is_ok_and(|v| v.via_json_compat)
    }

    fn verify_with(
        &self,
        headers: &(impl Headers + ?Sized),
        body: &[u8],
        now: i64,
        json_compat: bool,
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
        if json_compat {
            if let Some(canonical) = crate::compat::js_canonical_json(body) {
                if canonical != body && self.any_matches(&claim.macs, &prefix, &canonical) {
                    return Ok(Verified { timestamp, via_json_compat: true });
                }
            }
        }
        let _ = json_compat; // without the json-compat feature there is no other form
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
    use crate::error::Reason;
    use alloc::string::ToString;

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
