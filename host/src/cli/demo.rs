//! `payflow-edge demo`: the product's main job on embedded defaults, narrated.
//!
//! At this stage of the project the gateway itself is not built yet, so the demo shows the
//! verifier the gateway will run: a sample event signed in every scheme and verified, then the
//! forgeries a webhook endpoint meets, each refused with its reason. It fails (exit 2) if any
//! verdict is not the expected one, so it doubles as a smoke test.

use anyhow::bail;
use payflow_verify::{
    HmacScheme, PayFlowForm, Reason, Scheme, SignOptions, Signer, Verifier, VerifierConfig,
};

use super::{unix_now, Failure};
use payflow_edge::samples::sample_event;

const SECRET: &str = "whsec_demo_secret_do_not_use_in_production";
/// Signature headers as (name, value).
type Signed = Vec<(String, String)>;

const SW_SECRET: &str = "whsec_ZGVtby1zdGFuZGFyZC13ZWJob29rcy1rZXk=";

pub fn run() -> Result<(), Failure> {
    Ok(narrate()?)
}

fn narrate() -> anyhow::Result<()> {
    let now = unix_now();
    let id = format!("evt_demo_{now}");
    let body = serde_json::to_vec_pretty(&sample_event("payment.succeeded", &id, now))?;
    println!("payflow-edge demo: signature verification on embedded defaults\n");
    println!("sample event {id} (payment.succeeded, 2500 PKR), {} bytes\n", body.len());

    println!("{:<22} {:<60} verdict", "scheme", "signature header (abbreviated)");
    let schemes: [(&str, Scheme, PayFlowForm, &str); 7] = [
        ("payflow v1", Scheme::PayFlow, PayFlowForm::V1, SECRET),
        ("payflow v0 (seed)", Scheme::PayFlow, PayFlowForm::V0, SECRET),
        ("standard-webhooks", Scheme::StandardWebhooks, PayFlowForm::V1, SW_SECRET),
        ("stripe", Scheme::Stripe, PayFlowForm::V1, SECRET),
        ("github", Scheme::GitHub, PayFlowForm::V1, SECRET),
        ("shopify", Scheme::Shopify, PayFlowForm::V1, SECRET),
        ("hmac (X-Signature)", Scheme::Hmac(HmacScheme::default()), PayFlowForm::V1, SECRET),
    ];
    for (label, scheme, form, secret) in schemes {
        let headers = sign(&scheme, secret, &body, now, &id, form)?;
        let verdict = verify(&scheme, secret, &headers, &body, now)?;
        println!("{label:<22} {:<60} {}", abbreviate(headers.last()), show(verdict));
        if verdict.is_some() {
            bail!("demo: a correctly signed {label} event was refused");
        }
    }

    println!("\nforgeries against a payflow endpoint (tolerance 300 s):");
    let good = sign(&Scheme::PayFlow, SECRET, &body, now, &id, PayFlowForm::V1)?;
    let tampered = String::from_utf8_lossy(&body).replace("2500", "9500").into_bytes();
    let stale = sign(&Scheme::PayFlow, SECRET, &body, now - 600, &id, PayFlowForm::V1)?;
    let truncated = vec![(good[0].0.clone(), good[0].1[..good[0].1.len() - 8].to_string())];
    let cases: [(&str, &Signed, &[u8], &str, Reason); 5] = [
        ("amount changed 2500 -> 9500", &good, &tampered, SECRET, Reason::InvalidSignature),
        ("signed with another secret", &good, &body, "whsec_attacker", Reason::InvalidSignature),
        ("replayed 10 minutes later", &stale, &body, SECRET, Reason::TimestampOutOfTolerance),
        ("signature cut short", &truncated, &body, SECRET, Reason::MalformedSignature),
        ("no signature header", &Vec::new(), &body, SECRET, Reason::MissingSignature),
    ];
    for (label, headers, body, secret, expected) in cases {
        let verdict = verify(&Scheme::PayFlow, secret, headers, body, now)?;
        println!("  {label:<32} {}", show(verdict));
        if verdict != Some(expected) {
            bail!("demo: expected {expected} for '{label}', got {}", show(verdict));
        }
    }
    println!("\nevery signed event was accepted and every forgery refused with its reason.");
    Ok(())
}

fn sign(
    scheme: &Scheme,
    secret: &str,
    body: &[u8],
    now: i64,
    id: &str,
    form: PayFlowForm,
) -> anyhow::Result<Signed> {
    let signer = Signer::new(scheme.clone(), &[secret])?;
    Ok(signer.sign(body, &SignOptions { timestamp: now, id: Some(id), payflow_form: form })?)
}

/// `None` when valid, else the reason.
fn verify(
    scheme: &Scheme,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: i64,
) -> anyhow::Result<Option<Reason>> {
    let verifier = Verifier::new(VerifierConfig::new(scheme.clone(), [secret]))?;
    Ok(verifier.verify(headers, body, now).err().map(|e| e.reason()))
}

fn show(verdict: Option<Reason>) -> String {
    verdict.map_or_else(|| "valid".to_string(), |r| format!("refused: {r}"))
}

/// Never print a whole signature, even in a demo.
fn abbreviate(header: Option<&(String, String)>) -> String {
    let Some((name, value)) = header else { return String::new() };
    let shown: String = value.chars().take(28).collect();
    format!("{name}: {shown}…")
}
