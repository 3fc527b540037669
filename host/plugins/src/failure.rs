//! Why a run failed or a component cannot be loaded, as operators see it (`reason()`), and the
//! mapping from wasmtime's errors to those reasons. It must never leak host details (paths,
//! addresses) into a reason.

use wasmtime::PoolConcurrencyLimitError;

use crate::output::{truncate, MAX_MESSAGE_BYTES};
use crate::WORLD;

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
    /// (see [`crate::limits::MAX_CORE_INSTANCES_PER_COMPONENT`]).
    #[error("the component is over the sandbox's limits: {0}")]
    TooBig(String),
    /// The engine could not be configured.
    #[error("plugin engine: {0}")]
    Engine(String),
}

pub(crate) fn classify(error: &wasmtime::Error, memory_denied: bool) -> Failure {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Failure::FuelExhausted,
        Some(wasmtime::Trap::Interrupt) => Failure::Timeout,
        _ if memory_denied => Failure::MemoryExhausted,
        _ if error.is::<PoolConcurrencyLimitError>() => Failure::PoolBusy,
        Some(trap) => Failure::Trap(trap.to_string()),
        // A host function's refusal (a limit): its own words, not the wasm backtrace wasmtime
        // wraps it in, which would push them past what an operator reads first.
        None => Failure::Trap(truncate(error.root_cause().to_string(), MAX_MESSAGE_BYTES)),
    }
}
