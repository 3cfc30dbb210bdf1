//! Same-format proxying of chat completions: byte-exact forwarding, headers,
//! streaming relay, upstream faults, client disconnects, and the log line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const CHAT: &str = r#"{"model":"gpt-x","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0.2}"#;

fn completion(content: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-x","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}}}"#
    )
}

fn chunk(content: &str) -> String {
    format!(
        r#"data: {{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
    ) + "\n\n"
}

const USAGE_CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n";

#[test]
fn body_is_forwarded_byte_for_byte_except_model_and_plugins() {
    let up = Upstream::start();
    up.push(json_reply(200, &completion("ok")));
    let router = Router::start(
        "bytes",
        &basic_config(
            &up.base_url(),
            "[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"alias/\"\nprovider = \"up\"\nrewrite_model = \"real-model\"\n",
        ),
    );
    // Unknown fields, odd whitespace and key order must survive; only the model changes.
    let body = "{ \"zeta\": [1, 2,3],\n  \"plugins\": [{\"id\":\"response-healing\"}],\n  \"model\" :\"alias/x\", \"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9\"}],\"x_custom\":{\"model\":\"inner\"} }";
    let resp = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.requests();
    assert_eq!(got.len(), 1);
    let expected = "{ \"zeta\": [1, 2,3],\n  \"model\" :\"real-model\", \"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9\"}],\"x_custom\":{\"model\":\"inner\"} }";
    assert_eq!(String::from_utf8_lossy(&got[0].body), expected);
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(resp.header("x-router-model"), Some("real-model"));
}

#[test]
fn unchanged_body_when_no_rewrite_and_no_plugins() {
    let up = Upstream::start();
    up.push(json_reply(200, &completion("ok")));
    let router = Router::start(
        "unchanged",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let resp = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests()[0].body, CHAT.as_bytes());
}

