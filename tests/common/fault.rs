//! A fault-injection upstream: a raw-socket HTTP/1.1 server that misbehaves
//! the way real upstreams do, with the behaviour chosen per request by the
//! request body's `model` (so one server serves every route, same-format or
//! translated, and one test can mix modes on one pooled connection).
//!
//! Replies that carry an answer echo the request's token (the first `tok-…`
//! word in its body), so a test can tell whose answer a client received.
//!
//! Modes (the `model` value):
//!
//! | mode | what the upstream does |
//! |---|---|
//! | `echo` | 200 JSON completion with the token, keep-alive |
//! | `echo-then-408` | `echo`, then (on [`FaultUpstream::release`]) an unsolicited `408 Request Timeout` on the idle connection, then close |
//! | `echo-then-stale` | `echo`, then (on release) an unsolicited complete `200` whose content is `STALE`; the connection stays open and serves on |
//! | `echo-then-close` | `echo`, then (on release) the upstream closes the idle connection |
//! | `408-if-reused` | on a connection that already served a request: `408 Request Timeout` and close (the race of an idle timeout with a reused connection); else `echo` |
//! | `204-with-body` | `204 No Content` followed by five body bytes anyway, keep-alive |
//! | `interim` | `100 Continue`, `103 Early Hints` and the final `200` in one write |
//! | `interim-bytewise` | the same bytes, one byte per write |
//! | `status-NNN` | status NNN with `retry-after: 7`, rate-limit and request-id fields, a `set-cookie`, and an error body in the provider's shape |
//! | `hang` | never answers; reports when the peer closes |
//! | `truncate` | SSE head and three events, then EOF without a terminal event |
//! | `malformed` | SSE: one event, `data: {bad json`, then `[DONE]` and a clean end |
//! | `stall` | SSE head and one event, then silence until the peer closes |
//! | `stall-mid-event` | SSE head and half an event, then silence until the peer closes |
//! | `slow-first` | SSE head, silence until release, then two events and `[DONE]` |
//! | `ndjson-error` | Ollama NDJSON: one content line, then `{"error":"fault: model crashed"}` and a clean end |
//! | `ndjson-long` | Ollama NDJSON: one line of 17 MiB, no newline |
//! | `sse-odd` | [`sse_odd_body`] (BOM, a comment, CRLF, CR and LF endings, a multi-line `data:`), one byte per write |
//! | `cl-te` | a head with both `Content-Length` and `Transfer-Encoding` |
//! | `close` | reads the request and closes without answering |
#![allow(dead_code)]

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{Received, read_request};

/// Something the fault upstream did that a test may wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultEvent {
    /// Unsolicited bytes (or a close, for `echo-then-close`) were sent on connection N.
    Spoke(usize),
    /// The peer (the router) closed connection N.
    PeerClosed(usize),
}

pub struct FaultUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub accepted: Arc<AtomicUsize>,
    gate: Sender<()>,
    events: Receiver<FaultEvent>,
}

