//! The event model on the seed's four types (fixtures beside this file), unknown types, and
//! every way an envelope can be wrong: unusable bodies are refused (400), authentic but
//! invalid ones are kept with a reason that names the field.

use payflow_verify::event::{self, EnvelopeError, EventData, PaymentStatus};
use serde_json::{json, Value};

/// An edit to the seed fixture.
type Edit = Box<dyn FnOnce(&mut Value)>;
/// Recognises the expected envelope error.
type IsExpected = fn(&EnvelopeError) -> bool;

/// `event::parse` of `body`, after checking that `event::check`, which keeps none of the typed
/// event's text, gives the same id, type, errors and verdict.
fn parse(body: &[u8]) -> Result<event::ParsedEvent, EnvelopeError> {
    let (parsed, checked) = (event::parse(body), event::check(body));
    match (&parsed, &checked) {
        (Ok(p), Ok(c)) => {
            assert_eq!((&c.id, &c.event_type), (&p.id, &p.event_type));
            assert_eq!(c.checked.as_ref().err(), p.checked.as_ref().err(), "check's verdict is parse's");
        }
        (Err(p), Err(c)) => assert_eq!(c, p),
        _ => panic!("check and parse disagree: {checked:?} against {parsed:?}"),
    }
    parsed
}

fn fixture(name: &str) -> Vec<u8> {
    // Read at run time: the binary may come from a build in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    std::fs::read(format!("{dir}/tests/fixtures/events/{name}.json")).unwrap()
}

#[test]
fn seed_types_parse_into_typed_data() {
    let cases = [
        ("payment_succeeded", "evt_1234567890", Some((2500, "PKR", PaymentStatus::Completed))),
        ("payment_failed", "evt_f1", Some((990, "USD", PaymentStatus::Failed))),
        ("payment_cancelled", "evt_c1", Some((0, "EUR", PaymentStatus::Cancelled))),
        ("customer_created", "evt_cus1", None),
    ];
    for (name, id, payment) in cases {
        let parsed = parse(&fixture(name)).unwrap();
        let ev = parsed.checked.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ev.id, id);
        match (ev.data, payment) {
            (EventData::Payment(p), Some((amount, currency, status))) => {
                assert_eq!((p.amount, p.currency.as_str(), p.status), (amount, currency, status), "{name}");
            }
            (EventData::Customer(c), None) => {
                assert_eq!(c.id, "cus_1");
                assert_eq!(c.email.as_deref(), Some("ayesha@example.com"));
            }
            (other, _) => panic!("{name}: unexpected data {other:?}"),
        }
    }
}

#[test]
fn offsets_in_created_at_are_applied() {
    let ev = parse(&fixture("payment_failed")).unwrap().checked.unwrap();
    assert_eq!(ev.created_at_unix, 1_705_314_660 - 5 * 3600);
}

#[test]
fn unknown_types_pass_through_with_raw_data() {
    let body = fixture("unknown_type");
    let ev = parse(&body).unwrap().checked.unwrap();
    assert_eq!(ev.event_type, "refund.created");
    assert_eq!(ev.data, EventData::Other);
    // Byte-exact slice of the body, not a re-serialisation (12.5 and spacing kept).
    assert_eq!(ev.data_json, r#"{"refund_id":"re_1","amount":12.5,"nested":[1,{"x":true}]}"#);
}

/// Applies `edit` to the seed fixture and returns the validation error's (field, problem).
fn quarantined(edit: impl FnOnce(&mut Value)) -> (String, String) {
    let mut v: Value = serde_json::from_slice(&fixture("payment_succeeded")).unwrap();
    edit(&mut v);
    let parsed = parse(v.to_string().as_bytes()).expect("envelope is usable");
    assert_eq!(parsed.id, v["id"].as_str().unwrap(), "the id survives quarantine");
    let err = parsed.checked.expect_err("must be quarantined");
    (err.field, err.problem)
}

#[test]
fn invalid_events_are_quarantined_with_the_field_named() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("type", Box::new(|v| drop(v.as_object_mut().unwrap().remove("type"))), "is required"),
        ("type", Box::new(|v| v["type"] = json!(7)), "must be a string"),
        ("type", Box::new(|v| v["type"] = json!("")), "must not be empty"),
        ("created_at", Box::new(|v| v["created_at"] = json!("yesterday")), "RFC 3339"),
        ("created_at", Box::new(|v| v["created_at"] = json!("2024-02-30T00:00:00Z")), "RFC 3339"),
        ("data", Box::new(|v| drop(v.as_object_mut().unwrap().remove("data"))), "is required"),
        ("data", Box::new(|v| v["data"] = json!([1])), "must be an object"),
        ("data.amount", Box::new(|v| v["data"]["amount"] = json!(25.5)), "must be an integer"),
        ("data.amount", Box::new(|v| v["data"]["amount"] = json!("2500")), "must be an integer"),
        ("data.amount", Box::new(|v| v["data"]["amount"] = json!(-1)), "must not be negative"),
        (
            "data.amount",
            Box::new(|v| drop(v["data"].as_object_mut().unwrap().remove("amount"))),
            "is required",
        ),
        ("data.currency", Box::new(|v| v["data"]["currency"] = json!("pkr")), "three upper-case letters"),
        ("data.currency", Box::new(|v| v["data"]["currency"] = json!("PKRS")), "three upper-case letters"),
        ("data.status", Box::new(|v| v["data"]["status"] = json!("failed")), "must be \"completed\""),
        ("data.status", Box::new(|v| v["data"]["status"] = json!("COMPLETED")), "must be \"completed\""),
        ("data.customer_email", Box::new(|v| v["data"]["customer_email"] = json!(5)), "must be a string"),
    ];
    for (field, edit, problem) in cases {
        let (got_field, got_problem) = quarantined(edit);
        assert_eq!(got_field, field);
        assert!(got_problem.contains(problem), "{field}: {got_problem:?} lacks {problem:?}");
    }
}

