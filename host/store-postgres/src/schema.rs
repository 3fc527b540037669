//! The schema, as numbered migrations applied at start-up. Several replicas may start at once:
//! each takes a session-level advisory lock before it looks at `schema_migrations`, so exactly
//! one applies what is missing while the others wait, then find nothing left to do. A
//! migration is never edited once released: a change is a new one.

use tokio_postgres::Client;

use crate::collation::{self, KeyCollation};
use crate::event_numbers::{self, EventNumbers};

/// The advisory lock's key: any constant no other application on the database uses.
pub(crate) const MIGRATION_LOCK: i64 = 0x7061_7966_6c6f_7701; // "payflow" + 1

/// Every migration, in order. Every row of an event's carries its whole key (merchant, scope,
/// id). `lease_until_ms` is a replica's claim on a due row (see the crate docs).
///
/// 3: the queue's indexes hold only pending rows (a finished delivery leaves them, so they
/// stay as small as the backlog), and the `*_due` indexes are gone: the claimable ones serve
/// every query that used them, and each index is written again on every claim and record.
///
/// 4: compiled code per engine fingerprint, so replicas of two builds (an upgrade, one replica
/// at a time) each load their own instead of replacing each other's on every start. The one
/// artifact a version had is not used: its engine is unknown, so the first engine to load the
/// version compiles it once. Its column stays, empty for new versions, because a replica of
/// the previous release, still running during the roll, reads and writes it (it finds it
/// empty, compiles, and saves there); a later release drops it.
///
/// 5: who forced the replay of a quarantined event.
///
/// 8: events numbered (`seq`), and each delivery given its event's number, with a unique
/// index on (number, upstream): see [`event_numbers`], which later drops the deliveries' old
/// key. A replica of the previous release inserts deliveries without the number; the trigger
/// fills it in. Adding the column rewrites `events` once, holding every write to it meanwhile.
///
/// 9: the events' key leads with the sender's id, and `events_by_id` goes: the key serves a
/// lookup by id alone (the admin API's partial address), and each new event puts an entry at
/// a random place of one index instead of two. `ON CONFLICT (merchant, scope, id)`, as the
/// previous release writes it, still finds the key: PostgreSQL matches a conflict target's
/// columns in any order.
///
/// 10: each attempt given its event's number, with an index on it, beside the index on its
/// event's key that [`event_numbers`] later drops: every delivered event adds an attempt, and
/// by key that entry landed at a random place of the index. A replica of the previous release
/// inserts attempts without the number; the trigger fills it in. Filling the column rewrites
/// `attempts` once.
///
/// 11: each plugin step and each plugin run given its event's number, as 8 and 10 did for
/// deliveries and attempts, for the same reason: a step's row and a run's index entry landed
/// at a random place of an index on the key, three times per step (its insert, its claim, its
/// record). A unique index on the step's number, an index on the run's, and a trigger per
/// table for the previous release's inserts; [`event_numbers`] later drops the old keys.
/// Filling the columns rewrites both tables once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE health (
    id              INTEGER PRIMARY KEY,
    checked_at_ms   BIGINT  NOT NULL
);
CREATE TABLE events (
    merchant        TEXT    NOT NULL,
    scope           TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    endpoint        TEXT    NOT NULL,
    event_type      TEXT,
    status          TEXT    NOT NULL,
    reason          TEXT,
    body            BYTEA   NOT NULL,
    headers         TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    received_at_ms  BIGINT  NOT NULL,
    claimed_at_ms   BIGINT,
    tags            TEXT,
    PRIMARY KEY (merchant, scope, id)
);
CREATE INDEX events_by_time ON events (received_at_ms);
CREATE INDEX events_by_id ON events (id);
CREATE TABLE deliveries (
    merchant            TEXT    NOT NULL,
    scope               TEXT    NOT NULL,
    event_id            TEXT    NOT NULL,
    upstream            TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    next_attempt_at_ms  BIGINT  NOT NULL,
    body                BYTEA,
    headers             TEXT,
    lease_until_ms      BIGINT,
    PRIMARY KEY (merchant, scope, event_id, upstream)
);
CREATE INDEX deliveries_due ON deliveries (upstream, status, next_attempt_at_ms);
CREATE TABLE plugin_steps (
    merchant            TEXT    NOT NULL,
    scope               TEXT    NOT NULL,
    event_id            TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    next_attempt_at_ms  BIGINT  NOT NULL,
    error               TEXT,
    lease_until_ms      BIGINT,
    PRIMARY KEY (merchant, scope, event_id)
);
CREATE INDEX plugin_steps_due ON plugin_steps (status, next_attempt_at_ms);
CREATE TABLE attempts (
    seq          BIGSERIAL PRIMARY KEY,
    merchant     TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    upstream     TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    at_ms        BIGINT  NOT NULL,
    duration_ms  BIGINT  NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    response     TEXT
);
CREATE INDEX attempts_by_key ON attempts (merchant, scope, event_id);
CREATE TABLE plugin_runs (
    seq          BIGSERIAL PRIMARY KEY,
    merchant     TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    plugin       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    at_ms        BIGINT  NOT NULL,
    duration_us  BIGINT  NOT NULL,
    fuel_used    BIGINT  NOT NULL,
    outcome      TEXT    NOT NULL,
    detail       TEXT,
    logs         TEXT    NOT NULL
);
CREATE INDEX plugin_runs_by_key ON plugin_runs (merchant, scope, event_id);
CREATE TABLE plugins (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    active_version  INTEGER,
    file_sha256     TEXT,
    PRIMARY KEY (merchant, name)
);
CREATE TABLE plugin_versions (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    sha256          TEXT    NOT NULL,
    wasm            BYTEA   NOT NULL,
    compiled        BYTEA   NOT NULL,
    source          TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (merchant, name, version)
);
CREATE TABLE plugin_kv (
    merchant  TEXT   NOT NULL,
    plugin    TEXT   NOT NULL,
    key       TEXT   NOT NULL,
    value     BYTEA  NOT NULL,
    PRIMARY KEY (merchant, plugin, key)
);
",
    ),
    (
        2,
        "
CREATE INDEX deliveries_claimable
    ON deliveries (upstream, status, (GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0))));
