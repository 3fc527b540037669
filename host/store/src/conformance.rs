//! The conformance suite every store backend must pass: what the rest of the gateway relies on,
//! checked through the [`Store`] trait alone. A backend runs it with [`conformance_tests!`],
//! giving a function that opens a fresh, empty store; each check becomes a test of its own.
//!
//! These checks must never look inside a backend (no SQL, no files): a second backend passes
//! exactly the same suite.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    Amount, AttemptInfo, AttemptOutcome, Backlog, Canary, Claim, DueDelivery, Event, EventFilter, EventKey,
    EventStatus, Hop, Inserted, KvEntry, KvRead, KvReadOf, KvStamp, KvWrite, NewDelivery, NewEvent,
    NewPluginVersion, PluginRunInfo, PluginStep, QueueDepth, StepRecorded, Store, VersionBounds,
};

/// Generates one `#[tokio::test]` per check, each on a store from `$open`: an async function
/// returning a fresh, empty store and whatever must live as long as it (a temporary
/// directory, a database to drop), as `(Arc<dyn Store>, guard)`.
#[macro_export]
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::conformance_tests!(@each $open;
            the_same_key_stored_concurrently_is_new_exactly_once,
            one_id_in_two_scopes_or_merchants_is_two_events,
            a_due_delivery_is_read_recorded_and_retried_at_its_time,
            the_queue_depth_counts_each_merchants_pending_deliveries_from_the_earliest_due,
            an_events_number_is_the_same_in_its_insert_and_its_due_rows,
            an_attempt_whose_number_is_another_events_changes_neither,
            a_dead_delivery_makes_its_event_dead_and_replay_revives_it,
            a_replay_keeps_the_attempts_so_far_in_the_events_history,
            a_step_that_makes_a_delivery_again_keeps_its_earlier_attempt_in_the_history,
            an_attempt_under_way_when_its_delivery_is_replayed_leaves_the_replay_due,
            a_plugin_step_under_way_when_its_event_is_replayed_leaves_the_replay_due,
            a_replay_from_a_replica_whose_clock_is_behind_still_sets_an_attempt_under_way_aside,
            attempts_recorded_together_each_settle_their_own_event,
            an_event_is_delivered_once_every_delivery_is_wherever_its_status_is_read,
            a_plugin_step_commits_its_runs_kv_and_deliveries_together,
            a_dead_plugin_step_makes_its_event_dead_and_replay_runs_it_again,
            a_claimed_row_is_due_for_no_other_reader_until_its_claim_ends,
            a_claim_handed_back_is_due_again_at_once_unless_its_lease_passed_on,
            a_first_hop_claimed_at_insert_is_due_for_no_reader_until_its_claim_ends,
            a_delivery_a_step_created_claimed_is_due_for_no_reader_until_its_claim_ends,
            events_page_newest_first_without_gaps_or_repeats,
            events_sharing_a_timestamp_list_in_the_byte_order_of_their_keys,
            plugin_versions_are_bounded_and_activated,
            compiled_code_is_kept_per_engine,
            a_canary_version_is_stored_beside_the_active_one_and_ends_once,
            a_kv_key_deleted_is_gone_for_that_plugin_only,
            a_kv_write_committed_after_a_later_versions_leaves_the_later_value,
            a_kv_space_changed_by_own_steps_is_unchanged_and_by_a_repair_is_read_whole,
            a_step_whose_runs_read_a_kv_key_changed_since_is_stale_and_records_nothing,
            a_stored_body_comes_back_byte_for_byte,
            listed_events_show_the_amount_of_their_body,
            an_ordered_delivery_waits_for_its_keys_head_and_a_skip_releases_it,
        );
    };
    (@each $open:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $check() {
                let (store, _guard) = $open().await;
                $crate::conformance::$check(store).await;
            }
        )+
    };
}

const NOW: i64 = 1_764_000_000_000;

fn key(merchant: &str, scope: &str, id: &str) -> EventKey {
    EventKey::new(merchant, scope, id)
}

/// A new event of `key` received at `at_ms`, with a small JSON body and `first_hop` (stored
/// without one, queued with one): what the checks and a backend's own tests insert.
pub fn event(key: &EventKey, at_ms: i64, first_hop: Option<Hop>) -> NewEvent {
    NewEvent {
        event: Event {
            key: key.clone(),
            endpoint: key.scope.clone(),
            event_type: Some("payment.succeeded".into()),
            body: Bytes::from(format!("{{\"id\":\"{}\"}}", key.id)),
            received_at_ms: at_ms,
            request_id: format!("req_{}", key.id),
            ordered: false,
        },
        status: if first_hop.is_none() { EventStatus::Stored } else { EventStatus::Queued },
        reason: None,
        headers: vec![("content-type".into(), "application/json".into())],
        first_hop,
        order_key: None,
        claim_until_ms: None,
    }
}

fn to(upstream: &str) -> Option<Hop> {
    Some(Hop::Upstream(upstream.into()))
}

fn run(attempt: u32, outcome: &str) -> PluginRunInfo {
    PluginRunInfo {
        plugin: "enrich".into(),
        version: 1,
        attempt,
        at_ms: NOW,
        duration_us: 40,
        fuel_used: 1000,
        outcome: outcome.into(),
        detail: None,
        logs: vec![("info".into(), "hello".into())],
    }
}

/// A plugin step that ran as `number` and ended as `step`, creating deliveries to `to`: what
/// the checks and a backend's own tests record.
pub fn step(k: &EventKey, number: u32, at_ms: i64, step: AttemptOutcome, to: &[&str]) -> PluginStep {
    let failed = step != AttemptOutcome::Delivered;
    PluginStep {
        key: k.clone(),
        event_seq: None,
        number,
        at_ms,
        step,
        error: failed.then(|| "enrich: trap".into()),
        runs: vec![run(number, if failed { "trap" } else { "continue" })],
        kv: Vec::new(),
        kv_read: Vec::new(),
        status: match step {
            AttemptOutcome::Dead => EventStatus::Dead,
            _ => EventStatus::Queued,
        },
        reason: failed.then(|| "enrich: trap".into()),
        deliveries: to.iter().map(|u| NewDelivery::to(*u)).collect(),
        tags: Vec::new(),
        routes: None,
        claimed_until_ms: None,
    }
}

fn attempt_info(upstream: &str, number: u32, at_ms: i64, status: u16) -> AttemptInfo {
    AttemptInfo {
        upstream: upstream.into(),
        number,
        at_ms,
        duration_ms: 3,
        status_code: Some(status),
        error: None,
        response: Some("ok".into()),
    }
}

async fn status_of(store: &dyn Store, key: &EventKey) -> String {
    store.get_event(key).await.unwrap().expect("the event is stored").summary.status
}

/// De-duplication is atomic: of many concurrent inserts of one key, exactly one is new.
pub async fn the_same_key_stored_concurrently_is_new_exactly_once(store: Arc<dyn Store>) {
    let key = key("acme", "/wh", "evt_race");
    let inserts = (0..16).map(|_| {
        let (store, event) = (store.clone(), event(&key, NOW, to("legacy")));
        tokio::spawn(async move { store.insert_event(event).await.unwrap() })
    });
    let mut new = 0;
    for insert in inserts {
        if matches!(insert.await.unwrap(), Inserted::New(_)) {
            new += 1;
        }
    }
    assert_eq!(new, 1, "exactly one insert is new");
    let due = store.due_deliveries("legacy", NOW, None, 100).await.unwrap();
    assert_eq!(due.len(), 1, "and only it created a delivery");
    assert_eq!(
        store.insert_event(event(&key, NOW, to("legacy"))).await.unwrap(),
        Inserted::Duplicate(EventStatus::Queued)
    );
}

