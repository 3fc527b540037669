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

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

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

/// What one run may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wasm fuel (roughly, instructions).
    pub fuel: u64,
    /// Wall-clock time for the whole run, instantiation included.
    pub timeout: Duration,
    /// Linear memory, in bytes.
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
    /// (nothing granted) and the `host` interface.
    pub fn new() -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        // Deep recursion must trap inside the plugin's own stack, long before the host's.
        config.max_wasm_stack(512 << 10);
        let mut pool = PoolingAllocationConfig::default();
        // Enough slots for a burst of concurrent runs; memory is capped per run by the limiter.
        pool.total_component_instances(256).total_core_instances(1024).total_memories(512).total_tables(1024);
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
        let component =
            Component::new(&self.engine, bytes).map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?;
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
        match self.pre.instantiate(&mut store) {
            Ok(plugin) => call(&mut store, &plugin, event, limits, &output, started),
            Err(error) => finish(&mut store, Err(error), limits, &output, started),
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
            limiter: MemoryCap { cap: limits.memory_bytes, denied: AtomicBool::new(false) },
            config: config.clone(),
            kv,
            kv_quota: limits.kv_bytes,
            logs: Vec::new(),
            log_room: limits.log_bytes,
            logs_dropped_bytes: 0,
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
                match self.plugin.pre.instantiate(&mut store) {
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
    state.logs.clear();
    state.log_room = limits.log_bytes;
    state.logs_dropped_bytes = 0;
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
    let result = match called {
        Ok(Ok(outcome)) => check_output(outcome, limits.output_bytes),
        Ok(Err(message)) => Err(Failure::PluginError(message)),
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
    }
}

fn classify(error: &wasmtime::Error, memory_denied: bool) -> Failure {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Failure::FuelExhausted,
        Some(wasmtime::Trap::Interrupt) => Failure::Timeout,
        _ if memory_denied => Failure::MemoryExhausted,
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(format!("{error:#}")),
    }
}

/// The outcome within the output cap, naming only what the contract allows.
fn check_output(outcome: Outcome, cap: usize) -> Result<Outcome, Failure> {
    let headers = |hs: &[Header]| hs.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
    let size = outcome.body.as_ref().map_or(0, Vec::len)
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

/// Caps linear memory, and remembers that it refused, so the trap that follows is named.
struct MemoryCap {
    cap: usize,
    denied: AtomicBool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
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
    config: HashMap<String, String>,
    kv: Arc<dyn Kv>,
    kv_quota: usize,
    logs: Vec<LogLine>,
    log_room: usize,
    logs_dropped_bytes: usize,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        let ctx = self.wasi.get_or_insert_with(|| {
            WasiCtxBuilder::new().stdout(output.clone()).stderr(output.clone()).build()
        });
        WasiCtxView { ctx, table: &mut self.table }
    }
}

impl RunState {
    fn log_line(&mut self, level: &'static str, message: String) {
        if message.len() > self.log_room {
            self.logs_dropped_bytes += message.len();
            return;
        }
        self.log_room -= message.len();
        self.logs.push(LogLine { level, message });
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
