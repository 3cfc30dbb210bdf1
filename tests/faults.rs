//! Upstream faults, with the fault-injection upstream (`common/fault.rs`):
//! each test names its case in `docs/reliability.md` — a checklist id (E =
//! upstream faults, D = bodies) and/or the upstream-exchange defect (1–6 of
//! "Upstream-exchange defects") it guards against (`defectN_…`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::fault::{
    ANTHROPIC_ERROR_BODY, FaultEvent, FaultUpstream, OPENAI_ERROR_BODY, sse_odd_body,
};
use common::*;

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const RESPONSES: &str = "/v1/responses";

/// One worker (so every request shares one upstream pool), the fault
/// upstream as the only provider, everything routed to it.
fn config(up: &FaultUpstream, server_extra: &str) -> String {
    let head = server_head(server_extra);
    format!(
        r#"
{head}
[[providers]]
name = "fault"
format = "openai"
base_url = "{}"

[[routers]]
type = "fallback"
"#,
        up.base_url()
    )
}

fn chat(mode: &str, tok: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{mode}","messages":[{{"role":"user","content":"say {tok}"}}],"stream":{stream}}}"#
    )
}

fn anthropic(mode: &str, tok: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{mode}","max_tokens":32,"messages":[{{"role":"user","content":"say {tok}"}}],"stream":{stream}}}"#
    )
}

fn responses(mode: &str, tok: &str) -> String {
    format!(r#"{{"model":"{mode}","input":"say {tok}"}}"#)
}

fn content(resp: &Response) -> String {
    let v = resp.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {v}"))
        .to_string()
}

fn statuses(router: &Router, n: usize) -> Vec<u64> {
    router
        .log_lines(n)
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect()
}

/// Every blank-line-separated block of an SSE body is a whole event or the
/// keep-alive comment: a comment never lands inside an event.
fn assert_whole_events(body: &str) {
    for block in body.split("\n\n").filter(|b| !b.is_empty()) {
        assert!(
            block == ": keep-alive" || block.starts_with("data: ") || block.starts_with("event: "),
            "not a whole event: {block:?} in {body:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Defect 1: a pooled connection the upstream spoke on while idle.
// ---------------------------------------------------------------------------

#[test]
fn defect1_408_sent_on_an_idle_pooled_connection_never_answers_the_next_request() {
    let up = FaultUpstream::start();
    let router = Router::start("f-408", &config(&up, ""));
    let a = post(&router, CHAT, &chat("echo-then-408", "tok-a", false), &[]);
    assert_eq!((a.status, content(&a)), (200, "tok-a".to_string()));
    // The upstream times the idle (pooled) connection out, as some servers do.
    up.release();
    up.wait_for(FaultEvent::Spoke(0));
    let b = post(&router, CHAT, &chat("echo", "tok-b", false), &[]);
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(content(&b), "tok-b");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].conn, reqs[1].conn), (0, 1), "a fresh connection");
    assert_eq!(statuses(&router, 2), [200, 200]);
}

#[test]
fn defect1_unsolicited_response_on_an_idle_connection_goes_to_nobody() {
    let up = FaultUpstream::start();
    let router = Router::start("f-stale", &config(&up, ""));
    let a = post(&router, CHAT, &chat("echo-then-stale", "tok-a", false), &[]);
    assert_eq!(content(&a), "tok-a");
    up.release();
    up.wait_for(FaultEvent::Spoke(0));
    // Two more clients, one after the other: each gets its own answer.
    for tok in ["tok-b", "tok-c"] {
        let r = post(&router, CHAT, &chat("echo", tok, false), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(content(&r), tok, "another client's (or no one's) answer");
    }
    // The connection that spoke out of turn was closed, not reused.
    up.wait_for(FaultEvent::PeerClosed(0));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[1..].iter().all(|r| r.conn != 0));
}

#[test]
fn defect1_408_answering_a_reused_connection_is_retried_once_on_a_fresh_one() {
    let up = FaultUpstream::start();
    let router = Router::start("f-408-race", &config(&up, ""));
    let a = post(&router, CHAT, &chat("echo", "tok-a", false), &[]);
    assert_eq!(content(&a), "tok-a");
    // The pooled connection is silent, so it is reused; the upstream's idle
    // timer fires as the request crosses it: 408 and close.
    let b = post(&router, CHAT, &chat("408-if-reused", "tok-b", false), &[]);
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(content(&b), "tok-b");
    let conns: Vec<usize> = up.requests().iter().map(|r| r.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 1],
        "sent on the pooled one, then once on a fresh one"
    );
    // The pool serves on afterwards.
    let c = post(&router, CHAT, &chat("echo", "tok-c", false), &[]);
    assert_eq!(content(&c), "tok-c");
    assert_eq!(statuses(&router, 3), [200, 200, 200]);
}

