//! Runs one verification N times (default 10 000), for instruction counts under
//! `valgrind --tool=callgrind`: `cargo build --release --example verify_loop` then
//! `valgrind --tool=callgrind target/release/examples/verify_loop 10000 1024`.
use payflow_verify::{Scheme, SignOptions, Signer, Verifier, VerifierConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10_000, |a| a.parse().expect("N"));
    let len: usize = args.next().map_or(1024, |a| a.parse().expect("body length"));
    let body = vec![b'x'; len];
    let verifier = Verifier::new(VerifierConfig::new(Scheme::PayFlow, ["whsec_loop"])).unwrap();
    let headers =
        Signer::new(Scheme::PayFlow, &["whsec_loop"]).unwrap().sign(&body, &SignOptions::at(1)).unwrap();
    let ok = (0..n).filter(|_| verifier.verify(&headers, std::hint::black_box(&body), 1).is_ok()).count();
    assert_eq!(ok, n);
}
