//! `payflow-edge send`: signs sample events of the seed's types and POSTs them, like
//! PayFlow's "Send Test Webhook" but from the command line and scriptable.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use hyper::Method;
use payflow_gateway::samples::{sample_event, set_field};
use payflow_verify::{SignOptions, Signer};
use rand::Rng;
use serde_json::Value;

use super::client::HttpClient;
use super::scheme::SchemeArgs;
use super::{unix_now, Failure};
use payflow_gateway::http::Trust;

#[derive(Args, Debug)]
// What PayFlow itself sends (hex over the body, no timestamp), unless --scheme says otherwise.
#[command(mut_arg("scheme", |a| a.default_value("payflow-v0")))]
pub struct SendArgs {
    /// The webhook endpoint, e.g. http://127.0.0.1:8080/webhooks/payflow
    #[arg(long)]
    url: String,
    #[command(flatten)]
    scheme: SchemeArgs,
    /// Event type of the sample (payment.succeeded, payment.failed, payment.cancelled,
    /// customer.created, or any other to send an unknown type).
    #[arg(long = "type", default_value = "payment.succeeded")]
    event_type: String,
    /// Override a field: --set data.amount=5000 (JSON values, else a string). Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// How many events to send.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Event id; with --count N the same event is sent N times (to see de-duplication).
    #[arg(long)]
    id: Option<String>,
    /// For https:// URLs: trust the certificates in this PEM file (a private CA, or the
    /// gateway's own self-signed tls_cert) instead of the system's roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    cacert: Option<std::path::PathBuf>,
    /// For https:// URLs: accept any certificate (a test certificate on loopback). The
    /// connection is still encrypted, but anyone in between could read it.
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: SendArgs) -> Result<(), Failure> {
    if !args.url.contains("://") {
        return Err(anyhow::anyhow!(
            "--url {} has no scheme: did you mean http://{}? (PayFlow itself only sends to https://)",
            args.url,
            args.url
        )
        .into());
    }
    if args.count == 0 || args.concurrency == 0 {
        return Err(anyhow::anyhow!("--count and --concurrency must be at least 1").into());
    }
    let sets = args.sets.iter().map(|s| parse_set(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let signer = Arc::new(Signer::new(args.scheme.scheme(), &args.scheme.secrets)?);
    let form = args.scheme.payflow_form();
    let trust = match (args.cacert.clone(), args.insecure) {
        (Some(file), _) => Trust::CaFile(file),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    let failures = super::runtime()?.block_on(async move {
        let client = Arc::new(HttpClient::with_trust(&trust)?);
        let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.count {
            let id = args.id.clone().unwrap_or_else(|| format!("evt_{:016x}", rand::rng().random::<u64>()));
            let now = unix_now();
            let mut event = sample_event(&args.event_type, &id, now);
            for (path, value) in &sets {
                set_field(&mut event, path, value.clone())?;
            }
            let body = serde_json::to_vec(&event)?;
            let options = SignOptions { timestamp: now, id: Some(&id), payflow_form: form };
            let mut headers = signer.sign(&body, &options)?;
            headers.push(("Content-Type".into(), "application/json".into()));
            let (client, url, permit) =
                (client.clone(), args.url.clone(), limit.clone().acquire_owned().await?);
            tasks.spawn(async move {
                let result = client.request(Method::POST, &url, &headers, body).await;
                drop(permit);
                (id, result)
            });
        }
        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures = 0;
        while let Some(done) = tasks.join_next().await {
            let (id, result) = done?;
            let label = match result {
                Ok((status, reply)) => {
                    if !status.is_success() {
                        failures += 1;
                    }
                    if args.count <= 20 {
                        println!("{id}  {}  {}", status.as_u16(), String::from_utf8_lossy(&reply));
                    }
                    status.as_u16().to_string()
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{id}  error: {e:#}");
                    "error".to_string()
                }
            };
            *by_status.entry(label).or_default() += 1;
        }
        let summary: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!("sent {}: {}", args.count, summary.join(", "));
        anyhow::Ok(failures)
    })?;
    if failures > 0 {
        return Err(Failure::Negative(format!("{failures} of {} requests were not accepted", args.count)));
    }
    Ok(())
}

fn parse_set(text: &str) -> anyhow::Result<(Vec<String>, Value)> {
    let (path, value) =
        text.split_once('=').with_context(|| format!("--set {text:?}: expected PATH=VALUE"))?;
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("--set {text:?}: empty path segment");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((path, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_overrides_and_creates_fields() {
        let mut event = json!({"data": {"amount": 2500}});
        for s in ["data.amount=5000", "data.currency=\"USD\"", "data.note=plain text", "meta.x.y=true"] {
            let (path, value) = parse_set(s).unwrap();
            set_field(&mut event, &path, value).unwrap();
        }
        assert_eq!(
            event,
            json!({"data": {"amount": 5000, "currency": "USD", "note": "plain text"}, "meta": {"x": {"y": true}}})
        );
        assert!(parse_set("nothing").is_err());
        assert!(parse_set("a..b=1").is_err());
    }
}
