//! Sample events of each seed type, as PayFlow's "Send Test Webhook" would send them. Used by
//! `sign`/`send`/`demo` and the admin API's test webhook; never by the request path.

use payflow_verify::event::{CUSTOMER_CREATED, PAYMENT_CANCELLED, PAYMENT_FAILED, PAYMENT_SUCCEEDED};
use serde_json::{json, Value};

/// The event types a sample exists for.
pub const SAMPLE_TYPES: [&str; 4] = [PAYMENT_SUCCEEDED, PAYMENT_FAILED, PAYMENT_CANCELLED, CUSTOMER_CREATED];

/// A sample event of `event_type` with the given id and `created_at` (unix seconds), shaped
/// exactly like the seed's payload. Unknown types get an empty `data` object.
pub fn sample_event(event_type: &str, id: &str, created_at_unix: i64) -> Value {
    let status = payflow_verify::event::PaymentStatus::implied_by(event_type);
    let data = match (status, event_type) {
        (Some(status), _) => json!({
            "id": format!("pay_{}", id.trim_start_matches("evt_")),
            "amount": 2500,
            "currency": "PKR",
            "status": status.as_str(),
            "customer_email": "customer@example.com",
            "provider": "payfast",
            "provider_ref": "PF123456789",
        }),
        (None, CUSTOMER_CREATED) => json!({
            "id": format!("cus_{}", id.trim_start_matches("evt_")),
            "email": "customer@example.com",
            "name": "Ayesha Khan",
        }),
        _ => json!({}),
    };
    json!({
        "id": id,
        "type": event_type,
        "created_at": rfc3339(created_at_unix),
        "data": data,
    })
}

/// A field `set_field` cannot set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// No path at all.
    #[error("empty field path")]
    EmptyPath,
    /// The path goes through something that is not an object (e.g. into a string).
    #[error("{0}: not inside an object")]
    NotInObject(String),
}

/// Sets the field at `path` (`["data", "amount"]`) to `value`, creating objects on the way.
pub fn set_field(target: &mut Value, path: &[String], value: Value) -> Result<(), FieldError> {
    let Some((last, parents)) = path.split_last() else { return Err(FieldError::EmptyPath) };
    let mut node = target;
    for key in parents {
        if !node.get(key).is_some_and(Value::is_object) {
            node[key] = Value::Object(Default::default());
        }
        node = &mut node[key];
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        _ => Err(FieldError::NotInObject(path.join("."))),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (UTC).
pub fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil-from-days, Howard Hinnant's algorithm (the inverse of the verifier's parser).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use payflow_verify::event;

    #[test]
    fn rfc3339_round_trips_through_the_event_parser() {
        for unix in [0, 951_782_400, 1_705_314_600, 4_102_444_799] {
            assert_eq!(event::rfc3339_to_unix(&rfc3339(unix)), Some(unix), "{unix}");
        }
    }

    #[test]
    fn every_sample_is_a_valid_event() {
        for t in SAMPLE_TYPES {
            let body = sample_event(t, "evt_1", 1_705_314_600).to_string();
            let parsed = event::parse(body.as_bytes()).unwrap();
            assert!(parsed.checked.is_ok(), "{t}: {:?}", parsed.checked);
        }
    }
}
