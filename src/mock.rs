//! The built-in `mock` provider (docs/providers.md, "mock"): answers inside the router, with no
//! network, in the caller's wire format. Its text and usage are
//! deterministic; `latency_ms` delays the first byte and
//! `throughput_tokens_per_sec` paces the streamed tokens.
//!
//! This module only builds the bytes; the pipeline does the timing and writing.

use std::io::Write;

use crate::json::write_json_string;

/// The reply every mock request gets, one token per word.
pub const MOCK_TEXT: &str = "This is a mock response from opensourcellmrouter. \
It answered inside the router, without contacting any upstream.";

/// The reply split into the pieces streamed as separate events.
pub fn tokens() -> impl Iterator<Item = &'static str> {
    MOCK_TEXT.split_inclusive(' ')
}

/// Number of output tokens the mock reports.
pub fn output_tokens() -> u64 {
    tokens().count() as u64
}

/// Deterministic input-token estimate: one token per four bytes of prompt text.
pub fn input_tokens(prompt_bytes: usize) -> u64 {
    prompt_bytes.div_ceil(4) as u64
}

/// A non-streamed OpenAI chat completion.
pub fn chat_completion(out: &mut Vec<u8>, id: &str, created: u64, model: &str, input_tokens: u64) {
    let output = output_tokens();
    out.extend_from_slice(b"{\"id\":");
    write_json_string(out, id);
    let _ = write!(
        out,
        ",\"object\":\"chat.completion\",\"created\":{created},\"model\":"
    );
    write_json_string(out, model);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    write_json_string(out, MOCK_TEXT);
    let _ = write!(
        out,
        "}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{input_tokens},\"completion_tokens\":{output},\"total_tokens\":{}}}}}",
        input_tokens + output
    );
}

/// One `data: <chunk>\n\n` event of an OpenAI chat stream. `delta` is the raw
/// JSON of the delta object; `finish` the finish reason of the last chunk.
pub fn chat_chunk(
    out: &mut Vec<u8>,
    id: &str,
    created: u64,
    model: &str,
    delta: &str,
    finish: Option<&str>,
) {
    out.extend_from_slice(b"data: {\"id\":");
    write_json_string(out, id);
    let _ = write!(
        out,
        ",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":"
    );
    write_json_string(out, model);
    out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
    out.extend_from_slice(delta.as_bytes());
    out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
    match finish {
        Some(f) => write_json_string(out, f),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}]}\n\n");
}

/// A content delta `{"content":"..."}`.
pub fn content_delta(token: &str) -> String {
    let mut v = Vec::with_capacity(token.len() + 16);
    v.extend_from_slice(b"{\"content\":");
    write_json_string(&mut v, token);
    v.push(b'}');
    String::from_utf8(v).unwrap_or_default()
}

/// The usage chunk sent before `[DONE]` when `stream_options.include_usage` is set.
pub fn usage_chunk(out: &mut Vec<u8>, id: &str, created: u64, model: &str, input_tokens: u64) {
    let output = output_tokens();
    out.extend_from_slice(b"data: {\"id\":");
    write_json_string(out, id);
    let _ = write!(
        out,
        ",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":"
    );
    write_json_string(out, model);
    let _ = write!(
        out,
        ",\"choices\":[],\"usage\":{{\"prompt_tokens\":{input_tokens},\"completion_tokens\":{output},\"total_tokens\":{}}}}}\n\n",
        input_tokens + output
    );
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_is_valid_openai_json() {
        let mut out = Vec::new();
        chat_completion(&mut out, "chatcmpl-1", 7, "mock-1", 3);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "mock-1");
        assert_eq!(v["choices"][0]["message"]["content"], MOCK_TEXT);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], output_tokens());
    }

    #[test]
    fn stream_chunks_are_valid_and_rebuild_the_text() {
        let mut text = String::new();
        for t in tokens() {
            let mut out = Vec::new();
            chat_chunk(&mut out, "c", 1, "m", &content_delta(t), None);
            let data = out
                .strip_prefix(b"data: ")
                .unwrap()
                .strip_suffix(b"\n\n")
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(data).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(text, MOCK_TEXT);
        let mut out = Vec::new();
        usage_chunk(&mut out, "c", 1, "m", 2);
        let data = out
            .strip_prefix(b"data: ")
            .unwrap()
            .strip_suffix(b"\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 0);
        assert_eq!(v["usage"]["prompt_tokens"], 2);
    }
}
