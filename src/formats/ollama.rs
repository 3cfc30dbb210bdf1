//! Ollama native chat (`POST /api/chat`): a provider format only (clients
//! never speak it; the request parser, response writer and stream encoder
//! exist for completeness and tests). See the parent module for the function
//! set; wire facts follow `docs/formats.md`
//!
//! # Mapping
//!
//! - [`ChatRequest::system`] ⇄ one leading `system` message (several leading
//!   `system` messages are joined with `"\n\n"`); a [`Role::System`] turn ⇄
//!   a `system` message where it stands in the conversation.
//! - Text parts ⇄ the message's `content` string (several are joined with
//!   `"\n\n"`); images ⇄ base64 strings in the message's `images` array (the
//!   media type is not sent; the parser sniffs it from the data). Image URLs
//!   cannot be sent: [`write_request`] fails with a [`FormatError`].
//! - Assistant tool calls ⇄ `tool_calls: [{id?, function: {name, arguments}}]`
//!   with `arguments` a JSON **object** (canonical arguments are JSON text).
//!   Calls without an id get one derived from the reply, stable for a given
//!   reply (`call_<hash>`).
//! - Tool results ⇄ `role: "tool"` messages carrying `tool_name` (looked up
//!   from the assistant call with the same id) and `tool_call_id`; each is
//!   one [`Role::Tool`] message with one [`Part::ToolResult`]. Call ids (`tool_calls[].id`,
//!   `tool_call_id`) are written for Ollama versions that read them; older
//!   versions ignore unknown fields and pair results by `tool_name`. The
//!   parser pairs a result that has only a `tool_name` with the first
//!   unanswered call of that name.
//! - Assistant reasoning ⇄ `thinking`.
//! - `max_tokens`, `temperature`, `top_p`, `stop` ⇄ `options.num_predict`,
//!   `options.temperature`, `options.top_p`, `options.stop`.
//! - [`OutputFormat::JsonObject`] ⇄ `format: "json"`;
//!   [`OutputFormat::JsonSchema`] ⇄ `format: <schema object>` (its `name` and
//!   `strict` are not sent; the parser names it `"response"`).
//! - `stream` is always written explicitly (Ollama streams by default).
//! - Replies: `done_reason` `stop` / `length` (a reply with tool calls
//!   finishes with [`FinishReason::ToolCalls`]), `prompt_eval_count` /
//!   `eval_count` as usage, `created_at` (RFC 3339) as Unix seconds. Ollama
//!   replies have no id: one is derived from the model and creation time.
//! - Errors: `{"error":"message"}` bodies and NDJSON lines.
//!
//! # Dropped in cross-format conversion
//!
//! `tool_choice` (Ollama has none: `none` is honoured by sending no tools,
//! `required` and a named tool are not enforced), `parallel_tool_calls`,
//! `include_usage` (Ollama always reports counts), the `is_error` flag of
//! tool results, the image media type on the way out, Anthropic thinking
//! signatures, `ContentFilter` / `StopSequence` finish reasons (sent as
//! `stop`), and Ollama-only fields (`think`, `keep_alive`, other `options`,
//! the timing fields of replies).

use serde_json::{Map, Value, json};

use super::openai::{
    arguments_text, count, error_text, field, fnv1a, joined_text, kind_for_status, opt_bool,
    opt_f64, opt_str, opt_u64, parse_root, parse_stop, parse_tool, tool_value, write_str,
    write_value,
};
use super::{
    ApiError, ChatRequest, ChatResponse, FinishReason, FormatError, Image, Message, OutputFormat,
    Part, Role, StreamEvent, ToolChoice, Usage,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Unix seconds of an RFC 3339 timestamp (`2024-08-04T19:22:45.499127Z`,
/// offsets accepted); `None` when malformed or before 1970.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits
            .iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        None | Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            if b.get(i + 3) != Some(&b':') {
                return None;
            }
            let off = num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60;
            if *sign == b'+' { off } else { -off }
        }
        Some(_) => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(secs).ok()
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
fn format_rfc3339(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The media type of base64 image data, from its first bytes.
fn sniff_media_type(data: &str) -> &'static str {
    if data.starts_with("/9j/") {
        "image/jpeg"
    } else if data.starts_with("R0lGOD") {
        "image/gif"
    } else if data.starts_with("UklGR") {
        "image/webp"
    } else {
        "image/png"
    }
}

/// Ollama replies carry no id: derive one from the model and creation time,
/// so the same reply always gets the same id.
fn reply_id(model: &str, created: u64) -> String {
    format!(
        "chatcmpl-{:016x}",
        fnv1a(&[model.as_bytes(), &created.to_le_bytes()])
    )
}

/// An id for a tool call Ollama sent without one (older versions), unique per
/// reply: `created_at` has nanosecond precision.
fn call_id(created_at: &str, model: &str, index: usize) -> String {
    format!(
        "call_{:016x}",
        fnv1a(&[
            created_at.as_bytes(),
            model.as_bytes(),
            &index.to_le_bytes()
        ])
    )
}

fn finish_from(reason: Option<&str>, saw_tool_call: bool) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ if saw_tool_call => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn done_reason(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// Canonical arguments (JSON text) as the object Ollama wants.
fn arguments_object(args: &str) -> Result<Value, FormatError> {
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(FormatError(format!(
            "tool call arguments are not a JSON object: {}",
            super::cut_at_char_boundary(args, 200)
        ))),
    }
}

/// `message.tool_calls` of a reply or request: `(id, name, arguments text)`.
fn tool_calls(
    msg: &Map<String, Value>,
    created_at: &str,
    model: &str,
    first_index: usize,
) -> Vec<(String, String, String)> {
    let Some(calls) = field(msg, "tool_calls").and_then(Value::as_array) else {
        return Vec::new();
    };
    calls
        .iter()
        .filter_map(Value::as_object)
        .enumerate()
        .map(|(k, c)| {
            let f = c.get("function").and_then(Value::as_object);
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| call_id(created_at, model, first_index + k));
            let name = f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let args = match f.and_then(|f| f.get("arguments")) {
                None | Some(Value::Null) => "{}".to_string(),
                other => arguments_text(other),
            };
            (id, name, args)
        })
        .collect()
}

