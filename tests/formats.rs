//! Cross-format and same-format routes for every client format
//! (chat completions, Anthropic Messages, Responses), against fake
//! upstreams speaking OpenAI chat, Anthropic and Ollama's native API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use common::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 1
[logging]
enabled = true
path = "{{LOG}}"

[[providers]]
name = "oa"
format = "openai"
base_url = "http://{addr}/v1"
api_key_env = "OSR_T_OA"

[[providers]]
name = "anth"
format = "anthropic"
base_url = "http://{addr}"
api_key_env = "OSR_T_ANTH"

[[providers]]
name = "oll"
format = "ollama"
base_url = "http://{addr}"

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "prefix"
model_prefix = "gpt-"
provider = "oa"
[[routers]]
type = "prefix"
model_prefix = "claude-"
provider = "anth"
[[routers]]
type = "prefix"
model_prefix = "llama"
provider = "oll"
[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"
"#,
        addr = up.addr
    )
}

fn start(name: &str, up: &Upstream) -> Router {
    Router::start_with_env(
        name,
        &config(up),
        &[("OSR_T_OA", "sk-oa"), ("OSR_T_ANTH", "sk-anth")],
    )
}

const OPENAI_REPLY: &str = r#"{"id":"chatcmpl-9","object":"chat.completion","created":5,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;

const ANTHROPIC_REPLY: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hello from claude"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":11,"output_tokens":4}}"#;

fn sse_events(body: &str) -> Vec<(Option<String>, serde_json::Value)> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .filter_map(|frame| {
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data == "[DONE]" {
                return Some((event, serde_json::Value::String("[DONE]".into())));
            }
            serde_json::from_str(&data).ok().map(|v| (event, v))
        })
        .collect()
}

#[test]
fn anthropic_passthrough_keeps_bytes_headers_query_and_errors() {
    let up = Upstream::start();
    up.push(json_reply(200, ANTHROPIC_REPLY));
    let err = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    up.push(json_reply(529, err));
    let router = start("anth-pass", &up);
    let body = r#"{"model":"claude-x","max_tokens":64,"thinking":{"type":"adaptive"},"metadata":{"user_id":"u"},"system":[{"type":"text","text":"Be brief","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: a\r\nx-api-key: client-key\r\nanthropic-version: 2023-06-01\r\nanthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (resp, _) = raw(&router, req.as_bytes());
    let resp = resp.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), ANTHROPIC_REPLY, "provider bytes unchanged");
    assert_eq!(resp.header("x-router-provider"), Some("anth"));
    assert_eq!(resp.header("x-router-input-tokens"), Some("11"));
    let sent = &up.requests()[0];
    assert_eq!(sent.path, "/v1/messages?beta=true");
    assert_eq!(sent.body, body.as_bytes(), "client bytes unchanged");
    assert_eq!(sent.header("x-api-key"), Some("sk-anth"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
    // An upstream error comes back unmodified, same status.
    let resp = post(
        &router,
        "/v1/messages",
        body,
        &[("authorization", "Bearer client")],
    );
    assert_eq!(resp.status, 529);
    assert_eq!(resp.text(), err);
}

#[test]
fn anthropic_client_to_openai_provider_plain_and_streaming() {
    let up = Upstream::start();
    up.push(json_reply(200, OPENAI_REPLY));
    let router = start("anth-to-oa", &up);
    let body = r#"{"model":"gpt-x","max_tokens":64,"system":"Be brief","thinking":{"type":"enabled","budget_tokens":1024},"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]}"#;
    let resp = post(
        &router,
        "/v1/messages",
        body,
        &[("anthropic-version", "2023-06-01")],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], "Hi there");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["output_tokens"], 3);
    let sent = up.requests()[0].clone();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-oa"));
    let sent = sent.json();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "Be brief");
    assert!(
        sent.get("thinking").is_none(),
        "Anthropic-only fields are dropped: {sent}"
    );
    assert!(!sent.to_string().contains("cache_control"));

    // Streaming: OpenAI chunks in, Anthropic events (with event: lines) out.
    let c = |s: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{s}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    };
    let fin = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    let usage = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
    let (a, b) = (c("Hel"), c("lo"));
    up.push(sse_reply(&[&a, &b, fin, usage, "data: [DONE]\n\n"]));
    let stream_body = body.replace("\"max_tokens\":64", "\"max_tokens\":64,\"stream\":true");
    let resp = post(&router, "/v1/messages", &stream_body, &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&resp.text());
    let names: Vec<String> = events
        .iter()
        .map(|(e, _)| e.clone().unwrap_or_default())
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.contains(&"content_block_delta".to_string()));
    let text: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .map(|(_, v)| v["delta"]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, "Hello");
    let delta = events
        .iter()
        .find(|(e, _)| e.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta.1["usage"]["output_tokens"], 2);
    assert!(up.requests()[1].json()["stream"] == true);
    let lines = router.log_lines(2);
    assert_eq!(lines[1]["response"], "Hello");
    assert_eq!(lines[1]["output_tokens"], 2);
}

