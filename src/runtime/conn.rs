//! The client connection loop: read a head, enforce framing and limits, read
//! the body, dispatch, answer, repeat while keep-alive holds.
//!
//! The head buffer is owned by the connection and moved into each read
//! (monoio's owned-buffer IO); header values stay slices of it. Bytes after
//! the current request (pipelining) stay in the buffer for the next turn.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::Core;
use super::pipeline::{self, Ctx};
use super::watch::read_append;
use crate::error::{ApiFamily, RouterError};
use crate::formats::Format;
use crate::http::{
    self, BodyFraming, ChunkedDecoder, HeadLimits, ParseStatus, RequestHead, Version,
};

/// Buffer capacity kept by an idle keep-alive connection; larger buffers
/// (after a big request) are shrunk back to this.
const IDLE_BUF: usize = 8 * 1024;

/// One client connection's socket and reusable buffers.
pub struct ClientConn {
    pub stream: TcpStream,
    /// Bytes to write to the client (head, body, chunks), reused.
    pub out: Vec<u8>,
    /// The upstream request being built, reused.
    pub up_req: Vec<u8>,
    /// Upstream response bytes, reused.
    pub up_resp: Vec<u8>,
    /// De-chunked upstream body, reused.
    pub up_body: Vec<u8>,
    /// simd-json's in-place parse copy, reused.
    pub json_scratch: Vec<u8>,
    /// The client spoke HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// `[server] write_timeout_ms`.
    write_timeout: Duration,
}

impl ClientConn {
    /// Write `out` to the client and clear it.
    /// A client that stops reading (zero window) fails the write after
    /// `write_timeout`, so a stalled reader never holds a stream forever.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        match monoio::time::timeout(self.write_timeout, self.stream.write_all(buf)).await {
            Ok((r, mut buf)) => {
                buf.clear();
                self.out = buf;
                r.map(|_| ())
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            )),
        }
    }
}

/// A request as the handlers see it: the head (slices of the head buffer)
/// and the body bytes.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub body: &'a [u8],
    pub method: &'a str,
    pub path: &'a str,
    pub t0: Instant,
    pub ts_ms: u64,
    pub keep_alive: bool,
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }
}

