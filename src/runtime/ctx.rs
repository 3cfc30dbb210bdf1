//! The per-request context: everything the log line and the `X-Router-*`
//! headers report, filled in phase by phase, and the log line itself
//! ([`Ctx::write_line`]), written once per request by the lifecycle's end.

use std::ops::Range;
use std::time::Instant;

use super::Core;
use super::Snapshot;
use crate::classify::TagSet;
use crate::error::RouterError;
use crate::http;

/// Per-request context: everything the log line and the `X-Router-*`
/// headers report, filled in phase by phase.
pub struct Ctx<'a> {
    snap: &'a Snapshot,
    pub id: String,
    pub ts_ms: u64,
    pub t0: Instant,
    pub method: &'a str,
    pub path: &'a str,
    pub requested_model: Option<String>,
    pub sent_model: Option<String>,
    pub provider: Option<usize>,
    pub tags: TagSet,
    pub plugins: Vec<String>,
    pub system: Option<String>,
    /// Span of the request's `messages` value in the request body.
    pub messages: Option<Range<usize>>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub status: u16,
    pub stream: bool,
    pub ttft_ms: Option<f64>,
    pub overhead_us: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub response_tags: Vec<&'static str>,
    pub attempts: Vec<usize>,
    /// Each attempt's endpoint (global index; none when the provider was
    /// full), outcome and duration (ms), in `attempts` order.
    pub attempt_outcomes: Vec<(Option<usize>, &'static str, u64)>,
    /// Non-fatal problems (a plugin's `post_response`/`on_end` error), in the log line.
    pub warnings: Vec<String>,
    /// Facts plugins record (response-healing on streams), in the log line.
    pub notes: Vec<String>,
    /// The provider's finish reason, when it was seen (traces).
    pub finish_reason: Option<String>,
    /// This request's trace (when `[telemetry] enabled`).
    pub trace: Option<super::telemetry::Trace>,
    /// Each attempt's span: id, start and end (unix ns), in `attempts` order.
    pub attempt_spans: Vec<([u8; 8], u64, u64)>,
}

impl<'a> Ctx<'a> {
    pub fn new(core: &'a Core, ts_ms: u64, t0: Instant, method: &'a str, path: &'a str) -> Ctx<'a> {
        Ctx {
            snap: &core.snap,
            id: core.request_id(ts_ms),
            ts_ms,
            t0,
            method,
            path,
            requested_model: None,
            sent_model: None,
            provider: None,
            tags: TagSet::default(),
            plugins: Vec::new(),
            system: None,
            messages: None,
            response: None,
            error: None,
            status: 0,
            stream: false,
            ttft_ms: None,
            overhead_us: 0,
            input_tokens: None,
            output_tokens: None,
            response_tags: Vec::new(),
            attempts: Vec::new(),
            attempt_outcomes: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            finish_reason: None,
            trace: None,
            attempt_spans: Vec::new(),
        }
    }

    pub fn tag_names(&self) -> impl Iterator<Item = &'a str> + use<'a, '_> {
        let names = self
            .snap
            .classifier
            .as_ref()
            .map_or(&[][..], |c| c.tag_names());
        self.tags
            .iter()
            .filter_map(move |i| names.get(i).map(String::as_str))
    }

    /// Record the span of the attempt that just ended (traced requests
    /// only; `start_ns` 0 = now).
    pub fn span_mark(&mut self, span_id: [u8; 8], start_ns: u64) {
        if self.trace.is_some() {
            let now = super::telemetry::now_ns();
            let start = if start_ns == 0 { now } else { start_ns };
            self.attempt_spans.push((span_id, start, now));
        }
    }

    pub fn set_provider(&mut self, idx: usize) {
        self.provider = Some(idx);
        self.attempts.push(idx);
    }

