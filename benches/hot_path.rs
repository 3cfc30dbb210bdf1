//! Criterion benchmarks of the request path's CPU work, through the crate's public API
//! (what each group measures and the figures: `docs/benches.md`).
//!
//! - `head`: `http::parse_request_head` on an OpenAI-SDK and a Claude-Code request head.
//! - `json`: `json::parse_chat_request` (simd-json) against `serde_json` baselines that
//!   extract the same fields, `json::scan_top_level` and `json::splice_request`, on a
//!   0.2 KB and a 45 KB body.
//! - `classify`: `classify::KeywordClassifier` (one automaton) against lowercase-and-contains,
//!   at 10, 100 (the figures' config) and 10,000 keywords (10 tags), on 1 KB and 1 MB prompts.
//! - `route`: `route::resolve` over a five-rule chain and six providers from a real config.
//! - `sse`: `sse::SseParser::feed` + `sse::ChatStreamStats::on_event` over a 20-event stream.
//! - `pool`: `upstream::Conn::is_silent`, the check before a pooled connection is reused.
//!
//! `cargo bench --bench hot_path` measures (~2 minutes on 2 cores, plus the build);
//! `cargo bench --bench hot_path -- --test` runs each benchmark once (a smoke test).
//! Every input is generated deterministically, and each group checks at setup that the
//! router's code and its baseline compute the same answer before timing them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::borrow::Cow;
use std::fmt;
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use opensourcellmrouter::classify::{KeywordClassifier, TagSet};
use opensourcellmrouter::config;
use opensourcellmrouter::http::{self, HeadLimits, ParseStatus, RequestHead};
use opensourcellmrouter::json::{self as rjson, ChatRequestInfo};
use opensourcellmrouter::route::{self, Discovery, Rng, RouteInput};
use opensourcellmrouter::sse::{ChatStreamStats, SseParser};
use opensourcellmrouter::upstream::Conn;

// ---------------------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------------------

/// xorshift64*: deterministic pseudo-random numbers, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A pronounceable pseudo-word of 2–4 syllables (so keywords and prompt words share
/// prefixes and the automaton sees many partial matches, as with real words).
fn pseudo_word(rng: &mut XorShift) -> String {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
        "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"];
    const CODAS: &[&str] = &["", "", "", "n", "r", "s", "t", "l", "m", "ck", "nd", "st"];
    let mut w = String::new();
    for _ in 0..2 + rng.below(3) {
        w.push_str(ONSETS[rng.below(ONSETS.len())]);
        w.push_str(VOWELS[rng.below(VOWELS.len())]);
        w.push_str(CODAS[rng.below(CODAS.len())]);
    }
    w
}

const TAGS: usize = 10;

/// `(tag, keywords)` for 10 tags and `total` keywords, all distinct. The keywords of the
/// 10-keyword set are the first keyword of each tag of every larger set, so the same
/// prompt hits the same tags at every size.
fn keyword_tags(total: usize) -> Vec<(String, Vec<String>)> {
    let per_tag = total / TAGS;
    let mut rng = XorShift(0x6b65_7977_6f72_6473);
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::with_capacity(TAGS * 1000);
    while words.len() < TAGS * 1000 {
        let w = pseudo_word(&mut rng);
        if w.len() >= 5 && seen.insert(w.clone()) {
            words.push(w);
        }
    }
    (0..TAGS)
        .map(|t| {
            let kws = (0..per_tag).map(|i| words[i * TAGS + t].clone()).collect();
            (format!("tag{t}"), kws)
        })
        .collect()
}

/// The keywords that the prompts contain: the first keyword of tags 0, 1 and 2. Seven tags
/// stay unhit, so neither implementation can stop before the end of the text.
fn matching_keywords() -> Vec<String> {
    keyword_tags(TAGS)
        .into_iter()
        .take(3)
        .map(|(_, mut kws)| kws.swap_remove(0))
        .collect()
}

