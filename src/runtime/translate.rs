//! Cross-format glue: dispatches the pure conversions of [`crate::formats`]
//! by format, and turns a provider's stream into the client's, event by event.
//!
//! Only cross-format routes come here; same-format routes are byte passthrough.

use crate::formats::{
    self, ApiError, ChatRequest, ChatResponse, Format, FormatError, Part, StreamEvent, Usage,
};
use crate::sse::SseParser;

/// Parse a client's request body in its own format.
pub fn parse_request(format: Format, body: &[u8]) -> Result<ChatRequest, FormatError> {
    match format {
        Format::OpenAiChat => formats::openai::parse_request(body),
        Format::Anthropic => formats::anthropic::parse_request(body),
        Format::Responses => formats::responses::parse_request(body),
        Format::Ollama => formats::ollama::parse_request(body),
    }
}

/// Write a request body in a provider's format (some requests cannot be
/// expressed in some formats, e.g. image URLs for Ollama).
pub fn write_request(
    format: Format,
    req: &ChatRequest,
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    match format {
        Format::OpenAiChat => formats::openai::write_request(req, out),
        Format::Anthropic => formats::anthropic::write_request(req, out),
        Format::Responses => formats::responses::write_request(req, out),
        Format::Ollama => return formats::ollama::write_request(req, out),
    }
    Ok(())
}

pub fn parse_response(format: Format, body: &[u8]) -> Result<ChatResponse, FormatError> {
    match format {
        Format::OpenAiChat => formats::openai::parse_response(body),
        Format::Anthropic => formats::anthropic::parse_response(body),
        Format::Responses => formats::responses::parse_response(body),
        Format::Ollama => formats::ollama::parse_response(body),
    }
}

pub fn write_response(format: Format, resp: &ChatResponse, out: &mut Vec<u8>) {
    match format {
        Format::OpenAiChat => formats::openai::write_response(resp, out),
        Format::Anthropic => formats::anthropic::write_response(resp, out),
        Format::Responses => formats::responses::write_response(resp, out),
        Format::Ollama => formats::ollama::write_response(resp, out),
    }
}

pub fn parse_error(format: Format, status: u16, body: &[u8]) -> ApiError {
    match format {
        Format::OpenAiChat => formats::openai::parse_error(status, body),
        Format::Anthropic => formats::anthropic::parse_error(status, body),
        Format::Responses => formats::responses::parse_error(status, body),
        Format::Ollama => formats::ollama::parse_error(status, body),
    }
}

/// The one error writer per format, for translated provider errors and
/// router-made errors alike; `code` is the router's error code (OpenAI-shaped
/// formats carry it), `None` for a provider's error.
pub fn write_error(format: Format, err: &ApiError, code: Option<&str>, out: &mut Vec<u8>) {
    match format {
        Format::OpenAiChat => formats::openai::write_error(err, code, out),
        Format::Anthropic => formats::anthropic::write_error(err, out),
        Format::Responses => formats::responses::write_error(err, code, out),
        Format::Ollama => formats::ollama::write_error(err, out),
    }
}

/// The text of a reply (for the log line and response classifiers).
pub fn response_text(resp: &ChatResponse) -> String {
    let mut text = String::new();
    for p in &resp.parts {
        if let Part::Text(t) = p {
            text.push_str(t);
        }
    }
    text
}

enum Decoder {
    OpenAi(formats::openai::StreamDecoder),
    Anthropic(formats::anthropic::StreamDecoder),
    Responses(formats::responses::StreamDecoder),
    Ollama(formats::ollama::StreamDecoder),
}

impl Decoder {
    fn new(format: Format) -> Self {
        match format {
            Format::OpenAiChat => Decoder::OpenAi(formats::openai::StreamDecoder::new()),
            Format::Anthropic => Decoder::Anthropic(formats::anthropic::StreamDecoder::new()),
            Format::Responses => Decoder::Responses(formats::responses::StreamDecoder::new()),
            Format::Ollama => Decoder::Ollama(formats::ollama::StreamDecoder::new()),
        }
    }

