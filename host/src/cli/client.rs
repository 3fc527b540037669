//! The admin API's address and token as every admin command takes them, and the HTTP client
//! the CLI's commands share with the library.

use clap::Args;
use hyper::Method;
use serde_json::Value;

pub use payflow_gateway::http::Client as HttpClient;

/// Where the admin API is and the token to use.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin listener.
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_URL", default_value = "http://127.0.0.1:9090", global = true)]
    pub admin: String,
    /// Admin bearer token (the operator's or a merchant's).
    #[arg(long, env = "PAYFLOW_EDGE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl AdminArgs {
    /// Calls `method path` on the admin API; a non-2xx reply is a negative verdict naming the
    /// status, the error and its message.
    pub fn call(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Value, super::Failure> {
        let token = self.token.clone().ok_or_else(|| {
            anyhow::anyhow!("an admin token is needed: --token or $PAYFLOW_EDGE_ADMIN_TOKEN")
        })?;
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let mut headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];
        if !body.is_empty() {
            // Uploads are components; everything else the CLI sends is a JSON object.
            let kind = if body.starts_with(b"{") { "application/json" } else { "application/wasm" };
            headers.push(("Content-Type".to_string(), kind.to_string()));
        }
        let (status, body) = super::runtime()?
            .block_on(HttpClient::new().request(method, &url, &headers, body))
            .map_err(anyhow::Error::from)?;
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
