//! Request heads: the request line, the field section and the framing rules an edge proxy
//! must enforce before it reads a single body byte.
//!
//! [`parse_request_head`] is re-run on the growing connection buffer until it answers
//! [`ParseStatus::Complete`]. It validates line by line, so a malformed request line is
//! rejected as soon as it is complete, without waiting for the rest of the head.

use std::ops::Range;

use super::fields::{self, FieldLine};
use super::{BodyFraming, HeadError, HeadLimits, Version};

/// A parsed request head. Offsets/ranges index into the head buffer the parser was given,
/// so no header value is copied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// The method token.
    pub method: Range<usize>,
    /// The path: the origin-form request-target up to (not including) the first `?`.
    pub path: Range<usize>,
    /// The query, after the `?` and without it; `Some(empty)` for a target ending in `?`.
    pub query: Option<Range<usize>>,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// Every field in order of arrival as (name, value) ranges; values trimmed of OWS.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Bytes consumed by the head including the final CRLFCRLF (and any empty lines that
    /// preceded the request line). The body or the next pipelined request starts here.
    pub head_len: usize,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may be reused after this exchange: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive` (and no `close`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1: ignored on 1.0).
    pub expect_continue: bool,
    /// The `Host` value; an empty range when HTTP/1.0 sent none.
    pub host: Range<usize>,
}

/// The result of feeding a (possibly incomplete) head to [`parse_request_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseStatus {
    /// The head is complete; the body starts at `head_len`.
    Complete(RequestHead),
    /// The final CRLFCRLF has not arrived yet and the limit is not exceeded: read more.
    Partial,
}

impl RequestHead {
    /// The method, e.g. `POST`.
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        slice(buf, &self.method)
    }

    /// The path without the query, e.g. `/v1/chat/completions`.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        slice(buf, &self.path)
    }

    /// The query without the `?`, if the target had one.
    pub fn query<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.query.as_ref().map(|q| slice(buf, q))
    }

    /// The whole request-target: path, and `?query` if present.
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let end = self.query.as_ref().map_or(self.path.end, |q| q.end);
        slice(buf, &(self.path.start..end))
    }

    /// The `Host` value (empty when an HTTP/1.0 request had none).
    pub fn host<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        slice(buf, &self.host)
    }

    /// The first value of the field called `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let (_, v) = self
            .headers
            .iter()
            .find(|(n, _)| slice(buf, n).eq_ignore_ascii_case(name.as_bytes()))?;
        Some(slice(buf, v))
    }

    /// Every value of the field called `name` (ASCII case-insensitive), in order.
    pub fn headers_named<'a, 'n>(
        &'a self,
        buf: &'a [u8],
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.headers_iter(buf)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every field as (name, value) slices, in order of arrival.
    pub fn headers_iter<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.headers
            .iter()
            .map(move |(n, v)| (slice(buf, n), slice(buf, v)))
    }
}

/// `buf[r]`, or empty if `r` does not fit (a head used with the wrong buffer).
fn slice<'a>(buf: &'a [u8], r: &Range<usize>) -> &'a [u8] {
    buf.get(r.clone()).unwrap_or_default()
}

/// Parse a request head from `buf` (which may hold more bytes after the head: a body or
/// pipelined requests).
///
/// Partial when the CRLFCRLF hasn't arrived yet AND `buf.len() <= max_head_bytes`; else 431
/// (or 414 when the request line alone exceeds the limit). Every error means: answer with
/// `status`, then close.
pub fn parse_request_head(buf: &[u8], limits: &HeadLimits) -> Result<ParseStatus, HeadError> {
    let mut head = RequestHead::default();
    if parse_request_head_into(buf, limits, &mut head)? {
        Ok(ParseStatus::Complete(head))
    } else {
        Ok(ParseStatus::Partial)
    }
}

