//! HTTP/1.1 framing at the edge, sent as raw bytes (docs/reliability.md
//! §2 and checklist A/B): every rejection answers with the right status in
//! the OpenAI error shape, closes the connection, never reaches the
//! upstream, and leaves a log line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::{Read, Write};

use common::*;

fn router_and_upstream(name: &str) -> (Router, Upstream) {
    let up = Upstream::start();
    let router = Router::start(
        name,
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n").replace(
            "workers = 1",
            "workers = 1\nmax_body_bytes = 1000\nmax_head_bytes = 4096\nheader_timeout_ms = 400",
        ),
    );
    (router, up)
}

const BODY: &str = r#"{"model":"m","messages":[]}"#;

/// Send `bytes`, expect `status`, an OpenAI error body, a closed connection, no upstream request.
fn expect_reject(router: &Router, up: &Upstream, bytes: &[u8], status: u16) {
    let (resp, mut reader) = raw(router, bytes);
    let resp =
        resp.unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)));
    assert_eq!(
        resp.status,
        status,
        "for {:?}: {}",
        String::from_utf8_lossy(bytes),
        resp.text()
    );
    let v = resp.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string());
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(reader.closed(), "connection must be closed after {status}");
    assert!(
        up.requests().is_empty(),
        "rejected request reached the upstream"
    );
}

