//! Runs the vector generators kept beside the tests (Node and Python, third-party code only).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

pub fn vectors_dir() -> PathBuf {
    manifest_dir().join("tests/vectors")
}

/// Installs the generators' npm packages (pinned by package-lock.json) once, if missing.
fn ensure_npm_packages() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let dir = vectors_dir();
        if dir.join("node_modules/.package-lock.json").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed to generate test vectors (scripts/test.sh installs Node)");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    });
}

/// Runs `program script args…` in the vectors folder and parses its JSON output.
pub fn generate(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
    if program == "node" {
        ensure_npm_packages();
    }
    let out = Command::new(program)
        .arg(script)
        .args(args)
        .current_dir(vectors_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {script}: {e}"));
    assert!(out.status.success(), "{program} {script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON: {e}"))
}

/// The package's directory, read when the test runs: a test binary may be reused from a build in
/// another checkout that shares the build cache, so `env!("CARGO_MANIFEST_DIR")` (fixed at
/// compile time) can name a directory that no longer exists.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
