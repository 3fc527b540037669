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
    /// The last unix second each secret (same order) is accepted at, for a rotation with a
    /// known end: a rotated-out secret stops passing then. `None`, or no entry (the list may
    /// be shorter than `secrets`), means no end.
    pub not_after: Vec<Option<i64>>,
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
            not_after: Vec::new(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            require_timestamp: false,
            json_compat: false,
        }
    }
}

/// A Standard Webhooks public key: `whpk_` and the base64 of its 32 bytes.
#[cfg(feature = "ed25519")]
fn public_key(secret: &str, index: usize) -> Result<ed25519_compact::PublicKey, ConfigError> {
    let bad = ConfigError::BadPublicKey { index };
    let bytes =
        crate::encoding::from_base64(secret.strip_prefix("whpk_").unwrap_or(secret)).ok_or(bad.clone())?;
    ed25519_compact::PublicKey::from_slice(&bytes).map_err(|_| bad)
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
    /// Each HMAC key's place among the configured secrets (public keys take the others).
    hmac_index: Vec<usize>,
    /// Standard Webhooks' Ed25519 public keys (`whpk_`), with their places among the secrets.
    #[cfg(feature = "ed25519")]
    public_keys: Vec<(usize, ed25519_compact::PublicKey)>,
    /// Per secret, the last second it is accepted at (see [`VerifierConfig::not_after`]).
    not_after: Vec<Option<i64>>,
    tolerance_secs: u64,
    require_timestamp: bool,
    json_compat: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("scheme", self.scheme())
            .field("hmac_keys", &self.hmac_index.len())
            .field("public_keys", &{
                #[cfg(feature = "ed25519")]
                let n = self.public_keys.len();
                #[cfg(not(feature = "ed25519"))]
                let n = 0;
                n
            })
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
        if config.secrets.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        // Standard Webhooks' public keys verify `v1a,` signatures; every other secret is an
        // HMAC key.
        let public = |secret: &str| config.scheme == Scheme::StandardWebhooks && secret.starts_with("whpk_");
        #[cfg(feature = "ed25519")]
        let public_keys = {
            let mut keys = Vec::new();
            for (index, secret) in config.secrets.iter().enumerate().filter(|(_, s)| public(s)) {
                keys.push((index, public_key(secret, index)?));
            }
            keys
        };
        #[cfg(not(feature = "ed25519"))]
        if let Some(index) = config.secrets.iter().position(|s| public(s)) {
            return Err(ConfigError::PublicKeysUnavailable { index });
        }
        let hmac = config.secrets.iter().map(String::as_str).enumerate().filter(|(_, s)| !public(s));
        let hmac_index = hmac.clone().map(|(index, _)| index).collect();
        Ok(Verifier {
            // Built in place rather than by `Signer::new`, whose `Result` the web build pays ~60
            // gzipped bytes to move.
            signer: Signer { keys: Keyring::of(&config.scheme, hmac)?, scheme: config.scheme },
            hmac_index,
            #[cfg(feature = "ed25519")]
            public_keys,
            not_after: config.not_after,
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
        if self.any_matches(&claim.macs, &prefix, body, now) {
            return Ok(Verified { timestamp, via_json_compat: false });
        }
        #[cfg(feature = "ed25519")]
        if self.any_ed25519_matches(&claim.ed25519, &claim.prefix, body, now) {
            return Ok(Verified { timestamp, via_json_compat: false });
        }
        #[cfg(feature = "json-compat")]
        if json_compat {
            if let Some(canonical) = crate::compat::js_canonical_json(body) {
                if canonical != body && self.any_matches(&claim.macs, &prefix, &canonical, now) {
                    return Ok(Verified { timestamp, via_json_compat: true });
                }
            }
        }
        let _ = json_compat; // without the json-compat feature there is no other form
        Err(VerifyError::InvalidSignature)
    }

    /// Whether any secret still accepted at `now` has a MAC equal to any claimed MAC, compared
    /// in constant time and without stopping early (an expired secret's MAC is computed and
    /// compared too), so timing says nothing about which secret or signature was close.
    fn any_matches(&self, claimed: &[Mac], prefix: &[&[u8]], body: &[u8], now: i64) -> bool {
        let mut found = Choice::from(0);
        for (&index, mac) in self.hmac_index.iter().zip(self.signer.keys.macs(prefix, body)) {
            let live = Choice::from(u8::from(self.live(index, now)));
            for candidate in claimed {
                found |= mac.ct_eq(candidate) & live;
            }
        }
        found.into()
    }

    /// Whether secret `index` is still accepted at `now`.
    fn live(&self, index: usize, now: i64) -> bool {
        self.not_after.get(index).copied().flatten().is_none_or(|last| now <= last)
    }

    /// Whether a public key still accepted at `now` verifies any claimed `v1a` signature over
    /// `prefix ‖ body`. Public-key signatures need no constant-time comparison: nothing secret
    /// is compared.
    #[cfg(feature = "ed25519")]
    fn any_ed25519_matches(&self, claimed: &[[u8; 64]], prefix: &[u8], body: &[u8], now: i64) -> bool {
        self.public_keys.iter().filter(|(index, _)| self.live(*index, now)).any(|(_, key)| {
            claimed.iter().any(|signature| {
                let signature = ed25519_compact::Signature::new(*signature);
                key.verify_incremental(&signature).is_ok_and(|mut state| {
                    state.absorb(prefix);
                    state.absorb(body);
                    state.verify().is_ok()
                })
            })
        })
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

    /// HMAC-SHA256 of the quick brown fox under "key": the RFC 2104 example every HMAC
    /// library documents (here as RustCrypto's `hmac` computes it), not our own signer.
    fn fox_signature() -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"key").unwrap();
        mac.update(FOX);
        let hex: String = mac.finalize().into_bytes().iter().map(|b| alloc::format!("{b:02x}")).collect();
        assert_eq!(hex, "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
        hex
    }

    const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";
    const END: i64 = 1_767_225_599; // 2025-12-31T23:59:59Z

    #[test]
    fn a_secret_is_accepted_until_its_not_after_and_refused_after_it() {
        let signature = fox_signature();
        let headers = [("X-PayFlow-Signature", signature.as_str())];
        let mut config = VerifierConfig::new(Scheme::PayFlow, ["key", "other-secret"]);
        config.not_after = alloc::vec![Some(END)];
        let verifier = Verifier::new(config).unwrap();
        assert!(verifier.verify(&headers[..], FOX, END - 86_400).is_ok());
        assert!(verifier.verify(&headers[..], FOX, END).is_ok(), "the last second is still in");
        let refused = verifier.verify(&headers[..], FOX, END + 1).unwrap_err();
        assert_eq!(refused.reason(), Reason::InvalidSignature, "an ended secret is simply not a key");
    }

    #[test]
    fn an_ended_secret_leaves_the_others_accepted() {
        let signature = fox_signature();
        let headers = [("X-PayFlow-Signature", signature.as_str())];
        // The new secret ("key") has no end; the rotated-out one ended long ago.
        let mut config = VerifierConfig::new(Scheme::PayFlow, ["rotated-out", "key"]);
        config.not_after = alloc::vec![Some(END), None];
        let verifier = Verifier::new(config).unwrap();
        assert!(verifier.verify(&headers[..], FOX, END + 10 * 86_400).is_ok());
    }

    #[cfg(feature = "ed25519")]
    #[test]
    fn a_bad_public_key_is_a_configuration_error_naming_it() {
        for key in ["whpk_", "whpk_not base64", "whpk_AAAA"] {
            let config = VerifierConfig::new(Scheme::StandardWebhooks, ["whsec_c2VjcmV0", key]);
            assert_eq!(Verifier::new(config).unwrap_err(), ConfigError::BadPublicKey { index: 1 }, "{key}");
        }
    }

    #[cfg(feature = "ed25519")]
    #[test]
    fn public_keys_verify_but_cannot_sign() {
        // 32 bytes of a real Ed25519 public key (RFC 8032, test 1).
        let key = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let verifier = Verifier::new(VerifierConfig::new(Scheme::StandardWebhooks, [key])).unwrap();
        let options = crate::SignOptions { id: Some("msg_1"), ..crate::SignOptions::at(1_700_000_000) };
        assert_eq!(verifier.signer().sign(b"{}", &options).unwrap_err(), crate::SignError::NoSigningKey);
    }
}
