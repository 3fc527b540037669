//! The native verifier's verdict for each generated vector case: reads `{"cases":[…]}` (the
//! output of `tests/vectors/generate.*`) on stdin and prints `{"<name>":"<verdict>",…}`.
//! The web build's tests compare its verdicts with these.
//!
//! `node generate.mjs | cargo run -q -p payflow-verify --example verdicts`

#[path = "../tests/support/vector_case.rs"]
mod vector_case;

use serde_json::{Map, Value};

fn main() {
    let input: Value = serde_json::from_reader(std::io::stdin().lock()).expect("vector JSON on stdin");
    let mut out = Map::new();
    for case in input["cases"].as_array().expect("a cases array") {
        let verdict = vector_case::verdict(case).unwrap_or_else(|e| format!("config_refused: {e}"));
        out.insert(case["name"].as_str().expect("a case name").into(), Value::String(verdict));
    }
    println!("{}", Value::Object(out));
}