/// How the connection continues after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// Serve one client connection until it closes, errs or times out.
pub async fn serve(stream: TcpStream, core: Rc<Core>) {
    let server = &core.snap.config.server;
    let limits = HeadLimits {
        max_head_bytes: server.max_head_bytes,
        max_headers: 100,
    };
    let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
    let header_timeout = Duration::from_millis(server.header_timeout_ms);
    let mut conn = ClientConn {
        stream,
        out: Vec::with_capacity(4096),
        up_req: Vec::new(),
        up_resp: Vec::new(),
        up_body: Vec::new(),
        json_scratch: Vec::new(),
        http10: false,
        write_timeout: Duration::from_millis(server.write_timeout_ms),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(IDLE_BUF);
    loop {
        // 1. The head: idle timeout until its first byte, then a whole-head deadline.
        let mut head_deadline: Option<Instant> = None;
        let head = loop {
            if !buf.is_empty() {
                head_deadline.get_or_insert_with(|| Instant::now() + header_timeout);
                match http::parse_request_head(&buf, &limits) {
                    Ok(ParseStatus::Complete(h)) => break h,
                    Ok(ParseStatus::Partial) => {}
                    Err(e) => {
                        let err = RouterError::framing(e.status, e.message);
                        reject(&core, &mut conn, &buf, err).await;
                        return;
                    }
                }
            }
            let wait = match head_deadline {
                None => idle_timeout,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            let was_empty = buf.is_empty();
            match monoio::time::timeout(wait, read_append(&mut conn.stream, buf, 4096)).await {
                Ok((Ok(0), _)) | Ok((Err(_), _)) => return,
                Ok((Ok(_), b)) => buf = b,
                Err(_) => {
                    // Idle keep-alive connections close silently; a half-sent head gets 408.
                    if !was_empty {
                        let err = RouterError::framing(408, "request head not received in time");
                        reject(&core, &mut conn, &[], err).await;
                    }
                    return;
                }
            }
        };
        let t0 = Instant::now();
        conn.http10 = head.version == Version::Http10;

        // 2. The body, bounded by the configured limit.
        let max_body = server.max_body_bytes;
        let mut chunked_body: Option<Vec<u8>> = None;
        let consumed;
        match head.framing {
            BodyFraming::None => consumed = head.head_len,
            BodyFraming::ContentLength(n) => {
                if n > max_body as u64 {
                    let err = RouterError::framing(
                        413,
                        "request body is larger than the configured limit",
                    )
                    .with_code("request_too_large");
                    reject(&core, &mut conn, &buf, err).await;
                    return;
                }
                if head.expect_continue && buf.len() < head.head_len + n as usize {
                    conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if conn.flush().await.is_err() {
                        return;
                    }
                }
                let need = head.head_len + n as usize;
                while buf.len() < need {
                    let spare = (need - buf.len()).min(1 << 20);
                    buf = match read_body_bytes(&core, &mut conn, buf, spare, header_timeout).await
                    {
                        Some(b) => b,
                        None => return,
                    };
                }
                consumed = need;
            }
            BodyFraming::Chunked => {
                if head.expect_continue {
                    conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if conn.flush().await.is_err() {
                        return;
                    }
                }
                let mut decoder = ChunkedDecoder::new(16 * 1024);
                let mut body = Vec::new();
                let mut ranges = Vec::new();
                let mut pos = head.head_len;
                loop {
                    ranges.clear();
                    let (used, done) = match decoder.feed(&buf[pos..], &mut ranges) {
                        Ok(r) => r,
                        Err(e) => {
                            let err = RouterError::framing(400, e.0);
                            reject(&core, &mut conn, &buf, err).await;
                            return;
                        }
                    };
                    for r in &ranges {
                        // copy: de-chunking makes the body contiguous for parsing and forwarding.
                        body.extend_from_slice(&buf[pos + r.start..pos + r.end]);
                    }
                    pos += used;
                    if body.len() > max_body {
                        let err = RouterError::framing(
                            413,
                            "request body is larger than the configured limit",
                        )
                        .with_code("request_too_large");
                        reject(&core, &mut conn, &buf, err).await;
                        return;
                    }
                    if done {
                        break;
                    }
                    // Keep only the undecoded tail so the buffer does not grow with the body.
                    buf.drain(head.head_len..pos);
                    pos = head.head_len;
                    buf = match read_body_bytes(&core, &mut conn, buf, 16 * 1024, header_timeout)
                        .await
                    {
                        Some(b) => b,
                        None => return,
                    };
                }
                consumed = pos;
                chunked_body = Some(body);
            }
        }

        // 3. Dispatch.
        let body: &[u8] = match &chunked_body {
            Some(b) => b,
            None => &buf[head.head_len..consumed],
        };
        let method = std::str::from_utf8(head.method(&buf)).unwrap_or("");
        let path = std::str::from_utf8(head.path(&buf)).unwrap_or("");
        let req = Request {
            buf: &buf,
            head: &head,
            body,
            method,
            path,
            t0,
            ts_ms: crate::observe::now_ms(),
            keep_alive: head.keep_alive,
        };
        let next = dispatch(&core, &mut conn, &req).await;
        if next == Next::Close || !head.keep_alive {
            return;
        }
        buf.drain(..consumed);
        if buf.capacity() > 4 * IDLE_BUF && buf.len() < IDLE_BUF {
            buf.shrink_to(IDLE_BUF);
        }
        if conn.up_resp.capacity() > 1 << 20 {
            conn.up_resp = Vec::new();
        }
        if conn.up_body.capacity() > 1 << 20 {
            conn.up_body = Vec::new();
        }
    }
}

/// Read more request-body bytes within `timeout`; `None` when the connection
/// is done (EOF, error, or a 408 was sent).
async fn read_body_bytes(
    core: &Core,
    conn: &mut ClientConn,
    buf: Vec<u8>,
    spare: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    match monoio::time::timeout(timeout, read_append(&mut conn.stream, buf, spare)).await {
        Ok((Ok(0), b)) | Ok((Err(_), b)) => {
            // Nothing to answer (the client is gone), but the request is logged.
            let (method, path) = first_line(&b);
            let mut ctx = Ctx::new(
                core,
                crate::observe::now_ms(),
                Instant::now(),
                method,
                &path,
            );
            ctx.status = 499;
            ctx.error = Some(
                "client_closed: the client disconnected while sending the request body".into(),
            );
            ctx.finish(core, &[]);
            None
        }
        Ok((Ok(_), b)) => Some(b),
        Err(_) => {
            let err = RouterError::framing(408, "request body not received in time");
            reject(core, conn, &[], err).await;
            None
        }
    }
}

/// Answer a request that failed before dispatch (framing, limits, timeouts),
/// log it, and let the caller close the connection.
async fn reject(core: &Core, conn: &mut ClientConn, buf: &[u8], err: RouterError) {
    let ts_ms = crate::observe::now_ms();
    // Best effort: name the path of a head that parsed far enough to have one.
    let path = first_line_path(buf);
    let mut ctx = Ctx::new(core, ts_ms, Instant::now(), "", &path);
    let family = family_for(ctx.path);
    write_error(conn, family, &err, false, &ctx);
    let _ = conn.flush().await;
    ctx.fail(&err);
    ctx.finish(core, &[]);
}

fn first_line_path(buf: &[u8]) -> String {
    first_line(buf).1
}

/// The method and path of the request line at the start of `buf`, as far as
/// they can be read (bounded like any quoted client input).
fn first_line(buf: &[u8]) -> (&str, String) {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len())
        .min(2048);
    let mut parts = buf[..line_end].split(|&b| b == b' ');
    let method = parts.next().unwrap_or(b"");
    let method = std::str::from_utf8(&method[..method.len().min(32)]).unwrap_or("");
    let target = parts.next().unwrap_or(b"");
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
    let path = String::from_utf8_lossy(path);
    (method, crate::error::quote(&path).into_owned())
}

/// The error shape for a path: Anthropic for `/v1/messages…`, OpenAI otherwise.
pub fn family_for(path: &str) -> ApiFamily {
    if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        ApiFamily::Anthropic
    } else {
        ApiFamily::OpenAi
    }
}

