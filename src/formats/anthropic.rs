//! Anthropic Messages (`POST /v1/messages`, provider format `anthropic`) ⇄
//! the canonical model (see the parent module for the function set).
//!
//! What is carried, dropped or refused, and why: `docs/formats.md`; what
//! Claude Code sends: `docs/coding-agents.md`.
//!
//! # Client requests ([`parse_request`])
//!
//! `system` (a string or text blocks, joined with a blank line), `messages`
//! (string or block content: `text`, `image` base64/url, `tool_use`,
//! `tool_result`, `thinking`, and as text: `document` blocks with a text
//! source, `search_result` blocks), `tools`, `tool_choice`
//! (`disable_parallel_tool_use` → `parallel_tool_calls: false`),
//! `max_tokens`, `stop_sequences`, `temperature`, `top_p`, `stream`, and
//! `output_config.format` (or the older beta `output_format`) of type
//! `json_schema`. A user turn carrying `tool_result` blocks becomes one
//! [`Role::Tool`] message per result followed by a user message with the rest
//! of the turn; images inside a `tool_result` (Claude Code's `Read` of a
//! picture) move to that user message, since no other format carries images
//! in a tool result.
//!
//! Mid-conversation system turns (`{"role": "system", "content": …}` in
//! `messages`; string or text blocks) become [`Role::System`] messages where
//! they stand; one before any other turn joins the system prompt instead. A
//! turn with `clear_at: "next_user_message"` that a later user turn follows
//! is no longer shown to the model, so it is left out; its per-turn
//! `output_config` is dropped like the top-level one. Errors name the place:
//! `messages.3.content.1: …`.
//!
//! Dropped, because this parser only serves cross-format routes (Anthropic →
//! Anthropic is byte passthrough) and non-Anthropic upstreams reject or
//! misread them ("Extra inputs are not permitted"): `thinking`,
//! `output_config.effort`, `task_budget`, `cache_control` on any block,
//! `context_management`, `metadata`, `top_k`, `service_tier`, `container`,
//! `mcp_servers`, the betas' extra fields, `redacted_thinking` blocks
//! (encrypted, only Anthropic can read them), Anthropic server-side tools
//! (`{type: "web_search_…"}` and other versioned tool types) and the
//! `server_tool_use` / `*_tool_result` blocks they leave in assistant turns.
//! Other block types and sources (PDF and file `document`s, file image
//! sources, the tool changes of `mid-conversation-tool-changes`, …) have no
//! equivalent: the request fails with a [`FormatError`] naming them rather
//! than silently losing what the user sent.
//!
//! # Provider requests ([`write_request`])
//!
//! `max_tokens` is required by Anthropic: [`DEFAULT_MAX_TOKENS`] when the
//! canonical request has none. Consecutive turns of the same side are merged
//! (tool results are user turns), with `tool_result` blocks first in each
//! user turn as Anthropic requires. Tool-call arguments (JSON text) become
//! the `input` object (`{}` when they are not a JSON object); tool-call ids
//! are reduced to `[A-Za-z0-9_-]` (the same way on both sides of the pair) so
//! ids from other providers (`functions.get:0`) pass Anthropic's check.
//! `data:` image URLs become base64 sources. `temperature` is clamped to
//! Anthropic's 0–1 range, and `top_p` is left out when `temperature` is set
//! (recent Claude models reject both). Reasoning without a signature is
//! dropped (Anthropic rejects unsigned thinking blocks). [`Role::System`]
//! turns are appended to the top-level `system` (see `system_prompt` for
//! why). `JsonObject` output has no native equivalent: an instruction is
//! appended to the system prompt.
//!
//! # Streams
//!
//! [`StreamDecoder`] reads an Anthropic event stream (event name + data) into
//! canonical events; [`StreamEncoder`] writes canonical events as the exact
//! Anthropic sequence, every frame with its `event:` line (the SDKs drop
//! frames without one). Anthropic has no creation time: `created` is 0 in
//! what the parsers and the decoder produce.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    ApiError, ChatRequest, ChatResponse, FinishReason, Format, FormatError, Image, Message,
    OutputFormat, Part, Role, StreamEvent, Tool, ToolChoice, Usage,
};
use crate::json::write_json_string;

/// `max_tokens` sent to an Anthropic provider when the client gave none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Appended to the system prompt for [`OutputFormat::JsonObject`].
const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single JSON object.";
/// The schema name given to Anthropic's unnamed `output_config.format` schema.
const SCHEMA_NAME: &str = "response";
/// Longest error message taken from a non-JSON error body.
const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

fn err(msg: impl Into<String>) -> FormatError {
    FormatError(msg.into())
}

// ---------------------------------------------------------------------------
// Small readers over `serde_json::Value` (null counts as absent)
// ---------------------------------------------------------------------------

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, FormatError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(format!("`{key}` must be a string"))),
    }
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, FormatError> {
    opt_str(obj, key)?.ok_or_else(|| err(format!("{what}: `{key}` is required")))
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, FormatError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(format!("`{key}` must be a non-negative integer"))),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, FormatError> {
    match field(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| err(format!("`{key}` must be a number"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, FormatError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(err(format!("`{key}` must be a boolean"))),
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, FormatError> {
    v.as_object()
        .ok_or_else(|| err(format!("{what} must be an object")))
}

fn block_type<'a>(block: &'a Map<String, Value>, what: &str) -> Result<&'a str, FormatError> {
    req_str(block, "type", what)
}

/// JSON text of a value (a `Value` always serializes).
fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned())
}

// ---------------------------------------------------------------------------
// parse_request
// ---------------------------------------------------------------------------

/// Parse a client's Anthropic Messages request into the canonical model.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err(format!("invalid JSON body: {e}")))?;
    let obj = as_object(&root, "the request body")?;

    let mut system: Vec<String> = parse_system(field(obj, "system"))?.into_iter().collect();
    let messages = match field(obj, "messages") {
        Some(Value::Array(items)) => parse_messages(items, &mut system)?,
        Some(_) => return Err(err("`messages` must be an array")),
        None => return Err(err("`messages` is required")),
    };
    let tools = match field(obj, "tools") {
        None => Vec::new(),
        Some(Value::Array(items)) => parse_tools(items)?,
        Some(_) => return Err(err("`tools` must be an array")),
    };
    let (tool_choice, parallel_tool_calls) = match field(obj, "tool_choice") {
        None => (None, None),
        Some(v) => parse_tool_choice(v)?,
    };
    let stop = match field(obj, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| err("`stop_sequences` must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("`stop_sequences` must be an array")),
    };
    let output = parse_output_format(obj)?;

    Ok(ChatRequest {
        model: opt_str(obj, "model")?.unwrap_or_default().to_owned(),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools,
        tool_choice,
        max_tokens: opt_u64(obj, "max_tokens")?,
        temperature: opt_f64(obj, "temperature")?,
        top_p: opt_f64(obj, "top_p")?,
        stop,
        stream: opt_bool(obj, "stream")?.unwrap_or(false),
        include_usage: false,
        output,
        parallel_tool_calls,
    })
}

/// `system`: a string, or text blocks (their `cache_control` dropped).
fn parse_system(v: Option<&Value>) -> Result<Option<String>, FormatError> {
    let text = match v {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for b in blocks {
                let b = as_object(b, "a system block")?;
                match block_type(b, "a system block")? {
                    "text" => texts.push(req_str(b, "text", "a system text block")?),
                    other => {
                        return Err(err(format!("system block type `{other}` is not supported")));
                    }
                }
            }
            texts.join("\n\n")
        }
        Some(_) => return Err(err("`system` must be a string or an array of text blocks")),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// `messages`. System turns before any other turn extend `system` (the
/// top-level prompt); later ones stay in place as [`Role::System`] messages.
fn parse_messages(items: &[Value], system: &mut Vec<String>) -> Result<Vec<Message>, FormatError> {
    let mut out = Vec::with_capacity(items.len() + 4);
    // A system turn with `clear_at: "next_user_message"` is shown to the
    // model only until a later user turn exists.
    let last_user = items
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    for (i, item) in items.iter().enumerate() {
        let m = as_object(item, "a message")?;
        let role = req_str(m, "role", "a message")?;
        let content = field(m, "content");
        if role == "system" {
            let cleared = opt_str(m, "clear_at")
                .map_err(|e| located(&format!("messages.{i}"), e))?
                == Some("next_user_message")
                && last_user.is_some_and(|u| u > i);
            let text =
                parse_system_turn(content).map_err(|e| located(&format!("messages.{i}"), e))?;
            if cleared || text.is_empty() {
                continue;
            }
            if out.is_empty() {
                system.push(text);
            } else {
                out.push(Message {
                    role: Role::System,
                    parts: vec![Part::Text(text)],
                });
            }
            continue;
        }
        let content = content.ok_or_else(|| err(format!("messages.{i}: `content` is required")))?;
        let r = match role {
            "user" => parse_user_turn(content, &mut out),
            "assistant" => parse_assistant_turn(content, &mut out),
            other => Err(err(format!(
                "unknown role `{other}` (expected user, assistant or system)"
            ))),
        };
        r.map_err(|e| located(&format!("messages.{i}"), e))?;
    }
    Ok(out)
}

/// `e` located at `path`: `path.content.3: …` when `e` already names a
/// place inside (`content.3: …`), else `path: …`.
fn located(path: &str, e: FormatError) -> FormatError {
    if e.0.starts_with("content.") {
        err(format!("{path}.{}", e.0))
    } else {
        err(format!("{path}: {}", e.0))
    }
}

/// A mid-conversation system turn's content: a string or text blocks (joined
/// with a blank line). Its `output_config` (per-turn effort) is dropped like
/// the top-level one; the tool changes of the `mid-conversation-tool-changes`
/// beta cannot be expressed elsewhere.
fn parse_system_turn(content: Option<&Value>) -> Result<String, FormatError> {
    let blocks = match content {
        None => return Ok(String::new()),
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(c) => content_blocks(c)?,
    };
    let mut texts = Vec::with_capacity(blocks.len());
    for (k, block) in blocks.iter().enumerate() {
        let b = as_object(block, "a content block")?;
        let text = match block_type(b, "a content block")? {
            "text" => req_str(b, "text", "a text block"),
            other => Err(err(format!(
                "system turn block type `{other}` cannot be translated for this provider \
                 (text only)"
            ))),
        };
        texts.push(text.map_err(|e| located(&format!("content.{k}"), e))?);
    }
    Ok(texts.join("\n\n"))
}

fn content_blocks(content: &Value) -> Result<&[Value], FormatError> {
    content
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| err("`content` must be a string or an array of blocks"))
}