/// `len` bytes of prose-like ASCII: common English words, pseudo-words, punctuation and
/// newlines, with one of `hits` (in varied case) every 2 KB (every 256 B in 1 KB). Words
/// that contain a keyword of `avoid` are not used, so `hits` are the only matches.
fn prompt_text(len: usize, hits: &[String], avoid: &KeywordClassifier) -> String {
    const COMMON: &[&str] = &[
        "the", "a", "to", "of", "and", "in", "is", "that", "for", "it", "with", "as", "on", "this",
        "be", "function", "return", "value", "please", "could", "you", "write", "file", "test",
        "error", "should", "when", "from", "request", "model", "data", "code", "using", "output",
        "input", "line", "change", "make", "sure", "check",
    ];
    let mut rng = XorShift(0x7072_6f6d_7074_2121);
    let mut s = String::with_capacity(len + 64);
    let mut next_hit = 200.min(len / 2);
    let mut n_hit = 0;
    while s.len() < len {
        if s.len() >= next_hit {
            let kw = &hits[n_hit % hits.len()];
            let kw = match n_hit % 3 {
                0 => kw.clone(),
                1 => kw.to_ascii_uppercase(),
                _ => kw[..1].to_ascii_uppercase() + &kw[1..],
            };
            s.push_str(&kw);
            n_hit += 1;
            next_hit += (len / 4).min(2048);
        } else {
            let word = if rng.below(4) == 0 {
                pseudo_word(&mut rng)
            } else {
                COMMON[rng.below(COMMON.len())].to_string()
            };
            let mut hit = TagSet::new();
            avoid.scan(word.as_bytes(), &mut hit);
            if !hit.is_empty() {
                continue;
            }
            s.push_str(&word);
        }
        s.push_str(match rng.below(16) {
            0 => ". ",
            1 => ", ",
            2 => "\n",
            _ => " ",
        });
    }
    // Cut back to a word boundary, then pad with spaces to exactly `len` bytes.
    s.truncate(len);
    while s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        s.pop();
    }
    while s.len() < len {
        s.push(' ');
    }
    s
}

/// A realistic request head from the OpenAI Python SDK (16 fields).
const OPENAI_SDK_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n\
Host: 127.0.0.1:8090\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.54.4\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.4\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.12.3\r\n\
Authorization: Bearer sk-proj-3fQ9vX2mK8pL1nR7tY4wZ6bC0dE5gH3jA9sD2fG7hJ1kL4zX8cV6bN0mQ5wE3rT\r\n\
X-Stainless-Async: false\r\n\
x-stainless-retry-count: 0\r\n\
Content-Length: 207\r\n\
\r\n";

/// A Claude-Code-like request head (Anthropic TypeScript SDK, 23 fields, a long
/// `anthropic-beta` list).
const CLAUDE_CODE_HEAD: &[u8] = b"POST /v1/messages?beta=true HTTP/1.1\r\n\
host: 127.0.0.1:8090\r\n\
connection: keep-alive\r\n\
Accept: application/json\r\n\
X-Stainless-Retry-Count: 0\r\n\
X-Stainless-Timeout: 600\r\n\
X-Stainless-Lang: js\r\n\
X-Stainless-Package-Version: 0.60.0\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: node\r\n\
X-Stainless-Runtime-Version: v22.17.0\r\n\
anthropic-dangerous-direct-browser-access: true\r\n\
anthropic-version: 2023-06-01\r\n\
authorization: Bearer sk-ant-oat01-Xk3mP9qR2sT7vW1yZ4bD6fH8jL0nQ5tV3xA7cE9gI2kM4oS6uW8yB1dF3hJ5lN7pR9tV\r\n\
x-app: cli\r\n\
User-Agent: claude-cli/1.0.98 (external, cli)\r\n\
content-type: application/json\r\n\
anthropic-beta: claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,context-1m-2025-08-07,context-management-2025-06-27,token-efficient-tools-2025-02-19,prompt-caching-2024-07-31\r\n\
x-stainless-helper-method: stream\r\n\
accept-language: *\r\n\
sec-fetch-mode: cors\r\n\
accept-encoding: gzip, deflate\r\n\
content-length: 45120\r\n\
\r\n";