CREATE INDEX plugin_steps_claimable
    ON plugin_steps (status, (GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0))));
",
    ),
    (
        3,
        "
DROP INDEX deliveries_due;
DROP INDEX plugin_steps_due;
DROP INDEX deliveries_claimable;
DROP INDEX plugin_steps_claimable;
CREATE INDEX deliveries_claimable
    ON deliveries (upstream, (GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0))))
    WHERE status = 'pending';
CREATE INDEX plugin_steps_claimable
    ON plugin_steps ((GREATEST(next_attempt_at_ms, COALESCE(lease_until_ms, 0))))
    WHERE status = 'pending';
",
    ),
    (
        4,
        "
CREATE TABLE plugin_compiled (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    engine          TEXT    NOT NULL,
    compiled        BYTEA   NOT NULL,
    PRIMARY KEY (merchant, name, version, engine)
);
ALTER TABLE plugin_versions ALTER COLUMN compiled SET DEFAULT '';
",
    ),
    (5, "ALTER TABLE events ADD COLUMN forced_by TEXT;"),
    (
        6,
        "
CREATE SEQUENCE events_order_seq;
ALTER TABLE events ADD COLUMN order_key TEXT, ADD COLUMN order_seq BIGINT;
ALTER TABLE plugin_steps ADD COLUMN routes TEXT;
CREATE INDEX events_in_order ON events (merchant, order_key, status, order_seq) WHERE order_key IS NOT NULL;
",
    ),
    (
        7,
        "
CREATE TABLE plugin_canaries (
    merchant        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    percent         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    reason          TEXT,
    at_ms           BIGINT  NOT NULL,
    PRIMARY KEY (merchant, name)
);
",
    ),
    (
        8,
        "
CREATE SEQUENCE events_seq;
ALTER TABLE events ADD COLUMN seq BIGINT NOT NULL DEFAULT nextval('events_seq');
ALTER SEQUENCE events_seq OWNED BY events.seq;
CREATE UNIQUE INDEX events_by_seq ON events (seq);
ALTER TABLE deliveries ADD COLUMN event_seq BIGINT;
UPDATE deliveries d SET event_seq = e.seq FROM events e
    WHERE e.merchant = d.merchant AND e.scope = d.scope AND e.id = d.event_id;
CREATE UNIQUE INDEX deliveries_by_event ON deliveries (event_seq, upstream);
CREATE FUNCTION deliveries_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := (SELECT seq FROM events
                      WHERE merchant = NEW.merchant AND scope = NEW.scope AND id = NEW.event_id);
    RETURN NEW;
END $$;
CREATE TRIGGER deliveries_event_seq BEFORE INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.event_seq IS NULL) EXECUTE FUNCTION deliveries_event_seq();
",
    ),
    (
        9,
        "
CREATE UNIQUE INDEX events_key_by_id ON events (id, merchant, scope);
ALTER TABLE events DROP CONSTRAINT events_pkey,
    ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_key_by_id;
DROP INDEX events_by_id;
",
    ),
    (
        10,
        "
ALTER TABLE attempts ADD COLUMN event_seq BIGINT;
UPDATE attempts a SET event_seq = e.seq FROM events e
    WHERE e.merchant = a.merchant AND e.scope = a.scope AND e.id = a.event_id;
CREATE INDEX attempts_by_event ON attempts (event_seq);
CREATE FUNCTION attempts_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := (SELECT seq FROM events
                      WHERE merchant = NEW.merchant AND scope = NEW.scope AND id = NEW.event_id);
    RETURN NEW;
END $$;
CREATE TRIGGER attempts_event_seq BEFORE INSERT ON attempts
    FOR EACH ROW WHEN (NEW.event_seq IS NULL) EXECUTE FUNCTION attempts_event_seq();
",
    ),
    (
        11,
        "
ALTER TABLE plugin_steps ADD COLUMN event_seq BIGINT;
UPDATE plugin_steps t SET event_seq = e.seq FROM events e
    WHERE e.merchant = t.merchant AND e.scope = t.scope AND e.id = t.event_id;
CREATE UNIQUE INDEX plugin_steps_by_event ON plugin_steps (event_seq);
CREATE FUNCTION plugin_steps_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := (SELECT seq FROM events
                      WHERE merchant = NEW.merchant AND scope = NEW.scope AND id = NEW.event_id);
    RETURN NEW;
END $$;
CREATE TRIGGER plugin_steps_event_seq BEFORE INSERT ON plugin_steps
    FOR EACH ROW WHEN (NEW.event_seq IS NULL) EXECUTE FUNCTION plugin_steps_event_seq();
ALTER TABLE plugin_runs ADD COLUMN event_seq BIGINT;
UPDATE plugin_runs t SET event_seq = e.seq FROM events e
    WHERE e.merchant = t.merchant AND e.scope = t.scope AND e.id = t.event_id;
CREATE INDEX plugin_runs_by_event ON plugin_runs (event_seq);
CREATE FUNCTION plugin_runs_event_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := (SELECT seq FROM events
                      WHERE merchant = NEW.merchant AND scope = NEW.scope AND id = NEW.event_id);
    RETURN NEW;
END $$;
CREATE TRIGGER plugin_runs_event_seq BEFORE INSERT ON plugin_runs
    FOR EACH ROW WHEN (NEW.event_seq IS NULL) EXECUTE FUNCTION plugin_runs_event_seq();
",
    ),
    // Each kv write carries its run's version, so steps that commit out of their runs' order
    // leave the latest run's value (`step_record::write_kv`).
    (12, "ALTER TABLE plugin_kv ADD COLUMN version BIGINT NOT NULL DEFAULT 0;"),
    // How many times each writer changed a plugin's kv space (`plugins::kv_changes_elsewhere!`):
    // a replica reads the whole space again only when the others' count moved. Counted by
    // triggers, so that every change counts, whoever makes it: a replica's own connections
    // name it (`plugins::KV_WRITER`), and anything else (a replica of a release before this
    // one, the admin API, an operator's psql) counts as writer 0.
    (
        13,
        "
CREATE TABLE plugin_kv_changes (
    merchant  TEXT COLLATE \"C\" NOT NULL,
    plugin    TEXT COLLATE \"C\" NOT NULL,
    writer    BIGINT NOT NULL,
    changes   BIGINT NOT NULL,
    PRIMARY KEY (merchant, plugin, writer)
);
CREATE FUNCTION plugin_kv_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plugin_kv_changes (merchant, plugin, writer, changes)
    SELECT DISTINCT merchant, plugin, COALESCE(NULLIF(current_setting('payflow.kv_writer', true), '')::int8, 0), 1
    FROM changed ORDER BY 1, 2
    ON CONFLICT (merchant, plugin, writer) DO UPDATE SET changes = plugin_kv_changes.changes + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER plugin_kv_inserted AFTER INSERT ON plugin_kv
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plugin_kv_changed();
CREATE TRIGGER plugin_kv_updated AFTER UPDATE ON plugin_kv
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plugin_kv_changed();
CREATE TRIGGER plugin_kv_deleted AFTER DELETE ON plugin_kv
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plugin_kv_changed();
",
    ),
    // Which replica wrote each key (`payflow_store::KvStamp`): replicas count their versions
    // each on their own, so only version and writer together tell whether a key still holds
    // the write a run read (`step_record::stale_steps`). A replica of the previous release
    // leaves it as it was while it changes the version, which tells as well.
    (14, "ALTER TABLE plugin_kv ADD COLUMN writer BIGINT NOT NULL DEFAULT 0;"),
    // How many times keys were deleted from each space (`plugins::kv_stand!`): a replica reads
    // only the keys written since its last read (`plugins::KV_CHANGED_SINCE`), and a delete
    // leaves no row to read, so after one it reads the space whole. A replica of the previous
    // release that folds the counts at its start drops these to 0: a change all the same.
    (
        15,
        "
ALTER TABLE plugin_kv_changes ADD COLUMN deletes BIGINT NOT NULL DEFAULT 0;
CREATE FUNCTION plugin_kv_keys_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plugin_kv_changes (merchant, plugin, writer, changes, deletes)
    SELECT DISTINCT merchant, plugin, COALESCE(NULLIF(current_setting('payflow.kv_writer', true), '')::int8, 0), 1, 1
    FROM changed ORDER BY 1, 2
    ON CONFLICT (merchant, plugin, writer) DO UPDATE
    SET changes = plugin_kv_changes.changes + 1, deletes = plugin_kv_changes.deletes + 1;
    RETURN NULL;
END $$;
DROP TRIGGER plugin_kv_deleted ON plugin_kv;
CREATE TRIGGER plugin_kv_deleted AFTER DELETE ON plugin_kv
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION plugin_kv_keys_deleted();
",
    ),
    // Each kv write is numbered (`plugins::KV_CHANGED_SINCE`): a replica reads the keys
    // written since its last read through an index, instead of testing every row of the space.
    // The numbers come from one sequence, taken by each step batch's write (`step_record::
    // WRITE_KV`) under the space's advisory lock, held to its commit, so in each space they
    // grow in commit order: a read that sees a number sees every lower one. A write that
    // carries no number (a replica of the previous release, an operator's psql) cannot be
    // found so, and is counted where deletes are: after either, a space is read whole. The
    // column keeps migration 15's name because a replica of the previous release folds it at
    // its start (`plugins::FOLD_ALL`) and must keep it growing. The connections of a release
    // that numbers its writes say so (`plugins::KV_NUMBERED`). The index leads with an
    // expression of the space, not its two columns, so that no other lookup can take it: one
    // by key (`step_record::KV_NOW`) planned while the space was small took it for the key's
    // index, and read the whole space for each key (`bench/RESULTS.md`, thirty-sixth look).
    (
        16,
        "
CREATE SEQUENCE plugin_kv_change_numbers AS BIGINT;
ALTER TABLE plugin_kv ADD COLUMN change BIGINT NOT NULL DEFAULT 0;
CREATE INDEX plugin_kv_by_change ON plugin_kv ((ARRAY[merchant, plugin]), change);
CREATE OR REPLACE FUNCTION plugin_kv_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plugin_kv_changes (merchant, plugin, writer, changes, deletes)
    SELECT DISTINCT merchant, plugin, COALESCE(NULLIF(current_setting('payflow.kv_writer', true), '')::int8, 0), 1,
           CASE WHEN current_setting('payflow.kv_numbered', true) = 'on' THEN 0 ELSE 1 END
    FROM changed ORDER BY 1, 2
    ON CONFLICT (merchant, plugin, writer) DO UPDATE
    SET changes = plugin_kv_changes.changes + 1, deletes = plugin_kv_changes.deletes + excluded.deletes;
    RETURN NULL;
END $$;
",
    ),
];

