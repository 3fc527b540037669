//! The event parser on arbitrary bodies: never panics; whatever it accepts has a usable id;
//! `check` (what the gateway runs) gives `parse`'s verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payflow_verify::event::{self, ParsedEvent, ValidationError};

/// What the gateway reads of a parsed body: its id, its type and why it is invalid, if it is.
fn verdict<S>(p: ParsedEvent<S>) -> (String, Option<String>, Option<ValidationError>) {
    (p.id, p.event_type, p.checked.err())
}

fuzz_target!(|body: &[u8]| {
    let parsed = event::parse(body);
    if let Ok(parsed) = &parsed {
        assert!(!parsed.id.is_empty() && parsed.id.len() <= event::MAX_ID_BYTES);
        if let Ok(event) = &parsed.checked {
            assert_eq!(event.id, parsed.id);
        }
    }
    assert_eq!(event::check(body).map(verdict), parsed.map(verdict));
});
