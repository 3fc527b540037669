//! payflow-config: the TOML configuration: parsing, `${VAR}` expansion from the environment, and validation
//! with errors that name the key and the problem. Nothing here opens sockets or files other
//! than the config file itself; the result is a checked [`Config`] the gateway is built from.
//! It must never depend on the crates it configures: each takes the section it needs.
//!
//! One file per section (`server.rs`, `store.rs`, `admin.rs`, `merchant.rs`, `endpoint.rs`
//! with `route.rs`, `upstream.rs`, `plugins.rs`, `telemetry.rs`), and one per stage of loading
//! a file: `vars.rs` expands, `check.rs` validates, `error.rs` says what is wrong. This file
//! holds the whole and its loading.

#![forbid(unsafe_code)]

use std::path::Path;

use serde::Deserialize;

mod admin;
mod check;
mod endpoint;
mod error;
mod merchant;
mod plugins;
mod route;
mod server;
mod store;
mod telemetry;
mod upstream;
mod vars;

pub use admin::AdminConfig;
pub use endpoint::{EndpointConfig, Mode, SchemeError, SecretEntry};
pub use error::ConfigError;
pub use merchant::MerchantConfig;
pub use plugins::{valid_plugin_name, PluginConfig, PluginsConfig};
pub use route::{json_path, FieldValue, RouteConfig};
pub use server::{ServerConfig, DEFAULT_MAX_HEADER_BYTES};
pub use store::StoreConfig;
pub use telemetry::TelemetryConfig;
pub use upstream::{BreakerConfig, Rate, SignScheme, UpstreamConfig};

/// The merchant that owns everything not explicitly assigned.
pub const DEFAULT_MERCHANT: &str = "default";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ingress listener and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The durable store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin listener (absent: no admin API).
    pub admin: Option<AdminConfig>,
    /// Merchants (tenants); without any, everything belongs to `default`.
    #[serde(default)]
    pub merchant: Vec<MerchantConfig>,
    /// Webhook endpoints.
    #[serde(default)]
    pub endpoint: Vec<EndpointConfig>,
    /// Upstreams events are delivered to.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// Plugins endpoints run, by name.
    #[serde(default)]
    pub plugin: Vec<PluginConfig>,
    /// How plugins are run.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Traces of each event's way (OpenTelemetry, over OTLP/HTTP).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

pub(crate) fn default_merchant() -> String {
    DEFAULT_MERCHANT.into()
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Config::parse(&text, |name| std::env::var(name).ok())
            .map_err(|error| ConfigError::InFile { path: path.to_path_buf(), error: Box::new(error) })
    }

    /// Parses TOML text, expanding `${VAR}` with `env`, and validates the result.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let config = Config::parse_unchecked(text, env)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::parse`] without the validation: what `config check` lists [`Config::problems`]
    /// of. Fails only on TOML and on `${VAR}` expansion.
    pub fn parse_unchecked(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(ConfigError::Toml)?;
        config.expand(&env)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// The ordered upstreams an endpoint's events may reach, with their `ordering_key`: its
    /// default upstream and its routes', and, when it has plugins (whose forwards may name
    /// any of the merchant's upstreams), every ordered upstream of its merchant.
    fn ordered_upstreams<'a>(
        &'a self,
        e: &'a EndpointConfig,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let routed: Vec<&str> = e
            .upstream
            .iter()
            .map(String::as_str)
            .chain(e.routes.iter().map(|r| r.upstream.as_str()))
            .collect();
        self.upstream
            .iter()
            .filter(move |u| {
                u.merchant == e.merchant && (routed.contains(&u.name.as_str()) || !e.plugins.is_empty())
            })
            .filter_map(|u| Some((u.name.as_str(), u.ordering_key.as_deref()?)))
    }

    /// The path of an endpoint's events' ordering key (see [`UpstreamConfig::ordering_key`]):
    /// read from the event as received, once, for every ordered upstream it may reach (which
    /// the configuration check requires to agree). `None` when it reaches none.
    pub fn ordering_path(&self, e: &EndpointConfig) -> Option<Vec<String>> {
        self.ordered_upstreams(e).next().and_then(|(_, path)| json_path(path))
    }

    /// The merchant an admin token belongs to: `Some(None)` for the operator, `Some(Some(id))`
    /// for a merchant, `None` for no match. Compared in constant time.
    pub fn token_scope(&self, token: &str) -> Option<Option<String>> {
        use subtle::ConstantTimeEq;
        let matches = |t: &str| bool::from(t.as_bytes().ct_eq(token.as_bytes()));
        let mut scope = None;
        if self.admin.as_ref().is_some_and(|a| matches(&a.token)) {
            scope = Some(None);
        }
        for m in &self.merchant {
            if m.token.as_deref().is_some_and(matches) {
                scope = Some(Some(m.id.clone()));
            }
        }
        scope
    }
}
