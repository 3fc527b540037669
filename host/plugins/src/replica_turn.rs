//! Replicas taking turns on a plugin's kv space they contend for.
//!
//! With replicas sharing the store, each runs a plugin on its own copy of the space, and a step
//! commits only while the keys its runs read still hold what they found; else it is stale and
//! made again. On a key every event touches (one running total), each replica's commits made
//! the other's runs in flight stale: ~2.4 runs per event with two replicas (bench/RESULTS.md,
//! thirty-seventh look). So once a quarter of a plugin's latest steps here came back stale
//! ([`STALE_OF_32`]), its runs take turns with the other replicas' ([`PluginStore::kv_turn`]):
//! a turn lasts [`TURN`]; then this replica waits (at most [`SETTLE_AT_MOST`]) for its steps to
//! answer, so that what it wrote is in the store, and gives the turn up. The next holder reads
//! what changed first (the space is doubted), so its runs find this one's writes. Turns go on
//! for [`CONTENDED_FOR`] after the last sign of contention: a quarter of the steps stale; or,
//! while taking turns, any stale step, or the others found to have written a quarter of the keys
//! this replica read in its turn before ([`ReplicaTurn::after_read`]).
//!
//! It must never be what keeps an update from being lost: the store's check at commit does
//! that, turn or not (a turn the store gave up by itself, or a replica that does not ask). It
//! must never be taken where a tokio thread would wait for it: it is taken on a plugin thread,
//! within the plugin's own turn in this gateway ([`Slot`]'s), and only that thread touches it.
//!
//! [`PluginStore::kv_turn`]: payflow_store::PluginStore::kv_turn

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use payflow_store::{KvStamp, KvTurn, PluginStore};
use tokio::runtime::Handle;

use crate::kv_space::KvSpace;
use crate::registry::Slot;

/// How long a turn is used before it is handed on. Runs take tens of microseconds and a step
/// batch commits in a few milliseconds: long enough for batches' worth of runs, short enough
/// that the other replica's events wait little. 10, 20 and 40 ms measured alike, within the
/// bench's noise (bench/RESULTS.md, thirty-eighth look).
pub const TURN: Duration = Duration::from_millis(20);

/// How long a replica whose turn is up waits for its steps to answer before it hands the turn
/// on anyway (a slow commit then costs runs made again, never an update). A busy database on
/// the same two cores took longer than 20 ms now and then (bench/RESULTS.md, thirty-eighth
/// look).
pub const SETTLE_AT_MOST: Duration = Duration::from_millis(50);

/// How long after the last sign of contention (see the module docs) runs go on taking turns.
/// A replica alone, or whose keys the others stopped touching, then stops paying for turns. (A
/// turn waited for is no sign: while both take turns, each waits for the other's whatever keys
/// they touch.)
pub const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// Runs take turns once this many of the plugin's last 32 answered steps that read kv here were
/// stale. A space whose keys are many and spread over its events has a stale answer now and
/// then, and taking turns there would only hold one replica back while the other runs.
pub const STALE_OF_32: u32 = 8;

/// The store gives a turn up by itself this long after it was taken: a replica that stopped
/// running the plugin (no more events) never holds the others back for longer.
/// (The wait for its steps' answers, and 10 ms more.)
const HELD_AT_MOST: Duration = TURN.saturating_add(SETTLE_AT_MOST).saturating_add(Duration::from_millis(10));

/// The clock `contended_until` counts from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// See the module docs. One per plugin slot.
#[derive(Default)]
pub struct ReplicaTurn {
    /// Until when (µs after [`EPOCH`]) runs take turns; 0 before any contention.
    contended_until: AtomicU64,
    /// The latest answers of steps that read the space, a bit each, the latest lowest: 1 stale.
    answers: AtomicU64,
    /// The turn held, and when it was taken.
    held: Mutex<Option<(KvTurn, Instant)>>,
    /// The keys this replica's runs read in its turns, to tell whether the others still touch
    /// them.
    reads: Mutex<TurnReads>,
}

/// The keys runs read while taking turns ([`ReplicaTurn::note_reads`]).
#[derive(Default)]
struct TurnReads {
    /// In the turn held now (at most [`READS_NOTED`]).
    this_turn: HashSet<String>,
    /// Those of the turn before, each with the write it held here when this turn was taken,
    /// until the first read of the store after it ([`ReplicaTurn::after_read`]).
    before_read: Vec<(String, Option<KvStamp>)>,
}