/// What start-up did to the schema.
pub(crate) struct Migrated {
    /// Migrations applied.
    pub(crate) applied: usize,
    /// The key columns' collation, converted or not ([`collation`]). Its failure does not
    /// stop the replica: the store works in either collation.
    pub(crate) keys: Result<KeyCollation, tokio_postgres::Error>,
    /// Whether the deliveries' old key is gone ([`event_numbers`]). Its failure does not
    /// stop the replica either: the store works with or without that key.
    pub(crate) numbers: Result<EventNumbers, tokio_postgres::Error>,
}

/// Other clients on this database, but for those waiting for an advisory lock (replicas
/// waiting to migrate: they prepare their statements after this one is done).
const OTHER_CLIENTS: &str = "
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
      AND (wait_event_type IS DISTINCT FROM 'Lock' OR wait_event IS DISTINCT FROM 'advisory')";

/// How many other clients may hold statements prepared on our tables: none when `created`
/// (this start-up created them; replicas starting beside it wait for the migrations' lock and
/// prepare nothing before), else [`OTHER_CLIENTS`]. A change that breaks a statement another
/// process prepared (a replica of the previous release, during a rolling upgrade) runs only
/// when this is 0.
pub(crate) async fn other_clients(client: &Client, created: bool) -> Result<i64, tokio_postgres::Error> {
    if created {
        return Ok(0);
    }
    Ok(client.query_one(OTHER_CLIENTS, &[]).await?.get(0))
}

