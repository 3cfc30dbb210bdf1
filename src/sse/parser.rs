//! [`SseParser`]: the event-stream format of the WHATWG HTML standard
//! (§9.2.6 "Interpreting an event stream"), fed in arbitrary pieces.

use std::fmt;
use std::mem;
use std::ops::Range;

use crate::json::find_byte2;

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The value of the last `event:` line, if any (OpenAI chat streams have none;
    /// Anthropic and Responses streams name every event).
    pub event: Option<&'a [u8]>,
    /// The `data:` lines' values joined with `\n` (no trailing newline).
    pub data: &'a [u8],
}

/// The stream broke a limit; the parser must not be fed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// An event's data grew past `max_event_bytes`, or a line past that plus
    /// a few bytes for its field name.
    EventTooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => write!(f, "SSE event larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
/// Room for a field name on a line, beyond `max_event_bytes` of value.
const LINE_SLACK: usize = 64;
/// `bom_matched` once the start of the stream has been decided.
const BOM_DECIDED: u8 = u8::MAX;

/// Splits an event stream into events, whatever the size of the pieces fed.
///
/// Lines end in LF, CRLF or CR (a CRLF split between two pieces counts once);
/// `:` lines are comments; `data:` lines append to the event's data (joined
/// with `\n`); `event:` sets its type; `id:`, `retry:` and unknown fields are
/// ignored; one leading BOM is dropped; an empty line dispatches the event if
/// it has data. An event still open when the stream ends is never dispatched
/// (see [`SseParser::in_event`]).
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The unfinished last line of earlier pieces.
    line: Vec<u8>,
    /// The event's data once it cannot be borrowed from the current piece.
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    has_event: bool,
    /// The previous piece ended with CR: a LF starting the next one ends no line.
    after_cr: bool,
    /// How many BOM bytes the stream started with so far, or [`BOM_DECIDED`].
    bom_matched: u8,
}

