//! Traces of requests (OpenTelemetry, `[telemetry]`): the request's trace
//! context (an incoming W3C `traceparent` continued, else a new trace), a
//! server span per request with the GenAI attributes and a client span per
//! upstream attempt, whose id goes upstream in `traceparent` so vLLM and
//! others join the trace. Spans are handed to the exporter thread
//! (`observe::otlp`), never sent from a worker; a full queue drops them.

use super::Core;
use super::ctx::Ctx;
use super::request::Request;
use crate::observe::otlp::{AttrValue, SpanData, SpanKind};
use crate::observe::trace;

/// One request's trace context.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// This request's (server) span.
    pub span_id: [u8; 8],
    /// The caller's span, from its `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    /// Unix ns when the request started.
    pub start_ns: u64,
}

/// Unix time in ns now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The trace of a request starting now, when telemetry is on.
pub fn begin(core: &Core, req: &Request<'_>) -> Option<Trace> {
    core.snap.exporter.as_ref()?;
    let parent = req.header("traceparent").and_then(trace::parse_traceparent);
    let mut rng = core.rng.borrow_mut();
    let mut next = || rng.next_u64();
    let trace_id = parent
        .map(|p| p.trace_id)
        .unwrap_or_else(|| trace::new_trace_id(&mut next));
    let span_id = trace::new_span_id(&mut next);
    let ratio = core.snap.config.telemetry.sample_ratio;
    Some(Trace {
        trace_id,
        span_id,
        parent: parent.and_then(|p| p.parent_span_id),
        sampled: trace::should_sample(parent.as_ref(), &trace_id, ratio),
        start_ns: now_ns(),
    })
}

/// A new span id for an upstream attempt and the `traceparent` to send with it.
pub fn attempt(core: &Core, t: &Trace) -> ([u8; 8], [u8; 55]) {
    let mut rng = core.rng.borrow_mut();
    let id = trace::new_span_id(&mut || rng.next_u64());
    (id, trace::format_traceparent(&t.trace_id, &id, t.sampled))
}

/// The request ended: its spans go to the exporter (when sampled).
pub fn finish(core: &Core, ctx: &Ctx<'_>) {
    let (Some(t), Some(exporter)) = (&ctx.trace, core.snap.exporter.as_ref()) else {
        return;
    };
    if !t.sampled {
        return;
    }
    let end_ns = now_ns();
    let model = ctx.requested_model.clone().unwrap_or_default();
    let provider = ctx.provider_name();
    let system = ctx
        .provider
        .and_then(|i| core.snap.config.providers.get(i))
        .map(|p| p.format.as_str());
    let mut attrs: Vec<(&'static str, AttrValue)> = vec![
        ("gen_ai.operation.name", AttrValue::Str("chat".into())),
        ("gen_ai.request.model", AttrValue::Str(model.clone())),
        ("http.request.method", AttrValue::Str(ctx.method.into())),
        ("url.path", AttrValue::Str(ctx.path.into())),
        (
            "http.response.status_code",
            AttrValue::Int(i64::from(ctx.status)),
        ),
        ("router.request_id", AttrValue::Str(ctx.id.clone())),
        ("router.overhead_us", AttrValue::Int(ctx.overhead_us as i64)),
    ];
    if let Some(s) = system {
        attrs.push(("gen_ai.system", AttrValue::Str(s.into())));
        attrs.push(("gen_ai.provider.name", AttrValue::Str(s.into())));
    }
    if let Some(p) = provider {
        attrs.push(("router.provider", AttrValue::Str(p.into())));
    }
    if let Some(m) = &ctx.sent_model {
        attrs.push(("gen_ai.response.model", AttrValue::Str(m.clone())));
    }
    if let Some(n) = ctx.input_tokens {
        attrs.push(("gen_ai.usage.input_tokens", AttrValue::Int(n as i64)));
    }
    if let Some(n) = ctx.output_tokens {
        attrs.push(("gen_ai.usage.output_tokens", AttrValue::Int(n as i64)));
    }
    if let Some(f) = &ctx.finish_reason {
        attrs.push((
            "gen_ai.response.finish_reasons",
            AttrValue::StrArray(vec![f.clone()]),
        ));
    }
    let tags: Vec<String> = ctx.tag_names().map(str::to_string).collect();
    if !tags.is_empty() {
        attrs.push(("router.tags", AttrValue::StrArray(tags)));
    }
    if let Some(ms) = ctx.ttft_ms {
        attrs.push(("router.ttft_ms", AttrValue::Double(ms)));
    }
    let error = ctx
        .error
        .clone()
        .filter(|_| ctx.status >= 500 || ctx.status == 0);
    let server = SpanData {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent_span_id: t.parent,
        name: if model.is_empty() {
            "chat".to_string()
        } else {
            format!("chat {}", crate::error::bounded(&model, 128))
        },
        kind: SpanKind::Server,
        start_unix_ns: t.start_ns,
        end_unix_ns: end_ns,
        attributes: attrs,
        error,
    };
    exporter.offer_span(server);
    for ((&pidx, (ep, outcome, _)), (id, start, end)) in ctx
        .attempts
        .iter()
        .zip(&ctx.attempt_outcomes)
        .zip(&ctx.attempt_spans)
    {
        let name = ctx.provider_name_at(pidx).unwrap_or("");
        let mut attrs: Vec<(&'static str, AttrValue)> = vec![
            ("router.provider", AttrValue::Str(name.into())),
            ("router.outcome", AttrValue::Str((*outcome).into())),
        ];
        if let Some(url) = ep.and_then(|e| core.snap.endpoint_url(e)) {
            attrs.push(("url.full", AttrValue::Str(url.into())));
        }
        if *id == [0u8; 8] {
            // No upstream was contacted (every endpoint full).
            continue;
        }
        exporter.offer_span(SpanData {
            trace_id: t.trace_id,
            span_id: *id,
            parent_span_id: Some(t.span_id),
            name: format!("attempt {name}"),
            kind: SpanKind::Client,
            start_unix_ns: *start,
            end_unix_ns: (*end).max(*start),
            attributes: attrs,
            error: (!matches!(*outcome, "ok")).then(|| (*outcome).to_string()),
        });
    }
}

