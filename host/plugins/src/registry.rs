//! The plugins a gateway can run: one [`Slot`] per configured `[[plugin]]`, holding the active
//! compiled version, its sandbox limits and configuration, and its key-value space.
//!
//! Versions live in the store with their compiled artifact, so a restart loads them without
//! compiling. A new version (from the config file or an upload) is compiled and validated
//! before it is stored, and swapped in with one pointer store: a run that already took the old
//! version finishes on it, the next run gets the new one, and nothing ever sees a half-loaded
//! plugin. This module must never run a plugin (that is [`super::chain`]'s job, on the
//! scheduler's threads) nor decide who may change one (the admin API checks scopes).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::canary::{CanaryVersion, Watch};
use super::kv_space::KvSpace;
use super::replica_turn::ReplicaTurn;
use super::run_log::RunLog;
use super::stats::{VersionFigures, VersionStats};
use super::{Kv, Limits, LoadError, LoadedPlugin, Runtime, Trial, WarmInstance};
use payflow_clock::Clock;
use payflow_config::{PluginConfig, PluginsConfig};
use payflow_metrics::{Counter, Histogram, FUEL_BUCKETS, SECONDS_BUCKETS};
use payflow_store::{
    Canary, EventKey, NewPluginVersion, PluginHistory, PluginRunInfo, PluginStore, PluginVersionInfo,
    QuotaExceeded, StoreError, StoredPlugin, VersionBounds,
};

/// Why a plugin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No `[[plugin]]` of that name for that merchant.
    #[error("no plugin named {0:?} is configured for this merchant (declare it with [[plugin]])")]
    Unknown(String),
    /// The component is unusable.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// Over `plugins.max_upload_bytes`.
    #[error("the component is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing to roll back to.
    #[error("{0}")]
    NoVersion(String),
    /// No such stored version (never uploaded, or pruned).
    #[error("{0}")]
    UnknownVersion(String),
    /// The config's file cannot be read.
    #[error("cannot read {path}: {error}")]
    File {
        /// The `path` from the config.
        path: String,
        /// The operating system's error (not found, permission denied…).
        error: String,
    },
    /// The merchant's plugin versions would take more than its storage quota.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A plugin version, compiled and linked.
pub struct Version {
    /// Its number.
    pub info: PluginVersionInfo,
    /// Ready to instantiate.
    pub plugin: LoadedPlugin,
    /// Loaded from the store's compiled artifact (not compiled in this process).
    pub from_cache: bool,
    /// Idle warm instances (`warm = true` only).
    warm: Mutex<Vec<WarmInstance>>,
    /// Whether a run of it has read or written kv: its space is then loaded before each run
    /// (see `chain`).
    uses_kv: AtomicBool,
}

impl Version {
    fn new(info: PluginVersionInfo, plugin: LoadedPlugin, from_cache: bool) -> Arc<Self> {
        Arc::new(Version {
            info,
            plugin,
            from_cache,
            warm: Mutex::default(),
            uses_kv: AtomicBool::new(false),
        })
    }

    /// Whether a run of this version has read or written kv.
    pub fn uses_kv(&self) -> bool {
        self.uses_kv.load(Ordering::Relaxed)
    }

    /// A run of this version read or wrote kv.
    pub fn mark_uses_kv(&self) {
        self.uses_kv.store(true, Ordering::Relaxed);
    }

    /// Takes an idle warm instance, or makes one.
    pub fn take_warm(&self, slot: &Slot, kv: Arc<dyn Kv>) -> WarmInstance {
        let idle = self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(mut instance) => {
                instance.set_kv(kv);
                instance
            }
            None => self.plugin.warm(&slot.config, kv, &slot.limits),
        }
    }

    /// Gives a warm instance back for the next event.
    pub fn put_warm(&self, instance: WarmInstance) {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).push(instance);
    }
}

/// One configured plugin.
pub struct Slot {
    /// Owning merchant.
    pub merchant: String,
    /// The plugin's name in the config.
    pub name: String,
    /// Its sandbox.
    pub limits: Limits,
    /// What `config(key)` answers.
    pub config: HashMap<String, String>,
    /// Reuse instances between events.
    pub warm: bool,
    active: RwLock<Option<Arc<Version>>>,
    /// The key-value space.
    pub kv: Mutex<KvSpace>,
    /// Held for a whole run: runs of one plugin are serialized.
    pub(super) turn: Mutex<()>,
    /// Its runs' turns with other replicas' on its kv space, while they contend for it.
    pub replica_turn: ReplicaTurn,
    /// Woken when steps whose writes are in `kv` are handed to the store or answered
    /// ([`KvSpace::unsent`]).
    pub handed: tokio::sync::Notify,
    /// Serializes changes (upload, rollback, delete) to this slot.
    changing: tokio::sync::Mutex<()>,
    /// The version taking a share of events beside the active one, while a canary runs.
    canary: RwLock<Option<Arc<CanaryVersion>>>,
    /// The canary's and the active version's last runs.
    watch: Mutex<Watch>,
    /// Its runs since the gateway started.
    pub counts: PluginCounts,
    /// Its latest runs' log lines, for following them live.
    pub logs: RunLog,
}

