//! The admin API on its own listener: events (list, show, replay), plugins (list, show,
//! upload, delete, roll back), endpoints and test webhooks, metrics and health, and the
//! dashboard that drives them. `openapi.json` beside this file describes every route.
//!
//! `/healthz`, `/readyz`, the dashboard's static files and `/openapi.json` are open: they hold
//! no merchant data.
//! Every `/api` route needs `Authorization: Bearer <token>`, compared in constant time. The
//! operator's token sees every merchant; a merchant's token sees only that merchant's events,
//! and another merchant's event answers 404, exactly like one that does not exist, so a token
//! cannot even learn which ids other merchants have. The same holds for plugins: a merchant's
//! token uploads, shows and rolls back only its own.

mod dashboard;
mod endpoints;
mod history;
mod observe;
mod plugin_state;
mod trial;
mod upstreams;

pub use history::{RateHistory, STEP_MS as HISTORY_STEP_MS};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::http::{self, percent_decode, query_pairs, BodyError, Reply, RequestBody};
use crate::ingress::Handler;
use crate::pipeline::{Endpoint, FirstHop};
use payflow_clock::Clock;
use payflow_config::Config;
use payflow_delivery::Upstream;
use payflow_plugins::{Registry, RegistryError};

use crate::stage::PluginStage;
use payflow_metrics::Histogram;
use payflow_store::{EventDetail, EventFilter, EventKey, EventStatus, EventSummary, Store};

/// Default and largest page sizes for `GET /api/events`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Events an ambiguous id's `409` names at most (the reply stays small however many match).
const AMBIGUOUS_SHOWN: usize = 16;

/// The admin listener's handler.
pub struct Admin {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The time replays are due at (a test drives it).
    pub clock: Arc<dyn Clock>,
    /// Tokens and scopes.
    pub config: Arc<Config>,
    /// Endpoints by path (to find an event's upstream on replay).
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// The merchants' upstreams (for their metrics).
    pub upstreams: Vec<Arc<Upstream>>,
    /// Plugins, when any are configured.
    pub plugins: Option<Arc<PluginStage>>,
    /// `http://host:port` (or `https://`) of the ingress listener on loopback, where test
    /// webhooks are sent.
    pub ingress_url: String,
    /// For test webhooks (trusting any certificate when the ingress speaks TLS: it is this
    /// gateway's own listener on loopback).
    pub client: http::Client,
    /// Uploads in flight per token (at most `UPLOADS_PER_TOKEN`).
    pub uploads: Mutex<HashMap<Scope, usize>>,
    /// How long the store's commits took (`payflow_edge_store_commit_seconds`).
    pub commits: Arc<Histogram>,
    /// Replicas on a shared store: this one's name, a label on every series.
    pub replica: Option<String>,
    /// The last hour's totals, for the dashboard's chart (written by [`Admin::record_history`]).
    pub history: RateHistory,
}

/// Uploads one token may have in flight. An upload holds its connection until its body is in
/// (up to [`UPLOAD_TIMEOUT`]); without a bound a merchant's token could hold every admin
/// connection with slow uploads and lock the operator out.
const UPLOADS_PER_TOKEN: usize = 2;

/// An upload's place among its token's, given back when dropped.
struct UploadTurn<'a> {
    admin: &'a Admin,
    scope: Scope,
}

impl Admin {
    /// A place for one more upload by `scope`, unless it has [`UPLOADS_PER_TOKEN`] in flight.
    fn upload_turn(&self, scope: &Scope) -> Option<UploadTurn<'_>> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let n = uploads.entry(scope.clone()).or_default();
        if *n >= UPLOADS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(UploadTurn { admin: self, scope: scope.clone() })
    }
}

impl Drop for UploadTurn<'_> {
    fn drop(&mut self) {
        let mut uploads = self.admin.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = uploads.get_mut(&self.scope) {
            *n -= 1;
        }
    }
}

/// Who is asking: `None` is the operator, `Some(id)` a merchant.
type Scope = Option<String>;

/// Whether `scope` may see what belongs to `merchant`.
fn visible(scope: &Scope, merchant: &str) -> bool {
    scope.as_deref().is_none_or(|m| m == merchant)
}