    fn feed(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        match self {
            Decoder::OpenAi(d) => d.feed(event, data, out),
            Decoder::Anthropic(d) => d.feed(event, data, out),
            Decoder::Responses(d) => d.feed(event, data, out),
            Decoder::Ollama(d) => d.feed(event, data, out),
        }
    }
}

enum Encoder {
    OpenAi(formats::openai::StreamEncoder),
    Anthropic(formats::anthropic::StreamEncoder),
    Responses(formats::responses::StreamEncoder),
    Ollama(formats::ollama::StreamEncoder),
}

impl Encoder {
    fn new(format: Format, include_usage: bool) -> Self {
        match format {
            Format::OpenAiChat => {
                Encoder::OpenAi(formats::openai::StreamEncoder::new(include_usage))
            }
            Format::Anthropic => {
                Encoder::Anthropic(formats::anthropic::StreamEncoder::new(include_usage))
            }
            Format::Responses => {
                Encoder::Responses(formats::responses::StreamEncoder::new(include_usage))
            }
            Format::Ollama => Encoder::Ollama(formats::ollama::StreamEncoder::new(include_usage)),
        }
    }

    fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi(e) => e.encode(ev, out),
            Encoder::Anthropic(e) => e.encode(ev, out),
            Encoder::Responses(e) => e.encode(ev, out),
            Encoder::Ollama(e) => e.encode(ev, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi(e) => e.finish(out),
            Encoder::Anthropic(e) => e.finish(out),
            Encoder::Responses(e) => e.finish(out),
            Encoder::Ollama(e) => e.finish(out),
        }
    }
}

/// How the provider frames its stream.
enum Framing {
    Sse(SseParser),
    /// Ollama: one JSON object per line.
    Ndjson {
        line: Vec<u8>,
        max: usize,
    },
}

/// Turns a provider's stream (SSE or NDJSON, any format) into the client's
/// SSE, and keeps what the log needs (text, usage, whether it ended).
pub struct StreamTranslator {
    framing: Framing,
    decoder: Decoder,
    /// None: decode only (a same-format stream relayed unchanged, read for the log).
    encoder: Option<Encoder>,
    events: Vec<StreamEvent>,
    pub text: String,
    pub usage: Option<Usage>,
    /// The provider's terminal event was seen.
    pub ended: bool,
    /// The provider reported an error mid-stream.
    pub error: Option<String>,
    /// The provider's finish reason, once seen.
    pub finish: Option<crate::formats::FinishReason>,
    started: bool,
}

const MAX_EVENT: usize = 16 << 20;

impl StreamTranslator {
    pub fn new(provider: Format, client: Format, include_usage: bool) -> Self {
        let framing = match provider {
            Format::Ollama => Framing::Ndjson {
                line: Vec::new(),
                max: MAX_EVENT,
            },
            _ => Framing::Sse(SseParser::new(MAX_EVENT)),
        };
        StreamTranslator {
            framing,
            decoder: Decoder::new(provider),
            encoder: Some(Encoder::new(client, include_usage)),
            events: Vec::new(),
            text: String::new(),
            usage: None,
            ended: false,
            error: None,
            finish: None,
            started: false,
        }
    }

    /// Read a stream relayed unchanged, only for its text and usage.
    pub fn tap(format: Format) -> Self {
        let mut t = Self::new(format, format, false);
        t.encoder = None;
        t
    }