/// [`parse_request_head`] into a reused head (its `headers` allocation is kept).
/// Returns `Ok(true)` when complete; on `Ok(false)` or an error the contents of `head` are
/// unspecified.
pub fn parse_request_head_into(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<bool, HeadError> {
    head.headers.clear();
    let truncated = buf.len() > limits.max_head_bytes;
    let win = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    // Answer for a head that ends beyond what we have: read more, or too big.
    let incomplete = |status: u16, message: &'static str| {
        if truncated {
            Err(HeadError::new(status, message))
        } else {
            Ok(false)
        }
    };
    const URI_TOO_LONG: &str = "request line too long";
    const HEAD_TOO_BIG: &str = "request header fields too large";

    // RFC 9112 §2.2: a server SHOULD ignore empty lines before the request line (some
    // clients send a CRLF after a POST body).
    let mut pos = 0;
    loop {
        match win.get(pos) {
            Some(b'\r') => match win.get(pos + 1) {
                Some(b'\n') => pos += 2,
                Some(_) => return Err(HeadError::bad("bare CR in head")),
                None => return incomplete(414, URI_TOO_LONG),
            },
            Some(b'\n') => return Err(HeadError::bad("bare LF in head (lines must end in CRLF)")),
            Some(_) => break,
            None => return incomplete(414, URI_TOO_LONG),
        }
    }

    let Some(line_end) = fields::line_end(
        win,
        pos,
        fields::LineBytes::RequestLine,
        "invalid byte in request line",
    )
    .map_err(HeadError::bad)?
    else {
        return incomplete(414, URI_TOO_LONG);
    };
    parse_request_line(win, pos..line_end, head)?;

    let mut seen = Seen::default();
    let mut at = line_end + 2;
    loop {
        let Some((line, next)) = fields::parse_field_line(win, at).map_err(HeadError::bad)? else {
            return incomplete(431, HEAD_TOO_BIG);
        };
        at = next;
        let FieldLine::Field {
            name,
            value,
            raw_value,
        } = line
        else {
            break;
        };
        if head.headers.len() >= limits.max_headers {
            return Err(HeadError::new(431, "too many header fields"));
        }
        seen.field(win, head.version, &name, &value, &raw_value)?;
        head.headers.push((name, value));
    }
    head.head_len = at;
    seen.finish(head)?;
    Ok(true)
}

/// Splits and checks `method SP origin-form SP HTTP-version` (bytes already known to be
/// visible ASCII or SP).
fn parse_request_line(
    buf: &[u8],
    line: Range<usize>,
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    let bytes = buf.get(line.clone()).unwrap_or_default();
    let mut parts = bytes.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::bad(
            "request line must be `method SP target SP version` with single spaces",
        ));
    };
    if method.is_empty() || target.is_empty() || version.is_empty() {
        return Err(HeadError::bad(
            "request line must be `method SP target SP version` with single spaces",
        ));
    }
    if !method.iter().all(|&b| fields::is_tchar(b)) {
        return Err(HeadError::bad("invalid method"));
    }
    head.version = match fields::parse_version(version) {
        Ok(Some(v)) => v,
        Ok(None) => return Err(HeadError::new(505, "HTTP version not supported")),
        Err(()) => return Err(HeadError::bad("invalid HTTP version")),
    };
    if method == b"CONNECT" {
        return Err(HeadError::new(405, "CONNECT is not supported"));
    }
    if target == b"*" {
        return Err(HeadError::bad(
            "asterisk-form request-target is not supported",
        ));
    }
    if target.first() != Some(&b'/') {
        return Err(HeadError::bad(
            "request-target must be origin-form (start with `/`)",
        ));
    }
    if target.contains(&b'#') {
        return Err(HeadError::bad("fragment in request-target"));
    }
    let m_start = line.start;
    let t_start = m_start + method.len() + 1;
    head.method = m_start..m_start + method.len();
    match target.iter().position(|&b| b == b'?') {
        Some(q) => {
            head.path = t_start..t_start + q;
            head.query = Some(t_start + q + 1..t_start + target.len());
        }
        None => {
            head.path = t_start..t_start + target.len();
            head.query = None;
        }
    }
    Ok(())
}

/// What the framing-relevant fields said, accumulated while the head is parsed.
#[derive(Default)]
struct Seen {
    content_length: Option<u64>,
    chunked: bool,
    host: Option<Range<usize>>,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
}

