//! Routes: which of an endpoint's upstreams get an event. Each `[[endpoint.route]]` names an
//! upstream and filters (type globs, the plugins' tags, body fields); every route whose filters
//! all match takes the event, and the endpoint's own `upstream` is the default route, taken
//! when no route matched. Decided after the plugins, on the body and tags they gave back, by
//! the step before the deliveries. This module only decides: it never sends or records.

use payflow_config::{json_path, FieldValue, RouteConfig};
use serde_json::Value;

use crate::fields;

/// An endpoint's routes and its default upstream.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
    default: Option<String>,
    /// Whether any route reads body fields (the body is parsed only then).
    reads_body: bool,
}

#[derive(Debug, Clone)]
struct Route {
    upstream: String,
    types: Vec<String>,
    tags: Vec<String>,
    fields: Vec<(Vec<String>, FieldValue)>,
}

/// Where an event goes, as [`Routes::select`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The upstreams, each once, in the routes' order.
    pub upstreams: Vec<String>,
    /// What matched, as shown (`route[0]: crm`, or `upstream: legacy` for the default route);
    /// empty when nothing did.
    pub matched: Vec<String>,
}

impl Routes {
    /// An endpoint's routes: its `[[endpoint.route]]`s (already validated) and its `upstream`.
    pub fn new(default: Option<String>, routes: &[RouteConfig]) -> Self {
        let routes: Vec<Route> = routes
            .iter()
            .map(|r| Route {
                upstream: r.upstream.clone(),
                types: r.types.clone(),
                tags: r.tags.clone(),
                fields: r
                    .fields
                    .iter()
                    .filter_map(|(path, value)| Some((json_path(path)?, value.clone())))
                    .collect(),
            })
            .collect();
        let reads_body = routes.iter().any(|r| !r.fields.is_empty());
        Routes { routes, default, reads_body }
    }

