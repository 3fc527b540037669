//! Deliveries keyed by their event's number (`events.seq`), not by the event's key.
//!
//! An event's key ends in the sender's id, which lands anywhere in an index on it; its number
//! comes from a sequence and lands at the end. Keyed by the event's key, every delivery put
//! an entry at a random place of the deliveries' primary key three times (its insert, and the
//! claim's and the record's updates, which PostgreSQL writes as new row versions with new
//! index entries): on a database that had run a while, with ids in no order, those pages were
//! mostly out of the cache. On a database holding 300,000 such events, keyed by number, the
//! database spent ~0.78× the CPU per queue-mode event (bench/RESULTS.md, issue 21's
//! twenty-first look).
//!
//! Migration 8 ([`crate::schema`]) only adds: the numbers, each delivery's `event_seq`, a
//! unique index on (`event_seq`, upstream), and a trigger that numbers the deliveries a
//! replica of the previous release inserts without one. That replica, still running during
//! a rolling upgrade, finds its rows by the old key, whose index stays. This release finds
//! them by number. What pays off is the old key's going, and that breaks the previous release
//! (its `ON CONFLICT` names the old key; its inserts need the trigger): so, as
//! [`crate::collation`] does, it runs only at start-up, under the migrations' lock, on tables
//! this start-up created or with no other client connected. Otherwise each start says so, with
//! the fix: stop every replica, then start one. It must never run while a replica of the
//! previous release may be connected.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::schema::{self, LOCK_TIMEOUT};

/// Whether the old key is still there: the trigger goes with it.
const OLD_KEY_LEFT: &str = "
    SELECT count(*) FROM pg_trigger
    WHERE tgname = 'deliveries_event_seq' AND tgrelid = 'deliveries'::regclass";

/// The deliveries' key becomes (`event_seq`, upstream), on the index migration 8 built. A
/// delivery without a number has no event (the trigger numbers every one that has): it could
/// never be claimed, which reads it with its event, so it goes.
const DROP_OLD_KEY: &str = "
    DROP TRIGGER deliveries_event_seq ON deliveries;
    DROP FUNCTION deliveries_event_seq();
    DELETE FROM deliveries WHERE event_seq IS NULL;
    ALTER TABLE deliveries ALTER COLUMN event_seq SET NOT NULL;
    ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
    ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY USING INDEX deliveries_by_event;";

/// What [`deliveries_by_number_alone`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EventNumbers {
    /// The deliveries are keyed by their event's number alone already.
    Keyed,
    /// The old key went now, in this long.
    Converted { took: Duration },
    /// The old key is left, because other clients are connected.
    Left { others: i64 },
}

/// Drops the deliveries' old key when that is safe (see the module docs): `created` says this
/// start-up created the tables. Call it under the migrations' advisory lock, after them.
pub(crate) async fn deliveries_by_number_alone(
    client: &mut Client,
    created: bool,
) -> Result<EventNumbers, tokio_postgres::Error> {
    let left: i64 = client.query_one(OLD_KEY_LEFT, &[]).await?.get(0);
    if left == 0 {
        return Ok(EventNumbers::Keyed);
    }
    let others = schema::other_clients(client, created).await?;
    if others > 0 {
        return Ok(EventNumbers::Left { others });
    }
    let started = Instant::now();
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; {DROP_OLD_KEY}")).await?;
    tx.commit().await?;
    Ok(EventNumbers::Converted { took: started.elapsed() })
}
