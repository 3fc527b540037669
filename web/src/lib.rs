//! payflow-verify for JavaScript: the gateway's own verifier, compiled to wasm with
//! wasm-bindgen for browsers, Node, Deno and edge workers.
//!
//! This is the thin, low-level half of the npm package. `web/js/index.js` is the public API:
//! it turns `Headers` objects, plain objects, strings and `Uint8Array`s into the flat arguments
//! taken here, caches keyed verifiers, runs the `jsonCompat` fallback with the engine's own
//! JSON, and turns every failure into a value. This module must never add verification logic
//! of its own (that lives in `payflow-verify`, shared with the gateway, so both give the same
//! verdicts) and must stay small: every byte is downloaded by every page that verifies. Hence
//! `no_std` on wasm with a panic handler that only traps, and messages as static text: nothing
//! here may pull in `core::fmt`, which alone would double the module.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use payflow_verify::{
    ConfigError, Encoding, HmacScheme, PayFlowForm, Reason, Scheme, SignError, SignOptions, Signer, Verifier,
    VerifierConfig,
};
use wasm_bindgen::prelude::*;

// A free-list allocator of a few hundred bytes (dlmalloc is ~6 KB): a verify makes a handful of
// small, short-lived allocations, and wasm32 here has one thread.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
// SAFETY: wasm32-unknown-unknown without the atomics feature runs one thread per instance.
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::FreeListAllocator> =
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::FreeListAllocator::new()) };

// No input reaches a panic (payflow-verify is fuzzed for that); if one ever did, trapping is
// what std's panic=abort would do too, without linking the message formatting.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// Errors cross to JS as `"<reason>: <message>"`; the JS API splits them into a value.
fn invalid_config(message: &str) -> String {
    String::from("invalid_config: ") + message
}

fn invalid_input(message: &str) -> String {
    String::from("invalid_input: ") + message
}

/// The JS API's words for a refused configuration (its option names, not the gateway's keys).
fn config_message(error: &ConfigError) -> &'static str {
    match error {
        ConfigError::NoSecrets => "no secrets: give at least one",
        ConfigError::EmptySecret { .. } => "a secret is empty",
        ConfigError::BadPublicKey { .. } => {
            "a whpk_ key is not a Standard Webhooks public key (whpk_ followed by the base64 of 32 bytes)"
        }
        ConfigError::PublicKeysUnavailable { .. } => "public keys (whpk_) are not verified by this build",
        ConfigError::BadStandardWebhooksSecret { .. } => {
            "a secret is not a Standard Webhooks secret (whsec_ followed by base64)"
        }
        ConfigError::JsonCompatUnsupported(_) | ConfigError::JsonCompatUnavailable => {
            "jsonCompat applies only to the payflow scheme"
        }
        ConfigError::RequireTimestampUnsupported(_) => "requireTimestamp applies only to the payflow scheme",
        ConfigError::EmptyHmacHeader => {
            "the hmac scheme needs hmac.header, the header that holds the signature"
        }
    }
}

fn sign_message(error: &SignError) -> &'static str {
    match error {
        SignError::MissingId => "standard-webhooks signs a message id: give id (it becomes webhook-id)",
        SignError::NoSigningKey => "public keys (whpk_) only verify: sign with a whsec_ secret",
        SignError::BadTimestamp => "timestamp must be whole unix seconds, 0 or more",
        SignError::OneSignatureOnly(_) => {
            "this scheme carries one signature per header: sign with one secret"
        }
    }
}

/// Whether a number (already checked to be in i64 range) has no fraction. (`f64::fract` needs std.)
fn whole(n: f64) -> bool {
    n as i64 as f64 == n
}

/// Headers as the JS wrapper passes them: names and values alternating, each ended by `\n`
/// (which neither may contain: HTTP forbids it and the wrapper refuses it). One string crosses
/// the boundary far more cheaply, in time and in glue code, than a list of strings.
struct JoinedHeaders<'a>(&'a str);

impl payflow_verify::Headers for JoinedHeaders<'_> {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        // Byte-slice `split` with a closure: `str::split_terminator` links a generic searcher
        // (~800 bytes) and slicing by positions a panic path. The trailing `\n` leaves an
        // empty last field, which has no value and ends the loop.
        let mut out = Vec::new();
        let mut fields = self.0.as_bytes().split(|&c| c == b'\n');
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if key.eq_ignore_ascii_case(name.as_bytes()) {
                out.push(value);
            }
        }
        out
    }
}

