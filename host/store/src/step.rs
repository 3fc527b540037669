//! A plugin step's record: what its runs did (logs, fuel, outcome), what it decided (the
//! event's status, its deliveries, its kv writes) and what the store answered (applied, set
//! aside after a replay, or stale after a kv change).

use serde::Serialize;

use crate::event::{EventKey, EventSeq, EventStatus};
use crate::kv::{KvReadOf, KvWrite};
use crate::queue::{AttemptOutcome, NewDelivery};

/// One plugin's run in a plugin step, as recorded and shown.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRunInfo {
    /// Plugin name.
    pub plugin: String,
    /// The version that ran.
    pub version: u32,
    /// Which attempt of the plugin step.
    pub attempt: u32,
    /// Start, unix ms.
    pub at_ms: i64,
    /// Wall-clock time, instantiation included.
    pub duration_us: i64,
    /// Fuel used.
    pub fuel_used: u64,
    /// `continue`, `drop`, or the failure's reason (`trap`, `timeout`, `fuel_exhausted`…).
    pub outcome: String,
    /// The drop reason, or what the failure said.
    pub detail: Option<String>,
    /// The run's log: (level, message).
    pub logs: Vec<(String, String)>,
}

/// The result of an event's plugin step, written in one commit: the runs, the plugins' kv
/// writes, the step's own outcome, the event's new status and the deliveries it created. The
/// chain gives no kv writes for a failed step, so a run that failed leaves nothing behind but
/// its record.
#[derive(Debug, Clone)]
pub struct PluginStep {
    /// The event's key.
    pub key: EventKey,
    /// The event's number, when the caller has it ([`DueStep::seq`](crate::DueStep::seq), or the insert's in proxy
    /// mode). The store finds the event's rows by it when it is there, and by the key when
    /// not, as for [`Attempt::event_seq`](crate::Attempt::event_seq).
    pub event_seq: Option<EventSeq>,
    /// Which run of the step this was (1-based).
    pub number: u32,
    /// When it started, unix ms: the created deliveries are due then.
    pub at_ms: i64,
    /// What becomes of the step: delivered (it finished), retry or dead.
    pub step: AttemptOutcome,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Each plugin that ran.
    pub runs: Vec<PluginRunInfo>,
    /// kv writes, applied with the step. The chain gives none for a step that failed.
    pub kv: Vec<KvWrite>,
    /// What its runs read from kv (each key once, with what the first read found): the step
    /// is recorded only while those keys still hold what the runs found.
    pub kv_read: Vec<KvReadOf>,
    /// The event's status after the step.
    pub status: EventStatus,
    /// Its reason (drop reason, failure).
    pub reason: Option<String>,
    /// Deliveries to create, due now.
    pub deliveries: Vec<NewDelivery>,
    /// Tags plugins put on the event.
    pub tags: Vec<String>,
    /// What its endpoint's routes matched (`route[0]: crm`, `upstream: legacy`), when the
    /// endpoint has routes; empty when none did.
    pub routes: Option<Vec<String>>,
    /// The end of the lease the step's claim took ([`DueStep::claimed_until_ms`](crate::DueStep::claimed_until_ms)), as for
    /// [`Attempt::claimed_until_ms`](crate::Attempt::claimed_until_ms). `None` for a step with no row (proxy mode) or a store
    /// that does not claim.
    pub claimed_until_ms: Option<i64>,
}

/// What became of a recorded plugin step's decision ([`DeliveryQueue::finish_plugin_step`](crate::DeliveryQueue::finish_plugin_step)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRecorded {
    /// Its kv writes, the deliveries it created and its event's status are in the store.
    Applied,
    /// Its event was replayed (or its claim passed to another reader) since it began: only its
    /// runs were kept, and the replay's own step decides.
    SetAside,
    /// A key its runs read ([`PluginStep::kv_read`]) holds another write than they found:
    /// nothing of the step was recorded, and its step row is as it was. Its caller runs the
    /// step again on the space as stored now. Recorded, the step would have overwritten a
    /// change its runs never saw (two replicas adding to one total, each from the same old
    /// value; a repair), or kept a value built on a write never applied (a ledger's total
    /// counting an event whose step failed after the ledger ran).
    Stale,
}
