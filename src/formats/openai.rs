//! OpenAI chat completions (`POST /v1/chat/completions`): the client format of
//! that endpoint and the provider format `openai` (OpenAI, vLLM, llama-server,
//! xAI, Cloudflare, …). See the parent module for the function set; the stream
//! and error facts follow `docs/formats.md`
//!
//! # Mapping
//!
//! - `system` and `developer` messages (string or text-part content) before
//!   the first other message are joined with `"\n\n"` into
//!   [`ChatRequest::system`], which the writer sends back as one leading
//!   `system` message. Later ones are [`Role::System`] turns, kept in place
//!   and written as `system` messages where they stand.
//! - `user` content: a string is one [`Part::Text`]; an array keeps its `text`
//!   and `image_url` parts in order (`data:<type>;base64,…` URLs become
//!   [`Image::Base64`], anything else [`Image::Url`]).
//! - `assistant` messages: text content (string, or `text` / `refusal` parts)
//!   and `tool_calls` become [`Part::Text`] and [`Part::ToolCall`].
//! - Each `tool` message becomes one [`Role::Tool`] message with one
//!   [`Part::ToolResult`] (the convention of every parser; the Anthropic
//!   writer merges consecutive ones into one user turn). The writer turns
//!   every `ToolResult`, wherever it sits, into its own `tool` message, in
//!   order, ahead of any text or image of the same canonical message.
//! - `max_completion_tokens` (preferred) or `max_tokens`; the writer sends
//!   `max_tokens`, which every OpenAI-compatible server accepts.
//! - `stop` (string or array), `temperature`, `top_p`, `tools` (function tools),
//!   `tool_choice` (`auto` / `none` / `required` / a named function),
//!   `parallel_tool_calls`, `response_format` (`json_object` / `json_schema`;
//!   `text` means none), `stream` and `stream_options.include_usage`. The
//!   writer always asks for usage when streaming, so the router knows the token
//!   counts; `tool_choice` and `parallel_tool_calls` are only sent with tools
//!   (OpenAI rejects them otherwise).
//! - Replies: `reasoning_content` (or `reasoning`, vLLM / llama-server /
//!   DeepSeek) becomes [`Part::Reasoning`]; the writers emit
//!   `reasoning_content`. A `stop` finish with tool calls in the reply is
//!   reported as [`FinishReason::ToolCalls`] (some servers say `stop`).
//!
//! # Dropped in cross-format conversion
//!
//! Everything the canonical model has no field for: `n` (only choice 0 is
//! read), `seed`, `logprobs`, `top_logprobs`, `logit_bias`,
//! `presence_penalty`, `frequency_penalty`, `user`, `metadata`, `store`,
//! `service_tier`, `reasoning_effort`, `modalities`, `audio`, `prediction`,
//! `web_search_options`, message `name`, tool `strict`, image `detail`,
//! `response_format.json_schema.description`, the legacy `functions` /
//! `function_call`, reasoning text sent back in assistant history (servers
//! reject it), images in assistant messages, the `is_error` flag of tool
//! results (OpenAI has none), Anthropic thinking signatures, and reply
//! `system_fingerprint` / `logprobs`. Unsupported content parts
//! (`input_audio`, `file`) and non-function tools are rejected with a
//! [`FormatError`] rather than silently dropped.

use serde_json::{Map, Value, json};

use super::{
    ApiError, ChatRequest, ChatResponse, FinishReason, Format, FormatError, Image, Message,
    OutputFormat, Part, Role, StreamEvent, Tool, ToolChoice, Usage,
};

// ---------------------------------------------------------------------------
// JSON helpers (shared with the ollama module)
// ---------------------------------------------------------------------------

