//! The plugin store's role: versions of each merchant's plugins (bounded in count and bytes),
//! their compiled code per engine, canaries, activation, and the kv spaces.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::kv::{KvChanges, KvEntry, KvRead, KvTurn};
use crate::StoreError;

/// How much of the store a plugin's versions may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionBounds {
    /// Versions kept per plugin (at least 2: the active one and the one before it).
    pub max_versions: u32,
    /// Bytes (components and compiled code) all of a merchant's plugin versions may take.
    pub merchant_bytes: u64,
}

/// A version that would take a merchant's plugins over their storage quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the merchant's plugin versions would take {needed} bytes; the quota is {quota} ([plugins] merchant_storage_mb); delete a plugin or lower [plugins] max_versions")]
pub struct QuotaExceeded {
    /// What they would take with the new version.
    pub needed: u64,
    /// The quota.
    pub quota: u64,
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone)]
pub struct NewPluginVersion {
    /// Owning merchant.
    pub merchant: String,
    /// Plugin name.
    pub name: String,
    /// The component.
    pub wasm: Bytes,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// The engine's compiled artifact, so a restart need not compile again.
    pub compiled: Vec<u8>,
    /// The fingerprint of the engine that compiled it: only an engine with the same one (the
    /// same wasmtime build and settings) may load it.
    pub engine: String,
    /// `file` (from the config's path) or `upload`.
    pub source: String,
    /// When, unix ms.
    pub created_at_ms: i64,
    /// Whether it becomes the active version. A canary's is stored beside the active one
    /// instead ([`PluginStore::set_canary`] then gives it its share of events).
    pub activate: bool,
}

/// A plugin's canary: a stored version that runs on `percent` of the events (chosen by event
/// id) beside the active version, or how the last one ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canary {
    /// The version tried.
    pub version: u32,
    /// Share of events it runs on, 1 to 100.
    pub percent: u8,
    /// `running`, or how it ended: `promoted`, `rolled_back`, `cancelled`.
    pub state: String,
    /// Why it ended (a rollback's failure rates, or what replaced it).
    pub reason: Option<String>,
    /// When it started or ended, unix ms.
    pub at_ms: i64,
}

impl Canary {
    /// Whether it still takes its share of events.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// A stored plugin version.
#[derive(Debug, Clone)]
pub struct StoredPlugin {
    /// Its version number (1, 2, …, per merchant and name).
    pub version: u32,
    /// The component.
    pub wasm: Bytes,
    /// The compiled artifact of the engine asked for, if that engine saved one. Replicas of
    /// different builds (an upgrade one replica at a time) each keep their own.
    pub compiled: Option<Vec<u8>>,
    /// Its hash, size, source and time, as listed.
    pub info: PluginVersionInfo,
}

/// A plugin version as listed.
#[derive(Debug, Clone, Serialize)]
pub struct PluginVersionInfo {
    /// Version number.
    pub version: u32,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Size of the component.
    pub size: usize,
    /// `file` or `upload`.
    pub source: String,
    /// When it was stored, unix ms.
    pub created_at_ms: i64,
}

/// A plugin's versions and which one is active.
#[derive(Debug, Clone, Default)]
pub struct PluginHistory {
    /// The active version, if any.
    pub active: Option<u32>,
    /// SHA-256 of the config file last imported.
    pub file_sha256: Option<String>,
    /// Every version, oldest first.
    pub versions: Vec<PluginVersionInfo>,
    /// Its canary, running or the last one's end.
    pub canary: Option<Canary>,
}

/// Plugin versions and the plugins' key-value spaces, per merchant.
#[async_trait]
pub trait PluginStore: Send + Sync + 'static {
    /// A plugin's key-value space.
    async fn load_kv(&self, merchant: &str, plugin: &str) -> Result<Vec<KvEntry>, StoreError>;

    /// Whether other gateways may write the plugins' key-value spaces (they share the store):
    /// then a gateway's copy of a space is good only with what [`PluginStore::kv_changed_since`]
    /// tells laid over it. False by default: a store one gateway owns.
    fn shares_kv(&self) -> bool {
        false
    }

    /// A plugin's key-value space for its runs: its keys and, read at the same moment, where
    /// the read stands ([`KvChanges`]). A store that
    /// [`PluginStore::shares_kv`] must count every change but this gateway's own steps':
    /// other gateways' steps and every admin repair (whichever gateway made it). The default
    /// is for a store one gateway owns: nobody else writes to it, and that gateway's repairs
    /// drop its copy of the space themselves.
    async fn load_kv_space(&self, merchant: &str, plugin: &str) -> Result<KvRead, StoreError> {
        Ok(KvRead { entries: self.load_kv(merchant, plugin).await?, changes: KvChanges::default() })
    }