/// A plugin's runs since the gateway started: the metrics' runs by outcome, duration and fuel,
/// and the latest failure of each reason (what an operator looks at first). The common
/// outcomes are plain atomics; only a failure takes the lock.
pub struct PluginCounts {
    continued: Counter,
    dropped: Counter,
    /// Wall-clock seconds per run, instantiation included.
    pub duration: Histogram,
    /// Fuel per run.
    pub fuel: Histogram,
    failures: Mutex<BTreeMap<String, RecentFailure>>,
    /// Per version (one uncontended lock per run: runs of a plugin are serialized anyway).
    versions: Mutex<BTreeMap<u32, VersionStats>>,
    /// Reads of its kv space from the store, whole: the first run's, and each after the
    /// gateway's copy was dropped (a step that did not commit, a repair, a key deleted
    /// elsewhere).
    pub kv_loads: Counter,
    /// Reads from the store of what others changed in its kv space since the last read (only
    /// where replicas share the store; each after a step of the plugin's).
    pub kv_refreshes: Counter,
    /// Steps run again because another replica changed a kv key this plugin's run read before
    /// the step committed (its writes, if any, thrown away): each is an event that ran again.
    pub kv_conflicts: Counter,
    /// Turns taken on its kv space with other replicas ([`crate::replica_turn`]).
    pub kv_turns: TurnCounts,
}

/// Turns taken on a plugin's kv space: at once, and after waiting for another replica's.
#[derive(Default)]
pub struct TurnCounts {
    /// Taken at once: nobody held the turn.
    pub at_once: Counter,
    /// Taken after another replica gave it up.
    pub waited: Counter,
}

impl TurnCounts {
    /// Counts a turn taken, after a wait or not.
    pub fn inc(&self, waited: bool) {
        if waited { &self.waited } else { &self.at_once }.inc();
    }
}

/// The failures of one reason since the gateway started, and the latest one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentFailure {
    /// `trap`, `timeout`, `fuel_exhausted`…
    pub reason: String,
    /// How many.
    pub count: u64,
    /// The latest: when (unix ms).
    pub last_at_ms: i64,
    /// The latest: which event (its id).
    pub last_event_id: String,
    /// The latest: which event (its de-duplication scope, to address it).
    pub last_event_scope: String,
    /// The latest: what it said.
    pub last_message: Option<String>,
}

impl Default for PluginCounts {
    fn default() -> Self {
        PluginCounts {
            continued: Counter::default(),
            dropped: Counter::default(),
            duration: Histogram::new(SECONDS_BUCKETS),
            fuel: Histogram::new(FUEL_BUCKETS),
            failures: Mutex::default(),
            versions: Mutex::default(),
            kv_loads: Counter::default(),
            kv_refreshes: Counter::default(),
            kv_conflicts: Counter::default(),
            kv_turns: TurnCounts::default(),
        }
    }
}

impl PluginCounts {
    /// Counts one run of this plugin on the event `key`.
    pub fn record(&self, run: &PluginRunInfo, key: &EventKey) {
        self.duration.observe(run.duration_us as f64 / 1e6);
        self.fuel.observe(run.fuel_used as f64);
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).entry(run.version).or_default().record(
            &run.outcome,
            run.duration_us.max(0) as u64,
            run.fuel_used,
        );
        match run.outcome.as_str() {
            "continue" => return self.continued.inc(),
            "drop" => return self.dropped.inc(),
            _ => {}
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures.entry(run.outcome.clone()).or_insert_with(|| RecentFailure {
            reason: run.outcome.clone(),
            count: 0,
            last_at_ms: 0,
            last_event_id: String::new(),
            last_event_scope: String::new(),
            last_message: None,
        });
        entry.count += 1;
        entry.last_at_ms = run.at_ms;
        entry.last_event_id.clone_from(&key.id);
        entry.last_event_scope.clone_from(&key.scope);
        entry.last_message = run.detail.clone();
    }

