//! The threads plugins run on, shared fairly between merchants.
//!
//! Plugins run synchronously (wasmtime, fuel and an epoch deadline) on a small pool of plain
//! threads at lowered CPU priority, never on the async reactor: a plugin that computes for its
//! whole deadline delays only plugin work, never an acknowledgement.
//!
//! Fairness: each merchant has its own queue and a running total of the time its jobs took.
//! A free worker takes the next job of the merchant with the least time used (start-time fair
//! queueing, as in Linux's CFS), and a merchant that was idle starts level with the busy ones
//! instead of with credit saved up. No merchant may hold every worker at once: one is always
//! left for the others, so a merchant whose plugins all spin to their deadline slows only
//! itself. This module must never look inside a job; it only orders them.
//!
//! Idle jobs (dry runs of a candidate version, [`Scheduler::submit_idle`]) never take a worker:
//! they run one at a time on a thread of their own under Linux's `SCHED_IDLE` policy, which
//! gets CPU only when no other thread of the machine wants it. That alone still let them into
//! every short gap of the live pipeline, where they evict its caches, so the idle thread also:
//! - starts a job at once only when no live job is queued or running; while one is, it takes
//!   at most one job per [`IDLE_LIVE_PACE`], so a dry run still ends under sustained load;
//! - steps back for a while after a job that had to wait for CPU.
//!
//! A dry run therefore slows down while live traffic keeps the plugins busy, rather than
//! slowing the traffic (bench/RESULTS.md measured a dry run on the workers' lowered priority
//! cutting live deliveries sevenfold).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Merchant {
    /// Time its jobs have used, in the scheduler's virtual clock.
    used: Duration,
    jobs: VecDeque<Job>,
    running: usize,
}

impl Merchant {
    /// Whether its next job could start now, under the per-merchant cap.
    fn runnable(&self, cap: usize) -> bool {
        !self.jobs.is_empty() && self.running < cap
    }
}

#[derive(Default)]
struct State {
    merchants: HashMap<String, Merchant>,
    stopping: bool,
    /// Workers waiting on `ready`.
    idle: usize,
}

impl State {
    /// Whether a live job is queued or running.
    fn live_work(&self) -> bool {
        self.merchants.values().any(|m| m.running > 0 || !m.jobs.is_empty())
    }

    /// Whether some queued job could start now.
    fn runnable(&self, cap: usize) -> bool {
        self.merchants.values().any(|m| m.runnable(cap))
    }
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    workers: usize,
    /// Idle jobs, for the idle thread (see the module docs); `None` once stopping.
    idle: Mutex<Option<VecDeque<Job>>>,
    idle_ready: Condvar,
}

impl Shared {
    /// Jobs one merchant may run at once: all but one worker (see the module docs).
    fn cap(&self) -> usize {
        if self.workers > 1 {
            self.workers - 1
        } else {
            1
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts `workers` threads (at least 1), with `setup` run first on each (e.g. to lower its
    /// priority).
    pub fn start(workers: usize, setup: fn()) -> std::io::Result<Scheduler> {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            ready: Condvar::new(),
            workers,
            idle: Mutex::new(Some(VecDeque::new())),
            idle_ready: Condvar::new(),
        });
        let idle = shared.clone();
        std::thread::Builder::new().name("payflow-plugin-idle".into()).spawn(move || {
            idle_priority();
            work_when_idle(&idle);
        })?;
        for i in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("payflow-plugin-{i}")).spawn(move || {
                setup();
                work(&shared);
            })?;
        }
        Ok(Scheduler { shared })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Queues `job` for `merchant`; the receiver gets its result.
    pub fn submit<T: Send + 'static>(
        &self,
        merchant: &str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.stopping {
            return rx; // dropped sender: the caller sees the scheduler stopped
        }
        let level =
            state.merchants.values().filter(|m| !m.jobs.is_empty() || m.running > 0).map(|m| m.used).min();
        let m = state.merchants.entry(merchant.to_string()).or_default();
        if m.jobs.is_empty() && m.running == 0 {
            // Idle time earns no credit.
            m.used = m.used.max(level.unwrap_or_default());
        }
        m.jobs.push_back(job);
        // Wake a worker only if one is idle and the job can start now: a job held back by its
        // merchant's cap is taken by that merchant's running worker when it finishes. (Waking
        // one for nothing costs a futex call here and two context switches there, per event.)
        let wake = m.runnable(self.shared.cap()) && state.idle > 0;
        drop(state);
        if wake {
            self.shared.ready.notify_one();
        }
        rx
    }

    /// Queues `job` for the idle thread (see the module docs); the receiver gets its result,
    /// or an error if the scheduler stopped first. A job whose receiver is dropped before it
    /// starts never runs: a dry run given up on (timed out, its client gone) leaves no work
    /// behind to take idle CPU later.
    pub fn submit_idle<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(job());
            }
        });
        if let Some(jobs) = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            jobs.push_back(job);
            self.shared.idle_ready.notify_one();
        }
        rx
    }

    /// Stops the workers once the jobs already queued are done.
    pub fn stop(&self) {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).stopping = true;
        self.shared.ready.notify_all();
        // Dry runs not started are dropped: their callers see the scheduler stopped.
        *self.shared.idle.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.idle_ready.notify_all();
    }
}

