//! Keeps a running total of succeeded payments per customer and currency in the plugin's
//! key-value space, and tells the legacy app the new total in an `X-Ledger-Total` header.
//!
//! Counting is idempotent: each total remembers the last event ids it counted, so a replayed
//! or retried event is not added twice (the gateway delivers at least once).

use payflow_plugin::{export_plugin, kv_get, kv_set, log, payment, Event, Level, Outcome, Plugin, PaymentStatus};

/// Event ids remembered per total, for idempotence.
const REMEMBERED: usize = 32;

struct Ledger;

/// A total as stored: `total` on the first line, then one counted event id per line.
struct Entry {
    total: i64,
    recent: Vec<String>,
}

impl Entry {
    fn load(key: &str) -> Result<Entry, String> {
        let Some(bytes) = kv_get(key) else { return Ok(Entry { total: 0, recent: Vec::new() }) };
        let text = String::from_utf8(bytes).map_err(|_| format!("kv {key} is not text"))?;
        let mut lines = text.lines();
        let total = lines
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("kv {key} has no total"))?;
        Ok(Entry { total, recent: lines.map(str::to_string).collect() })
    }

    fn save(&self, key: &str) -> Result<(), String> {
        let mut text = self.total.to_string();
        for id in &self.recent {
            text.push('\n');
            text.push_str(id);
        }
        kv_set(key, text.as_bytes())
    }
}

impl Plugin for Ledger {
    fn handle(event: Event) -> Result<Outcome, String> {
        let Some(payment) = payment(&event) else { return Ok(Outcome::proceed()) };
        let Some(customer) = payment.customer_email.as_deref() else { return Ok(Outcome::proceed()) };
        let key = format!("total:{customer}:{}", payment.currency);
        let mut entry = Entry::load(&key)?;
        if payment.status == PaymentStatus::Completed && !entry.recent.contains(&event.id) {
            entry.total += payment.amount;
            entry.recent.push(event.id.clone());
            if entry.recent.len() > REMEMBERED {
                entry.recent.remove(0);
            }
            entry.save(&key)?;
            log(Level::Info, &format!("{customer}: +{} = {} {}", payment.amount, entry.total, payment.currency));
        }
        Ok(Outcome::proceed().with_header("X-Ledger-Total", format!("{} {}", entry.total, payment.currency)))
    }
}

export_plugin!(Ledger);
