//! What the lifecycle records for `/metrics` (per worker, see
//! `observe::metrics`), the exposition with the gauges read at scrape time,
//! and handing a `/dashboard/events` connection to the feed.

use std::os::fd::{AsRawFd, FromRawFd};

use super::Core;
use super::ctx::Ctx;
use crate::observe::metrics::{Metric, Sampled, render};

/// The chat endpoints: the requests the dashboard feed and the GenAI
/// metrics are about.
pub fn is_chat_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/messages" | "/v1/messages/count_tokens" | "/v1/responses"
    )
}

fn client_format(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "openai",
        "/v1/messages" | "/v1/messages/count_tokens" => "anthropic",
        "/v1/responses" => "responses",
        _ => "none",
    }
}

/// Count one finished request (from the lifecycle's end, once).
pub fn record(core: &Core, ctx: &Ctx<'_>) {
    let m = &core.metrics;
    let provider = ctx.provider_name().unwrap_or("none");
    let model = ctx
        .sent_model
        .as_deref()
        .or(ctx.requested_model.as_deref())
        .unwrap_or("");
    let model = crate::error::bounded(model, 128);
    let mut sbuf = [0u8; 5];
    let status = status_text(ctx.status, &mut sbuf);
    m.series_cached(
        Metric::Requests,
        &[
            ("provider", provider),
            ("model", &model),
            ("client_format", client_format(ctx.path)),
            ("status", status),
        ],
    )
    .add(1);
    if !is_chat_path(ctx.path) {
        return;
    }
    let ps = m.provider(provider);
    ps.duration.observe(ctx.t0.elapsed().as_secs_f64());
    ps.overhead.observe(ctx.overhead_us as f64 / 1e6);
    if let Some(ttft) = ctx.ttft_ms {
        ps.ttft.observe(ttft / 1e3);
        let first_byte = (ttft * 1e3 - ctx.overhead_us as f64).max(0.0) / 1e6;
        ps.first_byte.observe(first_byte);
    }
    if let Some(n) = ctx.input_tokens {
        ps.input_tokens.observe(n as f64);
    }
    if let Some(n) = ctx.output_tokens {
        ps.output_tokens.observe(n as f64);
    }
    for (&pidx, (ep, outcome, _)) in ctx.attempts.iter().zip(&ctx.attempt_outcomes) {
        let name = ctx.provider_name_at(pidx).unwrap_or("none");
        let endpoint = ep.and_then(|e| core.snap.endpoint_url(e)).unwrap_or("");
        m.series(
            Metric::Attempts,
            &[
                ("provider", name),
                ("endpoint", endpoint),
                ("outcome", outcome),
            ],
        )
        .add(1);
        if !matches!(*outcome, "ok" | "client_closed") {
            m.series(
                Metric::UpstreamErrors,
                &[("provider", name), ("kind", outcome)],
            )
            .add(1);
        }
    }
    if ctx
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("upstream_truncated"))
    {
        m.series(
            Metric::UpstreamErrors,
            &[("provider", provider), ("kind", "truncated")],
        )
        .add(1);
    }
    if ctx.attempts.len() > 1 {
        m.series(Metric::Failovers, &[("provider", provider)])
            .add(ctx.attempts.len() as u64 - 1);
    }
}

