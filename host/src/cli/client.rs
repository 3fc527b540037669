//! A minimal HTTP/1.1 client for the CLI's `send`, `events` and `plugin` commands, and the
//! admin API's address and token as every admin command takes them.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl HttpClient {
    pub fn new() -> Self {
        HttpClient(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    /// Sends a request and reads the whole reply.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        if url.starts_with("https://") {
            bail!("{url}: https is not supported by this command yet; use the gateway's http listener");
        }
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request =
            request.body(Full::new(Bytes::from(body))).with_context(|| format!("bad request to {url}"))?;
        let response = self.0.request(request).await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reply cut short")?.to_bytes();
        Ok((status, body))
    }
}

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
            headers.push(("Content-Type".to_string(), "application/wasm".to_string()));
        }
        let (status, body) =
            super::runtime()?.block_on(HttpClient::new().request(method, &url, &headers, body))?;
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
