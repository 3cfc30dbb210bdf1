//! The request pipeline for one chat request, phase by phase:
//!
//! ```text
//! on_start → classify → pre_request → route → provider call → post_response
//!          → response classifiers → on_end (log line, always)
//! ```
//!
//! A [`Ctx`] travels through every phase and becomes the log line in
//! [`Ctx::finish`], which runs for every request — success, router error,
//! upstream failure, client disconnect.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::upstream::Conn;
use monoio::io::AsyncWriteRentExt;

use super::conn::{
    ClientConn, Next, Request, finish_error, fmt_u64, write_error, write_length_and_close,
};
use super::translate::{self, StreamTranslator};
use super::watch::{self, Wait};
use super::{Core, Snapshot};
use crate::classify::TagSet;
use crate::config::{ProviderFormat, Scheme};
use crate::error::RouterError;
use crate::formats::{
    ChatRequest, ChatResponse, FinishReason, Format, FormatError, Part, StreamEvent, Usage,
};
use crate::http::{self, ChunkedDecoder, ResponseFraming, ResponseHead};
use crate::json::{self, ChatRequestInfo};
use crate::route::{self, RouteInput};
use crate::sse::{ChatStreamStats, SseParser};

/// Plugin ids a request may name (SPEC §5).
const KNOWN_PLUGINS: [&str; 4] = ["response-healing", "pareto-router", "web", "pdf"];
/// Largest upstream response body the router buffers (non-streamed replies).
const MAX_UPSTREAM_BODY: usize = 64 << 20;
/// Largest upstream response head.
const MAX_UPSTREAM_HEAD: usize = 64 << 10;

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
        }
    }

    fn tag_names(&self) -> impl Iterator<Item = &'a str> + use<'a, '_> {
        let names = self
            .snap
            .classifier
            .as_ref()
            .map_or(&[][..], |c| c.tag_names());
        self.tags
            .iter()
            .filter_map(move |i| names.get(i).map(String::as_str))
    }

    fn set_provider(&mut self, idx: usize) {
        self.provider = Some(idx);
        self.attempts.push(idx);
    }

    fn provider_name_at(&self, idx: usize) -> Option<&'a str> {
        self.snap.config.providers.get(idx).map(|p| p.name.as_str())
    }

    fn provider_name(&self) -> Option<&'a str> {
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
        if let Some(p) = self.provider_name() {
            http::write_header(out, b"x-router-provider", p.as_bytes());
        }
        if let Some(m) = &self.sent_model {
            http::write_header(out, b"x-router-model", m.as_bytes());
        }
        let mut n = [0u8; 20];
        if let Some(t) = self.input_tokens {
            http::write_header(out, b"x-router-input-tokens", fmt_u64(t, &mut n));
        }
        if let Some(t) = self.output_tokens {
            http::write_header(out, b"x-router-output-tokens", fmt_u64(t, &mut n));
        }
        http::write_header(
            out,
            b"x-router-overhead-us",
            fmt_u64(self.overhead_us, &mut n),
        );
    }

    /// `on_end`: serialize the log line (SPEC §7) and queue it. Always runs.
    pub fn finish(&self, core: &Core, body: &[u8]) {
        let Some(log) = &core.log else { return };
        log.append(|line| self.write_line(line, body));
    }

    fn write_line(&self, line: &mut Vec<u8>, body: &[u8]) {
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
        w.null("trace_id");
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
        w.str("method", self.method);
        w.str("path", self.path);
        w.finish();
    }
}

/// Inbound API key check: `Authorization: Bearer`, `x-api-key`, or `?api_key=`,
/// compared in constant time.
pub fn authorized(req: &Request<'_>, key: &str) -> bool {
    let key = key.as_bytes();
    if let Some(v) = req.header("authorization")
        && let Some(token) = v.strip_prefix(b"Bearer ")
        && ct_eq(token, key)
    {
        return true;
    }
    if let Some(v) = req.header("x-api-key")
        && ct_eq(v, key)
    {
        return true;
    }
    if let Some(q) = req.head.query.clone().and_then(|r| req.buf.get(r)) {
        for pair in q.split(|&b| b == b'&') {
            if let Some(v) = pair.strip_prefix(b"api_key=")
                && ct_eq(v, key)
            {
                return true;
            }
        }
    }
    false
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn micros_since(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `POST /v1/chat/completions`.
/// How the provider is called for one request.
pub struct Plan {
    pub pidx: usize,
    /// The client's wire format (the endpoint it called).
    pub client: Format,
    /// The wire format the provider is spoken to in.
    pub upstream: Format,
    /// Same-format route: the client's bytes go through, only `model` and
    /// `plugins` spliced; the provider's bytes come back unchanged.
    pub passthrough: bool,
    pub include_usage: bool,
}

/// What routing needs from a request, whatever its format.
struct Parsed {
    model: String,
    stream: bool,
    include_usage: bool,
    plugin_ids: Vec<String>,
    system: Option<String>,
    /// Span of the conversation (`messages`, or `input` for Responses) in the body.
    messages: Option<Range<usize>>,
    has_images: bool,
    has_tools: bool,
    top: json::TopLevel,
    /// OpenAI chat clients: the fast extraction (no canonical parse needed
    /// for same-format routes).
    chat: Option<ChatRequestInfo>,
    /// Other clients: the canonical request.
    canonical: Option<ChatRequest>,
    /// Texts found by [`light_parse`] when there is no canonical request.
    light_texts: Vec<String>,
    /// Why the canonical parse failed (then only same-format routes work).
    canonical_error: Option<String>,
}

fn parse_client(client: Format, body: &[u8], scratch: &mut Vec<u8>) -> Result<Parsed, RouterError> {
    if client == Format::OpenAiChat {
        let info =
            json::parse_chat_request(body, scratch).map_err(|e| RouterError::bad_request(e.0))?;
        return Ok(Parsed {
            model: info.model.clone(),
            stream: info.stream,
            include_usage: info.include_usage,
            plugin_ids: info.plugins.iter().map(|p| p.id.clone()).collect(),
            system: (!info.system.is_empty()).then(|| info.system.clone()),
            messages: Some(info.messages_json.clone()),
            has_images: info.has_images,
            has_tools: info.has_tools,
            top: info.top.clone(),
            chat: Some(info),
            canonical: None,
            light_texts: Vec::new(),
            canonical_error: None,
        });
    }
    let top = json::scan_top_level(body).map_err(|e| RouterError::bad_request(e.0))?;
    let canonical = match translate::parse_request(client, body) {
        Ok(c) => c,
        // Content the canonical model cannot carry (documents, file ids, …)
        // may still go through a same-format route untouched: read what
        // routing needs from the JSON directly, and refuse only if the
        // route turns out to need a translation.
        Err(e) => return light_parse(client, body, top, e),
    };
    let mut plugin_ids = Vec::new();
    if let Some(m) = top.get("plugins") {
        let v: serde_json::Value = serde_json::from_slice(&body[m.value.clone()])
            .map_err(|e| RouterError::bad_request(format!("`plugins`: {e}")))?;
        let items = v
            .as_array()
            .ok_or_else(|| RouterError::bad_request("`plugins` must be an array"))?;
        for (i, item) in items.iter().enumerate() {
            let id = item.get("id").and_then(|v| v.as_str()).ok_or_else(|| {
                RouterError::bad_request(format!("`plugins[{i}].id` must be a string"))
            })?;
            plugin_ids.push(id.to_string());
        }
    }
    let conversation = if client == Format::Responses {
        "input"
    } else {
        "messages"
    };
    let has_images = canonical
        .messages
        .iter()
        .any(|m| m.parts.iter().any(|p| matches!(p, Part::Image(_))));
    Ok(Parsed {
        model: canonical.model.clone(),
        stream: canonical.stream,
        include_usage: canonical.include_usage,
        plugin_ids,
        system: canonical.system.clone(),
        messages: top.get(conversation).map(|m| m.value.clone()),
        has_images,
        has_tools: !canonical.tools.is_empty(),
        top,
        chat: None,
        canonical: Some(canonical),
        light_texts: Vec::new(),
        canonical_error: None,
    })
}

/// Routing fields read straight from the JSON, for requests the canonical
/// model cannot carry (allowed on same-format routes only).
fn light_parse(
    client: Format,
    body: &[u8],
    top: json::TopLevel,
    why: FormatError,
) -> Result<Parsed, RouterError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| RouterError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let model = v
        .get("model")
        .and_then(|m| m.as_str())
        .ok_or_else(|| RouterError::bad_request(why.0.clone()))?
        .to_string();
    fn walk(v: &serde_json::Value, texts: &mut Vec<String>, images: &mut bool) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some("image" | "input_image" | "image_url") =
                    map.get("type").and_then(|t| t.as_str())
                {
                    *images = true;
                }
                for (k, val) in map {
                    match (k.as_str(), val) {
                        ("text" | "content", serde_json::Value::String(s)) => texts.push(s.clone()),
                        (_, other) => walk(other, texts, images),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, texts, images)),
            serde_json::Value::String(s) => texts.push(s.clone()),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    let mut has_images = false;
    let conversation = if client == Format::Responses {
        "input"
    } else {
        "messages"
    };
    for key in ["system", "instructions", conversation] {
        if let Some(x) = v.get(key) {
            walk(x, &mut texts, &mut has_images);
        }
    }
    let plugin_ids = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Parsed {
        model,
        stream: v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
        include_usage: false,
        plugin_ids,
        system: None,
        messages: top.get(conversation).map(|m| m.value.clone()),
        has_images,
        has_tools: v
            .get("tools")
            .and_then(|t| t.as_array())
            .is_some_and(|a| !a.is_empty()),
        top,
        chat: None,
        canonical: None,
        light_texts: texts,
        canonical_error: Some(why.0),
    })
}

