//! OpenTelemetry export over OTLP/HTTP (protobuf): traces and metrics.
//!
//! Three parts, each usable alone:
//!
//! - Plain data ([`SpanData`], [`MetricsData`]) that the request path fills:
//!   owned values, no references into request buffers, cheap to build.
//! - Pure encoders ([`encode_traces`], [`encode_metrics`]) writing the
//!   protobuf bytes of `ExportTraceServiceRequest` / `ExportMetricsServiceRequest`
//!   (opentelemetry-proto, `collector/{trace,metrics}/v1`), by hand: a few
//!   message shapes do not need a code generator or a protobuf crate. The
//!   Python tests in `tests/otel` decode them with the official classes.
//! - The [`Exporter`]: one std thread, off the request path. Workers hand it
//!   spans through a bounded queue behind a mutex held only for a push or a
//!   swap; it batches them (up to [`BATCH_SPANS`] per request, or what is there
//!   every [`BATCH_INTERVAL`]) and POSTs them over plain HTTP/1.1 to
//!   `{endpoint}/v1/traces`, metrics to `{endpoint}/v1/metrics`. A full queue,
//!   a refused connection, a timeout or a non-2xx answer drops data and counts
//!   it; nothing is retried and nothing grows, and one warning line is printed
//!   per failure streak, not per batch.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::diag;

/// The instrumentation scope every span and metric is reported under.
pub const SCOPE_NAME: &str = "opensourcellmrouter";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Spans the exporter queue holds; further offers are refused and counted.
pub const QUEUE_SPANS: usize = 4096;
/// Metrics snapshots the exporter queue holds.
pub const QUEUE_METRICS: usize = 16;
/// Spans per export request at most.
pub const BATCH_SPANS: usize = 512;
/// Queued spans wait at most about this long.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Connect, write and read timeout of one blocking socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Everything one export request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's response head larger than this is an error.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// An attribute value (OTLP `AnyValue`, the kinds the router uses).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// Attributes: keys are the semantic-convention names, known at compile time.
pub type Attributes = Vec<(&'static str, AttrValue)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The router's span for a client's request.
    Server,
    /// A call to an upstream provider.
    Client,
    Internal,
}

impl SpanKind {
    /// `Span.SpanKind` enum number.
    fn number(self) -> u64 {
        match self {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        }
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    /// `Some` → status `ERROR` with this message; `None` → `UNSET`.
    pub error: Option<String>,
}

/// A data point's number (`as_int` or `as_double`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Double(f64),
}

impl From<u64> for Number {
    /// Counters are `u64`; past `i64::MAX` (never, in practice) it saturates.
    fn from(v: u64) -> Self {
        Number::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Number {
    fn from(v: i64) -> Self {
        Number::Int(v)
    }
}

impl From<f64> for Number {
    fn from(v: f64) -> Self {
        Number::Double(v)
    }
}

/// One point of a cumulative sum (a counter when `monotonic`).
#[derive(Debug, Clone, PartialEq)]
pub struct SumPoint {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub attributes: Attributes,
    pub value: Number,
    pub monotonic: bool,
}

/// One point of a gauge (a value now, like requests in flight).
#[derive(Debug, Clone, PartialEq)]
pub struct GaugePoint {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub attributes: Attributes,
    pub value: Number,
}

/// One point of a cumulative explicit-bucket histogram.
/// `bucket_counts` has `bounds.len() + 1` entries (the last counts values
/// above the last bound); `bounds` are increasing.
#[derive(Debug, Clone, PartialEq)]
pub struct HistPoint {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub attributes: Attributes,
    pub count: u64,
    pub sum: f64,
    pub bounds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
}

/// One metrics snapshot. Points sharing a name become one metric with
/// several data points (so a name must keep one kind, unit and description).
/// Cumulative: `start_unix_ns` is when counting began (process start),
/// `time_unix_ns` when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsData {
    pub start_unix_ns: u64,
    pub time_unix_ns: u64,
    pub sums: Vec<SumPoint>,
    pub gauges: Vec<GaugePoint>,
    pub histograms: Vec<HistPoint>,
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Protobuf wire primitives. Nested messages are written in place with a
/// one-byte length slot that is widened afterwards when the body turns out
/// to be 128 bytes or more, so no message is built twice or sized in advance.
mod pb {
    const VARINT: u64 = 0;
    const I64: u64 = 1;
    const LEN: u64 = 2;

    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire_type: u64) {
        varint(out, (u64::from(field) << 3) | wire_type);
    }

    /// A `uint32`/`uint64`/enum/`bool` field; zero (the default) is omitted.
    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        if v != 0 {
            key(out, field, VARINT);
            varint(out, v);
        }
    }

