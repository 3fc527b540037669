//! Run statistics per plugin version: runs by outcome, and the median and 99th percentile of
//! time and fuel over the version's most recent runs. What the API, the dashboard and the
//! metrics show, so a merchant can compare a new version with the one before it (and a dry
//! run's two sides use the same [`RunPercentiles`]). It must never hold more than
//! [`RECENT_RUNS`] samples per version.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Runs per version the percentiles are taken over: enough for a stable p99, bounded memory.
pub const RECENT_RUNS: usize = 1000;

/// Median and 99th percentile of time and fuel over a set of runs: a version's latest, or one
/// side of a dry run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunPercentiles {
    /// Time per run in µs, median.
    pub time_us_p50: u64,
    /// Time per run in µs, 99th percentile.
    pub time_us_p99: u64,
    /// Fuel per run, median.
    pub fuel_p50: u64,
    /// Fuel per run, 99th percentile.
    pub fuel_p99: u64,
}

impl RunPercentiles {
    /// The percentiles of runs given as (µs, fuel).
    pub fn of(runs: impl Iterator<Item = (u64, u64)> + Clone) -> RunPercentiles {
        let time = || runs.clone().map(|r| r.0);
        let fuel = || runs.clone().map(|r| r.1);
        RunPercentiles {
            time_us_p50: quantile(time(), 0.5),
            time_us_p99: quantile(time(), 0.99),
            fuel_p50: quantile(fuel(), 0.5),
            fuel_p99: quantile(fuel(), 0.99),
        }
    }
}

/// The `q` quantile (0 to 1) of `values`, nearest rank; 0 for none.
pub fn quantile(values: impl IntoIterator<Item = u64>, q: f64) -> u64 {
    let mut v: Vec<u64> = values.into_iter().collect();
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0)
}

/// One version's runs since the gateway started.
#[derive(Default)]
pub struct VersionStats {
    outcomes: BTreeMap<String, u64>,
    /// (µs, fuel) of the latest runs, newest last.
    recent: VecDeque<(u64, u64)>,
}

impl VersionStats {
    /// Counts a run.
    pub fn record(&mut self, outcome: &str, duration_us: u64, fuel: u64) {
        *self.outcomes.entry(outcome.to_string()).or_default() += 1;
        if self.recent.len() == RECENT_RUNS {
            self.recent.pop_front();
        }
        self.recent.push_back((duration_us, fuel));
    }

    /// Its figures, as shown.
    pub fn figures(&self, version: u32) -> VersionFigures {
        let failed =
            self.outcomes.iter().filter(|(o, _)| *o != "continue" && *o != "drop").map(|(_, n)| n).sum();
        VersionFigures {
            version,
            runs: self.outcomes.values().sum(),
            failed,
            outcomes: self.outcomes.clone(),
            latest: RunPercentiles::of(self.recent.iter().copied()),
        }
    }
}

/// A version's figures since the gateway started.
#[derive(Debug, Clone, Serialize)]
pub struct VersionFigures {
    /// The version.
    pub version: u32,
    /// Runs.
    pub runs: u64,
    /// Runs that failed (neither `continue` nor `drop`).
    pub failed: u64,
    /// Runs by outcome: `continue`, `drop`, or a failure's reason.
    pub outcomes: BTreeMap<String, u64>,
    /// Over the latest [`RECENT_RUNS`] runs.
    #[serde(flatten)]
    pub latest: RunPercentiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_outcomes_and_take_percentiles_over_the_latest_runs_only() {
        let mut stats = VersionStats::default();
        for i in 0..(RECENT_RUNS as u64 + 500) {
            // The first 500 runs are slow; only the latest RECENT_RUNS count for percentiles.
            let us = if i < 500 { 1_000_000 } else { i };
            stats.record(if i % 10 == 0 { "trap" } else { "continue" }, us, 7);
        }
        let f = stats.figures(3);
        assert_eq!((f.version, f.runs, f.failed), (3, 1500, 150));
        assert_eq!(f.outcomes["continue"], 1350);
        assert!(f.latest.time_us_p99 < 1_000_000, "an evicted slow run counted: {f:?}");
        assert_eq!((f.latest.fuel_p50, f.latest.fuel_p99), (7, 7));
        assert_eq!(quantile([5, 1, 3], 0.5), 3);
        assert_eq!(quantile([], 0.99), 0);
    }
}
