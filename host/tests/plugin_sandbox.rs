//! Plugins built from source (plugins/ and tests/fixtures/plugins/) run in the sandbox through
//! `payflow-edge plugin check|run`, as real processes: the example does its job, and every
//! hostile plugin fails with the right named reason instead of hurting the host.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::guests;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payflow-edge")).args(args).output().expect("payflow-edge runs")
}

fn event_file(dir: &Path, amount: i64) -> String {
    let body = support::payment_with_amount("evt_plugin_1", amount);
    let path = dir.join(format!("event-{amount}.json"));
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn run_plugin(name: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guests().join(format!("{name}.wasm"));
    let event = event_file(dir.path(), 2500);
    let mut args = vec!["plugin", "run", wasm.to_str().unwrap(), "--event", &event];
    args.extend_from_slice(extra);
    cli(&args)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn amount_threshold_drops_small_payments_and_tags_large_ones() {
    let dropped = run_plugin("amount_threshold", &["--config", "min_amount=5000"]);
    assert!(dropped.status.success(), "{}", text(&dropped));
    let out = text(&dropped);
    assert!(out.contains("outcome: drop (amount 2500 is under min_amount 5000)"), "{out}");
    assert!(out.contains("log [info] evt_plugin_1: 2500"), "{out}");
    assert!(out.contains("fuel: "), "{out}");

    let kept = run_plugin("amount_threshold", &["--config", "min_amount=100", "--config", "high_value=2000"]);
    let out = text(&kept);
    assert!(out.contains("outcome: continue") && out.contains("tag: high-value"), "{out}");

    let misconfigured = run_plugin("amount_threshold", &["--config", "min_amount=lots"]);
    assert_eq!(misconfigured.status.code(), Some(1));
    assert!(
        text(&misconfigured).contains("plugin_error: config min_amount must be an integer"),
        "{}",
        text(&misconfigured)
    );
}

#[test]
fn hostile_plugins_fail_with_the_reason_named() {
    let cases = [
        ("spin", "fuel_exhausted"),
        ("memory_bomb", "memory_exhausted"),
        ("deep_recursion", "trap: wasm trap: call stack exhausted"),
        ("panic", "trap: wasm trap: wasm `unreachable`"),
        ("huge_output", "bad_output: the outcome is 8388608 bytes"),
        ("kv_flood", "plugin_error: kv quota of 1048576 bytes exceeded"),
    ];
    for (name, reason) in cases {
        let output = run_plugin(name, &[]);
        assert_eq!(output.status.code(), Some(1), "{name}: {}", text(&output));
        assert!(text(&output).contains(&format!("plugin run failed: {reason}")), "{name}: {}", text(&output));
    }
    // The panic message reaches the run's log (the plugin's stderr).
    assert!(text(&run_plugin("panic", &[])).contains("plugin bug on evt_plugin_1"));
}

/// A run's kv reads and writes are bounded: each read is checked and each write applied when
/// the step commits, on the writer every merchant shares, and nothing bounded the reads but
/// fuel, nor the writes but the quota's bytes (one merchant's loop could hold that writer for
/// seconds per event). The thousandth call is allowed; the next read stops the run, the next
/// write is refused (the guest gets the refusal, as for its quota), each naming the limit and
/// the fix. The gateway's runs share this code.
#[test]
fn a_plugin_using_kv_past_the_limits_per_run_is_stopped_with_a_reason() {
    for config in ["reads=1000", "writes=1000"] {
        let within = run_plugin("kv_scan", &["--config", config]);
        assert!(within.status.success(), "{config}: {}", text(&within));
        assert!(text(&within).contains("outcome: continue"), "{config}: {}", text(&within));
    }
    let cases = [
        ("reads=1001", "trap: kv_reads: a run may read kv at most 1000 times"),
        ("writes=1001", "plugin_error: kv_writes: a run may write kv at most 1000 times"),
    ];
    for (config, reason) in cases {
        let past = run_plugin("kv_scan", &["--config", config]);
        assert_eq!(past.status.code(), Some(1), "{config}: {}", text(&past));
        let out = text(&past);
        assert!(out.contains(&format!("plugin run failed: {reason}")), "{config}: {out}");
        assert!(out.contains("keep what one event needs under fewer keys"), "{config}: {out}");
    }
}

#[test]
fn a_spinning_plugin_with_fuel_to_spare_is_stopped_by_its_deadline() {
    let output = run_plugin("spin", &["--fuel", "100000000000000", "--timeout-ms", "200"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("plugin run failed: timeout"), "{}", text(&output));
}

/// Regression (issue 16, item 2): a guest sleeping on WASI's monotonic clock ran 3 s under
/// `timeout_ms = 200`, holding its plugin thread, because the epoch deadline only stops wasm
/// code, not a guest blocked in the host.
#[test]
fn a_sleeping_plugin_is_stopped_at_its_deadline() {
    let started = std::time::Instant::now();
    let output = run_plugin("clocks", &["--config", "sleep_ms=3000", "--timeout-ms", "200"]);
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("plugin run failed: timeout"), "{}", text(&output));
    // The whole process (start-up and compiling included) ends long before the 3 s sleep.
    assert!(took < std::time::Duration::from_millis(2500), "the sleep was not cut short: {took:?}");
    // A short sleep within the deadline is untouched.
    let output = run_plugin("clocks", &["--config", "sleep_ms=20", "--timeout-ms", "2000"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("log [info] slept 2"), "{}", text(&output));
}

/// Regression (issue 16, item 6): `wasi:clocks/wall-clock.now()` returned the host's time,
/// though the contract promises plugins no wall clock. It reads the Unix epoch: plugins are
/// deterministic, and the event carries its own times.
#[test]
fn the_wall_clock_reads_the_unix_epoch() {
    let output = run_plugin("clocks", &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("log [info] wall clock: 0 s"), "{}", text(&output));
}

/// Regression (issue 16, item 4): an 8 MiB drop reason was stored in full under a 4 KiB
/// output cap, error messages and tags (20,000 of them) were not bounded at all, and 100,000 empty log lines
/// passed a byte cap. Each is now cut with a marker or counted.
#[test]
fn everything_a_plugin_says_is_bounded_and_the_excess_counted() {
    let drop = run_plugin("loud", &["--config", "mode=drop"]);
    assert_eq!(drop.status.code(), Some(1), "{}", text(&drop));
    assert!(text(&drop).contains("bad_output: the outcome is 8388608 bytes"), "{}", text(&drop));

    let error = run_plugin("loud", &["--config", "mode=error"]);
    let out = text(&error);
    assert_eq!(error.status.code(), Some(1), "{out}");
    assert!(
        out.contains("plugin_error: rrr") && out.contains(&format!("[{} more bytes cut]", (8 << 20) - 1024)),
        "{out}"
    );
    assert!(out.len() < 4096, "the message was kept whole: {} bytes", out.len());

    let tags = run_plugin("loud", &["--config", "mode=tags"]);
    let out = text(&tags);
    assert!(tags.status.success(), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("tag: ")).count(), 32, "{out}");
    assert!(out.contains("19968 tags dropped (at most 32 per run)"), "{out}");

    let lines = run_plugin("loud", &["--config", "mode=lines"]);
    let out = text(&lines);
    assert!(lines.status.success(), "{out}");
    let kept = out.lines().filter(|l| l.starts_with("log [info]")).count();
    // 16 KiB of log at 32 bytes a line at the least.
    assert!(kept > 0 && kept <= 512, "{kept} empty lines kept");
    assert!(out.contains(&format!("{} more log lines, 0 more log bytes dropped", 100_000 - kept)), "{out}");
}

#[test]
fn a_log_flood_is_capped_and_the_run_still_succeeds() {
    let output = run_plugin("log_flood", &[]);
    assert!(output.status.success(), "{}", text(&output));
    let out = text(&output);
    assert!(out.contains("outcome: continue"), "{out}");
    // What it printed reaches its log too (WASI's stdout, set up on the plugin's first print).
    assert!(out.contains(&format!("log [stdout] {}", "x".repeat(1000))), "{out}");
    assert!(out.contains("more log bytes dropped (log_bytes cap)"), "{out}");
    assert!(out.len() < 64 << 10, "the kept log is capped: {} bytes printed", out.len());
}

#[test]
fn check_refuses_what_is_not_a_plugin_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let random = dir.path().join("random.wasm");
    std::fs::write(
        &random,
        (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let foreign = guests().join("foreign_import.wasm");
    let cases = [
        (core.to_str().unwrap(), "core WebAssembly module"),
        (random.to_str().unwrap(), "not WebAssembly"),
        (foreign.to_str().unwrap(), "evil:escape/net"),
    ];
    for (file, message) in cases {
        let output = cli(&["plugin", "check", file]);
        assert_eq!(output.status.code(), Some(1), "{file}: {}", text(&output));
        assert!(text(&output).contains(message), "{file}: {}", text(&output));
    }
    let ok = cli(&["plugin", "check", guests().join("amount_threshold.wasm").to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("payflow:plugin/plugin@0.1.0 component"));
}

#[test]
fn a_warm_instance_serves_many_events_and_is_replaced_after_a_failure() {
    use payflow_plugins::{Action, Event, Failure, Limits, MemoryKv, Runtime};
    use std::collections::HashMap;
    use std::sync::Arc;

    let runtime = Runtime::new(1).unwrap();
    let event = |amount: i64| {
        let body = support::payment_with_amount("evt_warm", amount);
        Event {
            id: "evt_warm".into(),
            event_type: "payment.succeeded".into(),
            endpoint: "/webhooks/payflow".into(),
            merchant: "default".into(),
            body: serde_json::to_vec(&body).unwrap(),
            received_at_ms: 0,
        }
    };
    let config = HashMap::from([("min_amount".to_string(), "1000".to_string())]);
    let limits = Limits::default();

    let threshold = runtime.load(&std::fs::read(guests().join("amount_threshold.wasm")).unwrap()).unwrap();
    let mut warm = threshold.warm(&config, Arc::new(MemoryKv::default()), &limits);
    for (amount, dropped) in [(500, true), (5000, false), (999, true), (1000, false)] {
        let run = warm.run(&event(amount));
        let outcome = run.result.unwrap();
        assert_eq!(matches!(outcome.action, Action::Drop(_)), dropped, "amount {amount}");
        // Logs are per run, not accumulated across the instance's life.
        assert!(run.logs.len() <= 1, "{:?}", run.logs);
    }

    let panics = runtime.load(&std::fs::read(guests().join("panic.wasm")).unwrap()).unwrap();
    let mut warm = panics.warm(&config, Arc::new(MemoryKv::default()), &limits);
    for _ in 0..3 {
        assert!(matches!(warm.run(&event(5000)).result, Err(Failure::Trap(_))));
    }
}

/// `plugin run` as a plugin's author iterates: the event from standard input, a generated
/// sample instead of a file, kv kept between runs in a file (the ledger plugin's running total
/// grows run after run), and a warning when the gateway would quarantine the event.
#[test]
fn plugin_run_reads_stdin_generates_samples_keeps_kv_and_warns_of_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guests().join("ledger.wasm");
    let wasm = wasm.to_str().unwrap();
    let kv = dir.path().join("ledger-kv.json");
    let kv = kv.to_str().unwrap();

    // Two samples, two different ids: the total for the sample's customer is added twice.
    for _ in 0..2 {
        let out = cli(&["plugin", "run", wasm, "--sample", "payment.succeeded", "--kv", kv]);
        assert!(out.status.success(), "{}", text(&out));
        std::thread::sleep(std::time::Duration::from_millis(1100)); // a new sample id each second
    }
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(kv).unwrap()).unwrap();
    let (key, value) = saved.as_object().unwrap().iter().next().expect("the ledger wrote its total");
    assert!(key.starts_with("total:"), "{saved}");
    let total: i64 = value.as_str().unwrap().lines().next().unwrap().parse().unwrap();
    let out = cli(&["plugin", "run", wasm, "--sample", "payment.succeeded"]);
    let one = text(&out);
    assert!(one.contains("outcome: continue"), "{one}");
    assert!(total > 0 && total % 2 == 0, "two sample amounts: {saved}");

    // --event - reads standard input; an amount the gateway would quarantine is warned of.
    let body = serde_json::to_vec(&support::payment_with_amount("evt_stdin", 0)).unwrap();
    let body = String::from_utf8(body).unwrap().replace("\"amount\":0", "\"amount\":25.5");
    let mut child = Command::new(env!("CARGO_BIN_EXE_payflow-edge"))
        .args(["plugin", "run", wasm, "--event", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("would quarantine") && stderr.contains("amount"), "{stderr}");

    let out = cli(&["plugin", "run", wasm]);
    assert_eq!(out.status.code(), Some(2), "--event or --sample is required");
}
