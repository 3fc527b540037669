//! `payflow-edge events list|show|replay|skip|held`: the admin API from the command line. Listings and
//! shows print for a person; `--json` prints the API's reply for a program.

use clap::{Args, Subcommand};
use hyper::Method;
use payflow_store::EventStatus;
use serde_json::Value;

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
        #[command(flatten)]
        filters: Filters,
        /// Events per page (the API caps it at 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The next page: the cursor the previous page printed.
        #[arg(long)]
        before: Option<String>,
        /// Print the API's JSON reply (with its `next` cursor) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow events live (like `stripe logs tail`): each new event, and each change of an
    /// event's status (queued → delivered, dead, …), as it happens. Ctrl-C stops.
    Tail {
        #[command(flatten)]
        filters: Filters,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one event with its plugin step, deliveries and attempts.
    Show {
        id: String,
        #[command(flatten)]
        address: EventAddress,
        /// Print the API's JSON reply instead of a summary.
        #[arg(long)]
        json: bool,
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
    /// Release a dead event's ordering key (ordered upstreams), so the events with that key
    /// behind it go on. It stays dead; a replay delivers it later, unordered.
    Skip {
        id: String,
        #[command(flatten)]
        address: EventAddress,
    },
    /// The ordering keys held back by a failing or dead event, oldest first.
    Held {
        /// Print the API's JSON reply instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which events a listing or a tail shows.
#[derive(Args, Debug)]
struct Filters {
    /// Only this status (a typo is refused with the list, not answered with an empty page).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(EventStatus::ALL.map(EventStatus::as_str)))]
    status: Option<String>,
    /// Only this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only this endpoint path.
    #[arg(long)]
    endpoint: Option<String>,
}

impl Filters {
    /// As the admin API's query parameters.
    fn query(&self) -> [(&'static str, Option<String>); 3] {
        [
            ("status", self.status.clone()),
            ("type", self.event_type.clone()),
            ("endpoint", self.endpoint.clone()),
        ]
    }
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

/// How often `tail` asks the admin API what changed.
const TAIL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The newest events `tail` compares each time: more new events than this within one poll are
/// not all shown.
const TAIL_PAGE: usize = 200;

/// `events tail`: polls the newest page and prints what is new or changed since the last poll.
/// What the first poll finds is history, not shown, unless it arrived at `since_ms` or later
/// (unix ms): whoever starts the tail before the traffic sees all of it.
pub(crate) fn tail(
    admin: &AdminArgs,
    filters: &[(&str, Option<String>)],
    json: bool,
    announce: bool,
    since_ms: i64,
) -> Result<(), Failure> {
    let mut query = vec![format!("limit={TAIL_PAGE}")];
    for (key, value) in filters {
        if let Some(v) = value {
            query.push(format!("{key}={}", encode(v)));
        }
    }
    let url = format!("/api/events?{}", query.join("&"));
    let mut seen: std::collections::HashMap<(String, String, String), String> = Default::default();
    let mut first = true;
    loop {
        let reply = admin.call(Method::GET, &url, Vec::new())?;
        let mut events: Vec<&Value> = reply["events"].as_array().into_iter().flatten().collect();
        events.reverse(); // oldest first
        for e in events {
            let key =
                (text(&e["merchant"]).to_string(), text(&e["scope"]).to_string(), text(&e["id"]).to_string());
            let status = text(&e["status"]).to_string();
            if seen.get(&key) == Some(&status) {
                continue;
            }
            seen.insert(key, status);
            if first && e["received_at_ms"].as_i64().unwrap_or(0) < since_ms {
                continue;
            }
            if json {
                println!("{e}");
            } else {
                println!(
                    "{}  {:<28} {:<12} {:<18} {} {}",
                    when(&e["received_at_ms"]),
                    text(&e["id"]),
                    text(&e["status"]),
                    e["type"].as_str().unwrap_or("-"),
                    text(&e["endpoint"]),
                    e["reason"].as_str().unwrap_or(""),
                );
            }
        }
        if first && announce {
            eprintln!("tailing events ({}): Ctrl-C to stop", admin_target(admin));
        }
        first = false;
        std::thread::sleep(TAIL_POLL);
    }
}

fn admin_target(admin: &AdminArgs) -> String {
    admin.admin.clone().unwrap_or_else(|| "the admin API".to_string())
}

pub fn run(args: EventsArgs) -> Result<(), Failure> {
    if let EventsCommand::Tail { filters, json } = &args.command {
        return tail(&args.admin, &filters.query(), *json, true, super::unix_now_ms());
    }
    let (method, url) = match &args.command {
        EventsCommand::List { filters, limit, before, .. } => {
            let mut query = vec![format!("limit={limit}")];
            let [status, event_type, endpoint] = filters.query();
            for (key, value) in [status, event_type, endpoint, ("before", before.clone())] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", encode(&v)));
                }
            }
            (Method::GET, format!("/api/events?{}", query.join("&")))
        }
        EventsCommand::Show { id, address, .. } => (Method::GET, event_url(id, "", address)),
        EventsCommand::Replay { id, address, .. } => (Method::POST, event_url(id, "/replay", address)),
        EventsCommand::Skip { id, address } => (Method::POST, event_url(id, "/skip", address)),
        EventsCommand::Held { .. } => (Method::GET, "/api/ordering".to_string()),
        EventsCommand::Tail { .. } => unreachable!("tail returned above"),
    };
    let body = match &args.command {
        EventsCommand::Replay { force: true, .. } => br#"{"force":true}"#.to_vec(),
        _ => Vec::new(),
    };
    let reply = args.admin.call(method, &url, body)?;
    match args.command {
        EventsCommand::List { json: false, .. } => print_list(&reply),
        EventsCommand::Show { json: false, .. } => print_event(&reply),
        EventsCommand::Held { json: false } => print_held(&reply),
        _ => println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default()),
    }
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub(crate) fn when(ms: &Value) -> String {
    payflow_gateway::samples::rfc3339(ms.as_i64().unwrap_or(0) / 1000)
}

fn tags(v: &Value) -> String {
    let tags: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if tags.is_empty() {
        "-".into()
    } else {
        tags.join(",")
    }
}

/// `2500 PKR`: the amount in the currency's smallest unit, as PayFlow sends it.
fn amount(v: &Value) -> String {
    match (v["value"].as_i64(), v["currency"].as_str()) {
        (Some(value), Some(currency)) => format!("{value} {}", currency.escape_debug()),
        (Some(value), None) => value.to_string(),
        _ => "-".into(),
    }
}

/// Held ordering keys as a table.
fn print_held(reply: &Value) {
    let keys = reply["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
    if keys.is_empty() {
        println!("no ordering key is held back");
        return;
    }
    println!(
        "{:<10} {:<24} {:<28} {:<8} {:<9} {:<8} next attempt",
        "merchant", "key", "head event", "status", "attempts", "waiting"
    );
    for k in keys {
        let next = k["next_attempt_at_ms"].as_i64().map(|ms| when(&ms.into())).unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<24} {:<28} {:<8} {:<9} {:<8} {next}",
            text(&k["merchant"]),
            text(&k["key"]),
            text(&k["event_id"]),
            text(&k["status"]),
            k["attempts"],
            k["waiting"],
        );
    }
    println!("a dead head holds its key until you replay it (payflow-edge events replay ID) or skip it (payflow-edge events skip ID)");
}

/// A page of events as a table, then how to get the next page.
fn print_list(reply: &Value) {
    println!(
        "{:<20} {:<28} {:<12} {:<18} {:<12} {:<16} {:<24} reason",
        "received", "id", "status", "type", "amount", "tags", "endpoint"
    );
    for e in reply["events"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<28} {:<12} {:<18} {:<12} {:<16} {:<24} {}",
            when(&e["received_at_ms"]),
            text(&e["id"]),
            text(&e["status"]),
            e["type"].as_str().unwrap_or("-"),
            amount(&e["amount"]),
            tags(&e["tags"]),
            text(&e["endpoint"]),
            e["reason"].as_str().unwrap_or(""),
        );
    }
    if let Some(next) = reply["next"].as_str() {
        println!("more: --before {next}");
    }
}

