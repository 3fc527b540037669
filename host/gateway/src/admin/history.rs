//! The dashboard's rate chart over the last hour. Every [`STEP_MS`] the running totals of each
//! merchant (requests received, deliveries made, failures) are written down, so a page opened
//! or reloaded draws the last hour at once instead of starting empty.
//!
//! Kept in memory by each process: it starts again with the process, and with several replicas
//! each one's chart shows the traffic it served. It must never grow with traffic: it holds one
//! row of totals per merchant per step, for one hour.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// How often the totals are written down: the chart's resolution.
pub const STEP_MS: i64 = 10_000;
/// One hour of steps, plus the one the first bucket starts from.
const KEPT: usize = 361;

/// Running totals of one merchant (or of a scope's merchants, added up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Webhook requests to its endpoints, accepted or refused.
    pub received: u64,
    /// Successful delivery attempts.
    pub delivered: u64,
    /// Refused requests plus failed delivery attempts.
    pub failed: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.failed += other.failed;
    }
}

/// What happened between two instants.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Start, unix ms.
    pub from_ms: i64,
    /// End, unix ms.
    pub to_ms: i64,
    /// Counts in this bucket (not rates: the dashboard divides by its length).
    #[serde(flatten)]
    pub counts: Totals,
}

/// The totals written down so far, oldest first.
#[derive(Default)]
pub struct RateHistory {
    snapshots: Mutex<VecDeque<(i64, BTreeMap<String, Totals>)>>,
}

impl RateHistory {
    /// Writes down every merchant's totals at `at_ms`.
    pub fn record(&self, at_ms: i64, totals: BTreeMap<String, Totals>) {
        let mut snapshots = self.snapshots.lock().expect("history lock");
        if snapshots.len() == KEPT {
            snapshots.pop_front();
        }
        snapshots.push_back((at_ms, totals));
    }

    /// The buckets between the snapshots, then the one from the last snapshot to `now`
    /// (`current` being the totals now), for the merchants `visible` admits.
    pub fn buckets(
        &self,
        visible: impl Fn(&str) -> bool,
        now_ms: i64,
        current: &BTreeMap<String, Totals>,
    ) -> Vec<Bucket> {
        let sum = |totals: &BTreeMap<String, Totals>| {
            let mut sum = Totals::default();
            for (_, t) in totals.iter().filter(|(m, _)| visible(m)) {
                sum += *t;
            }
            sum
        };
        let snapshots = self.snapshots.lock().expect("history lock");
        let points: Vec<(i64, Totals)> = snapshots
            .iter()
            .map(|(at, totals)| (*at, sum(totals)))
            .chain(std::iter::once((now_ms, sum(current))))
            .collect();
        points
            .windows(2)
            .filter(|pair| pair[1].0 > pair[0].0)
            .map(|pair| {
                let ((from_ms, a), (to_ms, b)) = (pair[0], pair[1]);
                Bucket {
                    from_ms,
                    to_ms,
                    counts: Totals {
                        // Totals only grow; saturate anyway so a surprise never underflows.
                        received: b.received.saturating_sub(a.received),
                        delivered: b.delivered.saturating_sub(a.delivered),
                        failed: b.failed.saturating_sub(a.failed),
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(&str, u64)]) -> BTreeMap<String, Totals> {
        pairs
            .iter()
            .map(|(m, n)| (m.to_string(), Totals { received: *n, delivered: n / 2, failed: 0 }))
            .collect()
    }

    #[test]
    fn buckets_are_differences_per_scope_and_end_now() {
        let history = RateHistory::default();
        history.record(0, totals(&[("acme", 0), ("globex", 0)]));
        history.record(10_000, totals(&[("acme", 10), ("globex", 100)]));
        let now = totals(&[("acme", 14), ("globex", 100)]);
        let acme = history.buckets(|m| m == "acme", 12_000, &now);
        assert_eq!(
            acme,
            vec![
                Bucket {
                    from_ms: 0,
                    to_ms: 10_000,
                    counts: Totals { received: 10, delivered: 5, failed: 0 }
                },
                Bucket {
                    from_ms: 10_000,
                    to_ms: 12_000,
                    counts: Totals { received: 4, delivered: 2, failed: 0 }
                },
            ]
        );
        let all = history.buckets(|_| true, 12_000, &now);
        assert_eq!(all[0].counts.received, 110);
        assert_eq!(all[1].counts.received, 4);
    }

    #[test]
    fn history_keeps_one_hour_however_long_it_runs() {
        let history = RateHistory::default();
        for step in 0..2_000 {
            history.record(step * STEP_MS, totals(&[("acme", step as u64)]));
        }
        let buckets = history.buckets(|_| true, 2_000 * STEP_MS, &totals(&[("acme", 2_000)]));
        assert_eq!(buckets.len(), KEPT);
        assert_eq!(buckets[0].from_ms, (2_000 - KEPT as i64) * STEP_MS);
        assert!(buckets.iter().all(|b| b.counts.received == 1));
    }
}