/// The scheme from its DESIGN name; the generic `hmac` scheme takes its header, prefix and
/// encoding (`hex` or `base64`).
fn scheme(name: &str, hmac_header: &str, hmac_prefix: &str, hmac_encoding: &str) -> Result<Scheme, String> {
    if name == "hmac" {
        let encoding = Encoding::from_name(hmac_encoding)
            .ok_or_else(|| invalid_config("hmac.encoding must be hex or base64"))?;
        return Ok(Scheme::Hmac(HmacScheme {
            header: hmac_header.into(),
            prefix: hmac_prefix.into(),
            encoding,
        }));
    }
    Scheme::from_name(name).ok_or_else(|| {
        invalid_config("unknown scheme: expected payflow, standard-webhooks, stripe, github, shopify or hmac")
    })
}

/// `verify`'s code for a slot that holds no verifier (the JS API only passes live ones).
const NOT_PREPARED: u32 = Reason::ALL.len() as u32 + 1;

/// The names of `verify`'s codes, one per line: the reasons, then `invalid_config` for
/// `NOT_PREPARED`. The JS API reads them once, so the names have one source.
#[wasm_bindgen]
pub fn reasons() -> String {
    let mut names = String::new();
    for reason in Reason::ALL {
        names.push_str(reason.as_str());
        names.push('\n');
    }
    names + "invalid_config\n"
}

/// What the JS API holds between calls: keyed verifiers by slot number, the secrets of the
/// configuration being built, and why the last call failed.
///
/// Slots instead of a wasm-bindgen class: a class links wasm-bindgen's shared-ownership cell,
/// borrow checks and thrown errors into every method, about a kilobyte of this module. A slot
/// number the JS side got wrong finds no verifier and fails as a value, never as a panic.
struct State {
    secrets: Vec<String>,
    not_after: Vec<Option<i64>>,
    slots: Vec<Option<Verifier>>,
    problem: String,
}

impl State {
    const EMPTY: State =
        State { secrets: Vec::new(), not_after: Vec::new(), slots: Vec::new(), problem: String::new() };

    /// Slot `number`'s place (numbers start at 1, so 0 is never a verifier).
    fn slot(&mut self, number: u32) -> Option<&mut Option<Verifier>> {
        self.slots.get_mut(number.wrapping_sub(1) as usize)
    }
}

/// Runs `f` on the module's state.
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    #[cfg(target_arch = "wasm32")]
    {
        struct Global(core::cell::UnsafeCell<State>);
        // SAFETY: wasm32-unknown-unknown without the atomics feature runs one thread per
        // instance, so the state is never shared between threads.
        unsafe impl Sync for Global {}
        static STATE: Global = Global(core::cell::UnsafeCell::new(State::EMPTY));
        // SAFETY: one thread, and `f` is never re-entered: nothing here calls into JS, so
        // no export runs while another does, and this is the only reference to the state.
        f(unsafe { &mut *STATE.0.get() })
    }
    // Native builds exist for clippy and the docs; a state per thread keeps them sound.
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread_local!(static STATE: core::cell::RefCell<State> = const { core::cell::RefCell::new(State::EMPTY) });
        STATE.with(|state| f(&mut state.borrow_mut()))
    }
}

/// Adds a secret to the configuration the next [`configure`] keys, with the last unix second
/// it is accepted at (not finite: no end). (One call per secret, so no secret needs escaping.)
#[wasm_bindgen]
pub fn add_secret(secret: &str, not_after: f64) {
    with_state(|state| {
        state.secrets.push(secret.into());
        // `as` saturates, so a date past i64's range is as good as no end.
        state.not_after.push(not_after.is_finite().then_some(not_after as i64));
    });
}

