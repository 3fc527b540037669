//! What the admin API shows of delivery's flow control and ordering: each upstream's breaker,
//! rate, counts and backlog (`GET /api/upstreams`), the ordering keys held back by a failing or
//! dead head (`GET /api/ordering`), and the operator's way to release a dead head (`POST
//! /api/events/{id}/skip`). This module reads state and asks the store; it never sends.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{not_found, store_error, visible, Admin, Scope, MAX_PAGE};
use crate::http::{self, Reply};
use payflow_store::{EventKey, EventStatus};

impl Admin {
    /// `GET /api/upstreams`: the token's upstreams with their flow control's state and backlog.
    /// A store that cannot answer leaves the backlog null: the flow control's state is what an
    /// operator needs most while deliveries fail.
    pub(super) async fn list_upstreams(&self, scope: &Scope) -> Reply {
        let backlogs = match self.backlogs(scope).await {
            Ok(depths) => Some(depths),
            Err(e) => {
                tracing::warn!(error = %e, "upstreams: cannot read the queue depth");
                None
            }
        };
        let now = self.clock.now_ms();
        let upstreams: Vec<Value> = self
            .upstreams
            .iter()
            .filter(|u| visible(scope, &u.merchant))
            .map(|u| {
                let backlog = backlogs.as_ref().and_then(|depths| {
                    depths
                        .iter()
                        .find(|d| d.upstream == u.name && d.merchant == u.merchant)
                        .map(|d| d.backlog)
                });
                let config = self.config.upstream.iter().find(|c| c.name == u.name);
                let flow = &u.flow.counts;
                json!({
                    "name": u.name,
                    "merchant": u.merchant,
                    "concurrency": u.lane.concurrency,
                    "ordering_key": config.and_then(|c| c.ordering_key.clone()),
                    "rate": config.and_then(|c| c.rate.clone()),
                    "breaker": config.and_then(|c| c.breaker).map(|b| json!({
                        "state": u.flow.state().as_str(),
                        "failures": b.failures,
                        "cool_down_ms": b.cool_down_ms,
                        "opened": flow.opened.get(),
                        "closed": flow.closed.get(),
                    })),
                    "rate_limited": flow.rate_limited.get(),
                    "pending": backlog.map(|b| b.pending),
                    "behind_ms": backlog.map(|b| b.behind_ms(now)),
                    "delivered": u.counts.delivered.get(),
                    "retried": u.counts.retry.get(),
                    "dead": u.counts.dead.get(),
                })
            })
            .collect();
        http::json(StatusCode::OK, &json!({ "upstreams": upstreams }))
    }

    /// `GET /api/ordering`: the ordering keys whose head event is failing or dead, oldest
    /// first, in the token's scope.
    pub(super) async fn held_keys(&self, scope: &Scope) -> Reply {
        match self.store.held_keys(scope.as_deref(), MAX_PAGE).await {
            Ok(keys) => http::json(StatusCode::OK, &json!({ "keys": keys })),
            Err(e) => store_error(e),
        }
    }

    /// `POST /api/events/{id}/skip`: releases a dead event's ordering key, so the events with
    /// that key behind it go on. The event stays dead, replayable (then unordered).
    pub(super) async fn skip_event(&self, scope: Scope, query: Option<&str>, id: &str) -> Reply {
        let detail = match self.find_event(&scope, query, id).await {
            Ok(detail) => detail,
            Err(reply) => return reply,
        };
        let summary = &detail.summary;
        let key = EventKey::new(summary.merchant.clone(), summary.scope.clone(), summary.id.clone());
        let refused = |why: String| {
            http::json(StatusCode::CONFLICT, &json!({ "error": "not_skippable", "message": why }))
        };
        if detail.order_key.is_none() {
            return refused(format!(
                "{id} holds no ordering key back (it has none, or was skipped already): nothing to skip"
            ));
        }
        if summary.status != EventStatus::Dead.as_str() {
            return refused(format!(
                "{id} is {}: only a dead event is skipped (a failing one is still being retried; \
                 wait for it, or replay it)",
                summary.status
            ));
        }
        match self.store.skip_in_order(&key).await {
            Ok(true) => {
                tracing::warn!(event_id = id, merchant = %summary.merchant, order_key = detail.order_key.as_deref(), "event skipped in its key's order");
                for u in
                    self.upstreams.iter().filter(|u| u.merchant == summary.merchant && u.ordering.is_some())
                {
                    u.poll_store_now();
                }
                http::json(
                    StatusCode::OK,
                    &json!({ "skipped": true, "id": id, "merchant": summary.merchant, "scope": summary.scope, "key": detail.order_key }),
                )
            }
            Ok(false) => not_found(),
            Err(e) => store_error(e),
        }
    }
}
