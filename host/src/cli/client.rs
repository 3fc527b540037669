//! A minimal HTTP/1.1 client for the CLI's `send` and `events` commands.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

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
