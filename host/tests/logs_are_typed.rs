//! The gateway's logs as an operator's tooling reads them. JSON logs carry typed fields: a
//! status is a number, and an absent value is no field, never the Debug text of an Option
//! (regression: `"status":"Some(200)"`, `"error":"None"`). Logs written to a file or a pipe
//! carry no terminal colour codes.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_typed_fields_and_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.script(&[(503, &[])]);
    let config =
        queue_config(&dir.path().join("db"), &upstream.url(), "retry_base_ms = 20\nretry_max_ms = 50");
    let gw = Gateway::start_with_env(dir.path(), &config, &[("PAYFLOW_EDGE_LOG_FORMAT", "json")]);
    let client = client();
    assert_eq!(send_event(&client, &gw.url("/webhooks/payflow"), "evt_logged").await.0, 200);
    wait_for_status(&client, &gw, "evt_logged", "delivered", Duration::from_secs(10)).await;

    let logs = gw.logs();
    assert!(!logs.contains('\u{1b}'), "no ANSI escapes in a log file:\n{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let attempts: Vec<&Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "delivery attempt").collect();
    assert_eq!(attempts.len(), 2, "a 503, then a 200:\n{logs}");
    assert_eq!(attempts[0]["fields"]["status"], 503);
    assert_eq!(attempts[0]["fields"]["outcome"], "retry");
    assert!(attempts[0]["fields"]["next_attempt_at_ms"].is_i64());
    assert_eq!(attempts[1]["fields"]["status"], 200);
    assert_eq!(attempts[1]["fields"]["outcome"], "delivered");
    assert!(attempts[1]["fields"].get("error").is_none(), "no error, no field: {}", attempts[1]);
    for line in &lines {
        for (name, value) in line["fields"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            assert!(!text.starts_with("Some(") && text != "None", "{name} = {text} in {line}");
        }
    }
}
