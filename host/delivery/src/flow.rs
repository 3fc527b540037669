//! Flow control per upstream, in front of its workers: a rate limit (a token bucket) and a
//! circuit breaker. A worker asks for a [`Permit`] before it takes a delivery, so while the
//! breaker is open (or the bucket empty) deliveries stay queued and no attempt is made, none
//! counted against `max_attempts`. After the attempt the worker tells the breaker how it went.
//! This module only admits; it never sends, reads or records anything.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use payflow_config::{BreakerConfig, Rate};
use payflow_metrics::Counter;

/// A breaker's state, as metrics (`payflow_edge_breaker_state`: 0, 1, 2) and the admin API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sending.
    Closed,
    /// Not sending until the cool-down is over.
    Open,
    /// One probe in flight; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// As shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// As the gauge reads it.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// See the module docs. Without `rate` and `breaker` every permit is granted at once.
pub struct Flow {
    bucket: Option<Mutex<Bucket>>,
    breaker: Option<Breaker>,
    /// Wakes workers waiting for the breaker (a probe finished).
    changed: Notify,
    /// What it did, for metrics.
    pub counts: FlowCounts,
}

/// Flow control's counts: `payflow_edge_rate_limited_total`, `payflow_edge_breaker_transitions_total`.
#[derive(Debug, Default)]
pub struct FlowCounts {
    /// Deliveries that waited for a token.
    pub rate_limited: Counter,
    /// The breaker opened (from closed or half-open).
    pub opened: Counter,
    /// The breaker let one probe through.
    pub half_opened: Counter,
    /// The breaker closed after a successful probe.
    pub closed: Counter,
}

struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

struct Breaker {
    config: BreakerConfig,
    state: Mutex<BreakerInner>,
}