impl Seen {
    /// Applies the rules for one field; ordinary fields pass through untouched.
    fn field(
        &mut self,
        buf: &[u8],
        version: Version,
        name: &Range<usize>,
        value: &Range<usize>,
        raw_value: &Range<usize>,
    ) -> Result<(), HeadError> {
        let n = buf.get(name.clone()).unwrap_or_default();
        let v = buf.get(value.clone()).unwrap_or_default();
        // Dispatch on length first: most fields match none of these and cost one compare.
        match n.len() {
            4 if n.eq_ignore_ascii_case(b"host") => {
                if self.host.is_some() {
                    return Err(HeadError::bad("duplicate Host header"));
                }
                if !v.iter().all(|&b| is_host_byte(b)) {
                    return Err(HeadError::bad("invalid Host header"));
                }
                self.host = Some(value.clone());
            }
            6 if n.eq_ignore_ascii_case(b"expect") => {
                if !v.eq_ignore_ascii_case(b"100-continue") {
                    return Err(HeadError::new(417, "unsupported expectation"));
                }
                // RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
                self.expect_continue = version == Version::Http11;
            }
            10 if n.eq_ignore_ascii_case(b"connection") => {
                for token in fields::list_items(v) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    }
                }
            }
            14 if n.eq_ignore_ascii_case(b"content-length") => {
                if self.content_length.is_some() {
                    return Err(HeadError::bad("multiple Content-Length headers"));
                }
                framing_value_is_plain(buf, raw_value)?;
                let len = fields::parse_content_length(v)
                    .ok_or(HeadError::bad("invalid Content-Length"))?;
                self.content_length = Some(len);
            }
            17 if n.eq_ignore_ascii_case(b"transfer-encoding") => {
                if version == Version::Http10 {
                    return Err(HeadError::bad("Transfer-Encoding in an HTTP/1.0 request"));
                }
                if self.chunked {
                    return Err(HeadError::bad("multiple Transfer-Encoding headers"));
                }
                framing_value_is_plain(buf, raw_value)?;
                check_transfer_encoding(v)?;
                self.chunked = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// The whole-head rules, once every field is known.
    fn finish(self, head: &mut RequestHead) -> Result<(), HeadError> {
        head.framing = match (self.content_length, self.chunked) {
            (Some(_), true) => {
                return Err(HeadError::bad(
                    "both Content-Length and Transfer-Encoding (request smuggling)",
                ));
            }
            (Some(n), false) => BodyFraming::ContentLength(n),
            (None, true) => BodyFraming::Chunked,
            (None, false) => BodyFraming::None,
        };
        head.host = match (self.host, head.version) {
            (Some(h), _) => h,
            (None, Version::Http10) => 0..0,
            (None, Version::Http11) => return Err(HeadError::bad("missing Host header")),
        };
        head.keep_alive =
            !self.conn_close && (head.version == Version::Http11 || self.conn_keep_alive);
        head.expect_continue = self.expect_continue;
        Ok(())
    }
}

/// Framing fields get no benefit of the doubt: only SP may surround the value. A tab or
/// other whitespace there is legal OWS, but it is what obfuscated-TE smuggling payloads
/// look like and no real client sends it (`docs/reliability.md` A4).
fn framing_value_is_plain(buf: &[u8], raw_value: &Range<usize>) -> Result<(), HeadError> {
    let raw = buf.get(raw_value.clone()).unwrap_or_default();
    if raw.contains(&b'\t') {
        return Err(HeadError::bad("tab in a framing header value"));
    }
    Ok(())
}

/// Only `chunked`, alone, is accepted. A list (`gzip, chunked`, `chunked, chunked`) is 400;
/// a single registered coding we do not implement is 501 (RFC 9112 §6.1); anything else
/// (`xchunked`, `chunked;x=1`) is 400.
fn check_transfer_encoding(v: &[u8]) -> Result<(), HeadError> {
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    if v.contains(&b',') {
        return Err(HeadError::bad(
            "Transfer-Encoding must be exactly `chunked` (no coding lists)",
        ));
    }
    const KNOWN: [&[u8]; 5] = [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];
    if KNOWN.iter().any(|k| v.eq_ignore_ascii_case(k)) {
        return Err(HeadError::new(501, "unsupported transfer coding"));
    }
    Err(HeadError::bad("invalid Transfer-Encoding"))
}

/// Bytes of `uri-host [ ":" port ]` (RFC 3986 reg-name, IPv4, IP-literal), minus `,` which
/// only shows up in merged or smuggled values.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'%'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head_bytes: 8192,
            max_headers: 100,
        }
    }

    fn parse(buf: &[u8]) -> Result<ParseStatus, HeadError> {
        parse_request_head(buf, &limits())
    }

    fn complete(buf: &[u8]) -> RequestHead {
        match parse(buf) {
            Ok(ParseStatus::Complete(h)) => h,
            other => panic!(
                "expected complete for {:?}: {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf) {
            Err(e) => e.status,
            other => panic!(
                "expected error for {:?}: {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// Feeds every prefix of `buf`: each must be Partial or the same answer as the whole
    /// buffer (errors may come early, never differ), and the whole answer must be stable.
    fn every_split(buf: &[u8]) -> Result<ParseStatus, HeadError> {
        let full = parse(buf);
        let mut reused = RequestHead::default();
        for cut in 0..=buf.len() {
            let p = parse(&buf[..cut]);
            match (&p, &full) {
                (Ok(ParseStatus::Partial), _) => {}
                (Err(e), Err(f)) => assert_eq!(e, f, "cut {cut}"),
                (Ok(ParseStatus::Complete(h)), Ok(ParseStatus::Complete(f))) => {
                    assert_eq!(h, f, "cut {cut}");
                    assert!(cut >= h.head_len);
                }
                _ => panic!("cut {cut}: {p:?} vs full {full:?}"),
            }
            // The reuse API agrees with the allocating one.
            let r = parse_request_head_into(&buf[..cut], &limits(), &mut reused);
            match (&p, r) {
                (Ok(ParseStatus::Partial), Ok(false)) => {}
                (Ok(ParseStatus::Complete(h)), Ok(true)) => assert_eq!(h, &reused),
                (Err(e), Err(f)) => assert_eq!(e, &f),
                (p, r) => panic!("cut {cut}: {p:?} vs into {r:?}"),
            }
        }
        full
    }

    const SIMPLE: &[u8] = b"POST /v1/chat/completions?x=1&y HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Content-Type: application/json\r\n\
Content-Length: 13\r\n\
X-Empty:\r\n\
X-Pad: \t spaced value \t \r\n\
\r\n\
{\"model\":\"m\"}GET / HTTP/1.1\r\n";

    #[test]
    fn parses_a_request_at_every_split() {
        let Ok(ParseStatus::Complete(h)) = every_split(SIMPLE) else {
            panic!("not complete")
        };
        let b = SIMPLE;
        assert_eq!(h.method(b), b"POST");
        assert_eq!(h.path(b), b"/v1/chat/completions");
        assert_eq!(h.query(b), Some(&b"x=1&y"[..]));
        assert_eq!(h.target(b), b"/v1/chat/completions?x=1&y");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.host(b), b"localhost:8080");
        assert_eq!(h.framing, BodyFraming::ContentLength(13));
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(&b[h.head_len..h.head_len + 13], b"{\"model\":\"m\"}");
        assert_eq!(h.header(b, "content-type"), Some(&b"application/json"[..]));
        assert_eq!(h.header(b, "CONTENT-TYPE"), Some(&b"application/json"[..]));
        assert_eq!(h.header(b, "x-empty"), Some(&b""[..]));
        assert_eq!(h.header(b, "x-pad"), Some(&b"spaced value"[..]));
        assert_eq!(h.header(b, "missing"), None);
        let names: Vec<&[u8]> = h.headers_iter(b).map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![
                &b"Host"[..],
                b"Content-Type",
                b"Content-Length",
                b"X-Empty",
                b"X-Pad"
            ]
        );
    }

    #[test]
    fn minimal_requests() {
        let b = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = complete(b);
        assert_eq!(h.head_len, b.len());
        assert_eq!(h.framing, BodyFraming::None);
        assert_eq!(h.query, None);
        assert_eq!(h.path(b), b"/");

        let b = b"GET /? HTTP/1.0\r\n\r\n";
        let h = complete(b);
        assert_eq!(h.version, Version::Http10);
        assert_eq!(h.query(b), Some(&b""[..]));
        assert_eq!(h.host(b), b"");
        assert!(!h.keep_alive);
    }

    #[test]
    fn pipelined_requests_parse_in_turn() {
        let b = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let first = complete(b);
        assert_eq!(first.path(b), b"/a");
        let rest = &b[first.head_len..];
        let second = complete(rest);
        assert_eq!(second.path(rest), b"/b");
        assert_eq!(second.head_len, rest.len());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let b = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let Ok(ParseStatus::Complete(h)) = every_split(b) else {
            panic!()
        };
        assert_eq!(h.method(b), b"GET");
        assert_eq!(h.head_len, b.len());
        assert_eq!(status(b"\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |b: &[u8]| complete(b).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn expect() {
        let h = complete(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n",
        );
        assert!(h.expect_continue);
        // Ignored on HTTP/1.0.
        let h = complete(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        assert!(!h.expect_continue);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
            417
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n"),
            417
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n"),
            417
        );
    }

    #[test]
    fn chunked_framing() {
        for te in ["chunked", "Chunked", "CHUNKED", " chunked  "] {
            let b = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{te}\r\n\r\n");
            assert_eq!(complete(b.as_bytes()).framing, BodyFraming::Chunked, "{te}");
        }
    }

    /// Research checklist §4 A1–A9, as raw bytes.
    #[test]
    fn smuggling_and_malformed_heads_are_rejected() {
        let cases: &[(&[u8], u16)] = &[
            // A1/A2: CL + TE in either order.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            // A3: Content-Length variants.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12345678901234567890\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\t5\r\n\r\n", 400),
            // A4: Transfer-Encoding variants.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
            // A5: TE in HTTP/1.0.
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            // A7: obs-fold, space before colon, bad name bytes, bare CR, controls.
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x1bc\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\rX: y\r\n\r\n", 400),
            // Bare LF as a line terminator, anywhere.
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc\r\n\r\n", 400),
            // A8: request line.
            (b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /x  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b" GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /x HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
            (b"GET /x HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
            (b"GET\t/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /x\r\nHost: a\r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
            (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            (b"GET /x HTTP/0.9\r\nHost: a\r\n\r\n", 505),
            (b"GET /x HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
            (b"GET /x http/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /x FOO\r\nHost: a\r\n\r\n", 400),
            (b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET evil:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n", 405),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            // A9: Host.
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        ];
        for (input, want) in cases {
            let got = every_split(input);
            match got {
                Err(e) => assert_eq!(
                    e.status,
                    *want,
                    "{:?}: {}",
                    String::from_utf8_lossy(input),
                    e.message
                ),
                other => panic!(
                    "{:?}: expected {want}, got {other:?}",
                    String::from_utf8_lossy(input)
                ),
            }
        }
    }

    #[test]
    fn accepted_edge_cases() {
        // Empty Host is legal (RFC 9112 §3.2); IPv6 literal with port.
        complete(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
        let b = b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
        assert_eq!(complete(b).host(b), b"[::1]:8080");
        // Underscore names are tokens: kept as-is, never equal to the dashed form.
        let b = b"GET / HTTP/1.1\r\nHost: a\r\nx_api_key: k\r\n\r\n";
        let h = complete(b);
        assert_eq!(h.header(b, "x_api_key"), Some(&b"k"[..]));
        assert_eq!(h.header(b, "x-api-key"), None);
        // obs-text in values is allowed (and passed through untouched).
        let b = b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n";
        assert_eq!(complete(b).header(b, "x"), Some(&b"caf\xc3\xa9"[..]));
        // Leading zeros in Content-Length.
        let b = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n";
        assert_eq!(complete(b).framing, BodyFraming::ContentLength(7));
        // Unusual but valid methods and paths.
        let b = b"M-SEARCH //x/%20y?a=%3F&b={} HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = complete(b);
        assert_eq!(h.method(b), b"M-SEARCH");
        assert_eq!(h.path(b), b"//x/%20y");
        assert_eq!(h.query(b), Some(&b"a=%3F&b={}"[..]));
        // Upgrade is an ordinary field here; the caller strips hop-by-hop fields.
        let b = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        assert_eq!(complete(b).header(b, "upgrade"), Some(&b"h2c"[..]));
    }

    #[test]
    fn errors_come_before_the_head_is_complete() {
        // A bad request line is rejected without waiting for the rest.
        assert_eq!(status(b"GET  / HTTP/1.1\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nX : y\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\tfold"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nX-\0"), 400);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(ParseStatus::Partial)
        );
    }

    #[test]
    fn limits_give_414_and_431() {
        let lim = HeadLimits {
            max_head_bytes: 64,
            max_headers: 3,
        };
        let p = |b: &[u8]| parse_request_head(b, &lim);
        let st = |b: &[u8]| p(b).err().map(|e| e.status);

        // Request line alone longer than the limit.
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
        assert_eq!(st(long_line.as_bytes()), Some(414));
        // Still incomplete but already over the limit: 414 without waiting.
        assert_eq!(st(&long_line.as_bytes()[..70]), Some(414));
        // Exactly at the limit the request line is still partial.
        assert_eq!(p(&long_line.as_bytes()[..64]), Ok(ParseStatus::Partial));

        // Request line fits, fields do not.
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(60));
        assert_eq!(st(big.as_bytes()), Some(431));
        assert_eq!(st(&big.as_bytes()[..65]), Some(431));
        assert_eq!(p(&big.as_bytes()[..64]), Ok(ParseStatus::Partial));

        // A head of exactly max_head_bytes is fine, also with body bytes after it.
        let pad = 64 - b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n".len();
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\nBODY",
            "c".repeat(pad)
        );
        match p(exact.as_bytes()) {
            Ok(ParseStatus::Complete(h)) => assert_eq!(h.head_len, 64),
            other => panic!("{other:?}"),
        }
        // One byte more: 431.
        let over = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "c".repeat(pad + 1)
        );
        assert_eq!(st(over.as_bytes()), Some(431));

        // Too many fields.
        assert!(matches!(
            p(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"),
            Ok(ParseStatus::Complete(_))
        ));
        assert_eq!(
            st(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Some(431)
        );
        // Endless empty lines before the request line are bounded too.
        assert_eq!(st(&b"\r\n".repeat(40)), Some(414));
    }

    #[test]
    fn default_limits_take_1000_headers_as_431() {
        let mut b = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..1000 {
            b.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        let e = parse_request_head(&b, &HeadLimits::default()).err();
        assert_eq!(e.map(|e| e.status), Some(431));
        // One 70 KB header.
        let b = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(70_000)
        );
        let e = parse_request_head(b.as_bytes(), &HeadLimits::default()).err();
        assert_eq!(e.map(|e| e.status), Some(431));
        // A 100 KB request line.
        let b = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "v".repeat(100_000));
        let e = parse_request_head(b.as_bytes(), &HeadLimits::default()).err();
        assert_eq!(e.map(|e| e.status), Some(414));
    }

    #[test]
    fn reused_head_forgets_previous_request() {
        let lim = limits();
        let mut h = RequestHead::default();
        let a = b"POST /a?q HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_request_head_into(a, &lim, &mut h), Ok(true));
        assert_eq!(h.headers.len(), 4);
        let b = b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n";
        assert_eq!(parse_request_head_into(b, &lim, &mut h), Ok(true));
        assert_eq!(h, complete(b));
    }

    #[test]
    fn every_byte_value_in_a_field_value() {
        for byte in 0u8..=255 {
            let mut b = b"GET / HTTP/1.1\r\nHost: a\r\nX: a".to_vec();
            b.push(byte);
            b.extend_from_slice(b"b\r\n\r\n");
            let ok = byte == b'\t' || (byte >= 0x20 && byte != 0x7f);
            assert_eq!(parse(&b).is_ok(), ok, "byte {byte:#x}");
        }
    }

    #[test]
    fn every_byte_value_in_a_field_name() {
        for byte in 0u8..=255 {
            let mut b = b"GET / HTTP/1.1\r\nHost: a\r\nX".to_vec();
            b.push(byte);
            b.extend_from_slice(b"Y: v\r\n\r\n");
            // `X:Y: v` is the field `X` with value `Y: v`.
            let ok = fields::is_tchar(byte) || byte == b':';
            assert_eq!(parse(&b).is_ok(), ok, "byte {byte:#x}");
        }
    }
}
