//! The admin API's address and token as every admin command takes them, and the HTTP client
//! the CLI's commands share with the library.

use clap::Args;
use hyper::Method;
use serde_json::Value;

pub use payflow_gateway::http::Client as HttpClient;

/// The admin listener when neither a flag, the environment nor a config file names one.
const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// Where the admin API is and the token to use: `--admin`/`--token` (or their environment
/// variables), else the gateway's own config file (`--config`), else the default address.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin listener [default: http://127.0.0.1:9090, or [admin] listen of --config].
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_URL", global = true)]
    pub admin: Option<String>,
    /// Admin bearer token (the operator's or a merchant's) [default: [admin] token of --config].
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The gateway's config file: the admin address and the operator's token are taken from
    /// its [admin] section (flags and environment variables win).
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
}

/// An address to connect to from a listen address: a wildcard means this machine.
fn connectable(listen: &str) -> String {
    let address = if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    };
    format!("http://{address}")
}

impl AdminArgs {
    /// The admin API's base URL and the token, from the flags, the environment or the config.
    fn resolve(&self) -> Result<(String, String), super::Failure> {
        let file = match &self.config {
            Some(path) => {
                let config = payflow_config::Config::load(path)?;
                let admin = config.admin.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} has no [admin] section: that gateway serves no admin API",
                        path.display()
                    )
                })?;
                Some(admin)
            }
            None => None,
        };
        let admin = (self.admin.clone())
            .or_else(|| file.as_ref().map(|a| connectable(&a.listen)))
            .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
        let token = (self.token.clone()).or_else(|| file.map(|a| a.token)).ok_or_else(|| {
            anyhow::anyhow!(
                "an admin token is needed: --token, $PAYFLOW_EDGE_ADMIN_TOKEN, or --config FILE (the gateway's \
                 config, whose [admin] token is used)"
            )
        })?;
        Ok((admin, token))
    }

    /// Calls `method path` on the admin API; a non-2xx reply is a negative verdict naming the
    /// status, the error and its message.
    pub fn call(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Value, super::Failure> {
        let (admin, token) = self.resolve()?;
        let url = format!("{}{path}", admin.trim_end_matches('/'));
        let mut headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];
        if !body.is_empty() {
            // Uploads are components; everything else the CLI sends is a JSON object.
            let kind = if body.starts_with(b"{") { "application/json" } else { "application/wasm" };
            headers.push(("Content-Type".to_string(), kind.to_string()));
        }
        let (status, body) =
            super::runtime()?.block_on(HttpClient::new().request(method, &url, &headers, body)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the admin API at {admin} ({e}): is the gateway running? Point at its admin \
                     listener with --admin URL (or $PAYFLOW_EDGE_ADMIN_URL), or pass --config FILE to use the \
                     [admin] listen and token of its config"
                )
            })?;
        let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = reply.get("error").and_then(Value::as_str).unwrap_or("no reason given");
            let message =
                reply.get("message").and_then(Value::as_str).map(|m| format!(": {m}")).unwrap_or_default();
            return Err(super::Failure::Negative(format!("{} {reason}{message}", status.as_u16())));
        }
        Ok(reply)
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
