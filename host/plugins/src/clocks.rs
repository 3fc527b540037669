//! WASI clocks as the contract promises them: a wall clock fixed at the Unix epoch (plugins are
//! deterministic), and a monotonic clock whose sleeps end at the run's deadline so a guest that
//! blocks cannot hold its thread past it. It must never let a guest observe the host's time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use crate::host::RunState;

/// `wasi:clocks/wall-clock` as the contract promises it: plugins are deterministic (as
/// Shopify's Functions are), so the same event and kv give the same outcome on a replay or a
/// dry run. The event carries its own times (`received-at-ms`, the body's `created_at`); the
/// wall clock always reads the Unix epoch.
pub(crate) struct FixedWallClock;

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
pub(crate) struct ProcessClock;

pub(crate) fn process_epoch() -> Instant {
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
pub(crate) const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces `subscribe-duration` and `subscribe-instant` of WASI's monotonic clock with ones
/// whose pollable is ready no later than the run's deadline. The epoch deadline stops a guest
/// that computes, but not one blocked in the host: a guest sleeping on the clock (e.g.
/// `std::thread::sleep`) would hold its plugin thread for as long as it asked, past its
/// `timeout_ms` and past shutdown. Sleeping is the only way a guest can block here: stdin is
/// empty, stdout and stderr never wait, and no socket or file is granted.
pub(crate) fn cap_sleeps_at_the_deadline(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
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

pub(crate) fn sleep_until_deadline(
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
pub(crate) enum Sleep {
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
