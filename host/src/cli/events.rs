//! `payflow-edge events list|show|replay`: the admin API from the command line.

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::client::HttpClient;
use super::Failure;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The admin listener.
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_URL", default_value = "http://127.0.0.1:9090", global = true)]
    admin: String,
    /// Admin bearer token (the operator's or a merchant's).
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Subcommand, Debug)]
enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only this status (queued, delivered, dead, quarantined, stored, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this endpoint path.
        #[arg(long)]
        endpoint: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one event with its deliveries and attempts (JSON).
    Show { id: String },
    /// Deliver an event again (e.g. a dead one, once the upstream is fixed).
    Replay { id: String },
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(args: EventsArgs) -> Result<(), Failure> {
    let token = args
        .token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("an admin token is needed: --token or $PAYFLOW_EDGE_ADMIN_TOKEN"))?;
    let base = args.admin.trim_end_matches('/').to_string();
    let (method, url) = match &args.command {
        EventsCommand::List { status, event_type, endpoint, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("status", status), ("type", event_type), ("endpoint", endpoint)] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", encode(v)));
                }
            }
            (Method::GET, format!("{base}/api/events?{}", query.join("&")))
        }
        EventsCommand::Show { id } => (Method::GET, format!("{base}/api/events/{}", encode(id))),
        EventsCommand::Replay { id } => (Method::POST, format!("{base}/api/events/{}/replay", encode(id))),
    };
    let headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];
    let (status, body) =
        super::runtime()?.block_on(HttpClient::new().request(method, &url, &headers, Vec::new()))?;
    let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        let reason = reply.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_string();
        return Err(Failure::Negative(format!("{} {reason}", status.as_u16())));
    }
    match args.command {
        EventsCommand::List { .. } => {
            println!(
                "{:<28} {:<10} {:<20} {:<12} {:<24} received",
                "id", "merchant", "type", "status", "endpoint"
            );
            for e in reply["events"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:<10} {:<20} {:<12} {:<24} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["merchant"].as_str().unwrap_or(""),
                    e["type"].as_str().unwrap_or("-"),
                    e["status"].as_str().unwrap_or(""),
                    e["endpoint"].as_str().unwrap_or(""),
                    payflow_edge::samples::rfc3339(e["received_at_ms"].as_i64().unwrap_or(0) / 1000),
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default()),
    }
    Ok(())
}
