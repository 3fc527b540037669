//! What one run may use and what one component may declare: the [`Limits`] of a run (fuel,
//! deadline, memory, output and log caps) and the memory cap that holds across every memory
//! and table of an instance. It must never decide what happens to a run that oversteps them:
//! it only refuses, and `failure` names the refusal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;

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
pub(crate) const TABLE_ELEMENT_BYTES: usize = 8;

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

impl From<&payflow_config::PluginConfig> for Limits {
    fn from(c: &payflow_config::PluginConfig) -> Self {
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

/// Caps what an instance holds in every memory and table together (a component may have
/// several core instances, each with its own), and remembers that it refused, so the trap that
/// follows is named. wasmtime asks before creating each memory or table (from 0) and before
/// each growth.
pub(crate) struct MemoryCap {
    pub(crate) cap: usize,
    /// Bytes granted so far, over every memory and table of the store.
    pub(crate) used: usize,
    pub(crate) denied: AtomicBool,
}

impl MemoryCap {
    pub(crate) fn grow(&mut self, current: usize, desired: usize) -> bool {
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
