//! `[[plugin]]` (a plugin and its sandbox limits) and `[plugins]` (how the plugin step runs),
//! with the rule for plugin names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::default_merchant;

/// `[[plugin]]`: a plugin and its sandbox limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name endpoints and the admin API refer to.
    pub name: String,
    /// Owning merchant.
    #[serde(default = "default_merchant")]
    pub merchant: String,
    /// The `.wasm` component to load at start. Without it the plugin is uploaded through the
    /// admin API; until then its endpoints' events are acknowledged and wait for it (queued,
    /// no attempt used up), `serve` warns at start-up and `/readyz` says why.
    pub path: Option<PathBuf>,
    /// Fuel per run (roughly, wasm instructions).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline per run.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u64,
    /// Linear memory cap.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The outcome's bodies, headers and tags together.
    #[serde(default = "default_output_bytes")]
    pub output_bytes: usize,
    /// Log kept per run.
    #[serde(default = "default_log_bytes")]
    pub log_bytes: usize,
    /// The plugin's key-value space, keys and values together.
    #[serde(default = "default_kv_bytes")]
    pub kv_bytes: usize,
    /// Keep one instance alive between events (for JS and Python, whose start-up is costly).
    #[serde(default)]
    pub warm: bool,
    /// What the plugin reads with `config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_fuel() -> u64 {
    100_000_000
}
fn default_plugin_timeout() -> u64 {
    1_000
}
fn default_memory_mb() -> u64 {
    32
}
fn default_output_bytes() -> usize {
    1 << 20
}
fn default_log_bytes() -> usize {
    16 << 10
}
fn default_kv_bytes() -> usize {
    1 << 20
}

/// `[plugins]`: how the plugin step runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Threads running plugins (0: one per CPU). Plugins never run on the ingress threads.
    pub workers: usize,
    /// Plugin steps in flight at once. A step spends most of its time waiting (for a plugin
    /// thread, then for its group commit), not running: this many keep the plugin threads busy
    /// and each commit's batch large while earlier steps are committed. An in-flight step costs
    /// a task and its event in memory; the scheduler shares the threads fairly however many
    /// wait. With 64, PostgreSQL recorded the steps in short batches, one after another, and
    /// delivered a burst through a plugin at ~0.4 of its acknowledgement rate; with 512, at
    /// 0.95 of it, for 0.7 the gateway's and database's CPU per event (bench/RESULTS.md,
    /// twenty-eighth look).
    pub concurrency: usize,
    /// Attempts of an event's plugin step before the event is `dead`.
    pub max_attempts: u32,
    /// First retry delay of a failed plugin step; doubles each attempt (with jitter).
    pub retry_base_ms: u64,
    /// Longest delay between attempts.
    pub retry_max_ms: u64,
    /// Largest component accepted by `PUT /api/plugins/{name}`.
    pub max_upload_bytes: usize,
    /// Versions kept per plugin; the oldest beyond are deleted (never the active one nor the
    /// one before it, which rollback returns to).
    pub max_versions: u32,
    /// What all of one merchant's plugin versions (components and compiled code) may take in
    /// the store; an upload beyond is refused.
    pub merchant_storage_mb: u64,
    /// Runs of a canary (and of the active version beside it) its failure rate is taken over.
    /// Fewer would roll back on one unlucky event; more would wait longer on a broken one.
    pub canary_window: usize,
    /// How many percentage points the canary's failure rate may exceed the active version's
    /// over the window before it is rolled back by itself.
    pub canary_margin_percent: u32,
    /// The longest a dry run (`POST /api/plugins/{name}/try`) may take before it answers
    /// `503 dry_run_timed_out`. Its runs take only CPU nothing else wants, so on a machine kept
    /// busy (by live traffic or by other processes) it would otherwise wait without end, and
    /// its client with it.
    pub dry_run_timeout_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            workers: 0,
            concurrency: 512,
            max_attempts: 3,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_upload_bytes: 32 << 20,
            max_versions: 5,
            merchant_storage_mb: 1024,
            canary_window: 20,
            canary_margin_percent: 20,
            // About four times what a 1,000-event dry run takes beside sustained live traffic
            // (see the plugin scheduler), so only a machine with no CPU to spare reaches it.
            dry_run_timeout_ms: 120_000,
        }
    }
}

/// Plugin names travel in URL paths and log lines: keep them plain.
pub fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
