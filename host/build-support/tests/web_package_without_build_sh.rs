//! The web package as a build script makes it when `web/build.sh` has not run (the README's
//! first command on a fresh clone): built from source, loaded by Node, and checked against a
//! signature Node's own crypto made.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository, from the package's directory as cargo gives it when the test runs: a test
/// binary may be reused from a build in another checkout sharing the build cache, and
/// `env!("CARGO_MANIFEST_DIR")` would name that checkout (regression: this test failed with
/// "cargo build … in /check/work/main failed", a directory gone since).
fn repo() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    Path::new(&manifest).ancestors().nth(2).unwrap().to_path_buf()
}

#[test]
fn the_web_package_built_without_build_sh_verifies_what_node_signed() {
    // Under the shared build cache when there is one, so a second run rebuilds nothing.
    let scratch = tempfile::tempdir().unwrap();
    let work = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("build-support-web-package"),
        None => scratch.path().to_path_buf(),
    };
    let pkg = payflow_build_support::web_package(&repo(), &work).expect("the web package builds");
    for file in ["index.js", "payflow_verify_web.js", "payflow_verify_web_bg.wasm"] {
        assert!(pkg.join(file).metadata().map(|m| m.len() > 0).unwrap_or(false), "{file} is missing");
    }
    let script = r#"
        import crypto from 'node:crypto';
        const { verify } = await import(process.env.PKG_INDEX);
        const secret = 'whsec_build_support', body = '{"id":"evt_1","type":"payment.succeeded"}';
        const hex = crypto.createHmac('sha256', secret).update(body).digest('hex');
        const good = verify({ scheme: 'payflow', secret, body, headers: { 'X-PayFlow-Signature': hex } });
        const bad = verify({ scheme: 'payflow', secret, body: body + ' ', headers: { 'X-PayFlow-Signature': hex } });
        console.log(JSON.stringify([good, bad]));
    "#;
    let index = format!("file://{}", pkg.join("index.js").display());
    let out = Command::new("node")
        .args(["--input-type=module", "-e", script])
        .env("PKG_INDEX", index)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let verdicts: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(verdicts[0]["ok"], true, "{stdout}");
    assert_eq!(verdicts[1]["ok"], false, "{stdout}");
    assert_eq!(verdicts[1]["reason"], "invalid_signature", "{stdout}");
}
