//! `payflow-edge sign` and `verify` as a user runs them: real process, stdin body, exit codes
//! 0 (valid) / 1 (invalid, reason on stderr) / 2 (usage). Signatures to verify come from
//! Python's hmac, and what `sign` prints is checked by Python's hmac, never by our own code.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BODY: &str = r#"{"id":"evt_cli_1","type":"payment.succeeded","created_at":"2024-01-15T10:30:00Z","data":{"amount":2500,"currency":"PKR","status":"completed"}}"#;
const SECRET: &str = "whsec_cli_secret";
const NOW: i64 = 1_705_314_600;

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(args)
        .env_remove("PAYFLOW_WEBHOOK_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start payflow-edge");
    // A usage error may exit before reading stdin: a broken pipe here is not a failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// Evaluates a Python expression with `hmac`, `hashlib`, `base64` and the body/secret bound.
fn python(expr: &str, secret: &str, body: &str) -> String {
    let program = format!(
        "import hmac, hashlib, base64, sys\nsecret = sys.argv[1].encode()\nbody = sys.argv[2].encode()\n\
         mac = lambda key, msg: hmac.new(key, msg, hashlib.sha256)\nprint({expr})"
    );
    let out = Command::new("python3").args(["-c", &program, secret, body]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn v1_header(ts: i64, body: &str) -> String {
    let hex = python(&format!("mac(secret, b'{ts}.' + body).hexdigest()"), SECRET, body);
    format!("X-PayFlow-Signature: t={ts},v1={hex}")
}

fn verify(extra: &[&str], body: &str) -> Output {
    let now = NOW.to_string();
    let mut args = vec!["verify", "--scheme", "payflow", "--secret", SECRET, "--now", &now];
    args.extend_from_slice(extra);
    run(&args, body)
}

#[test]
fn verify_accepts_a_python_signed_event_and_exits_0() {
    let out = verify(&["--header", &v1_header(NOW - 5, BODY)], BODY);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid payflow signature"));
}

#[test]
fn verify_exits_1_with_the_reason_on_stderr() {
    let header = v1_header(NOW - 5, BODY);
    let tampered = BODY.replace("2500", "9500");
    let stale = v1_header(NOW - 301, BODY);
    let seed_v0 = format!("X-PayFlow-Signature: {}", python("mac(secret, body).hexdigest()", SECRET, BODY));
    for (args, body, reason) in [
        (vec!["--header", header.as_str()], tampered.as_str(), "invalid_signature"),
        (vec!["--header", stale.as_str()], BODY, "timestamp_out_of_tolerance"),
        (vec![], BODY, "missing_signature"),
        (vec!["--header", "X-PayFlow-Signature: t=1,v1=abc"], BODY, "malformed_signature"),
        (vec!["--header", seed_v0.as_str(), "--require-timestamp"], BODY, "malformed_signature"),
    ] {
        let out = verify(&args, body);
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{args:?}: stderr {:?} lacks {reason}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn verify_tolerance_and_rotation_flags_apply() {
    let stale = v1_header(NOW - 400, BODY);
    assert_eq!(code(&verify(&["--header", &stale], BODY)), 1);
    assert_eq!(code(&verify(&["--header", &stale, "--tolerance", "500"], BODY)), 0);
    // Rotation: the signing secret is the second of two.
    let now = NOW.to_string();
    let out = run(
        &[
            "verify",
            "--secret",
            "whsec_old",
            "--secret",
            SECRET,
            "--now",
            &now,
            "--header",
            &v1_header(NOW, BODY),
        ],
        BODY,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let now = NOW.to_string();
    for args in [
        vec!["verify", "--secret", SECRET, "--header", "no colon here"],
        vec!["verify", "--secret", SECRET, "--scheme", "carrier-pigeon"],
        vec!["verify", "--header", "X-PayFlow-Signature: 00"],
        vec!["verify", "--secret", "", "--now", &now],
        vec!["verify", "--scheme", "standard-webhooks", "--secret", "whsec_!!not base64!!"],
        vec!["verify", "--scheme", "stripe", "--secret", SECRET, "--json-compat"],
        vec!["sign", "--scheme", "github", "--secret", "a", "--secret", "b"],
        vec!["sign", "--secret", SECRET, "--timestamp", "-5"],
        vec!["frobnicate"],
    ] {
        let out = run(&args, BODY);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?}: no explanation");
    }
}

/// `sign` prints `Name: value` lines; each is recomputed by Python and verified by our CLI.
#[test]
fn sign_output_matches_python_hmac_for_every_scheme() {
    let sw_secret = "whsec_c2lnbi10ZXN0LWtleS0xMjM0NTY3ODkw";
    let ts = NOW.to_string();
    let cases: [(&str, &str, &str, String); 6] = [
        ("payflow", SECRET, "X-PayFlow-Signature", format!("'t={NOW},v1=' + mac(secret, b'{NOW}.' + body).hexdigest()")),
        ("payflow-v0", SECRET, "X-PayFlow-Signature", "mac(secret, body).hexdigest()".into()),
        ("stripe", SECRET, "Stripe-Signature", format!("'t={NOW},v1=' + mac(secret, b'{NOW}.' + body).hexdigest()")),
        ("github", SECRET, "X-Hub-Signature-256", "'sha256=' + mac(secret, body).hexdigest()".into()),
        ("shopify", SECRET, "X-Shopify-Hmac-Sha256", "base64.b64encode(mac(secret, body).digest()).decode()".into()),
        (
            "standard-webhooks",
            sw_secret,
            "webhook-signature",
            format!("'v1,' + base64.b64encode(mac(base64.b64decode(secret[6:]), b'evt_cli_1.{NOW}.' + body).digest()).decode()"),
        ),
    ];
    for (scheme, secret, header, expr) in cases {
        let out = run(&["sign", "--scheme", scheme, "--secret", secret, "--timestamp", &ts], BODY);
        assert_eq!(code(&out), 0, "{scheme}: {}", stderr(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        let want = format!("{header}: {}", python(&expr, secret, BODY));
        assert!(printed.lines().any(|l| l == want), "{scheme}: printed {printed:?}, python says {want:?}");

        let mut args = vec!["verify", "--scheme", scheme, "--secret", secret, "--now", &ts];
        for line in printed.lines() {
            args.extend(["--header", line]);
        }
        let out = run(&args, BODY);
        assert_eq!(code(&out), 0, "{scheme} round trip: {}", stderr(&out));
    }
}

#[test]
fn sign_with_two_secrets_lists_both_signatures() {
    let ts = NOW.to_string();
    let out = run(&["sign", "--secret", "whsec_a", "--secret", "whsec_b", "--timestamp", &ts], BODY);
    assert_eq!(code(&out), 0);
    let line = String::from_utf8(out.stdout).unwrap();
    let a = python(&format!("mac(secret, b'{NOW}.' + body).hexdigest()"), "whsec_a", BODY);
    let b = python(&format!("mac(secret, b'{NOW}.' + body).hexdigest()"), "whsec_b", BODY);
    assert_eq!(line.trim(), format!("X-PayFlow-Signature: t={NOW},v1={a},v1={b}"));
}

/// A signature made the way PayFlow's page computes it (HMAC over the compact re-serialised
/// JSON, here by Node's own JSON.stringify), checked against a body sent pretty-printed: the
/// raw bytes do not match, so `verify` refuses it, and says that `--json-compat` would accept
/// it; with the flag it passes. A plain forgery gets no such hint.
#[test]
fn verify_names_json_compat_when_only_the_reserialised_body_matches() {
    let pretty = "{\n  \"id\": \"evt_cli_pretty\",\n  \"type\": \"payment.succeeded\",\n  \"data\": {\"amount\": 2500}\n}";
    let hex = support::payflow_page_signature(SECRET, pretty);
    let header = format!("X-PayFlow-Signature: {hex}");

    let refused = verify(&["--header", &header], pretty);
    assert_eq!(code(&refused), 1);
    let message = stderr(&refused);
    assert!(message.contains("invalid_signature") && message.contains("--json-compat"), "{message}");
    assert!(message.contains("PayFlow's documented algorithm"), "{message}");

    let accepted = verify(&["--header", &header, "--json-compat"], pretty);
    assert_eq!(code(&accepted), 0, "{}", stderr(&accepted));

    let forged = verify(&["--header", &format!("X-PayFlow-Signature: {}", "ab".repeat(32))], pretty);
    assert_eq!(code(&forged), 1);
    assert!(!stderr(&forged).contains("json-compat"), "{}", stderr(&forged));
}
