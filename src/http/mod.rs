//! HTTP/1.1 wire handling: request and response heads, chunked bodies, response writing.
//!
//! Everything here is synchronous and pure: functions over byte slices, no IO, no
//! allocation beyond the headers `Vec` of a parsed head (which callers can reuse). The
//! connection loop in [`crate::runtime`] reads bytes into a buffer and hands them to these
//! functions; because nothing here awaits, every parser is tested by feeding its input split
//! at every byte offset.
//!
//! # Why a strict parser
//!
//! The router is an edge proxy. Request smuggling happens when two hops read the same bytes
//! differently, so this module accepts a deliberately narrow subset of RFC 9112 and rejects
//! everything else with a status and a closed connection (see
//! `docs/reliability.md`, cases A and B):
//!
//! - lines end in CRLF only: a bare LF or a bare CR anywhere in a head or in chunk framing is
//!   an error (the same rule in heads and in chunked bodies, never one lenient and one strict);
//! - the request line is `method SP origin-form SP HTTP/1.x`, exactly one SP between parts;
//! - field names are tokens immediately followed by `:`; obs-fold, control bytes and NUL are
//!   rejected;
//! - body framing is unambiguous: `Content-Length` and `Transfer-Encoding` never together,
//!   at most one of each, `Transfer-Encoding` is exactly `chunked`, `Content-Length` is 1–15
//!   digits.
//!
//! The tokenizer is hand-written rather than `httparse`: one pass that validates while it
//! splits is both faster and the only way to hold every rule above (`httparse` accepts bare
//! LF, spaces before the colon and repeated spaces in the request line).
//!
//! Heads are never copied: [`RequestHead`] and [`ResponseHead`] store `Range<usize>` offsets
//! into the buffer they were parsed from.
//!
//! # Files
//!
//! - `fields.rs`: byte classes and the shared field-line tokenizer.
//! - `request.rs`: [`parse_request_head`] and the request framing rules.
//! - `response.rs`: [`parse_response_head`] for upstream responses, hop-by-hop headers.
//! - `chunked.rs`: [`ChunkedDecoder`], the incremental, bounded chunked-body decoder.
//! - `write.rs`: status lines, headers and chunks on the way out.

mod chunked;
mod fields;
mod request;
mod response;
mod write;

pub use chunked::{ChunkError, ChunkEvent, ChunkedDecoder, InPlace, MAX_CHUNK_EXT_BYTES};
pub use request::{ParseStatus, RequestHead, parse_request_head, parse_request_head_into};
pub use response::{
    MAX_RESPONSE_HEADERS, ResponseFraming, ResponseHead, connection_listed,
    is_carried_across_formats, is_hop_by_hop, parse_response_head, parse_response_head_into,
};
pub use write::{
    LAST_CHUNK, reason_phrase, write_chunk, write_chunk_header, write_content_length, write_header,
    write_header_u64, write_status_line,
};

/// Limits for head parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (request line, fields and the final CRLFCRLF) accepted; beyond it the
    /// request is answered 431 (or 414 when the request line alone does not fit).
    pub max_head_bytes: usize,
    /// Largest number of header fields; one more is answered 431.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    /// 64 KiB and 100 fields: the config defaults (`max_head_bytes`) and what nginx/Envoy
    /// accept, comfortably above what agent clients send.
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// The HTTP version of a message; only these two are spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// `HTTP/1.0`: no keep-alive unless asked for, no `Transfer-Encoding`.
    Http10,
    /// `HTTP/1.1`.
    #[default]
    Http11,
}

