//! Builds the Rust example plugins (plugins/) for wasm32-wasip2 so that `payflow-edge demo`
//! can embed them: the demo then runs on embedded defaults with nothing else to build.
//!
//! If the wasm target is missing it is added with rustup (the README's first command must do
//! all the set-up); if the plugins still cannot be built, the gateway builds anyway and the demo
//! runs without plugins, saying why. Never fails the host's build.

use std::path::{Path, PathBuf};

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
    let built = payflow_build_support::cargo_build_for(
        "wasm32-wasip2",
        &repo.join("plugins"),
        &["--release"],
        &target_dir,
    );
    if let Err(e) = built {
        for name in PLUGINS {
            std::fs::write(out.join(format!("{name}.wasm")), b"").map_err(|e| e.to_string())?;
        }
        return Err(e);
    }
    for name in PLUGINS {
        let built = target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
        std::fs::copy(&built, out.join(format!("{name}.wasm")))
            .map_err(|e| format!("{}: {e}", built.display()))?;
    }
    Ok(())
}
