//! A non-allocating JSON walker over byte spans: visit an object's members or
//! an array's elements, reading the values the caller looks into and skipping
//! the rest (strings eight bytes at a time, nested containers by depth, no
//! recursion).
//!
//! It checks the structure it walks (keys, colons, commas, brackets, literals)
//! but not string contents, UTF-8 or number syntax: it is for finding spans in
//! bodies that are validated elsewhere ([`scan_top_level`](super::scan_top_level))
//! or read best-effort (the stream stats in [`crate::sse`]).

use std::borrow::Cow;
use std::ops::Range;

use super::{JsonError, MAX_DEPTH, find_byte2};

/// An object key, as a span of the walked bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawKey {
    /// Without its quotes, as written.
    pub span: Range<usize>,
    /// Contains a backslash escape.
    pub escaped: bool,
}

/// Walk the object whose `{` is at `at`, calling `f(key, value_start)` for
/// each member; `f` reads or skips the value (see [`skip_value`]) and returns
/// the index just past it, so every byte is walked once. Returns the index
/// just past the `}`. An error from `f` stops the walk and is returned.
pub(crate) fn walk_object(
    body: &[u8],
    at: usize,
    mut f: impl FnMut(RawKey, usize) -> Result<usize, JsonError>,
) -> Result<usize, JsonError> {
    let mut s = Scanner { b: body, i: at };
    if s.peek() != Some(b'{') {
        return Err(s.error("expected an object"));
    }
    s.i += 1;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        return Ok(s.i + 1);
    }
    loop {
        s.skip_ws();
        let key_start = s.i;
        if s.peek() != Some(b'"') {
            return Err(s.error("expected an object key"));
        }
        let (key_end, escaped) = s.string()?;
        s.skip_ws();
        if s.peek() != Some(b':') {
            return Err(s.error("expected ':' after an object key"));
        }
        s.i += 1;
        s.skip_ws();
        let key = RawKey {
            span: key_start + 1..key_end,
            escaped,
        };
        s.i = s.advance_to(f(key, s.i)?)?;
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.i += 1,
            Some(b'}') => return Ok(s.i + 1),
            _ => return Err(s.error("expected ',' or '}' after an object member")),
        }
    }
}

/// Walk the array whose `[` is at `at`, calling `f(value_start)` for each
/// element, which returns the index just past the element (as in
/// [`walk_object`]). Returns the index just past the `]`.
pub(crate) fn walk_array(
    body: &[u8],
    at: usize,
    mut f: impl FnMut(usize) -> Result<usize, JsonError>,
) -> Result<usize, JsonError> {
    let mut s = Scanner { b: body, i: at };
    if s.peek() != Some(b'[') {
        return Err(s.error("expected an array"));
    }
    s.i += 1;
    s.skip_ws();
    if s.peek() == Some(b']') {
        return Ok(s.i + 1);
    }
    loop {
        s.skip_ws();
        s.i = s.advance_to(f(s.i)?)?;
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.i += 1,
            Some(b']') => return Ok(s.i + 1),
            _ => return Err(s.error("expected ',' or ']' after an array element")),
        }
    }
}

/// Skip the value starting at `at`; returns the index just past it.
pub(crate) fn skip_value(body: &[u8], at: usize) -> Result<usize, JsonError> {
    let mut s = Scanner { b: body, i: at };
    s.value()?;
    Ok(s.i)
}

/// The member's key with escapes resolved; `None` if an escape is invalid.
pub(crate) fn key_text<'b>(body: &'b [u8], key: &RawKey) -> Option<Cow<'b, str>> {
    if key.escaped {
        let quoted = body.get(key.span.start.checked_sub(1)?..key.span.end + 1)?;
        serde_json::from_slice::<String>(quoted)
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(body.get(key.span.clone())?)
            .ok()
            .map(Cow::Borrowed)
    }
}

/// Whether the member's key is `name` (escapes resolved).
#[inline]
pub(crate) fn key_is(body: &[u8], key: &RawKey, name: &str) -> bool {
    if key.escaped {
        return key_text(body, key).is_some_and(|k| k == name);
    }
    // Keys are short: a byte loop beats a `memcmp` call.
    let raw = body.get(key.span.clone()).unwrap_or_default();
    raw.len() == name.len() && raw.iter().zip(name.as_bytes()).all(|(x, y)| x == y)
}

