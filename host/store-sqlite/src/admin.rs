//! The admin API's reads and replays: event listings and details (with every attempt and plugin
//! run), held ordered keys, and the replay that starts an event's rows over. It must never
//! change an event except through a replay or a skip the admin asked for.

use async_trait::async_trait;
use payflow_store::{
    AdminQueries, Amount, AttemptInfo, DeliveryInfo, EventDetail, EventFilter, EventKey, EventSummary,
    HeldKey, Hop, PluginRunInfo, StepInfo, StoreError,
};
use rusqlite::{params, OptionalExtension};

use crate::ingest::add_first_hop;
use crate::outcomes::{file_latest_attempts, settle_event};
use crate::SqliteStore;

pub(crate) fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventSummary> {
    Ok(EventSummary {
        merchant: row.get(0)?,
        id: row.get(1)?,
        endpoint: row.get(2)?,
        event_type: row.get(3)?,
        status: row.get(4)?,
        reason: row.get(5)?,
        received_at_ms: row.get(6)?,
        scope: row.get(8)?,
        forced_by: row.get(9)?,
        amount: row.get::<_, Option<Vec<u8>>>(10)?.and_then(|body| Amount::of(&body)),
        tags: row
            .get::<_, Option<String>>(7)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
    })
}

/// How many columns [`SUMMARY_COLUMNS`] names.
const SUMMARY_WIDTH: usize = 11;
/// The last column is the body, for its [`Amount`], when it is small enough to look into.
const SUMMARY_COLUMNS: &str = concat!(
    "merchant, id, endpoint, event_type, ",
    payflow_store::event_status!(),
    ", reason, received_at_ms, tags, scope, forced_by, CASE WHEN length(body) <= 65536 THEN body END"
);

