//! Upstream response heads and hop-by-hop fields.
//!
//! Upstreams are trusted more than clients but parsed by the same strict tokenizer: a
//! response the router cannot frame unambiguously is an error (the caller answers 502 and
//! closes the upstream connection), never a guess. Two leniencies match what real servers
//! send: a status line without a reason phrase, and repeated identical `Content-Length`
//! values (RFC 9112 §6.3 item 5).

use std::ops::Range;

use super::fields::{self, FieldLine};
use super::{HeadError, Version};

/// Most fields accepted in an upstream response head.
pub const MAX_RESPONSE_HEADERS: usize = 256;

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFraming {
    /// No body: 1xx, 204, 304, or the answer to a HEAD request.
    #[default]
    None,
    /// Exactly this many bytes.
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`; decode with [`super::ChunkedDecoder`].
    Chunked,
    /// Neither length nor chunking: the body ends when the upstream closes. The connection
    /// is never reusable.
    UntilClose,
}

/// A parsed upstream response head; ranges index into the buffer given to the parser.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHead {
    /// The status code, 100–599.
    pub status: u16,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// Every field in order as (name, value) ranges, values trimmed of OWS.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Bytes of the head including the final CRLFCRLF.
    pub head_len: usize,
    /// How the body is delimited.
    pub framing: ResponseFraming,
    /// Whether the upstream connection may be pooled after the body is fully read.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// The first value of the field called `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let get = |r: &Range<usize>| buf.get(r.clone()).unwrap_or_default();
        let (_, v) = self
            .headers
            .iter()
            .find(|(n, _)| get(n).eq_ignore_ascii_case(name.as_bytes()))?;
        Some(get(v))
    }

    /// Every field as (name, value) slices, in order of arrival.
    pub fn headers_iter<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.headers.iter().map(move |(n, v)| {
            (
                buf.get(n.clone()).unwrap_or_default(),
                buf.get(v.clone()).unwrap_or_default(),
            )
        })
    }
}

/// Parses an upstream response head. `Ok(None)` = partial (read more). Errors mean the
/// response cannot be relayed safely (the caller answers 502): CL+TE, conflicting
/// Content-Length, a coding other than `chunked`, malformed lines, a head larger than
/// `max_head_bytes`.
pub fn parse_response_head(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut head = ResponseHead::default();
    Ok(parse_response_head_into(buf, max_head_bytes, false, &mut head)?.then_some(head))
}

