//! payflow-plugins: the sandbox merchant plugins run in, and the only crate that compiles
//! wasmtime. Plugins are WebAssembly components of the `payflow:plugin` world
//! (`wit/plugin.wit`).
//!
//! A plugin gets nothing it was not given: WASI is linked with nothing granted (no preopened
//! directories, environment, arguments or network; stdout and stderr go into the run's log,
//! capped), and the only other imports are the gateway's `host` interface ([`host`]). Each run
//! has a fuel budget, a wall-clock deadline (epoch interruption), a memory cap and output and
//! log caps ([`limits`]); overstepping any of them fails that run with a named [`Failure`],
//! never the gateway. Each event gets a fresh instance ([`instance`]) from a pre-linked
//! component compiled by the shared [`Runtime`] ([`engine`]), so no state leaks between events
//! except through the plugin's own key-value space ([`kv`]). Above the sandbox, the
//! [`Registry`] holds each merchant's plugin versions, the [`Scheduler`] shares the plugin
//! threads fairly between merchants, and a [`chain`] runs an endpoint's plugins in order.
//!
//! This crate must never run a plugin on the async reactor (callers use a blocking thread: a
//! plugin may compute for its whole deadline), never hands a plugin anything but the event it
//! is asked to handle, and knows nothing of HTTP or of how the store is built.

pub mod canary;
pub mod chain;
pub mod registry;
pub mod replica_turn;
mod scheduler;
pub mod stats;
pub mod trial;

pub use chain::{ChainInput, ChainOutcome, ChainResult};
pub use engine::Runtime;
pub use failure::{Failure, LoadError};
pub use instance::{LoadedPlugin, WarmInstance};
pub use kv::{check_quota, Kv, KvMap, KvQuotaExceeded, MemoryKv};
pub use limits::{
    Limits, MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLES_PER_COMPONENT,
};
pub use output::{truncate, MAX_MESSAGE_BYTES, MAX_TAGS, MAX_TAG_BYTES};
pub use registry::{PluginStatus, Registry, RegistryError, Slot};
pub use run::{LogLine, Run};
pub use scheduler::Scheduler;
pub use trial::{Side, SideFigures, SideRun, Trial, TrialEvent, TrialReport};

// Generated from the WIT: its docs are the WIT's.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "payflow:plugin/plugin",
        // A dry run compares two versions' outcomes field by field.
        additional_derives: [PartialEq],
        // A run over a kv space not loaded for it is stopped at its first kv call (`chain`).
        imports: {
            "payflow:plugin/host.kv-get": trappable,
            "payflow:plugin/host.kv-set": trappable,
        },
    });
}

pub(crate) use bindings::payflow::plugin::host::Level;
pub use bindings::payflow::plugin::types::{Action, Event, Forward, Header, Outcome};
pub(crate) use bindings::{Plugin as PluginWorld, PluginPre};

mod clocks;
pub mod engine;
mod event;
mod failure;
pub mod host;
pub mod instance;
pub mod kv;
pub mod kv_space;
pub mod limits;
mod log_stream;
mod output;
mod run;
pub mod run_log;

/// The WIT package this gateway runs.
pub const WORLD: &str = "payflow:plugin/plugin@0.1.0";