    /// An `int64` or `bool` inside a `oneof`: written even when zero.
    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, VARINT);
        varint(out, v);
    }

    /// `fixed64` / `sfixed64` (as its two's complement bits).
    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        fixed64(out, field, v.to_bits());
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, LEN);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A string written even when empty (inside a `oneof`, or required).
    pub fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        bytes(out, field, s.as_bytes());
    }

    /// A plain `string` field: empty (the default) is omitted.
    pub fn opt_string(out: &mut Vec<u8>, field: u32, s: &str) {
        if !s.is_empty() {
            string(out, field, s);
        }
    }

    /// A nested message written by `body`.
    pub fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
        key(out, field, LEN);
        let slot = out.len();
        out.push(0);
        body(out);
        let len = (out.len() - slot - 1) as u64;
        if len < 0x80 {
            out[slot] = len as u8;
        } else {
            let mut prefix = Vec::with_capacity(10);
            varint(&mut prefix, len);
            out[slot] = prefix[0];
            out.splice(slot + 1..slot + 1, prefix[1..].iter().copied());
        }
    }

    /// `repeated fixed64`, packed (proto3's default); nothing when empty.
    pub fn packed_fixed64(out: &mut Vec<u8>, field: u32, vs: &[u64]) {
        if vs.is_empty() {
            return;
        }
        key(out, field, LEN);
        varint(out, (vs.len() * 8) as u64);
        for v in vs {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `repeated double`, packed; nothing when empty.
    pub fn packed_double(out: &mut Vec<u8>, field: u32, vs: &[f64]) {
        if vs.is_empty() {
            return;
        }
        key(out, field, LEN);
        varint(out, (vs.len() * 8) as u64);
        for v in vs {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
}

// Field numbers, from opentelemetry-proto (`common/v1/common.proto`,
// `resource/v1/resource.proto`, `trace/v1/trace.proto`,
// `metrics/v1/metrics.proto`, `collector/*/v1/*_service.proto`).

/// `ExportTraceServiceRequest.resource_spans`, `ExportMetricsServiceRequest.resource_metrics`.
const EXPORT_RESOURCE: u32 = 1;
/// `ResourceSpans.resource`, `ResourceMetrics.resource`.
const RESOURCE: u32 = 1;
/// `ResourceSpans.scope_spans`, `ResourceMetrics.scope_metrics`.
const RESOURCE_SCOPE: u32 = 2;
/// `ScopeSpans.scope`, `ScopeMetrics.scope`.
const SCOPE: u32 = 1;
/// `ScopeSpans.spans`, `ScopeMetrics.metrics`.
const SCOPE_ITEMS: u32 = 2;

const RESOURCE_ATTRIBUTES: u32 = 1;
const SCOPE_NAME_FIELD: u32 = 1;
const SCOPE_VERSION_FIELD: u32 = 2;
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
const ARRAY_VALUES: u32 = 1;

const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const STATUS_CODE_ERROR: u64 = 2;

const METRIC_NAME: u32 = 1;
const METRIC_DESCRIPTION: u32 = 2;
const METRIC_UNIT: u32 = 3;
const METRIC_GAUGE: u32 = 5;
const METRIC_SUM: u32 = 7;
const METRIC_HISTOGRAM: u32 = 9;
/// `Gauge`, `Sum`, `Histogram`: `data_points`, `aggregation_temporality`, `is_monotonic`.
const DATA_POINTS: u32 = 1;
const TEMPORALITY: u32 = 2;
const SUM_MONOTONIC: u32 = 3;
const TEMPORALITY_CUMULATIVE: u64 = 2;
/// `NumberDataPoint` and `HistogramDataPoint` share 2 and 3.
const POINT_START: u32 = 2;
const POINT_TIME: u32 = 3;
const NUMBER_AS_DOUBLE: u32 = 4;
const NUMBER_AS_INT: u32 = 6;
const NUMBER_ATTRIBUTES: u32 = 7;
const HIST_COUNT: u32 = 4;
const HIST_SUM: u32 = 5;
const HIST_BUCKET_COUNTS: u32 = 6;
const HIST_BOUNDS: u32 = 7;
const HIST_ATTRIBUTES: u32 = 9;

fn any_value(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => pb::string(out, ANY_STRING, s),
        AttrValue::Bool(b) => pb::varint_field(out, ANY_BOOL, u64::from(*b)),
        // int64: negative values are their 64-bit two's complement.
        AttrValue::Int(i) => pb::varint_field(out, ANY_INT, *i as u64),
        AttrValue::Double(d) => pb::double(out, ANY_DOUBLE, *d),
        AttrValue::StrArray(items) => pb::message(out, ANY_ARRAY, |out| {
            for s in items {
                pb::message(out, ARRAY_VALUES, |out| pb::string(out, ANY_STRING, s));
            }
        }),
    }
}

fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &AttrValue) {
    pb::message(out, field, |out| {
        pb::string(out, KV_KEY, key);
        pb::message(out, KV_VALUE, |out| any_value(out, value));
    });
}

fn attributes(out: &mut Vec<u8>, field: u32, attrs: &[(&'static str, AttrValue)]) {
    for (k, v) in attrs {
        key_value(out, field, k, v);
    }
}

/// `Resource { attributes: [service.name] }`, then the scope wrapper whose
/// items `body` writes.
fn resource_and_scope(out: &mut Vec<u8>, service_name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    pb::message(out, EXPORT_RESOURCE, |out| {
        pb::message(out, RESOURCE, |out| {
            pb::message(out, RESOURCE_ATTRIBUTES, |out| {
                pb::string(out, KV_KEY, "service.name");
                pb::message(out, KV_VALUE, |out| {
                    pb::string(out, ANY_STRING, service_name);
                });
            });
        });
        pb::message(out, RESOURCE_SCOPE, |out| {
            pb::message(out, SCOPE, |out| {
                pb::string(out, SCOPE_NAME_FIELD, SCOPE_NAME);
                pb::opt_string(out, SCOPE_VERSION_FIELD, SCOPE_VERSION);
            });
            body(out);
        });
    });
}

/// Appends the protobuf bytes of an `ExportTraceServiceRequest` carrying
/// `spans` (one resource with `service.name`, one scope) to `out`.
pub fn encode_traces(service_name: &str, spans: &[SpanData], out: &mut Vec<u8>) {
    resource_and_scope(out, service_name, |out| {
        for span in spans {
            pb::message(out, SCOPE_ITEMS, |out| encode_span(out, span));
        }
    });
}

fn encode_span(out: &mut Vec<u8>, s: &SpanData) {
    pb::bytes(out, SPAN_TRACE_ID, &s.trace_id);
    pb::bytes(out, SPAN_SPAN_ID, &s.span_id);
    if let Some(parent) = &s.parent_span_id {
        pb::bytes(out, SPAN_PARENT_SPAN_ID, parent);
    }
    pb::string(out, SPAN_NAME, &s.name);
    pb::uint(out, SPAN_KIND, s.kind.number());
    pb::fixed64(out, SPAN_START, s.start_unix_ns);
    pb::fixed64(out, SPAN_END, s.end_unix_ns);
    attributes(out, SPAN_ATTRIBUTES, &s.attributes);
    // No `status` at all means UNSET.
    if let Some(message) = &s.error {
        pb::message(out, SPAN_STATUS, |out| {
            pb::opt_string(out, STATUS_MESSAGE, message);
            pb::uint(out, STATUS_CODE, STATUS_CODE_ERROR);
        });
    }
}

/// Appends the protobuf bytes of an `ExportMetricsServiceRequest` carrying
/// `m` to `out`. Metrics come out in this order: sums, gauges, histograms,
/// each kind by first appearance of its name.
pub fn encode_metrics(service_name: &str, m: &MetricsData, out: &mut Vec<u8>) {
    resource_and_scope(out, service_name, |out| {
        for group in group_by_name(&m.sums, |p| p.name) {
            let first = group[0];
            metric(out, first.name, first.description, first.unit, |out| {
                pb::message(out, METRIC_SUM, |out| {
                    for p in &group {
                        pb::message(out, DATA_POINTS, |out| {
                            number_point(out, Some(m.start_unix_ns), m.time_unix_ns, p.value);
                            attributes(out, NUMBER_ATTRIBUTES, &p.attributes);
                        });
                    }
                    pb::uint(out, TEMPORALITY, TEMPORALITY_CUMULATIVE);
                    pb::uint(out, SUM_MONOTONIC, u64::from(first.monotonic));
                });
            });
        }
        for group in group_by_name(&m.gauges, |p| p.name) {
            let first = group[0];
            metric(out, first.name, first.description, first.unit, |out| {
                pb::message(out, METRIC_GAUGE, |out| {
                    for p in &group {
                        pb::message(out, DATA_POINTS, |out| {
                            // A gauge has no meaningful start time.
                            number_point(out, None, m.time_unix_ns, p.value);
                            attributes(out, NUMBER_ATTRIBUTES, &p.attributes);
                        });
                    }
                });
            });
        }
        for group in group_by_name(&m.histograms, |p| p.name) {
            let first = group[0];
            metric(out, first.name, first.description, first.unit, |out| {
                pb::message(out, METRIC_HISTOGRAM, |out| {
                    for p in &group {
                        pb::message(out, DATA_POINTS, |out| {
                            pb::fixed64(out, POINT_START, m.start_unix_ns);
                            pb::fixed64(out, POINT_TIME, m.time_unix_ns);
                            pb::fixed64(out, HIST_COUNT, p.count);
                            // `optional double sum`: present even when 0.
                            pb::double(out, HIST_SUM, p.sum);
                            pb::packed_fixed64(out, HIST_BUCKET_COUNTS, &p.bucket_counts);
                            pb::packed_double(out, HIST_BOUNDS, &p.bounds);
                            attributes(out, HIST_ATTRIBUTES, &p.attributes);
                        });
                    }
                    pb::uint(out, TEMPORALITY, TEMPORALITY_CUMULATIVE);
                });
            });
        }
    });
}

fn metric(
    out: &mut Vec<u8>,
    name: &str,
    description: &str,
    unit: &str,
    data: impl FnOnce(&mut Vec<u8>),
) {
    pb::message(out, SCOPE_ITEMS, |out| {
        pb::string(out, METRIC_NAME, name);
        pb::opt_string(out, METRIC_DESCRIPTION, description);
        pb::opt_string(out, METRIC_UNIT, unit);
        data(out);
    });
}

fn number_point(out: &mut Vec<u8>, start: Option<u64>, time: u64, value: Number) {
    if let Some(start) = start {
        pb::fixed64(out, POINT_START, start);
    }
    pb::fixed64(out, POINT_TIME, time);
    match value {
        Number::Double(d) => pb::double(out, NUMBER_AS_DOUBLE, d),
        // sfixed64: the two's complement bits.
        Number::Int(i) => pb::fixed64(out, NUMBER_AS_INT, i as u64),
    }
}

/// Items grouped by name, groups in order of first appearance, items in
/// their order. Never an empty group.
fn group_by_name<'a, T>(items: &'a [T], name: impl Fn(&T) -> &str) -> Vec<Vec<&'a T>> {
    let mut groups: Vec<Vec<&'a T>> = Vec::new();
    for item in items {
        let n = name(item);
        match groups.iter_mut().find(|g| name(g[0]) == n) {
            Some(g) => g.push(item),
            None => groups.push(vec![item]),
        }
    }
    groups
}

// ---------------------------------------------------------------------------
// Exporter
// ---------------------------------------------------------------------------

/// Where export requests go: from `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// As given, trailing `/` removed (for messages).
    url: String,
    /// Without brackets for IPv6.
    host: String,
    port: u16,
    /// `""` or `/prefix`, no trailing `/`.
    prefix: String,
    host_header: String,
}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint, String> {
    let e = endpoint.trim().trim_end_matches('/');
    let rest = if let Some(rest) = strip_prefix_ci(e, "http://") {
        rest
    } else if strip_prefix_ci(e, "https://").is_some() {
        return Err(format!(
            "OTLP endpoint {e}: https:// is not supported yet; use an http:// endpoint \
             (e.g. a local OpenTelemetry Collector on http://localhost:4318)"
        ));
    } else {
        return Err(format!("OTLP endpoint {e:?}: must start with http://"));
    };
    if rest.contains(|c: char| c.is_whitespace() || c.is_control() || "?#@".contains(c)) {
        return Err(format!(
            "OTLP endpoint {e:?}: must be http://host[:port][/path], without spaces, \
             user info, query or fragment"
        ));
    }
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port, bracketed) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("OTLP endpoint {e:?}: unclosed `[`"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("OTLP endpoint {e:?}: text after `]`"))?,
            ),
        };
        (host, port, true)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (authority, None, false),
        }
    };
    if host.is_empty() || (!bracketed && host.contains(':')) {
        return Err(format!("OTLP endpoint {e:?}: invalid host"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("OTLP endpoint {e:?}: invalid port {p:?}")),
        },
    };
    let shown = if bracketed {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let host_header = if port == 80 {
        shown
    } else {
        format!("{shown}:{port}")
    };
    Ok(Endpoint {
        url: e.to_owned(),
        host: host.to_owned(),
        port,
        prefix: prefix.to_owned(),
        host_header,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What the workers and the export thread share.
struct Queue {
    spans: Vec<SpanData>,
    metrics: Vec<MetricsData>,
    /// Set by [`Exporter::flush_and_stop`] (or the last handle's drop): no
    /// more offers; export what is queued until this instant, drop the rest.
    stop: Option<Instant>,
    /// The export thread has ended.
    done: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The export thread waits here for work.
    work: Condvar,
    /// `flush_and_stop` waits here for `done`.
    finished: Condvar,
    dropped_spans: AtomicU64,
    dropped_batches: AtomicU64,
    exported_spans: AtomicU64,
    exported_batches: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding the lock cannot leave the queue
        // half-updated (push, swap, flag writes), so keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self, deadline: Instant) {
        let mut q = self.lock();
        if q.stop.is_none() {
            q.stop = Some(deadline);
        }
        drop(q);
        self.work.notify_one();
    }
}

/// Stops the export thread when the last [`Exporter`] clone goes away
/// (what is still queued is dropped: drain with `flush_and_stop`).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop(Instant::now());
    }
}