#[test]
fn defect1_bytes_after_a_bodiless_response_keep_the_connection_out_of_the_pool() {
    let up = FaultUpstream::start();
    let router = Router::start("f-204", &config(&up, ""));
    let a = post(&router, CHAT, &chat("204-with-body", "tok-a", false), &[]);
    assert_eq!(a.status, 204);
    let b = post(&router, CHAT, &chat("echo", "tok-b", false), &[]);
    assert_eq!((b.status, content(&b)), (200, "tok-b".to_string()));
    let conns: Vec<usize> = up.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 1]);
}

#[test]
fn e12_pooled_connection_closed_by_the_upstream_is_replaced_transparently() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e12", &config(&up, ""));
    let a = post(&router, CHAT, &chat("echo-then-close", "tok-a", false), &[]);
    assert_eq!(content(&a), "tok-a");
    up.release();
    up.wait_for(FaultEvent::Spoke(0));
    let b = post(&router, CHAT, &chat("echo", "tok-b", false), &[]);
    assert_eq!((b.status, content(&b)), (200, "tok-b".to_string()));
    assert_eq!(up.requests().len(), 2, "nothing was sent on the closed one");
    assert_eq!(statuses(&router, 2), [200, 200]);
}

// ---------------------------------------------------------------------------
// Defect 2: interim (1xx) responses.
// ---------------------------------------------------------------------------

#[test]
fn defect2_interim_responses_followed_by_the_final_one_are_skipped_however_split() {
    let up = FaultUpstream::start();
    // A short first-byte timeout so a hang shows as a 504, not a stuck test.
    let router = Router::start("f-1xx", &config(&up, "first_byte_timeout_ms = 5000"));
    for (i, mode) in ["interim", "interim-bytewise", "interim"]
        .iter()
        .enumerate()
    {
        let tok = format!("tok-{i}");
        let r = post(&router, CHAT, &chat(mode, &tok, false), &[]);
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        assert_eq!(content(&r), tok);
        assert!(
            r.header("link").is_none(),
            "103's fields are not the reply's"
        );
    }
    // Translated too: an Anthropic client behind the same upstream.
    let r = post(
        &router,
        MESSAGES,
        &anthropic("interim", "tok-x", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "tok-x");
    assert_eq!(statuses(&router, 4), [200, 200, 200, 200]);
    // The connection stayed usable: all four went over one.
    assert!(up.requests().iter().all(|r| r.conn == 0));
}

// ---------------------------------------------------------------------------
// Defect 3 / E4 / E5: provider errors, their back-off and rate-limit fields.
// ---------------------------------------------------------------------------

#[test]
fn e4_e5_same_format_errors_pass_through_with_retry_after_and_body_unmodified() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e4", &config(&up, ""));
    for status in [429u16, 500, 502, 503, 529] {
        let r = post(
            &router,
            CHAT,
            &chat(&format!("status-{status}"), "tok", false),
            &[],
        );
        assert_eq!(r.status, status);
        assert_eq!(r.text(), OPENAI_ERROR_BODY, "body unmodified");
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(r.header("x-request-id"), Some("req-fault-1"));
    }
    assert_eq!(statuses(&router, 5), [429, 500, 502, 503, 529]);
}

#[test]
fn defect3_retry_after_and_rate_limit_fields_survive_translation() {
    let up = FaultUpstream::start();
    let router = Router::start("f-xlate", &config(&up, ""));
    let check_fields = |r: &Response| {
        assert_eq!(r.header("retry-after"), Some("7"), "{:?}", r.headers);
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(
            r.header("anthropic-ratelimit-requests-remaining"),
            Some("0")
        );
        assert_eq!(r.header("x-request-id"), Some("req-fault-1"));
        assert_eq!(r.header("set-cookie"), None, "only the documented fields");
        assert_eq!(r.header("content-type"), Some("application/json"));
    };
    // Anthropic client → OpenAI-format provider, plain and streamed.
    for stream in [false, true] {
        let r = post(
            &router,
            MESSAGES,
            &anthropic("status-429", "tok", stream),
            &[],
        );
        assert_eq!(r.status, 429, "{}", r.text());
        check_fields(&r);
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "fault: slow down");
    }
    // Responses client → chat-completions provider.
    let r = post(&router, RESPONSES, &responses("status-503", "tok"), &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    check_fields(&r);
    assert_eq!(r.json()["error"]["message"], "fault: slow down");
    assert_eq!(statuses(&router, 3), [429, 429, 503]);
}

