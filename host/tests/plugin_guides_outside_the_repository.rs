//! The JavaScript plugin guide followed from a copy outside the repository: the template
//! folder and the WIT copied next to each other build a component the gateway accepts; without
//! the WIT the build says where to put it. (Regression: `build.mjs` hard-coded `../../wit`.)

mod support;

use std::path::Path;
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "node_modules" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn the_javascript_template_builds_from_a_copy_outside_the_repository() {
    support::guests(); // the repository's own build installed the template's npm packages
    let repo = support::manifest_dir().join("..");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("my-plugin");
    copy_dir(&repo.join("plugins/js-enrich"), &copy);
    // What `npm ci` would install, without the network: the repository's packages.
    std::os::unix::fs::symlink(
        repo.join("plugins/js-enrich/node_modules").canonicalize().unwrap(),
        copy.join("node_modules"),
    )
    .unwrap();

    let build = |wit_env: Option<&Path>| {
        let mut command = Command::new("node");
        command.current_dir(&copy).args(["build.mjs", "my_plugin.wasm"]).env_remove("PAYFLOW_WIT");
        if let Some(wit) = wit_env {
            command.env("PAYFLOW_WIT", wit);
        }
        command.output().unwrap()
    };
    let out = build(None);
    assert_eq!(out.status.code(), Some(2), "no WIT anywhere it looks");
    assert!(String::from_utf8_lossy(&out.stderr).contains("copy payflow-edge's wit/"));

    copy_dir(&repo.join("wit"), &copy.join("wit"));
    let out = build(None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let check = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(["plugin", "check"])
        .arg(copy.join("my_plugin.wasm"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
