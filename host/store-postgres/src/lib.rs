//! payflow-store-postgres: the PostgreSQL backend of the store contract ([`payflow_store`]),
//! for several gateway replicas on one database. It passes the same conformance suite as the
//! SQLite backend.
//!
//! - **Durable acknowledgements**: a write returns `Ok` only after its transaction committed
//!   (the server's `synchronous_commit`, on by default, makes that a flushed WAL record).
//!   New events are group-committed: concurrent requests share one transaction and one
//!   multi-row insert (`ingest.rs`), so throughput is not one round trip per webhook; so are
//!   deliveries' outcomes (`record.rs`) and plugin steps' (`step_record.rs`). All through one
//!   group-commit task type (`group.rs`).
//! - **De-duplication across replicas**: the events' primary key and `ON CONFLICT DO NOTHING`.
//! - **Claims**: a due delivery or plugin step is claimed by the read that returns it (`FOR
//!   UPDATE SKIP LOCKED`, then a lease until `now + lease`), so no two replicas take the same
//!   row; recording its outcome ends the claim, and a replica that dies leaves its claims to
//!   run out, after which any replica takes them. At least once, as everywhere. A new event's
//!   first hop may be written claimed already by the replica that stored it
//!   ([`payflow_store::NewEvent::claim_until_ms`]), which hands it to its own workers.
//! - **Every statement served by an index**: the pool's connections run with sequential
//!   scans disabled (`enable_seqscan=off`; the migrations turn them back on). Each pooled
//!   connection prepares a statement once and PostgreSQL soon keeps one plan for it, made
//!   with what the tables held then: on a new database, nothing, so a sequential scan was the
//!   cheapest plan. It stayed, until autovacuum next analyzed the table, while a burst grew
//!   the tables to thousands of rows: every claim scanned `deliveries` and `events` whole
//!   (60 ms a claim at 20,000 events, 2 ms of the database's CPU per event). Every statement
//!   of ours has an index to use, and a sequential scan is still taken where none could
//!   serve (a test keeps the hot path free of them).
//! - **Migrations** at start-up, numbered, under an advisory lock (`schema.rs`).
//! - **Keys in byte order**: text keys compare with the `"C"` collation whatever the database's
//!   (`collation.rs`): a language's collation made every index lookup dearer, and lists now
//!   break ties as on SQLite.
//! - **An event's deliveries, attempts, plugin step and runs keyed by its number**
//!   (`events.seq`), which lands at the end of an index where a sender's id lands anywhere
//!   (`event_numbers.rs`).
//!
//! Like every backend it must never decide policy beyond [`payflow_store::settled_status`],
//! and never know of HTTP, wasmtime or metrics. A lost database is `StoreError::Unavailable`
//! (503 to the sender); the pool reconnects on its own when the server is back.

#![forbid(unsafe_code)]

/// The number (`events.seq`) of the event whose key is `$1`, `$2`, `$3` (merchant, scope,
/// id): how a statement given a key finds the event's deliveries.
macro_rules! seq_of_key {
    () => {
        "(SELECT seq FROM events WHERE merchant = $1 AND scope = $2 AND id = $3)"
    };
}

/// The condition that a claimed row, whose lease is the column `$lease`, still holds the lease
/// an attempt's claim took (`$claimed`; an attempt that carries none is not asked): a replay
/// since the attempt began ended it ([`payflow_store::Attempt::claimed_until_ms`]), and so
/// would another replica's claim of a row whose lease ran out. Beside
/// [`payflow_store::takes_outcome!`], whose clock rule alone is only as exact as the replicas'
/// clocks agree. A later claim takes the very same lease only if its claimant's clock reads
/// the millisecond the first claimant's did, and the clock rule must then fail too.
macro_rules! holds_claim {
    ($lease:literal, $claimed:literal) => {
        concat!("(", $claimed, " IS NULL OR ", $lease, " = ", $claimed, ")")
    };
}

mod admin;
mod collation;
mod event_numbers;
mod group;
mod ingest;
mod kv_turn;
mod plugins;
mod queue;
mod record;
mod schema;
#[cfg(feature = "test-server")]
pub mod server;
mod step_record;

use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::sync::Arc;