#[test]
fn smuggling_and_framing_vectors_are_rejected() {
    let (router, up) = router_and_upstream("framing");
    let cases: Vec<(String, u16)> = vec![
        // A1/A2: CL + TE in either order.
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n".into(), 400),
        // A3: bad Content-Length.
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n".into(), 400),
        // A4: obfuscated / unsupported transfer codings.
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        // A5: TE in HTTP/1.0.
        ("POST /v1/chat/completions HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        // A6: bad chunk sizes and chunk framing.
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\nabc\r\n0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n".into(), 400),
        // A7: obs-fold, space before colon, control bytes, bare CR.
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-\u{1}A: 1\r\nContent-Length: 0\r\n\r\n".into(), 400),
        ("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\nContent-Length: 0\r\n\r\n".into(), 400),
        // Bare LF line endings.
        ("POST /v1/chat/completions HTTP/1.1\nHost: a\nContent-Length: 0\n\n".into(), 400),
        // A8: request line.
        ("GET  /health HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400),
        ("GET /health HTTP/2.0\r\nHost: a\r\n\r\n".into(), 505),
        ("GET /health HTTP/1.1 extra\r\nHost: a\r\n\r\n".into(), 400),
        ("GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400),
        // A9: Host.
        ("GET /health HTTP/1.1\r\n\r\n".into(), 400),
        ("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        // Expect with an unknown expectation.
        (format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: {}\r\n\r\n{BODY}", BODY.len()), 417),
    ];
    for (bytes, status) in &cases {
        expect_reject(&router, &up, bytes.as_bytes(), *status);
    }
    let lines = router.log_lines(cases.len());
    assert!(
        lines
            .iter()
            .all(|l| l["status"].as_u64().unwrap() >= 400 && l["error"].is_string())
    );
}

#[test]
fn connect_method_is_refused_without_a_tunnel() {
    let (router, up) = router_and_upstream("connect");
    let (resp, mut reader) = raw(
        &router,
        b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n",
    );
    let resp = resp.unwrap();
    assert!(resp.status == 405 || resp.status == 400, "{}", resp.status);
    assert!(reader.closed());
    assert!(up.requests().is_empty());
}

#[test]
fn limits_give_431_414_and_413() {
    let (router, up) = router_and_upstream("limits");
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100_000));
    let (resp, _) = raw(&router, long_line.as_bytes());
    assert!(matches!(resp.unwrap().status, 414 | 431));
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(8000)
    );
    expect_reject(&router, &up, big_header.as_bytes(), 431);
    let many: String = (0..1000).map(|i| format!("X-{i}: v\r\n")).collect();
    let (resp, _) = raw(
        &router,
        format!("GET /health HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(resp.unwrap().status, 431);
    // B3: Content-Length over the limit is refused before the body is read.
    let (resp, mut reader) = raw(
        &router,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
    );
    let resp = resp.unwrap();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"]["code"], "request_too_large");
    assert!(reader.closed());
    // B4: the same limit hit mid-way through a chunked body.
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    expect_reject(&router, &up, req.as_bytes(), 413);
    // B9: Expect: 100-continue with an oversized body: 413 and no 100.
    let (resp, _) = raw(&router, b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(resp.unwrap().status, 413);
}

#[test]
fn expect_100_continue_gets_100_then_the_answer() {
    let (router, up) = router_and_upstream("expect");
    let mut s = router.connect();
    s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", BODY.len()).as_bytes()).unwrap();
    let mut r = Reader::new(s.try_clone().unwrap());
    let interim = r.response().unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(BODY.as_bytes()).unwrap();
    let resp = r.response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn chunked_request_bodies_are_decoded_and_forwarded_with_content_length() {
    let (router, up) = router_and_upstream("chunked-req");
    let (a, b) = BODY.split_at(10);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nTrailer: x\r\n\r\n",
        a.len(),
        b.len()
    );
    let (resp, _) = raw(&router, req.as_bytes());
    assert_eq!(resp.unwrap().status, 200);
    let got = &up.requests()[0];
    assert_eq!(got.body, BODY.as_bytes());
    assert_eq!(
        got.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert_eq!(got.header("transfer-encoding"), None);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (router, up) = router_and_upstream("pipeline");
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut s = router.connect();
    s.write_all(format!("{one}GET /health HTTP/1.1\r\nHost: a\r\n\r\n{one}").as_bytes())
        .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().unwrap().status, 200);
    let h = r.response().unwrap();
    assert_eq!((h.status, h.text().as_str()), (200, "ok"));
    assert_eq!(r.response().unwrap().status, 200);
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn unread_body_of_an_error_response_is_never_parsed_as_a_request() {
    // A12: a 404 on a POST with a body, then a second request on the same connection.
    let (router, _up) = router_and_upstream("drain");
    let smuggled = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut s = router.connect();
    s.write_all(
        format!(
            "POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().unwrap().status, 404);
    let second = r.response().unwrap();
    assert_eq!(second.status, 200);
    assert!(
        second.text().contains("\"object\":\"list\""),
        "second answer is /v1/models, not the body: {}",
        second.text()
    );
}

#[test]
fn slow_header_is_cut_at_the_header_deadline() {
    let (router, _up) = router_and_upstream("slowloris");
    let mut s = router.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n").unwrap();
    // Never finish the head: the router answers 408 and closes at its deadline (400 ms).
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 408"));
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_at_the_deadline_and_logged() {
    let (router, up) = router_and_upstream("slowbody");
    let mut s = router.connect();
    // Content-Length promises the whole body; 5 bytes of it come, then nothing.
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{}",
            BODY.len(),
            &BODY[..5]
        )
        .as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    // EOF after the answer (a read timeout would fail the unwrap).
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request body not received in time"), "{text}");
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 408, "{line}");
    assert!(up.requests().is_empty());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_silently_at_the_idle_timeout() {
    let up = Upstream::start();
    let router = Router::start(
        "idleclose",
        &basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n")
            .replace("workers = 1", "workers = 1\nidle_timeout_ms = 300"),
    );
    let mut s = router.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    // The answer, then EOF once the connection sat idle (a read timeout
    // would fail the unwrap): nothing is written on the idle close.
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "only the one answer: {text}");
    assert_eq!(router.log_lines(1).len(), 1);
}

#[test]
fn query_string_does_not_affect_routing() {
    let (router, up) = router_and_upstream("query");
    let (resp, _) = raw(&router, format!("POST /v1/chat/completions?beta=true HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{BODY}", BODY.len()).as_bytes());
    assert_eq!(resp.unwrap().status, 200);
    assert_eq!(up.requests()[0].path, "/v1/chat/completions");
}

#[test]
fn head_and_get_root_answer_quickly() {
    let (router, _up) = router_and_upstream("root");
    let mut s = router.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    let head = r.response_for(true).unwrap();
    assert_eq!(head.status, 200);
    let get = r.response().unwrap();
    assert_eq!(get.status, 200);
    assert!(get.text().contains("opensourcellmrouter"));
}

#[test]
fn http10_keep_alive_rules() {
    let (router, _up) = router_and_upstream("http10");
    let (resp, mut reader) = raw(&router, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(resp.unwrap().status, 200);
    assert!(reader.closed(), "HTTP/1.0 without keep-alive closes");
}

#[test]
fn lingering_close_lets_a_client_still_sending_read_the_error() {
    // A body over the limit, sent by a client that keeps writing: the router answers 413
    // before reading the body, half-closes and drains, so the client reads the 413 and then
    // a clean end of stream — not a connection reset.
    let up = Upstream::start();
    let config = basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n")
        .replace("workers = 1", "workers = 1\nmax_body_bytes = 1024");
    let router = Router::start("linger", &config);
    let mut s = router.connect();
    let len = 4 << 20;
    s.write_all(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let block = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < len {
            if writer.write_all(&block).is_err() {
                return false;
            }
            sent += block.len();
        }
        true
    });
    let mut reader = Reader::new(s);
    let resp = reader.response().expect("the 413 is readable");
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
    // Then a FIN: read returns 0, not an error.
    let mut rest = [0u8; 16];
    assert_eq!(
        std::io::Read::read(&mut reader.stream, &mut rest).map_err(|e| e.kind()),
        Ok(0)
    );
    assert!(
        sender.join().unwrap(),
        "the router drained the body instead of resetting"
    );
    assert_eq!(router.log_lines(1)[0]["status"], 413);
}
