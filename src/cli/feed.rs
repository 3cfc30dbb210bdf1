//! A small blocking HTTP/1.1 client for a running router: the dashboard
//! feed (`GET /dashboard/events`, Server-Sent Events) that `watch` and `tui`
//! follow, and the streamed chat request the `tui` sends.
//!
//! The parsers are synchronous functions over byte slices ([`parse_head`],
//! [`Framing`], [`SseParser`]), fed by a thin read loop ([`Body`]), so they
//! are tested at every split point without sockets. [`follow`] keeps the
//! feed open: it reconnects with a growing backoff when the router goes away
//! (a restart, a drain) and gives up only on answers a retry cannot fix
//! (401: an API key is needed; 404: the router has no feed).

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The environment variable the key for `[server] api_key_env` is read from.
pub const API_KEY_ENV: &str = "OPENSOURCELLMROUTER_API_KEY";

/// Where `watch` and `tui` look when no URL is given.
pub const DEFAULT_URL: &str = "http://localhost:8090";

/// The feed's path, below the URL's own path.
pub const FEED_PATH: &str = "/dashboard/events";

/// A response head larger than this is refused (the router's are tiny).
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size or trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// A non-stream body (an error reply) is read up to this size.
const MAX_BODY: usize = 1024 * 1024;
/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The feed is read in ticks this long, so a caller can stop, redraw or
/// notice its stdout closed while the router is silent.
const TICK: Duration = Duration::from_millis(250);
/// The router sends a keep-alive comment every 15 s; this much silence means
/// the connection is dead (a host that vanished without a FIN).
const SILENCE: Duration = Duration::from_secs(45);
/// Reconnect backoff: first wait, and the ceiling it doubles up to.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A router's base URL, parsed: plain `http://` only (the router serves no TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written (a name, an IPv4 address, or `[v6]`).
    pub host: String,
    pub port: u16,
    /// The URL's path without a trailing `/` (`""` for the root).
    pub base: String,
    /// The URL's query (`api_key=…`), appended to every request; empty if none.
    pub query: String,
    /// Sent as `Authorization: Bearer`, from [`API_KEY_ENV`].
    pub api_key: Option<String>,
}

impl Target {
    /// Parse `http://host[:port][/path][?query]`; a URL without a scheme is
    /// taken as `http://`.
    pub fn parse(url: &str, api_key: Option<String>) -> Result<Target, String> {
        let url = url.trim();
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(format!(
                "{url}: https is not supported here; the router serves plain http (http://…)"
            ));
        } else if url.contains("://") {
            return Err(format!("{url}: only http:// URLs are supported"));
        } else {
            url
        };
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{url}: expected http://HOST[:PORT]"))?;
        Ok(Target {
            host,
            port,
            base: path.trim_end_matches('/').to_string(),
            query: query.to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
        })
    }

    /// The target with the API key from the environment, if set.
    pub fn from_env(url: &str) -> Result<Target, String> {
        Target::parse(url, std::env::var(API_KEY_ENV).ok())
    }

    /// `http://host:port` plus the base path, for messages.
    pub fn display(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.base)
    }

    /// The request target for `path` below the base, with the URL's query.
    fn request_target(&self, path: &str) -> String {
        if self.query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{}", self.base, self.query)
        }
    }

    /// Request head bytes: `method path`, Host, the key, `extra` headers.
    pub fn request_head(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> String {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: opensourcellmrouter/{}\r\n",
            self.request_target(path),
            self.host,
            self.port,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let mut last = io::Error::new(ErrorKind::NotFound, format!("{host}: no address"));
        for addr in (host, self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // `[v6]:port` or `[v6]`
    if let Some(end) = authority.find(']') {
        let host = &authority[..=end];
        let port = match &authority[end + 1..] {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), 80)),
    }
}

// ---------------------------------------------------------------------------
// Parsers: response head, body framing, SSE
// ---------------------------------------------------------------------------

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_type: String,
    pub framing: Framing,
}

