//! Parses the seed's `payment.succeeded` event N times (default 200 000) and prints the time per
//! parse; for A/B timings of the event parser, and instruction counts under
//! `valgrind --tool=callgrind target/release/examples/parse_loop 10000`.
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).map_or(200_000, |a| a.parse().expect("N"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/events/payment_succeeded.json");
    let body = std::fs::read(path).expect("the seed fixture");
    let started = Instant::now();
    for _ in 0..n {
        let parsed = payflow_verify::event::parse(std::hint::black_box(&body)).expect("the fixture parses");
        std::hint::black_box(parsed.checked.ok());
    }
    let per = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} parses of {} bytes: {per:.0} ns each", body.len());
}
