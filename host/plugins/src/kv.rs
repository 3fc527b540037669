//! A plugin's key-value space as runs see it: the [`Kv`] trait the registry implements (writes
//! are committed with the plugin step), the in-memory map with its quota, and an in-memory
//! store for `plugin run` and tests. It must never persist anything itself.

use std::collections::HashMap;
use std::sync::Mutex;

/// A plugin's key-value space: per merchant and plugin.
pub trait Kv: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value`, unless the space would then exceed `quota_bytes`.
    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), KvQuotaExceeded>;
    /// Whether the run may use the space. A space not loaded for the run answers false (and
    /// notes that the run needed it): the run is then stopped at that call, to be made again
    /// with the space loaded.
    fn available(&self) -> bool {
        true
    }
}

/// Keys and values with their total size (keys and values together) kept up to date, so a
/// quota check costs O(1) however many keys a plugin holds.
#[derive(Debug, Clone, Default)]
pub struct KvMap {
    pub(crate) values: HashMap<String, Vec<u8>>,
    pub(crate) used: usize,
}

impl KvMap {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    /// What `key` takes now (0 when absent).
    pub fn size(&self, key: &str) -> usize {
        self.values.get(key).map_or(0, |v| key.len() + v.len())
    }

    /// Keys and values together.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Drops `key` and its value.
    pub fn remove(&mut self, key: &str) {
        if let Some(value) = self.values.remove(key) {
            self.used -= key.len() + value.len();
        }
    }

    /// Stores `value` under `key`, with no quota check.
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        self.used = self.used - self.size(&key) + key.len() + value.len();
        self.values.insert(key, value);
    }
}

impl FromIterator<(String, Vec<u8>)> for KvMap {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(entries: I) -> Self {
        let mut map = KvMap::default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

/// How many `kv-get` calls one run may make; the next one stops the run (a trap naming this
/// limit). Nothing else bounds them but fuel: a run reading a million distinct keys is one
/// loop. Each key a run reads is noted and checked against the store when its step commits,
/// one lookup per key on the writer every merchant's acknowledgements share (SQLite), or in
/// the batch's one query (PostgreSQL): unbounded, one merchant's plugin could hold that writer
/// for seconds per event. At a thousand the check took the writer ~0.3 ms per step, less than
/// the run's own reads took its plugin thread, which the scheduler shares fairly; at 20,000 it
/// took 6 ms, and every acknowledgement waited behind it (bench/RESULTS.md, thirty-ninth
/// look). It is also what edge runtimes allow a function's key-value calls (Cloudflare Workers:
/// 1,000 per invocation), and far more than an event needs: the ledger reads one key.
pub const MAX_READS_PER_RUN: usize = 1_000;

/// How many `kv-set` calls one run may make; the next ones are refused (the guest gets the
/// refusal, as for its quota). The quota bounds the space's bytes, not the writes: a plugin
/// overwriting 20,000 one-byte keys on every event stays well within 1 MB, and each of those
/// writes is an upsert on the store's writer, which took it 31 ms per event. A thousand took
/// ~1.2 ms (bench/RESULTS.md, thirty-ninth look); the ledger writes one key.
pub const MAX_WRITES_PER_RUN: usize = 1_000;

/// A write that would take a plugin's key-value space over its quota; what the guest's
/// `kv-set` gets back as its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kv quota of {quota_bytes} bytes exceeded")]
pub struct KvQuotaExceeded {
    /// The plugin's `kv_quota_bytes`.
    pub quota_bytes: usize,
}

/// Refuses a write that would take a space using `used` bytes, of which `key` takes `old`, over
/// `quota_bytes`.
pub fn check_quota(
    used: usize,
    old: usize,
    key: &str,
    value: &[u8],
    quota_bytes: usize,
) -> Result<(), KvQuotaExceeded> {
    if used - old + key.len() + value.len() > quota_bytes {
        return Err(KvQuotaExceeded { quota_bytes });
    }
    Ok(())
}

/// A key-value space in memory (for `plugin run` and tests).
#[derive(Default)]
pub struct MemoryKv(Mutex<KvMap>);

impl MemoryKv {
    /// A space holding `entries` (`plugin run --kv FILE` reads them back between runs).
    pub fn with(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        MemoryKv(Mutex::new(entries.into_iter().collect()))
    }

    /// Its entries, in key order.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries: Vec<_> = map.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        entries.sort();
        entries
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], quota_bytes: usize) -> Result<(), KvQuotaExceeded> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        check_quota(map.used(), map.size(key), key, value, quota_bytes)?;
        map.insert(key.to_string(), value.to_vec());
        Ok(())
    }
}