#[test]
fn defect3_anthropic_provider_errors_reach_openai_clients_with_their_fields() {
    let up = FaultUpstream::start();
    let text = config(&up, "").replace(
        "format = \"openai\"",
        "format = \"anthropic\"\napi_key_env = \"FAULT_KEY\"",
    );
    let router = Router::start_with_env("f-xlate-a", &text, &[("FAULT_KEY", "k")]);
    let r = post(&router, CHAT, &chat("status-529", "tok", false), &[]);
    assert_eq!(r.status, 529, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert_eq!(r.json()["error"]["message"], "fault: slow down");
    assert!(up.requests()[0].path.ends_with("/v1/messages"));
    let _ = ANTHROPIC_ERROR_BODY;
}

// ---------------------------------------------------------------------------
// Defect 4 / D3: router-made messages quote client input bounded.
// ---------------------------------------------------------------------------

#[test]
fn defect4_d3_a_10_mb_model_name_is_quoted_bounded_in_reply_and_log() {
    let up = FaultUpstream::start();
    let text = config(&up, "").replace(
        "type = \"fallback\"",
        "type = \"prefix\"\nmodel_prefix = \"fault/\"\nprovider = \"fault\"",
    );
    let router = Router::start("f-big", &text);
    let model = "é".repeat(5 << 20); // 10 MiB
    for (path, body) in [
        (CHAT, chat(&model, "tok", false)),
        (MESSAGES, anthropic(&model, "tok", false)),
    ] {
        let r = post(&router, path, &body, &[]);
        assert_eq!(r.status, 400);
        assert!(r.body.len() < 1024, "{} bytes", r.body.len());
        let msg = r.text();
        assert!(
            msg.contains("no provider configured for model 'éé"),
            "{msg}"
        );
        assert!(msg.contains("more bytes]"), "{msg}");
    }
    // An unknown plugin id of 1 MB, the same.
    let body = format!(
        r#"{{"model":"fault/x","messages":[{{"role":"user","content":"hi"}}],"plugins":[{{"id":"{}"}}]}}"#,
        "p".repeat(1 << 20)
    );
    let r = post(&router, CHAT, &body, &[]);
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    let lines = router.log_lines(3);
    for l in &lines {
        let len = l.to_string().len();
        assert!(len < 4096, "log line of {len} bytes");
        assert_eq!(l["status"], 400);
    }
    assert!(
        lines[0]["requested_model"]
            .as_str()
            .unwrap()
            .ends_with("more bytes]")
    );
    assert!(up.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Defect 5: a client gone while sending its body still leaves a log line.
// ---------------------------------------------------------------------------

#[test]
fn defect5_client_gone_while_sending_the_body_is_logged_499() {
    let up = FaultUpstream::start();
    let router = Router::start("f-body", &config(&up, ""));
    for head in [
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":",
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"model\":",
    ] {
        let mut s = router.connect();
        s.write_all(head.as_bytes()).unwrap();
        s.shutdown(Shutdown::Both).unwrap();
    }
    let lines = router.log_lines(2);
    let mut paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/messages"]);
    for l in &lines {
        assert_eq!(l["status"], 499, "{l}");
        assert_eq!(l["method"], "POST");
        assert!(
            l["error"].as_str().unwrap().starts_with("client_closed"),
            "{l}"
        );
    }
    assert!(up.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Defect 6 / E8 / E9: stalled streams, keep-alive comments, the idle timeout.
// ---------------------------------------------------------------------------

const STREAM_TIMERS: &str = "sse_keepalive_ms = 40\nstream_idle_timeout_ms = 500";

#[test]
fn defect6_e8_stalled_stream_gets_keepalives_then_ends_with_an_error_at_the_idle_timeout() {
    let up = FaultUpstream::start();
    let router = Router::start("f-stall", &config(&up, STREAM_TIMERS));
    let r = post(&router, CHAT, &chat("stall", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert_whole_events(&body);
    let first = body.find("before-stall").expect("the first event");
    let ka = body.find(": keep-alive\n\n").expect("a keep-alive comment");
    assert!(ka > first, "{body}");
    let err = body.rfind("data: {\"error\"").expect("an error event");
    assert!(err > ka);
    assert!(body[err..].contains("stream_idle_timeout_ms"), "{body}");
    assert!(!body.contains("[DONE]"), "never a fake end: {body}");
    up.wait_for(FaultEvent::PeerClosed(0));
    let line = &router.log_lines(1)[0];
    let e = line["error"].as_str().unwrap();
    assert!(
        e.starts_with("upstream_truncated") && e.contains("stream_idle_timeout_ms"),
        "{e}"
    );
}

#[test]
fn defect6_e8_translated_stalled_stream_ends_with_the_clients_error_event() {
    let up = FaultUpstream::start();
    let router = Router::start("f-stall-x", &config(&up, STREAM_TIMERS));
    let r = post(&router, MESSAGES, &anthropic("stall", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert_whole_events(&body);
    assert!(body.contains("before-stall"));
    assert!(body.contains(": keep-alive\n\n"), "{body}");
    assert!(body.contains("event: error"), "{body}");
    assert!(!body.contains("message_stop"), "{body}");
    up.wait_for(FaultEvent::PeerClosed(0));
}

#[test]
fn defect6_no_keepalive_comment_inside_a_half_received_event() {
    let up = FaultUpstream::start();
    let router = Router::start("f-stall-mid", &config(&up, STREAM_TIMERS));
    let r = post(&router, CHAT, &chat("stall-mid-event", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.starts_with("data: {\"id\":\"c\",\"obj"), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(body.contains("stream_idle_timeout_ms"), "{body}");
}

#[test]
fn defect6_e9_slow_first_token_is_kept_alive_and_not_cut() {
    let up = FaultUpstream::start();
    // The idle timeout is long: only the keep-alive comments matter here.
    let router = Router::start("f-slow", &config(&up, "sse_keepalive_ms = 40"));
    let body = chat("slow-first", "tok-late", true);
    let mut s = router.connect();
    write!(
        s,
        "POST {CHAT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = Reader::new(s);
    // Prefill: the head arrived, no token yet; the client sees comments.
    assert!(
        reader.read_until(|b| { String::from_utf8_lossy(b).matches(": keep-alive").count() >= 2 })
    );
    up.release();
    let r = reader.response().expect("the stream");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert_whole_events(&text);
    assert!(text.starts_with(": keep-alive\n\n"), "{text}");
    assert!(
        text.contains("tok-late") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["error"], serde_json::Value::Null);
}

#[test]
fn defect6_keepalives_can_be_turned_off() {
    let up = FaultUpstream::start();
    let router = Router::start(
        "f-ka-off",
        &config(&up, "sse_keepalive_ms = 0\nstream_idle_timeout_ms = 300"),
    );
    let r = post(&router, CHAT, &chat("stall", "tok", true), &[]);
    let body = r.text();
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(body.contains("stream_idle_timeout_ms"), "{body}");
}

// ---------------------------------------------------------------------------
// The other upstream faults of §4 E.
// ---------------------------------------------------------------------------

#[test]
fn e1_connection_refused_is_a_502_in_the_clients_error_shape() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = basic_config(
        &format!("http://127.0.0.1:{port}/v1"),
        "[[routers]]\ntype = \"fallback\"\n",
    );
    let router = Router::start("f-e1", &text);
    let r = post(&router, CHAT, &chat("echo", "tok", false), &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_connect_failed");
    let r = post(&router, MESSAGES, &anthropic("echo", "tok", false), &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "api_error");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert_eq!(statuses(&router, 2), [502, 502]);
}

#[test]
fn e2_connect_that_hangs_is_a_502_after_the_connect_timeout() {
    // A listener whose accept queue is full and never drained: SYNs are dropped.
    // SAFETY: plain socket calls on a descriptor this test owns.
    let (fd, port) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        libc::getsockname(fd, (&raw mut got).cast(), &mut got_len);
        (fd, u16::from_be(got.sin_port))
    };
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Fill the queue (these connects complete or hang; either is fine).
    let _fill: Vec<TcpStream> = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok())
        .collect();
    let text = basic_config(
        &format!("http://{target}/v1"),
        "[[routers]]\ntype = \"fallback\"\n",
    )
    .replace("workers = 1", "workers = 1\nconnect_timeout_ms = 300");
    let router = Router::start("f-e2", &text);
    let r = post(&router, CHAT, &chat("echo", "tok", false), &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("connect timed out after 300 ms"), "{msg}");
    assert_eq!(r.json()["error"]["code"], "upstream_connect_failed");
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[test]
fn e3_upstream_that_never_answers_is_a_504_and_its_connection_closed() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e3", &config(&up, "first_byte_timeout_ms = 300"));
    let r = post(&router, CHAT, &chat("hang", "tok", false), &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    up.wait_for(FaultEvent::PeerClosed(0));
    assert_eq!(statuses(&router, 1), [504]);
}

#[test]
fn e6_truncated_stream_ends_with_an_error_event_never_a_fake_end() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e6", &config(&up, ""));
    let r = post(&router, CHAT, &chat("truncate", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.contains("\"three\""), "{body}");
    assert!(body.contains("data: {\"error\""), "{body}");
    assert!(!body.contains("[DONE]"));
    let r = post(&router, MESSAGES, &anthropic("truncate", "tok", true), &[]);
    let body = r.text();
    assert!(body.contains("event: error"), "{body}");
    assert!(!body.contains("message_stop"), "{body}");
    for l in router.log_lines(2) {
        assert!(
            l["error"]
                .as_str()
                .unwrap()
                .starts_with("upstream_truncated"),
            "{l}"
        );
    }
}

#[test]
fn e7_malformed_event_is_forwarded_verbatim_on_passthrough_and_an_error_when_translating() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e7", &config(&up, ""));
    let r = post(&router, CHAT, &chat("malformed", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(
        body.contains("data: {bad json\n\n") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    let r = post(&router, MESSAGES, &anthropic("malformed", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.contains("event: error"), "{body}");
    assert!(!body.contains("message_stop"), "{body}");
    assert_eq!(statuses(&router, 2), [200, 200]);
}

/// The fault upstream as an Ollama-format provider.
fn ollama_config(up: &FaultUpstream) -> String {
    config(up, "")
        .replace("format = \"openai\"", "format = \"ollama\"")
        .replace(&up.base_url(), &format!("http://{}", up.addr))
}

#[test]
fn e15_ollama_error_line_mid_stream_becomes_the_clients_error_event() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e15", &ollama_config(&up));
    let r = post(&router, CHAT, &chat("ndjson-error", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert_whole_events(&body);
    assert!(body.contains("partial"), "{body}");
    assert!(
        body.contains("data: {\"error\"") && body.contains("fault: model crashed"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
    let r = post(
        &router,
        MESSAGES,
        &anthropic("ndjson-error", "tok", true),
        &[],
    );
    let body = r.text();
    assert!(
        body.contains("event: error") && body.contains("fault: model crashed"),
        "{body}"
    );
    assert!(!body.contains("message_stop"), "{body}");
    assert!(up.requests().iter().all(|r| r.path == "/api/chat"));
}

#[test]
fn e15_ndjson_line_over_the_limit_ends_the_stream_with_an_error() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e15-long", &ollama_config(&up));
    let r = post(&router, CHAT, &chat("ndjson-long", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(
        body.len() < 4096,
        "the long line is never relayed: {} bytes",
        body.len()
    );
    assert!(
        body.contains("data: {\"error\"") && body.contains("NDJSON line too long"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"));
    up.wait_for(FaultEvent::PeerClosed(0));
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
fn e10_sse_split_at_every_byte_with_odd_line_endings_is_relayed_and_decoded() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e10", &config(&up, ""));
    // Passthrough: the bytes the upstream sent, unchanged.
    let r = post(&router, CHAT, &chat("sse-odd", "tok", true), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, sse_odd_body());
    // Translated: every event decoded, the text whole, a clean end.
    let r = post(&router, MESSAGES, &anthropic("sse-odd", "tok", true), &[]);
    assert_eq!(r.status, 200);
    let body = r.text();
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .map(|v| v["delta"]["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(text, "ABCD", "{body}");
    assert!(body.contains("event: message_stop"), "{body}");
    let lines = router.log_lines(2);
    assert_eq!(lines[0]["response"], "ABCD");
    assert_eq!(lines[1]["response"], "ABCD");
}

#[test]
fn e11_ambiguous_upstream_framing_is_a_502() {
    let up = FaultUpstream::start();
    let router = Router::start("f-e11", &config(&up, ""));
    let r = post(&router, CHAT, &chat("cl-te", "tok", false), &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_bad_response");
    up.wait_for(FaultEvent::PeerClosed(0));
}

#[test]
fn e12_fresh_connection_closed_before_the_head_is_a_502_not_a_retry() {
    let up = FaultUpstream::start();
    let router = Router::start("f-close", &config(&up, ""));
    let r = post(&router, CHAT, &chat("close", "tok", false), &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("before a complete response head"), "{msg}");
    assert_eq!(up.requests().len(), 1, "a fresh connection is not replayed");
}