/// Keys noted per turn at most: enough to tell one hot key from many cold ones.
const READS_NOTED: usize = 256;

impl ReplicaTurn {
    /// A step whose runs read the space has its answer: `stale` (another replica changed what
    /// they read), or not. With [`STALE_OF_32`] of the last 32 stale, or any while runs take
    /// turns, runs take turns for [`CONTENDED_FOR`] from now.
    pub fn answered(&self, stale: bool) {
        let shifted = |w: u64| (w << 1) | u64::from(stale);
        let before = self.answers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(shifted(w)));
        let latest = shifted(before.unwrap_or_else(|w| w)) as u32;
        // While runs take turns, any stale answer is a sign they are still needed: a turn given
        // up before its steps answered ([`SETTLE_AT_MOST`]), or a replica taking none.
        if stale && (self.contended() || latest.count_ones() >= STALE_OF_32) {
            self.contend();
        }
    }

    /// A run read `keys` of the space. Noted only while runs take turns.
    pub fn note_reads<'k>(&self, keys: impl Iterator<Item = &'k String>) {
        if !self.contended() {
            return;
        }
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if reads.this_turn.len() >= READS_NOTED {
                break;
            }
            if !reads.this_turn.contains(key) {
                reads.this_turn.insert(key.clone());
            }
        }
    }

    /// The space was read from the store (what changed, or whole) after a turn was taken: if
    /// other replicas wrote at least a quarter of the keys this replica's runs read in its turn
    /// before, those runs would have been stale without turns, and runs go on taking turns for
    /// [`CONTENDED_FOR`]. Else the turns end on their own once that time is up: on a space whose
    /// keys the replicas seldom share, one holding the turn only held the other back. Only the
    /// first read after a turn was taken counts.
    pub fn after_read(&self, space: &KvSpace) {
        let before = std::mem::take(&mut self.reads.lock().unwrap_or_else(|p| p.into_inner()).before_read);
        if before.is_empty() {
            return;
        }
        let elsewhere = |now: Option<KvStamp>| now.is_some_and(|s| s.writer != space.writer());
        let touched = before
            .iter()
            .filter(|(key, then)| {
                let now = space.stamp(key);
                now != *then && elsewhere(now)
            })
            .count();
        if touched > 0 && touched * 4 >= before.len() {
            self.contend();
        }
    }

    /// A new turn, on `space`: the keys read in the one before are kept, with the writes they
    /// hold now, for [`ReplicaTurn::after_read`].
    fn rotate_reads(&self, space: &KvSpace) {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let read = std::mem::take(&mut reads.this_turn);
        reads.before_read = read.into_iter().map(|key| (key.clone(), space.stamp(&key))).collect();
    }

    /// Runs take turns for [`CONTENDED_FOR`] from now.
    fn contend(&self) {
        let until = (EPOCH.elapsed() + CONTENDED_FOR).as_micros() as u64;
        self.contended_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether runs take turns now. Never before a first [`ReplicaTurn::contend`] (0), however
    /// soon after [`EPOCH`].
    fn contended(&self) -> bool {
        (EPOCH.elapsed().as_micros() as u64) < self.contended_until.load(Ordering::Relaxed)
    }

    /// Before a run of `slot`'s plugin that uses its kv space, with replicas sharing `store`:
    /// while contended, holds a turn (taken now if none is, or the one held is up); else gives
    /// up any turn held. A new turn doubts the space, so the run reads what changed first, and
    /// that read tells whether to go on ([`ReplicaTurn::after_read`]).
    /// Blocking (on `handle`); a store error only leaves the run without a turn.
    pub(crate) fn before_run(&self, slot: &Slot, store: &dyn PluginStore, handle: &Handle) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !self.contended() {
            if let Some((turn, _)) = held.take() {
                handle.block_on(turn.give_up());
            }
            return;
        }
        if let Some((_, since)) = held.as_ref() {
            if since.elapsed() < TURN {
                return;
            }
            wait_answered(slot);
            // Given up before the next is asked for: else that one would wait for this one, and
            // a replica alone would count it as another's.
            if let Some((turn, _)) = held.take() {
                handle.block_on(turn.give_up());
            }
        }
        match handle.block_on(store.kv_turn(&slot.merchant, &slot.name, HELD_AT_MOST)) {
            Ok(Some(turn)) => {
                let mut space = slot.kv.lock().unwrap_or_else(|p| p.into_inner());
                self.rotate_reads(&space);
                space.doubt();
                drop(space);
                slot.counts.kv_turns.inc(turn.waited());
                *held = Some((turn, Instant::now()));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(merchant = %slot.merchant, plugin = %slot.name, error = %e, "no kv turn; running without one")
            }
        }
    }
}

