//! OpenAI Responses API (`POST /v1/responses`), client side: what Codex CLI
//! and Copilot CLI (`wire = responses`) speak. See the parent module for the
//! function set.
//!
//! The router is stateless, so only the stateless subset of the API is
//! translated:
//!
//! - `previous_response_id`, `conversation` and `item_reference` input items
//!   need server-side state and are refused with a [`FormatError`] (the
//!   pipeline answers 400). Codex sends `store: false` and resends the whole
//!   conversation, which is what works.
//! - Input items: messages (roles `user`, `assistant`, `system`, `developer`;
//!   `system` / `developer` messages before any other item join the canonical
//!   system prompt, in order, after `instructions`; later ones stay in place
//!   as [`Role::System`] turns, written back as `system` messages),
//!   `function_call`, `function_call_output` (content-part outputs: texts
//!   joined, images moved to a user message after the run of outputs), and
//!   `reasoning` (its summary text; `encrypted_content` is opaque to every
//!   other provider and dropped). Consecutive assistant-side items (reasoning,
//!   assistant message, function calls) merge into one assistant turn. Items
//!   of hosted tools (`web_search_call`, `custom_tool_call`, …) are dropped.
//! - Tools: only `type: "function"` tools are forwarded (`strict` is
//!   dropped). Hosted and non-function tools (`web_search`, `local_shell`,
//!   `custom` grammar tools, `mcp`, …) cannot run on another provider and are
//!   dropped; so is a `tool_choice` when no tool remains.
//! - `store`, `include`, `reasoning`, `prompt_cache_key`, `metadata`,
//!   `truncation`, `service_tier`, `user` are dropped.
//! - `input_file` content and images by `file_id` are refused: they refer to
//!   uploaded files the router cannot read.
//!
//! Replies carry the request-independent fields of a `response` object;
//! since a reply does not know the request, `tools` is `[]`, `tool_choice`
//! `"auto"` and `parallel_tool_calls` `true`. Streams follow the exact event
//! sequence of the real API (`response.created` … `response.completed`, every
//! frame with `event:`, `type` and `sequence_number`), because Codex reports
//! "stream closed before response.completed" and the openai SDK raises
//! without the terminal event.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{
    ApiError, ChatRequest, ChatResponse, FinishReason, Format, FormatError, Image, Message,
    OutputFormat, Part, Role, StreamEvent, Tool, ToolChoice, Usage,
};

/// Non-JSON error bodies are kept up to this many bytes.
const MAX_ERROR_TEXT: usize = 2048;

// ───────────────────────────── requests ─────────────────────────────

/// Parses a Responses request body into the canonical request.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| FormatError(format!("request body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| FormatError("request body must be a JSON object".into()))?;

    if present(obj.get("previous_response_id")) {
        return Err(FormatError(
            "previous_response_id is not supported: this router is stateless; resend the \
             conversation in `input`"
                .into(),
        ));
    }
    if present(obj.get("conversation")) {
        return Err(FormatError(
            "conversation is not supported: this router is stateless; resend the conversation \
             in `input`"
                .into(),
        ));
    }

    let mut system: Vec<String> = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                system.push(s.clone());
            }
        }
        Some(_) => return Err(FormatError("`instructions` must be a string".into())),
    }

    let mut messages: Vec<Message> = Vec::new();
    match obj.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message {
            role: Role::User,
            parts: vec![Part::Text(s.clone())],
        }),
        Some(Value::Array(items)) => {
            // Images of function_call_output items, held until the run of
            // outputs ends (no other format carries images in a tool result).
            let mut moved_images: Vec<Part> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if item.get("type").and_then(Value::as_str) != Some("function_call_output") {
                    flush_moved_images(&mut moved_images, &mut messages);
                }
                parse_input_item(item, &mut system, &mut messages, &mut moved_images)
                    .map_err(|e| FormatError(format!("input[{i}]: {}", e.0)))?;
            }
            flush_moved_images(&mut moved_images, &mut messages);
        }
        Some(_) => {
            return Err(FormatError(
                "`input` must be a string or an array of items".into(),
            ));
        }
    }

    let tools = parse_tools(obj.get("tools"))?;
    let tool_choice = if tools.is_empty() {
        None
    } else {
        parse_tool_choice(obj.get("tool_choice"))
    };
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);

    Ok(ChatRequest {
        model: str_field(obj, "model").unwrap_or_default().to_string(),
        system: if system.is_empty() {
            None
        } else {
            Some(system.join("\n\n"))
        },
        messages,
        tools,
        tool_choice,
        max_tokens: obj.get("max_output_tokens").and_then(Value::as_u64),
        temperature: obj.get("temperature").and_then(Value::as_f64),
        top_p: obj.get("top_p").and_then(Value::as_f64),
        stop: Vec::new(),
        stream,
        // Responses streams always end with usage in `response.completed`, so
        // the upstream must report it whenever we stream.
        include_usage: stream,
        output: parse_text_format(obj.get("text"))?,
        parallel_tool_calls: obj.get("parallel_tool_calls").and_then(Value::as_bool),
    })
}

fn present(v: Option<&Value>) -> bool {
    v.is_some_and(|v| !v.is_null())
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// Images taken out of tool outputs, as a user message after them.
fn flush_moved_images(moved_images: &mut Vec<Part>, messages: &mut Vec<Message>) {
    if !moved_images.is_empty() {
        messages.push(Message {
            role: Role::User,
            parts: std::mem::take(moved_images),
        });
    }
}

fn parse_input_item(
    item: &Value,
    system: &mut Vec<String>,
    messages: &mut Vec<Message>,
    moved_images: &mut Vec<Part>,
) -> Result<(), FormatError> {
    let obj = item
        .as_object()
        .ok_or_else(|| FormatError("an input item must be an object".into()))?;
    match str_field(obj, "type") {
        None | Some("message") => {
            let role = str_field(obj, "role")
                .ok_or_else(|| FormatError("a message item needs a `role`".into()))?;
            let content = obj.get("content");
            match role {
                // Before the first other item: the system prompt (after
                // `instructions`); later: a system turn in place.
                "system" | "developer" => {
                    let text = content_text(content)?;
                    if text.is_empty() {
                        return Ok(());
                    }
                    if messages.is_empty() {
                        system.push(text);
                    } else {
                        messages.push(Message {
                            role: Role::System,
                            parts: vec![Part::Text(text)],
                        });
                    }
                }
                "user" => {
                    let parts = content_parts(content)?;
                    if !parts.is_empty() {
                        messages.push(Message {
                            role: Role::User,
                            parts,
                        });
                    }
                }
                "assistant" => {
                    for part in content_parts(content)? {
                        push_assistant(messages, part);
                    }
                }
                other => return Err(FormatError(format!("unknown message role `{other}`"))),
            }
        }
        Some("function_call") => {
            let name = str_field(obj, "name")
                .ok_or_else(|| FormatError("a function_call item needs a `name`".into()))?;
            let id = str_field(obj, "call_id")
                .or_else(|| str_field(obj, "id"))
                .ok_or_else(|| FormatError("a function_call item needs a `call_id`".into()))?;
            let arguments = match obj.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => "{}".to_string(),
                Some(other) => other.to_string(),
            };
            push_assistant(
                messages,
                Part::ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments,
                },
            );
        }
        Some("function_call_output") => {
            let call_id = str_field(obj, "call_id").ok_or_else(|| {
                FormatError("a function_call_output item needs a `call_id`".into())
            })?;
            let content = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                // Content parts (Codex sends them for images): tool results
                // are text in the canonical model, so the texts are joined
                // and the images follow the outputs as a user message.
                Some(parts @ Value::Array(_)) => {
                    let mut texts = Vec::new();
                    for part in content_parts(Some(parts))? {
                        match part {
                            Part::Text(t) => texts.push(t),
                            image => moved_images.push(image),
                        }
                    }
                    texts.join("\n")
                }
                Some(other) => other.to_string(),
            };
            messages.push(Message {
                role: Role::Tool,
                parts: vec![Part::ToolResult {
                    call_id: call_id.to_string(),
                    content,
                    is_error: false,
                }],
            });
        }
        Some("reasoning") => {
            let text = reasoning_text(obj);
            if !text.is_empty() {
                push_assistant(
                    messages,
                    Part::Reasoning {
                        text,
                        signature: None,
                    },
                );
            }
        }
        Some("item_reference") => {
            return Err(FormatError(
                "item_reference is not supported: this router is stateless; resend the item \
                 itself in `input`"
                    .into(),
            ));
        }
        // Hosted-tool items (web_search_call, custom_tool_call, …): no other
        // provider can interpret them.
        Some(_) => {}
    }
    Ok(())
}

