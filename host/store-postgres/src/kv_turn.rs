//! Replicas' turns on a plugin's kv space ([`payflow_store::KvTurn`]): a session-level advisory
//! lock of the space's own (not the one its step batches take, [`space_lock`]), held on a
//! connection of the pool for as long as the turn lasts, and given up by an unlock on that same
//! connection before it goes back to the pool. The lock and the unlock are statements the
//! connection keeps prepared: one round trip each.
//!
//! It must never leave a pooled connection holding the lock: a connection whose unlock failed
//! is detached from the pool and closed, which ends its session and so its locks.

use std::time::Duration;

use deadpool_postgres::Object;
use payflow_store::{KvTurn, StoreError};
use tokio_postgres::error::SqlState;

use crate::step_record::space_lock;
use crate::{query_opt, unavailable, PostgresStore};

/// How long a replica waits for another's turn on a space before it runs without one. A turn
/// lasts a few tens of milliseconds; a wait this long means the holder is stuck (its database
/// connection, say), and running without a turn is only slower, never wrong.
const WAIT_AT_MOST: Duration = Duration::from_secs(1);

/// The turn lock of merchant `merchant`'s plugin `plugin`'s kv space: its [`space_lock`] with
/// the bits of "turn" flipped, so that a turn never waits on the space's step batches (nor they
/// on it). Two spaces sharing a lock only wait for each other.
pub(crate) fn turn_lock(merchant: &str, plugin: &str) -> i64 {
    space_lock(merchant, plugin) ^ 0x7475_726e_0000_0000
}

/// Takes the turn (see [`payflow_store::PluginStore::kv_turn`]): at once if nobody holds it,
/// else after waiting at most [`WAIT_AT_MOST`] (`None` past that). Given up when the turn is
/// dropped, or after `hold_at_most` whatever happens. `None` at once when this replica already
/// holds or waits for as many turns as it may (`PostgresStore::turns`).
pub(crate) async fn take(
    store: &PostgresStore,
    merchant: &str,
    plugin: &str,
    hold_at_most: Duration,
) -> Result<Option<KvTurn>, StoreError> {
    let Ok(permit) = store.turns.clone().try_acquire_owned() else {
        return Ok(None);
    };
    let lock = turn_lock(merchant, plugin);
    let client = store.client().await?;
    let at_once =
        query_opt(&client, "SELECT pg_try_advisory_lock($1)", &[&lock]).await.map_err(unavailable)?;
    let at_once = at_once.is_some_and(|r| r.get::<_, bool>(0));
    if !at_once {
        // A session lock taken inside a transaction outlives it; the transaction bounds the wait.
        let wait = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SELECT pg_advisory_lock({lock}); COMMIT",
            WAIT_AT_MOST.as_millis()
        );
        if let Err(e) = client.batch_execute(&wait).await {
            let ran_out = e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE);
            if client.batch_execute("ROLLBACK").await.is_err() {
                drop(Object::take(client));
            }
            return if ran_out { Ok(None) } else { Err(unavailable(e)) };
        }
    }
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (tell_given_up, given_up) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(hold_at_most, released).await;
        let unlocked = query_opt(&client, "SELECT pg_advisory_unlock($1)", &[&lock]).await;
        if !matches!(unlocked.map(|r| r.map(|r| r.get::<_, bool>(0))), Ok(Some(true))) {
            tracing::debug!("a kv turn's unlock failed; its connection is closed instead");
            drop(Object::take(client));
        }
        drop(permit);
        let _ = tell_given_up.send(());
    });
    Ok(Some(KvTurn::new(!at_once, release, given_up)))
}