/// Append `v` serialized.
pub(crate) fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Serializing a `Value` into a `Vec` cannot fail: no I/O, string keys only.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Append `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    crate::json::write_json_string(out, s);
}

/// Parse `body` as a JSON object.
pub(crate) fn parse_root(body: &[u8], what: &str) -> Result<Map<String, Value>, FormatError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(FormatError(format!("{what} must be a JSON object"))),
        Err(e) => Err(FormatError(format!("{what} is not valid JSON: {e}"))),
    }
}

/// `m[key]`, with JSON `null` read as absent.
pub(crate) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn type_error(ctx: &str, key: &str, what: &str) -> FormatError {
    FormatError(format!("`{ctx}{key}` must be {what}"))
}

pub(crate) fn opt_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<Option<&'a str>, FormatError> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(type_error(ctx, key, "a string")),
    }
}

pub(crate) fn opt_u64(
    m: &Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<Option<u64>, FormatError> {
    match field(m, key) {
        None => Ok(None),
        Some(v) => as_count(v)
            .map(Some)
            .ok_or_else(|| type_error(ctx, key, "a non-negative integer")),
    }
}

pub(crate) fn opt_f64(
    m: &Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<Option<f64>, FormatError> {
    match field(m, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| type_error(ctx, key, "a number")),
    }
}

pub(crate) fn opt_bool(
    m: &Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<Option<bool>, FormatError> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(ctx, key, "a boolean")),
    }
}

/// A token count: a non-negative integer (a float with no fraction is accepted).
pub(crate) fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
            .map(|f| f as u64)
    })
}

/// A count read leniently from a reply (absent or malformed → 0).
pub(crate) fn count(m: &Map<String, Value>, key: &str) -> u64 {
    m.get(key).and_then(as_count).unwrap_or(0)
}

/// `stop`: a string or an array of strings.
pub(crate) fn parse_stop(v: Option<&Value>, ctx: &str) -> Result<Vec<String>, FormatError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error(ctx, "stop", "a string or an array of strings"))
            })
            .collect(),
        Some(_) => Err(type_error(ctx, "stop", "a string or an array of strings")),
    }
}

/// Tool-call arguments as JSON text: a string as is, anything else serialized.
pub(crate) fn arguments_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// 64-bit FNV-1a, for ids derived from content (stable across runs).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------
// Errors (shared vocabulary)
// ---------------------------------------------------------------------------

/// Error types kept as the provider sent them; anything else is replaced by
/// the type the status implies.
const KNOWN_KINDS: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "insufficient_quota",
    "api_error",
    "server_error",
    "overloaded_error",
    "timeout_error",
];

/// The error type an HTTP status implies (the shared table).
pub(crate) fn kind_for_status(status: u16) -> &'static str {
    super::kind_for_status(status, Format::OpenAiChat)
}

/// The status an error type implies (the shared table).
pub(crate) fn status_for_kind(kind: &str) -> u16 {
    super::status_for_kind(kind, Format::OpenAiChat)
}

/// `kind` if it is in the canonical vocabulary, else the type `status` implies.
pub(crate) fn normalize_kind(kind: Option<&str>, status: u16) -> String {
    match kind {
        Some(k) if KNOWN_KINDS.contains(&k) => k.to_string(),
        _ => kind_for_status(status).to_string(),
    }
}

/// Longest error text taken from a non-JSON body.
pub(crate) const MAX_ERROR_TEXT: usize = 2048;

/// A non-JSON error body as a message: lossy UTF-8, trimmed, at most
/// [`MAX_ERROR_TEXT`] bytes (cut on a character boundary); a placeholder when
/// empty.
pub(crate) fn error_text(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut t = text.trim();
    if t.len() > MAX_ERROR_TEXT {
        t = super::cut_at_char_boundary(t, MAX_ERROR_TEXT).trim_end();
    }
    if t.is_empty() {
        format!("upstream returned HTTP {status} with an empty body")
    } else {
        t.to_string()
    }
}

/// `(type, message)` from the error shapes OpenAI-compatible servers use:
/// `{"error":{"message","type"}}`, `{"error":"…"}`, `{"message":"…"}`,
/// `{"detail":…}` (FastAPI).
fn error_fields(root: &Map<String, Value>) -> Option<(Option<&str>, String)> {
    match field(root, "error") {
        Some(Value::Object(e)) => {
            let kind = e.get("type").and_then(Value::as_str);
            let message = match e.get("message") {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => Value::Object(e.clone()).to_string(),
            };
            return Some((kind, message));
        }
        Some(Value::String(s)) => return Some((None, s.clone())),
        _ => {}
    }
    if let Some(Value::String(s)) = field(root, "message") {
        return Some((root.get("type").and_then(Value::as_str), s.clone()));
    }
    match field(root, "detail") {
        Some(Value::String(s)) => Some((None, s.clone())),
        Some(v) => Some((None, v.to_string())),
        None => None,
    }
}

/// An error payload received mid-stream (`{"error":{…}}`): the status comes
/// from a numeric `code` when it is one, else from the type.
fn stream_error(root: &Map<String, Value>) -> ApiError {
    let (kind, message) =
        error_fields(root).unwrap_or((None, Value::Object(root.clone()).to_string()));
    let code = match field(root, "error") {
        Some(Value::Object(e)) => e.get("code").and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        }),
        _ => None,
    };
    let status = match code {
        Some(c @ 400..=599) => c as u16,
        _ => status_for_kind(kind.unwrap_or("api_error")),
    };
    ApiError {
        status,
        kind: normalize_kind(kind, status),
        message,
    }
}

/// A provider's error reply in canonical form. The message is the provider's,
/// unchanged; a body that is not JSON becomes the message (trimmed, ≤ 2 KB).
pub fn parse_error(status: u16, body: &[u8]) -> ApiError {
    if let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body)
        && let Some((kind, message)) = error_fields(&root)
    {
        return ApiError {
            status,
            kind: normalize_kind(kind, status),
            message,
        };
    }
    ApiError {
        status,
        kind: kind_for_status(status).to_string(),
        message: error_text(status, body),
    }
}

/// `{"error":{"message","type","param","code"}}` — router-made errors carry
/// their `code`, translated provider errors `null`.
pub fn write_error(err: &ApiError, code: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_str(out, &err.message);
    out.extend_from_slice(b",\"type\":");
    write_str(out, &err.kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    match code {
        Some(c) => write_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
}

// ---------------------------------------------------------------------------
// Finish reasons, usage, images
// ---------------------------------------------------------------------------

fn finish_from(reason: Option<&str>, saw_tool_call: bool) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ if saw_tool_call => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn finish_str(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::StopSequence => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn parse_usage(u: &Map<String, Value>) -> Usage {
    Usage {
        input_tokens: count(u, "prompt_tokens"),
        output_tokens: count(u, "completion_tokens"),
    }
}

fn usage_value(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
    })
}

/// An `image_url` URL: `data:<type>[;…];base64,<data>` → base64, else a URL.
fn parse_image_url(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(meta) = meta.strip_suffix(";base64")
    {
        let media_type = meta.split(';').next().unwrap_or_default();
        return Image::Base64 {
            media_type: if media_type.is_empty() {
                "application/octet-stream".to_string()
            } else {
                media_type.to_string()
            },
            data: data.to_string(),
        };
    }
    Image::Url(url.to_string())
}

fn image_url(img: &Image) -> String {
    match img {
        Image::Url(u) => u.clone(),
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// An OpenAI chat-completions request body in canonical form.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let root = parse_root(body, "request body")?;
    let mut req = ChatRequest {
        model: opt_str(&root, "model", "")?.unwrap_or_default().to_string(),
        ..ChatRequest::default()
    };

    let messages = field(&root, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError("`messages` must be an array".into()))?;
    let mut system: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        parse_message(i, m, &mut system, &mut req.messages)?;
    }
    if !system.is_empty() {
        req.system = Some(system.join("\n\n"));
    }

    if let Some(tools) = field(&root, "tools") {
        let tools = tools
            .as_array()
            .ok_or_else(|| FormatError("`tools` must be an array".into()))?;
        for (i, t) in tools.iter().enumerate() {
            req.tools.push(parse_tool(i, t)?);
        }
    }
    req.tool_choice = match field(&root, "tool_choice") {
        None => None,
        Some(v) => Some(parse_tool_choice(v)?),
    };
    req.parallel_tool_calls = opt_bool(&root, "parallel_tool_calls", "")?;
    req.max_tokens = match opt_u64(&root, "max_completion_tokens", "")? {
        Some(n) => Some(n),
        None => opt_u64(&root, "max_tokens", "")?,
    };
    req.temperature = opt_f64(&root, "temperature", "")?;
    req.top_p = opt_f64(&root, "top_p", "")?;
    req.stop = parse_stop(field(&root, "stop"), "")?;
    req.stream = opt_bool(&root, "stream", "")?.unwrap_or(false);
    if let Some(so) = field(&root, "stream_options") {
        let so = so
            .as_object()
            .ok_or_else(|| FormatError("`stream_options` must be an object".into()))?;
        req.include_usage = opt_bool(so, "include_usage", "stream_options.")?.unwrap_or(false);
    }
    req.output = match field(&root, "response_format") {
        None => None,
        Some(v) => parse_response_format(v)?,
    };
    Ok(req)
}

fn parse_message(
    i: usize,
    v: &Value,
    system: &mut Vec<String>,
    out: &mut Vec<Message>,
) -> Result<(), FormatError> {
    let ctx = format!("messages[{i}].");
    let m = v
        .as_object()
        .ok_or_else(|| FormatError(format!("`messages[{i}]` must be an object")))?;
    let role = opt_str(m, "role", &ctx)?
        .ok_or_else(|| FormatError(format!("`messages[{i}].role` is required")))?;
    match role {
        // Before the first turn: the system prompt; later: a system turn in place.
        "system" | "developer" => {
            let text = text_content(field(m, "content"), &ctx)?;
            if text.is_empty() {
                return Ok(());
            }
            if out.is_empty() {
                system.push(text);
            } else {
                out.push(Message {
                    role: Role::System,
                    parts: vec![Part::Text(text)],
                });
            }
        }
        "user" => {
            let parts = user_content(field(m, "content"), &ctx)?;
            out.push(Message {
                role: Role::User,
                parts,
            });
        }
        "assistant" => {
            let mut parts = Vec::new();
            match field(m, "content") {
                None => {}
                Some(Value::String(s)) if !s.is_empty() => parts.push(Part::Text(s.clone())),
                Some(Value::String(_)) => {}
                Some(Value::Array(items)) => {
                    for (k, item) in items.iter().enumerate() {
                        let text = text_part(item, &format!("{ctx}content[{k}]"))?;
                        if !text.is_empty() {
                            parts.push(Part::Text(text.to_string()));
                        }
                    }
                }
                Some(_) => return Err(type_error(&ctx, "content", "a string or an array")),
            }
            if let Some(calls) = field(m, "tool_calls") {
                let calls = calls
                    .as_array()
                    .ok_or_else(|| type_error(&ctx, "tool_calls", "an array"))?;
                for (k, c) in calls.iter().enumerate() {
                    parts.push(parse_tool_call(c, &format!("{ctx}tool_calls[{k}]."))?);
                }
            }
            out.push(Message {
                role: Role::Assistant,
                parts,
            });
        }
        "tool" => {
            let call_id = opt_str(m, "tool_call_id", &ctx)?
                .unwrap_or_default()
                .to_string();
            let content = text_content(field(m, "content"), &ctx)?;
            let part = Part::ToolResult {
                call_id,
                content,
                is_error: false,
            };
            out.push(Message {
                role: Role::Tool,
                parts: vec![part],
            });
        }
        "function" => {
            return Err(FormatError(format!(
                "`messages[{i}]`: the deprecated role 'function' is not supported; use 'tool'"
            )));
        }
        other => {
            return Err(FormatError(format!(
                "`messages[{i}].role`: unknown role '{other}'"
            )));
        }
    }
    Ok(())
}

/// The text of a `text` (or `refusal`) content part.
fn text_part<'a>(item: &'a Value, ctx: &str) -> Result<&'a str, FormatError> {
    let p = item
        .as_object()
        .ok_or_else(|| FormatError(format!("`{ctx}` must be an object")))?;
    let ty = p.get("type").and_then(Value::as_str).unwrap_or("text");
    let key = match ty {
        "text" => "text",
        "refusal" => "refusal",
        other => {
            return Err(FormatError(format!(
                "`{ctx}`: content part type '{other}' is not supported here (text only)"
            )));
        }
    };
    p.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| FormatError(format!("`{ctx}.{key}` must be a string")))
}

/// Text-only content (system, developer, tool): a string or text parts,
/// joined with `"\n\n"`.
fn text_content(v: Option<&Value>, ctx: &str) -> Result<String, FormatError> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) => {
            let mut texts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                texts.push(text_part(item, &format!("{ctx}content[{k}]"))?);
            }
            Ok(texts.join("\n\n"))
        }
        Some(_) => Err(type_error(ctx, "content", "a string or an array")),
    }
}

fn user_content(v: Option<&Value>, ctx: &str) -> Result<Vec<Part>, FormatError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let pctx = format!("{ctx}content[{k}]");
                let p = item
                    .as_object()
                    .ok_or_else(|| FormatError(format!("`{pctx}` must be an object")))?;
                match p.get("type").and_then(Value::as_str).unwrap_or("text") {
                    "text" => parts.push(Part::Text(text_part(item, &pctx)?.to_string())),
                    "image_url" => {
                        let url = match field(p, "image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(Value::Object(o)) => {
                                o.get("url").and_then(Value::as_str).ok_or_else(|| {
                                    FormatError(format!("`{pctx}.image_url.url` must be a string"))
                                })?
                            }
                            _ => {
                                return Err(FormatError(format!(
                                    "`{pctx}.image_url` must be an object with a url"
                                )));
                            }
                        };
                        parts.push(Part::Image(parse_image_url(url)));
                    }
                    other => {
                        return Err(FormatError(format!(
                            "`{pctx}`: content part type '{other}' cannot be translated to \
                             another format (text and image_url only)"
                        )));
                    }
                }
            }
            Ok(parts)
        }
        Some(_) => Err(type_error(ctx, "content", "a string or an array")),
    }
}

fn parse_tool_call(v: &Value, ctx: &str) -> Result<Part, FormatError> {
    let c = v
        .as_object()
        .ok_or_else(|| FormatError(format!("`{ctx}` must be an object")))?;
    if let Some(ty) = opt_str(c, "type", ctx)?
        && ty != "function"
    {
        return Err(FormatError(format!(
            "`{ctx}type`: tool call type '{ty}' is not supported (function only)"
        )));
    }
    let f = field(c, "function")
        .and_then(Value::as_object)
        .ok_or_else(|| FormatError(format!("`{ctx}function` must be an object")))?;
    Ok(Part::ToolCall {
        id: opt_str(c, "id", ctx)?.unwrap_or_default().to_string(),
        name: opt_str(f, "name", ctx)?.unwrap_or_default().to_string(),
        arguments: arguments_text(f.get("arguments")),
    })
}

/// An OpenAI-style function tool (`{type:function,function:{…}}`); shared
/// with the ollama module, whose tools have the same shape.
pub(crate) fn parse_tool(i: usize, v: &Value) -> Result<Tool, FormatError> {
    let ctx = format!("tools[{i}].");
    let t = v
        .as_object()
        .ok_or_else(|| FormatError(format!("`tools[{i}]` must be an object")))?;
    if let Some(ty) = opt_str(t, "type", &ctx)?
        && ty != "function"
    {
        return Err(FormatError(format!(
            "`tools[{i}].type`: tool type '{ty}' cannot be translated to another format \
             (function tools only)"
        )));
    }
    let f = field(t, "function")
        .and_then(Value::as_object)
        .ok_or_else(|| FormatError(format!("`tools[{i}].function` must be an object")))?;
    let fctx = format!("{ctx}function.");
    let name = opt_str(f, "name", &fctx)?
        .ok_or_else(|| FormatError(format!("`tools[{i}].function.name` is required")))?;
    Ok(Tool {
        name: name.to_string(),
        description: opt_str(f, "description", &fctx)?.map(str::to_string),
        parameters: field(f, "parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    })
}

/// The `{type:function,function:{name,description,parameters}}` shape.
pub(crate) fn tool_value(t: &Tool) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), Value::String(t.name.clone()));
    if let Some(d) = &t.description {
        f.insert("description".into(), Value::String(d.clone()));
    }
    f.insert("parameters".into(), t.parameters.clone());
    json!({"type": "function", "function": f})
}

fn parse_tool_choice(v: &Value) -> Result<ToolChoice, FormatError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(FormatError(format!(
                "`tool_choice`: unknown value '{other}'"
            ))),
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function") | None, Some(name)) => Ok(ToolChoice::Named(name.to_string())),
                _ => Err(FormatError(
                    "`tool_choice` must be auto, none, required or \
                     {type:function,function:{name}}"
                        .into(),
                )),
            }
        }
        _ => Err(FormatError(
            "`tool_choice` must be a string or an object".into(),
        )),
    }
}

fn tool_choice_value(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

fn parse_response_format(v: &Value) -> Result<Option<OutputFormat>, FormatError> {
    let o = v
        .as_object()
        .ok_or_else(|| FormatError("`response_format` must be an object".into()))?;
    match opt_str(o, "type", "response_format.")? {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::JsonObject)),
        Some("json_schema") => {
            let js = field(o, "json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    FormatError("`response_format.json_schema` must be an object".into())
                })?;
            let ctx = "response_format.json_schema.";
            Ok(Some(OutputFormat::JsonSchema {
                name: opt_str(js, "name", ctx)?.unwrap_or("response").to_string(),
                schema: field(js, "schema").cloned().unwrap_or_else(|| json!({})),
                strict: opt_bool(js, "strict", ctx)?,
            }))
        }
        Some(other) => Err(FormatError(format!(
            "`response_format.type`: unknown value '{other}'"
        ))),
    }
}

fn response_format_value(o: &OutputFormat) -> Value {
    match o {
        OutputFormat::JsonObject => json!({"type": "json_object"}),
        OutputFormat::JsonSchema {
            name,
            schema,
            strict,
        } => {
            let mut js = Map::new();
            js.insert("name".into(), Value::String(name.clone()));
            js.insert("schema".into(), schema.clone());
            if let Some(s) = strict {
                js.insert("strict".into(), Value::Bool(*s));
            }
            json!({"type": "json_schema", "json_schema": js})
        }
    }
}

/// A canonical request as an OpenAI chat-completions body.
pub fn write_request(req: &ChatRequest, out: &mut Vec<u8>) {
    let mut root = Map::new();
    root.insert("model".into(), Value::String(req.model.clone()));
    let mut msgs = Vec::with_capacity(req.messages.len() + 1);
    if let Some(s) = &req.system {
        msgs.push(json!({"role": "system", "content": s}));
    }
    for m in &req.messages {
        write_message(m, &mut msgs);
    }
    root.insert("messages".into(), Value::Array(msgs));
    if let Some(n) = req.max_tokens {
        root.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        root.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        root.insert("top_p".into(), json!(p));
    }
    if !req.stop.is_empty() {
        root.insert("stop".into(), json!(req.stop));
    }
    if req.stream {
        root.insert("stream".into(), Value::Bool(true));
        root.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !req.tools.is_empty() {
        root.insert(
            "tools".into(),
            Value::Array(req.tools.iter().map(tool_value).collect()),
        );
        if let Some(c) = &req.tool_choice {
            root.insert("tool_choice".into(), tool_choice_value(c));
        }
        if let Some(p) = req.parallel_tool_calls {
            root.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(o) = &req.output {
        root.insert("response_format".into(), response_format_value(o));
    }
    write_value(out, &Value::Object(root));
}

fn content_part_value(p: &Part) -> Option<Value> {
    match p {
        Part::Text(t) => Some(json!({"type": "text", "text": t})),
        Part::Image(img) => {
            Some(json!({"type": "image_url", "image_url": {"url": image_url(img)}}))
        }
        _ => None,
    }
}

fn write_message(m: &Message, msgs: &mut Vec<Value>) {
    match m.role {
        Role::System => {
            let text = joined_text(&m.parts);
            if !text.is_empty() {
                msgs.push(json!({"role": "system", "content": text}));
            }
        }
        Role::Assistant => {
            let mut texts: Vec<&str> = Vec::new();
            let mut calls = Vec::new();
            let mut results = Vec::new();
            for p in &m.parts {
                match p {
                    Part::Text(t) => texts.push(t),
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    } => calls.push(json!({
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    })),
                    Part::ToolResult { .. } => results.push(p),
                    Part::Image(_) | Part::Reasoning { .. } => {}
                }
            }
            let content = match texts.as_slice() {
                [] if calls.is_empty() => json!(""),
                [] => Value::Null,
                [one] => json!(one),
                many => Value::Array(
                    many.iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect(),
                ),
            };
            let mut msg = Map::new();
            msg.insert("role".into(), json!("assistant"));
            msg.insert("content".into(), content);
            if !calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            msgs.push(Value::Object(msg));
            for r in results {
                push_tool_result(r, msgs);
            }
        }
        Role::User | Role::Tool => {
            let mut rest: Vec<&Part> = Vec::new();
            let mut had_results = false;
            for p in &m.parts {
                match p {
                    Part::ToolResult { .. } => {
                        had_results = true;
                        push_tool_result(p, msgs);
                    }
                    Part::Text(_) | Part::Image(_) => rest.push(p),
                    Part::ToolCall { .. } | Part::Reasoning { .. } => {}
                }
            }
            if rest.is_empty() && (had_results || m.role == Role::Tool) {
                return;
            }
            let content = match rest.as_slice() {
                [] => json!(""),
                [Part::Text(t)] => json!(t),
                parts => Value::Array(parts.iter().filter_map(|p| content_part_value(p)).collect()),
            };
            msgs.push(json!({"role": "user", "content": content}));
        }
    }
}

/// The text parts of a message joined with a blank line (a system turn
/// written as one string); shared with the ollama module.
pub(crate) fn joined_text(parts: &[Part]) -> String {
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) if !t.is_empty() => Some(t.as_str()),
            _ => None,
        })
        .collect();
    texts.join("\n\n")
}

fn push_tool_result(p: &Part, msgs: &mut Vec<Value>) {
    if let Part::ToolResult {
        call_id, content, ..
    } = p
    {
        msgs.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// An OpenAI `chat.completion` object in canonical form (choice 0).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, FormatError> {
    let root = parse_root(body, "response body")?;
    if field(&root, "error").is_some() {
        let e = stream_error(&root);
        return Err(FormatError(format!(
            "provider returned an error: {}",
            e.message
        )));
    }
    let choices = field(&root, "choices")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError("response has no `choices`".into()))?;
    let choice = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        .or_else(|| choices.first())
        .and_then(Value::as_object)
        .ok_or_else(|| FormatError("response has no choice".into()))?;
    let empty = Map::new();
    let msg = field(choice, "message")
        .and_then(Value::as_object)
        .unwrap_or(&empty);

    let mut parts = Vec::new();
    if let Some(r) = reasoning_text(msg) {
        parts.push(Part::Reasoning {
            text: r.to_string(),
            signature: None,
        });
    }
    match field(msg, "content") {
        Some(Value::String(s)) if !s.is_empty() => parts.push(Part::Text(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                if let Ok(t) = text_part(item, "message.content")
                    && !t.is_empty()
                {
                    parts.push(Part::Text(t.to_string()));
                }
            }
        }
        _ => {}
    }
    if let Some(Value::String(r)) = field(msg, "refusal")
        && !r.is_empty()
    {
        parts.push(Part::Text(r.clone()));
    }
    let mut saw_call = false;
    if let Some(calls) = field(msg, "tool_calls").and_then(Value::as_array) {
        for (k, c) in calls.iter().enumerate() {
            parts.push(parse_tool_call(c, &format!("message.tool_calls[{k}]."))?);
            saw_call = true;
        }
    }
    let finish = finish_from(
        field(choice, "finish_reason").and_then(Value::as_str),
        saw_call,
    );
    Ok(ChatResponse {
        id: root
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        model: root
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        parts,
        finish,
        usage: field(&root, "usage")
            .and_then(Value::as_object)
            .map(parse_usage),
        created: root.get("created").and_then(as_count).unwrap_or(0),
    })
}

/// `reasoning_content` (vLLM, DeepSeek, llama-server) or `reasoning`.
fn reasoning_text(m: &Map<String, Value>) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(Value::as_str))
        .find(|s| !s.is_empty())
}

/// A canonical reply as a `chat.completion` object.
pub fn write_response(resp: &ChatResponse, out: &mut Vec<u8>) {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for p in &resp.parts {
        match p {
            Part::Text(t) => text.push_str(t),
            Part::Reasoning { text: r, .. } => reasoning.push_str(r),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            Part::Image(_) | Part::ToolResult { .. } => {}
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !reasoning.is_empty() {
        msg.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    msg.insert("refusal".into(), Value::Null);
    let mut root = Map::new();
    root.insert("id".into(), json!(resp.id));
    root.insert("object".into(), json!("chat.completion"));
    root.insert("created".into(), json!(resp.created));
    root.insert("model".into(), json!(resp.model));
    root.insert(
        "choices".into(),
        json!([{
            "index": 0,
            "message": msg,
            "logprobs": null,
            "finish_reason": finish_str(&resp.finish),
        }]),
    );
    if let Some(u) = &resp.usage {
        root.insert("usage".into(), usage_value(u));
    }
    write_value(out, &Value::Object(root));
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Decodes `chat.completion.chunk` payloads into [`StreamEvent`]s.
///
/// Only choice 0 is read. The first chunk yields `Start`; a missing
/// `finish_reason` before `[DONE]` is supplied (`stop`, or `tool_calls` when a
/// call was seen); usage is emitted once known and after `Finish` (backends
/// that repeat usage on every chunk yield it once, with the latest counts).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    /// The stream's id, seeding ids for tool calls that arrive without one.
    id: String,
    /// Tool calls by canonical index: the upstream key (`index`, or position in
    /// the chunk's array when absent) and the call id.
    calls: Vec<(u64, String)>,
    finished: bool,
    usage: Option<Usage>,
    usage_sent: Option<Usage>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one SSE `data:` payload (`event` is unused: chat completions
    /// streams carry no `event:` lines).
    pub fn feed(
        &mut self,
        _event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(());
        }
        if data.starts_with(b"[DONE]") {
            self.close(out);
            return Ok(());
        }
        let chunk = parse_root(data, "stream chunk")?;
        if field(&chunk, "error").is_some() {
            out.push(StreamEvent::Error(stream_error(&chunk)));
            self.done = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.id = chunk
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            out.push(StreamEvent::Start {
                id: self.id.clone(),
                model: chunk
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                created: chunk.get("created").and_then(as_count).unwrap_or(0),
            });
        }
        if let Some(u) = field(&chunk, "usage").and_then(Value::as_object) {
            self.usage = Some(parse_usage(u));
        }
        if let Some(choices) = field(&chunk, "choices").and_then(Value::as_array) {
            for c in choices {
                if let Some(c) = c.as_object()
                    && c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0
                {
                    self.choice(c, out);
                }
            }
        }
        if self.finished {
            self.flush_usage(out);
        }
        Ok(())
    }

    fn choice(&mut self, c: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        if let Some(delta) = field(c, "delta").and_then(Value::as_object) {
            if let Some(r) = reasoning_text(delta) {
                out.push(StreamEvent::ReasoningDelta(r.to_string()));
            }
            for key in ["content", "refusal"] {
                if let Some(Value::String(s)) = delta.get(key)
                    && !s.is_empty()
                {
                    out.push(StreamEvent::TextDelta(s.clone()));
                }
            }
            if let Some(calls) = field(delta, "tool_calls").and_then(Value::as_array) {
                for (pos, tc) in calls.iter().enumerate() {
                    if let Some(tc) = tc.as_object() {
                        self.tool_fragment(pos, tc, out);
                    }
                }
            }
        }
        if !self.finished
            && let Some(reason) = field(c, "finish_reason").and_then(Value::as_str)
        {
            self.finished = true;
            out.push(StreamEvent::Finish(finish_from(
                Some(reason),
                !self.calls.is_empty(),
            )));
        }
    }

    fn tool_fragment(&mut self, pos: usize, tc: &Map<String, Value>, out: &mut Vec<StreamEvent>) {
        let key = tc
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let id = tc
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let f = tc.get("function").and_then(Value::as_object);
        let existing = self
            .calls
            .iter()
            .rposition(|(k, _)| *k == key)
            .filter(|&i| id.is_none_or(|id| id == self.calls[i].1));
        let index = match existing {
            Some(i) => i,
            None => {
                let index = self.calls.len();
                let id = match id {
                    Some(id) => id.to_string(),
                    None => format!(
                        "call_{:016x}",
                        fnv1a(&[self.id.as_bytes(), &index.to_le_bytes()])
                    ),
                };
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.calls.push((key, id.clone()));
                out.push(StreamEvent::ToolCallStart { index, id, name });
                index
            }
        };
        let arguments = arguments_text(f.and_then(|f| f.get("arguments")));
        if !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta { index, arguments });
        }
    }

    fn flush_usage(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(u) = self.usage
            && self.usage_sent != Some(u)
        {
            self.usage_sent = Some(u);
            out.push(StreamEvent::Usage(u));
        }
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if self.started && !self.finished {
            self.finished = true;
            out.push(StreamEvent::Finish(finish_from(
                None,
                !self.calls.is_empty(),
            )));
        }
        self.flush_usage(out);
        out.push(StreamEvent::End);
        self.done = true;
    }
}

/// Encodes [`StreamEvent`]s as chat-completions SSE frames (`data: …\n\n`, no
/// `event:` lines), the same `id` / `created` / `model` on every chunk.
///
/// The usage chunk (`choices: []`) is sent only when the client asked for it
/// (`include_usage`), right before `data: [DONE]`. After `Error` (sent as
/// `data: {"error":{…}}`) nothing more is written.
#[derive(Debug)]
pub struct StreamEncoder {
    include_usage: bool,
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,`
    head: Vec<u8>,
    started: bool,
    finish_sent: bool,
    usage: Option<Usage>,
    done: bool,
}