use payflow_store::{CommitObserver, EventKey, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::collation::KeyCollation;
use crate::event_numbers::EventNumbers;

/// How the backend is tuned.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: usize,
    /// New events at most per group commit.
    pub max_batch: usize,
    /// How long a replica's claim on a due row lasts before another replica may take it. It
    /// must be longer than any delivery or plugin step takes, or a slow one is made twice.
    pub lease: Duration,
    /// How long a request waits for a connection (or a connection for the server) before
    /// the store answers unavailable.
    pub timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 16,
            max_batch: 512,
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL store. See the crate docs.
pub struct PostgresStore {
    pool: Pool,
    ingest: ingest::Batcher,
    recorder: record::Recorder,
    steps: step_record::StepRecorder,
    lease_ms: i64,
    /// This store's number as a writer of plugins' kv spaces (`plugin_kv_changes`), new each
    /// time a replica starts: its connections set it ([`plugins::KV_WRITER`]).
    kv_writer: i64,
    /// The kv turns this replica may hold (or wait for) at once, each on a connection of the
    /// pool: a quarter of it, so that turns on many spaces never take the connections that
    /// ingest and deliveries need ([`kv_turn`]).
    turns: Arc<tokio::sync::Semaphore>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), applies the missing
    /// migrations and starts the group-commit task, which tells `commits` how long each batch
    /// took. Call it within a tokio runtime.
    pub async fn connect(
        url: &str,
        options: PostgresOptions,
        commits: Arc<dyn CommitObserver>,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Unavailable(format!("store url: {e}")))?;
        config.connect_timeout(options.timeout);
        // Every commit waits for its WAL flush, whatever the server's default says. No
        // sequential scans (see the crate docs): the planner plans our statements on a new
        // database's empty tables, and went on running those plans, a whole-table scan per
        // row, as the tables grew.
        // Each connection also says which replica it is, for the count of changes to the
        // plugins' kv spaces (`plugins::kv_stand!`), and that it numbers its kv writes.
        let kv_writer = plugins::new_kv_writer();
        config.options(format!(
            "-c synchronous_commit=on -c enable_seqscan=off -c {}={kv_writer} -c {}=on",
            plugins::KV_WRITER,
            plugins::KV_NUMBERED
        ));
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let migrated = schema::migrate(&mut client).await.map_err(unavailable)?;
        if migrated.applied > 0 {
            tracing::info!(applied = migrated.applied, "store: PostgreSQL schema migrated");
        }
        report_keys(migrated.keys);
        report_numbers(migrated.numbers);
        client.execute(plugins::FOLD_ALL, &[]).await.map_err(unavailable)?;
        drop(client);
        Ok(PostgresStore {
            ingest: ingest::Batcher::start(pool.clone(), options.max_batch, commits.clone()),
            recorder: record::Recorder::start(pool.clone(), options.max_batch, commits.clone()),
            steps: step_record::StepRecorder::start(pool.clone(), kv_writer, options.max_batch, commits),
            pool,
            lease_ms: options.lease.as_millis() as i64,
            kv_writer,
            turns: Arc::new(tokio::sync::Semaphore::new((options.pool_size / 4).max(1))),
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Says what start-up found of the keys' collation ([`collation`]): a warning, with the fix,
/// when they stay in the database's own.
fn report_keys(keys: Result<KeyCollation, tokio_postgres::Error>) {
    match keys {
        Ok(KeyCollation::Bytes) => {}
        Ok(KeyCollation::Converted { columns, took }) => tracing::info!(
            columns,
            took_ms = took.as_millis() as u64,
            "store: key columns now compare in byte order (collation \"C\")"
        ),
        Ok(KeyCollation::Left { columns, others, collation }) => tracing::warn!(
            columns,
            others,
            collation,
            "store: event keys compare in the database's collation, which costs the database \
             more CPU per event; they are put in byte order at a start-up with no other client \
             connected to the database (`others` counts them: replicas, psql sessions, monitoring): \
             stop every replica, then start one"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "store: the key columns could not be put in byte order; the store works as it is, \
             and the next start-up with no other client connected tries again"
        ),
    }
}

/// Says what start-up found of the keys of the rows an event owns ([`event_numbers`]): a
/// warning, with the fix, when the old ones stay.
fn report_numbers(numbers: Result<EventNumbers, tokio_postgres::Error>) {
    match numbers {
        Ok(EventNumbers::Keyed) => {}
        Ok(EventNumbers::Converted { took }) => tracing::info!(
            took_ms = took.as_millis() as u64,
            "store: deliveries, attempts, plugin steps and plugin runs are now keyed by their event's number alone"
        ),
        Ok(EventNumbers::Left { others }) => tracing::warn!(
            others,
            "store: deliveries, attempts, plugin steps or plugin runs keep the keys of the previous release beside their \
             event's number, which costs the database more CPU per event on a database that has \
             run a while; they go at a start-up with no other client connected to the database (`others` counts \
             them: replicas, psql sessions, monitoring): stop every replica, then start one"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "store: the old keys of deliveries, attempts, plugin steps and plugin runs could not be dropped; the store works as it is, and \
             the next start-up with no other client connected tries again"
        ),
    }
}

/// A connection the pool cannot give: `Closed` after [`payflow_store::Lifecycle::close`],
/// else unavailable (the server is down or every connection is busy past the timeout).
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        e => unavailable(e),
    }
}

/// Runs `sql` as a statement prepared once per connection (the pool's statement cache): the
/// server parses and plans each of the store's statements once, not on every call, and a call
/// is one round trip.
async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.execute(&statement, params).await
}

/// [`exec`] for a statement that returns rows.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query(&statement, params).await
}

/// [`exec`] for a statement that returns at most one row.
async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query_opt(&statement, params).await
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The event key in a row's first three columns (merchant, scope, id).
fn key_at(r: &Row) -> EventKey {
    EventKey::new(r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2))
}

/// A key's three parts as statement parameters.
fn key_params(key: &EventKey) -> [&(dyn tokio_postgres::types::ToSql + Sync); 3] {
    [&key.merchant, &key.scope, &key.id]
}

#[cfg(test)]
mod tests;