fn tool_call_value(index: usize, id: &str, name: &str, args: Value) -> Value {
    let mut c = Map::new();
    if !id.is_empty() {
        c.insert("id".into(), Value::String(id.to_string()));
    }
    c.insert(
        "function".into(),
        json!({"index": index, "name": name, "arguments": args}),
    );
    Value::Object(c)
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// An Ollama `/api/chat` request in canonical form.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let root = parse_root(body, "request body")?;
    let mut req = ChatRequest {
        model: opt_str(&root, "model", "")?.unwrap_or_default().to_string(),
        stream: opt_bool(&root, "stream", "")?.unwrap_or(true),
        ..ChatRequest::default()
    };
    let messages = field(&root, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError("`messages` must be an array".into()))?;
    let mut system = Vec::new();
    // Calls not answered yet, to pair `tool_name`-only results with their id.
    let mut open_calls: Vec<(String, String)> = Vec::new();
    for (i, v) in messages.iter().enumerate() {
        let ctx = format!("messages[{i}].");
        let m = v
            .as_object()
            .ok_or_else(|| FormatError(format!("`messages[{i}]` must be an object")))?;
        let role = opt_str(m, "role", &ctx)?
            .ok_or_else(|| FormatError(format!("`messages[{i}].role` is required")))?;
        let content = opt_str(m, "content", &ctx)?.unwrap_or_default();
        match role {
            // Before the first turn: the system prompt; later: a system turn in place.
            "system" if content.is_empty() => {}
            "system" if req.messages.is_empty() => system.push(content.to_string()),
            "system" => req.messages.push(Message {
                role: Role::System,
                parts: vec![Part::Text(content.to_string())],
            }),
            "user" => {
                let mut parts = Vec::new();
                if !content.is_empty() {
                    parts.push(Part::Text(content.to_string()));
                }
                if let Some(images) = field(m, "images") {
                    let images = images
                        .as_array()
                        .ok_or_else(|| FormatError(format!("`{ctx}images` must be an array")))?;
                    for img in images {
                        let data = img.as_str().ok_or_else(|| {
                            FormatError(format!("`{ctx}images` must hold base64 strings"))
                        })?;
                        parts.push(Part::Image(Image::Base64 {
                            media_type: sniff_media_type(data).to_string(),
                            data: data.to_string(),
                        }));
                    }
                }
                req.messages.push(Message {
                    role: Role::User,
                    parts,
                });
            }
            "assistant" => {
                let mut parts = Vec::new();
                if let Some(t) = opt_str(m, "thinking", &ctx)?
                    && !t.is_empty()
                {
                    parts.push(Part::Reasoning {
                        text: t.to_string(),
                        signature: None,
                    });
                }
                if !content.is_empty() {
                    parts.push(Part::Text(content.to_string()));
                }
                open_calls.clear();
                let seed = format!("request:{i}");
                for (id, name, arguments) in tool_calls(m, &seed, &req.model, 0) {
                    open_calls.push((id.clone(), name.clone()));
                    parts.push(Part::ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                req.messages.push(Message {
                    role: Role::Assistant,
                    parts,
                });
            }
            "tool" => {
                let name = opt_str(m, "tool_name", &ctx)?;
                let call_id = match opt_str(m, "tool_call_id", &ctx)? {
                    Some(id) => id.to_string(),
                    None => {
                        let pos = match name {
                            Some(n) => open_calls.iter().position(|(_, cn)| cn == n),
                            None if open_calls.is_empty() => None,
                            None => Some(0),
                        };
                        match pos {
                            Some(p) => open_calls.remove(p).0,
                            None => name.unwrap_or_default().to_string(),
                        }
                    }
                };
                open_calls.retain(|(id, _)| *id != call_id);
                let part = Part::ToolResult {
                    call_id,
                    content: content.to_string(),
                    is_error: false,
                };
                req.messages.push(Message {
                    role: Role::Tool,
                    parts: vec![part],
                });
            }
            other => {
                return Err(FormatError(format!(
                    "`messages[{i}].role`: unknown role '{other}'"
                )));
            }
        }
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
    req.output = match field(&root, "format") {
        None => None,
        Some(Value::String(s)) if s == "json" => Some(OutputFormat::JsonObject),
        Some(Value::String(s)) if s.is_empty() => None,
        Some(schema @ Value::Object(_)) => Some(OutputFormat::JsonSchema {
            name: "response".into(),
            schema: schema.clone(),
            strict: None,
        }),
        Some(_) => {
            return Err(FormatError(
                "`format` must be \"json\" or a JSON schema object".into(),
            ));
        }
    };
    if let Some(o) = field(&root, "options") {
        let o = o
            .as_object()
            .ok_or_else(|| FormatError("`options` must be an object".into()))?;
        req.temperature = opt_f64(o, "temperature", "options.")?;
        req.top_p = opt_f64(o, "top_p", "options.")?;
        // num_predict -1 / -2 mean "no limit" / "fill the context".
        req.max_tokens = match field(o, "num_predict") {
            Some(v) if v.as_i64().is_some_and(|n| n < 0) => None,
            _ => opt_u64(o, "num_predict", "options.")?,
        };
        req.stop = parse_stop(field(o, "stop"), "options.")?;
    }
    Ok(req)
}

/// A canonical request as an Ollama `/api/chat` body. Fails on what Ollama
/// cannot take: image URLs, tool-call arguments that are not a JSON object.
pub fn write_request(req: &ChatRequest, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let mut msgs = Vec::with_capacity(req.messages.len() + 1);
    if let Some(s) = &req.system {
        msgs.push(json!({"role": "system", "content": s}));
    }
    // Tool names by call id, for `tool_name` on tool results.
    let mut names: Vec<(&str, &str)> = Vec::new();
    for m in &req.messages {
        if m.role == Role::System {
            let text = joined_text(&m.parts);
            if !text.is_empty() {
                msgs.push(json!({"role": "system", "content": text}));
            }
            continue;
        }
        let mut texts: Vec<&str> = Vec::new();
        let mut thinking: Vec<&str> = Vec::new();
        let mut images = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for p in &m.parts {
            match p {
                Part::Text(t) => texts.push(t),
                Part::Reasoning { text, .. } => thinking.push(text),
                Part::Image(Image::Base64 { data, .. }) => images.push(Value::String(data.clone())),
                Part::Image(Image::Url(_)) => {
                    return Err(FormatError(
                        "image URLs are not supported by ollama providers; send base64 data".into(),
                    ));
                }
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    names.push((id, name));
                    calls.push(tool_call_value(
                        calls.len(),
                        id,
                        name,
                        arguments_object(arguments)?,
                    ));
                }
                Part::ToolResult {
                    call_id, content, ..
                } => {
                    let mut r = Map::new();
                    r.insert("role".into(), json!("tool"));
                    r.insert("content".into(), json!(content));
                    if let Some((_, name)) = names.iter().rev().find(|(id, _)| id == call_id) {
                        r.insert("tool_name".into(), json!(name));
                    }
                    if !call_id.is_empty() {
                        r.insert("tool_call_id".into(), json!(call_id));
                    }
                    results.push(Value::Object(r));
                }
            }
        }
        match m.role {
            Role::Assistant => {
                let mut a = Map::new();
                a.insert("role".into(), json!("assistant"));
                a.insert("content".into(), json!(texts.join("\n\n")));
                if !thinking.is_empty() {
                    a.insert("thinking".into(), json!(thinking.join("")));
                }
                if !images.is_empty() {
                    a.insert("images".into(), Value::Array(images));
                }
                if !calls.is_empty() {
                    a.insert("tool_calls".into(), Value::Array(calls));
                }
                msgs.push(Value::Object(a));
                msgs.extend(results);
            }
            // Written above.
            Role::System => {}
            Role::User | Role::Tool => {
                let had_results = !results.is_empty();
                msgs.extend(results);
                if texts.is_empty() && images.is_empty() && (had_results || m.role == Role::Tool) {
                    continue;
                }
                let mut u = Map::new();
                u.insert("role".into(), json!("user"));
                u.insert("content".into(), json!(texts.join("\n\n")));
                if !images.is_empty() {
                    u.insert("images".into(), Value::Array(images));
                }
                msgs.push(Value::Object(u));
            }
        }
    }

    let mut root = Map::new();
    root.insert("model".into(), json!(req.model));
    root.insert("messages".into(), Value::Array(msgs));
    root.insert("stream".into(), Value::Bool(req.stream));
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
        root.insert(
            "tools".into(),
            Value::Array(req.tools.iter().map(tool_value).collect()),
        );
    }
    match &req.output {
        None => {}
        Some(OutputFormat::JsonObject) => {
            root.insert("format".into(), json!("json"));
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            root.insert("format".into(), schema.clone());
        }
    }
    let mut options = Map::new();
    if let Some(t) = req.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        options.insert("top_p".into(), json!(p));
    }
    if let Some(n) = req.max_tokens {
        options.insert("num_predict".into(), json!(n));
    }
    if !req.stop.is_empty() {
        options.insert("stop".into(), json!(req.stop));
    }
    if !options.is_empty() {
        root.insert("options".into(), Value::Object(options));
    }
    write_value(out, &Value::Object(root));
    Ok(())
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// A non-streamed `/api/chat` reply (`"done": true`) in canonical form.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, FormatError> {
    let root = parse_root(body, "response body")?;
    if let Some(e) = field(&root, "error") {
        let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
        return Err(FormatError(format!(
            "provider returned an error: {message}"
        )));
    }
    let model = str_of(&root, "model").to_string();
    let created_at = str_of(&root, "created_at");
    let created = parse_rfc3339(created_at).unwrap_or(0);
    let empty = Map::new();
    let msg = field(&root, "message")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut parts = Vec::new();
    let thinking = str_of(msg, "thinking");
    if !thinking.is_empty() {
        parts.push(Part::Reasoning {
            text: thinking.to_string(),
            signature: None,
        });
    }
    let content = str_of(msg, "content");
    if !content.is_empty() {
        parts.push(Part::Text(content.to_string()));
    }
    let calls = tool_calls(msg, created_at, &model, 0);
    let saw_call = !calls.is_empty();
    for (id, name, arguments) in calls {
        parts.push(Part::ToolCall {
            id,
            name,
            arguments,
        });
    }
    let usage =
        (root.contains_key("prompt_eval_count") || root.contains_key("eval_count")).then(|| {
            Usage {
                input_tokens: count(&root, "prompt_eval_count"),
                output_tokens: count(&root, "eval_count"),
            }
        });
    Ok(ChatResponse {
        id: reply_id(&model, created),
        finish: finish_from(root.get("done_reason").and_then(Value::as_str), saw_call),
        model,
        parts,
        usage,
        created,
    })
}