    /// Runs by outcome (`continue`, `drop`, or a failure's reason), those that happened.
    pub fn runs(&self) -> BTreeMap<String, u64> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut runs: BTreeMap<String, u64> =
            failures.values().map(|f| (f.reason.clone(), f.count)).collect();
        for (outcome, counter) in [("continue", &self.continued), ("drop", &self.dropped)] {
            if counter.get() > 0 {
                runs.insert(outcome.to_string(), counter.get());
            }
        }
        runs
    }

    /// Each version's figures since the gateway started, oldest version first.
    pub fn by_version(&self) -> Vec<VersionFigures> {
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions.iter().map(|(v, stats)| stats.figures(*v)).collect()
    }

    /// Failures by reason, the most recent first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        let mut all: Vec<_> =
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.sort_by_key(|f| std::cmp::Reverse(f.last_at_ms));
        all
    }
}

impl Slot {
    /// The active version, if any. Cheap: an `Arc` clone.
    pub fn active(&self) -> Option<Arc<Version>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn swap(&self, version: Option<Arc<Version>>) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = version;
    }

    /// The running canary, if any.
    pub fn canary(&self) -> Option<Arc<CanaryVersion>> {
        self.canary.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The version the event with this id runs on, and whether it is the canary: the canary
    /// for its share of ids (by [`crate::canary::bucket`]), else the active version.
    pub fn version_for(&self, event_id: &str) -> Option<(Arc<Version>, bool)> {
        match self.canary() {
            Some(c) if c.takes(event_id) => Some((c.version.clone(), true)),
            _ => self.active().map(|v| (v, false)),
        }
    }

    /// Counts a run of `version` (`failure`: its reason when it failed); answers why the
    /// running canary must end when this run showed it failing beyond the margin. The canary
    /// then stops taking events at once; recording its end is the caller's.
    pub fn observe(&self, version: u32, failure: Option<&str>) -> Option<(u32, String)> {
        let canary = self.canary()?;
        let on_canary = canary.version.info.version == version;
        let why = self.watch.lock().unwrap_or_else(|p| p.into_inner()).observe(on_canary, failure)?;
        let mut running = self.canary.write().unwrap_or_else(|p| p.into_inner());
        // Only the observer that finds it still there ends it.
        if running.as_ref().is_some_and(|c| Arc::ptr_eq(c, &canary)) {
            *running = None;
            return Some((version, why));
        }
        None
    }

    fn set_canary(&self, canary: Option<Arc<CanaryVersion>>, watch: Watch) {
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = watch;
        *self.canary.write().unwrap_or_else(|p| p.into_inner()) = canary;
    }
}

/// A plugin as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    /// The plugin's name in the config.
    pub name: String,
    /// Owning merchant.
    pub merchant: String,
    /// The active version.
    pub active_version: Option<u32>,
    /// Whether the running version was loaded from the compiled cache.
    pub loaded_from_cache: Option<bool>,
    /// Its limits.
    pub fuel: u64,
    /// Deadline.
    pub timeout_ms: u64,
    /// Memory cap.
    pub memory_mb: u64,
    /// Warm instances.
    pub warm: bool,
    /// Every stored version.
    pub versions: Vec<PluginVersionInfo>,
    /// Runs since the gateway started, by outcome.
    pub runs: BTreeMap<String, u64>,
    /// Failures since the gateway started, by reason, the most recent first.
    pub recent_failures: Vec<RecentFailure>,
    /// The running canary (version and share), or how the last one ended and why.
    pub canary: Option<Canary>,
    /// Runs per version since the gateway started: outcomes, time and fuel.
    pub by_version: Vec<VersionFigures>,
}

/// Compiled dry-run candidates kept: a merchant tries one component several ways in a row.
const TRIED_KEPT: usize = 2;

