//! `POST /api/plugins/{name}/try`: a dry run of an uploaded candidate beside the plugin's
//! active version on the merchant's own recorded events (`?last=200`, `?since=1h`,
//! `?type=payment.failed`). This module only picks the events and answers; the runs are the
//! plugin stage's, as idle work behind every live event. Those runs take only idle CPU, so a
//! machine with none to spare would keep the request waiting without end: past `[plugins]
//! dry_run_timeout_ms` it answers `503 dry_run_timed_out` with how far it got, and its runs not
//! yet started are dropped. It must never store the candidate, deliver, or pick another
//! merchant's events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use serde_json::json;

use super::{plugin_error, store_error, Admin};
use crate::http::{self, query_pairs, Reply};
use crate::stage::PluginStage;
use payflow_store::{Event, EventFilter, EventKey, EventStatus};

/// Events a dry run takes when the request names no `last`.
const DEFAULT_LAST: usize = 200;
/// The most a dry run takes: each costs two plugin runs, on threads live events need.
pub const MAX_LAST: usize = 1000;
/// Listed events looked at per page, and pages at most: a `type` filter that matches nothing
/// recent stops after this many rather than reading the whole history.
const PAGE: usize = 500;
const MAX_PAGES: usize = 40;

/// Which events a dry run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialQuery {
    /// The newest this many.
    pub last: usize,
    /// Only those received in this many milliseconds before now.
    pub since_ms: Option<i64>,
    /// Only this type.
    pub event_type: Option<String>,
}

impl TrialQuery {
    /// The query's `last`, `since` and `type`; the error is the `400`'s message.
    pub fn parse(query: Option<&str>) -> Result<TrialQuery, String> {
        let mut q = TrialQuery { last: DEFAULT_LAST, since_ms: None, event_type: None };
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "last" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LAST).contains(&n) => q.last = n,
                    _ => return Err(format!("last must be 1 to {MAX_LAST}, not {value:?}")),
                },
                "since" => q.since_ms = Some(since_ms(&value)?),
                "type" => q.event_type = Some(value),
                other => return Err(format!("unknown query parameter {other:?} (last, since, type)")),
            }
        }
        Ok(q)
    }
}

/// Seconds a client is told to wait before it tries a timed-out dry run again: long enough
/// for a burst of live traffic to pass, short against the timeout itself.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("60");

/// The `503` of a dry run that outlasted `[plugins] dry_run_timeout_ms`, with how far it got
/// and the three ways on.
fn timed_out(tried: usize, total: usize, timeout: Duration) -> Reply {
    let secs = timeout.as_secs_f64();
    let fewer = match tried {
        0 => "fewer events (last)".to_string(),
        n => format!("fewer events (last; {n} ran in time)"),
    };
    let message = format!(
        "the dry run ran {tried} of {total} events in {secs:.0} s and was stopped: its runs take only CPU \
         that live traffic and the machine's other processes leave idle, and this machine has none to \
         spare. Retry when it is quieter, with {fewer}, or raise [plugins] dry_run_timeout_ms \
         (now {ms}).",
        ms = timeout.as_millis()
    );
    let mut reply = http::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": "dry_run_timed_out", "message": message, "tried": tried, "events": total }),
    );
    reply.headers_mut().insert(RETRY_AFTER, RETRY_AFTER_SECS);
    reply
}

/// `90s`, `30m`, `1h`, `7d` in milliseconds.
pub fn since_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("since must be a number and a unit (90s, 30m, 1h, 7d), not {text:?}");
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: i64 = text[..text.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(ms).ok_or_else(bad)
}