/// A user turn: tool results first (one `Tool` message each), then a user
/// message with the rest.
fn parse_user_turn(content: &Value, out: &mut Vec<Message>) -> Result<(), FormatError> {
    if let Value::String(s) = content {
        out.push(Message {
            role: Role::User,
            parts: vec![Part::Text(s.clone())],
        });
        return Ok(());
    }
    let mut parts = Vec::new();
    let mut moved_images = Vec::new();
    for (k, block) in content_blocks(content)?.iter().enumerate() {
        parse_user_block(block, &mut parts, &mut moved_images, out)
            .map_err(|e| located(&format!("content.{k}"), e))?;
    }
    if !moved_images.is_empty() {
        moved_images.append(&mut parts);
        parts = moved_images;
    }
    if !parts.is_empty() {
        out.push(Message {
            role: Role::User,
            parts,
        });
    }
    Ok(())
}

/// One block of a user turn: a tool result becomes its own `Tool` message in
/// `out` (its images go to `moved_images`), anything else joins `parts`.
fn parse_user_block(
    block: &Value,
    parts: &mut Vec<Part>,
    moved_images: &mut Vec<Part>,
    out: &mut Vec<Message>,
) -> Result<(), FormatError> {
    let b = as_object(block, "a content block")?;
    match block_type(b, "a content block")? {
        "text" => parts.push(Part::Text(req_str(b, "text", "a text block")?.to_owned())),
        "image" => parts.push(Part::Image(parse_image(b)?)),
        "document" => parts.push(Part::Text(document_text(b)?)),
        "search_result" => parts.push(Part::Text(search_result_text(b)?)),
        "tool_result" => {
            let call_id = req_str(b, "tool_use_id", "a tool_result block")?.to_owned();
            let (content, images) = parse_tool_result_content(field(b, "content"))?;
            moved_images.extend(images);
            let is_error = opt_bool(b, "is_error")?.unwrap_or(false);
            out.push(Message {
                role: Role::Tool,
                parts: vec![Part::ToolResult {
                    call_id,
                    content,
                    is_error,
                }],
            });
        }
        // Never valid in a user turn; nothing to carry over.
        "thinking" | "redacted_thinking" => {}
        other => return Err(unsupported_block(other)),
    }
    Ok(())
}

fn parse_assistant_turn(content: &Value, out: &mut Vec<Message>) -> Result<(), FormatError> {
    if let Value::String(s) = content {
        out.push(Message {
            role: Role::Assistant,
            parts: vec![Part::Text(s.clone())],
        });
        return Ok(());
    }
    let mut parts = Vec::new();
    for (k, block) in content_blocks(content)?.iter().enumerate() {
        parse_assistant_block(block, &mut parts)
            .map_err(|e| located(&format!("content.{k}"), e))?;
    }
    if !parts.is_empty() {
        out.push(Message {
            role: Role::Assistant,
            parts,
        });
    }
    Ok(())
}

fn parse_assistant_block(block: &Value, parts: &mut Vec<Part>) -> Result<(), FormatError> {
    let b = as_object(block, "a content block")?;
    match block_type(b, "a content block")? {
        "text" => parts.push(Part::Text(req_str(b, "text", "a text block")?.to_owned())),
        "tool_use" => parts.push(Part::ToolCall {
            id: req_str(b, "id", "a tool_use block")?.to_owned(),
            name: req_str(b, "name", "a tool_use block")?.to_owned(),
            arguments: field(b, "input").map_or_else(|| "{}".to_owned(), json_text),
        }),
        "thinking" => parts.push(Part::Reasoning {
            text: opt_str(b, "thinking")?.unwrap_or_default().to_owned(),
            signature: opt_str(b, "signature")?
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }),
        // Encrypted (only Anthropic reads it) and traces of Anthropic's
        // server-side tools: nothing another provider can use.
        "redacted_thinking" | "server_tool_use" => {}
        t if t.ends_with("_tool_result") => {}
        other => return Err(unsupported_block(other)),
    }
    Ok(())
}

fn unsupported_block(kind: &str) -> FormatError {
    err(format!(
        "content block type `{kind}` cannot be translated for this provider"
    ))
}

fn parse_image(b: &Map<String, Value>) -> Result<Image, FormatError> {
    let source = field(b, "source").ok_or_else(|| err("an image block needs a `source`"))?;
    let source = as_object(source, "an image source")?;
    match block_type(source, "an image source")? {
        "base64" => Ok(Image::Base64 {
            media_type: req_str(source, "media_type", "a base64 image source")?.to_owned(),
            data: req_str(source, "data", "a base64 image source")?.to_owned(),
        }),
        "url" => Ok(Image::Url(
            req_str(source, "url", "a url image source")?.to_owned(),
        )),
        other => Err(err(format!(
            "image source type `{other}` cannot be translated for this provider"
        ))),
    }
}

/// A `tool_result`'s content: a string, or blocks whose texts (documents
/// and search results included) are joined with a newline; images are
/// handed back separately.
fn parse_tool_result_content(v: Option<&Value>) -> Result<(String, Vec<Part>), FormatError> {
    match v {
        None => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (k, block) in blocks.iter().enumerate() {
                tool_result_block(block, &mut texts, &mut images)
                    .map_err(|e| located(&format!("content.{k}"), e))?;
            }
            Ok((texts.join("\n"), images))
        }
        Some(_) => Err(err(
            "tool_result `content` must be a string or an array of blocks",
        )),
    }
}

fn tool_result_block(
    block: &Value,
    texts: &mut Vec<String>,
    images: &mut Vec<Part>,
) -> Result<(), FormatError> {
    let b = as_object(block, "a tool_result content block")?;
    match block_type(b, "a tool_result content block")? {
        "text" => texts.push(req_str(b, "text", "a text block")?.to_owned()),
        "image" => images.push(Part::Image(parse_image(b)?)),
        "document" => texts.push(document_text(b)?),
        "search_result" => texts.push(search_result_text(b)?),
        other => return Err(unsupported_block(other)),
    }
    Ok(())
}

/// A `document` block whose source is text (`text`, or `content` text
/// blocks) as plain text: its `title` and `context`, then the text, each
/// separated by a blank line. PDFs and files (`base64`, `url`, `file`
/// sources) cannot be read by other providers.
fn document_text(b: &Map<String, Value>) -> Result<String, FormatError> {
    let source = field(b, "source").ok_or_else(|| err("a document block needs a `source`"))?;
    let source = as_object(source, "a document source")?;
    let body = match block_type(source, "a document source")? {
        "text" => req_str(source, "data", "a text document source")?.to_owned(),
        "content" => match field(source, "content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(blocks)) => {
                let mut texts = Vec::with_capacity(blocks.len());
                for block in blocks {
                    let b = as_object(block, "a document content block")?;
                    match block_type(b, "a document content block")? {
                        "text" => texts.push(req_str(b, "text", "a text block")?),
                        other => {
                            return Err(err(format!(
                                "a document's content block type `{other}` cannot be translated \
                                 for this provider (text only)"
                            )));
                        }
                    }
                }
                texts.join("\n\n")
            }
            _ => {
                return Err(err(
                    "a content document source needs `content`: a string or text blocks",
                ));
            }
        },
        other => {
            return Err(err(format!(
                "a document with a `{other}` source (PDF or file) cannot be translated for this \
                 provider; only text documents can"
            )));
        }
    };
    let mut pieces = Vec::with_capacity(3);
    for key in ["title", "context"] {
        if let Some(t) = opt_str(b, key)?.filter(|t| !t.is_empty()) {
            pieces.push(t.to_owned());
        }
    }
    pieces.push(body);
    Ok(pieces.join("\n\n"))
}

/// A `search_result` block as plain text: its `title` and `source`, then its
/// text blocks (citations are Anthropic's alone).
fn search_result_text(b: &Map<String, Value>) -> Result<String, FormatError> {
    let mut pieces = Vec::with_capacity(3);
    let head: Vec<&str> = [opt_str(b, "title")?, opt_str(b, "source")?]
        .into_iter()
        .flatten()
        .filter(|t| !t.is_empty())
        .collect();
    if !head.is_empty() {
        pieces.push(head.join("\n"));
    }
    let blocks = match field(b, "content") {
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(err(
                "a search_result block needs `content`: an array of text blocks",
            ));
        }
    };
    for block in blocks {
        let t = as_object(block, "a search_result content block")?;
        match block_type(t, "a search_result content block")? {
            "text" => pieces.push(req_str(t, "text", "a text block")?.to_owned()),
            other => {
                return Err(err(format!(
                    "a search_result's content block type `{other}` cannot be translated (text \
                     only)"
                )));
            }
        }
    }
    Ok(pieces.join("\n\n"))
}

fn parse_tools(items: &[Value]) -> Result<Vec<Tool>, FormatError> {
    let mut tools = Vec::with_capacity(items.len());
    for item in items {
        let t = as_object(item, "a tool")?;
        // Anthropic-defined tools (`web_search_20250305`, `bash_20250124`, …)
        // run on Anthropic's side or need its schema: no equivalent elsewhere.
        if opt_str(t, "type")?.is_some_and(|ty| ty != "custom") {
            continue;
        }
        tools.push(Tool {
            name: req_str(t, "name", "a tool")?.to_owned(),
            description: opt_str(t, "description")?.map(str::to_owned),
            parameters: field(t, "input_schema")
                .cloned()
                .unwrap_or_else(empty_schema),
        });
    }
    Ok(tools)
}

fn empty_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

fn parse_tool_choice(v: &Value) -> Result<(Option<ToolChoice>, Option<bool>), FormatError> {
    let c = as_object(v, "`tool_choice`")?;
    let choice = match block_type(c, "`tool_choice`")? {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Named(req_str(c, "name", "`tool_choice` of type tool")?.to_owned()),
        other => return Err(err(format!("unknown tool_choice type `{other}`"))),
    };
    let parallel = opt_bool(c, "disable_parallel_tool_use")?
        .filter(|&disable| disable)
        .map(|_| false);
    Ok((Some(choice), parallel))
}

