//! Wire formats as data, conversions as pure functions.
//!
//! Every client format (OpenAI chat completions, Anthropic Messages, OpenAI
//! Responses) and every provider format (OpenAI chat, Anthropic, Ollama
//! native) converts to and from one canonical model defined here. A
//! cross-format route is `client → canonical → provider` for the request and
//! `provider → canonical → client` for the reply; streams go through
//! [`StreamEvent`]s, decoded from the provider's events and encoded into the
//! client's. Same-format routes never come here: they stay byte passthrough.
//!
//! Each format module offers the same set of pure functions:
//!
//! ```text
//! parse_request(body)            -> Result<ChatRequest, FormatError>
//! write_request(&ChatRequest, out)
//! parse_response(body)           -> Result<ChatResponse, FormatError>
//! write_response(&ChatResponse, out)
//! StreamDecoder::feed(event, data, &mut Vec<StreamEvent>)
//! StreamEncoder::encode(&StreamEvent, out) / finish(out)
//! parse_error(status, body)      -> ApiError
//! write_error(&ApiError, [code,] out)
//! ```
//!
//! Error types: one status ⇄ type table for every format, with per-format
//! overrides ([`kind_for_status`], [`status_for_kind`]).

pub mod anthropic;
pub mod ollama;
pub mod openai;
pub mod responses;

use serde_json::Value;

/// The wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI chat completions (`/v1/chat/completions`, provider format `openai`).
    OpenAiChat,
    /// Anthropic Messages (`/v1/messages`, provider format `anthropic`).
    Anthropic,
    /// OpenAI Responses (`/v1/responses`; client side only).
    Responses,
    /// Ollama native `/api/chat` (provider side only).
    Ollama,
}

/// A conversion that cannot be done (bad input, unsupported construct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// A tool's result turn (OpenAI `role: "tool"`; Anthropic sends these as
    /// `tool_result` blocks in a user turn).
    Tool,
    /// A system turn in the middle of the conversation (Anthropic's
    /// mid-conversation `role: "system"` messages, OpenAI `system` /
    /// `developer` messages after the first turn), kept where the client put
    /// it. Its parts are [`Part::Text`]. System turns that come before any
    /// other message are [`ChatRequest::system`] instead, so a `System`
    /// message is never the first of [`ChatRequest::messages`].
    System,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// An image: either a URL (`https://…`) or inline base64 data.
    Image(Image),
    /// A call the assistant made. `arguments` is JSON text (OpenAI style);
    /// formats that carry an object (Anthropic, Ollama) parse/serialize it.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of a call, sent back by the client.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
    /// Reasoning / thinking text. `signature` is Anthropic's opaque signature
    /// (kept only for Anthropic; dropped elsewhere).
    Reasoning {
        text: String,
        signature: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Url(String),
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// The model must call some tool (OpenAI `required`, Anthropic `any`).
    Required,
    /// The model must call this tool.
    Named(String),
}

/// Structured output: the model must answer with JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (OpenAI `json_object`, Ollama `"json"`).
    JsonObject,
    /// JSON matching a schema (OpenAI `json_schema`, Anthropic
    /// `output_config.format`, Ollama `format: {schema}`).
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

/// A chat request in canonical form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub model: String,
    /// The leading system prompt: the format's own field (Anthropic `system`,
    /// Responses `instructions`) and the system / developer messages that come
    /// before any other message, joined in order. System turns later in the
    /// conversation are [`Role::System`] messages.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    pub output: Option<OutputFormat>,
    /// Whether the client asked for parallel tool calls (`None` = unspecified).
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// A stop sequence matched (Anthropic `stop_sequence`); OpenAI reports `stop`.
    StopSequence,
}

impl FinishReason {
    /// The OpenAI spelling (what `gen_ai.response.finish_reasons` carries).
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A complete (non-streamed) reply in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text, reasoning and tool calls, in order.
    pub parts: Vec<Part>,
    pub finish: FinishReason,
    pub usage: Option<Usage>,
    /// Unix seconds.
    pub created: u64,
}

/// One step of a streamed reply, in canonical form. A decoder emits them in
/// this order: `Start`, then any deltas, then `Finish`, `Usage` (when known),
/// and `End`. Tool calls are numbered by `index` (0, 1, … in order of start).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
        created: u64,
    },
    TextDelta(String),
    ReasoningDelta(String),
    /// Anthropic thinking signature (dropped by non-Anthropic encoders).
    ReasoningSignature(String),
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: usize,
        arguments: String,
    },
    Finish(FinishReason),
    Usage(Usage),
    /// The provider reported an error mid-stream.
    Error(ApiError),
    /// The provider's terminal event.
    End,
}

