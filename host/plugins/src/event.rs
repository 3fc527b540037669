//! The one conversion from the gateway's event ([`payflow_store::Event`]) to the WIT `event`
//! record a plugin receives. Every caller (the chain, `plugin run`) goes through it, so a field
//! added to the record is filled in one place.

use payflow_store::Event as StoredEvent;

use crate::Event;

impl Event {
    /// The record of `event`, carrying `body`: the event's own, or as an earlier plugin in the
    /// chain rewrote it.
    pub fn of(event: &StoredEvent, body: &[u8]) -> Event {
        Event {
            id: event.key.id.clone(),
            event_type: event.event_type.clone().unwrap_or_default(),
            endpoint: event.endpoint.clone(),
            merchant: event.key.merchant.clone(),
            body: body.to_vec(),
            received_at_ms: event.received_at_ms.max(0) as u64,
        }
    }
}