/// Assistant-side items (reasoning, assistant text, function calls) of one
/// turn arrive as separate items; they form one assistant message.
fn push_assistant(messages: &mut Vec<Message>, part: Part) {
    if let Some(last) = messages.last_mut()
        && last.role == Role::Assistant
    {
        last.parts.push(part);
        return;
    }
    messages.push(Message {
        role: Role::Assistant,
        parts: vec![part],
    });
}

/// The summary text of a reasoning item (or its `reasoning_text` content,
/// which open-weight servers send instead).
fn reasoning_text(obj: &Map<String, Value>) -> String {
    let texts = |key: &str| -> Vec<&str> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("text").and_then(Value::as_str))
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let summary = texts("summary");
    if summary.is_empty() {
        texts("content").join("\n\n")
    } else {
        summary.join("\n\n")
    }
}

/// Text of a system/developer message (images there have no canonical place).
fn content_text(content: Option<&Value>) -> Result<String, FormatError> {
    let parts = content_parts(content)?;
    Ok(parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

fn content_parts(content: Option<&Value>) -> Result<Vec<Part>, FormatError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(FormatError(
                "message `content` must be a string or an array".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let obj = p
            .as_object()
            .ok_or_else(|| FormatError("a content part must be an object".into()))?;
        match str_field(obj, "type") {
            Some("input_text" | "output_text" | "text") => {
                out.push(Part::Text(
                    str_field(obj, "text").unwrap_or_default().to_string(),
                ));
            }
            Some("refusal") => {
                out.push(Part::Text(
                    str_field(obj, "refusal").unwrap_or_default().to_string(),
                ));
            }
            Some("input_image") => {
                let url = match obj.get("image_url") {
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                    _ => None,
                };
                match url {
                    Some(url) => out.push(Part::Image(image_from_url(url))),
                    None if present(obj.get("file_id")) => {
                        return Err(FormatError(
                            "input_image by file_id is not supported: send the image as a URL \
                             or a data: URL"
                                .into(),
                        ));
                    }
                    None => {
                        return Err(FormatError("input_image needs an `image_url`".into()));
                    }
                }
            }
            Some("input_file") => {
                return Err(FormatError(
                    "input_file content is not supported by cross-format routes".into(),
                ));
            }
            Some(other) => {
                return Err(FormatError(format!(
                    "content part type `{other}` is not supported"
                )));
            }
            None => return Err(FormatError("a content part needs a `type`".into())),
        }
    }
    Ok(out)
}

/// `data:<media type>;base64,<data>` becomes inline data; anything else a URL.
fn image_from_url(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return Image::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        };
    }
    Image::Url(url.to_string())
}

fn image_to_url(image: &Image) -> String {
    match image {
        Image::Url(u) => u.clone(),
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

fn parse_tools(tools: Option<&Value>) -> Result<Vec<Tool>, FormatError> {
    let Some(Value::Array(tools)) = tools else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for t in tools {
        let Some(obj) = t.as_object() else {
            return Err(FormatError("a tool must be an object".into()));
        };
        if str_field(obj, "type") != Some("function") {
            continue; // hosted / non-function tools: see the module doc
        }
        let name = str_field(obj, "name")
            .ok_or_else(|| FormatError("a function tool needs a `name`".into()))?;
        out.push(Tool {
            name: name.to_string(),
            description: str_field(obj, "description").map(str::to_string),
            parameters: match obj.get("parameters") {
                Some(p) if !p.is_null() => p.clone(),
                _ => json!({"type": "object", "properties": {}}),
            },
        });
    }
    Ok(out)
}

fn parse_tool_choice(v: Option<&Value>) -> Option<ToolChoice> {
    match v? {
        Value::String(s) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => None,
        },
        Value::Object(o) => match str_field(o, "type") {
            Some("function") => str_field(o, "name").map(|n| ToolChoice::Named(n.to_string())),
            Some("allowed_tools") => match str_field(o, "mode") {
                Some("required") => Some(ToolChoice::Required),
                _ => Some(ToolChoice::Auto),
            },
            _ => None, // a hosted tool: dropped with the tool
        },
        _ => None,
    }
}

fn parse_text_format(text: Option<&Value>) -> Result<Option<OutputFormat>, FormatError> {
    let Some(format) = text.and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => Ok(Some(OutputFormat::JsonSchema {
            name: format
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_string(),
            schema: format
                .get("schema")
                .cloned()
                .ok_or_else(|| FormatError("text.format json_schema needs a `schema`".into()))?,
            strict: format.get("strict").and_then(Value::as_bool),
        })),
        Some("json_object") => Ok(Some(OutputFormat::JsonObject)),
        _ => Ok(None),
    }
}

/// Writes the canonical request as a Responses request (stateless:
/// `store: false`). Stop sequences have no Responses equivalent and are
/// dropped.
pub fn write_request(req: &ChatRequest, out: &mut Vec<u8>) {
    let mut input: Vec<Value> = Vec::new();
    for m in &req.messages {
        let (role, text_type) = match m.role {
            Role::Assistant => ("assistant", "output_text"),
            Role::User | Role::Tool => ("user", "input_text"),
            // Responses takes `system` messages anywhere in `input`.
            Role::System => ("system", "input_text"),
        };
        let mut content: Vec<Value> = Vec::new();
        let flush = |content: &mut Vec<Value>, input: &mut Vec<Value>| {
            if !content.is_empty() {
                input.push(json!({
                    "type": "message",
                    "role": role,
                    "content": std::mem::take(content),
                }));
            }
        };
        for p in &m.parts {
            match p {
                Part::Text(t) => content.push(if text_type == "output_text" {
                    json!({"type": "output_text", "text": t, "annotations": []})
                } else {
                    json!({"type": "input_text", "text": t})
                }),
                Part::Image(img) => content.push(json!({
                    "type": "input_image",
                    "image_url": image_to_url(img),
                })),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    flush(&mut content, &mut input);
                    input.push(json!({
                        "type": "function_call",
                        "call_id": id,
                        "name": name,
                        "arguments": arguments,
                    }));
                }
                Part::ToolResult {
                    call_id,
                    content: c,
                    ..
                } => {
                    flush(&mut content, &mut input);
                    input.push(json!({
                        "type": "function_call_output",
                        "call_id": call_id,
                        "output": c,
                    }));
                }
                Part::Reasoning { text, .. } => {
                    flush(&mut content, &mut input);
                    input.push(json!({
                        "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": text}],
                    }));
                }
            }
        }
        flush(&mut content, &mut input);
    }

    let mut obj = Map::new();
    obj.insert("model".into(), json!(req.model));
    if let Some(s) = &req.system {
        obj.insert("instructions".into(), json!(s));
    }
    obj.insert("input".into(), Value::Array(input));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut o = Map::new();
                o.insert("type".into(), json!("function"));
                o.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    o.insert("description".into(), json!(d));
                }
                o.insert("parameters".into(), t.parameters.clone());
                Value::Object(o)
            })
            .collect();
        obj.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = &req.tool_choice {
        obj.insert(
            "tool_choice".into(),
            match tc {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(n) => json!({"type": "function", "name": n}),
            },
        );
    }
    if let Some(n) = req.max_tokens {
        obj.insert("max_output_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        obj.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        obj.insert("top_p".into(), json!(t));
    }
    if let Some(p) = req.parallel_tool_calls {
        obj.insert("parallel_tool_calls".into(), json!(p));
    }
    match &req.output {
        None => {}
        Some(OutputFormat::JsonObject) => {
            obj.insert("text".into(), json!({"format": {"type": "json_object"}}));
        }
        Some(OutputFormat::JsonSchema {
            name,
            schema,
            strict,
        }) => {
            let mut f = Map::new();
            f.insert("type".into(), json!("json_schema"));
            f.insert("name".into(), json!(name));
            f.insert("schema".into(), schema.clone());
            if let Some(s) = strict {
                f.insert("strict".into(), json!(s));
            }
            obj.insert("text".into(), json!({ "format": Value::Object(f) }));
        }
    }
    obj.insert("store".into(), json!(false));
    obj.insert("stream".into(), json!(req.stream));
    write_json(out, &Value::Object(obj));
}

// ───────────────────────────── responses ─────────────────────────────

/// Parses a `response` object (a non-streamed reply, or the `response` of a
/// terminal stream event).
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, FormatError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| FormatError(format!("response body is not valid JSON: {e}")))?;
    parse_response_value(&v)
}