/// Parse a response head from the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and the bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut content_type = String::new();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_ascii_lowercase(),
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            }
            "content-length" => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad content-length: {value:?}"))?,
                )
            }
            _ => {}
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunk::Size(Vec::new()))
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some((
        Head {
            status,
            content_type,
            framing,
        },
        end + 4,
    )))
}

/// How a response body ends, and the decoder state for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Until the connection closes (what the feed sends).
    Close,
    /// This many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a size line (bytes so far).
    Size(Vec<u8>),
    /// This many data bytes of the current chunk still to come.
    Data(u64),
    /// Skipping the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines after the last chunk (the current one so far).
    Trailer(Vec<u8>),
    /// The last chunk and trailers are read.
    Done,
}

impl Framing {
    /// Decode `input` (all of it), appending body bytes to `out`. `Ok(true)`
    /// once the body is complete; bytes after its end are ignored.
    pub fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        match self {
            Framing::Close => {
                out.extend_from_slice(input);
                Ok(false)
            }
            Framing::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                Ok(*left == 0)
            }
            Framing::Chunked(state) => {
                while !input.is_empty() || matches!(state, Chunk::Done) {
                    match state {
                        Chunk::Done => return Ok(true),
                        Chunk::Size(line) => {
                            let (taken, complete) = take_line(input, line)?;
                            input = &input[taken..];
                            if complete {
                                let text = String::from_utf8_lossy(line);
                                let digits = text.split(';').next().unwrap_or_default().trim();
                                let size = u64::from_str_radix(digits, 16)
                                    .map_err(|_| format!("bad chunk size line: {text:?}"))?;
                                *state = if size == 0 {
                                    Chunk::Trailer(Vec::new())
                                } else {
                                    Chunk::Data(size)
                                };
                            }
                        }
                        Chunk::Data(left) => {
                            let n = input
                                .len()
                                .min(usize::try_from(*left).unwrap_or(usize::MAX));
                            out.extend_from_slice(&input[..n]);
                            input = &input[n..];
                            *left -= n as u64;
                            if *left == 0 {
                                *state = Chunk::DataEnd;
                            }
                        }
                        Chunk::DataEnd => match input.iter().position(|&b| b == b'\n') {
                            Some(i) => {
                                input = &input[i + 1..];
                                *state = Chunk::Size(Vec::new());
                            }
                            None => input = &[],
                        },
                        Chunk::Trailer(line) => {
                            let (taken, complete) = take_line(input, line)?;
                            input = &input[taken..];
                            if complete {
                                // An empty line ends the trailers.
                                *state = if line.is_empty() {
                                    Chunk::Done
                                } else {
                                    Chunk::Trailer(Vec::new())
                                };
                            }
                        }
                    }
                }
                Ok(matches!(state, Chunk::Done))
            }
        }
    }
}

/// Move bytes of `input` up to a LF into `line` (CR and LF dropped):
/// (bytes taken, whether the line is complete).
fn take_line(input: &[u8], line: &mut Vec<u8>) -> Result<(usize, bool), String> {
    let (taken, complete) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (i + 1, true),
        None => (input.len(), false),
    };
    line.extend_from_slice(&input[..taken]);
    if complete {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_LINE {
        return Err("line too long".into());
    }
    Ok((taken, complete))
}

/// An incremental Server-Sent Events parser: bytes in, the `data` of each
/// event out (multi-line data joined with `\n`). Comments (`: keep-alive`)
/// and other fields are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    ready: VecDeque<String>,
}

