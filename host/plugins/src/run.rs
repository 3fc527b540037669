//! What one run did: its outcome or failure, its log and what was dropped to keep it within
//! its caps. Plain data, no wasmtime types, so callers above the sandbox can keep it.

use std::time::Duration;

use crate::failure::Failure;
use crate::output::MAX_TAGS;
use crate::Outcome;

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `debug`, `info`, `warn`, `error`, or `stdout`/`stderr` for captured output.
    pub level: &'static str,
    /// The text.
    pub message: String,
}

/// What a run did.
#[derive(Debug)]
pub struct Run {
    /// The outcome, or why there is none.
    pub result: Result<Outcome, Failure>,
    /// Fuel used.
    pub fuel_used: u64,
    /// Wall-clock time, instantiation included.
    pub duration: Duration,
    /// The log, up to `Limits::log_bytes`.
    pub logs: Vec<LogLine>,
    /// Log bytes dropped over the cap.
    pub logs_dropped_bytes: usize,
    /// Log lines dropped over the cap.
    pub logs_dropped_lines: usize,
    /// Tags dropped over [`crate::MAX_TAGS`] (kept tags longer than [`crate::MAX_TAG_BYTES`] are cut).
    pub tags_dropped: usize,
}

impl Run {
    /// What the caps dropped from this run, as a line for its log; `None` when nothing was.
    pub fn dropped(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.logs_dropped_lines > 0 || self.logs_dropped_bytes > 0 {
            parts.push(format!(
                "{} more log lines, {} more log bytes dropped (log_bytes cap)",
                self.logs_dropped_lines, self.logs_dropped_bytes
            ));
        }
        if self.tags_dropped > 0 {
            parts.push(format!("{} tags dropped (at most {MAX_TAGS} per run)", self.tags_dropped));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}
