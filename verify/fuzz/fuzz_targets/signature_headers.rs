//! Every scheme's header parser on arbitrary header values and bodies: must never panic, and
//! must never accept (nobody can forge a signature by fuzzing without the secret).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payflow_verify::{header_names as n, HmacScheme, Scheme, Verifier, VerifierConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // Fields separated by 0xff: header values first, the last field is the body.
    let mut fields: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let body = fields.pop().unwrap_or_default();
    let (scheme, names): (Scheme, &[&str]) = match selector % 7 {
        0 => (Scheme::PayFlow, &[n::PAYFLOW_SIGNATURE]),
        1 => (Scheme::StandardWebhooks, &[n::WEBHOOK_ID, n::WEBHOOK_TIMESTAMP, n::WEBHOOK_SIGNATURE]),
        2 => (Scheme::StandardWebhooks, &[n::SVIX_ID, n::SVIX_TIMESTAMP, n::SVIX_SIGNATURE, n::WEBHOOK_SIGNATURE]),
        3 => (Scheme::Stripe, &[n::STRIPE_SIGNATURE]),
        4 => (Scheme::GitHub, &[n::GITHUB_SIGNATURE]),
        5 => (Scheme::Shopify, &[n::SHOPIFY_SIGNATURE]),
        _ => (Scheme::Hmac(HmacScheme { prefix: "sha256=".into(), ..HmacScheme::default() }), &["X-Signature"]),
    };
    let headers: Vec<(&str, &[u8])> = fields.iter().enumerate().map(|(i, v)| (names[i % names.len()], *v)).collect();
    let secret = if matches!(scheme, Scheme::StandardWebhooks) { "whsec_ZnV6ei1rZXk=" } else { "fuzz-secret" };
    let mut config = VerifierConfig::new(scheme.clone(), [secret]);
    config.json_compat = matches!(scheme, Scheme::PayFlow);
    let verifier = Verifier::new(config).expect("valid config");
    let now = 1_700_000_000 + i64::from(selector);
    assert!(verifier.verify(&headers, body, now).is_err(), "a forged request was accepted");
});
