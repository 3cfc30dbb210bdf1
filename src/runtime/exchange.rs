//! The upstream exchange: take a pooled connection (only a silent one) or
//! connect, send the request, and read until the final response head. It
//! returns the head — or a typed error — before anything reaches the client,
//! so the lifecycle decides what the client gets (and a later attempt could
//! go elsewhere). Also: reading a non-streamed reply's whole body.
//!
//! Nothing here writes to the client; the client socket is only watched
//! (EOF/reset → [`RouterError::client_gone`], and the upstream is closed).

use std::ops::Range;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use super::Core;
use super::shutdown::Shutdown;
use super::watch::{Armed, Wait};
use crate::error::RouterError;
use crate::http::{self, ChunkedDecoder, ResponseFraming, ResponseHead};
use crate::upstream::Conn;

/// Largest upstream response body the router buffers (non-streamed replies).
const MAX_UPSTREAM_BODY: usize = 64 << 20;
/// Largest upstream response head.
const MAX_UPSTREAM_HEAD: usize = 64 << 10;

/// A provider's final response head, with the connection it came on.
pub struct Reply {
    pub up: Conn,
    pub head: ResponseHead,
}

/// Send `up_req` to endpoint `eidx` (of its provider) and read until the final response head
/// (into `resp`: the head, then whatever body bytes came with it).
///
/// A pooled connection is used only while silent (see `upstream::Pools`);
/// one that turns out dead before any response byte, or answers `408`, is
/// closed and the request sent once more on a fresh connection. Interim
/// `1xx` responses are skipped, however the reads split them.
pub async fn send(
    core: &Core,
    armed: &mut Armed,
    eidx: usize,
    up_req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<Reply, RouterError> {
    let snap = &core.snap;
    let server = &snap.config.server;
    let ep = &snap.eps[eidx];
    let pidx = ep.provider;
    let provider = &snap.config.providers[pidx];
    let target = &ep.target;
    let sni = provider
        .endpoints
        .get(eidx - snap.endpoints_of(pidx).start)
        .map_or(provider.host.as_str(), |e| e.host.as_str());
    let timeout = first_byte_timeout(core, pidx);
    let mut retried = false;
    'attempt: loop {
        // A retry always goes out on a fresh connection: the pooled ones are
        // likely as stale as the one that just failed.
        let pooled = if retried { None } else { core.pools.take(eidx) };
        let (mut up, reused) = match pooled {
            Some(s) => (s, true),
            None => {
                let tls = core.tls[pidx].as_ref().map(|c| (c, sni));
                let connect_timeout = Duration::from_millis(server.connect_timeout_ms);
                // Boxed: a connect (TLS handshake included) is ~3 KB of
                // state, needed once per new connection; inline it would sit
                // in every request's task for as long as the request lives.
                match Box::pin(crate::upstream::connect(target, connect_timeout, tls)).await {
                    Ok(s) => (s, false),
                    Err(e) => {
                        return Err(RouterError::upstream_connect(
                            &provider.name,
                            &target.display,
                            &e,
                        ));
                    }
                }
            }
        };
        let (r, buf) = up.write_all(std::mem::take(up_req)).await;
        *up_req = buf;
        if let Err(e) = r {
            if reused && !retried {
                retried = true;
                continue 'attempt;
            }
            return Err(RouterError::upstream_connect(
                &provider.name,
                &target.display,
                &e.to_string(),
            ));
        }
        resp.clear();
        loop {
            match armed
                .read(&core.shutdown, &mut up, std::mem::take(resp), timeout)
                .await
            {
                Wait::Done((r, b)) => {
                    *resp = b;
                    let eof = matches!(r, Ok(0));
                    if let Err(e) = &r {
                        if resp.is_empty() && reused && !retried {
                            retried = true;
                            continue 'attempt;
                        }
                        return Err(RouterError::upstream_closed(
                            &provider.name,
                            &format!("read failed: {e}"),
                        ));
                    }
                    if eof {
                        if resp.is_empty() && reused && !retried {
                            retried = true;
                            continue 'attempt;
                        }
                        return Err(RouterError::upstream_closed(
                            &provider.name,
                            "connection closed before a complete response head",
                        ));
                    }
                    // Interim 1xx responses (100 Continue, 103 Early Hints, …) are
                    // skipped, and whatever follows them in the buffer is parsed
                    // before reading again.
                    loop {
                        match http::parse_response_head(resp, MAX_UPSTREAM_HEAD) {
                            Ok(Some(h)) if h.status == 408 && reused && !retried => {
                                // The upstream timed the idle connection out as the
                                // request crossed it: the request was not processed.
                                // Closed (never pooled), and sent once more on a fresh one.
                                retried = true;
                                continue 'attempt;
                            }
                            Ok(Some(head)) if head.status >= 200 => {
                                return Ok(Reply { up, head });
                            }
                            Ok(Some(h)) => {
                                resp.drain(..h.head_len);
                                if resp.is_empty() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                return Err(RouterError::upstream_bad_response(
                                    &provider.name,
                                    e.message,
                                ));
                            }
                        }
                    }
                }
                Wait::TimedOut => {
                    return Err(RouterError::upstream_timeout(
                        &provider.name,
                        &target.display,
                        timeout.as_millis() as u64,
                    ));
                }
                Wait::ClientGone => return Err(RouterError::client_gone()),
                Wait::Shutdown => return Err(RouterError::shutting_down()),
            }
        }
    }
}

