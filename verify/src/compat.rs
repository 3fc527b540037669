//! The seed's signing input, reproduced byte for byte: `JSON.stringify(JSON.parse(body))` as
//! Node computes it over the body that `express.json()` decoded.
//!
//! Only the opt-in `json_compat` mode uses this; normal verification never re-serialises.
//! What Node does, and so what this does:
//! - the body is decoded as UTF-8 with U+FFFD for invalid bytes, and a leading BOM is dropped;
//! - objects keep their first-insertion key order, except that array-index keys ("0" to
//!   "4294967294") come first in ascending numeric order; a duplicate key keeps its first
//!   position and takes its last value;
//! - numbers are IEEE doubles printed by ECMAScript's Number::toString (`1e+21`, `1e-7`, `-0`
//!   prints `0`, `1e400` is `Infinity` which JSON prints as `null`);
//! - strings escape `"` `\` and controls (`\b \f \n \r \t`, else `\u00xx`) and lone surrogates
//!   (`\udxxx`), all lower-case hex, and nothing else (`/`, U+2028 and non-ASCII stay raw).

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use crate::json::{self, Member, Value};

/// Deepest nesting tried in compat mode. Node 20's `JSON.stringify` throws ("Maximum call
/// stack size exceeded") between 4,096 and 6,000 levels, so nothing deeper can carry a seed
/// signature; the bound keeps what an unsigned body can cost (about 200 bytes a level) small.
pub const COMPAT_MAX_DEPTH: usize = 8192;

/// `JSON.stringify(JSON.parse(body))` as UTF-8 bytes, or `None` where `JSON.parse` throws (or
/// the body nests deeper than `COMPAT_MAX_DEPTH`). Nothing here recurses.
pub fn js_canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(body);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let value = json::parse_deep(text, COMPAT_MAX_DEPTH).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write_value(&value, &mut out);
    Some(out)
}

/// What is left to write, last first.
enum Pending<'v, 'a> {
    Value(&'v Value<'a>),
    Key(Cow<'a, [u8]>),
    Byte(u8),
}

fn write_value(value: &Value<'_>, out: &mut Vec<u8>) {
    let mut pending = alloc::vec![Pending::Value(value)];
    while let Some(next) = pending.pop() {
        let value = match next {
            Pending::Byte(b) => {
                out.push(b);
                continue;
            }
            Pending::Key(key) => {
                write_string(&key, out);
                out.push(b':');
                continue;
            }
            Pending::Value(value) => value,
        };
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(raw) => write_number(raw.parse::<f64>().unwrap_or(f64::NAN), out),
            Value::String(s) => write_string(&s.to_wtf8(), out),
            Value::Array(items) => {
                out.push(b'[');
                pending.push(Pending::Byte(b']'));
                for (i, item) in items.iter().enumerate().rev() {
                    pending.push(Pending::Value(item));
                    if i > 0 {
                        pending.push(Pending::Byte(b','));
                    }
                }
            }
            Value::Object(members) => {
                out.push(b'{');
                pending.push(Pending::Byte(b'}'));
                for (i, (key, value)) in js_property_order(members).into_iter().enumerate().rev() {
                    pending.push(Pending::Value(value));
                    pending.push(Pending::Key(key));
                    if i > 0 {
                        pending.push(Pending::Byte(b','));
                    }
                }
            }
        }
    }
}

