//! `loadtest mock`: a fast upstream speaking OpenAI chat, Responses, Anthropic
//! Messages and Ollama, plain and streaming.
//!
//! One monoio worker per core, each with its own `SO_REUSEPORT` listener.
//! Every response is built once at startup (per worker) and written from the
//! same buffer on every request: the mock parses the request head with
//! `httparse`, reads the body, looks for `"stream": true` with a byte search
//! and writes. It must never be the bottleneck of a measurement.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use crate::args::Args;
use crate::http::Chunked;
use crate::rt;

/// Largest request body the mock reads (larger: 413 and close).
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct MockConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub events: usize,
    pub interval: Duration,
    pub first_byte: Duration,
}

pub const USAGE: &str = "\
loadtest mock [--listen 127.0.0.1:0] [--workers N] [--events 20] [--interval-ms 0] [--first-byte-ms 0]

A fast upstream: POST /v1/chat/completions, /chat/completions (OpenAI chat),
/v1/responses (Responses), /v1/messages (Anthropic), /api/chat (Ollama NDJSON),
GET /api/tags, /v1/models, /health. `\"stream\": true` in the body streams
--events events, --interval-ms apart, after --first-byte-ms.
Prints `loadtest mock listening on http://ADDR` to stderr.
";

pub fn main(argv: &[String]) -> Result<(), String> {
    let a = Args::parse(
        argv,
        &[
            "listen",
            "workers",
            "events",
            "interval-ms",
            "first-byte-ms",
        ],
        &[],
    )?;
    let listen: SocketAddr =
        a.parse_or("listen", "127.0.0.1:0".parse().map_err(|_| "bad default")?)?;
    let workers = a.parse_or("workers", rt::allowed_cpus().len().max(1))?;
    let events: usize = a.parse_or("events", 20)?;
    let interval: f64 = a.parse_or("interval-ms", 0.0)?;
    let first_byte: f64 = a.parse_or("first-byte-ms", 0.0)?;
    if events == 0
        || workers == 0
        || interval.is_nan()
        || interval < 0.0
        || first_byte.is_nan()
        || first_byte < 0.0
    {
        return Err("--events and --workers must be >= 1, delays >= 0".into());
    }
    let cfg = MockConfig {
        listen,
        workers,
        events,
        interval: Duration::from_secs_f64(interval / 1e3),
        first_byte: Duration::from_secs_f64(first_byte / 1e3),
    };
    let (addr, threads) = start(cfg)?;
    eprintln!(
        "loadtest mock listening on http://{addr} ({workers} workers, {} driver)",
        if rt::uring() { "io_uring" } else { "epoll" }
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Start the workers; returns the bound address once every worker listens.
pub fn start(cfg: MockConfig) -> Result<(SocketAddr, Vec<std::thread::JoinHandle<()>>), String> {
    rt::raise_nofile();
    let mut addr = cfg.listen;
    let mut threads = Vec::new();
    for w in 0..cfg.workers {
        let (tx, rx) = mpsc::channel();
        let cfg = cfg.clone();
        let bind = addr;
        let t = std::thread::Builder::new()
            .name(format!("mock-{w}"))
            .spawn(move || worker(cfg, bind, tx))
            .map_err(|e| format!("cannot spawn worker: {e}"))?;
        match rx.recv() {
            Ok(Ok(a)) => addr = a,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("mock worker {w} failed to start")),
        }
        threads.push(t);
    }
    Ok((addr, threads))
}

fn worker(cfg: MockConfig, bind: SocketAddr, ready: mpsc::Sender<Result<SocketAddr, String>>) {
    let mut runtime = match rt::runtime() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(4096);
        let listener = match TcpListener::bind_with_config(bind, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {bind}: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(listener.local_addr().unwrap_or(bind)));
        let canned = Rc::new(Canned::new(&cfg));
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    monoio::spawn(serve(s, canned.clone()));
                }
                Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
}

/// One API's prebuilt answers.
struct Api {
    /// The whole plain response (head and body).
    plain: Rc<Vec<u8>>,
    /// The whole streamed response, for `--interval-ms 0`.
    stream_whole: Rc<Vec<u8>>,
    /// The head plus the first event's chunk, then one chunk per event; the
    /// last one carries the terminal events and the chunked terminator.
    stream_parts: Vec<Rc<Vec<u8>>>,
}