#[test]
fn unusable_bodies_are_envelope_errors() {
    let cases: [(&[u8], IsExpected); 9] = [
        (b"", |e| matches!(e, EnvelopeError::NotJson(_))),
        (b"{\"id\":", |e| matches!(e, EnvelopeError::NotJson(_))),
        (b"\xff\xfe{}", |e| matches!(e, EnvelopeError::NotUtf8)),
        (b"[1,2]", |e| matches!(e, EnvelopeError::NotObject("an array"))),
        (b"{\"type\":\"payment.succeeded\"}", |e| matches!(e, EnvelopeError::MissingId)),
        (b"{\"id\":null}", |e| matches!(e, EnvelopeError::MissingId)),
        (b"{\"id\":42}", |e| matches!(e, EnvelopeError::BadId)),
        (b"{\"id\":\"\"}", |e| matches!(e, EnvelopeError::BadId)),
        (b"{\"id\":\"a\\nb\"}", |e| matches!(e, EnvelopeError::BadId)),
    ];
    for (body, is_expected) in cases {
        let err = parse(body).expect_err(&String::from_utf8_lossy(body));
        assert!(is_expected(&err), "{:?}: got {err:?}", String::from_utf8_lossy(body));
    }
    let long = format!("{{\"id\":\"{}\"}}", "x".repeat(256));
    assert_eq!(parse(long.as_bytes()).unwrap_err(), EnvelopeError::BadId);
}

#[test]
fn duplicate_keys_take_the_last_value_like_json_parse() {
    let parsed =
        parse(br#"{"id":"evt_a","id":"evt_b","type":"x.y","created_at":"2024-01-15T10:30:00Z"}"#).unwrap();
    assert_eq!(parsed.id, "evt_b");
}

/// Regression (issue 16, item 14): ids were decoded with U+FFFD for a lone surrogate, so two
/// authentic events whose ids differ only there collapsed into one and the second was lost.
#[test]
fn ids_that_differ_only_in_a_lone_surrogate_stay_different() {
    let id = |body: &[u8]| parse(body).unwrap().id;
    let a = id(br#"{"id":"evt_\ud800","type":"payment.succeeded"}"#);
    let b = id(br#"{"id":"evt_\udbff","type":"payment.succeeded"}"#);
    assert_ne!(a, b);
    assert_eq!(a, "evt_\\ud800");
    assert_eq!(id(br#"{"id":"evt_\uDBFF","type":"x"}"#), b, "the escape's case does not matter");
    // Everything else decodes as before, a well-formed pair included.
    assert_eq!(id(br#"{"id":"evt_\ud83d\ude00\u0041","type":"x"}"#), "evt_😀A");
}

/// Regression (issue 16, item 15): an authentic body nested past 128 levels was refused with
/// 400, so its sender retried it for ever. Its envelope is read and it is kept for quarantine.
#[test]
fn an_event_nested_past_the_bound_is_kept_for_quarantine_not_refused() {
    let data = "{\"a\":[".repeat(200) + "1" + &"]}".repeat(200);
    let body = format!(r#"{{"id":"evt_deep","type":"payment.succeeded","data":{data}}}"#);
    let parsed = parse(body.as_bytes()).unwrap();
    assert_eq!(parsed.id, "evt_deep");
    assert_eq!(parsed.event_type.as_deref(), Some("payment.succeeded"));
    let reason = parsed.checked.unwrap_err().to_string();
    assert_eq!(reason, "body: nests deeper than 128 levels");
    // A deep body that is not JSON is still refused, as is one with no id.
    assert!(matches!(parse(&body.as_bytes()[..body.len() - 1]), Err(EnvelopeError::NotJson(_))));
    let no_id = format!(r#"{{"type":"payment.succeeded","data":{data}}}"#);
    assert!(matches!(parse(no_id.as_bytes()), Err(EnvelopeError::MissingId)));
}
