//! `serve` refuses a bad configuration before doing anything, exits 2, and the message names
//! the key and the problem.

use std::process::Command;

fn serve(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payflow-edge.toml");
    std::fs::write(&path, config.replace("DB", &dir.path().join("db").display().to_string())).unwrap();
    let refused = serve_file(&path);
    assert!(!dir.path().join("db").exists(), "a refused config must not create the database");
    refused
}

/// `serve --config path`: its exit code and what it said.
fn serve_file(path: &std::path::Path) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_payflow-edge"));
    command.args(["serve", "--config"]).arg(path).env_remove("PAYFLOW_WEBHOOK_SECRET");
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const BASE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"DB\"\n";
const PLUGIN: &str = "[[plugin]]\nname = \"p\"\n";

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let endpoint = "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"s\"]\n";
    let cases: Vec<(String, &[&str])> = vec![
        (format!("{BASE}{endpoint}upstream = \"nope\"\n"), &["endpoint[0].upstream", "unknown upstream \"nope\""]),
        (format!("{BASE}[[endpoint]]\npath = \"/wh\"\nsecrets = []\n"), &["endpoint[0].secrets", "non-empty secret"]),
        (format!("{BASE}[[endpoint]]\npath = \"/wh\"\nsecrets = [\"\"]\n"), &["endpoint[0].secrets"]),
        (format!("{BASE}[[endpoint]]\npath = \"/wh\"\nsecrets = [\"${{PAYFLOW_WEBHOOK_SECRET}}\"]\n"), &["endpoint[0].secrets[0]", "PAYFLOW_WEBHOOK_SECRET is not set"]),
        (BASE.replace("127.0.0.1:0", "localhost-ish") + endpoint, &["server.listen", "not an address"]),
        (format!("{BASE}{endpoint}scheme = \"carrier-pigeon\"\n"), &["endpoint[0].scheme", "unknown scheme"]),
        (format!("{BASE}{endpoint}scheme = \"stripe\"\njson_compat = true\n"), &["endpoint[0].scheme", "json_compat"]),
        (format!("{BASE}{endpoint}mode = \"proxy\"\n"), &["endpoint[0].upstream", "required in proxy mode"]),
        (
            format!("{BASE}[telemetry]\notlp_endpoint = \"https://collector:4318\"\n{endpoint}"),
            &["telemetry.otlp_endpoint", "http:// URL of an OTLP/HTTP collector"],
        ),
        (
            format!("{BASE}[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample = 1\n{endpoint}"),
            &["unknown field `sample`"],
        ),
        (
            format!("{BASE}{endpoint}[[endpoint.route]]\nupstream = \"ghost\"\n"),
            &["endpoint[0].route[0].upstream", "unknown upstream \"ghost\""],
        ),
        (
            format!("{BASE}{endpoint}mode = \"proxy\"\nupstream = \"u\"\n[[endpoint.route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["endpoint[0].route", "routes need mode = \"queue\""],
        ),
        (
            format!("{BASE}{endpoint}[[endpoint.route]]\nupstream = \"u\"\nwhere = {{ \"data..currency\" = \"PKR\" }}\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["endpoint[0].route[0].where", "not a dotted JSON path"],
        ),
        (
            format!("{BASE}{endpoint}[[endpoint.route]]\nupstream = \"u\"\nwhere = {{ \"data.currency\" = {{ nested = 1 }} }}\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["where"],
        ),
        (
            format!("{BASE}{endpoint}[[endpoint.route]]\nupstream = \"u\"\ntypes = [\"\"]\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["endpoint[0].route[0].types", "must not be empty"],
        ),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nrate = \"fast\"\n"),
            &["upstream[0].rate", "\"50/s\""],
        ),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nrate = \"0/s\"\n"),
            &["upstream[0].rate"],
        ),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nbreaker = {{ failures = 0 }}\n"),
            &["upstream[0].breaker.failures", "at least 1"],
        ),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nordering_key = \"data.\"\n"),
            &["upstream[0].ordering_key", "not a dotted JSON path"],
        ),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[endpoint.route]]\nupstream = \"v\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nordering_key = \"data.id\"\n[[upstream]]\nname = \"v\"\nurl = \"http://127.0.0.1:1/\"\nordering_key = \"data.customer_email\"\n"),
            &["endpoint[0].upstream", "one ordering key"],
        ),
        (format!("{BASE}{endpoint}mode = \"carrier\"\n"), &["mode", "unknown variant"]),
        (format!("{BASE}{endpoint}secret = [\"typo\"]\n"), &["unknown field `secret`"]),
        (format!("{BASE}{endpoint}{endpoint}"), &["endpoint[1].path", "used by two endpoints"]),
        (format!("{BASE}[[endpoint]]\npath = \"wh\"\nsecrets = [\"s\"]\n"), &["endpoint[0].path", "must start with '/'"]),
        (format!("{BASE}{endpoint}merchant = \"ghost\"\n"), &["endpoint[0].merchant", "unknown merchant"]),
        (
            format!("{BASE}{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"ftp://x\"\n"),
            &["upstream[0].url", "http://"],
        ),
        (
            format!("{BASE}[[merchant]]\nid = \"acme\"\n{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nmerchant = \"acme\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["endpoint[0].upstream", "belongs to merchant \"acme\""],
        ),
        (format!("{BASE}[admin]\ntoken = \"short\"\n{endpoint}"), &["admin.token", "at least 16"]),
        (BASE.to_string(), &["at least one [[endpoint]]"]),
        (format!("{BASE}{endpoint}plugins = [\"x\"]\n"), &["endpoint[0].plugins[0]", "unknown plugin \"x\""]),
        (
            format!("{BASE}[[merchant]]\nid = \"acme\"\n{endpoint}plugins = [\"p\"]\n{PLUGIN}merchant = \"acme\"\n"),
            &["endpoint[0].plugins[0]", "belongs to merchant \"acme\""],
        ),
        (format!("{BASE}{endpoint}plugins = [\"p\", \"p\"]\n{PLUGIN}"), &["endpoint[0].plugins[1]", "listed twice"]),
        (format!("{BASE}{endpoint}{PLUGIN}{PLUGIN}"), &["plugin[1].name", "declared twice"]),
        (format!("{BASE}{endpoint}[[plugin]]\nname = \"no spaces\"\n"), &["plugin[0].name", "letters, digits"]),
        (format!("{BASE}{endpoint}{PLUGIN}merchant = \"ghost\"\n"), &["plugin[0].merchant", "unknown merchant"]),
        (format!("{BASE}{endpoint}{PLUGIN}memory_mb = 4096\n"), &["plugin[0].memory_mb", "between 1 and 256"]),
        (format!("{BASE}{endpoint}{PLUGIN}timeout_ms = 0\n"), &["plugin[0].timeout_ms", "between 1 and 60000"]),
        (format!("{BASE}{endpoint}{PLUGIN}fule = 10\n"), &["unknown field `fule`"]),
        (format!("{BASE}{endpoint}[plugins]\nmax_attempts = 0\n"), &["plugins.max_attempts", "at least 1"]),
        (format!("{BASE}{endpoint}[plugins]\nmax_versions = 1\n"), &["plugins.max_versions", "at least 2"]),
        (
            format!("{BASE}{endpoint}[plugins]\ndry_run_timeout_ms = 50\n"),
            &["plugins.dry_run_timeout_ms", "1000 to 3600000"],
        ),
        (
            format!("{BASE}{endpoint}{PLUGIN}path = \"/nonexistent/p.wasm\"\n"),
            &["plugin p", "/nonexistent/p.wasm"],
        ),
        (
            format!("{BASE}{endpoint}[[upstream]]\nname = \"@plugins\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["upstream[0].name", "start with '@'"],
        ),
        (BASE.replace("[store]", "max_header_bytes = 1024\n[store]") + endpoint, &["server.max_header_bytes", "from 8192"]),
        (
            BASE.replace("[store]\n", "[store]\nurl = \"mysql://db/payflow\"\n") + endpoint,
            &["store.url", "PostgreSQL URL", "store.path"],
        ),
        (
            BASE.replace("[store]\n", "[store]\nurl = \"postgres://${PAYFLOW_WEBHOOK_SECRET}@db/p\"\n") + endpoint,
            &["store.url", "PAYFLOW_WEBHOOK_SECRET is not set"],
        ),
        (
            BASE.replace("[store]\n", "[store]\nurl = \"postgres://db/p\"\nlease_ms = 1000\n")
                + &format!("{endpoint}upstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\ntimeout_ms = 5000\n"),
            &["store.lease_ms", "slowest upstream's timeout_ms (5000)"],
        ),
        (
            BASE.replace("[store]\n", "[store]\nurl = \"postgresql://db/p\"\npool_size = 1\n") + endpoint,
            &["store.pool_size", "at least 2"],
        ),
        (
            BASE.replace("[store]\n", "[store]\ncommit_delay_us = 50000\n") + endpoint,
            &["store.commit_delay_us", "at most 10000", "0 turns it off"],
        ),
        (
            BASE.replace("[store]\n", "[store]\nwal_prefill_mb = 100000\n") + endpoint,
            &["store.wal_prefill_mb", "at most 4096", "0 turns it off"],
        ),
        (
            format!("{BASE}{endpoint}[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nsign_secret = \"s\"\nsign_scheme = \"payflow-v2\"\n"),
            &["sign_scheme", "payflow-v0", "standard-webhooks"],
        ),
        (
            format!("{BASE}{endpoint}[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nsign_secret = \"s\"\nsign_scheme = \"none\"\n"),
            &["upstream[0].sign_scheme", "remove sign_secret"],
        ),
        (
            format!("{BASE}{endpoint}[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nsign_scheme = \"payflow\"\n"),
            &["upstream[0].sign_secret", "sign_scheme = \"payflow\" needs a sign_secret"],
        ),
        (
            format!("{BASE}{endpoint}[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\nsign_secret = \"not-a-key\"\nsign_scheme = \"standard-webhooks\"\n"),
            &["upstream[0].sign_secret", "whsec_"],
        ),
        (format!("{BASE}{endpoint}dedup_scope = \"/elsewhere\"\n"), &["endpoint[0].dedup_scope", "no endpoint's path"]),
        (format!("{BASE}{endpoint}dedup_scope = \"a b\"\n"), &["endpoint[0].dedup_scope", "letters, digits"]),
        (
            format!("{BASE}[[merchant]]\nid = \"acme\"\n{endpoint}[[endpoint]]\npath = \"/b\"\nmerchant = \"acme\"\nsecrets = [\"s\"]\ndedup_scope = \"/wh\"\n"),
            &["endpoint[1].dedup_scope", "\"/wh\" is an endpoint of merchant \"default\", not \"acme\""],
        ),
        (
            format!("{BASE}{endpoint}dedup_scope = \"s\"\n[[endpoint]]\npath = \"/b\"\nsecrets = [\"s\"]\ndedup_scope = \"/wh\"\n"),
            &["endpoint[1].dedup_scope", "de-duplicates in scope \"s\": name that scope instead"],
        ),
        (
            format!("{BASE}{endpoint}dedup_scope = \"s\"\n[[endpoint]]\npath = \"/b\"\nsecrets = [\"s\"]\ndedup_scope = \"s\"\nmode = \"proxy\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/\"\n"),
            &["endpoint[1].dedup_scope", "must use one mode"],
        ),
        ("this is not toml".to_string(), &["TOML parse error"]),
    ];
    for (config, needles) in cases {
        let (code, stderr) = serve(&config);
        assert_eq!(code, Some(2), "config:\n{config}\nstderr: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "stderr {stderr:?} lacks {needle:?} for:\n{config}");
        }
    }
}