/// The OTLP/HTTP exporter: a handle to its thread. Clone it freely (one
/// `Arc`); every method takes `&self` and never waits for the network.
#[derive(Clone)]
pub struct Exporter {
    handle: Arc<Handle>,
}

impl Exporter {
    /// Whether `other` is a handle to the same export thread.
    pub fn same(&self, other: &Exporter) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// Starts the export thread for `endpoint` (`http://host[:port][/path]`;
    /// requests go to `{endpoint}/v1/traces` and `{endpoint}/v1/metrics`).
    /// Nothing is connected yet: an unreachable collector shows up later as
    /// dropped batches and one warning.
    pub fn start(endpoint: &str, service_name: &str) -> Result<Exporter, String> {
        let target = parse_endpoint(endpoint)?;
        let exporter = Exporter::unstarted();
        let shared = exporter.handle.shared.clone();
        let service_name = service_name.to_owned();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(&shared, &target, &service_name))
            .map_err(|e| format!("cannot start the OTLP export thread: {e}"))?;
        Ok(exporter)
    }

    /// The queue without a thread (tests fill it deterministically).
    fn unstarted() -> Exporter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                spans: Vec::new(),
                metrics: Vec::new(),
                stop: None,
                done: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
            dropped_spans: AtomicU64::new(0),
            dropped_batches: AtomicU64::new(0),
            exported_spans: AtomicU64::new(0),
            exported_batches: AtomicU64::new(0),
        });
        Exporter {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Queues a finished span. `false` (and counted in [`Self::dropped_spans`])
    /// when the queue is full or the exporter is stopping. Never blocks
    /// beyond a push under an uncontended-in-practice mutex.
    pub fn offer_span(&self, span: SpanData) -> bool {
        let shared = self.shared();
        let mut q = shared.lock();
        if q.stop.is_some() || q.spans.len() >= QUEUE_SPANS {
            drop(q);
            shared.dropped_spans.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.spans.push(span);
        let batch_ready = q.spans.len() == BATCH_SPANS;
        drop(q);
        if batch_ready {
            shared.work.notify_one();
        }
        true
    }

    /// Queues several spans under one lock (a core's batch), taking them out
    /// of `spans` (which keeps its capacity). Returns how many were accepted;
    /// the rest (queue full, or stopping) are dropped and counted.
    pub fn offer_spans(&self, spans: &mut Vec<SpanData>) -> usize {
        let shared = self.shared();
        let mut q = shared.lock();
        let room = if q.stop.is_some() {
            0
        } else {
            QUEUE_SPANS.saturating_sub(q.spans.len())
        };
        let take = room.min(spans.len());
        let before = q.spans.len();
        q.spans.extend(spans.drain(..take));
        let batch_ready = before < BATCH_SPANS && q.spans.len() >= BATCH_SPANS;
        drop(q);
        if batch_ready {
            shared.work.notify_one();
        }
        if !spans.is_empty() {
            shared
                .dropped_spans
                .fetch_add(spans.len() as u64, Ordering::Relaxed);
            spans.clear();
        }
        take
    }

    /// Queues a metrics snapshot, exported at once. `false` (and counted in
    /// [`Self::dropped_batches`]) when [`QUEUE_METRICS`] snapshots are already
    /// waiting or the exporter is stopping.
    pub fn offer_metrics(&self, m: MetricsData) -> bool {
        let shared = self.shared();
        let mut q = shared.lock();
        if q.stop.is_some() || q.metrics.len() >= QUEUE_METRICS {
            drop(q);
            shared.dropped_batches.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.metrics.push(m);
        drop(q);
        shared.work.notify_one();
        true
    }

    /// Spans that never reached the collector: refused by a full queue or a
    /// stopping exporter, in a failed export, or still queued at the stop
    /// deadline. After [`Self::flush_and_stop`], exported + dropped = offered.
    pub fn dropped_spans(&self) -> u64 {
        self.shared().dropped_spans.load(Ordering::Relaxed)
    }

    /// Export requests that failed (refused, timed out, non-2xx), plus
    /// metrics snapshots refused or left at the stop deadline.
    pub fn dropped_batches(&self) -> u64 {
        self.shared().dropped_batches.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted (a 2xx answer).
    pub fn exported_spans(&self) -> u64 {
        self.shared().exported_spans.load(Ordering::Relaxed)
    }

    /// Export requests (traces or metrics) the collector accepted.
    pub fn exported_batches(&self) -> u64 {
        self.shared().exported_batches.load(Ordering::Relaxed)
    }

    /// Refuses further offers, exports what is queued, and waits for the
    /// export thread to finish, at most `timeout`: what could not be sent by
    /// then is dropped (and counted). Later calls return at once.
    pub fn flush_and_stop(&self, timeout: Duration) {
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400));
        let shared = self.shared();
        shared.stop(deadline);
        let mut q = shared.lock();
        while !q.done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = match shared.finished.wait_timeout(q, deadline - now) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// One warning per failure streak.
#[derive(Debug, Default)]
struct Streak {
    failing: bool,
}

impl Streak {
    /// Records a failure; `true` when it starts a streak (warn now).
    fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    /// Records a success; `true` when it ends a streak.
    fn succeeded(&mut self) -> bool {
        std::mem::replace(&mut self.failing, false)
    }
}

/// The export thread: wait for a full batch, a metrics snapshot, the tick
/// or the stop; take everything queued (a swap under the lock); send it.
fn export_loop(shared: &Shared, target: &Endpoint, service_name: &str) {
    let mut streak = Streak::default();
    let mut body = Vec::new();
    let mut spare: Vec<SpanData> = Vec::new();
    let mut next_tick = Instant::now() + BATCH_INTERVAL;
    loop {
        let (mut spans, metrics, stop) = {
            let mut q = shared.lock();
            loop {
                let now = Instant::now();
                if q.stop.is_some()
                    || q.spans.len() >= BATCH_SPANS
                    || !q.metrics.is_empty()
                    || (now >= next_tick && !q.spans.is_empty())
                {
                    break;
                }
                if now >= next_tick {
                    next_tick = now + BATCH_INTERVAL;
                }
                q = match shared.work.wait_timeout(q, next_tick - now) {
                    Ok((q, _)) => q,
                    Err(e) => e.into_inner().0,
                };
            }
            let spans = std::mem::replace(&mut q.spans, std::mem::take(&mut spare));
            (spans, std::mem::take(&mut q.metrics), q.stop)
        };
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + BATCH_INTERVAL;
        }

        for chunk in spans.chunks(BATCH_SPANS) {
            body.clear();
            encode_traces(service_name, chunk, &mut body);
            let sent = send(target, "/v1/traces", &body, stop, &mut streak, shared);
            let n = chunk.len() as u64;
            if sent {
                shared.exported_spans.fetch_add(n, Ordering::Relaxed);
            } else {
                shared.dropped_spans.fetch_add(n, Ordering::Relaxed);
            }
        }
        for m in &metrics {
            body.clear();
            encode_metrics(service_name, m, &mut body);
            send(target, "/v1/metrics", &body, stop, &mut streak, shared);
        }
        spans.clear();
        spare = spans;

        if stop.is_some() {
            // Offers were refused from the moment `stop` was set, and the
            // swap above took everything queued before it.
            let mut q = shared.lock();
            q.done = true;
            drop(q);
            shared.finished.notify_all();
            return;
        }
    }
}

/// Sends one export request and does the counting and the warning; `true`
/// when the collector accepted it.
fn send(
    target: &Endpoint,
    path: &str,
    body: &[u8],
    stop: Option<Instant>,
    streak: &mut Streak,
    shared: &Shared,
) -> bool {
    let now = Instant::now();
    let mut deadline = now + REQUEST_TIMEOUT;
    if let Some(stop) = stop {
        if now >= stop {
            // Past the drain deadline: dropped unsent, nothing to warn about.
            shared.dropped_batches.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        deadline = deadline.min(stop);
    }
    match post(target, path, body, deadline) {
        Ok(()) => {
            shared.exported_batches.fetch_add(1, Ordering::Relaxed);
            if streak.succeeded() {
                diag::info(&format!("OTLP export to {} works again", target.url));
            }
            true
        }
        Err(why) => {
            shared.dropped_batches.fetch_add(1, Ordering::Relaxed);
            if streak.failed() {
                diag::warn(&format!(
                    "OTLP export to {}{path} failed ({why}); telemetry is dropped \
                     until the collector answers again",
                    target.url
                ));
            }
            false
        }
    }
}

/// The time left before `deadline`, capped at [`IO_TIMEOUT`]; an error once
/// it has passed (a zero socket timeout would mean "none").
fn io_budget(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".to_owned());
    }
    Ok(left.min(IO_TIMEOUT))
}

/// One `POST` on a fresh connection (`Connection: close`: at most one
/// request a second or so, and no response framing to track).
fn post(target: &Endpoint, path: &str, body: &[u8], deadline: Instant) -> Result<(), String> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let mut last_err = format!("{} has no address", target.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, io_budget(deadline)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_err)?;
    let _ = stream.set_nodelay(true);

    let head = format!(
        "POST {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {SCOPE_NAME}/{SCOPE_VERSION}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        prefix = target.prefix,
        host = target.host_header,
        len = body.len(),
    );
    for part in [head.as_bytes(), body] {
        stream
            .set_write_timeout(Some(io_budget(deadline)?))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(part)
            .map_err(|e| format!("sending the request: {e}"))?;
    }

    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        match response_status(&buf) {
            Head::Final(code) if (200..300).contains(&code) => return Ok(()),
            Head::Final(code) => return Err(format!("the collector answered {code}")),
            Head::Interim(len) => {
                buf.drain(..len);
                continue;
            }
            Head::Invalid => return Err("the collector's answer is not HTTP/1.x".to_owned()),
            Head::Incomplete if buf.len() > MAX_RESPONSE_HEAD => {
                return Err("the collector's response head is too large".to_owned());
            }
            Head::Incomplete => {}
        }
        stream
            .set_read_timeout(Some(io_budget(deadline)?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the collector closed the connection without an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete response head with this final status.
    Final(u16),
    /// A complete `1xx` head of this many bytes, to skip.
    Interim(usize),
    Incomplete,
    Invalid,
}

/// The status of the response head at the start of `buf`. A final status is
/// known as soon as its status line is complete (the rest is not needed).
fn response_status(buf: &[u8]) -> Head {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // Reject garbage early rather than buffering it.
        let n = buf.len().min(5);
        return if buf[..n] == b"HTTP/"[..n] {
            Head::Incomplete
        } else {
            Head::Invalid
        };
    };
    let line = &buf[..line_end];
    // `HTTP/1.x NNN[ reason]`
    let code = match line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', d @ ..] if d.len() >= 3 => {
            if d.len() > 3 && d[3] != b' ' {
                return Head::Invalid;
            }
            let digits = &d[..3];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Head::Invalid;
            }
            digits
                .iter()
                .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'))
        }
        _ => return Head::Invalid,
    };
    if !(100..200).contains(&code) {
        return Head::Final(code);
    }
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => Head::Interim(end + 4),
        None => Head::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

    // -- a tiny protobuf reader, enough to check what the encoder wrote ------

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Wire<'a> {
        Varint(u64),
        I64(u64),
        Len(&'a [u8]),
        I32(u32),
    }

    fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
        }
        panic!("varint longer than 10 bytes");
    }

    /// Every field of one message, in order; panics on malformed input.
    fn fields(buf: &[u8]) -> Vec<(u32, Wire<'_>)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let key = read_varint(buf, &mut pos);
            let field = u32::try_from(key >> 3).unwrap();
            let wire = match key & 7 {
                0 => Wire::Varint(read_varint(buf, &mut pos)),
                1 => {
                    let v = u64::from_le_bytes(buf[pos..pos + 8].try_into().unwrap());
                    pos += 8;
                    Wire::I64(v)
                }
                2 => {
                    let len = usize::try_from(read_varint(buf, &mut pos)).unwrap();
                    let v = &buf[pos..pos + len];
                    pos += len;
                    Wire::Len(v)
                }
                5 => {
                    let v = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap());
                    pos += 4;
                    Wire::I32(v)
                }
                t => panic!("wire type {t}"),
            };
            out.push((field, wire));
        }
        assert_eq!(pos, buf.len(), "message overran its length");
        out
    }

    fn all(buf: &[u8], field: u32) -> Vec<Wire<'_>> {
        fields(buf)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, w)| w)
            .collect()
    }

    fn one(buf: &[u8], field: u32) -> Wire<'_> {
        let v = all(buf, field);
        assert_eq!(v.len(), 1, "field {field}: {v:?}");
        v[0]
    }

    fn absent(buf: &[u8], field: u32) -> bool {
        all(buf, field).is_empty()
    }

    fn msgs(buf: &[u8], field: u32) -> Vec<&[u8]> {
        all(buf, field)
            .into_iter()
            .map(|w| match w {
                Wire::Len(b) => b,
                other => panic!("field {field} is {other:?}"),
            })
            .collect()
    }

    fn msg(buf: &[u8], field: u32) -> &[u8] {
        match one(buf, field) {
            Wire::Len(b) => b,
            other => panic!("field {field} is {other:?}"),
        }
    }

    fn string(buf: &[u8], field: u32) -> &str {
        std::str::from_utf8(msg(buf, field)).unwrap()
    }

    fn varint(buf: &[u8], field: u32) -> u64 {
        match one(buf, field) {
            Wire::Varint(v) => v,
            other => panic!("field {field} is {other:?}"),
        }
    }

    fn fixed(buf: &[u8], field: u32) -> u64 {
        match one(buf, field) {
            Wire::I64(v) => v,
            other => panic!("field {field} is {other:?}"),
        }
    }

    fn packed_u64(buf: &[u8], field: u32) -> Vec<u64> {
        msg(buf, field)
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// `KeyValue` list → (key, `AnyValue` bytes).
    fn attrs(buf: &[u8], field: u32) -> Vec<(String, &[u8])> {
        msgs(buf, field)
            .into_iter()
            .map(|kv| (string(kv, 1).to_owned(), msg(kv, 2)))
            .collect()
    }

    fn attr<'a>(list: &[(String, &'a [u8])], key: &str) -> &'a [u8] {
        list.iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no attribute {key}"))
            .1
    }

    // -- fixtures -------------------------------------------------------------

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];

    fn span(name: &str, id: u8, parent: Option<u8>) -> SpanData {
        SpanData {
            trace_id: TRACE,
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.to_owned(),
            kind: SpanKind::Internal,
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_250_000_000,
            attributes: Vec::new(),
            error: None,
        }
    }

    fn decode_spans(body: &[u8]) -> Vec<&[u8]> {
        let rs = msg(body, 1);
        let ss = msg(rs, 2);
        msgs(ss, 2)
    }

    // -- wire primitives ------------------------------------------------------

    #[test]
    fn varints_match_the_protobuf_examples() {
        let enc = |v| {
            let mut out = Vec::new();
            pb::varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        let mut out = Vec::new();
        pb::varint_field(&mut out, ANY_INT, -1i64 as u64);
        assert_eq!(fields(&out), [(ANY_INT, Wire::Varint(u64::MAX))]);
    }

    #[test]
    fn nested_lengths_widen_when_the_body_is_long() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let text = "x".repeat(len);
            let mut out = Vec::new();
            pb::message(&mut out, 3, |out| {
                pb::message(out, 1, |out| pb::string(out, 2, &text));
                pb::uint(out, 4, 9);
            });
            let outer = msg(&out, 3);
            assert_eq!(string(msg(outer, 1), 2), text);
            assert_eq!(varint(outer, 4), 9);
        }
        // A short message is byte-exact: key 0x1a, length 4, then the body.
        let mut out = Vec::new();
        pb::message(&mut out, 3, |out| pb::string(out, 1, "ab"));
        assert_eq!(out, [0x1a, 0x04, 0x0a, 0x02, b'a', b'b']);
    }

    #[test]
    fn defaults_are_omitted_but_oneof_values_are_not() {
        let mut out = Vec::new();
        pb::uint(&mut out, 1, 0);
        pb::opt_string(&mut out, 2, "");
        pb::packed_fixed64(&mut out, 3, &[]);
        pb::packed_double(&mut out, 4, &[]);
        assert!(out.is_empty());
        any_value(&mut out, &AttrValue::Int(0));
        any_value(&mut out, &AttrValue::Bool(false));
        any_value(&mut out, &AttrValue::Str(String::new()));
        assert_eq!(
            fields(&out),
            [
                (ANY_INT, Wire::Varint(0)),
                (ANY_BOOL, Wire::Varint(0)),
                (ANY_STRING, Wire::Len(b"")),
            ]
        );
    }

    // -- traces ---------------------------------------------------------------

    #[test]
    fn traces_carry_resource_scope_and_spans() {
        let mut server = span("POST /v1/chat/completions", 1, Some(9));
        server.kind = SpanKind::Server;
        server.attributes = vec![
            ("http.request.method", AttrValue::Str("POST".into())),
            ("http.response.status_code", AttrValue::Int(200)),
        ];
        let mut client = span("chat mock-1", 2, Some(1));
        client.kind = SpanKind::Client;
        client.attributes = vec![
            ("gen_ai.operation.name", AttrValue::Str("chat".into())),
            ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
            ("test.negative", AttrValue::Int(-5)),
            ("test.ratio", AttrValue::Double(0.25)),
            ("test.flag", AttrValue::Bool(true)),
            (
                "gen_ai.response.finish_reasons",
                AttrValue::StrArray(vec!["stop".into(), "length".into()]),
            ),
        ];
        let mut failed = span("chat llama", 3, None);
        failed.error = Some("upstream refused the connection".into());

        let mut out = vec![0xee]; // appends: what was there stays
        encode_traces("my-router", &[server, client, failed], &mut out);
        assert_eq!(out[0], 0xee);
        let body = &out[1..];

        let rs = msg(body, 1);
        let resource = attrs(msg(rs, 1), 1);
        assert_eq!(resource.len(), 1);
        assert_eq!(string(attr(&resource, "service.name"), 1), "my-router");
        let ss = msg(rs, 2);
        let scope = msg(ss, 1);
        assert_eq!(string(scope, 1), "opensourcellmrouter");
        assert_eq!(string(scope, 2), env!("CARGO_PKG_VERSION"));

        let spans = msgs(ss, 2);
        assert_eq!(spans.len(), 3);
        let [s, c, f] = [spans[0], spans[1], spans[2]];

        assert_eq!(msg(s, 1), TRACE);
        assert_eq!(msg(s, 2), [1; 8]);
        assert_eq!(msg(s, 4), [9; 8]);
        assert_eq!(string(s, 5), "POST /v1/chat/completions");
        assert_eq!(varint(s, 6), 2); // SERVER
        assert_eq!(fixed(s, 7), 1_700_000_000_000_000_000);
        assert_eq!(fixed(s, 8), 1_700_000_000_250_000_000);
        let a = attrs(s, 9);
        assert_eq!(string(attr(&a, "http.request.method"), 1), "POST");
        assert_eq!(varint(attr(&a, "http.response.status_code"), 3), 200);
        assert!(absent(s, 15), "UNSET status is not written");

        assert_eq!(msg(c, 4), [1; 8]);
        assert_eq!(varint(c, 6), 3); // CLIENT
        let a = attrs(c, 9);
        assert_eq!(a.len(), 6);
        assert_eq!(a[0].0, "gen_ai.operation.name", "order kept");
        assert_eq!(varint(attr(&a, "test.negative"), 3) as i64, -5);
        assert_eq!(f64::from_bits(fixed(attr(&a, "test.ratio"), 4)), 0.25);
        assert_eq!(varint(attr(&a, "test.flag"), 2), 1);
        let reasons: Vec<&str> = msgs(msg(attr(&a, "gen_ai.response.finish_reasons"), 5), 1)
            .into_iter()
            .map(|v| string(v, 1))
            .collect();
        assert_eq!(reasons, ["stop", "length"]);

        assert!(absent(f, 4), "a root span has no parent");
        assert_eq!(varint(f, 6), 1); // INTERNAL
        let status = msg(f, 15);
        assert_eq!(varint(status, 3), 2); // ERROR
        assert_eq!(string(status, 2), "upstream refused the connection");
    }

    #[test]
    fn long_values_and_empty_batches_encode() {
        let mut s = span("big", 1, None);
        s.attributes = vec![("big", AttrValue::Str("é".repeat(20_000)))];
        let mut out = Vec::new();
        encode_traces("svc", &[s], &mut out);
        let spans = decode_spans(&out);
        assert_eq!(string(attr(&attrs(spans[0], 9), "big"), 1).len(), 40_000);

        let mut out = Vec::new();
        encode_traces("svc", &[], &mut out);
        assert!(decode_spans(&out).is_empty());
    }

    // -- metrics --------------------------------------------------------------

    fn sum(name: &'static str, provider: &str, value: Number) -> SumPoint {
        SumPoint {
            name,
            unit: "{request}",
            description: "Requests",
            attributes: vec![("provider", AttrValue::Str(provider.into()))],
            value,
            monotonic: true,
        }
    }

    #[test]
    fn metrics_group_points_by_name() {
        let mut in_flight = GaugePoint {
            name: "in_flight",
            unit: "",
            description: "",
            attributes: Vec::new(),
            value: Number::from(-2i64),
        };
        let mut lines = sum("log.lines", "x", Number::from(5u64));
        lines.monotonic = false;
        lines.attributes.clear();
        let m = MetricsData {
            start_unix_ns: 111,
            time_unix_ns: 222,
            sums: vec![
                sum("requests", "mock", Number::from(3u64)),
                lines,
                sum("requests", "llama", Number::from(u64::MAX)),
            ],
            gauges: vec![in_flight.clone(), {
                in_flight.name = "load";
                in_flight.value = Number::from(0.5);
                in_flight
            }],
            histograms: vec![HistPoint {
                name: "duration",
                unit: "s",
                description: "Request duration",
                attributes: vec![("provider", AttrValue::Str("mock".into()))],
                count: 10,
                sum: 3.25,
                bounds: vec![0.01, 0.1, 1.0],
                bucket_counts: vec![1, 2, 3, 4],
            }],
        };
        let mut out = Vec::new();
        encode_metrics("svc", &m, &mut out);

        let rm = msg(&out, 1);
        assert_eq!(
            string(attr(&attrs(msg(rm, 1), 1), "service.name"), 1),
            "svc"
        );
        let sm = msg(rm, 2);
        assert_eq!(string(msg(sm, 1), 1), "opensourcellmrouter");
        let metrics = msgs(sm, 2);
        let names: Vec<&str> = metrics.iter().map(|m| string(m, 1)).collect();
        assert_eq!(
            names,
            ["requests", "log.lines", "in_flight", "load", "duration"]
        );

        let requests = metrics[0];
        assert_eq!(string(requests, 2), "Requests");
        assert_eq!(string(requests, 3), "{request}");
        let s = msg(requests, 7);
        assert_eq!(varint(s, 2), 2); // CUMULATIVE
        assert_eq!(varint(s, 3), 1); // monotonic
        let points = msgs(s, 1);
        assert_eq!(points.len(), 2);
        assert_eq!(fixed(points[0], 2), 111);
        assert_eq!(fixed(points[0], 3), 222);
        assert_eq!(fixed(points[0], 6), 3);
        assert_eq!(string(attr(&attrs(points[0], 7), "provider"), 1), "mock");
        assert_eq!(fixed(points[1], 6), i64::MAX as u64, "u64 saturates");
        assert_eq!(string(attr(&attrs(points[1], 7), "provider"), 1), "llama");

        let s = msg(metrics[1], 7);
        assert!(absent(s, 3), "not monotonic");
        assert!(
            absent(metrics[2], 2) && absent(metrics[2], 3),
            "empty strings omitted"
        );

        let g = msgs(msg(metrics[2], 5), 1);
        assert_eq!(g.len(), 1);
        assert!(absent(g[0], 2), "a gauge point has no start time");
        assert_eq!(fixed(g[0], 3), 222);
        assert_eq!(fixed(g[0], 6) as i64, -2);
        let g = msgs(msg(metrics[3], 5), 1);
        assert_eq!(f64::from_bits(fixed(g[0], 4)), 0.5);

        let h = msg(metrics[4], 9);
        assert_eq!(varint(h, 2), 2);
        let p = msgs(h, 1);
        assert_eq!(p.len(), 1);
        assert_eq!(fixed(p[0], 2), 111);
        assert_eq!(fixed(p[0], 4), 10);
        assert_eq!(f64::from_bits(fixed(p[0], 5)), 3.25);
        assert_eq!(packed_u64(p[0], 6), [1, 2, 3, 4]);
        let bounds: Vec<f64> = packed_u64(p[0], 7)
            .into_iter()
            .map(f64::from_bits)
            .collect();
        assert_eq!(bounds, [0.01, 0.1, 1.0]);
        assert_eq!(string(attr(&attrs(p[0], 9), "provider"), 1), "mock");
    }

    #[test]
    fn empty_metrics_encode() {
        let mut out = Vec::new();
        encode_metrics("svc", &MetricsData::default(), &mut out);
        assert!(msgs(msg(msg(&out, 1), 2), 2).is_empty());
    }

    // -- endpoint and response parsing ---------------------------------------

    #[test]
    fn endpoints_parse() {
        let e = parse_endpoint("http://localhost:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 4318));
        assert_eq!(
            (e.prefix.as_str(), e.host_header.as_str()),
            ("", "localhost:4318")
        );
        let e = parse_endpoint(" HTTP://collector/otlp/ ").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("collector", 80, "/otlp")
        );
        assert_eq!(e.host_header, "collector");
        assert_eq!(e.url, "HTTP://collector/otlp");
        let e = parse_endpoint("http://[::1]:4318/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4318));
        assert_eq!(e.host_header, "[::1]:4318");
        let e = parse_endpoint("http://[::1]").unwrap();
        assert_eq!((e.port, e.host_header.as_str()), (80, "[::1]"));

        let err = parse_endpoint("https://otel.example:4318").unwrap_err();
        assert!(err.contains("https:// is not supported yet"), "{err}");
        for bad in [
            "localhost:4318",
            "http://",
            "http://:4318",
            "http://host:0",
            "http://host:99999",
            "http://host:+1",
            "http://::1:4318",
            "http://[::1",
            "http://[::1]x",
            "http://user@host",
            "http://host/a b",
            "http://host/?q",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_endpoints_are_refused_at_start() {
        let err = Exporter::start("https://otel.example", "svc")
            .err()
            .unwrap();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn response_heads_parse() {
        assert_eq!(response_status(b""), Head::Incomplete);
        assert_eq!(response_status(b"HTT"), Head::Incomplete);
        assert_eq!(response_status(b"HTTP/1.1 200 OK"), Head::Incomplete);
        assert_eq!(response_status(b"HTTP/1.1 200 OK\r\n"), Head::Final(200));
        assert_eq!(response_status(b"HTTP/1.0 204\r\n"), Head::Final(204));
        assert_eq!(
            response_status(b"HTTP/1.1 503 Busy\r\n\r\n"),
            Head::Final(503)
        );
        assert_eq!(
            response_status(b"HTTP/1.1 100 Continue\r\n"),
            Head::Incomplete
        );
        assert_eq!(
            response_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            Head::Interim(25)
        );
        assert_eq!(response_status(b"SSH-2.0"), Head::Invalid);
        assert_eq!(response_status(b"HTTP/2 200\r\n"), Head::Invalid);
        assert_eq!(response_status(b"HTTP/1.1 20x OK\r\n"), Head::Invalid);
        assert_eq!(response_status(b"HTTP/1.1 2000\r\n"), Head::Invalid);
    }

    #[test]
    fn one_warning_per_failure_streak() {
        let mut s = Streak::default();
        assert!(!s.succeeded());
        assert!(s.failed());
        assert!(!s.failed());
        assert!(!s.failed());
        assert!(s.succeeded());
        assert!(!s.succeeded());
        assert!(s.failed());
    }

    // -- the queue, without a thread -----------------------------------------

    #[test]
    fn a_full_queue_refuses_and_counts() {
        let e = Exporter::unstarted();
        for i in 0..QUEUE_SPANS {
            assert!(e.offer_span(span("s", 1, None)), "{i}");
        }
        assert!(!e.offer_span(span("s", 1, None)));
        assert_eq!(e.dropped_spans(), 1);
        let mut more: Vec<SpanData> = (0..10).map(|_| span("s", 1, None)).collect();
        assert_eq!(e.offer_spans(&mut more), 0);
        assert!(more.is_empty());
        assert_eq!(e.dropped_spans(), 11);

        for _ in 0..QUEUE_METRICS {
            assert!(e.offer_metrics(MetricsData::default()));
        }
        assert!(!e.offer_metrics(MetricsData::default()));
        assert_eq!(e.dropped_batches(), 1);
        assert_eq!(e.exported_spans(), 0);
    }

    #[test]
    fn offer_spans_takes_what_fits() {
        let e = Exporter::unstarted();
        let mut batch: Vec<SpanData> = (0..QUEUE_SPANS - 3).map(|_| span("s", 1, None)).collect();
        assert_eq!(e.offer_spans(&mut batch), QUEUE_SPANS - 3);
        let mut batch: Vec<SpanData> = (0..5).map(|_| span("s", 1, None)).collect();
        assert_eq!(e.offer_spans(&mut batch), 3);
        assert!(batch.is_empty());
        assert_eq!(e.dropped_spans(), 2);
    }

    #[test]
    fn a_stopped_exporter_refuses_offers() {
        let e = Exporter::unstarted();
        e.handle.shared.stop(Instant::now());
        assert!(!e.offer_span(span("s", 1, None)));
        assert!(!e.offer_metrics(MetricsData::default()));
        assert_eq!(e.offer_spans(&mut vec![span("s", 1, None)]), 0);
        assert_eq!((e.dropped_spans(), e.dropped_batches()), (2, 1));
    }

    // -- the exporter against a local collector ------------------------------

    #[derive(Debug)]
    struct Request {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A collector on a loopback port: records each request on the channel,
    /// then answers with `answer`. Runs until the test process ends.
    fn collector(answer: &'static str) -> (String, mpsc::Receiver<Request>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    headers.push((k.to_owned(), v.trim().to_owned()));
                }
                let mut req = Request {
                    line: line.trim_end().to_owned(),
                    headers,
                    body: Vec::new(),
                };
                let len: usize = req.header("content-length").unwrap().parse().unwrap();
                req.body.resize(len, 0);
                reader.read_exact(&mut req.body).unwrap();
                tx.send(req).unwrap();
                let mut conn = reader.into_inner();
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        (url, rx)
    }

    const OK: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn exports_batches_to_the_collector() {
        // An interim 100 first: skipped.
        let (url, requests) =
            collector("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let e = Exporter::start(&format!("{url}/"), "test-svc").unwrap();
        let clone = e.clone();
        for id in 1..=3 {
            assert!(clone.offer_span(span("one", id, None)));
        }
        let mut batch: Vec<SpanData> = (0..1200).map(|_| span("many", 7, Some(1))).collect();
        assert_eq!(e.offer_spans(&mut batch), 1200);
        assert!(e.offer_metrics(MetricsData {
            sums: vec![sum("requests", "mock", Number::from(1u64))],
            ..MetricsData::default()
        }));
        e.flush_and_stop(Duration::from_secs(60));
        assert_eq!(e.exported_spans(), 1203);
        assert_eq!((e.dropped_spans(), e.dropped_batches()), (0, 0));
        assert!(!e.offer_span(span("late", 1, None)), "stopped");

        let got: Vec<Request> = requests.try_iter().collect();
        assert_eq!(e.exported_batches(), got.len() as u64);
        let host = url.trim_start_matches("http://");
        let mut spans = 0;
        let mut metrics = 0;
        for r in &got {
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
            assert_eq!(r.header("host"), Some(host));
            match r.line.as_str() {
                "POST /v1/traces HTTP/1.1" => {
                    let n = decode_spans(&r.body).len();
                    assert!((1..=BATCH_SPANS).contains(&n), "{n}");
                    spans += n;
                }
                "POST /v1/metrics HTTP/1.1" => {
                    let sm = msg(msg(&r.body, 1), 2);
                    assert_eq!(string(msgs(sm, 2)[0], 1), "requests");
                    metrics += 1;
                }
                other => panic!("{other}"),
            }
        }
        assert_eq!((spans, metrics), (1203, 1));
        // Later calls return at once.
        e.flush_and_stop(Duration::from_secs(60));
    }

    #[test]
    fn a_prefix_is_kept_in_the_path() {
        let (url, requests) = collector(OK);
        let e = Exporter::start(&format!("{url}/otlp"), "svc").unwrap();
        assert!(e.offer_span(span("s", 1, None)));
        e.flush_and_stop(Duration::from_secs(60));
        assert_eq!(e.exported_spans(), 1);
        assert_eq!(
            requests.recv().unwrap().line,
            "POST /otlp/v1/traces HTTP/1.1"
        );
    }

    #[test]
    fn a_failing_collector_drops_batches() {
        let (url, requests) =
            collector("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let e = Exporter::start(&url, "svc").unwrap();
        for id in 1..=5 {
            assert!(e.offer_span(span("s", id, None)));
        }
        assert!(e.offer_metrics(MetricsData::default()));
        e.flush_and_stop(Duration::from_secs(60));
        let tried = requests.try_iter().count() as u64;
        assert!(tried >= 2, "{tried}");
        assert_eq!(e.dropped_batches(), tried);
        assert_eq!((e.exported_spans(), e.dropped_spans()), (0, 5));
    }

    #[test]
    fn a_closed_port_drops_batches_and_offers_never_block() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = Exporter::start(&format!("http://127.0.0.1:{port}"), "svc").unwrap();
        let offered = 100_000u64;
        let accepted = (0..offered)
            .filter(|&i| e.offer_span(span("s", (i % 255) as u8 + 1, None)))
            .count() as u64;
        assert!(e.offer_metrics(MetricsData::default()));
        e.flush_and_stop(Duration::from_secs(60));
        assert!(accepted >= QUEUE_SPANS as u64);
        assert_eq!(e.exported_spans(), 0);
        assert_eq!(e.dropped_spans(), offered);
        assert!(e.dropped_batches() >= 2);
    }

    #[test]
    fn a_silent_collector_does_not_hold_the_drain() {
        // Accepts connections (the kernel's backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let e = Exporter::start(&url, "svc").unwrap();
        assert!(e.offer_span(span("s", 1, None)));
        e.flush_and_stop(Duration::from_millis(300));
        assert_eq!(e.exported_spans(), 0);
        drop(listener);
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread() {
        let (url, _requests) = collector(OK);
        let e = Exporter::start(&url, "svc").unwrap();
        let shared = e.handle.shared.clone();
        drop(e);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut q = shared.lock();
        while !q.done && Instant::now() < deadline {
            q = shared
                .finished
                .wait_timeout(q, Duration::from_secs(1))
                .unwrap()
                .0;
        }
        assert!(q.done);
    }
}
