//! Write a payflow-edge plugin in Rust: see the README (it is this crate's documentation).
//!
//! The contract is `wit/plugin.wit` (package `payflow:plugin`): this crate only generates
//! bindings for it and adds conveniences; it must never add behaviour the WIT does not
//! describe, so plugins written in other languages see the same world.
#![doc = include_str!("../README.md")]
#![no_std]
extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "payflow:plugin/plugin",
        pub_export_macro: true,
        default_bindings_module: "payflow_plugin::bindings",
    });
}

pub use bindings::payflow::plugin::host::Level;
pub use bindings::payflow::plugin::types::{Action, Event, Forward, Header, Outcome};
pub use payflow_verify::event::{Customer, EventData, Payment, PaymentStatus};

/// A plugin: one call per event.
pub trait Plugin {
    /// Decides what happens to `event`. An `Err` fails this plugin step (the event is retried
    /// per the gateway's policy, then left `dead` for replay), as a trap would.
    fn handle(event: Event) -> Result<Outcome, String>;
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's `handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __PayflowPluginExport;
        impl $crate::bindings::exports::payflow::plugin::handler::Guest for __PayflowPluginExport {
            fn handle(event: $crate::Event) -> ::core::result::Result<$crate::Outcome, $crate::__String> {
                <$plugin as $crate::Plugin>::handle(event)
            }
        }
        $crate::bindings::export!(__PayflowPluginExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub use alloc::string::String as __String;

impl Outcome {
    /// Deliver the event as it is.
    pub fn proceed() -> Self {
        Outcome {
            action: Action::Continue,
            body: None,
            headers: Vec::new(),
            forwards: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Deliver nothing; `reason` is recorded with the event.
    pub fn drop(reason: impl Into<String>) -> Self {
        Outcome { action: Action::Drop(reason.into()), ..Outcome::proceed() }
    }

    /// Replaces the body delivered (and seen by the next plugin).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Adds a header to the delivery.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Header { name: name.into(), value: value.into() });
        self
    }

    /// Also delivers to the merchant's upstream `upstream` (configured in the gateway).
    pub fn with_forward(mut self, forward: Forward) -> Self {
        self.forwards.push(forward);
        self
    }

    /// Records a label with the event.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// The event's PayFlow model (envelope checked, `data` typed by event type), or `None` when the
/// body does not follow the seed's event model (the gateway has quarantined such events, so a
/// plugin only sees them if it runs on an endpoint that accepts them).
pub fn model(event: &Event) -> Option<payflow_verify::event::Event> {
    payflow_verify::event::parse(&event.body).ok()?.checked.ok()
}

/// The payment, for `payment.*` events.
pub fn payment(event: &Event) -> Option<Payment> {
    match model(event)?.data {
        EventData::Payment(p) => Some(p),
        _ => None,
    }
}

/// The customer, for `customer.*` events.
pub fn customer(event: &Event) -> Option<Customer> {
    match model(event)?.data {
        EventData::Customer(c) => Some(c),
        _ => None,
    }
}

/// A value from the plugin's `config` table in the gateway's configuration.
pub fn config(key: &str) -> Option<String> {
    bindings::payflow::plugin::host::config(key)
}

/// A value from this plugin's key-value space (per merchant, persisted by the gateway).
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    bindings::payflow::plugin::host::kv_get(key)
}

/// Stores a value; `Err` when the plugin's quota would be exceeded.
pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
    bindings::payflow::plugin::host::kv_set(key, value)
}

/// Appends a line to this run's log.
pub fn log(level: Level, message: &str) {
    bindings::payflow::plugin::host::log(level, message)
}
