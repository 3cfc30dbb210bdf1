//! Fixed OTLP batches for the Python tests in `tests/otel`, which decode them
//! with the official opentelemetry-proto classes (`tests/otel/test_otlp.py`).
//!
//! - `OTLP_FIXTURE_DIR` set: the encoded batches are written there as
//!   `traces.pb` and `metrics.pb`.
//! - `OTLP_RECEIVER_URL` set: the same batches go through a real
//!   [`Exporter`] to that collector (the Python receiver).
//!
//! Without them the batches are only built and encoded (a smoke test), so
//! `cargo test` stays hermetic. Keep the values in step with `test_otlp.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::time::Duration;

use opensourcellmrouter::observe::otlp::{
    AttrValue, Exporter, GaugePoint, HistPoint, MetricsData, Number, SpanData, SpanKind, SumPoint,
    encode_metrics, encode_traces,
};
use opensourcellmrouter::observe::trace::parse_traceparent;

const SERVICE: &str = "otlp-fixture";
/// What a client sent; the server span continues this trace.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SERVER_SPAN: [u8; 8] = [0x11; 8];
const CLIENT_SPAN: [u8; 8] = [0x22; 8];
const FAILED_SPAN: [u8; 8] = [0x33; 8];
const T0: u64 = 1_700_000_000_000_000_000;

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_owned())
}

fn spans() -> Vec<SpanData> {
    let parent = parse_traceparent(TRACEPARENT.as_bytes()).unwrap();
    let server = SpanData {
        trace_id: parent.trace_id,
        span_id: SERVER_SPAN,
        parent_span_id: parent.parent_span_id,
        name: "POST /v1/chat/completions".to_owned(),
        kind: SpanKind::Server,
        start_unix_ns: T0,
        end_unix_ns: T0 + 250_000_000,
        attributes: vec![
            ("http.request.method", s("POST")),
            ("url.path", s("/v1/chat/completions")),
            ("http.response.status_code", AttrValue::Int(200)),
            ("router.overhead_ratio", AttrValue::Double(0.125)),
            ("router.streamed", AttrValue::Bool(false)),
        ],
        error: None,
    };
    // A failed first attempt, then the one that answered.
    let failed = SpanData {
        trace_id: parent.trace_id,
        span_id: FAILED_SPAN,
        parent_span_id: Some(SERVER_SPAN),
        name: "chat llama-3".to_owned(),
        kind: SpanKind::Client,
        start_unix_ns: T0 + 1_000_000,
        end_unix_ns: T0 + 2_000_000,
        attributes: vec![
            ("gen_ai.operation.name", s("chat")),
            ("gen_ai.system", s("openai")),
            ("gen_ai.request.model", s("llama-3")),
            ("error.type", s("connect_failed")),
        ],
        error: Some("cannot connect to 127.0.0.1:8080: connection refused".to_owned()),
    };
    let client = SpanData {
        trace_id: parent.trace_id,
        span_id: CLIENT_SPAN,
        parent_span_id: Some(SERVER_SPAN),
        name: "chat mock-1".to_owned(),
        kind: SpanKind::Client,
        start_unix_ns: T0 + 3_000_000,
        end_unix_ns: T0 + 240_000_000,
        attributes: vec![
            ("gen_ai.operation.name", s("chat")),
            ("gen_ai.system", s("openai")),
            ("gen_ai.request.model", s("mock-1")),
            ("gen_ai.response.model", s("mock-1-2025")),
            ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
            ("gen_ai.usage.output_tokens", AttrValue::Int(34)),
            (
                "gen_ai.response.finish_reasons",
                AttrValue::StrArray(vec!["stop".to_owned()]),
            ),
            // Long enough for multi-byte length prefixes at every level.
            ("router.note", s(&"é".repeat(10_000))),
        ],
        error: None,
    };
    vec![server, failed, client]
}

fn metrics() -> MetricsData {
    let provider = |p: &str, status: i64| {
        vec![
            ("provider", s(p)),
            ("http.response.status_code", AttrValue::Int(status)),
        ]
    };
    let requests = |attributes, value: u64| SumPoint {
        name: "osr.requests",
        unit: "{request}",
        description: "Requests answered",
        attributes,
        value: Number::from(value),
        monotonic: true,
    };
    let duration = |attributes, count, sum, bucket_counts| HistPoint {
        name: "osr.request.duration",
        unit: "s",
        description: "Total request duration",
        attributes,
        count,
        sum,
        bounds: vec![0.005, 0.01, 0.1, 1.0],
        bucket_counts,
    };
    MetricsData {
        start_unix_ns: T0,
        time_unix_ns: T0 + 60_000_000_000,
        sums: vec![
            requests(provider("mock", 200), 7),
            SumPoint {
                name: "osr.log.lines.dropped",
                unit: "{line}",
                description: "Log lines dropped",
                attributes: Vec::new(),
                value: Number::from(0u64),
                monotonic: true,
            },
            requests(provider("llama", 502), 2),
        ],
        gauges: vec![GaugePoint {
            name: "osr.in_flight",
            unit: "{request}",
            description: "Requests in flight",
            attributes: Vec::new(),
            value: Number::from(3i64),
        }],
        histograms: vec![
            duration(provider("mock", 200), 7, 1.75, vec![1, 2, 3, 1, 0]),
            duration(provider("llama", 502), 2, 0.004, vec![2, 0, 0, 0, 0]),
        ],
    }
}

#[test]
fn writes_fixtures() {
    let mut traces = Vec::new();
    encode_traces(SERVICE, &spans(), &mut traces);
    let mut metrics_pb = Vec::new();
    encode_metrics(SERVICE, &metrics(), &mut metrics_pb);
    assert!(traces.len() > 20_000 && !metrics_pb.is_empty());
    let Some(dir) = std::env::var_os("OTLP_FIXTURE_DIR") else {
        eprintln!("OTLP_FIXTURE_DIR unset: fixtures not written (tests/otel sets it)");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::write(dir.join("traces.pb"), &traces).unwrap();
    std::fs::write(dir.join("metrics.pb"), &metrics_pb).unwrap();
}

#[test]
fn exports_to_receiver() {
    let Ok(url) = std::env::var("OTLP_RECEIVER_URL") else {
        eprintln!("OTLP_RECEIVER_URL unset: nothing exported (tests/otel sets it)");
        return;
    };
    let exporter = Exporter::start(&url, SERVICE).unwrap();
    let batch = spans();
    let n = batch.len() as u64;
    for span in batch {
        assert!(exporter.offer_span(span));
    }
    assert!(exporter.offer_metrics(metrics()));
    exporter.flush_and_stop(Duration::from_secs(30));
    assert_eq!(exporter.exported_spans(), n);
    assert_eq!(exporter.dropped_spans(), 0);
    assert_eq!(exporter.dropped_batches(), 0);
}