fn parse_response_value(v: &Value) -> Result<ChatResponse, FormatError> {
    let mut obj = v
        .as_object()
        .ok_or_else(|| FormatError("response body must be a JSON object".into()))?;
    // Tolerate a stream event's envelope `{"type":…,"response":{…}}`.
    if !obj.contains_key("output")
        && let Some(inner) = obj.get("response").and_then(Value::as_object)
    {
        obj = inner;
    }
    let status = str_field(obj, "status").unwrap_or("completed");
    if status == "failed" {
        let message = obj
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("the response failed");
        return Err(FormatError(format!("response failed: {message}")));
    }

    let parts = output_parts(obj.get("output"));
    let has_calls = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let finish = finish_from_status(status, obj.get("incomplete_details"), has_calls);
    Ok(ChatResponse {
        id: str_field(obj, "id").unwrap_or_default().to_string(),
        model: str_field(obj, "model").unwrap_or_default().to_string(),
        parts,
        finish,
        usage: parse_usage(obj.get("usage")),
        created: number_u64(obj.get("created_at")),
    })
}

fn number_u64(v: Option<&Value>) -> u64 {
    match v {
        Some(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        None => 0,
    }
}

fn output_parts(output: Option<&Value>) -> Vec<Part> {
    let mut parts = Vec::new();
    let Some(items) = output.and_then(Value::as_array) else {
        return parts;
    };
    for item in items {
        let Some(obj) = item.as_object() else {
            continue;
        };
        match str_field(obj, "type") {
            Some("message") => {
                if let Some(content) = obj.get("content").and_then(Value::as_array) {
                    for c in content {
                        match c.get("type").and_then(Value::as_str) {
                            Some("output_text") => parts.push(Part::Text(
                                c.get("text")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                            )),
                            Some("refusal") => parts.push(Part::Text(
                                c.get("refusal")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                            )),
                            _ => {}
                        }
                    }
                }
            }
            Some("function_call") => parts.push(Part::ToolCall {
                id: str_field(obj, "call_id")
                    .or_else(|| str_field(obj, "id"))
                    .unwrap_or_default()
                    .to_string(),
                name: str_field(obj, "name").unwrap_or_default().to_string(),
                arguments: match obj.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(other) => other.to_string(),
                },
            }),
            Some("reasoning") => {
                let text = reasoning_text(obj);
                if !text.is_empty() {
                    parts.push(Part::Reasoning {
                        text,
                        signature: None,
                    });
                }
            }
            _ => {}
        }
    }
    parts
}

fn finish_from_status(status: &str, details: Option<&Value>, has_calls: bool) -> FinishReason {
    if status == "incomplete" {
        match details
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str)
        {
            Some("content_filter") => FinishReason::ContentFilter,
            _ => FinishReason::Length,
        }
    } else if has_calls {
        FinishReason::ToolCalls
    } else {
        FinishReason::Stop
    }
}

