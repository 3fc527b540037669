//! Copies in the web package (web/pkg) for the dashboard's signature checker, when
//! `web/build.sh` has built it. Never fails the build: without it the dashboard says how to
//! get the checker.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let repo = manifest.ancestors().nth(2).expect("host/gateway/ is inside the repository").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    embed_web_package(&repo, &out);
}

/// The web package's files for the dashboard's signature checker, when `web/build.sh` has
/// built them; empty files otherwise (the dashboard then says how to get the checker).
fn embed_web_package(repo: &Path, out: &Path) {
    let pkg = repo.join("web/pkg");
    println!("cargo:rerun-if-changed={}", pkg.display());
    let dir = out.join("web-pkg");
    std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    let files = ["index.js", "payflow_verify_web.js", "payflow_verify_web_bg.wasm"];
    let complete = files.iter().all(|f| pkg.join(f).is_file());
    if !complete {
        println!("cargo:warning=web/pkg is not built: the dashboard's signature checker is left out (run web/build.sh)");
    }
    for f in files {
        println!("cargo:rerun-if-changed={}", pkg.join(f).display());
        let bytes = if complete { std::fs::read(pkg.join(f)).unwrap_or_default() } else { Vec::new() };
        std::fs::write(dir.join(f), bytes).expect("OUT_DIR is writable");
    }
}