fn unauthorized() -> Reply {
    let mut reply = http::error(StatusCode::UNAUTHORIZED, "unauthorized");
    reply.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    reply
}

fn not_found() -> Reply {
    http::error(StatusCode::NOT_FOUND, "not_found")
}

fn store_error(e: payflow_store::StoreError) -> Reply {
    tracing::warn!(error = %e, "admin request failed in the store");
    http::error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
}

impl Admin {
    fn scope(&self, request: &Request<RequestBody>) -> Option<Scope> {
        let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
        self.config.token_scope(token)
    }

    async fn list_events(&self, scope: Scope, query: Option<&str>) -> Reply {
        let filter = match event_filter(scope, query) {
            Ok(filter) => filter,
            Err(message) => return http::error(StatusCode::BAD_REQUEST, &message),
        };
        let limit = filter.limit;
        match self.store.list_events(filter).await {
            Ok(events) => {
                let next = (events.len() == limit).then(|| events.last().map(encode_cursor)).flatten();
                http::json(StatusCode::OK, &json!({ "events": events, "next": next }))
            }
            Err(e) => store_error(e),
        }
    }

    /// The event `id` a request addresses, with its deliveries and attempts. Ids are unique
    /// per (merchant, de-duplication scope) only, so `?merchant=` and `?scope=` narrow the
    /// search (a merchant's token is held to its own merchant); an id that still names several
    /// events answers `409 ambiguous_event_id` listing each one's address, never one of them
    /// picked silently.
    async fn find_event(&self, scope: &Scope, query: Option<&str>, id: &str) -> Result<EventDetail, Reply> {
        let (mut asked_merchant, mut asked_scope) = (None, None);
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "merchant" => asked_merchant = Some(value),
                "scope" => asked_scope = Some(value),
                _ => {}
            }
        }
        let merchant = match (scope, asked_merchant) {
            (Some(own), Some(asked)) if *own != asked => return Err(not_found()),
            (Some(own), _) => Some(own.clone()),
            (None, asked) => asked,
        };
        let keys = self
            .store
            .find_events(merchant.as_deref(), asked_scope.as_deref(), id, AMBIGUOUS_SHOWN)
            .await
            .map_err(store_error)?;
        let key = match keys.as_slice() {
            [] => return Err(not_found()),
            [key] => key,
            several => {
                let merchants: std::collections::BTreeSet<&str> =
                    several.iter().map(|k| k.merchant.as_str()).collect();
                let named: Vec<String> =
                    several.iter().map(|k| format!("merchant {} scope {}", k.merchant, k.scope)).collect();
                return Err(http::json(
                    StatusCode::CONFLICT,
                    &json!({
                        "error": "ambiguous_event_id",
                        "message": format!(
                            "several events have id {id:?} ({}): add ?merchant= and ?scope=",
                            named.join("; ")
                        ),
                        "merchants": merchants,
                        "events": several.iter().map(|k| json!({"merchant": k.merchant, "scope": k.scope})).collect::<Vec<_>>(),
                    }),
                ));
            }
        };
        match self.store.get_event(key).await {
            Ok(Some(detail)) => Ok(detail),
            Ok(None) => Err(not_found()),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn show_event(&self, scope: Scope, query: Option<&str>, id: &str) -> Reply {
        match self.find_event(&scope, query, id).await {
            Ok(detail) => http::json(StatusCode::OK, &json!(detail)),
            Err(reply) => reply,
        }
    }

    /// `POST /api/events/{id}/replay`. A quarantined event breaks PayFlow's event model and is
    /// never delivered unless the caller forces it (`{"force": true}`); who forced it, and
    /// when, stays on the event.
    async fn replay_event(&self, scope: Scope, query: Option<&str>, id: &str, force: bool) -> Reply {
        let detail = match self.find_event(&scope, query, id).await {
            Ok(detail) => detail,
            Err(reply) => return reply,
        };
        let quarantined = detail.summary.status == EventStatus::Quarantined.as_str();
        if quarantined && !force {
            let why = detail.summary.reason.as_deref().unwrap_or("it breaks PayFlow's event model");
            return http::json(
                StatusCode::CONFLICT,
                &json!({
                    "error": "quarantined",
                    "message": format!(
                        "{id} is quarantined ({why}) and is never delivered unless forced: replay it with \
                         {{\"force\": true}} (payflow-edge events replay {id} --force) to deliver it anyway"
                    ),
                }),
            );
        }
        let forced_by = quarantined.then(|| {
            let who = match &scope {
                None => "the operator's token".to_string(),
                Some(merchant) => format!("merchant {merchant}'s token"),
            };
            format!("{who}, {}", crate::samples::rfc3339(self.clock.now_ms() / 1000))
        });
        if let Some(who) = &forced_by {
            tracing::warn!(event_id = id, merchant = %detail.summary.merchant, forced_by = %who, "replay of a quarantined event forced");
        }
        match self.replay_one(&detail.summary, forced_by.as_deref()).await {
            Ok(replayed) => http::json(
                StatusCode::ACCEPTED,
                &json!({
                    "replayed": true,
                    "id": id,
                    "merchant": detail.summary.merchant,
                    "scope": detail.summary.scope,
                    "upstream": replayed.upstream,
                    "plugins": replayed.plugins,
                }),
            ),
            Err(reply) => reply,
        }
    }

    /// Makes an event's first hop due now again (its plugins, or its upstream).
    async fn replay_one(&self, event: &EventSummary, forced_by: Option<&str>) -> Result<Replayed, Reply> {
        let endpoint = self.endpoints.get(&event.endpoint);
        let Some((endpoint, hop)) = endpoint.and_then(|e| Some((e, e.first_hop.clone()?))) else {
            return Err(http::error(
                StatusCode::CONFLICT,
                "the event's endpoint has no upstream to deliver to",
            ));
        };
        let key = EventKey::new(event.merchant.clone(), event.scope.clone(), event.id.clone());
        match self.store.replay(&key, &hop.hop(), self.clock.now_ms(), forced_by).await {
            Ok(true) => {
                hop.poll_store_now();
                Ok(Replayed {
                    upstream: endpoint.upstream.as_ref().map(|u| u.name.clone()),
                    plugins: matches!(hop, FirstHop::Plugins(_)),
                })
            }
            Ok(false) => Err(not_found()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// `POST /api/events/replay?status=dead[&type=…&endpoint=…&merchant=…]`: replays the dead
    /// events the filter matches, up to [`MAX_PAGE`] per call (`more` says call again).
    /// Quarantined events are never replayed in bulk: each needs its own forced replay.
    async fn replay_matching(&self, scope: Scope, query: Option<&str>) -> Reply {
        let mut filter = match event_filter(scope, query) {
            Ok(filter) => filter,
            Err(message) => return http::error(StatusCode::BAD_REQUEST, &message),
        };
        if filter.status.as_deref() != Some(EventStatus::Dead.as_str()) || filter.before.is_some() {
            return http::json(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": "bad_request",
                    "message": "a bulk replay takes dead events only: add status=dead (and type, endpoint or \
                                merchant to narrow it); a quarantined event is replayed on its own, with force",
                }),
            );
        }
        if !query_pairs(query).iter().any(|(k, _)| k == "limit") {
            filter.limit = MAX_PAGE;
        }
        let limit = filter.limit;
        let events = match self.store.list_events(filter).await {
            Ok(events) => events,
            Err(e) => return store_error(e),
        };
        let (mut replayed, mut skipped) = (0, Vec::new());
        for event in &events {
            match self.replay_one(event, None).await {
                Ok(_) => replayed += 1,
                // The store is gone: stop here and say so; what was replayed stays replayed.
                Err(reply) if reply.status() == StatusCode::SERVICE_UNAVAILABLE => return reply,
                Err(reply) => skipped.push(json!({
                    "id": event.id,
                    "merchant": event.merchant,
                    "scope": event.scope,
                    "status": reply.status().as_u16(),
                })),
            }
        }
        tracing::info!(replayed, skipped = skipped.len(), "bulk replay of dead events");
        http::json(
            StatusCode::OK,
            &json!({ "replayed": replayed, "skipped": skipped, "more": events.len() == limit && replayed > 0 }),
        )
    }
}

/// Where a replayed event goes.
struct Replayed {
    upstream: Option<String>,
    plugins: bool,
}

/// The events a query names (`status`, `type`, `endpoint`, `merchant`, `limit`, `before`), in
/// the token's scope: a merchant's token stays scoped to itself whatever `merchant` says. The
/// error is the `400`'s message.
fn event_filter(scope: Scope, query: Option<&str>) -> Result<EventFilter, String> {
    let mut filter = EventFilter { merchant: scope, limit: DEFAULT_PAGE, ..EventFilter::default() };
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "status" => match EventStatus::parse(&value) {
                Some(_) => filter.status = Some(value),
                None => {
                    return Err("status must be one of queued, delivered, dead, quarantined, stored, \
                                forwarding, failed, dropped"
                        .into())
                }
            },
            "type" => filter.event_type = Some(value),
            "endpoint" => filter.endpoint = Some(value),
            "merchant" if filter.merchant.is_none() => filter.merchant = Some(value),
            "merchant" => {} // a merchant token stays scoped to itself
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => filter.limit = n,
                _ => return Err(format!("limit must be 1 to {MAX_PAGE}")),
            },
            "before" => match decode_cursor(&value) {
                Some(cursor) => filter.before = Some(cursor),
                None => return Err("before is not a cursor from a previous page".into()),
            },
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(filter)
}