    /// What others changed in a plugin's key-value space since a read that stood at `since`
    /// ([`KvRead::changes`]), and the keys `keys` whatever changed: `Some` with the keys they
    /// wrote since and those of `keys` it holds, as stored now, and where this read stands;
    /// `None` when the space must be read whole again (a change it cannot list was made since,
    /// such as a delete: [`KvChanges::unlisted`]). A store that [`PluginStore::shares_kv`] must
    /// tell every change but this gateway's own steps': other gateways' steps and every admin
    /// repair (whichever gateway made it). Its answer may hold keys that did not change, never
    /// leave out one that did. One cheap read, made by the
    /// first run of a plugin that uses kv after each of its steps when gateways share the
    /// store: before, the whole space was read again. `keys` are those the gateway's copy may
    /// hold another value of (written by runs whose steps were [`StepRecorded::Stale`](crate::StepRecorded::Stale)). The
    /// default is for a store one gateway owns: nobody else writes to it, and that gateway's
    /// repairs drop its copy of the space themselves. Its steps are stale only when built on a
    /// write of its own that was never applied, which is rare: then `keys` are read with the
    /// whole space.
    async fn kv_changed_since(
        &self,
        _merchant: &str,
        _plugin: &str,
        since: KvChanges,
        keys: &[String],
    ) -> Result<Option<KvRead>, StoreError> {
        Ok(keys.is_empty().then(|| KvRead { entries: Vec::new(), changes: since }))
    }

    /// The number this gateway's kv writes are stamped with ([`KvStamp::writer`](crate::KvStamp::writer)): unique
    /// among the gateways sharing the store. 0 for a store one gateway owns.
    fn kv_writer(&self) -> i64 {
        0
    }

    /// Takes this gateway's turn on a plugin's key-value space ([`KvTurn`]), waiting while
    /// another gateway holds it, but not for long: `None` when the wait ran out, or when this
    /// gateway already holds as many turns as the store allows (the caller runs without one).
    /// The store gives the turn up by itself after `hold_at_most`, dropped or not. A gateway
    /// asks only while its steps on the space keep finding keys changed by another
    /// ([`StepRecorded::Stale`](crate::StepRecorded::Stale)). The default is for a store one gateway owns: nobody to take
    /// turns with.
    async fn kv_turn(
        &self,
        _merchant: &str,
        _plugin: &str,
        _hold_at_most: std::time::Duration,
    ) -> Result<Option<KvTurn>, StoreError> {
        Ok(None)
    }

    /// Deletes one key of a plugin's key-value space (an operator's or merchant's repair).
    /// False when it was not there.
    async fn delete_kv(&self, merchant: &str, plugin: &str, key: &str) -> Result<bool, StoreError>;

    /// Stores a new version of a plugin and makes it the active one; `file_sha256` records
    /// the config file it was imported from. In the same transaction, the plugin's versions
    /// beyond `bounds.max_versions` are deleted, oldest first (never the new one nor the one
    /// it replaces); if the merchant's versions would then take more than
    /// `bounds.merchant_bytes`, nothing is written. Returns the new version's number.
    async fn add_plugin_version(
        &self,
        version: NewPluginVersion,
        file_sha256: Option<String>,
        bounds: VersionBounds,
    ) -> Result<Result<u32, QuotaExceeded>, StoreError>;

    /// A version of a plugin, with its bytes and the compiled artifact of the engine whose
    /// fingerprint is `engine`: `version`, or the active one when `None`. What
    /// [`PluginStore::active_plugin`] and [`PluginStore::stored_plugin`] read.
    async fn stored_at(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredPlugin>, StoreError>;

    /// The active version of a plugin, with its bytes and the compiled artifact of the engine
    /// whose fingerprint is `engine`.
    async fn active_plugin(
        &self,
        merchant: &str,
        name: &str,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        self.stored_at(merchant, name, engine, None).await
    }

    /// A stored version, as [`PluginStore::active_plugin`] gives the active one.
    async fn stored_plugin(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
    ) -> Result<Option<StoredPlugin>, StoreError> {
        self.stored_at(merchant, name, engine, Some(version)).await
    }

    /// Starts a canary (state `running`) or records how it ended. Ending one that is not the
    /// running canary of that version changes nothing and answers false (another replica
    /// ended it first).
    async fn set_canary(&self, merchant: &str, name: &str, canary: Canary) -> Result<bool, StoreError>;

    /// Every plugin's canary row: (merchant, name, canary). How a replica follows a canary
    /// another started or ended.
    async fn canaries(&self) -> Result<Vec<(String, String, Canary)>, StoreError>;

    /// Every plugin's active version: (merchant, name, version). How a replica follows what
    /// another activated (see `Registry::follow_store`).
    async fn active_versions(&self) -> Result<Vec<(String, String, u32)>, StoreError>;

    /// A plugin's versions.
    async fn plugin_history(&self, merchant: &str, name: &str) -> Result<PluginHistory, StoreError>;

    /// Makes `version` the active one (it must exist). False when it does not.
    async fn activate_plugin(&self, merchant: &str, name: &str, version: u32) -> Result<bool, StoreError>;

    /// Saves (or replaces) the compiled artifact of a version for the engine whose fingerprint
    /// is `engine`: one engine's artifact never replaces another's, so two builds sharing a
    /// store do not compile the same version again and again.
    async fn save_compiled(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        engine: &str,
        compiled: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Deletes a plugin: its versions and its kv. False when it had none.
    async fn delete_plugin(&self, merchant: &str, name: &str) -> Result<bool, StoreError>;
}
