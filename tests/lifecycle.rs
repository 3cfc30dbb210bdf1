//! The request lifecycle and plugins: every hook × Continue/Stop/error ×
//! plain/stream × the three client formats (with the test-only `probe`
//! plugin), the built-ins (`pareto-router`, `web`, `pdf`), the refusal
//! classifier on streams, and exactly one log line per request whatever
//! happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::*;

const PROBE_ENV: [(&str, &str); 1] = [("OPENSOURCELLMROUTER_TEST_PLUGINS", "1")];

/// One worker, the built-in mock provider, everything routed to it.
fn mock_config(extra: &str) -> String {
    let head = server_head("");
    format!(
        r#"
{head}
[[providers]]
name = "mock"
format = "mock"

{extra}

[[routers]]
type = "fallback"
"#
    )
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Chat,
    Messages,
    Responses,
}

impl Client {
    const ALL: [Client; 3] = [Client::Chat, Client::Messages, Client::Responses];

    fn path(self) -> &'static str {
        match self {
            Client::Chat => "/v1/chat/completions",
            Client::Messages => "/v1/messages",
            Client::Responses => "/v1/responses",
        }
    }

    fn body(self, stream: bool, plugins: &str) -> String {
        match self {
            Client::Chat => format!(
                r#"{{"model":"mock-1","messages":[{{"role":"user","content":"hi"}}],"stream":{stream},"plugins":{plugins}}}"#
            ),
            Client::Messages => format!(
                r#"{{"model":"mock-1","max_tokens":64,"messages":[{{"role":"user","content":"hi"}}],"stream":{stream},"plugins":{plugins}}}"#
            ),
            Client::Responses => format!(
                r#"{{"model":"mock-1","input":"hi","stream":{stream},"plugins":{plugins}}}"#
            ),
        }
    }

    /// The reply's text, decoded from the client's format (plain or SSE).
    fn text(self, r: &Response, stream: bool) -> String {
        if !stream {
            let v = r.json();
            return match self {
                Client::Chat => v["choices"][0]["message"]["content"].as_str(),
                Client::Messages => v["content"][0]["text"].as_str(),
                Client::Responses => v["output"][0]["content"][0]["text"].as_str(),
            }
            .unwrap_or_else(|| panic!("no text in {v}"))
            .to_string();
        }
        let mut out = String::new();
        for line in r.text().lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let piece = match self {
                Client::Chat => v["choices"][0]["delta"]["content"].as_str(),
                Client::Messages => (v["type"] == "content_block_delta")
                    .then(|| v["delta"]["text"].as_str())
                    .flatten(),
                Client::Responses => (v["type"] == "response.output_text.delta")
                    .then(|| v["delta"].as_str())
                    .flatten(),
            };
            out.push_str(piece.unwrap_or_default());
        }
        out
    }

    /// The message of an error reply in the client's shape.
    fn error_message(self, r: &Response) -> String {
        let v = r.json();
        if let Client::Messages = self {
            assert_eq!(v["type"], "error", "{v}");
        }
        v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {v}"))
            .to_string()
    }
}

const MOCK_TEXT_START: &str = "This is a mock response from opensourcellmrouter.";