    pub fn provider_name_at(&self, idx: usize) -> Option<&'a str> {
        self.snap.config.providers.get(idx).map(|p| p.name.as_str())
    }

    pub fn provider_name(&self) -> Option<&'a str> {
        self.provider.and_then(|i| self.provider_name_at(i))
    }

    /// Record a router-made error.
    pub fn fail(&mut self, err: &RouterError) {
        self.status = err.status;
        self.error = Some(err.message.clone());
    }

    /// The `X-Router-*` headers known at this point.
    pub fn write_router_headers(&self, out: &mut Vec<u8>) {
        let mut first = true;
        for t in self.tag_names() {
            if first {
                out.extend_from_slice(b"x-router-request-tags: ");
                first = false;
            } else {
                out.push(b',');
            }
            out.extend_from_slice(t.as_bytes());
        }
        if !first {
            out.extend_from_slice(b"\r\n");
        }
        if !self.response_tags.is_empty() {
            http::write_header(
                out,
                b"x-router-response-tags",
                self.response_tags.join(",").as_bytes(),
            );
        }
        if !self.attempts.is_empty() {
            http::write_header_u64(out, b"x-router-attempts", self.attempts.len() as u64);
        }
        if let Some(p) = self.provider_name() {
            http::write_header(out, b"x-router-provider", p.as_bytes());
        }
        if let Some(m) = &self.sent_model {
            http::write_header(out, b"x-router-model", m.as_bytes());
        }
        if let Some(t) = self.input_tokens {
            http::write_header_u64(out, b"x-router-input-tokens", t);
        }
        if let Some(t) = self.output_tokens {
            http::write_header_u64(out, b"x-router-output-tokens", t);
        }
        http::write_header_u64(out, b"x-router-overhead-us", self.overhead_us);
    }

    /// Serialize the log line (docs/architecture.md, "The log line") and queue it. Called once per
    /// request, by the lifecycle's end.
    pub fn log(&self, core: &Core, body: &[u8]) {
        let Some(log) = &core.log else { return };
        log.append(|line| self.write_line(line, body));
    }

    pub fn write_line(&self, line: &mut Vec<u8>, body: &[u8]) {
        let mut w = crate::observe::LineWriter::new(line);
        w.u64("ts_ms", self.ts_ms);
        w.str("id", &self.id);
        w.opt_str("provider", self.provider_name());
        w.opt_str("requested_model", self.requested_model.as_deref());
        w.opt_str("sent_model", self.sent_model.as_deref());
        w.u64("duration_ms", self.t0.elapsed().as_millis() as u64);
        w.str_array("tags", self.tag_names());
        w.str_array("plugins", self.plugins.iter().map(String::as_str));
        w.opt_str("system", self.system.as_deref());
        match self.messages.as_ref().and_then(|r| body.get(r.clone())) {
            Some(raw) => w.raw("messages", raw),
            None => w.null("messages"),
        }
        w.opt_str("response", self.response.as_deref());
        w.opt_str("error", self.error.as_deref());
        match &self.trace {
            Some(t) => w.str("trace_id", &crate::observe::trace::hex(&t.trace_id)),
            None => w.null("trace_id"),
        }
        w.u64("status", u64::from(self.status));
        w.bool("stream", self.stream);
        match self.ttft_ms {
            Some(t) => w.f64("ttft_ms", t),
            None => w.null("ttft_ms"),
        }
        w.u64("overhead_us", self.overhead_us);
        w.opt_u64("input_tokens", self.input_tokens);
        w.opt_u64("output_tokens", self.output_tokens);
        w.str_array("response_tags", self.response_tags.iter().copied());
        w.str_array(
            "attempts",
            self.attempts
                .iter()
                .filter_map(|&i| self.provider_name_at(i)),
        );
        if !self.attempt_outcomes.is_empty() {
            let mut details = Vec::with_capacity(64 * self.attempt_outcomes.len());
            details.push(b'[');
            for (i, (&p, (ep, outcome, ms))) in
                self.attempts.iter().zip(&self.attempt_outcomes).enumerate()
            {
                if i > 0 {
                    details.push(b',');
                }
                details.extend_from_slice(b"{\"provider\":");
                crate::json::write_json_string(
                    &mut details,
                    self.provider_name_at(p).unwrap_or(""),
                );
                details.extend_from_slice(b",\"endpoint\":");
                match ep.and_then(|e| self.snap.endpoint_url(e)) {
                    Some(url) => crate::json::write_json_string(&mut details, url),
                    None => details.extend_from_slice(b"null"),
                }
                details.extend_from_slice(b",\"outcome\":");
                crate::json::write_json_string(&mut details, outcome);
                details.extend_from_slice(format!(",\"ms\":{ms}}}").as_bytes());
            }
            details.push(b']');
            w.raw("attempt_details", &details);
        }
        w.str("method", self.method);
        w.str("path", self.path);
        w.u64("config_generation", self.snap.generation);
        if !self.warnings.is_empty() {
            w.str_array("warnings", self.warnings.iter().map(String::as_str));
        }
        if !self.notes.is_empty() {
            w.str_array("notes", self.notes.iter().map(String::as_str));
        }
        w.finish();
    }
}
