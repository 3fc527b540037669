//! payflow-store-postgres: the PostgreSQL backend of the store contract ([`payflow_store`]),
//! for several gateway replicas on one database. It passes the same conformance suite as the
//! SQLite backend.
//!
//! - **Durable acknowledgements**: a write returns `Ok` only after its transaction committed
//!   (the server's `synchronous_commit`, on by default, makes that a flushed WAL record).
//!   New events are group-committed: concurrent requests share one transaction and one
//!   multi-row insert (`ingest.rs`), so throughput is not one round trip per webhook; so are
//!   deliveries' outcomes (`record.rs`). Both through one group-commit task type (`group.rs`).
//! - **De-duplication across replicas**: the events' primary key and `ON CONFLICT DO NOTHING`.
//! - **Claims**: a due delivery or plugin step is claimed by the read that returns it (`FOR
//!   UPDATE SKIP LOCKED`, then a lease until `now + lease`), so no two replicas take the same
//!   row; recording its outcome ends the claim, and a replica that dies leaves its claims to
//!   run out, after which any replica takes them. At least once, as everywhere. A new event's
//!   first hop may be written claimed already by the replica that stored it
//!   ([`payflow_store::NewEvent::claim_until_ms`]), which hands it to its own workers.
//! - **Migrations** at start-up, numbered, under an advisory lock (`schema.rs`).
//!
//! Like every backend it must never decide policy beyond [`payflow_store::settled_status`],
//! and never know of HTTP, wasmtime or metrics. A lost database is `StoreError::Unavailable`
//! (503 to the sender); the pool reconnects on its own when the server is back.

#![forbid(unsafe_code)]

mod admin;
mod group;
mod ingest;
mod plugins;
mod queue;
mod record;
mod schema;
#[cfg(feature = "test-server")]
pub mod server;

use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::sync::Arc;

use payflow_store::{CommitObserver, EventKey, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

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
    lease_ms: i64,
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
        // Every commit waits for its WAL flush, whatever the server's default says.
        config.options("-c synchronous_commit=on");
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
        let applied = schema::migrate(&mut client).await.map_err(unavailable)?;
        if applied > 0 {
            tracing::info!(applied, "store: PostgreSQL schema migrated");
        }
        drop(client);
        Ok(PostgresStore {
            ingest: ingest::Batcher::start(pool.clone(), options.max_batch, commits.clone()),
            recorder: record::Recorder::start(pool.clone(), options.max_batch, commits),
            pool,
            lease_ms: options.lease.as_millis() as i64,
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
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

/// A key's three parts as statement parameters.
fn key_params(key: &EventKey) -> [&(dyn tokio_postgres::types::ToSql + Sync); 3] {
    [&key.merchant, &key.scope, &key.id]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    use payflow_store::Store;

    use super::*;
    use crate::server::TestServer;

    /// One server for the test binary; a fresh database per test.
    fn server() -> &'static TestServer {
        static SERVER: OnceLock<TestServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            let server = TestServer::start();
            // A static is never dropped: without this, every run of these tests left a
            // PostgreSQL server running, with its data directory, behind it.
            server.stop_when_this_process_exits();
            server
        })
    }

    async fn open() -> (Arc<dyn Store>, ()) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let url = server().database(&format!("conformance_{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let store =
            PostgresStore::connect(&url, PostgresOptions::default(), Arc::new(())).await.expect("connects");
        (Arc::new(store), ())
    }

    payflow_store::conformance_tests!(open);
}
