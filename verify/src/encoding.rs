//! Strict decoders for signatures as they appear in headers. A signature that is not exactly
//! one SHA-256 MAC in the scheme's canonical encoding is malformed, never "close enough".

use alloc::string::String;
use alloc::vec::Vec;

use crate::Encoding;

/// Length of an HMAC-SHA256 tag.
pub(crate) const MAC_LEN: usize = 32;
pub(crate) type Mac = [u8; MAC_LEN];

/// Exactly 64 lowercase hex digits.
pub(crate) fn hex_mac(text: &[u8]) -> Option<Mac> {
    if text.len() != 2 * MAC_LEN {
        return None;
    }
    // Two digits a byte, checked through the table: hex MACs are most schemes', and every
    // request has one. One validity check at the end: the signature is public, so deciding late
    // leaks nothing.
    let mut out = [0u8; MAC_LEN];
    let mut valid = HEX_DIGIT;
    // Pairs as arrays: indexing a slice would link a panic path into the web build.
    let pairs = text.chunks_exact(2).filter_map(|pair| <&[u8; 2]>::try_from(pair).ok());
    for (byte, &[hi, lo]) in out.iter_mut().zip(pairs) {
        valid &= DIGITS[usize::from(hi)] & DIGITS[usize::from(lo)];
        *byte = hex_value(hi) << 4 | hex_value(lo);
    }
    (valid != 0).then_some(out)
}

/// Length of an Ed25519 signature.
pub(crate) const ED25519_SIGNATURE_LEN: usize = 64;

/// Standard base64 with canonical padding, exactly one Ed25519 signature long (88 characters).
pub(crate) fn base64_ed25519_signature(text: &[u8]) -> Option<[u8; ED25519_SIGNATURE_LEN]> {
    if text.len() != 88 {
        return None;
    }
    let mut out = [0u8; ED25519_SIGNATURE_LEN];
    (decode_base64_into(text, &mut out)? == ED25519_SIGNATURE_LEN).then_some(out)
}

/// Standard base64 with canonical padding, exactly one MAC long (44 characters).
pub(crate) fn base64_mac(text: &[u8]) -> Option<Mac> {
    // Checking the length first keeps a hostile header from costing more than one small buffer.
    if text.len() != 44 {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    (decode_base64_into(text, &mut out)? == MAC_LEN).then_some(out)
}

/// Strict standard base64: padded to a multiple of 4, `=` only at the end, unused bits zero.
pub(crate) fn from_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = alloc::vec![0u8; text.len() / 4 * 3];
    let len = decode_base64_into(text.as_bytes(), &mut out)?;
    out.truncate(len);
    Some(out)
}

/// Base64's alphabet; hex's sixteen digits are in it too (`0`–`9` at 52, `a`–`f` at 26).
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const BASE64_DIGIT: u8 = 0x40;
const HEX_DIGIT: u8 = 0x80;

/// Per byte: its base64 value in the low six bits, [`BASE64_DIGIT`] if it is one, and
/// [`HEX_DIGIT`] if it is a lowercase hex digit.
const DIGITS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 64 {
        let c = BASE64[i] as usize;
        table[c] = i as u8 | BASE64_DIGIT;
        if matches!(BASE64[i], b'0'..=b'9' | b'a'..=b'f') {
            table[c] |= HEX_DIGIT;
        }
        i += 1;
    }
    table
};

// Hex and base64 are one encoder here: a character carries 4 or 6 bits of a bit stream, and
// base64 pads with `=` to a multiple of four characters. (Hand-written rather than the `base64`
// crate, and one loop for both: the web build counts bytes. Decoding runs on every request, so
// each encoding has its own, sharing the table.)
impl Encoding {
    fn bits(self) -> u32 {
        match self {
            Encoding::Hex => 4,
            Encoding::Base64 => 6,
        }
    }

    /// The character for a digit value (below `1 << bits`).
    fn char(self, value: u32) -> char {
        let index = match self {
            Encoding::Hex if value < 10 => value + 52,
            Encoding::Hex => value + 16,
            Encoding::Base64 => value,
        };
        char::from(BASE64[index as usize & 63])
    }

    /// Appends `bytes` in this encoding.
    pub(crate) fn append(self, out: &mut String, bytes: &[u8]) {
        let bits = self.bits();
        let start = out.len();
        // `acc` keeps the bits not yet written in its low `pending` bits.
        let (mut acc, mut pending) = (0u32, 0);
        for &b in bytes {
            acc = acc << 8 | u32::from(b);
            pending += 8;
            while pending >= bits {
                pending -= bits;
                out.push(self.char(acc >> pending & ((1 << bits) - 1)));
            }
        }
        if pending > 0 {
            out.push(self.char(acc << (bits - pending) & ((1 << bits) - 1)));
        }
        while self == Encoding::Base64 && !(out.len() - start).is_multiple_of(4) {
            out.push('=');
        }
    }
}

/// A hex digit's value by arithmetic (`0`–`9`, `a`–`f`); other characters give garbage and are
/// caught by their [`DIGITS`] flag.
fn hex_value(c: u8) -> u8 {
    (c & 0x0f).wrapping_add(9 * (c >> 6))
}

/// Decodes strict standard base64 into `out`: the decoded length, or `None` if `text` is not
/// canonical (a multiple of 4 characters, at most two `=` and only at the end, the bits under
/// the padding zero) or does not fit.
fn decode_base64_into(text: &[u8], out: &mut [u8]) -> Option<usize> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut digits = text;
    for _ in 0..2 {
        if let [rest @ .., b'='] = digits {
            digits = rest;
        }
    }
    // `acc` keeps the bits not yet written in its low `pending` bits.
    let (mut acc, mut pending, mut len, mut valid) = (0u32, 0, 0, BASE64_DIGIT);
    for &c in digits {
        let entry = DIGITS[usize::from(c)];
        valid &= entry;
        acc = acc << 6 | u32::from(entry & 0x3f);
        pending += 6;
        if pending >= 8 {
            pending -= 8;
            *out.get_mut(len)? = (acc >> pending) as u8;
            len += 1;
        }
    }
    // Left over: less than one character's bits (a lone last character is refused), all zero.
    (valid != 0 && pending < 6 && acc & ((1 << pending) - 1) == 0).then_some(len)
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
        Encoding::Base64.append(&mut out, bytes);
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

    // Hex against `format!` and `u8::from_str_radix` (lowercase only, as the schemes send it).
    proptest::proptest! {
        #[test]
        fn hex_encoding_matches_format(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let mut out = String::new();
            Encoding::Hex.append(&mut out, &bytes);
            let reference: String = bytes.iter().map(|b| std::format!("{b:02x}")).collect();
            proptest::prop_assert_eq!(out, reference);
        }

        #[test]
        fn hex_decoding_matches_from_str_radix(text in "[0-9a-f]{64}|[0-9a-fA-Fg+/= ]{64}") {
            let reference = text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')).then(|| {
                let bytes: Vec<u8> =
                    (0..64).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect();
                <[u8; 32]>::try_from(bytes).unwrap()
            });
            proptest::prop_assert_eq!(hex_mac(text.as_bytes()), reference);
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
