//! The endpoint's secrets, turned into keyed HMAC-SHA256 states once, at construction.
//!
//! Keying an HMAC hashes two key blocks; doing that once per secret instead of once per request
//! is what lets verification stay at the cost of hashing the body itself.

use crate::encoding::{from_base64, Mac};
use crate::error::ConfigError;
use crate::hmac::HmacSha256;
use crate::Scheme;
use alloc::vec::Vec;

#[derive(Clone)]
pub(crate) struct Keyring {
    keys: Vec<HmacSha256>,
}

impl Keyring {
    pub(crate) fn new<S: AsRef<str>>(scheme: &Scheme, secrets: &[S]) -> Result<Self, ConfigError> {
        if secrets.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        Keyring::of(scheme, secrets.iter().map(AsRef::as_ref).enumerate())
    }

    /// The HMAC keys of `(index, secret)` pairs; none at all is allowed (a verifier whose keys
    /// are all public keys). The index names a bad secret in the error.
    pub(crate) fn of<'a>(
        scheme: &Scheme,
        secrets: impl Iterator<Item = (usize, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (index, secret) in secrets {
            keys.push(HmacSha256::new(&key_bytes(scheme, secret, index)?));
        }
        Ok(Keyring { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The MAC of `prefix… ‖ body` under each key, in the order the secrets were given.
    pub(crate) fn macs<'a>(
        &'a self,
        prefix: &'a [&'a [u8]],
        body: &'a [u8],
    ) -> impl Iterator<Item = Mac> + 'a {
        self.keys.iter().map(move |key| {
            let mut mac = key.clone();
            for part in prefix {
                mac.update(part);
            }
            mac.update(body);
            mac.finalize()
        })
    }
}

/// The HMAC key a secret stands for. Standard Webhooks secrets are `whsec_` + base64 of the key;
/// every other scheme (Stripe's `whsec_` included) uses the secret's bytes as they are.
fn key_bytes(scheme: &Scheme, secret: &str, index: usize) -> Result<Vec<u8>, ConfigError> {
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret { index });
    }
    match scheme {
        Scheme::StandardWebhooks => {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
            match from_base64(encoded) {
                Some(key) if !key.is_empty() => Ok(key),
                _ => Err(ConfigError::BadStandardWebhooksSecret { index }),
            }
        }
        _ => Ok(secret.as_bytes().to_vec()),
    }
}