/// The own-property order of the object `JSON.parse` builds from these members.
fn js_property_order<'v, 'a>(members: &'v [Member<'a>]) -> Vec<(Cow<'a, [u8]>, &'v Value<'a>)> {
    let mut slots: Vec<(Cow<'a, [u8]>, &'v Value<'a>)> = Vec::with_capacity(members.len());
    // A map, not a scan: a body with 100k keys must not cost 10^10 comparisons.
    let mut seen: BTreeMap<Cow<'a, [u8]>, usize> = BTreeMap::new();
    for member in members {
        let key = member.key.to_wtf8();
        match seen.get(&key) {
            Some(&slot) => slots[slot].1 = &member.value,
            None => {
                seen.insert(key.clone(), slots.len());
                slots.push((key, &member.value));
            }
        }
    }
    let (mut indices, named): (Vec<_>, Vec<_>) =
        slots.into_iter().partition(|(k, _)| array_index(k).is_some());
    indices.sort_by_key(|(k, _)| array_index(k));
    indices.extend(named);
    indices
}

/// ECMAScript's array index: a canonical decimal integer below 2^32 - 1.
fn array_index(key: &[u8]) -> Option<u32> {
    if key.is_empty()
        || key.len() > 10
        || !key.iter().all(u8::is_ascii_digit)
        || (key[0] == b'0' && key.len() > 1)
    {
        return None;
    }
    let value = key.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    u32::try_from(value).ok().filter(|&v| v != u32::MAX)
}

/// JSON.stringify's QuoteJSONString over a WTF-8 string.
fn write_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => push_escape(u32::from(b), out),
            // A generalised-UTF-8 surrogate (ED A0..BF xx) is a lone surrogate: escape it.
            0xed if s.get(i + 1).is_some_and(|&n| n >= 0xa0) && i + 2 < s.len() => {
                let unit = (u32::from(b & 0x0f) << 12)
                    | (u32::from(s[i + 1] & 0x3f) << 6)
                    | u32::from(s[i + 2] & 0x3f);
                push_escape(unit, out);
                i += 3;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out.push(b'"');
}

fn push_escape(unit: u32, out: &mut Vec<u8>) {
    let mut text = String::with_capacity(6);
    let _ = write!(text, "\\u{unit:04x}");
    out.extend_from_slice(text.as_bytes());
}

/// ECMAScript Number::toString(10), with JSON's `null` for non-finite values.
fn write_number(value: f64, out: &mut Vec<u8>) {
    let text = js_number(value);
    out.extend_from_slice(text.as_bytes());
}

/// ECMAScript Number::toString(10) for a finite double; `null` for NaN and infinities.
pub(crate) fn js_number(value: f64) -> String {
    if !value.is_finite() {
        return "null".into();
    }
    // Rust's own `{}`/`{:e}` also give shortest digits, but break exact ties upwards where
    // ECMAScript takes the even digit (25277970521710.8125 prints …710.812 in Node).
    ryu_js::Buffer::new().format_finite(value).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(js_canonical_json(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the tie case is written as its exact binary value
    fn numbers_print_as_ecmascript_does() {
        // Expected strings are ECMAScript's (checked in Node); the corpus test covers many more.
        for (input, js) in [
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-7, "1e-7"),
            (1.5e-6, "0.0000015"),
            (-0.0, "0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-2.5, "-2.5"),
            (25277970521710.8125, "25277970521710.812"), // an exact tie: the even digit
            (f64::INFINITY, "null"),
        ] {
            assert_eq!(js_number(input), js, "{input}");
        }
    }

    #[test]
    fn objects_reorder_like_v8() {
        assert_eq!(canon(r#"{"b":1,"2":0,"a":2,"1":0,"b":3,"01":4}"#), r#"{"1":0,"2":0,"b":3,"a":2,"01":4}"#);
        assert_eq!(canon(r#"{"4294967295":1,"4294967294":2}"#), r#"{"4294967294":2,"4294967295":1}"#);
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        // Expected output printed by Node 20 for the same input.
        assert_eq!(
            canon(r#"["\u0001\/\u2028é\ud800x\uDC00\ud83d\ude00\ud800\uDC00"]"#),
            "[\"\\u0001/\u{2028}é\\ud800x\\udc00😀𐀀\"]"
        );
        assert_eq!(canon("\u{feff} [1 , 2.50]"), "[1,2.5]");
    }

    #[test]
    fn invalid_json_has_no_canonical_form() {
        assert_eq!(js_canonical_json(b"{\"a\":"), None);
        assert_eq!(js_canonical_json(b""), None);
    }
}
