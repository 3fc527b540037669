//! payflow-edge: an edge gateway for PayFlow payment webhooks.
//!
//! The library holds everything the binary's commands use; `main.rs` only parses the command
//! line and maps results to exit codes.

pub mod samples;
