//! Plugin versions (with their compiled code) and the plugins' key-value spaces, shared by
//! every replica.

use async_trait::async_trait;
use bytes::Bytes;
use payflow_store::{
    Canary, KvChanges, KvEntry, KvRead, KvTurn, NewPluginVersion, PluginHistory, PluginStore,
    PluginVersionInfo, QuotaExceeded, StoreError, StoredPlugin, VersionBounds,
};

use crate::step_record::space_lock;
use crate::{exec, query, query_opt, unavailable, PostgresStore};

/// The setting by which a replica's connections name it as a writer of the plugins' kv spaces:
/// the triggers on `plugin_kv` (schema migration 13, which spells the name out as it must stay)
/// count each change under it, and under writer 0 where it is not set.
pub(crate) const KV_WRITER: &str = "payflow.kv_writer";

/// The setting by which a replica's connections say that they number their kv writes
/// (schema migration 16): the triggers count a write made without it as one a read of what
/// changed cannot find ([`KvChanges::unlisted`]).
pub(crate) const KV_NUMBERED: &str = "payflow.kv_numbered";

/// A new writer number: random, so that replicas need not agree on numbers (two of 2^62
/// colliding would only make each miss the other's changes), and never 0.
pub(crate) fn new_kv_writer() -> i64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos));
    (random >> 2) as i64 + 1
}

/// Where a read of the space of plugin `$2` of merchant `$1` stands ([`KvChanges`]), as one
/// row `(elsewhere, unlisted, since)`:
/// - how many times writers other than `$3` changed it. A replica's own steps count under its
///   own number, so they never make it read the space again. Writer 0 is everything that does
///   not name itself: the admin API's repairs (`DELETE_KV`), a replica of an earlier release,
///   an operator's psql. Every replica counts it as made elsewhere, the one that made a repair
///   included;
/// - how many changes a read of what changed cannot find, by anyone: keys deleted, and writes
///   that carry no change number (the column is named for the first; schema migration 16);
/// - the highest change number among the space's keys (0: none numbered). Numbers grow in
///   each space in commit order, so every write the read did not see has a higher one. An
///   index probe ([`by_change!`]), not a scan.
macro_rules! kv_stand {
    () => {
        concat!(
            "SELECT COALESCE(SUM(changes) FILTER (WHERE writer <> $3), 0)::int8, COALESCE(SUM(deletes), 0)::int8,
                    (SELECT COALESCE(MAX(change), 0) FROM plugin_kv WHERE ",
            by_change!(),
            ")
             FROM plugin_kv_changes WHERE merchant = $1 AND plugin = $2"
        )
    };
}

/// The rows of the space of plugin `$2` of merchant `$1`, through the index on their change
/// numbers (`plugin_kv_by_change`, schema migration 16), which only a condition on the same
/// expression of the space reaches, and which that condition reaches alone: with the columns
/// compared one by one, a plan could as well read the whole space through the key's index.
macro_rules! by_change {
    () => {
        "ARRAY[merchant, plugin] = ARRAY[$1, $2]"
    };
}

/// The space and where the read stands, in one statement: one snapshot. A space with no keys
/// is one row without a key.
const LOAD_KV_SPACE: &str = concat!(
    "SELECT c.n, c.d, c.x, k.key, k.value, k.version, k.writer FROM (",
    kv_stand!(),
    ") AS c(n, d, x) LEFT JOIN plugin_kv k ON k.merchant = $1 AND k.plugin = $2"
);

/// Where the space stands now and, unless a change that cannot be listed (a delete, a write
/// without a number) was made since a read that stood at `($4, $5, $6)`, the keys `$7` and,
/// when others changed the space since that read, its keys written since: those numbered
/// above `$6`, through the index on the numbers (a key may come back twice, and a key this
/// replica wrote since comes back too).
/// All in one statement, so the keys and the new stand come from one snapshot; when the
/// others' count did not move, the plan never reads the index (a one-time filter on the first
/// branch). The keys asked for are each looked up by key: a subquery with a `LIMIT` is planned
/// on its own, for each key, where `key = ANY($7)` let a plan made once on a small space read
/// the whole space and test each key (the statement runs on plans the pool's connections keep).
pub(crate) const KV_CHANGED_SINCE: &str = concat!(
    "SELECT c.n, c.d, c.x, k.key, k.value, k.version, k.writer FROM (",
    kv_stand!(),
    ") AS c(n, d, x) LEFT JOIN LATERAL (
         SELECT key, value, version, writer FROM plugin_kv
         WHERE c.n <> $4 AND c.d = $5 AND ",
    by_change!(),
    " AND change > $6
         UNION ALL
         SELECT k.key, k.value, k.version, k.writer FROM UNNEST($7::text[]) AS a(key), LATERAL (
             SELECT key, value, version, writer FROM plugin_kv
             WHERE c.d = $5 AND merchant = $1 AND plugin = $2 AND key = a.key LIMIT 1
         ) AS k
     ) AS k ON true"
);

