//! Client-gone detection while the router waits on an upstream.
//!
//! A readability poll stays posted on the client socket while the router
//! waits for the upstream (re-posted with each upstream read, so it never
//! overlaps a write to the client). When it fires, a non-blocking
//! `MSG_PEEK` tells EOF/reset (the client is gone: close the upstream, which
//! stops generation on vLLM/llama-server) from pipelined bytes of a next
//! request (stop watching; they are read after this response).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::shutdown::Shutdown;
use crate::upstream::{Peek, peek};

/// Start watching for the duration of one upstream exchange.
pub fn arm() -> Armed {
    Armed { active: true }
}

/// An armed watch. The readability poll is posted on the client socket for
/// the duration of each upstream read (no extra descriptor per connection);
/// after pipelined bytes were seen, watching stops for this request.
pub struct Armed {
    active: bool,
}

/// How waiting on an upstream read ended.
pub enum Wait<T> {
    Done(T),
    ClientGone,
    TimedOut,
    /// The core's drain deadline passed (see `runtime/shutdown.rs`).
    Shutdown,
}

impl Armed {
    /// Read from `upstream` into the spare capacity of `buf` (appending),
    /// unless the client goes away or `timeout` passes first. The buffer is
    /// lost only in those two cases, where the upstream connection is dropped
    /// anyway.
    pub async fn read<R: AsyncReadRent>(
        &mut self,
        client: &TcpStream,
        shutdown: &Shutdown,
        upstream: &mut R,
        mut buf: Vec<u8>,
        timeout: Duration,
    ) -> Wait<(io::Result<usize>, Vec<u8>)> {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let read = upstream.read(SliceMut::new(buf, len, cap));
        let sleep = monoio::time::sleep(timeout);
        let (mut read, mut sleep) = (std::pin::pin!(read), std::pin::pin!(sleep));
        loop {
            if !self.active {
                return monoio::select! {
                    (r, b) = &mut read => Wait::Done((r, b.into_inner())),
                    _ = &mut sleep => Wait::TimedOut,
                    _ = shutdown.wait() => Wait::Shutdown,
                };
            }
            monoio::select! {
                (r, b) = &mut read => return Wait::Done((r, b.into_inner())),
                _ = &mut sleep => return Wait::TimedOut,
                _ = shutdown.wait() => return Wait::Shutdown,
                r = client.readable(false) => {
                    if r.is_err() {
                        return Wait::ClientGone;
                    }
                    match peek(client.as_raw_fd()) {
                        Peek::Closed => return Wait::ClientGone,
                        Peek::Data => self.active = false,
                        Peek::Nothing => {}
                    }
                }
            }
        }
    }
}

/// How one wait of [`Armed::read_stream`] went (internal).
enum StreamEv<T> {
    Read(T),
    Slept,
    Client(io::Result<()>),
    Shutdown,
}

impl Armed {
    /// Wait for the next bytes of a streamed reply: like [`Armed::read`],
    /// but `idle` bounds the silence (→ [`Wait::TimedOut`]), and with
    /// `keepalive = Some((every, bytes))` each `every` of silence writes
    /// `bytes` (an SSE comment, already framed) to the client. The upstream
    /// read stays posted while the comment is written, so no upstream byte
    /// is lost to a tick; a client write that fails or makes no progress for
    /// `write_timeout` means the client is gone.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_stream<R: AsyncReadRent>(
        &mut self,
        client: &mut TcpStream,
        shutdown: &Shutdown,
        upstream: &mut R,
        mut buf: Vec<u8>,
        idle: Duration,
        keepalive: Option<(Duration, &'static [u8])>,
        write_timeout: Duration,
    ) -> Wait<(io::Result<usize>, Vec<u8>)> {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let mut read = std::pin::pin!(upstream.read(SliceMut::new(buf, len, cap)));
        let deadline = Instant::now() + idle;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wait::TimedOut;
            }
            let (wait, tick) = match keepalive {
                Some((every, bytes)) if every < left => (every, Some(bytes)),
                _ => (left, None),
            };
            let ev = if self.active {
                monoio::select! {
                    r = &mut read => StreamEv::Read(r),
                    _ = monoio::time::sleep(wait) => StreamEv::Slept,
                    r = client.readable(false) => StreamEv::Client(r),
                    _ = shutdown.wait() => StreamEv::Shutdown,
                }
            } else {
                monoio::select! {
                    r = &mut read => StreamEv::Read(r),
                    _ = monoio::time::sleep(wait) => StreamEv::Slept,
                    _ = shutdown.wait() => StreamEv::Shutdown,
                }
            };
            match ev {
                StreamEv::Read((r, b)) => return Wait::Done((r, b.into_inner())),
                StreamEv::Slept => {
                    let Some(bytes) = tick else {
                        return Wait::TimedOut;
                    };
                    match monoio::time::timeout(write_timeout, client.write_all(bytes)).await {
                        Ok((Ok(_), _)) => {}
                        _ => return Wait::ClientGone,
                    }
                }
                StreamEv::Shutdown => return Wait::Shutdown,
                StreamEv::Client(Err(_)) => return Wait::ClientGone,
                StreamEv::Client(Ok(())) => match peek(client.as_raw_fd()) {
                    Peek::Closed => return Wait::ClientGone,
                    Peek::Data => self.active = false,
                    Peek::Nothing => {}
                },
            }
        }
    }
}

/// Appending read without a watch (request bodies, head reads).
pub async fn read_append(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    min_spare: usize,
) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let slice: SliceMut<Vec<u8>> = buf.slice_mut(len..cap);
    let (r, slice) = stream.read(slice).await;
    (r, slice.into_inner())
}
