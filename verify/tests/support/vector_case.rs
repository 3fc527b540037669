//! One generated vector case (see `tests/vectors/generate.*`) run through the native verifier.
//! Shared by the Rust vector test and `examples/verdicts.rs`, which gives the web build's tests
//! the native verdicts to match.

use base64::Engine as _;
use payflow_verify::{HmacScheme, Scheme, Verifier, VerifierConfig};
use serde_json::Value;

/// `"ok"` or the failure reason; `Err` when the case's configuration is refused.
pub fn verdict(case: &Value) -> Result<String, String> {
    let name = case["name"].as_str().unwrap_or("?");
    let scheme = match case["scheme"].as_str().unwrap() {
        "hmac" => Scheme::Hmac(HmacScheme {
            header: case["hmac"]["header"].as_str().unwrap().into(),
            prefix: case["hmac"]["prefix"].as_str().unwrap().into(),
            encoding: case["hmac"]["encoding"].as_str().unwrap().parse().unwrap(),
        }),
        other => other.parse().unwrap(),
    };
    let secrets: Vec<String> =
        case["secrets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
    let mut config = VerifierConfig::new(scheme, secrets);
    config.tolerance_secs = case["tolerance"].as_u64().unwrap();
    config.require_timestamp = case["require_timestamp"].as_bool().unwrap();
    config.json_compat = case["json_compat"].as_bool().unwrap();
    let verifier = Verifier::new(config).map_err(|e| format!("{name}: config refused: {e}"))?;

    let headers: Vec<(String, Vec<u8>)> = case["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().as_bytes().to_vec()))
        .collect();
    let body = base64::engine::general_purpose::STANDARD.decode(case["body_b64"].as_str().unwrap()).unwrap();
    let now = case["now"].as_i64().unwrap();

    Ok(match verifier.verify(&headers, &body, now) {
        Ok(_) => "ok".into(),
        Err(e) => e.reason().as_str().into(),
    })
}
