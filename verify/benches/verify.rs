//! `Verifier::verify` next to the bare HMAC-SHA256 of the same bytes, the physical limit.
//! Run: bench/verify.sh (it prints the ratios recorded in bench/RESULTS.md).
//!
//! Three functions per body size, measured in the same run:
//! - `bare_hmac`: key an HMAC with the secret, hash the body, finalize — what a hand-written
//!   verifier must at least do per request;
//! - `bare_hmac_prekeyed`: the same with the key schedule done once (the strict floor);
//! - `verify`: a full payflow v1 verification (header parse, tolerance, MAC, constant-time
//!   compare), as the gateway runs it.
//!
//! And `ed25519_v1a`: a Standard Webhooks asymmetric verification of a 1 KiB body (one `v1a`
//! signature, one `whpk_` key), the cost an endpoint with a public key pays per request.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use payflow_verify::{Scheme, SignOptions, Signer, Verifier, VerifierConfig};
use sha2::Sha256;
use std::time::Duration;

const SECRET: &str = "whsec_bench_secret_0123456789abcdef";
const NOW: i64 = 1_705_314_600;

fn body(len: usize) -> Vec<u8> {
    // JSON-looking bytes; the content does not change the cost of SHA-256.
    let unit = br#"{"id":"evt_1234567890","type":"payment.succeeded","amount":2500},"#;
    unit.iter().copied().cycle().take(len).collect()
}

fn bench(c: &mut Criterion) {
    let verifier = Verifier::new(VerifierConfig::new(Scheme::PayFlow, [SECRET])).unwrap();
    let signer = Signer::new(Scheme::PayFlow, &[SECRET]).unwrap();
    let prekeyed = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    for (label, len) in [("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)] {
        let body = body(len);
        let headers = signer.sign(&body, &SignOptions::at(NOW)).unwrap();
        assert!(verifier.verify(&headers, &body, NOW).is_ok());
        let mut group = c.benchmark_group(format!("verify_{label}"));
        group.throughput(Throughput::Bytes(len as u64));
        group.measurement_time(Duration::from_secs(if len > 100_000 { 6 } else { 3 }));
        group.bench_function(BenchmarkId::from_parameter("bare_hmac"), |b| {
            b.iter(|| {
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(black_box(&body));
                black_box(mac.finalize().into_bytes())
            })
        });
        group.bench_function(BenchmarkId::from_parameter("bare_hmac_prekeyed"), |b| {
            b.iter(|| {
                let mut mac = prekeyed.clone();
                mac.update(black_box(&body));
                black_box(mac.finalize().into_bytes())
            })
        });
        group.bench_function(BenchmarkId::from_parameter("verify"), |b| {
            b.iter(|| black_box(verifier.verify(black_box(&headers), black_box(&body), NOW)).is_ok())
        });
        group.finish();
    }
}

fn ed25519(c: &mut Criterion) {
    use base64::Engine as _;
    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = format!("whpk_{}", b64.encode(*pair.pk));
    let verifier = Verifier::new(VerifierConfig::new(Scheme::StandardWebhooks, [key])).unwrap();
    let body = body(1024);
    let signed = [format!("msg_1.{NOW}.").into_bytes(), body.clone()].concat();
    let signature = format!("v1a,{}", b64.encode(*pair.sk.sign(&signed, None)));
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", &NOW.to_string()[..]),
        ("webhook-signature", &signature[..]),
    ];
    assert!(verifier.verify(&headers[..], &body, NOW).is_ok());
    c.bench_function("ed25519_v1a_1KiB", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&headers[..]), black_box(&body), NOW)).is_ok())
    });
}

criterion_group!(benches, bench, ed25519);
criterion_main!(benches);