/// The key is (merchant, scope, id): the same id elsewhere is another event.
pub async fn one_id_in_two_scopes_or_merchants_is_two_events(store: Arc<dyn Store>) {
    let keys = [
        key("acme", "/payflow", "evt_1"),
        key("acme", "/github", "evt_1"),
        key("globex", "/payflow", "evt_1"),
    ];
    for k in &keys {
        assert!(matches!(store.insert_event(event(k, NOW, None)).await.unwrap(), Inserted::New(_)), "{k:?}");
    }
    let all = store.find_events(None, None, "evt_1", 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let acme = store.find_events(Some("acme"), None, "evt_1", 10).await.unwrap();
    assert_eq!(acme, vec![keys[1].clone(), keys[0].clone()], "in key order");
    let github = store.find_events(None, Some("/github"), "evt_1", 10).await.unwrap();
    assert_eq!(github, vec![keys[1].clone()]);
    assert_eq!(store.find_events(None, None, "evt_1", 2).await.unwrap().len(), 2, "limit holds");
    assert!(store.get_event(&key("acme", "/other", "evt_1")).await.unwrap().is_none());
}

/// A pending delivery is due at its time, and an attempt's outcome moves it: a retry is due
/// again only at its next time, a success settles the event.
pub async fn a_due_delivery_is_read_recorded_and_retried_at_its_time(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_due");
    store.insert_event(event(&k, NOW, to("legacy"))).await.unwrap();
    assert!(store.due_deliveries("legacy", NOW - 1, None, 10).await.unwrap().is_empty(), "not due yet");
    assert!(store.due_deliveries("other", NOW, None, 10).await.unwrap().is_empty(), "another upstream's");
    let due = store.due_deliveries("legacy", NOW, None, 10).await.unwrap();
    assert_eq!((due.len(), &due[0].event.key, due[0].attempts), (1, &k, 0));
    assert_eq!(&due[0].body()[..], format!("{{\"id\":\"{}\"}}", k.id).as_bytes());
    assert_eq!((&due[0].event.request_id[..], due[0].event.received_at_ms), ("req_evt_due", NOW));

    let retry_at = NOW + 60_000;
    let first = crate::Attempt {
        key: k.clone(),
        event_seq: Some(due[0].seq),
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("legacy", 1, NOW, 503),
        outcome: AttemptOutcome::Retry { next_at_ms: retry_at },
    };
    store.record_attempt(Arc::new(first)).await.unwrap();
    assert!(store.due_deliveries("legacy", retry_at - 1, None, 10).await.unwrap().is_empty(), "backing off");
    let again = store.due_deliveries("legacy", retry_at, None, 10).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    assert_eq!(status_of(&*store, &k).await, "queued");
    let depth = store.queue_depth(vec!["legacy".into()]).await.unwrap();
    let backlog = Backlog { pending: 1, earliest_due_ms: retry_at };
    assert_eq!(depth, vec![QueueDepth { upstream: "legacy".into(), merchant: "acme".into(), backlog }]);

    let second = crate::Attempt {
        key: k.clone(),
        event_seq: Some(again[0].seq),
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("legacy", 2, retry_at, 200),
        outcome: AttemptOutcome::Delivered,
    };
    store.record_attempt(Arc::new(second)).await.unwrap();
    assert!(store.due_deliveries("legacy", retry_at * 2, None, 10).await.unwrap().is_empty());
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!(detail.summary.status, "delivered");
    assert_eq!(detail.attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(detail.deliveries[0].status, "delivered");
}

/// The queue's depth counts each merchant's pending deliveries to each upstream asked about,
/// and says when the earliest of them fell due: a delivered row no longer counts, and a row
/// waiting to retry counts from its retry's time.
pub async fn the_queue_depth_counts_each_merchants_pending_deliveries_from_the_earliest_due(
    store: Arc<dyn Store>,
) {
    let pending = |upstream: &str, merchant: &str, pending: u64, earliest_due_ms: i64| QueueDepth {
        upstream: upstream.into(),
        merchant: merchant.into(),
        backlog: Backlog { pending, earliest_due_ms },
    };
    let (delivered, later) = (key("acme", "/wh", "evt_q1"), key("acme", "/wh", "evt_q2"));
    let (retried, elsewhere) = (key("globex", "/wh", "evt_q3"), key("acme", "/wh", "evt_q4"));
    let unasked = key("acme", "/wh", "evt_q5");
    for (k, at, upstream) in [
        (&delivered, NOW, "legacy"),
        (&later, NOW + 10, "legacy"),
        (&retried, NOW + 5, "legacy"),
        (&elsewhere, NOW + 1, "other"),
        (&unasked, NOW + 2, "unasked"),
    ] {
        store.insert_event(event(k, at, to(upstream))).await.unwrap();
    }
    let asked = || vec!["legacy".to_string(), "other".to_string()];
    let mut depth = store.queue_depth(asked()).await.unwrap();
    depth.sort();
    assert_eq!(
        depth,
        [
            pending("legacy", "acme", 2, NOW),
            pending("legacy", "globex", 1, NOW + 5),
            pending("other", "acme", 1, NOW + 1)
        ]
    );

    let due = store.due_deliveries("legacy", NOW + 10, None, 10).await.unwrap();
    let seq_of = |k: &EventKey| due.iter().find(|d| &d.event.key == k).map(|d| d.seq);
    let outcome = |k: &EventKey, status_code: u16, outcome: AttemptOutcome| crate::Attempt {
        key: k.clone(),
        event_seq: seq_of(k),
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("legacy", 1, NOW + 10, status_code),
        outcome,
    };
    store.record_attempt(Arc::new(outcome(&delivered, 200, AttemptOutcome::Delivered))).await.unwrap();
    let retry_at = NOW + 60_000;
    store
        .record_attempt(Arc::new(outcome(&retried, 503, AttemptOutcome::Retry { next_at_ms: retry_at })))
        .await
        .unwrap();
    let mut depth = store.queue_depth(asked()).await.unwrap();
    depth.sort();
    assert_eq!(
        depth,
        [
            pending("legacy", "acme", 1, NOW + 10),
            pending("legacy", "globex", 1, retry_at),
            pending("other", "acme", 1, NOW + 1)
        ]
    );
    assert!(
        store.queue_depth(vec!["nobody".into()]).await.unwrap().is_empty(),
        "no entry without a pending row"
    );
}

/// An event's number is the one its insert answered, wherever the store hands the event out
/// again (a due delivery, a due plugin step), and a later event's is greater.
pub async fn an_events_number_is_the_same_in_its_insert_and_its_due_rows(store: Arc<dyn Store>) {
    let delivered = key("acme", "/wh", "evt_numbered");
    let stepped = key("acme", "/wh", "evt_numbered_step");
    let Inserted::New(first) = store.insert_event(event(&delivered, NOW, to("legacy"))).await.unwrap() else {
        panic!("new")
    };
    let Inserted::New(second) = store.insert_event(event(&stepped, NOW, Some(Hop::Plugins))).await.unwrap()
    else {
        panic!("new")
    };
    assert!(second > first, "{second:?} after {first:?}");
    let due = store.due_deliveries("legacy", NOW, None, 10).await.unwrap();
    assert_eq!((&due[0].event.key, due[0].seq), (&delivered, first));
    let steps = store.due_steps(NOW, None, 10).await.unwrap();
    assert_eq!((&steps[0].event.key, steps[0].seq), (&stepped, second));
}

/// An attempt whose number is another event's changes neither event: a store trusts a number
/// only on rows that carry the attempt's key. (Numbers are the store's own, so only a bug, or
/// a gateway pointed at another database mid-flight, could send one; neither may let one
/// merchant's outcome land on another's delivery.)
pub async fn an_attempt_whose_number_is_another_events_changes_neither(store: Arc<dyn Store>) {
    let mine = key("acme", "/wh", "evt_mine");
    let theirs = key("globex", "/wh", "evt_theirs");
    store.insert_event(event(&mine, NOW, to("legacy"))).await.unwrap();
    let Inserted::New(their_seq) = store.insert_event(event(&theirs, NOW, to("legacy"))).await.unwrap()
    else {
        panic!("new")
    };
    for outcome in [AttemptOutcome::Delivered, AttemptOutcome::Dead] {
        let crossed = crate::Attempt {
            key: mine.clone(),
            event_seq: Some(their_seq),
            ordered: false,
            claimed_until_ms: None,
            info: attempt_info("legacy", 1, NOW, 200),
            outcome,
        };
        store.record_attempts(vec![Arc::new(crossed)]).await.unwrap();
    }
    for k in [&mine, &theirs] {
        let detail = store.get_event(k).await.unwrap().unwrap();
        assert_eq!(detail.summary.status, "queued", "{k:?}");
        assert_eq!(
            (detail.deliveries[0].status.as_str(), detail.deliveries[0].attempts),
            ("pending", 0),
            "{k:?}"
        );
    }
    let due = store.due_deliveries("legacy", NOW, None, 10).await.unwrap();
    assert_eq!(due.len(), 2, "both still due");
}

/// Attempt `number` of `k`'s delivery to `upstream`, made at `at_ms` and answered `status`,
/// given by its key (no number), as an attempt recorded after a restart is.
fn attempt(
    k: &EventKey,
    upstream: &str,
    number: u32,
    at_ms: i64,
    status: u16,
    outcome: AttemptOutcome,
) -> crate::Attempt {
    crate::Attempt {
        key: k.clone(),
        event_seq: None,
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info(upstream, number, at_ms, status),
        outcome,
    }
}

/// An event's attempt history as (upstream, number, made at).
fn history(detail: &crate::EventDetail) -> Vec<(String, u32, i64)> {
    detail.attempts.iter().map(|a| (a.upstream.clone(), a.number, a.at_ms)).collect()
}

/// A history as [`history`] gives it, from borrowed names.
fn own(v: &[(&str, u32, i64)]) -> Vec<(String, u32, i64)> {
    v.iter().map(|(u, n, t)| (u.to_string(), *n, *t)).collect()
}

/// An event's attempts are its history: a replay (plain, or through its plugin step, which
/// drops and makes the deliveries again) starts the counts over and keeps every attempt made,
/// listed in the order they were made, each upstream's with its own numbers.
pub async fn a_replay_keeps_the_attempts_so_far_in_the_events_history(store: Arc<dyn Store>) {
    let plain = key("acme", "/wh", "evt_history");
    store.insert_event(event(&plain, NOW, to("legacy"))).await.unwrap();
    let retry = AttemptOutcome::Retry { next_at_ms: NOW + 10 };
    store.record_attempt(Arc::new(attempt(&plain, "legacy", 1, NOW, 503, retry))).await.unwrap();
    store
        .record_attempt(Arc::new(attempt(&plain, "legacy", 2, NOW + 10, 400, AttemptOutcome::Dead)))
        .await
        .unwrap();
    assert!(store.replay(&plain, &Hop::Upstream("legacy".into()), NOW + 20, None).await.unwrap());
    let detail = store.get_event(&plain).await.unwrap().unwrap();
    assert_eq!(history(&detail), own(&[("legacy", 1, NOW), ("legacy", 2, NOW + 10)]), "kept by the replay");
    assert_eq!(detail.deliveries[0].attempts, 0, "the count starts over");
    store
        .record_attempt(Arc::new(attempt(&plain, "legacy", 1, NOW + 21, 200, AttemptOutcome::Delivered)))
        .await
        .unwrap();
    let detail = store.get_event(&plain).await.unwrap().unwrap();
    assert_eq!(
        history(&detail),
        own(&[("legacy", 1, NOW), ("legacy", 2, NOW + 10), ("legacy", 1, NOW + 21)]),
        "{detail:?}"
    );
    assert_eq!(detail.attempts[2].status_code, Some(200));
    assert_eq!((detail.summary.status.as_str(), detail.deliveries[0].attempts), ("delivered", 1));

    // Through a plugin step: its deliveries are dropped and made again, their attempts kept.
    let stepped = key("acme", "/wh", "evt_history_step");
    store.insert_event(event(&stepped, NOW, Some(Hop::Plugins))).await.unwrap();
    store.finish_plugin_step(step(&stepped, 1, NOW, AttemptOutcome::Delivered, &["a", "b"])).await.unwrap();
    store
        .record_attempt(Arc::new(attempt(&stepped, "b", 1, NOW + 1, 400, AttemptOutcome::Dead)))
        .await
        .unwrap();
    store
        .record_attempt(Arc::new(attempt(&stepped, "a", 1, NOW + 2, 200, AttemptOutcome::Delivered)))
        .await
        .unwrap();
    assert!(store.replay(&stepped, &Hop::Plugins, NOW + 30, None).await.unwrap());
    let detail = store.get_event(&stepped).await.unwrap().unwrap();
    assert!(detail.deliveries.is_empty(), "the step decides again: {detail:?}");
    assert_eq!(history(&detail), own(&[("b", 1, NOW + 1), ("a", 1, NOW + 2)]));
    store.finish_plugin_step(step(&stepped, 1, NOW + 31, AttemptOutcome::Delivered, &["a"])).await.unwrap();
    store
        .record_attempt(Arc::new(attempt(&stepped, "a", 1, NOW + 31, 200, AttemptOutcome::Delivered)))
        .await
        .unwrap();
    let detail = store.get_event(&stepped).await.unwrap().unwrap();
    assert_eq!(history(&detail), own(&[("b", 1, NOW + 1), ("a", 1, NOW + 2), ("a", 1, NOW + 31)]));
    assert_eq!(detail.summary.status, "delivered");
}

/// A plugin step that makes an event's delivery again (proxy mode forwards a duplicate again,
/// and runs its plugins again) starts the delivery's count over and keeps the attempt made
/// before in the event's history once, whether the step names the event by its number or its
/// key.
pub async fn a_step_that_makes_a_delivery_again_keeps_its_earlier_attempt_in_the_history(
    store: Arc<dyn Store>,
) {
    for (id, first_by_number, second_by_number) in
        [("evt_again_number_key", true, false), ("evt_again_key_number", false, true)]
    {
        let k = key("acme", "/wh", id);
        let Inserted::New(seq) = store.insert_event(event(&k, NOW, None)).await.unwrap() else {
            panic!("{id} is new")
        };
        let forward = |number: bool, at_ms: i64| PluginStep {
            event_seq: number.then_some(seq),
            status: EventStatus::Forwarding,
            ..step(&k, 1, at_ms, AttemptOutcome::Delivered, &["audit"])
        };
        assert_eq!(
            store.finish_plugin_step(forward(first_by_number, NOW)).await.unwrap(),
            StepRecorded::Applied
        );
        let retry = AttemptOutcome::Retry { next_at_ms: NOW + 10 };
        store.record_attempt(Arc::new(attempt(&k, "audit", 1, NOW + 1, 503, retry))).await.unwrap();
        // Twice: the second finds the attempt filed already, and files nothing again.
        for _ in 0..2 {
            let again = store.finish_plugin_step(forward(second_by_number, NOW + 2)).await.unwrap();
            assert_eq!(again, StepRecorded::Applied);
        }
        let detail = store.get_event(&k).await.unwrap().unwrap();
        assert_eq!(history(&detail), own(&[("audit", 1, NOW + 1)]), "{id}: kept: {detail:?}");
        assert_eq!(detail.deliveries[0].attempts, 0, "{id}: the count starts over");
        store
            .record_attempt(Arc::new(attempt(&k, "audit", 1, NOW + 3, 200, AttemptOutcome::Delivered)))
            .await
            .unwrap();
        let detail = store.get_event(&k).await.unwrap().unwrap();
        assert_eq!(history(&detail), own(&[("audit", 1, NOW + 1), ("audit", 1, NOW + 3)]), "{id}");
        assert_eq!(detail.attempts[0].status_code, Some(503), "{id}: the earlier attempt as it was");
    }
}

/// Regression (the replay lost to an attempt under way): an attempt begun before its delivery
/// was replayed, and recorded after, left the row as its outcome said (delivered, or dead), so
/// what the replay asked for was never sent. Such an outcome now changes neither the row nor
/// the event; the attempt is kept in the history, and the replayed delivery is due as the
/// replay made it. An attempt begun after the replay is recorded as usual.
pub async fn an_attempt_under_way_when_its_delivery_is_replayed_leaves_the_replay_due(store: Arc<dyn Store>) {
    for (id, outcome, status) in [
        ("evt_under_way_ok", AttemptOutcome::Delivered, 200),
        ("evt_under_way_dead", AttemptOutcome::Dead, 400),
    ] {
        let k = key("acme", "/wh", id);
        store.insert_event(event(&k, NOW, to("legacy"))).await.unwrap();
        let due = store.due_deliveries("legacy", NOW + 1, None, 10).await.unwrap();
        let due = due.into_iter().find(|d| d.event.key == k).unwrap();
        let under_way = |number, at_ms, status, outcome| {
            Arc::new(crate::Attempt {
                key: k.clone(),
                event_seq: Some(due.seq),
                ordered: false,
                claimed_until_ms: None,
                info: attempt_info("legacy", number, at_ms, status),
                outcome,
            })
        };
        // Begun at NOW + 1; the replay comes in the same millisecond, before it is recorded.
        assert!(store.replay(&k, &Hop::Upstream("legacy".into()), NOW + 1, None).await.unwrap());
        store.record_attempts(vec![under_way(1, NOW + 1, status, outcome)]).await.unwrap();
        let detail = store.get_event(&k).await.unwrap().unwrap();
        assert_eq!(detail.summary.status, "queued", "{id}: the replay still stands");
        assert_eq!(
            (detail.deliveries[0].status.as_str(), detail.deliveries[0].attempts),
            ("pending", 0),
            "{id}"
        );
        let sent: Vec<_> = detail.attempts.iter().map(|a| (a.number, a.at_ms, a.status_code)).collect();
        assert_eq!(sent, [(1, NOW + 1, Some(status))], "{id}: what was sent stays in the history");
        let again = store.due_deliveries("legacy", NOW + 2, None, 10).await.unwrap();
        assert!(again.iter().any(|d| d.event.key == k && d.attempts == 0), "{id}: the replay is due");

        store.record_attempts(vec![under_way(1, NOW + 2, 200, AttemptOutcome::Delivered)]).await.unwrap();
        let detail = store.get_event(&k).await.unwrap().unwrap();
        assert_eq!(detail.summary.status, "delivered", "{id}: the replay's own attempt counts");
        assert_eq!(detail.attempts.len(), 2, "{id}: {:?}", detail.attempts);
    }
}

/// As for a delivery: a plugin step begun before its event was replayed into its plugins, and
/// finished after, keeps its runs in the history and changes nothing else (no delivery, kv
/// write, tag or status of its decision). The replay's own step decides.
pub async fn a_plugin_step_under_way_when_its_event_is_replayed_leaves_the_replay_due(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_step_under_way");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    assert!(store.replay(&k, &Hop::Plugins, NOW + 1, None).await.unwrap());
    let mut under_way = step(&k, 1, NOW + 1, AttemptOutcome::Delivered, &["a"]);
    under_way.kv =
        vec![KvWrite { plugin: "enrich".into(), key: "seen".into(), value: b"old".to_vec(), version: 1 }];
    under_way.tags = vec!["old-decision".into()];
    (under_way.status, under_way.reason) =
        (EventStatus::Dropped, Some("enrich: the old code drops it".into()));
    let recorded = store.finish_plugin_step(under_way).await.unwrap();
    assert_eq!(recorded, StepRecorded::SetAside, "its caller must not send what it decided");
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!((detail.summary.status.as_str(), detail.summary.tags.len()), ("queued", 0), "{detail:?}");
    assert!(detail.deliveries.is_empty(), "the old decision created nothing: {detail:?}");
    assert_eq!(detail.plugin_runs.len(), 1, "what ran stays in the history");
    assert!(store.load_kv("acme", "enrich").await.unwrap().is_empty(), "nor wrote anything");
    let shown = detail.plugin_step.unwrap();
    assert_eq!((&shown.status[..], shown.attempts), ("pending", 0));
    let due = store.due_steps(NOW + 2, None, 10).await.unwrap();
    assert_eq!(due.iter().map(|s| &s.event.key).collect::<Vec<_>>(), [&k], "the replay's step is due");

    let recorded = store.finish_plugin_step(step(&k, 1, NOW + 2, AttemptOutcome::Delivered, &["b"])).await;
    assert_eq!(recorded.unwrap(), StepRecorded::Applied);
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!(detail.deliveries.iter().map(|d| &d.upstream[..]).collect::<Vec<_>>(), ["b"]);
    assert_eq!(detail.plugin_runs.len(), 2);
}

/// Regression (a replay lost across replicas): the clock's rule ([`crate::takes_outcome!`])
/// alone let an attempt begun on a replica whose clock ran ahead of the replaying one's take
/// the replayed row, as if begun after the replay, and the replay was lost. A store that claims
/// also asks that the row still hold the attempt's lease, which the replay ended: the outcome
/// is set aside, deliveries and plugin steps alike, however far apart the clocks are. A store
/// that makes no claims runs on one clock; for it the check before this one covers it.
pub async fn a_replay_from_a_replica_whose_clock_is_behind_still_sets_an_attempt_under_way_aside(
    store: Arc<dyn Store>,
) {
    if !store.claims() {
        return;
    }
    // One replica claims and begins at AHEAD; another, 4 s behind it, replays at BEHIND.
    const AHEAD: i64 = NOW + 5_000;
    const BEHIND: i64 = NOW + 1_000;
    let k = key("acme", "/wh", "evt_replayed_behind");
    store.insert_event(event(&k, NOW, to("legacy"))).await.unwrap();
    let due = store.due_deliveries("legacy", AHEAD, None, 10).await.unwrap();
    let due = due.into_iter().find(|d| d.event.key == k).unwrap();
    let under_way = |due: &DueDelivery, at_ms| {
        Arc::new(crate::Attempt {
            key: k.clone(),
            event_seq: Some(due.seq),
            ordered: false,
            claimed_until_ms: due.claimed_until_ms,
            info: attempt_info("legacy", due.attempts + 1, at_ms, 200),
            outcome: AttemptOutcome::Delivered,
        })
    };
    assert!(store.replay(&k, &Hop::Upstream("legacy".into()), BEHIND, None).await.unwrap());
    store.record_attempts(vec![under_way(&due, AHEAD)]).await.unwrap();
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!(detail.summary.status, "queued", "the replay still stands: {detail:?}");
    assert_eq!((detail.deliveries[0].status.as_str(), detail.deliveries[0].attempts), ("pending", 0));
    assert_eq!(detail.attempts.len(), 1, "what was sent stays in the history");
    let again = store.due_deliveries("legacy", BEHIND + 1, None, 10).await.unwrap();
    let again = again.into_iter().find(|d| d.event.key == k).expect("the replay is due");
    store.record_attempts(vec![under_way(&again, BEHIND + 1)]).await.unwrap();
    assert_eq!(status_of(&*store, &k).await, "delivered", "the replay's own attempt counts");

    let s = key("acme", "/wh", "evt_step_replayed_behind");
    store.insert_event(event(&s, NOW, Some(Hop::Plugins))).await.unwrap();
    let claimed = store.due_steps(AHEAD, None, 10).await.unwrap();
    let claimed = claimed.into_iter().find(|d| d.event.key == s).unwrap();
    assert!(store.replay(&s, &Hop::Plugins, BEHIND, None).await.unwrap());
    let mut stale = step(&s, 1, AHEAD, AttemptOutcome::Delivered, &["a"]);
    stale.claimed_until_ms = claimed.claimed_until_ms;
    stale.tags = vec!["old-decision".into()];
    stale.kv =
        vec![KvWrite { plugin: "enrich".into(), key: "seen".into(), value: b"old".to_vec(), version: 1 }];
    store.finish_plugin_step(stale).await.unwrap();
    let detail = store.get_event(&s).await.unwrap().unwrap();
    assert_eq!((detail.summary.status.as_str(), detail.summary.tags.len()), ("queued", 0), "{detail:?}");
    assert!(detail.deliveries.is_empty(), "the old decision created nothing: {detail:?}");
    assert!(store.load_kv("acme", "enrich").await.unwrap().is_empty(), "nor wrote anything");
    assert_eq!(detail.plugin_runs.len(), 1, "what ran stays in the history");
    let due = store.due_steps(BEHIND + 1, None, 10).await.unwrap();
    assert!(due.iter().any(|d| d.event.key == s), "the replay's step is due");
}

/// Attempts recorded in one write each apply to their own delivery and event, and two of one
/// delivery apply in the order given; alike whether an attempt carries its event's number, as
/// the insert answered it, or only its key.
pub async fn attempts_recorded_together_each_settle_their_own_event(store: Arc<dyn Store>) {
    let [done, retried, dead, twice] =
        ["evt_b_done", "evt_b_retried", "evt_b_dead", "evt_b_twice"].map(|id| {
            let k = key("acme", "/wh", id);
            (k.clone(), event(&k, NOW, to("legacy")))
        });
    let mut seqs = Vec::new();
    for (_, new) in [&done, &retried, &dead, &twice] {
        let Inserted::New(seq) = store.insert_event(new.clone()).await.unwrap() else { panic!("new") };
        seqs.push(seq);
    }
    let retry_at = NOW + 60_000;
    let of = |k: &EventKey, event_seq, number: u32, status: u16, outcome: AttemptOutcome| {
        // A second attempt begins once its retry is due.
        let at_ms = if number == 1 { NOW } else { retry_at };
        Arc::new(crate::Attempt {
            key: k.clone(),
            event_seq,
            ordered: false,
            claimed_until_ms: None,
            info: attempt_info("legacy", number, at_ms, status),
            outcome,
        })
    };
    store
        .record_attempts(vec![
            of(&done.0, Some(seqs[0]), 1, 200, AttemptOutcome::Delivered),
            of(&retried.0, None, 1, 503, AttemptOutcome::Retry { next_at_ms: retry_at }),
            of(&dead.0, Some(seqs[2]), 1, 400, AttemptOutcome::Dead),
            of(&twice.0, Some(seqs[3]), 1, 503, AttemptOutcome::Retry { next_at_ms: retry_at }),
            of(&twice.0, None, 2, 200, AttemptOutcome::Delivered),
        ])
        .await
        .unwrap();
    assert_eq!(status_of(&*store, &done.0).await, "delivered");
    assert_eq!(status_of(&*store, &retried.0).await, "queued");
    assert_eq!(status_of(&*store, &dead.0).await, "dead");
    assert_eq!(status_of(&*store, &twice.0).await, "delivered", "its second attempt applied last");
    let detail = store.get_event(&twice.0).await.unwrap().unwrap();
    assert_eq!(detail.attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((detail.deliveries[0].status.as_str(), detail.deliveries[0].attempts), ("delivered", 2));
    let due = store.due_deliveries("legacy", retry_at, None, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| &d.event.key).collect::<Vec<_>>(),
        [&retried.0],
        "only the retry is due again"
    );
    assert_eq!(due[0].attempts, 1);
    store.record_attempts(Vec::new()).await.expect("recording nothing is no error");
}

/// How an event's status reads: its lookup, whether listings filtered by `queued` and by
/// `delivered` include it, and what storing it again answers.
async fn status_everywhere(store: &dyn Store, new: &NewEvent) -> (String, bool, bool, Inserted) {
    let listed =
        |status: &str| EventFilter { status: Some(status.into()), limit: 100, ..EventFilter::default() };
    let id = &new.event.key.id;
    let queued = store.list_events(listed("queued")).await.unwrap().iter().any(|e| &e.id == id);
    let delivered = store.list_events(listed("delivered")).await.unwrap().iter().any(|e| &e.id == id);
    let again = store.insert_event(new.clone()).await.unwrap();
    (status_of(store, &new.event.key).await, queued, delivered, again)
}

/// An event its plugin step fanned out to two upstreams is queued while one delivery is left
/// and delivered once both are, alike in a lookup, in listings filtered by status and in the
/// answer to its duplicate; replayed, it is queued again everywhere. (SQLite settles a
/// delivered event as it is read, not by rewriting its row: this holds the two ways equal.)
pub async fn an_event_is_delivered_once_every_delivery_is_wherever_its_status_is_read(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_fanned");
    let new = event(&k, NOW, Some(Hop::Plugins));
    store.insert_event(new.clone()).await.unwrap();
    let queued = ("queued".to_string(), true, false, Inserted::Duplicate(EventStatus::Queued));
    assert_eq!(status_everywhere(&*store, &new).await, queued, "its plugin step is due");
    store
        .finish_plugin_step(step(&k, 1, NOW, AttemptOutcome::Delivered, &["legacy", "ledger"]))
        .await
        .unwrap();
    let delivered_to = |upstream: &str| {
        vec![Arc::new(crate::Attempt {
            key: k.clone(),
            event_seq: None,
            ordered: false,
            claimed_until_ms: None,
            info: attempt_info(upstream, 1, NOW + 1, 200),
            outcome: AttemptOutcome::Delivered,
        })]
    };
    store.record_attempts(delivered_to("ledger")).await.unwrap();
    assert_eq!(status_everywhere(&*store, &new).await, queued, "legacy's delivery is left");
    store.record_attempts(delivered_to("legacy")).await.unwrap();
    assert_eq!(
        status_everywhere(&*store, &new).await,
        ("delivered".to_string(), false, true, Inserted::Duplicate(EventStatus::Delivered))
    );
    assert!(store.replay(&k, &Hop::Plugins, NOW + 2, None).await.unwrap());
    assert_eq!(status_everywhere(&*store, &new).await, queued, "replayed, its plugins decide again");
}

/// One dead delivery makes its event dead; a replay makes every delivery pending again with
/// its attempts reset, and the event queued.
pub async fn a_dead_delivery_makes_its_event_dead_and_replay_revives_it(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_dead");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    store.finish_plugin_step(step(&k, 1, NOW, AttemptOutcome::Delivered, &["a", "b"])).await.unwrap();
    let delivered = crate::Attempt {
        key: k.clone(),
        event_seq: None,
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("a", 1, NOW, 200),
        outcome: AttemptOutcome::Delivered,
    };
    store.record_attempt(Arc::new(delivered)).await.unwrap();
    assert_eq!(status_of(&*store, &k).await, "queued", "b is still pending");
    let dead = crate::Attempt {
        key: k.clone(),
        event_seq: None,
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("b", 1, NOW, 400),
        outcome: AttemptOutcome::Dead,
    };
    store.record_attempt(Arc::new(dead.clone())).await.unwrap();
    assert_eq!(status_of(&*store, &k).await, "dead");

    // Without a step, a replay makes the deliveries pending again.
    let plain = key("acme", "/wh", "evt_dead_plain");
    store.insert_event(event(&plain, NOW, to("b"))).await.unwrap();
    let dead = crate::Attempt { key: plain.clone(), ..dead };
    store.record_attempt(Arc::new(dead)).await.unwrap();
    assert_eq!(status_of(&*store, &plain).await, "dead");
    assert!(store.replay(&plain, &Hop::Upstream("b".into()), NOW + 5, None).await.unwrap());
    assert_eq!(status_of(&*store, &plain).await, "queued");
    let due = store.due_deliveries("b", NOW + 6, None, 10).await.unwrap();
    assert_eq!(due.len(), 1, "only the plain event's: the other's wait for its step");
    assert_eq!((&due[0].event.key, due[0].attempts), (&plain, 0));
    assert!(!store
        .replay(&key("acme", "/wh", "evt_missing"), &Hop::Upstream("b".into()), NOW, None)
        .await
        .unwrap());

    // With a step, the plugins decide again: what they created is gone until they do.
    assert!(store.replay(&k, &Hop::Plugins, NOW + 5, None).await.unwrap());
    assert_eq!(status_of(&*store, &k).await, "queued");
    assert!(store.get_event(&k).await.unwrap().unwrap().deliveries.is_empty());
    let steps = store.due_steps(NOW + 6, None, 10).await.unwrap();
    assert_eq!((steps.len(), &steps[0].event.key, steps[0].attempts), (1, &k, 0));
}

/// A plugin step that fails for good makes its event dead and stops being due; replay runs it
/// again from its first attempt. A quarantined event replayed into the plugins gets a step,
/// and keeps who forced that.
pub async fn a_dead_plugin_step_makes_its_event_dead_and_replay_runs_it_again(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_step_dead");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    let backlog = Backlog { pending: 1, earliest_due_ms: NOW };
    assert_eq!(store.steps_pending().await.unwrap(), vec![("acme".to_string(), backlog)]);
    store.finish_plugin_step(step(&k, 1, NOW, AttemptOutcome::Dead, &[])).await.unwrap();
    assert_eq!(status_of(&*store, &k).await, "dead");
    assert!(store.due_steps(NOW * 2, None, 10).await.unwrap().is_empty(), "a dead step is not due");
    assert!(store.steps_pending().await.unwrap().is_empty());
    let shown = store.get_event(&k).await.unwrap().unwrap().plugin_step.expect("the step is shown");
    assert_eq!(
        (&shown.status[..], shown.attempts, shown.error.as_deref()),
        ("dead", 1, Some("enrich: trap"))
    );

    assert!(store.replay(&k, &Hop::Plugins, NOW + 9, None).await.unwrap());
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!((&detail.summary.status[..], detail.summary.reason.as_deref()), ("queued", None));
    let shown = detail.plugin_step.unwrap();
    assert_eq!((&shown.status[..], shown.attempts, shown.next_attempt_at_ms), ("pending", 0, Some(NOW + 10)));

    let quarantined = key("acme", "/wh", "evt_quarantined");
    let mut new = event(&quarantined, NOW, None);
    new.status = EventStatus::Quarantined;
    store.insert_event(new).await.unwrap();
    assert!(store.get_event(&quarantined).await.unwrap().unwrap().plugin_step.is_none());
    let forced = "the operator's token, 2025-11-24T16:00:09Z";
    assert!(store.replay(&quarantined, &Hop::Plugins, NOW + 9, Some(forced)).await.unwrap());
    let summary = store.get_event(&quarantined).await.unwrap().unwrap().summary;
    assert_eq!(summary.forced_by.as_deref(), Some(forced), "who forced it is kept");
    assert_eq!(store.get_event(&k).await.unwrap().unwrap().summary.forced_by, None);
    let due: Vec<EventKey> =
        store.due_steps(NOW + 10, None, 10).await.unwrap().into_iter().map(|s| s.event.key).collect();
    assert_eq!(due, vec![quarantined, k], "oldest first: the quarantined one arrived first");
}

/// A plugin step writes its runs, its kv writes and the deliveries it created in one commit;
/// a failed step is due again at its retry time, keeps its error, and creates no delivery.
pub async fn a_plugin_step_commits_its_runs_kv_and_deliveries_together(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_step");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    let first = store.due_steps(NOW, None, 10).await.unwrap();
    assert_eq!((first.len(), &first[0].event.key, first[0].attempts), (1, &k, 0));
    assert_eq!(first[0].event.event_type.as_deref(), Some("payment.succeeded"));
    assert!(store.due_deliveries("legacy", NOW, None, 10).await.unwrap().is_empty(), "the step comes first");

    store
        .finish_plugin_step(step(&k, 1, NOW, AttemptOutcome::Retry { next_at_ms: NOW + 1_000 }, &[]))
        .await
        .unwrap();
    assert!(store.due_steps(NOW + 999, None, 10).await.unwrap().is_empty(), "backing off");
    let retry = store.due_steps(NOW + 1_000, None, 10).await.unwrap();
    assert_eq!(retry[0].attempts, 1);
    assert!(store.due_deliveries("legacy", NOW + 1_000, None, 10).await.unwrap().is_empty());
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!(detail.summary.reason.as_deref(), Some("enrich: trap"));
    let shown = detail.plugin_step.expect("the step is shown");
    assert_eq!(
        (&shown.status[..], shown.attempts, shown.next_attempt_at_ms),
        ("pending", 1, Some(NOW + 1_000))
    );
    assert_eq!(shown.error.as_deref(), Some("enrich: trap"));
    assert!(detail.deliveries.is_empty() && detail.attempts.is_empty(), "a step is neither");

    let finished = PluginStep {
        kv: vec![KvWrite { plugin: "enrich".into(), key: "seen".into(), value: b"2".to_vec(), version: 1 }],
        deliveries: vec![NewDelivery {
            upstream: "legacy".into(),
            body: Some(Bytes::from_static(b"{\"rewritten\":true}")),
            headers: vec![("x-tier".into(), "gold".into())],
            claim_until_ms: None,
        }],
        tags: vec!["gold".into()],
        routes: Some(vec!["route[1]: legacy".into()]),
        ..step(&k, 2, NOW + 1_000, AttemptOutcome::Delivered, &[])
    };
    store.finish_plugin_step(finished).await.unwrap();
    assert!(store.due_steps(NOW * 2, None, 10).await.unwrap().is_empty(), "a finished step is not due");
    let stored = store.load_kv("acme", "enrich").await.unwrap();
    let writer = store.kv_writer();
    assert_eq!(stored, [KvEntry { key: "seen".into(), value: b"2".to_vec(), version: 1, writer }]);
    assert!(store.load_kv("globex", "enrich").await.unwrap().is_empty(), "kv is per merchant");
    let due = store.due_deliveries("legacy", NOW + 1_000, None, 10).await.unwrap();
    assert_eq!(&due[0].body()[..], b"{\"rewritten\":true}");
    assert_eq!(&due[0].event.body[..], b"{\"id\":\"evt_step\"}", "the event keeps its own body");
    assert_eq!(due[0].headers, vec![("x-tier".to_string(), "gold".to_string())]);
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert_eq!(detail.plugin_runs.len(), 2);
    assert_eq!(detail.summary.tags, ["gold"]);
    assert_eq!(detail.summary.reason, None, "the retry that continued cleared the failure");
    let routes = detail.plugin_step.and_then(|s| s.routes);
    assert_eq!(routes, Some(vec!["route[1]: legacy".to_string()]), "what the routes matched is kept");
}

/// A store shared by several gateways ([`Store::claims`]): the read that returns a due row
/// claims it, so a second read (another replica's) does not get it while the first holds it;
/// recording its outcome ends the claim, and a claim whose holder never records (a replica
/// killed mid-delivery) runs out, after which the row is due again. A store with one gateway
/// makes no claims: for it this check only proves that it says so consistently.
pub async fn a_claimed_row_is_due_for_no_other_reader_until_its_claim_ends(store: Arc<dyn Store>) {
    if !store.claims() {
        return;
    }
    let k = key("acme", "/wh", "evt_claimed");
    store.insert_event(event(&k, NOW, to("legacy"))).await.unwrap();
    assert_eq!(
        store.due_deliveries("legacy", NOW, None, 10).await.unwrap().len(),
        1,
        "the first reader claims it"
    );
    assert!(store.due_deliveries("legacy", NOW, None, 10).await.unwrap().is_empty(), "not a second one");
    let retry = crate::Attempt {
        key: k.clone(),
        event_seq: None,
        ordered: false,
        claimed_until_ms: None,
        info: attempt_info("legacy", 1, NOW, 503),
        outcome: AttemptOutcome::Retry { next_at_ms: NOW + 10 },
    };
    store.record_attempt(Arc::new(retry)).await.unwrap();
    let again = store.due_deliveries("legacy", NOW + 10, None, 10).await.unwrap();
    assert_eq!(again.len(), 1, "recording the outcome ended the claim");
    assert!(store.due_deliveries("legacy", NOW + 20, None, 10).await.unwrap().is_empty(), "claimed again");
    let day = 86_400_000;
    let taken_over = store.due_deliveries("legacy", NOW + day, None, 10).await.unwrap();
    assert_eq!(taken_over.len(), 1, "a claim nobody ended runs out");

    let s = key("acme", "/wh", "evt_claimed_step");
    store.insert_event(event(&s, NOW, Some(Hop::Plugins))).await.unwrap();
    assert_eq!(store.due_steps(NOW, None, 10).await.unwrap().len(), 1);
    assert!(store.due_steps(NOW, None, 10).await.unwrap().is_empty(), "a step is claimed the same way");
    assert_eq!(store.due_steps(NOW + day, None, 10).await.unwrap().len(), 1);
}

/// A gateway that stops hands back what it claimed but never started
/// ([`DeliveryQueue::release_claims`](crate::DeliveryQueue::release_claims)): the rows are due
/// again at once for the other readers, deliveries and plugin steps alike. A claim whose
/// lease has passed to another reader since (its own ran out) is not handed back: that
/// reader may be delivering it. A store that makes no claims has nothing to hand back, and its
/// due rows stay due.
pub async fn a_claim_handed_back_is_due_again_at_once_unless_its_lease_passed_on(store: Arc<dyn Store>) {
    let d = key("acme", "/wh", "evt_handed_back");
    let s = key("acme", "/wh", "evt_handed_back_step");
    store.insert_event(event(&d, NOW, to("legacy"))).await.unwrap();
    store.insert_event(event(&s, NOW, Some(Hop::Plugins))).await.unwrap();
    let delivery = store.due_deliveries("legacy", NOW, None, 10).await.unwrap();
    let step = store.due_steps(NOW, None, 10).await.unwrap();
    assert_eq!((delivery.len(), step.len()), (1, 1));
    assert_eq!(delivery[0].claim().is_some(), store.claims(), "a claim exactly when the store claims");
    assert_eq!(step[0].claim().is_some(), store.claims());
    let claims: Vec<_> = delivery[0].claim().into_iter().chain(step[0].claim()).collect();
    store.release_claims(claims.clone()).await.unwrap();
    // Read a millisecond later, as another reader would: its lease ends a millisecond later.
    let delivery = store.due_deliveries("legacy", NOW + 1, None, 10).await.unwrap();
    let step = store.due_steps(NOW + 1, None, 10).await.unwrap();
    assert_eq!((delivery.len(), step.len()), (1, 1), "handed back: due again at once");
    if !store.claims() {
        return;
    }
    // Handing back the first claims again: their leases have passed on to the second read.
    store.release_claims(claims).await.unwrap();
    assert!(
        store.due_deliveries("legacy", NOW + 2, None, 10).await.unwrap().is_empty(),
        "another reader's claim"
    );
    assert!(store.due_steps(NOW + 2, None, 10).await.unwrap().is_empty(), "another reader's claim");
}

/// A gateway that hands an event's first hop to its own workers stores it already claimed
/// ([`NewEvent::claim_until_ms`]): no reader gets the delivery or the plugin step before that
/// claim ends, a hand-back of it (the gateway's queue had no room after all) makes it due at
/// once, and one nobody ends runs out. A store that makes no claims ignores it: the rows are
/// due at once.
pub async fn a_first_hop_claimed_at_insert_is_due_for_no_reader_until_its_claim_ends(store: Arc<dyn Store>) {
    let until = NOW + 60_000;
    let claimed = |id: &str, hop: Option<Hop>| NewEvent {
        claim_until_ms: Some(until),
        ..event(&key("acme", "/wh", id), NOW, hop)
    };
    store.insert_event(claimed("evt_held", to("legacy"))).await.unwrap();
    store.insert_event(claimed("evt_held_step", Some(Hop::Plugins))).await.unwrap();
    let Inserted::New(seq) = store.insert_event(claimed("evt_handed_back", to("legacy"))).await.unwrap()
    else {
        panic!("not new")
    };
    let due_now = store.due_deliveries("legacy", NOW, None, 10).await.unwrap().len();
    let steps_now = store.due_steps(NOW, None, 10).await.unwrap().len();
    if !store.claims() {
        assert_eq!((due_now, steps_now), (2, 1), "a store that does not claim ignores the claim");
        return;
    }
    assert_eq!((due_now, steps_now), (0, 0), "claimed by the gateway that stored them");
    let handed_back = Claim {
        key: key("acme", "/wh", "evt_handed_back"),
        seq,
        upstream: Some("legacy".into()),
        until_ms: until,
    };
    store.release_claims(vec![handed_back]).await.unwrap();
    let due = store.due_deliveries("legacy", NOW + 1, None, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.event.key.id.as_str()).collect();
    assert_eq!(ids, ["evt_handed_back"], "handed back: due at once; the other still held");
    let due = store.due_deliveries("legacy", until, None, 10).await.unwrap();
    assert_eq!(due.len(), 1, "a claim nobody ended runs out");
    assert_eq!(due[0].event.key.id, "evt_held");
    assert_eq!(store.due_steps(until, None, 10).await.unwrap().len(), 1, "the step's too");
}

/// A gateway that starts the deliveries its plugin step created itself stores them already
/// claimed ([`NewDelivery::claim_until_ms`]), as it does an event's first hop: no reader gets
/// such a delivery before the claim ends, the others the step created are due at once, and
/// an attempt made under that claim is taken. A store that makes no claims ignores it.
pub async fn a_delivery_a_step_created_claimed_is_due_for_no_reader_until_its_claim_ends(
    store: Arc<dyn Store>,
) {
    let k = key("acme", "/wh", "evt_step_claims");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    let due = store.due_steps(NOW, None, 10).await.unwrap();
    let until = NOW + 60_000;
    let finished = PluginStep {
        event_seq: Some(due[0].seq),
        claimed_until_ms: due[0].claimed_until_ms,
        deliveries: vec![
            NewDelivery { claim_until_ms: Some(until), ..NewDelivery::to("legacy") },
            NewDelivery::to("crm"),
        ],
        ..step(&k, 1, NOW, AttemptOutcome::Delivered, &[])
    };
    assert_eq!(store.finish_plugin_step(finished).await.unwrap(), StepRecorded::Applied);
    let held = store.due_deliveries("legacy", NOW, None, 10).await.unwrap().len();
    let unclaimed = store.due_deliveries("crm", NOW, None, 10).await.unwrap().len();
    match store.claims() {
        true => assert_eq!((held, unclaimed), (0, 1), "claimed by the gateway that ran the step"),
        false => assert_eq!((held, unclaimed), (1, 1), "a store that does not claim ignores the claim"),
    }
    let delivered = crate::Attempt {
        key: k.clone(),
        event_seq: Some(due[0].seq),
        ordered: false,
        claimed_until_ms: store.claims().then_some(until),
        info: attempt_info("legacy", 1, NOW + 1, 200),
        outcome: AttemptOutcome::Delivered,
    };
    store.record_attempt(Arc::new(delivered)).await.unwrap();
    let detail = store.get_event(&k).await.unwrap().unwrap();
    let legacy = detail.deliveries.iter().find(|d| d.upstream == "legacy").unwrap();
    assert_eq!(legacy.status, "delivered", "the attempt under the step's claim is taken");
    assert!(store.due_deliveries("legacy", NOW + 120_000, None, 10).await.unwrap().is_empty());
}

/// Listing pages newest first by cursor, with no event missed or repeated, even when events
/// share a timestamp.
pub async fn events_page_newest_first_without_gaps_or_repeats(store: Arc<dyn Store>) {
    let mut stored = Vec::new();
    for i in 0..23 {
        let k = key(if i % 2 == 0 { "acme" } else { "globex" }, "/wh", &format!("evt_{i:02}"));
        store.insert_event(event(&k, NOW + (i / 3) as i64, None)).await.unwrap();
        stored.push(k.id.clone());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut filter = EventFilter { limit: 5, ..EventFilter::default() };
    loop {
        let page = store.list_events(filter.clone()).await.unwrap();
        for pair in page.windows(2) {
            assert!(pair[0].received_at_ms >= pair[1].received_at_ms, "newest first");
        }
        seen.extend(page.iter().map(|e| e.id.clone()));
        let Some(last) = page.last() else { break };
        filter.before =
            Some((last.received_at_ms, last.merchant.clone(), last.scope.clone(), last.id.clone()));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no repeats");
    stored.sort();
    assert_eq!(sorted, stored, "no gaps");
    let acme = store.list_events(EventFilter {
        merchant: Some("acme".into()),
        limit: 100,
        ..EventFilter::default()
    });
    assert_eq!(acme.await.unwrap().len(), 12);
}

/// Events that share a timestamp list in the byte order of their keys, as Rust and SQLite
/// compare them, whatever collation a backend's database has: `evt_B` (0x42) after `evt_a`
/// (0x61) newest first, where a language's collation puts `a` before `B`. Paged one at a time
/// by cursor, they come in the same order.
pub async fn events_sharing_a_timestamp_list_in_the_byte_order_of_their_keys(store: Arc<dyn Store>) {
    let ids = ["evt_a", "evt_B", "evt_c", "evt_É", "evt_e", "evt_A"];
    for id in ids {
        store.insert_event(event(&key("acme", "/wh", id), NOW, None)).await.unwrap();
    }
    let mut expected: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    expected.sort();
    expected.reverse();
    let listed = store.list_events(EventFilter { limit: 100, ..EventFilter::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), expected, "one page");
    let mut paged = Vec::new();
    let mut filter = EventFilter { limit: 1, ..EventFilter::default() };
    while let Some(last) = store.list_events(filter.clone()).await.unwrap().pop() {
        filter.before = Some((last.received_at_ms, last.merchant, last.scope, last.id.clone()));
        paged.push(last.id);
    }
    assert_eq!(paged, expected, "paged by cursor");
}

fn version(name: &str, content: &[u8], at_ms: i64) -> NewPluginVersion {
    NewPluginVersion {
        merchant: "acme".into(),
        name: name.into(),
        wasm: Bytes::copy_from_slice(content),
        sha256: format!("{:064x}", content.len() as u64 * 7919 + content[0] as u64),
        compiled: vec![0; 10],
        engine: "engine-a".into(),
        source: "upload".into(),
        created_at_ms: at_ms,
        activate: true,
    }
}

/// Versions are numbered per plugin, the newest is active, at most `max_versions` are kept
/// (never the active one or the one it replaced), the merchant's quota holds, and any kept
/// version can be activated again.
pub async fn plugin_versions_are_bounded_and_activated(store: Arc<dyn Store>) {
    let bounds = VersionBounds { max_versions: 3, merchant_bytes: 1 << 20 };
    for i in 1..=5u8 {
        let number = store.add_plugin_version(version("p", &[i; 100], NOW), None, bounds).await.unwrap();
        assert_eq!(number, Ok(u32::from(i)));
    }
    let history = store.plugin_history("acme", "p").await.unwrap();
    assert_eq!(history.active, Some(5));
    assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(store.activate_plugin("acme", "p", 4).await.unwrap());
    assert_eq!(store.active_versions().await.unwrap(), vec![("acme".to_string(), "p".to_string(), 4)]);
    assert!(!store.activate_plugin("acme", "p", 1).await.unwrap(), "pruned");
    assert_eq!(store.active_plugin("acme", "p", "engine-a").await.unwrap().unwrap().version, 4);
    assert!(
        store.active_plugin("globex", "p", "engine-a").await.unwrap().is_none(),
        "plugins are per merchant"
    );

    let small = VersionBounds { max_versions: 3, merchant_bytes: 500 };
    let refused = store.add_plugin_version(version("q", &[9; 300], NOW), None, small).await.unwrap();
    assert!(refused.is_err(), "over the merchant's quota");
    assert!(store.plugin_history("acme", "q").await.unwrap().versions.is_empty(), "nothing written");

    assert!(store.delete_plugin("acme", "p").await.unwrap());
    assert!(store.active_plugin("acme", "p", "engine-a").await.unwrap().is_none());
    assert!(store.active_versions().await.unwrap().is_empty(), "a deleted plugin has no active version");
}

/// A canary's version is stored without becoming active and can be loaded by number; its row
/// is shown with the history and followed by `canaries`; it ends once (a second end, as by
/// another replica, changes nothing), and it goes with its plugin.
pub async fn a_canary_version_is_stored_beside_the_active_one_and_ends_once(store: Arc<dyn Store>) {
    let bounds = VersionBounds { max_versions: 3, merchant_bytes: 1 << 20 };
    assert_eq!(store.add_plugin_version(version("p", &[1; 100], NOW), None, bounds).await.unwrap(), Ok(1));
    let canary_version = NewPluginVersion { activate: false, ..version("p", &[2; 100], NOW) };
    assert_eq!(store.add_plugin_version(canary_version, None, bounds).await.unwrap(), Ok(2));
    assert_eq!(store.plugin_history("acme", "p").await.unwrap().active, Some(1), "the canary is not active");
    assert_eq!(store.active_plugin("acme", "p", "engine-a").await.unwrap().unwrap().version, 1);
    let stored = store.stored_plugin("acme", "p", 2, "engine-a").await.unwrap().unwrap();
    assert_eq!((stored.version, &stored.wasm[..], stored.compiled), (2, &[2u8; 100][..], Some(vec![0; 10])));
    assert!(store.stored_plugin("acme", "p", 9, "engine-a").await.unwrap().is_none());

    let running = Canary { version: 2, percent: 10, state: "running".into(), reason: None, at_ms: NOW };
    assert!(store.set_canary("acme", "p", running.clone()).await.unwrap());
    assert_eq!(store.plugin_history("acme", "p").await.unwrap().canary, Some(running.clone()));
    assert_eq!(store.canaries().await.unwrap(), vec![("acme".into(), "p".into(), running)]);
    let ended = Canary {
        state: "rolled_back".into(),
        reason: Some("traps".into()),
        at_ms: NOW + 5,
        ..Canary::clone(&store.canaries().await.unwrap()[0].2)
    };
    assert!(store.set_canary("acme", "p", ended.clone()).await.unwrap());
    let again = Canary { state: "promoted".into(), reason: None, ..ended.clone() };
    assert!(!store.set_canary("acme", "p", again).await.unwrap(), "ended already");
    assert_eq!(store.plugin_history("acme", "p").await.unwrap().canary, Some(ended));
    assert_eq!(store.plugin_history("acme", "p").await.unwrap().active, Some(1));

    assert!(store.delete_plugin("acme", "p").await.unwrap());
    assert!(store.canaries().await.unwrap().is_empty(), "the canary went with its plugin");
}

/// Deleting a kv key (a repair) removes that key of that plugin of that merchant, nothing else.
pub async fn a_kv_key_deleted_is_gone_for_that_plugin_only(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_kv");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    let write = |plugin: &str, key: &str| KvWrite {
        plugin: plugin.into(),
        key: key.into(),
        value: b"v".to_vec(),
        version: 1,
    };
    let finished = PluginStep {
        kv: vec![write("p", "a"), write("p", "b"), write("q", "a")],
        ..step(&k, 1, NOW, AttemptOutcome::Delivered, &[])
    };
    store.finish_plugin_step(finished).await.unwrap();
    assert!(store.delete_kv("acme", "p", "a").await.unwrap());
    assert!(!store.delete_kv("acme", "p", "a").await.unwrap(), "already gone");
    assert!(!store.delete_kv("globex", "q", "a").await.unwrap(), "another merchant's space");
    let left = store.load_kv("acme", "p").await.unwrap();
    assert_eq!(left.iter().map(|e| &e.key[..]).collect::<Vec<_>>(), ["b"]);
    assert_eq!(store.load_kv("acme", "q").await.unwrap().len(), 1, "another plugin's key stays");
}

/// Steps commit in whatever order their workers reach the store, not their runs' order: per
/// key, the write of the highest version stays, whichever committed last; an equal version (two
/// replicas that loaded the same space) is the last write; a key the later run did not write
/// takes the earlier run's.
pub async fn a_kv_write_committed_after_a_later_versions_leaves_the_later_value(store: Arc<dyn Store>) {
    let write = |key: &str, value: &str, version| KvWrite {
        plugin: "ledger".into(),
        key: key.into(),
        value: value.into(),
        version,
    };
    let commit = |id: &str, kv: Vec<KvWrite>| {
        let (store, k) = (store.clone(), key("acme", "/wh", id));
        async move {
            store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
            let finished = PluginStep { kv, ..step(&k, 1, NOW, AttemptOutcome::Delivered, &[]) };
            assert_eq!(store.finish_plugin_step(finished).await.unwrap(), StepRecorded::Applied);
        }
    };
    commit("evt_second_run", vec![write("total", "5700", 2)]).await;
    commit("evt_first_run", vec![write("total", "5000", 1), write("count", "1", 1)]).await;
    let stored = |key: &str| {
        let store = store.clone();
        let key = key.to_string();
        async move {
            let space = store.load_kv("acme", "ledger").await.unwrap();
            let e = space.into_iter().find(|e| e.key == key).unwrap();
            (String::from_utf8(e.value).unwrap(), e.version)
        }
    };
    assert_eq!(stored("total").await, ("5700".into(), 2), "the first run's late commit left it");
    assert_eq!(stored("count").await, ("1".into(), 1));
    commit("evt_other_replica", vec![write("total", "6000", 2)]).await;
    assert_eq!(stored("total").await, ("6000".into(), 2), "an equal version is the last write");
}

/// A store that shares the plugins' kv spaces between gateways tells what was changed in a
/// space other than by the gateway's own steps since a read ([`PluginStore::kv_changed_since`]):
/// a gateway runs a plugin on its copy of the space with those changes laid over it, so its own
/// steps must not count as changes, and an admin repair, which deletes a key, must make it read
/// the space whole. A load reads where it stands with the keys. A store one gateway owns tells
/// nothing: nobody else writes to it. A store several gateways share (it claims rows) shares
/// the kv spaces too.
///
/// [`PluginStore::kv_changed_since`]: crate::PluginStore::kv_changed_since
pub async fn a_kv_space_changed_by_own_steps_is_unchanged_and_by_a_repair_is_read_whole(
    store: Arc<dyn Store>,
) {
    assert_eq!(store.shares_kv(), store.claims(), "shared by several gateways, kv and all");
    let k = key("acme", "/wh", "evt_kv_counted");
    store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
    let before = store.load_kv_space("acme", "ledger").await.unwrap();
    assert_eq!(before.entries, []);
    let mut own = step(&k, 1, NOW + 1, AttemptOutcome::Delivered, &[]);
    own.kv = vec![KvWrite { plugin: "ledger".into(), key: "total".into(), value: b"5".to_vec(), version: 1 }];
    assert_eq!(store.finish_plugin_step(own).await.unwrap(), StepRecorded::Applied);
    let since = store.kv_changed_since("acme", "ledger", before.changes, &[]).await.unwrap();
    let since = since.expect("no key deleted");
    assert!(since.entries.iter().all(|e| e.writer == store.kv_writer()), "the gateway's own step: {since:?}");
    assert_eq!(since.changes.elsewhere, before.changes.elsewhere, "the gateway's own step");
    let read = store.load_kv_space("acme", "ledger").await.unwrap();
    let writer = store.kv_writer();
    assert_eq!(read.entries, [KvEntry { key: "total".into(), value: b"5".to_vec(), version: 1, writer }]);
    assert_eq!(read.changes.elsewhere, before.changes.elsewhere);
    // Keys asked for are read whatever changed: those a run whose step was stale wrote in
    // the gateway's copy. A store that answers no step stale reads the space whole instead.
    let asked = ["total".to_string(), "absent".to_string()];
    let keys = store.kv_changed_since("acme", "ledger", read.changes, &asked).await.unwrap();
    if store.shares_kv() {
        assert_eq!(keys.map(|k| k.entries), Some(read.entries.clone()), "the one of them stored");
    } else {
        assert_eq!(keys, None);
    }

    assert!(store.delete_kv("acme", "ledger", "total").await.unwrap());
    let after = store.kv_changed_since("acme", "ledger", read.changes, &[]).await.unwrap();
    if store.shares_kv() {
        assert_eq!(after, None, "a repair deleted a key: the space is read whole");
        let reread = store.load_kv_space("acme", "ledger").await.unwrap();
        assert_eq!(reread.entries, []);
        assert!(reread.changes.elsewhere > read.changes.elsewhere, "a repair is a change made elsewhere");
    } else {
        assert_eq!(after, Some(KvRead { entries: Vec::new(), changes: read.changes }), "nobody else writes");
    }
    let other = store.kv_changed_since("acme", "other", crate::KvChanges::default(), &[]).await.unwrap();
    assert_eq!(other.map(|r| r.entries), Some(Vec::new()), "per plugin");
}

/// A step is recorded only while every kv key its runs read holds what they found
/// ([`PluginStep::kv_read`]): a step that read a key another gateway (or a repair) wrote or
/// deleted since, found absent a key written since, or read a write of this gateway's that was
/// never applied (its step failed or was set aside), is answered [`StepRecorded::Stale`] and
/// leaves nothing behind: no kv write, no run, no delivery, its event and step row as they
/// were, due to run again. Two steps of one gateway in one batch, the second reading the
/// first's write, both commit, whichever reached the store first. A store one gateway owns is
/// held to it too: its runs read writes before their steps commit.
pub async fn a_step_whose_runs_read_a_kv_key_changed_since_is_stale_and_records_nothing(
    store: Arc<dyn Store>,
) {
    let me = store.kv_writer();
    let read =
        |key: &str, found: Option<KvStamp>| KvReadOf { plugin: "ledger".into(), key: key.into(), found };
    let write = |key: &str, value: &str, version| KvWrite {
        plugin: "ledger".into(),
        key: key.into(),
        value: value.into(),
        version,
    };
    let ours = |version| Some(KvStamp { version, writer: me });
    let new_step = |id: &str| {
        let (store, k) = (store.clone(), key("acme", "/wh", id));
        async move {
            store.insert_event(event(&k, NOW, Some(Hop::Plugins))).await.unwrap();
            step(&k, 1, NOW, AttemptOutcome::Delivered, &["legacy"])
        }
    };
    let stored = || {
        let store = store.clone();
        async move {
            let mut space = store.load_kv("acme", "ledger").await.unwrap();
            space.sort_by(|a, b| a.key.cmp(&b.key));
            space
                .into_iter()
                .map(|e| {
                    let stamp = e.stamp();
                    (e.key, String::from_utf8(e.value).unwrap(), stamp)
                })
                .collect::<Vec<_>>()
        }
    };

    // A first write of an absent key, read absent: applied.
    let first = PluginStep {
        kv: vec![write("total", "5", 1)],
        kv_read: vec![read("total", None)],
        ..new_step("evt_kv_first").await
    };
    assert_eq!(store.finish_plugin_step(first).await.unwrap(), StepRecorded::Applied);
    let total_1 = KvStamp { version: 1, writer: me };
    assert_eq!(stored().await, [("total".into(), "5".into(), total_1)]);

    // Another step read the same absent key (another gateway's, or one run before the first
    // wrote): stale, and nothing of it is recorded.
    let k = key("acme", "/wh", "evt_kv_late");
    let late = PluginStep {
        kv: vec![write("total", "7", 1)],
        kv_read: vec![read("total", None)],
        ..new_step("evt_kv_late").await
    };
    assert_eq!(store.finish_plugin_step(late).await.unwrap(), StepRecorded::Stale);
    assert_eq!(stored().await, [("total".into(), "5".into(), total_1)], "its write was not applied");
    let detail = store.get_event(&k).await.unwrap().unwrap();
    assert!(detail.plugin_runs.is_empty(), "its runs were not recorded: the step runs again");
    assert!(detail.deliveries.is_empty(), "its delivery was not created");
    assert_eq!(detail.summary.status, "queued");
    let due = store.due_steps(NOW + 60_000, None, 10).await.unwrap();
    assert!(due.iter().any(|d| d.event.key == k), "its step is due to run again");

    // A read of what is there, then two steps of this gateway in one batch, the second
    // reading the first's write and reaching the store first: all applied.
    let reads_stored = PluginStep {
        kv: vec![write("total", "12", 2)],
        kv_read: vec![read("total", Some(total_1))],
        ..new_step("evt_kv_reads_stored").await
    };
    let (second, first) = (new_step("evt_kv_second").await, new_step("evt_kv_first_of_two").await);
    let first =
        PluginStep { kv: vec![write("total", "20", 3)], kv_read: vec![read("total", ours(2))], ..first };
    let second =
        PluginStep { kv: vec![write("total", "21", 4)], kv_read: vec![read("total", ours(3))], ..second };
    assert_eq!(store.finish_plugin_step(reads_stored).await.unwrap(), StepRecorded::Applied);
    let (a, b) = tokio::join!(store.finish_plugin_step(second), store.finish_plugin_step(first));
    // One batch or two: the second can commit only once the first has.
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(b, StepRecorded::Applied, "the first of the two");
    assert!(matches!(a, StepRecorded::Applied | StepRecorded::Stale), "{a:?}");
    if a == StepRecorded::Stale {
        // It reached a batch of its own before the first: it runs again, on the first's write.
        let again = PluginStep {
            kv: vec![write("total", "21", 4)],
            kv_read: vec![read("total", ours(3))],
            ..step(&key("acme", "/wh", "evt_kv_second"), 1, NOW, AttemptOutcome::Delivered, &["legacy"])
        };
        assert_eq!(store.finish_plugin_step(again).await.unwrap(), StepRecorded::Applied);
    }
    assert_eq!(stored().await, [("total".into(), "21".into(), KvStamp { version: 4, writer: me })]);

    // A read of an earlier write of this gateway, of one never applied (a later run's, whose
    // step failed), or of a key repaired since: stale.
    let behind = PluginStep {
        kv: vec![write("total", "30", 5)],
        kv_read: vec![read("total", ours(3))],
        ..new_step("evt_kv_behind").await
    };
    assert_eq!(store.finish_plugin_step(behind).await.unwrap(), StepRecorded::Stale);
    let on_a_failed_write = PluginStep {
        kv: vec![write("total", "40", 6)],
        kv_read: vec![read("total", ours(5))],
        ..new_step("evt_kv_on_a_failed_write").await
    };
    assert_eq!(store.finish_plugin_step(on_a_failed_write).await.unwrap(), StepRecorded::Stale);
    assert_eq!(stored().await, [("total".into(), "21".into(), KvStamp { version: 4, writer: me })]);
    assert!(store.delete_kv("acme", "ledger", "total").await.unwrap());
    let repaired = PluginStep {
        kv: vec![write("total", "22", 5)],
        kv_read: vec![read("total", ours(4))],
        ..new_step("evt_kv_repaired").await
    };
    assert_eq!(store.finish_plugin_step(repaired).await.unwrap(), StepRecorded::Stale);
    assert!(stored().await.is_empty(), "the repair stands");

    // A step that read a key and wrote another (its write depends on the read): stale too;
    // one that only wrote is applied whatever is stored.
    let other_key = PluginStep {
        kv: vec![write("count", "1", 6)],
        kv_read: vec![read("total", ours(4))],
        ..new_step("evt_kv_other_key").await
    };
    assert_eq!(store.finish_plugin_step(other_key).await.unwrap(), StepRecorded::Stale);
    let blind = PluginStep { kv: vec![write("count", "1", 6)], ..new_step("evt_kv_blind").await };
    assert_eq!(store.finish_plugin_step(blind).await.unwrap(), StepRecorded::Applied);
    assert_eq!(stored().await, [("count".into(), "1".into(), KvStamp { version: 6, writer: me })]);
}

/// Each engine (fingerprint) has its own compiled artifact of a version: one engine saving its
/// own never replaces another's, what it saved is what it reads, and the artifacts count
/// towards the merchant's quota and go with their version.
pub async fn compiled_code_is_kept_per_engine(store: Arc<dyn Store>) {
    let bounds = VersionBounds { max_versions: 2, merchant_bytes: 1 << 20 };
    assert_eq!(store.add_plugin_version(version("p", &[1; 100], NOW), None, bounds).await.unwrap(), Ok(1));
    let compiled = |engine: &'static str| {
        let store = store.clone();
        async move { store.active_plugin("acme", "p", engine).await.unwrap().unwrap().compiled }
    };
    assert_eq!(compiled("engine-a").await, Some(vec![0; 10]), "the uploading engine's artifact");
    assert_eq!(compiled("engine-b").await, None, "nothing compiled for another engine yet");
    store.save_compiled("acme", "p", 1, "engine-b", vec![2; 20]).await.unwrap();
    assert_eq!(compiled("engine-b").await, Some(vec![2; 20]));
    assert_eq!(compiled("engine-a").await, Some(vec![0; 10]), "engine b's artifact did not replace a's");
    store.save_compiled("acme", "p", 1, "engine-a", vec![3; 10]).await.unwrap();
    assert_eq!(compiled("engine-a").await, Some(vec![3; 10]), "an engine replaces its own");

    // Version 1 now takes 100 + 10 + 20 bytes; each new one 100 + 10.
    let add = |content: u8, max_versions: u32, merchant_bytes: u64| {
        let store = store.clone();
        async move {
            let bounds = VersionBounds { max_versions, merchant_bytes };
            store.add_plugin_version(version("p", &[content; 100], NOW), None, bounds).await.unwrap()
        }
    };
    assert!(add(2, 3, 239).await.is_err(), "130 + 110 > 239: engine b's artifact counts too");
    assert_eq!(add(2, 3, 240).await, Ok(2));
    // Two kept (the new one and the one it replaces): version 1 goes, with both artifacts.
    assert_eq!(add(3, 2, 240).await, Ok(3), "240 - 130 + 110");
    assert_eq!(add(4, 2, 220).await, Ok(4), "220 - 110 + 110: nothing of version 1 was left behind");
    assert_eq!(compiled("engine-b").await, None, "version 4 was never compiled by engine b");
}

/// The raw body is kept byte for byte, whatever it holds.
pub async fn a_stored_body_comes_back_byte_for_byte(store: Arc<dyn Store>) {
    let k = key("acme", "/wh", "evt_bytes");
    let body: Vec<u8> = (0..=255u8).chain(b"{\"id\":\"evt_bytes\"}".iter().copied()).collect();
    let mut new = event(&k, NOW, to("legacy"));
    new.event.body = Bytes::from(body.clone());
    store.insert_event(new).await.unwrap();
    let due = store.due_deliveries("legacy", NOW, None, 10).await.unwrap();
    assert_eq!(&due[0].body()[..], &body[..]);
}

/// The events list shows `data.amount` and `data.currency`, and lists bodies it cannot read
/// one from (not JSON, a fraction, too large) without one, never failing the page.
pub async fn listed_events_show_the_amount_of_their_body(store: Arc<dyn Store>) {
    let big = format!("{{\"id\":\"evt_big\",\"data\":{{\"amount\":1,\"pad\":\"{}\"}}}}", "x".repeat(70_000));
    let bodies = [
        ("evt_pkr", r#"{"id":"evt_pkr","data":{"amount":2500,"currency":"PKR"}}"#.to_string()),
        ("evt_nocur", r#"{"id":"evt_nocur","data":{"amount":7}}"#.to_string()),
        ("evt_frac", r#"{"id":"evt_frac","data":{"amount":2.5,"currency":"USD"}}"#.to_string()),
        ("evt_nul", "{\"id\":\"evt_nul\",\"data\":{\"amount\":3,\"currency\":\"\\u0000\"}}".to_string()),
        ("evt_junk", "\u{0}\u{ff}not json".to_string()),
        ("evt_big", big),
    ];
    for (i, (id, body)) in bodies.iter().enumerate() {
        let mut new = event(&key("acme", "/wh", id), NOW + i as i64, None);
        new.event.body = Bytes::from(body.clone());
        store.insert_event(new).await.unwrap();
    }
    let listed = store.list_events(EventFilter { limit: 10, ..Default::default() }).await.unwrap();
    let amounts: Vec<(&str, Option<Amount>)> =
        listed.iter().rev().map(|e| (e.id.as_str(), e.amount.clone())).collect();
    let amount =
        |value, currency: Option<&str>| Some(Amount { value, currency: currency.map(str::to_string) });
    assert_eq!(
        amounts,
        vec![
            ("evt_pkr", amount(2500, Some("PKR"))),
            ("evt_nocur", amount(7, None)),
            ("evt_frac", None),
            ("evt_nul", amount(3, Some("\0"))),
            ("evt_junk", None),
            ("evt_big", None),
        ]
    );
    // One event shown whole has the same amount beside its body, headers and request id.
    let shown = store.get_event(&key("acme", "/wh", "evt_pkr")).await.unwrap().expect("stored");
    assert_eq!(shown.summary.amount, amount(2500, Some("PKR")));
    assert_eq!(shown.body, bodies[0].1);
    assert_eq!(shown.headers, vec![("content-type".to_string(), "application/json".to_string())]);
    assert_eq!(shown.request_id, "req_evt_pkr");
}

/// Ordered delivery: of the events with one ordering key, only the oldest unfinished one is
/// due to an ordered upstream; it holds its key while it retries and, dead, until it is
/// skipped, while other keys and unkeyed events go on. An earlier event whose plugin step has
/// not decided its deliveries yet holds its key too. Unordered reads ignore keys.
pub async fn an_ordered_delivery_waits_for_its_keys_head_and_a_skip_releases_it(store: Arc<dyn Store>) {
    let store = &*store;
    let keyed = |id: &str, order_key: Option<&str>, hop: Option<Hop>| NewEvent {
        order_key: order_key.map(str::to_string),
        ..event(&key("acme", "/wh", id), NOW, hop)
    };
    for (id, order_key) in [("a1", Some("A")), ("b1", Some("B")), ("a2", Some("A")), ("n1", None)] {
        store.insert_event(keyed(id, order_key, to("ledger"))).await.unwrap();
    }
    let due = |at: i64| async move {
        let mut ids: Vec<String> = store
            .due_ordered_deliveries("ledger", at, None, 10)
            .await
            .unwrap()
            .into_iter()
            // The store says which events have a key, for their attempts to carry.
            .inspect(|d| assert_eq!(d.event.ordered, d.event.key.id != "n1", "{:?}", d.event.key))
            .map(|d| d.event.key.id.clone())
            .collect();
        ids.sort();
        ids
    };
    let record = |id: &str, number: u32, at: i64, status: u16, outcome: AttemptOutcome| {
        let attempt = crate::Attempt {
            key: key("acme", "/wh", id),
            event_seq: None,
            ordered: id != "n1",
            claimed_until_ms: None,
            info: attempt_info("ledger", number, at, status),
            outcome,
        };
        async move { store.record_attempt(Arc::new(attempt)).await.unwrap() }
    };
    assert_eq!(due(NOW).await, ["a1", "b1", "n1"], "a2 waits behind a1");
    record("a1", 1, NOW, 503, AttemptOutcome::Retry { next_at_ms: NOW + 1_000 }).await;
    record("b1", 1, NOW, 200, AttemptOutcome::Delivered).await;
    record("n1", 1, NOW, 200, AttemptOutcome::Delivered).await;
    assert!(due(NOW + 999).await.is_empty(), "a1 backs off, and a2 still waits for it");
    let held = store.held_keys(None, 10).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    let h = &held[0];
    assert_eq!((&h.key[..], &h.event_id[..], &h.status[..], h.attempts), ("A", "a1", "queued", 1));
    assert_eq!((h.next_attempt_at_ms, h.waiting), (Some(NOW + 1_000), 1));
    assert!(store.held_keys(Some("globex"), 10).await.unwrap().is_empty(), "held keys are per merchant");

    assert_eq!(due(NOW + 1_000).await, ["a1"]);
    record("a1", 2, NOW + 1_000, 400, AttemptOutcome::Dead).await;
    assert!(due(NOW + 2_000).await.is_empty(), "a dead head holds its key");
    let held = store.held_keys(Some("acme"), 10).await.unwrap();
    assert_eq!((&held[0].status[..], held[0].next_attempt_at_ms), ("dead", None));
    assert!(!store.skip_in_order(&key("acme", "/wh", "b1")).await.unwrap(), "only a dead event is skipped");
    assert!(store.skip_in_order(&key("acme", "/wh", "a1")).await.unwrap());
    assert!(!store.skip_in_order(&key("acme", "/wh", "a1")).await.unwrap(), "skipped once");
    let skipped = store.get_event(&key("acme", "/wh", "a1")).await.unwrap().unwrap();
    assert_eq!((&skipped.summary.status[..], skipped.order_key.as_deref()), ("dead", None));
    assert!(store.held_keys(None, 10).await.unwrap().is_empty());
    assert_eq!(due(NOW + 2_000).await, ["a2"], "the skip released the key");
    record("a2", 1, NOW + 2_000, 200, AttemptOutcome::Delivered).await;

    // A step that has not decided yet holds its key.
    store.insert_event(keyed("c1", Some("C"), Some(Hop::Plugins))).await.unwrap();
    store.insert_event(keyed("c2", Some("C"), to("ledger"))).await.unwrap();
    assert!(due(NOW + 3_000).await.is_empty(), "c2 waits for c1's plugins");
    let c1 = key("acme", "/wh", "c1");
    store
        .finish_plugin_step(step(&c1, 1, NOW + 3_000, AttemptOutcome::Delivered, &["ledger"]))
        .await
        .unwrap();
    assert_eq!(due(NOW + 3_000).await, ["c1"]);
    record("c1", 1, NOW + 3_000, 200, AttemptOutcome::Delivered).await;
    assert_eq!(due(NOW + 3_000).await, ["c2"]);
    // c1's row says it is delivered (its attempt said the event is ordered), so c2, failing,
    // is its key's head: the held keys read the rows' statuses.
    record("c2", 1, NOW + 3_000, 503, AttemptOutcome::Retry { next_at_ms: NOW + 4_000 }).await;
    let held = store.held_keys(None, 10).await.unwrap();
    assert_eq!(
        held.iter().map(|h| (&h.event_id[..], h.attempts)).collect::<Vec<_>>(),
        [("c2", 1)],
        "{held:?}"
    );
}