fn parse_usage(v: Option<&Value>) -> Option<Usage> {
    let u = v?.as_object()?;
    Some(Usage {
        input_tokens: u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
        output_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// One output item of a `response` object, as the API serializes it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutItem {
    Reasoning {
        id: String,
        summary: Vec<SummaryText>,
    },
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

#[derive(Debug, Clone, Serialize)]
struct SummaryText {
    #[serde(rename = "type")]
    ty: &'static str,
    text: String,
}

impl SummaryText {
    fn new(text: &str) -> Self {
        SummaryText {
            ty: "summary_text",
            text: text.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct OutputText {
    #[serde(rename = "type")]
    ty: &'static str,
    text: String,
    annotations: [(); 0],
}

impl OutputText {
    fn new(text: &str) -> Self {
        OutputText {
            ty: "output_text",
            text: text.to_string(),
            annotations: [],
        }
    }
}

#[derive(Serialize)]
struct UsageObj {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u64,
    // Required by recent openai-python `ResponseUsage` models.
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u64,
}

impl From<Usage> for UsageObj {
    fn from(u: Usage) -> Self {
        UsageObj {
            input_tokens: u.input_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: 0,
                cache_write_tokens: 0,
            },
            output_tokens: u.output_tokens,
            output_tokens_details: OutputDetails {
                reasoning_tokens: 0,
            },
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
        }
    }
}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct ResponseErrorObj<'a> {
    code: &'static str,
    message: &'a str,
}

/// The `response` object: the fields the openai SDK's `Response` model
/// requires plus the usual nulls.
#[derive(Serialize)]
struct ResponseObj<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<ResponseErrorObj<'a>>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<()>,
    max_output_tokens: Option<()>,
    model: &'a str,
    output: &'a [OutItem],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    store: bool,
    temperature: Option<()>,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: Option<()>,
    truncation: &'static str,
    usage: Option<UsageObj>,
    metadata: Map<String, Value>,
}

impl<'a> ResponseObj<'a> {
    fn new(id: &'a str, model: &'a str, created_at: u64, output: &'a [OutItem]) -> Self {
        ResponseObj {
            id,
            object: "response",
            created_at,
            status: "completed",
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            store: false,
            temperature: None,
            tool_choice: "auto",
            tools: [],
            top_p: None,
            truncation: "disabled",
            usage: None,
            metadata: Map::new(),
        }
    }

    /// Sets `status`/`incomplete_details` from the finish reason.
    fn finished(mut self, finish: Option<&FinishReason>) -> Self {
        match incomplete_reason(finish) {
            Some(reason) => {
                self.status = "incomplete";
                self.incomplete_details = Some(IncompleteDetails { reason });
            }
            None => self.status = "completed",
        }
        self
    }
}

fn incomplete_reason(finish: Option<&FinishReason>) -> Option<&'static str> {
    match finish {
        Some(FinishReason::Length) => Some("max_output_tokens"),
        Some(FinishReason::ContentFilter) => Some("content_filter"),
        _ => None,
    }
}

/// `resp_…` id for a provider id (kept when it already is one).
fn response_id(id: &str, created: u64) -> String {
    if id.starts_with("resp_") {
        id.to_string()
    } else if id.is_empty() {
        format!("resp_{created:x}")
    } else {
        format!("resp_{id}")
    }
}

/// Item ids share the response id's suffix: `msg_<suffix>_<output index>`.
fn item_id(prefix: &str, resp_id: &str, index: usize) -> String {
    let suffix = resp_id.strip_prefix("resp_").unwrap_or(resp_id);
    format!("{prefix}_{suffix}_{index}")
}

/// A unique call id: the provider's, or a made-up one when it is missing or
/// repeated (the openai SDK keys function-call items by `call_id`).
fn unique_call_id(id: &str, taken: &[&str], index: usize) -> String {
    if !id.is_empty() && !taken.contains(&id) {
        return id.to_string();
    }
    let mut n = index;
    loop {
        let candidate = if id.is_empty() {
            format!("call_{n}")
        } else {
            format!("{id}_{n}")
        };
        if !taken.contains(&candidate.as_str()) {
            return candidate;
        }
        n += 1;
    }
}

/// Writes the canonical reply as a Responses `response` object.
pub fn write_response(resp: &ChatResponse, out: &mut Vec<u8>) {
    let id = response_id(&resp.id, resp.created);
    let incomplete = incomplete_reason(Some(&resp.finish)).is_some();
    let mut items: Vec<OutItem> = Vec::new();
    let mut call_ids: Vec<String> = Vec::new();
    for part in &resp.parts {
        let idx = items.len();
        match part {
            Part::Text(t) => {
                if let Some(OutItem::Message { content, .. }) = items.last_mut() {
                    content.push(OutputText::new(t));
                } else {
                    items.push(OutItem::Message {
                        id: item_id("msg", &id, idx),
                        status: "completed",
                        role: "assistant",
                        content: vec![OutputText::new(t)],
                    });
                }
            }
            Part::Reasoning { text, .. } => {
                if let Some(OutItem::Reasoning { summary, .. }) = items.last_mut() {
                    summary.push(SummaryText::new(text));
                } else {
                    items.push(OutItem::Reasoning {
                        id: item_id("rs", &id, idx),
                        summary: vec![SummaryText::new(text)],
                    });
                }
            }
            Part::ToolCall {
                id: call_id,
                name,
                arguments,
            } => {
                let taken: Vec<&str> = call_ids.iter().map(String::as_str).collect();
                let call_id = unique_call_id(call_id, &taken, call_ids.len());
                call_ids.push(call_id.clone());
                items.push(OutItem::FunctionCall {
                    id: item_id("fc", &id, idx),
                    call_id,
                    name: name.clone(),
                    arguments: arguments.clone(),
                    status: "completed",
                });
            }
            // Images and tool results never appear in a reply.
            Part::Image(_) | Part::ToolResult { .. } => {}
        }
    }
    if incomplete {
        mark_incomplete(items.last_mut());
    }
    let mut obj =
        ResponseObj::new(&id, &resp.model, resp.created, &items).finished(Some(&resp.finish));
    obj.usage = resp.usage.map(UsageObj::from);
    write_json(out, &obj);
}

/// The item a truncated reply was cut in.
fn mark_incomplete(item: Option<&mut OutItem>) {
    match item {
        Some(OutItem::Message { status, .. }) | Some(OutItem::FunctionCall { status, .. }) => {
            *status = "incomplete";
        }
        _ => {}
    }
}

// ───────────────────────────── streams ─────────────────────────────

/// Decodes a Responses SSE stream into canonical events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    ended: bool,
    /// Anything streamed yet (text, reasoning, calls)?
    emitted: bool,
    calls: Vec<DecodedCall>,
}

#[derive(Debug)]
struct DecodedCall {
    output_index: Option<u64>,
    item_id: Option<String>,
    /// Canonical tool-call index.
    index: usize,
    arguments_seen: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one SSE event (`event:` name, `data:` payload).
    pub fn feed(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        if self.ended {
            return Ok(());
        }
        let trimmed = data.trim_ascii();
        if trimmed.is_empty() || trimmed == b"[DONE]" {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(trimmed)
            .map_err(|e| FormatError(format!("stream event is not valid JSON: {e}")))?;
        let event_name = event.and_then(|e| std::str::from_utf8(e).ok());
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .or(event_name)
            .unwrap_or_default();
        match ty {
            "response.created" if !self.started => {
                self.started = true;
                let r = v.get("response");
                let get = |k: &str| {
                    r.and_then(|r| r.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                out.push(StreamEvent::Start {
                    id: get("id"),
                    model: get("model"),
                    created: number_u64(r.and_then(|r| r.get("created_at"))),
                });
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = v.get("delta").and_then(Value::as_str)
                    && !d.is_empty()
                {
                    self.ensure_started(out);
                    self.emitted = true;
                    out.push(StreamEvent::TextDelta(d.to_string()));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(d) = v.get("delta").and_then(Value::as_str)
                    && !d.is_empty()
                {
                    self.ensure_started(out);
                    self.emitted = true;
                    out.push(StreamEvent::ReasoningDelta(d.to_string()));
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let item = v.get("item");
                if item.and_then(|i| i.get("type")).and_then(Value::as_str) == Some("function_call")
                {
                    self.function_call_item(&v, ty == "response.output_item.done", out);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(d) = v.get("delta").and_then(Value::as_str)
                    && let Some(call) = self.find_call(&v)
                {
                    call.arguments_seen = true;
                    let index = call.index;
                    if !d.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: d.to_string(),
                        });
                    }
                }
            }
            "response.function_call_arguments.done" => {
                // Servers that skip the deltas still send the whole arguments.
                if let Some(args) = v.get("arguments").and_then(Value::as_str)
                    && let Some(call) = self.find_call(&v)
                    && !call.arguments_seen
                {
                    call.arguments_seen = true;
                    let index = call.index;
                    if !args.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: args.to_string(),
                        });
                    }
                }
            }
            "response.completed" | "response.incomplete" => {
                self.ensure_started(out);
                let r = v.get("response");
                // A server that streamed no items: take them from the final object.
                if !self.emitted
                    && let Some(r) = r
                    && let Ok(resp) = parse_response_value(r)
                {
                    self.replay_parts(&resp.parts, out);
                }
                let status = if ty == "response.incomplete" {
                    "incomplete"
                } else {
                    r.and_then(|r| r.get("status"))
                        .and_then(Value::as_str)
                        .unwrap_or("completed")
                };
                out.push(StreamEvent::Finish(finish_from_status(
                    status,
                    r.and_then(|r| r.get("incomplete_details")),
                    !self.calls.is_empty(),
                )));
                if let Some(u) = parse_usage(r.and_then(|r| r.get("usage"))) {
                    out.push(StreamEvent::Usage(u));
                }
                out.push(StreamEvent::End);
                self.ended = true;
            }
            "response.failed" => {
                let err = v.get("response").and_then(|r| r.get("error"));
                out.push(StreamEvent::Error(error_from_code(
                    err.and_then(|e| e.get("code")).and_then(Value::as_str),
                    err.and_then(|e| e.get("message"))
                        .and_then(Value::as_str)
                        .unwrap_or("the response failed"),
                )));
                self.ended = true;
            }
            "error" => {
                // `{"type":"error","code","message"}`, or an OpenAI error
                // envelope some servers send instead.
                let e = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
                out.push(StreamEvent::Error(error_from_code(
                    e.get("code").and_then(Value::as_str).or_else(|| {
                        e.get("type")
                            .and_then(Value::as_str)
                            .filter(|t| *t != "error")
                    }),
                    e.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("stream error"),
                )));
                self.ended = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: String::new(),
                model: String::new(),
                created: 0,
            });
        }
    }

    fn find_call(&mut self, v: &Value) -> Option<&mut DecodedCall> {
        let output_index = v.get("output_index").and_then(Value::as_u64);
        let item_id = v.get("item_id").and_then(Value::as_str);
        self.calls.iter_mut().find(|c| {
            (output_index.is_some() && c.output_index == output_index)
                || (item_id.is_some() && c.item_id.as_deref() == item_id)
        })
    }

    fn function_call_item(&mut self, v: &Value, done: bool, out: &mut Vec<StreamEvent>) {
        let Some(item) = v.get("item") else {
            return;
        };
        let output_index = v.get("output_index").and_then(Value::as_u64);
        let item_id = item.get("id").and_then(Value::as_str).map(str::to_string);
        let known = self.calls.iter().position(|c| {
            (output_index.is_some() && c.output_index == output_index)
                || (item_id.is_some() && c.item_id == item_id)
        });
        let arguments = item
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let pos = match known {
            Some(pos) => pos,
            None => {
                self.ensure_started(out);
                self.emitted = true;
                let index = self.calls.len();
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: item
                        .get("call_id")
                        .or_else(|| item.get("id"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    name: item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                });
                self.calls.push(DecodedCall {
                    output_index,
                    item_id,
                    index,
                    arguments_seen: false,
                });
                self.calls.len() - 1
            }
        };
        // Arguments already present on `added`, or only on `done`.
        if (known.is_none() || done)
            && !arguments.is_empty()
            && let Some(call) = self.calls.get_mut(pos)
            && !call.arguments_seen
        {
            call.arguments_seen = true;
            out.push(StreamEvent::ToolCallDelta {
                index: call.index,
                arguments: arguments.to_string(),
            });
        }
    }

    fn replay_parts(&mut self, parts: &[Part], out: &mut Vec<StreamEvent>) {
        for p in parts {
            match p {
                Part::Text(t) if !t.is_empty() => out.push(StreamEvent::TextDelta(t.clone())),
                Part::Reasoning { text, .. } => out.push(StreamEvent::ReasoningDelta(text.clone())),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let index = self.calls.len();
                    self.calls.push(DecodedCall {
                        output_index: None,
                        item_id: None,
                        index,
                        arguments_seen: true,
                    });
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: id.clone(),
                        name: name.clone(),
                    });
                    if !arguments.is_empty() {
                        out.push(StreamEvent::ToolCallDelta {
                            index,
                            arguments: arguments.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
}

/// A Responses error code as a canonical error.
fn error_from_code(code: Option<&str>, message: &str) -> ApiError {
    let (status, kind) = match code {
        Some("rate_limit_exceeded" | "rate_limit_error") => (429, "rate_limit_error"),
        Some("insufficient_quota") => (429, "insufficient_quota"),
        Some(
            "invalid_prompt"
            | "invalid_request_error"
            | "context_length_exceeded"
            | "invalid_image"
            | "invalid_image_format"
            | "invalid_base64_image"
            | "invalid_image_url",
        ) => (400, "invalid_request_error"),
        Some("overloaded_error" | "server_is_overloaded") => (503, "overloaded_error"),
        _ => (500, "api_error"),
    };
    ApiError {
        status,
        kind: kind.to_string(),
        message: message.to_string(),
    }
}

/// The Responses `error.code` for a canonical error kind (the SDK validates
/// it against a closed list).
fn error_code(kind: &str) -> &'static str {
    if kind.contains("rate_limit") {
        "rate_limit_exceeded"
    } else {
        "server_error"
    }
}

/// Encodes canonical stream events as the Responses SSE event sequence.
#[derive(Debug)]
pub struct StreamEncoder {
    seq: u64,
    started: bool,
    /// `End` or `Error` was written: nothing more goes out.
    done: bool,
    id: String,
    model: String,
    created: u64,
    items: Vec<EncItem>,
    /// Index into `items` of the item still receiving deltas.
    open: Option<usize>,
    /// Canonical tool-call index → index into `items`.
    calls: Vec<(usize, usize)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

#[derive(Debug)]
struct EncItem {
    id: String,
    kind: EncKind,
    status: &'static str,
}

#[derive(Debug)]
enum EncKind {
    Message(String),
    Reasoning(String),
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl EncItem {
    fn to_out(&self) -> OutItem {
        match &self.kind {
            EncKind::Message(text) => OutItem::Message {
                id: self.id.clone(),
                status: self.status,
                role: "assistant",
                content: if self.status == "in_progress" {
                    Vec::new()
                } else {
                    vec![OutputText::new(text)]
                },
            },
            EncKind::Reasoning(text) => OutItem::Reasoning {
                id: self.id.clone(),
                summary: if self.status == "in_progress" {
                    Vec::new()
                } else {
                    vec![SummaryText::new(text)]
                },
            },
            EncKind::Call {
                call_id,
                name,
                arguments,
            } => OutItem::FunctionCall {
                id: self.id.clone(),
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: if self.status == "in_progress" {
                    String::new()
                } else {
                    arguments.clone()
                },
                status: self.status,
            },
        }
    }
}

/// The body of a frame, after `type` and `sequence_number`.
#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    #[serde(rename = "type")]
    ty: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct LifecycleBody<'a> {
    response: ResponseObj<'a>,
}

#[derive(Serialize)]
struct ItemBody {
    output_index: usize,
    item: OutItem,
}

impl StreamEncoder {
    /// `include_usage` is ignored: Responses streams always carry usage in
    /// the terminal event.
    pub fn new(_include_usage: bool) -> Self {
        StreamEncoder {
            seq: 0,
            started: false,
            done: false,
            id: String::new(),
            model: String::new(),
            created: 0,
            items: Vec::new(),
            open: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
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
            StreamEvent::TextDelta(d) => {
                if d.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let pos = self.open_kind(
                    out,
                    |k| matches!(k, EncKind::Message(_)),
                    |s, out| s.open_message(out),
                );
                if let Some(EncKind::Message(text)) = self.items.get_mut(pos).map(|i| &mut i.kind) {
                    text.push_str(d);
                }
                let item_id = self.item_id(pos);
                self.emit(
                    out,
                    "response.output_text.delta",
                    json!({
                        "item_id": item_id,
                        "output_index": pos,
                        "content_index": 0,
                        "delta": d,
                        "logprobs": [],
                    }),
                );
            }
            StreamEvent::ReasoningDelta(d) => {
                if d.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let pos = self.open_kind(
                    out,
                    |k| matches!(k, EncKind::Reasoning(_)),
                    |s, out| s.open_reasoning(out),
                );
                if let Some(EncKind::Reasoning(text)) = self.items.get_mut(pos).map(|i| &mut i.kind)
                {
                    text.push_str(d);
                }
                let item_id = self.item_id(pos);
                self.emit(
                    out,
                    "response.reasoning_summary_text.delta",
                    json!({
                        "item_id": item_id,
                        "output_index": pos,
                        "summary_index": 0,
                        "delta": d,
                    }),
                );
            }
            StreamEvent::ReasoningSignature(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                self.close_open(out, "completed");
                let pos = self.items.len();
                let taken: Vec<&str> = self
                    .items
                    .iter()
                    .filter_map(|i| match &i.kind {
                        EncKind::Call { call_id, .. } => Some(call_id.as_str()),
                        _ => None,
                    })
                    .collect();
                let call_id = unique_call_id(id, &taken, self.calls.len());
                self.items.push(EncItem {
                    id: item_id("fc", &self.id, pos),
                    kind: EncKind::Call {
                        call_id,
                        name: name.clone(),
                        arguments: String::new(),
                    },
                    status: "in_progress",
                });
                self.calls.retain(|(i, _)| i != index);
                self.calls.push((*index, pos));
                self.open = Some(pos);
                self.emit_item(out, "response.output_item.added", pos);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let Some(&(_, pos)) = self.calls.iter().find(|(i, _)| i == index) else {
                    return; // a delta for a call that never started
                };
                let Some(item) = self.items.get_mut(pos) else {
                    return;
                };
                if let EncKind::Call { arguments: a, .. } = &mut item.kind {
                    a.push_str(arguments);
                }
                // A late delta for a call already closed can only reach the
                // final `response.completed` object.
                if self.open == Some(pos) && !arguments.is_empty() {
                    let item_id = self.item_id(pos);
                    self.emit(
                        out,
                        "response.function_call_arguments.delta",
                        json!({
                            "item_id": item_id,
                            "output_index": pos,
                            "delta": arguments,
                        }),
                    );
                }
            }
            StreamEvent::Finish(r) => self.finish = Some(r.clone()),
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Error(e) => {
                self.ensure_started(out);
                let output: Vec<OutItem> = self.items.iter().map(EncItem::to_out).collect();
                let mut resp = ResponseObj::new(&self.id, &self.model, self.created, &output);
                resp.status = "failed";
                resp.error = Some(ResponseErrorObj {
                    code: error_code(&e.kind),
                    message: &e.message,
                });
                resp.usage = self.usage.map(UsageObj::from);
                let frame = Frame {
                    ty: "response.failed",
                    sequence_number: self.seq,
                    body: LifecycleBody { response: resp },
                };
                write_frame(out, "response.failed", &frame);
                self.seq += 1;
                self.done = true;
            }
            StreamEvent::End => {
                self.ensure_started(out);
                let incomplete = incomplete_reason(self.finish.as_ref()).is_some();
                self.close_open(
                    out,
                    if incomplete {
                        "incomplete"
                    } else {
                        "completed"
                    },
                );
                let output: Vec<OutItem> = self.items.iter().map(EncItem::to_out).collect();
                let mut resp = ResponseObj::new(&self.id, &self.model, self.created, &output)
                    .finished(self.finish.as_ref());
                resp.usage = Some(UsageObj::from(self.usage.unwrap_or_default()));
                let ty = if incomplete {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                let frame = Frame {
                    ty,
                    sequence_number: self.seq,
                    body: LifecycleBody { response: resp },
                };
                write_frame(out, ty, &frame);
                self.seq += 1;
                self.done = true;
            }
        }
    }

    /// A stream that never reached `End` stays without a terminal event, so
    /// the client sees the truncation instead of a fake completion.
    pub fn finish(&mut self, _out: &mut Vec<u8>) {}

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start("", "", 0, out);
        }
    }

    fn start(&mut self, id: &str, model: &str, created: u64, out: &mut Vec<u8>) {
        self.started = true;
        self.id = response_id(id, created);
        self.model = model.to_string();
        self.created = created;
        for ty in ["response.created", "response.in_progress"] {
            let mut resp = ResponseObj::new(&self.id, &self.model, self.created, &[]);
            resp.status = "in_progress";
            let frame = Frame {
                ty,
                sequence_number: self.seq,
                body: LifecycleBody { response: resp },
            };
            write_frame(out, ty, &frame);
            self.seq += 1;
        }
    }

    fn item_id(&self, pos: usize) -> String {
        self.items
            .get(pos)
            .map(|i| i.id.clone())
            .unwrap_or_default()
    }

    /// The open item if it matches `is_kind`, else closes it and opens a new
    /// one with `open_new`. Returns its position.
    fn open_kind(
        &mut self,
        out: &mut Vec<u8>,
        is_kind: impl Fn(&EncKind) -> bool,
        open_new: impl Fn(&mut Self, &mut Vec<u8>) -> usize,
    ) -> usize {
        if let Some(pos) = self.open
            && self.items.get(pos).is_some_and(|i| is_kind(&i.kind))
        {
            return pos;
        }
        self.close_open(out, "completed");
        let pos = open_new(self, out);
        self.open = Some(pos);
        pos
    }

    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        let pos = self.items.len();
        let id = item_id("msg", &self.id, pos);
        self.items.push(EncItem {
            id: id.clone(),
            kind: EncKind::Message(String::new()),
            status: "in_progress",
        });
        self.emit_item(out, "response.output_item.added", pos);
        self.emit(
            out,
            "response.content_part.added",
            json!({
                "item_id": id,
                "output_index": pos,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }),
        );
        pos
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) -> usize {
        let pos = self.items.len();
        let id = item_id("rs", &self.id, pos);
        self.items.push(EncItem {
            id: id.clone(),
            kind: EncKind::Reasoning(String::new()),
            status: "in_progress",
        });
        self.emit_item(out, "response.output_item.added", pos);
        self.emit(
            out,
            "response.reasoning_summary_part.added",
            json!({
                "item_id": id,
                "output_index": pos,
                "summary_index": 0,
                "part": {"type": "summary_text", "text": ""},
            }),
        );
        pos
    }

    /// Writes the `.done` events of the open item.
    fn close_open(&mut self, out: &mut Vec<u8>, status: &'static str) {
        let Some(pos) = self.open.take() else {
            return;
        };
        let Some(item) = self.items.get_mut(pos) else {
            return;
        };
        item.status = status;
        let id = item.id.clone();
        match &item.kind {
            EncKind::Message(text) => {
                let text = text.clone();
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({
                        "item_id": id,
                        "output_index": pos,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    }),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({
                        "item_id": id,
                        "output_index": pos,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []},
                    }),
                );
            }
            EncKind::Reasoning(text) => {
                let text = text.clone();
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({
                        "item_id": id,
                        "output_index": pos,
                        "summary_index": 0,
                        "text": text,
                    }),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({
                        "item_id": id,
                        "output_index": pos,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    }),
                );
            }
            EncKind::Call { arguments, .. } => {
                let arguments = arguments.clone();
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({
                        "item_id": id,
                        "output_index": pos,
                        "arguments": arguments,
                    }),
                );
            }
        }
        self.emit_item(out, "response.output_item.done", pos);
    }

    fn emit_item(&mut self, out: &mut Vec<u8>, ty: &str, pos: usize) {
        let Some(item) = self.items.get(pos) else {
            return;
        };
        let body = ItemBody {
            output_index: pos,
            item: item.to_out(),
        };
        let frame = Frame {
            ty,
            sequence_number: self.seq,
            body,
        };
        write_frame(out, ty, &frame);
        self.seq += 1;
    }

    fn emit(&mut self, out: &mut Vec<u8>, ty: &str, body: Value) {
        let frame = Frame {
            ty,
            sequence_number: self.seq,
            body,
        };
        write_frame(out, ty, &frame);
        self.seq += 1;
    }
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::new(true)
    }
}

