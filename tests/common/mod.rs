//! Test harness: the router binary started on a config written to a temp
//! dir (port 0, address read from its startup line), an in-process mock
//! upstream that records what it receives, and a raw HTTP/1.1 client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod fault;
pub mod fleet;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("osr-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running router process.
pub struct Router {
    pub addr: SocketAddr,
    pub child: Child,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl Router {
    /// Start the router on `config` (TOML text). `{LOG}` in the text is replaced
    /// by a log path inside the test's temp dir. The config should bind port 0.
    pub fn start(name: &str, config: &str) -> Router {
        Self::start_with_env(name, config, &[])
    }

    pub fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> Router {
        let dir = temp_dir(name);
        let log_path = dir.join("logs/requests.jsonl");
        let text = config.replace("{LOG}", log_path.to_str().unwrap());
        let cfg_path = dir.join("config.toml");
        std::fs::write(&cfg_path, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"));
        cmd.arg(&cfg_path)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn router");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel::<Result<SocketAddr, String>>();
        let lines2 = lines.clone();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Record the line before announcing the address, so a test that
                // reads stderr() right after start() sees the startup line.
                lines2.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(addr));
                    }
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(lines2.lock().unwrap().join("\n")));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(a)) => a,
            Ok(Err(out)) => panic!("router exited before listening:\n{out}"),
            Err(_) => panic!("router did not start in time"),
        };
        Router {
            addr,
            child,
            dir,
            log_path,
            stderr_lines: lines,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Wait until the log has at least `n` lines, then return them parsed.
    pub fn log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let complete: Vec<&str> = if text.ends_with('\n') {
                text.lines().collect()
            } else {
                text.lines()
                    .rev()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect()
            };
            if complete.len() >= n {
                return complete
                    .iter()
                    .map(|l| serde_json::from_str(l).expect("log line is JSON"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} log lines, have {}:\n{text}",
                complete.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body pieces as they arrived (chunk by chunk for chunked replies).
    pub chunks: Vec<Vec<u8>>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads HTTP/1.1 responses from a stream, keeping leftover bytes.
pub struct Reader {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    pub fn new(stream: TcpStream) -> Self {
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Read one response; None when the connection closed before a status line.
    pub fn response(&mut self) -> Option<Response> {
        self.response_for(false)
    }

    pub fn response_for(&mut self, head_request: bool) -> Option<Response> {
        let status_line = self.line()?;
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let l = String::from_utf8_lossy(&l).into_owned();
            let (n, v) = l.split_once(':')?;
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
        };
        if head_request || status == 100 || status == 204 || status == 304 {
            return Some(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&size_line)
                        .split(';')
                        .next()?
                        .trim(),
                    16,
                )
                .ok()?;
                if size == 0 {
                    // trailers until empty line
                    loop {
                        let l = self.line()?;
                        if l.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let data = self.exact(size)?;
                let crlf = self.exact(2)?;
                assert_eq!(crlf, b"\r\n", "chunk data must end with CRLF");
                resp.body.extend_from_slice(&data);
                resp.chunks.push(data);
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.parse().ok()?;
            let data = self.exact(n)?;
            resp.body = data.clone();
            resp.chunks.push(data);
        } else {
            // close-delimited
            loop {
                match self.fill() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            resp.body = std::mem::take(&mut self.buf);
            resp.chunks.push(resp.body.clone());
        }
        Some(resp)
    }

    /// Read until `done` holds for the bytes received and not yet parsed;
    /// false when the connection ended first. Nothing is consumed.
    pub fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) -> bool {
        while !done(&self.buf) {
            match self.fill() {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    /// True when the peer closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        matches!(self.fill(), Ok(0) | Err(_))
    }
}

/// Send raw bytes on a new connection and read one response.
pub fn raw(router: &Router, bytes: &[u8]) -> (Option<Response>, Reader) {
    let mut s = router.connect();
    s.write_all(bytes).unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    (resp, r)
}

/// POST a JSON body with extra headers; returns the response.
pub fn post(router: &Router, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let (resp, _) = raw(router, req.as_bytes());
    resp.expect("a response")
}

pub fn get(router: &Router, path: &str) -> Response {
    let (resp, _) = raw(
        router,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    );
    resp.expect("a response")
}

// ---------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------

/// One request the mock upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Index of the TCP connection it arrived on (counts accepted connections).
    pub conn: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the mock upstream does with one request.
#[derive(Clone)]
pub enum Reply {
    /// Write these byte pieces one write at a time (pieces let a test split
    /// an event across reads), then keep the connection alive.
    Pieces(Vec<Vec<u8>>),
    /// Write these pieces, then close the connection.
    PiecesThenClose(Vec<Vec<u8>>),
    /// Write the pieces, then wait for the `release` signal before continuing with `rest`.
    Gated {
        first: Vec<Vec<u8>>,
        rest: Vec<Vec<u8>>,
    },
    /// Never answer (keep the connection open until the peer closes it).
    Hang,
    /// Close the connection without answering.
    Close,
}

/// A JSON reply with Content-Length.
pub fn json_reply(status: u16, body: &str) -> Reply {
    Reply::Pieces(vec![format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Upstream: yes\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()])
}

/// A chunked SSE reply, one event per chunk, each chunk its own write.
pub fn sse_reply(events: &[&str]) -> Reply {
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
    for e in events {
        pieces.push(format!("{:x}\r\n{e}\r\n", e.len()).into_bytes());
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    Reply::Pieces(pieces)
}

/// The mock upstream: answers requests from a script, records them.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    replies: Arc<Mutex<Vec<Reply>>>,
    default: Arc<Mutex<Option<Reply>>>,
    pub release: Sender<()>,
    /// Receives a message each time a connection the mock served was closed by the peer.
    pub closed_rx: Receiver<usize>,
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let replies: Arc<Mutex<Vec<Reply>>> = Arc::new(Mutex::new(Vec::new()));
        let default: Arc<Mutex<Option<Reply>>> = Arc::new(Mutex::new(None));
        let (release, release_rx) = channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (closed_tx, closed_rx) = channel::<usize>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (r2, rep2, d2, acc2) = (
            received.clone(),
            replies.clone(),
            default.clone(),
            accepted.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let conn = acc2.fetch_add(1, Ordering::SeqCst);
                let (r, rep, d, rel, ctx) = (
                    r2.clone(),
                    rep2.clone(),
                    d2.clone(),
                    release_rx.clone(),
                    closed_tx.clone(),
                );
                thread::spawn(move || serve_upstream(stream, conn, r, rep, d, rel, ctx));
            }
        });
        Upstream {
            addr,
            received,
            replies,
            default,
            release,
            closed_rx,
            accepted,
        }
    }

    /// Queue replies for the next requests, in order.
    pub fn push(&self, reply: Reply) {
        self.replies.lock().unwrap().push(reply);
    }

    /// Reply used when the queue is empty.
    pub fn set_default(&self, reply: Reply) {
        *self.default.lock().unwrap() = Some(reply);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

pub fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn serve_upstream(
    stream: TcpStream,
    conn: usize,
    received: Arc<Mutex<Vec<Received>>>,
    replies: Arc<Mutex<Vec<Reply>>>,
    default: Arc<Mutex<Option<Reply>>>,
    release: Arc<Mutex<Receiver<()>>>,
    closed: Sender<usize>,
) {
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let Some((method, path, headers, body)) = read_request(&mut reader) else {
            let _ = closed.send(conn);
            return;
        };
        received.lock().unwrap().push(Received {
            method,
            path,
            headers,
            body,
            conn,
        });
        let reply = {
            let mut q = replies.lock().unwrap();
            if q.is_empty() {
                default.lock().unwrap().clone()
            } else {
                Some(q.remove(0))
            }
        };
        let reply = reply.unwrap_or_else(|| json_reply(200, r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"default"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#));
        let write_all = |w: &mut TcpStream, pieces: &[Vec<u8>]| -> bool {
            for p in pieces {
                if w.write_all(p).is_err() || w.flush().is_err() {
                    return false;
                }
            }
            true
        };
        match reply {
            Reply::Pieces(p) => {
                if !write_all(&mut writer, &p) {
                    let _ = closed.send(conn);
                    return;
                }
            }
            Reply::PiecesThenClose(p) => {
                write_all(&mut writer, &p);
                let _ = writer.shutdown(Shutdown::Both);
                let _ = closed.send(conn);
                return;
            }
            Reply::Gated { first, rest } => {
                write_all(&mut writer, &first);
                // While gated, a watcher notices the peer closing; the
                // connection is closed after `rest`, so it is never reused.
                let mut watcher = writer.try_clone().unwrap();
                let closed2 = closed.clone();
                thread::spawn(move || {
                    let mut b = [0u8; 1];
                    if matches!(watcher.read(&mut b), Ok(0) | Err(_)) {
                        let _ = closed2.send(conn);
                    }
                });
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20));
                write_all(&mut writer, &rest);
                let _ = writer.shutdown(Shutdown::Write);
                return;
            }
            Reply::Hang => {
                // Wait for the peer to close: a read returning 0 or an error.
                let mut b = [0u8; 1];
                let _ = reader
                    .get_mut()
                    .set_read_timeout(Some(Duration::from_secs(30)));
                let _ = reader.read(&mut b);
                let _ = closed.send(conn);
                return;
            }
            Reply::Close => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// The `[server]` (loopback, port 0, one worker, plus `extra` keys) and
/// `[logging]` (to `{LOG}`) tables every test config starts with.
pub fn server_head(extra: &str) -> String {
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nworkers = 1\n{extra}\n\n[logging]\nenabled = true\npath = \"{{LOG}}\"\n"
    )
}

/// A minimal config: one openai provider at `upstream`, bound to port 0, logging to {LOG}.
pub fn basic_config(upstream: &str, extra: &str) -> String {
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
name = "up"
format = "openai"
base_url = "{upstream}"

{extra}
"#
    )
}

/// Queue a streamed reply that sends its head and `data: one`, then waits
/// for `up.release` before `data: two`, `[DONE]` and the end.
pub fn gated_stream(up: &Upstream) {
    let chunk = |d: &str| format!("{:x}\r\n{d}\r\n", d.len()).into_bytes();
    let mut rest = chunk("data: two\n\ndata: [DONE]\n\n");
    rest.extend_from_slice(b"0\r\n\r\n");
    up.push(Reply::Gated {
        first: vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            chunk("data: one\n\n"),
        ],
        rest: vec![rest],
    });
}

/// Start a streamed chat request and read until its first event arrived.
pub fn start_stream(router: &Router) -> Reader {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let mut s = router.connect();
    std::io::Write::write_fmt(
        &mut s,
        format_args!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    let mut r = Reader::new(s);
    assert!(r.read_until(|b| b.windows(9).any(|w| w == b"data: one")));
    r
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
