//! The client connection loop, the top of the request lifecycle: read a
//! head, enforce framing and limits, read the body, hand the request (or the
//! rejection) to [`lifecycle::serve`], repeat while keep-alive holds.
//!
//! The head buffer is owned by the connection and moved into each read
//! (monoio's owned-buffer IO); header values stay slices of it. Bytes after
//! the current request (pipelining) stay in the buffer for the next turn.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::lifecycle::{self, Input};
use super::request::{ClientConn, Next, Request};
use super::{Core, Worker};
use crate::error::RouterError;
use crate::http::{self, BodyFraming, ChunkedDecoder, HeadLimits, ParseStatus, Version};

/// Head-buffer capacity kept across requests when pipelined bytes are
/// buffered (larger buffers are shrunk back to this); an idle connection
/// with nothing buffered keeps no head buffer at all.
const IDLE_BUF: usize = 8 * 1024;
/// Spare room of a connection's first head read. A head that fills it is
/// read on with a spare as large as what is buffered (doubling), so a small
/// request — and a held stream — keeps a small buffer.
const HEAD_SPARE: usize = 2 * 1024;
/// Spare room of a request read whole above which its buffer is cut to size.
const SHRINK_SPARE: usize = 512;

/// Serve one client connection until it closes, errs or times out. Each
/// request is served by the worker's current core: after a reload, the next
/// request on a kept-alive connection already uses the new config.
pub async fn serve(stream: TcpStream, worker: Rc<Worker>) {
    let mut core = worker.core();
    let write_timeout = Duration::from_millis(core.snap.config.server.write_timeout_ms);
    let mut conn = ClientConn::new(stream, write_timeout);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if core.snap.generation != super::GENERATION.load(std::sync::atomic::Ordering::Relaxed) {
            core = worker.core();
        }
        let server = &core.snap.config.server;
        let limits = HeadLimits {
            max_head_bytes: server.max_head_bytes,
            max_headers: 100,
        };
        let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
        let header_timeout = Duration::from_millis(server.header_timeout_ms);
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
            let spare = HEAD_SPARE.max(buf.len());
            match conn.read_within(buf, spare, wait).await {
                Some((Ok(0), _)) | Some((Err(_), _)) => return,
                Some((Ok(_), b)) => buf = b,
                None => {
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
        // A reload published while this connection waited for the head
        // applies to this request.
        if core.snap.generation != super::GENERATION.load(std::sync::atomic::Ordering::Relaxed) {
            core = worker.core();
        }
        let server = &core.snap.config.server;

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
                    buf = match read_body_bytes(&mut conn, buf, spare, header_timeout).await {
                        BodyRead::More(b) => b,
                        end => {
                            body_ended(&core, &mut conn, end).await;
                            return;
                        }
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
                    buf = match read_body_bytes(&mut conn, buf, 16 * 1024, header_timeout).await {
                        BodyRead::More(b) => b,
                        end => {
                            body_ended(&core, &mut conn, end).await;
                            return;
                        }
                    };
                }
                consumed = pos;
                chunked_body = Some(body);
            }
        }

        // The request is read whole: its buffer loses the spare room the
        // reads reserved (2 KB or more), which would otherwise stay with the
        // request for its whole life — minutes, for a held stream.
        if buf.len() == consumed && buf.capacity() - consumed >= SHRINK_SPARE {
            buf.shrink_to_fit();
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
            // Draining: this is the connection's last response.
            keep_alive: head.keep_alive && !super::shutdown::draining(),
        };
        let req_keep_alive = req.keep_alive;
        core.active.set(core.active.get() + 1);
        core.metrics.request_started();
        let next = lifecycle::serve(&core, &mut conn, Input::Request(&req)).await;
        core.metrics.request_ended();
        core.active.set(core.active.get() - 1);
        if next == Next::Close || !req_keep_alive {
            return;
        }
        buf.drain(..consumed);
        if buf.is_empty() {
            // Nothing pipelined: an idle connection keeps no head buffer (the
            // next head read makes one).
            buf = Vec::new();
        } else if buf.capacity() > 4 * IDLE_BUF && buf.len() < IDLE_BUF {
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

/// Answer a request rejected before it was read whole, then linger.
/// Boxed: a rare path, which inline would size every connection's task.
async fn reject(core: &Core, conn: &mut ClientConn, buf: &[u8], err: RouterError) {
    Box::pin(async {
        lifecycle::serve(core, conn, Input::Rejected { buf, err }).await;
        linger(conn).await;
    })
    .await
}

/// Lingering close: how long, at most, the rest of a rejected request is
/// read and discarded, and the longest pause in it.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// After answering an error before the whole request was read (413, 431,
/// framing errors, 408): half-close, then read and discard what the client
/// still sends — until it closes, pauses for [`LINGER_IDLE`], or
/// [`LINGER_TOTAL`] passes — so it reads the status instead of a reset
/// (nginx's `lingering_close`). The connection is closed after.
async fn linger(conn: &mut ClientConn) {
    use monoio::io::{AsyncReadRent, AsyncWriteRent};
    if conn.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        buf.clear();
        match monoio::time::timeout(left.min(LINGER_IDLE), conn.stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => buf = b,
            _ => return,
        }
    }
}

/// How reading more request-body bytes went.
enum BodyRead {
    More(Vec<u8>),
    /// EOF or a read error: the client is gone (the bytes read so far).
    Gone(Vec<u8>),
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// Read more request-body bytes within `timeout`.
async fn read_body_bytes(
    conn: &mut ClientConn,
    buf: Vec<u8>,
    spare: usize,
    timeout: Duration,
) -> BodyRead {
    match conn.read_within(buf, spare, timeout).await {
        Some((Ok(0), b)) | Some((Err(_), b)) => BodyRead::Gone(b),
        Some((Ok(_), b)) => BodyRead::More(b),
        None => BodyRead::TimedOut,
    }
}

/// A body that stopped arriving: logged as 499 (client gone) or answered 408.
async fn body_ended(core: &Core, conn: &mut ClientConn, end: BodyRead) {
    match end {
        BodyRead::Gone(b) => {
            // Boxed, like `reject`: rare, and large inline.
            Box::pin(lifecycle::serve(core, conn, Input::Abandoned { buf: &b })).await;
        }
        BodyRead::TimedOut => {
            let err = RouterError::framing(408, "request body not received in time");
            reject(core, conn, &[], err).await;
        }
        BodyRead::More(_) => {}
    }
}