/// The texts the keyword classifier reads: system prompt and every text part.
fn classify(core: &Core, parsed: &Parsed, tags: &mut TagSet) {
    let Some(c) = &core.snap.classifier else {
        return;
    };
    if let Some(info) = &parsed.chat {
        for text in info.texts() {
            c.scan(text.as_bytes(), tags);
        }
        return;
    }
    for t in &parsed.light_texts {
        c.scan(t.as_bytes(), tags);
    }
    if let Some(req) = &parsed.canonical {
        if let Some(s) = &req.system {
            c.scan(s.as_bytes(), tags);
        }
        for m in &req.messages {
            for p in &m.parts {
                match p {
                    Part::Text(t) => c.scan(t.as_bytes(), tags),
                    Part::ToolResult { content, .. } => c.scan(content.as_bytes(), tags),
                    _ => {}
                }
            }
        }
    }
}

/// `POST /v1/chat/completions`, `POST /v1/messages`, `POST /v1/responses`:
/// parse, classify, route, call the provider, answer in the client's format.
pub async fn handle(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    mut ctx: Ctx<'_>,
    client: Format,
) -> Next {
    let family = super::conn::family_for(req.path);
    // on_start + parse: what routing needs, without touching the client's bytes.
    let parsed = match parse_client(client, req.body, &mut conn.json_scratch) {
        Ok(p) => p,
        Err(err) => return finish_error(core, conn, req, &mut ctx, family, err).await,
    };
    // The log quotes the model like any client input: bounded.
    ctx.requested_model = Some(crate::error::quote(&parsed.model).into_owned());
    ctx.stream = parsed.stream;
    ctx.messages = parsed.messages.clone();
    ctx.system = parsed.system.clone();
    ctx.plugins = parsed
        .plugin_ids
        .iter()
        .map(|id| crate::error::quote(id).into_owned())
        .collect();
    if let Some(bad) = parsed
        .plugin_ids
        .iter()
        .find(|id| !KNOWN_PLUGINS.contains(&id.as_str()))
    {
        let err = RouterError::bad_request(format!(
            "unknown plugin '{}' (known: {})",
            crate::error::quote(bad),
            KNOWN_PLUGINS.join(", ")
        ))
        .with_code("unknown_plugin");
        return finish_error(core, conn, req, &mut ctx, family, err).await;
    }

    // classify: one automaton pass over each text span.
    classify(core, &parsed, &mut ctx.tags);

    // route
    let snap = &core.snap;
    // The tag names as a slice, on the stack unless more than 64 tags matched.
    let mut tag_buf: [&str; 64] = [""; 64];
    let overflow: Vec<&str>;
    let tags: &[&str] = if ctx.tags.len() <= tag_buf.len() {
        let mut n = 0;
        for (slot, name) in tag_buf.iter_mut().zip(ctx.tag_names()) {
            *slot = name;
            n += 1;
        }
        &tag_buf[..n]
    } else {
        overflow = ctx.tag_names().collect();
        &overflow
    };
    let input = RouteInput {
        model: &parsed.model,
        tags,
        needs_vision: parsed.has_images,
        needs_tools: parsed.has_tools,
    };
    let decision = {
        let mut rng = core.rng.borrow_mut();
        route::resolve(
            &snap.config.routers,
            &snap.config.providers,
            &snap.discovery,
            &input,
            &mut rng,
        )
    };
    let Some(decision) = decision else {
        let err = RouterError::no_route(&parsed.model);
        return finish_error(core, conn, req, &mut ctx, family, err).await;
    };
    let pidx = decision.provider;
    let rewrite = decision.model.map(str::to_string);
    ctx.set_provider(pidx);
    let sent_model = rewrite.clone().unwrap_or_else(|| parsed.model.clone());
    ctx.sent_model = Some(sent_model.clone());

    // provider call
    let provider = &snap.config.providers[pidx];
    if req.path.ends_with("/count_tokens") && provider.format != ProviderFormat::Anthropic {
        // Never a fake count: only an Anthropic-format provider can answer.
        let err = RouterError::bad_request(format!(
            "count_tokens needs an anthropic-format provider; model '{}' routes to '{}' ({} format)",
            crate::error::quote(&parsed.model),
            provider.name,
            provider.format.as_str()
        ))
        .with_code("count_tokens_unsupported");
        return finish_error(core, conn, req, &mut ctx, family, err).await;
    }
    let upstream = match provider.format {
        ProviderFormat::Mock => return mock(core, conn, req, ctx, &parsed, client).await,
        ProviderFormat::OpenAi if client == Format::Responses && provider.responses => {
            Format::Responses
        }
        ProviderFormat::OpenAi => Format::OpenAiChat,
        ProviderFormat::Anthropic => Format::Anthropic,
        ProviderFormat::Ollama => Format::Ollama,
    };
    if provider.scheme == Scheme::Https && !core.snap.tls_ready(pidx) {
        let err = RouterError::upstream_connect(
            &provider.name,
            &snap.targets[pidx].display,
            "TLS is not available for this provider",
        );
        return finish_error(core, conn, req, &mut ctx, family, err).await;
    }
    let plan = Plan {
        pidx,
        client,
        upstream,
        passthrough: upstream == client,
        include_usage: parsed.include_usage,
    };
    conn.up_req.clear();
    let mut up_req = std::mem::take(&mut conn.up_req);
    if plan.passthrough {
        build_upstream_request(
            core,
            req,
            &plan,
            Some((&parsed.top, rewrite.as_deref())),
            None,
            &mut up_req,
        );
    } else {
        if let Some(why) = &parsed.canonical_error {
            conn.up_req = up_req;
            let err = RouterError::bad_request(format!(
                "cannot send this request to provider '{}' ({} format): {why}",
                provider.name,
                provider.format.as_str()
            ));
            return finish_error(core, conn, req, &mut ctx, family, err).await;
        }
        let mut canonical = match parsed.canonical {
            Some(c) => c,
            None => match translate::parse_request(client, req.body) {
                Ok(c) => c,
                Err(e) => {
                    conn.up_req = up_req;
                    return finish_error(
                        core,
                        conn,
                        req,
                        &mut ctx,
                        family,
                        RouterError::bad_request(e.0),
                    )
                    .await;
                }
            },
        };
        canonical.model = sent_model;
        let mut body = Vec::with_capacity(req.body.len() + 256);
        if let Err(e) = translate::write_request(upstream, &canonical, &mut body) {
            conn.up_req = up_req;
            let err = RouterError::bad_request(format!(
                "cannot send this request to provider '{}': {e}",
                provider.name
            ));
            return finish_error(core, conn, req, &mut ctx, family, err).await;
        }
        build_upstream_request(core, req, &plan, None, Some(&body), &mut up_req);
    }
    proxy(core, conn, req, ctx, &plan, up_req).await
}

