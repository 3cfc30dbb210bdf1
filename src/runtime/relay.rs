//! Relaying a streamed reply to the client as it arrives (part of the
//! lifecycle's respond phase): SSE passthrough with incremental scanning, or
//! translation into the client's format; keep-alive comments during
//! silences, the stream-idle timeout, the refusal classifier carried from
//! event to event, and an error event (never a fake end) when the provider
//! fails mid-stream.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::Core;
use super::ctx::Ctx;
use super::request::{ClientConn, Request};
use super::respond;
use super::translate::{self, StreamTranslator};
use super::watch::{self, Wait};
use crate::classify::RefusalScan;
use crate::formats::Format;
use crate::http::{self, ChunkedDecoder, ResponseFraming, ResponseHead};
use crate::sse::{ChatStreamStats, SseParser};
use crate::upstream::Conn;

/// What relaying ended with.
pub enum Relay {
    Complete,
    ClientGone,
    UpstreamFailed(String),
}

/// The SSE comment sent to a streaming client during long silences; ignored
/// by every WHATWG-conformant SSE parser (the OpenAI and Anthropic SDKs).
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";
/// [`KEEPALIVE_COMMENT`] as one chunk of a chunked body.
const KEEPALIVE_CHUNK: &[u8] = b"e\r\n: keep-alive\n\n\r\n";

/// The last four bytes sent to a streaming client, to tell whether the
/// stream stands between two SSE events (after a blank line).
#[derive(Clone, Copy)]
struct EventTail(u32);

impl Default for EventTail {
    /// Nothing sent yet: a boundary.
    fn default() -> Self {
        EventTail(u32::from_be_bytes(*b"\r\n\r\n"))
    }
}

impl EventTail {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().rev().take(4).rev() {
            self.0 = (self.0 << 8) | u32::from(b);
        }
    }

    fn at_event_boundary(self) -> bool {
        let last2 = (self.0 & 0xffff) as u16;
        self.0 == u32::from_be_bytes(*b"\r\n\r\n")
            || last2 == u16::from_be_bytes(*b"\n\n")
            || last2 == u16::from_be_bytes(*b"\r\r")
    }
}

/// How a streamed reply is relayed.
pub enum StreamMode {
    /// OpenAI chat passthrough: bytes unchanged, scanned for usage and text.
    Chat {
        parser: SseParser,
        stats: ChatStreamStats,
    },
    /// Other same-format passthrough: bytes unchanged, decoded for the log.
    Tap(StreamTranslator),
    /// Cross-format: the provider's events re-encoded in the client's format.
    Translate(StreamTranslator),
}

/// A streamed reply whose head has arrived: what relaying it needs. The
/// attempt that got it hands it up to the lifecycle, so the request's parse
/// and routing state — and their task frames — are gone while the stream is
/// held (`lifecycle::serve`).
pub struct Stream {
    /// The provider connection, pooled again when the stream ends cleanly.
    pub up: Conn,
    pub head: ResponseHead,
    /// The client watch, armed for the exchange (see `watch::arm`).
    pub armed: watch::Armed,
    /// The first-byte timeout, until the first content byte.
    pub timeout: Duration,
    pub t_head: Instant,
    pub mode: StreamMode,
    /// The client's API format (for the error event of a failed stream).
    pub client: Format,
}

