//! The OpenAI chat-completions stream (`docs/formats.md`):
//! what the router reads from it while relaying, and the error event it
//! writes when an upstream dies mid-stream.
//!
//! Chunks are read with the crate's span walker ([`crate::json::scan`]), not a
//! deserializer: it descends only into `choices`, `usage` and `error`, skips
//! `id`, `model`, `system_fingerprint`, … a string at a time, and borrows
//! unescaped text. Timing note (release build on this 2-core box, a typical
//! 254-byte chunk, best of 20 runs, no criterion): ~220 ns per event (~260 ns
//! when the content has escapes) against ~320 ns for a minimal borrowed
//! `#[derive(Deserialize)]` struct with `serde_json` (whose floor, skipping
//! the whole chunk as `IgnoredAny`, is ~140 ns); framing by [`SseParser`] adds
//! ~20 ns per event when the read holds whole events.
//!
//! [`SseParser`]: super::SseParser

use std::borrow::Cow;

use crate::json::scan::{key_is, skip_value, string_value, u64_value, walk_array, walk_object};
use crate::json::{JsonError, write_json_string};

/// What the router learns from an OpenAI chat stream while relaying it unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatStreamStats {
    /// `usage.prompt_tokens` of the last chunk that had it (the `include_usage`
    /// chunk; some backends repeat a running total on every chunk).
    pub input_tokens: Option<u64>,
    /// `usage.completion_tokens`, likewise.
    pub output_tokens: Option<u64>,
    /// Every `choices[].delta.content`, concatenated (`reasoning_content` is not text).
    pub text: String,
    /// The last non-null `finish_reason`.
    pub finish_reason: Option<String>,
    /// The `[DONE]` sentinel arrived: the stream finished cleanly.
    pub saw_done: bool,
    /// The message of a payload with a top-level `error` (SDKs raise on it).
    pub error: Option<String>,
    /// Events seen, malformed ones included.
    pub events: u64,
}

impl ChatStreamStats {
    /// Fold one event's data in. A malformed chunk is counted and otherwise
    /// ignored (nothing of it is applied): the bytes were relayed anyway, and
    /// stats are best-effort.
    pub fn on_event(&mut self, data: &[u8]) {
        self.events += 1;
        let data = data.trim_ascii_start();
        if data.starts_with(b"[DONE]") {
            self.saw_done = true;
            return;
        }
        if let Ok(chunk) = read_chunk(data) {
            self.apply(chunk);
        }
    }

    fn apply(&mut self, chunk: Chunk<'_>) {
        self.text.push_str(&chunk.content);
        if let Some(reason) = chunk.finish_reason {
            self.finish_reason = Some(reason.into_owned());
        }
        self.input_tokens = chunk.prompt_tokens.or(self.input_tokens);
        self.output_tokens = chunk.completion_tokens.or(self.output_tokens);
        if chunk.error.is_some() {
            self.error = chunk.error;
        }
    }
}

/// A non-streamed chat completion's `(prompt_tokens, completion_tokens, text)`,
/// the text being every choice's `message.content`, concatenated. A body that
/// is not a chat completion gives `(None, None, "")`.
pub fn chat_response_stats(body: &[u8]) -> (Option<u64>, Option<u64>, String) {
    let (i, o, t, _) = chat_response_summary(body);
    (i, o, t)
}

/// [`chat_response_stats`] and the reply's `finish_reason`.
pub fn chat_response_summary(body: &[u8]) -> (Option<u64>, Option<u64>, String, Option<String>) {
    match read_chunk(body.trim_ascii_start()) {
        Ok(c) => (
            c.prompt_tokens,
            c.completion_tokens,
            c.content.into_owned(),
            c.finish_reason.map(|f| f.into_owned()),
        ),
        Err(_) => (None, None, String::new(), None),
    }
}

/// Write the event that ends a client's stream when the upstream fails
/// mid-way: `data: {"error":{"message":…,"type":"upstream_error","code":…}}`
/// and a blank line. The OpenAI SDKs raise an `APIError` on it.
pub fn write_openai_stream_error(out: &mut Vec<u8>, message: &str, code: &str) {
    out.extend_from_slice(b"data: {\"error\":{\"message\":");
    write_json_string(out, message);
    out.extend_from_slice(b",\"type\":\"upstream_error\",\"code\":");
    write_json_string(out, code);
    out.extend_from_slice(b"}}\n\n");
}

