//! JSON.stringify(JSON.parse(x)) is idempotent: canonical output re-canonicalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payflow_verify::js_canonical_json;

fuzz_target!(|body: &[u8]| {
    if let Some(canonical) = js_canonical_json(body) {
        assert_eq!(js_canonical_json(&canonical).as_deref(), Some(&canonical[..]));
    }
});
