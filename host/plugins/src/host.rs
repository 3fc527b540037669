//! The host side of the WIT contract: one run's store state (WASI with nothing granted, the
//! kv overlay, the log) and the `payflow:plugin/host` functions a guest may call. It must never
//! hand a guest anything but its own configuration, kv and log.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::clocks::{FixedWallClock, ProcessClock};
use crate::kv::{Kv, MAX_READS_PER_RUN, MAX_WRITES_PER_RUN};
use crate::limits::MemoryCap;
use crate::log_stream::CappedOutput;
use crate::output::LOG_LINE_OVERHEAD;
use crate::run::LogLine;
use crate::{bindings, Level};

/// Everything one run's store holds.
pub(crate) struct RunState {
    /// Built on the plugin's first WASI call: most plugins make none (a Rust plugin's std only
    /// calls WASI to print), and building one seeds two random generators on every run.
    pub(crate) wasi: Option<WasiCtx>,
    pub(crate) output: CappedOutput,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    /// When this run must end. A guest's sleeps are cut short here (see
    /// [`cap_sleeps_at_the_deadline`]); the epoch deadline stops its computing.
    pub(crate) deadline: Instant,
    /// Set when a sleep was cut short by the deadline: the run has timed out, whatever the
    /// guest answers afterwards.
    pub(crate) deadline_hit: Arc<AtomicBool>,
    pub(crate) config: HashMap<String, String>,
    pub(crate) kv: Arc<dyn Kv>,
    pub(crate) kv_quota: usize,
    /// `kv-get` calls the run may still make ([`crate::kv::MAX_READS_PER_RUN`]).
    pub(crate) kv_reads_left: usize,
    /// `kv-set` calls the run may still make ([`crate::kv::MAX_WRITES_PER_RUN`]).
    pub(crate) kv_writes_left: usize,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_room: usize,
    pub(crate) logs_dropped_bytes: usize,
    pub(crate) logs_dropped_lines: usize,
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
    /// Stops the run (a trap) if its kv space was not loaded for it: the caller makes it again
    /// with the space loaded ([`Kv::available`]).
    fn kv_available(&self) -> wasmtime::Result<()> {
        if self.kv.available() {
            Ok(())
        } else {
            Err(wasmtime::Error::msg("the plugin's kv space was not loaded for this run"))
        }
    }

    pub(crate) fn log_line(&mut self, level: &'static str, message: String) {
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

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.kv_available()?;
        self.kv_reads_left = self.kv_reads_left.checked_sub(1).ok_or_else(|| {
            wasmtime::Error::msg(format!(
                "kv_reads: a run may read kv at most {MAX_READS_PER_RUN} times (keep what one event needs under fewer keys)"
            ))
        })?;
        Ok(self.kv.get(&key))
    }

    // The WIT boundary: the guest gets the refusal as text.
    fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        self.kv_available()?;
        let Some(left) = self.kv_writes_left.checked_sub(1) else {
            return Ok(Err(format!(
                "kv_writes: a run may write kv at most {MAX_WRITES_PER_RUN} times (keep what one event needs under fewer keys)"
            )));
        };
        self.kv_writes_left = left;
        Ok(self.kv.set(&key, &value, self.kv_quota).map_err(|e| e.to_string()))
    }
}