impl FaultUpstream {
    pub fn start() -> FaultUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = channel::<()>();
        let gate_rx = Arc::new(Mutex::new(gate_rx));
        let (events_tx, events) = channel::<FaultEvent>();
        let (r2, a2) = (received.clone(), accepted.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let conn = a2.fetch_add(1, Ordering::SeqCst);
                let (r, g, e) = (r2.clone(), gate_rx.clone(), events_tx.clone());
                thread::spawn(move || serve(stream, conn, r, g, e));
            }
        });
        FaultUpstream {
            addr,
            received,
            accepted,
            gate,
            events,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Let one waiting mode go on (`echo-then-*`, `slow-first`).
    pub fn release(&self) {
        self.gate.send(()).unwrap();
    }

    /// The next thing the upstream did (20 s at most).
    pub fn next_event(&self) -> FaultEvent {
        self.events
            .recv_timeout(Duration::from_secs(20))
            .expect("a fault upstream event")
    }

    /// Wait for `want`, skipping other events.
    pub fn wait_for(&self, want: FaultEvent) {
        loop {
            if self.next_event() == want {
                return;
            }
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The first `tok-…` word of the body (letters, digits, `-`).
fn token(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Some(at) = text.find("tok-") else {
        return "no-token".into();
    };
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

fn model(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A complete OpenAI chat completion response whose content is `content`.
pub fn completion_response(content: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"id":"chatcmpl-f","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One OpenAI stream chunk event carrying `content`.
pub fn chunk_event(content: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// An OpenAI chat stream whose text is `ABCD`, written the ways the SSE
/// grammar allows but few servers use: a leading BOM, a comment line, CRLF,
/// CR and LF line endings, and one event's JSON split over two `data:` lines.
pub fn sse_odd_body() -> Vec<u8> {
    let ev = |content: &str, finish: &str| {
        format!(
            r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":{finish}}}]}}"#
        )
    };
    let b = ev("B", "null");
    let (b1, b2) = b.split_at(b.find("\"choices\"").unwrap());
    let mut out = b"\xEF\xBB\xBF: a comment line\r\n".to_vec();
    out.extend_from_slice(format!("data: {}\r\n\r\n", ev("A", "null")).as_bytes());
    out.extend_from_slice(format!("data: {b1}\ndata: {b2}\n\n").as_bytes());
    out.extend_from_slice(format!("data: {}\r\r", ev("C", "null")).as_bytes());
    out.extend_from_slice(format!("data:{}\n\n", ev("D", "null")).as_bytes());
    out.extend_from_slice(format!("data: {}\n\n", ev("", "\"stop\"")).as_bytes());
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

/// The error body of `status-NNN` on OpenAI-format paths.
pub const OPENAI_ERROR_BODY: &str = r#"{"error":{"message":"fault: slow down","type":"rate_limit_error","param":null,"code":"rate_limited"}}"#;
/// The error body of `status-NNN` on Anthropic-format paths.
pub const ANTHROPIC_ERROR_BODY: &str =
    r#"{"type":"error","error":{"type":"rate_limit_error","message":"fault: slow down"}}"#;

fn error_response(status: u16, anthropic: bool) -> Vec<u8> {
    let body = if anthropic {
        ANTHROPIC_ERROR_BODY
    } else {
        OPENAI_ERROR_BODY
    };
    format!(
        "HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\nRetry-After: 7\r\n\
         x-ratelimit-remaining-requests: 0\r\nanthropic-ratelimit-requests-remaining: 0\r\n\
         x-request-id: req-fault-1\r\nset-cookie: fault=1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn wait_gate(gate: &Mutex<Receiver<()>>) {
    let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
}

/// Block until the peer closes (EOF or error), then report it.
fn until_peer_closes(stream: &mut TcpStream, conn: usize, events: &Sender<FaultEvent>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut b = [0u8; 512];
    loop {
        match stream.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = events.send(FaultEvent::PeerClosed(conn));
}

fn serve(
    stream: TcpStream,
    conn: usize,
    received: Arc<Mutex<Vec<Received>>>,
    gate: Arc<Mutex<Receiver<()>>>,
    events: Sender<FaultEvent>,
) {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut served = 0usize;
    loop {
        let Some((method, path, headers, body)) = read_request(&mut reader) else {
            let _ = events.send(FaultEvent::PeerClosed(conn));
            return;
        };
        let tok = token(&body);
        let mode = model(&body);
        received.lock().unwrap().push(Received {
            method,
            path: path.clone(),
            headers,
            body,
            conn,
        });
        let anthropic = path.contains("/messages");
        served += 1;
        let ok = match mode.as_str() {
            "echo" => w.write_all(&completion_response(&tok)).is_ok(),
            "408-if-reused" if served > 1 => {
                let _ = w.write_all(
                    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                );
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            "408-if-reused" => w.write_all(&completion_response(&tok)).is_ok(),
            "204-with-body" => w
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
                .is_ok(),
            "echo-then-408" | "echo-then-stale" | "echo-then-close" => {
                if w.write_all(&completion_response(&tok)).is_err() {
                    return;
                }
                wait_gate(&gate);
                match mode.as_str() {
                    "echo-then-408" => {
                        let _ = w.write_all(
                            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                        );
                        let _ = w.shutdown(Shutdown::Write);
                        let _ = events.send(FaultEvent::Spoke(conn));
                        until_peer_closes(&mut w, conn, &events);
                        return;
                    }
                    "echo-then-close" => {
                        let _ = w.shutdown(Shutdown::Both);
                        let _ = events.send(FaultEvent::Spoke(conn));
                        return;
                    }
                    _ => {
                        let ok = w.write_all(&completion_response("STALE")).is_ok();
                        let _ = events.send(FaultEvent::Spoke(conn));
                        ok
                    }
                }
            }
            "interim" | "interim-bytewise" => {
                let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
                bytes.extend_from_slice(&completion_response(&tok));
                if mode == "interim" {
                    w.write_all(&bytes).is_ok()
                } else {
                    bytes.iter().all(|b| w.write_all(&[*b]).is_ok())
                }
            }
            m if m.starts_with("status-") => {
                let status: u16 = m[7..].parse().unwrap_or(500);
                w.write_all(&error_response(status, anthropic)).is_ok()
            }
            "hang" => {
                until_peer_closes(&mut w, conn, &events);
                return;
            }
            "truncate" => {
                let mut bytes = SSE_HEAD.to_vec();
                for c in ["one", "two", "three"] {
                    bytes.extend_from_slice(&chunk(&chunk_event(c)));
                }
                let _ = w.write_all(&bytes);
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            "malformed" => {
                let mut bytes = SSE_HEAD.to_vec();
                bytes.extend_from_slice(&chunk(&chunk_event("good")));
                bytes.extend_from_slice(&chunk("data: {bad json\n\n"));
                bytes.extend_from_slice(&chunk("data: [DONE]\n\n"));
                bytes.extend_from_slice(b"0\r\n\r\n");
                w.write_all(&bytes).is_ok()
            }
            "stall" => {
                let mut bytes = SSE_HEAD.to_vec();
                bytes.extend_from_slice(&chunk(&chunk_event("before-stall")));
                let _ = w.write_all(&bytes);
                until_peer_closes(&mut w, conn, &events);
                return;
            }
            "stall-mid-event" => {
                let mut bytes = SSE_HEAD.to_vec();
                bytes.extend_from_slice(&chunk("data: {\"id\":\"c\",\"obj"));
                let _ = w.write_all(&bytes);
                until_peer_closes(&mut w, conn, &events);
                return;
            }
            "slow-first" => {
                if w.write_all(SSE_HEAD).is_err() {
                    return;
                }
                wait_gate(&gate);
                let mut bytes = Vec::new();
                bytes.extend_from_slice(&chunk(&chunk_event("late")));
                bytes.extend_from_slice(&chunk(&chunk_event(&tok)));
                bytes.extend_from_slice(&chunk("data: [DONE]\n\n"));
                bytes.extend_from_slice(b"0\r\n\r\n");
                w.write_all(&bytes).is_ok()
            }
            "ndjson-error" | "ndjson-long" => {
                let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                if mode == "ndjson-error" {
                    bytes.extend_from_slice(&chunk(
                        "{\"model\":\"m\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"partial\"},\"done\":false}\n",
                    ));
                    bytes.extend_from_slice(&chunk("{\"error\":\"fault: model crashed\"}\n"));
                    bytes.extend_from_slice(b"0\r\n\r\n");
                } else {
                    let line = format!(
                        "{{\"model\":\"m\",\"message\":{{\"role\":\"assistant\",\"content\":\"{}",
                        "a".repeat(17 << 20)
                    );
                    bytes.extend_from_slice(&chunk(&line));
                }
                // The router may close mid-write (line too long): that is fine.
                let _ = w.write_all(&bytes);
                if mode == "ndjson-long" {
                    until_peer_closes(&mut w, conn, &events);
                    return;
                }
                true
            }
            "sse-odd" => {
                let mut bytes = SSE_HEAD.to_vec();
                bytes.extend_from_slice(&chunk(&String::from_utf8(sse_odd_body()).unwrap()));
                bytes.extend_from_slice(b"0\r\n\r\n");
                bytes.iter().all(|b| w.write_all(&[*b]).is_ok())
            }
            "cl-te" => w
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .is_ok(),
            "close" => {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            other => panic!("fault upstream: unknown mode {other:?}"),
        };
        if !ok {
            let _ = events.send(FaultEvent::PeerClosed(conn));
            return;
        }
    }
}