/// A string value (`raw` with its quotes) as text: borrowed when it has no
/// escapes. `None` if `raw` is not a valid JSON string.
pub(crate) fn string_value(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

/// A non-negative integer value (`12`, not `12.0`).
pub(crate) fn u64_value(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// Move to `end`, the end of a value a callback read; it must lie ahead.
    fn advance_to(&self, end: usize) -> Result<usize, JsonError> {
        if end > self.i && end <= self.b.len() {
            Ok(end)
        } else {
            Err(self.error("value reader went astray"))
        }
    }

    fn error(&self, what: &str) -> JsonError {
        if self.i >= self.b.len() {
            JsonError::invalid(format_args!("{what}, found the end of the body"))
        } else {
            JsonError::invalid(format_args!("{what} at byte {}", self.i))
        }
    }

    /// `self.i` is at an opening quote. Returns the index of the closing quote
    /// (and whether the string holds escapes); `self.i` moves past it.
    #[inline]
    fn string(&mut self) -> Result<(usize, bool), JsonError> {
        let start = self.i;
        let mut j = self.i + 1;
        let mut escaped = false;
        loop {
            let rest = self.b.get(j..).unwrap_or_default();
            match find_byte2(rest, b'"', b'\\') {
                Some(off) if rest[off] == b'"' => {
                    self.i = j + off + 1;
                    return Ok((j + off, escaped));
                }
                // A backslash: whatever follows it cannot end the string.
                Some(off) => {
                    escaped = true;
                    j += off + 2;
                }
                None => {
                    self.i = start;
                    return Err(JsonError::invalid(format_args!(
                        "unterminated string starting at byte {start}"
                    )));
                }
            }
        }
    }

    /// Skip one value (`self.i` at its first byte).
    #[inline]
    fn value(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => self.nested(),
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => self.scalar(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// A number or `true`/`false`/`null`: its bytes up to the next delimiter.
    fn scalar(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')) {
                break;
            }
            self.i += 1;
        }
        let token = self.b.get(start..self.i).unwrap_or_default();
        let ok = match token.first() {
            // Shape only (a digit first, after an optional sign); the exact
            // number grammar is the validating parser's job.
            Some(b'-' | b'0'..=b'9') => {
                token
                    .strip_prefix(b"-")
                    .unwrap_or(token)
                    .first()
                    .is_some_and(u8::is_ascii_digit)
                    && token
                        .iter()
                        .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            }
            _ => matches!(token, b"true" | b"false" | b"null"),
        };
        if ok {
            Ok(())
        } else {
            self.i = start;
            Err(self.error("invalid literal"))
        }
    }

    /// Skip a nested object or array without recursion: a depth counter and a
    /// bit per level (set = array) to check that closers match openers.
    ///
    /// Levels count from the object or array holding the value (level 1), so a
    /// member of the root object gets exactly `simd-json`'s bound; a walk that
    /// starts deeper gets the same bound relative to where it is.
    fn nested(&mut self) -> Result<(), JsonError> {
        // `kinds` bit k describes level k + 2.
        let mut depth = 1usize;
        let mut kinds: u128 = 0;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unclosed object or array"));
            };
            match c {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => {
                    if depth >= MAX_DEPTH {
                        return Err(JsonError::invalid(format_args!(
                            "nesting deeper than {MAX_DEPTH} levels at byte {}",
                            self.i
                        )));
                    }
                    let bit = 1u128 << (depth - 1);
                    if c == b'[' {
                        kinds |= bit;
                    } else {
                        kinds &= !bit;
                    }
                    depth += 1;
                }
                b'}' | b']' => {
                    depth -= 1;
                    let is_array = kinds & (1u128 << (depth - 1)) != 0;
                    if is_array != (c == b']') {
                        return Err(self.error("mismatched closing bracket"));
                    }
                    if depth == 1 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collect `(key, value)` of an object, descending into nothing.
    fn members(body: &str) -> Result<Vec<(String, String)>, JsonError> {
        let b = body.as_bytes();
        let mut out = Vec::new();
        let start = body.find('{').unwrap_or(0);
        walk_object(b, start, |key, at| {
            let end = skip_value(b, at)?;
            out.push((
                key_text(b, &key).unwrap().into_owned(),
                body[at..end].to_string(),
            ));
            Ok(end)
        })?;
        Ok(out)
    }

    #[test]
    fn walks_members_and_elements() {
        let got = members(r#" { "a" : 1 , "b\"":[{"x":"]"}, "}"], "c":{} ,"d":null}"#).unwrap();
        let want = [
            ("a", "1"),
            ("b\"", r#"[{"x":"]"}, "}"]"#),
            ("c", "{}"),
            ("d", "null"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(members("{}").unwrap(), []);

        let b = br#"[1, "two" ,[3],{"four":4}]"#;
        let mut elements = Vec::new();
        let end = walk_array(b, 0, |at| {
            let end = skip_value(b, at)?;
            elements.push(String::from_utf8(b[at..end].to_vec()).unwrap());
            Ok(end)
        })
        .unwrap();
        assert_eq!(end, b.len());
        assert_eq!(elements, ["1", "\"two\"", "[3]", r#"{"four":4}"#]);
        assert_eq!(walk_array(b"[ ]", 0, |_| unreachable!()).unwrap(), 3);
    }

    #[test]
    fn descending_reads_each_byte_once() {
        // A callback that reads the value itself returns where it ended.
        let b = br#"{"outer":{"inner":[1,2]},"after":true}"#;
        let mut seen = Vec::new();
        walk_object(b, 0, |key, at| {
            if key_is(b, &key, "outer") {
                walk_object(b, at, |inner, at| {
                    seen.push(key_text(b, &inner).unwrap().into_owned());
                    skip_value(b, at)
                })
            } else {
                seen.push(key_text(b, &key).unwrap().into_owned());
                skip_value(b, at)
            }
        })
        .unwrap();
        assert_eq!(seen, ["inner", "after"]);
        // A callback that claims to end before it started is an error, not a loop.
        assert!(walk_object(b, 0, |_, at| Ok(at)).is_err());
        assert!(walk_object(b, 0, |_, _| Ok(usize::MAX)).is_err());
    }

    #[test]
    fn walk_errors() {
        for body in [
            r#"{"a" 1}"#,
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a":[1}"#,
            r#"{1:2}"#,
            "[1,2",
            "",
            r#"{"a":-}"#,
            r#"{"a":-x}"#,
        ] {
            let b = body.as_bytes();
            let result = match b.first() {
                Some(b'[') => walk_array(b, 0, |at| skip_value(b, at)),
                _ => walk_object(b, 0, |_, at| skip_value(b, at)),
            };
            assert!(result.is_err(), "{body}");
        }
    }

    #[test]
    fn keys_and_scalars() {
        let b = br#"{"mod\u0065l":1,"plain":2}"#;
        let mut keys = Vec::new();
        walk_object(b, 0, |key, at| {
            keys.push((
                key_is(b, &key, "model"),
                key_is(b, &key, "plain"),
                key.escaped,
            ));
            skip_value(b, at)
        })
        .unwrap();
        assert_eq!(keys, [(true, false, true), (false, true, false)]);

        assert_eq!(string_value(br#""abc""#), Some(Cow::Borrowed("abc")));
        assert_eq!(string_value(br#""a\nb\u00e9""#).as_deref(), Some("a\nbé"));
        assert!(matches!(string_value(br#""a\nb""#), Some(Cow::Owned(_))));
        assert_eq!(string_value(br#""\ud800""#), None);
        assert_eq!(string_value(b"\"\xff\""), None);
        assert_eq!(string_value(b"12"), None);
        assert_eq!(string_value(b"\""), None);
        assert_eq!(u64_value(b"12"), Some(12));
        assert_eq!(u64_value(b"12.0"), None);
        assert_eq!(u64_value(b"-1"), None);
        assert_eq!(u64_value(b"18446744073709551616"), None);
    }
}
