//! `payflow-edge events list|show|replay`: the admin API from the command line.

use clap::{Args, Subcommand};
use hyper::Method;

use super::client::{encode, AdminArgs};
use super::Failure;

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Subcommand, Debug)]
enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only this status (queued, delivered, dead, dropped, quarantined, stored, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this endpoint path.
        #[arg(long)]
        endpoint: Option<String>,
        /// Events per page (the API caps it at 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one event with its deliveries and attempts (JSON).
    Show {
        id: String,
        #[command(flatten)]
        address: EventAddress,
    },
    /// Deliver an event again (e.g. a dead one, once the upstream is fixed).
    Replay {
        id: String,
        #[command(flatten)]
        address: EventAddress,
        /// Deliver it even if it is quarantined (it breaks PayFlow's event model); who forced
        /// it, and when, is kept on the event.
        #[arg(long)]
        force: bool,
    },
}

/// Which of several events with one id: ids are unique per merchant and scope only.
#[derive(Args, Debug)]
struct EventAddress {
    /// The merchant whose event it is, when several hold that id (operator's token).
    #[arg(long)]
    merchant: Option<String>,
    /// Its de-duplication scope (the endpoint path, unless endpoints share a `dedup_scope`),
    /// when several endpoints received that id.
    #[arg(long)]
    scope: Option<String>,
}

/// `/api/events/{id}{action}`, with `?merchant=` and `?scope=` when named.
fn event_url(id: &str, action: &str, address: &EventAddress) -> String {
    let query: Vec<String> = [("merchant", &address.merchant), ("scope", &address.scope)]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", encode(value.as_deref()?))))
        .collect();
    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    format!("/api/events/{}{action}{query}", encode(id))
}

pub fn run(args: EventsArgs) -> Result<(), Failure> {
    let (method, url) = match &args.command {
        EventsCommand::List { status, event_type, endpoint, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("status", status), ("type", event_type), ("endpoint", endpoint)] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", encode(v)));
                }
            }
            (Method::GET, format!("/api/events?{}", query.join("&")))
        }
        EventsCommand::Show { id, address } => (Method::GET, event_url(id, "", address)),
        EventsCommand::Replay { id, address, .. } => (Method::POST, event_url(id, "/replay", address)),
    };
    let body = match &args.command {
        EventsCommand::Replay { force: true, .. } => br#"{"force":true}"#.to_vec(),
        _ => Vec::new(),
    };
    let reply = args.admin.call(method, &url, body)?;
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
                    payflow_gateway::samples::rfc3339(e["received_at_ms"].as_i64().unwrap_or(0) / 1000),
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default()),
    }
    Ok(())
}