/// `n` in decimal, written into `buf` (no allocation per request).
fn status_text(n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// `GET /metrics`: every worker's counters and histograms, then the state
/// read now (endpoints, log, config generation, feed).
pub fn exposition(core: &Core) -> String {
    let snap = &core.snap;
    let now = crate::observe::now_ms();
    let mut healthy = Vec::new();
    let mut load = Vec::new();
    let mut ejections = Vec::new();
    for (i, e) in snap.eps.iter().enumerate() {
        let p = &snap.config.providers[e.provider];
        if p.format == crate::config::ProviderFormat::Mock {
            continue;
        }
        let labels = vec![
            ("provider", p.name.clone()),
            ("endpoint", snap.endpoint_url(i).unwrap_or("").to_string()),
        ];
        healthy.push((labels.clone(), f64::from(u8::from(e.health.usable(now)))));
        load.push((labels.clone(), f64::from(e.health.load())));
        ejections.push((
            labels,
            e.health
                .ejected_total
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        ));
    }
    let queued = snap
        .config
        .providers
        .iter()
        .zip(&snap.queued)
        .filter(|(p, _)| p.queue_size > 0)
        .map(|(p, q)| {
            (
                vec![("provider", p.name.clone())],
                f64::from(q.load(std::sync::atomic::Ordering::Relaxed)),
            )
        })
        .collect();
    let (written, dropped) = snap.log.as_ref().map_or((0, 0), |l| {
        let c = l.counters();
        (
            c.written.load(std::sync::atomic::Ordering::Relaxed),
            c.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let one = |v: f64| vec![(Vec::new(), v)];
    use crate::observe::feed;
    let sampled = [
        Sampled {
            name: "router_endpoint_healthy",
            kind: "gauge",
            help: "1 when the endpoint may be picked (not ejected, cooling down or probed down).",
            points: healthy,
        },
        Sampled {
            name: "router_endpoint_in_flight",
            kind: "gauge",
            help: "Requests in flight on the endpoint (counted when its provider balances or limits).",
            points: load,
        },
        Sampled {
            name: "router_endpoint_ejections_total",
            kind: "counter",
            help: "Times the endpoint was ejected by passive health.",
            points: ejections,
        },
        Sampled {
            name: "router_queue_waiting",
            kind: "gauge",
            help: "Requests waiting for a free slot, per provider with a queue.",
            points: queued,
        },
        Sampled {
            name: "router_log_lines_written_total",
            kind: "counter",
            help: "Log lines written to the JSONL log.",
            points: one(written as f64),
        },
        Sampled {
            name: "router_log_lines_dropped_total",
            kind: "counter",
            help: "Log lines dropped because the log thread fell behind.",
            points: one(dropped as f64),
        },
        Sampled {
            name: "router_config_generation",
            kind: "gauge",
            help: "The config in use: 0 at start, +1 per reload.",
            points: one(snap.generation as f64),
        },
        Sampled {
            name: "router_dashboard_subscribers",
            kind: "gauge",
            help: "Clients reading /dashboard/events.",
            points: one(feed::subscribers() as f64),
        },
        Sampled {
            name: "router_dashboard_dropped_subscribers_total",
            kind: "counter",
            help: "Feed subscribers dropped for not reading fast enough.",
            points: one(
                feed::DROPPED_SUBSCRIBERS.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
        },
        Sampled {
            name: "router_dashboard_dropped_events_total",
            kind: "counter",
            help: "Feed events dropped because the fan-out thread fell behind.",
            points: one(feed::DROPPED_EVENTS.load(std::sync::atomic::Ordering::Relaxed) as f64),
        },
    ];
    let mut all: Vec<Sampled> = sampled.into_iter().collect();
    if let Some(e) = super::telemetry::current() {
        all.push(Sampled {
            name: "router_telemetry_exported_spans_total",
            kind: "counter",
            help: "Spans the OTLP collector accepted.",
            points: one(e.exported_spans() as f64),
        });
        all.push(Sampled {
            name: "router_telemetry_dropped_spans_total",
            kind: "counter",
            help: "Spans dropped: queue full, or their batch failed to export.",
            points: one(e.dropped_spans() as f64),
        });
        all.push(Sampled {
            name: "router_telemetry_dropped_batches_total",
            kind: "counter",
            help: "OTLP export requests that failed (refused, timed out, non-2xx).",
            points: one(e.dropped_batches() as f64),
        });
    }
    render(&all)
}

/// Give the client connection to the feed's fan-out thread (a duplicate of
/// its descriptor: the worker's copy closes when the connection loop ends,
/// without a shutdown, so the socket lives on with the feed).
pub fn hand_to_feed(stream: &monoio::net::TcpStream) -> bool {
    // SAFETY: duplicating a descriptor this connection owns and is open.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is a fresh descriptor we own (from dup).
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    crate::observe::feed::subscribe(std_stream)
}
