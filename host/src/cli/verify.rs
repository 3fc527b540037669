//! `payflow-edge verify`: checks a body on standard input against signature headers.

use clap::Args;
use payflow_verify::{Verifier, VerifierConfig, DEFAULT_TOLERANCE_SECS};

use super::scheme::{parse_header, SchemeArgs};
use super::{read_stdin, unix_now, Failure};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// A received header, 'Name: value'; repeat for each (e.g. the three webhook-* headers).
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// Largest accepted age (or lead) of a signed timestamp, in seconds.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE_SECS)]
    tolerance: u64,
    /// Verify as if it were this unix time (e.g. to check a stored request).
    #[arg(long)]
    now: Option<i64>,
    /// payflow: refuse the untimestamped v0 form.
    #[arg(long)]
    require_timestamp: bool,
    /// payflow: also accept PayFlow's documented algorithm, an HMAC over
    /// JSON.stringify(JSON.parse(body)).
    #[arg(long)]
    json_compat: bool,
}

pub fn run(args: VerifyArgs) -> Result<(), Failure> {
    let headers = args.headers.iter().map(|h| parse_header(h)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut config = VerifierConfig::new(args.scheme.scheme(), args.scheme.secrets.clone());
    config.tolerance_secs = args.tolerance;
    config.require_timestamp = args.require_timestamp;
    config.json_compat = args.json_compat;
    let verifier = Verifier::new(config)?;
    let body = read_stdin()?;
    let now = args.now.unwrap_or_else(unix_now);
    let verified = verifier.verify(&headers, &body, now).map_err(|e| {
        let mut message = e.to_string();
        if verifier.would_match_json_compat(&headers, &body, now) {
            message.push_str(
                "\nhint: it matches PayFlow's documented algorithm (HMAC over JSON.stringify(JSON.parse(body))): \
                 the body was re-serialised after signing. --json-compat accepts it (json_compat = true on a \
                 gateway endpoint)",
            );
        }
        Failure::Negative(message)
    })?;
    let mut line = format!("valid {} signature", verifier.scheme());
    if let Some(ts) = verified.timestamp {
        line.push_str(&format!(", signed at {ts}"));
    }
    if verified.via_json_compat {
        line.push_str(" (matched PayFlow's documented JSON.stringify form)");
    }
    println!("{line}");
    Ok(())
}
