//! A small, strict JSON parser: exactly the grammar `JSON.parse` accepts (RFC 8259), borrowing
//! from its input, keeping object members in order with duplicates, and bounding nesting so no
//! input can exhaust the stack. Used by the event model and the `json_compat` mode; it never
//! re-serialises anything by itself.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Deepest nesting of arrays and objects accepted. PayFlow events nest three levels; the bound
/// exists so that a hostile body is an error, not a stack overflow (also in a 1 MiB wasm stack).
pub const MAX_DEPTH: usize = 128;

/// The problem of a text nested deeper than the parser's bound.
pub const TOO_DEEP: &str = "nested too deeply";

/// Members reserved for a non-empty object: the seed's envelope has 4, its payment data 7.
const OBJECT_MEMBERS: usize = 8;

/// A parsed JSON value, borrowing strings and numbers from the input text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written (validated against the JSON grammar).
    Number(&'a str),
    /// A string.
    String(JsonStr<'a>),
    /// An array.
    Array(Vec<Value<'a>>),
    /// An object's members in order, duplicates kept.
    Object(Vec<Member<'a>>),
}

/// One `"key": value` of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<'a> {
    /// The key.
    pub key: JsonStr<'a>,
    /// The value.
    pub value: Value<'a>,
    /// The value's exact source text.
    pub raw: &'a str,
}

/// A JSON string, as written between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

/// Where and why parsing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {problem}")]
pub struct JsonError {
    /// Byte offset into the input.
    pub offset: usize,
    /// What was wrong there.
    pub problem: &'static str,
}

/// Parses one JSON text (surrounding white space allowed, nothing else), nested at most
/// [`MAX_DEPTH`] deep.
pub fn parse(text: &str) -> Result<Value<'_>, JsonError> {
    Parser::new(text, MAX_DEPTH).document()
}

/// Parses one JSON text nested at most `max_depth` deep, which may be far beyond [`MAX_DEPTH`]
/// (`JSON.parse` has no depth limit; `usize::MAX` is none either): neither parsing nor
/// dropping the result recurses, and memory is bounded by the text's length (about 200 bytes
/// a level, which is why untrusted text should get a bound).
pub fn parse_deep(text: &str, max_depth: usize) -> Result<Deep<'_>, JsonError> {
    Parser::new(text, max_depth).document().map(Deep)
}

/// A value from [`parse_deep`]: dropped without recursion, however deep it is.
#[derive(Debug)]
pub struct Deep<'a>(Value<'a>);

impl<'a> core::ops::Deref for Deep<'a> {
    type Target = Value<'a>;

    fn deref(&self) -> &Value<'a> {
        &self.0
    }
}

impl Drop for Deep<'_> {
    fn drop(&mut self) {
        dismantle(core::mem::replace(&mut self.0, Value::Null));
    }
}

