//! Running a plugin: a fresh instance per event from the pre-linked `PluginPre` (or a
//! reused warm instance for heavy runtimes), armed with its fuel, deadline and caps, and the
//! call's result turned into a [`Run`]. It must never run on the async reactor: a run may
//! compute for its whole deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store};

use crate::engine::EPOCH_TICK;
use crate::failure::{classify, Failure};
use crate::host::RunState;
use crate::kv::Kv;
use crate::limits::{Limits, MemoryCap};
use crate::log_stream::CappedOutput;
use crate::output::{bound_texts, check_output, truncate, MAX_MESSAGE_BYTES};
use crate::run::{LogLine, Run};
use crate::{Event, Outcome, PluginPre, PluginWorld};

/// A compiled, linked plugin, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) engine: Engine,
    pub(crate) pre: PluginPre<RunState>,
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
    pub(crate) fn instantiate(&self, store: &mut Store<RunState>) -> wasmtime::Result<PluginWorld> {
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

    pub(crate) fn new_store(
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
            kv_reads_left: crate::kv::MAX_READS_PER_RUN,
            kv_writes_left: crate::kv::MAX_WRITES_PER_RUN,
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
    pub(crate) plugin: LoadedPlugin,
    pub(crate) config: HashMap<String, String>,
    pub(crate) kv: Arc<dyn Kv>,
    pub(crate) limits: Limits,
    pub(crate) live: Option<(Store<RunState>, PluginWorld, CappedOutput)>,
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

/// Gives the store a fresh fuel budget, deadline, log allowance and kv calls for one run.
pub(crate) fn arm(store: &mut Store<RunState>, limits: &Limits) {
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
    state.kv_reads_left = crate::kv::MAX_READS_PER_RUN;
    state.kv_writes_left = crate::kv::MAX_WRITES_PER_RUN;
}

pub(crate) fn call(
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
pub(crate) fn finish(
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
