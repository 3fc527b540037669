//! Ordered delivery in SQL, shared by the backends (they differ only in the column that numbers
//! events in arrival order, in how a delivery names its event ([`Numbering`]) and in how
//! parameters are written). An event with an ordering key
//! is delivered to an ordered upstream only once every earlier event of its merchant with that
//! key is finished there; the key's head (its oldest unfinished event) holds the others back
//! while it retries, and, dead, until an operator skips or replays it. These are only query
//! texts: this module never runs anything.

/// How a backend's tables number events and tie a delivery to its event.
pub struct Numbering {
    /// The `events` column that numbers events in arrival order.
    pub seq: &'static str,
    /// The condition that the `deliveries` row aliased by the first argument is the delivery
    /// of the `events` row aliased by the second.
    pub delivery_of: fn(&str, &str) -> String,
}

/// [`Numbering::delivery_of`] for deliveries keyed by their event's key.
pub fn by_key(delivery: &str, event: &str) -> String {
    format!("{delivery}.merchant = {event}.merchant AND {delivery}.scope = {event}.scope AND {delivery}.event_id = {event}.id")
}

/// The condition on a due delivery (alias `delivery`) to an ordered upstream (the parameter
/// `upstream`): no earlier event (by `seq`) of its merchant with the same key is unfinished
/// there: a delivery to it pending or dead, or its plugin step (which decides the deliveries)
/// pending or dead. An index on `events (merchant, order_key, status, …) WHERE order_key IS NOT
/// NULL` narrows the earlier events to the key's queued and dead ones, so a key's finished
/// history costs nothing. Starts with `AND`.
pub fn in_order(numbering: &Numbering, delivery: &str, upstream: &str) -> String {
    let seq = numbering.seq;
    let (of_e0, of_p) = ((numbering.delivery_of)(delivery, "e0"), (numbering.delivery_of)("pd", "p"));
    format!(
        "AND NOT EXISTS (
            SELECT 1 FROM events e0
            JOIN events p ON p.merchant = e0.merchant AND p.order_key = e0.order_key
                         AND p.status IN ('queued', 'dead') AND p.{seq} < e0.{seq}
            WHERE {of_e0} AND e0.order_key IS NOT NULL
              AND (EXISTS (SELECT 1 FROM deliveries pd
                           WHERE {of_p} AND pd.upstream = {upstream} AND pd.status IN ('pending', 'dead'))
                   OR EXISTS (SELECT 1 FROM plugin_steps ps
                              WHERE ps.merchant = p.merchant AND ps.scope = p.scope AND ps.event_id = p.id
                                AND ps.status IN ('pending', 'dead'))))"
    )
}

/// Ordering keys held back by a failing or dead head, oldest first: columns merchant, key,
/// event id, scope, status, attempts (the most of its unfinished deliveries or its plugin
/// step's), next attempt (ms, while pending) and how many wait behind it. `merchant` is the
/// parameter narrowing it to one merchant (NULL: all), `limit` the one bounding the rows.
pub fn held_keys(numbering: &Numbering, merchant: &str, limit: &str) -> String {
    let (seq, of_e) = (numbering.seq, (numbering.delivery_of)("d", "e"));
    format!(
        "SELECT * FROM (
            SELECT e.merchant, e.order_key, e.id, e.scope, e.status,
                   (SELECT COALESCE(MAX(a), 0) FROM (
                        SELECT d.attempts AS a FROM deliveries d
                        WHERE {of_e} AND d.status IN ('pending', 'dead')
                        UNION ALL
                        SELECT s.attempts FROM plugin_steps s
                        WHERE s.merchant = e.merchant AND s.scope = e.scope AND s.event_id = e.id
                          AND s.status IN ('pending', 'dead')) unfinished) AS attempts,
                   COALESCE((SELECT MIN(d.next_attempt_at_ms) FROM deliveries d
                             WHERE {of_e} AND d.status = 'pending'),
                            (SELECT s.next_attempt_at_ms FROM plugin_steps s
                             WHERE s.merchant = e.merchant AND s.scope = e.scope AND s.event_id = e.id
                               AND s.status = 'pending')) AS next_at,
                   (SELECT COUNT(*) FROM events w
                    WHERE w.merchant = e.merchant AND w.order_key = e.order_key
                      AND w.status IN ('queued', 'dead') AND w.{seq} > e.{seq}) AS waiting,
                   e.{seq} AS seq
            FROM events e
            WHERE e.order_key IS NOT NULL AND e.status IN ('queued', 'dead')
              AND ({merchant} IS NULL OR e.merchant = {merchant})
              AND NOT EXISTS (SELECT 1 FROM events p
                              WHERE p.merchant = e.merchant AND p.order_key = e.order_key
                                AND p.status IN ('queued', 'dead') AND p.{seq} < e.{seq})
        ) heads
        WHERE status = 'dead' OR attempts > 0
        ORDER BY seq LIMIT {limit}"
    )
}

/// Skips a dead event (`$1`/`?1`…: merchant, scope, id, as `key` writes them) in its key's
/// order: its key is cleared, so it holds nothing back, replayed or not.
pub fn skip(merchant: &str, scope: &str, id: &str) -> String {
    format!(
        "UPDATE events SET order_key = NULL
         WHERE merchant = {merchant} AND scope = {scope} AND id = {id} AND status = 'dead' AND order_key IS NOT NULL"
    )
}
