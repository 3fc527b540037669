//! What can go wrong, for every module of the crate: a configuration that cannot verify
//! ([`ConfigError`]) and a refused request ([`VerifyError`], with its [`Reason`]). A leaf: it
//! imports nothing from the crate, so the modules that report these errors (the keyring, the
//! header parsers, the signer and the verifier) never import each other for them.

use core::fmt;

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
    /// A Standard Webhooks public key must be `whpk_` followed by the base64 of 32 bytes.
    #[error("secret #{} is not a Standard Webhooks public key (whpk_ followed by the base64 of 32 bytes)", index + 1)]
    BadPublicKey {
        /// Zero-based position in the list.
        index: usize,
    },
    /// This build verifies no Ed25519 signatures.
    #[error("secret #{} is an Ed25519 public key (whpk_), which this build does not verify", index + 1)]
    PublicKeysUnavailable {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The web package turns a reason into its code as `reason as u32`, which is its place in
    /// `ALL` only while `ALL` lists them in declaration order.
    #[test]
    fn reasons_are_listed_in_declaration_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason}");
        }
    }
}
