//! A plugin's key-value space in memory, between the store and the plugin's runs.
//!
//! Runs read the space here, not from the store, and a run's writes become visible here as soon
//! as it succeeds, before its step commits them (the stage commits the step after the chain).
//! Runs of one plugin take turns, but their steps commit in whatever order the workers reach the
//! store. So each run's writes carry a version, one more than the last run's that wrote, and the
//! store keeps per key the write of the highest version: an earlier run's write that commits
//! late never replaces a later run's.
//!
//! The space is loaded again after a step whose writes did not commit. When replicas share
//! the store, the first run after each step of this gateway commits ([`KvSpace::doubt`])
//! asks the store what was changed elsewhere since the last read (another replica's step,
//! or an admin repair: [`KvChanges`]), and lays the keys written since over the space; only
//! after a key was deleted is the space read whole. Not before every run: runs of one plugin
//! take turns, and a query within every turn held each run for a round trip, which under load
//! shrank the batches steps commit in and cost the database more than the loads it saved.
//!
//! A read finds what has committed; the writes visible here whose steps are still committing,
//! or committed while the read was under way, are laid over what it found, so a run never reads
//! a value older than one an earlier run of this gateway wrote.
//!
//! Each value here carries the write it came from ([`KvStamp`]): a loaded one its stored stamp,
//! one of this gateway's runs its version and this gateway's number. A run that reads a key
//! notes that stamp, and its step commits only while the key still holds that write
//! (`StepRecorded::Stale` otherwise): the doubt above only saves loads, it cannot see a change
//! that lands between a run and its commit; and even with one gateway, a run may read a write
//! published here whose step then never applies it (a later plugin failed, the event was
//! replayed).
//!
//! It must never do I/O or wait on anything: the chain loads from the store outside its lock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::RangeInclusive;

use payflow_store::{KvChanges, KvRead, KvStamp};

use crate::KvMap;

/// See the module docs.
#[derive(Default)]
pub struct KvSpace {
    values: KvMap,
    /// The write each of `values` came from.
    stamps: HashMap<String, KvStamp>,
    /// This gateway's number ([`payflow_store::PluginStore::kv_writer`]), on its runs' writes.
    writer: i64,
    /// Whether the next run may read `values`, or must load the store first (never loaded, or
    /// forgotten since).
    fresh: bool,
    /// Times forgotten: a load during which it was forgotten leaves the space to load again.
    forgotten: u64,
    /// The highest version written here or loaded.
    version: i64,
    /// Where the last read of the store stood.
    changes: KvChanges,
    /// Whether another gateway may have written to the store since the space was loaded or
    /// last checked ([`KvSpace::doubt`]).
    doubted: bool,
    /// Loads reading the store now.
    loading: usize,
    /// Writes a load might not find in the store: their steps are committing, or committed
    /// while a load was reading.
    pending: HashMap<String, Pending>,
    /// Keys whose value here may not be the store's though nobody else changed them: written
    /// by runs whose steps were stale ([`KvSpace::settle_stale`]). The next read of the store
    /// reads them as well as what others changed.
    reread: HashSet<String>,
    /// The versions stale answers forgot, as ranges, the latest last; only the last
    /// [`STALE_RANGES`] are kept.
    stale_ranges: VecDeque<RangeInclusive<i64>>,
    /// Versions published whose steps have not answered yet ([`KvSpace::all_answered`]).
    unanswered: usize,
    /// Versions published whose steps have not been handed to the store yet
    /// ([`KvSpace::handed_to_the_store`]): a step whose run read one of them goes to the store
    /// after it ([`KvSpace::unsent`]).
    unsent: BTreeSet<i64>,
}

/// How many ranges of forgotten versions a space keeps. A step answers within seconds, so an
/// older range has no version left to answer; one no longer kept costs only runs made again.
const STALE_RANGES: usize = 16;

