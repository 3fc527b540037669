//! The sandbox merchant plugins run in: WebAssembly components of the `payflow:plugin` world
//! (`wit/plugin.wit`), executed by wasmtime.
//!
//! A plugin gets nothing it was not given: WASI is linked with nothing granted (no preopened
//! directories, environment, arguments or network; stdout and stderr go into the run's log,
//! capped), and the only other imports are the gateway's `host` interface. Each run has a fuel
//! budget, a wall-clock deadline (epoch interruption), a memory cap and output and log caps;
//! overstepping any of them fails that run with a named [`Failure`], never the gateway.
//! Each event gets a fresh instance from a pre-linked [`PluginPre`], so no state leaks between
//! events except through the plugin's own key-value space.
//!
//! This module must never run a plugin on the async reactor (callers use a blocking thread:
//! a plugin may compute for its whole deadline), and never hands a plugin anything but the
//! event it is asked to handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    ResourceLimiter, Store, StoreContextMut,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod chain;
mod registry;
mod scheduler;
mod stage;

pub use chain::{ChainInput, ChainOutcome, ChainResult};
pub use registry::{PluginStatus, Registry, RegistryError, Slot};
pub use scheduler::Scheduler;
pub use stage::{EndpointPlugins, PluginStage, StepInput};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "payflow:plugin/plugin",
    });
}

use bindings::payflow::plugin::host::Level;
pub use bindings::payflow::plugin::types::{Action, Event, Forward, Header, Outcome};
use bindings::{Plugin as PluginWorld, PluginPre};

/// The WIT package this gateway runs.
pub const WORLD: &str = "payflow:plugin/plugin@0.1.0";

/// How often the deadline clock ticks. A run's deadline is rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// What one component may declare, checked when it is compiled (upload, `plugin check`) and
/// again when a stored artifact is loaded. A component may legally hold hundreds of core
/// instances, each with its own memory and tables; without a cap one plugin could take the
/// whole instance pool that every merchant's runs draw from. The examples need far less: the
/// Python one (componentize-py) has 14 core instances, every example 1 memory and 2 tables.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// See [`MAX_CORE_INSTANCES_PER_COMPONENT`].
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// See [`MAX_CORE_INSTANCES_PER_COMPONENT`].
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// What a table element costs against `memory_mb`: tables live in host memory, a pointer each.
const TABLE_ELEMENT_BYTES: usize = 8;

/// The longest drop reason, error message or trap text kept from a run; the rest is cut with
/// a marker that says how much. These texts are stored with the event and listed by the admin
/// API and dashboard, so they must stay small whatever a plugin returns.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Tags kept per run, and the longest tag; the excess is dropped and counted in the run's log.
pub const MAX_TAGS: usize = 32;
/// See [`MAX_TAGS`].
pub const MAX_TAG_BYTES: usize = 128;
/// What each log line costs against `log_bytes` beyond its text, so that a flood of empty
/// lines is bounded as surely as a flood of long ones (and roughly what a stored line costs).
const LOG_LINE_OVERHEAD: usize = 32;

/// What one run may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wasm fuel (roughly, instructions).
    pub fuel: u64,
    /// Wall-clock time for the whole run, instantiation included.
    pub timeout: Duration,
    /// Every linear memory and table of the instance together, in bytes.
    pub memory_bytes: usize,
    /// The outcome's bodies, headers and tags together, in bytes.
    pub output_bytes: usize,
    /// Log kept per run (host `log` calls and stdout/stderr); the excess is counted, not kept.
    pub log_bytes: usize,
    /// The plugin's key-value space, keys and values together, in bytes.
    pub kv_bytes: usize,
}

impl From<&crate::config::PluginConfig> for Limits {
    fn from(c: &crate::config::PluginConfig) -> Self {
        Limits {
            fuel: c.fuel,
            timeout: Duration::from_millis(c.timeout_ms),
            memory_bytes: (c.memory_mb as usize) << 20,
            output_bytes: c.output_bytes,
            log_bytes: c.log_bytes,
            kv_bytes: c.kv_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 100_000_000,
            timeout: Duration::from_millis(1_000),
            memory_bytes: 32 << 20,
            output_bytes: 1 << 20,
            log_bytes: 16 << 10,
            kv_bytes: 1 << 20,
        }
    }
}