/// A canonical reply as a non-streamed `/api/chat` reply.
pub fn write_response(resp: &ChatResponse, out: &mut Vec<u8>) {
    let mut content = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for p in &resp.parts {
        match p {
            Part::Text(t) => content.push_str(t),
            Part::Reasoning { text, .. } => thinking.push_str(text),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                let args = serde_json::from_str::<Value>(arguments)
                    .unwrap_or_else(|_| Value::String(arguments.clone()));
                calls.push(tool_call_value(calls.len(), id, name, args));
            }
            Part::Image(_) | Part::ToolResult { .. } => {}
        }
    }
    let mut root = Map::new();
    root.insert("model".into(), json!(resp.model));
    root.insert("created_at".into(), json!(format_rfc3339(resp.created)));
    root.insert("message".into(), message_value(&content, &thinking, calls));
    root.insert("done".into(), Value::Bool(true));
    root.insert("done_reason".into(), json!(done_reason(&resp.finish)));
    if let Some(u) = &resp.usage {
        root.insert("prompt_eval_count".into(), json!(u.input_tokens));
        root.insert("eval_count".into(), json!(u.output_tokens));
    }
    write_value(out, &Value::Object(root));
}

fn message_value(content: &str, thinking: &str, calls: Vec<Value>) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert("content".into(), json!(content));
    if !thinking.is_empty() {
        m.insert("thinking".into(), json!(thinking));
    }
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Decodes `/api/chat` NDJSON lines into [`StreamEvent`]s: the first line
/// yields `Start`; `thinking` / `content` yield deltas; each whole tool call
/// yields `ToolCallStart` and one `ToolCallDelta` with its serialized
/// arguments; the `done: true` line yields `Finish`, `Usage` and `End`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    model: String,
    calls: usize,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one NDJSON line (`event` is unused: Ollama has no event names).
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
        let line = parse_root(data, "stream line")?;
        if let Some(e) = field(&line, "error") {
            let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
            out.push(StreamEvent::Error(ApiError {
                status: 500,
                kind: "api_error".into(),
                message,
            }));
            self.done = true;
            return Ok(());
        }
        let created_at = str_of(&line, "created_at");
        if !self.started {
            self.started = true;
            self.model = str_of(&line, "model").to_string();
            let created = parse_rfc3339(created_at).unwrap_or(0);
            out.push(StreamEvent::Start {
                id: reply_id(&self.model, created),
                model: self.model.clone(),
                created,
            });
        }
        if let Some(msg) = field(&line, "message").and_then(Value::as_object) {
            let thinking = str_of(msg, "thinking");
            if !thinking.is_empty() {
                out.push(StreamEvent::ReasoningDelta(thinking.to_string()));
            }
            let content = str_of(msg, "content");
            if !content.is_empty() {
                out.push(StreamEvent::TextDelta(content.to_string()));
            }
            for (id, name, arguments) in tool_calls(msg, created_at, &self.model, self.calls) {
                let index = self.calls;
                self.calls += 1;
                out.push(StreamEvent::ToolCallStart { index, id, name });
                out.push(StreamEvent::ToolCallDelta { index, arguments });
            }
        }
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            out.push(StreamEvent::Finish(finish_from(
                line.get("done_reason").and_then(Value::as_str),
                self.calls > 0,
            )));
            out.push(StreamEvent::Usage(Usage {
                input_tokens: count(&line, "prompt_eval_count"),
                output_tokens: count(&line, "eval_count"),
            }));
            out.push(StreamEvent::End);
            self.done = true;
        }
        Ok(())
    }
}

