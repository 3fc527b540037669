//! Ordered delivery in SQL, shared by the backends (they differ only in the column that numbers
//! events in arrival order and in how parameters are written; a delivery and a plugin step
//! name their event by the event's `seq`, in `event_seq`, on both). An event with an ordering
//! key is delivered to an ordered upstream only once every earlier event of its merchant with that
//! key is finished there; the key's head (its oldest unfinished event) holds the others back
//! while it retries, and, dead, until an operator skips or replays it. These are only query
//! texts: this module never runs anything.

/// The condition on a due delivery (alias `delivery`) to an ordered upstream (the parameter
/// `upstream`): no earlier event (by `seq`) of its merchant with the same key is unfinished
/// there: a delivery to it pending or dead, or its plugin step (which decides the deliveries)
/// pending or dead. An index on `events (merchant, order_key, status, …) WHERE order_key IS NOT
/// NULL` narrows the earlier events to the key's queued and dead ones, so a key's finished
/// history costs nothing. Starts with `AND`.
pub fn in_order(delivery: &str, seq: &str, upstream: &str) -> String {
    format!(
        "AND NOT EXISTS (
            SELECT 1 FROM events e0
            JOIN events p ON p.merchant = e0.merchant AND p.order_key = e0.order_key
                         AND p.status IN ('queued', 'dead') AND p.{seq} < e0.{seq}
            WHERE e0.seq = {delivery}.event_seq AND e0.order_key IS NOT NULL
              AND (EXISTS (SELECT 1 FROM deliveries pd
                           WHERE pd.event_seq = p.seq AND pd.upstream = {upstream}
                             AND pd.status IN ('pending', 'dead'))
                   OR EXISTS (SELECT 1 FROM plugin_steps ps
                              WHERE ps.event_seq = p.seq AND ps.status IN ('pending', 'dead'))))"
    )
}

/// Ordering keys held back by a failing or dead head, oldest first: columns merchant, key,
/// event id, scope, status, attempts (the most of its unfinished deliveries or its plugin
/// step's), next attempt (ms, while pending) and how many wait behind it. `merchant` is the
/// parameter narrowing it to one merchant (NULL: all), `limit` the one bounding the rows.
pub fn held_keys(seq: &str, merchant: &str, limit: &str) -> String {
    format!(
        "SELECT * FROM (
            SELECT e.merchant, e.order_key, e.id, e.scope, e.status,
                   (SELECT COALESCE(MAX(a), 0) FROM (
                        SELECT d.attempts AS a FROM deliveries d
                        WHERE d.event_seq = e.seq AND d.status IN ('pending', 'dead')
                        UNION ALL
                        SELECT s.attempts FROM plugin_steps s
                        WHERE s.event_seq = e.seq AND s.status IN ('pending', 'dead')) unfinished) AS attempts,
                   COALESCE((SELECT MIN(d.next_attempt_at_ms) FROM deliveries d
                             WHERE d.event_seq = e.seq AND d.status = 'pending'),
                            (SELECT s.next_attempt_at_ms FROM plugin_steps s
                             WHERE s.event_seq = e.seq AND s.status = 'pending')) AS next_at,
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
