//! HTTP/1.1 pieces shared by the mock and the load generator: URL parsing,
//! response heads, an incremental chunked decoder and an event counter for
//! SSE / NDJSON bodies. Everything here is synchronous over byte slices, so it
//! is tested at every split point without sockets.

use std::net::{SocketAddr, ToSocketAddrs};

/// An `http://host:port/path` URL, resolved.
#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub addr: SocketAddr,
}

impl Url {
    /// `default_path` is used when the URL has no path (or just `/`).
    pub fn parse(s: &str, default_path: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{s}`: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            default_path.to_string()
        } else {
            path.to_string()
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: bad IPv6 host"))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or("80"))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), "80"),
            }
        };
        let port: u16 = port.parse().map_err(|_| format!("`{s}`: bad port"))?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("`{s}`: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("`{s}`: no address"))?;
        Ok(Url {
            host,
            port,
            path,
            addr,
        })
    }

    /// The value of the Host header.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A complete `POST` request for `url` with a JSON body.
pub fn post_request(url: &Url, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: */*\r\nUser-Agent: loadtest\r\nContent-Length: {}\r\n\r\n",
        url.path,
        url.host_header(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What kind of event stream a body is, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    NotStream,
    Sse,
    Ndjson,
}

/// The parts of a response head the load generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub kind: StreamKind,
}

/// Parse a response head: `Ok(None)` when more bytes are needed.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut kind = StreamKind::NotStream;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            length = Some(v.ok_or("bad content-length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_token(h.value, b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                keep_alive = false;
            } else if contains_token(h.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-type") {
            if starts_with_ignore_case(h.value, b"text/event-stream") {
                kind = StreamKind::Sse;
            } else if starts_with_ignore_case(h.value, b"application/x-ndjson") {
                kind = StreamKind::Ndjson;
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        keep_alive,
        kind,
    }))
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn starts_with_ignore_case(value: &[u8], prefix: &[u8]) -> bool {
    value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A response body's payload, decoded from its framing as reads arrive
/// (Content-Length, chunked, or until the connection closes).
#[derive(Debug, Clone)]
pub struct Payload {
    pub framing: Framing,
    remaining: u64,
    chunked: Chunked,
}

impl Payload {
    pub fn new(framing: Framing) -> Payload {
        Payload {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: Chunked::default(),
        }
    }

    /// Feed the bytes of one read; `on_data` gets each piece of payload.
    /// Returns whether the body ended (never, for a body framed by the
    /// connection's close), or the chunked decoder's error.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<bool, &'static str> {
        match self.framing {
            Framing::None => Ok(true),
            Framing::Length(_) => {
                let n = self.remaining.min(data.len() as u64) as usize;
                on_data(&data[..n]);
                self.remaining -= n as u64;
                Ok(self.remaining == 0)
            }
            Framing::UntilClose => {
                on_data(data);
                Ok(false)
            }
            Framing::Chunked => self.chunked.feed(data, on_data).map(|(_, done)| done),
        }
    }
}

/// Incremental decoder of a chunked body.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl Chunked {
    /// Feed raw bytes; `on_data` gets each piece of decoded body. Returns the
    /// bytes consumed (all of `input` unless the body ended inside it) and
    /// whether the body is complete.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 => self.end_size_line(),
                    _ => return Err("bad chunk size"),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("bad chunk size line");
                    }
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let n = ((input.len() - i) as u64).min(self.size) as usize;
                    on_data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err("missing CRLF after chunk data"),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("missing LF after chunk data");
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok((i + 1, true));
                    }
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err("bad end of chunked body");
                    }
                    self.state = ChunkState::Done;
                    return Ok((i + 1, true));
                }
                ChunkState::Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == ChunkState::Done))
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

/// Counts events in an SSE (blank-line separated) or NDJSON (one per line)
/// body as it arrives, and remembers whether the stream's terminal event was
/// seen (`data: [DONE]`, `event: message_stop`, `event: response.completed`,
/// an Ollama line with `"done":true`).
#[derive(Debug, Clone)]
pub struct EventScan {
    kind: StreamKind,
    line_has_content: bool,
    in_event: bool,
    /// The first bytes of the current event (SSE) or line (NDJSON).
    start: [u8; 40],
    start_len: usize,
    pub events: u32,
    pub terminal: bool,
}

impl EventScan {
    pub fn new(kind: StreamKind) -> EventScan {
        EventScan {
            kind,
            line_has_content: false,
            in_event: false,
            start: [0; 40],
            start_len: 0,
            events: 0,
            terminal: false,
        }
    }

    /// Feed decoded body bytes; `on_event` is called once per completed event.
    pub fn feed(&mut self, data: &[u8], mut on_event: impl FnMut()) {
        if self.kind == StreamKind::NotStream {
            return;
        }
        let mut from = 0;
        for p in memchr::memchr_iter(b'\n', data) {
            let seg = &data[from..p];
            self.note_start(seg);
            let blank = !self.line_has_content && (seg.is_empty() || seg == b"\r");
            match self.kind {
                StreamKind::Sse => {
                    if !blank {
                        self.in_event = true;
                    } else if self.in_event {
                        self.end_event();
                        on_event();
                    }
                }
                StreamKind::Ndjson => {
                    if memchr::memmem::find(seg, b"\"done\":true").is_some() {
                        self.terminal = true;
                    }
                    if !blank {
                        self.end_event();
                        on_event();
                    }
                }
                StreamKind::NotStream => {}
            }
            self.line_has_content = false;
            from = p + 1;
        }
        let rest = &data[from..];
        if !rest.is_empty() {
            self.note_start(rest);
            if rest != b"\r" {
                self.line_has_content = true;
            }
            if self.kind == StreamKind::Ndjson
                && memchr::memmem::find(rest, b"\"done\":true").is_some()
            {
                self.terminal = true;
            }
        }
    }

    fn note_start(&mut self, seg: &[u8]) {
        if self.start_len < self.start.len() && !seg.is_empty() {
            let n = (self.start.len() - self.start_len).min(seg.len());
            self.start[self.start_len..self.start_len + n].copy_from_slice(&seg[..n]);
            self.start_len += n;
        }
    }

    fn end_event(&mut self) {
        self.events += 1;
        if self.kind == StreamKind::Sse {
            let s = &self.start[..self.start_len];
            self.terminal = s.starts_with(b"data: [DONE]")
                || s.starts_with(b"data:[DONE]")
                || s.starts_with(b"event: message_stop")
                || s.starts_with(b"event: response.completed")
                || s.starts_with(b"event: response.incomplete");
        }
        self.in_event = false;
        self.start_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8]) -> Vec<(Vec<u8>, bool)> {
        // Every split point gives the same body.
        let mut out = Vec::new();
        for split in 0..=input.len() {
            let mut d = Chunked::default();
            let mut body = Vec::new();
            let (a, done_a) = d
                .feed(&input[..split], |b| body.extend_from_slice(b))
                .unwrap();
            let mut done = done_a;
            if !done_a {
                let (_, done_b) = d.feed(&input[a..], |b| body.extend_from_slice(b)).unwrap();
                done = done_b;
            }
            out.push((body, done));
        }
        out
    }

    #[test]
    fn chunked_at_every_split() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for (body, done) in decode_split(input) {
            assert_eq!(body, b"hello world");
            assert!(done);
        }
        let mut d = Chunked::default();
        assert!(d.feed(b"zz\r\n", |_| {}).is_err());
        let mut d = Chunked::default();
        let (_, done) = d.feed(b"5\r\nhel", |_| {}).unwrap();
        assert!(!done);
    }

    #[test]
    fn sse_events_at_every_split() {
        let body =
            b"data: {\"a\":1}\n\ndata: {\"a\":2}\r\n\r\nevent: x\ndata: y\n\ndata: [DONE]\n\n";
        for split in 0..=body.len() {
            let mut s = EventScan::new(StreamKind::Sse);
            let mut n = 0;
            s.feed(&body[..split], || n += 1);
            s.feed(&body[split..], || n += 1);
            assert_eq!(n, 4, "split {split}");
            assert!(s.terminal, "split {split}");
        }
        let mut s = EventScan::new(StreamKind::Sse);
        s.feed(b"event: message_start\ndata: {}\n\n", || {});
        assert!(!s.terminal);
        s.feed(b"event: message_stop\ndata: {}\n\n", || {});
        assert!(s.terminal);
    }

    #[test]
    fn ndjson_events() {
        let body = b"{\"done\":false}\n{\"done\":true}\n";
        let mut s = EventScan::new(StreamKind::Ndjson);
        let mut n = 0;
        s.feed(body, || n += 1);
        assert_eq!(n, 2);
        assert!(s.terminal);
    }

    #[test]
    fn heads() {
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nxx")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(h.kind, StreamKind::Sse);
        assert!(h.keep_alive);
        let h = parse_response_head(
            b"HTTP/1.1 502 Bad\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (502, Framing::Length(3), false)
        );
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080", "/v1/chat/completions").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/v1/chat/completions"));
        let u = Url::parse("http://127.0.0.1:9/api/chat", "/x").unwrap();
        assert_eq!(u.path, "/api/chat");
        assert!(Url::parse("https://x", "/").is_err());
    }
}