fn plugin_error(e: RegistryError) -> Reply {
    let (status, reason) = match &e {
        RegistryError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_plugin"),
        RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_plugin"),
        RegistryError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "plugin_too_large"),
        RegistryError::NoVersion(_) => (StatusCode::CONFLICT, "no_previous_version"),
        RegistryError::UnknownVersion(_) => (StatusCode::NOT_FOUND, "unknown_version"),
        RegistryError::Quota(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage_quota_exceeded"),
        RegistryError::File { .. } | RegistryError::Store(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        }
    };
    http::json(status, &json!({ "error": reason, "message": e.to_string() }))
}

impl Admin {
    fn registry(&self) -> Option<&Arc<Registry>> {
        self.plugins.as_ref().map(|p| p.registry())
    }

    async fn list_plugins(&self, scope: Scope) -> Reply {
        let Some(registry) = self.registry() else {
            return http::json(StatusCode::OK, &json!({ "plugins": [] }));
        };
        let mut plugins = Vec::new();
        for slot in registry.slots(scope.as_deref()) {
            match registry.show(&slot.merchant, &slot.name).await {
                Ok(status) => plugins.push(status),
                Err(e) => return plugin_error(e),
            }
        }
        http::json(StatusCode::OK, &json!({ "plugins": plugins }))
    }

