//! What the admin API reads and replays, and readiness: any replica answers for every event.

use async_trait::async_trait;
use payflow_store::{
    AdminQueries, Amount, AttemptInfo, DeliveryInfo, EventDetail, EventFilter, EventKey, EventSummary,
    HeldKey, Hop, Lifecycle, PluginRunInfo, StepInfo, StoreError,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::record::{begin, settle_events};
use crate::{exec, key_params, query, query_opt, unavailable, PostgresStore};

/// How many columns [`SUMMARY_COLUMNS`] names.
const SUMMARY_WIDTH: usize = 11;
/// The last column is the body, for its [`Amount`], when it is small enough to look into.
const SUMMARY_COLUMNS: &str = concat!(
    "merchant, id, endpoint, event_type, ",
    payflow_store::event_status!(),
    ", reason, received_at_ms, tags, scope, forced_by, CASE WHEN length(body) <= 65536 THEN body END"
);

fn summary(r: &Row) -> EventSummary {
    EventSummary {
        merchant: r.get(0),
        id: r.get(1),
        endpoint: r.get(2),
        event_type: r.get(3),
        status: r.get(4),
        reason: r.get(5),
        received_at_ms: r.get(6),
        tags: r.get::<_, Option<String>>(7).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
        scope: r.get(8),
        forced_by: r.get(9),
        amount: r.get::<_, Option<Vec<u8>>>(10).and_then(|body| Amount::of(&body)),
    }
}

/// Makes an event's first hop pending at `at_ms` (nothing when it is already there).
async fn add_first_hop(
    tx: &impl deadpool_postgres::GenericClient,
    key: &EventKey,
    hop: &Hop,
    at_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let [m, s, i] = key_params(key);
    match hop {
        Hop::Plugins => {
            let params: [&(dyn ToSql + Sync); 4] = [m, s, i, &at_ms];
            exec(
                tx,
                concat!(
                    "INSERT INTO plugin_steps (event_seq, merchant, scope, event_id, status, attempts,
                                               next_attempt_at_ms)
                     VALUES (",
                    seq_of_key!(),
                    ", $1, $2, $3, 'pending', 0, $4) ON CONFLICT DO NOTHING"
                ),
                &params,
            )
            .await?
        }
        Hop::Upstream(upstream) => {
            let params: [&(dyn ToSql + Sync); 5] = [m, s, i, upstream, &at_ms];
            exec(
                tx,
                concat!(
                    "INSERT INTO deliveries (event_seq, merchant, scope, event_id, upstream, status, attempts,
                                             next_attempt_at_ms)
                     VALUES (",
                    seq_of_key!(),
                    ", $1, $2, $3, $4, 'pending', 0, $5) ON CONFLICT DO NOTHING"
                ),
                &params,
            )
            .await?
        }
    };
    Ok(())
}

#[async_trait]
impl AdminQueries for PostgresStore {
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE TRUE");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
            args.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(m) = filter.merchant {
            add(" AND merchant = ?", Box::new(m));
        }
        if let Some(s) = filter.status {
            add(concat!(" AND ", payflow_store::event_status!(), " = ?"), Box::new(s));
        }
        if let Some(t) = filter.event_type {
            add(" AND event_type = ?", Box::new(t));
        }
        if let Some(e) = filter.endpoint {
            add(" AND endpoint = ?", Box::new(e));
        }
        if let Some((at, merchant, scope, id)) = filter.before {
            // Keyset paging on (received_at_ms, merchant, scope, id), newest first.
            add(" AND (received_at_ms, merchant, scope, id) < (?", Box::new(at));
            add(", ?", Box::new(merchant));
            add(", ?", Box::new(scope));
            add(", ?)", Box::new(id));
        }
        add(
            " ORDER BY received_at_ms DESC, merchant DESC, scope DESC, id DESC LIMIT ?",
            Box::new(filter.limit.clamp(1, 1000) as i64),
        );
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let rows = query(&self.client().await?, &sql, &params).await.map_err(unavailable)?;
        Ok(rows.iter().map(summary).collect())
    }

    async fn find_events(
        &self,
        merchant: Option<&str>,
        scope: Option<&str>,
        id: &str,
        limit: usize,
    ) -> Result<Vec<EventKey>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT merchant, scope FROM events
                 WHERE id = $1 AND ($2::text IS NULL OR merchant = $2) AND ($3::text IS NULL OR scope = $3)
                 ORDER BY merchant, scope LIMIT $4",
            &[&id, &merchant, &scope, &(limit as i64)],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| EventKey::new(r.get::<_, String>(0), r.get::<_, String>(1), id.to_string()))
            .collect())
    }

    async fn get_event(&self, key: &EventKey) -> Result<Option<EventDetail>, StoreError> {
        let client = self.client().await?;
        let [m, s, i] = key_params(key);
        let k: &[&(dyn ToSql + Sync)] = &[m, s, i];
        let found = query_opt(
            &client,
            &format!(
                "SELECT {SUMMARY_COLUMNS}, body, headers, request_id, order_key FROM events
                     WHERE merchant = $1 AND scope = $2 AND id = $3"
            ),
            k,
        )
        .await
        .map_err(unavailable)?;
        let Some(row) = found else { return Ok(None) };
        let plugin_step = query_opt(
            &client,
            concat!(
                "SELECT status, attempts, next_attempt_at_ms, error, routes FROM plugin_steps WHERE event_seq = ",
                seq_of_key!()
            ),
            k,
        )
        .await
        .map_err(unavailable)?
        .map(|r| {
            let status: String = r.get(0);
            StepInfo {
                next_attempt_at_ms: (status == "pending").then(|| r.get(2)),
                status,
                attempts: r.get::<_, i32>(1) as u32,
                error: r.get(3),
                routes: r.get::<_, Option<String>>(4).and_then(|t| serde_json::from_str(&t).ok()),
            }
        });
        let deliveries = query(
            &client,
            concat!(
                "SELECT upstream, status, attempts, next_attempt_at_ms FROM deliveries WHERE event_seq = ",
                seq_of_key!(),
                " ORDER BY upstream"
            ),
            k,
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| {
            let status: String = r.get(1);
            DeliveryInfo {
                upstream: r.get(0),
                next_attempt_at_ms: (status == "pending").then(|| r.get(3)),
                status,
                attempts: r.get::<_, i32>(2) as u32,
            }
        })
        .collect();
        let attempts = query(
            &client,
            concat!(
                "SELECT upstream, number, at_ms, duration_ms, status_code, error, response FROM attempts
                 WHERE event_seq = ",
                seq_of_key!(),
                " ORDER BY at_ms, seq"
            ),
            k,
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| AttemptInfo {
            upstream: r.get(0),
            number: r.get::<_, i32>(1) as u32,
            at_ms: r.get(2),
            duration_ms: r.get(3),
            status_code: r.get::<_, Option<i32>>(4).map(|c| c as u16),
            error: r.get(5),
            response: r.get(6),
        })
        .collect();
        let plugin_runs = query(
            &client,
            concat!(
                "SELECT plugin, version, attempt, at_ms, duration_us, fuel_used, outcome, detail, logs
                 FROM plugin_runs WHERE event_seq = ",
                seq_of_key!(),
                " ORDER BY at_ms, seq"
            ),
            k,
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| PluginRunInfo {
            plugin: r.get(0),
            version: r.get::<_, i32>(1) as u32,
            attempt: r.get::<_, i32>(2) as u32,
            at_ms: r.get(3),
            duration_us: r.get(4),
            fuel_used: r.get::<_, i64>(5) as u64,
            outcome: r.get(6),
            detail: r.get(7),
            logs: serde_json::from_str(&r.get::<_, String>(8)).unwrap_or_default(),
        })
        .collect();
        let body: Vec<u8> = row.get(SUMMARY_WIDTH);
        let headers: String = row.get(SUMMARY_WIDTH + 1);
        Ok(Some(EventDetail {
            summary: summary(&row),
            body: String::from_utf8_lossy(&body).into_owned(),
            headers: serde_json::from_str(&headers).unwrap_or_default(),
            request_id: row.get(SUMMARY_WIDTH + 2),
            order_key: row.get(SUMMARY_WIDTH + 3),
            plugin_step,
            deliveries,
            attempts,
            plugin_runs,
        }))
    }

    async fn replay(
        &self,
        key: &EventKey,
        first_hop: &Hop,
        now_ms: i64,
        forced_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        // After now: an attempt under way leaves the replayed rows alone (`takes_outcome!`).
        let due_at_ms = payflow_store::replayed_due_at(now_ms);
        let mut client = self.client().await?;
        let tx = begin(&mut client).await.map_err(unavailable)?;
        let [m, s, i] = key_params(key);
        let k: &[&(dyn ToSql + Sync)] = &[m, s, i];
        let found = query_opt(
            &tx,
            "SELECT 1 FROM events WHERE merchant = $1 AND scope = $2 AND id = $3 FOR UPDATE",
            k,
        )
        .await
        .map_err(unavailable)?;
        if found.is_none() {
            return Ok(false);
        }
        if let Some(who) = forced_by {
            exec(
                &tx,
                "UPDATE events SET forced_by = $4 WHERE merchant = $1 AND scope = $2 AND id = $3",
                &[m, s, i, &who],
            )
            .await
            .map_err(unavailable)?;
        }
        let has_step =
            query_opt(&tx, concat!("SELECT 1 FROM plugin_steps WHERE event_seq = ", seq_of_key!()), k)
                .await
                .map_err(unavailable)?
                .is_some();
        if has_step || *first_hop == Hop::Plugins {
            // The plugins decide again (perhaps a fixed version): what they created goes.
            exec(&tx, concat!("DELETE FROM deliveries WHERE event_seq = ", seq_of_key!()), k)
                .await
                .map_err(unavailable)?;
            exec(
                &tx,
                concat!(
                    "UPDATE plugin_steps SET status = 'pending', attempts = 0, next_attempt_at_ms = $4, error = NULL,
                            lease_until_ms = NULL
                     WHERE event_seq = ",
                    seq_of_key!()
                ),
                &[m, s, i, &due_at_ms],
            )
            .await
            .map_err(unavailable)?;
            add_first_hop(&tx, key, &Hop::Plugins, due_at_ms).await.map_err(unavailable)?;
            exec(&tx,
                "UPDATE events SET status = 'queued', reason = NULL WHERE merchant = $1 AND scope = $2 AND id = $3",
                k,
            )
            .await
            .map_err(unavailable)?;
        } else {
            exec(
                &tx,
                concat!(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at_ms = $4,
                            lease_until_ms = NULL
                     WHERE event_seq = ",
                    seq_of_key!()
                ),
                &[m, s, i, &due_at_ms],
            )
            .await
            .map_err(unavailable)?;
            add_first_hop(&tx, key, first_hop, due_at_ms).await.map_err(unavailable)?;
            settle_events(&tx, &[key].into()).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn held_keys(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<HeldKey>, StoreError> {
        let rows = query(
            &self.client().await?,
            &payflow_store::ordering::held_keys("order_seq", "$1::text", "$2"),
            &[&merchant, &(limit as i64)],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| {
                let status: String = r.get(4);
                HeldKey {
                    merchant: r.get(0),
                    key: r.get(1),
                    event_id: r.get(2),
                    scope: r.get(3),
                    attempts: r.get::<_, i32>(5).max(0) as u32,
                    next_attempt_at_ms: if status == "dead" { None } else { r.get(6) },
                    status,
                    waiting: r.get::<_, i64>(7).max(0) as u64,
                }
            })
            .collect())
    }

    async fn skip_in_order(&self, key: &EventKey) -> Result<bool, StoreError> {
        let [m, s, i] = key_params(key);
        let n = exec(&self.client().await?, &payflow_store::ordering::skip("$1", "$2", "$3"), &[m, s, i])
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Lifecycle for PostgresStore {
    async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError> {
        exec(
            &self.client().await?,
            "INSERT INTO health (id, checked_at_ms) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET checked_at_ms = excluded.checked_at_ms",
            &[&now_ms],
        )
        .await
        .map(drop)
        .map_err(unavailable)
    }

    async fn close(&self) {
        self.pool.close();
    }
}
