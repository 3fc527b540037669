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
        /// The event's body (JSON, as PayFlow sends it).
        #[arg(long)]
        event: String,
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
    /// Make the version before the active one active again.
    Rollback {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
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
}

pub fn run(args: PluginArgs) -> Result<(), Failure> {
    match args.command {
        PluginCommand::Upload { name, file, admin } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
            load(&file)?; // the same checks the gateway makes, without a round trip
            let status = admin.call(Method::PUT, &format!("/api/plugins/{}", encode(&name)), bytes)?;
            println!("uploaded {file} as {name} v{}", status["active_version"]);
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
        PluginCommand::Run { file, event, config, endpoint, fuel, timeout_ms, memory_mb } => {
            let (plugin, _) = load(&file)?;
            let body = std::fs::read(&event).with_context(|| format!("cannot read the event {event}"))?;
            let parsed = payflow_verify::event::parse(&body)
                .map_err(|e| Failure::Usage(anyhow::anyhow!("{event} is not a PayFlow event: {e}")))?;
            let event = payflow_store::Event {
                key: EventKey { merchant: "default".into(), scope: endpoint.clone(), id: parsed.id },
                endpoint,
                event_type: parsed.event_type,
                body: Bytes::from(body),
                received_at_ms: super::unix_now() * 1000,
                request_id: String::new(),
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
            let run = plugin.run(&event, &config, Arc::new(MemoryKv::default()), &limits);
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
