//! Writing HTTP/1.1 on the way out: status lines, fields, chunks.
//!
//! All writers append to a caller-owned `Vec<u8>` (the connection's reused write buffer)
//! and never allocate beyond growing it; numbers are formatted on the stack.

/// The last chunk and the empty trailer section that end a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The reason phrase the router sends for `status` (RFC 9110 §15); empty for codes it
/// does not know (the status line stays valid: `HTTP/1.1 599 \r\n`).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        529 => "Site Overloaded",
        _ => "",
    }
}

/// Appends `HTTP/1.1 <code> <reason>\r\n`. A status outside 100–999 cannot be written as
/// three digits and is sent as 500.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
///
/// Names and values normally come from parsed heads or config (already valid). As a last
/// line of defence against response splitting, CR, LF and NUL are written as SP, so a
/// value can never end the line or the head.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_sanitized(out, name);
    out.extend_from_slice(b": ");
    push_sanitized(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `<name>: <decimal n>\r\n` (no allocation).
pub fn write_header_u64(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: <n>\r\n`.
pub fn write_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk-size line (`<hex>\r\n`) for `len` payload bytes, for callers that write
/// the payload themselves (e.g. straight from another buffer). Follow the payload with
/// `\r\n`. `len` 0 would be the last chunk: use [`LAST_CHUNK`].
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len as u64;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk: hex size CRLF data CRLF. Writes nothing for empty data (an empty
/// chunk would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_sanitized(out: &mut Vec<u8>, bytes: &[u8]) {
    let unsafe_byte = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
    if !bytes.iter().any(unsafe_byte) {
        out.extend_from_slice(bytes);
        return;
    }
    out.extend(bytes.iter().map(|b| if unsafe_byte(b) { b' ' } else { *b }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_line(status: u16) -> String {
        let mut out = Vec::new();
        write_status_line(&mut out, status);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn status_lines() {
        let expected = [
            (100, "Continue"),
            (200, "OK"),
            (201, "Created"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (422, "Unprocessable Content"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
        ];
        for (code, reason) in expected {
            assert_eq!(status_line(code), format!("HTTP/1.1 {code} {reason}\r\n"));
        }
        assert_eq!(status_line(599), "HTTP/1.1 599 \r\n");
        assert_eq!(status_line(0), "HTTP/1.1 500 Internal Server Error\r\n");
        assert_eq!(status_line(1000), "HTTP/1.1 500 Internal Server Error\r\n");
    }

    #[test]
    fn written_status_lines_parse_back() {
        for code in [100u16, 200, 204, 404, 502, 599] {
            let mut out = Vec::new();
            write_status_line(&mut out, code);
            write_content_length(&mut out, 0);
            out.extend_from_slice(b"\r\n");
            let head = crate::http::parse_response_head(&out, 1024);
            assert_eq!(head.ok().flatten().map(|h| h.status), Some(code));
        }
    }

    #[test]
    fn headers() {
        let mut out = Vec::new();
        write_header(&mut out, b"Content-Type", b"text/event-stream");
        write_content_length(&mut out, 0);
        write_content_length(&mut out, 1234567890123);
        write_header(&mut out, b"X-Evil", b"a\r\nSet-Cookie: x\0");
        assert_eq!(
            out,
            b"Content-Type: text/event-stream\r\ncontent-length: 0\r\n\
content-length: 1234567890123\r\nX-Evil: a  Set-Cookie: x \r\n"
        );
    }

    #[test]
    fn chunks_round_trip_through_the_decoder() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"");
        assert!(out.is_empty());
        write_chunk(&mut out, b"hello");
        write_chunk(&mut out, &[b'x'; 300]);
        write_chunk_header(&mut out, 1);
        out.extend_from_slice(b"!\r\n");
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        let mut d = crate::http::ChunkedDecoder::new(0);
        let mut buf = out.clone();
        let r = d.decode_in_place(&mut buf);
        let Ok(r) = r else { panic!("{r:?}") };
        assert!(r.done);
        assert_eq!(r.consumed, out.len());
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&[b'x'; 300]);
        want.push(b'!');
        assert_eq!(&buf[..r.produced], want.as_slice());
    }

    #[test]
    fn chunk_header_sizes() {
        for (len, hex) in [(1usize, "1"), (15, "f"), (16, "10"), (4096, "1000")] {
            let mut out = Vec::new();
            write_chunk_header(&mut out, len);
            assert_eq!(out, format!("{hex}\r\n").into_bytes());
        }
    }
}
