//! Byte classes and the line tokenizer shared by request and response heads.
//!
//! Every function here takes the whole (length-limited) head window and a start offset and
//! answers `Ok(None)` when the line is not complete yet, so callers can re-run them on a
//! growing buffer. Errors are fixed messages; the caller picks the status (400 for clients,
//! 502 for upstreams).

use std::ops::Range;

/// `tchar` from RFC 9110 §5.6.2: the bytes allowed in methods and field names.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// Whether `b` may appear in a token (method, field name, transfer coding).
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// Whether `b` may appear inside a field value, a reason phrase or a chunk extension:
/// HTAB, SP, VCHAR and obs-text. Everything else (NUL, CR, LF, other controls, DEL) is not.
#[inline]
pub(crate) fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Whether `b` is optional whitespace (SP / HTAB).
#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `range` of `buf` without leading and trailing OWS.
pub(crate) fn trim_ows(buf: &[u8], range: Range<usize>) -> Range<usize> {
    let (mut start, mut end) = (range.start, range.end);
    while start < end && buf.get(start).copied().is_some_and(is_ows) {
        start += 1;
    }
    while end > start && buf.get(end - 1).copied().is_some_and(is_ows) {
        end -= 1;
    }
    start..end
}

/// `s` without leading and trailing OWS.
pub(crate) fn trim_ows_slice(s: &[u8]) -> &[u8] {
    let r = trim_ows(s, 0..s.len());
    &s[r]
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), each trimmed of OWS; empty
/// elements are skipped as the RFC requires.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows_slice)
        .filter(|s| !s.is_empty())
}

/// Which bytes a line may contain before its CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineBytes {
    /// Field values, reason phrases: [`is_value_byte`].
    Value,
    /// The request line: SP and visible ASCII only.
    RequestLine,
}

impl LineBytes {
    #[inline]
    fn allows(self, b: u8) -> bool {
        match self {
            LineBytes::Value => is_value_byte(b),
            LineBytes::RequestLine => (0x20..0x7f).contains(&b),
        }
    }

    /// Whether the 8 bytes in `x` are all plainly allowed (SWAR: `0x20..0x7f`, plus
    /// `0x80..` for values). A `false` only means "look byte by byte".
    #[inline]
    fn all_plain(self, x: u64) -> bool {
        const LO: u64 = 0x0101_0101_0101_0101;
        const HI: u64 = 0x8080_8080_8080_8080;
        // Some byte < 0x20 (exact for thresholds <= 0x80).
        let below_sp = x.wrapping_sub(LO * 0x20) & !x & HI;
        // Some byte == 0x7f.
        let del = {
            let y = x ^ (LO * 0x7f);
            y.wrapping_sub(LO) & !y & HI
        };
        let high = match self {
            LineBytes::Value => 0,
            LineBytes::RequestLine => x & HI,
        };
        below_sp | del | high == 0
    }
}

/// Scans the line starting at `start`. Returns the offset of its CR when the line is
/// complete and ends in CRLF, `None` when more bytes are needed; a byte that is neither
/// allowed nor the line end fails with `invalid`.
pub(crate) fn line_end(
    buf: &[u8],
    start: usize,
    class: LineBytes,
    invalid: &'static str,
) -> Result<Option<usize>, &'static str> {
    let rest = buf.get(start..).unwrap_or_default();
    // Skip 8 plain bytes at a time, then find the exact stop byte one by one.
    let mut skip = 0;
    for block in rest.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        if !class.all_plain(u64::from_le_bytes(word)) {
            break;
        }
        skip += 8;
    }
    let tail = rest.get(skip..).unwrap_or_default();
    let Some(i) = tail.iter().position(|&b| !class.allows(b)) else {
        return Ok(None);
    };
    let at = start + skip + i;
    Ok(crlf_at(buf, at, invalid)?.map(|()| at))
}

