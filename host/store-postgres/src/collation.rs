//! Keys in byte order: every text column of a key or an index of ours compares with the `"C"`
//! collation (bytes, as SQLite and Rust compare them), whatever the database's own collation.
//!
//! Most servers are created with a language's collation (`en_US.UTF-8` wherever that is the
//! system's locale, and in the official container image). Every index insert and
//! lookup on a text key then compares through the C library's `strcoll`: on a database in
//! `en_US.utf8`, the database spent ~45% more CPU per queue-mode event than in byte order, and
//! the gateway acknowledged a fifth fewer (bench/RESULTS.md, issue 21's twentieth look). Keys are opaque ids,
//! so a language's order means nothing for them; and in byte order, lists break ties as on
//! SQLite.
//!
//! The conversion (`ALTER COLUMN … TYPE text COLLATE "C"`) rebuilds the indexes it touches,
//! under a lock that holds every other statement on those tables for as long. It also changes
//! what the statements that return those columns return, and a statement another process
//! prepared earlier then fails (`cached plan must not change result type`) until that
//! process reconnects: a replica of the previous release, still running during an upgrade,
//! would answer every webhook 503. So it runs only at start-up, under the migrations' lock,
//! and only where no other client can hold such a statement: on tables this start-up has just
//! created (a new database: replicas starting beside it wait for the lock and prepare nothing
//! before), or when no other client is connected to the database (one waiting for an
//! advisory lock, as a replica waiting to migrate does, does not count). An existing database
//! with replicas running keeps its collation, and each start says so with the fix: stop every
//! replica, then start one. It must never run while another client may hold a prepared
//! statement on these tables.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::schema::{self, LOCK_TIMEOUT};

/// The tables the gateway creates; only their columns are ever converted (a schema shared
/// with another application keeps that application's tables as they are).
const TABLES: &[&str] = &[
    "events",
    "deliveries",
    "plugin_steps",
    "attempts",
    "plugin_runs",
    "plugins",
    "plugin_versions",
    "plugin_kv",
    "plugin_kv_changes",
    "plugin_compiled",
    "plugin_canaries",
];

/// The text columns of an index (a primary key's too) on [`TABLES`] that do not compare in
/// byte order: `(table, column)`.
const UNCONVERTED: &str = "
    SELECT DISTINCT c.relname::text, a.attname::text
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
    WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
      AND c.relname = ANY ($1)
      AND a.atttypid = 'text'::regtype
      AND a.attcollation <> 'pg_catalog.\"C\"'::regcollation
    ORDER BY 1, 2";

/// The database's own collation: ICU's or the built-in provider's locale where it has one
/// (the column is `daticulocale` in PostgreSQL 15 and 16, `datlocale` from 17, neither before),
/// else the C library's.
const DATABASE_COLLATION: &str = "
    SELECT coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', d.datcollate::text)
    FROM pg_database d WHERE datname = current_database()";

/// What [`keys_in_byte_order`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyCollation {
    /// Every key column compares in byte order already (or the database's own collation,
    /// `C` or `POSIX`, does).
    Bytes,
    /// Converted now: this many columns, in this long.
    Converted { columns: usize, took: Duration },
    /// Left as it is, because other clients are connected.
    Left { columns: usize, others: i64, collation: String },
}

/// Converts the key columns to byte order when that is safe (see the module docs): `created`
/// says this start-up created the tables. Call it under the migrations' advisory lock, after
/// the migrations.
pub(crate) async fn keys_in_byte_order(
    client: &mut Client,
    created: bool,
) -> Result<KeyCollation, tokio_postgres::Error> {
    let tables: Vec<&str> = TABLES.to_vec();
    let columns: Vec<(String, String)> =
        client.query(UNCONVERTED, &[&tables]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    if columns.is_empty() {
        return Ok(KeyCollation::Bytes);
    }
    let others = schema::other_clients(client, created).await?;
    if others > 0 {
        let collation: String = client.query_one(DATABASE_COLLATION, &[]).await?.get(0);
        if collation == "C" || collation == "POSIX" {
            // The database's own collation compares bytes already.
            return Ok(KeyCollation::Bytes);
        }
        return Ok(KeyCollation::Left { columns: columns.len(), others, collation });
    }
    let started = Instant::now();
    let converted: Vec<&str> = tables.into_iter().filter(|t| columns.iter().any(|(c, _)| c == t)).collect();
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")).await?;
    for table in &converted {
        let alters: Vec<String> = columns
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, column)| format!("ALTER COLUMN \"{column}\" TYPE text COLLATE \"C\""))
            .collect();
        // One statement per table: its indexes are rebuilt once, not once per column.
        tx.batch_execute(&format!("ALTER TABLE \"{table}\" {}", alters.join(", "))).await?;
    }
    tx.commit().await?;
    // A column's type change drops its statistics; the planner has them back at once instead
    // of when autovacuum next analyzes the table. The conversion is done either way.
    if let Err(e) = client.batch_execute(&format!("ANALYZE {}", converted.join(", "))).await {
        tracing::warn!(error = %e, "store: ANALYZE after the key conversion failed; autovacuum will");
    }
    Ok(KeyCollation::Converted { columns: columns.len(), took: started.elapsed() })
}