/// A small chat request (~0.2 KB) with one plugin.
fn small_body() -> Vec<u8> {
    br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about the sea."}],"stream":true,"plugins":[{"id":"response-healing"}]}"#
        .to_vec()
}

/// A ~45 KB agent-style request: a long system prompt with newlines and quotes, 12 tools
/// with JSON schemas, then user / assistant (with tool calls) / tool turns until the body
/// reaches 45 KB, one image part, two plugins.
fn agent_body() -> Vec<u8> {
    fn para(words: usize, rng: &mut XorShift) -> String {
        let mut p = String::new();
        for i in 0..words {
            if i > 0 {
                p.push_str(if rng.below(12) == 0 { ".\n" } else { " " });
            }
            p.push_str(&pseudo_word(rng));
        }
        p
    }
    let mut rng = XorShift(0x6167_656e_7421_2121);
    let system = format!(
        "You are an autonomous coding agent working in a repository.\n\n# Rules\n- Use the \"read_file\" tool before editing.\n- Never run `rm -rf`.\n\n{}",
        para(500, &mut rng)
    );
    let tools: Vec<Value> = (0..12)
        .map(|i| {
            json!({"type": "function", "function": {
                "name": format!("tool_{i}_{}", pseudo_word(&mut rng)),
                "description": para(30, &mut rng),
                "parameters": {"type": "object", "properties": {
                    "path": {"type": "string", "description": "Path relative to the repository root."},
                    "content": {"type": "string", "description": para(8, &mut rng)},
                    "line": {"type": "integer", "minimum": 1}
                }, "required": ["path"], "additionalProperties": false}
            }})
        })
        .collect();
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": [
            {"type": "text", "text": "Here is a screenshot of the failing test; fix the bug."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}}
        ]}),
    ];
    let mut body = Vec::new();
    for turn in 0.. {
        let call_id = format!("call_{turn:04}");
        messages.push(
            json!({"role": "assistant", "content": para(25, &mut rng), "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "read_file",
                 "arguments": format!("{{\"path\":\"src/{}.rs\"}}", pseudo_word(&mut rng))}}
            ]}),
        );
        messages.push(json!({"role": "tool", "tool_call_id": call_id,
            "content": format!("fn {}() {{\n    let x = \"{}\";\n}}\n{}", pseudo_word(&mut rng), pseudo_word(&mut rng), para(60, &mut rng))}));
        messages.push(json!({"role": "user", "content": para(20, &mut rng)}));
        body = serde_json::to_vec(&json!({
            "model": "claude-sonnet-4",
            "messages": messages,
            "tools": tools,
            "tool_choice": "auto",
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2,
            "plugins": [{"id": "pareto-router", "tier": "high"}, {"id": "response-healing"}],
        }))
        .expect("serializable");
        if body.len() >= 45_000 {
            break;
        }
    }
    body
}

