//! `config check` (every problem of a file at once; exit 0 valid, 1 problems, 2 unreadable),
//! shell completions and the man page, as a user runs them: the real binary.

mod support;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payflow-edge")).args(args).output().expect("payflow-edge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"nope\"\n[admin]\ntoken = \"short\"\n\
         [[endpoint]]\npath = \"/a\"\nsecrets = [\"s\"]\nupstream = \"ghost\"\n\
         [[endpoint]]\npath = \"b\"\nsecrets = [\"s\"]\n\
         [[upstream]]\nname = \"u\"\nurl = \"ftp://x\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for key in ["server.listen", "admin.token", "upstream[0].url", "endpoint[0].upstream", "endpoint[1].path"]
    {
        assert!(stderr.contains(&format!("edge.toml: {key}: ")), "{key} in:\n{stderr}");
    }
    assert!(stderr.contains("5 problems"), "{stderr}");

    std::fs::write(&file, "[server]\nlisten = 5\n").unwrap();
    let out = run(&["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("TOML parse error"));

    let out = run(&["config", "check", "--config", dir.path().join("none.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_check_passes_the_example_and_says_what_it_sets_up() {
    let example = support::manifest_dir().join("../payflow-edge.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(["config", "check", "--config", example.to_str().unwrap()])
        .env("PAYFLOW_WEBHOOK_SECRET", "whsec_example_secret")
        .env("PAYFLOW_EDGE_ADMIN_TOKEN", "an-admin-token-long-enough")
        .env("ACME_ADMIN_TOKEN", "an-acme-token-long-enough")
        .env("LEGACY_SECRET", "legacy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("valid:") && stdout.contains("endpoint"), "{stdout}");
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success());
        let script = text(&out.stdout);
        // fish writes long options without their dashes (`-l json-compat`).
        for word in ["payflow-edge", "replay", "upload", "check", "json-compat"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // bash itself parses the bash script.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("payflow-edge.bash");
    std::fs::write(&script, run(&["completions", "bash"]).stdout).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(parsed.status.success(), "{}", text(&parsed.stderr));

    let page = text(&run(&["man"]).stdout);
    assert!(page.contains(".TH payflow-edge 1"), "{page}");
    for command in ["serve", "demo", "send", "verify", "plugin", "events", "config", "completions"] {
        assert!(page.contains(command), "the man page lacks {command}");
    }
}
