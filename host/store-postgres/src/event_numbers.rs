//! Deliveries, attempts, plugin steps and plugin runs keyed by their event's number
//! (`events.seq`), not by the event's key.
//!
//! An event's key ends in the sender's id, which lands anywhere in an index on it; its number
//! comes from a sequence and lands at the end. Keyed by the event's key, every delivery put
//! an entry at a random place of the deliveries' primary key three times (its insert, and the
//! claim's and the record's updates, which PostgreSQL writes as new row versions with new
//! index entries), and its attempt one more in `attempts_by_key`; a plugin step and its run
//! did the same in theirs: on a database that had run a while, with ids in no order, those
//! pages were mostly out of the cache. On a database holding 300,000 such events, keyed by
//! number, the database spent ~0.78× the CPU per queue-mode event (bench/RESULTS.md, issue
//! 21's twenty-first look).
//!
//! Migrations 8, 10 and 11 ([`crate::schema`]) only add: the numbers, each row's
//! `event_seq`, an index on it, and a trigger per table that numbers the rows a replica of the
//! previous release inserts without one. That replica, still running during a rolling
//! upgrade, finds its rows by the old key, whose index stays. This release finds them by
//! number. What pays off is the old keys' going, and that breaks the previous release (its
//! `ON CONFLICT` names the deliveries' old key; its inserts need the triggers; its reads of an
//! event's attempts, runs and step need their old indexes): so, as [`crate::collation`] does,
//! it runs only at start-up, under the migrations' lock, on tables this start-up created or
//! with no other client connected. Otherwise each start says so, with the fix: stop every
//! replica, then start one. It must never run while a replica of the previous release may be
//! connected.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::schema::{self, LOCK_TIMEOUT};

/// A table whose rows name their event by number, with a trigger that numbers the previous
/// release's inserts (and a function of the same name) while its old key stays.
struct ByNumber {
    /// The table, and its trigger's and function's name.
    table: &'static str,
    /// What goes with the trigger: the old key. A row without a number has no event (the
    /// trigger numbers every one that has): it could never be claimed or shown, so it goes.
    drop_old_key: &'static str,
}

const BY_NUMBER: [ByNumber; 4] = [
    ByNumber {
        table: "deliveries",
        drop_old_key: "
            DELETE FROM deliveries WHERE event_seq IS NULL;
            ALTER TABLE deliveries ALTER COLUMN event_seq SET NOT NULL;
            ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
            ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY USING INDEX deliveries_by_event;",
    },
    ByNumber {
        table: "attempts",
        drop_old_key: "
            DELETE FROM attempts WHERE event_seq IS NULL;
            ALTER TABLE attempts ALTER COLUMN event_seq SET NOT NULL;
            DROP INDEX attempts_by_key;",
    },
    ByNumber {
        table: "plugin_steps",
        drop_old_key: "
            DELETE FROM plugin_steps WHERE event_seq IS NULL;
            ALTER TABLE plugin_steps ALTER COLUMN event_seq SET NOT NULL;
            ALTER TABLE plugin_steps DROP CONSTRAINT plugin_steps_pkey;
            ALTER TABLE plugin_steps ADD CONSTRAINT plugin_steps_pkey PRIMARY KEY USING INDEX plugin_steps_by_event;",
    },
    ByNumber {
        table: "plugin_runs",
        drop_old_key: "
            DELETE FROM plugin_runs WHERE event_seq IS NULL;
            ALTER TABLE plugin_runs ALTER COLUMN event_seq SET NOT NULL;
            DROP INDEX plugin_runs_by_key;",
    },
];

/// The tables of [`BY_NUMBER`] whose old key is still there: their trigger is.
const OLD_KEYS_LEFT: &str = "
    SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE t.tgname = c.relname || '_event_seq' AND c.relname = ANY ($1)";

/// What [`by_number_alone`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EventNumbers {
    /// Every table of [`BY_NUMBER`] is keyed by its event's number alone already.
    Keyed,
    /// The old keys went now, in this long.
    Converted { took: Duration },
    /// The old keys are left, because other clients are connected.
    Left { others: i64 },
}

/// Drops the old keys when that is safe (see the module docs): `created` says this start-up
/// created the tables. Call it under the migrations' advisory lock, after them.
pub(crate) async fn by_number_alone(
    client: &mut Client,
    created: bool,
) -> Result<EventNumbers, tokio_postgres::Error> {
    let tables: Vec<&str> = BY_NUMBER.iter().map(|t| t.table).collect();
    let left: Vec<String> = client.query(OLD_KEYS_LEFT, &[&tables]).await?.iter().map(|r| r.get(0)).collect();
    if left.is_empty() {
        return Ok(EventNumbers::Keyed);
    }
    let others = schema::other_clients(client, created).await?;
    if others > 0 {
        return Ok(EventNumbers::Left { others });
    }
    let started = Instant::now();
    let mut sql = format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';");
    for t in BY_NUMBER.iter().filter(|t| left.iter().any(|l| l == t.table)) {
        let name = format!("{}_event_seq", t.table);
        sql += &format!("DROP TRIGGER {name} ON {}; DROP FUNCTION {name}(); {}", t.table, t.drop_old_key);
    }
    let tx = client.transaction().await?;
    tx.batch_execute(&sql).await?;
    tx.commit().await?;
    Ok(EventNumbers::Converted { took: started.elapsed() })
}