    async fn plugin_route(
        &self,
        scope: Scope,
        name: &str,
        rest: &[String],
        request: Request<RequestBody>,
    ) -> Reply {
        let unknown = || plugin_error(RegistryError::Unknown(name.to_string()));
        let Some(registry) = self.registry() else { return unknown() };
        // Names are unique across merchants; a merchant's token finds only its own.
        let Some(slot) = registry.slots(scope.as_deref()).into_iter().find(|s| s.name == name).cloned()
        else {
            return unknown();
        };
        let merchant = slot.merchant.as_str();
        let method = request.method().clone();
        let result = match (rest, &method) {
            ([], &Method::GET) => registry.show(merchant, name).await,
            ([], &Method::PUT) => {
                let Some(_turn) = self.upload_turn(&scope) else { return too_many_uploads() };
                // The body is read first even when the query is wrong: answering before it is in
                // would cut the connection under a client still sending, which then sees no reply.
                let canary = canary_share(request.uri().query());
                match (self.read_upload(request).await, canary) {
                    (Err(reply), _) => return reply,
                    (_, Err(message)) => {
                        return http::json(
                            StatusCode::BAD_REQUEST,
                            &json!({ "error": "bad_query", "message": message }),
                        )
                    }
                    (Ok(body), Ok(None)) => registry.upload(merchant, name, body).await,
                    (Ok(body), Ok(Some(percent))) => {
                        registry.upload_canary(merchant, name, body, percent).await
                    }
                }
            }
            ([r], &Method::POST) if r == "promote" => registry.promote(merchant, name).await,
            ([r], &Method::GET) if r == "logs" => return self.plugin_logs(&slot, request.uri().query()),
            ([r], &Method::GET) if r == "kv" => return self.plugin_kv(&slot, None, false).await,
            ([r, key], &Method::GET) if r == "kv" => return self.plugin_kv(&slot, Some(key), false).await,
            ([r, key], &Method::DELETE) if r == "kv" => return self.plugin_kv(&slot, Some(key), true).await,
            ([r], _) if r == "logs" || r == "kv" => {
                return http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ([r, _], _) if r == "kv" => {
                return http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ([r], &Method::POST) if r == "try" => {
                // A dry run holds a candidate in memory like an upload, so it takes an upload's place.
                let Some(_turn) = self.upload_turn(&scope) else { return too_many_uploads() };
                let Some(stage) = self.plugins.clone() else { return unknown() };
                let query = request.uri().query().map(str::to_string);
                return match self.read_upload(request).await {
                    Ok(body) => self.try_plugin(&stage, merchant, name, query.as_deref(), body).await,
                    Err(reply) => reply,
                };
            }
            ([], &Method::DELETE) => {
                return match registry.delete(merchant, name).await {
                    Ok(deleted) => http::json(StatusCode::OK, &json!({ "deleted": deleted, "name": name })),
                    Err(e) => plugin_error(e),
                }
            }
            ([r], &Method::POST) if r == "rollback" => registry.rollback(merchant, name).await,
            ([v, n, a], &Method::POST) if v == "versions" && a == "activate" => match n.parse::<u32>() {
                Ok(version) => registry.activate_version(merchant, name, version).await,
                Err(_) => return http::error(StatusCode::NOT_FOUND, "unknown_version"),
            },
            ([], _) => return http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ([r], _) if r == "rollback" || r == "try" || r == "promote" => {
                return http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            _ => return not_found(),
        };
        match result {
            Ok(status) => http::json(StatusCode::OK, &json!(status)),
            Err(e) => plugin_error(e),
        }
    }
}

/// An upload's `?canary=10` (or `10%`): the share of events the new version takes, 1 to 100;
/// none for a plain upload. The error is the `400`'s message.
fn canary_share(query: Option<&str>) -> Result<Option<u8>, String> {
    let mut share = None;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "canary" => match value.trim_end_matches('%').parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => share = Some(p),
                _ => return Err(format!("canary must be a share of events from 1% to 100%, not {value:?}")),
            },
            other => return Err(format!("unknown query parameter {other:?} (canary)")),
        }
    }
    Ok(share)
}

