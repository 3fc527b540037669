//! The PayFlow event model: the seed's envelope `{id, type, created_at, data}` and the four seed
//! event types.
//!
//! Parsing has two outcomes on purpose. A body that is not a JSON object with a usable `id` is
//! an [`EnvelopeError`] (the gateway answers 400: there is nothing to store or de-duplicate).
//! Anything else is kept: an envelope that fails validation yields a [`ValidationError`] that
//! names the field, and the gateway stores the event as quarantined, because nothing authentic
//! may be lost. Unknown `type`s are valid and pass through with their `data` as raw JSON.
//!
//! [`parse`] keeps the typed event's text; [`check`] runs the very same validation and keeps
//! none of it (its string fields are [`Unkept`]), for a caller that needs only the id, the type
//! and the verdict: the gateway, on every webhook, where the kept copies were about ten
//! allocations per event for nothing.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::{String, ToString};

use crate::json::{self, JsonError, Value};

/// Longest accepted event id, in bytes. It is the de-duplication key, so it must stay small.
pub const MAX_ID_BYTES: usize = 255;

/// The seed's event types.
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
/// See [`PAYMENT_SUCCEEDED`].
pub const PAYMENT_FAILED: &str = "payment.failed";
/// See [`PAYMENT_SUCCEEDED`].
pub const PAYMENT_CANCELLED: &str = "payment.cancelled";
/// See [`PAYMENT_SUCCEEDED`].
pub const CUSTOMER_CREATED: &str = "customer.created";

/// A body the gateway cannot even store: not JSON, not an object, or no usable `id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not UTF-8.
    #[error("body is not valid JSON: it is not UTF-8")]
    NotUtf8,
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(#[from] JsonError),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// No `id`.
    #[error("body has no \"id\": every event needs its unique id")]
    MissingId,
    /// An `id` that cannot serve as a de-duplication key.
    #[error("\"id\" must be a string of 1 to 255 bytes without control characters")]
    BadId,
}

/// An authentic envelope whose content breaks the model. The event is kept (quarantined).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `data.amount`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What the model keeps of a string field it validated: its text ([`String`], from [`parse`])
/// or nothing ([`Unkept`], from [`check`]).
pub trait Text: Sized {
    /// The kept form of `text`.
    fn keep(text: &str) -> Self;
}

impl Text for String {
    fn keep(text: &str) -> Self {
        text.to_string()
    }
}

/// A string field [`check`] validated and did not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unkept;

impl Text for Unkept {
    fn keep(_: &str) -> Self {
        Unkept
    }
}

/// A body with a usable id, and the outcome of validating the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent<S = String> {
    /// The event id (the de-duplication key).
    pub id: String,
    /// The `type`, when it is a string.
    pub event_type: Option<String>,
    /// The validated event, or why it is quarantined.
    pub checked: Result<Event<S>, ValidationError>,
}

/// A valid PayFlow event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<S = String> {
    /// Unique event identifier.
    pub id: S,
    /// Event type, e.g. `payment.succeeded`.
    pub event_type: S,
    /// When the event occurred, as sent (RFC 3339).
    pub created_at: S,
    /// `created_at` in unix seconds.
    pub created_at_unix: i64,
    /// The exact JSON text of `data` (`null` when absent on an unknown type).
    pub data_json: S,
    /// Typed `data` for the seed's types.
    pub data: EventData<S>,
}

/// Typed event data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData<S = String> {
    /// `payment.*` events.
    Payment(Payment<S>),
    /// `customer.created`.
    Customer(Customer<S>),
    /// A type this version does not know; see [`Event::data_json`].
    Other,
}

/// A payment's status, implied by its event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// `payment.succeeded`
    Completed,
    /// `payment.failed`
    Failed,
    /// `payment.cancelled`
    Cancelled,
}

impl PaymentStatus {
    /// As it appears in `data.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Completed => "completed",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
        }
    }

    /// The status a payment event type implies.
    pub fn implied_by(event_type: &str) -> Option<Self> {
        match event_type {
            PAYMENT_SUCCEEDED => Some(PaymentStatus::Completed),
            PAYMENT_FAILED => Some(PaymentStatus::Failed),
            PAYMENT_CANCELLED => Some(PaymentStatus::Cancelled),
            _ => None,
        }
    }
}

/// `data` of a payment event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment<S = String> {
    /// Payment id, e.g. `pay_1234567890`.
    pub id: Option<S>,
    /// Amount in the smallest currency unit.
    pub amount: i64,
    /// Three upper-case letters, e.g. `PKR`.
    pub currency: S,
    /// Status, consistent with the event type.
    pub status: PaymentStatus,
    /// Customer's e-mail.
    pub customer_email: Option<S>,
    /// Payment provider, e.g. `payfast`.
    pub provider: Option<S>,
    /// Provider's reference number.
    pub provider_ref: Option<S>,
}

