//! Rewrites each event as an `application/x-www-form-urlencoded` body, the way an old PHP app
//! reads `$_POST`: `event_id`, `event_type`, `created_at`, then every scalar field of `data`
//! (nested objects flattened as `data[customer][email]`, PHP's own convention).

use payflow_plugin::{export_plugin, model, Event, Outcome, Plugin};

struct LegacyForm;

/// Percent-encoding of a form value (RFC 1866 / WHATWG `application/x-www-form-urlencoded`).
fn encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(byte as char),
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(byte >> 4) as usize] as char);
                out.push(HEX[(byte & 15) as usize] as char);
            }
        }
    }
}

fn field(name: &str, value: &str, out: &mut String) {
    if !out.is_empty() {
        out.push('&');
    }
    encode(name, out);
    out.push('=');
    encode(value, out);
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}[{k}]"), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        serde_json::Value::String(s) => field(prefix, s, out),
        serde_json::Value::Null => field(prefix, "", out),
        other => field(prefix, &other.to_string(), out),
    }
}

impl Plugin for LegacyForm {
    fn handle(event: Event) -> Result<Outcome, String> {
        let json: serde_json::Value =
            serde_json::from_slice(&event.body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let mut form = String::new();
        field("event_id", &event.id, &mut form);
        field("event_type", &event.event_type, &mut form);
        if let Some(envelope) = model(&event) {
            field("created_at", &envelope.created_at, &mut form);
        }
        if let Some(data) = json.get("data") {
            flatten("data", data, &mut form);
        }
        Ok(Outcome::proceed()
            .with_body(form)
            .with_header("Content-Type", "application/x-www-form-urlencoded"))
    }
}

export_plugin!(LegacyForm);