#[test]
fn response_is_relayed_with_router_headers_and_log_line() {
    let up = Upstream::start();
    up.push(json_reply(200, &completion("Sure, here is some Rust code")));
    let config = basic_config(
        &up.base_url(),
        r#"
[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["rust", "python"]
brief = ["brief"]
vision = ["image"]

[response_classifiers.refusal]
enabled = true

[[routers]]
type = "tag"
tag = "code"
provider = "up"
rewrite_model = "coder"
"#,
    );
    let router = Router::start("headers", &config);
    let body = r#"{"model":"gpt-x","messages":[{"role":"system","content":"Be BRIEF."},{"role":"user","content":"write RUST please"}]}"#;
    let resp = post(
        &router,
        "/v1/chat/completions",
        body,
        &[
            ("Authorization", "Bearer client-secret"),
            ("X-Custom", "kept"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "Sure, here is some Rust code"
    );
    assert_eq!(
        resp.header("x-upstream"),
        Some("yes"),
        "provider headers are relayed"
    );
    assert_eq!(resp.header("x-router-request-tags"), Some("code,brief"));
    assert_eq!(resp.header("x-router-response-tags"), None);
    assert_eq!(resp.header("x-router-provider"), Some("up"));
    assert_eq!(resp.header("x-router-model"), Some("coder"));
    assert_eq!(resp.header("x-router-input-tokens"), Some("12"));
    assert_eq!(resp.header("x-router-output-tokens"), Some("5"));
    let overhead: u64 = resp
        .header("x-router-overhead-us")
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead < 10_000_000);

    let sent = &up.requests()[0];
    assert_eq!(
        sent.header("authorization"),
        None,
        "the client's key never goes upstream"
    );
    assert_eq!(sent.header("x-custom"), Some("kept"));
    assert_eq!(sent.json()["model"], "coder");

    let line = &router.log_lines(1)[0];
    for key in [
        "ts_ms",
        "id",
        "provider",
        "requested_model",
        "sent_model",
        "duration_ms",
        "tags",
        "plugins",
        "system",
        "messages",
        "response",
        "error",
        "trace_id",
        "status",
        "stream",
        "ttft_ms",
        "overhead_us",
        "input_tokens",
        "output_tokens",
        "response_tags",
        "attempts",
    ] {
        assert!(line.get(key).is_some(), "log line lacks {key}: {line}");
    }
    assert_eq!(line["provider"], "up");
    assert_eq!(line["requested_model"], "gpt-x");
    assert_eq!(line["sent_model"], "coder");
    assert_eq!(line["tags"], serde_json::json!(["code", "brief"]));
    assert_eq!(line["system"], "Be BRIEF.");
    assert_eq!(line["messages"][1]["content"], "write RUST please");
    assert_eq!(line["response"], "Sure, here is some Rust code");
    assert!(line["error"].is_null());
    assert_eq!(line["status"], 200);
    assert_eq!(line["stream"], false);
    assert_eq!(line["input_tokens"], 12);
    assert_eq!(line["output_tokens"], 5);
    assert_eq!(line["attempts"], serde_json::json!(["up"]));
    assert!(line["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(line["ttft_ms"].as_f64().is_some());
}

#[test]
fn refusal_response_tag() {
    let up = Upstream::start();
    up.push(json_reply(
        200,
        &completion("I cannot help with that request."),
    ));
    let router = Router::start(
        "refusal",
        &basic_config(
            &up.base_url(),
            "[response_classifiers.refusal]\nenabled = true\n[[routers]]\ntype = \"fallback\"\n",
        ),
    );
    let resp = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(resp.header("x-router-response-tags"), Some("refusal"));
    assert_eq!(
        router.log_lines(1)[0]["response_tags"],
        serde_json::json!(["refusal"])
    );
}

#[test]
fn provider_key_is_sent_and_provider_errors_pass_through_unchanged() {
    let up = Upstream::start();
    let err_body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    up.push(json_reply(429, err_body));
    let config = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 1
[logging]
enabled = true
path = "{{LOG}}"
[[providers]]
name = "cloud"
format = "openai"
base_url = "{}"
api_key_env = "OSR_TEST_KEY_A"
[[routers]]
type = "fallback"
"#,
        up.base_url()
    );
    let router = Router::start_with_env("keys", &config, &[("OSR_TEST_KEY_A", "sk-provider")]);
    let resp = post(
        &router,
        "/v1/chat/completions",
        CHAT,
        &[("x-api-key", "client")],
    );
    assert_eq!(resp.status, 429);
    assert_eq!(resp.text(), err_body);
    let sent = &up.requests()[0];
    assert_eq!(sent.header("authorization"), Some("Bearer sk-provider"));
    assert_eq!(sent.header("x-api-key"), None);
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 429);
    assert!(line["error"].as_str().unwrap().contains("429"));
}

#[test]
fn streaming_relay_with_event_split_across_reads() {
    let up = Upstream::start();
    let e1 = chunk("Hel");
    let e2 = chunk("lo");
    let (e2a, e2b) = e2.split_at(30);
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let c = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    up.push(Reply::Gated {
        first: vec![head, c(&e1), c(e2a)],
        rest: vec![
            c(e2b),
            c(USAGE_CHUNK),
            c("data: [DONE]\n\n"),
            b"0\r\n\r\n".to_vec(),
        ],
    });
    let router = Router::start(
        "stream",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let body = r#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = router.connect();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut r = Reader::new(s.try_clone().unwrap());
    // Read the head and the first events before the upstream sends the rest:
    // the router must flush what it has, not wait for a complete body.
    let mut seen = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(&e2a[..e2a.len() - 1]) {
        let n = std::io::Read::read(&mut r.stream, &mut tmp).unwrap();
        assert!(n > 0, "connection closed early");
        seen.extend_from_slice(&tmp[..n]);
    }
    up.release.send(()).unwrap();
    let mut rest = Vec::new();
    loop {
        let n = std::io::Read::read(&mut r.stream, &mut tmp).unwrap();
        rest.extend_from_slice(&tmp[..n]);
        if n == 0 || rest.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let all = [seen, rest].concat();
    let text = String::from_utf8_lossy(&all);
    let head_end = text.find("\r\n\r\n").unwrap();
    let head = &text[..head_end].to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"));
    assert!(head.contains("content-type: text/event-stream"));
    assert!(head.contains("transfer-encoding: chunked"));
    assert!(head.contains("x-router-provider: up"));
    assert!(
        !head.contains("x-router-input-tokens"),
        "usage is unknown when the head is sent"
    );
    // De-chunk the body and compare with the upstream's event bytes.
    let mut body = Vec::new();
    drop(s);
    let mut raw = all[head_end + 4..].to_vec();
    while !raw.is_empty() {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw.drain(..line_end + 2 + size + 2);
    }
    let expected = format!("{e1}{e2}{USAGE_CHUNK}data: [DONE]\n\n");
    assert_eq!(String::from_utf8_lossy(&body), expected);
    let line = &router.log_lines(1)[0];
    assert_eq!(line["stream"], true);
    assert_eq!(line["response"], "Hello");
    assert_eq!(line["input_tokens"], 9);
    assert_eq!(line["output_tokens"], 3);
    assert_eq!(line["status"], 200);
}

#[test]
fn upstream_dying_mid_stream_ends_with_an_openai_error_event() {
    let up = Upstream::start();
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let e1 = chunk("partial");
    up.push(Reply::PiecesThenClose(vec![
        head,
        format!("{:x}\r\n{e1}\r\n", e1.len()).into_bytes(),
    ]));
    let router = Router::start(
        "truncated",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let body = r#"{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert!(text.starts_with(&e1), "{text}");
    assert!(!text.contains("[DONE]"), "never a fake [DONE]");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["error"]["type"], "upstream_error");
    assert!(data["error"]["message"].as_str().unwrap().contains("ended"));
    let line = &router.log_lines(1)[0];
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .starts_with("upstream_truncated"),
        "{line}"
    );
}

#[test]
fn connect_failure_is_a_502_naming_provider_and_address() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let router = Router::start(
        "refused",
        &basic_config(
            &format!("http://127.0.0.1:{port}/v1"),
            "[[routers]]\ntype = \"fallback\"\n",
        ),
    );
    let resp = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(resp.status, 502);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("'up'") && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    assert_eq!(resp.json()["error"]["code"], "upstream_connect_failed");
    assert_eq!(resp.header("x-router-provider"), Some("up"));
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 502);
}

#[test]
fn no_first_byte_in_time_is_a_504() {
    let up = Upstream::start();
    up.push(Reply::Hang);
    let router = Router::start(
        "timeout",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n")
            .replace("workers = 1", "workers = 1\nfirst_byte_timeout_ms = 300"),
    );
    let resp = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(resp.status, 504);
    assert_eq!(resp.json()["error"]["code"], "upstream_timeout");
    // The abandoned upstream connection is closed, not pooled.
    assert_eq!(
        up.closed_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        0
    );
}

#[test]
fn client_disconnect_closes_the_upstream_connection() {
    let up = Upstream::start();
    up.push(Reply::Hang);
    let router = Router::start(
        "disconnect",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let mut s = router.connect();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{CHAT}",
            CHAT.len()
        )
        .as_bytes(),
    )
    .unwrap();
    wait_until("the upstream to receive the request", || {
        !up.requests().is_empty()
    });
    drop(s);
    assert_eq!(
        up.closed_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        0,
        "upstream connection closed"
    );
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 499);
    assert!(line["error"].as_str().unwrap().starts_with("client_closed"));
}

