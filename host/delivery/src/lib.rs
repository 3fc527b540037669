//! payflow-delivery: delivery to upstreams: the HTTP request to the merchant's app, the retry
//! policy, and the dispatcher that drains the durable queue lane by lane (each upstream's
//! deliveries and the plugin steps, with a fair queue per lane, `fair_queue.rs`), in the one
//! direction an event goes: stored → its [`Step`] (the plugins, when its endpoint has any) →
//! its deliveries.
//!
//! At least once: a delivery is marked done only after the upstream answered 2xx and that was
//! recorded; a crash in between means it is sent again, with the same `X-PayFlow-Event-Id`
//! so the upstream can de-duplicate. This crate never invents events: it only sends what the
//! store holds. 2xx is success; 408, 429, 5xx, timeouts and connection errors are retried with
//! exponential backoff and jitter (or the upstream's `Retry-After`); other 4xx are permanent.
//!
//! Acknowledgements come first: the dispatcher runs on its own thread ([`Dispatcher::start`])
//! at a lower CPU priority than ingress, so a burst is acknowledged at the speed of the store
//! and delivered as the CPU allows, instead of deliveries taking the CPU that senders, waiting
//! on their timeouts, need. Under sustained overload deliveries still get a share (a nice
//! value weighs, it never starves), and nothing is lost: the queue is durable.

mod client;
mod dispatcher;
mod fair_queue;
pub mod fields;
mod flow;
mod hand_offs;
mod lane;
mod policy;
mod queue;
mod recorder;
pub mod route;
mod step;
#[cfg(test)]
mod tests;
mod upstream;

pub use client::{
    error_chain, parse_retry_after, reply_excerpt, SendError, UpstreamClient, UpstreamReply, EVENT_ID_HEADER,
    REQUEST_ID_HEADER,
};
pub use dispatcher::{lower_this_threads_priority, Dispatcher, StepLane, DELIVERY_NICE};
pub use flow::{BreakerState, Flow, FlowCounts, Permit};
pub use hand_offs::{HandOff, HandOffs, UnderWay};
pub use lane::{Lane, Reserved};
pub use policy::{attempt, classify, AttemptStart, RetryPolicy, Verdict};
pub use queue::Queued;
pub use step::{plugin_steps, ClaimDeliveries, Step, StepDone};
pub use upstream::{DeliveryCounts, Upstream, UpstreamError};