impl SseParser {
    /// A parser that fails once an event's data or a line exceeds `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: Vec::new(),
            has_event: false,
            after_cr: false,
            bom_matched: 0,
        }
    }

    /// Whether an event or line has begun but not ended: a stream that stops
    /// here was cut mid-event.
    pub fn in_event(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.has_event
    }

    /// Feed the next piece of the stream; `f` is called with each event it completes.
    pub fn feed(&mut self, piece: &[u8], mut f: impl FnMut(SseEvent<'_>)) -> Result<(), SseError> {
        if self.bom_matched == BOM_DECIDED {
            return self.feed_lines(piece, &mut f);
        }
        let mut matched = usize::from(self.bom_matched);
        let mut i = 0;
        while matched < BOM.len() && piece.get(i).is_some_and(|&c| c == BOM[matched]) {
            matched += 1;
            i += 1;
        }
        if matched == BOM.len() {
            self.bom_matched = BOM_DECIDED;
            return self.feed_lines(piece.get(i..).unwrap_or_default(), &mut f);
        }
        if i == piece.len() {
            // Still a BOM prefix (or an empty piece): wait for more bytes.
            self.bom_matched = matched as u8;
            return Ok(());
        }
        // Not a BOM: the prefix held back from earlier pieces is ordinary content.
        self.bom_matched = BOM_DECIDED;
        let held_back = matched - i;
        self.feed_lines(BOM.get(..held_back).unwrap_or_default(), &mut f)?;
        self.feed_lines(piece, &mut f)
    }

    fn feed_lines(
        &mut self,
        piece: &[u8],
        f: &mut impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        let mut pos = 0;
        if self.after_cr && !piece.is_empty() {
            self.after_cr = false;
            if piece[0] == b'\n' {
                pos = 1;
            }
        }
        // The data of the current event while it still lies in `piece`.
        let mut held: Option<Range<usize>> = None;
        while pos < piece.len() {
            let rest = &piece[pos..];
            let Some(off) = find_byte2(rest, b'\n', b'\r') else {
                self.check_line(self.line.len() + rest.len())?;
                // copy: the line continues in the next piece
                self.line.extend_from_slice(rest);
                break;
            };
            let end = pos + off;
            let mut next = end + 1;
            if piece[end] == b'\r' {
                match piece.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.check_line(self.line.len() + off)?;
            if self.line.is_empty() {
                self.on_line(&piece[pos..end], Some(pos), piece, &mut held, f)?;
            } else {
                let mut line = mem::take(&mut self.line);
                line.extend_from_slice(&piece[pos..end]);
                let result = self.on_line(&line, None, piece, &mut held, f);
                line.clear();
                self.line = line;
                result?;
            }
            pos = next;
        }
        if let Some(r) = held {
            // copy: the event continues in the next piece
            self.data
                .extend_from_slice(piece.get(r).unwrap_or_default());
        }
        Ok(())
    }

    /// A line may hold the field name besides the data; lines are checked
    /// whole or not (a buffered partial line only once it is already too
    /// long), so the outcome does not depend on where the pieces were cut.
    fn check_line(&self, len: usize) -> Result<(), SseError> {
        self.check(len.saturating_sub(LINE_SLACK))
    }

    fn check(&self, len: usize) -> Result<(), SseError> {
        if len > self.max_event_bytes {
            Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// One complete line. `at` is its offset in `piece` when it lies there.
    fn on_line(
        &mut self,
        line: &[u8],
        at: Option<usize>,
        piece: &[u8],
        held: &mut Option<Range<usize>>,
        f: &mut impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        let (field, value_at) = match line.iter().position(|&c| c == b':') {
            Some(0) => return Ok(()), // a comment
            Some(colon) if line.get(colon + 1) == Some(&b' ') => (&line[..colon], colon + 2),
            Some(colon) => (&line[..colon], colon + 1),
            None if line.is_empty() => {
                self.dispatch(piece, held, f);
                return Ok(());
            }
            None => (line, line.len()),
        };
        let value = line.get(value_at..).unwrap_or_default();
        match field {
            b"data" => {
                let len = held.as_ref().map_or(self.data.len(), Range::len);
                self.check(len + usize::from(self.has_data) + value.len())?;
                match (at, &held) {
                    (Some(at), None) if !self.has_data => {
                        *held = Some(at + value_at..at + line.len())
                    }
                    _ => {
                        if let Some(r) = held.take() {
                            // copy: a second data line; the lines are joined
                            self.data
                                .extend_from_slice(piece.get(r).unwrap_or_default());
                        }
                        if self.has_data {
                            self.data.push(b'\n');
                        }
                        self.data.extend_from_slice(value);
                    }
                }
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.has_event = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        piece: &[u8],
        held: &mut Option<Range<usize>>,
        f: &mut impl FnMut(SseEvent<'_>),
    ) {
        if self.has_data {
            let data = match held.take() {
                Some(r) => piece.get(r).unwrap_or_default(),
                None => &self.data,
            };
            f(SseEvent {
                event: self.has_event.then_some(&self.event[..]),
                data,
            });
        }
        *held = None;
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.has_event = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (Option<Vec<u8>>, Vec<u8>);

    fn collect(pieces: &[&[u8]]) -> Result<Vec<Owned>, SseError> {
        let mut p = SseParser::new(1 << 20);
        let mut events = Vec::new();
        for piece in pieces {
            p.feed(piece, |e| {
                events.push((e.event.map(<[u8]>::to_vec), e.data.to_vec()))
            })?;
        }
        Ok(events)
    }

    fn ev(event: Option<&str>, data: &str) -> Owned {
        (
            event.map(|e| e.as_bytes().to_vec()),
            data.as_bytes().to_vec(),
        )
    }

    /// Every framing feature at once, in LF, CRLF and CR flavours.
    const STREAM: &[u8] = b"\xEF\xBB\xBF: keep-alive comment\n\
        data: {\"a\":1}\n\n\
        data:no space\r\n\r\n\
        data:  two spaces\r\r\
        event: message_start\n\
        data: line one\n\
        data: line two\r\n\
        id: 7\n\
        retry: 100\n\
        unknown: x\n\
        \n\
        :comment\r\n\
        data\n\
        \n\
        data:\n\
        data:\n\
        \n\
        event: ping\n\
        \n\
        data: after an event without data \xE2\x9C\x93\r\n\
        \r\n\
        data: [DONE]\n\n\
        data: unterminated";

    fn expected() -> Vec<Owned> {
        vec![
            ev(None, "{\"a\":1}"),
            ev(None, "no space"),
            ev(None, " two spaces"),
            ev(Some("message_start"), "line one\nline two"),
            ev(None, ""),
            ev(None, "\n"),
            ev(None, "after an event without data \u{2713}"),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(collect(&[STREAM]).unwrap(), expected());
    }

    #[test]
    fn byte_by_byte() {
        let pieces: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&pieces).unwrap(), expected());
    }

    #[test]
    fn every_split_point_and_pair_of_split_points() {
        let want = expected();
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(collect(&[a, b]).unwrap(), want, "split at {i}");
            for j in i..=STREAM.len() {
                let (b1, b2) = b.split_at(j - i);
                assert_eq!(collect(&[a, b1, b2]).unwrap(), want, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn random_rechunking() {
        let want = expected();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut pieces = Vec::new();
            let mut rest = STREAM;
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 24) as usize;
                let (a, b) = rest.split_at(n.min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            assert_eq!(collect(&pieces).unwrap(), want);
        }
    }

    #[test]
    fn single_line_events_are_borrowed_from_the_piece() {
        let piece = b"data: {\"x\":1}\n\ndata: two\n\n";
        let range = piece.as_ptr_range();
        let mut p = SseParser::new(1024);
        let mut n = 0;
        p.feed(piece, |e| {
            assert!(range.contains(&e.data.as_ptr()));
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 2);
        assert!(!p.in_event());
    }

    #[test]
    fn bom_only_at_the_start() {
        let bom_twice = b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n";
        // The second BOM is part of the first line's field name, which is then unknown.
        assert_eq!(collect(&[bom_twice]).unwrap(), []);
        assert_eq!(
            collect(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]).unwrap(),
            [ev(None, "x")]
        );
        // Not a BOM after all: the held-back bytes come back as content.
        let near = b"\xEF\xBBdata: x\n\ndata: y\n\n";
        assert_eq!(collect(&[near]).unwrap(), [ev(None, "y")]);
        let pieces: Vec<&[u8]> = near.chunks(1).collect();
        assert_eq!(collect(&pieces).unwrap(), [ev(None, "y")]);
        let mid = b"data: \xEF\xBB\xBFx\n\n";
        assert_eq!(
            collect(&[mid]).unwrap(),
            [(None, b"\xEF\xBB\xBFx".to_vec())]
        );
        assert_eq!(
            collect(&[b"", b"\xEF\xBB", b"", b"\xBF", b"data: z\n\n"]).unwrap(),
            [ev(None, "z")]
        );
    }

    #[test]
    fn an_open_event_at_the_end_is_not_dispatched() {
        let mut p = SseParser::new(64);
        let mut n = 0;
        p.feed(b"data: x\n", |_| n += 1).unwrap();
        assert!(p.in_event());
        p.feed(b"\n", |_| n += 1).unwrap();
        assert!(!p.in_event());
        p.feed(b"data", |_| n += 1).unwrap();
        assert!(p.in_event());
        assert_eq!(n, 1);
    }

    #[test]
    fn events_and_lines_are_bounded() {
        let mut p = SseParser::new(16);
        assert_eq!(
            p.feed(b"data: 0123456789abcdefg\n\n", |_| {}),
            Err(SseError::EventTooLarge { limit: 16 })
        );
        let mut p = SseParser::new(16);
        let r = p.feed(b"data: 0123456789\ndata: 0123456789\n\n", |_| {});
        assert_eq!(r, Err(SseError::EventTooLarge { limit: 16 }));
        // A line that never ends is bounded too, across pieces; cut or not,
        // the same line gets the same answer.
        let line = [b'-'; 16 + LINE_SLACK];
        let mut p = SseParser::new(16);
        assert!(p.feed(&line, |_| {}).is_ok());
        assert!(p.feed(b"-", |_| {}).is_err());
        let mut p = SseParser::new(16);
        assert!(p.feed(&line, |_| {}).is_ok());
        assert!(p.feed(b"\n", |_| {}).is_ok());
        let mut p = SseParser::new(16);
        assert!(p.feed(&[b'-'; 17 + LINE_SLACK], |_| {}).is_err());
        let mut long_line = vec![b':'; 17 + LINE_SLACK];
        long_line.extend_from_slice(b"\n\n");
        let mut p = SseParser::new(16);
        assert!(p.feed(&long_line, |_| {}).is_err());
        // At the limit is fine.
        let mut p = SseParser::new(16);
        let mut got = Vec::new();
        p.feed(b"data: 0123456789abcdef\n\n", |e| got.push(e.data.to_vec()))
            .unwrap();
        assert_eq!(got, [b"0123456789abcdef".to_vec()]);
        assert_eq!(
            SseError::EventTooLarge { limit: 16 }.to_string(),
            "SSE event larger than 16 bytes"
        );
    }

    #[test]
    fn a_one_megabyte_event_split_anywhere() {
        let big = "x".repeat(1 << 20);
        let stream = format!("data: {big}\n\n");
        let mut p = SseParser::new(16 << 20);
        let mut got = Vec::new();
        for piece in stream.as_bytes().chunks(4093) {
            p.feed(piece, |e| got.push(e.data.len())).unwrap();
        }
        assert_eq!(got, [1 << 20]);
    }
}