/// Drops `value` level by level from a work list: dropping a deep tree the ordinary way
/// recurses once per level and can overflow a thread's stack.
fn dismantle(value: Value<'_>) {
    let mut pending = alloc::vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(members) => pending.extend(members.into_iter().map(|m| m.value)),
            _ => {}
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

/// A container being parsed: its items so far, or its members so far and the key (with the
/// start of its value) whose value is being parsed.
enum Open<'a> {
    Array(Vec<Value<'a>>),
    Object { members: Vec<Member<'a>>, key: JsonStr<'a>, start: usize },
}

/// The containers open while parsing; dropped without recursion (see [`dismantle`]) when
/// parsing stops at an error.
struct Stack<'a>(Vec<Open<'a>>);

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        for open in self.0.drain(..) {
            match open {
                Open::Array(items) => dismantle(Value::Array(items)),
                Open::Object { members, .. } => dismantle(Value::Object(members)),
            }
        }
    }
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, max_depth: usize) -> Self {
        Parser { text, bytes: text.as_bytes(), pos: 0, max_depth }
    }

    fn document(&mut self) -> Result<Value<'a>, JsonError> {
        self.skip_ws();
        let value = self.value()?;
        self.skip_ws();
        if self.pos != self.bytes.len() {
            return Err(self.error("unexpected text after the JSON value"));
        }
        Ok(value)
    }

    fn error(&self, problem: &'static str) -> JsonError {
        JsonError { offset: self.pos, problem }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, problem: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(problem))
        }
    }

    /// One value, with an explicit stack of open containers instead of recursion, so that no
    /// input can exhaust the thread's stack (also in a plugin's 64 KiB wasm stack).
    fn value(&mut self) -> Result<Value<'a>, JsonError> {
        let mut stack = Stack(Vec::new());
        loop {
            // A value starts here (white space already skipped).
            let mut value = match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    if stack.0.len() == self.max_depth {
                        return Err(self.error(TOO_DEEP));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    match (open, self.peek()) {
                        (b'{', Some(b'}')) => {
                            self.pos += 1;
                            Value::Object(Vec::new())
                        }
                        (b'[', Some(b']')) => {
                            self.pos += 1;
                            Value::Array(Vec::new())
                        }
                        (b'{', _) => {
                            let (key, start) = self.key()?;
                            // Room for a typical object's members at once instead of growing
                            // 1, 2, 4, 8: three reallocations and copies less per object (an
                            // event parses ~6% faster natively).
                            let members = Vec::with_capacity(OBJECT_MEMBERS);
                            stack.0.push(Open::Object { members, key, start });
                            continue;
                        }
                        _ => {
                            stack.0.push(Open::Array(Vec::new()));
                            continue;
                        }
                    }
                }
                Some(b'"') => Value::String(self.string()?),
                Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
                Some(b't') => self.literal("true", Value::Bool(true))?,
                Some(b'f') => self.literal("false", Value::Bool(false))?,
                Some(b'n') => self.literal("null", Value::Null)?,
                Some(_) => return Err(self.error("expected a JSON value")),
                None => return Err(self.error("unexpected end of input")),
            };
            // The value is complete: add it to the open container, closing every container it
            // completes, until one expects another value.
            loop {
                let end = self.pos;
                self.skip_ws();
                let next = self.peek();
                let closed = match stack.0.last_mut() {
                    None => return Ok(value),
                    Some(Open::Array(items)) => {
                        items.push(value);
                        match next {
                            Some(b',') => None,
                            Some(b']') => Some(b']'),
                            _ => return Err(self.error("expected ',' or ']' in an array")),
                        }
                    }
                    Some(Open::Object { members, key, start }) => {
                        members.push(Member { key: *key, value, raw: &self.text[*start..end] });
                        match next {
                            Some(b',') => {
                                self.pos += 1;
                                let (next_key, next_start) = self.key()?;
                                (*key, *start) = (next_key, next_start);
                                break;
                            }
                            Some(b'}') => Some(b'}'),
                            _ => return Err(self.error("expected ',' or '}' in an object")),
                        }
                    }
                };
                self.pos += 1; // the ',' or the closing bracket
                if closed.is_none() {
                    break;
                }
                value = match stack.0.pop() {
                    Some(Open::Array(items)) => Value::Array(items),
                    Some(Open::Object { members, .. }) => Value::Object(members),
                    None => unreachable!("a container was open"),
                };
            }
            self.skip_ws();
        }
    }

    /// A member's key and the colon after it; returns the key and where its value starts.
    fn key(&mut self) -> Result<(JsonStr<'a>, usize), JsonError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.string()?;
        self.skip_ws();
        self.expect(b':', "expected ':' after a key")?;
        self.skip_ws();
        Ok((key, self.pos))
    }

    fn literal(&mut self, word: &'static str, value: Value<'a>) -> Result<Value<'a>, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn string(&mut self) -> Result<JsonStr<'a>, JsonError> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
                        Some(b'u') => {
                            self.pos += 1;
                            let digits = self.bytes.get(self.pos..self.pos + 4);
                            if !digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("\\u must be followed by four hex digits"));
                            }
                            self.pos += 4;
                        }
                        _ => return Err(self.error("invalid escape in string")),
                    }
                }
                Some(0x00..=0x1f) => return Err(self.error("control character in string")),
                Some(_) => self.pos += 1,
            }
        }
        let raw = &self.text[start..self.pos];
        self.pos += 1; // the closing quote
        Ok(JsonStr { raw, escaped })
    }

    fn number(&mut self) -> Result<&'a str, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.require_digits()?;
        }
        Ok(&self.text[start..self.pos])
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> Result<(), JsonError> {
        let before = self.pos;
        self.digits();
        if self.pos == before {
            return Err(self.error("expected a digit"));
        }
        Ok(())
    }
}