/// One event: what it is, where it stands, and each hop.
fn print_event(e: &Value) {
    println!("{}  {}  {}", text(&e["id"]), text(&e["status"]), e["type"].as_str().unwrap_or("-"));
    println!(
        "  merchant {}  endpoint {}  scope {}",
        text(&e["merchant"]),
        text(&e["endpoint"]),
        text(&e["scope"])
    );
    println!("  received {}  request {}", when(&e["received_at_ms"]), text(&e["request_id"]));
    for (label, key) in [("reason", "reason"), ("forced by", "forced_by")] {
        if let Some(v) = e[key].as_str() {
            println!("  {label}: {v}");
        }
    }
    if e["tags"].as_array().is_some_and(|t| !t.is_empty()) {
        println!("  tags: {}", tags(&e["tags"]));
    }
    if let Some(key) = e["order_key"].as_str() {
        println!("  ordering key: {key}");
    }
    if let Some(step) = e["plugin_step"].as_object() {
        let error = step.get("error").and_then(Value::as_str).map(|x| format!(": {x}")).unwrap_or_default();
        println!("  step: {} after {} run(s){error}", text(&step["status"]), step["attempts"]);
        if let Some(routes) = step.get("routes").and_then(Value::as_array) {
            let matched: Vec<&str> = routes.iter().filter_map(Value::as_str).collect();
            match matched.is_empty() {
                true => println!("  routes: none matched"),
                false => println!("  routes: {}", matched.join(", ")),
            }
        }
    }
    for d in e["deliveries"].as_array().into_iter().flatten() {
        println!(
            "  delivery to {}: {} after {} attempt(s)",
            text(&d["upstream"]),
            text(&d["status"]),
            d["attempts"]
        );
    }
    for a in e["attempts"].as_array().into_iter().flatten() {
        let outcome = match (a["status_code"].as_u64(), a["error"].as_str()) {
            (Some(code), _) => code.to_string(),
            (None, Some(error)) => error.to_string(),
            (None, None) => "-".into(),
        };
        println!(
            "    #{} {} {} {} ms: {outcome}",
            a["number"],
            text(&a["upstream"]),
            when(&a["at_ms"]),
            a["duration_ms"]
        );
    }
}
