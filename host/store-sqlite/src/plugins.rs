//! Plugins' stored versions (components, compiled code per engine, canaries, activation) and
//! their kv spaces. It must never keep more versions than a merchant's bounds allow, nor let
//! one merchant's plugin read or write another's.

use async_trait::async_trait;
use bytes::Bytes;
use payflow_store::{
    Canary, KvEntry, NewPluginVersion, PluginHistory, PluginStore, PluginVersionInfo, QuotaExceeded,
    StoreError, StoredPlugin, VersionBounds,
};
use rusqlite::{params, OptionalExtension};

use crate::writer::Priority;
use crate::SqliteStore;

#[async_trait]
impl PluginStore for SqliteStore {
    async fn load_kv(&self, merchant: &str, plugin: &str) -> Result<Vec<KvEntry>, StoreError> {
        let (merchant, plugin) = (merchant.to_string(), plugin.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT key, value, version FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2",
            )?
            .query_map(params![merchant, plugin], |r| {
                Ok(KvEntry { key: r.get(0)?, value: r.get(1)?, version: r.get(2)?, writer: 0 })
            })?
            .collect()
        })
        .await
    }

    async fn delete_kv(&self, merchant: &str, plugin: &str, key: &str) -> Result<bool, StoreError> {
        let (merchant, plugin, key) = (merchant.to_string(), plugin.to_string(), key.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2 AND key = ?3",
                params![merchant, plugin, key],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn add_plugin_version(
        &self,
        v: NewPluginVersion,
        file_sha256: Option<String>,
        bounds: VersionBounds,
    ) -> Result<Result<u32, QuotaExceeded>, StoreError> {
        self.write(move |conn| {
            let version: u32 = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_versions WHERE merchant = ?1 AND name = ?2",
                params![v.merchant, v.name],
                |r| r.get(0),
            )?;
            let active: Option<u32> = conn
                .query_row(
                    "SELECT active_version FROM plugins WHERE merchant = ?1 AND name = ?2",
                    params![v.merchant, v.name],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            // Kept: the new version, the one it replaces, and the newest others up to the cap.
            let others = bounds.max_versions.saturating_sub(1 + u32::from(active.is_some()));
            let pruned: Vec<(u32, u64)> = conn
                .prepare_cached(
                    "SELECT version, LENGTH(wasm) + (SELECT COALESCE(SUM(LENGTH(c.compiled)), 0) FROM plugin_compiled c
                                                     WHERE c.merchant = v.merchant AND c.name = v.name
                                                       AND c.version = v.version)
                     FROM plugin_versions v
                     WHERE merchant = ?1 AND name = ?2 AND version IS NOT ?3
                     ORDER BY version DESC LIMIT -1 OFFSET ?4",
                )?
                .query_map(params![v.merchant, v.name, active, others], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let used: u64 = conn.query_row(
                "SELECT (SELECT COALESCE(SUM(LENGTH(wasm)), 0) FROM plugin_versions WHERE merchant = ?1)
                      + (SELECT COALESCE(SUM(LENGTH(compiled)), 0) FROM plugin_compiled WHERE merchant = ?1)",
                params![v.merchant],
                |r| r.get(0),
            )?;
            let needed = used - pruned.iter().map(|(_, size)| size).sum::<u64>()
                + (v.wasm.len() + v.compiled.len()) as u64;
            if needed > bounds.merchant_bytes {
                return Ok(Err(QuotaExceeded { needed, quota: bounds.merchant_bytes }));
            }
            for (old, _) in &pruned {
                for table in ["plugin_versions", "plugin_compiled"] {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE merchant = ?1 AND name = ?2 AND version = ?3"
                    ))?
                    .execute(params![v.merchant, v.name, old])?;
                }
            }
            conn.execute(
                "INSERT INTO plugin_versions (merchant, name, version, sha256, wasm, source, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![v.merchant, v.name, version, v.sha256, &v.wasm[..], v.source, v.created_at_ms],
            )?;
            conn.execute(
                "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.merchant, v.name, version, v.engine, v.compiled],
            )?;
            conn.execute(
                "INSERT INTO plugins (merchant, name, active_version, file_sha256) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (merchant, name) DO UPDATE
                 SET active_version = COALESCE(excluded.active_version, plugins.active_version),
                     file_sha256 = COALESCE(excluded.file_sha256, plugins.file_sha256)",
                params![v.merchant, v.name, v.activate.then_some(version), file_sha256],
            )?;
            Ok(Ok(version))
        })
        .await
    }

    async fn stored_at(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        let (merchant, name, engine) = (merchant.to_string(), name.to_string(), engine.to_string());
        self.read(move |conn| {
            conn.query_row(
                "SELECT v.version, v.wasm, c.compiled, v.sha256, v.source, v.created_at_ms
                 FROM plugins p JOIN plugin_versions v
                   ON v.merchant = p.merchant AND v.name = p.name AND v.version = COALESCE(?4, p.active_version)
                 LEFT JOIN plugin_compiled c
                   ON c.merchant = v.merchant AND c.name = v.name AND c.version = v.version AND c.engine = ?3
                 WHERE p.merchant = ?1 AND p.name = ?2",
                params![merchant, name, engine, version],
                |r| {
                    let wasm: Vec<u8> = r.get(1)?;
                    Ok(StoredPlugin {
                        version: r.get(0)?,
                        compiled: r.get(2)?,
                        info: PluginVersionInfo {
                            version: r.get(0)?,
                            sha256: r.get(3)?,
                            size: wasm.len(),
                            source: r.get(4)?,
                            created_at_ms: r.get(5)?,
                        },
                        wasm: Bytes::from(wasm),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn set_canary(&self, merchant: &str, name: &str, c: Canary) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = if c.running() {
                conn.execute(
                    "INSERT INTO plugin_canaries (merchant, name, version, percent, state, reason, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (merchant, name) DO UPDATE SET version = excluded.version,
                         percent = excluded.percent, state = excluded.state, reason = excluded.reason,
                         at_ms = excluded.at_ms",
                    params![merchant, name, c.version, c.percent, c.state, c.reason, c.at_ms],
                )?
            } else {
                conn.execute(
                    "UPDATE plugin_canaries SET state = ?4, reason = ?5, at_ms = ?6
                     WHERE merchant = ?1 AND name = ?2 AND version = ?3 AND state = 'running'",
                    params![merchant, name, c.version, c.state, c.reason, c.at_ms],
                )?
            };
            Ok(n == 1)
        })
        .await
    }

    async fn canaries(&self) -> Result<Vec<(String, String, Canary)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT merchant, name, version, percent, state, reason, at_ms FROM plugin_canaries
                 ORDER BY merchant, name",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, canary_at(r, 2)?)))?
            .collect()
        })
        .await
    }

    async fn active_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT merchant, name, active_version FROM plugins WHERE active_version IS NOT NULL
                 ORDER BY merchant, name",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
        })
        .await
    }

    async fn plugin_history(&self, merchant: &str, name: &str) -> Result<PluginHistory, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.read(move |conn| {
            let (active, file_sha256) = conn
                .query_row(
                    "SELECT active_version, file_sha256 FROM plugins WHERE merchant = ?1 AND name = ?2",
                    params![merchant, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((None, None));
            let versions = conn
                .prepare_cached(
                    "SELECT version, sha256, LENGTH(wasm), source, created_at_ms FROM plugin_versions
                     WHERE merchant = ?1 AND name = ?2 ORDER BY version",
                )?
                .query_map(params![merchant, name], |r| {
                    Ok(PluginVersionInfo {
                        version: r.get(0)?,
                        sha256: r.get(1)?,
                        size: r.get::<_, i64>(2)? as usize,
                        source: r.get(3)?,
                        created_at_ms: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let canary = conn
                .query_row(
                    "SELECT version, percent, state, reason, at_ms FROM plugin_canaries WHERE merchant = ?1 AND name = ?2",
                    params![merchant, name],
                    |r| canary_at(r, 0),
                )
                .optional()?;
            Ok(PluginHistory { active, file_sha256, versions, canary })
        })
        .await
    }

    async fn activate_plugin(&self, merchant: &str, name: &str, version: u32) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE plugins SET active_version = ?3 WHERE merchant = ?1 AND name = ?2
                   AND EXISTS (SELECT 1 FROM plugin_versions v WHERE v.merchant = ?1 AND v.name = ?2 AND v.version = ?3)",
                params![merchant, name, version],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn save_compiled(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
        compiled: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (merchant, name, engine) = (merchant.to_string(), name.to_string(), engine.to_string());
        self.write_with(Priority::shared(1), move |conn| {
            // Only for a version that still exists: one pruned meanwhile leaves nothing behind.
            conn.execute(
                "INSERT INTO plugin_compiled (merchant, name, version, engine, compiled)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS
                     (SELECT 1 FROM plugin_versions WHERE merchant = ?1 AND name = ?2 AND version = ?3)
                 ON CONFLICT (merchant, name, version, engine) DO UPDATE SET compiled = excluded.compiled",
                params![merchant, name, version, engine, compiled],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_plugin(&self, merchant: &str, name: &str) -> Result<bool, StoreError> {
        let (merchant, name) = (merchant.to_string(), name.to_string());
        self.write(move |conn| {
            let n = conn
                .execute("DELETE FROM plugins WHERE merchant = ?1 AND name = ?2", params![merchant, name])?;
            for sql in [
                "DELETE FROM plugin_versions WHERE merchant = ?1 AND name = ?2",
                "DELETE FROM plugin_compiled WHERE merchant = ?1 AND name = ?2",
                "DELETE FROM plugin_kv WHERE merchant = ?1 AND plugin = ?2",
                "DELETE FROM plugin_canaries WHERE merchant = ?1 AND name = ?2",
            ] {
                conn.execute(sql, params![merchant, name])?;
            }
            Ok(n == 1)
        })
        .await
    }
}

/// A canary from its five columns (version, percent, state, reason, at_ms) starting at `at`.
fn canary_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Canary> {
    Ok(Canary {
        version: r.get(at)?,
        percent: r.get(at + 1)?,
        state: r.get(at + 2)?,
        reason: r.get(at + 3)?,
        at_ms: r.get(at + 4)?,
    })
}