/// What one chunk (or a whole completion) says; text borrowed when unescaped.
#[derive(Default)]
struct Chunk<'a> {
    content: Cow<'a, str>,
    finish_reason: Option<Cow<'a, str>>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    error: Option<String>,
}

fn malformed() -> JsonError {
    JsonError(String::new())
}

fn read_chunk(b: &[u8]) -> Result<Chunk<'_>, JsonError> {
    let mut chunk = Chunk::default();
    walk_object(b, 0, |key, at| {
        let first = b.get(at).copied();
        if key_is(b, &key, "choices") && first == Some(b'[') {
            walk_array(b, at, |c| read_choice(b, c, &mut chunk))
        } else if key_is(b, &key, "choices") && first != Some(b'n') {
            // Not an array, nor the `null` vLLM sends on the usage chunk.
            Err(malformed())
        } else if key_is(b, &key, "usage") && first == Some(b'{') {
            walk_object(b, at, |field, at| {
                let end = skip_value(b, at)?;
                let raw = b.get(at..end).unwrap_or_default();
                if key_is(b, &field, "prompt_tokens") {
                    chunk.prompt_tokens = u64_value(raw);
                } else if key_is(b, &field, "completion_tokens") {
                    chunk.completion_tokens = u64_value(raw);
                }
                Ok(end)
            })
        } else if key_is(b, &key, "error") && first != Some(b'n') {
            let end = skip_value(b, at)?;
            chunk.error = Some(error_message(b.get(at..end).unwrap_or_default()));
            Ok(end)
        } else {
            skip_value(b, at)
        }
    })?;
    Ok(chunk)
}

/// One element of `choices`: `delta.content` (streams) or `message.content`
/// (whole completions), and `finish_reason`.
fn read_choice<'a>(b: &'a [u8], at: usize, chunk: &mut Chunk<'a>) -> Result<usize, JsonError> {
    walk_object(b, at, |key, at| {
        let first = b.get(at).copied();
        if (key_is(b, &key, "delta") || key_is(b, &key, "message")) && first == Some(b'{') {
            walk_object(b, at, |field, at| {
                let end = skip_value(b, at)?;
                if key_is(b, &field, "content") {
                    match b.get(at..end).unwrap_or_default() {
                        b"null" => {}
                        raw => {
                            let text = string_value(raw).ok_or_else(malformed)?;
                            match &mut chunk.content {
                                Cow::Borrowed("") => chunk.content = text,
                                acc => acc.to_mut().push_str(&text),
                            }
                        }
                    }
                }
                Ok(end)
            })
        } else if key_is(b, &key, "finish_reason") && first != Some(b'n') {
            let end = skip_value(b, at)?;
            chunk.finish_reason =
                Some(string_value(b.get(at..end).unwrap_or_default()).ok_or_else(malformed)?);
            Ok(end)
        } else {
            skip_value(b, at)
        }
    })
}