fn too_many_uploads() -> Reply {
    let mut reply = http::error(StatusCode::TOO_MANY_REQUESTS, "too_many_uploads");
    reply.headers_mut().insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
    reply
}

impl Admin {
    /// A component's bytes from an upload's body, up to `plugins.max_upload_bytes`.
    async fn read_upload(&self, request: Request<RequestBody>) -> Result<bytes::Bytes, Reply> {
        let limit = self.config.plugins.max_upload_bytes;
        match http::read_body(request.into_body(), limit, UPLOAD_TIMEOUT).await {
            Ok(body) => Ok(body),
            Err(BodyError::TooLarge(_)) => {
                Err(plugin_error(RegistryError::TooLarge { size: limit + 1, limit }))
            }
            Err(e) => Err(e.reply()),
        }
    }
}

/// Time a test webhook request's (small) body has to arrive.
const TEST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A replay's body: `{"force": true}` at most.
const MAX_REPLAY_BODY: usize = 1024;

/// Whether a replay's body (empty, or a JSON object with an optional boolean `force`) forces
/// it; `None` for any other body.
fn replay_force(body: &[u8]) -> Option<bool> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(false);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.keys().all(|k| k == "force") => match o.get("force") {
            None => Some(false),
            Some(Value::Bool(force)) => Some(*force),
            Some(_) => None,
        },
        _ => None,
    }
}

