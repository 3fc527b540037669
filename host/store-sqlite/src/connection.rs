//! How every connection to the database file is opened: the WAL VFS, durable commits and the
//! settings each statement's plan relies on. It must never open a connection whose commits do
//! not sync the WAL (the VFS relies on it).

use std::path::Path;

use payflow_config::StoreConfig;
use rusqlite::Connection;

pub(crate) fn open(path: &Path, config: &StoreConfig) -> rusqlite::Result<Connection> {
    // Each commit's WAL frames reach the kernel in one write per 128 KiB, not two per page.
    // That VFS serves only connections whose commits sync the WAL, as every one here does
    // (synchronous=FULL below, before anything is written).
    let vfs = payflow_wal_vfs::register().map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(e.to_string()),
        )
    })?;
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?;
    conn.busy_timeout(std::time::Duration::from_millis(config.busy_timeout_ms))?;
    // Room for every statement the gateway prepares, so none is ever re-parsed.
    conn.set_prepared_statement_cache_capacity(64);
    // WAL lets reads run beside the writer; synchronous=FULL makes every commit an fsync, which
    // is what "acknowledged after the durable write" means (NORMAL would survive kill -9 but
    // not a power cut).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A prepared statement keeps its plan whatever is bound to it. Without this, SQLite marks
    // a statement whose plan looked at a bound value (any `LIMIT ?`) to be planned again on
    // the first step after every bind, so the dispatcher's due scans and the event listings
    // were parsed and planned anew on every run despite the statement cache. The plans that
    // depend on values need `ANALYZE` statistics, which the store never gathers.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Savepoint (statement) journals and sorts stay in memory: they never need to survive.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if let Some(mb) = config.max_size_mb {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", (mb as i64 * 1024 * 1024) / page_size)?;
    }
    Ok(conn)
}
