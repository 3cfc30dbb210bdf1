//! Metrics behind `GET /metrics` (Prometheus text exposition 0.0.4).
//!
//! Counted per worker, merged at scrape time. Each worker owns its series
//! and is their only writer: an increment is a relaxed load and store of a
//! value no other thread writes (no read-modify-write, no contended cache
//! line). A series is found through the worker's own map (`RefCell`); the
//! list the scraper reads is locked only when a worker creates a new series
//! (the first request of a provider/model/format/status) and at scrape time.
//! Gauges that describe shared state (endpoint health and load, log
//! counters, the config generation, feed subscribers) are read at scrape
//! time from where they live.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions where one
//! exists (`gen_ai.client.operation.duration` → `gen_ai_client_operation_duration_seconds`, …)
//! and carry a `router_` prefix otherwise (docs/observability.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every metric the workers count, with its exposition name, type and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    OperationDuration,
    TimeToFirstToken,
    TokenUsage,
    Overhead,
    UpstreamFirstByte,
    UpstreamErrors,
    Attempts,
    Failovers,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Histogram(&'static [f64]),
}

/// Seconds, for request durations and time to first token.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Seconds, for the router's own overhead.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
];
/// Tokens per request (the GenAI convention's advice).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Requests => "router_requests_total",
            Metric::OperationDuration => "gen_ai_client_operation_duration_seconds",
            Metric::TimeToFirstToken => "gen_ai_server_time_to_first_token_seconds",
            Metric::TokenUsage => "gen_ai_client_token_usage",
            Metric::Overhead => "router_overhead_seconds",
            Metric::UpstreamFirstByte => "router_upstream_first_byte_seconds",
            Metric::UpstreamErrors => "router_upstream_errors_total",
            Metric::Attempts => "router_attempts_total",
            Metric::Failovers => "router_failovers_total",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Metric::Requests | Metric::UpstreamErrors | Metric::Attempts | Metric::Failovers => {
                Kind::Counter
            }
            Metric::OperationDuration | Metric::TimeToFirstToken | Metric::UpstreamFirstByte => {
                Kind::Histogram(DURATION_BUCKETS)
            }
            Metric::Overhead => Kind::Histogram(OVERHEAD_BUCKETS),
            Metric::TokenUsage => Kind::Histogram(TOKEN_BUCKETS),
        }
    }

    fn help(self) -> &'static str {
        match self {
            Metric::Requests => "Requests finished, by provider, model, client format and status.",
            Metric::OperationDuration => {
                "GenAI operation duration: request start to its last byte, by provider."
            }
            Metric::TimeToFirstToken => {
                "Time to the provider's response head (first token of a stream), by provider."
            }
            Metric::TokenUsage => "Tokens per request, by provider and token type.",
            Metric::Overhead => "The router's own time per request, up to the upstream send.",
            Metric::UpstreamFirstByte => {
                "From sending the upstream request to the provider's response head."
            }
            Metric::UpstreamErrors => "Failed upstream attempts, by provider and kind.",
            Metric::Attempts => "Upstream attempts, by provider, endpoint and outcome.",
            Metric::Failovers => "Attempts after the first for one request, by provider.",
        }
    }

    const ALL: [Metric; 9] = [
        Metric::Requests,
        Metric::OperationDuration,
        Metric::TimeToFirstToken,
        Metric::TokenUsage,
        Metric::Overhead,
        Metric::UpstreamFirstByte,
        Metric::UpstreamErrors,
        Metric::Attempts,
        Metric::Failovers,
    ];
}

