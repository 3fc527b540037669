//! `payflow-edge demo` — the README's "run" command — runs the whole flow on loopback and
//! exits 0 only when every outcome matched DESIGN (it checks itself; this test checks that it
//! says so, and that the narration shows each kind of outcome).

use std::process::Command;

#[test]
fn demo_runs_the_whole_flow_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_payflow-edge")).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "{\"received\":true}",
        "{\"received\":true,\"duplicate\":true}",
        "invalid_signature",
        "timestamp_out_of_tolerance",
        "missing_signature",
        "quarantined",
        "X-PayFlow-Event-Id: evt_demo_paid",
        "X-PayFlow-Event-Id: evt_demo_customer",
    ] {
        assert!(text.contains(expected), "demo output lacks {expected:?}:\n{text}");
    }
}