    /// Feed a piece of the provider's body; append the client's bytes to `out`.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let mut failure: Option<String> = None;
        match &mut self.framing {
            Framing::Sse(parser) => {
                let decoder = &mut self.decoder;
                let r = parser.feed(piece, |ev| {
                    if failure.is_none()
                        && let Err(e) = decoder.feed(ev.event, ev.data, &mut events)
                    {
                        failure = Some(e.0);
                    }
                });
                if let Err(e) = r {
                    failure.get_or_insert_with(|| format!("{e:?}"));
                }
            }
            Framing::Ndjson { line, max } => {
                let mut rest = piece;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    let l = std::mem::take(line);
                    let trimmed = l.trim_ascii();
                    if !trimmed.is_empty()
                        && failure.is_none()
                        && let Err(e) = self.decoder.feed(None, trimmed, &mut events)
                    {
                        failure = Some(e.0);
                    }
                    *line = l;
                    line.clear();
                }
                line.extend_from_slice(rest);
                if line.len() > *max {
                    failure.get_or_insert_with(|| "NDJSON line too long".to_string());
                }
            }
        }
        for ev in events.iter_mut() {
            // Formats without a timestamp (Anthropic) leave it 0: use the clock.
            if let StreamEvent::Start { created, .. } = ev
                && *created == 0
            {
                *created = crate::observe::now_ms() / 1000;
            }
        }
        for ev in &events {
            self.observe(ev);
            if let Some(enc) = &mut self.encoder {
                enc.encode(ev, out);
            }
        }
        self.events = events;
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn observe(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::Start { .. } => self.started = true,
            StreamEvent::TextDelta(t) => self.text.push_str(t),
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Finish(f) => self.finish = Some(f.clone()),
            StreamEvent::End => self.ended = true,
            StreamEvent::Error(e) => self.error = Some(e.message.clone()),
            _ => {}
        }
    }

    /// The provider's body ended: close the client's stream properly. When
    /// the provider never sent its terminal event, the client gets its
    /// format's error event instead of a fake clean end.
    pub fn finish(&mut self, out: &mut Vec<u8>, failure: Option<&str>) {
        // A last NDJSON line without its newline still counts.
        if let Framing::Ndjson { line, .. } = &self.framing
            && !line.trim_ascii().is_empty()
        {
            let _ = self.feed(b"\n", out);
        }
        let Some(encoder) = &mut self.encoder else {
            return;
        };
        if !self.ended && self.error.is_none() {
            let message = failure.unwrap_or("provider stream ended before its terminal event");
            if !self.started {
                let start = StreamEvent::Start {
                    id: String::new(),
                    model: String::new(),
                    created: 0,
                };
                encoder.encode(&start, out);
            }
            let err = StreamEvent::Error(ApiError {
                status: 502,
                kind: "api_error".into(),
                message: format!("upstream stream ended abnormally: {message}"),
            });
            encoder.encode(&err, out);
            self.error = Some(message.to_string());
        }
        encoder.finish(out);
    }
}

/// The error event that ends a same-format stream whose provider died
/// mid-way, in the client's own format (never a fake clean end).
pub fn write_stream_error(format: Format, message: &str, out: &mut Vec<u8>) {
    match format {
        Format::OpenAiChat | Format::Ollama => {
            crate::sse::write_openai_stream_error(out, message, "upstream_disconnected")
        }
        Format::Anthropic => {
            out.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":");
            crate::json::write_json_string(out, message);
            out.extend_from_slice(b"}}\n\n");
        }
        Format::Responses => {
            out.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"code\":\"upstream_disconnected\",\"message\":");
            crate::json::write_json_string(out, message);
            out.extend_from_slice(b",\"param\":null}\n\n");
        }
    }
}

/// Encodes canonical events in a client's format (the mock provider's streams).
pub struct EventEncoder(Encoder);

impl EventEncoder {
    pub fn new(client: Format, include_usage: bool) -> Self {
        EventEncoder(Encoder::new(client, include_usage))
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        self.0.encode(ev, out);
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.0.finish(out);
    }
}

#[cfg(test)]
mod tests {
    //! Table-driven: every (client format × provider format) pair, for
    //! requests, replies and streams, through the canonical model.
    use super::*;
    use crate::formats::{Message, Role, Tool};

