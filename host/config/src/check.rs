//! Validation of an expanded configuration: every section, merchant, upstream, endpoint and
//! plugin checked on its own, each problem naming its key and how to fix it (`Config::problems`
//! lists them all for `config check`; loading stops at the first). It must never change the
//! configuration, only judge it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::endpoint::{Mode, SecretEntry};
use crate::error::{invalid, ConfigError};
use crate::plugins::{valid_plugin_name, PluginConfig};
use crate::route::{json_path, FieldValue};
use crate::server::{DEFAULT_MAX_HEADER_BYTES, MAX_MAX_HEADER_BYTES, MIN_MAX_HEADER_BYTES};
use crate::store::{DEFAULT_WAL_PREFILL_MB, MAX_COMMIT_DELAY_US, MAX_WAL_PREFILL_MB};
use crate::upstream::{Rate, SignScheme};
use crate::{Config, DEFAULT_MERCHANT};

impl Config {
    /// Every problem of an expanded configuration, for `config check`: each section, each
    /// merchant, upstream and endpoint is checked on its own, and reports its first problem
    /// (a later check of one entry may depend on an earlier one). Empty when it is valid.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems: Vec<ConfigError> =
            [self.check_server(), self.check_store(), self.check_admin(), self.check_telemetry()]
                .into_iter()
                .filter_map(Result::err)
                .collect();
        let mut merchants = BTreeSet::from([DEFAULT_MERCHANT.to_string()]);
        for (i, m) in self.merchant.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                if m.id.is_empty() || !m.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(invalid(format!("merchant[{i}].id"), "must be letters, digits, '-' or '_'"));
                }
                if m.id != DEFAULT_MERCHANT && !merchants.insert(m.id.clone()) {
                    return Err(invalid(
                        format!("merchant[{i}].id"),
                        format!("{:?} is declared twice", m.id),
                    ));
                }
                if let Some(token) = &m.token {
                    if token.trim().len() < 16 {
                        return Err(invalid(
                            format!("merchant[{i}].token"),
                            "must be at least 16 characters",
                        ));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }

        let mut upstreams = BTreeMap::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                let key = |k: &str| format!("upstream[{i}].{k}");
                // `@` stays reserved: databases from before plugin steps had a table of their own
                // held them as deliveries to `@plugins` (migrated at start-up), and names the
                // gateway may need for itself must never be a merchant's.
                if u.name.is_empty() || u.name.starts_with('@') {
                    return Err(invalid(key("name"), "must not be empty or start with '@'"));
                }
                if upstreams.insert(u.name.clone(), u).is_some() {
                    return Err(invalid(key("name"), format!("{:?} is declared twice", u.name)));
                }
                if !merchants.contains(&u.merchant) {
                    return Err(invalid(key("merchant"), format!("unknown merchant {:?}", u.merchant)));
                }
                let uri: http::Uri = u
                    .url
                    .parse()
                    .map_err(|e| invalid(key("url"), format!("{:?} is not a URL: {e}", u.url)))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(invalid(
                        key("url"),
                        format!(
                            "{:?} must be an http:// URL with a host (https upstreams are not supported yet)",
                            u.url
                        ),
                    ));
                }
                if u.max_attempts == 0 {
                    return Err(invalid(key("max_attempts"), "must be at least 1"));
                }
                if u.concurrency == 0 {
                    return Err(invalid(key("concurrency"), "must be at least 1"));
                }
                if u.timeout_ms == 0 {
                    return Err(invalid(key("timeout_ms"), "must be at least 1"));
                }
                if matches!(&u.sign_secret, Some(s) if s.is_empty()) {
                    return Err(invalid(key("sign_secret"), "must not be empty"));
                }
                match (u.sign_scheme, &u.sign_secret) {
                (Some(SignScheme::None), Some(_)) => {
                    return Err(invalid(
                        key("sign_scheme"),
                        "\"none\" with a sign_secret: remove sign_secret, or choose payflow-v0, payflow or standard-webhooks",
                    ))
                }
                (Some(scheme), None) if scheme != SignScheme::None => {
                    return Err(invalid(
                        key("sign_secret"),
                        format!("sign_scheme = \"{}\" needs a sign_secret to sign with", scheme.as_str()),
                    ))
                }
                _ => {}
            }
                if let Err(e) = u.signer() {
                    return Err(invalid(key("sign_secret"), e.to_string()));
                }
                if let Some(rate) = &u.rate {
                    if Rate::parse(rate).is_none() {
                        return Err(invalid(
                            key("rate"),
                            format!(
                                "{rate:?} is not a rate: write a whole number per s, m or h, e.g. \"50/s\""
                            ),
                        ));
                    }
                }
                if let Some(path) = &u.ordering_key {
                    if json_path(path).is_none() {
                        return Err(invalid(
                            key("ordering_key"),
                            format!("{path:?} is not a dotted JSON path, e.g. \"data.id\""),
                        ));
                    }
                }
                if let Some(breaker) = &u.breaker {
                    if breaker.failures == 0 {
                        return Err(invalid(key("breaker.failures"), "must be at least 1"));
                    }
                    if breaker.cool_down_ms == 0 {
                        return Err(invalid(key("breaker.cool_down_ms"), "must be at least 1"));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }

        // Without the plugins' table the endpoints' plugin lists are not checked: each would
        // only repeat that the table is wrong.
        let plugins = match self.validate_plugins(&merchants) {
            Ok(plugins) => Some(plugins),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        let mut paths = BTreeSet::new();
        for (i, e) in self.endpoint.iter().enumerate() {
            let mut check = || -> Result<(), ConfigError> {
                let key = |k: &str| format!("endpoint[{i}].{k}");
                if !e.path.starts_with('/') || e.path.starts_with("/api/") {
                    return Err(invalid(
                        key("path"),
                        format!("{:?} must start with '/' (and not /api/)", e.path),
                    ));
                }
                if !paths.insert(e.path.clone()) {
                    return Err(invalid(key("path"), format!("{:?} is used by two endpoints", e.path)));
                }
                if !merchants.contains(&e.merchant) {
                    return Err(invalid(key("merchant"), format!("unknown merchant {:?}", e.merchant)));
                }
                if e.secrets.is_empty() || e.secrets.iter().any(|s| s.value().is_empty()) {
                    return Err(invalid(key("secrets"), "needs at least one non-empty secret"));
                }
                for (j, secret) in e.secrets.iter().enumerate() {
                    if let SecretEntry::Dated { not_after, .. } = secret {
                        if secret.not_after().is_none() {
                            return Err(invalid(
                                key(&format!("secrets[{j}].not_after")),
                                format!(
                                    "{not_after:?} is not an RFC 3339 time, e.g. \"2026-12-31T23:59:59Z\""
                                ),
                            ));
                        }
                    }
                }
                e.verifier().map_err(|problem| invalid(key("scheme"), problem.to_string()))?;
                let owned = |at: String, name: &str| match upstreams.get(name) {
                    None => Err(invalid(at, format!("unknown upstream {name:?}"))),
                    Some(u) if u.merchant != e.merchant => Err(invalid(
                        at,
                        format!(
                            "upstream {name:?} belongs to merchant {:?}, not {:?}",
                            u.merchant, e.merchant
                        ),
                    )),
                    Some(_) => Ok(()),
                };
                match (&e.upstream, e.mode) {
                    (None, Mode::Proxy) => return Err(invalid(key("upstream"), "is required in proxy mode")),
                    (Some(name), _) => owned(key("upstream"), name)?,
                    (None, Mode::Queue) => {}
                }
                if e.mode == Mode::Proxy && !e.routes.is_empty() {
                    return Err(invalid(
                        key("route"),
                        "routes need mode = \"queue\": a proxy answers with its one upstream's reply \
                         (move the routes to a queue-mode endpoint, or use a plugin's forwards)",
                    ));
                }
                let mut ordered = self.ordered_upstreams(e);
                if let Some((first, path)) = ordered.next() {
                    if let Some((other, other_path)) = ordered.find(|(_, p)| p != &path) {
                        return Err(invalid(
                            key("upstream"),
                            format!(
                                "its events may reach upstreams {first:?} (ordering_key = {path:?}) and {other:?} \
                                 (ordering_key = {other_path:?}): an endpoint's events have one ordering key, so \
                                 give those upstreams the same one"
                            ),
                        ));
                    }
                }
                for (j, route) in e.routes.iter().enumerate() {
                    let at = |k: &str| format!("endpoint[{i}].route[{j}].{k}");
                    owned(at("upstream"), &route.upstream)?;
                    if let Some(t) = route.types.iter().find(|t| t.is_empty()) {
                        return Err(invalid(at("types"), format!("{t:?}: a type glob must not be empty")));
                    }
                    for (path, value) in &route.fields {
                        if json_path(path).is_none() {
                            return Err(invalid(
                                at("where"),
                                format!("{path:?} is not a dotted JSON path, e.g. \"data.currency\""),
                            ));
                        }
                        if let FieldValue::AnyOf(values) = value {
                            if values.is_empty() || values.iter().any(|v| matches!(v, FieldValue::AnyOf(_))) {
                                return Err(invalid(
                                    at("where"),
                                    format!("{path:?}: a list must hold one or more plain values"),
                                ));
                            }
                        }
                    }
                }
                let Some(plugins) = &plugins else { return Ok(()) };
                for (j, name) in e.plugins.iter().enumerate() {
                    match plugins.get(name) {
                        None => {
                            return Err(invalid(
                                format!("endpoint[{i}].plugins[{j}]"),
                                format!("unknown plugin {name:?} (declare it with [[plugin]])"),
                            ))
                        }
                        Some(p) if p.merchant != e.merchant => {
                            return Err(invalid(
                                format!("endpoint[{i}].plugins[{j}]"),
                                format!(
                                    "plugin {name:?} belongs to merchant {:?}, not {:?}",
                                    p.merchant, e.merchant
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                    if e.plugins[..j].contains(name) {
                        return Err(invalid(
                            format!("endpoint[{i}].plugins[{j}]"),
                            format!("{name:?} is listed twice"),
                        ));
                    }
                }
                Ok(())
            };
            problems.extend(check().err());
        }
        if self.endpoint.is_empty() {
            problems.push(invalid("endpoint", "at least one [[endpoint]] is needed"));
        }
        problems.extend(self.validate_scopes().err());
        problems
    }

    /// `[server]`.
    fn check_server(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.max_connections_per_client == 0 {
            return Err(invalid("server.max_connections_per_client", "must be at least 1"));
        }
        if !(MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&self.server.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                format!("must be from {MIN_MAX_HEADER_BYTES} to {MAX_MAX_HEADER_BYTES} (default {DEFAULT_MAX_HEADER_BYTES})"),
            ));
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => return Err(invalid("server.tls_key", "is required with server.tls_cert")),
            (None, Some(_)) => return Err(invalid("server.tls_cert", "is required with server.tls_key")),
            _ => {}
        }
        Ok(())
    }

    /// `[store]`.
    fn check_store(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "store.url",
                    "must be a PostgreSQL URL (postgres://user:pass@host:port/db); for SQLite set store.path",
                ));
            }
            let slowest = self.upstream.iter().map(|u| u.timeout_ms).max().unwrap_or(0);
            if self.store.lease_ms <= slowest {
                return Err(invalid(
                    "store.lease_ms",
                    format!("must be longer than the slowest upstream's timeout_ms ({slowest})"),
                ));
            }
            if self.store.pool_size < 2 {
                return Err(invalid("store.pool_size", "must be at least 2"));
            }
        }
        if self.store.max_batch == 0 {
            return Err(invalid("store.max_batch", "must be at least 1"));
        }
        if self.store.commit_delay_us > MAX_COMMIT_DELAY_US {
            return Err(invalid(
                "store.commit_delay_us",
                format!("must be at most {MAX_COMMIT_DELAY_US} (10 ms); 1000 is the default, 0 turns it off"),
            ));
        }
        if self.store.wal_prefill_mb > MAX_WAL_PREFILL_MB {
            return Err(invalid(
                "store.wal_prefill_mb",
                format!(
                    "must be at most {MAX_WAL_PREFILL_MB} (MiB); {DEFAULT_WAL_PREFILL_MB} is the default, 0 turns it off"
                ),
            ));
        }
        Ok(())
    }

    /// `[telemetry]`.
    fn check_telemetry(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.telemetry.otlp_endpoint {
            let uri: Option<http::Uri> = url.parse().ok();
            if !uri.is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some()) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    format!(
                        "{url:?} must be the http:// URL of an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\" \
                         (https collectors are not supported yet: run one on loopback or a private network)"
                    ),
                ));
            }
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        Ok(())
    }

    /// `[admin]`.
    fn check_admin(&self) -> Result<(), ConfigError> {
        if let Some(admin) = &self.admin {
            parse_addr("admin.listen", &admin.listen)?;
            if admin.token.trim().len() < 16 {
                return Err(invalid(
                    "admin.token",
                    "must be at least 16 characters (it guards the admin API)",
                ));
            }
        }
        Ok(())
    }

    /// A shared scope must be one the reader can see is shared on purpose: a plain name, or
    /// the path of an endpoint of the same merchant that keeps its own scope; and endpoints
    /// sharing one answer duplicates the same way (one mode).
    fn validate_scopes(&self) -> Result<(), ConfigError> {
        let mut modes: BTreeMap<(&str, &str), Mode> = BTreeMap::new();
        for e in &self.endpoint {
            modes.entry((&e.merchant, e.scope())).or_insert(e.mode);
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            let key = format!("endpoint[{i}].dedup_scope");
            let Some(scope) = &e.dedup_scope else { continue };
            if scope.starts_with('/') {
                let joined = self.endpoint.iter().find(|o| o.path == *scope);
                match joined {
                    Some(o) if o.merchant != e.merchant => {
                        return Err(invalid(
                            key,
                            format!("{scope:?} is an endpoint of merchant {:?}, not {:?}", o.merchant, e.merchant),
                        ))
                    }
                    Some(o) if o.dedup_scope.is_some() && o.path != e.path => {
                        return Err(invalid(
                            key,
                            format!(
                                "endpoint {scope:?} de-duplicates in scope {:?}: name that scope instead",
                                o.scope()
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        return Err(invalid(
                            key,
                            format!("{scope:?} is no endpoint's path; a shared scope is a name without '/' or an endpoint's path"),
                        ))
                    }
                }
            } else if scope.is_empty()
                || scope.len() > 64
                || !scope.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    key,
                    "must be up to 64 letters, digits, '-', '_' or '.', or an endpoint's path",
                ));
            }
            if modes[&(e.merchant.as_str(), e.scope())] != e.mode {
                return Err(invalid(
                    key,
                    format!("endpoints sharing scope {:?} must use one mode (queue or proxy)", e.scope()),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(
        &self,
        merchants: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, &PluginConfig>, ConfigError> {
        let p = &self.plugins;
        if p.max_attempts == 0 {
            return Err(invalid("plugins.max_attempts", "must be at least 1"));
        }
        if p.max_versions < 2 {
            return Err(invalid(
                "plugins.max_versions",
                "must be at least 2 (the active version and the one before it)",
            ));
        }
        if !(1..=10_000).contains(&p.canary_window) {
            return Err(invalid("plugins.canary_window", "must be 1 to 10000 runs"));
        }
        if p.canary_margin_percent > 100 {
            return Err(invalid("plugins.canary_margin_percent", "must be 0 to 100 (percentage points)"));
        }
        if !(1_000..=3_600_000).contains(&p.dry_run_timeout_ms) {
            return Err(invalid("plugins.dry_run_timeout_ms", "must be 1000 to 3600000 (1 s to 1 h)"));
        }
        if p.merchant_storage_mb == 0 {
            return Err(invalid("plugins.merchant_storage_mb", "must be at least 1"));
        }
        if p.concurrency == 0 {
            return Err(invalid("plugins.concurrency", "must be at least 1"));
        }
        if p.max_upload_bytes < 1024 {
            return Err(invalid("plugins.max_upload_bytes", "must be at least 1024"));
        }
        let mut plugins = BTreeMap::new();
        for (i, p) in self.plugin.iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            if !valid_plugin_name(&p.name) {
                return Err(invalid(key("name"), "must be 1 to 64 letters, digits, '-' or '_'"));
            }
            if plugins.insert(p.name.clone(), p).is_some() {
                return Err(invalid(key("name"), format!("{:?} is declared twice", p.name)));
            }
            if !merchants.contains(&p.merchant) {
                return Err(invalid(key("merchant"), format!("unknown merchant {:?}", p.merchant)));
            }
            // Bounds that keep one plugin from taking the gateway with it: a deadline of a
            // minute or memory of 4 GiB is a misconfiguration, not a plugin.
            let ranges: [(&str, u64, u64, u64); 6] = [
                ("fuel", p.fuel, 1_000, 100_000_000_000),
                ("timeout_ms", p.timeout_ms, 1, 60_000),
                ("memory_mb", p.memory_mb, 1, 256),
                ("output_bytes", p.output_bytes as u64, 1, 64 << 20),
                ("log_bytes", p.log_bytes as u64, 0, 16 << 20),
                ("kv_bytes", p.kv_bytes as u64, 0, 256 << 20),
            ];
            for (name, value, min, max) in ranges {
                if !(min..=max).contains(&value) {
                    return Err(invalid(key(name), format!("must be between {min} and {max}")));
                }
            }
        }
        Ok(plugins)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| invalid(key, format!("{value:?} is not an address such as 127.0.0.1:8080")))
}
