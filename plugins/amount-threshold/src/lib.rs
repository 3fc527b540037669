//! Drops `payment.*` events whose amount is under the plugin's `min_amount` config (in the
//! currency's smallest unit); every other event continues. Tags the ones it lets through as
//! `high-value` when they reach `high_value` (if set).

use payflow_plugin::{config, export_plugin, log, payment, Event, Level, Outcome, Plugin};

struct AmountThreshold;

fn setting(key: &str) -> Result<Option<i64>, String> {
    config(key)
        .map(|v| v.trim().parse().map_err(|_| format!("config {key} must be an integer, not {v:?}")))
        .transpose()
}

impl Plugin for AmountThreshold {
    fn handle(event: Event) -> Result<Outcome, String> {
        let min = setting("min_amount")?.unwrap_or(0);
        let Some(payment) = payment(&event) else {
            return Ok(Outcome::proceed());
        };
        if payment.amount < min {
            log(
                Level::Info,
                &format!("{}: {} {} is under {min}", event.id, payment.amount, payment.currency),
            );
            return Ok(Outcome::drop(format!("amount {} is under min_amount {min}", payment.amount)));
        }
        let outcome = Outcome::proceed();
        Ok(match setting("high_value")? {
            Some(high) if payment.amount >= high => outcome.with_tag("high-value"),
            _ => outcome,
        })
    }
}

export_plugin!(AmountThreshold);
