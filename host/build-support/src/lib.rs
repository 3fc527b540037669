//! What the build scripts of `payflow-edge` (the demo's example plugins) and
//! `payflow-gateway` (the dashboard's signature checker) need: building a crate for a wasm
//! target from inside a build script, and the web package without `web/build.sh`.
//!
//! The README's first command must do all the set-up, so a missing target is added with
//! rustup. A build script must never fail the gateway's build over these extras: every
//! function here returns the problem for the caller to turn into a `cargo:warning`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cargo build --quiet --locked --target TARGET ARGS…` in `dir`, with its own target
/// directory (the outer build holds the lock on its own). If it fails, adds TARGET with rustup
/// and tries once more.
pub fn cargo_build_for(target: &str, dir: &Path, args: &[&str], target_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let attempt = || {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--quiet", "--locked", "--target", target])
            .args(args)
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target_dir);
        // The outer build's flags and target are for the host, not for this wasm build.
        for inherited in
            ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
        {
            command.env_remove(inherited);
        }
        command.status().map(|s| s.success()).unwrap_or(false)
    };
    if attempt() {
        return Ok(());
    }
    let added = Command::new("rustup").args(["target", "add", target]).status();
    if added.is_ok_and(|s| s.success()) && attempt() {
        return Ok(());
    }
    Err(format!("cargo build --target {target} {} in {} failed", args.join(" "), dir.display()))
}

/// `web/build.sh` without wasm-opt (so without npm): payflow-verify-web for
/// wasm32-unknown-unknown (profile `web`), then wasm-bindgen's `--target web` output beside the
/// package's `index.js`, all under `work`. Returns the folder holding the package's files.
pub fn web_package(repo: &Path, work: &Path) -> Result<PathBuf, String> {
    let target_dir = work.join("target");
    cargo_build_for(
        "wasm32-unknown-unknown",
        repo,
        &["-p", "payflow-verify-web", "--profile", "web"],
        &target_dir,
    )?;
    let wasm = target_dir.join("wasm32-unknown-unknown/web/payflow_verify_web.wasm");
    let pkg = work.join("pkg");
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .and_then(|b| b.typescript(false).generate(&pkg))
        .map_err(|e| format!("wasm-bindgen on {}: {e}", wasm.display()))?;
    std::fs::copy(repo.join("web/js/index.js"), pkg.join("index.js"))
        .map_err(|e| format!("web/js/index.js: {e}"))?;
    Ok(pkg)
}