/// Queue a router-made error response (head + JSON body) into `conn.out`.
pub fn write_error(
    conn: &mut ClientConn,
    family: ApiFamily,
    err: &RouterError,
    keep_alive: bool,
    ctx: &Ctx<'_>,
) {
    let mut body = Vec::with_capacity(160);
    err.write_body(family, &mut body);
    let close = err.close || !keep_alive;
    http::write_status_line(&mut conn.out, err.status);
    http::write_header(&mut conn.out, b"content-type", b"application/json");
    if !err.retryable() {
        http::write_header(&mut conn.out, b"x-should-retry", b"false");
    }
    ctx.write_router_headers(&mut conn.out);
    write_length_and_close(&mut conn.out, body.len(), close);
    conn.out.extend_from_slice(&body);
}

/// `content-length`, `connection: close` when closing, and the blank line.
pub fn write_length_and_close(out: &mut Vec<u8>, len: usize, close: bool) {
    let mut n = [0u8; 20];
    http::write_header(out, b"content-length", fmt_u64(len as u64, &mut n));
    if close {
        http::write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `v` in `buf`.
pub fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Route a request to its endpoint.
async fn dispatch(core: &Core, conn: &mut ClientConn, req: &Request<'_>) -> Next {
    let mut ctx = Ctx::new(core, req.ts_ms, req.t0, req.method, req.path);
    let family = family_for(req.path);

    if let Some(key) = &core.snap.config.server.api_key
        && req.path != "/health"
        && !pipeline::authorized(req, key)
    {
        return finish_error(
            core,
            conn,
            req,
            &mut ctx,
            family,
            RouterError::unauthorized(),
        )
        .await;
    }

    let known = [
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    ];
    match (req.method, req.path) {
        ("POST", "/v1/chat/completions") => {
            pipeline::handle(core, conn, req, ctx, Format::OpenAiChat).await
        }
        ("POST", "/v1/messages") | ("POST", "/v1/messages/count_tokens") => {
            pipeline::handle(core, conn, req, ctx, Format::Anthropic).await
        }
        ("POST", "/v1/responses") => {
            pipeline::handle(core, conn, req, ctx, Format::Responses).await
        }
        ("GET", "/health") | ("HEAD", "/health") => {
            simple(core, conn, req, ctx, 200, b"text/plain", b"ok").await
        }
        ("GET", "/") | ("HEAD", "/") => {
            simple(
                core,
                conn,
                req,
                ctx,
                200,
                b"text/plain",
                b"opensourcellmrouter is running\n",
            )
            .await
        }
        ("GET", "/v1/models") => {
            let body = core.snap.models_body.clone();
            simple(core, conn, req, ctx, 200, b"application/json", &body).await
        }
        (m, p) if known.contains(&p) => {
            finish_error(
                core,
                conn,
                req,
                &mut ctx,
                family,
                RouterError::method_not_allowed(m, p),
            )
            .await
        }
        (m, p) => {
            finish_error(
                core,
                conn,
                req,
                &mut ctx,
                family,
                RouterError::not_found(m, p),
            )
            .await
        }
    }
}

/// Answer with a router-made error, log, and decide the connection's fate.
pub async fn finish_error(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    family: ApiFamily,
    err: RouterError,
) -> Next {
    ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
    write_error(conn, family, &err, req.keep_alive, ctx);
    let ok = conn.flush().await.is_ok();
    ctx.fail(&err);
    ctx.finish(core, req.body);
    if ok && !err.close && req.keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// A small fixed response (health, models, root).
async fn simple(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    mut ctx: Ctx<'_>,
    status: u16,
    content_type: &[u8],
    body: &[u8],
) -> Next {
    http::write_status_line(&mut conn.out, status);
    http::write_header(&mut conn.out, b"content-type", content_type);
    write_length_and_close(&mut conn.out, body.len(), !req.keep_alive);
    if req.method != "HEAD" {
        conn.out.extend_from_slice(body);
    }
    let ok = conn.flush().await.is_ok();
    ctx.status = status;
    ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
    ctx.finish(core, req.body);
    if ok { Next::KeepAlive } else { Next::Close }
}