/// Checks for CRLF at `at`: `Ok(Some(()))` if present, `Ok(None)` if the buffer ends first,
/// `invalid` if another byte is there.
fn crlf_at(buf: &[u8], at: usize, invalid: &'static str) -> Result<Option<()>, &'static str> {
    match buf.get(at) {
        None => Ok(None),
        Some(b'\r') => match buf.get(at + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(())),
            Some(_) => Err("bare CR in head"),
        },
        Some(b'\n') => Err("bare LF in head (lines must end in CRLF)"),
        Some(_) => Err(invalid),
    }
}

/// One line of the field section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldLine {
    /// The empty line that ends the head.
    End,
    /// `name: value`; `value` is trimmed of OWS, `raw_value` is everything between the
    /// colon and the CRLF.
    Field {
        name: Range<usize>,
        value: Range<usize>,
        raw_value: Range<usize>,
    },
}

/// Parses the field line (or the final empty line) starting at `start`. On success returns
/// the line and the offset of the next line.
///
/// Rejects, as soon as the offending byte is seen: obs-fold (a line starting with SP/HTAB),
/// a missing colon, whitespace or any non-token byte in the name, control bytes in the
/// value, bare CR and bare LF.
pub(crate) fn parse_field_line(
    buf: &[u8],
    start: usize,
) -> Result<Option<(FieldLine, usize)>, &'static str> {
    match buf.get(start) {
        None => return Ok(None),
        Some(b'\r' | b'\n') => {
            let end = crlf_at(buf, start, "bare CR in head")?;
            return Ok(end.map(|()| (FieldLine::End, start + 2)));
        }
        Some(b' ' | b'\t') => return Err("obs-fold (line starting with whitespace) in head"),
        Some(_) => {}
    }
    let rest = buf.get(start..).unwrap_or_default();
    let Some(n) = rest.iter().position(|&b| !is_tchar(b)) else {
        return Ok(None);
    };
    let colon = start + n;
    match buf.get(colon) {
        Some(b':') if n > 0 => {}
        Some(b' ' | b'\t') => return Err("whitespace between field name and colon"),
        Some(b'\r' | b'\n') => return Err("header line without colon"),
        _ => return Err("invalid byte in field name"),
    }
    let value_start = colon + 1;
    let Some(cr) = line_end(
        buf,
        value_start,
        LineBytes::Value,
        "control byte in field value",
    )?
    else {
        return Ok(None);
    };
    let raw_value = value_start..cr;
    let value = trim_ows(buf, raw_value.clone());
    Ok(Some((
        FieldLine::Field {
            name: start..colon,
            value,
            raw_value,
        },
        cr + 2,
    )))
}