/// A write visible here that a load may not find in the store.
struct Pending {
    version: i64,
    value: Vec<u8>,
    committed: bool,
}

/// A read of the whole space under way: [`KvSpace::begin_load`], then [`KvSpace::finish_load`]
/// with what it found, or [`KvSpace::abandon_load`].
#[must_use]
pub struct Load {
    forgotten: u64,
}

/// A read of what changed in the store under way ([`KvSpace::begin_refresh`]): of the changes
/// made elsewhere since a read that stood at `since`, and of the keys `keys` whatever changed
/// (`PluginStore::kv_changed_since`); then [`KvSpace::finish_refresh`] with what it found, or
/// [`KvSpace::abandon_refresh`].
#[must_use]
pub struct Refresh {
    load: Load,
    /// Where the space's last read of the store stood.
    pub since: KvChanges,
    /// The keys to read whatever changed ([`KvSpace::settle_stale`]).
    pub keys: Vec<String>,
}

impl KvSpace {
    /// The space of a gateway whose writes the store stamps with `writer`.
    pub fn of_writer(writer: i64) -> Self {
        KvSpace { writer, ..KvSpace::default() }
    }

    /// Whether runs may read the space as it is (else: load it first).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// What runs read.
    pub fn values(&self) -> &KvMap {
        &self.values
    }

    /// This gateway's number, on its runs' writes.
    pub fn writer(&self) -> i64 {
        self.writer
    }

    /// The write the value under `key` came from; `None` when the key is absent.
    pub fn stamp(&self, key: &str) -> Option<KvStamp> {
        self.stamps.get(key).copied()
    }

    /// Another gateway may have written to the store since the space was last read: the next
    /// run asks the store what was changed elsewhere since first ([`KvSpace::begin_refresh`]).
    pub fn doubt(&mut self) {
        self.doubted = true;
    }

    /// When the space is fresh but doubted: a read of what changed in the store since its last
    /// read, to make (the doubt is cleared by it).
    pub fn begin_refresh(&mut self) -> Option<Refresh> {
        if !(self.fresh && self.doubted) {
            return None;
        }
        let keys = self.reread.drain().collect();
        Some(Refresh { since: self.changes, keys, load: self.begin_load() })
    }

    /// The next run loads the store first: what is here may be ahead of it (a write that did
    /// not commit) or behind it (another replica's write).
    pub fn forget(&mut self) {
        self.fresh = false;
        self.forgotten += 1;
    }

