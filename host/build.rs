//! Builds the Rust example plugins (plugins/) for wasm32-wasip2 so that `payflow-edge demo`
//! can embed them: the demo then runs on embedded defaults with nothing else to build.
//!
//! If the wasm target is missing it is added with rustup (the README's first command must do
//! all the set-up); if the plugins still cannot be built, the gateway builds anyway and the demo
//! runs without plugins, saying why. Never fails the host's build.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: [&str; 3] = ["amount_threshold", "ledger", "legacy_form"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let repo = manifest.parent().expect("host/ is inside the repository").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let watched = [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/.cargo",
        "plugins/amount-threshold",
        "plugins/ledger",
        "plugins/legacy-form",
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "verify/src",
    ];
    for watched in watched {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    let problem = match build(&repo, &out) {
        Ok(()) => String::new(),
        Err(e) => {
            println!("cargo:warning=demo plugins not built ({e}); `payflow-edge demo` runs without them");
            e
        }
    };
    std::fs::write(out.join("demo-plugins-problem.txt"), problem).expect("OUT_DIR is writable");
}

fn build(repo: &Path, out: &Path) -> Result<(), String> {
    let target_dir = out.join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let attempt = || {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--quiet", "--locked", "--release", "--target", "wasm32-wasip2"])
            .current_dir(repo.join("plugins"))
            // Its own target dir: the outer build holds the lock on ours.
            .env("CARGO_TARGET_DIR", &target_dir);
        for inherited in
            ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
        {
            command.env_remove(inherited);
        }
        command.status().map(|s| s.success()).unwrap_or(false)
    };
    if !attempt() {
        let added = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        if !added.is_ok_and(|s| s.success()) || !attempt() {
            for name in PLUGINS {
                std::fs::write(out.join(format!("{name}.wasm")), b"").map_err(|e| e.to_string())?;
            }
            return Err("cargo build --target wasm32-wasip2 in plugins/ failed".into());
        }
    }
    for name in PLUGINS {
        let built = target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
        std::fs::copy(&built, out.join(format!("{name}.wasm")))
            .map_err(|e| format!("{}: {e}", built.display()))?;
    }
    Ok(())
}