/// [`parse_response_head`] into a reused head. `head_request` says the request was `HEAD`,
/// whose response never has a body whatever its fields say. Returns `Ok(true)` when
/// complete.
///
/// A 1xx head (e.g. `100 Continue`) is complete on its own with framing
/// [`ResponseFraming::None`]; the caller skips `head_len` bytes and parses again for the
/// final response. `101 Switching Protocols` is an error: the router never asks for an
/// upgrade, so it never tunnels.
pub fn parse_response_head_into(
    buf: &[u8],
    max_head_bytes: usize,
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<bool, HeadError> {
    let bad = |m: &'static str| HeadError::new(502, m);
    head.headers.clear();
    let truncated = buf.len() > max_head_bytes;
    let win = buf.get(..max_head_bytes).unwrap_or(buf);
    let incomplete = || {
        if truncated {
            Err(bad("upstream response head too large"))
        } else {
            Ok(false)
        }
    };

    let Some(line_end) =
        fields::line_end(win, 0, fields::LineBytes::Value, "invalid status line").map_err(bad)?
    else {
        return incomplete();
    };
    let line = win.get(..line_end).unwrap_or_default();
    let (version, status) = parse_status_line(line).map_err(bad)?;
    head.version = version;
    head.status = status;
    if status == 101 {
        return Err(bad("unexpected 101 Switching Protocols"));
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let (mut close, mut keep_alive_token) = (false, false);
    let mut at = line_end + 2;
    loop {
        let Some((line, next)) = fields::parse_field_line(win, at).map_err(bad)? else {
            return incomplete();
        };
        at = next;
        let FieldLine::Field { name, value, .. } = line else {
            break;
        };
        if head.headers.len() >= MAX_RESPONSE_HEADERS {
            return Err(bad("too many upstream response header fields"));
        }
        let n = win.get(name.clone()).unwrap_or_default();
        let v = win.get(value.clone()).unwrap_or_default();
        if n.eq_ignore_ascii_case(b"content-length") {
            for item in v.split(|&b| b == b',').map(fields::trim_ows_slice) {
                let len = fields::parse_content_length(item)
                    .ok_or(bad("invalid upstream Content-Length"))?;
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(bad("conflicting upstream Content-Length"));
                }
                content_length = Some(len);
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !v.eq_ignore_ascii_case(b"chunked") {
                return Err(bad("upstream Transfer-Encoding other than `chunked`"));
            }
            if version == Version::Http10 {
                return Err(bad("Transfer-Encoding in an HTTP/1.0 response"));
            }
            chunked = true;
        } else if n.eq_ignore_ascii_case(b"connection") {
            for token in fields::list_items(v) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        head.headers.push((name, value));
    }
    head.head_len = at;
    if chunked && content_length.is_some() {
        return Err(bad(
            "upstream sent both Content-Length and Transfer-Encoding",
        ));
    }
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    head.framing = match (no_body, chunked, content_length) {
        (true, _, _) => ResponseFraming::None,
        (false, true, _) => ResponseFraming::Chunked,
        (false, false, Some(n)) => ResponseFraming::ContentLength(n),
        (false, false, None) => ResponseFraming::UntilClose,
    };
    head.keep_alive = !close
        && head.framing != ResponseFraming::UntilClose
        && (version == Version::Http11 || keep_alive_token);
    Ok(true)
}

/// `HTTP/1.x SP 3DIGIT [SP reason]`.
fn parse_status_line(line: &[u8]) -> Result<(Version, u16), &'static str> {
    let (version, rest) = line.split_at_checked(8).ok_or("invalid status line")?;
    let version = match fields::parse_version(version) {
        Ok(Some(v)) => v,
        _ => return Err("unsupported upstream HTTP version"),
    };
    let code = match rest {
        [b' ', a, b, c] | [b' ', a, b, c, b' ', ..] => [*a, *b, *c],
        _ => return Err("invalid status line"),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err("invalid status code");
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return Err("invalid status code");
    }
    Ok((version, status))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus `Proxy-*`): never forwarded to the other side.
/// ASCII case-insensitive.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        // Not in RFC 9110, but sent by old clients and always hop-by-hop.
        b"proxy-connection",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Provider response fields that a translated reply (a cross-format route,
/// where the router writes its own head) still carries to the client,
/// unchanged: back-off hints (`retry-after`, `retry-after-ms`), rate-limit
/// state (`x-ratelimit-*`, `anthropic-ratelimit-*`, the IETF `ratelimit-*`
/// and `ratelimit`), and the provider's request id (`x-request-id`,
/// `request-id`). ASCII case-insensitive.
pub fn is_carried_across_formats(name: &[u8]) -> bool {
    const EXACT: [&[u8]; 5] = [
        b"retry-after",
        b"retry-after-ms",
        b"x-request-id",
        b"request-id",
        b"ratelimit",
    ];
    const PREFIX: [&[u8]; 3] = [b"x-ratelimit-", b"anthropic-ratelimit-", b"ratelimit-"];
    EXACT.iter().any(|e| name.eq_ignore_ascii_case(e))
        || PREFIX.iter().any(|p| {
            name.len() > p.len()
                && name
                    .get(..p.len())
                    .is_some_and(|h| h.eq_ignore_ascii_case(p))
        })
}

/// Names listed in a Connection header value (comma separated) are also hop-by-hop for
/// that message. `conn_values` are the values of every `Connection` field of the message.
pub fn connection_listed(conn_values: &[&[u8]], name: &[u8]) -> bool {
    conn_values
        .iter()
        .flat_map(|v| fields::list_items(v))
        .any(|token| token.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_split(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
        let mut full = ResponseHead::default();
        let result = parse_response_head_into(buf, 4096, head_request, &mut full)
            .map(|done| done.then_some(full));
        for cut in 0..buf.len() {
            let mut h = ResponseHead::default();
            match (
                parse_response_head_into(&buf[..cut], 4096, head_request, &mut h),
                &result,
            ) {
                (Ok(false), _) => {}
                (Ok(true), Ok(Some(f))) => assert_eq!(&h, f, "cut {cut}"),
                (Err(e), Err(f)) => assert_eq!(&e, f, "cut {cut}"),
                (p, f) => panic!("cut {cut}: {p:?} vs {f:?}"),
            }
        }
        result
    }

    fn complete(buf: &[u8]) -> ResponseHead {
        match every_split(buf, false) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn ordinary_responses() {
        let b = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        let h = complete(b);
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.keep_alive);
        assert_eq!(&b[h.head_len..h.head_len + 3], b"5\r\n");
        assert_eq!(h.header(b, "content-type"), Some(&b"text/event-stream"[..]));

        let h = complete(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(
            (h.status, h.framing),
            (404, ResponseFraming::ContentLength(9))
        );

        let h = complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep_alive);

        let h = complete(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);

        let h = complete(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(h.version, Version::Http10);
        assert!(!h.keep_alive);
        let h = complete(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n");
        assert!(h.keep_alive);

        // No reason phrase, with or without the SP.
        assert_eq!(
            complete(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").status,
            200
        );
        assert_eq!(
            complete(b"HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n").status,
            503
        );
        // Identical repeated Content-Length is one length.
        let h = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::ContentLength(5));
    }

    #[test]
    fn bodiless_statuses() {
        for (b, status) in [
            (&b"HTTP/1.1 100 Continue\r\n\r\n"[..], 100),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                304,
            ),
        ] {
            let h = complete(b);
            assert_eq!((h.status, h.framing), (status, ResponseFraming::None));
            assert!(h.keep_alive);
        }
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        let h = every_split(b, true).ok().flatten();
        assert_eq!(h.map(|h| h.framing), Some(ResponseFraming::None));
    }

    #[test]
    fn interim_then_final() {
        let b = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        let first = complete(b);
        assert_eq!(first.status, 100);
        let rest = &b[first.head_len..];
        let second = complete(rest);
        assert_eq!(second.status, 200);
        assert_eq!(&rest[second.head_len..], b"x");
    }

    #[test]
    fn unframeable_responses_are_errors() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 099 Hm\r\n\r\n",
            b"HTTP/1.1 600 Hm\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 O\rK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ];
        for b in cases {
            match every_split(b, false) {
                Err(e) => assert_eq!(e.status, 502),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(b)),
            }
        }
    }

    #[test]
    fn head_size_limit() {
        let b = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert!(parse_response_head(b.as_bytes(), 64).is_err());
        assert_eq!(parse_response_head(&b.as_bytes()[..64], 64), Ok(None));
        assert!(parse_response_head(b.as_bytes(), b.len()).is_ok_and(|h| h.is_some()));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse_response_head(&many, 1 << 20).is_err());
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            &b"Connection"[..],
            b"keep-alive",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"UPGRADE",
            b"Proxy-Authorization",
            b"proxy-connection",
            b"Proxy-",
        ] {
            assert!(is_hop_by_hop(n), "{}", String::from_utf8_lossy(n));
        }
        for n in [
            &b"Content-Length"[..],
            b"Trailers",
            b"Authorization",
            b"Proxy",
            b"Host",
            b"x-connection",
            b"",
        ] {
            assert!(!is_hop_by_hop(n), "{}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn fields_carried_across_formats() {
        for n in [
            &b"Retry-After"[..],
            b"retry-after-ms",
            b"x-ratelimit-remaining-requests",
            b"anthropic-ratelimit-tokens-reset",
            b"RateLimit-Policy",
            b"ratelimit",
            b"x-request-id",
            b"Request-Id",
        ] {
            assert!(
                is_carried_across_formats(n),
                "{}",
                String::from_utf8_lossy(n)
            );
        }
        for n in [
            &b"content-type"[..],
            b"x-ratelimit-",
            b"retry",
            b"set-cookie",
            b"openai-organization",
            b"x-request-ids",
            b"",
        ] {
            assert!(
                !is_carried_across_formats(n),
                "{}",
                String::from_utf8_lossy(n)
            );
        }
    }

    #[test]
    fn connection_listed_names() {
        let values: [&[u8]; 2] = [b"close, X-Router-Upstream", b" ,Authorization ,"];
        assert!(connection_listed(&values, b"x-router-upstream"));
        assert!(connection_listed(&values, b"authorization"));
        assert!(connection_listed(&values, b"Close"));
        assert!(!connection_listed(&values, b"x-router"));
        assert!(!connection_listed(&values, b""));
        assert!(!connection_listed(&[], b"close"));
    }
}