/// Puts the calling thread under `SCHED_IDLE` (Linux): it runs only on CPU nothing else
/// wants. Elsewhere, or if refused, it keeps the priority it has.
pub(crate) fn idle_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on the calling thread (pid 0), with a parameter that outlives it;
    // `sched_param` is plain integers (musl's has more fields than glibc's), so zeroes are a
    // valid value, priority 0 as SCHED_IDLE requires.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!("could not put the dry-run thread under SCHED_IDLE");
        }
    }
}

/// The longest the idle thread steps back after a job that had to wait for CPU.
const IDLE_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// While live jobs keep the workers busy, the idle thread takes one job per this long. A dry
/// run's job is one plugin run (tens of µs in a warm instance, about a millisecond fresh), so
/// this leaves live work all but a few percent of a core, and a thousand-event dry run still
/// ends in about half a minute under sustained load.
pub(crate) const IDLE_LIVE_PACE: Duration = Duration::from_millis(16);

/// CPU time the calling thread has used (Linux; elsewhere wall-clock time since a fixed
/// instant).
pub(crate) fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given, which outlives the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn work_when_idle(shared: &Shared) {
    let lock = || shared.idle.lock().unwrap_or_else(|p| p.into_inner());
    let mut idle = lock();
    loop {
        let Some(jobs) = idle.as_mut() else { return };
        if jobs.is_empty() {
            idle = shared.idle_ready.wait(idle).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        if shared.state.lock().unwrap_or_else(|p| p.into_inner()).live_work() {
            // Live plugin work under way: one job per pace (see the module docs).
            drop(idle);
            std::thread::sleep(IDLE_LIVE_PACE);
            idle = lock();
        }
        let Some(job) = idle.as_mut().and_then(VecDeque::pop_front) else { continue };
        drop(idle);
        run_idle_job(job);
        idle = lock();
    }
}

/// Runs one idle job, then steps back if it had to wait for CPU.
fn run_idle_job(job: Job) {
    let (started, cpu) = (Instant::now(), thread_cpu_time());
    job();
    let (wall, cpu) = (started.elapsed(), thread_cpu_time().saturating_sub(cpu));
    // A job that waited for CPU more than it used means other threads want it: step back as
    // long again, so the gaps between live bursts stay theirs. On an idle machine a job waits
    // for nothing and the next starts at once.
    if cpu * 2 < wall {
        std::thread::sleep(wall.min(IDLE_BACKOFF_MAX));
    }
}

fn work(shared: &Shared) {
    let cap = shared.cap();
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let next = state
            .merchants
            .iter_mut()
            .filter(|(_, m)| m.runnable(cap))
            .min_by_key(|(_, m)| m.used)
            .map(|(id, m)| (id.clone(), m));
        let Some((merchant, m)) = next else {
            if state.stopping && state.merchants.values().all(|m| m.jobs.is_empty()) {
                // The others may be waiting for work that will not come.
                shared.ready.notify_all();
                return;
            }
            state.idle += 1;
            state = shared.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            state.idle -= 1;
            continue;
        };
        let job = m.jobs.pop_front().expect("filtered on non-empty");
        m.running += 1;
        // What this worker leaves behind that could start now (a job that waited on its
        // merchant's cap, or a second merchant's) goes to an idle worker.
        let wake = state.idle > 0 && state.runnable(cap);
        drop(state);
        if wake {
            shared.ready.notify_one();
        }
        let started = Instant::now();
        job();
        let took = started.elapsed();
        state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = state.merchants.get_mut(&merchant) {
            m.running -= 1;
            m.used += took;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one merchant's jobs each taking 20 ms and queued first, another merchant's cheap
    /// jobs still start long before the slow backlog is through.
    #[test]
    fn a_slow_merchant_does_not_starve_another() {
        let scheduler = Scheduler::start(2, || {}).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..20 {
            let order = order.clone();
            waits.push(scheduler.submit("slow", move || {
                std::thread::sleep(Duration::from_millis(20));
                order.lock().unwrap().push(format!("slow{i}"));
            }));
        }
        for i in 0..5 {
            let order = order.clone();
            waits.push(scheduler.submit("fast", move || order.lock().unwrap().push(format!("fast{i}"))));
        }
        for w in waits {
            w.blocking_recv().unwrap();
        }
        let order = order.lock().unwrap();
        let last_fast = order.iter().rposition(|s| s.starts_with("fast")).unwrap();
        // "slow" may hold one of the two workers at a time, so "fast" runs on the other at once.
        assert!(last_fast < 8, "fast jobs waited behind the slow backlog: {order:?}");
        scheduler.stop();
    }

    /// Workers are woken only for work that can start; none may be left asleep beside it.
    /// Many short jobs of four merchants, submitted from three threads to three workers, all
    /// run.
    #[test]
    fn every_job_runs_though_workers_are_woken_only_for_runnable_work() {
        let scheduler = Scheduler::start(3, || {}).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..3 {
            let (scheduler, done) = (scheduler.clone(), done.clone());
            std::thread::spawn(move || {
                let waits: Vec<_> =
                    (0..300).map(|i| scheduler.submit(&format!("m{}", (t + i) % 4), move || i)).collect();
                for w in waits {
                    w.blocking_recv().unwrap();
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..3 {
            finished.recv_timeout(Duration::from_secs(60)).expect("a queued job was never run");
        }
        scheduler.stop();
    }

    /// Idle jobs never take a worker: with the only worker held by a live job, idle jobs
    /// still run, on their own thread, one at a time, but only one per `IDLE_LIVE_PACE` while
    /// that live job runs; and a stopped scheduler takes none.
    #[test]
    fn idle_jobs_run_on_their_own_thread_one_at_a_time_and_slowly_beside_live_work() {
        let scheduler = Scheduler::start(1, || {}).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = scheduler.submit("m", move || {
            let _ = held.recv();
        });
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let idle: Vec<_> = (0..4)
            .map(|_| {
                let running = running.clone();
                scheduler.submit_idle(move || {
                    let at_once = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    std::thread::sleep(Duration::from_millis(1));
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    (at_once, std::thread::current().name().map(str::to_string))
                })
            })
            .collect();
        for done in idle {
            let (at_once, thread) = done.blocking_recv().expect("ran while the only worker was held");
            assert_eq!((at_once, thread.as_deref()), (1, Some("payflow-plugin-idle")));
        }
        // Each waited out the pace first: sleeps are never shorter than asked.
        assert!(started.elapsed() >= IDLE_LIVE_PACE * 4, "idle jobs ran at full speed beside live work");
        release.send(()).unwrap();
        blocker.blocking_recv().unwrap();
        scheduler.stop();
        assert!(scheduler.submit_idle(|| 1).blocking_recv().is_err(), "a stopped scheduler takes no dry run");
    }

    /// An idle job whose receiver was dropped while it waited (its dry run timed out, or its
    /// client went away) is skipped, and the jobs behind it still run.
    #[test]
    fn an_idle_job_given_up_on_before_it_starts_never_runs() {
        let scheduler = Scheduler::start(1, || {}).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = scheduler.submit_idle(move || {
            let _ = held.recv();
        });
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let given_up = {
            let ran = ran.clone();
            scheduler.submit_idle(move || ran.store(true, std::sync::atomic::Ordering::SeqCst))
        };
        drop(given_up);
        release.send(()).unwrap();
        blocker.blocking_recv().unwrap();
        assert_eq!(scheduler.submit_idle(|| 7).blocking_recv(), Ok(7), "the job behind it did not run");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "a job nobody waited for still ran");
        scheduler.stop();
    }

    #[test]
    fn stopped_scheduler_refuses_new_jobs() {
        let scheduler = Scheduler::start(1, || {}).unwrap();
        scheduler.stop();
        assert!(scheduler.submit("m", || 1).blocking_recv().is_err());
    }
}