impl SseParser {
    pub fn push(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..i]);
            bytes = &bytes[i + 1..];
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            self.field(&line);
        }
        self.line.extend_from_slice(bytes);
        // A line this long is no event we can use: keep memory bounded.
        if self.line.len() > 16 * MAX_BODY {
            self.line.clear();
        }
    }

    fn field(&mut self, line: &[u8]) {
        if line.is_empty() {
            if self.has_data {
                self.ready.push_back(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        let Some(value) = line.strip_prefix(b"data") else {
            return; // a comment, or a field we do not use
        };
        let value = match value {
            [] => &[][..],
            [b':', b' ', rest @ ..] => rest,
            [b':', rest @ ..] => rest,
            _ => return, // a field merely starting with "data"
        };
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(&String::from_utf8_lossy(value));
        self.has_data = true;
    }

    /// The next complete event's data, if any.
    pub fn pop(&mut self) -> Option<String> {
        self.ready.pop_front()
    }
}

// ---------------------------------------------------------------------------
// The read loop
// ---------------------------------------------------------------------------

/// An open response: the head, and a body reader.
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Body,
}

/// Reads and decodes a body from its connection. After a read timeout
/// (`ErrorKind::WouldBlock`/`TimedOut`) it can be called again.
pub struct Body {
    stream: TcpStream,
    framing: Framing,
    /// Decoded body bytes not yet handed out.
    decoded: Vec<u8>,
    sse: SseParser,
    done: bool,
    /// When bytes last arrived.
    last_read: Instant,
}

impl Body {
    /// Read once more from the connection; false when the body has ended.
    fn fill(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut buf = [0u8; 16 * 1024];
        let n = self.stream.read(&mut buf)?;
        self.last_read = Instant::now();
        if n == 0 {
            self.done = true;
            return match self.framing {
                Framing::Close => Ok(false),
                _ => Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed before the end of the body",
                )),
            };
        }
        self.done = self
            .framing
            .decode(&buf[..n], &mut self.decoded)
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        Ok(true)
    }

    /// The next SSE event's data; `Ok(None)` at the end of the body.
    pub fn next_event(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(ev) = self.sse.pop() {
                return Ok(Some(ev));
            }
            if !self.decoded.is_empty() {
                self.sse.push(&self.decoded);
                self.decoded.clear();
                continue;
            }
            if !self.fill()? {
                self.sse.push(b"\n\n"); // an event cut by the close still counts
                return Ok(self.sse.pop());
            }
        }
    }

    /// The whole body (up to a limit), for a non-stream reply.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        while self.decoded.len() < MAX_BODY && self.fill()? {}
        Ok(std::mem::take(&mut self.decoded))
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }
}

/// Send a request (head from [`Target::request_head`], then `body`) and read
/// the response head. `timeout` applies to each read.
pub fn send(target: &Target, head: &str, body: &[u8], timeout: Duration) -> io::Result<Response> {
    let mut stream = target.connect()?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8 * 1024];
    let deadline = Instant::now() + timeout;
    let (head, used) = loop {
        if let Some(found) =
            parse_head(&buf).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?
        {
            break found;
        }
        let n = match stream.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) && Instant::now() < deadline => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let mut framing = head.framing;
    let mut decoded = Vec::new();
    let done = framing
        .decode(&buf[used..], &mut decoded)
        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
    Ok(Response {
        status: head.status,
        content_type: head.content_type,
        body: Body {
            stream,
            framing,
            decoded,
            sse: SseParser::default(),
            done,
            last_read: Instant::now(),
        },
    })
}

/// A read that ended for the read timeout, not for the connection.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The `error.message` of an OpenAI- or Anthropic-shaped error body, else
/// the body's first line.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = v["error"]["message"].as_str()
    {
        return m.to_string();
    }
    let text = String::from_utf8_lossy(body);
    text.lines().next().unwrap_or_default().trim().to_string()
}

// ---------------------------------------------------------------------------
// Following the feed
// ---------------------------------------------------------------------------

/// What [`follow`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// Connected (again): events follow.
    Up,
    /// The connection is gone or could not be made; [`follow`] retries with
    /// backoff, silently until it is up again.
    Down(String),
    /// One feed event (a JSON object with `"type"`).
    Event(serde_json::Value),
    /// Nothing happened for a tick (a chance to stop or to redraw).
    Idle,
}

/// Why [`follow`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// 401: the router wants an API key.
    Unauthorized { url: String, key_sent: bool },
    /// 404: no feed at this URL.
    NotFound { url: String },
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::Unauthorized {
                url,
                key_sent: false,
            } => write!(
                f,
                "{url} answered 401: the router needs an API key; set {API_KEY_ENV}"
            ),
            FeedError::Unauthorized {
                url,
                key_sent: true,
            } => write!(
                f,
                "{url} answered 401: the router refused the API key in {API_KEY_ENV}"
            ),
            FeedError::NotFound { url } => write!(
                f,
                "{url} answered 404: this router serves no live feed \
                 (is `[server] dashboard = true` set in its config?)"
            ),
        }
    }
}

