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
    mac(Encoding::Hex, text, 2 * MAC_LEN)
}

/// Standard base64 with canonical padding, exactly one MAC long (44 characters).
pub(crate) fn base64_mac(text: &[u8]) -> Option<Mac> {
    mac(Encoding::Base64, text, 44)
}

fn mac(encoding: Encoding, text: &[u8], chars: usize) -> Option<Mac> {
    // Checking the length first keeps a hostile header from costing more than one small buffer.
    if text.len() != chars {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    (encoding.decode_into(text, &mut out)? == MAC_LEN).then_some(out)
}

/// Strict standard base64: padded to a multiple of 4, `=` only at the end, unused bits zero.
pub(crate) fn from_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = alloc::vec![0u8; text.len() / 4 * 3];
    let len = Encoding::Base64.decode_into(text.as_bytes(), &mut out)?;
    out.truncate(len);
    Some(out)
}

/// Base64's alphabet; hex's sixteen digits are in it too (`0`–`9` at 52, `a`–`f` at 26).
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Hex and base64 are one codec here: a character carries 4 or 6 bits of a bit stream, and
// base64 pads with `=` to a multiple of four characters. (Hand-written rather than the `base64`
// crate, and one loop each way rather than one per encoding: the web build counts bytes.)
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

    /// A character's digit value; hex takes lowercase digits only.
    fn value(self, c: u8) -> Option<u32> {
        let value = u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        });
        match self {
            Encoding::Base64 => Some(value),
            Encoding::Hex => match value {
                52..=61 => Some(value - 52),
                26..=31 => Some(value - 16),
                _ => None,
            },
        }
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

    /// Decodes `text` into `out`: the decoded length, or `None` if `text` is not canonical in
    /// this encoding (base64: a multiple of 4 characters, at most two `=` and only at the end,
    /// the bits under the padding zero) or does not fit.
    fn decode_into(self, text: &[u8], out: &mut [u8]) -> Option<usize> {
        let bits = self.bits();
        let mut digits = text;
        if self == Encoding::Base64 {
            if !text.len().is_multiple_of(4) {
                return None;
            }
            for _ in 0..2 {
                if let [rest @ .., b'='] = digits {
                    digits = rest;
                }
            }
        }
        let (mut acc, mut pending, mut len) = (0u32, 0, 0);
        for &c in digits {
            acc = acc << bits | self.value(c)?;
            pending += bits;
            if pending >= 8 {
                pending -= 8;
                *out.get_mut(len)? = (acc >> pending) as u8;
                len += 1;
            }
        }
        // Left over: less than one character's bits (a lone last character is refused), zero.
        (pending < bits && acc & ((1 << pending) - 1) == 0).then_some(len)
    }
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