    /// The plugin was deleted, its space with it: what was written here is gone too (a step
    /// still committing may write its keys again, as it would after the delete).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.reread.clear();
        self.stale_ranges.clear();
        self.values = KvMap::default();
        self.stamps.clear();
        self.forget();
    }

    /// A load of the store is about to read.
    pub fn begin_load(&mut self) -> Load {
        // What it reads settles every doubt so far.
        self.doubted = false;
        self.loading += 1;
        Load { forgotten: self.forgotten }
    }

    /// The store read the whole space, `read`: its entries become the space, under the writes
    /// still pending.
    pub fn finish_load(&mut self, load: Load, read: KvRead) {
        let writer = self.writer;
        self.values = self.pending.iter().map(|(key, p)| (key.clone(), p.value.clone())).collect();
        self.stamps = self
            .pending
            .iter()
            .map(|(key, p)| (key.clone(), KvStamp { version: p.version, writer }))
            .collect();
        self.reread.clear();
        self.lay(read);
        self.fresh = load.forgotten == self.forgotten;
        self.end_load();
    }

    /// The store read what others changed since the space's last read and the keys asked for,
    /// `read`: its entries are laid over the space, under the writes still pending, and a key
    /// asked for that the store does not hold is dropped (only a run whose step was stale
    /// wrote it). A space forgotten before or meanwhile stays to be loaded.
    pub fn finish_refresh(&mut self, refresh: Refresh, read: KvRead) {
        let Refresh { load, keys, .. } = refresh;
        for key in keys {
            if !self.pending.contains_key(&key) && !read.entries.iter().any(|e| e.key == key) {
                self.values.remove(&key);
                self.stamps.remove(&key);
            }
        }
        self.lay(read);
        self.fresh &= load.forgotten == self.forgotten;
        self.end_load();
    }

    /// The refresh failed, or found the space must be read whole: the next run asks again,
    /// for the same keys.
    pub fn abandon_refresh(&mut self, refresh: Refresh) {
        let Refresh { load, keys, .. } = refresh;
        self.reread.extend(keys);
        self.doubted = true;
        self.abandon_load(load);
    }

    /// Lays what the store read over the space: each entry, unless a write still pending
    /// here is of its version or later (the store keeps per key the write of the highest).
    fn lay(&mut self, read: KvRead) {
        let KvRead { entries, changes } = read;
        self.changes = changes;
        for e in entries {
            self.version = self.version.max(e.version);
            if self.pending.get(&e.key).is_some_and(|p| p.version >= e.version) {
                continue;
            }
            self.stamps.insert(e.key.clone(), e.stamp());
            self.values.insert(e.key, e.value);
        }
    }

    /// The read failed, or found the space must be read whole: the space stays as it was.
    pub fn abandon_load(&mut self, load: Load) {
        let Load { .. } = load;
        self.end_load();
    }

    fn end_load(&mut self) {
        self.loading -= 1;
        if self.loading == 0 {
            // Every later load reads them from the store.
            self.pending.retain(|_, p| !p.committed);
        }
    }

    /// A run's `writes` become visible to the next runs; the version they are committed under.
    pub fn publish(&mut self, writes: &HashMap<String, Vec<u8>>) -> i64 {
        self.version += 1;
        self.unanswered += 1;
        self.unsent.insert(self.version);
        for (key, value) in writes {
            self.values.insert(key.clone(), value.clone());
            self.stamps.insert(key.clone(), KvStamp { version: self.version, writer: self.writer });
            let pending = Pending { version: self.version, value: value.clone(), committed: false };
            self.pending.insert(key.clone(), pending);
        }
        self.version
    }

    /// The step that commits the writes of `version` has been handed to the store: a step
    /// handed to it later is written after it.
    pub fn handed_to_the_store(&mut self, version: i64) {
        self.unsent.remove(&version);
    }

    /// The version of the write `found` (a run's read of a key: [`KvSpace::stamp`]) when it is
    /// one of this gateway's whose step has not been handed to the store yet. The store writes
    /// steps in the order they are handed to it, and checks what each step's runs read against
    /// what it holds then: a step that read such a write and overtook the step that made it
    /// would find that write missing, and run again for nothing. (With a ledger on one hot key
    /// on SQLite, half the steps did: bench/RESULTS.md, thirty-ninth look.)
    pub fn unsent(&self, found: Option<KvStamp>) -> Option<i64> {
        found.filter(|s| s.writer == self.writer && self.is_unsent(s.version)).map(|s| s.version)
    }

    /// Whether the step that commits the writes of `version` has yet to be handed to the store.
    pub fn is_unsent(&self, version: i64) -> bool {
        self.unsent.contains(&version)
    }

    /// Whether every step that committed writes published here has answered (each publish is
    /// settled once, [`KvSpace::settle`] or [`KvSpace::settle_stale`]): what this gateway wrote
    /// is then in the store, or known not to be.
    pub fn all_answered(&self) -> bool {
        self.unanswered == 0
    }

    /// The step that wrote under `version` was stale: a key its run read had been changed
    /// elsewhere. Its writes are forgotten, and so are the later runs' still pending: they read
    /// this run's writes, or a space as stale, and their steps will be stale too. Laid over the
    /// next load, they would make every run after it stale as well, for as long as this gateway
    /// kept running the plugin (measured: a replica whose steps never committed again while it
    /// had work). Earlier runs' writes stay laid over loads until their steps answer.
    ///
    /// The keys those writes leave here are then read with what others changed, not the
    /// whole space: a change that made the step stale is one of those, or the store holds a
    /// key a forgotten write hid here (bench/RESULTS.md, thirty-fifth look). While a read is
    /// under way, which may have been asked for without them, the space is read whole.
    ///
    /// The answer of a step whose writes an earlier answer forgot changes nothing more. The
    /// runs published since did not read those writes: they were gone, and their keys read
    /// again first (but for the run under way at that answer, whose own answer forgets as any
    /// other's). Forgetting their writes again made the next runs stale in turn
    /// (bench/RESULTS.md, thirty-seventh look).
    pub fn settle_stale(&mut self, version: i64) {
        self.unanswered = self.unanswered.saturating_sub(1);
        self.unsent.remove(&version);
        if self.stale_ranges.iter().any(|r| r.contains(&version)) {
            return;
        }
        // The answers come with increasing tops: a range reaching up to this one joins it.
        let mut from = version;
        while let Some(last) = self.stale_ranges.back().filter(|r| *r.end() + 1 >= version) {
            from = from.min(*last.start());
            self.stale_ranges.pop_back();
        }
        self.stale_ranges.push_back(from..=self.version);
        if self.stale_ranges.len() > STALE_RANGES {
            self.stale_ranges.pop_front();
        }
        let mut forgotten = Vec::new();
        self.pending.retain(|key, p| {
            let keep = p.version < version;
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
        if self.fresh && self.loading == 0 {
            self.reread.extend(forgotten);
            self.doubted = true;
        } else {
            self.forget();
        }
    }

    /// The step that committed the writes of `version` has its answer: `committed`, or not (the
    /// writes are then forgotten, and the space loaded again before the next run).
    pub fn settle(&mut self, version: i64, committed: bool) {
        self.unanswered = self.unanswered.saturating_sub(1);
        // A step dropped or failed before it reached the store never will.
        self.unsent.remove(&version);
        let loading = self.loading > 0;
        self.pending.retain(|_, p| {
            if p.version != version {
                return true;
            }
            p.committed = committed;
            committed && loading
        });
        if !committed {
            self.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use payflow_store::KvEntry;

    use super::*;

    fn entry(key: &str, value: &str, version: i64) -> KvEntry {
        KvEntry { key: key.into(), value: value.into(), version, writer: 9 }
    }

    fn writes(key: &str, value: &str) -> HashMap<String, Vec<u8>> {
        HashMap::from([(key.to_string(), value.as_bytes().to_vec())])
    }

    fn value(space: &KvSpace, key: &str) -> Option<String> {
        space.values().get(key).map(|v| String::from_utf8(v.clone()).unwrap())
    }

    fn read(entries: Vec<KvEntry>) -> KvRead {
        KvRead { entries, changes: KvChanges::default() }
    }

    fn loaded(entries: Vec<KvEntry>) -> KvSpace {
        let mut space = KvSpace::default();
        let load = space.begin_load();
        space.finish_load(load, read(entries));
        space
    }

    const FOUR: KvChanges = KvChanges { elsewhere: 4, unlisted: 0, since: 0 };

    #[test]
    fn a_doubt_asks_once_and_a_load_settles_it() {
        let mut space = KvSpace::default();
        space.doubt();
        assert!(space.begin_refresh().is_none(), "never loaded: it loads anyway");
        let load = space.begin_load();
        space.finish_load(load, KvRead { entries: Vec::new(), changes: FOUR });
        assert!(space.begin_refresh().is_none(), "the load settled the doubt before it");
        space.doubt();
        space.doubt();
        let refresh = space.begin_refresh().expect("fresh and doubted");
        assert_eq!((refresh.since, &refresh.keys[..]), (FOUR, &[][..]), "asks what changed since the load");
        assert!(space.begin_refresh().is_none(), "asked once for any number of doubts");
        space.abandon_refresh(refresh);
        let refresh = space.begin_refresh().expect("a failed refresh is made again");
        space.finish_refresh(refresh, KvRead::default());
        space.doubt();
        space.forget();
        assert!(space.begin_refresh().is_none(), "forgotten: it loads anyway");
    }

    #[test]
    fn writes_after_a_load_are_numbered_past_the_highest_version_stored() {
        let mut space = KvSpace::default();
        assert!(!space.is_fresh(), "never loaded");
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("a", "1", 7), entry("b", "2", 3)]));
        assert!(space.is_fresh());
        assert_eq!(space.publish(&writes("a", "3")), 8);
        assert_eq!(space.publish(&writes("b", "4")), 9);
        assert_eq!((value(&space, "a").as_deref(), value(&space, "b").as_deref()), (Some("3"), Some("4")));
    }

    #[test]
    fn a_load_while_a_step_commits_keeps_that_steps_write() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        let v = space.publish(&writes("total", "150"));
        space.forget();
        // Read before the step committed: the store still has 100.
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("total", "100", 1)]));
        assert_eq!(value(&space, "total").as_deref(), Some("150"));
        space.settle(v, true);
        assert!(space.pending.is_empty(), "committed, with no load reading: the store has it");
    }

    #[test]
    fn a_write_that_commits_while_a_load_reads_is_laid_over_what_it_read() {
        let mut space = loaded(Vec::new());
        let v = space.publish(&writes("total", "150"));
        space.forget();
        let load = space.begin_load();
        space.settle(v, true);
        // Whether the read saw the commit or not, the value is the committed one.
        space.finish_load(load, read(Vec::new()));
        assert_eq!(value(&space, "total").as_deref(), Some("150"));
        assert!(space.pending.is_empty(), "every later load reads it from the store");
    }

    #[test]
    fn a_later_version_in_the_store_wins_over_a_pending_write() {
        let mut space = loaded(Vec::new());
        let v = space.publish(&writes("k", "mine"));
        space.forget();
        let load = space.begin_load();
        // Another replica wrote the key after this run, under a later version.
        space.finish_load(load, read(vec![entry("k", "theirs", v + 5)]));
        assert_eq!(value(&space, "k").as_deref(), Some("theirs"));
        assert_eq!(space.publish(&writes("k", "next")), v + 6, "numbered past what was loaded");
    }

    #[test]
    fn a_write_that_did_not_commit_is_forgotten_and_never_laid_over_a_load() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        let v = space.publish(&writes("total", "150"));
        space.settle(v, false);
        assert!(!space.is_fresh(), "the space must be read again");
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("total", "100", 1)]));
        assert_eq!(value(&space, "total").as_deref(), Some("100"));
    }

    #[test]
    fn an_earlier_steps_answer_does_not_settle_a_later_write_of_the_same_key() {
        let mut space = loaded(Vec::new());
        let first = space.publish(&writes("total", "1"));
        let second = space.publish(&writes("total", "2"));
        space.settle(first, true);
        space.forget();
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("total", "1", first)]));
        assert_eq!(value(&space, "total").as_deref(), Some("2"), "the second is still committing");
        space.settle(second, true);
        assert!(space.pending.is_empty());
    }

    #[test]
    fn each_value_carries_the_write_it_came_from() {
        let mut space = KvSpace::of_writer(4);
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("stored", "1", 7), entry("mine", "2", 3)]));
        let theirs = |version| Some(KvStamp { version, writer: 9 });
        let mine = |version| Some(KvStamp { version, writer: 4 });
        assert_eq!((space.stamp("stored"), space.stamp("absent")), (theirs(7), None));
        let v = space.publish(&writes("mine", "3"));
        assert_eq!(
            (space.stamp("mine"), space.stamp("stored")),
            (mine(v), theirs(7)),
            "a run's write is this gateway's"
        );
        space.forget();
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("stored", "1", 7), entry("mine", "2", 3)]));
        assert_eq!(space.stamp("mine"), mine(v), "still committing: laid over the load, stamp and all");
        space.clear();
        assert_eq!(space.stamp("stored"), None, "deleted with its plugin");
    }

    #[test]
    fn a_stale_steps_answer_forgets_the_later_runs_writes_too_but_not_the_earlier() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        let earlier = space.publish(&writes("count", "1"));
        let stale = space.publish(&writes("total", "150"));
        let later = space.publish(&writes("total", "175"));
        let new_key = space.publish(&writes("new", "x"));
        space.settle_stale(stale);
        assert!(space.is_fresh(), "not read whole again");
        let refresh = space.begin_refresh().expect("read what changed, and the keys it forgot, first");
        let mut asked = refresh.keys.clone();
        asked.sort();
        assert_eq!(asked, ["new", "total"], "the keys of the writes forgotten, not the earlier run's");
        // Another replica's write is stored, under a version below this gateway's; the key
        // only forgotten runs wrote is not stored at all.
        space.finish_refresh(refresh, read(vec![entry("total", "130", 1)]));
        assert!(space.is_fresh());
        assert_eq!(value(&space, "total").as_deref(), Some("130"), "not the later run's {later}");
        assert_eq!(value(&space, "new"), None, "only run {new_key}, forgotten, wrote it");
        assert_eq!(
            (space.stamp("total"), space.stamp("new")),
            (Some(KvStamp { version: 1, writer: 9 }), None)
        );
        assert_eq!(value(&space, "count").as_deref(), Some("1"), "the earlier run's is still committing");
        space.settle(earlier, true);
    }

    #[test]
    fn every_published_steps_answer_counts_once_toward_all_answered() {
        let mut space = loaded(vec![]);
        assert!(space.all_answered(), "nothing published");
        let committed = space.publish(&writes("a", "1"));
        let stale = space.publish(&writes("a", "2"));
        let failed = space.publish(&writes("b", "3"));
        space.settle(committed, true);
        space.settle_stale(stale);
        assert!(!space.all_answered(), "run {failed}'s step has not answered");
        space.settle(failed, false);
        assert!(space.all_answered());
    }

    #[test]
    fn a_write_is_unsent_until_its_step_is_handed_to_the_store_or_answered() {
        let mut space = loaded(vec![entry("old", "1", 3)]);
        let handed = space.publish(&writes("a", "1"));
        let dropped = space.publish(&writes("b", "2"));
        let (a, b) = (space.stamp("a"), space.stamp("b"));
        assert_eq!((space.unsent(a), space.unsent(b)), (Some(handed), Some(dropped)));
        assert_eq!(space.unsent(space.stamp("old")), None, "a loaded value is in the store");
        assert_eq!(space.unsent(None), None);
        let elsewhere = KvStamp { version: handed, writer: space.writer() + 1 };
        assert_eq!(space.unsent(Some(elsewhere)), None, "another gateway's write of the same number");
        space.handed_to_the_store(handed);
        assert_eq!(space.unsent(a), None);
        space.settle(dropped, false);
        assert_eq!(space.unsent(b), None, "a step that never reaches the store is waited for no more");
    }

    /// Regression (each stale answer of the runs an earlier answer forgot forgot again the runs
    /// published after it, which had read the store's value: the next runs read theirs and
    /// were stale in turn; 2.4-3.4 runs per event with two replicas adding to one total).
    #[test]
    fn a_stale_answer_for_writes_already_forgotten_forgets_nothing_more() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        let first = space.publish(&writes("total", "150"));
        let second = space.publish(&writes("total", "200"));
        space.settle_stale(first);
        let refresh = space.begin_refresh().unwrap();
        space.finish_refresh(refresh, read(vec![entry("total", "130", 4)]));
        let after = space.publish(&writes("total", "180"));
        space.settle_stale(second);
        assert_eq!(value(&space, "total").as_deref(), Some("180"), "run {after}'s write stays");
        assert!(space.begin_refresh().is_none(), "nothing to read again");
        space.settle(after, true);
        assert!(space.is_fresh());

        // An earlier version's answer still forgets what came after it.
        let earlier = space.publish(&writes("count", "1"));
        let later = space.publish(&writes("total", "190"));
        space.settle_stale(earlier);
        assert_eq!(space.begin_refresh().map(|r| r.keys.len()), Some(2), "count and run {later}'s total");
    }

    #[test]
    fn a_stale_steps_answer_while_the_space_is_read_makes_it_read_whole() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        let stale = space.publish(&writes("total", "150"));
        space.doubt();
        let refresh = space.begin_refresh().unwrap();
        // Asked for before the answer: it cannot know to read the forgotten write's key.
        space.settle_stale(stale);
        space.finish_refresh(refresh, read(Vec::new()));
        assert!(!space.is_fresh());
        let load = space.begin_load();
        space.finish_load(load, read(vec![entry("total", "100", 1)]));
        assert_eq!(value(&space, "total").as_deref(), Some("100"));
    }

    #[test]
    fn a_space_forgotten_while_it_loads_is_loaded_again() {
        let mut space = loaded(Vec::new());
        space.forget();
        let load = space.begin_load();
        space.forget();
        space.finish_load(load, read(Vec::new()));
        assert!(!space.is_fresh(), "what it read may predate what the forget was for");
        let load = space.begin_load();
        space.abandon_load(load);
        assert!(!space.is_fresh(), "a failed load leaves it to load");
    }

    #[test]
    fn a_refresh_lays_the_keys_changed_elsewhere_over_the_space_and_keeps_the_rest() {
        let mut space = KvSpace::of_writer(4);
        let load = space.begin_load();
        space.finish_load(
            load,
            read(vec![entry("kept", "1", 2), entry("theirs", "old", 3), entry("mine", "a", 5)]),
        );
        let committing = space.publish(&writes("mine", "b"));
        space.doubt();
        let refresh = space.begin_refresh().expect("fresh and doubted");
        let now = KvChanges { elsewhere: refresh.since.elsewhere + 1, unlisted: 0, since: 77 };
        // Another replica rewrote one key and added one; the store also hands back this
        // gateway's key as it stood before its step committed (an older version).
        let changed = vec![entry("theirs", "new", 4), entry("added", "x", 9), entry("mine", "a", 5)];
        space.finish_refresh(refresh, KvRead { entries: changed, changes: now });
        assert!(space.is_fresh());
        let values: Vec<_> = ["kept", "theirs", "added", "mine"].iter().map(|k| value(&space, k)).collect();
        let want = [Some("1"), Some("new"), Some("x"), Some("b")].map(|v| v.map(String::from));
        assert_eq!(values, want, "the step still committing keeps its write");
        assert_eq!(space.stamp("theirs"), Some(KvStamp { version: 4, writer: 9 }), "stamped as stored");
        assert_eq!(space.stamp("mine"), Some(KvStamp { version: committing, writer: 4 }));
        assert_eq!(space.publish(&writes("kept", "2")), 10, "numbered past what was read");
        space.doubt();
        assert_eq!(
            space.begin_refresh().map(|r| r.since),
            Some(now),
            "the next asks from where this read stood"
        );
    }

    #[test]
    fn a_space_forgotten_while_a_refresh_reads_is_loaded_again() {
        let mut space = loaded(vec![entry("total", "100", 1)]);
        space.doubt();
        let refresh = space.begin_refresh().unwrap();
        space.forget();
        space.finish_refresh(refresh, read(Vec::new()));
        assert!(!space.is_fresh(), "what it read may predate what the forget was for");
    }
}
