//! The request-side phases' work: checking the inbound key, parsing the
//! client's body into what routing needs ([`Parsed`]), the keyword
//! classifier's pass over it, and building the upstream request (the
//! client's bytes with only `model` and `plugins` spliced, or a translated
//! body) for a [`Plan`].

use std::ops::Range;

use super::Core;
use super::request::Request;
use super::translate;
use crate::classify::TagSet;
use crate::error::RouterError;
use crate::formats::{ChatRequest, Format, FormatError, Part};
use crate::http;
use crate::json::{self, ChatRequestInfo, PluginRequest};

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

/// How the provider is called for one request.
pub struct Plan {
    pub pidx: usize,
    /// The endpoint (global index into `Snapshot::eps`).
    pub eidx: usize,
    /// The client's wire format (the endpoint it called).
    pub client: Format,
    /// The wire format the provider is spoken to in.
    pub upstream: Format,
    /// Same-format route: the client's bytes go through, only `model` and
    /// `plugins` spliced; the provider's bytes come back unchanged.
    pub passthrough: bool,
    pub include_usage: bool,
    /// W3C `traceparent` for this attempt (telemetry on): sent upstream
    /// instead of the client's.
    pub traceparent: Option<[u8; 55]>,
}

/// What routing needs from a request, whatever its format.
pub struct Parsed {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub plugins: Vec<PluginRequest>,
    pub system: Option<String>,
    /// Span of the conversation (`messages`, or `input` for Responses) in the body.
    pub messages: Option<Range<usize>>,
    pub has_images: bool,
    pub has_tools: bool,
    pub top: json::TopLevel,
    /// OpenAI chat clients: the fast extraction (no canonical parse needed
    /// for same-format routes).
    pub chat: Option<ChatRequestInfo>,
    /// Other clients: the canonical request.
    pub canonical: Option<ChatRequest>,
    /// Texts found by [`light_parse`] when there is no canonical request.
    pub light_texts: Vec<String>,
    /// Why the canonical parse failed (then only same-format routes work).
    pub canonical_error: Option<String>,
}

pub fn parse_client(
    client: Format,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Parsed, RouterError> {
    if client == Format::OpenAiChat {
        let info =
            json::parse_chat_request(body, scratch).map_err(|e| RouterError::bad_request(e.0))?;
        return Ok(Parsed {
            model: info.model.clone(),
            stream: info.stream,
            include_usage: info.include_usage,
            plugins: info.plugins.clone(),
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
    let plugins = match top.get("plugins") {
        Some(m) => plugin_requests(&body[m.value.clone()])?,
        None => Vec::new(),
    };
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
        plugins,
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
    let plugins = match top.get("plugins") {
        Some(m) => plugin_requests(&body[m.value.clone()])?,
        None => Vec::new(),
    };
    Ok(Parsed {
        model,
        stream: v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
        include_usage: false,
        plugins,
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
pub fn classify(core: &Core, parsed: &Parsed, tags: &mut TagSet) {
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

/// The body's `plugins` array: each entry's `id` and its other keys.
fn plugin_requests(raw: &[u8]) -> Result<Vec<PluginRequest>, RouterError> {
    let v: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| RouterError::bad_request(format!("`plugins`: {e}")))?;
    let items = v
        .as_array()
        .ok_or_else(|| RouterError::bad_request("`plugins` must be an array"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut settings = item
            .as_object()
            .cloned()
            .ok_or_else(|| RouterError::bad_request(format!("`plugins[{i}]` must be an object")))?;
        let id = match settings.remove("id") {
            Some(serde_json::Value::String(s)) => s,
            _ => {
                return Err(RouterError::bad_request(format!(
                    "`plugins[{i}].id` must be a string"
                )));
            }
        };
        out.push(PluginRequest { id, settings });
    }
    Ok(out)
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
pub fn build_upstream_request(
    core: &Core,
    req: &Request<'_>,
    client_body: &[u8],
    plan: &Plan,
    splice: Option<(&json::TopLevel, Option<&str>)>,
    translated: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let p = &core.snap.config.providers[plan.pidx];
    let offset = plan.eidx - core.snap.endpoints_of(plan.pidx).start;
    let ep = p.endpoints.get(offset).unwrap_or(&p.endpoints[0]);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(ep.base_path.as_bytes());
    match plan.upstream {
        Format::OpenAiChat => out.extend_from_slice(b"/chat/completions"),
        Format::Responses => out.extend_from_slice(b"/responses"),
        Format::Ollama => out.extend_from_slice(b"/api/chat"),
        Format::Anthropic => {
            if !ep.base_path.ends_with("/v1") {
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
    out.extend_from_slice(ep.host_header.as_bytes());
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
                || (plan.traceparent.is_some()
                    && (name.eq_ignore_ascii_case(b"traceparent")
                        || name.eq_ignore_ascii_case(b"tracestate")))
            {
                continue;
            }
            http::write_header(out, name, value);
        }
    } else if let Some(ua) = req.header("user-agent") {
        http::write_header(out, b"user-agent", ua);
    }
    if let Some(tp) = &plan.traceparent {
        http::write_header(out, b"traceparent", tp);
    }
    // copy: the body is built aside, then follows the head so one write sends both.
    let mut spliced = Vec::new();
    let body: &[u8] = match (splice, translated) {
        (_, Some(t)) => t,
        (Some((top, rewrite)), None) => {
            spliced.reserve(client_body.len() + 64);
            json::splice_request(client_body, top, rewrite, &mut spliced);
            &spliced
        }
        (None, None) => client_body,
    };
    http::write_content_length(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}
