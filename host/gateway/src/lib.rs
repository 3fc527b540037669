//! payflow-gateway: everything that answers a request, wired together.
//!
//! The request path reads top to bottom in [`pipeline`] (receive → limits → verify → parse →
//! dedup+persist → ack → plugins → deliveries), each way it can end and its reply in
//! [`answer`]; [`ingress`] and [`connections`] serve the
//! listener, [`stage`] is the plugin step of the queue path (it implements delivery's
//! [`payflow_delivery::Step`]), [`admin`] the admin API and dashboard, and [`Gateway`]
//! builds all of them from a configuration and runs them until shutdown. This crate owns
//! the wiring and the HTTP contract; it must never reach into a backend (the store, the
//! wasmtime sandbox) except through the crates' public interfaces.

#![forbid(unsafe_code)]

pub mod admin;
pub mod answer;
pub mod connections;
mod gateway;
pub mod http;
pub mod ingress;
pub mod linger;
pub mod pipeline;
pub mod samples;
pub mod secret_expiry;
pub mod stage;
mod trace;

pub use gateway::{Gateway, StartError};
