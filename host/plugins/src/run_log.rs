//! The latest runs' log lines of one plugin, numbered in the order they were written, for
//! `plugin logs NAME --follow`: a reader asks for the lines after the last number it saw. The
//! lines are also recorded with each run in the store (`GET /api/events/{id}`); this is the
//! live view. It must never hold more than [`MAX_LINES`] lines or [`MAX_BYTES`] of text.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use payflow_store::PluginRunInfo;

/// Lines kept per plugin.
pub const MAX_LINES: usize = 2000;
/// Text kept per plugin: a chatty plugin's lines push out older ones, not the gateway's memory.
pub const MAX_BYTES: usize = 1 << 20;

/// One line, with the run it came from.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Its number: 1, 2, … since the gateway started.
    pub seq: u64,
    /// When its run started, unix ms.
    pub at_ms: i64,
    /// The version that ran.
    pub version: u32,
    /// The event it ran on.
    pub event_id: String,
    /// `debug`, `info`, `warn`, `error`, `stdout`, `stderr`, or `gateway` (the run's drop or
    /// failure, said by the gateway).
    pub level: String,
    /// The text.
    pub message: String,
}

#[derive(Default)]
struct Lines {
    last: u64,
    bytes: usize,
    kept: VecDeque<LogEntry>,
}

/// See the module docs.
#[derive(Default)]
pub struct RunLog(Mutex<Lines>);

impl RunLog {
    /// Adds a run's lines, and a `gateway` line saying how it ended unless it continued.
    pub fn push(&self, run: &PluginRunInfo, event_id: &str) {
        let ending = match run.outcome.as_str() {
            "continue" => None,
            "drop" => Some(format!("dropped: {}", run.detail.as_deref().unwrap_or(""))),
            failure => Some(format!("failed: {}", run.detail.as_deref().unwrap_or(failure))),
        };
        let lines = run.logs.iter().cloned().chain(ending.map(|e| ("gateway".to_string(), e)));
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (level, message) in lines {
            log.last += 1;
            log.bytes += message.len();
            let seq = log.last;
            log.kept.push_back(LogEntry {
                seq,
                at_ms: run.at_ms,
                version: run.version,
                event_id: event_id.to_string(),
                level,
                message,
            });
            while log.kept.len() > MAX_LINES || log.bytes > MAX_BYTES {
                let Some(old) = log.kept.pop_front() else { break };
                log.bytes -= old.message.len();
            }
        }
    }

    /// Up to `limit` lines after number `after` (oldest first), or the latest `limit` when
    /// `after` is `None`; and the number to ask after next time.
    pub fn read(&self, after: Option<u64>, limit: usize) -> (Vec<LogEntry>, u64) {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<LogEntry> = match after {
            Some(after) => log.kept.iter().filter(|l| l.seq > after).take(limit).cloned().collect(),
            None => log.kept.iter().skip(log.kept.len().saturating_sub(limit)).cloned().collect(),
        };
        let next = lines.last().map_or(after.unwrap_or(log.last), |l| l.seq);
        (lines, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: &str, logs: &[&str]) -> PluginRunInfo {
        PluginRunInfo {
            plugin: "p".into(),
            version: 2,
            attempt: 1,
            at_ms: 5,
            duration_us: 1,
            fuel_used: 1,
            outcome: outcome.into(),
            detail: Some("boom".into()),
            logs: logs.iter().map(|l| ("info".to_string(), l.to_string())).collect(),
        }
    }

    #[test]
    fn a_reader_gets_each_line_once_in_order_with_how_runs_ended() {
        let log = RunLog::default();
        log.push(&run("continue", &["a", "b"]), "evt_1");
        let (first, next) = log.read(None, 100);
        assert_eq!(first.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        log.push(&run("trap", &["c"]), "evt_2");
        let (more, next) = log.read(Some(next), 100);
        assert_eq!(
            more.iter().map(|l| (l.level.as_str(), l.message.as_str())).collect::<Vec<_>>(),
            [("info", "c"), ("gateway", "failed: boom")]
        );
        assert_eq!((more[0].event_id.as_str(), more[0].version), ("evt_2", 2));
        assert!(log.read(Some(next), 100).0.is_empty(), "nothing new");
    }

    #[test]
    fn a_chatty_plugin_pushes_out_its_oldest_lines_within_the_caps() {
        let log = RunLog::default();
        let big = "x".repeat(MAX_BYTES / 4);
        for _ in 0..10 {
            log.push(&run("continue", &[&big]), "evt");
        }
        let (kept, _) = log.read(Some(0), usize::MAX);
        assert!(kept.len() <= 4 && kept.last().unwrap().seq == 10, "{} kept", kept.len());
        for i in 0..(MAX_LINES + 10) {
            log.push(&run("continue", &[&i.to_string()]), "evt");
        }
        assert_eq!(log.read(Some(0), usize::MAX).0.len(), MAX_LINES);
    }
}