/// The text of an `error` value: its `message`, or the string itself, or the
/// value as written.
fn error_message(raw: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(mut o)) => match o.remove("message") {
            Some(serde_json::Value::String(s)) => s,
            _ => serde_json::Value::Object(o).to_string(),
        },
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    /// A real-shaped stream: role chunk, content with escapes, reasoning,
    /// a tool-call fragment, finish chunk, the `include_usage` chunk, `[DONE]`.
    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"thinking...\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello, \\\"w\\u00f6rld\\\"\\n\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"I can't help with that 🦀\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(pieces: &[&[u8]]) -> ChatStreamStats {
        let mut parser = SseParser::new(1 << 20);
        let mut stats = ChatStreamStats::default();
        for piece in pieces {
            parser.feed(piece, |e| stats.on_event(e.data)).unwrap();
        }
        stats
    }

    fn stats_of(events: &[&str]) -> ChatStreamStats {
        let mut stats = ChatStreamStats::default();
        for e in events {
            stats.on_event(e.as_bytes());
        }
        stats
    }

    #[test]
    fn a_full_stream_at_every_split_point() {
        let want = ChatStreamStats {
            input_tokens: Some(12),
            output_tokens: Some(34),
            text: "Hello, \"wörld\"\nI can't help with that 🦀".into(),
            finish_reason: Some("stop".into()),
            saw_done: true,
            error: None,
            events: 8,
        };
        assert_eq!(run(&[STREAM.as_bytes()]), want);
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(run(&[a, b]), want, "split at {i}");
        }
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&pieces), want);
    }

    #[test]
    fn lenient_about_missing_and_null_fields() {
        // vLLM: `choices: null` or no `choices` on the usage chunk.
        let s = stats_of(&[
            r#"{"choices":[{"delta":{"content":"a"}}]}"#,
            r#"{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            r#"{"usage":null}"#,
            r#"{"choices":[{"delta":null,"finish_reason":"length"}],"usage":{"completion_tokens":3}}"#,
            r#"{"choices":[{"delta":{"content":null}},{"delta":{"content":"b"}}]}"#,
            "[DONE]",
        ]);
        assert_eq!(s.text, "ab");
        assert_eq!((s.input_tokens, s.output_tokens), (Some(1), Some(3)));
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
        assert!(s.saw_done);
        assert_eq!(s.events, 6);
    }

    #[test]
    fn malformed_events_are_counted_and_ignored() {
        let s = stats_of(&[
            r#"{"choices":[{"delta":{"content":"a"}}]}"#,
            r#"{bad json"#,
            "",
            r#"{"choices":{"not":"an array"}}"#,
            r#"{"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[{"delta":{"content":"b"}}]}"#,
        ]);
        assert_eq!(s.text, "ab");
        assert_eq!(s.events, 6);
        assert!(!s.saw_done && s.error.is_none());
    }

    #[test]
    fn error_payloads() {
        let s = stats_of(&[
            r#"{"error":{"message":"Rate limit","type":"rate_limit_error","code":"429"}}"#,
        ]);
        assert_eq!(s.error.as_deref(), Some("Rate limit"));
        let s = stats_of(&[r#"{"error":"model crashed"}"#]);
        assert_eq!(s.error.as_deref(), Some("model crashed"));
        let s = stats_of(&[r#"{"error":{"code":500}}"#]);
        assert_eq!(s.error.as_deref(), Some(r#"{"code":500}"#));
        let s = stats_of(&[r#"{"error":null,"choices":[]}"#]);
        assert_eq!(s.error, None);
    }

    #[test]
    fn non_streamed_completion() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            chat_response_stats(body),
            (Some(5), Some(7), "Hi \"there\"".to_string())
        );
        let tool_call = br#"{"choices":[{"message":{"content":null,"tool_calls":[]}}],"usage":{"prompt_tokens":5}}"#;
        assert_eq!(
            chat_response_stats(tool_call),
            (Some(5), None, String::new())
        );
        assert_eq!(
            chat_response_stats(b"not json"),
            (None, None, String::new())
        );
        assert_eq!(chat_response_stats(b"[]"), (None, None, String::new()));
    }

    #[test]
    fn the_error_event_parses_as_an_openai_error() {
        let mut out = Vec::new();
        write_openai_stream_error(
            &mut out,
            "upstream closed the connection\n\"mid-stream\"",
            "upstream_disconnected",
        );
        assert!(out.starts_with(b"data: {") && out.ends_with(b"}}\n\n"));
        let mut parser = SseParser::new(1024);
        let mut events = Vec::new();
        parser.feed(&out, |e| events.push(e.data.to_vec())).unwrap();
        assert_eq!(events.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&events[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "upstream closed the connection\n\"mid-stream\"",
                "type": "upstream_error",
                "code": "upstream_disconnected"
            }})
        );
        let mut stats = ChatStreamStats::default();
        stats.on_event(&events[0]);
        assert_eq!(
            stats.error.as_deref(),
            Some("upstream closed the connection\n\"mid-stream\"")
        );
    }
}
