//! `[[endpoint.route]]`: an upstream that gets an endpoint's events its filters match, and the
//! JSON paths filters and ordering keys read.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[[endpoint.route]]`: an upstream that gets the endpoint's events its filters match. Every
/// filter given must match; a route without filters takes every event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The upstream, of the endpoint's merchant.
    pub upstream: String,
    /// Globs over the event's `type` (`*` matches any run of characters); any one matching.
    #[serde(default)]
    pub types: Vec<String>,
    /// Tags the plugins put on the event; all of them present.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Dotted JSON paths into the delivered body and the value each must have (a list: any
    /// one of them).
    #[serde(default, rename = "where")]
    pub fields: BTreeMap<String, FieldValue>,
}

/// A value a route's `where` compares a body field with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// A string.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// Any one of these.
    AnyOf(Vec<FieldValue>),
}

/// A dotted JSON path (`data.customer.email`) as a route or an ordering key names it: its
/// segments, each an object's key (or, all digits, an array's index). `None` when one is
/// empty.
pub fn json_path(path: &str) -> Option<Vec<String>> {
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    (!path.is_empty() && segments.iter().all(|s| !s.is_empty())).then_some(segments)
}
