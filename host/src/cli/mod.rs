//! Command-line interface. Exit codes: 0 success, 1 a negative verdict (e.g. an invalid
//! signature), 2 a usage or configuration error (clap's own usage errors also exit 2).

// The arguments' doc comments are clap's `--help` text, shown verbatim: `[admin]` there is a
// config section and `<hex>` a placeholder, not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod client;
mod config;
mod demo;
mod events;
mod listen;
mod plugin;
mod scheme;
mod send;
mod serve;
mod sign;
mod verify;

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Read;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "payflow-edge", version, about = "Edge gateway for PayFlow payment webhooks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (until SIGTERM or Ctrl-C).
    Serve(serve::ServeArgs),
    /// Sign sample events and POST them to a webhook endpoint.
    Send(send::SendArgs),
    /// List, show or replay stored events through the admin API.
    Events(events::EventsArgs),
    /// Print the signature header(s) for a body read from standard input.
    Sign(sign::SignArgs),
    /// Verify a body from standard input: exit 0 valid, 1 invalid (reason on stderr), 2 usage.
    Verify(verify::VerifyArgs),
    /// Check a plugin, or run it on one event: outcome, fuel, time and logs.
    Plugin(plugin::PluginArgs),
    /// Run everything on loopback with embedded defaults and show what happens.
    Demo(demo::DemoArgs),
    /// Check a config file, listing every problem.
    Config(config::ConfigArgs),
    /// A local gateway with nothing to configure (like `stripe listen`): a signing secret kept
    /// across restarts, events forwarded to your app and shown live.
    Listen(listen::ListenArgs),
    /// Print a shell completion script: `payflow-edge completions bash > /etc/bash_completion.d/payflow-edge`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `payflow-edge man > /usr/local/share/man/man1/payflow-edge.1`.
    Man,
}

/// How a command failed.
pub enum Failure {
    /// A negative verdict: exit 1.
    Negative(String),
    /// Bad usage, configuration or I/O: exit 2.
    Usage(anyhow::Error),
}

macro_rules! usage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::Usage(e.into())
            }
        }
    )*};
}
usage_errors!(
    anyhow::Error,
    std::io::Error,
    payflow_verify::ConfigError,
    payflow_verify::SignError,
    payflow_config::ConfigError,
    payflow_gateway::StartError
);

/// A multi-threaded runtime for commands that do I/O.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// The crates a `payflow_edge=<level>` directive covers: the gateway's code lives in these
/// crates, and a filter that names the product keeps meaning all of it.
const PRODUCT_CRATES: [&str; 7] = [
    "payflow_gateway",
    "payflow_delivery",
    "payflow_plugins",
    "payflow_store",
    "payflow_config",
    "payflow_metrics",
    "payflow_clock",
];

/// `filter` with each directive for the `payflow_edge` target repeated for every crate of the
/// product, e.g. `payflow_edge=debug` → `payflow_edge=debug,payflow_gateway=debug,…`.
fn expand_product_target(filter: &str) -> String {
    let mut directives = Vec::new();
    for directive in filter.split(',') {
        directives.push(directive.to_string());
        let Some(rest) = directive.trim().strip_prefix("payflow_edge") else { continue };
        if rest.is_empty() || rest.starts_with('=') || rest.starts_with('[') {
            directives.extend(PRODUCT_CRATES.iter().map(|c| format!("{c}{rest}")));
        }
    }
    directives.join(",")
}

/// Logs to stderr; `PAYFLOW_EDGE_LOG` filters (default `info`), `PAYFLOW_EDGE_LOG_FORMAT=json`
/// switches to one JSON object per line.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let asked = std::env::var("PAYFLOW_EDGE_LOG").ok();
    let filter = asked
        .and_then(|f| EnvFilter::try_new(expand_product_target(&f)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only for a terminal: a file, a pipe or journald gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    if std::env::var("PAYFLOW_EDGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Send(args) => send::run(args),
        Command::Events(args) => events::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Plugin(args) => plugin::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Config(args) => config::run(args),
        Command::Listen(args) => listen::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "payflow-edge", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(Failure::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Negative(reason)) => {
            eprintln!("invalid: {reason}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each said once. Many errors already carry their cause in their
/// own message (`cannot listen on …: Address already in use`), which printing the chain with
/// `{:#}` would then repeat.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// The whole of standard input: the raw body, byte for byte.
fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    Ok(body)
}

/// Current unix time in seconds.
fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

/// Current unix time in milliseconds.
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_naming_payflow_edge_covers_every_crate_of_the_product() {
        let expanded = expand_product_target("warn,payflow_edge=debug");
        assert!(expanded.starts_with("warn,payflow_edge=debug,"), "{expanded}");
        for c in PRODUCT_CRATES {
            assert!(expanded.contains(&format!("{c}=debug")), "{expanded} lacks {c}");
        }
        // Other targets, and module paths below the old crate, are left as they are.
        assert_eq!(expand_product_target("hyper=info"), "hyper=info");
        assert_eq!(expand_product_target("payflow_edge_x=info"), "payflow_edge_x=info");
    }
}