/// An API error in canonical form: the HTTP status, a type in OpenAI's
/// vocabulary (`invalid_request_error`, `authentication_error`,
/// `permission_error`, `not_found_error`, `rate_limit_error`, `api_error`,
/// `overloaded_error`, …) and the provider's message, unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: String,
    pub message: String,
}

/// The one status ⇄ error-type table, for every format: the type an HTTP
/// status implies in `format`'s vocabulary (router-made errors and
/// translated provider errors both go through it). The base vocabulary is
/// OpenAI's; the rows marked per format are the overrides.
pub fn kind_for_status(status: u16, format: Format) -> &'static str {
    match (format, status) {
        // Per-format overrides.
        (Format::Anthropic, 402) => "billing_error",
        (Format::Anthropic, 408) | (Format::Responses, 413) => "invalid_request_error",
        (Format::Anthropic | Format::Responses, 504) | (Format::Responses, 408) => "api_error",
        // The base table.
        (_, 400 | 422 | 505) => "invalid_request_error",
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 404) => "not_found_error",
        (_, 408 | 504) => "timeout_error",
        (_, 413) => "request_too_large",
        (_, 429) => "rate_limit_error",
        (_, 503 | 529) => "overloaded_error",
        (_, 400..=499) => "invalid_request_error",
        _ => "api_error",
    }
}

/// The status an error type implies in `format` (mid-stream errors carry no
/// status): the inverse of [`kind_for_status`].
pub fn status_for_kind(kind: &str, format: Format) -> u16 {
    match (format, kind) {
        (Format::Anthropic, "billing_error") => 402,
        (Format::Anthropic, "overloaded_error") => 529,
        (_, "invalid_request_error") => 400,
        (_, "authentication_error") => 401,
        (_, "permission_error") => 403,
        (_, "not_found_error") => 404,
        (_, "request_too_large") => 413,
        (_, "rate_limit_error" | "insufficient_quota") => 429,
        (_, "overloaded_error") => 503,
        (_, "timeout_error") => 504,
        _ => 500,
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (error texts taken from provider bodies are bounded with it).
pub(crate) fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Test support shared by the format modules.
#[cfg(test)]
pub(crate) mod testing {
    /// Values of every JSON type, swapped in for a key's value.
    const SWAPS: [&str; 10] = [
        "null", "1", "-1", "1.5", "\"s\"", "[]", "{}", "[null]", "[{}]", "true",
    ];

    /// Each sample with every value of each of `keys` replaced by each of
    /// [`SWAPS`] (crudely: the old value is skipped up to the next `,` or `}`);
    /// `f` gets every mutated body. Parsers must answer all of them without
    /// panicking.
    pub fn swapped_values(samples: &[&[u8]], keys: &[&str], mut f: impl FnMut(&[u8])) {
        for swap in SWAPS {
            for key in keys {
                let pat = format!("\"{key}\":");
                for s in samples {
                    let s = String::from_utf8_lossy(s);
                    let mut out = String::new();
                    let mut rest: &str = &s;
                    while let Some(at) = rest.find(&pat) {
                        out.push_str(&rest[..at + pat.len()]);
                        out.push_str(swap);
                        rest = &rest[at + pat.len()..];
                        let end = rest.find([',', '}']).unwrap_or(rest.len());
                        rest = &rest[end..];
                    }
                    out.push_str(rest);
                    f(out.as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod error_table_tests {
    use super::{Format, kind_for_status, status_for_kind};

    #[test]
    fn one_table_with_per_format_overrides() {
        for f in [
            Format::OpenAiChat,
            Format::Anthropic,
            Format::Responses,
            Format::Ollama,
        ] {
            assert_eq!(kind_for_status(429, f), "rate_limit_error");
            assert_eq!(kind_for_status(401, f), "authentication_error");
            assert_eq!(kind_for_status(404, f), "not_found_error");
            assert_eq!(kind_for_status(529, f), "overloaded_error");
            assert_eq!(kind_for_status(418, f), "invalid_request_error");
            assert_eq!(kind_for_status(500, f), "api_error");
            assert_eq!(status_for_kind("rate_limit_error", f), 429);
        }
        assert_eq!(kind_for_status(402, Format::Anthropic), "billing_error");
        assert_eq!(
            kind_for_status(402, Format::OpenAiChat),
            "invalid_request_error"
        );
        assert_eq!(kind_for_status(504, Format::OpenAiChat), "timeout_error");
        assert_eq!(kind_for_status(504, Format::Anthropic), "api_error");
        assert_eq!(
            kind_for_status(413, Format::Responses),
            "invalid_request_error"
        );
        assert_eq!(kind_for_status(413, Format::Anthropic), "request_too_large");
        assert_eq!(status_for_kind("overloaded_error", Format::Anthropic), 529);
        assert_eq!(status_for_kind("overloaded_error", Format::OpenAiChat), 503);
    }
}