/// The provider's first-byte timeout (its own, else `[server]`'s).
pub fn first_byte_timeout(core: &Core, pidx: usize) -> Duration {
    let snap = &core.snap;
    Duration::from_millis(
        snap.config.providers[pidx]
            .first_byte_timeout_ms
            .unwrap_or(snap.config.server.first_byte_timeout_ms),
    )
}

/// Read more upstream bytes into `resp`; `Ok(false)` on EOF.
async fn read_more(
    armed: &mut Armed,
    shutdown: &Shutdown,
    up: &mut Conn,
    resp: &mut Vec<u8>,
    timeout: Duration,
) -> Result<bool, BodyEnd> {
    match armed
        .read(shutdown, up, std::mem::take(resp), timeout)
        .await
    {
        Wait::Done((r, b)) => {
            *resp = b;
            match r {
                Ok(n) => Ok(n > 0),
                Err(e) => Err(BodyEnd::Bad(format!("read failed: {e}"))),
            }
        }
        Wait::TimedOut => Err(BodyEnd::TimedOut),
        Wait::ClientGone => Err(BodyEnd::ClientGone),
        Wait::Shutdown => Err(BodyEnd::Shutdown),
    }
}

/// Why reading a buffered upstream body stopped early.
enum BodyEnd {
    ClientGone,
    TimedOut,
    Shutdown,
    Bad(String),
}

/// Where a buffered body ended up, and whether its connection may be pooled.
pub struct Body {
    /// `resp[range]`, or `body[range]` when it had to be de-chunked.
    pub range: Range<usize>,
    pub in_body_buf: bool,
    pub reusable: bool,
}

/// Read a non-streamed reply's whole body (the head is in `resp`). The
/// connection is reusable only when the body ended exactly at the end of
/// what was read and the provider allowed keep-alive.
pub async fn read_body(
    core: &Core,
    armed: &mut Armed,
    eidx: usize,
    reply: &mut Reply,
    resp: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<Body, RouterError> {
    let pidx = core.snap.eps[eidx].provider;
    let timeout = first_byte_timeout(core, pidx);
    read_whole_body(
        armed,
        &core.shutdown,
        &mut reply.up,
        resp,
        body,
        &reply.head,
        timeout,
    )
    .await
    .map_err(|end| {
        let provider = &core.snap.config.providers[pidx];
        match end {
            BodyEnd::ClientGone => RouterError::client_gone(),
            BodyEnd::Shutdown => RouterError::shutting_down(),
            BodyEnd::TimedOut => RouterError::upstream_timeout(
                &provider.name,
                &core.snap.eps[eidx].target.display,
                timeout.as_millis() as u64,
            ),
            BodyEnd::Bad(why) => RouterError::upstream_bad_response(&provider.name, &why),
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn read_whole_body(
    armed: &mut Armed,
    shutdown: &Shutdown,
    up: &mut Conn,
    resp: &mut Vec<u8>,
    body: &mut Vec<u8>,
    head: &ResponseHead,
    timeout: Duration,
) -> Result<Body, BodyEnd> {
    const TRUNCATED: &str = "connection closed before the end of the body";
    const TOO_LARGE: &str = "response body too large";
    match head.framing {
        // Bytes after a bodiless head (a 204 that sent a body anyway) leave
        // the connection in an unknown state: never pooled.
        ResponseFraming::None => Ok(Body {
            range: head.head_len..head.head_len,
            in_body_buf: false,
            reusable: head.keep_alive && resp.len() == head.head_len,
        }),
        ResponseFraming::ContentLength(n) => {
            if n > MAX_UPSTREAM_BODY as u64 {
                return Err(BodyEnd::Bad(TOO_LARGE.into()));
            }
            let need = head.head_len + n as usize;
            while resp.len() < need {
                if !read_more(armed, shutdown, up, resp, timeout).await? {
                    return Err(BodyEnd::Bad(TRUNCATED.into()));
                }
            }
            Ok(Body {
                range: head.head_len..need,
                in_body_buf: false,
                reusable: head.keep_alive && resp.len() == need,
            })
        }
        ResponseFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(16 * 1024);
            let mut ranges = Vec::new();
            let mut pos = head.head_len;
            loop {
                ranges.clear();
                let (used, done) = dec
                    .feed(&resp[pos..], &mut ranges)
                    .map_err(|e| BodyEnd::Bad(e.0.into()))?;
                for r in &ranges {
                    // copy: de-chunking makes the reply contiguous for the client's Content-Length.
                    body.extend_from_slice(&resp[pos + r.start..pos + r.end]);
                }
                pos += used;
                if done {
                    return Ok(Body {
                        range: 0..body.len(),
                        in_body_buf: true,
                        reusable: head.keep_alive && pos == resp.len(),
                    });
                }
                if body.len() > MAX_UPSTREAM_BODY {
                    return Err(BodyEnd::Bad(TOO_LARGE.into()));
                }
                // Decoded bytes are no longer needed: keep the head and the undecoded tail.
                resp.drain(head.head_len..pos);
                pos = head.head_len;
                if !read_more(armed, shutdown, up, resp, timeout).await? {
                    return Err(BodyEnd::Bad(TRUNCATED.into()));
                }
            }
        }
        ResponseFraming::UntilClose => {
            while read_more(armed, shutdown, up, resp, timeout).await? {
                if resp.len() - head.head_len > MAX_UPSTREAM_BODY {
                    return Err(BodyEnd::Bad(TOO_LARGE.into()));
                }
            }
            Ok(Body {
                range: head.head_len..resp.len(),
                in_body_buf: false,
                reusable: false,
            })
        }
    }
}