/// The process's exporter: started with the first config that enables
/// telemetry, kept across reloads while the endpoint and service name stay
/// the same (so queued spans are not lost), replaced when they change.
static EXPORTER: std::sync::Mutex<Option<(String, String, crate::observe::otlp::Exporter)>> =
    std::sync::Mutex::new(None);

/// When the process started counting (the start of cumulative metrics).
static STARTED_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The exporter for `cfg`, or why there is none (a startup warning).
pub fn exporter_for(
    cfg: &crate::config::TelemetryConfig,
) -> Result<Option<crate::observe::otlp::Exporter>, String> {
    if !cfg.enabled {
        return Ok(None);
    }
    let Ok(mut slot) = EXPORTER.lock() else {
        return Err("telemetry: the exporter lock is poisoned".into());
    };
    if let Some((endpoint, service, e)) = slot.as_ref()
        && *endpoint == cfg.otlp_endpoint
        && *service == cfg.service_name
    {
        return Ok(Some(e.clone()));
    }
    let e = crate::observe::otlp::Exporter::start(&cfg.otlp_endpoint, &cfg.service_name)
        .map_err(|why| format!("[telemetry] is enabled but nothing will be exported: {why}"))?;
    start_metrics_export(e.clone());
    *slot = Some((
        cfg.otlp_endpoint.clone(),
        cfg.service_name.clone(),
        e.clone(),
    ));
    Ok(Some(e))
}

/// The current exporter (for `/metrics` and the drain).
pub fn current() -> Option<crate::observe::otlp::Exporter> {
    EXPORTER.lock().ok()?.as_ref().map(|(_, _, e)| e.clone())
}

/// How often the metrics go out over OTLP.
pub const METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A thread that hands the merged metrics to `exporter` every
/// [`METRICS_INTERVAL`] (cumulative temporality), while it is the current one.
fn start_metrics_export(exporter: crate::observe::otlp::Exporter) {
    let _ = STARTED_NS.compare_exchange(
        0,
        now_ns(),
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    let started = STARTED_NS.load(std::sync::atomic::Ordering::Relaxed);
    let _ = std::thread::Builder::new()
        .name("otlp-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_INTERVAL);
                let still = EXPORTER
                    .lock()
                    .ok()
                    .and_then(|s| s.as_ref().map(|(_, _, e)| e.same(&exporter)))
                    .unwrap_or(false);
                if !still {
                    return;
                }
                exporter.offer_metrics(crate::observe::metrics::otlp_snapshot(started, now_ns()));
            }
        });
}

/// At exit: the last metrics, then whatever is queued, to the collector
/// (bounded by `timeout`).
pub fn flush_at_exit(timeout: std::time::Duration) {
    if let Some(e) = current() {
        let started = STARTED_NS.load(std::sync::atomic::Ordering::Relaxed);
        e.offer_metrics(crate::observe::metrics::otlp_snapshot(started, now_ns()));
        e.flush_and_stop(timeout);
    }
}