/// Relay a streamed reply as it arrives (SSE, or Ollama's NDJSON when
/// translating), scanning or translating the same bytes. `resp` holds the
/// provider's head and what came with it. Returns how it ended and whether
/// the upstream connection may be pooled.
pub async fn relay_stream(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    s: &mut Stream,
    resp: &mut Vec<u8>,
) -> (Relay, bool) {
    let Stream {
        up,
        head,
        armed,
        timeout,
        t_head,
        mode,
        client,
    } = s;
    let (head, timeout, t_head, client) = (&*head, *timeout, *t_head, *client);
    let chunked_out = !conn.http10;
    let server = &core.snap.config.server;
    let idle = Duration::from_millis(server.stream_idle_timeout_ms);
    let write_timeout = Duration::from_millis(server.write_timeout_ms);
    // Keep-alive comments only where the client reads SSE: translated
    // streams always, passthrough when the provider streams SSE.
    let sse_out = matches!(mode, StreamMode::Translate(_))
        || header_value(resp, head, "content-type")
            .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"));
    let keepalive_every = (server.sse_keepalive_ms > 0 && sse_out)
        .then(|| Duration::from_millis(server.sse_keepalive_ms));
    // The last bytes sent to the client: a comment may only go between events.
    let mut tail = EventTail::default();
    ctx.overhead_us += t_head.elapsed().as_micros() as u64;
    // The refusal classifier runs as the text streams, its state carried
    // from one read to the next (a phrase split across events is found).
    let refusal = core.snap.refusal.as_ref();
    let mut refusal_scan = refusal.map(|_| RefusalScan::new());
    let mut scanned = 0usize;
    let close = !req.keep_alive || conn.http10;
    if matches!(mode, StreamMode::Translate(_)) {
        respond::own_head(
            conn,
            head.status,
            Some((resp, head)),
            b"text/event-stream",
            ctx,
            None,
            close,
        );
    } else {
        respond::relayed_head(conn, resp, head, ctx, None, close);
    }
    // Each write to the client is a TCP send (and a wake-up of the reader):
    // when events came with the head, the head leaves with them in one write.
    if resp.len() == head.head_len && conn.flush().await.is_err() {
        return (Relay::ClientGone, false);
    }
    let mut ended = false;
    let mut dec = ChunkedDecoder::new(16 * 1024);
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut translated: Vec<u8> = Vec::new();
    let mut remaining = match head.framing {
        ResponseFraming::ContentLength(n) => n,
        _ => 0,
    };
    let mut pos = head.head_len;
    let mut first = true;
    let mut held = false;
    let outcome = 'relay: loop {
        // Decode what is buffered into payload ranges.
        ranges.clear();
        let mut finished = false;
        match head.framing {
            ResponseFraming::Chunked => match dec.feed(&resp[pos..], &mut ranges) {
                Ok((used, done)) => {
                    for r in ranges.iter_mut() {
                        *r = pos + r.start..pos + r.end;
                    }
                    pos += used;
                    finished = done;
                }
                Err(e) => break Relay::UpstreamFailed(format!("bad chunked framing: {}", e.0)),
            },
            ResponseFraming::ContentLength(_) => {
                let take = (resp.len() - pos).min(remaining as usize);
                ranges.push(pos..pos + take);
                pos += take;
                remaining -= take as u64;
                finished = remaining == 0;
            }
            ResponseFraming::UntilClose => {
                ranges.push(pos..resp.len());
                pos = resp.len();
            }
            ResponseFraming::None => finished = true,
        }
        for r in &ranges {
            let payload = &resp[r.clone()];
            if payload.is_empty() {
                continue;
            }
            if first {
                first = false;
                ctx.ttft_ms = Some(req.t0.elapsed().as_secs_f64() * 1000.0);
            }
            let bytes: &[u8] = match &mut *mode {
                StreamMode::Chat { parser, stats } => {
                    let _ = parser.feed(payload, |ev| stats.on_event(ev.data));
                    payload
                }
                StreamMode::Tap(t) => {
                    translated.clear();
                    let _ = t.feed(payload, &mut translated);
                    payload
                }
                StreamMode::Translate(t) => {
                    translated.clear();
                    if let Err(e) = t.feed(payload, &mut translated) {
                        // A malformed provider event: end the client's stream with an error.
                        if !translated.is_empty() {
                            http::write_chunk(&mut conn.out, &translated);
                        }
                        break 'relay Relay::UpstreamFailed(format!(
                            "malformed provider event: {e}"
                        ));
                    }
                    &translated
                }
            };
            if bytes.is_empty() {
                continue;
            }
            tail.push(bytes);
            if chunked_out {
                http::write_chunk(&mut conn.out, bytes);
            } else {
                conn.out.extend_from_slice(bytes);
            }
        }
        if finished {
            if let StreamMode::Translate(t) = &mut *mode {
                translated.clear();
                t.finish(&mut translated, None);
                if chunked_out {
                    http::write_chunk(&mut conn.out, &translated);
                } else {
                    conn.out.extend_from_slice(&translated);
                }
            }
            if chunked_out {
                // The terminating chunk leaves with the last events.
                conn.out.extend_from_slice(http::LAST_CHUNK);
                ended = true;
            }
        }
        if let (Some(r), Some(scan)) = (refusal, refusal_scan.as_mut()) {
            let text = mode.text();
            if text.len() > scanned {
                r.scan(scan, &text.as_bytes()[scanned..]);
                scanned = text.len();
            }
        }
        if finished {
            // The cancel of the client poll leaves with the last write
            // (not in a ring enter of its own after it).
            armed.disarm();
        }
        if !conn.out.is_empty() && conn.flush().await.is_err() {
            break Relay::ClientGone;
        }
        if finished {
            break Relay::Complete;
        }
        // Keep only undecoded bytes, then read more.
        resp.drain(..pos);
        pos = 0;
        if !held {
            // From here the stream waits on the provider, for as long as it
            // generates: it holds a small buffer, not the head read's.
            held = true;
            resp.shrink_to(resp.len().max(watch::STREAM_SPARE));
        }
        let buf = std::mem::take(resp);
        // Until the first content byte the first-byte timeout applies (a long
        // prefill after an early head); after it, the stream-idle timeout.
        let wait = if first { timeout } else { idle };
        let keepalive = keepalive_every
            .filter(|_| tail.at_event_boundary())
            .map(|every| {
                let comment: &'static [u8] = if chunked_out {
                    KEEPALIVE_CHUNK
                } else {
                    KEEPALIVE_COMMENT
                };
                (every, comment)
            });
        match armed
            .read_stream(
                &mut conn.stream,
                &core.shutdown,
                up,
                buf,
                wait,
                keepalive,
                write_timeout,
            )
            .await
        {
            Wait::Done((Ok(k), b)) if k > 0 => *resp = b,
            Wait::Done((r, b)) => {
                *resp = b;
                if head.framing == ResponseFraming::UntilClose && r.is_ok() {
                    break Relay::Complete;
                }
                break Relay::UpstreamFailed(match r {
                    Ok(_) => "provider closed the connection mid-stream".to_string(),
                    Err(e) => format!("read failed mid-stream: {e}"),
                });
            }
            Wait::TimedOut if first => {
                break Relay::UpstreamFailed(format!(
                    "no data for {} ms (first_byte_timeout_ms)",
                    wait.as_millis()
                ));
            }
            Wait::TimedOut => {
                break Relay::UpstreamFailed(format!(
                    "stream idle for {} ms (stream_idle_timeout_ms)",
                    wait.as_millis()
                ));
            }
            Wait::ClientGone => break Relay::ClientGone,
            Wait::Shutdown => {
                break Relay::UpstreamFailed(
                    "the router is shutting down (drain_timeout_ms passed)".to_string(),
                );
            }
        }
    };
    // The last upstream read is done (or failed): the rest goes out unwatched.
    armed.disarm();
    let text = match &mut *mode {
        StreamMode::Chat { stats, .. } => {
            ctx.input_tokens = stats.input_tokens;
            ctx.output_tokens = stats.output_tokens;
            ctx.finish_reason = stats.finish_reason.take();
            if let Some(e) = &stats.error {
                ctx.error = Some(e.clone());
            }
            std::mem::take(&mut stats.text)
        }
        StreamMode::Tap(t) | StreamMode::Translate(t) => {
            ctx.input_tokens = t.usage.map(|u| u.input_tokens);
            ctx.output_tokens = t.usage.map(|u| u.output_tokens);
            ctx.finish_reason = t.finish.as_ref().map(|f| f.as_str().to_string());
            if let Some(e) = &t.error {
                ctx.error = Some(e.clone());
            }
            std::mem::take(&mut t.text)
        }
    };
    if let (Some(r), Some(mut scan)) = (refusal, refusal_scan) {
        if text.len() > scanned {
            r.scan(&mut scan, &text.as_bytes()[scanned..]);
        }
        if scan.matched() {
            ctx.response_tags.push(crate::classify::REFUSAL_TAG);
        }
    }
    ctx.response = Some(text);
    match outcome {
        Relay::Complete => {
            if !ended {
                if let StreamMode::Translate(t) = &mut *mode
                    && head.framing == ResponseFraming::UntilClose
                {
                    translated.clear();
                    t.finish(&mut translated, None);
                    conn.out.extend_from_slice(&translated);
                }
                if chunked_out {
                    conn.out.extend_from_slice(http::LAST_CHUNK);
                }
            }
            if conn.flush().await.is_err() {
                return (Relay::ClientGone, false);
            }
            let reusable =
                head.keep_alive && head.framing != ResponseFraming::UntilClose && pos == resp.len();
            (Relay::Complete, reusable)
        }
        Relay::UpstreamFailed(msg) => {
            // End the client's stream in its own format: an error event, never a fake end.
            let mut event = Vec::new();
            match &mut *mode {
                StreamMode::Translate(t) => t.finish(&mut event, Some(&msg)),
                _ => translate::write_stream_error(
                    client,
                    &format!("upstream stream ended abnormally: {msg}"),
                    &mut event,
                ),
            }
            if chunked_out {
                http::write_chunk(&mut conn.out, &event);
                conn.out.extend_from_slice(http::LAST_CHUNK);
            } else {
                conn.out.extend_from_slice(&event);
            }
            let _ = conn.flush().await;
            (Relay::UpstreamFailed(msg), false)
        }
        Relay::ClientGone => (Relay::ClientGone, false),
    }
}