/// `event: <type>\ndata: <json>\n\n`.
fn write_frame<T: Serialize>(out: &mut Vec<u8>, ty: &str, frame: &T) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(out, frame);
    out.extend_from_slice(b"\n\n");
}

/// Serializing our own values into a `Vec` cannot fail (no non-string map
/// keys, no failing writer); a failure would leave `out` as it was.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let len = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(len);
    }
}

// ───────────────────────────── errors ─────────────────────────────

/// Parses an error body: OpenAI `{"error":{"message","type","code"}}`, and
/// leniently `{"error":"…"}`, `{"message":"…"}`, `{"detail":"…"}`; any other
/// body becomes the message (at most 2 KB).
pub fn parse_error(status: u16, body: &[u8]) -> ApiError {
    let mut kind: Option<String> = None;
    let mut message: Option<String> = None;
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        match v.get("error") {
            Some(Value::Object(e)) => {
                message = str_field(e, "message").map(str::to_string);
                kind = str_field(e, "type")
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
            }
            Some(Value::String(s)) => message = Some(s.clone()),
            _ => {}
        }
        if message.is_none() {
            message = ["message", "detail"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .map(str::to_string);
        }
    }
    let message = match message {
        Some(m) if !m.is_empty() => m,
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = super::cut_at_char_boundary(&text, MAX_ERROR_TEXT).trim();
            if text.is_empty() {
                format!("upstream returned HTTP {status}")
            } else {
                text.to_string()
            }
        }
    };
    ApiError {
        status,
        kind: kind.unwrap_or_else(|| kind_for_status(status).to_string()),
        message,
    }
}