/// A 20-event OpenAI chat stream: role chunk, 16 content chunks, finish chunk, usage
/// chunk (`include_usage`), `[DONE]`.
fn openai_stream() -> Vec<u8> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
            "created": 1_741_570_283, "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_06737a9306",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let words = [
        "The",
        " sea",
        " at",
        " dawn",
        ",",
        " grey",
        " waves",
        " fold",
        " into",
        " light",
        ";",
        " gulls",
        " write",
        " \"salt\"",
        " on",
        " wind",
    ];
    events.extend(
        words
            .iter()
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    events.push(json!({"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
        "created": 1_741_570_283, "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_06737a9306",
        "choices": [], "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}}));
    let mut out = Vec::new();
    for e in &events {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(e).expect("serializable"));
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Five rules, the last one resolving: prefix (no match), tag (not on the request), price
/// (nobody cheap enough), latency (nobody fast enough), fallback (resolves); six providers.
const ROUTE_TOML: &str = r#"
[[providers]]
name = "local"
format = "openai"
base_url = "http://127.0.0.1:9001/v1"
cost_per_1m_tokens = 0.5
quality = 60
latency_ms = 900
[[providers]]
name = "vllm"
format = "openai"
base_url = "http://127.0.0.1:9002/v1"
cost_per_1m_tokens = 0.8
quality = 70
latency_ms = 400
[[providers]]
name = "openai"
format = "openai"
base_url = "http://127.0.0.1:9003/v1"
cost_per_1m_tokens = 5.0
quality = 90
latency_ms = 700
[[providers]]
name = "anthropic"
format = "anthropic"
base_url = "http://127.0.0.1:9004"
cost_per_1m_tokens = 15.0
quality = 95
latency_ms = 900
[[providers]]
name = "cloudflare"
format = "openai"
base_url = "http://127.0.0.1:9005/v1"
cost_per_1m_tokens = 0.2
quality = 80
latency_ms = 300
[[providers]]
name = "xai"
format = "openai"
base_url = "http://127.0.0.1:9006/v1"
cost_per_1m_tokens = 5.0
quality = 88
latency_ms = 500

[[routers]]
type = "prefix"
model_prefix = "local/"
provider = "local"
rewrite_model = "llama3.2-3b"

[[routers]]
type = "tag"
tag = "vision"
provider = "openai"
rewrite_model = "gpt-4o-mini"

[[routers]]
type = "price"
providers = ["local", "vllm", "cloudflare"]
max_cost_per_1m_tokens = 0.1

[[routers]]
type = "latency"
providers = ["openai", "anthropic", "xai"]
max_latency_ms = 200

[[routers]]
type = "fallback"
quality_bias = 0.7
"#;

// ---------------------------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------------------------

/// What both JSON baselines extract: the fields of [`ChatRequestInfo`] that routing reads
/// (the member spans `top` and `messages_json` have no serde equivalent).
#[derive(Debug, Default, PartialEq)]
struct Extracted {
    model: String,
    stream: bool,
    include_usage: bool,
    plugins: Vec<(String, Map<String, Value>)>,
    system: String,
    text: String,
    texts: Vec<std::ops::Range<usize>>,
    has_images: bool,
    has_tools: bool,
}

impl Extracted {
    fn from_info(info: &ChatRequestInfo) -> Self {
        Extracted {
            model: info.model.clone(),
            stream: info.stream,
            include_usage: info.include_usage,
            plugins: info
                .plugins
                .iter()
                .map(|p| (p.id.clone(), p.settings.clone()))
                .collect(),
            system: info.system.clone(),
            text: info.text.clone(),
            texts: info.texts.clone(),
            has_images: info.has_images,
            has_tools: info.has_tools,
        }
    }

    fn push_text(&mut self, s: &str, system: bool) {
        if s.is_empty() {
            return;
        }
        let start = self.text.len();
        self.text.push_str(s);
        self.texts.push(start..self.text.len());
        if system {
            if !self.system.is_empty() {
                self.system.push('\n');
            }
            self.system.push_str(s);
        }
    }
}

/// serde_json baseline 1: derived structs that borrow strings from the body (no copy
/// unless escaped) and skip unneeded values with `IgnoredAny`; the strongest serde
/// baseline for the job.
mod derive {
    use super::*;

    #[derive(Deserialize)]
    pub struct Request<'a> {
        #[serde(borrow)]
        model: Cow<'a, str>,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        stream_options: Option<StreamOptions>,
        #[serde(default)]
        plugins: Option<Vec<Plugin>>,
        #[serde(borrow)]
        messages: Vec<Message<'a>>,
        #[serde(default)]
        tools: Option<Vec<IgnoredAny>>,
        #[serde(default)]
        functions: Option<Vec<IgnoredAny>>,
    }

    #[derive(Deserialize)]
    struct StreamOptions {
        #[serde(default)]
        include_usage: Option<bool>,
    }

    #[derive(Deserialize)]
    struct Plugin {
        id: String,
        #[serde(flatten)]
        settings: Map<String, Value>,
    }

    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        role: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        content: Option<Content<'a>>,
    }

    /// A string, or an array of parts (a hand-written visitor: `#[serde(untagged)]` would
    /// buffer every content into an intermediate tree first).
    enum Content<'a> {
        Text(Cow<'a, str>),
        Parts(Vec<Part<'a>>),
        Other,
    }

    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Content<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string or an array of content parts")
                }
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                    Ok(Content::Text(Cow::Borrowed(s)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                    Ok(Content::Text(Cow::Owned(s.to_owned())))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                    Ok(Content::Text(Cow::Owned(s)))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(Content::Other)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut parts = Vec::new();
                    while let Some(p) = seq.next_element()? {
                        parts.push(p);
                    }
                    Ok(Content::Parts(parts))
                }
            }
            d.deserialize_any(V)
        }
    }

    pub fn extract(body: &[u8]) -> Extracted {
        let r: Request<'_> = serde_json::from_slice(body).expect("valid request");
        let mut out = Extracted {
            model: r.model.into_owned(),
            stream: r.stream.unwrap_or(false),
            include_usage: r
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            plugins: r
                .plugins
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.id, p.settings))
                .collect(),
            has_tools: r.tools.or(r.functions).is_some_and(|t| !t.is_empty()),
            ..Extracted::default()
        };
        for m in &r.messages {
            let system = matches!(m.role.as_deref(), Some("system" | "developer"));
            match &m.content {
                Some(Content::Text(s)) => out.push_text(s, system),
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        match (p.kind.as_deref(), &p.text) {
                            (Some("text" | "input_text" | "output_text"), Some(t)) => {
                                out.push_text(t, system)
                            }
                            (Some("image_url" | "input_image"), _) => out.has_images = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// serde_json baseline 2: parse into a `serde_json::Value` tree, then walk it (what a
/// router that keeps the request as a `Value` pays).
fn extract_value(body: &[u8]) -> Extracted {
    let v: Value = serde_json::from_slice(body).expect("valid request");
    let mut out = Extracted {
        model: v["model"].as_str().expect("model").to_owned(),
        stream: v["stream"].as_bool().unwrap_or(false),
        include_usage: v["stream_options"]["include_usage"] == Value::Bool(true),
        has_tools: v
            .get("tools")
            .or(v.get("functions"))
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        ..Extracted::default()
    };
    for p in v["plugins"].as_array().into_iter().flatten() {
        let mut settings = p.as_object().cloned().unwrap_or_default();
        let id = settings
            .remove("id")
            .and_then(|id| id.as_str().map(str::to_owned));
        out.plugins.push((id.expect("plugin id"), settings));
    }
    for m in v["messages"].as_array().into_iter().flatten() {
        let system = matches!(m["role"].as_str(), Some("system" | "developer"));
        match &m["content"] {
            Value::String(s) => out.push_text(s, system),
            Value::Array(parts) => {
                for p in parts {
                    match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text" | "input_text" | "output_text"), Some(t)) => {
                            out.push_text(t, system)
                        }
                        (Some("image_url" | "input_image"), _) => out.has_images = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The keyword baseline: lowercase the text once, then `str::contains` for every keyword
/// of every tag not hit yet (a tag stops at its first hit). Returns the hit tags as bits.
struct NaiveClassifier {
    tags: Vec<Vec<String>>,
}

impl NaiveClassifier {
    fn new(tags: &[(String, Vec<String>)]) -> Self {
        NaiveClassifier {
            tags: tags
                .iter()
                .map(|(_, kws)| kws.iter().map(|k| k.to_lowercase()).collect())
                .collect(),
        }
    }

    fn scan(&self, text: &str) -> u64 {
        let lower = text.to_lowercase();
        let mut hits = 0u64;
        for (t, kws) in self.tags.iter().enumerate() {
            if kws.iter().any(|k| lower.contains(k.as_str())) {
                hits |= 1 << t;
            }
        }
        hits
    }
}

fn tag_bits(set: &TagSet) -> u64 {
    set.iter().fold(0, |bits, t| bits | 1 << t)
}

// ---------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------

fn bench_head(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let mut g = c.benchmark_group("head");
    for (name, head) in [
        ("openai_sdk", OPENAI_SDK_HEAD),
        ("claude_code", CLAUDE_CODE_HEAD),
    ] {
        match http::parse_request_head(head, &limits) {
            Ok(ParseStatus::Complete(h)) => assert_eq!(h.head_len, head.len(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(BenchmarkId::new("parse_request_head", name), |b| {
            b.iter(|| http::parse_request_head(black_box(head), &limits))
        });
        // What a connection that reuses its head (and the headers' Vec) pays.
        let mut reused = RequestHead::default();
        g.bench_function(BenchmarkId::new("parse_request_head_into", name), |b| {
            b.iter(|| http::parse_request_head_into(black_box(head), &limits, &mut reused))
        });
    }
    g.finish();
}

fn bench_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    for (name, body) in [("small", small_body()), ("agent_45k", agent_body())] {
        let mut scratch = Vec::new();
        let info = rjson::parse_chat_request(&body, &mut scratch).expect("valid request");
        let want = Extracted::from_info(&info);
        assert_eq!(
            derive::extract(&body),
            want,
            "{name}: derive baseline differs"
        );
        assert_eq!(extract_value(&body), want, "{name}: Value baseline differs");
        assert!(!info.plugins.is_empty() && info.stream, "{name}");
        if name == "agent_45k" {
            assert!(info.has_tools && info.has_images && body.len() >= 45_000);
        }

        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(BenchmarkId::new("parse_chat_request_simd", name), |b| {
            b.iter(|| rjson::parse_chat_request(black_box(&body), &mut scratch))
        });
        g.bench_function(BenchmarkId::new("serde_json_derive", name), |b| {
            b.iter(|| derive::extract(black_box(&body)))
        });
        g.bench_function(BenchmarkId::new("serde_json_value", name), |b| {
            b.iter(|| extract_value(black_box(&body)))
        });

        // The member spans `splice_request` needs: `parse_chat_request` returns them; a
        // serde-based path would need this separate pass on top of its parse.
        assert_eq!(rjson::scan_top_level(&body).expect("valid"), info.top);
        g.bench_function(BenchmarkId::new("scan_top_level", name), |b| {
            b.iter(|| rjson::scan_top_level(black_box(&body)))
        });

        let mut out = Vec::with_capacity(body.len() + 64);
        rjson::splice_request(&body, &info.top, Some("gpt-4.1-mini"), &mut out);
        let spliced: Value = serde_json::from_slice(&out).expect("spliced body is JSON");
        assert!(spliced.get("plugins").is_none() && spliced["model"] == "gpt-4.1-mini");
        g.bench_function(BenchmarkId::new("splice_request", name), |b| {
            b.iter(|| {
                out.clear();
                rjson::splice_request(black_box(&body), &info.top, Some("gpt-4.1-mini"), &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn bench_classify(c: &mut Criterion) {
    let hits = matching_keywords();
    let avoid = KeywordClassifier::new(&keyword_tags(10_000)).expect("automaton");
    let mut g = c.benchmark_group("classify");
    for keywords in [10, 100, 10_000] {
        let tags = keyword_tags(keywords);
        assert_eq!(tags.iter().map(|(_, k)| k.len()).sum::<usize>(), keywords);
        let automaton = KeywordClassifier::new(&tags).expect("automaton");
        eprintln!(
            "classify: {keywords} keywords, automaton {} KiB",
            automaton.memory_usage() / 1024
        );
        let naive = NaiveClassifier::new(&tags);
        for (size_name, len) in [("1KB", 1024), ("1MB", 1 << 20)] {
            let text = prompt_text(len, &hits, &avoid);
            assert_eq!(text.len(), len);
            let mut set = TagSet::new();
            automaton.scan(text.as_bytes(), &mut set);
            assert_eq!(tag_bits(&set), 0b111, "{keywords} keywords, {size_name}");
            assert_eq!(naive.scan(&text), 0b111, "{keywords} keywords, {size_name}");

            if len > 1 << 16 {
                g.sample_size(20).sampling_mode(SamplingMode::Flat);
            } else {
                g.sample_size(100).sampling_mode(SamplingMode::Auto);
            }
            g.measurement_time(Duration::from_secs(2));
            g.throughput(Throughput::Bytes(len as u64));
            let param = format!("{keywords}kw/{size_name}");
            g.bench_function(BenchmarkId::new("automaton", &param), |b| {
                b.iter(|| {
                    set.clear();
                    automaton.scan(black_box(text.as_bytes()), &mut set);
                    black_box(&set);
                })
            });
            if keywords * len > 1 << 30 {
                // ~0.35 s an iteration: room for the 20 samples without a warning.
                g.measurement_time(Duration::from_secs(8));
            }
            g.bench_function(BenchmarkId::new("lowercase_contains", &param), |b| {
                b.iter(|| naive.scan(black_box(&text)))
            });
        }
    }
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let cfg = config::from_str(ROUTE_TOML, "bench", &|_| None).expect("valid config");
    assert_eq!((cfg.providers.len(), cfg.routers.len()), (6, 5));
    let discovery = Discovery::empty(cfg.providers.len());
    let tags = ["code"];
    let input = RouteInput {
        model: "gpt-4o-mini",
        tags: &tags,
        needs_vision: false,
        needs_tools: true,
        exclude: &[],
    };
    let mut rng = Rng::new(1);
    let d = route::resolve(&cfg.routers, &cfg.providers, &discovery, &input, &mut rng)
        .expect("the fallback resolves");
    assert_eq!(d.rule_index, 4);
    // Fallback (bias 0.7): anthropic, 0.7 * 95 - 0.3 * 15 = 62.
    assert_eq!(cfg.providers[d.provider].name, "anthropic");

    let mut g = c.benchmark_group("route");
    g.bench_function("resolve_5_rules_6_providers", |b| {
        b.iter(|| {
            route::resolve(
                &cfg.routers,
                &cfg.providers,
                &discovery,
                black_box(&input),
                &mut rng,
            )
        })
    });
    g.finish();
}

fn bench_sse(c: &mut Criterion) {
    let stream = openai_stream();
    let run = |piece: usize| {
        let mut parser = SseParser::new(16 << 20);
        let mut stats = ChatStreamStats::default();
        for p in stream.chunks(piece) {
            parser
                .feed(black_box(p), |ev| stats.on_event(ev.data))
                .expect("within limits");
        }
        stats
    };
    let whole = run(stream.len());
    assert_eq!(whole, run(64));
    assert_eq!(whole.events, 20);
    assert!(whole.saw_done);
    assert_eq!(
        (whole.input_tokens, whole.output_tokens),
        (Some(1117), Some(46))
    );
    assert_eq!(whole.finish_reason.as_deref(), Some("stop"));
    assert!(whole.text.starts_with("The sea at dawn"));

    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("openai_20_events/whole", |b| b.iter(|| run(stream.len())));
    g.bench_function("openai_20_events/64B_pieces", |b| b.iter(|| run(64)));
    g.finish();
}

/// `pool`: `upstream::Conn::is_silent`, the check a pooled upstream connection
/// passes before it is reused (one non-blocking `MSG_PEEK` recv on an idle
/// loopback TCP socket), against a no-op baseline.
fn bench_pool(c: &mut Criterion) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("a monoio runtime");
    rt.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let conn = Conn::Plain(monoio::net::TcpStream::from_std(client).unwrap());
        assert!(conn.is_silent(), "an idle connection is silent");
        let mut g = c.benchmark_group("pool");
        g.bench_function("silence_check", |b| b.iter(|| black_box(conn.is_silent())));
        g.bench_function("no_check", |b| b.iter(|| black_box(&conn)));
        g.finish();
        // And the check sees what an upstream sends while the connection idles.
        std::io::Write::write_all(&mut server, b"HTTP/1.1 408 Request Timeout\r\n\r\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while conn.is_silent() {
            assert!(std::time::Instant::now() < deadline, "408 not seen");
            std::thread::yield_now();
        }
    });
}

/// `balance`: choosing one of three endpoints — least outstanding (two
/// random choices), round robin, prefix affinity (the ring walk with its
/// load bound) — and hashing a 4 KB prompt prefix for the affinity key.
fn bench_balance(c: &mut Criterion) {
    use opensourcellmrouter::config::Balance;
    use opensourcellmrouter::upstream::balance::{Cand, Ring, choose, hash_bytes};
    let cands = [
        Cand {
            load: 3,
            max: 0,
            usable: true,
            tried: false,
        },
        Cand {
            load: 1,
            max: 0,
            usable: true,
            tried: false,
        },
        Cand {
            load: 2,
            max: 8,
            usable: true,
            tried: false,
        },
    ];
    let ring = Ring::new(&[
        "http://10.0.0.1:8000/v1",
        "http://10.0.0.2:8000/v1",
        "http://10.0.0.3:8000/v1",
    ]);
    let rr = std::cell::Cell::new(0);
    let mut rng = opensourcellmrouter::route::Rng::new(7);
    let prompt = "You are a careful assistant. ".repeat(150);
    let key = hash_bytes(0, &prompt.as_bytes()[..4096]);
    let mut g = c.benchmark_group("balance");
    g.bench_function("least_outstanding_3", |b| {
        b.iter(|| {
            black_box(choose(
                Balance::LeastOutstanding,
                &cands,
                None,
                None,
                &rr,
                &mut rng,
            ))
        })
    });
    g.bench_function("round_robin_3", |b| {
        b.iter(|| {
            black_box(choose(
                Balance::RoundRobin,
                &cands,
                None,
                None,
                &rr,
                &mut rng,
            ))
        })
    });
    g.bench_function("prefix_affinity_3", |b| {
        b.iter(|| {
            black_box(choose(
                Balance::PrefixAffinity,
                &cands,
                Some(black_box(key)),
                Some(&ring),
                &rr,
                &mut rng,
            ))
        })
    });
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("affinity_key_4KB", |b| {
        b.iter(|| black_box(hash_bytes(0, black_box(&prompt.as_bytes()[..4096]))))
    });
    g.finish();
}

/// `metrics`: what one finished chat request costs the worker in `/metrics`
/// bookkeeping — the series lookups (worker-local map) and their updates.
fn bench_metrics(c: &mut Criterion) {
    use opensourcellmrouter::observe::metrics::{LocalMetrics, Metric};
    let m = LocalMetrics::new();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_counter", |b| {
        b.iter(|| {
            m.series(
                Metric::Requests,
                &[
                    ("provider", "local"),
                    ("model", black_box("llama-3.1-8b-instruct")),
                    ("client_format", "openai"),
                    ("status", "200"),
                ],
            )
            .add(1)
        })
    });
    g.bench_function("histogram_observe", |b| {
        b.iter(|| {
            m.series(
                Metric::OperationDuration,
                &[("gen_ai_operation_name", "chat"), ("provider", "local")],
            )
            .observe(black_box(0.42))
        })
    });
    g.finish();
}

/// 1 s warm-up, 2 s measurement. Plots are off (with the plotters backend they cost ~4 s
/// per benchmark here, more than the measurement); `HOT_PATH_PLOTS=1` turns them on for
/// the HTML report in `target/criterion/report/`.
fn config() -> Criterion {
    let c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    if std::env::var_os("HOT_PATH_PLOTS").is_some_and(|v| v == "1") {
        c
    } else {
        c.without_plots()
    }
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = bench_head, bench_json, bench_classify, bench_route, bench_sse, bench_pool, bench_balance, bench_metrics
}
criterion_main!(hot_path);