#[test]
fn openai_errors_are_translated_into_the_anthropic_shape_with_the_same_status() {
    let up = Upstream::start();
    up.push(json_reply(429, r#"{"error":{"message":"Rate limit reached for gpt-x","type":"requests","code":"rate_limit_exceeded"}}"#));
    let router = start("err-translate", &up);
    let resp = post(
        &router,
        "/v1/messages",
        r#"{"model":"gpt-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 429);
    let v = resp.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["message"], "Rate limit reached for gpt-x");
}

#[test]
fn responses_client_to_openai_and_ollama_providers() {
    let up = Upstream::start();
    up.push(json_reply(200, OPENAI_REPLY));
    let router = start("responses", &up);
    let resp = post(
        &router,
        "/v1/responses",
        r#"{"model":"gpt-x","instructions":"Be brief","input":"hi","store":false}"#,
        &[],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hi there");
    let sent = up.requests()[0].json();
    assert_eq!(sent["messages"][0]["content"], "Be brief");

    // previous_response_id: a clear 400, nothing sent upstream.
    let resp = post(
        &router,
        "/v1/responses",
        r#"{"model":"gpt-x","input":"hi","previous_response_id":"resp_1"}"#,
        &[],
    );
    assert_eq!(resp.status, 400);
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("previous_response_id")
    );
    assert_eq!(up.requests().len(), 1);

    // Streaming from Ollama's NDJSON: the stream ends with response.completed.
    let lines = [
        r#"{"model":"llama3","created_at":"2026-11-21T08:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
        r#"{"model":"llama3","created_at":"2026-11-21T08:00:00Z","message":{"role":"assistant","content":"lo"},"done":false}"#,
        r#"{"model":"llama3","created_at":"2026-11-21T08:00:01Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":4,"eval_count":2}"#,
    ];
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
    for l in lines {
        let l = format!("{l}\n");
        pieces.push(format!("{:x}\r\n{l}\r\n", l.len()).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    up.push(Reply::Pieces(pieces));
    let resp = post(
        &router,
        "/v1/responses",
        r#"{"model":"llama3","input":"hi","stream":true}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    let events = sse_events(&resp.text());
    let types: Vec<&str> = events
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types.first(), Some(&"response.created"));
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
    for (i, (e, v)) in events.iter().enumerate() {
        assert_eq!(v["sequence_number"], i as u64);
        assert_eq!(e.as_deref(), v["type"].as_str());
    }
    let done = &events.last().unwrap().1;
    assert_eq!(done["response"]["usage"]["output_tokens"], 2);
    let sent = up.requests()[1].clone();
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.json()["stream"], true);
}

#[test]
fn chat_client_to_anthropic_provider_and_mid_stream_failure() {
    let up = Upstream::start();
    up.push(json_reply(200, ANTHROPIC_REPLY));
    let router = start("chat-to-anth", &up);
    let body = r#"{"model":"claude-x","messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object"}}}}"#;
    let resp = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from claude");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    let sent = up.requests()[0].clone();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-anth"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    let sent = sent.json();
    assert_eq!(sent["system"], "sys");
    assert!(sent["max_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        sent["output_config"]["format"]["schema"]["type"], "object",
        "{sent}"
    );

    // The Anthropic upstream dies after message_start: the chat client gets an error event, no [DONE].
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n";
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    up.push(Reply::PiecesThenClose(vec![
        head,
        format!("{:x}\r\n{start}\r\n", start.len()).into_bytes(),
    ]));
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"claude-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let events = sse_events(&text);
    assert!(events.last().unwrap().1.get("error").is_some(), "{text}");
}

#[test]
fn count_tokens_goes_to_anthropic_providers_only() {
    let up = Upstream::start();
    up.push(json_reply(200, r#"{"input_tokens":42}"#));
    let router = start("count", &up);
    let body = r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = post(&router, "/v1/messages/count_tokens", body, &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["input_tokens"], 42);
    assert_eq!(up.requests()[0].path, "/v1/messages/count_tokens");
    let resp = post(
        &router,
        "/v1/messages/count_tokens",
        r#"{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["type"], "error");
    let resp = post(
        &router,
        "/v1/messages/count_tokens",
        r#"{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 400, "never a fake count");
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn mock_answers_in_every_client_format() {
    let up = Upstream::start();
    let router = start("mock-formats", &up);
    let m = post(
        &router,
        "/v1/messages",
        r#"{"model":"mock-1","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["type"], "message");
    let r = post(
        &router,
        "/v1/responses",
        r#"{"model":"mock-1","input":"hi"}"#,
        &[],
    );
    assert_eq!(r.json()["object"], "response");
    let s = post(
        &router,
        "/v1/messages",
        r#"{"model":"mock-1","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    let events = sse_events(&s.text());
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
    let s = post(
        &router,
        "/v1/responses",
        r#"{"model":"mock-1","stream":true,"input":"hi"}"#,
        &[],
    );
    let events = sse_events(&s.text());
    assert_eq!(events.last().unwrap().1["type"], "response.completed");
}

#[test]
fn content_the_canonical_model_cannot_carry_still_passes_through_same_format() {
    let up = Upstream::start();
    up.push(json_reply(200, ANTHROPIC_REPLY));
    let router = start("document", &up);
    let body = r#"{"model":"claude-x","max_tokens":64,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}},{"type":"text","text":"summarize"}]}]}"#;
    let resp = post(&router, "/v1/messages", body, &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.requests()[0].body, body.as_bytes());
    // The same content cannot be translated for an OpenAI provider: a clear 400, nothing sent.
    let resp = post(
        &router,
        "/v1/messages",
        &body.replace("claude-x", "gpt-x"),
        &[],
    );
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["type"], "error");
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'oa'")
    );
    assert_eq!(up.requests().len(), 1);
}