impl Version {
    /// The version as written on the wire.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No `Content-Length` and no `Transfer-Encoding`: the request has no body.
    #[default]
    None,
    /// Exactly this many body bytes follow the head.
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`; decode with [`ChunkedDecoder`].
    Chunked,
}

/// Errors that must be answered with a status and then the connection closed.
///
/// `message` is a short, fixed explanation fit for a log line or an error body; it never
/// contains client bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    /// The status to answer with (400, 405, 414, 417, 431, 501, 505; 502 for upstream heads).
    pub status: u16,
    /// What was wrong.
    pub message: &'static str,
}

impl HeadError {
    pub(crate) const fn new(status: u16, message: &'static str) -> Self {
        HeadError { status, message }
    }

    pub(crate) const fn bad(message: &'static str) -> Self {
        HeadError::new(400, message)
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HeadError {}

#[cfg(test)]
mod fuzz_tests {
    //! Deterministic random inputs through every parser: no panics, and answers that do
    //! not depend on how the input was split.

    use super::*;

    use crate::route::Rng;

    /// Mutates a valid message: flip, insert or delete a few bytes drawn mostly from the
    /// bytes that matter to HTTP framing.
    fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\r\n :;,\t\x00\x0b0123456789abcdefxX-/?*";
        let mut v = base.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(v.len() + 1);
            let byte = if rng.below(4) == 0 {
                rng.next_u64() as u8
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
            match rng.below(3) {
                0 if at < v.len() => v[at] = byte,
                1 if at < v.len() => {
                    v.remove(at);
                }
                _ => v.insert(at, byte),
            }
        }
        v
    }

    #[test]
    fn request_heads_survive_mutation() {
        let base = b"POST /v1/x?y=1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 5\r\nConnection: close\r\nExpect: 100-continue\r\n\r\nhello";
        let lim = HeadLimits {
            max_head_bytes: 120,
            max_headers: 5,
        };
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let input = mutate(&mut rng, base);
            let full = parse_request_head(&input, &lim);
            if let Ok(ParseStatus::Complete(h)) = &full {
                assert!(h.head_len <= input.len() && h.head_len <= lim.max_head_bytes);
                // Ranges are inside the head.
                for (n, v) in &h.headers {
                    assert!(n.end <= h.head_len && v.end <= h.head_len);
                }
            }
            for cut in 0..input.len() {
                match (parse_request_head(&input[..cut], &lim), &full) {
                    (Ok(ParseStatus::Partial), _) => {}
                    (p, f) => assert_eq!(&p, f, "{:?} cut {cut}", String::from_utf8_lossy(&input)),
                }
            }
        }
    }

    #[test]
    fn response_heads_survive_mutation() {
        let base =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX: y\r\n\r\nhello";
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        for _ in 0..3000 {
            let input = mutate(&mut rng, base);
            let full = parse_response_head(&input, 100);
            for cut in 0..input.len() {
                match (parse_response_head(&input[..cut], 100), &full) {
                    (Ok(None), _) => {}
                    (p, f) => assert_eq!(&p, f, "{:?} cut {cut}", String::from_utf8_lossy(&input)),
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_survive_mutation_and_random_splits() {
        let base = b"5\r\nhello\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut rng = Rng::new(0x0fed_cba9_8765_4321);
        for _ in 0..3000 {
            let input = mutate(&mut rng, base);
            let whole = run_chunked(&input, &[input.len()]);
            let pieces: Vec<usize> = (0..6).map(|_| rng.below(8)).collect();
            assert_eq!(
                run_chunked(&input, &pieces),
                whole,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(run_chunked(&input, &[1]), whole);
        }
    }

    /// Decodes `input` fed in pieces of the given sizes (cycled; 0 means an empty feed).
    fn run_chunked(input: &[u8], sizes: &[usize]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(64);
        let (mut pos, mut payload, mut ranges) = (0, Vec::new(), Vec::new());
        for &size in sizes.iter().cycle().take(input.len() * 8 + 8) {
            let piece = &input[pos..(pos + size).min(input.len())];
            ranges.clear();
            let (consumed, done) = d.feed(piece, &mut ranges)?;
            for r in &ranges {
                payload.extend_from_slice(&piece[r.clone()]);
            }
            pos += consumed;
            if done || pos == input.len() {
                return Ok((payload, pos, done));
            }
        }
        Ok((payload, pos, false))
    }
}