/// Why a run failed. The `reason()` is what is recorded and shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The fuel budget ran out (a loop that does not end, or too much work).
    #[error("fuel_exhausted: the plugin used its whole fuel budget")]
    FuelExhausted,
    /// The deadline passed.
    #[error("timeout: the plugin ran past its deadline")]
    Timeout,
    /// The plugin asked for more memory than its cap.
    #[error("memory_exhausted: the plugin needed more than its memory cap")]
    MemoryExhausted,
    /// The plugin trapped: a panic, `unreachable`, a stack overflow, an out-of-bounds access.
    #[error("trap: {0}")]
    Trap(String),
    /// The plugin answered `err(message)`.
    #[error("plugin_error: {0}")]
    PluginError(String),
    /// The outcome breaks the contract: too big, a header the gateway owns, a forward twice.
    #[error("bad_output: {0}")]
    BadOutput(String),
    /// A forward names an upstream that is not configured for the plugin's merchant.
    #[error("unknown_upstream: {0:?} is not an upstream of this merchant")]
    UnknownUpstream(String),
    /// No instance slot came free before the deadline (the pool is sized so that this needs
    /// more runs at once than the gateway starts; retried like any failure).
    #[error("pool_busy: no instance slot came free before the deadline")]
    PoolBusy,
}

impl Failure {
    /// The short, stable name of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::FuelExhausted => "fuel_exhausted",
            Failure::Timeout => "timeout",
            Failure::MemoryExhausted => "memory_exhausted",
            Failure::Trap(_) => "trap",
            Failure::PluginError(_) => "plugin_error",
            Failure::BadOutput(_) => "bad_output",
            Failure::UnknownUpstream(_) => "unknown_upstream",
            Failure::PoolBusy => "pool_busy",
        }
    }
}

/// Why a component cannot be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a component at all (a core module, or not WebAssembly).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component, but not of the `payflow:plugin` world: a missing export, or an import
    /// the gateway does not provide.
    #[error("not a {WORLD} component: {0}")]
    WrongWorld(String),
    /// The component declares more core instances, memories or tables than one plugin may
    /// (see [`MAX_CORE_INSTANCES_PER_COMPONENT`]).
    #[error("the component is over the sandbox's limits: {0}")]
    TooBig(String),
    /// The engine could not be configured.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `debug`, `info`, `warn`, `error`, or `stdout`/`stderr` for captured output.
    pub level: &'static str,
    /// The text.
    pub message: String,
}

/// What a run did.
#[derive(Debug)]
pub struct Run {
    /// The outcome, or why there is none.
    pub result: Result<Outcome, Failure>,
    /// Fuel used.
    pub fuel_used: u64,
    /// Wall-clock time, instantiation included.
    pub duration: Duration,
    /// The log, up to `Limits::log_bytes`.
    pub logs: Vec<LogLine>,
    /// Log bytes dropped over the cap.
    pub logs_dropped_bytes: usize,
    /// Log lines dropped over the cap.
    pub logs_dropped_lines: usize,
    /// Tags dropped over [`MAX_TAGS`] (kept tags longer than [`MAX_TAG_BYTES`] are cut).
    pub tags_dropped: usize,
}