#[test]
fn client_disconnect_mid_stream_closes_the_upstream_connection() {
    let up = Upstream::start();
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let e1 = chunk("one");
    up.push(Reply::Gated {
        first: vec![head, format!("{:x}\r\n{e1}\r\n", e1.len()).into_bytes()],
        rest: vec![],
    });
    let router = Router::start(
        "disconnect-stream",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let body = r#"{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = router.connect();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("one") {
        let n = std::io::Read::read(&mut s, &mut tmp).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&tmp[..n]);
    }
    drop(s);
    assert_eq!(
        up.closed_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        0
    );
    let _ = up.release.send(());
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 499);
    assert_eq!(line["response"], "one");
}

#[test]
fn keep_alive_reuses_the_pooled_upstream_connection_and_retries_a_dead_one() {
    let up = Upstream::start();
    up.push(json_reply(200, &completion("a")));
    up.push(json_reply(200, &completion("b")));
    // Third reply: the upstream closes right after answering, so the pooled
    // connection is dead when the fourth request takes it.
    let third = completion("c");
    up.push(Reply::PiecesThenClose(vec![format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{third}", third.len()).into_bytes()]));
    up.push(json_reply(200, &completion("d")));
    let router = Router::start(
        "pool",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n"),
    );
    let mut s = router.connect();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    let mut r = Reader::new(s.try_clone().unwrap());
    let mut contents = Vec::new();
    for _ in 0..3 {
        s.write_all(req.as_bytes()).unwrap();
        let resp = r.response().unwrap();
        assert_eq!(resp.status, 200);
        contents.push(
            resp.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The upstream's close of connection 0 must be seen before the next request
    // takes the pooled connection, so the retry path is exercised.
    assert_eq!(
        up.closed_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        0
    );
    s.write_all(req.as_bytes()).unwrap();
    let resp = r.response().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    contents.push(
        resp.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert_eq!(contents, ["a", "b", "c", "d"]);
    let conns: Vec<usize> = up.requests().iter().map(|r| r.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 0, 1],
        "three requests on one pooled connection, then a fresh one"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let up = Upstream::start();
    // 24 MB reply: far more than loopback socket buffers hold.
    let big = format!(
        r#"{{"id":"x","object":"chat.completion","choices":[],"pad":"{}"}}"#,
        "a".repeat(24 << 20)
    );
    up.push(json_reply(200, &big));
    let router = Router::start(
        "write-timeout",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n")
            .replace("workers = 1", "workers = 1\nwrite_timeout_ms = 300"),
    );
    let mut s = router.connect();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{CHAT}",
            CHAT.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // Never read: the router's write stalls, times out, and the request is logged as a disconnect.
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 499, "{line}");
    assert!(line["error"].as_str().unwrap().starts_with("client_closed"));
    // The router closed the connection: draining it ends in EOF well short of 24 MB.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 24 << 20, "read {total} bytes");
}
