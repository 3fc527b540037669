//! The checkpointer: copies WAL frames back into the database file on a connection of its
//! own, and asks the writer to let the WAL start over once it has grown past its bound. It must
//! never let the WAL grow without bound, and never hold the writer up for more than the copy of
//! the last few frames (see [`WAL_RESTART_FRAMES`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::Connection;

/// How often WAL frames are copied back into the database file. SQLite's automatic
/// checkpoint would do it inside a commit on the writer thread, stalling every request in
/// that batch; a PASSIVE checkpoint on its own connection never blocks the writer.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The WAL size (in frames, a page each) past which the writer is asked to let the WAL start
/// over. The checkpointer copies frames back but cannot make SQLite reuse the file: that
/// happens only when a write begins with every frame copied, and while commits come faster
/// than a checkpoint runs one always lands mid-checkpoint. Without this the WAL grew by
/// 66 MB/s at a steady 4,000 events/s (1.3 GB in 20 s, against a 68 MB database), until the
/// disk was full, and every page read searched a longer WAL index (bench/RESULTS.md, issue 21).
/// Each start-over holds the writer up for a few fsyncs (its checkpoint's two took 3–7 ms
/// here, then the new WAL header's), so it should be rare: 32,768 frames is 128 MiB at the default 4 KiB
/// pages, once per ~20,000 events of a burst. Small in tests, to reach it quickly.
const WAL_RESTART_FRAMES: i64 = if cfg!(test) { 256 } else { 32_768 };

/// What the WAL file is cut back to when it starts over after a lull, in bytes. Twice the
/// bound, so that under load, when the WAL starts over near the bound, the file is reused as it
/// is: cutting it (and growing it again) cost the next commit ~10 ms where overwriting costs
/// nothing more than appending.
pub(crate) const WAL_KEPT_BYTES: i64 = 2 * WAL_RESTART_FRAMES * 4096;

/// A checkpoint short enough that what was committed meanwhile is little for the writer to
/// copy (see [`let_the_wal_start_over`]): the writer's own copy holds up acknowledgements.
const QUICK_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(5);

/// Checkpoints of a full WAL before the writer is asked: each copies what came in during the
/// one before, so they get shorter as long as copying outpaces committing.
const CATCH_UP_CHECKPOINTS: usize = 4;

/// Copies what it can of the WAL back without waiting for anyone; the WAL's size in frames.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

pub(crate) fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>, wal_full: Arc<AtomicBool>) {
    let checkpoint = || passive_checkpoint(&conn);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        match checkpoint() {
            Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                for _ in 0..CATCH_UP_CHECKPOINTS {
                    let started = std::time::Instant::now();
                    if checkpoint().is_err() || started.elapsed() <= QUICK_CHECKPOINT {
                        break;
                    }
                }
                wal_full.store(true, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "passive checkpoint skipped"),
        }
    }
}

/// On the writer thread, between batches, once the checkpointer found the WAL past
/// [`WAL_RESTART_FRAMES`]: a PASSIVE checkpoint of the frames committed since the
/// checkpointer's (no commit can land during it, the writer being the only one), so that the
/// next write finds every frame copied and starts the WAL over. It never waits: a reader still
/// in the WAL, or the checkpointer mid-run, only puts it off to the next signal.
pub(crate) fn let_the_wal_start_over(conn: &Connection) {
    if let Err(e) = passive_checkpoint(conn) {
        tracing::debug!(error = %e, "the writer's checkpoint was skipped");
    }
}