impl Admin {
    /// Runs the dry run of `wasm` for `merchant`'s plugin `name` on the events `query` picks.
    pub(super) async fn try_plugin(
        &self,
        stage: &Arc<PluginStage>,
        merchant: &str,
        name: &str,
        query: Option<&str>,
        wasm: Bytes,
    ) -> Reply {
        let query = match TrialQuery::parse(query) {
            Ok(q) => q,
            Err(message) => {
                return http::json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "bad_query", "message": message }),
                )
            }
        };
        let keys = match self.trial_keys(stage, merchant, name, &query).await {
            Ok(keys) => keys,
            Err(e) => return store_error(e),
        };
        let (total, timeout) = (keys.len(), stage.dry_run_timeout());
        let mut tried = 0;
        let dry_run = async {
            let mut dry_run = stage.dry_run(merchant, name, wasm).await.map_err(plugin_error)?;
            // Each event is read only once the one before it has run: the runs wait for CPU
            // live traffic leaves idle, and so, at that pace, do these reads on the store's
            // read connection, which live traffic shares.
            for key in keys {
                let event = match self.store.get_event(&key).await {
                    Ok(Some(detail)) => Event {
                        endpoint: detail.summary.endpoint,
                        event_type: detail.summary.event_type,
                        body: Bytes::from(detail.body),
                        received_at_ms: detail.summary.received_at_ms,
                        request_id: detail.request_id,
                        ordered: detail.order_key.is_some(),
                        key,
                    },
                    Ok(None) => continue,
                    Err(e) => return Err(store_error(e)),
                };
                dry_run.try_event(event).await.map_err(plugin_error)?;
                tried += 1;
            }
            Ok(dry_run.report())
        };
        // Dropping the dry run on timeout drops its runs not yet started with it (the
        // scheduler skips an idle job nobody waits for).
        match tokio::time::timeout(timeout, dry_run).await {
            Ok(Ok(report)) => http::json(StatusCode::OK, &json!(report)),
            Ok(Err(reply)) => reply,
            Err(_) => timed_out(tried, total, timeout),
        }
    }

    /// The keys of the merchant's events that went through plugin `name` (not quarantined:
    /// those never reach plugins), newest `query.last` that match, returned oldest first.
    async fn trial_keys(
        &self,
        stage: &PluginStage,
        merchant: &str,
        name: &str,
        query: &TrialQuery,
    ) -> Result<Vec<EventKey>, payflow_store::StoreError> {
        let cutoff = query.since_ms.map(|ms| self.clock.now_ms() - ms);
        let mut picked = Vec::new();
        let mut filter = EventFilter {
            merchant: Some(merchant.to_string()),
            event_type: query.event_type.clone(),
            limit: PAGE,
            ..EventFilter::default()
        };
        'pages: for _ in 0..MAX_PAGES {
            let page = self.store.list_events(filter.clone()).await?;
            for e in &page {
                if cutoff.is_some_and(|c| e.received_at_ms < c) {
                    break 'pages;
                }
                if e.status != EventStatus::Quarantined.as_str() && stage.runs_plugin(&e.endpoint, name) {
                    picked.push(EventKey::new(e.merchant.clone(), e.scope.clone(), e.id.clone()));
                    if picked.len() == query.last {
                        break 'pages;
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => {
                    filter.before = Some((
                        last.received_at_ms,
                        last.merchant.clone(),
                        last.scope.clone(),
                        last.id.clone(),
                    ))
                }
                _ => break,
            }
        }
        picked.reverse();
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_events_and_refuses_what_it_cannot_mean() {
        assert_eq!(
            TrialQuery::parse(None),
            Ok(TrialQuery { last: DEFAULT_LAST, since_ms: None, event_type: None })
        );
        assert_eq!(
            TrialQuery::parse(Some("last=5&since=2h&type=payment.failed")),
            Ok(TrialQuery { last: 5, since_ms: Some(7_200_000), event_type: Some("payment.failed".into()) })
        );
        for bad in ["last=0", "last=1001", "last=x", "since=1w", "since=h", "since=-1h", "since=", "limit=5"]
        {
            assert!(TrialQuery::parse(Some(bad)).is_err(), "{bad} was taken");
        }
        assert!(TrialQuery::parse(Some("since=1w")).unwrap_err().contains("90s, 30m, 1h, 7d"));
    }
}