impl Run {
    /// What the caps dropped from this run, as a line for its log; `None` when nothing was.
    pub fn dropped(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.logs_dropped_lines > 0 || self.logs_dropped_bytes > 0 {
            parts.push(format!(
                "{} more log lines, {} more log bytes dropped (log_bytes cap)",
                self.logs_dropped_lines, self.logs_dropped_bytes
            ));
        }
        if self.tags_dropped > 0 {
            parts.push(format!("{} tags dropped (at most {MAX_TAGS} per run)", self.tags_dropped));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A plugin's key-value space: per merchant and plugin.
pub trait Kv: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value`, unless the space would then exceed `quota_bytes`.
    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), String>;
}

/// Keys and values with their total size (keys and values together) kept up to date, so a
/// quota check costs O(1) however many keys a plugin holds.
#[derive(Debug, Clone, Default)]
pub struct KvMap {
    values: HashMap<String, Vec<u8>>,
    used: usize,
}

impl KvMap {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    /// What `key` takes now (0 when absent).
    pub fn size(&self, key: &str) -> usize {
        self.values.get(key).map_or(0, |v| key.len() + v.len())
    }

    /// Keys and values together.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Stores `value` under `key`, with no quota check.
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        self.used = self.used - self.size(&key) + key.len() + value.len();
        self.values.insert(key, value);
    }
}

impl FromIterator<(String, Vec<u8>)> for KvMap {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(entries: I) -> Self {
        let mut map = KvMap::default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

/// Refuses a write that would take a space using `used` bytes, of which `key` takes `old`, over
/// `quota_bytes`.
pub fn check_quota(
    used: usize,
    old: usize,
    key: &str,
    value: &[u8],
    quota_bytes: usize,
) -> Result<(), String> {
    if used - old + key.len() + value.len() > quota_bytes {
        return Err(format!("kv quota of {quota_bytes} bytes exceeded"));
    }
    Ok(())
}

/// A key-value space in memory (for `plugin run` and tests).
#[derive(Default)]
pub struct MemoryKv(Mutex<KvMap>);

impl Kv for MemoryKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        check_quota(map.used(), map.size(key), key, value, quota_bytes)?;
        map.insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

/// The engine all plugins share: compiled code, the instance pool and the deadline clock.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<RunState>>,
}

impl Runtime {
    /// An engine with fuel, epoch deadlines and the pooling allocator, and a linker with WASI
    /// (nothing granted) and the `host` interface. `instances` is how many instances can be
    /// alive at once: one per plugin thread, plus one per warm plugin (its idle instance).
    ///
    /// The pool is sized for that many instances of the largest component the caps allow, so
    /// no run can ever find it empty because of what another merchant's plugin declared.
    pub fn new(instances: usize) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        // Deep recursion must trap inside the plugin's own stack, long before the host's.
        config.max_wasm_stack(512 << 10);
        let mut pool = PoolingAllocationConfig::default();
        // One spare instance: a warm instance of a version being replaced may briefly overlap
        // its successor's.
        let instances = u32::try_from(instances.max(1) + 1).unwrap_or(u32::MAX / 64);
        pool.max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .total_component_instances(instances)
            .total_core_instances(instances * MAX_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(instances * MAX_TABLES_PER_COMPONENT);
        pool.max_memory_size(256 << 20);
        // Reset the first MiB of a memory slot with memset between runs instead of decommitting
        // it: a fresh instance then costs 13 µs instead of 40 (page faults and TLB shootdowns,
        // bench/plugins.sh). Only slots in use stay resident: about one per concurrent run.
        pool.linear_memory_keep_resident(1 << 20).table_keep_resident(16 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<RunState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        PluginWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        cap_sleeps_at_the_deadline(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        start_epoch_clock(&engine);
        Ok(Runtime { engine, linker: Arc::new(linker) })
    }

    /// Compiles and links a plugin: fails with a clear message for anything that is not a
    /// component of the `payflow:plugin` world (a core module, random bytes, a missing export,
    /// an import the gateway does not provide).
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedPlugin, LoadError> {
        self.compile(bytes).map(|(plugin, _)| plugin)
    }

    /// Like [`Runtime::load`], and also returns the compiled artifact to cache for
    /// [`Runtime::load_compiled`].
    pub fn compile(&self, bytes: &[u8]) -> Result<(LoadedPlugin, Vec<u8>), LoadError> {
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::NotAComponent(
                "this is a core WebAssembly module; build a component (e.g. --target wasm32-wasip2)".into(),
            ));
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(LoadError::NotAComponent("the file is not WebAssembly".into()));
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("exceeds the configured maximum") {
                LoadError::TooBig(text)
            } else {
                LoadError::NotAComponent(text)
            }
        })?;
        let compiled = component.serialize().map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        release_free_memory();
        Ok((self.link(&component)?, compiled))
    }

    /// Loads an artifact from [`Runtime::compile`] without compiling again. Fails (and the
    /// caller compiles the component instead) if it was made by another engine version or
    /// configuration.
    pub fn load_compiled(&self, compiled: &[u8]) -> Result<LoadedPlugin, LoadError> {
        // SAFETY: wasmtime requires that the bytes come from `Component::serialize` of a
        // compatible engine and were not tampered with. They come from our own store (the
        // operator's database, written by `compile`), never from a merchant; wasmtime itself
        // checks the engine version and configuration recorded in them.
        let component = unsafe { Component::deserialize(&self.engine, compiled) }
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        self.link(&component)
    }

    fn link(&self, component: &Component) -> Result<LoadedPlugin, LoadError> {
        let pre =
            self.linker.instantiate_pre(component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok(LoadedPlugin { engine: self.engine.clone(), pre })
    }
}

/// Compiling a component takes tens of megabytes of short-lived allocations (cranelift's
/// arenas, on several threads); mimalloc keeps freed pages for reuse, so a gateway that compiled
/// ten plugins at start would hold ~75 MB it no longer uses. Give them back to the OS. (A no-op
/// for heaps mimalloc does not own, if the binary uses another allocator.)
fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers; `force` frees what every thread's heap can spare.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Advances the engine's epoch every [`EPOCH_TICK`], for deadlines: one thread per engine,
/// which ends once the engine is dropped.
fn start_epoch_clock(engine: &Engine) {
    let engine = engine.weak();
    let _ = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        while let Some(engine) = engine.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
}

/// A compiled, linked plugin, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    engine: Engine,
    pre: PluginPre<RunState>,
}

impl LoadedPlugin {
    /// Runs the plugin on `event` in a fresh instance. Blocking: call from a blocking thread.
    pub fn run(
        &self,
        event: &Event,
        config: &HashMap<String, String>,
        kv: Arc<dyn Kv>,
        limits: &Limits,
    ) -> Run {
        let started = Instant::now();
        let (mut store, output) = self.new_store(config, kv, limits);
        arm(&mut store, limits);
        match self.instantiate(&mut store) {
            Ok(plugin) => call(&mut store, &plugin, event, limits, &output, started),
            Err(error) => finish(&mut store, Err(error), limits, &output, started),
        }
    }

    /// Instantiates in `store`. Should the pool have no slot free (it is sized so that this
    /// does not happen, see [`Runtime::new`]), waits for one until the run's deadline rather
    /// than failing at once.
    fn instantiate(&self, store: &mut Store<RunState>) -> wasmtime::Result<PluginWorld> {
        loop {
            match self.pre.instantiate(&mut *store) {
                Err(e) if e.is::<PoolConcurrencyLimitError>() && Instant::now() < store.data().deadline => {
                    std::thread::sleep(EPOCH_TICK);
                }
                result => return result,
            }
        }
    }

    /// An instance kept for many events (for runtimes whose start-up is costly: JS, Python).
    /// State the plugin keeps in its memory survives between events; fuel, deadline and logs
    /// are per run. After a failed run the instance is discarded and the next run starts afresh.
    pub fn warm(&self, config: &HashMap<String, String>, kv: Arc<dyn Kv>, limits: &Limits) -> WarmInstance {
        WarmInstance { plugin: self.clone(), config: config.clone(), kv, limits: limits.clone(), live: None }
    }

    fn new_store(
        &self,
        config: &HashMap<String, String>,
        kv: Arc<dyn Kv>,
        limits: &Limits,
    ) -> (Store<RunState>, CappedOutput) {
        let output = CappedOutput::new(limits.log_bytes);
        let state = RunState {
            wasi: None,
            output: output.clone(),
            table: ResourceTable::new(),
            limiter: MemoryCap { cap: limits.memory_bytes, used: 0, denied: AtomicBool::new(false) },
            deadline: Instant::now() + limits.timeout,
            deadline_hit: Arc::default(),
            config: config.clone(),
            kv,
            kv_quota: limits.kv_bytes,
            logs: Vec::new(),
            log_room: limits.log_bytes,
            logs_dropped_bytes: 0,
            logs_dropped_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        (store, output)
    }
}

/// See [`LoadedPlugin::warm`].
pub struct WarmInstance {
    plugin: LoadedPlugin,
    config: HashMap<String, String>,
    kv: Arc<dyn Kv>,
    limits: Limits,
    live: Option<(Store<RunState>, PluginWorld, CappedOutput)>,
}

impl WarmInstance {
    /// The key-value space the following runs see (each run may get its own view).
    pub fn set_kv(&mut self, kv: Arc<dyn Kv>) {
        if let Some((store, _, _)) = &mut self.live {
            store.data_mut().kv = kv.clone();
        }
        self.kv = kv;
    }

    /// Runs the plugin on `event`, instantiating it first if needed. Blocking.
    pub fn run(&mut self, event: &Event) -> Run {
        let started = Instant::now();
        let (mut store, plugin, output) = match self.live.take() {
            Some(live) => live,
            None => {
                let (mut store, output) = self.plugin.new_store(&self.config, self.kv.clone(), &self.limits);
                arm(&mut store, &self.limits);
                match self.plugin.instantiate(&mut store) {
                    Ok(plugin) => (store, plugin, output),
                    Err(error) => return finish(&mut store, Err(error), &self.limits, &output, started),
                }
            }
        };
        arm(&mut store, &self.limits);
        let run = call(&mut store, &plugin, event, &self.limits, &output, started);
        if !matches!(
            run.result,
            Err(Failure::FuelExhausted | Failure::Timeout | Failure::MemoryExhausted | Failure::Trap(_))
        ) {
            self.live = Some((store, plugin, output));
        }
        run
    }
}

/// Gives the store a fresh fuel budget, deadline and log allowance for one run.
fn arm(store: &mut Store<RunState>, limits: &Limits) {
    let _ = store.set_fuel(limits.fuel);
    let ticks = limits.timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1) as u64;
    store.set_epoch_deadline(ticks + 1);
    store.epoch_deadline_trap();
    let state = store.data_mut();
    state.deadline = Instant::now() + limits.timeout;
    state.deadline_hit.store(false, Ordering::Relaxed);
    state.logs.clear();
    state.log_room = limits.log_bytes;
    state.logs_dropped_bytes = 0;
    state.logs_dropped_lines = 0;
}

fn call(
    store: &mut Store<RunState>,
    plugin: &PluginWorld,
    event: &Event,
    limits: &Limits,
    output: &CappedOutput,
    started: Instant,
) -> Run {
    let called = plugin.payflow_plugin_handler().call_handle(&mut *store, event);
    finish(store, called, limits, output, started)
}

/// Turns what the call returned into a [`Run`], with the fuel used and the log.
fn finish(
    store: &mut Store<RunState>,
    called: wasmtime::Result<Result<Outcome, String>>,
    limits: &Limits,
    output: &CappedOutput,
    started: Instant,
) -> Run {
    let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let mut tags_dropped = 0;
    let result = match called {
        // A guest woken from a sleep by its deadline may answer before the epoch trap fires:
        // it still ran out of time.
        _ if store.data().deadline_hit.load(Ordering::Relaxed) => Err(Failure::Timeout),
        Ok(Ok(outcome)) => check_output(outcome, limits.output_bytes).map(|outcome| {
            let (outcome, dropped) = bound_texts(outcome);
            tags_dropped = dropped;
            outcome
        }),
        Ok(Err(message)) => Err(Failure::PluginError(truncate(message, MAX_MESSAGE_BYTES))),
        Err(error) => Err(classify(&error, store.data().limiter.denied.swap(false, Ordering::Relaxed))),
    };
    let state = store.data_mut();
    let mut logs = std::mem::take(&mut state.logs);
    let (captured, output_dropped) = output.take();
    if !captured.is_empty() {
        logs.push(LogLine { level: "stdout", message: String::from_utf8_lossy(&captured).into_owned() });
    }
    Run {
        result,
        fuel_used,
        duration: started.elapsed(),
        logs,
        logs_dropped_bytes: state.logs_dropped_bytes + output_dropped,
        logs_dropped_lines: state.logs_dropped_lines,
        tags_dropped,
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with a marker saying how many
/// bytes were cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… [{cut} more bytes cut]"));
    text
}

/// The drop reason and tags of an outcome bounded (see [`MAX_MESSAGE_BYTES`], [`MAX_TAGS`]),
/// and how many tags were dropped.
fn bound_texts(mut outcome: Outcome) -> (Outcome, usize) {
    if let Action::Drop(reason) = &mut outcome.action {
        *reason = truncate(std::mem::take(reason), MAX_MESSAGE_BYTES);
    }
    let dropped = outcome.tags.len().saturating_sub(MAX_TAGS);
    outcome.tags.truncate(MAX_TAGS);
    for tag in &mut outcome.tags {
        *tag = truncate(std::mem::take(tag), MAX_TAG_BYTES);
    }
    (outcome, dropped)
}

fn classify(error: &wasmtime::Error, memory_denied: bool) -> Failure {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Failure::FuelExhausted,
        Some(wasmtime::Trap::Interrupt) => Failure::Timeout,
        _ if memory_denied => Failure::MemoryExhausted,
        _ if error.is::<PoolConcurrencyLimitError>() => Failure::PoolBusy,
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(truncate(format!("{error:#}"), MAX_MESSAGE_BYTES)),
    }
}

/// The outcome within the output cap, naming only what the contract allows.
fn check_output(outcome: Outcome, cap: usize) -> Result<Outcome, Failure> {
    let headers = |hs: &[Header]| hs.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
    let reason = match &outcome.action {
        Action::Drop(reason) => reason.len(),
        Action::Continue => 0,
    };
    let size = reason
        + outcome.body.as_ref().map_or(0, Vec::len)
        + headers(&outcome.headers)
        + outcome.tags.iter().map(String::len).sum::<usize>()
        + outcome
            .forwards
            .iter()
            .map(|f| f.upstream.len() + f.body.as_ref().map_or(0, Vec::len) + headers(&f.headers))
            .sum::<usize>();
    if size > cap {
        return Err(Failure::BadOutput(format!("the outcome is {size} bytes, over the {cap}-byte cap")));
    }
    for header in outcome.headers.iter().chain(outcome.forwards.iter().flat_map(|f| f.headers.iter())) {
        if hyper::header::HeaderName::from_bytes(header.name.as_bytes()).is_err()
            || hyper::header::HeaderValue::from_str(&header.value).is_err()
        {
            return Err(Failure::BadOutput(format!("header {:?} is not a valid HTTP header", header.name)));
        }
    }
    Ok(outcome)
}

/// Caps what an instance holds in every memory and table together (a component may have
/// several core instances, each with its own), and remembers that it refused, so the trap that
/// follows is named. wasmtime asks before creating each memory or table (from 0) and before
/// each growth.
struct MemoryCap {
    cap: usize,
    /// Bytes granted so far, over every memory and table of the store.
    used: usize,
    denied: AtomicBool,
}

impl MemoryCap {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let used = (self.used + desired).saturating_sub(current);
        if used > self.cap {
            self.denied.store(true, Ordering::Relaxed);
            return false;
        }
        self.used = used;
        true
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self
            .grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Granted but not done: wasmtime gives no sizes here, so the grant stays counted. That
        // errs on the safe side (the run can only be refused sooner), and the run fails anyway.
        Ok(())
    }
}

/// Everything one run's store holds.
struct RunState {
    /// Built on the plugin's first WASI call: most plugins make none (a Rust plugin's std only
    /// calls WASI to print), and building one seeds two random generators on every run.
    wasi: Option<WasiCtx>,
    output: CappedOutput,
    table: ResourceTable,
    limiter: MemoryCap,
    /// When this run must end. A guest's sleeps are cut short here (see
    /// [`cap_sleeps_at_the_deadline`]); the epoch deadline stops its computing.
    deadline: Instant,
    /// Set when a sleep was cut short by the deadline: the run has timed out, whatever the
    /// guest answers afterwards.
    deadline_hit: Arc<AtomicBool>,
    config: HashMap<String, String>,
    kv: Arc<dyn Kv>,
    kv_quota: usize,
    logs: Vec<LogLine>,
    log_room: usize,
    logs_dropped_bytes: usize,
    logs_dropped_lines: usize,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        let ctx = self.wasi.get_or_insert_with(|| {
            WasiCtxBuilder::new()
                .stdout(output.clone())
                .stderr(output.clone())
                .wall_clock(FixedWallClock)
                .monotonic_clock(ProcessClock)
                .build()
        });
        WasiCtxView { ctx, table: &mut self.table }
    }
}

impl RunState {
    fn log_line(&mut self, level: &'static str, message: String) {
        let cost = message.len() + LOG_LINE_OVERHEAD;
        if cost > self.log_room {
            self.logs_dropped_bytes += message.len();
            self.logs_dropped_lines += 1;
            return;
        }
        self.log_room -= cost;
        self.logs.push(LogLine { level, message });
    }
}

/// `wasi:clocks/wall-clock` as the contract promises it: plugins are deterministic (as
/// Shopify's Functions are), so the same event and kv give the same outcome on a replay or a
/// dry run. The event carries its own times (`received-at-ms`, the body's `created_at`); the
/// wall clock always reads the Unix epoch.
struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// `wasi:clocks/monotonic-clock`: nanoseconds since this process's first plugin run, so that
/// [`cap_sleeps_at_the_deadline`] can turn a guest's instant into a host one.
struct ProcessClock;

fn process_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl HostMonotonicClock for ProcessClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        process_epoch().elapsed().as_nanos() as u64
    }
}

/// The WASI version whose `monotonic-clock` [`cap_sleeps_at_the_deadline`] replaces: the one
/// wasmtime-wasi links (older 0.2 guests are served by it too).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces `subscribe-duration` and `subscribe-instant` of WASI's monotonic clock with ones
/// whose pollable is ready no later than the run's deadline. The epoch deadline stops a guest
/// that computes, but not one blocked in the host: a guest sleeping on the clock (e.g.
/// `std::thread::sleep`) would hold its plugin thread for as long as it asked, past its
/// `timeout_ms` and past shutdown. Sleeping is the only way a guest can block here: stdin is
/// empty, stdout and stderr never wait, and no socket or file is granted.
fn cap_sleeps_at_the_deadline(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store: StoreContextMut<'_, RunState>, (nanos,): (u64,)| {
        Ok((sleep_until_deadline(store, Duration::from_nanos(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", |store: StoreContextMut<'_, RunState>, (when,): (u64,)| {
        let now = ProcessClock.now();
        Ok((sleep_until_deadline(store, Duration::from_nanos(when.saturating_sub(now)))?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

fn sleep_until_deadline(
    mut store: StoreContextMut<'_, RunState>,
    wanted: Duration,
) -> wasmtime::Result<Resource<DynPollable>> {
    let state = store.data_mut();
    let now = Instant::now();
    let left = state.deadline.saturating_duration_since(now);
    let sleep = if wanted.is_zero() {
        Sleep::Yield { yielded: false }
    } else if wanted < left {
        Sleep::Until { at: now + wanted, hits_deadline: None }
    } else {
        Sleep::Until { at: state.deadline, hits_deadline: Some(state.deadline_hit.clone()) }
    };
    let sleep = state.table.push(sleep)?;
    wasmtime_wasi::p2::subscribe(&mut state.table, sleep)
}

/// A guest's sleep, as [`sleep_until_deadline`] bounded it.
enum Sleep {
    /// A zero-length sleep: yields once, as WASI's own does (a guest polling in a loop with a
    /// zero timeout must not starve the reactor).
    Yield { yielded: bool },
    /// Ready at `at`; when that is the run's deadline, the flag records that it was reached.
    Until { at: Instant, hits_deadline: Option<Arc<AtomicBool>> },
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        match self {
            Sleep::Yield { yielded: true } => {}
            Sleep::Yield { yielded } => {
                *yielded = true;
                tokio::task::yield_now().await;
            }
            Sleep::Until { at, hits_deadline } => {
                tokio::time::sleep_until((*at).into()).await;
                if let Some(flag) = hits_deadline {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

impl bindings::payflow::plugin::types::Host for RunState {}

impl bindings::payflow::plugin::host::Host for RunState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.log_line(level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.kv.set(&key, &value, self.kv_quota)
    }
}

/// The plugin's stdout and stderr: kept up to a cap, the rest counted and dropped. Writes never
/// fail (a failing stdout would make Rust's `println!` panic, turning a chatty plugin into a
/// broken one).
#[derive(Clone)]
struct CappedOutput {
    cap: usize,
    kept: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CappedOutput {
    fn new(cap: usize) -> Self {
        CappedOutput { cap, kept: Arc::default() }
    }

    fn push(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(kept.0.len()).min(bytes.len());
        kept.0.extend_from_slice(&bytes[..room]);
        kept.1 += bytes.len() - room;
    }

    /// What was kept, and how many bytes were dropped.
    fn take(&self) -> (Vec<u8>, usize) {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}