/// Parses a decimal `Content-Length` value: 1–15 ASCII digits, nothing else (no sign, no
/// whitespace, no list). 15 digits cannot overflow a `u64`.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 15 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Checks an `HTTP/x.y` version token: `Ok(Some(_))` for 1.0/1.1, `Ok(None)` for a
/// well-formed but unsupported version, `Err` for anything else.
pub(crate) fn parse_version(v: &[u8]) -> Result<Option<super::Version>, ()> {
    match v {
        b"HTTP/1.1" => Ok(Some(super::Version::Http11)),
        b"HTTP/1.0" => Ok(Some(super::Version::Http10)),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Ok(None)
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tchar_table() {
        for b in b"abcXYZ019!#$%&'*+-.^_`|~" {
            assert!(is_tchar(*b), "{}", *b as char);
        }
        for b in b" \t\r\n:;,/\"()<>@[]?={}\\\x00\x7f\x80\xff" {
            assert!(!is_tchar(*b), "{b:#x}");
        }
    }

    #[test]
    fn value_bytes() {
        assert!(is_value_byte(b'\t'));
        assert!(is_value_byte(b' '));
        assert!(is_value_byte(b'~'));
        assert!(is_value_byte(0x80));
        assert!(is_value_byte(0xff));
        for b in [0u8, 0x0b, b'\r', b'\n', 0x1f, 0x7f] {
            assert!(!is_value_byte(b), "{b:#x}");
        }
    }

    #[test]
    fn line_scan_agrees_with_byte_classes() {
        // Every byte value at every position of a 19-byte line (covers the 8-byte blocks
        // and the tail), for both classes.
        for class in [LineBytes::Value, LineBytes::RequestLine] {
            for byte in 0u8..=255 {
                for at in 0..19 {
                    let mut line = vec![b'a'; 19];
                    line[at] = byte;
                    line.extend_from_slice(b"\r\n");
                    let got = line_end(&line, 0, class, "bad");
                    let want = if class.allows(byte) {
                        Ok(Some(19))
                    } else if byte == b'\r' {
                        Err("bare CR in head")
                    } else if byte == b'\n' {
                        Err("bare LF in head (lines must end in CRLF)")
                    } else {
                        Err("bad")
                    };
                    assert_eq!(got, want, "{class:?} byte {byte:#x} at {at}");
                }
            }
        }
        assert_eq!(
            line_end(b"abcdefghijk", 0, LineBytes::Value, "bad"),
            Ok(None)
        );
        assert_eq!(
            line_end(b"abc\r\n", 1, LineBytes::Value, "bad"),
            Ok(Some(3))
        );
    }

    #[test]
    fn trims_and_lists() {
        assert_eq!(trim_ows_slice(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows_slice(b"  "), b"");
        let items: Vec<&[u8]> = list_items(b" close ,, keep-alive,").collect();
        assert_eq!(items, vec![&b"close"[..], &b"keep-alive"[..]]);
    }

    #[test]
    fn field_line_cases() {
        let ok = |s: &[u8]| parse_field_line(s, 0);
        match ok(b"Name:  v a \t\r\nX") {
            Ok(Some((
                FieldLine::Field {
                    name,
                    value,
                    raw_value,
                },
                next,
            ))) => {
                assert_eq!(name, 0..4);
                assert_eq!(value, 7..10);
                assert_eq!(raw_value, 5..12);
                assert_eq!(next, 14);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ok(b"\r\n"), Ok(Some((FieldLine::End, 2))));
        assert_eq!(ok(b"\r"), Ok(None));
        assert_eq!(ok(b"Name"), Ok(None));
        assert_eq!(ok(b"Name: v"), Ok(None));
        assert_eq!(ok(b"Name: v\r"), Ok(None));
        assert!(ok(b"\n").is_err());
        assert!(ok(b"\rx").is_err());
        assert!(ok(b" x: y\r\n").is_err());
        assert!(ok(b"\tx: y\r\n").is_err());
        assert!(ok(b"Na me: y\r\n").is_err());
        assert!(ok(b"Name : y\r\n").is_err());
        assert!(ok(b": y\r\n").is_err());
        assert!(ok(b"Name\r\n").is_err());
        assert!(ok(b"Na\0me: y\r\n").is_err());
        assert!(ok(b"Name: a\0b\r\n").is_err());
        assert!(ok(b"Name: a\rb\r\n").is_err());
        assert!(ok(b"Name: a\n").is_err());
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"0005"), Some(5));
        assert_eq!(
            parse_content_length(b"999999999999999"),
            Some(999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"1000000000000000",
            b"+5",
            b"-5",
            b"0x5",
            b"5 5",
            b"5,5",
            b" 5",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions() {
        use super::super::Version;
        assert_eq!(parse_version(b"HTTP/1.1"), Ok(Some(Version::Http11)));
        assert_eq!(parse_version(b"HTTP/1.0"), Ok(Some(Version::Http10)));
        assert_eq!(parse_version(b"HTTP/2.0"), Ok(None));
        assert_eq!(parse_version(b"HTTP/1.2"), Ok(None));
        assert_eq!(parse_version(b"http/1.1"), Err(()));
        assert_eq!(parse_version(b"HTTP/1.10"), Err(()));
        assert_eq!(parse_version(b"HTTP/2"), Err(()));
    }
}
