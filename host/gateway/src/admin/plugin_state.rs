//! What a merchant inspects of a plugin while debugging it: its runs' log lines as they are
//! written (`GET /api/plugins/{name}/logs?after=N`, which `plugin logs --follow` polls), and
//! its key-value space (`GET /api/plugins/{name}/kv`, `GET|DELETE …/kv/{key}`), to see what
//! the plugin remembers and repair a bad entry. This module only reads and deletes through
//! the registry; it never writes a value a plugin did not write.

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::json;

use super::{plugin_error, query_pairs, Admin};
use crate::http::{self, Reply};
use payflow_plugins::Slot;

/// Lines per `logs` reply by default, and at most.
const DEFAULT_LINES: usize = 100;
const MAX_LINES: usize = 1000;
/// The most of one value the listing shows (the whole value is one `GET` away).
const PREVIEW_BYTES: usize = 120;

impl Admin {
    /// `GET /api/plugins/{name}/logs?after=N&limit=L`.
    pub(super) fn plugin_logs(&self, slot: &Slot, query: Option<&str>) -> Reply {
        let (mut after, mut limit) = (None, DEFAULT_LINES);
        for (key, value) in query_pairs(query) {
            let parsed = value.parse::<u64>().ok();
            match (key.as_str(), parsed) {
                ("after", Some(n)) => after = Some(n),
                ("limit", Some(n)) if (1..=MAX_LINES as u64).contains(&n) => limit = n as usize,
                ("after", None) => {
                    return bad_query("after must be a line number from a previous reply's next")
                }
                ("limit", _) => return bad_query(&format!("limit must be 1 to {MAX_LINES}")),
                (other, _) => return bad_query(&format!("unknown query parameter {other:?} (after, limit)")),
            }
        }
        let (lines, next) = slot.logs.read(after, limit);
        http::json(StatusCode::OK, &json!({ "plugin": slot.name, "lines": lines, "next": next }))
    }

    /// `GET /api/plugins/{name}/kv`, `GET …/kv/{key}`, `DELETE …/kv/{key}`.
    pub(super) async fn plugin_kv(&self, slot: &Slot, key: Option<&str>, delete: bool) -> Reply {
        let Some(registry) = self.registry() else { return plugin_error(unknown(&slot.name)) };
        let (merchant, name) = (slot.merchant.as_str(), slot.name.as_str());
        if delete {
            let key = key.unwrap_or_default();
            return match registry.delete_kv(merchant, name, key).await {
                Ok(deleted) => http::json(StatusCode::OK, &json!({ "deleted": deleted, "key": key })),
                Err(e) => plugin_error(e),
            };
        }
        let entries = match registry.kv(merchant, name).await {
            Ok(entries) => entries,
            Err(e) => return plugin_error(e),
        };
        match key {
            None => {
                let used: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                let keys: Vec<_> = entries
                    .iter()
                    .map(|(k, v)| {
                        let shown = &v[..v.len().min(PREVIEW_BYTES)];
                        json!({ "key": k, "size": v.len(), "preview": String::from_utf8_lossy(shown) })
                    })
                    .collect();
                http::json(
                    StatusCode::OK,
                    &json!({ "plugin": name, "keys": keys, "used_bytes": used, "quota_bytes": slot.limits.kv_bytes }),
                )
            }
            Some(key) => match entries.iter().find(|(k, _)| k == key) {
                Some((k, v)) => http::json(
                    StatusCode::OK,
                    &json!({
                        "key": k,
                        "size": v.len(),
                        "text": std::str::from_utf8(v).ok(),
                        "base64": base64::engine::general_purpose::STANDARD.encode(v),
                    }),
                ),
                None => http::json(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": "unknown_key", "message": format!("plugin {name} has no key {key:?}") }),
                ),
            },
        }
    }
}

fn unknown(name: &str) -> payflow_plugins::RegistryError {
    payflow_plugins::RegistryError::Unknown(name.to_string())
}

fn bad_query(message: &str) -> Reply {
    http::json(StatusCode::BAD_REQUEST, &json!({ "error": "bad_query", "message": message }))
}
