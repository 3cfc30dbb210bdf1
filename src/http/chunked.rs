//! Incremental, bounded decoding of `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! One decoder serves both directions (client request bodies and upstream response
//! bodies), so it is exact: a chunk size is 1–16 hex digits, every line ends in CRLF (a
//! bare LF or bare CR is an error, as in heads), extensions are bounded and discarded,
//! trailers are bounded, checked and discarded. The decoder never looks past the final
//! CRLF, so a pipelined request that follows stays in the caller's buffer.
//!
//! It keeps no buffer of its own: payload is reported as ranges of the input, which the
//! caller forwards as-is or compacts in place ([`ChunkedDecoder::decode_in_place`]).

use std::ops::Range;

use super::fields::{is_tchar, is_value_byte};

/// Longest chunk extension (everything from `;` to the CRLF) accepted.
pub const MAX_CHUNK_EXT_BYTES: usize = 1024;

/// Longest chunk-size field: 16 hex digits is every `u64`.
const MAX_SIZE_DIGITS: u8 = 16;

/// A malformed or oversized chunked body. The connection cannot be resynchronised: answer
/// 400 (client) or 502 (upstream) and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

/// One step of decoding, see [`ChunkedDecoder::next_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEvent {
    /// Payload bytes at this range of the input; everything before `range.end` is consumed.
    Data(Range<usize>),
    /// The body ended: `consumed` bytes of the input (up to and including the final CRLF,
    /// after last-chunk and trailers) belonged to it.
    Done { consumed: usize },
}

/// Where [`ChunkedDecoder::decode_in_place`] left the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlace {
    /// Input bytes consumed; `buf[consumed..]` is untouched.
    pub consumed: usize,
    /// Payload bytes now at `buf[..produced]`.
    pub produced: usize,
    /// The body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex chunk-size; `digits` read so far.
    Size { digits: u8, size: u64 },
    /// In a chunk extension (after `;`), `len` bytes so far.
    Ext { len: usize, size: u64 },
    /// After the CR ending the size line.
    SizeLf { size: u64 },
    /// In chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// After the CR ending a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
    /// An error was returned; every later call returns it again.
    Failed(&'static str),
}

/// The chunked-body state machine. Feed it bytes in any split; it reports payload ranges.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_trailer_bytes: usize,
    trailer_bytes: usize,
    payload_bytes: u64,
}