#[test]
fn env_vars_are_expanded_and_a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = serve_file(&dir.path().join("nope.toml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nope.toml"));

    let config = payflow_config::Config::parse(
        "[[endpoint]]\npath = \"/wh\"\nsecrets = [\"pre-${A}-${B_2}\"]\n",
        |name| Some(format!("<{name}>")),
    )
    .unwrap();
    assert_eq!(config.endpoint[0].secrets[0].value(), "pre-<A>-<B_2>");
    let err =
        payflow_config::Config::parse("[[endpoint]]\npath = \"/wh\"\nsecrets = [\"${OOPS\"]\n", |_| None);
    assert!(err.unwrap_err().to_string().contains("unterminated"));
}

#[test]
fn the_example_config_in_the_repo_is_valid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .join("../payflow-edge.example.toml"),
    )
    .unwrap();
    let config =
        payflow_config::Config::parse(&text, |name| Some(format!("value-of-{name}-0123456789"))).unwrap();
    assert_eq!(config.endpoint[0].secrets[0].value(), "value-of-PAYFLOW_WEBHOOK_SECRET-0123456789");
    assert_eq!(config.upstream[0].max_attempts, 8);
    // Without its variables it says which one is missing.
    let err = payflow_config::Config::parse(&text, |_| None).unwrap_err().to_string();
    assert!(err.contains("PAYFLOW_EDGE_ADMIN_TOKEN is not set"), "{err}");
}

/// Regression: a TOML error was printed twice and never named the file; an I/O error repeated
/// its cause (`Address already in use (os error 98): Address already in use (os error 98)`);
/// a missing file gave no idea where to start. Each is now said once, with the file.
#[test]
fn each_error_is_said_once_and_names_its_file() {
    let (code, stderr) = serve(&format!("{BASE}[[endpoint]]\npath = 5\n"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("payflow-edge.toml: TOML parse error at line 6"), "{stderr}");
    assert_eq!(stderr.matches("TOML parse error").count(), 1, "{stderr}");

    let (code, stderr) = serve(&format!("{BASE}[[endpoint]]\npath = \"/wh\"\nsecrets = []\n"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("payflow-edge.toml: endpoint[0].secrets"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let (_, stderr) = serve_file(&dir.path().join("nope.toml"));
    assert!(stderr.contains("payflow-edge.example.toml"), "where to start: {stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");

    // A port already taken: the operating system's words once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!("{BASE}[[endpoint]]\npath = \"/wh\"\nsecrets = [\"s\"]\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("DB", &dir.path().join("db").display().to_string());
    std::fs::write(dir.path().join("taken.toml"), config).unwrap();
    let (code, stderr) = serve_file(&dir.path().join("taken.toml"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
}