/// How long such a change waits for a table's lock before it gives up (and the replica starts
/// without it): no other client is connected, so only a server process (autovacuum, which
/// yields) could hold one; a start-up must not hang behind anything else.
pub(crate) const LOCK_TIMEOUT: &str = "5s";

/// Applies the migrations this database lacks, then puts the keys in byte order when that is
/// safe, all under the advisory lock.
pub(crate) async fn migrate(client: &mut Client) -> Result<Migrated, tokio_postgres::Error> {
    // A migration that fills a column reads whole tables: sequentially, not through an index
    // as the pool's connections are told to (`RESET` gives the connection that back).
    client.batch_execute("SET enable_seqscan = on").await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let applied = apply(client, i32::MAX).await;
    let gated = match applied {
        // Every migration applied now: this start-up created the tables.
        Ok(n) => Some((
            collation::keys_in_byte_order(client, n == MIGRATIONS.len()).await,
            event_numbers::by_number_alone(client, n == MIGRATIONS.len()).await,
        )),
        Err(_) => None,
    };
    // Released even when a migration failed; a lost connection releases it too.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let reset = client.batch_execute("RESET enable_seqscan").await;
    let applied = applied?;
    unlocked?;
    reset?;
    let (keys, numbers) = gated.expect("applied");
    Ok(Migrated { applied, keys, numbers })
}

/// Applies the migrations up to version `last` that this database lacks; how many.
pub(crate) async fn apply(client: &mut Client, last: i32) -> Result<usize, tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version     INTEGER PRIMARY KEY,
                 applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version <= last) {
        let done = client.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await?;
        if done.is_some() {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await?;
        tx.commit().await?;
        applied += 1;
    }
    Ok(applied)
}