impl<'a> JsonStr<'a> {
    /// The text between the quotes, escapes intact.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The string's value. A lone UTF-16 surrogate (`"\ud800"`), which Rust strings cannot hold,
    /// becomes U+FFFD.
    pub fn to_str(&self) -> Cow<'a, str> {
        self.decoded(|_, out| out.extend_from_slice("\u{FFFD}".as_bytes()))
    }

    /// The string's value, where a lone UTF-16 surrogate is kept as its escape (`\ud800`,
    /// lower-case hex) instead of U+FFFD: strings that differ only in a lone surrogate stay
    /// different (event ids must). Such a string equals the one that spells the escape out
    /// (`"\\ud800"`); no Rust string can tell them apart, and a sender must choose to send both.
    pub fn to_exact_str(&self) -> Cow<'a, str> {
        self.decoded(|unit, out| out.extend_from_slice(alloc::format!("\\u{unit:04x}").as_bytes()))
    }

    /// The string's value, with `lone` writing each lone surrogate as UTF-8.
    fn decoded(&self, lone: impl Fn(u16, &mut Vec<u8>)) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        // `decode` emits UTF-8 wherever `lone` does: the lossy conversion changes nothing.
        Cow::Owned(String::from_utf8_lossy(&decode(self.raw, lone)).into_owned())
    }

    /// The string's value as WTF-8: UTF-8, where a lone surrogate is kept as its 3-byte
    /// generalised UTF-8 form, so that two JSON strings are equal iff these bytes are.
    pub fn to_wtf8(&self) -> Cow<'a, [u8]> {
        if !self.escaped {
            return Cow::Borrowed(self.raw.as_bytes());
        }
        Cow::Owned(decode(self.raw, |unit, out| push_code_point(u32::from(unit), out)))
    }

    /// Whether the value equals `text`.
    pub fn eq_str(&self, text: &str) -> bool {
        if self.escaped {
            self.to_wtf8() == text.as_bytes()
        } else {
            self.raw == text
        }
    }
}

/// Decodes a validated string body; `lone` writes a surrogate that has no partner.
fn decode(raw: &str, lone: impl Fn(u16, &mut Vec<u8>)) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let escape = b.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let simple = match escape {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => 0,
            other => other, // '"', '\\', '/'
        };
        if escape != b'u' {
            out.push(simple);
            continue;
        }
        let unit = hex4(b, i);
        i += 4;
        if (0xD800..0xDC00).contains(&unit) && b.get(i..i + 2) == Some(b"\\u") {
            let low = hex4(b, i + 2);
            if (0xDC00..0xE000).contains(&low) {
                let cp = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                push_code_point(cp, &mut out);
                i += 6;
                continue;
            }
        }
        if (0xD800..0xE000).contains(&unit) {
            lone(unit, &mut out);
        } else {
            push_code_point(u32::from(unit), &mut out);
        }
    }
    out
}

fn hex4(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 4).map_or(0, |digits| {
        digits
            .iter()
            .fold(0u16, |acc, &c| (acc << 4) | u16::from((c as char).to_digit(16).unwrap_or(0) as u8))
    })
}

