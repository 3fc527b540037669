//! payflow-metrics: counters and histograms that the request path, the deliveries, the plugin host and the
//! store bump as they work, and the Prometheus text format they are read out in.
//!
//! Every series belongs to something built at start (an endpoint, an upstream, a plugin slot,
//! the store), so the hot path bumps an atomic it already holds: no map lookup, no lock, no
//! allocation. Series whose labels are only known at run time (failure reasons) use a small
//! locked map; those are bumped on slow paths only. This crate never decides what to count, and
//! depends on nothing of the gateway.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts by a label known only at run time (a failure reason).
#[derive(Debug, Default)]
pub struct CounterMap(Mutex<BTreeMap<String, u64>>);

impl CounterMap {
    /// Adds one to `label`'s count.
    pub fn inc(&self, label: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                map.insert(label.to_string(), 1);
            }
        }
    }

    /// Every label and its count, sorted by label.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus `+Inf`; not cumulative (summed when read).
    buckets: Box<[AtomicU64]>,
    /// The sum, in millionths of the unit, so that it can be an atomic integer.
    sum_micros: AtomicU64,
}

/// Seconds, from 50 µs (a batched commit on a quiet disk) to 2.5 s (a stalled one).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Wasm fuel, by decades: a trivial plugin burns thousands, the default cap is ten million.
pub const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// What a histogram holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, cumulative count), the last bound being `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The cumulative buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        HistogramSnapshot { buckets, sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count: total }
    }
}

/// A page of the Prometheus text exposition format (version 0.0.4).
#[derive(Default)]
pub struct Exposition {
    text: String,
    /// The family whose HELP/TYPE lines were written last: samples of one family must be
    /// contiguous, so callers write a family's samples together.
    current: Option<&'static str>,
    /// A label every sample carries (a replica's name).
    constant: Option<(&'static str, String)>,
}

/// The content type of [`Exposition`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// A page whose every sample also carries `name="value"`.
    pub fn with_label(name: &'static str, value: String) -> Self {
        Exposition { constant: Some((name, value)), ..Exposition::default() }
    }

    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        if self.current != Some(name) {
            let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.current = Some(name);
        }
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        let shared = self.constant.as_ref().map(|(k, v)| (*k, v.as_str()));
        let text = &mut self.text;
        let mut all = labels.iter().copied().chain(shared).chain(extra).peekable();
        if all.peek().is_none() {
            return;
        }
        text.push('{');
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        text.push('}');
    }

    /// One sample of a counter family.
    pub fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.family(name, "counter", help);
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// One sample of a gauge family.
    pub fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, "gauge", help);
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// One labelled histogram of a histogram family.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
    ) {
        self.family(name, "histogram", help);
        for (bound, count) in &h.buckets {
            let le = if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() };
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(("le", &le)));
            let _ = writeln!(self.text, " {count}");
        }
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", h.sum);
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", h.count);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (10.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 56.5).abs() < 1e-6);
    }

    #[test]
    fn exposition_writes_help_once_per_family_and_escapes_labels() {
        let mut page = Exposition::default();
        page.counter("x_total", "Xs.", &[("a", "q\"uo\\te")], 1);
        page.counter("x_total", "Xs.", &[("a", "b")], 2);
        let h = Histogram::new(&[1.0]);
        h.observe(2.0);
        page.histogram("d_seconds", "Ds.", &[("p", "n")], &h.snapshot());
        assert_eq!(
            page.finish(),
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\"} 1\nx_total{a=\"b\"} 2\n\
             # HELP d_seconds Ds.\n# TYPE d_seconds histogram\nd_seconds_bucket{p=\"n\",le=\"1\"} 0\n\
             d_seconds_bucket{p=\"n\",le=\"+Inf\"} 1\nd_seconds_sum{p=\"n\"} 2\nd_seconds_count{p=\"n\"} 1\n"
        );
    }

    #[test]
    fn a_pages_constant_label_is_on_every_sample() {
        let mut page = Exposition::with_label("replica", "edge-\"2\"".into());
        page.gauge("up", "Up.", &[], 1.0);
        page.counter("x_total", "Xs.", &[("a", "b")], 2);
        let h = Histogram::new(&[1.0]);
        page.histogram("d_seconds", "Ds.", &[], &h.snapshot());
        let text = page.finish();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples[0], "up{replica=\"edge-\\\"2\\\"\"} 1");
        assert_eq!(samples[1], "x_total{a=\"b\",replica=\"edge-\\\"2\\\"\"} 2");
        assert_eq!(samples[2], "d_seconds_bucket{replica=\"edge-\\\"2\\\"\",le=\"1\"} 0");
        assert!(samples.iter().all(|s| s.contains("replica=")), "{text}");
    }
}
