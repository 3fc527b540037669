//! The VFS against SQLite itself: what it writes is what SQLite meant, in one write per commit,
//! on disk by the time the commit returns.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::*;

/// A connection through the VFS, as the store opens them: WAL, every commit synced.
fn gathering(path: &Path) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), register().unwrap()).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    // Nothing copied back behind the test's back: the frames stay in the WAL.
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn
}

/// A connection through SQLite's own default VFS, which sees only what reached the file.
fn plain(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn insert(conn: &Connection, from: i64, rows: i64, size: usize) {
    let tx = conn.unchecked_transaction().unwrap();
    for i in from..from + rows {
        tx.execute(
            "INSERT INTO t (id, body) VALUES (?1, ?2)",
            rusqlite::params![i, vec![(i % 251) as u8; size]],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn rows_and_sum(conn: &Connection) -> (i64, i64) {
    conn.query_row("SELECT COUNT(*), COALESCE(SUM(id + length(body)), 0) FROM t", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

fn wal_writes() -> u64 {
    WAL_WRITES.with(Cell::get)
}

#[test]
fn a_commit_reaches_the_wal_in_one_write_per_128_kib_instead_of_two_per_page() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let conn = gathering(&db);
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)").unwrap();
    let wal = dir.path().join("db-wal");
    let size_before = std::fs::metadata(&wal).unwrap().len();
    let before = wal_writes();
    insert(&conn, 0, 100, 1000);
    let writes = wal_writes() - before;
    let frames = (std::fs::metadata(&wal).unwrap().len() - size_before) / (4096 + 24);
    // Without gathering: two writes per frame. Gathered: one per 31 frames (GATHER_LIMIT).
    assert!(frames >= 25, "the commit wrote {frames} frames");
    assert!(writes <= frames.div_ceil(31), "{frames} frames in {writes} writes");
}

#[test]
fn what_a_commit_wrote_is_in_the_file_when_the_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let writer = gathering(&db);
    writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)").unwrap();
    let mut expected = (0, 0);
    for round in 0..20 {
        insert(&writer, round * 50, 50, 300 + round as usize * 40);
        expected = rows_and_sum(&writer);
        // A reader through the default VFS, while the writer keeps the WAL open with nothing
        // checkpointed: it sees exactly what was committed.
        assert_eq!(rows_and_sum(&plain(&db)), expected, "round {round}");
    }
    assert_eq!(expected.0, 1000);
    // The WAL starting over after a checkpoint (its header rewritten at offset 0), then a
    // transaction bigger than the gathering limit (written out in parts, in order).
    writer.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    insert(&writer, 1000, 2000, 1500);
    assert_eq!(rows_and_sum(&plain(&db)), rows_and_sum(&writer));
    assert_eq!(rows_and_sum(&writer).0, 3000);
    // Reopened through either VFS, and the integrity check passes.
    drop(writer);
    for conn in [plain(&db), gathering(&db)] {
        assert_eq!(rows_and_sum(&conn).0, 3000);
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }
}

#[test]
fn a_rolled_back_transaction_leaves_nothing_a_reader_sees() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let writer = gathering(&db);
    // A tiny page cache makes SQLite spill frames into the WAL before the transaction ends.
    writer
        .execute_batch("PRAGMA cache_size = 10; CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    insert(&writer, 0, 10, 100);
    let tx = writer.unchecked_transaction().unwrap();
    for i in 10..500 {
        tx.execute("INSERT INTO t (id, body) VALUES (?1, zeroblob(2000))", [i]).unwrap();
    }
    tx.rollback().unwrap();
    assert_eq!(rows_and_sum(&plain(&db)).0, 10);
    insert(&writer, 10, 10, 100);
    assert_eq!(rows_and_sum(&plain(&db)), rows_and_sum(&writer));
}

#[test]
fn registering_twice_names_the_same_vfs() {
    assert_eq!(register(), Ok(NAME));
    assert_eq!(register(), Ok(NAME));
}

/// Regression: gathering up to 1 MiB failed the first big commit with "database or disk is
/// full": the unix VFS cuts any write to its low 17 bits of length and reports the short write
/// as a full disk.
#[test]
fn regression_a_commit_of_more_than_128_kib_is_not_taken_for_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let writer = gathering(&db);
    writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)").unwrap();
    insert(&writer, 0, 1000, 3000);
    assert_eq!(rows_and_sum(&plain(&db)), rows_and_sum(&writer));
    assert_eq!(rows_and_sum(&writer).0, 1000);
}
