//! payflow-store-sqlite: the embedded default store, SQLite (WAL) in one file, behind the
//! roles of `payflow_store` (it passes their conformance suite, see `tests.rs`).
//!
//! Group commit: every write goes to one writer thread, which takes whatever writes are
//! waiting (up to `max_batch`), applies them in one transaction (redoing each alone if one
//! fails) and commits once: one fsync for the whole batch. A write is answered only after that
//! commit. While one batch is being fsync'd the next one queues up, so under load the commit
//! rate, not the request rate, is bounded by the disk. Under steady traffic, too light for
//! writes to queue up during a commit, a write that finds the writer idle may first wait for
//! others to share its commit (`[store] commit_delay_us`, [`commit_delay`]). Writes that
//! a sender's acknowledgement waits on go first: delivery bookkeeping takes at most a few
//! places in a batch while they wait (`writer.rs`). Reads use a separate connection (WAL lets
//! them run beside the writer).
//!
//! A checkpointer thread copies the WAL back into the database file (`checkpoint.rs`). At
//! open, before the threads start, the WAL's working size is written ahead (`wal_prefill.rs`).
//!
//! One file per concern, as the PostgreSQL backend has them: `schema.rs` (tables and
//! upgrades), `connection.rs`, `writer.rs`, `checkpoint.rs`, and one per role's statements:
//! `ingest.rs`, `queue.rs` with `outcomes.rs` (what an attempt writes) and `step_record.rs`,
//! `plugins.rs`, `admin.rs`; this file holds the store itself and its lifecycle.
//!
//! It must never answer a write before its commit's fsync, nor let one failed write take its
//! batch down. SQL stays portable (`ON CONFLICT … DO NOTHING`, no SQLite-only types), as the
//! PostgreSQL backend shares much of it.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use payflow_config::StoreConfig;
use payflow_store::{CommitObserver, EventKey, Lifecycle, StoreError};
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::checkpoint::{checkpoint_loop, WAL_KEPT_BYTES};
use crate::commit_delay::CommitDelay;
use crate::schema::{migrate, TABLES};
use crate::writer::{writer_loop, Job, Priority, WriteJob};

/// The number (`events.seq`) of the event whose key is `?1`, `?2`, `?3` (merchant, scope, id):
/// how a statement given a key finds the event's deliveries.
macro_rules! seq_of_key {
    () => {
        "(SELECT seq FROM events WHERE merchant = ?1 AND scope = ?2 AND id = ?3)"
    };
}

/// The number in parameter `$n` ([`payflow_store::Attempt::event_seq`]), or when it is null, [`seq_of_key!`]'s.
/// SQLite evaluates `COALESCE`'s arguments in order and only as far as the first that is not
/// null, so a number given skips the key's lookup. A statement that finds rows by it also
/// compares their key columns with `?1`..`?3`, so a number that is not the key's finds nothing.
macro_rules! seq_or_key {
    ($n:literal) => {
        concat!("COALESCE(", $n, ", ", seq_of_key!(), ")")
    };
}

mod admin;
mod checkpoint;
pub mod commit_delay;
mod connection;
mod ingest;
mod outcomes;
mod plugins;
mod queue;
mod schema;
mod step_record;
mod wal_prefill;
mod writer;

/// What the readiness probe writes (and deletes): more than a typical event with its rows.
const READY_ROOM_BYTES: i64 = 64 << 10;

/// A SQLite error as the store reports it: unavailable, with SQLite's message.
pub(crate) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// Dropping it stops the checkpointer thread.
    checkpointer: Mutex<Option<mpsc::Sender<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts the writer thread, which tells
    /// `commits` how long each commit took.
    pub fn open(config: &StoreConfig, commits: Arc<dyn CommitObserver>) -> Result<Self, StoreError> {
        let path = Path::new(&config.path);
        let writer_conn = connection::open(path, config)
            .map_err(|e| StoreError::Unavailable(format!("cannot open database {}: {e}", path.display())))?;
        writer_conn.execute_batch(TABLES).map_err(unavailable)?;
        migrate(&writer_conn).map_err(unavailable)?;
        writer_conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
        writer_conn.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES).map_err(unavailable)?;
        crate::wal_prefill::prefill(&writer_conn, path, config.wal_prefill_mb);
        let reader = connection::open(path, config).map_err(unavailable)?;
        let (stop_checkpoints, stopped) = mpsc::channel();
        let checkpoint_conn = connection::open(path, config).map_err(unavailable)?;
        let wal_full = Arc::new(AtomicBool::new(false));
        let signal = wal_full.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped, signal))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let max_batch = config.max_batch;
        let delay = CommitDelay::new(std::time::Duration::from_micros(config.commit_delay_us));
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, max_batch, delay, &*commits, &wal_full))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reader: Arc::new(Mutex::new(reader)),
            checkpointer: Mutex::new(Some(stop_checkpoints)),
        })
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_with(Priority::ack(), work).await
    }

    async fn write_with<T, F>(&self, priority: Priority, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job { priority, work, result: None, reply });
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            work(&conn).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// An event key as the statements bind it: (merchant, scope, id).
pub(crate) fn key_of(key: &EventKey) -> (&str, &str, &str) {
    (&key.merchant, &key.scope, &key.id)
}

#[async_trait]
impl Lifecycle for SqliteStore {
    async fn check_writable(&self, now_ms: i64) -> Result<(), StoreError> {
        self.write_with(Priority::shared(1), move |conn| {
            // Room for a real write, not just the one-row stamp: a full database (max_size_mb,
            // or a full disk) may still update a row in place while refusing every event. The
            // blob is deleted in the same transaction; only the room is tried.
            conn.prepare_cached("INSERT INTO health_room (room) VALUES (zeroblob(?1))")?
                .execute(params![READY_ROOM_BYTES])?;
            conn.prepare_cached("DELETE FROM health_room")?.execute([])?;
            conn.prepare_cached(
                "INSERT INTO health (id, checked_at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_at_ms = excluded.checked_at_ms",
            )?
            .execute(params![now_ms])
            .map(drop)
        })
        .await
    }

    async fn close(&self) {
        self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests;