    const CLIENTS: [Format; 3] = [Format::OpenAiChat, Format::Anthropic, Format::Responses];
    const PROVIDERS: [Format; 3] = [Format::OpenAiChat, Format::Anthropic, Format::Ollama];

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            system: Some("Be brief.".into()),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![Part::Text("Weather in Paris?".into())],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }],
                },
                Message {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult {
                        call_id: "call_1".into(),
                        content: "18C".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("Weather by city".into()),
                parameters: serde_json::json!({"type":"object","properties":{"city":{"type":"string"}}}),
            }],
            max_tokens: Some(100),
            stream: true,
            ..Default::default()
        }
    }

    /// System, texts, tool names, (call name, arguments), results.
    type Essentials = (
        Option<String>,
        Vec<String>,
        Vec<String>,
        Vec<(String, String)>,
        Vec<String>,
    );

    /// What survives every route: system, texts, the tool, the call and its result.
    fn essentials(r: &ChatRequest) -> Essentials {
        let mut texts = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for m in &r.messages {
            for p in &m.parts {
                match p {
                    Part::Text(t) => texts.push(t.clone()),
                    Part::ToolCall {
                        name, arguments, ..
                    } => {
                        let args: serde_json::Value = serde_json::from_str(arguments).unwrap();
                        calls.push((name.clone(), args.to_string()));
                    }
                    Part::ToolResult { content, .. } => results.push(content.clone()),
                    _ => {}
                }
            }
        }
        (
            r.system.clone(),
            texts,
            r.tools.iter().map(|t| t.name.clone()).collect(),
            calls,
            results,
        )
    }

    #[test]
    fn requests_cross_every_pair() {
        for client in CLIENTS {
            let mut client_body = Vec::new();
            write_request(client, &request(), &mut client_body).unwrap();
            let parsed = parse_request(client, &client_body).unwrap();
            for provider in PROVIDERS {
                let mut out = Vec::new();
                write_request(provider, &parsed, &mut out).unwrap();
                let back = parse_request(provider, &out).unwrap_or_else(|e| {
                    panic!(
                        "{client:?}->{provider:?}: {e}: {}",
                        String::from_utf8_lossy(&out)
                    )
                });
                assert_eq!(
                    essentials(&back),
                    essentials(&request()),
                    "{client:?} -> {provider:?}"
                );
                assert!(back.stream, "{client:?} -> {provider:?}: stream kept");
            }
        }
    }

    fn reply() -> ChatResponse {
        ChatResponse {
            id: "r1".into(),
            model: "m".into(),
            parts: vec![
                Part::Text("Let me check.".into()),
                Part::ToolCall {
                    id: "call_9".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                },
            ],
            finish: crate::formats::FinishReason::ToolCalls,
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 7,
            }),
            created: 1,
        }
    }

    #[test]
    fn replies_cross_every_pair() {
        for provider in PROVIDERS {
            let mut provider_body = Vec::new();
            write_response(provider, &reply(), &mut provider_body);
            let canonical = parse_response(provider, &provider_body).unwrap();
            for client in CLIENTS {
                let mut out = Vec::new();
                write_response(client, &canonical, &mut out);
                let back = parse_response(client, &out).unwrap();
                assert_eq!(
                    response_text(&back),
                    "Let me check.",
                    "{provider:?} -> {client:?}"
                );
                assert_eq!(
                    back.usage,
                    Some(Usage {
                        input_tokens: 12,
                        output_tokens: 7
                    }),
                    "{provider:?} -> {client:?}"
                );
                assert_eq!(
                    back.finish,
                    crate::formats::FinishReason::ToolCalls,
                    "{provider:?} -> {client:?}"
                );
                let call = back.parts.iter().find_map(|p| match p {
                    Part::ToolCall {
                        name, arguments, ..
                    } => Some((name.clone(), arguments.clone())),
                    _ => None,
                });
                let (name, args) =
                    call.unwrap_or_else(|| panic!("{provider:?} -> {client:?}: tool call lost"));
                assert_eq!(name, "get_weather");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&args).unwrap()["city"],
                    "Paris"
                );
            }
        }
    }

    fn events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "s1".into(),
                model: "m".into(),
                created: 1,
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_2".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"ci"#.into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"ty":"Paris"}"#.into(),
            },
            StreamEvent::Finish(crate::formats::FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 5,
                output_tokens: 9,
            }),
            StreamEvent::End,
        ]
    }

    /// A provider's stream bytes for `events`, in its own format.
    fn provider_stream(provider: Format) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Encoder::new(provider, true);
        for ev in events() {
            enc.encode(&ev, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    /// Decode a client's stream back into text, the tool call and usage.
    fn summarize(
        client: Format,
        bytes: &[u8],
    ) -> (String, Option<(String, String)>, Option<Usage>, bool) {
        let mut t = StreamTranslator::tap(client);
        let mut sink = Vec::new();
        t.feed(bytes, &mut sink).unwrap();
        // The tool call, from a second decode that keeps every event.
        let mut evs = Vec::new();
        let mut dec = Decoder::new(client);
        let mut parser = SseParser::new(MAX_EVENT);
        parser
            .feed(bytes, |e| dec.feed(e.event, e.data, &mut evs).unwrap())
            .unwrap();
        let mut call: Option<(String, String)> = None;
        for e in &evs {
            match e {
                StreamEvent::ToolCallStart { name, .. } => {
                    call = Some((name.clone(), String::new()))
                }
                StreamEvent::ToolCallDelta { arguments, .. } => {
                    if let Some(c) = call.as_mut() {
                        c.1.push_str(arguments);
                    }
                }
                _ => {}
            }
        }
        (t.text.clone(), call, t.usage, t.ended)
    }

    #[test]
    fn streams_cross_every_pair_and_survive_any_split() {
        for provider in PROVIDERS {
            let input = provider_stream(provider);
            for client in CLIENTS {
                let mut whole = Vec::new();
                let mut t = StreamTranslator::new(provider, client, true);
                t.feed(&input, &mut whole).unwrap();
                t.finish(&mut whole, None);
                assert!(t.ended && t.error.is_none(), "{provider:?} -> {client:?}");
                // Byte by byte: the same client bytes.
                let mut split = Vec::new();
                let mut t = StreamTranslator::new(provider, client, true);
                for b in &input {
                    t.feed(std::slice::from_ref(b), &mut split).unwrap();
                }
                t.finish(&mut split, None);
                assert_eq!(
                    String::from_utf8_lossy(&split),
                    String::from_utf8_lossy(&whole),
                    "{provider:?} -> {client:?}: a split changed the output"
                );
                let (text, call, usage, ended) = summarize(client, &whole);
                assert_eq!(text, "Hello", "{provider:?} -> {client:?}");
                let (name, args) =
                    call.unwrap_or_else(|| panic!("{provider:?} -> {client:?}: no tool call"));
                assert_eq!(name, "get_weather");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&args).unwrap()["city"],
                    "Paris",
                    "{provider:?} -> {client:?}"
                );
                assert_eq!(
                    usage.map(|u| u.output_tokens),
                    Some(9),
                    "{provider:?} -> {client:?}"
                );
                assert!(ended, "{provider:?} -> {client:?}: terminal event");
            }
        }
    }

    #[test]
    fn a_stream_cut_short_ends_with_the_clients_error_event() {
        for provider in PROVIDERS {
            let input = provider_stream(provider);
            let cut = &input[..input.len() / 2];
            for client in CLIENTS {
                let mut out = Vec::new();
                let mut t = StreamTranslator::new(provider, client, true);
                let _ = t.feed(cut, &mut out);
                t.finish(&mut out, Some("connection reset"));
                let text = String::from_utf8_lossy(&out);
                assert!(
                    !text.contains("[DONE]")
                        && !text.contains("message_stop")
                        && !text.contains("response.completed"),
                    "{provider:?} -> {client:?}: no fake clean end:\n{text}"
                );
                let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
                assert!(
                    last.contains("error") || last.contains("failed"),
                    "{provider:?} -> {client:?}: {last}"
                );
            }
        }
    }

    #[test]
    fn a_last_ndjson_line_without_newline_still_ends_the_stream() {
        let mut input = provider_stream(Format::Ollama);
        assert_eq!(input.pop(), Some(b'\n'));
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(Format::Ollama, Format::OpenAiChat, true);
        t.feed(&input, &mut out).unwrap();
        assert!(!t.ended);
        t.finish(&mut out, None);
        assert!(t.ended && t.error.is_none());
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
    }
}