impl ChunkedDecoder {
    /// A decoder for one body; the trailer section (all trailer lines, excluding the
    /// final CRLF) may be at most `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0, size: 0 },
            max_trailer_bytes,
            trailer_bytes: 0,
            payload_bytes: 0,
        }
    }

    /// Whether the final CRLF has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Total payload bytes reported so far (for body-size limits: 413 when it grows past
    /// the configured maximum).
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Payload bytes still announced by the current chunk header (0 outside chunk data):
    /// lets a caller reject an oversized body as soon as the size line arrives.
    pub fn pending_chunk_bytes(&self) -> u64 {
        match self.state {
            State::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// Feed bytes `input`; returns how many bytes were consumed and pushes the payload
    /// ranges (relative to `input`) found in them into `out`.
    ///
    /// All of `input` is consumed unless the body ends inside it; then `consumed` stops
    /// right after the final CRLF and `done` is true. Works for any split of the body,
    /// down to one byte at a time.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<Range<usize>>,
    ) -> Result<(usize, bool), ChunkError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.next_event(rest)? {
                None => return Ok((input.len(), false)),
                Some(ChunkEvent::Data(r)) => {
                    out.push(pos + r.start..pos + r.end);
                    pos += r.end;
                }
                Some(ChunkEvent::Done { consumed }) => return Ok((pos + consumed, true)),
            }
        }
    }

    /// Decodes up to the next payload range or the end of the body, without a `Vec`.
    ///
    /// - `Ok(Some(Data(r)))`: `input[r]` is payload; continue at `input[r.end..]`.
    /// - `Ok(Some(Done { consumed }))`: the body ended after `consumed` bytes.
    /// - `Ok(None)`: all of `input` was framing and is consumed; read more.
    pub fn next_event(&mut self, input: &[u8]) -> Result<Option<ChunkEvent>, ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok(Some(ChunkEvent::Done { consumed: pos })),
                State::Failed(m) => return Err(ChunkError(m)),
                State::Data { remaining } => {
                    let avail = input.len() - pos;
                    if avail == 0 {
                        return Ok(None);
                    }
                    // min() with a usize bounds the value, so the cast cannot truncate.
                    let n = remaining.min(avail as u64) as usize;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    self.payload_bytes = self.payload_bytes.saturating_add(n as u64);
                    return Ok(Some(ChunkEvent::Data(pos..pos + n)));
                }
                _ => {
                    let Some(&b) = input.get(pos) else {
                        return Ok(None);
                    };
                    pos += 1;
                    if let Err(m) = self.step(b) {
                        self.state = State::Failed(m);
                        return Err(ChunkError(m));
                    }
                }
            }
        }
    }

    /// Decodes `buf` in place: payload is moved to the front. On return `buf[..produced]`
    /// is payload, `buf[consumed..]` is untouched input (the next request when `done`),
    /// and `buf[produced..consumed]` is garbage.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<InPlace, ChunkError> {
        let (mut pos, mut write) = (0, 0);
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match self.next_event(rest)? {
                None => {
                    return Ok(InPlace {
                        consumed: buf.len(),
                        produced: write,
                        done: false,
                    });
                }
                Some(ChunkEvent::Data(r)) => {
                    let (start, end) = (pos + r.start, pos + r.end);
                    // copy: de-chunking in place; `write <= start` always, since only
                    // payload bytes (a subset of the consumed bytes) are written.
                    buf.copy_within(start..end, write);
                    write += end - start;
                    pos = end;
                }
                Some(ChunkEvent::Done { consumed }) => {
                    return Ok(InPlace {
                        consumed: pos + consumed,
                        produced: write,
                        done: true,
                    });
                }
            }
        }
    }

    /// Advances over one framing byte (never called in `Data`, `Done` or `Failed`).
    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        self.state = match self.state {
            State::Size { digits, size } => match hex_value(b) {
                Some(_) if digits >= MAX_SIZE_DIGITS => {
                    return Err("chunk size longer than 16 hex digits");
                }
                Some(d) => State::Size {
                    digits: digits + 1,
                    size: (size << 4) | u64::from(d),
                },
                None if digits == 0 => return Err("chunk size is not a hex number"),
                None => match b {
                    b'\r' => State::SizeLf { size },
                    b';' => State::Ext { len: 1, size },
                    b'\n' => return Err("bare LF after chunk size"),
                    _ => return Err("invalid byte after chunk size"),
                },
            },
            State::Ext { len, size } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err("bare LF in chunk extension"),
                _ if !is_value_byte(b) => return Err("control byte in chunk extension"),
                _ if len >= MAX_CHUNK_EXT_BYTES => return Err("chunk extension too long"),
                _ => State::Ext { len: len + 1, size },
            },
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => State::TrailerStart,
                (b'\n', remaining) => State::Data { remaining },
                _ => return Err("bare CR after chunk size"),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err("missing CRLF after chunk data"),
            },
            State::DataLf => match b {
                b'\n' => State::Size { digits: 0, size: 0 },
                _ => return Err("missing CRLF after chunk data"),
            },
            State::TrailerStart => match b {
                b'\r' => State::FinalLf,
                b'\n' => return Err("bare LF after last chunk"),
                b' ' | b'\t' => return Err("obs-fold in trailers"),
                _ if is_tchar(b) => {
                    self.count_trailer()?;
                    State::TrailerName
                }
                _ => return Err("invalid trailer field name"),
            },
            State::TrailerName => {
                self.count_trailer()?;
                match b {
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err("invalid trailer field name"),
                }
            }
            State::TrailerValue => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err("bare LF in trailers"),
                    _ if is_value_byte(b) => State::TrailerValue,
                    _ => return Err("control byte in trailer value"),
                }
            }
            State::TrailerLf => {
                self.count_trailer()?;
                match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err("bare CR in trailers"),
                }
            }
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err("bare CR at end of chunked body"),
            },
            State::Data { .. } | State::Done | State::Failed(_) => self.state,
        };
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), &'static str> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err("trailers too long");
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes (the last piece may be shorter).
    /// Returns the payload, the bytes consumed, and whether the body was complete.
    fn decode_stepped(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(256);
        let mut payload = Vec::new();
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let piece = &input[pos..(pos + step).min(input.len())];
            ranges.clear();
            let (consumed, done) = d.feed(piece, &mut ranges)?;
            for r in &ranges {
                assert!(r.end <= consumed);
                payload.extend_from_slice(&piece[r.clone()]);
            }
            pos += consumed;
            if done {
                assert!(d.is_done());
                assert_eq!(d.payload_bytes(), payload.len() as u64);
                return Ok((payload, pos, true));
            }
            assert_eq!(consumed, piece.len());
        }
        Ok((payload, pos, false))
    }

    /// Decodes `input` split in two at every offset, plus one byte at a time, and checks
    /// every way gives the same answer; returns it.
    fn every_split(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let whole = decode_stepped(input, input.len().max(1));
        assert_eq!(decode_stepped(input, 1), whole, "one byte at a time");
        for cut in 0..=input.len() {
            let mut d = ChunkedDecoder::new(256);
            let mut ranges = Vec::new();
            let mut payload = Vec::new();
            let got = (|| {
                let (a, b) = input.split_at(cut);
                let (c1, done) = d.feed(a, &mut ranges)?;
                for r in &ranges {
                    payload.extend_from_slice(&a[r.clone()]);
                }
                if done {
                    return Ok((payload.clone(), c1, true));
                }
                ranges.clear();
                let (c2, done) = d.feed(b, &mut ranges)?;
                for r in &ranges {
                    payload.extend_from_slice(&b[r.clone()]);
                }
                Ok((payload.clone(), c1 + c2, done))
            })();
            assert_eq!(got, whole, "cut at {cut}");
            // In-place decoding agrees.
            let mut d = ChunkedDecoder::new(256);
            let mut buf = input.to_vec();
            let (a, _) = buf.split_at_mut(cut);
            let first = d.decode_in_place(a);
            let got = first.and_then(|p1| {
                let mut out = buf[..p1.produced].to_vec();
                if p1.done {
                    return Ok((out, p1.consumed, true));
                }
                let p2 = d.decode_in_place(&mut buf[cut..])?;
                out.extend_from_slice(&buf[cut..cut + p2.produced]);
                Ok((out, cut + p2.consumed, p2.done))
            });
            assert_eq!(got, whole, "in place, cut at {cut}");
        }
        whole
    }

    #[test]
    fn decodes_chunks_at_every_split() {
        let body = b"5\r\nhello\r\n1;name=\"v\"\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
        let (payload, consumed, done) = every_split(body).expect("valid");
        assert_eq!(payload, b"hello 0123456789");
        assert_eq!(consumed, body.len());
        assert!(done);
    }

    #[test]
    fn stops_at_the_end_and_leaves_the_next_request() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (payload, consumed, done) = every_split(input).expect("valid");
        assert_eq!(payload, b"abc");
        assert!(done);
        assert_eq!(&input[consumed..], b"GET / HTTP/1.1\r\n");

        // Feeding a finished decoder consumes nothing.
        let mut d = ChunkedDecoder::new(0);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"0\r\n\r\nX", &mut out), Ok((5, true)));
        assert_eq!(d.feed(b"X", &mut out), Ok((0, true)));
        assert!(out.is_empty());
    }

    #[test]
    fn trailers_are_checked_and_dropped() {
        let input = b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\nX-B:\r\n\r\nNEXT";
        let (payload, consumed, done) = every_split(input).expect("valid");
        assert_eq!((payload.as_slice(), done), (&b"hi"[..], true));
        assert_eq!(&input[consumed..], b"NEXT");
    }

    #[test]
    fn empty_body_and_large_sizes() {
        assert_eq!(every_split(b"0\r\n\r\n"), Ok((vec![], 5, true)));
        assert_eq!(every_split(b"000\r\n\r\n"), Ok((vec![], 7, true)));
        // Upper and lower case hex, leading zeros up to 16 digits.
        let mut body = b"000000000000001a\r\n".to_vec();
        body.extend_from_slice(&[b'x'; 26]);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(every_split(&body).map(|r| r.0.len()), Ok(26));
        // The largest size is accepted as a header; data then just keeps flowing.
        let mut d = ChunkedDecoder::new(0);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"ffffffffffffffff\r\nabc", &mut out),
            Ok((21, false))
        );
        assert_eq!(out, vec![18..21]);
        assert_eq!(d.pending_chunk_bytes(), u64::MAX - 3);
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        let cases: &[&[u8]] = &[
            // Size line.
            b"\r\n",
            b"g\r\n",
            b"-1\r\nx\r\n0\r\n\r\n",
            b"+1\r\nx\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            // Extensions.
            b"5;ext\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\0\r\nhello\r\n0\r\n\r\n",
            // Data framing.
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            // Last chunk and trailers.
            b"0\r\n\n",
            b"0\r\n\rX",
            b"0\n\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\nX: y\rz\r\n\r\n",
            b"0\r\nX : y\r\n\r\n",
            b"0\r\n y\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nX: \x01\r\n\r\n",
            b"0\r\n:y\r\n\r\n",
        ];
        for input in cases {
            assert!(
                every_split(input).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn extension_length_is_bounded() {
        let ok = format!(
            "1;{}\r\nx\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_EXT_BYTES - 1)
        );
        assert_eq!(
            decode_stepped(ok.as_bytes(), 7).map(|r| r.0),
            Ok(b"x".to_vec())
        );
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_EXT_BYTES));
        assert!(decode_stepped(long.as_bytes(), 7).is_err());
    }

    #[test]
    fn trailer_length_is_bounded() {
        // 256 trailer bytes ("X: " + 251 + CRLF) are fine, 257 are not.
        let ok = format!("0\r\nX: {}\r\n\r\n", "v".repeat(251));
        assert!(decode_stepped(ok.as_bytes(), 3).is_ok_and(|r| r.2));
        let long = format!("0\r\nX: {}\r\n\r\n", "v".repeat(252));
        assert!(decode_stepped(long.as_bytes(), 3).is_err());
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new(0);
        let mut out = Vec::new();
        let e = d.feed(b"z", &mut out);
        assert!(e.is_err());
        assert_eq!(d.feed(b"0\r\n\r\n", &mut out), e.map(|_| (0, false)));
        assert!(!d.is_done());
    }

    #[test]
    fn next_event_reports_data_without_a_vec() {
        let input = b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\nrest";
        let mut d = ChunkedDecoder::new(0);
        let mut pos = 0;
        let mut payload = Vec::new();
        loop {
            match d.next_event(&input[pos..]) {
                Ok(Some(ChunkEvent::Data(r))) => {
                    payload.extend_from_slice(&input[pos + r.start..pos + r.end]);
                    pos += r.end;
                }
                Ok(Some(ChunkEvent::Done { consumed })) => {
                    pos += consumed;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(payload, b"abc");
        assert_eq!(&input[pos..], b"rest");
    }
}
