//! payflow-clock: time, behind a trait so tests can drive it. The request path and the dispatcher read the
//! clock only through [`Clock`]; nothing else in the gateway calls `SystemTime::now`.
//!
//! A clock gives two readings, because they answer to different parties. [`Clock::wall_secs`] is
//! the wall clock as it reads now: signatures' timestamps and their tolerance, `Retry-After`
//! dates and secrets' expiry are compared with other machines' clocks, so they must follow the
//! wall clock even when it is set back. [`Clock::now_ms`] is what the gateway stamps its own
//! records with (receipt, attempts, due times, replays, leases). The gateway wraps its clock in
//! [`NonDecreasing`], so that within one process no stamp is earlier than one taken before it
//! when the wall clock is stepped back (by up to [`HOLD_AT_MOST`]): the store decides by
//! comparing stamps whether an attempt began before a replay (`payflow_store::takes_outcome!`),
//! and a step back between the two must not make an attempt look later than the replay that
//! came after it. Stamps must never be used for what another machine checks against its clock.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds: the gateway's stamps. Through [`NonDecreasing`], never earlier
    /// than a reading before it.
    fn now_ms(&self) -> i64;

    /// Unix time in seconds as the wall clock reads now, for what other machines compare with
    /// theirs (signatures, `Retry-After` dates, expiry). May go back when the wall clock is set back.
    fn wall_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock whose stamps ([`Clock::now_ms`]) do not go back through a step back of up to
/// [`HOLD_AT_MOST`]: the stamps hold at the latest they gave until the clock inside has caught
/// up, and follow it again from there. A step forward is followed at once, and so is a step back
/// longer than that (logged): a correction, not a step as NTP makes them. Its
/// [`Clock::wall_secs`] is the inner clock's, unheld.
///
/// Holding, rather than running on from the latest stamp at the pace of a monotonic clock,
/// keeps the stamps on the wall clock's time: stamps stay comparable with those already stored
/// and with other replicas'. The price of a step back by Δ is that what falls due within Δ
/// after the step (a retry, a replay) waits until the wall clock has caught up, as the rows
/// stamped before the step wait anyway. The hold lasts as long as the process: after a restart
/// no attempt of the old process is under way, so there is nothing for a stamp to come after.
#[derive(Debug)]
pub struct NonDecreasing<C: ?Sized> {
    latest: AtomicI64,
    inner: std::sync::Arc<C>,
}

impl<C: Clock + ?Sized> NonDecreasing<C> {
    /// Stamps from `inner`, never going back.
    pub fn new(inner: std::sync::Arc<C>) -> Self {
        NonDecreasing { latest: AtomicI64::new(i64::MIN), inner }
    }
}

/// The longest step back [`NonDecreasing`] holds through. A step as NTP makes them is a
/// fraction of a second, and a VM resumed or a clock set by hand is seconds off; holding through
/// those keeps a replay from being lost to an attempt under way. A clock hours ahead that is put
/// right would hold every retry and replay for those hours: it is followed instead, at the risk
/// of that one race on SQLite during the correction (PostgreSQL's leases do not rest on clocks).
pub const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

impl<C: Clock + ?Sized> Clock for NonDecreasing<C> {
    fn now_ms(&self) -> i64 {
        let now = self.inner.now_ms();
        // Read first: the latest stamp changes once a millisecond, and a plain load keeps the
        // threads that stamp in the same millisecond from writing one shared line each time.
        let mut latest = self.latest.load(Ordering::Relaxed);
        loop {
            if now > latest {
                return self.latest.fetch_max(now, Ordering::Relaxed).max(now);
            }
            if latest - now <= HOLD_AT_MOST.as_millis() as i64 {
                return latest;
            }
            match self.latest.compare_exchange_weak(latest, now, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    tracing::warn!(
                        back_ms = latest - now,
                        "the system clock went back further than stamps hold through; they follow it. \
                         A delivery replayed while its attempt was under way may need replaying again"
                    );
                    return now;
                }
                Err(current) => latest = current,
            }
        }
    }

    fn wall_secs(&self) -> i64 {
        self.inner.wall_secs()
    }
}

/// A clock that stands still until told to move: tests drive time with it instead of sleeping.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Stopped at `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }

    /// Moves it by `ms`: forward, or back when negative.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The system's clock, set forward or back by steps a test chooses, as an administrator or
/// NTP steps a machine's clock: time runs on at its own pace around the steps.
#[derive(Debug, Default)]
pub struct SteppedClock(AtomicI64);

impl SteppedClock {
    /// Sets it forward by `ms`, or back when negative.
    pub fn step(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for SteppedClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stamps_hold_while_the_clock_is_set_back_and_follow_it_once_caught_up() {
        let wall = Arc::new(ManualClock::at(10_000));
        let stamps = NonDecreasing::new(wall.clone());
        assert_eq!(stamps.now_ms(), 10_000);
        wall.advance(-3_000);
        assert_eq!(stamps.now_ms(), 10_000, "held, not 7,000");
        wall.advance(2_999);
        assert_eq!(stamps.now_ms(), 10_000, "still held at 9,999");
        wall.advance(2);
        assert_eq!(stamps.now_ms(), 10_001, "followed once past");
        wall.advance(60_000);
        assert_eq!(stamps.now_ms(), 70_001, "a step forward is followed at once");
    }

    #[test]
    fn a_step_back_longer_than_the_hold_is_followed_at_once() {
        let wall = Arc::new(ManualClock::at(10_000_000));
        let stamps = NonDecreasing::new(wall.clone());
        assert_eq!(stamps.now_ms(), 10_000_000);
        let hold = HOLD_AT_MOST.as_millis() as i64;
        wall.advance(-hold);
        assert_eq!(stamps.now_ms(), 10_000_000, "held through a step of exactly the hold");
        wall.advance(-1);
        assert_eq!(stamps.now_ms(), 10_000_000 - hold - 1, "a longer one is followed");
        wall.advance(-1);
        assert_eq!(stamps.now_ms(), 10_000_000 - hold - 1, "and held from there");
        wall.advance(-3_600_000);
        assert_eq!(stamps.now_ms(), 10_000_000 - hold - 3_600_002, "an hour back: a correction");
    }

    #[test]
    fn the_wall_reading_goes_back_with_the_clock_while_stamps_hold() {
        let wall = Arc::new(ManualClock::at(10_000_000));
        let stamps = NonDecreasing::new(wall.clone());
        assert_eq!((stamps.now_ms(), stamps.wall_secs()), (10_000_000, 10_000));
        wall.advance(-30_000);
        assert_eq!((stamps.now_ms(), stamps.wall_secs()), (10_000_000, 9_970));
    }

    #[test]
    fn stamps_taken_on_many_threads_never_go_back_on_any_of_them() {
        let wall = Arc::new(SteppedClock::default());
        let stamps = Arc::new(NonDecreasing::new(wall.clone()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stamps = stamps.clone();
                std::thread::spawn(move || {
                    let mut last = i64::MIN;
                    for _ in 0..200_000 {
                        let now = stamps.now_ms();
                        assert!(now >= last, "{now} after {last}");
                        last = now;
                    }
                })
            })
            .collect();
        for _ in 0..100 {
            wall.step(-1_000);
            std::thread::yield_now();
            wall.step(999);
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
    }
}
