//! payflow-edge: an edge gateway for PayFlow payment webhooks.
//!
//! The request path lives in [`pipeline`]; each stage it calls has its own module. The binary
//! (`main.rs`, `cli/`) only parses the command line, starts a [`gateway::Gateway`] and maps
//! outcomes to exit codes.

pub mod admin;
pub mod clock;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod gateway;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod samples;
pub mod store;
