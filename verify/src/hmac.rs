//! HMAC-SHA256 (RFC 2104 over FIPS 180-4), the one MAC every scheme uses, behind one small type.
//!
//! Two backends, one interface:
//! - native targets use the RustCrypto `hmac` and `sha2` crates, which pick SHA-NI or the
//!   ARMv8 SHA instructions at run time: the gateway hashes every body it receives;
//! - wasm32 (the browser/edge package and plugins) uses the `compact` implementation below. A
//!   wasm engine has no SHA instructions, so `sha2` falls back to fully unrolled software rounds
//!   there: 8 KB of the browser's module (a fifth of it), and every copy of the `digest`
//!   plumbing inlined into each entry point. Eight rounds unrolled in a loop take 1.2 KB;
//!   their speed under V8 is measured in bench/RESULTS.md (`web/bench/ab.mjs`).
//!
//! The compact implementation is compiled and tested on every target: its tests check it against
//! the RustCrypto crates (an independent implementation) and RFC 4231's vectors.

#[cfg(any(target_arch = "wasm32", test))]
mod compact;

#[cfg(target_arch = "wasm32")]
pub(crate) use compact::HmacSha256;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use rustcrypto::HmacSha256;

#[cfg(not(target_arch = "wasm32"))]
mod rustcrypto {
    use ::hmac::{Hmac, Mac as _};

    use crate::encoding::Mac;

    /// A keyed HMAC-SHA256 state: clone it, feed it, finish it.
    #[derive(Clone)]
    pub(crate) struct HmacSha256(Hmac<::sha2::Sha256>);

    impl HmacSha256 {
        pub(crate) fn new(key: &[u8]) -> Self {
            // `Hmac` takes a key of any length (longer than a block it is hashed first).
            Self(Hmac::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length")))
        }

        pub(crate) fn update(&mut self, data: &[u8]) {
            self.0.update(data);
        }

        pub(crate) fn finalize(self) -> Mac {
            self.0.finalize().into_bytes().into()
        }
    }
}
