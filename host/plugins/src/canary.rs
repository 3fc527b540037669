//! A canary rollout: a new version runs on a fixed share of events beside the active one, and
//! is rolled back by itself when it fails clearly more often than the active version.
//!
//! Which version an event gets is decided by its id alone ([`bucket`]), so every replica and
//! every retry of an event picks the same one; a retried event that failed on the canary is
//! retried on it again until the canary ends. The [`Watch`] keeps the outcome of each
//! version's last `window` runs; once the canary has a full window, it compares failure rates.
//! Drops are decisions, not failures: only a run that failed (trap, fuel, deadline, bad
//! output…) counts. This module decides; it never touches the store (the registry records the
//! end).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::registry::Version;

/// A version taking `percent` of the events.
pub struct CanaryVersion {
    /// The version tried.
    pub version: Arc<Version>,
    /// Its share, 1 to 100.
    pub percent: u8,
}

impl CanaryVersion {
    /// Whether the event with this id goes to the canary.
    pub fn takes(&self, event_id: &str) -> bool {
        bucket(event_id) < self.percent
    }
}

/// An event's bucket, 0 to 99, from its id (FNV-1a): the same on every replica and every build,
/// unlike the standard library's randomly keyed hasher.
pub fn bucket(event_id: &str) -> u8 {
    let hash = event_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % 100) as u8
}

/// The last runs of the active version and of the canary, and when to roll back.
pub struct Watch {
    window: usize,
    margin_percent: u32,
    /// Whether each run failed, newest last: [active, canary].
    runs: [VecDeque<bool>; 2],
    last_failure: Option<String>,
}

impl Watch {
    /// A watch over the last `window` runs of each, rolling back when the canary's failure rate
    /// exceeds the active version's by more than `margin_percent` points.
    pub fn new(window: usize, margin_percent: u32) -> Watch {
        Watch { window: window.max(1), margin_percent, runs: Default::default(), last_failure: None }
    }

    /// Counts one run (`failure`: its reason, when it failed). On the canary's, answers why it
    /// must be rolled back, once its window is full and its failure rate is too high.
    pub fn observe(&mut self, on_canary: bool, failure: Option<&str>) -> Option<String> {
        let runs = &mut self.runs[usize::from(on_canary)];
        runs.push_back(failure.is_some());
        if runs.len() > self.window {
            runs.pop_front();
        }
        if on_canary {
            if let Some(f) = failure {
                self.last_failure = Some(f.to_string());
            }
        }
        if !on_canary || self.runs[1].len() < self.window {
            return None;
        }
        let failed = |runs: &VecDeque<bool>| runs.iter().filter(|f| **f).count();
        let (c, a) = (failed(&self.runs[1]), failed(&self.runs[0]));
        let (cn, an) = (self.runs[1].len(), self.runs[0].len());
        let rate = |f: usize, n: usize| (f * 100).checked_div(n).unwrap_or(0) as u32;
        (rate(c, cn) > rate(a, an) + self.margin_percent).then(|| {
            format!(
                "the canary failed {c} of its last {cn} runs ({}%) against {a} of {an} for the active version ({}%), \
                 more than the {}-point margin; last failure: {}",
                rate(c, cn),
                rate(a, an),
                self.margin_percent,
                self.last_failure.as_deref().unwrap_or("none")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_always_lands_in_the_same_bucket_and_shares_come_out_about_right() {
        assert_eq!(bucket("evt_1"), bucket("evt_1"));
        let ids: Vec<String> = (0..10_000).map(|i| format!("evt_{i:05}")).collect();
        let share = ids.iter().filter(|id| bucket(id) < 10).count();
        assert!((800..1200).contains(&share), "10% of 10,000 ids took {share}");
        assert!(ids.iter().all(|id| bucket(id) < 100));
    }

    #[test]
    fn the_canary_is_rolled_back_only_once_its_window_shows_it_failing_beyond_the_margin() {
        let mut watch = Watch::new(10, 20);
        for _ in 0..10 {
            assert_eq!(watch.observe(false, None), None);
        }
        // Two failures in ten (the last two): 20%, not more than 0% + 20 points.
        for i in 0..10 {
            let failure = (i >= 8).then_some("trap: boom");
            assert_eq!(watch.observe(true, failure), None, "run {i}");
        }
        // A third failure in the window: 30% > 20%.
        let why = watch.observe(true, Some("trap: unreachable")).expect("rolled back");
        assert!(why.contains("3 of its last 10 runs (30%)") && why.contains("trap: unreachable"), "{why}");
    }

    #[test]
    fn a_canary_no_worse_than_a_failing_active_version_stays() {
        let mut watch = Watch::new(4, 10);
        for _ in 0..4 {
            watch.observe(false, Some("timeout"));
        }
        for _ in 0..4 {
            assert_eq!(watch.observe(true, Some("timeout")), None, "no worse than the active version");
        }
    }
}
