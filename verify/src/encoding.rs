//! Strict decoders for signatures as they appear in headers. A signature that is not exactly
//! one SHA-256 MAC in the scheme's canonical encoding is malformed, never "close enough".

use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

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
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
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
    let mut buf = [0u8; MAC_LEN + 1];
    match STANDARD.decode_slice(text, &mut buf) {
        Ok(MAC_LEN) => {
            let mut out = [0u8; MAC_LEN];
            out.copy_from_slice(&buf[..MAC_LEN]);
            Some(out)
        }
        _ => None,
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub(crate) fn to_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(crate) fn from_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
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

    #[test]
    fn unix_seconds_rejects_signs_and_overflow() {
        assert_eq!(unix_seconds(b"1700000000"), Some(1_700_000_000));
        for bad in [&b""[..], b"-1", b"+1", b" 1", b"1e9", b"9999999999999999999"] {
            assert_eq!(unix_seconds(bad), None, "{bad:?}");
        }
    }
}