/// `data` of `customer.created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer<S = String> {
    /// Customer id.
    pub id: S,
    /// E-mail, when given.
    pub email: Option<S>,
    /// Name, when given.
    pub name: Option<S>,
}

/// Parses a raw webhook body into an event.
pub fn parse(body: &[u8]) -> Result<ParsedEvent, EnvelopeError> {
    parse_keeping(body)
}

/// As [`parse`], with the same verdict and the same errors, keeping none of the typed event's
/// text: for a caller that needs only the id, the type and whether the event is valid.
pub fn check(body: &[u8]) -> Result<ParsedEvent<Unkept>, EnvelopeError> {
    parse_keeping(body)
}

/// [`parse`] and [`check`]: one validation, keeping text as `S` does.
fn parse_keeping<S: Text>(body: &[u8]) -> Result<ParsedEvent<S>, EnvelopeError> {
    let text = core::str::from_utf8(body).map_err(|_| EnvelopeError::NotUtf8)?;
    match json::parse(text) {
        Ok(root) => envelope(&root, |id| validate(&root, id)),
        // Nesting is no reason to refuse an authentic event (the sender would retry it for
        // ever): it is kept, quarantined, if its envelope can be read at all. (Only authentic
        // bodies get here, so the parse needs no bound beyond the body size.)
        Err(e) if e.problem == json::TOO_DEEP => {
            let root = json::parse_deep(text, usize::MAX)?;
            envelope(&root, |_| {
                Err(invalid("body", alloc::format!("nests deeper than {} levels", json::MAX_DEPTH)))
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The id and type of a parsed body, and `check` of the rest.
fn envelope<S>(
    root: &Value<'_>,
    check: impl FnOnce(&str) -> Result<Event<S>, ValidationError>,
) -> Result<ParsedEvent<S>, EnvelopeError> {
    if !matches!(root, Value::Object(_)) {
        return Err(EnvelopeError::NotObject(root.kind()));
    }
    let id = match root.get("id").map(|m| &m.value) {
        None | Some(Value::Null) => return Err(EnvelopeError::MissingId),
        Some(Value::String(s)) => s.to_exact_str().into_owned(),
        Some(_) => return Err(EnvelopeError::BadId),
    };
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(EnvelopeError::BadId);
    }
    let event_type = match root.get("type").map(|m| &m.value) {
        Some(Value::String(s)) => Some(s.to_str().into_owned()),
        _ => None,
    };
    let checked = check(&id);
    Ok(ParsedEvent { id, event_type, checked })
}

fn invalid(field: &str, problem: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), problem: problem.into() }
}

/// A required string field of `object`, named `path` in errors; borrowed from the body unless
/// it has escapes.
fn required_str<'a>(object: &Value<'a>, key: &str, path: &str) -> Result<Cow<'a, str>, ValidationError> {
    match object.get(key).map(|m| &m.value) {
        None | Some(Value::Null) => Err(invalid(path, "is required")),
        Some(Value::String(s)) => Ok(s.to_str()),
        Some(other) => Err(invalid(path, format!("must be a string, got {}", other.kind()))),
    }
}

/// An optional string field (absent or null is `None`), kept as `S` keeps text.
fn optional_str<S: Text>(object: &Value<'_>, key: &str, path: &str) -> Result<Option<S>, ValidationError> {
    match object.get(key).map(|m| &m.value) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(S::keep(&s.to_str()))),
        Some(other) => Err(invalid(path, format!("must be a string, got {}", other.kind()))),
    }
}

fn validate<S: Text>(root: &Value<'_>, id: &str) -> Result<Event<S>, ValidationError> {
    let event_type = required_str(root, "type", "type")?;
    if event_type.is_empty() {
        return Err(invalid("type", "must not be empty"));
    }
    let created_at = required_str(root, "created_at", "created_at")?;
    let created_at_unix = rfc3339_to_unix(&created_at)
        .ok_or_else(|| invalid("created_at", "must be an RFC 3339 date-time such as 2024-01-15T10:30:00Z"))?;
    let data_member = root.get("data");
    let data = match (PaymentStatus::implied_by(&event_type), &*event_type) {
        (Some(status), _) => EventData::Payment(payment(data_object(data_member)?, status)?),
        (None, CUSTOMER_CREATED) => EventData::Customer(customer(data_object(data_member)?)?),
        _ => EventData::Other,
    };
    Ok(Event {
        id: S::keep(id),
        event_type: S::keep(&event_type),
        created_at: S::keep(&created_at),
        created_at_unix,
        data_json: S::keep(data_member.map_or("null", |m| m.raw)),
        data,
    })
}

