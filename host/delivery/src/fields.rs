//! Reading one field of a JSON body by a dotted path (`data.customer.email`), for routes'
//! `where` filters and ordering keys. It only reads: a body that is not JSON, or lacks the
//! field, simply has no value there.

use serde_json::Value;

/// The value at `path` (object keys; an all-digit segment also indexes an array).
pub fn field<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |at, segment| match at {
        Value::Object(map) => map.get(segment.as_str()),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A body parsed once for every filter that reads it; `Null` when it is not JSON.
pub fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// A field as an ordering key: a string as it is, a number or a boolean as its JSON text.
/// Objects, arrays and `null` are no key (the event is then not ordered).
pub fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    #[test]
    fn a_dotted_path_reads_nested_objects_and_array_indexes() {
        let body = parse(br#"{"data":{"id":"pay_1","items":[{"sku":"a"},{"sku":"b"}],"n":7}}"#);
        assert_eq!(field(&body, &path("data.id")), Some(&Value::from("pay_1")));
        assert_eq!(field(&body, &path("data.items.1.sku")), Some(&Value::from("b")));
        assert_eq!(field(&body, &path("data.items.x")), None);
        assert_eq!(field(&body, &path("data.missing")), None);
        assert_eq!(field(&body, &path("data.id.deeper")), None);
        assert_eq!(field(&body, &path("data.n")).and_then(key_text).as_deref(), Some("7"));
    }

    #[test]
    fn a_body_that_is_not_json_has_no_fields() {
        assert_eq!(field(&parse(b"not json"), &path("data")), None);
        assert_eq!(key_text(&parse(br#"{"a":null}"#)["a"]), None);
        assert_eq!(key_text(&parse(br#"{"a":{}}"#)["a"]), None);
    }
}