/// Request headers never forwarded upstream: hop-by-hop ones, framing the
/// router redoes, and the client's credentials (the provider's key is sent instead).
fn skip_request_header(name: &[u8]) -> bool {
    const SKIP: [&[u8]; 10] = [
        b"anthropic-version",
        b"anthropic-beta",
        b"host",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"accept-encoding",
        b"expect",
        b"content-type",
        b"api-key",
    ];
    http::is_hop_by_hop(name) || SKIP.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// The upstream request: our own framing, the provider's key in the
/// provider's own header, and either the client's body with only `model` and
/// `plugins` spliced (`splice`, same-format) or a translated body.
fn build_upstream_request(
    core: &Core,
    req: &Request<'_>,
    plan: &Plan,
    splice: Option<(&json::TopLevel, Option<&str>)>,
    translated: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let p = &core.snap.config.providers[plan.pidx];
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(p.base_path.as_bytes());
    match plan.upstream {
        Format::OpenAiChat => out.extend_from_slice(b"/chat/completions"),
        Format::Responses => out.extend_from_slice(b"/responses"),
        Format::Ollama => out.extend_from_slice(b"/api/chat"),
        Format::Anthropic => {
            if !p.base_path.ends_with("/v1") {
                out.extend_from_slice(b"/v1");
            }
            out.extend_from_slice(if req.path.ends_with("/count_tokens") {
                b"/messages/count_tokens"
            } else {
                b"/messages"
            });
            // Claude Code sends `?beta=true`: forwarded to Anthropic-format providers only.
            if plan.passthrough
                && let Some(q) = req.head.query(req.buf)
            {
                out.push(b'?');
                out.extend_from_slice(q);
            }
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(p.host_header.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    if plan.upstream == Format::Anthropic {
        if let Some(key) = &p.api_key {
            http::write_header(out, b"x-api-key", key.as_bytes());
        }
        let version = req.header("anthropic-version").unwrap_or(b"2023-06-01");
        http::write_header(out, b"anthropic-version", version);
        if plan.passthrough
            && let Some(beta) = req.header("anthropic-beta")
        {
            http::write_header(out, b"anthropic-beta", beta);
        }
    } else if let Some(key) = &p.api_key {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if plan.passthrough {
        // Same-format: the client's other end-to-end headers go along.
        let conn_values: Vec<&[u8]> = req
            .head
            .headers_iter(req.buf)
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .map(|(_, v)| v)
            .collect();
        for (name, value) in req.head.headers_iter(req.buf) {
            if skip_request_header(name)
                || (!conn_values.is_empty() && http::connection_listed(&conn_values, name))
            {
                continue;
            }
            http::write_header(out, name, value);
        }
    } else if let Some(ua) = req.header("user-agent") {
        http::write_header(out, b"user-agent", ua);
    }
    // copy: the body is built aside, then follows the head so one write sends both.
    let mut spliced = Vec::new();
    let body: &[u8] = match (splice, translated) {
        (_, Some(t)) => t,
        (Some((top, rewrite)), None) => {
            spliced.reserve(req.body.len() + 64);
            json::splice_request(req.body, top, rewrite, &mut spliced);
            &spliced
        }
        (None, None) => req.body,
    };
    let mut n = [0u8; 20];
    http::write_header(out, b"content-length", fmt_u64(body.len() as u64, &mut n));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// What relaying ended with.
enum Relay {
    Complete,
    ClientGone,
    UpstreamFailed(String),
}

/// Same-format call to an OpenAI-compatible provider over plain HTTP.
async fn proxy(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    mut ctx: Ctx<'_>,
    plan: &Plan,
    up_req: Vec<u8>,
) -> Next {
    let mut resp = std::mem::take(&mut conn.up_resp);
    resp.clear();
    let (next, up_req, resp) = proxy_inner(core, conn, req, &mut ctx, plan, up_req, resp).await;
    conn.up_req = up_req;
    conn.up_resp = resp;
    ctx.finish(core, req.body);
    next
}

#[allow(clippy::too_many_arguments)]
async fn proxy_inner(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    mut up_req: Vec<u8>,
    mut resp: Vec<u8>,
) -> (Next, Vec<u8>, Vec<u8>) {
    let pidx = plan.pidx;
    let snap = &core.snap;
    let server = &snap.config.server;
    let provider = &snap.config.providers[pidx];
    let target = &snap.targets[pidx];
    let family = super::conn::family_for(req.path);
    let timeout = Duration::from_millis(
        provider
            .first_byte_timeout_ms
            .unwrap_or(server.first_byte_timeout_ms),
    );
    let mut armed = watch::arm();

    macro_rules! fail {
        ($err:expr) => {{
            let err = $err;
            ctx.overhead_us = micros_since(req.t0);
            write_error(conn, family, &err, req.keep_alive, ctx);
            let ok = conn.flush().await.is_ok();
            ctx.fail(&err);
            let next = if ok && req.keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            };
            return (next, up_req, resp);
        }};
    }
    macro_rules! client_gone {
        () => {{
            ctx.status = 499;
            ctx.error =
                Some("client_closed: the client disconnected before the response completed".into());
            return (Next::Close, up_req, resp);
        }};
    }

    // Send, with one transparent retry when a pooled connection turns out
    // dead before any response byte.
    let mut retried = false;
    let (mut up, head) = 'attempt: loop {
        // A retry always goes out on a fresh connection: the pooled ones are
        // likely as stale as the one that just failed.
        let pooled = if retried { None } else { core.pools.take(pidx) };
        let (mut up, reused) = match pooled {
            Some(s) => (s, true),
            None => match crate::upstream::connect(
                target,
                Duration::from_millis(server.connect_timeout_ms),
                core.tls[pidx].as_ref().map(|c| (c, provider.host.as_str())),
            )
            .await
            {
                Ok(s) => (s, false),
                Err(e) => fail!(RouterError::upstream_connect(
                    &provider.name,
                    &target.display,
                    &e
                )),
            },
        };
        let (r, buf) = up.write_all(up_req).await;
        up_req = buf;
        // The router's share so far: everything up to the request being sent.
        if ctx.overhead_us == 0 {
            ctx.overhead_us = micros_since(req.t0);
        }
        if let Err(e) = r {
            if reused && !retried {
                retried = true;
                continue 'attempt;
            }
            fail!(RouterError::upstream_connect(
                &provider.name,
                &target.display,
                &e.to_string()
            ));
        }
        resp.clear();
        loop {
            match armed.read(&conn.stream, &mut up, resp, timeout).await {
                Wait::Done((r, b)) => {
                    resp = b;
                    let eof = matches!(r, Ok(0));
                    if let Err(e) = &r {
                        if resp.is_empty() && reused && !retried {
                            retried = true;
                            continue 'attempt;
                        }
                        fail!(RouterError::upstream_bad_response(
                            &provider.name,
                            &format!("read failed: {e}")
                        ));
                    }
                    if eof {
                        if resp.is_empty() && reused && !retried {
                            retried = true;
                            continue 'attempt;
                        }
                        fail!(RouterError::upstream_bad_response(
                            &provider.name,
                            "connection closed before a complete response head"
                        ));
                    }
                    // Interim 1xx responses (100 Continue, 103 Early Hints, …) are
                    // skipped, and whatever follows them in the buffer is parsed
                    // before reading again.
                    loop {
                        match http::parse_response_head(&resp, MAX_UPSTREAM_HEAD) {
                            Ok(Some(h)) if h.status == 408 && reused && !retried => {
                                // The upstream timed the idle connection out as the
                                // request crossed it: the request was not processed.
                                // Closed (never pooled), and sent once more on a fresh one.
                                retried = true;
                                continue 'attempt;
                            }
                            Ok(Some(h)) if h.status >= 200 => break 'attempt (up, h),
                            Ok(Some(h)) => {
                                resp.drain(..h.head_len);
                                if resp.is_empty() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => fail!(RouterError::upstream_bad_response(
                                &provider.name,
                                e.message
                            )),
                        }
                    }
                }
                Wait::TimedOut => {
                    resp = Vec::new();
                    fail!(RouterError::upstream_timeout(
                        &provider.name,
                        &target.display,
                        timeout.as_millis() as u64
                    ))
                }
                Wait::ClientGone => {
                    resp = Vec::new();
                    client_gone!()
                }
            }
        }
    };
    let t_head = Instant::now();
    ctx.ttft_ms = Some(ms(t_head - req.t0));
    ctx.status = head.status;
    if !(200..300).contains(&head.status) {
        ctx.error = Some(format!("provider returned status {}", head.status));
    }

    let content_type = header_value(&resp, &head, "content-type").unwrap_or(b"");
    let starts =
        |p: &[u8]| content_type.len() >= p.len() && content_type[..p.len()].eq_ignore_ascii_case(p);
    let is_stream = starts(b"text/event-stream")
        || ((200..300).contains(&head.status) && starts(b"application/x-ndjson"));
    if is_stream {
        let mode = if plan.passthrough && plan.client == Format::OpenAiChat {
            StreamMode::Chat {
                parser: SseParser::new(16 << 20),
                stats: ChatStreamStats::default(),
            }
        } else if plan.passthrough {
            StreamMode::Tap(StreamTranslator::tap(plan.upstream))
        } else {
            StreamMode::Translate(StreamTranslator::new(
                plan.upstream,
                plan.client,
                plan.include_usage,
            ))
        };
        let (outcome, reusable) = relay_stream(
            core,
            conn,
            req,
            ctx,
            &mut up,
            &mut resp,
            &head,
            &mut armed,
            timeout,
            t_head,
            mode,
            plan.client,
        )
        .await;
        match outcome {
            Relay::Complete => {
                if reusable {
                    core.pools.give(pidx, up);
                }
                // HTTP/1.0 clients got a close-delimited stream.
                let next = if conn.http10 || !req.keep_alive {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
                return (next, up_req, resp);
            }
            Relay::ClientGone => client_gone!(),
            Relay::UpstreamFailed(msg) => {
                ctx.error = Some(format!("upstream_truncated: {msg}"));
                return (Next::Close, up_req, resp);
            }
        }
    }

    // Buffered reply: read it whole (usage and response tags go in the head).
    let mut body = std::mem::take(&mut conn.up_body);
    body.clear();
    let read = read_whole_body(
        &mut armed,
        &conn.stream,
        &mut up,
        &mut resp,
        &mut body,
        &head,
        timeout,
    )
    .await;
    let (body_range, in_body_buf, reusable) = match read {
        Ok(r) => r,
        Err(end) => {
            conn.up_body = body;
            match end {
                BodyEnd::ClientGone => client_gone!(),
                BodyEnd::TimedOut => fail!(RouterError::upstream_timeout(
                    &provider.name,
                    &target.display,
                    timeout.as_millis() as u64
                )),
                BodyEnd::Bad(why) => {
                    fail!(RouterError::upstream_bad_response(&provider.name, &why))
                }
            }
        }
    };
    let t_done = Instant::now();
    if reusable {
        core.pools.give(pidx, up);
    } else {
        drop(up);
    }
    {
        let body_bytes: &[u8] = if in_body_buf {
            &body[body_range.clone()]
        } else {
            &resp[body_range.clone()]
        };
        let ok = (200..300).contains(&head.status);
        if plan.passthrough {
            if ok && plan.client == Format::OpenAiChat {
                let (input, output, text) = crate::sse::chat_response_stats(body_bytes);
                ctx.input_tokens = input;
                ctx.output_tokens = output;
                post_response(core, ctx, text);
            } else if ok {
                if let Ok(r) = translate::parse_response(plan.upstream, body_bytes) {
                    ctx.input_tokens = r.usage.map(|u| u.input_tokens);
                    ctx.output_tokens = r.usage.map(|u| u.output_tokens);
                    post_response(core, ctx, translate::response_text(&r));
                }
            } else {
                ctx.response = Some(
                    String::from_utf8_lossy(&body_bytes[..body_bytes.len().min(4096)]).into_owned(),
                );
            }
            ctx.overhead_us += micros_since(t_done);
            write_response_head(
                conn,
                &resp,
                &head,
                ctx,
                Some(body_bytes.len()),
                !req.keep_alive,
            );
            // copy: head and body leave in one write.
            conn.out.extend_from_slice(body_bytes);
        } else {
            // Cross-format: the reply (or the provider's error) in the client's format, same status.
            let mut translated = Vec::with_capacity(body_bytes.len() + 256);
            if ok {
                match translate::parse_response(plan.upstream, body_bytes) {
                    Ok(mut r) => {
                        if r.created == 0 {
                            r.created = ctx.ts_ms / 1000;
                        }
                        ctx.input_tokens = r.usage.map(|u| u.input_tokens);
                        ctx.output_tokens = r.usage.map(|u| u.output_tokens);
                        post_response(core, ctx, translate::response_text(&r));
                        translate::write_response(plan.client, &r, &mut translated);
                    }
                    Err(e) => {
                        conn.up_body = body;
                        fail!(RouterError::upstream_bad_response(&provider.name, &e.0));
                    }
                }
            } else {
                let err = translate::parse_error(plan.upstream, head.status, body_bytes);
                ctx.response = Some(err.message.clone());
                translate::write_error(plan.client, &err, &mut translated);
            }
            ctx.overhead_us += micros_since(t_done);
            write_own_head(
                conn,
                (&resp, &head),
                b"application/json",
                ctx,
                Some(translated.len()),
                !req.keep_alive,
            );
            conn.out.extend_from_slice(&translated);
        }
    }
    conn.up_body = body;
    if conn.flush().await.is_err() {
        client_gone!();
    }
    (
        if req.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        },
        up_req,
        resp,
    )
}

/// Why reading a buffered upstream body stopped early.
enum BodyEnd {
    ClientGone,
    TimedOut,
    Bad(String),
}

/// Read more upstream bytes into `resp`; `Ok(false)` on EOF.
async fn read_more(
    armed: &mut watch::Armed,
    client: &monoio::net::TcpStream,
    up: &mut Conn,
    resp: &mut Vec<u8>,
    timeout: Duration,
) -> Result<bool, BodyEnd> {
    match armed.read(client, up, std::mem::take(resp), timeout).await {
        Wait::Done((r, b)) => {
            *resp = b;
            match r {
                Ok(n) => Ok(n > 0),
                Err(e) => Err(BodyEnd::Bad(format!("read failed: {e}"))),
            }
        }
        Wait::TimedOut => Err(BodyEnd::TimedOut),
        Wait::ClientGone => Err(BodyEnd::ClientGone),
    }
}

/// Read a non-streamed reply's whole body. Returns where the body is
/// (`resp[range]`, or `body[range]` when it had to be de-chunked) and
/// whether the connection may be pooled afterwards.
async fn read_whole_body(
    armed: &mut watch::Armed,
    client: &monoio::net::TcpStream,
    up: &mut Conn,
    resp: &mut Vec<u8>,
    body: &mut Vec<u8>,
    head: &ResponseHead,
    timeout: Duration,
) -> Result<(Range<usize>, bool, bool), BodyEnd> {
    const TRUNCATED: &str = "connection closed before the end of the body";
    const TOO_LARGE: &str = "response body too large";
    match head.framing {
        // Bytes after a bodiless head (a 204 that sent a body anyway) leave
        // the connection in an unknown state: never pooled.
        ResponseFraming::None => Ok((
            head.head_len..head.head_len,
            false,
            head.keep_alive && resp.len() == head.head_len,
        )),
        ResponseFraming::ContentLength(n) => {
            if n > MAX_UPSTREAM_BODY as u64 {
                return Err(BodyEnd::Bad(TOO_LARGE.into()));
            }
            let need = head.head_len + n as usize;
            while resp.len() < need {
                if !read_more(armed, client, up, resp, timeout).await? {
                    return Err(BodyEnd::Bad(TRUNCATED.into()));
                }
            }
            Ok((
                head.head_len..need,
                false,
                head.keep_alive && resp.len() == need,
            ))
        }
        ResponseFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(16 * 1024);
            let mut ranges = Vec::new();
            let mut pos = head.head_len;
            loop {
                ranges.clear();
                let (used, done) = dec
                    .feed(&resp[pos..], &mut ranges)
                    .map_err(|e| BodyEnd::Bad(e.0.into()))?;
                for r in &ranges {
                    // copy: de-chunking makes the reply contiguous for the client's Content-Length.
                    body.extend_from_slice(&resp[pos + r.start..pos + r.end]);
                }
                pos += used;
                if done {
                    return Ok((0..body.len(), true, head.keep_alive && pos == resp.len()));
                }
                if body.len() > MAX_UPSTREAM_BODY {
                    return Err(BodyEnd::Bad(TOO_LARGE.into()));
                }
                // Decoded bytes are no longer needed: keep the head and the undecoded tail.
                resp.drain(head.head_len..pos);
                pos = head.head_len;
                if !read_more(armed, client, up, resp, timeout).await? {
                    return Err(BodyEnd::Bad(TRUNCATED.into()));
                }
            }
        }
        ResponseFraming::UntilClose => {
            while read_more(armed, client, up, resp, timeout).await? {
                if resp.len() - head.head_len > MAX_UPSTREAM_BODY {
                    return Err(BodyEnd::Bad(TOO_LARGE.into()));
                }
            }
            Ok((head.head_len..resp.len(), false, false))
        }
    }
}

/// `post_response` and the response classifiers, on the reply's text.
fn post_response(core: &Core, ctx: &mut Ctx<'_>, text: String) {
    if let Some(r) = &core.snap.refusal
        && r.is_match(text.as_bytes())
    {
        ctx.response_tags.push("refusal");
    }
    ctx.response = Some(text);
}

fn header_value<'a>(buf: &'a [u8], head: &ResponseHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &buf[v.clone()])
}

/// The client's response head: the provider's status and headers (minus
/// hop-by-hop and framing), the `X-Router-*` headers, and our own framing:
/// `Content-Length` when `len` is known, else chunked (or close-delimited for HTTP/1.0).
fn write_response_head(
    conn: &mut ClientConn,
    buf: &[u8],
    head: &ResponseHead,
    ctx: &Ctx<'_>,
    len: Option<usize>,
    close: bool,
) {
    let out = &mut conn.out;
    http::write_status_line(out, head.status);
    let conn_values: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| &buf[v.clone()])
        .collect();
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        if http::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"content-length")
            || name.len() > 9 && name[..9].eq_ignore_ascii_case(b"x-router-")
            || (!conn_values.is_empty() && http::connection_listed(&conn_values, name))
        {
            continue;
        }
        http::write_header(out, name, &buf[v.clone()]);
    }
    ctx.write_router_headers(out);
    match len {
        Some(len) => write_length_and_close(out, len, close),
        None if conn.http10 => {
            http::write_header(out, b"connection", b"close");
            out.extend_from_slice(b"\r\n");
        }
        None => {
            http::write_header(out, b"transfer-encoding", b"chunked");
            if close {
                http::write_header(out, b"connection", b"close");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The SSE comment sent to a streaming client during long silences; ignored
/// by every WHATWG-conformant SSE parser (the OpenAI and Anthropic SDKs).
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";
/// [`KEEPALIVE_COMMENT`] as one chunk of a chunked body.
const KEEPALIVE_CHUNK: &[u8] = b"e\r\n: keep-alive\n\n\r\n";

/// The last four bytes sent to a streaming client, to tell whether the
/// stream stands between two SSE events (after a blank line).
#[derive(Clone, Copy)]
struct EventTail(u32);

impl Default for EventTail {
    /// Nothing sent yet: a boundary.
    fn default() -> Self {
        EventTail(u32::from_be_bytes(*b"\r\n\r\n"))
    }
}

impl EventTail {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().rev().take(4).rev() {
            self.0 = (self.0 << 8) | u32::from(b);
        }
    }

    fn at_event_boundary(self) -> bool {
        let last2 = (self.0 & 0xffff) as u16;
        self.0 == u32::from_be_bytes(*b"\r\n\r\n")
            || last2 == u16::from_be_bytes(*b"\n\n")
            || last2 == u16::from_be_bytes(*b"\r\r")
    }
}

/// How a streamed reply is relayed.
enum StreamMode {
    /// OpenAI chat passthrough: bytes unchanged, scanned for usage and text.
    Chat {
        parser: SseParser,
        stats: ChatStreamStats,
    },
    /// Other same-format passthrough: bytes unchanged, decoded for the log.
    Tap(StreamTranslator),
    /// Cross-format: the provider's events re-encoded in the client's format.
    Translate(StreamTranslator),
}

/// A head the router writes itself (cross-format replies): status, content
/// type, the provider's back-off, rate-limit and request-id fields
/// ([`http::is_carried_across_formats`]), `X-Router-*`, our framing.
fn write_own_head(
    conn: &mut ClientConn,
    provider: (&[u8], &ResponseHead),
    content_type: &[u8],
    ctx: &Ctx<'_>,
    len: Option<usize>,
    close: bool,
) {
    let out = &mut conn.out;
    let (buf, head) = provider;
    http::write_status_line(out, head.status);
    http::write_header(out, b"content-type", content_type);
    for (name, value) in head.headers_iter(buf) {
        if http::is_carried_across_formats(name) {
            http::write_header(out, name, value);
        }
    }
    if len.is_none() {
        http::write_header(out, b"cache-control", b"no-cache");
        http::write_header(out, b"x-accel-buffering", b"no");
    }
    ctx.write_router_headers(out);
    match len {
        Some(len) => write_length_and_close(out, len, close),
        None if conn.http10 => {
            http::write_header(out, b"connection", b"close");
            out.extend_from_slice(b"\r\n");
        }
        None => {
            http::write_header(out, b"transfer-encoding", b"chunked");
            if close {
                http::write_header(out, b"connection", b"close");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Relay a streamed reply as it arrives (SSE, or Ollama's NDJSON when
/// translating), scanning or translating the same bytes. Returns how it
/// ended and whether the upstream connection may be pooled.
#[allow(clippy::too_many_arguments)]
async fn relay_stream(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    up: &mut Conn,
    resp: &mut Vec<u8>,
    head: &ResponseHead,
    armed: &mut watch::Armed,
    timeout: Duration,
    t_head: Instant,
    mut mode: StreamMode,
    client: Format,
) -> (Relay, bool) {
    let chunked_out = !conn.http10;
    let server = &core.snap.config.server;
    let idle = Duration::from_millis(server.stream_idle_timeout_ms);
    let write_timeout = Duration::from_millis(server.write_timeout_ms);
    // Keep-alive comments only where the client reads SSE: translated
    // streams always, passthrough when the provider streams SSE.
    let sse_out = matches!(mode, StreamMode::Translate(_))
        || header_value(resp, head, "content-type")
            .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"));
    let keepalive_every = (server.sse_keepalive_ms > 0 && sse_out)
        .then(|| Duration::from_millis(server.sse_keepalive_ms));
    // The last bytes sent to the client: a comment may only go between events.
    let mut tail = EventTail::default();
    ctx.overhead_us += micros_since(t_head);
    let close = !req.keep_alive || conn.http10;
    if matches!(mode, StreamMode::Translate(_)) {
        write_own_head(conn, (resp, head), b"text/event-stream", ctx, None, close);
    } else {
        write_response_head(conn, resp, head, ctx, None, close);
    }
    // Each write to the client is a TCP send (and a wake-up of the reader):
    // when events came with the head, the head leaves with them in one write.
    if resp.len() == head.head_len && conn.flush().await.is_err() {
        return (Relay::ClientGone, false);
    }
    let mut ended = false;
    let mut dec = ChunkedDecoder::new(16 * 1024);
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut translated: Vec<u8> = Vec::new();
    let mut remaining = match head.framing {
        ResponseFraming::ContentLength(n) => n,
        _ => 0,
    };
    let mut pos = head.head_len;
    let mut first = true;
    let outcome = 'relay: loop {
        // Decode what is buffered into payload ranges.
        ranges.clear();
        let mut finished = false;
        match head.framing {
            ResponseFraming::Chunked => match dec.feed(&resp[pos..], &mut ranges) {
                Ok((used, done)) => {
                    for r in ranges.iter_mut() {
                        *r = pos + r.start..pos + r.end;
                    }
                    pos += used;
                    finished = done;
                }
                Err(e) => break Relay::UpstreamFailed(format!("bad chunked framing: {}", e.0)),
            },
            ResponseFraming::ContentLength(_) => {
                let take = (resp.len() - pos).min(remaining as usize);
                ranges.push(pos..pos + take);
                pos += take;
                remaining -= take as u64;
                finished = remaining == 0;
            }
            ResponseFraming::UntilClose => {
                ranges.push(pos..resp.len());
                pos = resp.len();
            }
            ResponseFraming::None => finished = true,
        }
        for r in &ranges {
            let payload = &resp[r.clone()];
            if payload.is_empty() {
                continue;
            }
            if first {
                first = false;
                ctx.ttft_ms = Some(ms(req.t0.elapsed()));
            }
            let bytes: &[u8] = match &mut mode {
                StreamMode::Chat { parser, stats } => {
                    let _ = parser.feed(payload, |ev| stats.on_event(ev.data));
                    payload
                }
                StreamMode::Tap(t) => {
                    translated.clear();
                    let _ = t.feed(payload, &mut translated);
                    payload
                }
                StreamMode::Translate(t) => {
                    translated.clear();
                    if let Err(e) = t.feed(payload, &mut translated) {
                        // A malformed provider event: end the client's stream with an error.
                        if !translated.is_empty() {
                            http::write_chunk(&mut conn.out, &translated);
                        }
                        break 'relay Relay::UpstreamFailed(format!(
                            "malformed provider event: {e}"
                        ));
                    }
                    &translated
                }
            };
            if bytes.is_empty() {
                continue;
            }
            tail.push(bytes);
            if chunked_out {
                http::write_chunk(&mut conn.out, bytes);
            } else {
                conn.out.extend_from_slice(bytes);
            }
        }
        if finished {
            if let StreamMode::Translate(t) = &mut mode {
                translated.clear();
                t.finish(&mut translated, None);
                if chunked_out {
                    http::write_chunk(&mut conn.out, &translated);
                } else {
                    conn.out.extend_from_slice(&translated);
                }
            }
            if chunked_out {
                // The terminating chunk leaves with the last events.
                conn.out.extend_from_slice(http::LAST_CHUNK);
                ended = true;
            }
        }
        if !conn.out.is_empty() && conn.flush().await.is_err() {
            break Relay::ClientGone;
        }
        if finished {
            break Relay::Complete;
        }
        // Keep only undecoded bytes, then read more.
        resp.drain(..pos);
        pos = 0;
        let buf = std::mem::take(resp);
        // Until the first content byte the first-byte timeout applies (a long
        // prefill after an early head); after it, the stream-idle timeout.
        let wait = if first { timeout } else { idle };
        let keepalive = keepalive_every
            .filter(|_| tail.at_event_boundary())
            .map(|every| {
                let comment: &'static [u8] = if chunked_out {
                    KEEPALIVE_CHUNK
                } else {
                    KEEPALIVE_COMMENT
                };
                (every, comment)
            });
        match armed
            .read_stream(&mut conn.stream, up, buf, wait, keepalive, write_timeout)
            .await
        {
            Wait::Done((Ok(k), b)) if k > 0 => *resp = b,
            Wait::Done((r, b)) => {
                *resp = b;
                if head.framing == ResponseFraming::UntilClose && r.is_ok() {
                    break Relay::Complete;
                }
                break Relay::UpstreamFailed(match r {
                    Ok(_) => "provider closed the connection mid-stream".to_string(),
                    Err(e) => format!("read failed mid-stream: {e}"),
                });
            }
            Wait::TimedOut if first => {
                break Relay::UpstreamFailed(format!(
                    "no data for {} ms (first_byte_timeout_ms)",
                    wait.as_millis()
                ));
            }
            Wait::TimedOut => {
                break Relay::UpstreamFailed(format!(
                    "stream idle for {} ms (stream_idle_timeout_ms)",
                    wait.as_millis()
                ));
            }
            Wait::ClientGone => break Relay::ClientGone,
        }
    };
    let text = match &mut mode {
        StreamMode::Chat { stats, .. } => {
            ctx.input_tokens = stats.input_tokens;
            ctx.output_tokens = stats.output_tokens;
            if let Some(e) = &stats.error {
                ctx.error = Some(e.clone());
            }
            std::mem::take(&mut stats.text)
        }
        StreamMode::Tap(t) | StreamMode::Translate(t) => {
            ctx.input_tokens = t.usage.map(|u| u.input_tokens);
            ctx.output_tokens = t.usage.map(|u| u.output_tokens);
            if let Some(e) = &t.error {
                ctx.error = Some(e.clone());
            }
            std::mem::take(&mut t.text)
        }
    };
    post_response(core, ctx, text);
    match outcome {
        Relay::Complete => {
            if !ended {
                if let StreamMode::Translate(t) = &mut mode
                    && head.framing == ResponseFraming::UntilClose
                {
                    translated.clear();
                    t.finish(&mut translated, None);
                    conn.out.extend_from_slice(&translated);
                }
                if chunked_out {
                    conn.out.extend_from_slice(http::LAST_CHUNK);
                }
            }
            if conn.flush().await.is_err() {
                return (Relay::ClientGone, false);
            }
            let reusable =
                head.keep_alive && head.framing != ResponseFraming::UntilClose && pos == resp.len();
            (Relay::Complete, reusable)
        }
        Relay::UpstreamFailed(msg) => {
            // End the client's stream in its own format: an error event, never a fake end.
            let mut event = Vec::new();
            match &mut mode {
                StreamMode::Translate(t) => t.finish(&mut event, Some(&msg)),
                _ => translate::write_stream_error(
                    client,
                    &format!("upstream stream ended abnormally: {msg}"),
                    &mut event,
                ),
            }
            if chunked_out {
                http::write_chunk(&mut conn.out, &event);
                conn.out.extend_from_slice(http::LAST_CHUNK);
            } else {
                conn.out.extend_from_slice(&event);
            }
            let _ = conn.flush().await;
            (Relay::UpstreamFailed(msg), false)
        }
        Relay::ClientGone => (Relay::ClientGone, false),
    }
}

/// The built-in mock provider (SPEC §9): deterministic OpenAI-shaped
/// answers, streamed or not, paced by the provider's `latency_ms` and
/// `throughput_tokens_per_sec`.
async fn mock(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    mut ctx: Ctx<'_>,
    parsed: &Parsed,
    client: Format,
) -> Next {
    let p = &core.snap.config.providers[ctx.provider.unwrap_or(0)];
    let model = ctx.sent_model.clone().unwrap_or_default();
    let prompt_bytes: usize = match (&parsed.chat, &parsed.canonical) {
        (Some(info), _) => info.texts().map(str::len).sum(),
        (None, Some(c)) => {
            c.system.as_ref().map_or(0, String::len)
                + c.messages
                    .iter()
                    .flat_map(|m| &m.parts)
                    .map(|p| if let Part::Text(t) = p { t.len() } else { 0 })
                    .sum::<usize>()
        }
        (None, None) => 0,
    };
    // OpenAI chat clients get the mock's own writer; others the canonical encoders.
    let mut encoder = (client != Format::OpenAiChat)
        .then(|| translate::EventEncoder::new(client, parsed.include_usage));
    let input = crate::mock::input_tokens(prompt_bytes);
    let created = ctx.ts_ms / 1000;
    let id = format!("chatcmpl-{}", ctx.id);
    ctx.overhead_us = micros_since(req.t0);
    if let Some(ms) = p.latency_ms.filter(|m| *m > 0.0) {
        monoio::time::sleep(Duration::from_micros((ms * 1000.0) as u64)).await;
    }
    ctx.ttft_ms = Some(ms(req.t0.elapsed()));
    ctx.status = 200;
    ctx.input_tokens = Some(input);
    ctx.output_tokens = Some(crate::mock::output_tokens());
    post_response(core, &mut ctx, crate::mock::MOCK_TEXT.to_string());
    let close = !req.keep_alive;
    let mut ok = true;
    if !parsed.stream {
        let mut body = Vec::with_capacity(512);
        if encoder.is_some() {
            let reply = ChatResponse {
                id: id.clone(),
                model: model.clone(),
                parts: vec![Part::Text(crate::mock::MOCK_TEXT.to_string())],
                finish: FinishReason::Stop,
                usage: Some(Usage {
                    input_tokens: input,
                    output_tokens: crate::mock::output_tokens(),
                }),
                created,
            };
            translate::write_response(client, &reply, &mut body);
        } else {
            crate::mock::chat_completion(&mut body, &id, created, &model, input);
        }
        http::write_status_line(&mut conn.out, 200);
        http::write_header(&mut conn.out, b"content-type", b"application/json");
        ctx.write_router_headers(&mut conn.out);
        write_length_and_close(&mut conn.out, body.len(), close);
        conn.out.extend_from_slice(&body);
        ok &= conn.flush().await.is_ok();
    } else {
        // Stream heads carry what is known before the reply: no usage, no response tags.
        let (i, o, rt) = (
            ctx.input_tokens.take(),
            ctx.output_tokens.take(),
            std::mem::take(&mut ctx.response_tags),
        );
        let chunked = !conn.http10;
        http::write_status_line(&mut conn.out, 200);
        http::write_header(&mut conn.out, b"content-type", b"text/event-stream");
        http::write_header(&mut conn.out, b"cache-control", b"no-cache");
        ctx.write_router_headers(&mut conn.out);
        if chunked {
            http::write_header(&mut conn.out, b"transfer-encoding", b"chunked");
            if close {
                http::write_header(&mut conn.out, b"connection", b"close");
            }
        } else {
            http::write_header(&mut conn.out, b"connection", b"close");
        }
        conn.out.extend_from_slice(b"\r\n");
        (ctx.input_tokens, ctx.output_tokens, ctx.response_tags) = (i, o, rt);
        let gap = p
            .throughput_tokens_per_sec
            .filter(|t| *t > 0.0)
            .map(|t| Duration::from_secs_f64(1.0 / t));
        let mut event = Vec::with_capacity(256);
        let emit = |conn: &mut ClientConn, event: &mut Vec<u8>| {
            if chunked {
                http::write_chunk(&mut conn.out, event);
            } else {
                conn.out.extend_from_slice(event);
            }
            event.clear();
        };
        match &mut encoder {
            Some(e) => e.encode(
                &StreamEvent::Start {
                    id: id.clone(),
                    model: model.clone(),
                    created,
                },
                &mut event,
            ),
            None => crate::mock::chat_chunk(
                &mut event,
                &id,
                created,
                &model,
                "{\"role\":\"assistant\",\"content\":\"\"}",
                None,
            ),
        }
        emit(conn, &mut event);
        for token in crate::mock::tokens() {
            if let Some(g) = gap {
                if conn.flush().await.is_err() {
                    ok = false;
                    break;
                }
                monoio::time::sleep(g).await;
            }
            match &mut encoder {
                Some(e) => e.encode(&StreamEvent::TextDelta(token.to_string()), &mut event),
                None => crate::mock::chat_chunk(
                    &mut event,
                    &id,
                    created,
                    &model,
                    &crate::mock::content_delta(token),
                    None,
                ),
            }
            emit(conn, &mut event);
        }
        if ok {
            if let Some(e) = &mut encoder {
                e.encode(&StreamEvent::Finish(FinishReason::Stop), &mut event);
                let usage = Usage {
                    input_tokens: input,
                    output_tokens: crate::mock::output_tokens(),
                };
                e.encode(&StreamEvent::Usage(usage), &mut event);
                e.encode(&StreamEvent::End, &mut event);
                e.finish(&mut event);
                emit(conn, &mut event);
            } else {
                crate::mock::chat_chunk(&mut event, &id, created, &model, "{}", Some("stop"));
                emit(conn, &mut event);
                if parsed.include_usage {
                    crate::mock::usage_chunk(&mut event, &id, created, &model, input);
                    emit(conn, &mut event);
                }
                event.extend_from_slice(crate::mock::DONE);
                emit(conn, &mut event);
            }
            if chunked {
                conn.out.extend_from_slice(http::LAST_CHUNK);
            }
            ok &= conn.flush().await.is_ok();
        }
    }
    if !ok {
        ctx.status = 499;
        ctx.error =
            Some("client_closed: the client disconnected before the response completed".into());
    }
    ctx.finish(core, req.body);
    if ok && !close && !conn.http10 {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

#[cfg(test)]
mod tests {
    use super::EventTail;

    fn tail_after(pieces: &[&[u8]]) -> bool {
        let mut t = EventTail::default();
        for p in pieces {
            t.push(p);
        }
        t.at_event_boundary()
    }

    #[test]
    fn keepalive_comments_go_only_between_events() {
        assert!(tail_after(&[]), "nothing sent yet");
        assert!(tail_after(&[b"data: {}\n\n"]));
        assert!(tail_after(&[b"data: {}\r\n\r\n"]));
        assert!(tail_after(&[b"data: {}\r\r"]));
        assert!(
            tail_after(&[b"event: ping\ndata: {}\n", b"\n"]),
            "split blank line"
        );
        assert!(tail_after(&[b"data: {}\r\n", b"\r", b"\n"]));
        assert!(!tail_after(&[b"data: {\"a\":"]), "inside an event");
        assert!(!tail_after(&[b"data: {}\n"]), "one line, no blank line yet");
        assert!(!tail_after(&[b"data: {}\n\n", b"data: {"]));
        assert!(!tail_after(&[b"data: {}\r\n"]));
    }
}