/// The error type for an HTTP status (the shared table).
fn kind_for_status(status: u16) -> &'static str {
    super::kind_for_status(status, Format::Responses)
}

/// Writes an error body: the Responses API uses OpenAI's error shape, so
/// this is OpenAI's writer.
pub fn write_error(err: &ApiError, code: Option<&str>, out: &mut Vec<u8>) {
    super::openai::write_error(err, code, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like what Codex CLI sends (store:false, encrypted reasoning
    /// include, prompt_cache_key, function tools plus hosted ones, a prior
    /// tool round resent in `input`).
    const CODEX_REQUEST: &str = r#"{
      "model": "gpt-5",
      "instructions": "You are Codex, a coding agent.",
      "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>sandboxed</permissions>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd=/w</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "I should run ls."}], "content": null, "encrypted_content": "gAAAAB..."},
        {"type": "function_call", "id": "fc_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}", "call_id": "call_A"},
        {"type": "function_call", "id": "fc_2", "name": "exec_command", "arguments": "{\"cmd\":\"pwd\"}", "call_id": "call_B"},
        {"type": "function_call_output", "call_id": "call_A", "output": "a.txt\nb.txt"},
        {"type": "function_call_output", "call_id": "call_B", "output": "/w"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two files."}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"role": "user", "content": "thanks"}
      ],
      "tools": [
        {"type": "function", "name": "exec_command", "description": "Run a command", "strict": false,
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "..."}}
      ],
      "tool_choice": "auto",
      "parallel_tool_calls": true,
      "reasoning": {"effort": "medium", "summary": "auto"},
      "store": false,
      "stream": true,
      "include": ["reasoning.encrypted_content"],
      "prompt_cache_key": "0199-session",
      "metadata": {"k": "v"},
      "max_output_tokens": 4096,
      "temperature": 0.2,
      "top_p": 0.9
    }"#;

    fn text(s: &str) -> Part {
        Part::Text(s.to_string())
    }

    fn call(id: &str, name: &str, args: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn result(id: &str, content: &str) -> Message {
        Message {
            role: Role::Tool,
            parts: vec![Part::ToolResult {
                call_id: id.into(),
                content: content.into(),
                is_error: false,
            }],
        }
    }

    #[test]
    fn codex_request_becomes_canonical() {
        let req = parse_request(CODEX_REQUEST.as_bytes()).unwrap();
        let expected = ChatRequest {
            model: "gpt-5".into(),
            system: Some(
                "You are Codex, a coding agent.\n\n<permissions>sandboxed</permissions>".into(),
            ),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![text("<environment_context>cwd=/w</environment_context>")],
                },
                Message {
                    role: Role::User,
                    parts: vec![text("list the files")],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Reasoning {
                            text: "I should run ls.".into(),
                            signature: None,
                        },
                        call("call_A", "exec_command", r#"{"cmd":"ls"}"#),
                        call("call_B", "exec_command", r#"{"cmd":"pwd"}"#),
                    ],
                },
                result("call_A", "a.txt\nb.txt"),
                result("call_B", "/w"),
                Message {
                    role: Role::Assistant,
                    parts: vec![text("Two files.")],
                },
                Message {
                    role: Role::User,
                    parts: vec![text("thanks")],
                },
            ],
            tools: vec![Tool {
                name: "exec_command".into(),
                description: Some("Run a command".into()),
                parameters: json!({"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}),
            }],
            tool_choice: Some(ToolChoice::Auto),
            max_tokens: Some(4096),
            temperature: Some(0.2),
            top_p: Some(0.9),
            stop: vec![],
            stream: true,
            include_usage: true,
            output: None,
            parallel_tool_calls: Some(true),
        };
        assert_eq!(req, expected);
    }

    #[test]
    fn previous_response_id_is_refused() {
        let err = parse_request(br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#)
            .unwrap_err();
        assert_eq!(
            err.0,
            "previous_response_id is not supported: this router is stateless; resend the \
             conversation in `input`"
        );
        // null is the same as absent
        assert!(
            parse_request(br#"{"model":"m","input":"hi","previous_response_id":null}"#).is_ok()
        );
        assert!(
            parse_request(br#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn string_input_images_formats_and_tool_choice() {
        let req = parse_request(br#"{"model":"m","input":"hello"}"#).unwrap();
        assert_eq!(
            req.messages,
            vec![Message {
                role: Role::User,
                parts: vec![text("hello")]
            }]
        );
        assert!(!req.stream && !req.include_usage && req.system.is_none());

        let req = parse_request(
            br#"{"model":"m","input":[{"role":"user","content":[
                {"type":"input_text","text":"what is this"},
                {"type":"input_image","image_url":"data:image/png;base64,iVBOR","detail":"auto"},
                {"type":"input_image","image_url":"https://x/y.jpg"}]}],
              "tools":[{"type":"function","name":"f"}],
              "tool_choice":{"type":"function","name":"f"},
              "text":{"format":{"type":"json_schema","name":"out","schema":{"type":"object"},"strict":true}}}"#,
        )
        .unwrap();
        assert_eq!(
            req.messages[0].parts,
            vec![
                text("what is this"),
                Part::Image(Image::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBOR".into()
                }),
                Part::Image(Image::Url("https://x/y.jpg".into())),
            ]
        );
        assert_eq!(req.tool_choice, Some(ToolChoice::Named("f".into())));
        assert_eq!(
            req.tools[0].parameters,
            json!({"type":"object","properties":{}})
        );
        assert_eq!(
            req.output,
            Some(OutputFormat::JsonSchema {
                name: "out".into(),
                schema: json!({"type":"object"}),
                strict: Some(true)
            })
        );

        let req = parse_request(br#"{"model":"m","input":"x","text":{"format":{"type":"json_object"}},"tools":[{"type":"web_search"}],"tool_choice":"required"}"#).unwrap();
        assert_eq!(req.output, Some(OutputFormat::JsonObject));
        assert!(req.tools.is_empty());
        assert_eq!(req.tool_choice, None, "no tool left to require");

        for bad in [
            &br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","file_id":"file_1"}]}]}"#[..],
            br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}"#,
            br#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#,
            br#"{"model":"m","input":42}"#,
            br#"not json"#,
            br#"[]"#,
        ] {
            assert!(parse_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn mid_conversation_developer_messages_stay_in_place() {
        let req = parse_request(
            br#"{"model":"m","instructions":"You are Codex.","input":[
                {"type":"message","role":"developer","content":[{"type":"input_text","text":"<permissions>ro</permissions>"}]},
                {"role":"user","content":"fix it"},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Done."}]},
                {"type":"message","role":"developer","content":[{"type":"input_text","text":"Approval mode: never."}]},
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":""},
                {"role":"user","content":"thanks"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            req.system.as_deref(),
            Some("You are Codex.\n\n<permissions>ro</permissions>")
        );
        let system = |t: &str| Message {
            role: Role::System,
            parts: vec![text(t)],
        };
        assert_eq!(
            req.messages,
            vec![
                Message {
                    role: Role::User,
                    parts: vec![text("fix it")]
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![text("Done.")]
                },
                system("Approval mode: never."),
                system("Be brief."),
                Message {
                    role: Role::User,
                    parts: vec![text("thanks")]
                },
            ]
        );
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["input"][2],
            json!({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Approval mode: never."}]})
        );
        assert_eq!(parse_request(&out).unwrap(), req);
    }

    #[test]
    fn function_call_output_images_follow_the_outputs() {
        let req = parse_request(
            br#"{"model":"m","input":[
                {"role":"user","content":"look"},
                {"type":"function_call","call_id":"c1","name":"view_image","arguments":"{}"},
                {"type":"function_call","call_id":"c2","name":"view_image","arguments":"{}"},
                {"type":"function_call_output","call_id":"c1","output":[
                    {"type":"input_text","text":"shot 1"},
                    {"type":"input_image","image_url":"data:image/png;base64,AAAA"}]},
                {"type":"function_call_output","call_id":"c2","output":[
                    {"type":"input_image","image_url":"https://x.test/2.png"}]},
                {"role":"user","content":"compare"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            req.messages[2..],
            [
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "c1".into(),
                        content: "shot 1".into(),
                        is_error: false,
                    }],
                },
                result("c2", ""),
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: "AAAA".into()
                        }),
                        Part::Image(Image::Url("https://x.test/2.png".into())),
                    ],
                },
                Message {
                    role: Role::User,
                    parts: vec![text("compare")]
                },
            ]
        );
        // An output ending the input still gets its images.
        let req = parse_request(
            br#"{"model":"m","input":[
                {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
                {"type":"function_call_output","call_id":"c1","output":[{"type":"input_image","image_url":"https://x.test/i.png"}]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(req.messages.last().unwrap().role, Role::User);
        // A file in an output cannot be read: refused, naming the item.
        let e = parse_request(
            br#"{"model":"m","input":[{"type":"function_call_output","call_id":"c1","output":[{"type":"input_file","file_id":"f"}]}]}"#,
        )
        .unwrap_err();
        assert!(e.0.starts_with("input[0]: input_file"), "{e}");
    }

    #[test]
    fn request_round_trips() {
        let req = parse_request(CODEX_REQUEST.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["store"], json!(false));
        assert_eq!(v["input"][2]["type"], json!("reasoning"));
        assert_eq!(v["input"][3]["type"], json!("function_call"));
        assert_eq!(parse_request(&out).unwrap(), req);

        let mut req2 = req.clone();
        req2.output = Some(OutputFormat::JsonSchema {
            name: "n".into(),
            schema: json!({"type":"object"}),
            strict: None,
        });
        req2.tool_choice = Some(ToolChoice::Named("exec_command".into()));
        req2.messages.push(Message {
            role: Role::User,
            parts: vec![Part::Image(Image::Base64 {
                media_type: "image/jpeg".into(),
                data: "AAA".into(),
            })],
        });
        let mut out = Vec::new();
        write_request(&req2, &mut out);
        assert_eq!(parse_request(&out).unwrap(), req2);
    }

    fn sample_response(finish: FinishReason) -> ChatResponse {
        ChatResponse {
            id: "resp_abc".into(),
            model: "qwen3".into(),
            parts: vec![
                Part::Reasoning {
                    text: "think".into(),
                    signature: Some("sig".into()),
                },
                text("Let me check."),
                call("call_1", "exec_command", r#"{"cmd":"ls"}"#),
            ],
            finish,
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 34,
            }),
            created: 1_700_000_000,
        }
    }

    #[test]
    fn write_response_parses_back() {
        let resp = sample_response(FinishReason::ToolCalls);
        let mut out = Vec::new();
        write_response(&resp, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], json!("response"));
        assert_eq!(v["status"], json!("completed"));
        assert_eq!(v["output"][0]["type"], json!("reasoning"));
        assert_eq!(v["output"][0]["id"], json!("rs_abc_0"));
        assert_eq!(
            v["output"][1]["content"][0],
            json!({"type":"output_text","text":"Let me check.","annotations":[]})
        );
        assert_eq!(
            v["output"][2],
            json!({"type":"function_call","id":"fc_abc_2","call_id":"call_1","name":"exec_command","arguments":"{\"cmd\":\"ls\"}","status":"completed"})
        );
        assert_eq!(v["usage"]["total_tokens"], json!(46));
        assert_eq!(
            v["usage"]["input_tokens_details"]["cached_tokens"],
            json!(0)
        );
        assert_eq!(v["tools"], json!([]));
        assert_eq!(v["parallel_tool_calls"], json!(true));

        let back = parse_response(&out).unwrap();
        let mut expected = resp.clone();
        expected.parts[0] = Part::Reasoning {
            text: "think".into(),
            signature: None,
        };
        assert_eq!(back, expected);

        // A plain text reply from a non-Responses provider: ids get prefixed.
        let resp = ChatResponse {
            id: "chatcmpl-9".into(),
            model: "m".into(),
            parts: vec![text("hi")],
            finish: FinishReason::Length,
            usage: None,
            created: 5,
        };
        let mut out = Vec::new();
        write_response(&resp, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], json!("resp_chatcmpl-9"));
        assert_eq!(v["status"], json!("incomplete"));
        assert_eq!(
            v["incomplete_details"],
            json!({"reason":"max_output_tokens"})
        );
        assert_eq!(v["output"][0]["status"], json!("incomplete"));
        let back = parse_response(&out).unwrap();
        assert_eq!(back.finish, FinishReason::Length);
        assert_eq!(back.parts, vec![text("hi")]);
    }

    #[test]
    fn parse_response_handles_real_shapes() {
        let body = br#"{"id":"resp_1","object":"response","created_at":1741476542.5,"status":"completed","model":"gpt-4.1",
          "output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant",
            "content":[{"type":"output_text","text":"Hello","annotations":[]}]},
            {"type":"web_search_call","id":"ws","status":"completed"}],
          "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.created, 1741476542);
        assert_eq!(r.parts, vec![text("Hello")]);
        assert_eq!(r.finish, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 36,
                output_tokens: 87
            })
        );
        let failed = br#"{"id":"r","status":"failed","error":{"code":"server_error","message":"boom"},"output":[]}"#;
        assert!(parse_response(failed).unwrap_err().0.contains("boom"));
    }

    /// Splits encoder output into (event line, data JSON), checking framing.
    fn frames(out: &[u8]) -> Vec<(String, Value)> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(s.ends_with("\n\n"));
        s.split_terminator("\n\n")
            .map(|f| {
                let (ev, data) = f.split_once('\n').unwrap();
                let ev = ev.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], json!(ev), "event line matches type");
                (ev, data)
            })
            .collect()
    }

    fn encode_all(events: &[StreamEvent]) -> Vec<u8> {
        let mut enc = StreamEncoder::new(false);
        let mut out = Vec::new();
        for ev in events {
            enc.encode(ev, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn assert_sequence(frames: &[(String, Value)], types: &[&str]) {
        let got: Vec<&str> = frames.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(got, types);
        for (n, (_, data)) in frames.iter().enumerate() {
            assert_eq!(data["sequence_number"], json!(n));
        }
    }

    fn start() -> StreamEvent {
        StreamEvent::Start {
            id: "chatcmpl-1".into(),
            model: "llama".into(),
            created: 1_700_000_000,
        }
    }

    fn text_stream() -> Vec<StreamEvent> {
        vec![
            start(),
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 2,
            }),
            StreamEvent::End,
        ]
    }

    fn call_stream() -> Vec<StreamEvent> {
        vec![
            start(),
            StreamEvent::ReasoningDelta("hmm".into()),
            StreamEvent::TextDelta("Running.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_X".into(),
                name: "exec_command".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"cmd\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "\"ls\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_Y".into(),
                name: "read".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 20,
            }),
            StreamEvent::End,
        ]
    }

    #[test]
    fn encoder_text_stream_exact_sequence() {
        let out = encode_all(&text_stream());
        let f = frames(&out);
        assert_sequence(
            &f,
            &[
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
        );
        assert_eq!(f[0].1["response"]["status"], json!("in_progress"));
        assert_eq!(f[0].1["response"]["id"], json!("resp_chatcmpl-1"));
        assert_eq!(f[0].1["response"]["output"], json!([]));
        assert_eq!(
            f[2].1["item"],
            json!({"type":"message","id":"msg_chatcmpl-1_0","status":"in_progress","role":"assistant","content":[]})
        );
        assert_eq!(
            f[3].1["part"],
            json!({"type":"output_text","text":"","annotations":[]})
        );
        assert_eq!(f[4].1["delta"], json!("Hel"));
        assert_eq!(f[4].1["item_id"], json!("msg_chatcmpl-1_0"));
        assert_eq!(f[4].1["output_index"], json!(0));
        assert_eq!(f[4].1["content_index"], json!(0));
        assert_eq!(f[6].1["text"], json!("Hello"));
        assert_eq!(f[8].1["item"]["status"], json!("completed"));
        let done = &f[9].1["response"];
        assert_eq!(done["status"], json!("completed"));
        assert_eq!(done["id"], json!("resp_chatcmpl-1"));
        assert_eq!(done["output"][0]["content"][0]["text"], json!("Hello"));
        assert_eq!(done["usage"]["input_tokens"], json!(3));
        assert_eq!(done["usage"]["output_tokens"], json!(2));
        assert_eq!(done["usage"]["total_tokens"], json!(5));
    }

    #[test]
    fn encoder_function_call_stream_exact_sequence() {
        let out = encode_all(&call_stream());
        let f = frames(&out);
        assert_sequence(
            &f,
            &[
                "response.created",
                "response.in_progress",
                "response.output_item.added", // reasoning
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added", // message
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added", // call 0
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added", // call 1
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ],
        );
        assert_eq!(
            f[14].1["item"],
            json!({"type":"function_call","id":"fc_chatcmpl-1_2","call_id":"call_X","name":"exec_command","arguments":"","status":"in_progress"})
        );
        assert_eq!(f[14].1["output_index"], json!(2));
        assert_eq!(f[15].1["item_id"], json!("fc_chatcmpl-1_2"));
        assert_eq!(f[17].1["arguments"], json!("{\"cmd\":\"ls\"}"));
        assert_eq!(f[18].1["item"]["arguments"], json!("{\"cmd\":\"ls\"}"));
        assert_eq!(f[18].1["item"]["status"], json!("completed"));
        let done = &f[23].1["response"];
        assert_eq!(done["output"].as_array().unwrap().len(), 4);
        assert_eq!(
            done["output"][0]["summary"],
            json!([{"type":"summary_text","text":"hmm"}])
        );
        assert_eq!(done["output"][2]["call_id"], json!("call_X"));
        assert_eq!(done["output"][3]["call_id"], json!("call_Y"));
        assert_eq!(done["output"][3]["arguments"], json!("{}"));
        assert_eq!(done["usage"]["total_tokens"], json!(30));
    }

    #[test]
    fn encoder_length_error_and_truncation() {
        let out = encode_all(&[
            start(),
            StreamEvent::TextDelta("cut".into()),
            StreamEvent::Finish(FinishReason::Length),
            StreamEvent::End,
            StreamEvent::TextDelta("ignored".into()),
        ]);
        let f = frames(&out);
        let (last, data) = f.last().unwrap();
        assert_eq!(last, "response.incomplete");
        assert_eq!(
            data["response"]["incomplete_details"]["reason"],
            json!("max_output_tokens")
        );
        assert_eq!(data["response"]["output"][0]["status"], json!("incomplete"));

        let out = encode_all(&[
            start(),
            StreamEvent::TextDelta("par".into()),
            StreamEvent::Error(ApiError {
                status: 529,
                kind: "overloaded_error".into(),
                message: "Overloaded".into(),
            }),
            StreamEvent::End,
        ]);
        let f = frames(&out);
        let types: Vec<&str> = f.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types.last(), Some(&"response.failed"));
        assert_eq!(types.len(), 6, "nothing after response.failed: {types:?}");
        let r = &f[5].1["response"];
        assert_eq!(r["status"], json!("failed"));
        assert_eq!(
            r["error"],
            json!({"code":"server_error","message":"Overloaded"})
        );

        // Cut before End: no terminal event is invented.
        let out = encode_all(&[start(), StreamEvent::TextDelta("x".into())]);
        let f = frames(&out);
        assert_eq!(f.last().unwrap().0, "response.output_text.delta");

        // Deltas without a Start still form a valid stream.
        let out = encode_all(&[StreamEvent::TextDelta("x".into()), StreamEvent::End]);
        let f = frames(&out);
        assert_eq!(f[0].0, "response.created");
        assert_eq!(f.last().unwrap().0, "response.completed");
    }

    fn decode_all(out: &[u8]) -> Vec<StreamEvent> {
        let mut dec = StreamDecoder::new();
        let mut events = Vec::new();
        for (ev, data) in frames(out) {
            dec.feed(
                Some(ev.as_bytes()),
                data.to_string().as_bytes(),
                &mut events,
            )
            .unwrap();
        }
        events
    }

    #[test]
    fn stream_round_trips() {
        let mut text = text_stream();
        text.retain(|e| e != &StreamEvent::TextDelta(String::new()));
        let mut expected = text.clone();
        expected[0] = StreamEvent::Start {
            id: "resp_chatcmpl-1".into(),
            model: "llama".into(),
            created: 1_700_000_000,
        };
        assert_eq!(decode_all(&encode_all(&text)), expected);

        let calls = call_stream();
        let mut expected = calls.clone();
        expected[0] = StreamEvent::Start {
            id: "resp_chatcmpl-1".into(),
            model: "llama".into(),
            created: 1_700_000_000,
        };
        assert_eq!(decode_all(&encode_all(&calls)), expected);

        let err = vec![
            start(),
            StreamEvent::Error(ApiError {
                status: 429,
                kind: "rate_limit_error".into(),
                message: "slow down".into(),
            }),
        ];
        let got = decode_all(&encode_all(&err));
        assert_eq!(
            got[1],
            StreamEvent::Error(ApiError {
                status: 429,
                kind: "rate_limit_error".into(),
                message: "slow down".into()
            })
        );
    }

    #[test]
    fn decoder_lenient_servers() {
        let mut dec = StreamDecoder::new();
        let mut ev = Vec::new();
        // Arguments only on the done item, no created event, an error frame.
        dec.feed(None, br#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":""}}"#, &mut ev).unwrap();
        dec.feed(None, br#"{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":"{\"a\":1}"}}"#, &mut ev).unwrap();
        dec.feed(None, br#"{"type":"response.completed","response":{"id":"r","status":"completed","output":[],"usage":null}}"#, &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![
                StreamEvent::Start {
                    id: String::new(),
                    model: String::new(),
                    created: 0
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "c1".into(),
                    name: "f".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{\"a\":1}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::End,
            ]
        );

        let mut dec = StreamDecoder::new();
        let mut ev = Vec::new();
        dec.feed(Some(b"error"), br#"{"type":"error","code":"rate_limit_exceeded","message":"slow","param":null,"sequence_number":3}"#, &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![StreamEvent::Error(ApiError {
                status: 429,
                kind: "rate_limit_error".into(),
                message: "slow".into()
            })]
        );
        assert!(
            StreamDecoder::new()
                .feed(None, b"{not json", &mut ev)
                .is_err()
        );
    }

    #[test]
    fn errors() {
        let e = parse_error(429, br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#);
        assert_eq!(
            e,
            ApiError {
                status: 429,
                kind: "requests".into(),
                message: "Rate limit reached".into()
            }
        );
        let e = parse_error(404, br#"{"error":"model 'x' not found"}"#);
        assert_eq!(
            e,
            ApiError {
                status: 404,
                kind: "not_found_error".into(),
                message: "model 'x' not found".into()
            }
        );
        let e = parse_error(502, &[b'x'; 5000]);
        assert_eq!(e.message.len(), 2048);
        assert_eq!(e.kind, "api_error");
        let e = parse_error(500, "é".repeat(2000).as_bytes());
        assert!(e.message.len() <= 2048 && e.message.chars().all(|c| c == 'é'));
        assert_eq!(parse_error(503, b"").message, "upstream returned HTTP 503");

        let err = ApiError {
            status: 400,
            kind: "invalid_request_error".into(),
            message: "bad \"input\"".into(),
        };
        let mut out = Vec::new();
        write_error(&err, None, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"error":{"message":"bad \"input\"","type":"invalid_request_error","param":null,"code":null}}"#
        );
        assert_eq!(parse_error(400, &out), err);
    }
}