/// Every answer the mock gives, built once per worker.
struct Canned {
    chat: Api,
    responses: Api,
    messages: Api,
    ollama: Api,
    tags: Rc<Vec<u8>>,
    models: Rc<Vec<u8>>,
    health: Rc<Vec<u8>>,
    ollama_root: Rc<Vec<u8>>,
    not_found: Rc<Vec<u8>>,
    bad_request: Rc<Vec<u8>>,
    too_large: Rc<Vec<u8>>,
    interval: Duration,
    first_byte: Duration,
}

#[derive(Clone, Copy)]
enum Route {
    Chat,
    Responses,
    Messages,
    Ollama,
    Fixed(Fixed),
}

#[derive(Clone, Copy)]
enum Fixed {
    Tags,
    Models,
    Health,
    OllamaRoot,
    NotFound,
}

const WORDS: [&str; 8] = [
    "Lorem ",
    "ipsum ",
    "dolor ",
    "sit ",
    "amet, ",
    "consectetur ",
    "adipiscing ",
    "elit. ",
];
const MODEL: &str = "mock-model";
const PROMPT_TOKENS: usize = 24;

fn word(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

fn full_text(n: usize) -> String {
    (0..n).map(word).collect()
}

fn json_head(status: &str, len: usize) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
}

fn json_response(status: &str, body: &str) -> Rc<Vec<u8>> {
    let mut v = json_head(status, body.len()).into_bytes();
    v.extend_from_slice(body.as_bytes());
    Rc::new(v)
}

fn chunk(data: &str) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

impl Api {
    /// `events[i]` is the text of event i (already framed as SSE/NDJSON).
    fn new(plain_body: &str, content_type: &str, events: Vec<String>) -> Api {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let mut parts: Vec<Vec<u8>> = events.iter().map(|e| chunk(e)).collect();
        parts[0].splice(0..0, head.bytes());
        if let Some(last) = parts.last_mut() {
            last.extend_from_slice(b"0\r\n\r\n");
        }
        let whole: Vec<u8> = parts.concat();
        Api {
            plain: json_response("200 OK", plain_body),
            stream_whole: Rc::new(whole),
            stream_parts: parts.into_iter().map(Rc::new).collect(),
        }
    }
}