    /// Whether the endpoint has routes besides its default upstream.
    pub fn any(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Where an event of `event_type` goes, with this `body` (the plugins' rewrite, or the
    /// original) and these `tags`.
    pub fn select(&self, event_type: Option<&str>, body: &[u8], tags: &[String]) -> Routed {
        let parsed = if self.reads_body { fields::parse(body) } else { Value::Null };
        let mut routed = Routed { upstreams: Vec::new(), matched: Vec::new() };
        for (i, route) in self.routes.iter().enumerate() {
            if route.matches(event_type, &parsed, tags) {
                routed.matched.push(format!("route[{i}]: {}", route.upstream));
                if !routed.upstreams.contains(&route.upstream) {
                    routed.upstreams.push(route.upstream.clone());
                }
            }
        }
        if let (true, Some(default)) = (routed.matched.is_empty(), &self.default) {
            routed.matched.push(format!("upstream: {default}"));
            routed.upstreams.push(default.clone());
        }
        routed
    }
}

impl Route {
    fn matches(&self, event_type: Option<&str>, body: &Value, tags: &[String]) -> bool {
        let typed = self.types.is_empty()
            || event_type.is_some_and(|t| self.types.iter().any(|glob| glob_matches(glob, t)));
        typed
            && self.tags.iter().all(|t| tags.contains(t))
            && self
                .fields
                .iter()
                .all(|(path, want)| fields::field(body, path).is_some_and(|v| equals(want, v)))
    }
}

/// Whether a `where` value matches a body's value: the same string, number or boolean (a
/// number equal as a number: `1000` matches `1000.0`), or any one of a list.
fn equals(want: &FieldValue, got: &Value) -> bool {
    match (want, got) {
        (FieldValue::Text(w), Value::String(g)) => w == g,
        (FieldValue::Integer(w), Value::Number(g)) => {
            g.as_i64() == Some(*w) || g.as_f64().is_some_and(|g| g == *w as f64)
        }
        (FieldValue::Float(w), Value::Number(g)) => g.as_f64() == Some(*w),
        (FieldValue::Bool(w), Value::Bool(g)) => w == g,
        (FieldValue::AnyOf(any), got) => any.iter().any(|w| equals(w, got)),
        _ => false,
    }
}

/// A glob over an event type: `*` matches any run of characters (dots too), everything else
/// itself. Iterative with one backtrack point, so a hostile pattern cannot take exponential time.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let (g, t) = (glob.as_bytes(), text.as_bytes());
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ti));
            gi += 1;
        } else if gi < g.len() && g[gi] == t[ti] {
            gi += 1;
            ti += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn route(upstream: &str, types: &[&str], tags: &[&str], fields: &[(&str, FieldValue)]) -> RouteConfig {
        RouteConfig {
            upstream: upstream.into(),
            types: types.iter().map(|t| t.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fields: fields.iter().map(|(p, v)| (p.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn type_globs_match_whole_types() {
        assert!(glob_matches("payment.*", "payment.succeeded"));
        assert!(glob_matches("*", "anything.at.all"));
        assert!(glob_matches("*.failed", "payment.failed"));
        assert!(glob_matches("payment.succeeded", "payment.succeeded"));
        assert!(!glob_matches("payment.*", "customer.created"));
        assert!(!glob_matches("payment", "payment.succeeded"));
        assert!(!glob_matches("payment.succeeded", "payment.succeede"));
        assert!(glob_matches("p*t*d", "payment.succeeded"));
        // Many stars against a long near-miss: linear, not exponential.
        assert!(!glob_matches(&"*a".repeat(50), &"a".repeat(10_000).replace("aa", "ab")));
    }

    #[test]
    fn every_matching_route_takes_the_event_and_the_default_only_what_none_took() {
        let routes = Routes::new(
            Some("legacy".into()),
            &[
                route("ledger", &["payment.*"], &[], &[]),
                route("crm", &["customer.*", "payment.failed"], &[], &[]),
            ],
        );
        let failed = routes.select(Some("payment.failed"), b"{}", &[]);
        assert_eq!(failed.upstreams, ["ledger", "crm"]);
        assert_eq!(failed.matched, ["route[0]: ledger", "route[1]: crm"]);
        assert_eq!(routes.select(Some("payout.sent"), b"{}", &[]).upstreams, ["legacy"]);
        assert_eq!(routes.select(None, b"{}", &[]).matched, ["upstream: legacy"]);
        let no_default = Routes::new(None, &[route("ledger", &["payment.*"], &[], &[])]);
        let nothing = no_default.select(Some("customer.created"), b"{}", &[]);
        assert!(nothing.upstreams.is_empty() && nothing.matched.is_empty());
    }

    #[test]
    fn field_filters_compare_values_and_lists_and_never_match_what_is_missing() {
        let pkr = route("fx", &[], &[], &[("data.currency", FieldValue::Text("PKR".into()))]);
        let big = route("review", &[], &[], &[("data.amount", FieldValue::Integer(100_000))]);
        let either = route(
            "either",
            &[],
            &[],
            &[(
                "data.currency",
                FieldValue::AnyOf(vec![FieldValue::Text("USD".into()), FieldValue::Text("EUR".into())]),
            )],
        );
        let routes = Routes::new(None, &[pkr, big, either]);
        let body = br#"{"data":{"currency":"PKR","amount":100000.0}}"#;
        assert_eq!(routes.select(None, body, &[]).upstreams, ["fx", "review"]);
        assert_eq!(routes.select(None, br#"{"data":{"currency":"EUR"}}"#, &[]).upstreams, ["either"]);
        assert!(routes.select(None, br#"{"data":{"currency":"pkr"}}"#, &[]).upstreams.is_empty());
        assert!(routes.select(None, b"not json", &[]).upstreams.is_empty());
        assert!(routes.select(None, br#"{"data":{"currency":["PKR"]}}"#, &[]).upstreams.is_empty());
    }

    #[test]
    fn a_tag_filter_needs_every_tag_it_names() {
        let routes = Routes::new(None, &[route("review", &[], &["high-value", "manual"], &[])]);
        let tags = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert!(routes.select(None, b"{}", &tags(&["high-value"])).upstreams.is_empty());
        assert_eq!(routes.select(None, b"{}", &tags(&["manual", "x", "high-value"])).upstreams, ["review"]);
    }
}
