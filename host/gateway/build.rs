//! Embeds the web package (the dashboard's signature checker). Prefers `web/pkg` as
//! `web/build.sh` made it (size-optimised with wasm-opt, as the npm package ships); without
//! it, builds the same package here (wasm-bindgen's library, no wasm-opt: a few KB larger), so
//! the README's first command gives a dashboard with its checker. Never fails the build:
//! without a checker the dashboard says how to get one.

use std::path::PathBuf;

/// The files the dashboard serves, as the npm package names them.
const FILES: [&str; 3] = ["index.js", "payflow_verify_web.js", "payflow_verify_web_bg.wasm"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let repo = manifest.ancestors().nth(2).expect("host/gateway/ is inside the repository").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for watched in ["web/pkg", "web/src", "web/js/index.js", "web/Cargo.toml", "verify/src"] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    let dir = out.join("web-pkg");
    std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    let pkg = repo.join("web/pkg");
    let built = if FILES.iter().all(|f| pkg.join(f).is_file()) {
        for f in FILES {
            println!("cargo:rerun-if-changed={}", pkg.join(f).display());
        }
        Ok(pkg)
    } else {
        payflow_build_support::web_package(&repo, &out.join("web-build"))
    };
    for f in FILES {
        let bytes = match &built {
            Ok(from) => std::fs::read(from.join(f)).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        std::fs::write(dir.join(f), bytes).expect("OUT_DIR is writable");
    }
    if let Err(e) = built {
        println!("cargo:warning=the dashboard's signature checker is left out ({e}); web/build.sh builds it");
    }
}
