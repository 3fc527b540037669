//! The endpoints a token may see, and PayFlow's "Send Test Webhook": a signed sample event
//! POSTed to one of them over the ingress listener, so it takes exactly the path a real
//! webhook takes (verify, store, plugins, deliveries). This module never signs with a secret it
//! shows, and never shows secrets at all.

use hyper::{Method, StatusCode};
use payflow_verify::{PayFlowForm, SignOptions};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{visible, Admin, Scope};
use crate::http::{self, Reply};
use crate::samples::{sample_event, set_field};

/// `POST /api/test-webhook`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestWebhook {
    /// The endpoint's path.
    endpoint: String,
    /// The sample's type (default `payment.succeeded`).
    #[serde(default = "default_type", rename = "type")]
    event_type: String,
    /// Field overrides: `{"data.amount": 5000}`.
    #[serde(default)]
    set: serde_json::Map<String, Value>,
}

fn default_type() -> String {
    payflow_verify::event::PAYMENT_SUCCEEDED.to_string()
}

/// The largest test webhook body accepted (it is a sample with a few overrides).
pub(super) const MAX_TEST_REQUEST: usize = 64 * 1024;

impl Admin {
    /// `GET /api/endpoints`.
    pub(super) fn list_endpoints(&self, scope: &Scope) -> Reply {
        let endpoints: Vec<Value> = self
            .config
            .endpoint
            .iter()
            .filter(|e| visible(scope, &e.merchant))
            .map(|e| {
                json!({
                    "path": e.path,
                    "merchant": e.merchant,
                    "scheme": e.scheme,
                    "mode": e.mode,
                    "upstream": e.upstream,
                    "plugins": e.plugins,
                })
            })
            .collect();
        http::json(StatusCode::OK, &json!({ "endpoints": endpoints }))
    }

    /// `POST /api/test-webhook`: answers with the event's id and the ingress's reply.
    pub(super) async fn test_webhook(&self, scope: &Scope, body: &[u8]) -> Reply {
        let bad = |message: String| {
            http::json(StatusCode::BAD_REQUEST, &json!({ "error": "invalid_request", "message": message }))
        };
        let request: TestWebhook = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return bad(format!(
                    "expected {{\"endpoint\": PATH, \"type\"?: TYPE, \"set\"?: {{FIELD: VALUE}}}}: {e}"
                ))
            }
        };
        let Some(endpoint) =
            self.config.endpoint.iter().find(|e| e.path == request.endpoint && visible(scope, &e.merchant))
        else {
            return http::json(
                StatusCode::NOT_FOUND,
                &json!({ "error": "unknown_endpoint", "message": format!("no endpoint {:?}", request.endpoint) }),
            );
        };
        let ingress = &self.ingress_url;
        let id = format!("evt_test_{:016x}", rand::rng().random::<u64>());
        let now = self.clock.wall_secs();
        let mut event = sample_event(&request.event_type, &id, now);
        for (path, value) in request.set {
            let path: Vec<String> = path.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) || path[0] == "id" {
                return bad(format!("set: {:?} is not a field that may be set", path.join(".")));
            }
            if let Err(e) = set_field(&mut event, &path, value) {
                return bad(format!("set: {e}"));
            }
        }
        let body = event.to_string().into_bytes();
        let signer = match endpoint.signer() {
            Ok(signer) => signer,
            Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot sign: {e}")),
        };
        let options = SignOptions { timestamp: now, id: Some(&id), payflow_form: PayFlowForm::V1 };
        let mut headers = match signer.sign(&body, &options) {
            Ok(headers) => headers,
            Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot sign: {e}")),
        };
        headers.push(("Content-Type".into(), "application/json".into()));
        headers.push(("User-Agent".into(), "payflow-edge test webhook".into()));
        let url = format!("{ingress}{}", endpoint.path);
        match self.client.request(Method::POST, &url, &headers, body).await {
            Ok((status, reply)) => {
                let reply = serde_json::from_slice::<Value>(&reply)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply).into_owned()));
                http::json(
                    StatusCode::OK,
                    &json!({
                        "id": id,
                        "merchant": endpoint.merchant,
                        "scope": endpoint.scope(),
                        "endpoint": endpoint.path,
                        "type": request.event_type,
                        "status": status.as_u16(),
                        "reply": reply,
                    }),
                )
            }
            Err(e) => http::json(
                StatusCode::BAD_GATEWAY,
                &json!({ "error": "ingress_unreachable", "message": e.to_string() }),
            ),
        }
    }
}