/// Every configured plugin.
pub struct Registry {
    runtime: Runtime,
    store: Arc<dyn PluginStore>,
    clock: Arc<dyn Clock>,
    max_upload_bytes: usize,
    bounds: VersionBounds,
    slots: HashMap<(String, String), Arc<Slot>>,
    /// `[plugins] canary_window`.
    canary_window: usize,
    /// `[plugins] canary_margin_percent`.
    canary_margin: u32,
    /// The latest dry runs' compiled candidates, newest first, by SHA-256.
    tried: Mutex<VecDeque<(String, LoadedPlugin)>>,
    /// Where a dry run's candidate compiles (see [`Registry::trial_compile`]).
    trial_pool: Arc<rayon::ThreadPool>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Builds the registry and loads each plugin's active version: the config's file when it
    /// changed since it was last imported (a new version), otherwise the stored version from its
    /// compiled artifact (recompiled only if this engine cannot use it).
    pub async fn load(
        runtime: Runtime,
        store: Arc<dyn PluginStore>,
        clock: Arc<dyn Clock>,
        plugins: &[PluginConfig],
        settings: &PluginsConfig,
    ) -> Result<Registry, (String, RegistryError)> {
        let bounds = VersionBounds {
            max_versions: settings.max_versions,
            merchant_bytes: settings.merchant_storage_mb.saturating_mul(1 << 20),
        };
        let max_upload_bytes = settings.max_upload_bytes;
        let mut registry = Registry {
            runtime,
            store,
            clock,
            max_upload_bytes,
            bounds,
            canary_window: settings.canary_window,
            canary_margin: settings.canary_margin_percent,
            tried: Mutex::default(),
            trial_pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "payflow-plugin-try".into())
                    .start_handler(|_| crate::scheduler::idle_priority())
                    .build()
                    .map_err(|e| (String::new(), RegistryError::Invalid(LoadError::Engine(e.to_string()))))?,
            ),
            slots: HashMap::new(),
        };
        for p in plugins {
            let slot = Arc::new(Slot {
                merchant: p.merchant.clone(),
                name: p.name.clone(),
                limits: Limits::from(p),
                config: p.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                warm: p.warm,
                active: RwLock::new(None),
                kv: Mutex::new(KvSpace::of_writer(registry.store.kv_writer())),
                turn: Mutex::new(()),
                replica_turn: ReplicaTurn::default(),
                handed: tokio::sync::Notify::new(),
                changing: tokio::sync::Mutex::new(()),
                canary: RwLock::new(None),
                watch: Mutex::new(Watch::new(1, 0)),
                counts: PluginCounts::default(),
                logs: RunLog::default(),
            });
            registry.start_slot(&slot, p).await.map_err(|e| (p.name.clone(), e))?;
            registry.slots.insert((p.merchant.clone(), p.name.clone()), slot);
        }
        Ok(registry)
    }

    async fn start_slot(&self, slot: &Slot, config: &PluginConfig) -> Result<(), RegistryError> {
        if let Some(path) = &config.path {
            let wasm = std::fs::read(path).map_err(|e| RegistryError::File {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
            let sha = sha256_hex(&wasm);
            let history = self.store.plugin_history(&slot.merchant, &slot.name).await?;
            if history.file_sha256.as_deref() != Some(sha.as_str()) {
                let version = self.add_version(slot, Bytes::from(wasm), "file", Some(sha)).await?;
                slot.swap(Some(version));
                return Ok(());
            }
        }
        if let Some(stored) =
            self.store.active_plugin(&slot.merchant, &slot.name, self.runtime.fingerprint()).await?
        {
            slot.swap(Some(self.load_stored(slot, stored).await?));
        }
        let history = self.store.plugin_history(&slot.merchant, &slot.name).await?;
        self.follow_canary(slot, history.canary.as_ref()).await?;
        Ok(())
    }

    /// Makes the slot's canary the store's running one (loading its version), or none.
    /// Returns whether it changed.
    async fn follow_canary(&self, slot: &Slot, stored: Option<&Canary>) -> Result<bool, RegistryError> {
        let wanted = stored.filter(|c| c.running()).map(|c| (c.version, c.percent));
        let loaded = slot.canary().map(|c| (c.version.info.version, c.percent));
        if wanted == loaded {
            return Ok(false);
        }
        let canary = match wanted {
            Some((version, percent)) => {
                let Some(stored) = self
                    .store
                    .stored_plugin(&slot.merchant, &slot.name, version, self.runtime.fingerprint())
                    .await?
                else {
                    return Ok(false); // pruned meanwhile: nothing to run
                };
                Some(Arc::new(CanaryVersion { version: self.load_stored(slot, stored).await?, percent }))
            }
            None => None,
        };
        slot.set_canary(canary, Watch::new(self.canary_window, self.canary_margin));
        Ok(true)
    }

    /// Stores `wasm` as a new version of `merchant`'s plugin `name` and starts it as a canary
    /// on `percent` of the events (by event id); the active version keeps the rest.
    pub async fn upload_canary(
        &self,
        merchant: &str,
        name: &str,
        wasm: Bytes,
        percent: u8,
    ) -> Result<PluginStatus, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        let Some(active) = slot.active() else {
            return Err(RegistryError::NoVersion(format!(
                "plugin {name} has no active version for a canary to run beside: upload the first one without --canary"
            )));
        };
        if sha256_hex(&wasm) == active.info.sha256 {
            return Err(RegistryError::NoVersion(format!(
                "this component is v{}, the active version: a canary must be a new one",
                active.info.version
            )));
        }
        // A component already stored (an earlier version) is that version again, not a copy.
        let sha256 = sha256_hex(&wasm);
        let history = self.store.plugin_history(merchant, name).await?;
        let stored = match history.versions.iter().rev().find(|v| v.sha256 == sha256) {
            Some(same) => {
                self.store.stored_plugin(merchant, name, same.version, self.runtime.fingerprint()).await?
            }
            None => None,
        };
        let version = match stored {
            Some(stored) => self.load_stored(slot, stored).await?,
            None => self.add_version_as(slot, wasm, "upload", None, false).await?,
        };
        let canary = Canary {
            version: version.info.version,
            percent,
            state: "running".into(),
            reason: None,
            at_ms: self.clock.now_ms(),
        };
        self.store.set_canary(merchant, name, canary).await?;
        tracing::info!(merchant, plugin = name, version = version.info.version, percent, "canary started");
        let running = Arc::new(CanaryVersion { version, percent });
        slot.set_canary(Some(running), Watch::new(self.canary_window, self.canary_margin));
        self.status(slot).await
    }

    /// Makes the running canary the active version for every event.
    pub async fn promote(&self, merchant: &str, name: &str) -> Result<PluginStatus, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        let Some(canary) = slot.canary() else {
            return Err(RegistryError::NoVersion(format!(
                "plugin {name} has no canary running (start one: payflow-edge plugin upload {name} FILE.wasm --canary 10%)"
            )));
        };
        let version = canary.version.info.version;
        self.store.activate_plugin(merchant, name, version).await?;
        self.end(slot, version, "promoted", None).await?;
        slot.swap(Some(canary.version.clone()));
        slot.set_canary(None, Watch::new(self.canary_window, self.canary_margin));
        tracing::info!(merchant, plugin = name, version, "canary promoted");
        self.status(slot).await
    }

    /// Records that the canary `version` of `slot` ended (`promoted`, `rolled_back`,
    /// `cancelled`) and why.
    async fn end(
        &self,
        slot: &Slot,
        version: u32,
        state: &str,
        reason: Option<String>,
    ) -> Result<(), RegistryError> {
        let canary = Canary { version, percent: 0, state: state.into(), reason, at_ms: self.clock.now_ms() };
        self.store.set_canary(&slot.merchant, &slot.name, canary).await?;
        Ok(())
    }

    /// Rolls back the canary `version` of `merchant`'s plugin `name`, which
    /// [`Slot::observe`] already took out of service, recording `why`.
    pub async fn roll_back_canary(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
        why: String,
    ) -> Result<(), RegistryError> {
        let slot = self.find(merchant, name)?;
        tracing::warn!(merchant, plugin = name, version, why = %why, "canary rolled back");
        self.end(slot, version, "rolled_back", Some(why)).await
    }

    /// Ends a running canary that a change of the active version replaced.
    async fn cancel_canary(&self, slot: &Slot, why: String) -> Result<(), RegistryError> {
        if let Some(canary) = slot.canary() {
            slot.set_canary(None, Watch::new(self.canary_window, self.canary_margin));
            self.end(slot, canary.version.info.version, "cancelled", Some(why)).await?;
        }
        Ok(())
    }

    /// Loads a stored version from this engine's compiled artifact, or compiles it (and saves
    /// the artifact under this engine's fingerprint) when there is none or it is unusable.
    async fn load_stored(&self, slot: &Slot, stored: StoredPlugin) -> Result<Arc<Version>, RegistryError> {
        let cached = match stored.compiled {
            Some(compiled) => {
                let runtime = self.runtime.clone();
                tokio::task::spawn_blocking(move || {
                    runtime.load_compiled(&compiled).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| LoadError::Engine(e.to_string()))?
            }
            None => Err("none compiled by this engine yet".to_string()),
        };
        let (plugin, from_cache) = match cached {
            Ok(plugin) => (plugin, true),
            Err(why) => {
                tracing::info!(plugin = %slot.name, version = stored.version, why = %why, "compiling the stored version");
                let (plugin, compiled) = self.compile(stored.wasm.clone()).await?;
                let engine = self.runtime.fingerprint();
                self.store
                    .save_compiled(&slot.merchant, &slot.name, stored.version, engine, compiled)
                    .await?;
                (plugin, false)
            }
        };
        Ok(Version::new(stored.info, plugin, from_cache))
    }

    async fn compile(&self, wasm: Bytes) -> Result<(LoadedPlugin, Vec<u8>), RegistryError> {
        let runtime = self.runtime.clone();
        // Compiling takes from milliseconds (Rust) to seconds (JS, Python): never on the reactor.
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&wasm))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))??;
        Ok(compiled)
    }

    async fn add_version(
        &self,
        slot: &Slot,
        wasm: Bytes,
        source: &str,
        file_sha256: Option<String>,
    ) -> Result<Arc<Version>, RegistryError> {
        self.add_version_as(slot, wasm, source, file_sha256, true).await
    }

    /// Compiles and stores a new version, made active or not (a canary's).
    async fn add_version_as(
        &self,
        slot: &Slot,
        wasm: Bytes,
        source: &str,
        file_sha256: Option<String>,
        activate: bool,
    ) -> Result<Arc<Version>, RegistryError> {
        if wasm.len() > self.max_upload_bytes {
            return Err(RegistryError::TooLarge { size: wasm.len(), limit: self.max_upload_bytes });
        }
        let (plugin, compiled) = self.compile(wasm.clone()).await?;
        let sha256 = sha256_hex(&wasm);
        let created_at_ms = self.clock.now_ms();
        let size = wasm.len();
        let new = NewPluginVersion {
            merchant: slot.merchant.clone(),
            name: slot.name.clone(),
            wasm,
            sha256: sha256.clone(),
            compiled,
            engine: self.runtime.fingerprint().to_string(),
            source: source.to_string(),
            created_at_ms,
            activate,
        };
        let version = self.store.add_plugin_version(new, file_sha256, self.bounds).await??;
        let info = PluginVersionInfo { version, sha256, size, source: source.to_string(), created_at_ms };
        tracing::info!(merchant = %slot.merchant, plugin = %slot.name, version, source, activate, "plugin version stored");
        Ok(Version::new(info, plugin, false))
    }

    /// The slot of `merchant`'s plugin `name`.
    pub fn slot(&self, merchant: &str, name: &str) -> Option<&Arc<Slot>> {
        self.slots.get(&(merchant.to_string(), name.to_string()))
    }

    /// Every slot, in name order; `merchant: None` for all merchants.
    pub fn slots(&self, merchant: Option<&str>) -> Vec<&Arc<Slot>> {
        let mut slots: Vec<_> =
            self.slots.values().filter(|s| merchant.is_none_or(|m| s.merchant == m)).collect();
        slots.sort_by(|a, b| (&a.merchant, &a.name).cmp(&(&b.merchant, &b.name)));
        slots
    }

    fn find(&self, merchant: &str, name: &str) -> Result<&Arc<Slot>, RegistryError> {
        self.slot(merchant, name).ok_or_else(|| RegistryError::Unknown(name.to_string()))
    }

    /// Validates, compiles and stores an uploaded component, then swaps it in.
    pub async fn upload(
        &self,
        merchant: &str,
        name: &str,
        wasm: Bytes,
    ) -> Result<PluginStatus, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        // The same component again is the same version: made active if it is not, never stored
        // twice (six uploads of one 7 MiB component used to take six versions).
        let sha256 = sha256_hex(&wasm);
        let history = self.store.plugin_history(merchant, name).await?;
        if let Some(same) = history.versions.iter().rev().find(|v| v.sha256 == sha256) {
            if history.active != Some(same.version) {
                self.activate(slot, same.version).await?;
                self.cancel_canary(slot, format!("v{} was made active for every event", same.version))
                    .await?;
            }
            return self.status(slot).await;
        }
        let version = self.add_version(slot, wasm, "upload", None).await?;
        let number = version.info.version;
        slot.swap(Some(version));
        self.cancel_canary(slot, format!("v{number} was uploaded for every event")).await?;
        self.status(slot).await
    }

    /// A dry run of `wasm` beside `merchant`'s plugin `name` as it is now ([`Trial`]): the
    /// component is checked and compiled as an upload would be, but never stored; the kv
    /// snapshot is the committed space. `upstreams` are what the merchant's plugins may
    /// forward to.
    pub async fn trial(
        &self,
        merchant: &str,
        name: &str,
        wasm: Bytes,
        upstreams: Arc<BTreeSet<String>>,
    ) -> Result<Trial, RegistryError> {
        let slot = self.find(merchant, name)?;
        if wasm.len() > self.max_upload_bytes {
            return Err(RegistryError::TooLarge { size: wasm.len(), limit: self.max_upload_bytes });
        }
        let Some(active) = slot.active() else {
            return Err(RegistryError::NoVersion(format!(
                "plugin {name} has no active version to compare with: upload one first (payflow-edge plugin upload {name} FILE.wasm)"
            )));
        };
        let candidate = self.trial_compile(wasm).await?;
        let kv = self.kv(merchant, name).await?;
        Ok(Trial::new(slot.clone(), active, candidate, kv, upstreams))
    }

    /// A dry run's candidate, compiled. A large component takes seconds of CPU to compile
    /// (the JavaScript example, ~34 s on 2 cores), so: the same component tried again is taken
    /// from the last few compiled; and a new one compiles in a one-thread pool under
    /// `SCHED_IDLE`, on CPU live traffic does not want, never beside it.
    async fn trial_compile(&self, wasm: Bytes) -> Result<LoadedPlugin, RegistryError> {
        let sha256 = sha256_hex(&wasm);
        let cached = {
            let recent = self.tried.lock().unwrap_or_else(|p| p.into_inner());
            recent.iter().find(|(sha, _)| *sha == sha256).map(|(_, plugin)| plugin.clone())
        };
        if let Some(plugin) = cached {
            return Ok(plugin);
        }
        let runtime = self.runtime.clone();
        let pool = self.trial_pool.clone();
        let (plugin, _) = tokio::task::spawn_blocking(move || pool.install(|| runtime.compile(&wasm)))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))??;
        let mut recent = self.tried.lock().unwrap_or_else(|p| p.into_inner());
        recent.push_front((sha256, plugin.clone()));
        recent.truncate(TRIED_KEPT);
        Ok(plugin)
    }

    /// Makes the stored `version` active and swaps it in.
    async fn activate(&self, slot: &Slot, version: u32) -> Result<(), RegistryError> {
        self.store.activate_plugin(&slot.merchant, &slot.name, version).await?;
        let stored = self
            .store
            .active_plugin(&slot.merchant, &slot.name, self.runtime.fingerprint())
            .await?
            .ok_or_else(|| RegistryError::NoVersion("the version vanished".into()))?;
        slot.swap(Some(self.load_stored(slot, stored).await?));
        Ok(())
    }

    /// Makes the version before the active one active again.
    pub async fn rollback(&self, merchant: &str, name: &str) -> Result<PluginStatus, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        let history = self.store.plugin_history(merchant, name).await?;
        let Some(active) = history.active else {
            return Err(RegistryError::NoVersion("the plugin has no version to roll back from".into()));
        };
        let Some(previous) = history.versions.iter().rev().map(|v| v.version).find(|&v| v < active) else {
            return Err(RegistryError::NoVersion(format!(
                "version {active} is the oldest; nothing to roll back to"
            )));
        };
        self.activate(slot, previous).await?;
        self.cancel_canary(slot, format!("rolled back to v{previous}")).await?;
        self.status(slot).await
    }

    /// Makes a stored version active, older or newer than the active one: rolls back, or forward
    /// again after a rollback.
    pub async fn activate_version(
        &self,
        merchant: &str,
        name: &str,
        version: u32,
    ) -> Result<PluginStatus, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        let history = self.store.plugin_history(merchant, name).await?;
        if !history.versions.iter().any(|v| v.version == version) {
            let kept: Vec<String> = history.versions.iter().map(|v| v.version.to_string()).collect();
            return Err(RegistryError::UnknownVersion(format!(
                "{name} has no version {version} (kept: {})",
                if kept.is_empty() { "none".to_string() } else { kept.join(", ") }
            )));
        }
        self.activate(slot, version).await?;
        self.cancel_canary(slot, format!("v{version} was made active for every event")).await?;
        self.status(slot).await
    }

    /// Deletes every version and the kv space; the plugin's events wait until a new upload.
    pub async fn delete(&self, merchant: &str, name: &str) -> Result<bool, RegistryError> {
        let slot = self.find(merchant, name)?;
        let _changing = slot.changing.lock().await;
        let deleted = self.store.delete_plugin(merchant, name).await?;
        slot.swap(None);
        slot.set_canary(None, Watch::new(self.canary_window, self.canary_margin));
        slot.kv.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(deleted)
    }

    /// Follows what happened to the plugins elsewhere (another replica on a shared store
    /// uploaded, rolled back or deleted one): each plugin whose active version in the store is
    /// not the one loaded here is loaded again (from its compiled code), or unloaded. Returns
    /// how many changed. Cheap when nothing did: one read.
    pub async fn follow_store(&self) -> Result<usize, RegistryError> {
        let active: HashMap<(String, String), u32> =
            self.store.active_versions().await?.into_iter().map(|(m, n, v)| ((m, n), v)).collect();
        let mut changed = 0;
        for (key, slot) in &self.slots {
            let loaded = |slot: &Slot| slot.active().map(|v| v.info.version);
            if active.get(key).copied() == loaded(slot) {
                continue;
            }
            // Under the slot's lock, from the store again: a change made here meanwhile wins.
            let _changing = slot.changing.lock().await;
            match self.store.active_plugin(&slot.merchant, &slot.name, self.runtime.fingerprint()).await? {
                Some(stored) if Some(stored.version) != loaded(slot) => {
                    tracing::info!(merchant = %slot.merchant, plugin = %slot.name, version = stored.version, "plugin version activated elsewhere; loaded");
                    slot.swap(Some(self.load_stored(slot, stored).await?));
                    changed += 1;
                }
                None if loaded(slot).is_some() => {
                    tracing::info!(merchant = %slot.merchant, plugin = %slot.name, "plugin deleted elsewhere; unloaded");
                    slot.swap(None);
                    slot.kv.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    changed += 1;
                }
                _ => {}
            }
        }
        let canaries: HashMap<(String, String), Canary> =
            self.store.canaries().await?.into_iter().map(|(m, n, c)| ((m, n), c)).collect();
        for (key, slot) in &self.slots {
            let wanted = canaries.get(key).filter(|c| c.running()).map(|c| (c.version, c.percent));
            if wanted == slot.canary().map(|c| (c.version.info.version, c.percent)) {
                continue;
            }
            let _changing = slot.changing.lock().await;
            let history = self.store.plugin_history(&slot.merchant, &slot.name).await?;
            if self.follow_canary(slot, history.canary.as_ref()).await? {
                tracing::info!(merchant = %slot.merchant, plugin = %slot.name, "canary started or ended elsewhere; followed");
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// `merchant`'s plugin `name`'s key-value space, as committed, in key order.
    pub async fn kv(&self, merchant: &str, name: &str) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        self.find(merchant, name)?;
        let mut entries: Vec<(String, Vec<u8>)> =
            self.store.load_kv(merchant, name).await?.into_iter().map(|e| (e.key, e.value)).collect();
        entries.sort();
        Ok(entries)
    }

    /// Deletes one key of the plugin's space (a repair). Waits for a run of the plugin in
    /// progress to end, then drops the in-memory copy, so the next run reads the store again
    /// and never a space changing under it. False when the key was not there.
    pub async fn delete_kv(&self, merchant: &str, name: &str, key: &str) -> Result<bool, RegistryError> {
        let slot = self.find(merchant, name)?.clone();
        let deleted = self.store.delete_kv(merchant, name, key).await?;
        tokio::task::spawn_blocking(move || {
            let _turn = slot.turn.lock().unwrap_or_else(|p| p.into_inner());
            slot.kv.lock().unwrap_or_else(|p| p.into_inner()).forget();
        })
        .await
        .map_err(|e| RegistryError::Store(StoreError::Unavailable(e.to_string())))?;
        Ok(deleted)
    }

    /// A plugin as shown.
    pub async fn show(&self, merchant: &str, name: &str) -> Result<PluginStatus, RegistryError> {
        self.status(self.find(merchant, name)?).await
    }

    async fn status(&self, slot: &Slot) -> Result<PluginStatus, RegistryError> {
        let PluginHistory { versions, canary, .. } =
            self.store.plugin_history(&slot.merchant, &slot.name).await?;
        let active = slot.active();
        Ok(PluginStatus {
            name: slot.name.clone(),
            merchant: slot.merchant.clone(),
            active_version: active.as_ref().map(|v| v.info.version),
            loaded_from_cache: active.as_ref().map(|v| v.from_cache),
            fuel: slot.limits.fuel,
            timeout_ms: slot.limits.timeout.as_millis() as u64,
            memory_mb: (slot.limits.memory_bytes >> 20) as u64,
            warm: slot.warm,
            versions,
            runs: slot.counts.runs(),
            recent_failures: slot.counts.recent_failures(),
            canary,
            by_version: slot.counts.by_version(),
        })
    }

    /// The store (for kv loads).
    pub fn store(&self) -> &Arc<dyn PluginStore> {
        &self.store
    }
}