/// Add `n` to a value this thread alone writes.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One series of one worker.
pub struct Series {
    metric: Metric,
    labels: Vec<(&'static str, String)>,
    /// Counter value, or histogram buckets (one per bound, then +Inf).
    cells: Vec<AtomicU64>,
    count: AtomicU64,
    /// Histogram sum, f64 bits.
    sum: AtomicU64,
}

impl Series {
    fn new(metric: Metric, labels: Vec<(&'static str, String)>) -> Series {
        let cells = match metric.kind() {
            Kind::Counter => 1,
            Kind::Histogram(b) => b.len() + 1,
        };
        Series {
            metric,
            labels,
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// A counter: add `n`.
    pub fn add(&self, n: u64) {
        if let Some(c) = self.cells.first() {
            bump(c, n);
        }
    }

    /// A histogram: one observation.
    pub fn observe(&self, v: f64) {
        let Kind::Histogram(bounds) = self.metric.kind() else {
            return;
        };
        let i = bounds.partition_point(|&b| b < v);
        if let Some(c) = self.cells.get(i) {
            bump(c, 1);
        }
        bump(&self.count, 1);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// The series one provider's chat requests update (see [`LocalMetrics::provider`]).
pub struct ProviderSeries {
    pub duration: Arc<Series>,
    pub ttft: Arc<Series>,
    pub first_byte: Arc<Series>,
    pub input_tokens: Arc<Series>,
    pub output_tokens: Arc<Series>,
    pub overhead: Arc<Series>,
}

/// What one worker exposes to the scraper.
#[derive(Default)]
pub struct WorkerMetrics {
    series: Mutex<Vec<Arc<Series>>>,
    /// Requests being served on this worker.
    pub in_flight: AtomicU64,
}

static WORKERS: Mutex<Vec<Arc<WorkerMetrics>>> = Mutex::new(Vec::new());

/// Series per worker beyond which new label sets are folded into one
/// (`model="_other"`): client-chosen model names cannot grow memory.
const MAX_SERIES: usize = 4096;

/// A worker's metrics: its series map (this thread only) and what it
/// shares with the scraper. Kept across reloads.
pub struct LocalMetrics {
    /// Per provider name: the series every chat request of it updates.
    providers: RefCell<Vec<(String, std::rc::Rc<ProviderSeries>)>>,
    /// The series of the last request's label set for `router_requests_total`
    /// (most requests repeat it): its label values and the series.
    last_request: RefCell<Option<(Vec<String>, Arc<Series>)>>,
    shared: Arc<WorkerMetrics>,
    /// Per metric (index = `Metric as usize`): label values → series.
    map: RefCell<Vec<HashMap<String, Arc<Series>>>>,
    key: RefCell<String>,
    count: std::cell::Cell<usize>,
}

impl LocalMetrics {
    /// Register a new worker's metrics.
    pub fn new() -> LocalMetrics {
        let shared = Arc::new(WorkerMetrics::default());
        if let Ok(mut w) = WORKERS.lock() {
            w.push(shared.clone());
        }
        LocalMetrics {
            providers: RefCell::new(Vec::new()),
            last_request: RefCell::new(None),
            shared,
            map: RefCell::new(Metric::ALL.iter().map(|_| HashMap::new()).collect()),
            key: RefCell::new(String::with_capacity(128)),
            count: std::cell::Cell::new(0),
        }
    }

    pub fn shared(&self) -> &WorkerMetrics {
        &self.shared
    }

    /// The series of `metric` with these label values (names from
    /// `label_names`), created on first use.
    pub fn series(&self, metric: Metric, labels: &[(&'static str, &str)]) -> Arc<Series> {
        let mut key = self.key.borrow_mut();
        key.clear();
        for (_, v) in labels {
            key.push_str(v);
            key.push('\u{1}');
        }
        let m = metric as usize;
        if let Some(s) = self.map.borrow().get(m).and_then(|h| h.get(key.as_str())) {
            return s.clone();
        }
        let mut map = self.map.borrow_mut();
        let fold = self.count.get() >= MAX_SERIES;
        let labels: Vec<(&'static str, String)> = labels
            .iter()
            .map(|(k, v)| {
                let v = if fold && (*k == "model" || *k == "gen_ai_request_model") {
                    "_other"
                } else {
                    v
                };
                (*k, v.to_string())
            })
            .collect();
        if fold {
            key.clear();
            for (_, v) in &labels {
                key.push_str(v);
                key.push('\u{1}');
            }
            if let Some(s) = map.get(m).and_then(|h| h.get(key.as_str())) {
                return s.clone();
            }
        }
        let s = Arc::new(Series::new(metric, labels));
        if let Some(h) = map.get_mut(m) {
            h.insert(key.clone(), s.clone());
            self.count.set(self.count.get() + 1);
        }
        if let Ok(mut list) = self.shared.series.lock() {
            list.push(s.clone());
        }
        s
    }

    /// The series a chat request of `provider` updates, found once per
    /// provider (a short list scanned by name, not a map lookup each).
    pub fn provider(&self, provider: &str) -> std::rc::Rc<ProviderSeries> {
        if let Some((_, p)) = self.providers.borrow().iter().find(|(n, _)| n == provider) {
            return p.clone();
        }
        let p = [("provider", provider)];
        let ps = std::rc::Rc::new(ProviderSeries {
            duration: self.series(
                Metric::OperationDuration,
                &[("gen_ai_operation_name", "chat"), ("provider", provider)],
            ),
            ttft: self.series(Metric::TimeToFirstToken, &p),
            first_byte: self.series(Metric::UpstreamFirstByte, &p),
            input_tokens: self.series(
                Metric::TokenUsage,
                &[("provider", provider), ("gen_ai_token_type", "input")],
            ),
            output_tokens: self.series(
                Metric::TokenUsage,
                &[("provider", provider), ("gen_ai_token_type", "output")],
            ),
            overhead: self.series(Metric::Overhead, &[]),
        });
        let mut list = self.providers.borrow_mut();
        // Bounded like the series: provider names come from the config.
        if list.len() < 1024 {
            list.push((provider.to_string(), ps.clone()));
        }
        ps
    }

    /// `series`, with a one-entry cache in front (the same label values as
    /// the previous call skip the map).
    pub fn series_cached(&self, metric: Metric, labels: &[(&'static str, &str)]) -> Arc<Series> {
        if let Some((values, s)) = self.last_request.borrow().as_ref()
            && s.metric == metric
            && values.len() == labels.len()
            && values.iter().zip(labels).all(|(a, (_, b))| a == b)
        {
            return s.clone();
        }
        let s = self.series(metric, labels);
        *self.last_request.borrow_mut() = Some((
            labels.iter().map(|(_, v)| v.to_string()).collect(),
            s.clone(),
        ));
        s
    }

    pub fn request_started(&self) {
        bump(&self.shared.in_flight, 1);
    }

    pub fn request_ended(&self) {
        let a = &self.shared.in_flight;
        a.store(
            a.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}

impl Default for LocalMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Escape a label value for the text format.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels_text(labels: &[(&str, String)], extra: Option<(&str, &str)>) -> String {
    let mut s = String::new();
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(extra) {
        s.push(if first { '{' } else { ',' });
        first = false;
        s.push_str(k);
        s.push_str("=\"");
        escape(v, &mut s);
        s.push('"');
    }
    if !first {
        s.push('}');
    }
    s
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// A gauge or counter computed at scrape time.
pub struct Sampled {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub points: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// One label set's values summed over the workers: labels, cells, count, sum.
type Merged = (Vec<(&'static str, String)>, Vec<u64>, u64, f64);

/// Every worker's series summed by label set, and the requests in flight.
fn collect() -> (HashMap<Metric, Vec<Merged>>, u64) {
    let workers: Vec<Arc<WorkerMetrics>> = WORKERS.lock().map(|w| w.clone()).unwrap_or_default();
    let mut merged: HashMap<Metric, Vec<Merged>> = HashMap::new();
    let mut in_flight = 0u64;
    for w in &workers {
        in_flight += w.in_flight.load(Ordering::Relaxed);
        let list: Vec<Arc<Series>> = w.series.lock().map(|l| l.clone()).unwrap_or_default();
        for s in list {
            let entry = merged.entry(s.metric).or_default();
            let cells: Vec<u64> = s.cells.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let count = s.count.load(Ordering::Relaxed);
            let sum = f64::from_bits(s.sum.load(Ordering::Relaxed));
            match entry.iter_mut().find(|(l, ..)| *l == s.labels) {
                Some((_, c, n, total)) => {
                    for (a, b) in c.iter_mut().zip(&cells) {
                        *a += b;
                    }
                    *n += count;
                    *total += sum;
                }
                None => entry.push((s.labels.clone(), cells, count, sum)),
            }
        }
    }
    (merged, in_flight)
}

/// The counters and histograms for OTLP export (cumulative since `start_ns`),
/// named as in the OpenTelemetry conventions (`gen_ai.client.token.usage`, …).
pub fn otlp_snapshot(start_ns: u64, now_ns: u64) -> crate::observe::otlp::MetricsData {
    use crate::observe::otlp::{AttrValue, GaugePoint, HistPoint, MetricsData, Number, SumPoint};
    let (merged, in_flight) = collect();
    let mut m = MetricsData {
        start_unix_ns: start_ns,
        time_unix_ns: now_ns,
        ..MetricsData::default()
    };
    let attrs = |labels: &[(&'static str, String)]| -> Vec<(&'static str, AttrValue)> {
        labels
            .iter()
            .map(|(k, v)| (otel_key(k), AttrValue::Str(v.clone())))
            .collect()
    };
    for metric in Metric::ALL {
        let Some(points) = merged.get(&metric) else {
            continue;
        };
        let (name, unit) = otel_name(metric);
        for (labels, cells, count, sum) in points {
            match metric.kind() {
                Kind::Counter => m.sums.push(SumPoint {
                    name,
                    unit,
                    description: metric.help(),
                    attributes: attrs(labels),
                    value: Number::from(cells.first().copied().unwrap_or(0)),
                    monotonic: true,
                }),
                Kind::Histogram(bounds) => m.histograms.push(HistPoint {
                    name,
                    unit,
                    description: metric.help(),
                    attributes: attrs(labels),
                    count: *count,
                    sum: *sum,
                    bounds: bounds.to_vec(),
                    bucket_counts: cells.clone(),
                }),
            }
        }
    }
    m.gauges.push(GaugePoint {
        name: "router.in_flight",
        unit: "{request}",
        description: "Requests being served now.",
        attributes: Vec::new(),
        value: Number::from(in_flight),
    });
    m
}

/// The OpenTelemetry name and unit of a metric.
fn otel_name(m: Metric) -> (&'static str, &'static str) {
    match m {
        Metric::Requests => ("router.requests", "{request}"),
        Metric::OperationDuration => ("gen_ai.client.operation.duration", "s"),
        Metric::TimeToFirstToken => ("gen_ai.server.time_to_first_token", "s"),
        Metric::TokenUsage => ("gen_ai.client.token.usage", "{token}"),
        Metric::Overhead => ("router.overhead", "s"),
        Metric::UpstreamFirstByte => ("router.upstream.first_byte", "s"),
        Metric::UpstreamErrors => ("router.upstream.errors", "{attempt}"),
        Metric::Attempts => ("router.attempts", "{attempt}"),
        Metric::Failovers => ("router.failovers", "{attempt}"),
    }
}

/// Label names as OpenTelemetry attribute keys.
fn otel_key(k: &'static str) -> &'static str {
    match k {
        "gen_ai_operation_name" => "gen_ai.operation.name",
        "gen_ai_token_type" => "gen_ai.token.type",
        "gen_ai_request_model" => "gen_ai.request.model",
        "provider" => "router.provider",
        "model" => "gen_ai.request.model",
        "client_format" => "router.client_format",
        "status" => "http.response.status_code",
        "endpoint" => "router.endpoint",
        "outcome" => "router.outcome",
        "kind" => "error.type",
        k => k,
    }
}

/// The exposition: every worker's series merged (summed by label set), then
/// the scrape-time samples.
pub fn render(sampled: &[Sampled]) -> String {
    let (mut merged, in_flight) = collect();
    let mut out = String::with_capacity(16 * 1024);
    for m in Metric::ALL {
        let kind = m.kind();
        let name = m.name();
        let _ = writeln!(out, "# HELP {name} {}", m.help());
        let _ = writeln!(
            out,
            "# TYPE {name} {}",
            match kind {
                Kind::Counter => "counter",
                Kind::Histogram(_) => "histogram",
            }
        );
        let Some(points) = merged.get_mut(&m) else {
            continue;
        };
        points.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, cells, count, sum) in points.iter() {
            match kind {
                Kind::Counter => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        labels_text(labels, None),
                        cells.first().copied().unwrap_or(0)
                    );
                }
                Kind::Histogram(bounds) => {
                    let mut cumulative = 0u64;
                    for (i, c) in cells.iter().enumerate() {
                        cumulative += c;
                        let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cumulative}",
                            labels_text(labels, Some(("le", &fmt_f64(le))))
                        );
                    }
                    let l = labels_text(labels, None);
                    let _ = writeln!(out, "{name}_sum{l} {}", fmt_f64(*sum));
                    let _ = writeln!(out, "{name}_count{l} {count}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP router_in_flight Requests being served now.\n# TYPE router_in_flight gauge\nrouter_in_flight {in_flight}"
    );
    for s in sampled {
        let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
        let _ = writeln!(out, "# TYPE {} {}", s.name, s.kind);
        for (labels, v) in &s.points {
            let _ = writeln!(
                out,
                "{}{} {}",
                s.name,
                labels_text(labels, None),
                fmt_f64(*v)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_merge_across_workers_and_render() {
        let a = LocalMetrics::new();
        let b = LocalMetrics::new();
        let labels = [
            ("provider", "unit-test-p"),
            ("model", "m\"1"),
            ("client_format", "openai"),
            ("status", "200"),
        ];
        a.series(Metric::Requests, &labels).add(2);
        b.series(Metric::Requests, &labels).add(3);
        a.series(Metric::Overhead, &[]).observe(0.00003);
        b.series(Metric::Overhead, &[]).observe(1.0);
        let text = render(&[]);
        assert!(
            text.contains(
                "router_requests_total{provider=\"unit-test-p\",model=\"m\\\"1\",client_format=\"openai\",status=\"200\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE router_requests_total counter"));
        assert!(text.contains("router_overhead_seconds_bucket{le=\"0.00005\"}"));
        assert!(text.contains("router_overhead_seconds_bucket{le=\"+Inf\"}"));
    }

    #[test]
    fn client_chosen_models_cannot_grow_the_series_without_bound() {
        let a = LocalMetrics::new();
        for i in 0..(MAX_SERIES + 100) {
            let m = format!("model-{i}");
            a.series(Metric::Requests, &[("model", &m)]).add(1);
        }
        let total: usize = a.map.borrow().iter().map(HashMap::len).sum();
        assert!(total <= MAX_SERIES + 1, "{total}");
    }
}