impl Canned {
    fn new(cfg: &MockConfig) -> Canned {
        let n = cfg.events;
        Canned {
            chat: chat(n),
            responses: responses(n),
            messages: messages(n),
            ollama: ollama(n),
            tags: json_response(
                "200 OK",
                &format!(
                    r#"{{"models":[{{"name":"{MODEL}:latest","model":"{MODEL}:latest","modified_at":"2024-01-01T00:00:00Z","size":1000000,"digest":"0000000000000000","details":{{"parent_model":"","format":"gguf","family":"mock","families":["mock"],"parameter_size":"1B","quantization_level":"Q4_0"}}}}]}}"#
                ),
            ),
            models: json_response(
                "200 OK",
                &format!(r#"{{"object":"list","data":[{{"id":"{MODEL}","object":"model","created":1700000000,"owned_by":"loadtest"}}]}}"#),
            ),
            health: json_response("200 OK", r#"{"status":"ok"}"#),
            ollama_root: Rc::new(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\nOllama is running".to_vec()),
            not_found: json_response(
                "404 Not Found",
                r#"{"error":{"message":"loadtest mock: no such route","type":"invalid_request_error","code":"not_found"}}"#,
            ),
            bad_request: json_response(
                "400 Bad Request",
                r#"{"error":{"message":"loadtest mock: bad request","type":"invalid_request_error"}}"#,
            ),
            too_large: json_response(
                "413 Payload Too Large",
                r#"{"error":{"message":"loadtest mock: body too large","type":"invalid_request_error"}}"#,
            ),
            interval: cfg.interval,
            first_byte: cfg.first_byte,
        }
    }

    fn fixed(&self, f: Fixed) -> &Rc<Vec<u8>> {
        match f {
            Fixed::Tags => &self.tags,
            Fixed::Models => &self.models,
            Fixed::Health => &self.health,
            Fixed::OllamaRoot => &self.ollama_root,
            Fixed::NotFound => &self.not_found,
        }
    }
}

fn chat(n: usize) -> Api {
    let base = format!(
        r#""id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"{MODEL}""#
    );
    let mut events: Vec<String> = (0..n)
        .map(|i| {
            let delta = if i == 0 {
                format!(r#"{{"role":"assistant","content":"{}"}}"#, word(i))
            } else {
                format!(r#"{{"content":"{}"}}"#, word(i))
            };
            format!("data: {{{base},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n")
        })
        .collect();
    if let Some(last) = events.last_mut() {
        last.push_str(&format!("data: {{{base},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"));
        last.push_str(&format!(
            "data: {{{base},\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            PROMPT_TOKENS + n
        ));
        last.push_str("data: [DONE]\n\n");
    }
    let plain = format!(
        r#"{{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{n},"total_tokens":{}}}}}"#,
        full_text(n),
        PROMPT_TOKENS + n
    );
    Api::new(&plain, "text/event-stream", events)
}

fn responses(n: usize) -> Api {
    let mut seq = 0;
    let mut ev = |ty: &str, rest: &str| {
        let s =
            format!("event: {ty}\ndata: {{\"type\":\"{ty}\",\"sequence_number\":{seq}{rest}}}\n\n");
        seq += 1;
        s
    };
    let text = full_text(n);
    let item_done = format!(
        r#"{{"id":"msg_mock","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"{text}","annotations":[]}}]}}"#
    );
    let usage = format!(
        r#"{{"input_tokens":{PROMPT_TOKENS},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{n},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
        PROMPT_TOKENS + n
    );
    let resp = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_mock","object":"response","created_at":1700000000,"status":"{status}","model":"{MODEL}","output":[{output}],"usage":{usage}}}"#
        )
    };
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = String::new();
        if i == 0 {
            e.push_str(&ev(
                "response.created",
                &format!(",\"response\":{}", resp("in_progress", "", "null")),
            ));
            e.push_str(&ev(
                "response.in_progress",
                &format!(",\"response\":{}", resp("in_progress", "", "null")),
            ));
            e.push_str(&ev(
                "response.output_item.added",
                r#","output_index":0,"item":{"id":"msg_mock","type":"message","status":"in_progress","role":"assistant","content":[]}"#,
            ));
            e.push_str(&ev(
                "response.content_part.added",
                r#","item_id":"msg_mock","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}"#,
            ));
        }
        e.push_str(&ev(
            "response.output_text.delta",
            &format!(
                r#","item_id":"msg_mock","output_index":0,"content_index":0,"delta":"{}""#,
                word(i)
            ),
        ));
        if i == n - 1 {
            e.push_str(&ev(
                "response.output_text.done",
                &format!(
                    r#","item_id":"msg_mock","output_index":0,"content_index":0,"text":"{text}""#
                ),
            ));
            e.push_str(&ev(
                "response.content_part.done",
                &format!(r#","item_id":"msg_mock","output_index":0,"content_index":0,"part":{{"type":"output_text","text":"{text}","annotations":[]}}"#),
            ));
            e.push_str(&ev(
                "response.output_item.done",
                &format!(r#","output_index":0,"item":{item_done}"#),
            ));
            e.push_str(&ev(
                "response.completed",
                &format!(",\"response\":{}", resp("completed", &item_done, &usage)),
            ));
        }
        events.push(e);
    }
    Api::new(
        &resp("completed", &item_done, &usage),
        "text/event-stream",
        events,
    )
}

fn messages(n: usize) -> Api {
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = String::new();
        if i == 0 {
            e.push_str(&format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{MODEL}\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{PROMPT_TOKENS},\"output_tokens\":1,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}}}}}}\n\n"
            ));
            e.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        }
        e.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            word(i)
        ));
        if i == n - 1 {
            e.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
            e.push_str(&format!(
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}\n\n"
            ));
            e.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        }
        events.push(e);
    }
    let plain = format!(
        r#"{{"id":"msg_mock","type":"message","role":"assistant","model":"{MODEL}","content":[{{"type":"text","text":"{}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{PROMPT_TOKENS},"output_tokens":{n}}}}}"#,
        full_text(n)
    );
    Api::new(&plain, "text/event-stream", events)
}