/// The rows of [`LOAD_KV_SPACE`] and [`KV_CHANGED_SINCE`] as a read: where it stands and its keys.
fn kv_read(rows: &[tokio_postgres::Row]) -> KvRead {
    let changes = rows.first().map_or_else(KvChanges::default, |r| KvChanges {
        elsewhere: r.get(0),
        unlisted: r.get(1),
        since: r.get(2),
    });
    let entries = rows
        .iter()
        .filter_map(|r| {
            let key: Option<String> = r.get(3);
            Some(KvEntry { key: key?, value: r.get(4), version: r.get(5), writer: r.get(6) })
        })
        .collect();
    KvRead { entries, changes }
}

/// Makes the rest of the transaction count as writer 0's (see [`kv_stand!`]).
const AS_WRITER_0: &str = "SET LOCAL payflow.kv_writer = '0'";

/// Folds a deleted plugin's change counts into one of writer 0's, one more than their
/// sum: every replica's count of changes made elsewhere grows (it counted at most that sum),
/// and so does the count of deletes, so every replica reads the space whole again.
const FOLD_ONE: &str = "WITH folded AS (
         DELETE FROM plugin_kv_changes WHERE merchant = $1 AND plugin = $2 RETURNING changes, deletes
     )
     INSERT INTO plugin_kv_changes (merchant, plugin, writer, changes, deletes)
     SELECT $1, $2, 0, COALESCE(SUM(changes), 0) + 1, COALESCE(SUM(deletes), 0) + 1 FROM folded";

/// The same for every plugin, at a replica's start: each start adds a writer, and without
/// this every plugin's counts would keep a row for every replica that ever ran. A replica
/// still running reads the keys written since its last read once more after it; nothing else
/// changes.
pub(crate) const FOLD_ALL: &str = "WITH folded AS (
         DELETE FROM plugin_kv_changes RETURNING merchant, plugin, changes, deletes
     )
     INSERT INTO plugin_kv_changes (merchant, plugin, writer, changes, deletes)
     SELECT merchant, plugin, 0, SUM(changes) + 1, SUM(deletes) FROM folded GROUP BY merchant, plugin";

fn version_info(r: &tokio_postgres::Row) -> PluginVersionInfo {
    PluginVersionInfo {
        version: r.get::<_, i32>(0) as u32,
        sha256: r.get(1),
        size: r.get::<_, i32>(2) as usize,
        source: r.get(3),
        created_at_ms: r.get(4),
    }
}

