//! `payflow-edge sign`: prints the signature header(s) for a body on standard input.

use clap::Args;
use payflow_verify::{SignOptions, Signer};

use super::scheme::SchemeArgs;
use super::{read_stdin, unix_now, Failure};

#[derive(Args, Debug)]
pub struct SignArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// Unix time to sign with (timestamped schemes). Defaults to now.
    #[arg(long)]
    timestamp: Option<i64>,
    /// Message id (standard-webhooks' webhook-id). Defaults to the body's "id", else a new one.
    #[arg(long)]
    id: Option<String>,
}

pub fn run(args: SignArgs) -> Result<(), Failure> {
    let body = read_stdin()?;
    let id = args.id.clone().unwrap_or_else(|| message_id(&body));
    let signer = Signer::new(args.scheme.scheme(), &args.scheme.secrets)?;
    let options = SignOptions {
        timestamp: args.timestamp.unwrap_or_else(unix_now),
        id: Some(&id),
        payflow_form: args.scheme.payflow_form(),
    };
    for (name, value) in signer.sign(&body, &options)? {
        println!("{name}: {value}");
    }
    Ok(())
}

/// The body's own `id` when it has one (so retries of one event share it), else a fresh one.
fn message_id(body: &[u8]) -> String {
    if let Ok(parsed) = payflow_verify::event::parse(body) {
        return parsed.id;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("msg_{:x}{:x}", nanos, std::process::id())
}