fn ollama(n: usize) -> Api {
    let head = format!(r#""model":"{MODEL}","created_at":"2024-01-01T00:00:00Z""#);
    let stats = format!(
        r#""done":true,"done_reason":"stop","total_duration":1000000,"load_duration":1000,"prompt_eval_count":{PROMPT_TOKENS},"prompt_eval_duration":100000,"eval_count":{n},"eval_duration":900000"#
    );
    let mut events: Vec<String> = (0..n)
        .map(|i| format!("{{{head},\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"done\":false}}\n", word(i)))
        .collect();
    if let Some(last) = events.last_mut() {
        last.push_str(&format!(
            "{{{head},\"message\":{{\"role\":\"assistant\",\"content\":\"\"}},{stats}}}\n"
        ));
    }
    let plain = format!(
        "{{{head},\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},{stats}}}",
        full_text(n)
    );
    Api::new(&plain, "application/x-ndjson", events)
}

/// What the head of one request says.
struct Req {
    route: Route,
    head_len: usize,
    body: BodyLen,
    close: bool,
    expect_continue: bool,
}

enum BodyLen {
    Length(usize),
    Chunked,
}

enum Parsed {
    Complete(Req),
    Partial,
    Bad,
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let mut close = req.version == Some(0);
    let mut body = BodyLen::Length(0);
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => body = BodyLen::Length(n),
                None => return Parsed::Bad,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            body = BodyLen::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let route = match (req.method.unwrap_or(""), path) {
        ("POST", "/v1/chat/completions" | "/chat/completions") => Route::Chat,
        ("POST", "/v1/responses" | "/responses") => Route::Responses,
        ("POST", "/v1/messages" | "/messages") => Route::Messages,
        ("POST", "/api/chat") => Route::Ollama,
        ("GET", "/api/tags") => Route::Fixed(Fixed::Tags),
        ("GET", "/v1/models" | "/models") => Route::Fixed(Fixed::Models),
        ("GET", "/health" | "/healthz" | "/livez" | "/readyz") => Route::Fixed(Fixed::Health),
        ("GET", "/") => Route::Fixed(Fixed::OllamaRoot),
        _ => Route::Fixed(Fixed::NotFound),
    };
    Parsed::Complete(Req {
        route,
        head_len,
        body,
        close,
        expect_continue,
    })
}

/// `"stream": true|false` in a JSON body, by byte search (no JSON parse).
pub fn stream_flag(body: &[u8]) -> Option<bool> {
    for at in memchr::memmem::find_iter(body, b"\"stream\"") {
        let mut rest = body[at + 8..].trim_ascii_start();
        if let Some(r) = rest.strip_prefix(b":") {
            rest = r.trim_ascii_start();
            if rest.starts_with(b"true") {
                return Some(true);
            }
            if rest.starts_with(b"false") {
                return Some(false);
            }
        }
    }
    None
}

async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(4096));
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (r, slice): (_, SliceMut<Vec<u8>>) = s.read(buf.slice_mut(len..cap)).await;
    (r, slice.into_inner())
}

async fn write(s: &mut TcpStream, data: &Rc<Vec<u8>>) -> bool {
    let (r, _) = s.write_all(data.clone()).await;
    r.is_ok()
}