#[test]
fn every_hook_continue_stop_error_reply_on_every_format_plain_and_streamed() {
    let router = Router::start_with_env("hooks", &mock_config(""), &PROBE_ENV);
    let mut requests = 0usize;
    for client in Client::ALL {
        for stream in [false, true] {
            let ctx = format!("{client:?} stream={stream}");
            let send = |plugins: &str| -> Response {
                post(&router, client.path(), &client.body(stream, plugins), &[])
            };
            for hook in ["on_start", "pre_request"] {
                // Continue: the provider answers.
                let r = send(&format!(r#"[{{"id":"probe","{hook}":"continue"}}]"#));
                assert_eq!(r.status, 200, "{ctx} {hook} continue: {}", r.text());
                assert!(
                    client.text(&r, stream).starts_with(MOCK_TEXT_START),
                    "{ctx}"
                );
                // Stop without a response: 500.
                let r = send(&format!(r#"[{{"id":"probe","{hook}":"stop"}}]"#));
                assert_eq!(r.status, 500, "{ctx} {hook} stop");
                assert_eq!(
                    client.error_message(&r),
                    "pipeline stopped without producing a response"
                );
                // An error: 500 naming the plugin.
                let r = send(&format!(r#"[{{"id":"probe","{hook}":"error"}}]"#));
                assert_eq!(r.status, 500, "{ctx} {hook} error");
                assert_eq!(
                    client.error_message(&r),
                    format!("plugin 'probe' failed: probe {hook} error")
                );
                // A response (with Continue, and with Stop): the client gets it, no provider.
                for action in ["reply", "reply-stop"] {
                    let r = send(&format!(r#"[{{"id":"probe","{hook}":"{action}"}}]"#));
                    assert_eq!(r.status, 200, "{ctx} {hook} {action}: {}", r.text());
                    assert_eq!(client.text(&r, stream), format!("probe reply from {hook}"));
                }
                requests += 5;
            }
            // post_response / on_end: errors are warnings, the reply stands.
            for (hooks, warning) in [
                (
                    r#""post_response":"error""#,
                    Some("plugin 'probe' post_response: probe post_response error"),
                ),
                (
                    r#""on_end":"error""#,
                    Some("plugin 'probe' on_end: probe on_end error"),
                ),
                // Stop in post_response skips the plugins' on_end.
                (r#""post_response":"stop","on_end":"error""#, None),
                (r#""post_response":"continue""#, None),
            ] {
                let r = send(&format!(r#"[{{"id":"probe",{hooks}}}]"#));
                assert_eq!(r.status, 200, "{ctx} {hooks}");
                assert!(
                    client.text(&r, stream).starts_with(MOCK_TEXT_START),
                    "{ctx}"
                );
                requests += 1;
                let line = router.log_lines(requests).pop().unwrap();
                match warning {
                    Some(w) => assert_eq!(line["warnings"], serde_json::json!([w]), "{ctx}"),
                    None => assert!(line.get("warnings").is_none(), "{ctx}: {line}"),
                }
                assert_eq!(line["plugins"], serde_json::json!(["probe"]));
            }
        }
    }
    // Exactly one line per request.
    let lines = router.log_lines(requests);
    assert_eq!(lines.len(), requests);
    // Skipped routing shows: no provider for the early replies.
    let early: Vec<_> = lines
        .iter()
        .filter(|l| l["status"] == 200 && l["provider"].is_null())
        .collect();
    assert_eq!(
        early.len(),
        3 * 2 * 2 * 2,
        "reply/reply-stop × 2 hooks × 2 × 3 formats"
    );
}

#[test]
fn a_plugin_forces_the_provider_and_skips_the_rule_chain() {
    let up = Upstream::start();
    let head = server_head("");
    let config = format!(
        r#"
{head}
[[providers]]
name = "mock"
format = "mock"

[[providers]]
name = "local"
format = "openai"
base_url = "{}"

[[routers]]
type = "fallback"
providers = ["mock"]
"#,
        up.base_url()
    );
    let router = Router::start_with_env("force", &config, &PROBE_ENV);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"plugins":[{"id":"probe","pre_request":"force:local"}]}"#;
    let r = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-router-provider"), Some("local"));
    assert_eq!(up.requests().len(), 1);
    // The model is unchanged and `plugins` is not forwarded.
    let sent = up.requests()[0].json();
    assert_eq!(sent["model"], "m");
    assert!(sent.get("plugins").is_none());
}

fn pareto_config(up: &Upstream, enabled: bool) -> String {
    let head = server_head("");
    format!(
        r#"
{head}
[[providers]]
name = "local"
format = "openai"
base_url = "{}"

[[providers]]
name = "mock"
format = "mock"

[[providers]]
name = "cloud"
format = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "NOT_SET_ANYWHERE_FOR_THIS_TEST"

[plugins.pareto-router]
enabled = {enabled}
default_tier = "medium"
tiers = {{ low = ["local"], medium = ["mock"], high = ["cloud", "local"] }}

[[routers]]
type = "prefix"
model_prefix = "gpt"
provider = "local"

[[routers]]
type = "fallback"
"#,
        up.base_url()
    )
}

#[test]
fn pareto_router_from_an_original_style_config() {
    let up = Upstream::start();
    let router = Router::start("pareto", &pareto_config(&up, true));
    let chat = |model: &str, plugins: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]{plugins}}}"#)
    };
    // The default tier wins over the rule chain (which would pick `local`).
    let r = post(&router, "/v1/chat/completions", &chat("gpt-4o", ""), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-router-provider"), Some("mock"));
    // Per-request tier.
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat(
            "gpt-4o",
            r#","plugins":[{"id":"pareto-router","tier":"low"}]"#,
        ),
        &[],
    );
    assert_eq!(r.header("x-router-provider"), Some("local"));
    assert_eq!(up.requests().len(), 1);
    // A tier whose first provider was skipped (no key) goes to the next one.
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat(
            "gpt-4o",
            r#","plugins":[{"id":"pareto-router","tier":"high"}]"#,
        ),
        &[],
    );
    assert_eq!(r.header("x-router-provider"), Some("local"));
    // An unknown tier: a plugin error listing the configured tiers.
    let r = post(
        &router,
        "/v1/messages",
        r#"{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"plugins":[{"id":"pareto-router","tier":"ultra"}]}"#,
        &[],
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["error"]["message"],
        "plugin 'pareto-router' failed: unknown tier 'ultra' (configured tiers: high, low, medium)"
    );
    let lines = router.log_lines(4);
    assert_eq!(lines[0]["plugins"], serde_json::json!(["pareto-router"]));
    assert_eq!(lines[3]["status"], 500);
}

#[test]
fn pareto_router_off_in_config_can_be_switched_on_per_request() {
    let up = Upstream::start();
    let router = Router::start("pareto-off", &pareto_config(&up, false));
    let r = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(r.header("x-router-provider"), Some("local"), "rule chain");
    // The request's entry turns it on, with the config's settings.
    let r = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"plugins":[{"id":"pareto-router"}]}"#,
        &[],
    );
    assert_eq!(
        r.header("x-router-provider"),
        Some("mock"),
        "default tier from config"
    );
}

#[test]
fn web_and_pdf_are_a_clear_400_in_the_endpoints_shape() {
    let router = Router::start("webpdf", &mock_config(""));
    for client in Client::ALL {
        for id in ["web", "pdf"] {
            let r = post(
                &router,
                client.path(),
                &client.body(false, &format!(r#"[{{"id":"{id}"}}]"#)),
                &[],
            );
            assert_eq!(r.status, 400, "{client:?} {id}");
            assert_eq!(
                client.error_message(&r),
                format!("plugin '{id}' is not supported by this router")
            );
        }
    }
    // Enabled in config: every request gets it.
    let router = Router::start(
        "webpdf-cfg",
        &mock_config("[plugins.web]\nenabled = true\n"),
    );
    let r = post(
        &router,
        "/v1/chat/completions",
        &Client::Chat.body(false, "[]"),
        &[],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "plugin_not_supported");
}

#[test]
fn unknown_plugin_id_is_a_400_naming_it() {
    let router = Router::start("unknown-plugin", &mock_config(""));
    for client in Client::ALL {
        let r = post(
            &router,
            client.path(),
            &client.body(false, r#"[{"id":"probe"}]"#),
            &[],
        );
        assert_eq!(
            r.status, 400,
            "the test-only plugin is unknown without its variable"
        );
        assert!(
            client
                .error_message(&r)
                .starts_with("unknown plugin 'probe' (known: ")
        );
    }
}

#[test]
fn refusal_phrase_split_across_stream_events_is_tagged() {
    let up = Upstream::start();
    up.push(sse_reply(&[
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Sorry, I cannot hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"p with that.\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ]));
    let config = basic_config(
        &up.base_url(),
        "[response_classifiers.refusal]\nenabled = true\n\n[[routers]]\ntype = \"fallback\"\n",
    );
    let router = Router::start("refusal-stream", &config);
    let r = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    let line = &router.log_lines(1)[0];
    assert_eq!(line["response_tags"], serde_json::json!(["refusal"]));
    assert_eq!(line["response"], "Sorry, I cannot help with that.");
}

#[test]
fn exactly_one_log_line_per_request_whatever_happened() {
    let up = Upstream::start();
    // 1: a provider reply; 2: a provider that dies mid-stream.
    up.push(json_reply(200, r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#));
    up.push(Reply::PiecesThenClose(vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec(),
        b"6\r\ndata: \r\n".to_vec(),
    ]));
    let config = basic_config(
        &up.base_url(),
        "[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"up\"\nprovider = \"up\"\n",
    );
    let router = Router::start_with_env("one-line", &config, &PROBE_ENV);
    let chat = |model: &str, extra: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
    };
    let mut expected = Vec::new();
    // Success.
    post(&router, "/v1/chat/completions", &chat("up-1", ""), &[]);
    expected.push(200);
    // Mid-stream failure.
    post(
        &router,
        "/v1/chat/completions",
        &chat("up-1", r#","stream":true"#),
        &[],
    );
    expected.push(200);
    // 4xx: no route; unknown plugin; bad JSON.
    post(&router, "/v1/chat/completions", &chat("nowhere", ""), &[]);
    post(
        &router,
        "/v1/chat/completions",
        &chat("up-1", r#","plugins":[{"id":"nope"}]"#),
        &[],
    );
    post(&router, "/v1/chat/completions", "{", &[]);
    expected.extend([400, 400, 400]);
    // Plugin stop.
    post(
        &router,
        "/v1/chat/completions",
        &chat("up-1", r#","plugins":[{"id":"probe","on_start":"stop"}]"#),
        &[],
    );
    expected.push(500);
    // 5xx: the provider is gone now (its connections closed): 502.
    drop(up);
    // Framing error.
    let (r, _) = raw(
        &router,
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    );
    assert_eq!(r.map(|r| r.status), Some(400));
    expected.push(400);
    // Body-read disconnect.
    let mut s = router.connect();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
        .unwrap();
    s.shutdown(Shutdown::Both).unwrap();
    expected.push(499);
    // A request after all of them, so a late duplicate would show.
    let r = get(&router, "/health");
    assert_eq!(r.status, 200);
    expected.push(200);
    let lines = router.log_lines(expected.len());
    let got: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    let mut want: Vec<u64> = expected.iter().map(|&s| s as u64).collect();
    // The disconnect is logged when the router sees it: order only among the rest.
    let (mut g, mut w) = (got.clone(), want.clone());
    g.sort_unstable();
    w.sort_unstable();
    assert_eq!(g, w, "{lines:#?}");
    assert_eq!(lines.last().unwrap()["path"], "/health");
    want.clear();
    // Nothing more arrives.
    let again = get(&router, "/health");
    assert_eq!(again.status, 200);
    assert_eq!(
        router.log_lines(expected.len() + 1).len(),
        expected.len() + 1
    );
}

fn completion_with(content: &str, tool_args: Option<&str>) -> String {
    let content = serde_json::to_string(content).unwrap();
    let calls = match tool_args {
        Some(a) => format!(
            r#","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":{}}}}}]"#,
            serde_json::to_string(a).unwrap()
        ),
        None => String::new(),
    };
    format!(
        r#"{{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":{content}{calls}}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#
    )
}

#[test]
fn response_healing_repairs_json_replies_and_tool_arguments_and_leaves_the_rest() {
    let up = Upstream::start();
    let config = basic_config(
        &up.base_url(),
        "[plugins.response-healing]\nenabled = true\n\n[[routers]]\ntype = \"fallback\"\n",
    );
    let router = Router::start("healing", &config);
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"json please"}]}"#;
    let anthropic =
        r#"{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"json please"}]}"#;
    let parsed = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();

    // A fenced reply with a trailing comma, same format: repaired.
    up.push(json_reply(
        200,
        &completion_with("```json\n{\"a\": 1, \"b\": [1, 2,],}\n```", None),
    ));
    let r = post(&router, "/v1/chat/completions", chat, &[]);
    let content = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        parsed(&content),
        Some(serde_json::json!({"a": 1, "b": [1, 2]})),
        "{content}"
    );

    // Truncated tool-call arguments: repaired into an object.
    up.push(json_reply(
        200,
        &completion_with("", Some("{\"city\": \"Paris")),
    ));
    let r = post(&router, "/v1/chat/completions", chat, &[]);
    let args = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        parsed(&args),
        Some(serde_json::json!({"city": "Paris"})),
        "{args}"
    );

    // Prose and valid JSON: the provider's bytes, unchanged.
    for content in ["Sure — here is a haiku about rivers.", "{\"ok\": true}"] {
        let body = completion_with(content, None);
        up.push(json_reply(200, &body));
        let r = post(&router, "/v1/chat/completions", chat, &[]);
        assert_eq!(r.text(), body, "untouched");
    }

    // Cross-format (Anthropic client): the translated text is repaired too.
    up.push(json_reply(
        200,
        &completion_with("Here you go: {'name': 'Ada', tags: ['x',]} Enjoy!", None),
    ));
    let r = post(&router, "/v1/messages", anthropic, &[]);
    let text = r.json()["content"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        parsed(&text),
        Some(serde_json::json!({"name": "Ada", "tags": ["x"]})),
        "{text}"
    );

    // An error reply is never touched.
    up.push(json_reply(
        500,
        "{\"error\":{\"message\":\"```json {,}```\"}}",
    ));
    let r = post(&router, "/v1/chat/completions", chat, &[]);
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "{\"error\":{\"message\":\"```json {,}```\"}}");

    // A stream is not changed; the log line says what a repair would have done.
    up.push(sse_reply(&[
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"{\\\"a\\\": 1,\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"}\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ]));
    let r = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"json please"}],"stream":true}"#,
        &[],
    );
    assert!(
        r.text().contains("{\\\"a\\\": 1,"),
        "streamed bytes unchanged"
    );
    let lines = router.log_lines(7);
    assert_eq!(
        lines[6]["notes"],
        serde_json::json!([
            "response-healing: streamed text is not valid JSON; a repair would parse"
        ])
    );
    assert!(
        lines[0]["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("response-healing: repaired 1 text")
    );
    assert!(lines[2].get("notes").is_none(), "prose: nothing to say");
}

#[test]
fn pre_request_may_rewrite_the_body_for_this_request_only() {
    let up = Upstream::start();
    let config = basic_config(
        &up.base_url(),
        "[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"rewritten\"\nprovider = \"up\"\n",
    );
    let router = Router::start_with_env("rewrite", &config, &PROBE_ENV);
    // The client's model routes nowhere; the plugin's rewritten body routes (and is sent).
    let body = r#"{"model":"nowhere","messages":[{"role":"user","content":"hi"}],"plugins":[{"id":"probe","pre_request":"model:rewritten-1"}]}"#;
    let r = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = up.requests()[0].json();
    assert_eq!(sent["model"], "rewritten-1");
    assert!(
        sent.get("plugins").is_none(),
        "the plugins member is never forwarded"
    );
    // The next request, without the plugin, is the client's bytes.
    let plain = r#"{"model":"rewritten-2","messages":[{"role":"user","content":"hi"}]}"#;
    post(&router, "/v1/chat/completions", plain, &[]);
    assert_eq!(up.requests()[1].body, plain.as_bytes());
}