impl StreamMode {
    /// The reply text accumulated so far.
    fn text(&self) -> &str {
        match self {
            StreamMode::Chat { stats, .. } => &stats.text,
            StreamMode::Tap(t) | StreamMode::Translate(t) => &t.text,
        }
    }
}

/// A response header's value from a provider head.
pub fn header_value<'a>(buf: &'a [u8], head: &ResponseHead, name: &str) -> Option<&'a [u8]> {
    head.header(buf, name)
}

#[cfg(test)]
mod tests {
    use super::EventTail;

    fn tail_after(pieces: &[&[u8]]) -> bool {
        let mut t = EventTail::default();
        for p in pieces {
            t.push(p);
        }
        t.at_event_boundary()
    }

    #[test]
    fn keepalive_comments_go_only_between_events() {
        assert!(tail_after(&[]), "nothing sent yet");
        assert!(tail_after(&[b"data: {}\n\n"]));
        assert!(tail_after(&[b"data: {}\r\n\r\n"]));
        assert!(tail_after(&[b"data: {}\r\r"]));
        assert!(
            tail_after(&[b"event: ping\ndata: {}\n", b"\n"]),
            "split blank line"
        );
        assert!(tail_after(&[b"data: {}\r\n", b"\r", b"\n"]));
        assert!(!tail_after(&[b"data: {\"a\":"]), "inside an event");
        assert!(!tail_after(&[b"data: {}\n"]), "one line, no blank line yet");
        assert!(!tail_after(&[b"data: {}\n\n", b"data: {"]));
        assert!(!tail_after(&[b"data: {}\r\n"]));
    }
}
