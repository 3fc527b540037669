//! `json_compat` is byte-identical to Node's `JSON.stringify(JSON.parse(body))`, proven on a
//! fresh random corpus every run (plus curated hard cases), and the seed's signatures made by
//! Node over that text verify in compat mode. A failure prints the seed that reproduces it:
//! `PAYFLOW_COMPAT_SEED=<seed> cargo test -p payflow-verify --test json_compat_corpus`.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use payflow_verify::{js_canonical_json, Scheme, Verifier, VerifierConfig};

#[test]
fn canonical_json_matches_node_on_a_random_corpus() {
    let seed = std::env::var("PAYFLOW_COMPAT_SEED").ok();
    let args: Vec<&str> = seed.as_deref().into_iter().collect();
    let corpus = support::generate("node", "compat-corpus.mjs", &args);
    let seed = &corpus["seed"];
    let secret = corpus["secret"].as_str().unwrap();
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() > 1000, "corpus too small");

    let mut compat = VerifierConfig::new(Scheme::PayFlow, [secret]);
    compat.json_compat = true;
    let compat = Verifier::new(compat).unwrap();
    let strict = Verifier::new(VerifierConfig::new(Scheme::PayFlow, [secret])).unwrap();

    let (mut parsed, mut rejected, mut differ_from_body) = (0, 0, 0);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let body = STANDARD.decode(case["body_b64"].as_str().unwrap()).unwrap();
        let node = case["canonical_b64"].as_str().map(|b| STANDARD.decode(b).unwrap());
        let ours = js_canonical_json(&body);
        if ours != node {
            failures.push(format!(
                "case {i}: {}",
                first_difference(&String::from_utf8_lossy(&body), node.as_deref(), ours.as_deref())
            ));
            continue;
        }
        let Some(node) = node else {
            rejected += 1;
            continue;
        };
        parsed += 1;
        let headers = [("X-PayFlow-Signature", case["seed_signature"].as_str().unwrap())];
        let verdict = compat.verify(&headers[..], &body, 0);
        if !verdict.as_ref().is_ok_and(|v| v.via_json_compat == (node != body)) {
            failures
                .push(format!("case {i}: the seed's signature did not verify in compat mode: {verdict:?}"));
        }
        if node != body {
            differ_from_body += 1;
            if strict.verify(&headers[..], &body, 0).is_ok() {
                failures.push(format!("case {i}: strict mode accepted a signature over re-serialised JSON"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // The corpus must exercise both outcomes, and mostly bodies that re-serialise differently.
    assert!(
        parsed > 500 && rejected > 3 && differ_from_body > 500,
        "seed {seed}: weak corpus {parsed}/{rejected}/{differ_from_body}"
    );
}

/// Where two outputs part, with a little context, so a failure stays readable.
fn first_difference(body: &str, node: Option<&[u8]>, ours: Option<&[u8]>) -> String {
    let (Some(node), Some(ours)) = (node, ours) else {
        let head: String = body.chars().take(200).collect();
        return format!(
            "node parsed: {}, we parsed: {} — body starts {head:?}",
            node.is_some(),
            ours.is_some()
        );
    };
    let at = node.iter().zip(ours).take_while(|(a, b)| a == b).count();
    let around =
        |s: &[u8]| String::from_utf8_lossy(&s[at.saturating_sub(60)..(at + 60).min(s.len())]).into_owned();
    format!("outputs differ at byte {at}:\n  node: …{:?}…\n  ours: …{:?}…", around(node), around(ours))
}
