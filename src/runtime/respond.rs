//! Every response head and router-made body the client receives is
//! written here, into [`ClientConn::out`]; the lifecycle decides when it is
//! flushed. Three kinds of head: a provider's relayed head
//! ([`relayed_head`]), a head the router writes for a reply it encodes
//! itself ([`own_head`]: translated replies, the mock, plugin replies), and
//! router-made errors ([`error`]). Framing is always the router's own:
//! `Content-Length` when the length is known, chunked otherwise
//! (close-delimited for HTTP/1.0 clients).

use super::ctx::Ctx;
use super::request::ClientConn;
use super::translate;
use crate::error::RouterError;
use crate::formats::{self, ApiError, Format};
use crate::http::{self, ResponseHead};

/// The client format a path speaks, for its error shape: Anthropic for
/// `/v1/messages…`, Responses for `/v1/responses`, OpenAI chat otherwise
/// (every other path, health and 404s included).
pub fn format_for(path: &str) -> Format {
    if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        Format::Anthropic
    } else if path == "/v1/responses" {
        Format::Responses
    } else {
        Format::OpenAiChat
    }
}

/// A router-made error response: head + the body the format's one error
/// writer makes (the same writer as for translated provider errors).
/// OpenAI-shaped formats keep the router's error type and code; Anthropic's
/// type comes from the shared status table (`formats::kind_for_status`).
pub fn error(
    conn: &mut ClientConn,
    format: Format,
    err: &RouterError,
    keep_alive: bool,
    ctx: &Ctx<'_>,
) {
    let kind = match format {
        Format::Anthropic => formats::kind_for_status(err.status, format),
        _ => err.kind,
    };
    let api = ApiError {
        status: err.status,
        kind: kind.to_string(),
        message: err.message.clone(),
    };
    let mut body = Vec::with_capacity(160);
    translate::write_error(format, &api, err.code, &mut body);
    let close = err.close || !keep_alive;
    http::write_status_line(&mut conn.out, err.status);
    http::write_header(&mut conn.out, b"content-type", b"application/json");
    if !err.retryable() {
        http::write_header(&mut conn.out, b"x-should-retry", b"false");
    }
    if let Some(secs) = err.retry_after_s {
        http::write_header_u64(&mut conn.out, b"retry-after", secs);
    }
    ctx.write_router_headers(&mut conn.out);
    length_and_close(&mut conn.out, body.len(), close);
    conn.out.extend_from_slice(&body);
}

/// A small fixed response (health, models, root); no body for `HEAD`.
pub fn simple(
    conn: &mut ClientConn,
    status: u16,
    content_type: &[u8],
    body: &[u8],
    head_only: bool,
    close: bool,
) {
    http::write_status_line(&mut conn.out, status);
    http::write_header(&mut conn.out, b"content-type", content_type);
    length_and_close(&mut conn.out, body.len(), close);
    if !head_only {
        conn.out.extend_from_slice(body);
    }
}

/// `content-length`, `connection: close` when closing, and the blank line.
pub fn length_and_close(out: &mut Vec<u8>, len: usize, close: bool) {
    http::write_content_length(out, len as u64);
    if close {
        http::write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// The framing fields and the blank line: `Content-Length` when `len` is
/// known, else chunked (close-delimited for HTTP/1.0 clients).
fn framing(out: &mut Vec<u8>, http10: bool, len: Option<usize>, close: bool) {
    match len {
        Some(len) => length_and_close(out, len, close),
        None if http10 => {
            http::write_header(out, b"connection", b"close");
            out.extend_from_slice(b"\r\n");
        }
        None => {
            http::write_header(out, b"transfer-encoding", b"chunked");
            if close {
                http::write_header(out, b"connection", b"close");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The client's response head for a relayed (same-format) reply: the
/// provider's status and headers (minus hop-by-hop and framing), the
/// `X-Router-*` headers, and our own framing.
pub fn relayed_head(
    conn: &mut ClientConn,
    buf: &[u8],
    head: &ResponseHead,
    ctx: &Ctx<'_>,
    len: Option<usize>,
    close: bool,
) {
    let http10 = conn.http10;
    let out = &mut conn.out;
    http::write_status_line(out, head.status);
    let conn_values: Vec<&[u8]> = head
        .headers_iter(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| v)
        .collect();
    for (name, value) in head.headers_iter(buf) {
        if http::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"content-length")
            || name.len() > 9 && name[..9].eq_ignore_ascii_case(b"x-router-")
            || (!conn_values.is_empty() && http::connection_listed(&conn_values, name))
        {
            continue;
        }
        http::write_header(out, name, value);
    }
    ctx.write_router_headers(out);
    framing(out, http10, len, close);
}

/// A head the router writes for a reply it encodes itself (translated
/// replies, the mock provider, plugin replies): status, content type, the
/// provider's back-off, rate-limit and request-id fields when there is a
/// provider head ([`http::is_carried_across_formats`]), `X-Router-*`, our
/// framing. Streams (`len` = None) also get `cache-control: no-cache` and
/// `x-accel-buffering: no`.
pub fn own_head(
    conn: &mut ClientConn,
    status: u16,
    provider: Option<(&[u8], &ResponseHead)>,
    content_type: &[u8],
    ctx: &Ctx<'_>,
    len: Option<usize>,
    close: bool,
) {
    let http10 = conn.http10;
    let out = &mut conn.out;
    http::write_status_line(out, status);
    http::write_header(out, b"content-type", content_type);
    if let Some((buf, head)) = provider {
        for (name, value) in head.headers_iter(buf) {
            if http::is_carried_across_formats(name) {
                http::write_header(out, name, value);
            }
        }
    }
    if len.is_none() {
        http::write_header(out, b"cache-control", b"no-cache");
        http::write_header(out, b"x-accel-buffering", b"no");
    }
    ctx.write_router_headers(out);
    framing(out, http10, len, close);
}

/// One piece of a streamed body: a chunk, or the bytes as they are for an
/// HTTP/1.0 client (close-delimited).
pub fn body_piece(conn: &mut ClientConn, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if conn.http10 {
        conn.out.extend_from_slice(bytes);
    } else {
        http::write_chunk(&mut conn.out, bytes);
    }
}

/// The end of a streamed body (the last chunk; nothing for HTTP/1.0).
pub fn body_end(conn: &mut ClientConn) {
    if !conn.http10 {
        conn.out.extend_from_slice(http::LAST_CHUNK);
    }
}