/// Keys the secrets added since the last call for one scheme: the slot number (1 or more) of
/// the verifier, or 0 (see [`problem`]) when the configuration cannot verify anything.
#[wasm_bindgen]
pub fn configure(
    scheme_name: &str,
    hmac_header: &str,
    hmac_prefix: &str,
    hmac_encoding: &str,
    tolerance_secs: f64,
    require_timestamp: bool,
) -> u32 {
    with_state(|state| {
        let secrets = core::mem::take(&mut state.secrets);
        let not_after = core::mem::take(&mut state.not_after);
        let verifier = keyed(
            scheme_name,
            hmac_header,
            hmac_prefix,
            hmac_encoding,
            (secrets, not_after),
            tolerance_secs,
            require_timestamp,
        );
        match verifier {
            Ok(verifier) => {
                // The first free slot, so a page that cycles configurations reuses its slots.
                let free = state.slots.iter().position(Option::is_none).unwrap_or(state.slots.len());
                match state.slots.get_mut(free) {
                    Some(slot) => *slot = Some(verifier),
                    None => state.slots.push(Some(verifier)),
                }
                free as u32 + 1
            }
            Err(problem) => {
                state.problem = problem;
                0
            }
        }
    })
}

fn keyed(
    scheme_name: &str,
    hmac_header: &str,
    hmac_prefix: &str,
    hmac_encoding: &str,
    (secrets, not_after): (Vec<String>, Vec<Option<i64>>),
    tolerance_secs: f64,
    require_timestamp: bool,
) -> Result<Verifier, String> {
    let scheme = scheme(scheme_name, hmac_header, hmac_prefix, hmac_encoding)?;
    // Bounded so the cast is exact; 136 years is more tolerance than anyone means.
    if !(0.0..=u32::MAX as f64).contains(&tolerance_secs) || !whole(tolerance_secs) {
        return Err(invalid_config("toleranceSecs must be whole seconds, 0 or more"));
    }
    let config = VerifierConfig {
        scheme,
        secrets,
        not_after,
        tolerance_secs: tolerance_secs as u64,
        require_timestamp,
        json_compat: false,
    };
    Verifier::new(config).map_err(|e| invalid_config(config_message(&e)))
}

/// Drops the verifier in `slot`; its number may be handed out again.
#[wasm_bindgen]
pub fn release(slot: u32) {
    with_state(|state| {
        if let Some(verifier) = state.slot(slot) {
            *verifier = None;
        }
    });
}

/// Why the last `configure` or `sign` failed: `"<reason>: <message>"`, handed over once.
#[wasm_bindgen]
pub fn problem() -> String {
    with_state(|state| core::mem::take(&mut state.problem))
}

/// 0 when a signature matches, else the code of the DESIGN reason: line `code - 1` of
/// [`reasons`]. A number crosses to JS without allocating or decoding a string, which is a
/// measurable part of a small verify.
#[wasm_bindgen]
pub fn verify(slot: u32, headers: &str, body: &[u8], now_secs: f64) -> u32 {
    with_state(|state| {
        let Some(Some(verifier)) = state.slot(slot) else {
            return NOT_PREPARED;
        };
        match verifier.verify(&JoinedHeaders(headers), body, now_secs as i64) {
            Ok(_) => 0,
            // `Reason::ALL` is in declaration order (payflow-verify tests it).
            Err(e) => e.reason() as u32 + 1,
        }
    })
}

/// The headers that sign `body` with the secrets of `slot`, joined like `verify`'s; `""` (see
/// [`problem`]) for a bad input. `id` may be empty (only standard-webhooks needs one).
#[wasm_bindgen]
pub fn sign(slot: u32, body: &[u8], timestamp: f64, id: &str, payflow_v0: bool) -> String {
    with_state(|state| {
        let signed = match state.slot(slot) {
            Some(Some(verifier)) => sign_with(verifier.signer(), body, timestamp, id, payflow_v0),
            _ => Err(invalid_config("no configuration")),
        };
        signed.unwrap_or_else(|problem| {
            state.problem = problem;
            String::new()
        })
    })
}

fn sign_with(
    signer: &Signer,
    body: &[u8],
    timestamp: f64,
    id: &str,
    payflow_v0: bool,
) -> Result<String, String> {
    if !(0.0..=1e15).contains(&timestamp) || !whole(timestamp) {
        return Err(invalid_input(sign_message(&SignError::BadTimestamp)));
    }
    let options = SignOptions {
        timestamp: timestamp as i64,
        id: Some(id),
        payflow_form: if payflow_v0 { PayFlowForm::V0 } else { PayFlowForm::V1 },
    };
    let mut joined = String::new();
    signer
        .sign_each(body, &options, |name, value| {
            for field in [name, value] {
                joined.push_str(field);
                joined.push('\n');
            }
        })
        .map_err(|e| invalid_input(sign_message(&e)))?;
    Ok(joined)
}