async fn serve(mut s: TcpStream, canned: Rc<Canned>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // A complete head.
        let req = loop {
            if !buf.is_empty() {
                match parse_request(&buf) {
                    Parsed::Complete(r) => break r,
                    Parsed::Bad => {
                        write(&mut s, &canned.bad_request).await;
                        return;
                    }
                    Parsed::Partial if buf.len() > 256 * 1024 => {
                        write(&mut s, &canned.bad_request).await;
                        return;
                    }
                    Parsed::Partial => {}
                }
            }
            let (r, b) = read_more(&mut s, buf).await;
            buf = b;
            match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        if req.expect_continue && buf.len() == req.head_len {
            let (r, _) = s.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await;
            if r.is_err() {
                return;
            }
        }
        // The whole body.
        let (body_start, body_end) = match req.body {
            BodyLen::Length(n) => {
                if n > MAX_BODY {
                    write(&mut s, &canned.too_large).await;
                    return;
                }
                let end = req.head_len + n;
                while buf.len() < end {
                    let (r, b) = read_more(&mut s, buf).await;
                    buf = b;
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
                (req.head_len, end)
            }
            BodyLen::Chunked => {
                let mut dec = Chunked::default();
                let mut pos = req.head_len;
                loop {
                    match dec.feed(&buf[pos..], |_| {}) {
                        Ok((n, true)) => break (req.head_len, pos + n),
                        Ok((n, false)) => pos += n,
                        Err(_) => {
                            write(&mut s, &canned.bad_request).await;
                            return;
                        }
                    }
                    if buf.len() > MAX_BODY {
                        write(&mut s, &canned.too_large).await;
                        return;
                    }
                    let (r, b) = read_more(&mut s, buf).await;
                    buf = b;
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
            }
        };
        let body = &buf[body_start..body_end];
        let ok = match req.route {
            Route::Fixed(f) => write(&mut s, canned.fixed(f)).await,
            Route::Chat => {
                respond(
                    &mut s,
                    &canned,
                    &canned.chat,
                    stream_flag(body).unwrap_or(false),
                )
                .await
            }
            Route::Responses => {
                respond(
                    &mut s,
                    &canned,
                    &canned.responses,
                    stream_flag(body).unwrap_or(false),
                )
                .await
            }
            Route::Messages => {
                respond(
                    &mut s,
                    &canned,
                    &canned.messages,
                    stream_flag(body).unwrap_or(false),
                )
                .await
            }
            // Ollama streams unless told not to.
            Route::Ollama => {
                respond(
                    &mut s,
                    &canned,
                    &canned.ollama,
                    stream_flag(body).unwrap_or(true),
                )
                .await
            }
        };
        if !ok || req.close {
            return;
        }
        buf.drain(..body_end);
    }
}

async fn respond(s: &mut TcpStream, canned: &Canned, api: &Api, stream: bool) -> bool {
    if !canned.first_byte.is_zero() {
        monoio::time::sleep(canned.first_byte).await;
    }
    if !stream {
        return write(s, &api.plain).await;
    }
    if canned.interval.is_zero() {
        return write(s, &api.stream_whole).await;
    }
    for (i, part) in api.stream_parts.iter().enumerate() {
        if i > 0 {
            monoio::time::sleep(canned.interval).await;
        }
        if !write(s, part).await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{EventScan, StreamKind, parse_response_head};

    #[test]
    fn stream_flag_search() {
        assert_eq!(stream_flag(br#"{"model":"m","stream":true}"#), Some(true));
        assert_eq!(stream_flag(br#"{"stream" : false,"x":1}"#), Some(false));
        assert_eq!(
            stream_flag(br#"{"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(
            stream_flag(br#"{"messages":[{"content":"\"stream\": true"}]}"#),
            None
        );
    }

    /// Each prebuilt stream is valid chunked framing holding `n` content
    /// events plus the protocol's own, and ends with its terminal event.
    #[test]
    fn canned_streams_are_well_framed() {
        for (api, kind, extra) in [
            (chat(5), StreamKind::Sse, 3),
            (responses(5), StreamKind::Sse, 8),
            (messages(5), StreamKind::Sse, 5),
            (ollama(5), StreamKind::Ndjson, 1),
        ] {
            let whole = api.stream_whole.as_slice();
            let head = parse_response_head(whole).unwrap().unwrap();
            assert_eq!(head.kind, kind);
            let mut dec = Chunked::default();
            let mut scan = EventScan::new(kind);
            let mut body = Vec::new();
            let (_, done) = dec
                .feed(&whole[head.head_len..], |d| body.extend_from_slice(d))
                .unwrap();
            assert!(done);
            scan.feed(&body, || {});
            assert_eq!(scan.events, 5 + extra);
            assert!(scan.terminal);
            assert_eq!(
                api.stream_parts
                    .iter()
                    .flat_map(|p| p.iter().copied())
                    .collect::<Vec<u8>>(),
                whole
            );
            // Every SSE data line is valid JSON.
            for line in body.split(|&b| b == b'\n') {
                let json = line.strip_prefix(b"data: ").unwrap_or(line);
                if !json.is_empty() && !line.starts_with(b"event: ") && json != b"[DONE]" {
                    serde_json::from_slice::<serde_json::Value>(json).unwrap();
                }
            }
            let plain = api.plain.as_slice();
            let head = parse_response_head(plain).unwrap().unwrap();
            serde_json::from_slice::<serde_json::Value>(&plain[head.head_len..]).unwrap();
        }
    }
}
