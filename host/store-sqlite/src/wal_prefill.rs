//! Writes the SQLite store's write-ahead log ahead, at start-up (`[store] wal_prefill_mb`).
//!
//! A commit that appends to the WAL past its end makes the file system allocate blocks, and
//! the commit's fsync then waits for a journal flush of that allocation too. Once the WAL has
//! reached its working size it is overwritten in place (SQLite starts it over from the top),
//! and commits get cheaper. A fresh or restarted gateway used to pay the growth during its
//! first minute of load: written ahead, a fresh gateway's queue-mode burst took ~10% less CPU
//! per event (0.89, 17 of 26 pairs lower; the stored-only path did not move: bench/RESULTS.md,
//! issue 21, tenth look). Blocks only reserved (`fallocate`) do not help: they are converted
//! at their first write's fsync.
//!
//! What it must never do: write into a WAL that holds frames (it first checkpoints and
//! truncates the WAL, and writes only if that left it empty: a reader still in it, or another
//! process, leaves it alone), or stop the store from opening. Zeros are an invalid WAL header,
//! which SQLite reads as an empty log, so a crash mid-way loses nothing; a failure (a full
//! disk) gives the space back and the store opens without it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use rusqlite::Connection;

/// The zeros written per call.
const CHUNK: usize = 1 << 20;

/// Writes `mib` MiB of zeros into the WAL of the database at `db`, whose writer connection is
/// `conn`, if the WAL can be emptied first. Returns whether it did.
pub(crate) fn prefill(conn: &Connection, db: &Path, mib: u64) -> bool {
    if mib == 0 {
        return false;
    }
    // (busy, frames in the log, frames checkpointed): busy when a reader holds the WAL.
    let emptied = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
    if !matches!(emptied, Ok(0)) {
        tracing::debug!("the WAL is in use; not written ahead");
        return false;
    }
    let mut path = db.as_os_str().to_owned();
    path.push("-wal");
    let started = std::time::Instant::now();
    match write_zeros(Path::new(&path), mib) {
        Ok(true) => {
            tracing::debug!(mib, took_ms = started.elapsed().as_millis() as u64, "WAL written ahead");
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not write the WAL ahead ([store] wal_prefill_mb); going on without");
            let _ = OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(0));
            false
        }
    }
}

/// Fills the WAL at `path` with `mib` MiB of zeros and syncs it, if it is empty.
fn write_zeros(path: &Path, mib: u64) -> io::Result<bool> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() != 0 {
        return Ok(false);
    }
    let zeros = vec![0u8; CHUNK];
    for _ in 0..mib {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use payflow_config::StoreConfig;

    use super::*;
    use crate::SqliteStore;
    use payflow_store::Lifecycle;

    fn config(dir: &Path, mib: u64) -> StoreConfig {
        StoreConfig {
            path: dir.join("db").display().to_string(),
            wal_prefill_mb: mib,
            busy_timeout_ms: 100,
            ..StoreConfig::default()
        }
    }

    fn wal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_wal_is_written_ahead_then_overwritten_in_place_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&config(dir.path(), 2), Arc::new(())).unwrap();
        assert_eq!(wal_len(dir.path()), 2 << 20, "written ahead at open");
        for now_ms in 0..20 {
            store.check_writable(now_ms).await.unwrap();
        }
        assert_eq!(wal_len(dir.path()), 2 << 20, "the commits went into the written blocks");
        store.close().await;
        let conn = Connection::open(dir.path().join("db")).unwrap();
        let checked: i64 = conn.query_row("SELECT checked_at_ms FROM health", [], |r| r.get(0)).unwrap();
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!((checked, ok.as_str()), (19, "ok"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wal_a_reader_is_still_in_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let first = SqliteStore::open(&config(dir.path(), 0), Arc::new(())).unwrap();
        first.check_writable(7).await.unwrap();
        // Another process's reader, in the WAL while the gateway starts.
        let reader = Connection::open(dir.path().join("db")).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM health;").unwrap();
        let before = wal_len(dir.path());
        assert!(before > 0);
        let second = SqliteStore::open(&config(dir.path(), 2), Arc::new(())).unwrap();
        assert_ne!(wal_len(dir.path()), 2 << 20, "zeros went into a WAL in use");
        second.check_writable(8).await.unwrap();
        reader.execute_batch("COMMIT").unwrap();
        let checked: i64 = reader.query_row("SELECT checked_at_ms FROM health", [], |r| r.get(0)).unwrap();
        assert_eq!(checked, 8);
        drop((first, second));
    }

    #[test]
    fn zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        assert!(!prefill(&conn, &dir.path().join("db"), 0));
        assert_eq!(wal_len(dir.path()), 0);
    }
}
