//! payflow-verify: webhook signature schemes and the PayFlow event model.
//!
//! This crate is shared by the gateway (native), the browser/edge build (wasm-bindgen) and the
//! plugin SDK, so it must stay `no_std` + `alloc`: it never does I/O, never reads a clock (the
//! caller passes `now`), never allocates in proportion to anything but its input, and never
//! panics on any input. Verification always runs over the raw body bytes with a constant-time
//! comparison; JSON is only re-serialised in the opt-in `json_compat` mode.
//!
//! ```
//! use payflow_verify::{Scheme, Signer, SignOptions, Verifier, VerifierConfig};
//!
//! let body = br#"{"id":"evt_1","type":"payment.succeeded"}"#;
//! let signer = Signer::new(Scheme::PayFlow, &["whsec_test"]).unwrap();
//! let headers = signer.sign(body, &SignOptions::at(1_700_000_000)).unwrap();
//!
//! let verifier = Verifier::new(VerifierConfig::new(Scheme::PayFlow, ["whsec_test"])).unwrap();
//! assert!(verifier.verify(&headers[..], body, 1_700_000_010).is_ok());
//! assert!(verifier.verify(&headers[..], b"{}", 1_700_000_010).is_err());
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(feature = "json-compat")]
mod compat;
mod encoding;
mod error;
pub mod event;
mod headers;
mod hmac;
pub mod json;
mod keyring;
mod parse;
mod scheme;
mod sign;
mod verifier;

#[cfg(feature = "json-compat")]
pub use compat::js_canonical_json;
pub use error::{ConfigError, Reason, VerifyError};
pub use headers::{header_names, Headers};
pub use scheme::{Encoding, HmacScheme, Scheme, UnknownEncoding, UnknownScheme};
pub use sign::{PayFlowForm, SignError, SignOptions, Signer};
pub use verifier::{Verified, Verifier, VerifierConfig};

/// Default tolerance for timestamped schemes, both into the past and the future.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