/// Follow the feed at `target` until `on` breaks (`Ok`) or the router gives
/// an answer no retry can fix (`Err`). Every other failure — refused
/// connection, closed stream, 5xx while draining, silence past the
/// keep-alive — is reported once as [`FeedEvent::Down`] and retried, waiting
/// 0.1 s, then twice as long each time, up to 2 s.
pub fn follow(
    target: &Target,
    mut on: impl FnMut(FeedEvent) -> ControlFlow<()>,
) -> Result<(), FeedError> {
    let head = target.request_head(
        "GET",
        FEED_PATH,
        &[("Accept", "text/event-stream"), ("Connection", "close")],
    );
    let url = format!("{}{FEED_PATH}", target.display());
    let mut up: Option<bool> = None; // None: never connected yet
    let mut backoff = BACKOFF_FIRST;
    loop {
        let reason = match send(target, &head, b"", CONNECT_TIMEOUT) {
            Ok(resp) if resp.status == 200 => {
                up = Some(true);
                backoff = BACKOFF_FIRST;
                if on(FeedEvent::Up).is_break() {
                    return Ok(());
                }
                match read_events(resp.body, &mut on, SILENCE) {
                    Ok(Some(reason)) => reason,
                    Ok(None) => return Ok(()),
                    Err(reason) => reason,
                }
            }
            Ok(resp) if resp.status == 401 => {
                return Err(FeedError::Unauthorized {
                    url,
                    key_sent: target.api_key.is_some(),
                });
            }
            Ok(resp) if resp.status == 404 => return Err(FeedError::NotFound { url }),
            Ok(mut resp) => {
                let body = resp.body.read_all().unwrap_or_default();
                format!("{url} answered {}: {}", resp.status, error_message(&body))
            }
            Err(e) => format!("{url}: {e}"),
        };
        if up != Some(false) {
            up = Some(false);
            if on(FeedEvent::Down(reason)).is_break() {
                return Ok(());
            }
        }
        // Wait in ticks, so the caller can still stop.
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
            if on(FeedEvent::Idle).is_break() {
                return Ok(());
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Hand the stream's events to `on`. `Ok(None)`: `on` stopped;
/// `Ok(Some(reason))`/`Err(reason)`: the stream ended, or nothing at all
/// came for `silence`.
fn read_events(
    mut body: Body,
    on: &mut impl FnMut(FeedEvent) -> ControlFlow<()>,
    silence: Duration,
) -> Result<Option<String>, String> {
    body.set_read_timeout(Some(TICK))
        .map_err(|e| e.to_string())?;
    loop {
        match body.next_event() {
            Ok(Some(data)) => {
                // Not JSON, or not an object with a type: not for us.
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
                    continue;
                };
                if v.get("type").and_then(|t| t.as_str()).is_none() {
                    continue;
                }
                if on(FeedEvent::Event(v)).is_break() {
                    return Ok(None);
                }
            }
            Ok(None) => return Ok(Some("the router closed the feed".into())),
            Err(e) if is_timeout(&e) => {
                // Keep-alive comments count: any byte is a sign of life.
                if body.last_read.elapsed() > silence {
                    return Ok(Some(format!(
                        "no data for {} s (not even a keep-alive)",
                        silence.as_secs_f64()
                    )));
                }
                if on(FeedEvent::Idle).is_break() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(format!("feed connection lost: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8090", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base.as_str()),
            ("127.0.0.1", 8090, "")
        );
        let t = Target::parse("localhost:9/r/?api_key=k", Some(String::new())).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base.as_str(), t.query.as_str()),
            ("localhost", 9, "/r", "api_key=k")
        );
        assert_eq!(t.api_key, None, "an empty key is no key");
        assert!(
            t.request_head("GET", FEED_PATH, &[])
                .starts_with("GET /r/dashboard/events?api_key=k HTTP/1.1\r\nHost: localhost:9\r\n")
        );
        let t = Target::parse("http://[::1]:7/", Some("sk".into())).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 7));
        assert!(
            t.request_head("GET", "/x", &[])
                .contains("\r\nAuthorization: Bearer sk\r\n")
        );
        assert_eq!(Target::parse("http://h", None).unwrap().port, 80);
        assert!(
            Target::parse("https://h", None)
                .unwrap_err()
                .contains("https")
        );
        assert!(Target::parse("http://:80", None).is_err());
        assert!(Target::parse("http://h:x", None).is_err());
    }

    #[test]
    fn heads() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata";
        for cut in 0..raw.len() - 4 {
            assert_eq!(parse_head(&raw[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (h, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            (h.status, h.content_type.as_str()),
            (200, "text/event-stream")
        );
        assert_eq!((h.framing, used), (Framing::Close, raw.len() - 4));
        let (h, _) = parse_head(b"HTTP/1.1 401 X\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.framing), (401, Framing::Length(5)));
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size(Vec::new())));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    /// Decode `wire` fed in two pieces split at every point.
    fn decode_split(framing: &Framing, wire: &[u8]) -> Vec<(Vec<u8>, bool)> {
        (0..=wire.len())
            .map(|cut| {
                let mut f = framing.clone();
                let mut out = Vec::new();
                let a = f.decode(&wire[..cut], &mut out).unwrap();
                let b = f.decode(&wire[cut..], &mut out).unwrap();
                (out, a || b)
            })
            .collect()
    }

    #[test]
    fn chunked_at_every_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nIGNORED";
        let chunked = Framing::Chunked(Chunk::Size(Vec::new()));
        for (i, (out, done)) in decode_split(&chunked, wire).into_iter().enumerate() {
            assert_eq!(out, b"hello, world", "split at {i}");
            assert!(done, "split at {i}");
        }
        let no_trailers = b"3\r\nabc\r\n0\r\n\r\n";
        for (out, done) in decode_split(&chunked, no_trailers) {
            assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
        }
        let mut f = chunked.clone();
        assert!(f.decode(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn length_and_close() {
        for (out, done) in decode_split(&Framing::Length(3), b"abcdef") {
            assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
        }
        for (out, done) in decode_split(&Framing::Close, b"abcdef") {
            assert_eq!((out.as_slice(), done), (&b"abcdef"[..], false));
        }
    }

    #[test]
    fn sse_at_every_split() {
        let wire = b": keep-alive\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:two\ndata: lines\n\ndatax: no\n\n";
        for cut in 0..=wire.len() {
            let mut p = SseParser::default();
            p.push(&wire[..cut]);
            p.push(&wire[cut..]);
            let got: Vec<String> = std::iter::from_fn(|| p.pop()).collect();
            assert_eq!(got, ["{\"a\":1}", "two\nlines"], "split at {cut}");
        }
    }

    /// Keep-alive comments keep a feed alive past `silence`; true silence ends it.
    #[test]
    fn silence_ends_a_feed_keep_alives_do_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Target::parse(&format!("http://{addr}"), None).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let keep_alives = Duration::from_millis(2500);
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                .unwrap();
            // Comments only, for more than twice the allowed silence; then
            // quiet, with the connection held open.
            let t0 = Instant::now();
            while t0.elapsed() < keep_alives {
                s.write_all(b": keep-alive\n\n").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = done_rx.recv();
        });
        let head = target.request_head("GET", FEED_PATH, &[]);
        let resp = send(&target, &head, b"", Duration::from_secs(5)).unwrap();
        let t0 = Instant::now();
        let ended = read_events(
            resp.body,
            &mut |ev| {
                assert_eq!(ev, FeedEvent::Idle, "comments are no events");
                ControlFlow::Continue(())
            },
            Duration::from_secs(1),
        );
        assert!(
            t0.elapsed() >= keep_alives,
            "the feed ended during keep-alives: {ended:?}"
        );
        assert!(ended.unwrap().unwrap().contains("no data for 1 s"));
        done_tx.send(()).unwrap();
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"error":{"message":"no key","type":"x"}}"#),
            "no key"
        );
        assert_eq!(error_message(b"plain text\nmore"), "plain text");
    }
}