/// `output_config.format` (GA) or `output_format` (the earlier beta).
fn parse_output_format(obj: &Map<String, Value>) -> Result<Option<OutputFormat>, FormatError> {
    let format = match field(obj, "output_config") {
        Some(Value::Object(cfg)) => field(cfg, "format"),
        Some(_) => return Err(err("`output_config` must be an object")),
        None => None,
    }
    .or_else(|| field(obj, "output_format"));
    let Some(format) = format else {
        return Ok(None);
    };
    let f = as_object(format, "`output_config.format`")?;
    match block_type(f, "`output_config.format`")? {
        "json_schema" => Ok(Some(OutputFormat::JsonSchema {
            name: SCHEMA_NAME.to_owned(),
            schema: field(f, "schema").cloned().unwrap_or_else(empty_schema),
            strict: None,
        })),
        other => Err(err(format!("unknown output format type `{other}`"))),
    }
}

// ---------------------------------------------------------------------------
// Wire shapes written by this module
// ---------------------------------------------------------------------------

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: OutImageSource<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "str::is_empty")]
        content: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        is_error: bool,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct OutTurn<'a> {
    role: &'static str,
    content: Vec<OutBlock<'a>>,
}

#[derive(Serialize)]
struct OutTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Cow<'a, Value>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutToolChoice<'a> {
    Auto {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutFormat<'a> {
    JsonSchema { schema: &'a Value },
}

#[derive(Serialize)]
struct OutOutputConfig<'a> {
    format: OutFormat<'a>,
}

#[derive(Serialize)]
struct OutRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    messages: Vec<OutTurn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "is_false")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutOutputConfig<'a>>,
}

#[derive(Serialize)]
struct OutUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct OutResponse<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: OutUsage,
}

#[derive(Serialize)]
struct OutErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct OutError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: OutErrorBody<'a>,
}

fn write_json<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing these shapes into a Vec cannot fail (string keys only, no I/O).
    let _ = serde_json::to_writer(out, value);
}

// ---------------------------------------------------------------------------
// write_request
// ---------------------------------------------------------------------------

/// Tool-call ids reduced to Anthropic's `^[a-zA-Z0-9_-]+$`.
fn tool_id(id: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(ok) {
        Cow::Borrowed(id)
    } else if id.is_empty() {
        Cow::Borrowed("toolu_")
    } else {
        Cow::Owned(id.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

/// A tool call's `input` object from its JSON-text arguments (`{}` when they
/// are not a JSON object).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// `data:<media type>;base64,<data>` split into its media type and data.
fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

fn image_block(img: &Image) -> OutBlock<'_> {
    let source = match img {
        Image::Base64 { media_type, data } => OutImageSource::Base64 { media_type, data },
        Image::Url(url) => match split_data_url(url) {
            Some((media_type, data)) => OutImageSource::Base64 { media_type, data },
            None => OutImageSource::Url { url },
        },
    };
    OutBlock::Image { source }
}

fn user_block(part: &Part) -> Option<OutBlock<'_>> {
    match part {
        Part::Text(t) if t.is_empty() => None,
        Part::Text(text) => Some(OutBlock::Text { text }),
        Part::Image(img) => Some(image_block(img)),
        Part::ToolResult {
            call_id,
            content,
            is_error,
        } => Some(OutBlock::ToolResult {
            tool_use_id: tool_id(call_id),
            content,
            is_error: *is_error,
        }),
        Part::ToolCall { .. } | Part::Reasoning { .. } => None,
    }
}

fn assistant_block(part: &Part) -> Option<OutBlock<'_>> {
    match part {
        Part::Text(t) if t.is_empty() => None,
        Part::Text(text) => Some(OutBlock::Text { text }),
        Part::ToolCall {
            id,
            name,
            arguments,
        } => Some(OutBlock::ToolUse {
            id: tool_id(id),
            name,
            input: tool_input(arguments),
        }),
        Part::Reasoning {
            text,
            signature: Some(signature),
        } => Some(OutBlock::Thinking {
            thinking: text,
            signature,
        }),
        Part::Reasoning {
            signature: None, ..
        }
        | Part::Image(_)
        | Part::ToolResult { .. } => None,
    }
}

/// Canonical messages as alternating Anthropic turns.
fn turns(messages: &[Message]) -> Vec<OutTurn<'_>> {
    let mut turns: Vec<OutTurn<'_>> = Vec::with_capacity(messages.len());
    for m in messages {
        let (role, blocks): (&'static str, Vec<OutBlock<'_>>) = match m.role {
            Role::User | Role::Tool => ("user", m.parts.iter().filter_map(user_block).collect()),
            Role::Assistant => (
                "assistant",
                m.parts.iter().filter_map(assistant_block).collect(),
            ),
            // Part of the top-level `system` (see `system_prompt`).
            Role::System => continue,
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(OutTurn {
                role,
                content: blocks,
            }),
        }
    }
    // Anthropic wants a user turn's tool_result blocks before anything else.
    for t in &mut turns {
        if t.role == "user" {
            t.content
                .sort_by_key(|b| !matches!(b, OutBlock::ToolResult { .. }));
        }
    }
    turns
}

/// The top-level `system`: the canonical system prompt, then the texts of
/// the mid-conversation system turns in order, then the
/// [`JSON_OBJECT_INSTRUCTION`] when asked, joined with a blank line.
///
/// Anthropic accepts `role: "system"` messages in `messages` only on some
/// models (from Claude Opus 4.8) and only in some places (after a user turn,
/// followed by an assistant turn or last); Anthropic-compatible servers may
/// not read them at all. This writer serves clients of other formats, whose
/// system messages promise neither, so it writes what every Anthropic model
/// reads: one top-level prompt. (An Anthropic client's own mid-conversation
/// system turns reach Anthropic providers by passthrough.)
fn system_prompt(req: &ChatRequest) -> Option<Cow<'_, str>> {
    let mut texts: Vec<&str> = Vec::new();
    if let Some(s) = req.system.as_deref().filter(|s| !s.is_empty()) {
        texts.push(s);
    }
    for m in req.messages.iter().filter(|m| m.role == Role::System) {
        for p in &m.parts {
            if let Part::Text(t) = p
                && !t.is_empty()
            {
                texts.push(t);
            }
        }
    }
    if req.output == Some(OutputFormat::JsonObject) {
        texts.push(JSON_OBJECT_INSTRUCTION);
    }
    match texts.as_slice() {
        [] => None,
        [one] => Some(Cow::Borrowed(one)),
        many => Some(Cow::Owned(many.join("\n\n"))),
    }
}

/// Write the canonical request as an Anthropic Messages request body.
pub fn write_request(req: &ChatRequest, out: &mut Vec<u8>) {
    let system = system_prompt(req);
    let tools: Vec<OutTool<'_>> = req
        .tools
        .iter()
        .map(|t| OutTool {
            name: &t.name,
            description: t.description.as_deref(),
            input_schema: if t.parameters.is_object() {
                Cow::Borrowed(&t.parameters)
            } else {
                Cow::Owned(empty_schema())
            },
        })
        .collect();
    let disable = (req.parallel_tool_calls == Some(false)).then_some(true);
    let tool_choice = match (&req.tool_choice, tools.is_empty()) {
        // Anthropic refuses tool_choice without tools.
        (_, true) => None,
        (None, false) => disable.map(|d| OutToolChoice::Auto {
            disable_parallel_tool_use: Some(d),
        }),
        (Some(ToolChoice::Auto), false) => Some(OutToolChoice::Auto {
            disable_parallel_tool_use: disable,
        }),
        (Some(ToolChoice::Required), false) => Some(OutToolChoice::Any {
            disable_parallel_tool_use: disable,
        }),
        (Some(ToolChoice::Named(name)), false) => Some(OutToolChoice::Tool {
            name,
            disable_parallel_tool_use: disable,
        }),
        (Some(ToolChoice::None), false) => Some(OutToolChoice::None),
    };
    let output_config = match &req.output {
        Some(OutputFormat::JsonSchema { schema, .. }) => Some(OutOutputConfig {
            format: OutFormat::JsonSchema { schema },
        }),
        _ => None,
    };
    let temperature = req.temperature.map(|t| t.clamp(0.0, 1.0));
    let body = OutRequest {
        model: &req.model,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages: turns(&req.messages),
        tools,
        tool_choice,
        stop_sequences: &req.stop,
        temperature,
        top_p: if temperature.is_some() {
            None
        } else {
            req.top_p
        },
        stream: req.stream,
        output_config,
    };
    write_json(&body, out);
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

fn finish_from_wire(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("stop_sequence") => FinishReason::StopSequence,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, pause_turn, null, anything newer
        _ => FinishReason::Stop,
    }
}

fn finish_to_wire(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::ContentFilter => "refusal",
    }
}

/// `usage` of a message or an event; input counts the cached prompt too.
#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// All prompt tokens, when the provider reported any input count.
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts.iter().any(Option::is_some).then(|| {
            parts
                .iter()
                .flatten()
                .fold(0u64, |a, &b| a.saturating_add(b))
        })
    }
}

/// Parse a provider's Anthropic Messages reply into the canonical model.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, FormatError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err(format!("invalid JSON response: {e}")))?;
    let obj = as_object(&root, "the response body")?;
    if opt_str(obj, "type")? == Some("error") {
        let e = parse_error_value(&root);
        return Err(err(format!(
            "the provider answered with an error: {}",
            e.1.unwrap_or_default()
        )));
    }
    let mut parts = Vec::new();
    if let Some(content) = field(obj, "content") {
        let blocks = content
            .as_array()
            .ok_or_else(|| err("`content` must be an array"))?;
        for block in blocks {
            let b = as_object(block, "a content block")?;
            match block_type(b, "a content block")? {
                "text" => parts.push(Part::Text(req_str(b, "text", "a text block")?.to_owned())),
                "tool_use" => parts.push(Part::ToolCall {
                    id: req_str(b, "id", "a tool_use block")?.to_owned(),
                    name: req_str(b, "name", "a tool_use block")?.to_owned(),
                    arguments: field(b, "input").map_or_else(|| "{}".to_owned(), json_text),
                }),
                "thinking" => parts.push(Part::Reasoning {
                    text: opt_str(b, "thinking")?.unwrap_or_default().to_owned(),
                    signature: opt_str(b, "signature")?
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                }),
                // redacted_thinking, server tools' blocks, anything newer
                _ => {}
            }
        }
    }
    let usage = match field(obj, "usage") {
        Some(u) => {
            let u: WireUsage = serde_json::from_value(u.clone())
                .map_err(|e| err(format!("invalid `usage`: {e}")))?;
            Some(Usage {
                input_tokens: u.input().unwrap_or(0),
                output_tokens: u.output_tokens.unwrap_or(0),
            })
        }
        None => None,
    };
    Ok(ChatResponse {
        id: opt_str(obj, "id")?.unwrap_or_default().to_owned(),
        model: opt_str(obj, "model")?.unwrap_or_default().to_owned(),
        parts,
        finish: finish_from_wire(opt_str(obj, "stop_reason")?),
        usage,
        created: 0,
    })
}

