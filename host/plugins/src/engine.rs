//! The engine every plugin shares: wasmtime's configuration, the pooling allocator's
//! instance pool (sized to the plugin threads and warm plugins, so no run finds it empty
//! because of another merchant's plugin), the epoch clock that enforces deadlines, and
//! compiling or loading a component. It must never run a plugin: that is [`crate::instance`].

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::clocks::cap_sleeps_at_the_deadline;
use crate::failure::LoadError;
use crate::host::RunState;
use crate::instance::LoadedPlugin;
use crate::limits::{MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLES_PER_COMPONENT};
use crate::{PluginPre, PluginWorld};

/// How often the deadline clock ticks. A run's deadline is rounded up to whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine all plugins share: compiled code, the instance pool and the deadline clock.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<RunState>>,
    fingerprint: Arc<str>,
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
        Ok(Runtime { fingerprint: fingerprint(&engine).into(), engine, linker: Arc::new(linker) })
    }

    /// What a compiled artifact of this engine is stored under: engines with the same one (the
    /// same wasmtime version, settings and target) can load each other's artifacts; others
    /// compile their own.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
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

    pub(crate) fn link(&self, component: &Component) -> Result<LoadedPlugin, LoadError> {
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
pub(crate) fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers; `force` frees what every thread's heap can spare.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Advances the engine's epoch every [`EPOCH_TICK`], for deadlines: one thread per engine,
/// which ends once the engine is dropped.
pub(crate) fn start_epoch_clock(engine: &Engine) {
    let engine = engine.weak();
    let _ = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        while let Some(engine) = engine.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
}

/// Hex SHA-256 (its first 16 bytes) of what wasmtime hashes to decide whether an artifact is
/// loadable. SHA-256 rather than `DefaultHasher`, whose output may change between Rust
/// releases: two builds of one engine must agree.
fn fingerprint(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only the SHA-256 is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut sha = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut sha);
    sha.0.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}