/// Waits until every step of `slot`'s plugin that wrote here has answered, at most
/// [`SETTLE_AT_MOST`].
fn wait_answered(slot: &Slot) {
    let deadline = Instant::now() + SETTLE_AT_MOST;
    while !slot.kv.lock().unwrap_or_else(|p| p.into_inner()).all_answered() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(250));
    }
}

#[cfg(test)]
mod tests {
    use payflow_store::{KvChanges, KvEntry, KvRead};

    use super::*;

    /// Regression (a lone replica took turns): the clock starts at its first reading, so right
    /// after a start "now" was no later than the "never" of a replica not yet contended.
    #[test]
    fn runs_take_turns_only_after_a_sign_of_another_replica() {
        let turn = ReplicaTurn::default();
        assert!(!turn.contended(), "never contended");
        turn.contend();
        assert!(turn.contended());
    }

    #[test]
    fn runs_take_turns_once_a_quarter_of_the_last_32_answers_were_stale() {
        let turn = ReplicaTurn::default();
        for _ in 0..100 {
            for stale in [true, false, false, false, false] {
                turn.answered(stale);
            }
        }
        assert!(!turn.contended(), "one in five: a stale answer now and then");
        for _ in 0..32 {
            turn.answered(false);
        }
        for _ in 0..7 {
            turn.answered(true);
            turn.answered(false);
        }
        assert!(!turn.contended(), "7 of the last 32");
        turn.answered(true);
        assert!(turn.contended(), "8 of the last 32");
        for _ in 0..32 {
            turn.answered(false);
        }
        turn.contended_until.store(EPOCH.elapsed().as_micros() as u64 + 1_000, Ordering::Relaxed);
        turn.answered(true);
        let left = turn.contended_until.load(Ordering::Relaxed) - EPOCH.elapsed().as_micros() as u64;
        assert!(left > 500_000, "one stale answer while taking turns goes on with them: {left} µs left");
    }

    #[test]
    fn turns_go_on_while_the_others_write_a_quarter_of_the_keys_read_in_the_turn_before() {
        const ME: i64 = 1;
        let read: Vec<String> = "abcdefgh".chars().map(String::from).collect();
        // Keys a to h, each last written by this replica, but those of `others`.
        let space = |others: &[&str]| {
            let entries = read.iter().enumerate().map(|(n, key)| {
                let writer = if others.contains(&key.as_str()) { 2 } else { ME };
                KvEntry { key: key.clone(), value: b"1".to_vec(), version: n as i64 + 1, writer }
            });
            let mut space = KvSpace::of_writer(ME);
            let load = space.begin_load();
            space.finish_load(load, KvRead { entries: entries.collect(), changes: KvChanges::default() });
            space
        };
        let turn = ReplicaTurn::default();
        let expire = |turn: &ReplicaTurn| turn.contended_until.store(0, Ordering::Relaxed);
        let mine = space(&[]);
        turn.note_reads(read.iter());
        turn.rotate_reads(&mine);
        turn.after_read(&space(&["a", "b", "c"]));
        assert!(!turn.contended(), "nothing noted while runs took no turns");

        turn.contend();
        turn.note_reads(read.iter());
        turn.rotate_reads(&mine);
        expire(&turn);
        turn.after_read(&space(&["a"]));
        assert!(!turn.contended(), "one key of the eight read written elsewhere since: the turns end");

        turn.contend();
        turn.note_reads(read.iter());
        turn.rotate_reads(&mine);
        expire(&turn);
        turn.after_read(&space(&["a", "h"]));
        assert!(turn.contended(), "two of the eight: they go on");
        expire(&turn);
        turn.after_read(&space(&["a", "h"]));
        assert!(!turn.contended(), "only the first read after a turn was taken counts");

        turn.contend();
        turn.note_reads(read.iter());
        turn.rotate_reads(&space(&["a", "h"]));
        expire(&turn);
        turn.after_read(&space(&["a", "h"]));
        assert!(!turn.contended(), "written elsewhere before the turn was taken, not since");
    }
}
