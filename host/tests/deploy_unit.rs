//! The systemd unit in docs/deploy, as an operator installs it: `systemd-analyze verify`
//! accepts it (with the built binary where it expects /usr/local/bin/payflow-edge), and the
//! command it runs is this binary's `serve --config`.

mod support;

use std::process::Command;

#[test]
fn the_systemd_unit_verifies_and_runs_serve() {
    let unit_path = support::manifest_dir().join("../docs/deploy/payflow-edge.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart");
    assert!(exec.starts_with("/usr/local/bin/payflow-edge serve --config "), "{exec}");

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("payflow-edge.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/payflow-edge", env!("CARGO_BIN_EXE_payflow-edge")))
        .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .expect("systemd-analyze (scripts/setup.sh)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !said.contains("payflow-edge.service:"), "{said}");
}