/// `msg_…`: the canonical id, prefixed when it lacks the prefix.
fn message_id(id: &str) -> Cow<'_, str> {
    if id.starts_with("msg_") {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(format!("msg_{id}"))
    }
}

/// Write the canonical reply as an Anthropic Messages response body.
pub fn write_response(resp: &ChatResponse, out: &mut Vec<u8>) {
    let content = resp
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) if t.is_empty() => None,
            Part::Text(text) => Some(OutBlock::Text { text }),
            // Ids as the provider made them: the client sends them back to us.
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(OutBlock::ToolUse {
                id: Cow::Borrowed(id),
                name,
                input: tool_input(arguments),
            }),
            Part::Reasoning { text, signature } => Some(OutBlock::Thinking {
                thinking: text,
                signature: signature.as_deref().unwrap_or(""),
            }),
            Part::Image(_) | Part::ToolResult { .. } => None,
        })
        .collect();
    let usage = resp.usage.unwrap_or_default();
    let body = OutResponse {
        id: message_id(&resp.id),
        kind: "message",
        role: "assistant",
        model: &resp.model,
        content,
        stop_reason: finish_to_wire(&resp.finish),
        stop_sequence: None,
        usage: OutUsage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        },
    };
    write_json(&body, out);
}

// ---------------------------------------------------------------------------
// StreamDecoder
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    index: usize,
    message: Option<WireMessageStart>,
    content_block: Option<WireBlock>,
    delta: Option<WireDelta>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize, Default)]
struct WireMessageStart {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireBlock {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
    thinking: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
}

/// A `content_block_delta`'s or a `message_delta`'s `delta`.
#[derive(Deserialize, Default)]
struct WireDelta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

/// Reads an Anthropic event stream into canonical [`StreamEvent`]s.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Prompt tokens from `message_start` (cache reads and writes included).
    input_tokens: Option<u64>,
    /// `(content block index, tool index)` of each `tool_use` block so far.
    tool_blocks: Vec<(usize, usize)>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// One event: its `event:` name (the data's `type` when absent) and data.
    pub fn feed(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let ev: WireEvent = serde_json::from_slice(data)
            .map_err(|e| err(format!("invalid Anthropic stream event: {e}")))?;
        let name = match event {
            Some(name) => std::str::from_utf8(name).unwrap_or_default(),
            None => ev.kind.as_str(),
        };
        match name {
            "message_start" => {
                let m = ev.message.unwrap_or_default();
                self.input_tokens = m.usage.and_then(|u| u.input());
                out.push(StreamEvent::Start {
                    id: m.id,
                    model: m.model,
                    created: 0,
                });
            }
            "content_block_start" => {
                self.block_start(ev.index, ev.content_block.unwrap_or_default(), out)
            }
            "content_block_delta" => self.block_delta(ev.index, ev.delta.unwrap_or_default(), out),
            "message_delta" => {
                let stop = ev.delta.and_then(|d| d.stop_reason);
                out.push(StreamEvent::Finish(finish_from_wire(stop.as_deref())));
                let u = ev.usage.unwrap_or_default();
                // Some Anthropic-compatible servers report the prompt only here.
                let input = u.input().filter(|&n| n > 0).or(self.input_tokens);
                out.push(StreamEvent::Usage(Usage {
                    input_tokens: input.unwrap_or(0),
                    output_tokens: u.output_tokens.unwrap_or(0),
                }));
            }
            "message_stop" => out.push(StreamEvent::End),
            "error" => {
                let e = ev.error.unwrap_or_default();
                let kind = e.kind.unwrap_or_else(|| "api_error".to_owned());
                out.push(StreamEvent::Error(ApiError {
                    status: status_for_kind(&kind),
                    kind,
                    message: e.message.unwrap_or_default(),
                }));
            }
            // ping, content_block_stop, anything newer
            _ => {}
        }
        Ok(())
    }

    fn block_start(&mut self, index: usize, block: WireBlock, out: &mut Vec<StreamEvent>) {
        match block.kind.as_str() {
            "text" => {
                if let Some(t) = block.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(t));
                }
            }
            "thinking" => {
                if let Some(t) = block.thinking.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ReasoningDelta(t));
                }
            }
            "tool_use" => {
                let tool = self.tool_blocks.len();
                self.tool_blocks.push((index, tool));
                out.push(StreamEvent::ToolCallStart {
                    index: tool,
                    id: block.id.unwrap_or_default(),
                    name: block.name.unwrap_or_default(),
                });
                // Anthropic sends `input: {}` and streams the JSON; some
                // compatible servers send the whole input here instead.
                if let Some(input) = block
                    .input
                    .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
                {
                    out.push(StreamEvent::ToolCallDelta {
                        index: tool,
                        arguments: json_text(&input),
                    });
                }
            }
            // redacted_thinking, server_tool_use, …: nothing to relay
            _ => {}
        }
    }

    fn block_delta(&mut self, index: usize, delta: WireDelta, out: &mut Vec<StreamEvent>) {
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(t) = delta.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(t));
                }
            }
            Some("input_json_delta") => {
                let tool = self
                    .tool_blocks
                    .iter()
                    .find(|&&(b, _)| b == index)
                    .map(|&(_, t)| t);
                if let (Some(tool), Some(json)) =
                    (tool, delta.partial_json.filter(|j| !j.is_empty()))
                {
                    out.push(StreamEvent::ToolCallDelta {
                        index: tool,
                        arguments: json,
                    });
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = delta.thinking.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ReasoningDelta(t));
                }
            }
            Some("signature_delta") => {
                if let Some(s) = delta.signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ReasoningSignature(s));
                }
            }
            // citations_delta, anything newer
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// StreamEncoder
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    Thinking,
    /// A tool_use block, by canonical tool index.
    Tool(usize),
}