#[async_trait]
impl PluginStore for PostgresStore {
    async fn load_kv(&self, merchant: &str, plugin: &str) -> Result<Vec<KvEntry>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT key, value, version, writer FROM plugin_kv WHERE merchant = $1 AND plugin = $2",
            &[&merchant, &plugin],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| KvEntry { key: r.get(0), value: r.get(1), version: r.get(2), writer: r.get(3) })
            .collect())
    }

    fn shares_kv(&self) -> bool {
        true
    }

    fn kv_writer(&self) -> i64 {
        self.kv_writer
    }

    async fn load_kv_space(&self, merchant: &str, plugin: &str) -> Result<KvRead, StoreError> {
        let rows = query(&self.client().await?, LOAD_KV_SPACE, &[&merchant, &plugin, &self.kv_writer])
            .await
            .map_err(unavailable)?;
        Ok(kv_read(&rows))
    }

    async fn kv_changed_since(
        &self,
        merchant: &str,
        plugin: &str,
        since: KvChanges,
        keys: &[String],
    ) -> Result<Option<KvRead>, StoreError> {
        let KvChanges { elsewhere, unlisted, since: number } = since;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&merchant, &plugin, &self.kv_writer, &elsewhere, &unlisted, &number, &keys];
        let rows = query(&self.client().await?, KV_CHANGED_SINCE, &params).await.map_err(unavailable)?;
        let read = kv_read(&rows);
        Ok((read.changes.unlisted == unlisted).then_some(read))
    }

    async fn kv_turn(
        &self,
        merchant: &str,
        plugin: &str,
        hold_at_most: std::time::Duration,
    ) -> Result<Option<KvTurn>, StoreError> {
        crate::kv_turn::take(self, merchant, plugin, hold_at_most).await
    }

    async fn delete_kv(&self, merchant: &str, plugin: &str, key: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.batch_execute(AS_WRITER_0).await.map_err(unavailable)?;
        // As a step batch that uses the space takes it: the batch's check of what its runs
        // read and its writes are one, never split by a repair.
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&space_lock(merchant, plugin)])
            .await
            .map_err(unavailable)?;
        let n = exec(
            &tx,
            "DELETE FROM plugin_kv WHERE merchant = $1 AND plugin = $2 AND key = $3",
            &[&merchant, &plugin, &key],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn add_plugin_version(
        &self,
        v: NewPluginVersion,
        file_sha256: Option<String>,
        bounds: VersionBounds,
    ) -> Result<Result<u32, QuotaExceeded>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // One upload of a merchant's plugins at a time, whichever replica takes it: the quota
        // and the version numbers are read and written in one go.
        exec(&tx, "SELECT pg_advisory_xact_lock(hashtext($1))", &[&v.merchant]).await.map_err(unavailable)?;
        let version: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_versions WHERE merchant = $1 AND name = $2",
                &[&v.merchant, &v.name],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        let active: Option<i32> = query_opt(
            &tx,
            "SELECT active_version FROM plugins WHERE merchant = $1 AND name = $2",
            &[&v.merchant, &v.name],
        )
        .await
        .map_err(unavailable)?
        .and_then(|r| r.get(0));
        let others = bounds.max_versions.saturating_sub(1 + u32::from(active.is_some())) as i64;
        let pruned: Vec<(i32, i64)> = query(
            &tx,
            "SELECT version, (LENGTH(wasm) + (SELECT COALESCE(SUM(LENGTH(c.compiled)), 0) FROM plugin_compiled c
                                                WHERE c.merchant = v.merchant AND c.name = v.name
                                                  AND c.version = v.version))::int8
                 FROM plugin_versions v
                 WHERE merchant = $1 AND name = $2 AND version IS DISTINCT FROM $3
                 ORDER BY version DESC OFFSET $4",
            &[&v.merchant, &v.name, &active, &others],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        let used: i64 = tx
            .query_one(
                "SELECT ((SELECT COALESCE(SUM(LENGTH(wasm)), 0) FROM plugin_versions WHERE merchant = $1)
                         + (SELECT COALESCE(SUM(LENGTH(compiled)), 0) FROM plugin_compiled WHERE merchant = $1))::int8",
                &[&v.merchant],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        let needed = (used - pruned.iter().map(|(_, size)| size).sum::<i64>()) as u64
            + (v.wasm.len() + v.compiled.len()) as u64;
        if needed > bounds.merchant_bytes {
            return Ok(Err(QuotaExceeded { needed, quota: bounds.merchant_bytes }));
        }
        for (old, _) in &pruned {
            for sql in [
                "DELETE FROM plugin_versions WHERE merchant = $1 AND name = $2 AND version = $3",
                "DELETE FROM plugin_compiled WHERE merchant = $1 AND name = $2 AND version = $3",
            ] {
                exec(&tx, sql, &[&v.merchant, &v.name, old]).await.map_err(unavailable)?;
            }
        }
        exec(
            &tx,
            "INSERT INTO plugin_versions (merchant, name, version, sha256, wasm, source, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&v.merchant, &v.name, &version, &v.sha256, &&v.wasm[..], &v.source, &v.created_at_ms],
        )
        .await
        .map_err(unavailable)?;
        exec(
            &tx,
            "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled) VALUES ($1, $2, $3, $4, $5)",
            &[&v.merchant, &v.name, &version, &v.engine, &v.compiled],
        )
        .await
        .map_err(unavailable)?;
        exec(
            &tx,
            "INSERT INTO plugins (merchant, name, active_version, file_sha256) VALUES ($1, $2, $3, $4)
             ON CONFLICT (merchant, name) DO UPDATE
             SET active_version = COALESCE(excluded.active_version, plugins.active_version),
                 file_sha256 = COALESCE(excluded.file_sha256, plugins.file_sha256)",
            &[&v.merchant, &v.name, &v.activate.then_some(version), &file_sha256],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Ok(version as u32))
    }

    async fn stored_at(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        let version = version.map(|v| v as i32);
        let row = query_opt(
            &self.client().await?,
            "SELECT v.version, v.sha256, LENGTH(v.wasm), v.source, v.created_at_ms, v.wasm, c.compiled
                 FROM plugins p JOIN plugin_versions v
                   ON v.merchant = p.merchant AND v.name = p.name AND v.version = COALESCE($4, p.active_version)
                 LEFT JOIN plugin_compiled c
                   ON c.merchant = v.merchant AND c.name = v.name AND c.version = v.version AND c.engine = $3
                 WHERE p.merchant = $1 AND p.name = $2",
            &[&merchant, &name, &engine, &version],
        )
        .await
        .map_err(unavailable)?;
        Ok(row.map(|r| StoredPlugin {
            version: r.get::<_, i32>(0) as u32,
            info: version_info(&r),
            wasm: Bytes::from(r.get::<_, Vec<u8>>(5)),
            compiled: r.get(6),
        }))
    }

    async fn set_canary(&self, merchant: &str, name: &str, c: Canary) -> Result<bool, StoreError> {
        let (version, percent) = (c.version as i32, i32::from(c.percent));
        let client = self.client().await?;
        let n = if c.running() {
            exec(
                &client,
                "INSERT INTO plugin_canaries (merchant, name, version, percent, state, reason, at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (merchant, name) DO UPDATE SET version = excluded.version, percent = excluded.percent,
                     state = excluded.state, reason = excluded.reason, at_ms = excluded.at_ms",
                &[&merchant, &name, &version, &percent, &c.state, &c.reason, &c.at_ms],
            )
            .await
        } else {
            exec(
                &client,
                "UPDATE plugin_canaries SET state = $4, reason = $5, at_ms = $6
                 WHERE merchant = $1 AND name = $2 AND version = $3 AND state = 'running'",
                &[&merchant, &name, &version, &c.state, &c.reason, &c.at_ms],
            )
            .await
        }
        .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn canaries(&self) -> Result<Vec<(String, String, Canary)>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT merchant, name, version, percent, state, reason, at_ms FROM plugin_canaries ORDER BY merchant, name",
            &[],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), canary_at(r, 2))).collect())
    }

    async fn active_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        let rows = query(
            &self.client().await?,
            "SELECT merchant, name, active_version FROM plugins WHERE active_version IS NOT NULL
                 ORDER BY merchant, name",
            &[],
        )
        .await
        .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i32>(2) as u32)).collect())
    }

    async fn plugin_history(&self, merchant: &str, name: &str) -> Result<PluginHistory, StoreError> {
        let client = self.client().await?;
        let head = query_opt(
            &client,
            "SELECT active_version, file_sha256 FROM plugins WHERE merchant = $1 AND name = $2",
            &[&merchant, &name],
        )
        .await
        .map_err(unavailable)?;
        let (active, file_sha256) =
            head.map(|r| (r.get::<_, Option<i32>>(0).map(|v| v as u32), r.get(1))).unwrap_or((None, None));
        let versions = query(
            &client,
            "SELECT version, sha256, LENGTH(wasm), source, created_at_ms FROM plugin_versions
                 WHERE merchant = $1 AND name = $2 ORDER BY version",
            &[&merchant, &name],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(version_info)
        .collect();
        let canary = query_opt(
            &client,
            "SELECT version, percent, state, reason, at_ms FROM plugin_canaries WHERE merchant = $1 AND name = $2",
            &[&merchant, &name],
        )
        .await
        .map_err(unavailable)?
        .map(|r| canary_at(&r, 0));
        Ok(PluginHistory { active, file_sha256, versions, canary })
    }

    async fn activate_plugin(&self, merchant: &str, name: &str, version: u32) -> Result<bool, StoreError> {
        let n = exec(&self.client().await?,
                "UPDATE plugins SET active_version = $3 WHERE merchant = $1 AND name = $2
                   AND EXISTS (SELECT 1 FROM plugin_versions v WHERE v.merchant = $1 AND v.name = $2 AND v.version = $3)",
                &[&merchant, &name, &(version as i32)],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn save_compiled(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
        compiled: Vec<u8>,
    ) -> Result<(), StoreError> {
        // Only for a version that still exists, under the merchant's upload lock: one pruned
        // meanwhile leaves nothing behind. Not held to the quota: a replica must be able to run
        // what is active, and one engine's artifact is about the size of another's.
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        exec(&tx, "SELECT pg_advisory_xact_lock(hashtext($1))", &[&merchant]).await.map_err(unavailable)?;
        exec(
            &tx,
            "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS
                 (SELECT 1 FROM plugin_versions WHERE merchant = $1 AND name = $2 AND version = $3)
             ON CONFLICT (merchant, name, version, engine) DO UPDATE SET compiled = excluded.compiled",
            &[&merchant, &name, &(version as i32), &engine, &compiled],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn delete_plugin(&self, merchant: &str, name: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let n = exec(&tx, "DELETE FROM plugins WHERE merchant = $1 AND name = $2", &[&merchant, &name])
            .await
            .map_err(unavailable)?;
        for sql in [
            "DELETE FROM plugin_versions WHERE merchant = $1 AND name = $2",
            "DELETE FROM plugin_compiled WHERE merchant = $1 AND name = $2",
            "DELETE FROM plugin_kv WHERE merchant = $1 AND plugin = $2",
            "DELETE FROM plugin_canaries WHERE merchant = $1 AND name = $2",
            FOLD_ONE,
        ] {
            exec(&tx, sql, &[&merchant, &name]).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(n == 1)
    }
}

/// A canary from its five columns (version, percent, state, reason, at_ms) starting at `at`.
fn canary_at(r: &tokio_postgres::Row, at: usize) -> Canary {
    Canary {
        version: r.get::<_, i32>(at) as u32,
        percent: r.get::<_, i32>(at + 1).clamp(0, 100) as u8,
        state: r.get(at + 2),
        reason: r.get(at + 3),
        at_ms: r.get(at + 4),
    }
}
