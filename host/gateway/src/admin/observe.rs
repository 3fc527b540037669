//! What operators watch: Prometheus `/metrics`, `/readyz`, and `/api/stats` (the dashboard's
//! live chart). Reads the counters the request path, deliveries, plugins and store keep; never
//! changes anything, and never shows a merchant's token another merchant's series.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json;

use super::history::{Totals, STEP_MS};
use super::{visible, Admin, Scope};
use crate::answer::Outcome;
use crate::http::{self, Reply};
use payflow_delivery::Upstream;
use payflow_metrics::{Counter, Exposition, CONTENT_TYPE as METRICS_TYPE};
use payflow_plugins::registry::{PluginCounts, Slot};
use payflow_store::{Backlog, QueueDepth, StoreError};

/// The verification failure reasons, so that each has a series from the start (a rate over
/// a series that appears only with its first failure misses that failure).
const VERIFY_REASONS: [&str; 4] =
    ["missing_signature", "malformed_signature", "invalid_signature", "timestamp_out_of_tolerance"];

/// How long `/readyz` waits for its test write: a store slower than this is not ready.
const READY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl Admin {
    /// `GET /metrics`: the operator's token sees every series; a merchant's, its own only.
    pub(super) async fn metrics(&self, scope: Scope) -> Reply {
        let mut page = match &self.replica {
            Some(name) => Exposition::with_label("replica", name.clone()),
            None => Exposition::default(),
        };
        page.gauge(
            "payflow_edge_build_info",
            "The running version.",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        let mut endpoints: Vec<_> =
            self.endpoints.values().filter(|e| visible(&scope, &e.merchant)).collect();
        endpoints.sort_by(|a, b| a.path.cmp(&b.path));
        for e in &endpoints {
            for outcome in Outcome::ALL {
                page.counter(
                    "payflow_edge_requests_total",
                    "Webhook requests, by endpoint and what became of them.",
                    &[("merchant", &e.merchant), ("endpoint", &e.path), ("outcome", outcome.as_str())],
                    e.counts.requests(outcome),
                );
            }
        }
        for e in &endpoints {
            let seen = e.counts.verification_failures.snapshot();
            let count = |reason: &str| seen.iter().find(|(r, _)| r == reason).map_or(0, |(_, n)| *n);
            for reason in VERIFY_REASONS {
                page.counter(
                    "payflow_edge_verification_failures_total",
                    "Refused signatures, by endpoint and reason.",
                    &[("merchant", &e.merchant), ("endpoint", &e.path), ("reason", reason)],
                    count(reason),
                );
            }
        }
        let upstreams: Vec<_> = self.upstreams.iter().filter(|u| visible(&scope, &u.merchant)).collect();
        for u in &upstreams {
            for (outcome, counter) in
                [("delivered", &u.counts.delivered), ("retry", &u.counts.retry), ("dead", &u.counts.dead)]
            {
                page.counter(
                    "payflow_edge_deliveries_total",
                    "Delivery attempts, by upstream and outcome (retry: failed, tried again later; dead: failed for good).",
                    &[("merchant", &u.merchant), ("upstream", &u.name), ("outcome", outcome)],
                    counter.get(),
                );
            }
        }
        // One loop per family: a family's samples must be together.
        let labels = |u: &Upstream| [("merchant", u.merchant.clone()), ("upstream", u.name.clone())];
        for u in &upstreams {
            let [m, n] = labels(u);
            page.gauge(
                "payflow_edge_breaker_state",
                "An upstream's circuit breaker: 0 closed (sending), 1 open (cooling down), 2 half-open (one probe).",
                &[(m.0, &m.1), (n.0, &n.1)],
                u.flow.state().gauge(),
            );
        }
        for u in &upstreams {
            let [m, n] = labels(u);
            let flow = &u.flow.counts;
            for (to, counter) in
                [("open", &flow.opened), ("half-open", &flow.half_opened), ("closed", &flow.closed)]
            {
                page.counter(
                    "payflow_edge_breaker_transitions_total",
                    "Circuit breaker transitions, by upstream and the state entered.",
                    &[(m.0, &m.1), (n.0, &n.1), ("to", to)],
                    counter.get(),
                );
            }
        }
        for u in &upstreams {
            let [m, n] = labels(u);
            page.counter(
                "payflow_edge_rate_limited_total",
                "Deliveries that waited for their upstream's rate limit.",
                &[(m.0, &m.1), (n.0, &n.1)],
                u.flow.counts.rate_limited.get(),
            );
        }
        match self.backlogs(&scope).await {
            Ok(depths) => {
                let now = self.clock.now_ms();
                for d in &depths {
                    page.gauge(
                        "payflow_edge_queue_depth",
                        "Deliveries pending (due now or waiting to retry), by upstream.",
                        &[("merchant", &d.merchant), ("upstream", &d.upstream)],
                        d.backlog.pending as f64,
                    );
                }
                for d in &depths {
                    page.gauge(
                        "payflow_edge_delivery_lag_seconds",
                        "How long the earliest pending delivery to an upstream has been due: 0 while deliveries keep up.",
                        &[("merchant", &d.merchant), ("upstream", &d.upstream)],
                        seconds(d.backlog.behind_ms(now)),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the queue depth"),
        }
        if self.plugins.is_some() {
            match self.store.steps_pending().await {
                Ok(pending) => {
                    let now = self.clock.now_ms();
                    let mut pending: Vec<_> =
                        pending.into_iter().filter(|(m, _)| visible(&scope, m)).collect();
                    pending.sort();
                    for (merchant, backlog) in &pending {
                        page.gauge(
                            "payflow_edge_plugin_queue_depth",
                            "Events waiting for their plugins (due now or waiting to retry), by merchant.",
                            &[("merchant", merchant)],
                            backlog.pending as f64,
                        );
                    }
                    for (merchant, backlog) in &pending {
                        page.gauge(
                            "payflow_edge_plugin_lag_seconds",
                            "How long the earliest event waiting for its plugins has been due: 0 while they keep up.",
                            &[("merchant", merchant)],
                            seconds(backlog.behind_ms(now)),
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read the plugin steps pending"),
            }
        }
        if scope.is_none() {
            page.histogram(
                "payflow_edge_store_commit_seconds",
                "Time to commit one batch of writes (one fsync).",
                &[],
                &self.commits.snapshot(),
            );
        }
        if let Some(registry) = self.registry() {
            let slots = registry.slots(scope.as_deref());
            for s in &slots {
                for (outcome, n) in s.counts.runs() {
                    page.counter(
                        "payflow_edge_plugin_runs_total",
                        "Plugin runs, by plugin and outcome (continue, drop, or a failure's reason).",
                        &[("merchant", &s.merchant), ("plugin", &s.name), ("outcome", &outcome)],
                        n,
                    );
                }
            }
            // Each family's samples together, as the exposition format asks.
            let versions: Vec<_> = slots.iter().map(|s| (s, s.counts.by_version())).collect();
            for (s, figures) in &versions {
                for v in figures {
                    let version = v.version.to_string();
                    for (outcome, n) in &v.outcomes {
                        page.counter(
                            "payflow_edge_plugin_version_runs_total",
                            "Plugin runs by version and outcome (a canary beside the active version shows here).",
                            &[("merchant", &s.merchant), ("plugin", &s.name), ("version", &version), ("outcome", outcome)],
                            *n,
                        );
                    }
                }
            }
            for (s, figures) in &versions {
                for v in figures {
                    let version = v.version.to_string();
                    for (q, us) in [("0.5", v.latest.time_us_p50), ("0.99", v.latest.time_us_p99)] {
                        page.gauge(
                            "payflow_edge_plugin_version_duration_seconds",
                            "Time of one run of a plugin version, quantile over its latest 1000 runs.",
                            &[
                                ("merchant", &s.merchant),
                                ("plugin", &s.name),
                                ("version", &version),
                                ("quantile", q),
                            ],
                            us as f64 / 1e6,
                        );
                    }
                }
            }
            per_slot(
                &mut page,
                &slots,
                "payflow_edge_plugin_kv_reads_total",
                "Reads of a plugin's kv space from the store: whole, or only what other replicas changed since the last read.",
                "read",
                |c| [("whole", &c.kv_loads), ("changes", &c.kv_refreshes)],
            );
            for s in slots.iter().filter(|s| s.counts.kv_conflicts.get() > 0) {
                page.counter(
                    "payflow_edge_plugin_kv_conflicts_total",
                    "Plugin steps run again because another replica changed a kv key their runs read before they committed.",
                    &[("merchant", &s.merchant), ("plugin", &s.name)],
                    s.counts.kv_conflicts.get(),
                );
            }
            per_slot(
                &mut page,
                &slots,
                "payflow_edge_plugin_kv_turns_total",
                "Turns a replica took on a plugin's kv space while other replicas contended for it, at once or after waiting for another's.",
                "waited",
                |c| [("false", &c.kv_turns.at_once), ("true", &c.kv_turns.waited)],
            );
            for s in &slots {
                page.histogram(
                    "payflow_edge_plugin_duration_seconds",
                    "Wall-clock time of one plugin run, instantiation included.",
                    &[("merchant", &s.merchant), ("plugin", &s.name)],
                    &s.counts.duration.snapshot(),
                );
            }
            for s in &slots {
                page.histogram(
                    "payflow_edge_plugin_fuel_used",
                    "Wasm fuel one plugin run used.",
                    &[("merchant", &s.merchant), ("plugin", &s.name)],
                    &s.counts.fuel.snapshot(),
                );
            }
        }
        let mut reply = http::text(StatusCode::OK, page.finish());
        reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
        reply
    }

    /// `GET /readyz`: 200 when the store commits a write and every configured plugin has a
    /// version to run; else 503 saying what is not ready.
    pub(super) async fn readyz(&self) -> Reply {
        let mut problems = Vec::new();
        match tokio::time::timeout(READY_WRITE_TIMEOUT, self.store.check_writable(self.clock.now_ms())).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("store: {e}")),
            Err(_) => problems.push(format!("store: no commit within {READY_WRITE_TIMEOUT:?}")),
        }
        if let Some(registry) = self.registry() {
            for slot in registry.slots(None) {
                if slot.active().is_none() {
                    problems.push(format!("plugin {}: no version loaded (upload one)", slot.name));
                }
            }
        }
        if problems.is_empty() {
            http::json(StatusCode::OK, &json!({ "status": "ready" }))
        } else {
            http::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "not_ready", "problems": problems }),
            )
        }
    }

    /// Every merchant's running totals. `received`: webhook requests to its endpoints;
    /// `delivered`: successful delivery attempts; `failed`: refused requests plus failed
    /// delivery attempts.
    pub(crate) fn totals_by_merchant(&self) -> BTreeMap<String, Totals> {
        let mut by_merchant: BTreeMap<String, Totals> = BTreeMap::new();
        for e in self.endpoints.values() {
            let totals = by_merchant.entry(e.merchant.clone()).or_default();
            for outcome in Outcome::ALL {
                let n = e.counts.requests(outcome);
                totals.received += n;
                if outcome.is_refusal() {
                    totals.failed += n;
                }
            }
        }
        for u in &self.upstreams {
            let totals = by_merchant.entry(u.merchant.clone()).or_default();
            totals.delivered += u.counts.delivered.get();
            totals.failed += u.counts.retry.get() + u.counts.dead.get();
        }
        by_merchant
    }

    /// `GET /api/stats`: running totals for the dashboard's live figures, in the token's scope.
    pub(super) fn stats(&self, scope: Scope) -> Reply {
        let mut sum = Totals::default();
        for (_, totals) in self.totals_by_merchant().into_iter().filter(|(m, _)| visible(&scope, m)) {
            sum += totals;
        }
        http::json(
            StatusCode::OK,
            &json!({ "at_ms": self.clock.now_ms(), "received": sum.received, "delivered": sum.delivered, "failed": sum.failed }),
        )
    }

    /// Writes down every merchant's totals every [`STEP_MS`] until `shutdown`, for the chart.
    pub async fn record_history(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(Duration::from_millis(STEP_MS as u64));
        loop {
            tokio::select! {
                _ = ticks.tick() => self.history.record(self.clock.now_ms(), self.totals_by_merchant()),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// `GET /api/stats/history`: the last hour in buckets of [`STEP_MS`] (the last one ends
    /// now), in the token's scope, for the dashboard's chart.
    pub(super) fn stats_history(&self, scope: Scope) -> Reply {
        let now = self.clock.now_ms();
        let buckets = self.history.buckets(|m| visible(&scope, m), now, &self.totals_by_merchant());
        http::json(StatusCode::OK, &json!({ "at_ms": now, "step_ms": STEP_MS, "buckets": buckets }))
    }
}

impl Admin {
    /// What waits for each upstream in `scope`, by merchant, sorted: every visible upstream has
    /// an entry (an empty backlog when nothing is pending), so each has a series from the start.
    /// `/metrics` and `GET /api/upstreams` both read it.
    pub(super) async fn backlogs(&self, scope: &Scope) -> Result<Vec<QueueDepth>, StoreError> {
        let upstreams: Vec<_> = self.upstreams.iter().filter(|u| visible(scope, &u.merchant)).collect();
        let depths = self.store.queue_depth(upstreams.iter().map(|u| u.name.clone()).collect()).await?;
        let mut depths: Vec<_> = depths.into_iter().filter(|d| visible(scope, &d.merchant)).collect();
        for u in upstreams {
            if !depths.iter().any(|d| d.upstream == u.name && d.merchant == u.merchant) {
                let (upstream, merchant) = (u.name.clone(), u.merchant.clone());
                depths.push(QueueDepth { upstream, merchant, backlog: Backlog::default() });
            }
        }
        depths.sort();
        Ok(depths)
    }
}

/// Milliseconds as the seconds Prometheus expects.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// One counter family over the plugins' `slots`: per slot, a sample for each value of `label`
/// whose counter (from `counters`) counted anything.
fn per_slot<'s, const N: usize>(
    page: &mut Exposition,
    slots: &[&'s Arc<Slot>],
    name: &'static str,
    help: &str,
    label: &str,
    counters: impl Fn(&'s PluginCounts) -> [(&'static str, &'s Counter); N],
) {
    for s in slots {
        for (value, counter) in counters(&s.counts) {
            if counter.get() > 0 {
                let labels = [("merchant", &s.merchant[..]), ("plugin", &s.name[..]), (label, value)];
                page.counter(name, help, &labels, counter.get());
            }
        }
    }
}
