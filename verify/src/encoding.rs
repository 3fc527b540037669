//! Strict decoders for signatures as they appear in headers. A signature that is not exactly
//! one SHA-256 MAC in the scheme's canonical encoding is malformed, never "close enough".

use alloc::string::String;
use alloc::vec::Vec;

/// Length of an HMAC-SHA256 tag.
pub(crate) const MAC_LEN: usize = 32;
pub(crate) type Mac = [u8; MAC_LEN];

/// Exactly 64 lowercase hex digits.
pub(crate) fn hex_mac(text: &[u8]) -> Option<Mac> {
    if text.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    // One table lookup per digit and a single validity check at the end: this runs on every
    // request, and the signature is public, so branching on its content leaks nothing.
    let mut invalid = 0u8;
    // Pairs as arrays: indexing a slice would link a panic path into the web build.
    let pairs = text.chunks_exact(2).filter_map(|pair| <&[u8; 2]>::try_from(pair).ok());
    for (byte, pair) in out.iter_mut().zip(pairs) {
        let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        invalid |= (hi | lo) & 0x80;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    (invalid == 0).then_some(out)
}

/// Lowercase hex digit values; 0x80 marks every other byte.
const HEX: [u8; 256] = {
    let mut table = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Standard base64 with canonical padding, exactly one MAC long (44 characters).
pub(crate) fn base64_mac(text: &[u8]) -> Option<Mac> {
    // Checking the length first keeps a hostile header from costing more than one small buffer.
    if text.len() != 44 {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    (decode_base64_into(text, &mut out)? == MAC_LEN).then_some(out)
}

impl crate::Encoding {
    /// Appends `bytes` in this encoding.
    pub(crate) fn append(self, out: &mut String, bytes: &[u8]) {
        match self {
            crate::Encoding::Hex => push_hex(out, bytes),
            crate::Encoding::Base64 => push_base64(out, bytes),
        }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding. (Hand-written rather than the `base64` crate: the web build
/// counts bytes, and this is all the codec any scheme needs.)
fn push_base64(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { BASE64[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
}

/// Strict standard base64: padded to a multiple of 4, `=` only at the end, unused bits zero.
pub(crate) fn from_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = alloc::vec![0u8; text.len() / 4 * 3];
    let len = decode_base64_into(text.as_bytes(), &mut out)?;
    out.truncate(len);
    Some(out)
}

/// Decodes strict standard base64 into `out`; the decoded length, or `None` if `text` is not
/// canonical base64 or does not fit.
fn decode_base64_into(text: &[u8], out: &mut [u8]) -> Option<usize> {
    if text.len() % 4 != 0 {
        return None;
    }
    let quads = text.len() / 4;
    let mut len = 0;
    for (q, quad) in text.chunks_exact(4).enumerate() {
        let pad = match quad {
            [.., b'=', b'='] if q + 1 == quads => 2,
            [.., b'='] if q + 1 == quads => 1,
            _ => 0,
        };
        // Iterators and `get`, not slicing by `pad`: slicing links a panic path (and its
        // message) into the web build.
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            n = n << 6 | if i < 4 - pad { u32::from(base64_value(c)?) } else { 0 };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Canonical: the bits under the padding must be zero.
        if bytes.iter().skip(3 - pad).any(|&b| b != 0) {
            return None;
        }
        for &b in bytes.iter().take(3 - pad) {
            *out.get_mut(len)? = b;
            len += 1;
        }
    }
    Some(len)
}

fn base64_value(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

/// Strips the optional white space (space, tab) HTTP allows around a header value or list item.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `n` in decimal. (`to_string` would link `core::fmt`'s integer formatting, a few KB of the
/// web build, for the one number any scheme writes: a timestamp.)
pub(crate) fn decimal(mut n: u64) -> String {
    // Least significant first; u64 has at most 20 digits (`% 20` says so to the compiler,
    // which would otherwise link a bounds-check panic into the web build).
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len % 20] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.iter().take(len).rev().map(|&d| char::from(d)).collect()
}

/// A unix timestamp in seconds: 1 to 18 ASCII digits, nothing else.
pub(crate) fn unix_seconds(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for &c in text {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_base64(bytes: &[u8]) -> String {
        let mut out = String::new();
        push_base64(&mut out, bytes);
        out
    }

    #[test]
    fn hex_is_strict() {
        let good = "00ff".repeat(16);
        assert_eq!(hex_mac(good.as_bytes()).unwrap()[1], 0xff);
        assert!(hex_mac(good.to_uppercase().as_bytes()).is_none());
        assert!(hex_mac(&good.as_bytes()[..63]).is_none());
        assert!(hex_mac(b"").is_none());
        assert!(hex_mac("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn base64_is_strict() {
        let good = to_base64(&[7u8; 32]);
        assert_eq!(base64_mac(good.as_bytes()), Some([7u8; 32]));
        assert!(base64_mac(good.trim_end_matches('=').as_bytes()).is_none());
        assert!(base64_mac(to_base64(&[7u8; 31]).as_bytes()).is_none());
        assert!(base64_mac(b"").is_none());
    }

    // The `base64` crate (strict STANDARD engine) is the independent reference.
    proptest::proptest! {
        #[test]
        fn base64_encoding_matches_the_base64_crate(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            use base64::Engine as _;
            proptest::prop_assert_eq!(to_base64(&bytes), base64::engine::general_purpose::STANDARD.encode(&bytes));
        }

        #[test]
        fn base64_decoding_matches_the_base64_crate(text in "[A-Za-z0-9+/=]{0,12}|[A-Za-z0-9+/]{0,60}={0,3}|.{0,8}") {
            use base64::Engine as _;
            let reference = base64::engine::general_purpose::STANDARD.decode(&text).ok();
            proptest::prop_assert_eq!(from_base64(&text), reference, "{:?}", text);
        }
    }

    #[test]
    fn base64_decoding_refuses_non_canonical_forms() {
        for bad in ["QQ", "QQ=", "QR==", "Q===", "====", "QQ==QQ==", "QUJD\n", "QUJ=D", " QUJD"] {
            assert_eq!(from_base64(bad), None, "{bad:?}");
        }
        assert_eq!(from_base64("QQ==").as_deref(), Some(&b"A"[..]));
        assert_eq!(from_base64("").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn decimal_matches_display() {
        for n in [0, 7, 10, 99, 1_700_000_000, u64::MAX] {
            assert_eq!(decimal(n), std::format!("{n}"));
        }
    }

    #[test]
    fn unix_seconds_rejects_signs_and_overflow() {
        assert_eq!(unix_seconds(b"1700000000"), Some(1_700_000_000));
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1e9", b"9999999999999999999"] {
            assert_eq!(unix_seconds(bad), None, "{bad:?}");
        }
    }
}
