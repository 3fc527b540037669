//! Header parsers: from a scheme's headers to the signatures they claim.
//!
//! Parsers never panic and never decide validity: they only say which well-formed MACs a
//! request claims, and over which timestamp and id. Entries that are not well-formed are
//! skipped (another entry may still match); a header with no well-formed entry is malformed.

use alloc::borrow::Cow;
use alloc::vec::Vec;

use crate::encoding::{base64_mac, hex_mac, trim_ows, unix_seconds, Mac};
use crate::error::{malformed, missing, VerifyError};
use crate::headers::header_names as names;
use crate::{Encoding, Headers};

/// What a request's signature headers claim.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The signed timestamp, for timestamped forms.
    pub timestamp: Option<i64>,
    /// The bytes signed before the body: `"{id}.{t}."`, `"{t}."` or none, with the id and the
    /// timestamp's digits exactly as sent. (Copied out of the headers: a few bytes, and no
    /// borrow of a joined header value to keep alive.)
    pub prefix: Vec<u8>,
    pub macs: Vec<Mac>,
    /// Standard Webhooks' asymmetric `v1a,` signatures (Ed25519), at most
    /// [`MAX_ED25519_SIGNATURES`]. Parsed in every build, so a header's verdict (malformed or
    /// not) is the same with and without the `ed25519` feature; only checked with it.
    #[cfg_attr(not(feature = "ed25519"), allow(dead_code))]
    pub ed25519: Vec<[u8; crate::encoding::ED25519_SIGNATURE_LEN]>,
}

impl Claim {
    /// A claim of HMAC signatures only.
    fn hmac(timestamp: Option<i64>, prefix: Vec<u8>, macs: Vec<Mac>) -> Claim {
        Claim { timestamp, prefix, macs, ed25519: Vec::new() }
    }
}

/// `v1a` signatures looked at per request. Checking one costs ~90 µs against each public key
/// (bench/RESULTS.md), so a header packed with hundreds would cost a request tens of
/// milliseconds; a rotation needs two or three.
pub(crate) const MAX_ED25519_SIGNATURES: usize = 8;

/// Appends each part and a dot after it.
fn dotted(prefix: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        // With room for the dot: growing for it would reallocate.
        prefix.reserve(part.len() + 1);
        prefix.extend_from_slice(part);
        prefix.push(b'.');
    }
}

/// `item` split at the first `sep`, which neither half keeps. (Through `splitn`, whose halves
/// need no bounds check: slicing by the position would link a panic path into the web build.)
fn split_once(item: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let mut halves = item.splitn(2, |&c| c == sep);
    Some((halves.next()?, halves.next()?))
}

/// All non-empty values of a list header, joined with `sep` (HTTP's rule for repeated headers);
/// borrowed when there is one, as there almost always is.
fn list<'h>(headers: &'h (impl Headers + ?Sized), name: &str, sep: u8) -> Option<Cow<'h, [u8]>> {
    let mut joined: Option<Cow<'h, [u8]>> = None;
    for value in headers.get_all(name) {
        let value = trim_ows(value);
        if value.is_empty() {
            continue;
        }
        joined = Some(match joined {
            None => Cow::Borrowed(value),
            Some(before) => {
                let mut all = before.into_owned();
                all.push(sep);
                all.extend_from_slice(value);
                Cow::Owned(all)
            }
        });
    }
    joined
}

