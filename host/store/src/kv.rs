//! A plugin's kv space as stored: its entries and their stamps, the writes and reads a step
//! carries (each read checked at the step's commit), a replica's turn on a contended space and
//! the changes made elsewhere since a read.

/// A value a plugin stored, committed with its step.
#[derive(Debug, Clone)]
pub struct KvWrite {
    /// Plugin name.
    pub plugin: String,
    /// Key within the plugin's space.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Vec<u8>,
    /// The plugin's count of runs that wrote, at the run that wrote this (see the plugins'
    /// `kv_space`). Steps may commit out of their runs' order; the store keeps, per key, the
    /// write of the highest version, so an earlier run's write never replaces a later one's.
    pub version: i64,
}

/// A key of a plugin's key-value space as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Key within the plugin's space.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Vec<u8>,
    /// The version of the write that stored it ([`KvWrite::version`]; 0 before versions).
    pub version: i64,
    /// The gateway whose write stored it ([`PluginStore::kv_writer`](crate::PluginStore::kv_writer); 0 for a store that
    /// does not share kv, a write from before writers were kept, or a write of no gateway's).
    pub writer: i64,
}

impl KvEntry {
    /// The write that stored it.
    pub fn stamp(&self) -> KvStamp {
        KvStamp { version: self.version, writer: self.writer }
    }
}

/// Which write a key's value came from: its version and its writer. Two gateways' versions
/// may be equal (each counts its own runs), so the writer tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvStamp {
    /// [`KvWrite::version`].
    pub version: i64,
    /// [`PluginStore::kv_writer`](crate::PluginStore::kv_writer) of the gateway that wrote it.
    pub writer: i64,
}

/// A key a step's run read, and what it found there: the write its value came from, or
/// nothing. The step commits only while every key its runs read still holds what they found
/// ([`StepRecorded::Stale`](crate::StepRecorded::Stale)), so a run never writes over a change it did not see (another
/// gateway's, a repair), nor builds on a write that was never applied (a run reads the last
/// run's writes before their step commits, and that step may fail or be set aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvReadOf {
    /// Plugin name.
    pub plugin: String,
    /// Key within the plugin's space.
    pub key: String,
    /// The write the run read; `None` when the key was absent.
    pub found: Option<KvStamp>,
}

/// This gateway's turn on a plugin's key-value space among the gateways sharing the store
/// ([`PluginStore::kv_turn`](crate::PluginStore::kv_turn)): while it is held, another gateway asking for a turn on the space
/// waits. Dropping it gives the turn up; the store also gives it up by itself after a while, so
/// a gateway that stops running the plugin never holds the others back for long.
///
/// A turn only spares runs made again: it must never be what keeps an update from being lost.
/// The store's check of what a step's runs read ([`PluginStep::kv_read`](crate::PluginStep::kv_read)) does that, turn or
/// not (a turn may have run out, or been taken by a gateway that does not ask for turns).
pub struct KvTurn {
    waited: bool,
    /// Dropped when the turn is given up.
    release: Option<tokio::sync::oneshot::Sender<()>>,
    /// Answered (or dropped) once the store has given the turn up.
    given_up: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl KvTurn {
    /// A turn taken after waiting for another gateway's (`waited`), or at once. The store gives
    /// it up when `release` is dropped, then answers `given_up`.
    pub fn new(
        waited: bool,
        release: tokio::sync::oneshot::Sender<()>,
        given_up: tokio::sync::oneshot::Receiver<()>,
    ) -> Self {
        KvTurn { waited, release: Some(release), given_up: Some(given_up) }
    }

    /// Whether another gateway held the turn when this one was asked for.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Gives the turn up, and returns once the store has: a turn asked for next, by this
    /// gateway or another, then never waits for this one. (Dropped, it is given up as well, a
    /// moment later.)
    pub async fn give_up(mut self) {
        drop(self.release.take());
        if let Some(given_up) = self.given_up.take() {
            let _ = given_up.await;
        }
    }
}

/// Where a read of a plugin's key-value space stands in the store's history: what a gateway
/// keeps with its copy of the space, and gives back to the store to learn what changed since
/// ([`PluginStore::kv_changed_since`](crate::PluginStore::kv_changed_since)). Only the store that made it reads its fields; a store
/// one gateway owns leaves them 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvChanges {
    /// How many times the space was changed other than by this gateway's own steps: by other
    /// gateways sharing the store, by the admin API's repairs, by anything else that writes to
    /// the store. It never reads the same again once it moved, so while it reads the same,
    /// nobody else changed the stored space and a gateway may run the plugin on its copy.
    pub elsewhere: i64,
    /// How many changes were made to the space, by anyone, that a read of what changed cannot
    /// list: keys deleted (they leave nothing to read), and writes the store could not mark as
    /// changes. The keys written since a read can be read alone, but when this moved, the space
    /// is read whole.
    pub unlisted: i64,
    /// The point in the store's history the read saw: every change made after it is later.
    pub since: i64,
}

/// A plugin's key-value space as one read found it ([`PluginStore::load_kv_space`](crate::PluginStore::load_kv_space)), or the
/// part of it that changed since an earlier read ([`PluginStore::kv_changed_since`](crate::PluginStore::kv_changed_since)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvRead {
    /// Its keys, in no order.
    pub entries: Vec<KvEntry>,
    /// Where the read stands.
    pub changes: KvChanges,
}
