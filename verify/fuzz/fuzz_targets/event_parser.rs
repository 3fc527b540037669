//! The event parser on arbitrary bodies: never panics; whatever it accepts has a usable id.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(parsed) = payflow_verify::event::parse(body) {
        assert!(!parsed.id.is_empty() && parsed.id.len() <= payflow_verify::event::MAX_ID_BYTES);
        if let Ok(event) = parsed.checked {
            assert_eq!(event.id, parsed.id);
        }
    }
});