/// Encodes [`StreamEvent`]s as `/api/chat` NDJSON lines. Tool calls are
/// buffered until complete (Ollama sends whole calls); the `done: true` line
/// goes out on `End`, or from [`finish`](Self::finish) when `Finish` was seen.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    model: String,
    created_at: String,
    /// Calls being assembled: (index, id, name, arguments text).
    calls: Vec<(usize, String, String, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamEncoder {
    /// `include_usage` is ignored: Ollama always reports token counts.
    pub fn new(_include_usage: bool) -> Self {
        StreamEncoder {
            created_at: format_rfc3339(0),
            ..Self::default()
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start { model, created, .. } => {
                self.model = model.clone();
                self.created_at = format_rfc3339(*created);
            }
            StreamEvent::TextDelta(t) => {
                self.flush_calls(out);
                self.line(out, message_value(t, "", Vec::new()));
            }
            StreamEvent::ReasoningDelta(t) => {
                self.flush_calls(out);
                self.line(out, message_value("", t, Vec::new()));
            }
            StreamEvent::ReasoningSignature(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.calls
                    .push((*index, id.clone(), name.clone(), String::new()));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(c) = self.calls.iter_mut().rev().find(|c| c.0 == *index) {
                    c.3.push_str(arguments);
                }
            }
            StreamEvent::Finish(f) => {
                self.flush_calls(out);
                self.finish = Some(f.clone());
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::End => self.terminate(out),
            StreamEvent::Error(e) => {
                out.extend_from_slice(b"{\"error\":");
                write_str(out, &e.message);
                out.extend_from_slice(b"}\n");
                self.done = true;
            }
        }
    }

    /// Emit the `done: true` line if `Finish` was seen but `End` never came; a
    /// stream cut before `Finish` gets nothing (the pipeline sends `Error`).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.done && self.finish.is_some() {
            self.terminate(out);
        }
    }

    fn terminate(&mut self, out: &mut Vec<u8>) {
        self.flush_calls(out);
        let mut root = Map::new();
        root.insert("model".into(), json!(self.model));
        root.insert("created_at".into(), json!(self.created_at));
        root.insert("message".into(), message_value("", "", Vec::new()));
        root.insert("done".into(), Value::Bool(true));
        let reason = self.finish.as_ref().map_or("stop", done_reason);
        root.insert("done_reason".into(), json!(reason));
        let u = self.usage.unwrap_or_default();
        root.insert("prompt_eval_count".into(), json!(u.input_tokens));
        root.insert("eval_count".into(), json!(u.output_tokens));
        write_value(out, &Value::Object(root));
        out.push(b'\n');
        self.done = true;
    }

    fn flush_calls(&mut self, out: &mut Vec<u8>) {
        if self.calls.is_empty() {
            return;
        }
        let calls = std::mem::take(&mut self.calls)
            .into_iter()
            .map(|(index, id, name, args)| {
                let args = arguments_object(&args).unwrap_or(Value::String(args));
                tool_call_value(index, &id, &name, args)
            })
            .collect();
        self.line(out, message_value("", "", calls));
    }

    fn line(&self, out: &mut Vec<u8>, message: Value) {
        let mut root = Map::new();
        root.insert("model".into(), json!(self.model));
        root.insert("created_at".into(), json!(self.created_at));
        root.insert("message".into(), message);
        root.insert("done".into(), Value::Bool(false));
        write_value(out, &Value::Object(root));
        out.push(b'\n');
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An Ollama error reply (`{"error":"message"}`) in canonical form; a body
/// that is not JSON becomes the message (trimmed, ≤ 2 KB).
pub fn parse_error(status: u16, body: &[u8]) -> ApiError {
    let message = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(root)) => match field(&root, "error") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(e)) => e.get("message").and_then(Value::as_str).map(str::to_string),
            _ => None,
        },
        _ => None,
    };
    ApiError {
        status,
        kind: kind_for_status(status).to_string(),
        message: message.unwrap_or_else(|| error_text(status, body)),
    }
}

