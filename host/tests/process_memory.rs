//! The gateway process's memory: what it asks of the kernel. Its heap must never fault in
//! transparent huge pages, whose zeroing on first touch stalled every acknowledgement in a
//! burst (bench/RESULTS.md, issue 21).

mod support;

use support::{queue_config, Gateway};

#[cfg(target_os = "linux")]
#[test]
fn the_gateway_runs_with_transparent_huge_pages_off() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is delivered: the upstream's address only has to parse.
    let config = queue_config(&dir.path().join("edge.db"), "http://127.0.0.1:9/", "");
    let gateway = Gateway::start(dir.path(), &config);
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.child.id())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:"));
    // Kernels before 5.0 do not show the flag; there is nothing to read then.
    if let Some(line) = thp {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