/// Writes canonical [`StreamEvent`]s as an Anthropic event stream.
///
/// Blocks open lazily and a new block closes the previous one; `Finish`
/// closes the open block; `message_delta` and `message_stop` go out at
/// `End`, so a `Usage` that follows `Finish` still lands in `message_delta`.
/// After `Error` (written as `event: error`) or `End` nothing more is
/// written.
#[derive(Debug)]
pub struct StreamEncoder {
    started: bool,
    done: bool,
    open: OpenBlock,
    /// Index of the next content block.
    next_index: usize,
    /// `(tool index, content block index)` of each tool_use block.
    tool_blocks: Vec<(usize, usize)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

fn frame_start(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

fn push_index(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
}

impl StreamEncoder {
    /// `include_usage` is an OpenAI option: Anthropic streams always carry usage.
    pub fn new(include_usage: bool) -> Self {
        let _ = include_usage;
        StreamEncoder {
            started: false,
            done: false,
            open: OpenBlock::None,
            next_index: 0,
            tool_blocks: Vec::new(),
            finish: None,
            usage: None,
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start { id, model, .. } => self.start(id, model, out),
            StreamEvent::TextDelta(t) => {
                if t.is_empty() {
                    return;
                }
                self.ensure_open(OpenBlock::Text, out);
                self.delta_head(out);
                out.extend_from_slice(br#"{"type":"text_delta","text":"#);
                write_json_string(out, t);
                out.extend_from_slice(b"}}\n\n");
            }
            StreamEvent::ReasoningDelta(t) => {
                if t.is_empty() {
                    return;
                }
                self.ensure_open(OpenBlock::Thinking, out);
                self.delta_head(out);
                out.extend_from_slice(br#"{"type":"thinking_delta","thinking":"#);
                write_json_string(out, t);
                out.extend_from_slice(b"}}\n\n");
            }
            StreamEvent::ReasoningSignature(s) => {
                if s.is_empty() {
                    return;
                }
                self.ensure_open(OpenBlock::Thinking, out);
                self.delta_head(out);
                out.extend_from_slice(br#"{"type":"signature_delta","signature":"#);
                write_json_string(out, s);
                out.extend_from_slice(b"}}\n\n");
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                self.close_open(out);
                let block = self.next_index;
                self.next_index += 1;
                self.open = OpenBlock::Tool(*index);
                self.tool_blocks.push((*index, block));
                frame_start(out, "content_block_start");
                out.extend_from_slice(br#"{"type":"content_block_start","index":"#);
                push_index(out, block);
                out.extend_from_slice(br#","content_block":{"type":"tool_use","id":"#);
                write_json_string(out, id);
                out.extend_from_slice(br#","name":"#);
                write_json_string(out, name);
                out.extend_from_slice(b",\"input\":{}}}\n\n");
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if arguments.is_empty() {
                    return;
                }
                // Normally the open block. A delta for an earlier tool (an
                // upstream interleaving parallel calls) goes to that tool's
                // block: the SDKs accumulate by block index.
                let Some(&(_, block)) = self.tool_blocks.iter().rev().find(|&&(t, _)| t == *index)
                else {
                    return;
                };
                frame_start(out, "content_block_delta");
                out.extend_from_slice(br#"{"type":"content_block_delta","index":"#);
                push_index(out, block);
                out.extend_from_slice(br#","delta":{"type":"input_json_delta","partial_json":"#);
                write_json_string(out, arguments);
                out.extend_from_slice(b"}}\n\n");
            }
            StreamEvent::Finish(reason) => {
                self.close_open(out);
                self.finish = Some(reason.clone());
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::End => {
                self.ensure_started(out);
                self.close_open(out);
                let stop = finish_to_wire(self.finish.as_ref().unwrap_or(&FinishReason::Stop));
                frame_start(out, "message_delta");
                out.extend_from_slice(br#"{"type":"message_delta","delta":{"stop_reason":"#);
                write_json_string(out, stop);
                out.extend_from_slice(br#","stop_sequence":null},"usage":{"#);
                if let Some(u) = self.usage {
                    // Cumulative, as Anthropic's own message_delta may carry it;
                    // the SDKs update the message's input count from it.
                    out.extend_from_slice(br#""input_tokens":"#);
                    push_u64(out, u.input_tokens);
                    out.push(b',');
                }
                out.extend_from_slice(br#""output_tokens":"#);
                push_u64(out, self.usage.map_or(0, |u| u.output_tokens));
                out.extend_from_slice(b"}}\n\n");
                frame_start(out, "message_stop");
                out.extend_from_slice(b"{\"type\":\"message_stop\"}\n\n");
                self.done = true;
            }
            StreamEvent::Error(e) => {
                frame_start(out, "error");
                write_error(e, out);
                out.extend_from_slice(b"\n\n");
                self.done = true;
            }
        }
    }

    /// The stream is over. Without `End` nothing more is written: the
    /// pipeline has already sent an `Error` when the upstream died.
    pub fn finish(&mut self, _out: &mut Vec<u8>) {
        self.done = true;
    }

    fn start(&mut self, id: &str, model: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        frame_start(out, "message_start");
        out.extend_from_slice(br#"{"type":"message_start","message":{"id":"#);
        write_json_string(out, &message_id(id));
        out.extend_from_slice(br#","type":"message","role":"assistant","model":"#);
        write_json_string(out, model);
        out.extend_from_slice(
            br#","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}"#,
        );
        out.extend_from_slice(b"\n\n");
    }

    /// `message_start` for a stream whose decoder never sent `Start`.
    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start("msg_stream", "", out);
        }
    }

    fn ensure_open(&mut self, kind: OpenBlock, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if self.open == kind {
            return;
        }
        self.close_open(out);
        let block = self.next_index;
        self.next_index += 1;
        self.open = kind;
        frame_start(out, "content_block_start");
        out.extend_from_slice(br#"{"type":"content_block_start","index":"#);
        push_index(out, block);
        out.extend_from_slice(match kind {
            OpenBlock::Thinking => {
                br#","content_block":{"type":"thinking","thinking":"","signature":""}}"#.as_slice()
            }
            _ => br#","content_block":{"type":"text","text":""}}"#.as_slice(),
        });
        out.extend_from_slice(b"\n\n");
    }

    /// `event: content_block_delta` up to the `delta` value, for the open block.
    fn delta_head(&self, out: &mut Vec<u8>) {
        frame_start(out, "content_block_delta");
        out.extend_from_slice(br#"{"type":"content_block_delta","index":"#);
        push_index(out, self.next_index.saturating_sub(1));
        out.extend_from_slice(br#","delta":"#);
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        if self.open == OpenBlock::None {
            return;
        }
        self.open = OpenBlock::None;
        frame_start(out, "content_block_stop");
        out.extend_from_slice(br#"{"type":"content_block_stop","index":"#);
        push_index(out, self.next_index.saturating_sub(1));
        out.extend_from_slice(b"}\n\n");
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Anthropic's error types.
const ANTHROPIC_KINDS: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// The Anthropic error type for an HTTP status (the shared table).
fn kind_for_status(status: u16) -> &'static str {
    super::kind_for_status(status, Format::Anthropic)
}

/// The HTTP status Anthropic pairs with an error type (the shared table).
fn status_for_kind(kind: &str) -> u16 {
    super::status_for_kind(kind, Format::Anthropic)
}

/// `(type, message)` from an error body: Anthropic's shape, or the
/// OpenAI-like shapes compatible servers use.
fn parse_error_value(root: &Value) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match root.get("error") {
        Some(Value::Object(e)) => (text(e.get("type")), text(e.get("message"))),
        Some(Value::String(s)) => (None, Some(s.clone())),
        _ => (None, text(root.get("message"))),
    }
}

/// Trimmed body text, at most [`MAX_ERROR_MESSAGE_BYTES`], cut on a char boundary.
fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    super::cut_at_char_boundary(text.trim(), MAX_ERROR_MESSAGE_BYTES).to_owned()
}

/// A provider's Anthropic error reply in canonical form.
pub fn parse_error(status: u16, body: &[u8]) -> ApiError {
    let (kind, message) = match serde_json::from_slice::<Value>(body) {
        Ok(root @ Value::Object(_)) => {
            let (kind, message) = parse_error_value(&root);
            (kind, message.unwrap_or_else(|| body_text(body)))
        }
        _ => (None, body_text(body)),
    };
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    ApiError {
        status,
        kind: kind
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| kind_for_status(status).to_owned()),
        message,
    }
}

/// Write an error in Anthropic's shape; a type outside Anthropic's
/// vocabulary (OpenAI's `server_error`, `insufficient_quota`, …) is replaced
/// by the one Anthropic uses for the status.
pub fn write_error(err: &ApiError, out: &mut Vec<u8>) {
    let kind = if ANTHROPIC_KINDS.contains(&err.kind.as_str()) {
        err.kind.as_str()
    } else {
        kind_for_status(err.status)
    };
    write_json(
        &OutError {
            kind: "error",
            error: OutErrorBody {
                kind,
                message: &err.message,
            },
        },
        out,
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sse::SseParser;

    fn text(s: &str) -> Part {
        Part::Text(s.to_owned())
    }

    fn msg(role: Role, parts: Vec<Part>) -> Message {
        Message { role, parts }
    }

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn result(call_id: &str, content: &str, is_error: bool) -> Part {
        Part::ToolResult {
            call_id: call_id.into(),
            content: content.into(),
            is_error,
        }
    }

    fn written(req: &ChatRequest) -> Value {
        let mut out = Vec::new();
        write_request(req, &mut out);
        serde_json::from_slice(&out).expect("write_request writes JSON")
    }

    /// What Claude Code sends (research §2), trimmed: system blocks with
    /// cache_control, tools (one an Anthropic server tool), thinking,
    /// context_management, output_config.effort, metadata, and a
    /// tool_use/tool_result round.
    const CLAUDE_CODE_REQUEST: &str = r#"{
      "model": "claude-opus-4-8",
      "max_tokens": 64000,
      "thinking": {"type": "adaptive"},
      "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
      "output_config": {"effort": "high"},
      "metadata": {"user_id": "{\"device_id\":\"d0\",\"session_id\":\"s1\"}"},
      "stream": true,
      "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use the tools available to you.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
      ],
      "tools": [
        {"name": "Read", "description": "Reads a file from the local filesystem.",
         "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
           "properties": {"file_path": {"type": "string", "description": "The absolute path"}},
           "required": ["file_path"], "additionalProperties": false}},
        {"name": "Bash", "description": "Executes a bash command.",
         "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
         "cache_control": {"type": "ephemeral"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
      ],
      "messages": [
        {"role": "user", "content": [
          {"type": "text", "text": "<system-reminder>\nThe date is today.\n</system-reminder>"},
          {"type": "text", "text": "what is in Cargo.toml?", "cache_control": {"type": "ephemeral"}}
        ]},
        {"role": "assistant", "content": [
          {"type": "thinking", "thinking": "I should read the file.", "signature": "EqQBCkYIBxgCKkBsig=="},
          {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"},
          {"type": "text", "text": "Let me read it."},
          {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "Read",
           "input": {"file_path": "/work/main/Cargo.toml"}}
        ]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
           "content": [{"type": "text", "text": "     1\t[package]"}, {"type": "text", "text": "     2\tname = \"x\""}]},
          {"type": "text", "text": "summarize it", "cache_control": {"type": "ephemeral"}}
        ]}
      ]
    }"#;

    fn claude_code_canonical() -> ChatRequest {
        ChatRequest {
            model: "claude-opus-4-8".into(),
            system: Some(
                "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli;\n\n\
                 You are Claude Code, Anthropic's official CLI for Claude.\n\n\
                 Use the tools available to you."
                    .into(),
            ),
            messages: vec![
                msg(
                    Role::User,
                    vec![
                        text("<system-reminder>\nThe date is today.\n</system-reminder>"),
                        text("what is in Cargo.toml?"),
                    ],
                ),
                msg(
                    Role::Assistant,
                    vec![
                        Part::Reasoning {
                            text: "I should read the file.".into(),
                            signature: Some("EqQBCkYIBxgCKkBsig==".into()),
                        },
                        text("Let me read it."),
                        call(
                            "toolu_01A09q90qw90lq917835lq9",
                            "Read",
                            r#"{"file_path":"/work/main/Cargo.toml"}"#,
                        ),
                    ],
                ),
                msg(
                    Role::Tool,
                    vec![result(
                        "toolu_01A09q90qw90lq917835lq9",
                        "     1\t[package]\n     2\tname = \"x\"",
                        false,
                    )],
                ),
                msg(Role::User, vec![text("summarize it")]),
            ],
            tools: vec![
                Tool {
                    name: "Read".into(),
                    description: Some("Reads a file from the local filesystem.".into()),
                    parameters: json!({"$schema": "http://json-schema.org/draft-07/schema#",
                        "type": "object",
                        "properties": {"file_path": {"type": "string", "description": "The absolute path"}},
                        "required": ["file_path"], "additionalProperties": false}),
                },
                Tool {
                    name: "Bash".into(),
                    description: Some("Executes a bash command.".into()),
                    parameters: json!({"type": "object",
                        "properties": {"command": {"type": "string"}}, "required": ["command"]}),
                },
            ],
            tool_choice: None,
            max_tokens: Some(64000),
            temperature: None,
            top_p: None,
            stop: vec![],
            stream: true,
            include_usage: false,
            output: None,
            parallel_tool_calls: None,
        }
    }

    #[test]
    fn parses_a_claude_code_request_dropping_anthropic_only_fields() {
        let req = parse_request(CLAUDE_CODE_REQUEST.as_bytes()).unwrap();
        assert_eq!(req, claude_code_canonical());
    }

    #[test]
    fn claude_code_request_survives_write_then_parse() {
        let req = parse_request(CLAUDE_CODE_REQUEST.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_request(&req, &mut out);
        assert_eq!(parse_request(&out).unwrap(), req);
        // nothing Anthropic-only leaks into what is written
        let v: Value = serde_json::from_slice(&out).unwrap();
        for key in [
            "thinking",
            "context_management",
            "metadata",
            "output_config",
        ] {
            assert!(v.get(key).is_none(), "{key} written");
        }
        assert!(!String::from_utf8_lossy(&out).contains("cache_control"));
    }

    #[test]
    fn parses_images_tool_errors_choices_and_structured_output() {
        let body = json!({
            "model": "m",
            "max_tokens": 100,
            "system": "Be brief.",
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["\n\nHuman:"],
            "tools": [{"name": "shot", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "output_config": {"format": {"type": "json_schema",
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {"type": "text", "text": "compare"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {"x": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "here you go"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": "no display"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                        {"type": "text", "text": "saved"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}
                    ]}
                ]},
                {"role": "assistant", "content": "Done."}
            ]
        });
        let req = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.system.as_deref(), Some("Be brief."));
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(req.stop, vec!["\n\nHuman:".to_owned()]);
        assert_eq!(
            (req.temperature, req.top_p, req.max_tokens),
            (Some(0.2), Some(0.9), Some(100))
        );
        assert_eq!(
            req.output,
            Some(OutputFormat::JsonSchema {
                name: "response".into(),
                schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                strict: None,
            })
        );
        assert_eq!(
            req.messages,
            vec![
                msg(
                    Role::User,
                    vec![
                        Part::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0K".into()
                        }),
                        Part::Image(Image::Url("https://example.com/a.jpg".into())),
                        text("compare"),
                    ]
                ),
                msg(
                    Role::Assistant,
                    vec![
                        call("toolu_1", "shot", "{}"),
                        call("toolu_2", "shot", r#"{"x":1}"#)
                    ]
                ),
                // tool results first, one message each; the turn's text and the
                // result's image follow as a user message
                msg(Role::Tool, vec![result("toolu_1", "no display", true)]),
                msg(Role::Tool, vec![result("toolu_2", "saved", false)]),
                msg(
                    Role::User,
                    vec![
                        Part::Image(Image::Base64 {
                            media_type: "image/jpeg".into(),
                            data: "/9j/".into()
                        }),
                        text("here you go"),
                    ]
                ),
                msg(Role::Assistant, vec![text("Done.")]),
            ]
        );
    }

    #[test]
    fn tool_choice_variants_and_beta_output_format() {
        let parse = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 1, "messages": []});
            if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
                b.extend(e);
            }
            parse_request(body.to_string().as_bytes())
        };
        let choice = |c: Value| {
            parse(json!({"tool_choice": c})).map(|r| (r.tool_choice, r.parallel_tool_calls))
        };
        assert_eq!(
            choice(json!({"type": "auto"})),
            Ok((Some(ToolChoice::Auto), None))
        );
        assert_eq!(
            choice(json!({"type": "none"})),
            Ok((Some(ToolChoice::None), None))
        );
        assert_eq!(
            choice(json!({"type": "tool", "name": "f", "disable_parallel_tool_use": false})),
            Ok((Some(ToolChoice::Named("f".into())), None))
        );
        assert!(choice(json!({"type": "sometimes"})).is_err());
        let r =
            parse(json!({"output_format": {"type": "json_schema", "schema": {"type": "object"}}}))
                .unwrap();
        assert!(matches!(r.output, Some(OutputFormat::JsonSchema { .. })));
    }

    #[test]
    fn rejects_what_cannot_be_translated() {
        let bad = [
            &b"not json"[..],
            br#"[]"#,
            br#"{"model":"m"}"#,
            br#"{"messages":[{"role":"robot","content":"x"}]}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBE"}}]}]}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://x.test/a.pdf"}}]}]}"#,
            br#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":[{"type":"tool_addition","tool":{"name":"f"}}]}]}"#,
            br#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":42}]}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f1"}}]}]}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            br#"{"messages":[],"max_tokens":"many"}"#,
            br#"{"messages":[{"role":"user","content":42}]}"#,
        ];
        for body in bad {
            assert!(
                parse_request(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let e = parse_request(br#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":[{"type":"document"}]}]}"#)
            .unwrap_err();
        assert!(
            e.0.contains("messages.1") && e.0.contains("document"),
            "{e}"
        );
        // Errors name the block, down to a tool result's content.
        let e = parse_request(br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBE"}}]}]}"#)
            .unwrap_err();
        assert_eq!(
            e.0,
            "messages.0.content.1: a document with a `base64` source (PDF or file) cannot be \
             translated for this provider; only text documents can"
        );
        let e = parse_request(br#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"a"},{"type":"container_upload","file_id":"f"}]}]}]}"#)
            .unwrap_err();
        assert_eq!(
            e.0,
            "messages.0.content.0.content.1: content block type `container_upload` cannot be \
             translated for this provider"
        );
        let e = parse_request(br#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":[{"type":"text","text":"x"},{"type":"tool_removal","name":"f"}]}]}"#)
            .unwrap_err();
        assert_eq!(
            e.0,
            "messages.1.content.1: system turn block type `tool_removal` cannot be translated \
             for this provider (text only)"
        );
    }

    /// Claude Code's shape with mid-conversation system turns (GA on Claude
    /// Opus 4.8: after a user turn, followed by an assistant turn or last).
    const MID_SYSTEM_REQUEST: &str = r#"{
      "model": "claude-opus-4-8",
      "max_tokens": 1024,
      "system": [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}
      ],
      "messages": [
        {"role": "user", "content": "list the files"},
        {"role": "system", "content": "The user prefers tables.", "clear_at": "never"},
        {"role": "assistant", "content": [
          {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
        ]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.rs"}
        ]},
        {"role": "system", "content": "Plan mode is off.", "clear_at": "next_user_message"},
        {"role": "assistant", "content": "One file: a.rs."},
        {"role": "user", "content": [{"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": [
          {"type": "text", "text": "Token budget: low."},
          {"type": "text", "text": "Answer in one line.", "cache_control": {"type": "ephemeral"}}
        ], "output_config": {"effort": "low"}}
      ]
    }"#;

    #[test]
    fn mid_conversation_system_turns_stay_in_place() {
        let req = parse_request(MID_SYSTEM_REQUEST.as_bytes()).unwrap();
        assert_eq!(
            req.system.as_deref(),
            Some("You are Claude Code.\n\nBe terse.")
        );
        assert_eq!(
            req.messages,
            vec![
                msg(Role::User, vec![text("list the files")]),
                msg(Role::System, vec![text("The user prefers tables.")]),
                msg(
                    Role::Assistant,
                    vec![call("toolu_1", "Bash", r#"{"command":"ls"}"#)]
                ),
                msg(Role::Tool, vec![result("toolu_1", "a.rs", false)]),
                // "Plan mode is off." is cleared: a user turn follows it.
                msg(Role::Assistant, vec![text("One file: a.rs.")]),
                msg(Role::User, vec![text("thanks")]),
                msg(
                    Role::System,
                    vec![text("Token budget: low.\n\nAnswer in one line.")]
                ),
            ]
        );

        // A system turn before any other joins the system prompt; an empty
        // one and an empty content array carry nothing.
        let req = parse_request(
            br#"{"system":"top","messages":[{"role":"system","content":"lead"},
                {"role":"user","content":[]},{"role":"system","content":""},
                {"role":"user","content":"hi"},{"role":"system","content":"Be kind."}]}"#,
        )
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("top\n\nlead"));
        assert_eq!(
            req.messages,
            vec![
                msg(Role::User, vec![text("hi")]),
                msg(Role::System, vec![text("Be kind.")]),
            ]
        );
        let req = parse_request(
            br#"{"messages":[{"role":"system","content":"only"},{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("only"));
    }

    /// What each provider format gets for [`MID_SYSTEM_REQUEST`].
    #[test]
    fn mid_conversation_system_turns_in_every_writer() {
        let req = parse_request(MID_SYSTEM_REQUEST.as_bytes()).unwrap();
        let sys = "You are Claude Code.\n\nBe terse.";
        let last = "Token budget: low.\n\nAnswer in one line.";

        // Anthropic: appended to the top-level system prompt.
        let v = written(&req);
        assert_eq!(
            v["system"],
            json!(format!("{sys}\n\nThe user prefers tables.\n\n{last}"))
        );
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "list the files"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.rs"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "One file: a.rs."}]},
                {"role": "user", "content": [{"type": "text", "text": "thanks"}]}
            ])
        );

        // OpenAI chat: `system` messages in place.
        let mut out = Vec::new();
        crate::formats::openai::write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": sys},
                {"role": "user", "content": "list the files"},
                {"role": "system", "content": "The user prefers tables."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a.rs"},
                {"role": "assistant", "content": "One file: a.rs."},
                {"role": "user", "content": "thanks"},
                {"role": "system", "content": last}
            ])
        );

        // Ollama: `system` messages in place.
        let mut out = Vec::new();
        crate::formats::ollama::write_request(&req, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": sys},
                {"role": "user", "content": "list the files"},
                {"role": "system", "content": "The user prefers tables."},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "toolu_1", "function": {"index": 0, "name": "Bash", "arguments": {"command": "ls"}}}
                ]},
                {"role": "tool", "content": "a.rs", "tool_name": "Bash", "tool_call_id": "toolu_1"},
                {"role": "assistant", "content": "One file: a.rs."},
                {"role": "user", "content": "thanks"},
                {"role": "system", "content": last}
            ])
        );

        // Responses: `instructions`, then `system` input messages in place.
        let mut out = Vec::new();
        crate::formats::responses::write_request(&req, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["instructions"], json!(sys));
        assert_eq!(
            v["input"],
            json!([
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "The user prefers tables."}]},
                {"type": "function_call", "call_id": "toolu_1", "name": "Bash", "arguments": "{\"command\":\"ls\"}"},
                {"type": "function_call_output", "call_id": "toolu_1", "output": "a.rs"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "One file: a.rs.", "annotations": []}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": last}]}
            ])
        );
    }

    #[test]
    fn text_documents_and_search_results_become_text() {
        let req = parse_request(
            br#"{"messages":[{"role":"user","content":[
                {"type":"document","source":{"type":"text","media_type":"text/plain","data":"The grass is green."},
                 "title":"Facts","context":"From the wiki","citations":{"enabled":true},"cache_control":{"type":"ephemeral"}},
                {"type":"document","source":{"type":"content","content":[{"type":"text","text":"one"},{"type":"text","text":"two"}]}},
                {"type":"search_result","source":"https://x.test/doc","title":"Doc","content":[{"type":"text","text":"found it"}],
                 "citations":{"enabled":true}},
                {"type":"text","text":"summarize"}]},
              {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"search","input":{}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[
                {"type":"search_result","source":"s","title":"T","content":[{"type":"text","text":"r1"}]},
                {"type":"document","source":{"type":"text","media_type":"text/plain","data":"d1"}},
                {"type":"text","text":"end"}]}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            req.messages,
            vec![
                msg(
                    Role::User,
                    vec![
                        text("Facts\n\nFrom the wiki\n\nThe grass is green."),
                        text("one\n\ntwo"),
                        text("Doc\nhttps://x.test/doc\n\nfound it"),
                        text("summarize"),
                    ]
                ),
                msg(Role::Assistant, vec![call("t1", "search", "{}")]),
                msg(Role::Tool, vec![result("t1", "T\ns\n\nr1\nd1\nend", false)]),
            ]
        );
    }

    #[test]
    fn writes_an_anthropic_request_from_openai_shaped_input() {
        let req = ChatRequest {
            model: "claude-sonnet-4-5".into(),
            system: Some("You are terse.".into()),
            messages: vec![
                msg(Role::User, vec![text("look at this")]),
                msg(
                    Role::Assistant,
                    vec![
                        text(""),
                        call("functions.Read:0", "Read", r#"{"file_path":"a"}"#),
                        call("call_2", "Read", "not json"),
                        call("call_3", "Read", ""),
                    ],
                ),
                msg(
                    Role::Tool,
                    vec![result("functions.Read:0", "contents", false)],
                ),
                msg(Role::Tool, vec![result("call_2", "bad arguments", true)]),
                msg(Role::Tool, vec![result("call_3", "", false)]),
                msg(
                    Role::User,
                    vec![
                        text("thanks"),
                        Part::Image(Image::Url("data:image/png;base64,AAAA".into())),
                        Part::Image(Image::Url("https://example.com/b.png".into())),
                    ],
                ),
                msg(
                    Role::Assistant,
                    vec![
                        Part::Reasoning {
                            text: "unsigned".into(),
                            signature: None,
                        },
                        Part::Reasoning {
                            text: "signed".into(),
                            signature: Some("sig".into()),
                        },
                        text("ok"),
                    ],
                ),
                msg(Role::Assistant, vec![text("more")]),
            ],
            tools: vec![Tool {
                name: "Read".into(),
                description: None,
                parameters: Value::Null,
            }],
            tool_choice: Some(ToolChoice::Required),
            max_tokens: None,
            temperature: Some(1.5),
            top_p: Some(0.9),
            stop: vec!["END".into()],
            stream: true,
            include_usage: true,
            output: Some(OutputFormat::JsonObject),
            parallel_tool_calls: Some(false),
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        assert!(out.starts_with(br#"{"model":"claude-sonnet-4-5","max_tokens":4096,"system":"#));
        let expected = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": "You are terse.\n\nRespond with a single JSON object.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look at this"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "functions_Read_0", "name": "Read", "input": {"file_path": "a"}},
                    {"type": "tool_use", "id": "call_2", "name": "Read", "input": {}},
                    {"type": "tool_use", "id": "call_3", "name": "Read", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "functions_Read_0", "content": "contents"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "bad arguments", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "call_3"},
                    {"type": "text", "text": "thanks"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "signed", "signature": "sig"},
                    {"type": "text", "text": "ok"},
                    {"type": "text", "text": "more"}
                ]}
            ],
            "tools": [{"name": "Read", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "stream": true
        });
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), expected);
    }

    #[test]
    fn writes_structured_output_and_tool_choice_edge_cases() {
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let mut req = ChatRequest {
            model: "m".into(),
            messages: vec![msg(Role::User, vec![text("count")])],
            output: Some(OutputFormat::JsonSchema {
                name: "n".into(),
                schema: schema.clone(),
                strict: Some(true),
            }),
            tool_choice: Some(ToolChoice::Auto),
            max_tokens: Some(10),
            top_p: Some(0.5),
            ..ChatRequest::default()
        };
        let v = written(&req);
        assert_eq!(
            v["output_config"],
            json!({"format": {"type": "json_schema", "schema": schema}})
        );
        assert_eq!(v["max_tokens"], 10);
        assert_eq!(v["top_p"], 0.5);
        // no tools: no tool_choice (Anthropic refuses it)
        assert!(
            v.get("tool_choice").is_none() && v.get("tools").is_none() && v.get("system").is_none()
        );
        assert!(v.get("stream").is_none());

        req.output = Some(OutputFormat::JsonObject);
        req.tools = vec![Tool {
            name: "f".into(),
            description: Some("d".into()),
            parameters: json!({"type": "object"}),
        }];
        req.parallel_tool_calls = Some(false);
        req.tool_choice = None;
        let v = written(&req);
        assert_eq!(v["system"], "Respond with a single JSON object.");
        assert!(v.get("output_config").is_none());
        assert_eq!(
            v["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            v["tools"],
            json!([{"name": "f", "description": "d", "input_schema": {"type": "object"}}])
        );

        req.tool_choice = Some(ToolChoice::None);
        assert_eq!(written(&req)["tool_choice"], json!({"type": "none"}));
        req.tool_choice = Some(ToolChoice::Named("f".into()));
        req.parallel_tool_calls = None;
        assert_eq!(
            written(&req)["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
    }

    #[test]
    fn lossless_request_round_trip() {
        let req = ChatRequest {
            model: "claude-haiku-4-5".into(),
            system: Some("sys".into()),
            messages: vec![
                msg(
                    Role::User,
                    vec![
                        text("hi"),
                        Part::Image(Image::Base64 {
                            media_type: "image/gif".into(),
                            data: "R0lG".into(),
                        }),
                        Part::Image(Image::Url("https://x.test/i.png".into())),
                    ],
                ),
                msg(
                    Role::Assistant,
                    vec![
                        Part::Reasoning {
                            text: "hmm".into(),
                            signature: Some("s1".into()),
                        },
                        text("calling"),
                        call("toolu_1", "get", r#"{"a":[1,2],"b":"c"}"#),
                        call("toolu_2", "get", "{}"),
                    ],
                ),
                msg(Role::Tool, vec![result("toolu_1", "one", false)]),
                msg(Role::Tool, vec![result("toolu_2", "two", true)]),
                msg(Role::User, vec![text("go on")]),
            ],
            tools: vec![Tool {
                name: "get".into(),
                description: Some("gets".into()),
                parameters: json!({"type": "object", "properties": {"a": {"type": "array"}}}),
            }],
            tool_choice: Some(ToolChoice::Named("get".into())),
            max_tokens: Some(321),
            temperature: Some(0.5),
            top_p: None,
            stop: vec!["x".into(), "y".into()],
            stream: true,
            include_usage: false,
            output: Some(OutputFormat::JsonSchema {
                name: "response".into(),
                schema: json!({"type": "object"}),
                strict: None,
            }),
            parallel_tool_calls: Some(false),
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        assert_eq!(parse_request(&out).unwrap(), req);
    }

    // --- responses -------------------------------------------------------

    #[test]
    fn parses_text_tool_use_and_thinking_replies() {
        let body = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
            "model":"claude-sonnet-4-5-20250929",
            "content":[
              {"type":"thinking","thinking":"The user wants the weather.","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
              {"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"},
              {"type":"text","text":"I'll check."},
              {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"location":"San Francisco, CA"}}
            ],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":89,
                     "service_tier":"standard"}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(
            r,
            ChatResponse {
                id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
                model: "claude-sonnet-4-5-20250929".into(),
                parts: vec![
                    Part::Reasoning {
                        text: "The user wants the weather.".into(),
                        signature: Some("EqQBCgIYAhIM1gbcDa9GJwZA2b3h".into()),
                    },
                    text("I'll check."),
                    call(
                        "toolu_01A09q90qw90lq917835lq9",
                        "get_weather",
                        r#"{"location":"San Francisco, CA"}"#
                    ),
                ],
                finish: FinishReason::ToolCalls,
                usage: Some(Usage {
                    input_tokens: 2572,
                    output_tokens: 89
                }),
                created: 0,
            }
        );

        let plain = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m",
            "content":[{"type":"text","text":"Hi!"}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":3}}"#;
        let r = parse_response(plain).unwrap();
        assert_eq!(r.parts, vec![text("Hi!")]);
        assert_eq!(r.finish, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Some(Usage {
                input_tokens: 10,
                output_tokens: 3
            })
        );
    }

    #[test]
    fn maps_every_stop_reason() {
        for (wire, finish) in [
            ("end_turn", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("stop_sequence", FinishReason::StopSequence),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Stop),
        ] {
            let body =
                format!(r#"{{"id":"msg_1","model":"m","content":[],"stop_reason":"{wire}"}}"#);
            assert_eq!(
                parse_response(body.as_bytes()).unwrap().finish,
                finish,
                "{wire}"
            );
        }
        assert!(
            parse_response(br#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#)
                .is_err()
        );
        assert!(parse_response(b"<html>").is_err());
    }

    #[test]
    fn writes_an_anthropic_response() {
        let resp = ChatResponse {
            id: "chatcmpl-9x".into(),
            model: "gpt-4o".into(),
            parts: vec![
                Part::Reasoning {
                    text: "think".into(),
                    signature: None,
                },
                text("Sure."),
                text(""),
                call("call_1", "f", r#"{"a":1}"#),
                call("call_2", "f", "{broken"),
            ],
            finish: FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 7,
                output_tokens: 3,
            }),
            created: 1_700_000_000,
        };
        let mut out = Vec::new();
        write_response(&resp, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"msg_chatcmpl-9x","type":"message","role":"assistant","model":"gpt-4o","content":[{"type":"thinking","thinking":"think","signature":""},{"type":"text","text":"Sure."},{"type":"tool_use","id":"call_1","name":"f","input":{"a":1}},{"type":"tool_use","id":"call_2","name":"f","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":3}}"#
        );
    }

    #[test]
    fn lossless_response_round_trip() {
        for (finish, parts) in [
            (FinishReason::Stop, vec![text("hello")]),
            (FinishReason::Length, vec![text("a"), text("b")]),
            (FinishReason::StopSequence, vec![]),
            (FinishReason::ContentFilter, vec![text("no")]),
            (
                FinishReason::ToolCalls,
                vec![
                    Part::Reasoning {
                        text: "r".into(),
                        signature: Some("sig".into()),
                    },
                    Part::Reasoning {
                        text: "r2".into(),
                        signature: None,
                    },
                    call("toolu_9", "g", r#"{"k":{"n":null}}"#),
                ],
            ),
        ] {
            let resp = ChatResponse {
                id: "msg_abc".into(),
                model: "claude".into(),
                parts,
                finish,
                usage: Some(Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                }),
                created: 0,
            };
            let mut out = Vec::new();
            write_response(&resp, &mut out);
            assert_eq!(parse_response(&out).unwrap(), resp);
        }
    }

    // --- stream decoding -----------------------------------------------

    /// Decode an SSE byte stream read in `piece`-byte reads.
    fn decode(stream: &[u8], piece: usize) -> Vec<StreamEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut dec = StreamDecoder::new();
        let mut events = Vec::new();
        for chunk in stream.chunks(piece) {
            parser
                .feed(chunk, |e| {
                    dec.feed(e.event, e.data, &mut events).expect("valid event")
                })
                .expect("frames fit");
        }
        assert!(!parser.in_event());
        events
    }

    const TEXT_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", w\\u00f6rld\\n\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn decodes_a_streamed_text_reply_in_any_read_size() {
        let expected = vec![
            StreamEvent::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4-5".into(),
                created: 0,
            },
            StreamEvent::TextDelta("Hello".into()),
            StreamEvent::TextDelta(", wörld\n".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 2112,
                output_tokens: 15,
            }),
            StreamEvent::End,
        ];
        for piece in [1, 2, 3, 7, 64, TEXT_STREAM.len()] {
            assert_eq!(
                decode(TEXT_STREAM.as_bytes(), piece),
                expected,
                "reads of {piece}"
            );
        }
    }

    /// A thinking block, a text block and two tool_use blocks, the first with
    /// its arguments in 7-byte `partial_json` pieces (research §1.3).
    fn tool_stream(args: &str) -> String {
        let mut s = String::new();
        let mut ev = |name: &str, data: Value| {
            s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        };
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant",
                "model": "claude-opus-4-8", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        );
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Need the file."}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBsig"}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Reading."}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        );
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {}}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        );
        for piece in args.as_bytes().chunks(7) {
            let piece = std::str::from_utf8(piece).unwrap();
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        );
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 3,
                "content_block": {"type": "tool_use", "id": "toolu_02", "name": "Bash", "input": {}}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"command\":\"ls\"}"}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 3}),
        );
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 88}}),
        );
        ev("message_stop", json!({"type": "message_stop"}));
        s
    }

    #[test]
    fn decodes_a_tool_use_reply_with_7_byte_argument_pieces() {
        let args = r#"{"file_path": "/work/main/Cargo.toml"}"#;
        let stream = tool_stream(args);
        let mut expected = vec![
            StreamEvent::Start {
                id: "msg_02".into(),
                model: "claude-opus-4-8".into(),
                created: 0,
            },
            StreamEvent::ReasoningDelta("Need the file.".into()),
            StreamEvent::ReasoningSignature("EqQBsig".into()),
            StreamEvent::TextDelta("Reading.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_01".into(),
                name: "Read".into(),
            },
        ];
        for piece in args.as_bytes().chunks(7) {
            expected.push(StreamEvent::ToolCallDelta {
                index: 0,
                arguments: String::from_utf8(piece.to_vec()).unwrap(),
            });
        }
        expected.extend([
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_02".into(),
                name: "Bash".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: r#"{"command":"ls"}"#.into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 50,
                output_tokens: 88,
            }),
            StreamEvent::End,
        ]);
        for piece in [1, 7, 100, stream.len()] {
            assert_eq!(
                decode(stream.as_bytes(), piece),
                expected,
                "reads of {piece}"
            );
        }
        let joined: String = decode(stream.as_bytes(), 7)
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments,
                } => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, args);
    }

    #[test]
    fn decodes_errors_unnamed_events_and_whole_tool_inputs() {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        dec.feed(
            Some(b"error"),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![StreamEvent::Error(ApiError {
                status: 529,
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            })]
        );

        // no `event:` line: the data's type decides; a compatible server that
        // sends the whole input at block start and the prompt in message_delta
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_3","model":"qwen3","usage":{"input_tokens":0}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{"x":1}}}"#,
            r#"{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":"ignored"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":30,"output_tokens":4}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            dec.feed(None, data.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![
                StreamEvent::Start {
                    id: "msg_3".into(),
                    model: "qwen3".into(),
                    created: 0
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "t1".into(),
                    name: "f".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: r#"{"x":1}"#.into()
                },
                StreamEvent::Finish(FinishReason::Length),
                StreamEvent::Usage(Usage {
                    input_tokens: 30,
                    output_tokens: 4
                }),
                StreamEvent::End,
            ]
        );
        assert!(
            dec.feed(Some(b"content_block_delta"), b"{oops", &mut out)
                .is_err()
        );
    }

    // --- stream encoding -----------------------------------------------

    fn encode(events: &[StreamEvent]) -> String {
        let mut enc = StreamEncoder::new(false);
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        enc.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn event_names(stream: &str) -> Vec<&str> {
        stream
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect()
    }

    #[test]
    fn encodes_a_text_stream_exactly() {
        let s = encode(&[
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o".into(),
                created: 1,
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta(String::new()),
            StreamEvent::TextDelta("lo \"you\"".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 2,
            }),
            StreamEvent::End,
        ]);
        let expected = concat!(
            "event: message_start\n",
            r#"data: {"type":"message_start","message":{"id":"msg_chatcmpl-1","type":"message","role":"assistant","model":"gpt-4o","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}"#,
            "\n\nevent: content_block_start\n",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo \"you\""}}"#,
            "\n\nevent: content_block_stop\n",
            r#"data: {"type":"content_block_stop","index":0}"#,
            "\n\nevent: message_delta\n",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":10,"output_tokens":2}}"#,
            "\n\nevent: message_stop\n",
            r#"data: {"type":"message_stop"}"#,
            "\n\n",
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn encodes_a_tool_stream_exactly() {
        let s = encode(&[
            StreamEvent::Start {
                id: "msg_7".into(),
                model: "qwen3".into(),
                created: 0,
            },
            StreamEvent::ReasoningDelta("plan".into()),
            StreamEvent::TextDelta("Let me look.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "Read".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"file_".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "path\":\"a\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_b".into(),
                name: "Bash".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            // usage after Finish still lands in message_delta
            StreamEvent::Usage(Usage {
                input_tokens: 99,
                output_tokens: 20,
            }),
            StreamEvent::End,
            StreamEvent::TextDelta("ignored after End".into()),
        ]);
        assert_eq!(
            event_names(&s),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let data: Vec<Value> = s
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            &data[1..],
            &[
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me look."}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_a", "name": "Read", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"file_"}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "path\":\"a\"}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "call_b", "name": "Bash", "input": {}}}),
                json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                json!({"type": "content_block_stop", "index": 3}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 99, "output_tokens": 20}}),
                json!({"type": "message_stop"}),
            ]
        );
        // the exact bytes of the tool block's frames
        assert!(s.contains(concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"call_a","name":"Read","input":{}}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"file_"}}"#,
            "\n\n"
        )));
    }

    #[test]
    fn encodes_signatures_and_missing_usage() {
        let s = encode(&[
            StreamEvent::Start {
                id: "msg_s".into(),
                model: "claude".into(),
                created: 0,
            },
            StreamEvent::ReasoningDelta("a".into()),
            StreamEvent::ReasoningSignature("sig==".into()),
            StreamEvent::ReasoningSignature(String::new()),
            StreamEvent::TextDelta("b".into()),
            StreamEvent::End,
        ]);
        assert!(s.contains(r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig=="}}"#));
        assert!(s.contains(r#"{"type":"content_block_stop","index":0}"#));
        assert!(s.contains(r#"{"type":"content_block_stop","index":1}"#));
        assert!(s.contains(r#""delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":0}}"#));
    }

    #[test]
    fn an_error_ends_the_stream() {
        let s = encode(&[
            StreamEvent::Start {
                id: "msg_e".into(),
                model: "m".into(),
                created: 0,
            },
            StreamEvent::TextDelta("partial".into()),
            StreamEvent::Error(ApiError {
                status: 502,
                kind: "server_error".into(),
                message: "upstream died".into(),
            }),
            StreamEvent::TextDelta("more".into()),
            StreamEvent::End,
        ]);
        assert_eq!(
            event_names(&s),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert!(s.ends_with(concat!(
            "event: error\n",
            r#"data: {"type":"error","error":{"type":"api_error","message":"upstream died"}}"#,
            "\n\n"
        )));
        // finish without End adds nothing
        let mut enc = StreamEncoder::new(true);
        let mut out = Vec::new();
        enc.encode(
            &StreamEvent::Start {
                id: "msg_f".into(),
                model: "m".into(),
                created: 0,
            },
            &mut out,
        );
        enc.encode(&StreamEvent::TextDelta("x".into()), &mut out);
        let len = out.len();
        enc.finish(&mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn encoder_output_decodes_back() {
        let events = vec![
            StreamEvent::Start {
                id: "msg_rt".into(),
                model: "m".into(),
                created: 0,
            },
            StreamEvent::ReasoningDelta("why".into()),
            StreamEvent::ReasoningSignature("s".into()),
            StreamEvent::TextDelta("ok\n".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_x".into(),
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
            StreamEvent::Usage(Usage {
                input_tokens: 5,
                output_tokens: 6,
            }),
            StreamEvent::End,
        ];
        let s = encode(&events);
        assert_eq!(decode(s.as_bytes(), 5), events);
    }

    // --- errors ----------------------------------------------------------

    #[test]
    fn parses_error_bodies() {
        let e = parse_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011"}"#,
        );
        assert_eq!(
            e,
            ApiError {
                status: 529,
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );

        let e = parse_error(502, b"  <html><body>Bad Gateway</body></html>\n");
        assert_eq!(
            e,
            ApiError {
                status: 502,
                kind: "api_error".into(),
                message: "<html><body>Bad Gateway</body></html>".into()
            }
        );

        let e = parse_error(
            400,
            br#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#,
        );
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("invalid_request_error", "bad model")
        );
        let e = parse_error(404, br#"{"error":"model 'x' not found"}"#);
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("not_found_error", "model 'x' not found")
        );
        assert_eq!(parse_error(500, b"").message, "HTTP 500");

        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(parse_error(status, b"nope").kind, kind, "{status}");
        }

        let long = "é".repeat(3000);
        let e = parse_error(500, long.as_bytes());
        assert!(e.message.len() <= 2048 && e.message.len() >= 2046);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn writes_error_bodies_in_anthropic_vocabulary() {
        let write = |status, kind: &str| {
            let mut out = Vec::new();
            write_error(
                &ApiError {
                    status,
                    kind: kind.into(),
                    message: "m \"q\"".into(),
                },
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            write(529, "overloaded_error"),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"m \"q\""}}"#
        );
        assert!(write(503, "server_error").contains(r#""type":"overloaded_error""#));
        assert!(write(429, "insufficient_quota").contains(r#""type":"rate_limit_error""#));
        assert!(write(401, "invalid_api_key").contains(r#""type":"authentication_error""#));
        assert!(write(404, "model_not_found").contains(r#""type":"not_found_error""#));
        assert!(write(500, "server_error").contains(r#""type":"api_error""#));
        // parse(write(e)) == e for Anthropic kinds
        let e = ApiError {
            status: 413,
            kind: "request_too_large".into(),
            message: "too big".into(),
        };
        let mut out = Vec::new();
        write_error(&e, &mut out);
        assert_eq!(parse_error(413, &out), e);
    }
}