#[derive(Clone, Copy)]
enum BreakerInner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Leave to make one delivery attempt. Give it back with [`Flow::finished`] (the attempt was
/// made) or [`Flow::unused`] (there was nothing to deliver after all).
#[derive(Debug)]
#[must_use]
pub struct Permit {
    probe: bool,
}

impl Flow {
    /// Flow control with this rate and breaker (either may be absent).
    pub fn new(rate: Option<Rate>, breaker: Option<BreakerConfig>) -> Self {
        Flow {
            bucket: rate
                .map(|rate| Mutex::new(Bucket { rate, tokens: f64::from(rate.burst), at: Instant::now() })),
            breaker: breaker
                .map(|config| Breaker { config, state: Mutex::new(BreakerInner::Closed { failures: 0 }) }),
            changed: Notify::new(),
            counts: FlowCounts::default(),
        }
    }

    /// The breaker's state (closed when there is none).
    pub fn state(&self) -> BreakerState {
        match self.breaker.as_ref().map(|b| *lock(&b.state)) {
            None | Some(BreakerInner::Closed { .. }) => BreakerState::Closed,
            Some(BreakerInner::Open { .. }) => BreakerState::Open,
            Some(BreakerInner::HalfOpen) => BreakerState::HalfOpen,
        }
    }

    /// Whether new work should be fetched now: not while the breaker is open (what is
    /// fetched would only wait in memory, its claim ageing).
    pub fn accepting(&self) -> bool {
        match self.breaker.as_ref().map(|b| *lock(&b.state)) {
            Some(BreakerInner::Open { until }) => Instant::now() >= until,
            _ => true,
        }
    }

    /// Waits until an attempt may start: the breaker closed (or this is its probe), then a
    /// token.
    pub async fn admit(&self) -> Permit {
        let probe = self.pass_breaker().await;
        self.take_token().await;
        Permit { probe }
    }

    async fn pass_breaker(&self) -> bool {
        let Some(breaker) = &self.breaker else { return false };
        loop {
            let changed = self.changed.notified();
            let wait = {
                let mut state = lock(&breaker.state);
                match *state {
                    BreakerInner::Closed { .. } => return false,
                    BreakerInner::Open { until } if Instant::now() >= until => {
                        *state = BreakerInner::HalfOpen;
                        self.counts.half_opened.inc();
                        tracing::info!("circuit breaker half-open: one probe goes through");
                        return true;
                    }
                    BreakerInner::Open { until } => Some(until),
                    BreakerInner::HalfOpen => None,
                }
            };
            match wait {
                Some(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = changed => {}
                },
                None => changed.await,
            }
        }
    }

    async fn take_token(&self) {
        let Some(bucket) = &self.bucket else { return };
        let mut waited = false;
        loop {
            let wait = {
                let mut b = lock(bucket);
                let now = Instant::now();
                let refill = now.duration_since(b.at).as_secs_f64() * b.rate.per_second;
                b.tokens = (b.tokens + refill).min(f64::from(b.rate.burst));
                b.at = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    if waited {
                        self.counts.rate_limited.inc();
                    }
                    return;
                }
                Duration::from_secs_f64((1.0 - b.tokens) / b.rate.per_second)
            };
            waited = true;
            tokio::time::sleep(wait).await;
        }
    }

    /// The permit was not used (nothing was waiting): its token goes back, and a probe's
    /// turn goes to the next worker.
    pub fn unused(&self, permit: Permit) {
        if let Some(bucket) = &self.bucket {
            let mut b = lock(bucket);
            b.tokens = (b.tokens + 1.0).min(f64::from(b.rate.burst));
        }
        if let (true, Some(breaker)) = (permit.probe, &self.breaker) {
            *lock(&breaker.state) = BreakerInner::Open { until: Instant::now() };
            self.changed.notify_waiters();
        }
    }

    /// The attempt made under `permit` ended; `failed` when it is one the breaker counts
    /// (retryable: 408, 429, 5xx, no answer). A permanent refusal (another 4xx) is an answer,
    /// and counts as the upstream being up.
    pub fn finished(&self, permit: Permit, failed: bool) {
        let Some(breaker) = &self.breaker else { return };
        let mut state = lock(&breaker.state);
        let open = || BreakerInner::Open {
            until: Instant::now() + Duration::from_millis(breaker.config.cool_down_ms),
        };
        match (*state, failed) {
            (BreakerInner::HalfOpen, true) if permit.probe => {
                *state = open();
                self.counts.opened.inc();
                tracing::warn!("circuit breaker re-opened: the probe failed");
            }
            (BreakerInner::HalfOpen, false) if permit.probe => {
                *state = BreakerInner::Closed { failures: 0 };
                self.counts.closed.inc();
                tracing::info!("circuit breaker closed: the probe succeeded");
            }
            (BreakerInner::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= breaker.config.failures {
                    *state = open();
                    self.counts.opened.inc();
                    tracing::warn!(failures, "circuit breaker opened");
                } else {
                    *state = BreakerInner::Closed { failures };
                }
            }
            (BreakerInner::Closed { .. }, false) => *state = BreakerInner::Closed { failures: 0 },
            // An attempt that started before the breaker opened: its outcome changes nothing.
            _ => return,
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, cool_down_ms: u64) -> Flow {
        Flow::new(None, Some(BreakerConfig { failures, cool_down_ms }))
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_in_a_row_then_lets_one_probe_through() {
        let flow = breaker(3, 1_000);
        for _ in 0..2 {
            let p = flow.admit().await;
            flow.finished(p, true);
        }
        let p = flow.admit().await;
        flow.finished(p, false); // a success resets the count
        for _ in 0..3 {
            assert_eq!(flow.state(), BreakerState::Closed);
            let p = flow.admit().await;
            flow.finished(p, true);
        }
        assert_eq!(flow.state(), BreakerState::Open);
        assert!(!flow.accepting());
        let opened = Instant::now();
        let probe = flow.admit().await;
        assert!(opened.elapsed() >= Duration::from_millis(1_000), "admitted before the cool-down");
        assert_eq!(flow.state(), BreakerState::HalfOpen);
        // A second worker waits while the probe is out.
        let second = tokio::time::timeout(Duration::from_secs(60), flow.admit()).await;
        assert!(second.is_err(), "two attempts while half-open");
        flow.finished(probe, true);
        assert_eq!(flow.state(), BreakerState::Open, "a failed probe re-opens");
        let probe = flow.admit().await;
        flow.finished(probe, false);
        assert_eq!(flow.state(), BreakerState::Closed);
        let counts = &flow.counts;
        assert_eq!((counts.opened.get(), counts.half_opened.get(), counts.closed.get()), (2, 2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_probe_passes_the_turn_on() {
        let flow = breaker(1, 10);
        let p = flow.admit().await;
        flow.finished(p, true);
        let probe = flow.admit().await;
        flow.unused(probe);
        let again = tokio::time::timeout(Duration::from_secs(1), flow.admit()).await;
        assert!(again.expect("the turn was passed on").probe);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_admits_a_burst_then_the_rate() {
        let flow = Flow::new(Rate::parse("10/s"), None);
        let start = Instant::now();
        for _ in 0..10 {
            let p = flow.admit().await;
            flow.finished(p, false);
        }
        assert!(start.elapsed() < Duration::from_millis(1), "the burst waited");
        for _ in 0..20 {
            let p = flow.admit().await;
            flow.finished(p, false);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1_990) && took < Duration::from_millis(2_100), "{took:?}");
        assert_eq!(flow.counts.rate_limited.get(), 20);
    }
}
