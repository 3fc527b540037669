//! `payflow-edge config check`: every problem of a config file at once (a deploy's check
//! before it restarts anything), or a one-line summary of what it sets up.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use payflow_config::{Config, ConfigError};

use super::Failure;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Check a config file: exit 0 when it is valid, 1 listing every problem, 2 when it cannot
    /// be read.
    Check {
        /// The config file (`${VAR}`s are expanded from this environment, as `serve` would).
        #[arg(long, default_value = "payflow-edge.toml")]
        config: PathBuf,
    },
}

pub fn run(args: ConfigArgs) -> Result<(), Failure> {
    let ConfigCommand::Check { config: path } = args.command;
    let text = std::fs::read_to_string(&path)
        .map_err(|error| Failure::Usage(ConfigError::Read { path: path.clone(), error }.into()))?;
    let problems = match Config::parse_unchecked(&text, |name| std::env::var(name).ok()) {
        Ok(config) => {
            let problems = config.problems();
            if problems.is_empty() {
                println!("{}: valid: {}", path.display(), summary(&config));
                return Ok(());
            }
            problems
        }
        Err(problem) => vec![problem],
    };
    for problem in &problems {
        eprintln!("{}: {problem}", path.display());
    }
    let n = problems.len();
    Err(Failure::Negative(format!("{n} problem{} in {}", if n == 1 { "" } else { "s" }, path.display())))
}

/// What a valid config sets up, in one line.
fn summary(config: &Config) -> String {
    let store = match &config.store.url {
        Some(_) => "PostgreSQL (store.url)".to_string(),
        None => format!("SQLite at {}", config.store.path),
    };
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}, {}, {}; store: {store}; admin API: {}",
        count(config.merchant.len().max(1), "merchant"),
        count(config.endpoint.len(), "endpoint"),
        count(config.upstream.len(), "upstream"),
        count(config.plugin.len(), "plugin"),
        config.admin.as_ref().map_or("off".to_string(), |a| a.listen.clone()),
    )
}
