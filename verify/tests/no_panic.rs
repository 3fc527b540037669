//! Property tests: no parser panics on any input. Arbitrary bytes and, more usefully, inputs
//! built from the grammar's own pieces, so the parsers get deep before they fail.

use payflow_verify::{
    event, header_names as n, js_canonical_json, json, HmacScheme, Scheme, Verifier, VerifierConfig,
};
use proptest::prelude::*;

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"t=".to_vec()),
        Just(b"v1=".to_vec()),
        Just(b"v0=".to_vec()),
        Just(b"v1,".to_vec()),
        Just(b"v1a,".to_vec()),
        Just(b"sha256=".to_vec()),
        Just(b",".to_vec()),
        Just(b" ".to_vec()),
        Just(b"=".to_vec()),
        "[0-9]{1,20}".prop_map(String::into_bytes),
        "[0-9a-f]{60,66}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/]{40,46}={0,2}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/]{84,88}={0,2}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn verifiers() -> Vec<Verifier> {
    let schemes = [
        Scheme::PayFlow,
        Scheme::StandardWebhooks,
        Scheme::Stripe,
        Scheme::GitHub,
        Scheme::Shopify,
        Scheme::Hmac(HmacScheme { prefix: "sha256=".into(), ..HmacScheme::default() }),
    ];
    schemes
        .into_iter()
        .map(|scheme| {
            let secrets: &[&str] = if scheme == Scheme::StandardWebhooks {
                // An HMAC secret and an Ed25519 public key (RFC 8032's first), so `v1a,` entries
                // are parsed and checked too.
                &["whsec_cHJvcHRlc3Q=", "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]
            } else {
                &["proptest"]
            };
            let mut config = VerifierConfig::new(scheme.clone(), secrets.iter().copied());
            config.json_compat = scheme == Scheme::PayFlow;
            Verifier::new(config).unwrap()
        })
        .collect()
}

fn json_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"id\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"\\u".to_string()),
        Just("-0.5e-3".to_string()),
        Just("1e400".to_string()),
        Just("null".to_string()),
        Just("tru".to_string()),
        "\"[^\"\\\\]{0,6}\"",
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?",
        "[ \t\r\n]{0,2}",
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

/// What the gateway reads of a parsed body: its id, its type and why it is invalid, if it is.
fn verdict<S>(p: event::ParsedEvent<S>) -> (String, Option<String>, Option<event::ValidationError>) {
    (p.id, p.event_type, p.checked.err())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn header_parsers_never_panic_and_never_accept(
        values in proptest::collection::vec(header_value(), 0..4),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
    ) {
        let names = [n::PAYFLOW_SIGNATURE, n::WEBHOOK_ID, n::WEBHOOK_TIMESTAMP, n::WEBHOOK_SIGNATURE,
            n::SVIX_SIGNATURE, n::STRIPE_SIGNATURE, n::GITHUB_SIGNATURE, n::SHOPIFY_SIGNATURE, "X-Signature"];
        for verifier in verifiers() {
            for name in names {
                let headers: Vec<(&str, &[u8])> = values.iter().map(|v| (name, v.as_slice())).collect();
                prop_assert!(verifier.verify(&headers, &body, now).is_err());
            }
        }
    }

    #[test]
    fn json_and_event_parsers_never_panic(text in json_text(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = json::parse(&text);
        let _ = event::parse(text.as_bytes());
        let _ = event::parse(&bytes);
        // `check` keeps none of the typed event's text and gives `parse`'s verdict.
        for body in [text.as_bytes(), &bytes] {
            prop_assert_eq!(event::check(body).map(verdict), event::parse(body).map(verdict));
        }
        if let Some(canonical) = js_canonical_json(text.as_bytes()) {
            // Canonical output is a fixed point, as JSON.stringify(JSON.parse(x)) is.
            prop_assert_eq!(js_canonical_json(&canonical), Some(canonical));
        }
    }
}
