//! `payflow-edge plugin check FILE` and `payflow-edge plugin run FILE --event e.json`: load a
//! plugin as the gateway would, and run it on one event with the same sandbox and limits,
//! printing the outcome, fuel, time and logs (like Shopify's function-runner).
//! `plugin upload|list|rollback`: the admin API's plugin routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use payflow_plugins::{Action, Event, Limits, LoadedPlugin, MemoryKv, Runtime, WORLD};
use payflow_store::EventKey;

use hyper::Method;
use serde_json::Value;

use super::client::{encode, AdminArgs};
use super::Failure;

#[derive(Args, Debug)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Check that FILE is a plugin the gateway can run: exit 0 yes, 1 no (why on stderr).
    Check {
        /// The plugin's .wasm (a component of the payflow:plugin world).
        file: String,
    },
    /// Run FILE on one event and print the outcome, fuel, time and logs.
    Run {
        /// The plugin's .wasm.
        file: String,
        /// The event's body (JSON, as PayFlow sends it); `-` reads it from standard input.
        #[arg(long, required_unless_present = "sample", conflicts_with = "sample")]
        event: Option<String>,
        /// Run on a generated sample of this type instead (payment.succeeded, payment.failed,
        /// payment.cancelled, customer.created, or any other type).
        #[arg(long, value_name = "TYPE")]
        sample: Option<String>,
        /// Keep the plugin's kv between runs in this JSON file (read before, written after).
        #[arg(long, value_name = "FILE")]
        kv: Option<std::path::PathBuf>,
        /// A plugin config value: --config min_amount=1000. Repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Endpoint path the event is taken to have arrived on.
        #[arg(long, default_value = "/webhooks/payflow")]
        endpoint: String,
        /// Fuel budget.
        #[arg(long, default_value_t = Limits::default().fuel)]
        fuel: u64,
        /// Deadline in milliseconds.
        #[arg(long, default_value_t = Limits::default().timeout.as_millis() as u64)]
        timeout_ms: u64,
        /// Memory cap in MiB.
        #[arg(long, default_value_t = Limits::default().memory_bytes >> 20)]
        memory_mb: usize,
    },
    /// Upload FILE as the new version of the configured plugin NAME (checked here first, then
    /// by the gateway, which swaps it in atomically).
    Upload {
        /// The plugin's name, as in its [[plugin]].
        name: String,
        /// The plugin's .wasm.
        file: String,
        /// Start it as a canary on this share of events (chosen by event id), e.g. 10%: the
        /// active version keeps the rest; rolled back by itself when it fails clearly more
        /// often; `plugin promote NAME` makes it active for all.
        #[arg(long, value_name = "PERCENT")]
        canary: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Dry run: run FILE beside NAME's active version on the merchant's recorded events and
    /// show where their outcomes differ. Nothing is stored, delivered or written to kv; the
    /// runs wait behind every live event.
    Try {
        /// The plugin's name, as in its [[plugin]].
        name: String,
        /// The candidate .wasm.
        file: String,
        /// The newest this many events (1 to 1000).
        #[arg(long, default_value_t = 200)]
        last: usize,
        /// Only events received within this long: 90s, 30m, 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Print the API's JSON report instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the plugins the token may see, with their active versions.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the API's JSON reply instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the plugin's latest runs' log lines (with the version and event of each); with
    /// --follow, keep printing new ones as runs write them (Ctrl-C to stop).
    Logs {
        /// The plugin's name.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the latest lines to print first (1 to 1000).
        #[arg(long, default_value_t = 100)]
        lines: usize,
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Inspect or repair the plugin's key-value space: list its keys, get one, delete one.
    Kv {
        /// The plugin's name.
        name: String,
        #[command(subcommand)]
        action: KvAction,
        /// Print the API's JSON reply instead.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the running canary the active version for every event.
    Promote {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the version before the active one active again.
    Rollback {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a stored version active: back to an older one, or forward again after a rollback.
    Activate {
        /// The plugin's name.
        name: String,
        /// The version number (`plugin list --json` shows the versions kept).
        version: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KvAction {
    /// Every key, with its size and the start of its value.
    List,
    /// One key's whole value (as text when it is UTF-8, else base64).
    Get {
        /// The key.
        key: String,
    },
    /// Delete one key; the plugin's next run no longer sees it.
    Delete {
        /// The key.
        key: String,
    },
}

/// How often `plugin logs --follow` asks for new lines.
const LOGS_POLL: Duration = Duration::from_millis(500);

/// `plugin logs`: the latest lines, then (following) each new one once, in order.
fn logs(admin: &AdminArgs, name: &str, follow: bool, lines: usize, json: bool) -> Result<(), Failure> {
    let base = format!("/api/plugins/{}/logs", encode(name));
    let mut url = format!("{base}?limit={lines}");
    loop {
        let reply = admin.call(Method::GET, &url, Vec::new())?;
        for line in reply["lines"].as_array().into_iter().flatten() {
            if json {
                println!("{line}");
            } else {
                println!(
                    "{}  v{} {:<28} {}: {}",
                    super::events::when(&line["at_ms"]),
                    line["version"],
                    line["event_id"].as_str().unwrap_or(""),
                    line["level"].as_str().unwrap_or(""),
                    line["message"].as_str().unwrap_or("")
                );
            }
        }
        if !follow {
            return Ok(());
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        url = format!("{base}?after={}&limit=1000", reply["next"].as_u64().unwrap_or(0));
        std::thread::sleep(LOGS_POLL);
    }
}

fn kv(admin: &AdminArgs, name: &str, action: KvAction, json: bool) -> Result<(), Failure> {
    let base = format!("/api/plugins/{}/kv", encode(name));
    let (method, url) = match &action {
        KvAction::List => (Method::GET, base),
        KvAction::Get { key } => (Method::GET, format!("{base}/{}", encode(key))),
        KvAction::Delete { key } => (Method::DELETE, format!("{base}/{}", encode(key))),
    };
    let reply = admin.call(method, &url, Vec::new())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default());
        return Ok(());
    }
    match action {
        KvAction::List => {
            println!(
                "{} keys, {} of {} bytes used",
                reply["keys"].as_array().map_or(0, Vec::len),
                reply["used_bytes"],
                reply["quota_bytes"]
            );
            for k in reply["keys"].as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:>8} B  {}",
                    k["key"].as_str().unwrap_or(""),
                    k["size"],
                    k["preview"].as_str().unwrap_or("")
                );
            }
        }
        KvAction::Get { .. } => match reply["text"].as_str() {
            Some(text) => println!("{text}"),
            None => println!("base64:{}", reply["base64"].as_str().unwrap_or("")),
        },
        KvAction::Delete { key } => match reply["deleted"].as_bool() {
            Some(true) => println!("deleted {key:?} from {name}'s kv"),
            _ => return Err(Failure::Negative(format!("{name} has no key {key:?}"))),
        },
    }
    Ok(())
}

fn print_status(p: &Value) {
    let version = p["active_version"].as_u64().map_or("none".to_string(), |v| format!("v{v}"));
    let source = p["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["version"] == p["active_version"]))
        .map(|v| {
            let sha = v["sha256"].as_str().unwrap_or("");
            let size = v["size"].as_u64().unwrap_or(0).div_ceil(1024);
            format!(
                "{} {size} KiB sha256:{}",
                v["source"].as_str().unwrap_or(""),
                sha.get(..12).unwrap_or(sha)
            )
        })
        .unwrap_or_default();
    println!(
        "{:<24} {:<12} {:<6} {:<8} {}",
        p["name"].as_str().unwrap_or(""),
        p["merchant"].as_str().unwrap_or(""),
        version,
        p["versions"].as_array().map_or(0, Vec::len),
        source
    );
    for v in p["by_version"].as_array().into_iter().flatten() {
        let outcomes: Vec<String> =
            v["outcomes"].as_object().into_iter().flatten().map(|(o, n)| format!("{o} {n}")).collect();
        println!(
            "  v{}: {} runs ({}), time µs p50/p99 {}/{}, fuel p50/p99 {}/{}",
            v["version"],
            v["runs"],
            outcomes.join(", "),
            v["time_us_p50"],
            v["time_us_p99"],
            v["fuel_p50"],
            v["fuel_p99"]
        );
    }
    let c = &p["canary"];
    match c["state"].as_str() {
        Some("running") => println!("  canary v{} on {}% of events", c["version"], c["percent"]),
        Some(state) => println!(
            "  last canary v{}: {}{}",
            c["version"],
            state.replace('_', " "),
            c["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        None => {}
    }
}

/// A dry run's report as a merchant reads it: what changed, event by event, then the counts
/// and both versions' fuel and time.
fn print_trial(name: &str, file: &str, report: &Value) {
    let t = &report["totals"];
    println!(
        "{file} beside {name} v{} on {} events: {} same, {} different, {} failed",
        report["active_version"], t["events"], t["same"], t["different"], t["failed"]
    );
    for e in report["events"].as_array().into_iter().flatten().filter(|e| e["verdict"] != "same") {
        println!(
            "\n{} {} ({})",
            e["verdict"].as_str().unwrap_or(""),
            e["id"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or("no type")
        );
        for change in e["changes"].as_array().into_iter().flatten() {
            println!("  {}", change.as_str().unwrap_or(""));
        }
    }
    let side = |s: &Value| {
        let failures: Vec<String> = s["failures"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        [
            format!("{} / {}", s["fuel_p50"], s["fuel_p99"]),
            format!("{} / {}", s["time_us_p50"], s["time_us_p99"]),
            if failures.is_empty() { "none".into() } else { failures.join(", ") },
        ]
    };
    let (a, c) = (side(&report["active"]), side(&report["candidate"]));
    println!("\n{:<20} {:<24} candidate", "", format!("active v{}", report["active_version"]));
    for (i, label) in ["fuel p50 / p99", "time µs p50 / p99", "failures"].iter().enumerate() {
        println!("{label:<20} {:<24} {}", a[i], c[i]);
    }
}

pub fn run(args: PluginArgs) -> Result<(), Failure> {
    match args.command {
        PluginCommand::Upload { name, file, canary, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
            load(&file)?; // the same checks the gateway makes, without a round trip
            let query = canary.as_ref().map(|c| format!("?canary={}", encode(c))).unwrap_or_default();
            let status = admin.call(Method::PUT, &format!("/api/plugins/{}{query}", encode(&name)), bytes)?;
            match canary {
                None => println!("uploaded {file} as {name} v{}", status["active_version"]),
                Some(_) => println!(
                    "uploaded {file} as {name} v{}, a canary on {}% of events beside v{} \
                     (plugin promote {name} when it looks right; it is rolled back by itself if it fails)",
                    status["canary"]["version"], status["canary"]["percent"], status["active_version"]
                ),
            }
            Ok(())
        }
        PluginCommand::Logs { name, follow, lines, json, admin } => logs(&admin, &name, follow, lines, json),
        PluginCommand::Kv { name, action, json, admin } => kv(&admin, &name, action, json),
        PluginCommand::Promote { name, admin } => {
            let status =
                admin.call(Method::POST, &format!("/api/plugins/{}/promote", encode(&name)), Vec::new())?;
            println!("{name} v{} is active for every event", status["active_version"]);
            Ok(())
        }
        PluginCommand::Try { name, file, last, since, event_type, json, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
            load(&file)?;
            let mut query = format!("last={last}");
            for (key, value) in [("since", &since), ("type", &event_type)] {
                if let Some(v) = value {
                    query.push_str(&format!("&{key}={}", encode(v)));
                }
            }
            let path = format!("/api/plugins/{}/try?{query}", encode(&name));
            let report = admin.call(Method::POST, &path, bytes)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print_trial(&name, &file, &report);
            }
            Ok(())
        }
        PluginCommand::List { admin, json } => {
            let reply = admin.call(Method::GET, "/api/plugins", Vec::new())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<24} {:<12} {:<6} {:<8} active version's source",
                "name", "merchant", "active", "versions"
            );
            reply["plugins"].as_array().into_iter().flatten().for_each(print_status);
            Ok(())
        }
        PluginCommand::Activate { name, version, admin } => {
            let path = format!("/api/plugins/{}/versions/{version}/activate", encode(&name));
            let status = admin.call(Method::POST, &path, Vec::new())?;
            println!("{name} is at v{}", status["active_version"]);
            Ok(())
        }
        PluginCommand::Rollback { name, admin } => {
            let status =
                admin.call(Method::POST, &format!("/api/plugins/{}/rollback", encode(&name)), Vec::new())?;
            println!("{name} is back at v{}", status["active_version"]);
            Ok(())
        }
        PluginCommand::Check { file } => {
            let (plugin, size) = load(&file)?;
            drop(plugin);
            println!("ok: {file} is a {WORLD} component ({} KiB)", size.div_ceil(1024));
            Ok(())
        }
        PluginCommand::Run { file, event, sample, kv, config, endpoint, fuel, timeout_ms, memory_mb } => {
            let (plugin, _) = load(&file)?;
            let (body, source) = match (&event, &sample) {
                (Some(path), _) if path == "-" => (super::read_stdin()?, "standard input".to_string()),
                (Some(path), _) => (
                    std::fs::read(path).with_context(|| format!("cannot read the event {path}"))?,
                    path.clone(),
                ),
                (None, Some(event_type)) => {
                    let id = format!("evt_sample_{}", super::unix_now());
                    let sample = payflow_gateway::samples::sample_event(event_type, &id, super::unix_now());
                    (serde_json::to_vec(&sample).unwrap_or_default(), format!("a sample {event_type}"))
                }
                (None, None) => unreachable!("clap requires --event or --sample"),
            };
            let parsed = payflow_verify::event::parse(&body)
                .map_err(|e| Failure::Usage(anyhow::anyhow!("{source} is not a PayFlow event: {e}")))?;
            if let Err(problem) = &parsed.checked {
                eprintln!(
                    "warning: the gateway would quarantine this event ({problem}): it would be kept, \
                     but never reach the plugins"
                );
            }
            let event = payflow_store::Event {
                key: EventKey::new("default", endpoint.clone(), parsed.id),
                endpoint,
                event_type: parsed.event_type,
                body: Bytes::from(body),
                received_at_ms: super::unix_now() * 1000,
                request_id: String::new(),
                ordered: false,
            };
            let event = Event::of(&event, &event.body);
            let config = config
                .iter()
                .map(|kv| {
                    kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| {
                        Failure::Usage(anyhow::anyhow!("--config takes KEY=VALUE, not {kv:?}"))
                    })
                })
                .collect::<Result<HashMap<_, _>, _>>()?;
            let limits = Limits {
                fuel,
                timeout: Duration::from_millis(timeout_ms),
                memory_bytes: memory_mb << 20,
                ..Limits::default()
            };
            let space = Arc::new(match &kv {
                Some(path) => kv_file::read(path)?,
                None => MemoryKv::default(),
            });
            let run = plugin.run(&event, &config, space.clone(), &limits);
            if let (Some(path), Ok(_)) = (&kv, &run.result) {
                kv_file::write(path, &space)?;
            }
            println!("time: {:.3} ms", run.duration.as_secs_f64() * 1000.0);
            println!("fuel: {}", run.fuel_used);
            for line in &run.logs {
                println!("log [{}] {}", line.level, line.message.trim_end());
            }
            if let Some(dropped) = run.dropped() {
                println!("log: {dropped}");
            }
            match run.result {
                Ok(outcome) => {
                    match &outcome.action {
                        Action::Continue => println!("outcome: continue"),
                        Action::Drop(reason) => println!("outcome: drop ({reason})"),
                    }
                    if let Some(body) = &outcome.body {
                        println!("body: {}", String::from_utf8_lossy(body));
                    }
                    for h in &outcome.headers {
                        println!("header: {}: {}", h.name, h.value);
                    }
                    for f in &outcome.forwards {
                        println!("forward: to {} ({} extra headers)", f.upstream, f.headers.len());
                    }
                    for t in &outcome.tags {
                        println!("tag: {t}");
                    }
                    Ok(())
                }
                Err(failure) => Err(Failure::Negative(format!("plugin run failed: {failure}"))),
            }
        }
    }
}

fn load(file: &str) -> Result<(LoadedPlugin, usize), Failure> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    // One run at a time here.
    let runtime = Runtime::new(1).map_err(|e| Failure::Usage(e.into()))?;
    let plugin = runtime.load(&bytes).map_err(|e| Failure::Negative(format!("{file}: {e}")))?;
    Ok((plugin, bytes.len()))
}

/// `plugin run --kv FILE`: the plugin's kv space kept in a JSON object between runs, each value
/// a string when it is UTF-8 text, else an array of its bytes. A missing file is an empty space.
mod kv_file {
    use std::path::Path;

    use anyhow::Context as _;
    use payflow_plugins::MemoryKv;
    use serde_json::{Map, Value};

    use super::Failure;

    pub fn read(path: &Path) -> Result<MemoryKv, Failure> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MemoryKv::default()),
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("cannot read --kv {}", path.display()))
                    .into())
            }
        };
        let object: Map<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("--kv {} is not a JSON object", path.display()))?;
        let mut entries = Vec::new();
        for (key, value) in object {
            let bytes = match value {
                Value::String(s) => s.into_bytes(),
                Value::Array(items) => items
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .with_context(|| {
                        format!("--kv {}: {key:?} is not a string or an array of bytes", path.display())
                    })?,
                _ => {
                    return Err(anyhow::anyhow!(
                        "--kv {}: {key:?} is not a string or an array of bytes",
                        path.display()
                    )
                    .into())
                }
            };
            entries.push((key, bytes));
        }
        Ok(MemoryKv::with(entries))
    }

    pub fn write(path: &Path, space: &MemoryKv) -> Result<(), Failure> {
        let object: Map<String, Value> = space
            .entries()
            .into_iter()
            .map(|(key, bytes)| {
                let value = match String::from_utf8(bytes) {
                    Ok(text) => Value::String(text),
                    Err(e) => Value::Array(e.into_bytes().into_iter().map(Value::from).collect()),
                };
                (key, value)
            })
            .collect();
        let text = serde_json::to_string_pretty(&Value::Object(object)).unwrap_or_default();
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write --kv {}", path.display()))?;
        Ok(())
    }
}