fn data_object<'v, 'a>(member: Option<&'v json::Member<'a>>) -> Result<&'v Value<'a>, ValidationError> {
    match member.map(|m| &m.value) {
        None | Some(Value::Null) => Err(invalid("data", "is required")),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(other) => Err(invalid("data", format!("must be an object, got {}", other.kind()))),
    }
}

fn payment<S: Text>(data: &Value<'_>, implied: PaymentStatus) -> Result<Payment<S>, ValidationError> {
    let amount = match data.get("amount").map(|m| &m.value) {
        None | Some(Value::Null) => return Err(invalid("data.amount", "is required")),
        Some(Value::Number(raw)) => integer_amount(raw)?,
        Some(other) => {
            return Err(invalid(
                "data.amount",
                format!("must be an integer in the smallest currency unit, got {}", other.kind()),
            ))
        }
    };
    let currency = required_str(data, "currency", "data.currency")?;
    if currency.len() != 3 || !currency.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid(
            "data.currency",
            format!("must be three upper-case letters (ISO 4217), got {currency:?}"),
        ));
    }
    let status = required_str(data, "status", "data.status")?;
    if status != implied.as_str() {
        return Err(invalid(
            "data.status",
            format!("must be {:?} for this event type, got {status:?}", implied.as_str()),
        ));
    }
    Ok(Payment {
        id: optional_str(data, "id", "data.id")?,
        amount,
        currency: S::keep(&currency),
        status: implied,
        customer_email: optional_str(data, "customer_email", "data.customer_email")?,
        provider: optional_str(data, "provider", "data.provider")?,
        provider_ref: optional_str(data, "provider_ref", "data.provider_ref")?,
    })
}

fn integer_amount(raw: &str) -> Result<i64, ValidationError> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            "data.amount",
            format!("must be an integer in the smallest currency unit, got {raw}"),
        ));
    }
    if raw.starts_with('-') {
        return Err(invalid("data.amount", format!("must not be negative, got {raw}")));
    }
    raw.parse::<i64>().map_err(|_| invalid("data.amount", format!("is out of range, got {raw}")))
}

fn customer<S: Text>(data: &Value<'_>) -> Result<Customer<S>, ValidationError> {
    Ok(Customer {
        id: S::keep(&required_str(data, "id", "data.id")?),
        email: optional_str(data, "email", "data.email")?,
        name: optional_str(data, "name", "data.name")?,
    })
}

/// Unix seconds of an RFC 3339 date-time (`2024-01-15T10:30:00Z`, `…00.123+05:00`).
pub fn rfc3339_to_unix(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: core::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &tail[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hm = [*h1, *h2, *m1, *m2];
            if !hm.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let (h, m) =
                (i64::from((h1 - b'0') * 10 + (h2 - b'0')), i64::from((m1 - b'0') * 10 + (m2 - b'0')));
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 3600 + m * 60
            } else {
                -(h * 3600 + m * 60)
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{
  "id": "evt_1234567890",
  "type": "payment.succeeded",
  "created_at": "2024-01-15T10:30:00Z",
  "data": {
    "id": "pay_1234567890",
    "amount": 2500,
    "currency": "PKR",
    "status": "completed",
    "customer_email": "customer@example.com",
    "provider": "payfast",
    "provider_ref": "PF123456789"
  }
}"#;

    #[test]
    fn the_seed_example_is_a_valid_payment() {
        let parsed = parse(SEED.as_bytes()).unwrap();
        let event = parsed.checked.unwrap();
        assert_eq!(event.id, "evt_1234567890");
        assert_eq!(event.created_at_unix, 1_705_314_600);
        let EventData::Payment(p) = event.data else { panic!("not a payment") };
        assert_eq!((p.amount, p.currency.as_str(), p.status), (2500, "PKR", PaymentStatus::Completed));
        assert_eq!(p.provider_ref.as_deref(), Some("PF123456789"));
        assert!(event.data_json.starts_with('{') && event.data_json.ends_with('}'));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_to_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_to_unix("2024-02-29T12:00:00.5+05:00"), Some(1_709_190_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-15 10:30:00Z",
            "2024-01-15T10:30:00",
            "2024-13-01T00:00:00Z",
            "2024-01-15T10:30:00.Z",
            "",
            "2024-01-15T24:00:00Z",
        ] {
            assert_eq!(rfc3339_to_unix(bad), None, "{bad}");
        }
    }
}