/// Time an upload's body has to arrive (components can be tens of megabytes).
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait]
impl Handler for Admin {
    async fn handle(&self, request: Request<RequestBody>) -> Reply {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match (path.as_str(), &method) {
            ("/healthz", &Method::GET) => return http::json(StatusCode::OK, &json!({ "status": "ok" })),
            ("/readyz", &Method::GET) => return self.readyz().await,
            (_, &Method::GET) if !path.starts_with("/api/") && path != "/metrics" => {
                return dashboard::asset(&path).unwrap_or_else(not_found)
            }
            _ => {}
        }
        if !path.starts_with("/api/") && path != "/metrics" {
            return not_found();
        }
        let Some(scope) = self.scope(&request) else { return unauthorized() };
        if path == "/metrics" {
            return match method {
                Method::GET => self.metrics(scope).await,
                _ => http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            };
        }
        let segments: Vec<String> = path.trim_start_matches("/api/").split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (segments.as_slice(), &method) {
            (["whoami"], &Method::GET) => http::json(
                StatusCode::OK,
                &json!({ "merchant": scope, "operator": scope.is_none(), "checker": dashboard::has_checker() }),
            ),
            (["stats"], &Method::GET) => self.stats(scope),
            (["stats", "history"], &Method::GET) => self.stats_history(scope),
            (["endpoints"], &Method::GET) => self.list_endpoints(&scope),
            (["upstreams"], &Method::GET) => self.list_upstreams(&scope).await,
            (["ordering"], &Method::GET) => self.held_keys(&scope).await,
            (["test-webhook"], &Method::POST) => {
                match http::read_body(request.into_body(), endpoints::MAX_TEST_REQUEST, TEST_REQUEST_TIMEOUT)
                    .await
                {
                    Ok(body) => self.test_webhook(&scope, &body).await,
                    Err(e) => e.reply(),
                }
            }
            (
                ["whoami"]
                | ["stats"]
                | ["stats", "history"]
                | ["endpoints"]
                | ["upstreams"]
                | ["ordering"]
                | ["test-webhook"],
                _,
            ) => http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (["events"], &Method::GET) => self.list_events(scope, request.uri().query()).await,
            (["events", "replay"], &Method::POST) => self.replay_matching(scope, request.uri().query()).await,
            (["events", id], &Method::GET) => self.show_event(scope, request.uri().query(), id).await,
            (["events", id, "replay"], &Method::POST) => {
                let query = request.uri().query().map(str::to_string);
                match http::read_body(request.into_body(), MAX_REPLAY_BODY, TEST_REQUEST_TIMEOUT).await {
                    Ok(body) => match replay_force(&body) {
                        Some(force) => self.replay_event(scope, query.as_deref(), id, force).await,
                        None => http::json(
                            StatusCode::BAD_REQUEST,
                            &json!({ "error": "bad_request", "message": "a replay's body is empty or {\"force\": true}" }),
                        ),
                    },
                    Err(e) => e.reply(),
                }
            }
            (["events", id, "skip"], &Method::POST) => {
                self.skip_event(scope, request.uri().query(), id).await
            }
            (["events"] | ["events", _] | ["events", _, "replay" | "skip"], _) => {
                http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            (["plugins"], &Method::GET) => self.list_plugins(scope).await,
            (["plugins", name, rest @ ..], _) => {
                let name = name.to_string();
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                self.plugin_route(scope, &name, &rest, request).await
            }
            (["plugins"], _) => http::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            _ => not_found(),
        }
    }
}

/// Opaque paging cursor: hex of `received_at_ms \n merchant \n id`.
/// A page's end as an opaque token: the event's time and key. Merchants and scopes hold no
/// newline (validated names, URL paths); the id, last, may hold anything.
fn encode_cursor(event: &EventSummary) -> String {
    let EventSummary { received_at_ms, merchant, scope, id, .. } = event;
    format!("{received_at_ms}\n{merchant}\n{scope}\n{id}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(text: &str) -> Option<(i64, String, String, String)> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(4, '\n');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.to_string(),
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let event = EventSummary {
            id: "evt_1\nx".into(),
            merchant: "acme".into(),
            scope: "/webhooks/github".into(),
            endpoint: "/webhooks/github".into(),
            event_type: None,
            status: "queued".into(),
            reason: None,
            received_at_ms: 1_705_314_600_000,
            tags: Vec::new(),
            forced_by: None,
            amount: None,
        };
        let c = encode_cursor(&event);
        assert_eq!(
            decode_cursor(&c),
            Some((1_705_314_600_000, "acme".into(), "/webhooks/github".into(), "evt_1\nx".into()))
        );
        for bad in ["", "zz", "123", "41"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