/// `{"error":"message"}`.
pub fn write_error(err: &ApiError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":");
    write_str(out, &err.message);
    out.push(b'}');
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Tool;

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

    fn text(s: &str) -> Part {
        Part::Text(s.to_string())
    }

    fn write_req(req: &ChatRequest) -> Value {
        let mut out = Vec::new();
        write_request(req, &mut out).expect("writes");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn decode_all(lines: &[&[u8]]) -> Vec<StreamEvent> {
        let mut d = StreamDecoder::new();
        let mut evs = Vec::new();
        for l in lines {
            d.feed(None, l, &mut evs).expect("decodes");
        }
        evs
    }

    fn encode_all(evs: &[StreamEvent]) -> Vec<u8> {
        let mut e = StreamEncoder::new(true);
        let mut out = Vec::new();
        for ev in evs {
            e.encode(ev, &mut out);
        }
        e.finish(&mut out);
        out
    }

    fn canonical_request() -> ChatRequest {
        ChatRequest {
            model: "llama3.2-vision".into(),
            system: Some("You are helpful.\n\nAnswer in JSON.".into()),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![
                        text("What is in this picture? Also check the weather."),
                        Part::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: PNG.into(),
                        }),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Reasoning {
                            text: "Need the weather tool.".into(),
                            signature: None,
                        },
                        Part::ToolCall {
                            id: "call_1".into(),
                            name: "get_weather".into(),
                            arguments: r#"{"city":"Paris"}"#.into(),
                        },
                    ],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "call_1".into(),
                        content: "22 C, sunny".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("Current weather".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            }],
            max_tokens: Some(256),
            temperature: Some(0.7),
            top_p: Some(0.95),
            stop: vec!["</s>".into()],
            stream: true,
            output: Some(OutputFormat::JsonSchema {
                name: "response".into(),
                schema: json!({"type": "object", "properties": {"answer": {"type": "string"}}}),
                strict: None,
            }),
            ..ChatRequest::default()
        }
    }

    // -- requests -----------------------------------------------------------

    #[test]
    fn request_writer_shape() {
        let mut req = canonical_request();
        req.tool_choice = Some(ToolChoice::Required);
        req.parallel_tool_calls = Some(true);
        req.include_usage = true;
        let v = write_req(&req);
        assert_eq!(
            v,
            json!({
                "model": "llama3.2-vision",
                "stream": true,
                "messages": [
                    {"role": "system", "content": "You are helpful.\n\nAnswer in JSON."},
                    {"role": "user", "content": "What is in this picture? Also check the weather.", "images": [PNG]},
                    {"role": "assistant", "content": "", "thinking": "Need the weather tool.",
                     "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                    {"role": "tool", "content": "22 C, sunny", "tool_name": "get_weather", "tool_call_id": "call_1"}
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "format": {"type": "object", "properties": {"answer": {"type": "string"}}},
                "options": {"temperature": 0.7, "top_p": 0.95, "num_predict": 256, "stop": ["</s>"]}
            })
        );

        // stream is always explicit; json_object → "json"; tool_choice none → no tools.
        let mut req = canonical_request();
        req.stream = false;
        req.output = Some(OutputFormat::JsonObject);
        req.tool_choice = Some(ToolChoice::None);
        let v = write_req(&req);
        assert_eq!(v["stream"], json!(false));
        assert_eq!(v["format"], json!("json"));
        assert!(v.get("tools").is_none());

        // Anthropic-style user turn with tool results and text.
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: Role::User,
                parts: vec![
                    Part::ToolResult {
                        call_id: "x".into(),
                        content: "r".into(),
                        is_error: false,
                    },
                    text("next"),
                ],
            }],
            ..ChatRequest::default()
        };
        assert_eq!(
            write_req(&req)["messages"],
            json!([
                {"role": "tool", "content": "r", "tool_call_id": "x"},
                {"role": "user", "content": "next"}
            ])
        );
    }

    #[test]
    fn request_rejects_what_ollama_cannot_take() {
        let mut req = canonical_request();
        req.messages[0]
            .parts
            .push(Part::Image(Image::Url("https://example.com/a.png".into())));
        let mut out = Vec::new();
        assert_eq!(
            write_request(&req, &mut out),
            Err(FormatError(
                "image URLs are not supported by ollama providers; send base64 data".into()
            ))
        );
        let mut req = canonical_request();
        req.messages[1].parts[1] = Part::ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: "[1,2]".into(),
        };
        assert!(write_request(&req, &mut Vec::new()).is_err());
    }

    #[test]
    fn request_round_trips() {
        let req = canonical_request();
        let mut out = Vec::new();
        write_request(&req, &mut out).unwrap();
        assert_eq!(parse_request(&out).unwrap(), req);

        let mut req = canonical_request();
        req.stream = false;
        req.output = Some(OutputFormat::JsonObject);
        req.system = None;
        req.stop.clear();
        let mut out = Vec::new();
        write_request(&req, &mut out).unwrap();
        assert_eq!(parse_request(&out).unwrap(), req);
    }

    #[test]
    fn mid_conversation_system_messages_stay_in_place() {
        let body = br#"{"model":"qwen3","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"system","content":"Use metric units."},
            {"role":"user","content":"weather?"},
            {"role":"assistant","content":"Where?"},
            {"role":"system","content":"The user is in Paris."},
            {"role":"system","content":""},
            {"role":"user","content":"here"}
        ],"stream":false}"#;
        let req = parse_request(body).unwrap();
        assert_eq!(
            req.system.as_deref(),
            Some("Be brief.\n\nUse metric units.")
        );
        assert_eq!(
            req.messages[2],
            Message {
                role: Role::System,
                parts: vec![Part::Text("The user is in Paris.".into())],
            }
        );
        assert_eq!(req.messages.len(), 4);
        let mut out = Vec::new();
        write_request(&req, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "Be brief.\n\nUse metric units."},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Where?"},
                {"role": "system", "content": "The user is in Paris."},
                {"role": "user", "content": "here"}
            ])
        );
        assert_eq!(parse_request(&out).unwrap(), req);
    }

    #[test]
    fn request_fixture_parses() {
        // As ollama-python sends it: stream omitted (defaults to true), a
        // tool result identified by tool_name only, a JPEG image.
        let body = br#"{"model":"qwen3","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"Describe","images":["/9j/4AAQSkZJRg=="]},
            {"role":"assistant","content":"","tool_calls":[{"function":{"name":"lookup","arguments":{"q":"x"}}}]},
            {"role":"tool","content":"found","tool_name":"lookup"}
        ],"options":{"num_predict":-1,"temperature":0},"think":true,"keep_alive":"5m"}"#;
        let r = parse_request(body).unwrap();
        assert!(r.stream);
        assert_eq!(r.system.as_deref(), Some("Be brief."));
        assert_eq!(r.max_tokens, None);
        assert_eq!(r.temperature, Some(0.0));
        assert_eq!(
            r.messages[0].parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/jpeg".into(),
                data: "/9j/4AAQSkZJRg==".into()
            })
        );
        let Part::ToolCall { id, arguments, .. } = &r.messages[1].parts[0] else {
            panic!("tool call expected");
        };
        assert_eq!(arguments, r#"{"q":"x"}"#);
        assert_eq!(
            r.messages[2].parts[0],
            Part::ToolResult {
                call_id: id.clone(),
                content: "found".into(),
                is_error: false
            }
        );
        assert!(parse_request(br#"{"model":"m","messages":[{"role":"x","content":""}]}"#).is_err());
        assert!(parse_request(br#"{"model":"m","messages":[],"format":3}"#).is_err());
    }

    // -- responses ----------------------------------------------------------

    #[test]
    fn response_text_fixture() {
        let body = br#"{"model":"llama3.2","created_at":"2024-08-04T19:22:45.499127Z",
            "message":{"role":"assistant","content":"The sky is blue because of Rayleigh scattering."},
            "done_reason":"stop","done":true,"total_duration":4883583458,"load_duration":1334875,
            "prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.model, "llama3.2");
        assert_eq!(r.created, 1_722_799_365);
        assert_eq!(
            r.parts,
            vec![text("The sky is blue because of Rayleigh scattering.")]
        );
        assert_eq!(r.finish, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 26,
                output_tokens: 282
            })
        );
        assert!(r.id.starts_with("chatcmpl-"));
        let mut out = Vec::new();
        write_response(&r, &mut out);
        assert_eq!(parse_response(&out).unwrap(), r);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["done"], json!(true));
        assert_eq!(v["done_reason"], json!("stop"));
        assert_eq!(v["created_at"], json!("2024-08-04T19:22:45Z"));
        assert_eq!(v["eval_count"], json!(282));
    }

    #[test]
    fn response_tool_calls_and_thinking_fixture() {
        let body = br#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.123456789Z",
            "message":{"role":"assistant","content":"","thinking":"User wants weather.",
              "tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}},
                            {"id":"call_x","function":{"index":1,"name":"get_time","arguments":{}}}]},
            "done_reason":"stop","done":true,"prompt_eval_count":40,"eval_count":12}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(
            r.parts[0],
            Part::Reasoning {
                text: "User wants weather.".into(),
                signature: None
            }
        );
        let Part::ToolCall {
            id,
            name,
            arguments,
        } = &r.parts[1]
        else {
            panic!("tool call expected");
        };
        assert!(id.starts_with("call_") && id.len() > 10);
        assert_eq!(name, "get_weather");
        assert_eq!(arguments, r#"{"city":"Paris","unit":"c"}"#);
        assert_eq!(
            r.parts[2],
            Part::ToolCall {
                id: "call_x".into(),
                name: "get_time".into(),
                arguments: "{}".into()
            }
        );
        // Stable ids: the same reply parses to the same canonical value.
        assert_eq!(parse_response(body).unwrap(), r);
        let mut out = Vec::new();
        write_response(&r, &mut out);
        assert_eq!(parse_response(&out).unwrap(), r);

        // Length.
        let r = parse_response(
            br#"{"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"abc"},"done":true,"done_reason":"length","eval_count":3}"#,
        )
        .unwrap();
        assert_eq!(r.finish, FinishReason::Length);
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 0,
                output_tokens: 3
            })
        );
        assert!(parse_response(br#"{"error":"model not found"}"#).is_err());
    }

    // -- streams ------------------------------------------------------------

    #[test]
    fn stream_text_and_thinking() {
        let ls: [&[u8]; 5] = [
            br#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.1Z","message":{"role":"assistant","content":"","thinking":"Let me think"},"done":false}"#,
            br#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.2Z","message":{"role":"assistant","content":"Hello"},"done":false}"#,
            br#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.3Z","message":{"role":"assistant","content":" world"},"done":false}"#,
            b"  ",
            br#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.4Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","total_duration":1,"prompt_eval_count":7,"eval_count":2}"#,
        ];
        let evs = decode_all(&ls);
        let created = parse_rfc3339("2025-06-01T10:00:00Z").unwrap();
        let expected = vec![
            StreamEvent::Start {
                id: reply_id("qwen3", created),
                model: "qwen3".into(),
                created,
            },
            StreamEvent::ReasoningDelta("Let me think".into()),
            StreamEvent::TextDelta("Hello".into()),
            StreamEvent::TextDelta(" world".into()),
            StreamEvent::Finish(FinishReason::Length),
            StreamEvent::Usage(Usage {
                input_tokens: 7,
                output_tokens: 2,
            }),
            StreamEvent::End,
        ];
        assert_eq!(evs, expected);
        let bytes = encode_all(&evs);
        assert_eq!(decode_all(&lines(&bytes)), expected);
        let last: Value = serde_json::from_slice(lines(&bytes).last().unwrap()).unwrap();
        assert_eq!(last["done"], json!(true));
        assert_eq!(last["done_reason"], json!("length"));
        assert_eq!(last["prompt_eval_count"], json!(7));
    }

    #[test]
    fn stream_tool_calls() {
        let ls: [&[u8]; 3] = [
            br#"{"model":"llama3.1","created_at":"2025-06-01T10:00:00.000001Z","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":false}"#,
            br#"{"model":"llama3.1","created_at":"2025-06-01T10:00:00.000002Z","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_t","function":{"index":1,"name":"get_time","arguments":{"tz":"CET"}}}]},"done":false}"#,
            br#"{"model":"llama3.1","created_at":"2025-06-01T10:00:00.000003Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":100,"eval_count":20}"#,
        ];
        let evs = decode_all(&ls);
        let StreamEvent::ToolCallStart { id: first_id, .. } = &evs[1] else {
            panic!("tool call start expected: {evs:?}");
        };
        let created = parse_rfc3339("2025-06-01T10:00:00Z").unwrap();
        let expected = vec![
            StreamEvent::Start {
                id: reply_id("llama3.1", created),
                model: "llama3.1".into(),
                created,
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: first_id.clone(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"city":"Paris"}"#.into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_t".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: r#"{"tz":"CET"}"#.into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 100,
                output_tokens: 20,
            }),
            StreamEvent::End,
        ];
        assert_eq!(evs, expected);
        let bytes = encode_all(&evs);
        assert_eq!(decode_all(&lines(&bytes)), expected);

        // Arguments streamed in fragments (from another format) are buffered
        // into one whole call with an object.
        let mut enc = StreamEncoder::new(false);
        let mut out = Vec::new();
        for ev in [
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
        ] {
            enc.encode(&ev, &mut out);
        }
        enc.finish(&mut out);
        let ls = lines(&out);
        assert_eq!(ls.len(), 2);
        let v: Value = serde_json::from_slice(ls[0]).unwrap();
        assert_eq!(
            v["message"]["tool_calls"],
            json!([{"id": "toolu_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}])
        );
    }

    #[test]
    fn stream_error_line() {
        let ls: [&[u8]; 3] = [
            br#"{"model":"m","created_at":"2025-06-01T10:00:00Z","message":{"role":"assistant","content":"Hi"},"done":false}"#,
            br#"{"error":"an error was encountered while running the model: unexpected EOF"}"#,
            br#"{"model":"m","created_at":"2025-06-01T10:00:00Z","message":{"role":"assistant","content":"late"},"done":false}"#,
        ];
        let evs = decode_all(&ls);
        let e = ApiError {
            status: 500,
            kind: "api_error".into(),
            message: "an error was encountered while running the model: unexpected EOF".into(),
        };
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[1], StreamEvent::TextDelta("Hi".into()));
        assert_eq!(evs[2], StreamEvent::Error(e.clone()));
        let bytes = encode_all(&evs);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with(
            "{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n"
        ));
        assert!(!text.contains("\"done\":true"));
        assert_eq!(decode_all(&lines(&bytes)), evs);
        assert!(
            StreamDecoder::new()
                .feed(None, b"{not json", &mut Vec::new())
                .is_err()
        );
    }

    // -- errors -------------------------------------------------------------

    #[test]
    fn errors() {
        let e = parse_error(
            404,
            br#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
        );
        assert_eq!(
            e,
            ApiError {
                status: 404,
                kind: "not_found_error".into(),
                message: "model \"llama9\" not found, try pulling it first".into()
            }
        );
        let e = parse_error(502, b"\n  upstream connect error  \n");
        assert_eq!(e.message, "upstream connect error");
        assert_eq!(e.kind, "api_error");
        assert_eq!(
            parse_error(400, b"x".repeat(5000).as_slice()).message.len(),
            2048
        );
        let mut out = Vec::new();
        write_error(&e, &mut out);
        assert_eq!(out, br#"{"error":"upstream connect error"}"#);
        assert_eq!(parse_error(502, &out), e);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789+02:00"),
            Some(1_709_202_896)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56-00:30"),
            Some(1_709_210_096 + 1800)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        for secs in [0u64, 951_782_400, 1_709_210_096, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(format_rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut req = Vec::new();
        write_request(&canonical_request(), &mut req).unwrap();
        let mut resp = Vec::new();
        write_response(
            &ChatResponse {
                id: "i".into(),
                model: "m".into(),
                parts: vec![
                    Part::Reasoning {
                        text: "r".into(),
                        signature: None,
                    },
                    text("t"),
                    Part::ToolCall {
                        id: "c".into(),
                        name: "f".into(),
                        arguments: "{\"a\":1}".into(),
                    },
                ],
                finish: FinishReason::ToolCalls,
                usage: Some(Usage::default()),
                created: 1_700_000_000,
            },
            &mut resp,
        );
        let samples: [&[u8]; 2] = [&req, &resp];
        for s in samples {
            for cut in 0..s.len() {
                let p = &s[..cut];
                let _ = parse_request(p);
                let _ = parse_response(p);
                let _ = parse_error(500, p);
                let _ = StreamDecoder::new().feed(None, p, &mut Vec::new());
            }
        }
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
                "images",
                "format",
                "options",
                "num_predict",
                "stop",
                "thinking",
                "message",
                "done",
                "done_reason",
                "created_at",
                "eval_count",
                "tool_name",
                "tool_call_id",
                "id",
                "name",
                "error",
                "stream",
            ],
            |b| {
                let _ = parse_request(b);
                let _ = parse_response(b);
                let _ = parse_error(400, b);
                let _ = StreamDecoder::new().feed(None, b, &mut Vec::new());
            },
        );
        for ts in [
            "",
            "2024",
            "2024-01-01T00:00:00+",
            "2024-01-01T00:00:00+01",
            "9999-99-99T99:99:99Z",
            "2024-01-01T00:00:00.Z",
        ] {
            let _ = parse_rfc3339(ts);
        }
        let _ = format_rfc3339(u64::MAX);
    }
}
