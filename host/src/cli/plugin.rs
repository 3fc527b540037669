//! `payflow-edge plugin check FILE` and `payflow-edge plugin run FILE --event e.json`: load a
//! plugin as the gateway would, and run it on one event with the same sandbox and limits,
//! printing the outcome, fuel, time and logs (like Shopify's function-runner).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use payflow_edge::plugins::{Action, Event, Limits, LoadedPlugin, MemoryKv, Runtime, WORLD};

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
}

pub fn run(args: PluginArgs) -> Result<(), Failure> {
    match args.command {
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
            let event = Event {
                id: parsed.id,
                event_type: parsed.event_type.unwrap_or_default(),
                endpoint,
                merchant: "default".into(),
                body,
                received_at_ms: super::unix_now() as u64 * 1000,
            };
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
            if run.logs_dropped_bytes > 0 {
                println!("log: {} bytes over the cap were dropped", run.logs_dropped_bytes);
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
    let runtime = Runtime::new().map_err(|e| Failure::Usage(e.into()))?;
    let plugin = runtime.load(&bytes).map_err(|e| Failure::Negative(format!("{file}: {e}")))?;
    Ok((plugin, bytes.len()))
}