/// UTF-8 encoding, extended to surrogate code points (generalised UTF-8).
fn push_code_point(cp: u32, out: &mut Vec<u8>) {
    match cp {
        0..=0x7f => out.push(cp as u8),
        0x80..=0x7ff => out.extend([0xc0 | (cp >> 6) as u8, 0x80 | (cp & 0x3f) as u8]),
        0x800..=0xffff => {
            out.extend([0xe0 | (cp >> 12) as u8, 0x80 | ((cp >> 6) & 0x3f) as u8, 0x80 | (cp & 0x3f) as u8])
        }
        _ => out.extend([
            0xf0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3f) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]),
    }
}

impl<'a> Value<'a> {
    /// An object's member named `key`; with duplicates, the last one (as `JSON.parse` does).
    pub fn get(&self, key: &str) -> Option<&Member<'a>> {
        match self {
            Value::Object(members) => members.iter().rev().find(|m| m.key.eq_str(key)),
            _ => None,
        }
    }

    /// The JSON type's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_json_grammar() {
        for ok in [
            "0",
            "-0",
            "1.5e+10",
            "1E-2",
            "\"\\u00e9\\/\"",
            "[]",
            "{}",
            " {\"a\" : [1, {\"b\":null}]} ",
            "true",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_json_parse_rejects() {
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "'a'",
            "\"\t\"",
            "\"\\x\"",
            "\"\\u12\"",
            "NaN",
            "[1] x",
            "{a:1}",
            "\u{feff}{}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&deep).is_ok());
        let too_deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&too_deep).unwrap_err().problem, "nested too deeply");
        // Never a stack overflow, however deep.
        assert!(parse(&"[".repeat(1_000_000)).is_err());
    }

    /// Regression (issue 16, item 15): past 128 levels a body was refused, though `JSON.parse`
    /// takes any depth. Deep parsing and dropping recurse at no depth: a million levels
    /// would overflow any thread's stack if either did.
    #[test]
    fn deep_parsing_takes_any_depth_without_recursion() {
        let deep = "[{\"a\":".repeat(500_000) + "1" + &"}]".repeat(500_000);
        let value = parse_deep(&deep, usize::MAX).unwrap();
        let Value::Array(items) = &*value else { panic!("{}", value.kind()) };
        assert_eq!(items[0].get("a").unwrap().raw.len(), deep.len() - 8);
        drop(value);
        // An error deep inside drops what was built so far without recursion too.
        let broken = "[".repeat(1_000_000) + &"[1]".repeat(3) + "x";
        assert_eq!(parse_deep(&broken, usize::MAX).unwrap_err().problem, "expected ',' or ']' in an array");
        assert_eq!(parse(&deep).unwrap_err().problem, "nested too deeply");
    }

    /// The iterative parser keeps each member's exact source text and its order, duplicates
    /// included, at every level.
    #[test]
    fn members_keep_their_source_text_and_order() {
        let v = parse(r#" { "a" : [ 1 , {"b" : "x" } ] , "a":{ } ,"c":[]} "#).unwrap();
        let Value::Object(members) = &v else { panic!() };
        let raws: Vec<&str> = members.iter().map(|m| m.raw).collect();
        assert_eq!(raws, ["[ 1 , {\"b\" : \"x\" } ]", "{ }", "[]"]);
        assert_eq!(v.get("a").unwrap().raw, "{ }");
        let Value::Array(items) = &members[0].value else { panic!() };
        assert_eq!(items[1].get("b").unwrap().raw, "\"x\"");
    }

    #[test]
    fn strings_decode_escapes_and_surrogates() {
        let Value::String(s) = parse(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\ud800x""#).unwrap() else {
            panic!()
        };
        assert_eq!(s.to_str(), "a\"\\/\u{8}\u{c}\n\r\té😀\u{FFFD}x");
        assert_eq!(&s.to_wtf8()[..], &b"a\"\\/\x08\x0c\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xed\xa0\x80x"[..]);
    }

    #[test]
    fn get_takes_the_last_duplicate_and_decodes_keys() {
        let v = parse(r#"{"id":"a","i\u0064":"b","x":1}"#).unwrap();
        assert_eq!(v.get("id").unwrap().raw, "\"b\"");
        assert!(v.get("nope").is_none());
    }
}