#[async_trait]
impl AdminQueries for SqliteStore {
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut add = |clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
            if let Some(m) = filter.merchant {
                add(" AND merchant = ?", m.into());
            }
            if let Some(s) = filter.status {
                add(concat!(" AND ", payflow_store::event_status!(), " = ?"), s.into());
            }
            if let Some(t) = filter.event_type {
                add(" AND event_type = ?", t.into());
            }
            if let Some(e) = filter.endpoint {
                add(" AND endpoint = ?", e.into());
            }
            if let Some((at, merchant, scope, id)) = filter.before {
                // Keyset paging on (received_at_ms, merchant, scope, id), newest first.
                add(" AND (received_at_ms, merchant, scope, id) < (?", at.into());
                add(", ?", merchant.into());
                add(", ?", scope.into());
                add(", ?)", id.into());
            }
            add(
                " ORDER BY received_at_ms DESC, merchant DESC, scope DESC, id DESC LIMIT ?",
                (filter.limit.clamp(1, 1000) as i64).into(),
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), summary)?;
            rows.collect()
        })
        .await
    }

    async fn find_events(
        &self,
        merchant: Option<&str>,
        scope: Option<&str>,
        id: &str,
        limit: usize,
    ) -> Result<Vec<EventKey>, StoreError> {
        let (merchant, scope, id) = (merchant.map(str::to_string), scope.map(str::to_string), id.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, scope FROM events
                 WHERE id = ?1 AND (?2 IS NULL OR merchant = ?2) AND (?3 IS NULL OR scope = ?3)
                 ORDER BY merchant, scope LIMIT ?4",
            )?
            .query_map(params![id, merchant, scope, limit as i64], |r| {
                Ok(EventKey::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?, id.clone()))
            })?
            .collect()
        })
        .await
    }

    async fn get_event(&self, key: &EventKey) -> Result<Option<EventDetail>, StoreError> {
        let key = key.clone();
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, body, headers, request_id, order_key FROM events
                         WHERE merchant = ?1 AND scope = ?2 AND id = ?3"
                    ),
                    params![key.merchant, key.scope, key.id],
                    |r| {
                        let body: Vec<u8> = r.get(SUMMARY_WIDTH)?;
                        let headers: String = r.get(SUMMARY_WIDTH + 1)?;
                        let order_key: Option<String> = r.get(SUMMARY_WIDTH + 3)?;
                        Ok((summary(r)?, body, headers, r.get::<_, String>(SUMMARY_WIDTH + 2)?, order_key))
                    },
                )
                .optional()?;
            let Some((summary, body, headers, request_id, order_key)) = found else { return Ok(None) };
            let plugin_step = conn
                .prepare_cached(concat!(
                    "SELECT status, attempts, next_attempt_at_ms, error, routes FROM plugin_steps
                     WHERE event_seq = ",
                    seq_of_key!()
                ))?
                .query_row(params![key.merchant, key.scope, key.id], |r| {
                    let status: String = r.get(0)?;
                    let next: i64 = r.get(2)?;
                    Ok(StepInfo {
                        next_attempt_at_ms: (status == "pending").then_some(next),
                        status,
                        attempts: r.get(1)?,
                        error: r.get(3)?,
                        routes: r.get::<_, Option<String>>(4)?.and_then(|t| serde_json::from_str(&t).ok()),
                    })
                })
                .optional()?;
            let deliveries = conn
                .prepare_cached(concat!(
                    "SELECT upstream, status, attempts, next_attempt_at_ms FROM deliveries WHERE event_seq = ",
                    seq_of_key!(),
                    " ORDER BY upstream"
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    let status: String = r.get(1)?;
                    let next: i64 = r.get(3)?;
                    Ok(DeliveryInfo {
                        upstream: r.get(0)?,
                        next_attempt_at_ms: (status == "pending").then_some(next),
                        status,
                        attempts: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let attempts = conn
                .prepare_cached(concat!(
                    // The filed attempts, then each delivery's latest (the newest of its own).
                    "SELECT upstream, number, at_ms, duration_ms, status_code, error, response FROM (
                         SELECT upstream, number, at_ms, duration_ms, status_code, error, response,
                                0 AS latest, rowid AS filed
                         FROM attempts WHERE merchant = ?1 AND scope = ?2 AND event_id = ?3
                         UNION ALL
                         SELECT upstream, attempts, last_at_ms, last_duration_ms, last_status_code, last_error,
                                last_response, 1, 0
                         FROM deliveries WHERE event_seq = ",
                    seq_of_key!(),
                    " AND last_at_ms IS NOT NULL)
                     ORDER BY at_ms, latest, filed, upstream",
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    Ok(AttemptInfo {
                        upstream: r.get(0)?,
                        number: r.get(1)?,
                        at_ms: r.get(2)?,
                        duration_ms: r.get(3)?,
                        status_code: r.get(4)?,
                        error: r.get(5)?,
                        response: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let plugin_runs = conn
                .prepare_cached(concat!(
                    "SELECT plugin, version, attempt, at_ms, duration_us, fuel_used, outcome, detail, logs
                     FROM plugin_runs WHERE event_seq = ",
                    seq_of_key!(),
                    " ORDER BY at_ms, rowid"
                ))?
                .query_map(params![key.merchant, key.scope, key.id], |r| {
                    Ok(PluginRunInfo {
                        plugin: r.get(0)?,
                        version: r.get(1)?,
                        attempt: r.get(2)?,
                        at_ms: r.get(3)?,
                        duration_us: r.get(4)?,
                        fuel_used: r.get::<_, i64>(5)? as u64,
                        outcome: r.get(6)?,
                        detail: r.get(7)?,
                        logs: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(EventDetail {
                summary,
                body: String::from_utf8_lossy(&body).into_owned(),
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                request_id,
                order_key,
                plugin_step,
                deliveries,
                attempts,
                plugin_runs,
            }))
        })
        .await
    }

    async fn replay(
        &self,
        key: &EventKey,
        first_hop: &Hop,
        now_ms: i64,
        forced_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (key, first_hop, forced_by) = (key.clone(), first_hop.clone(), forced_by.map(str::to_string));
        // After now: an attempt under way leaves the replayed rows alone (`takes_outcome!`).
        let due_at_ms = payflow_store::replayed_due_at(now_ms);
        self.write(move |conn| {
            let k = params![key.merchant, key.scope, key.id];
            let seq: Option<i64> = conn
                .query_row("SELECT seq FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3", k, |r| r.get(0))
                .optional()?;
            let Some(seq) = seq else { return Ok(false) };
            if let Some(who) = &forced_by {
                conn.execute(
                    "UPDATE events SET forced_by = ?4 WHERE merchant = ?1 AND scope = ?2 AND id = ?3",
                    params![key.merchant, key.scope, key.id, who],
                )?;
            }
            let has_step: bool =
                conn.query_row("SELECT COUNT(*) > 0 FROM plugin_steps WHERE event_seq = ?1", [seq], |r| r.get(0))?;
            // The attempts so far stay in the event's history; the rows start over or go.
            file_latest_attempts(conn, &key, Some(seq))?;
            if has_step || first_hop == Hop::Plugins {
                // The plugins decide again (perhaps a fixed version): what they created goes.
                conn.execute("DELETE FROM deliveries WHERE event_seq = ?1", [seq])?;
                conn.execute(
                    "UPDATE plugin_steps SET status = 'pending', attempts = 0, next_attempt_at_ms = ?2, error = NULL
                     WHERE event_seq = ?1",
                    params![seq, due_at_ms],
                )?;
                add_first_hop(conn, &key, seq, &Hop::Plugins, due_at_ms)?;
                conn.execute(
                    "UPDATE events SET status = 'queued', reason = NULL WHERE merchant = ?1 AND scope = ?2 AND id = ?3",
                    k,
                )?;
                return Ok(true);
            }
            conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at_ms = ?2 WHERE event_seq = ?1",
                params![seq, due_at_ms],
            )?;
            add_first_hop(conn, &key, seq, &first_hop, due_at_ms)?;
            settle_event(conn, &key)?;
            Ok(true)
        })
        .await
    }

    async fn held_keys(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<HeldKey>, StoreError> {
        let merchant = merchant.map(str::to_string);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&payflow_store::ordering::held_keys("seq", "?1", "?2"))?;
            let rows = stmt.query_map(params![merchant, limit as i64], held_key)?;
            rows.collect()
        })
        .await
    }

    async fn skip_in_order(&self, key: &EventKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            conn.execute(
                &payflow_store::ordering::skip("?1", "?2", "?3"),
                params![key.merchant, key.scope, key.id],
            )
            .map(|n| n > 0)
        })
        .await
    }
}

fn held_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldKey> {
    let status: String = r.get(4)?;
    Ok(HeldKey {
        merchant: r.get(0)?,
        key: r.get(1)?,
        event_id: r.get(2)?,
        scope: r.get(3)?,
        attempts: r.get(5)?,
        next_attempt_at_ms: if status == "dead" { None } else { r.get(6)? },
        status,
        waiting: r.get::<_, i64>(7)?.max(0) as u64,
    })
}
