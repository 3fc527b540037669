//! `[store]`: the durable store (SQLite's file, or PostgreSQL's URL for replicas) and its
//! knobs, with the bounds the check holds them to.

use serde::Deserialize;

/// Past this a commit delay holds every acknowledgement for longer than the commits it saves
/// are worth: at 1 ms the writes a steady stream brings already share a commit.
pub(crate) const MAX_COMMIT_DELAY_US: u64 = 10_000;

/// `[store] wal_prefill_mb` by default: the SQLite store's WAL working size (it starts over
/// past 32,768 frames of 4 KiB pages).
pub(crate) const DEFAULT_WAL_PREFILL_MB: u64 = 128;

/// Largest `[store] wal_prefill_mb` taken: more is a typo, not a plan.
pub(crate) const MAX_WAL_PREFILL_MB: u64 = 4_096;

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (the embedded store, one gateway on one machine).
    pub path: String,
    /// A PostgreSQL database (`postgres://user:pass@host:port/db` or `postgresql://…`) shared
    /// by several gateway replicas; when set, `path` is not used.
    pub url: Option<String>,
    /// PostgreSQL: how long a replica's claim on a due delivery or plugin step lasts before
    /// another replica may take it over (after a crash). Longer than any upstream's
    /// `timeout_ms` and any plugin's, or a slow delivery is made twice.
    pub lease_ms: u64,
    /// PostgreSQL: connections per replica.
    pub pool_size: usize,
    /// How long a write waits for a lock held by another process before answering 503.
    pub busy_timeout_ms: u64,
    /// Largest number of writes shared by one commit (one fsync).
    pub max_batch: usize,
    /// SQLite: how long, in microseconds, a write that finds the writer idle shortly after a
    /// commit waits for others to share its commit. Under steady traffic it trades that much
    /// acknowledgement latency for less CPU per event (a quarter less at 2,000 events/s); a
    /// write after a quiet spell, from a lone client or in a burst goes at once. 0 turns it off.
    pub commit_delay_us: u64,
    /// Optional cap on the database size; writes past it fail (503) instead of filling the disk.
    pub max_size_mb: Option<u64>,
    /// SQLite: how much of the write-ahead log, in MiB, is written (with zeros) at start-up,
    /// before the first event. A WAL that grows into new blocks costs every commit their
    /// allocation and a journal flush; one written ahead is overwritten in place. The default
    /// is the size the WAL reaches under sustained load anyway, so a freshly started gateway
    /// takes a burst (a sender's retries after a restart) as cheaply as one that has run for a
    /// while. It takes that much disk from the start, and start-up time (0.1 s for 128 MiB on
    /// the machine the benchmarks ran on); 0 turns it off.
    pub wal_prefill_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "payflow-edge.db".into(),
            url: None,
            lease_ms: 60_000,
            pool_size: 16,
            busy_timeout_ms: 2_000,
            max_batch: 512,
            commit_delay_us: 1_000,
            max_size_mb: None,
            wal_prefill_mb: DEFAULT_WAL_PREFILL_MB,
        }
    }
}