impl StreamEncoder {
    pub fn new(include_usage: bool) -> Self {
        StreamEncoder {
            include_usage,
            head: Vec::new(),
            started: false,
            finish_sent: false,
            usage: None,
            done: false,
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start { id, model, created } => {
                if !self.started {
                    self.start(id, model, *created, out);
                }
            }
            StreamEvent::TextDelta(t) => {
                self.ensure_started(out);
                self.chunk(out, &json!({"content": t}), None);
            }
            StreamEvent::ReasoningDelta(t) => {
                self.ensure_started(out);
                self.chunk(out, &json!({"reasoning_content": t}), None);
            }
            StreamEvent::ReasoningSignature(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                let delta = json!({"tool_calls": [{
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]});
                self.chunk(out, &delta, None);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.ensure_started(out);
                let delta =
                    json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]});
                self.chunk(out, &delta, None);
            }
            StreamEvent::Finish(f) => {
                if !self.finish_sent {
                    self.ensure_started(out);
                    self.finish_sent = true;
                    self.chunk(out, &json!({}), Some(finish_str(f)));
                }
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::End => {
                self.ensure_started(out);
                if !self.finish_sent {
                    self.finish_sent = true;
                    self.chunk(out, &json!({}), Some("stop"));
                }
                self.terminate(out);
            }
            StreamEvent::Error(e) => {
                out.extend_from_slice(b"data: {\"error\":{\"message\":");
                write_str(out, &e.message);
                out.extend_from_slice(b",\"type\":");
                write_str(out, &e.kind);
                out.extend_from_slice(b",\"param\":null,\"code\":null}}\n\n");
                self.done = true;
            }
        }
    }

    /// Emit the terminal frames not yet sent. A stream that reached `Finish`
    /// but not `End` gets its usage chunk and `[DONE]`; a stream cut before
    /// `Finish` gets nothing (`[DONE]` would make a truncated reply look
    /// complete; the pipeline reports the failure with an `Error` first).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.done && self.finish_sent {
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<u8>) {
        if self.include_usage
            && let Some(u) = self.usage
        {
            out.extend_from_slice(&self.head);
            out.extend_from_slice(b"\"choices\":[],\"usage\":");
            write_value(out, &usage_value(&u));
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn start(&mut self, id: &str, model: &str, created: u64, out: &mut Vec<u8>) {
        self.started = true;
        self.head.clear();
        self.head.extend_from_slice(b"data: {\"id\":");
        write_str(&mut self.head, id);
        self.head
            .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        self.head.extend_from_slice(created.to_string().as_bytes());
        self.head.extend_from_slice(b",\"model\":");
        write_str(&mut self.head, model);
        self.head.push(b',');
        self.chunk(out, &json!({"role": "assistant", "content": ""}), None);
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start("chatcmpl-router", "", 0, out);
        }
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: &Value, finish: Option<&str>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":");
        write_value(out, delta);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => write_str(out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Part {
        Part::Text(s.to_string())
    }

    fn req_roundtrip(req: &ChatRequest) -> ChatRequest {
        let mut out = Vec::new();
        write_request(req, &mut out);
        parse_request(&out).expect("written request parses")
    }

    fn resp_roundtrip(resp: &ChatResponse) -> ChatResponse {
        let mut out = Vec::new();
        write_response(resp, &mut out);
        parse_response(&out).expect("written response parses")
    }

    /// Split an SSE byte stream into `data:` payloads (framing is done
    /// elsewhere in the crate; this is only for the tests).
    fn sse_payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
        let text = std::str::from_utf8(bytes).expect("utf-8");
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "frames end with a blank line"
        );
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                assert!(!f.contains("event:"), "no event: lines: {f}");
                f.strip_prefix("data: ")
                    .expect("data frame")
                    .as_bytes()
                    .to_vec()
            })
            .collect()
    }

    fn decode_all(payloads: &[&[u8]]) -> Vec<StreamEvent> {
        let mut d = StreamDecoder::new();
        let mut evs = Vec::new();
        for p in payloads {
            d.feed(None, p, &mut evs).expect("decodes");
        }
        evs
    }

    fn encode_all(evs: &[StreamEvent], include_usage: bool) -> Vec<u8> {
        let mut e = StreamEncoder::new(include_usage);
        let mut out = Vec::new();
        for ev in evs {
            e.encode(ev, &mut out);
        }
        e.finish(&mut out);
        out
    }

    // -- requests -----------------------------------------------------------

    const AGENT_REQUEST: &str = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.rs\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"b.rs\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "fn a() {}"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "fn b() {}"}]},
            {"role": "assistant", "content": "Both files define one function."},
            {"role": "user", "content": "Thanks", "name": "dev"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "read_file", "description": "Read a file", "strict": true,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
        }}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "max_completion_tokens": 1024,
        "max_tokens": 99,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "stream": true,
        "stream_options": {"include_usage": true},
        "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    }"#;

    fn agent_canonical() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            system: Some("You are a coding agent.\n\nBe terse.".into()),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![
                        text("What is in this image?"),
                        Part::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0KGgo=".into(),
                        }),
                        Part::Image(Image::Url("https://example.com/cat.jpg".into())),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::ToolCall {
                            id: "call_a".into(),
                            name: "read_file".into(),
                            arguments: r#"{"path":"a.rs"}"#.into(),
                        },
                        Part::ToolCall {
                            id: "call_b".into(),
                            name: "read_file".into(),
                            arguments: r#"{"path":"b.rs"}"#.into(),
                        },
                    ],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "call_a".into(),
                        content: "fn a() {}".into(),
                        is_error: false,
                    }],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "call_b".into(),
                        content: "fn b() {}".into(),
                        is_error: false,
                    }],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![text("Both files define one function.")],
                },
                Message {
                    role: Role::User,
                    parts: vec![text("Thanks")],
                },
            ],
            tools: vec![Tool {
                name: "read_file".into(),
                description: Some("Read a file".into()),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            }],
            tool_choice: Some(ToolChoice::Auto),
            max_tokens: Some(1024),
            temperature: Some(0.2),
            top_p: Some(0.9),
            stop: vec!["END".into()],
            stream: true,
            include_usage: true,
            output: Some(OutputFormat::JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object", "properties": {"a": {"type": "string"}}}),
                strict: Some(true),
            }),
            parallel_tool_calls: Some(false),
        }
    }

    #[test]
    fn request_fixture_parses() {
        let req = parse_request(AGENT_REQUEST.as_bytes()).unwrap();
        assert_eq!(req, agent_canonical());
    }

    #[test]
    fn request_round_trips() {
        let req = agent_canonical();
        assert_eq!(req_roundtrip(&req), req);

        let minimal = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: Role::User,
                parts: vec![text("hi")],
            }],
            ..ChatRequest::default()
        };
        assert_eq!(req_roundtrip(&minimal), minimal);

        let mut other = minimal.clone();
        other.stop = vec!["a".into(), "b".into()];
        other.output = Some(OutputFormat::JsonObject);
        other.tools = agent_canonical().tools;
        other.tool_choice = Some(ToolChoice::Named("read_file".into()));
        other.messages.push(Message {
            role: Role::Assistant,
            parts: vec![text("one"), text("two")],
        });
        assert_eq!(req_roundtrip(&other), other);
        for c in [ToolChoice::None, ToolChoice::Required] {
            other.tool_choice = Some(c);
            assert_eq!(req_roundtrip(&other), other);
        }
    }

    #[test]
    fn request_writer_shapes() {
        let mut out = Vec::new();
        write_request(&agent_canonical(), &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        assert_eq!(v["max_tokens"], json!(1024));
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "You are a coding agent.\n\nBe terse."})
        );
        assert_eq!(
            v["messages"][1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        );
        assert_eq!(v["messages"][2]["content"], Value::Null);
        assert_eq!(
            v["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_a", "content": "fn a() {}"})
        );
        assert_eq!(v["messages"][4]["tool_call_id"], json!("call_b"));
        assert_eq!(v["response_format"]["json_schema"]["name"], json!("answer"));
        assert!(v.get("seed").is_none());

        // Anthropic-style user turn: tool results then text → tool messages, then a user message.
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: Role::User,
                parts: vec![
                    Part::ToolResult {
                        call_id: "t1".into(),
                        content: "ok".into(),
                        is_error: true,
                    },
                    text("go on"),
                ],
            }],
            tool_choice: Some(ToolChoice::Auto),
            parallel_tool_calls: Some(true),
            ..ChatRequest::default()
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "tool", "tool_call_id": "t1", "content": "ok"},
                {"role": "user", "content": "go on"}
            ])
        );
        // tool_choice / parallel_tool_calls are not sent without tools.
        assert!(v.get("tool_choice").is_none() && v.get("parallel_tool_calls").is_none());
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn mid_conversation_system_messages_stay_in_place() {
        let req = parse_request(
            br#"{"model":"m","messages":[
                {"role":"developer","content":"lead"},
                {"role":"system","content":[{"type":"text","text":"also lead"}]},
                {"role":"user","content":"hi","name":"ann"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"ok"},
                {"role":"developer","content":[{"type":"text","text":"Now "},{"type":"text","text":"be brief."}]},
                {"role":"system","content":""},
                {"role":"user","content":"go on"},
                {"role":"system","content":"Last word."}
            ]}"#,
        )
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("lead\n\nalso lead"));
        let system = |t: &str| Message {
            role: Role::System,
            parts: vec![text(t)],
        };
        assert_eq!(req.messages.len(), 6);
        assert_eq!(req.messages[3], system("Now \n\nbe brief."));
        assert_eq!(req.messages[5], system("Last word."));
        assert_eq!(req_roundtrip(&req), req);

        let mut out = Vec::new();
        write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "lead\n\nalso lead"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "system", "content": "Now \n\nbe brief."},
                {"role": "user", "content": "go on"},
                {"role": "system", "content": "Last word."}
            ])
        );

        // Several text parts of a system turn become one string.
        let req = ChatRequest {
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![text("a")],
                },
                Message {
                    role: Role::System,
                    parts: vec![text("x"), text(""), text("y")],
                },
            ],
            ..ChatRequest::default()
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "system", "content": "x\n\ny"})
        );
    }

    #[test]
    fn request_variants_and_rejections() {
        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5,
                "stop":["a","b"],"response_format":{"type":"json_object"},
                "tool_choice":{"type":"function","function":{"name":"f"}}}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.output, Some(OutputFormat::JsonObject));
        assert_eq!(r.tool_choice, Some(ToolChoice::Named("f".into())));
        assert!(!r.stream && !r.include_usage);

        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"},"stop":null}"#,
        )
        .unwrap();
        assert_eq!(r.output, None);
        assert!(r.stop.is_empty());

        for bad in [
            &br#"not json"#[..],
            br#"[]"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[{"content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"custom","custom":{}}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#,
            br#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    // -- responses ----------------------------------------------------------

    #[test]
    fn response_text_fixture() {
        let body = br#"{"id":"chatcmpl-9x","object":"chat.completion","created":1731000000,
            "model":"gpt-4o-2024-08-06","system_fingerprint":"fp_1",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello!","refusal":null},
                "logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,
                "completion_tokens_details":{"reasoning_tokens":0}}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(
            r,
            ChatResponse {
                id: "chatcmpl-9x".into(),
                model: "gpt-4o-2024-08-06".into(),
                parts: vec![text("Hello!")],
                finish: FinishReason::Stop,
                usage: Some(Usage {
                    input_tokens: 12,
                    output_tokens: 3
                }),
                created: 1731000000,
            }
        );
        assert_eq!(resp_roundtrip(&r), r);
    }

    #[test]
    fn response_tool_calls_and_reasoning_fixture() {
        let body = br#"{"id":"chatcmpl-tc","object":"chat.completion","created":1,"model":"qwen3",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,
                "reasoning_content":"The user wants the weather.",
                "tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                              {"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
                "finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":50,"completion_tokens":20}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(
            r.parts,
            vec![
                Part::Reasoning {
                    text: "The user wants the weather.".into(),
                    signature: None
                },
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                Part::ToolCall {
                    id: "call_2".into(),
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(resp_roundtrip(&r), r);

        let mut out = Vec::new();
        write_response(&r, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], json!("chat.completion"));
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], json!("tool_calls"));
        assert_eq!(v["usage"]["total_tokens"], json!(70));

        // `reasoning` spelling; a server saying `stop` with tool calls.
        let body = br#"{"id":"x","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant",
            "reasoning":"hmm","content":"","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":{"a":1}}}]},
            "finish_reason":"stop"}]}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(r.usage, None);
        assert_eq!(
            r.parts[1],
            Part::ToolCall {
                id: "c".into(),
                name: "f".into(),
                arguments: r#"{"a":1}"#.into()
            }
        );
    }

    #[test]
    fn response_finish_reasons_round_trip() {
        for f in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ContentFilter,
        ] {
            let r = ChatResponse {
                id: "i".into(),
                model: "m".into(),
                parts: vec![text("t")],
                finish: f,
                usage: None,
                created: 5,
            };
            assert_eq!(resp_roundtrip(&r), r);
        }
        assert!(parse_response(br#"{"id":"x","choices":[]}"#).is_err());
        assert!(parse_response(br#"{"error":{"message":"boom","type":"server_error"}}"#).is_err());
    }

    // -- streams ------------------------------------------------------------

    fn chunk(delta: &str, finish: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o","system_fingerprint":"fp","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}],"usage":null}}"#
        )
        .into_bytes()
    }

    #[test]
    fn stream_text_with_usage() {
        let c0 = chunk(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
        );
        let c1 = chunk(r#"{"content":"Hel"}"#, "null");
        let c2 = chunk(r#"{"content":"lo"}"#, "null");
        let c3 = chunk("{}", r#""stop""#);
        let usage = br#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let evs = decode_all(&[&c0, &c1, &c2, &c3, usage, b"[DONE]"]);
        let expected = vec![
            StreamEvent::Start {
                id: "chatcmpl-s".into(),
                model: "gpt-4o".into(),
                created: 1731000000,
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 9,
                output_tokens: 2,
            }),
            StreamEvent::End,
        ];
        assert_eq!(evs, expected);

        // Re-encode (usage requested) and decode again: the same events.
        let bytes = encode_all(&evs, true);
        let payloads = sse_payloads(&bytes);
        assert_eq!(payloads.last().unwrap(), b"[DONE]");
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(decode_all(&refs), expected);

        // Every chunk carries the same id/created/model; the first has the role.
        let first: Value = serde_json::from_slice(&payloads[0]).unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        for p in &payloads[..payloads.len() - 1] {
            let v: Value = serde_json::from_slice(p).unwrap();
            assert_eq!(v["id"], json!("chatcmpl-s"));
            assert_eq!(v["created"], json!(1731000000));
            assert_eq!(v["object"], json!("chat.completion.chunk"));
        }
        let usage_chunk: Value = serde_json::from_slice(&payloads[payloads.len() - 2]).unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["total_tokens"], json!(11));

        // Without include_usage: no usage chunk.
        let bytes = encode_all(&evs, false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("\"usage\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn stream_tool_call_fragments() {
        let c0 = chunk(r#"{"role":"assistant","content":null}"#, "null");
        let c1 = chunk(
            r#"{"tool_calls":[{"index":0,"id":"call_w","type":"function","function":{"name":"get_weather","arguments":""}}]}"#,
            "null",
        );
        let c2 = chunk(
            r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}"#,
            "null",
        );
        let c3 = chunk(
            r#"{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]}"#,
            "null",
        );
        let c4 = chunk(
            r#"{"tool_calls":[{"index":1,"id":"call_t","type":"function","function":{"name":"get_time","arguments":"{}"}}]}"#,
            "null",
        );
        let c5 = chunk("{}", r#""tool_calls""#);
        let evs = decode_all(&[&c0, &c1, &c2, &c3, &c4, &c5, b"[DONE]"]);
        let expected = vec![
            StreamEvent::Start {
                id: "chatcmpl-s".into(),
                model: "gpt-4o".into(),
                created: 1731000000,
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_w".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"ci".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "ty\":\"Paris\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_t".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::End,
        ];
        assert_eq!(evs, expected);

        let bytes = encode_all(&evs, true);
        let payloads = sse_payloads(&bytes);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(decode_all(&refs), expected);
        // The first fragment of a call: id, type, name and empty arguments.
        let v: Value = serde_json::from_slice(&payloads[1]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "call_w", "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}})
        );
        let v: Value = serde_json::from_slice(&payloads[2]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "{\"ci"}})
        );
        // The finish chunk has an empty delta.
        let v: Value = serde_json::from_slice(&payloads[payloads.len() - 2]).unwrap();
        assert_eq!(v["choices"][0]["delta"], json!({}));
        assert_eq!(v["choices"][0]["finish_reason"], json!("tool_calls"));
    }

    #[test]
    fn stream_reasoning_lenient_shapes() {
        // vLLM: `reasoning_content`, usage on the finish chunk, then a usage
        // chunk with `choices: null`; a chunk with choices missing entirely.
        let c0 = br#"{"id":"v","created":2,"model":"qwen3","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"think"}}]}"#;
        let c1 = br#"{"id":"v","created":2,"model":"qwen3","choices":[{"index":0,"delta":{"reasoning":"ing"}}]}"#;
        let c2 = br#"{"id":"v","created":2,"model":"qwen3"}"#;
        let c3 = br#"{"id":"v","created":2,"model":"qwen3","choices":[{"index":0,"delta":{"content":"A"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let c4 = br#"{"id":"v","created":2,"model":"qwen3","choices":null,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let evs = decode_all(&[c0, c1, c2, c3, c4, b"[DONE]"]);
        let expected = vec![
            StreamEvent::Start {
                id: "v".into(),
                model: "qwen3".into(),
                created: 2,
            },
            StreamEvent::ReasoningDelta("think".into()),
            StreamEvent::ReasoningDelta("ing".into()),
            StreamEvent::TextDelta("A".into()),
            StreamEvent::Finish(FinishReason::Length),
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
            }),
            StreamEvent::End,
        ];
        assert_eq!(evs, expected);
        let bytes = encode_all(&evs, true);
        let payloads = sse_payloads(&bytes);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(decode_all(&refs), expected);

        // No finish_reason before [DONE]: one is supplied.
        let evs = decode_all(&[&chunk(r#"{"content":"x"}"#, "null"), b"[DONE]"]);
        assert_eq!(evs[2], StreamEvent::Finish(FinishReason::Stop));
        assert_eq!(evs[3], StreamEvent::End);

        // A tool call without index or id gets a stable generated id.
        let evs = decode_all(&[&chunk(
            r#"{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}"#,
            "null",
        )]);
        match &evs[1] {
            StreamEvent::ToolCallStart { index: 0, id, name } => {
                assert!(id.starts_with("call_"));
                assert_eq!(name, "f");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stream_error_payload() {
        let c0 = chunk(r#"{"role":"assistant","content":"par"}"#, "null");
        let err = br#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;
        let evs = decode_all(&[&c0, err, &chunk(r#"{"content":"ignored"}"#, "null")]);
        let e = ApiError {
            status: 500,
            kind: "server_error".into(),
            message: "The server had an error while processing your request.".into(),
        };
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[1], StreamEvent::TextDelta("par".into()));
        assert_eq!(evs[2], StreamEvent::Error(e.clone()));

        // vLLM puts the HTTP status in `code`.
        let evs = decode_all(&[
            br#"{"error":{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}}"#,
        ]);
        assert_eq!(
            evs,
            vec![StreamEvent::Error(ApiError {
                status: 400,
                kind: "invalid_request_error".into(),
                message: "bad".into()
            })]
        );

        // Encoder: error frame, nothing after, no [DONE] from finish().
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        enc.encode(
            &StreamEvent::Start {
                id: "i".into(),
                model: "m".into(),
                created: 1,
            },
            &mut out,
        );
        enc.encode(&StreamEvent::TextDelta("par".into()), &mut out);
        enc.encode(&StreamEvent::Error(e.clone()), &mut out);
        enc.encode(&StreamEvent::TextDelta("late".into()), &mut out);
        enc.finish(&mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.ends_with(
            "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
        ));
        assert!(!text.contains("[DONE]") && !text.contains("late"));
        let payloads = sse_payloads(&out);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(decode_all(&refs).last(), Some(&StreamEvent::Error(e)));

        // Not JSON → FormatError.
        let mut d = StreamDecoder::new();
        assert!(d.feed(None, b"{oops", &mut Vec::new()).is_err());
    }

    #[test]
    fn encoder_finish_without_end() {
        // Upstream closed after Finish without its terminal event: usage + [DONE].
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        enc.encode(&StreamEvent::TextDelta("x".into()), &mut out);
        enc.encode(&StreamEvent::Finish(FinishReason::Stop), &mut out);
        enc.encode(
            &StreamEvent::Usage(Usage {
                input_tokens: 1,
                output_tokens: 1,
            }),
            &mut out,
        );
        enc.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"choices\":[],\"usage\""));
        assert!(text.ends_with("data: [DONE]\n\n"));

        // Cut before Finish: no [DONE].
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        enc.encode(&StreamEvent::TextDelta("x".into()), &mut out);
        enc.finish(&mut out);
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));

        // End after End / finish after End: nothing more.
        let mut enc = StreamEncoder::new(false);
        let mut out = Vec::new();
        enc.encode(&StreamEvent::End, &mut out);
        let n = out.len();
        enc.encode(&StreamEvent::End, &mut out);
        enc.finish(&mut out);
        assert_eq!(out.len(), n);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert!(text.contains("\"finish_reason\":\"stop\""));
    }

    // -- errors -------------------------------------------------------------

    #[test]
    fn errors() {
        let e = parse_error(
            429,
            br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(
            e,
            ApiError {
                status: 429,
                kind: "rate_limit_error".into(),
                message: "Rate limit reached for gpt-4o".into()
            }
        );
        let e = parse_error(
            400,
            br#"{"error":{"message":"bad param","type":"invalid_request_error","param":"x","code":null}}"#,
        );
        assert_eq!(e.kind, "invalid_request_error");
        assert_eq!(e.message, "bad param");
        assert_eq!(
            parse_error(404, br#"{"detail":"Not Found"}"#).message,
            "Not Found"
        );
        assert_eq!(
            parse_error(404, br#"{"detail":"Not Found"}"#).kind,
            "not_found_error"
        );
        assert_eq!(parse_error(500, br#"{"error":"boom"}"#).message, "boom");
        let e = parse_error(502, b"  <html>Bad Gateway</html>\n");
        assert_eq!(e.message, "<html>Bad Gateway</html>");
        assert_eq!(e.kind, "api_error");
        assert!(parse_error(503, b"").message.contains("503"));
        let long = "é".repeat(3000);
        let e = parse_error(500, long.as_bytes());
        assert!(e.message.len() <= MAX_ERROR_TEXT && e.message.len() > 2000);

        let mut out = Vec::new();
        write_error(
            &ApiError {
                status: 401,
                kind: "authentication_error".into(),
                message: "Invalid \"key\"".into(),
            },
            None,
            &mut out,
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Invalid \"key\"", "type": "authentication_error", "param": null, "code": null}})
        );
        assert_eq!(parse_error(401, &out).message, "Invalid \"key\"");
    }

    #[test]
    fn malformed_input_never_panics() {
        let stream = [
            StreamEvent::TextDelta("x".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "f".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
        ];
        let mut resp = Vec::new();
        write_response(
            &ChatResponse {
                id: "i".into(),
                model: "m".into(),
                parts: vec![
                    text("t"),
                    Part::ToolCall {
                        id: "c".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    },
                ],
                finish: FinishReason::ToolCalls,
                usage: Some(Usage::default()),
                created: 1,
            },
            &mut resp,
        );
        let chunk = encode_all(&stream, true);
        let samples: [&[u8]; 3] = [AGENT_REQUEST.as_bytes(), &resp, &chunk];
        for s in samples {
            for cut in 0..s.len() {
                let p = &s[..cut];
                let _ = parse_request(p);
                let _ = parse_response(p);
                let _ = parse_error(500, p);
                let _ = StreamDecoder::new().feed(None, p, &mut Vec::new());
            }
        }
        // Every value replaced by values of other types.
        crate::formats::testing::swapped_values(
            &samples,
            &[
                "model",
                "messages",
                "role",
                "content",
                "tool_calls",
                "function",
                "arguments",
                "tools",
                "tool_choice",
                "stop",
                "response_format",
                "json_schema",
                "choices",
                "delta",
                "message",
                "usage",
                "index",
                "error",
                "image_url",
                "url",
                "type",
                "finish_reason",
                "stream_options",
                "created",
                "id",
                "name",
                "parameters",
            ],
            |b| {
                let _ = parse_request(b);
                let _ = parse_response(b);
                let _ = parse_error(400, b);
                let _ = StreamDecoder::new().feed(None, b, &mut Vec::new());
            },
        );
        let deep = "[".repeat(100_000);
        assert!(parse_request(deep.as_bytes()).is_err());
        assert!(
            StreamDecoder::new()
                .feed(None, deep.as_bytes(), &mut Vec::new())
                .is_err()
        );
    }
}