/// A header that must appear at most once (or repeat one identical value).
fn single<'h>(headers: &'h (impl Headers + ?Sized), name: &str) -> Result<Option<&'h [u8]>, VerifyError> {
    let mut found = None;
    for value in headers.get_all(name) {
        let value = trim_ows(value);
        if value.is_empty() {
            continue;
        }
        match found {
            Some(first) if first != value => {
                return Err(malformed("a single-valued signature header was sent with different values"))
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// Adds a well-formed MAC. (Every parser collects through this one `push` rather than its own
/// `collect` or `extend`, each of which would be a separate copy of `Vec`'s growth code.)
fn push_some(macs: &mut Vec<Mac>, mac: Option<Mac>) {
    if let Some(mac) = mac {
        macs.push(mac);
    }
}

/// The trimmed items of a list. Empty ones are not skipped here: no caller can find a signature
/// in one. (A function pointer, not a closure type, so every caller shares one copy of the
/// splitting code.)
fn split_items(value: &[u8], sep: fn(&u8) -> bool) -> impl Iterator<Item = &[u8]> {
    value.split(sep).map(trim_ows)
}

/// `X-PayFlow-Signature`: v1 `t=<unix>,v1=<hex>[,v1=<hex>…]` or v0 `<hex>[,<hex>…]`.
pub(crate) fn payflow(headers: &(impl Headers + ?Sized)) -> Result<Claim, VerifyError> {
    let value =
        list(headers, names::PAYFLOW_SIGNATURE, b',').ok_or(missing("no X-PayFlow-Signature header"))?;
    if value.contains(&b'=') {
        return timestamped_items(&value);
    }
    let mut macs = Vec::new();
    for item in split_items(&value, |&c| c == b',') {
        push_some(&mut macs, hex_mac(item));
    }
    if macs.is_empty() {
        return Err(malformed("the v0 signature is not 64 lowercase hex digits"));
    }
    Ok(Claim::hmac(None, Vec::new(), macs))
}

/// `Stripe-Signature: t=<ts>,v1=<hex>,v0=…`; only `v1` entries count.
pub(crate) fn stripe(headers: &(impl Headers + ?Sized)) -> Result<Claim, VerifyError> {
    let value = list(headers, names::STRIPE_SIGNATURE, b',').ok_or(missing("no Stripe-Signature header"))?;
    timestamped_items(&value)
}

/// The `t=…,v1=…` item list shared by PayFlow v1 and Stripe. Unknown keys (`v0`, future
/// schemes) are ignored, so a downgrade to them finds no signature.
fn timestamped_items(value: &[u8]) -> Result<Claim, VerifyError> {
    let mut timestamp = None;
    let mut prefix = Vec::new();
    let mut macs = Vec::new();
    for item in split_items(value, |&c| c == b',') {
        let Some((key, val)) = split_once(item, b'=') else { continue };
        match key {
            b"t" => {
                if timestamp.is_some() {
                    return Err(malformed("more than one t= timestamp"));
                }
                timestamp = Some(unix_seconds(val).ok_or(malformed("t= is not a unix timestamp"))?);
                dotted(&mut prefix, &[val]);
            }
            b"v1" => push_some(&mut macs, hex_mac(val)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(malformed("no t= timestamp"))?;
    if macs.is_empty() {
        return Err(malformed("no well-formed v1= signature"));
    }
    Ok(Claim::hmac(Some(timestamp), prefix, macs))
}

/// Standard Webhooks, under the `webhook-*` names or Svix's `svix-*` names (never mixed).
pub(crate) fn standard_webhooks(headers: &(impl Headers + ?Sized)) -> Result<Claim, VerifyError> {
    let family = [
        (names::WEBHOOK_SIGNATURE, names::WEBHOOK_ID, names::WEBHOOK_TIMESTAMP),
        (names::SVIX_SIGNATURE, names::SVIX_ID, names::SVIX_TIMESTAMP),
    ];
    let Some((value, id_name, ts_name)) =
        family.iter().find_map(|(sig, id, ts)| list(headers, sig, b' ').map(|v| (v, *id, *ts)))
    else {
        return Err(missing("no webhook-signature header"));
    };
    let id = single(headers, id_name)?.ok_or(malformed("no webhook-id header"))?;
    let ts_text = single(headers, ts_name)?.ok_or(malformed("no webhook-timestamp header"))?;
    let unix = unix_seconds(ts_text).ok_or(malformed("webhook-timestamp is not a unix timestamp"))?;
    let mut macs = Vec::new();
    let mut ed25519 = Vec::new();
    for entry in split_items(&value, u8::is_ascii_whitespace) {
        match split_once(entry, b',') {
            Some((b"v1", mac)) => push_some(&mut macs, base64_mac(mac)),
            Some((b"v1a", signature)) if ed25519.len() < MAX_ED25519_SIGNATURES => {
                ed25519.extend(crate::encoding::base64_ed25519_signature(signature))
            }
            _ => {}
        }
    }
    if macs.is_empty() && ed25519.is_empty() {
        return Err(malformed("no well-formed v1,<base64> or v1a,<base64> signature"));
    }
    let mut prefix = Vec::new();
    dotted(&mut prefix, &[id, ts_text]);
    Ok(Claim { timestamp: Some(unix), prefix, macs, ed25519 })
}

/// One signature in one header, after an optional prefix: GitHub, Shopify, generic `hmac`.
pub(crate) fn prefixed(
    headers: &(impl Headers + ?Sized),
    name: &str,
    prefix: &str,
    encoding: Encoding,
) -> Result<Claim, VerifyError> {
    let value = single(headers, name)?.ok_or(missing("the signature header is absent"))?;
    let encoded =
        value.strip_prefix(prefix.as_bytes()).ok_or(malformed("the signature lacks its scheme prefix"))?;
    let (mac, why) = match encoding {
        Encoding::Hex => (hex_mac(encoded), "the signature is not 64 lowercase hex digits"),
        Encoding::Base64 => (base64_mac(encoded), "the signature is not 44 characters of base64"),
    };
    let mut macs = Vec::new();
    push_some(&mut macs, mac);
    if macs.is_empty() {
        return Err(malformed(why));
    }
    Ok(Claim::hmac(None, Vec::new(), macs))
}
