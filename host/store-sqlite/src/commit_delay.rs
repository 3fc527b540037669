//! How long a write that finds the store's writer idle waits for other writes to share its
//! commit (PostgreSQL calls this `commit_delay`).
//!
//! Under steady traffic that is not a burst (a few thousand events a second), nearly every
//! commit carried one or two writes, so each paid a whole commit: its fsync, its WAL frames and
//! the wake-ups of the threads around it. Waiting a millisecond for company cut the gateway's
//! CPU per event by a quarter at 2,000 events/s, a sixth at 4,000 and a tenth at 8,000
//! (bench/RESULTS.md, issue 21).
//!
//! It must never hold up a write that has no company coming: a write after a quiet spell
//! (no commit within the delay) goes at once, and once a wait gathered nothing, the following
//! writes go at once too, with a new try only every [`PROBE_EVERY`] of them. So a lone client
//! writing one event after another is not slowed down by the delay. Nor is a burst: a writer
//! whose last commit carried [`SMALL_BATCH`] acknowledgements or more has company enough, and a
//! wait would only hold up senders that are each waiting for their answer before they send
//! again. It only decides: the caller waits, and never while other writes are already queued.

use std::time::{Duration, Instant};

/// A commit carrying this many acknowledged writes or more is a busy writer's: the next one
/// does not wait. In a burst at 64 connections commits carried ~20; at a steady 2,000 events
/// a second, about three.
pub const SMALL_BATCH: usize = 8;

/// After a wait that gathered nothing, how many idle-writer writes go at once before the
/// next wait is tried: a lone sequential client pays the delay on one write in this many.
pub const PROBE_EVERY: u32 = 16;

/// The commit-delay decision, kept by one writer.
#[derive(Debug, Clone)]
pub struct CommitDelay {
    delay: Duration,
    last_commit: Option<Instant>,
    /// How many acknowledged writes the last commit with any of them carried.
    last_acks: usize,
    /// Whether the last wait gathered another write.
    paid_off: bool,
    /// Waits declined since one gathered nothing.
    declined: u32,
}

impl CommitDelay {
    /// A delay of zero never waits.
    pub fn new(delay: Duration) -> Self {
        CommitDelay { delay, last_commit: None, last_acks: 0, paid_off: true, declined: 0 }
    }

    /// A write reached the idle writer at `now`: how long to wait for others before committing,
    /// if at all.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let recent = self.last_commit.is_some_and(|at| now.saturating_duration_since(at) < self.delay);
        if self.delay.is_zero() || !recent || self.last_acks >= SMALL_BATCH {
            return None;
        }
        if !self.paid_off && self.declined < PROBE_EVERY {
            self.declined += 1;
            return None;
        }
        self.declined = 0;
        Some(self.delay)
    }

    /// What a wait brought: `gathered` other writes arrived during it.
    pub fn waited(&mut self, gathered: usize) {
        self.paid_off = gathered > 0;
    }

    /// A commit carrying `acks` acknowledged writes ended at `now`. One that carried only
    /// delivery records says nothing of how busy ingress is: in a burst, records commit alone
    /// between the acknowledgements' commits.
    pub fn committed(&mut self, now: Instant, acks: usize) {
        self.last_commit = Some(now);
        if acks > 0 {
            self.last_acks = acks;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_write_after_a_quiet_spell_goes_at_once() {
        let t0 = Instant::now();
        let mut delay = CommitDelay::new(MS);
        assert_eq!(delay.wait(t0), None, "nothing committed yet");
        delay.committed(t0, 1);
        assert_eq!(delay.wait(t0 + 2 * MS), None, "the last commit is older than the delay");
    }

    #[test]
    fn a_write_soon_after_a_commit_waits_the_delay() {
        let t0 = Instant::now();
        let mut delay = CommitDelay::new(MS);
        delay.committed(t0, 1);
        assert_eq!(delay.wait(t0 + MS / 2), Some(MS));
    }

    #[test]
    fn a_write_after_a_busy_commit_goes_at_once() {
        let t0 = Instant::now();
        let mut delay = CommitDelay::new(MS);
        delay.committed(t0, SMALL_BATCH);
        assert_eq!(delay.wait(t0), None);
        delay.committed(t0, 0);
        assert_eq!(delay.wait(t0), None, "a commit of records alone leaves ingress as busy");
        delay.committed(t0, SMALL_BATCH - 1);
        assert_eq!(delay.wait(t0), Some(MS));
    }

    #[test]
    fn a_zero_delay_never_waits() {
        let t0 = Instant::now();
        let mut delay = CommitDelay::new(Duration::ZERO);
        delay.committed(t0, 1);
        assert_eq!(delay.wait(t0), None);
    }

    #[test]
    fn a_wait_that_gathered_nothing_stops_the_waits_until_a_probe() {
        let t0 = Instant::now();
        let mut delay = CommitDelay::new(MS);
        delay.committed(t0, 1);
        assert_eq!(delay.wait(t0), Some(MS));
        delay.waited(0);
        let declined = (0..PROBE_EVERY).filter(|_| delay.wait(t0).is_none()).count();
        assert_eq!(declined, PROBE_EVERY as usize, "a lone client is not held up");
        assert_eq!(delay.wait(t0), Some(MS), "then one write tries again");
        delay.waited(2);
        assert_eq!(delay.wait(t0), Some(MS), "company came: keep waiting");
    }
}
