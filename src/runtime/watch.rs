//! Client-gone detection while the router waits on an upstream.
//!
//! A readability poll is posted on the client socket at the first wait of an
//! exchange and stays posted across every upstream read and every write to
//! the client until the last upstream read: one poll (and one cancel, which
//! leaves with the last write) per request or stream, not one per upstream
//! read. When it fires, a non-blocking `MSG_PEEK` tells EOF/reset (the client
//! is gone: close the upstream, which stops generation on vLLM/llama-server)
//! from pipelined bytes of a next request (stop watching; they are read after
//! this response).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::{Duration, Instant};

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::request::ClientConn;
use super::shutdown::Shutdown;
use super::timer::Deadline;
use crate::upstream::{Peek, peek};

/// Spare room reserved before an upstream read of a head or a whole body.
const READ_SPARE: usize = 16 * 1024;
/// Spare room reserved before a read of a streamed reply. Events are small
/// and a held stream keeps its buffer (see `relay::relay_stream`, which
/// shrinks it to this before the first wait), so stream reads start small;
/// one that fills what it was given makes the next twice as large.
pub const STREAM_SPARE: usize = 1024;
/// The largest spare a stream read is given.
const MAX_STREAM_SPARE: usize = 64 * 1024;

/// Start watching `conn`'s client for the duration of one upstream exchange.
///
/// The [`Armed`] returned must be dropped before `conn` is (it is a local of
/// the exchange, which borrows `conn` throughout).
pub fn arm(conn: &ClientConn) -> Armed {
    Armed {
        active: true,
        client: std::ptr::from_ref(&conn.stream),
        fd: conn.stream.as_raw_fd(),
        poll: None,
        deadline: Deadline::new(),
        stream_spare: STREAM_SPARE,
        given: 0,
    }
}

/// The readability poll in flight on the client.
type ClientPoll = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// An armed watch; see the module documentation.
pub struct Armed {
    /// Watching until pipelined bytes were seen (or [`Armed::disarm`]).
    active: bool,
    /// The client socket (see [`arm`] and [`Armed::poll`] for why a pointer)
    /// and its descriptor number (for the peek).
    client: *const TcpStream,
    fd: RawFd,
    poll: Option<ClientPoll>,
    /// The exchange's wait deadline, re-armed for each wait.
    deadline: Deadline,
    /// Spare room the next stream read gets, and what the last read got.
    stream_spare: usize,
    given: usize,
}

/// How waiting on an upstream read ended.
pub enum Wait<T> {
    Done(T),
    ClientGone,
    TimedOut,
    /// The core's drain deadline passed (see `runtime/shutdown.rs`).
    Shutdown,
}

/// What the client side said while a read was waiting.
enum Seen {
    Gone,
    /// Nothing to act on (pipelined bytes, or a spurious wake-up).
    Nothing,
}

impl Armed {
    /// The client poll, posted on first use and kept until it fires; `None`
    /// once watching stopped.
    fn posted(
        active: bool,
        client: *const TcpStream,
        poll: &mut Option<ClientPoll>,
    ) -> Option<&mut ClientPoll> {
        if !active {
            return None;
        }
        if poll.is_none() {
            // SAFETY: `client` points at the connection's socket, which
            // outlives this Armed (see `arm`) and does not move while the
            // exchange borrows the connection. The poll stays posted while
            // the same socket is written through `&mut` (relayed events, a
            // keep-alive comment) — the sharing monoio's own `into_split`
            // halves do for a `TcpStream` (`unsafe impl Split`): `readable`
            // only reads the descriptor, once, on its first poll, to take
            // its own counted handle on it for the PollAdd, and nothing
            // writes the `TcpStream` value itself while a request is served.
            // A second descriptor (a dup) would avoid the pointer, but costs
            // a file per stream: a third of what 10,000 streams need.
            *poll = Some(Box::pin(async move {
                unsafe { &*client }.readable(false).await
            }));
        }
        poll.as_mut()
    }

    /// Wait for `read` until `deadline`, watching the client meanwhile: a
    /// spurious wake-up or a next request's pipelined bytes keep waiting.
    async fn wait<F: Future>(
        &mut self,
        mut read: Pin<&mut F>,
        deadline: Instant,
        shutdown: &Shutdown,
    ) -> Ev<F::Output> {
        self.deadline.reset(deadline);
        loop {
            let fired = match Self::posted(self.active, self.client, &mut self.poll) {
                Some(poll) => monoio::select! {
                    r = read.as_mut() => return Ev::Read(r),
                    _ = &mut self.deadline => return Ev::Slept,
                    r = poll.as_mut() => r,
                    _ = shutdown.wait() => return Ev::Shutdown,
                },
                None => monoio::select! {
                    r = read.as_mut() => return Ev::Read(r),
                    _ = &mut self.deadline => return Ev::Slept,
                    _ = shutdown.wait() => return Ev::Shutdown,
                },
            };
            if let Seen::Gone = self.fired(fired) {
                return Ev::Gone;
            }
        }
    }

    /// The poll fired with `r`: tell a gone client from pipelined bytes.
    fn fired(&mut self, r: io::Result<()>) -> Seen {
        self.poll = None;
        if r.is_err() {
            return Seen::Gone;
        }
        match peek(self.fd) {
            Peek::Closed => Seen::Gone,
            Peek::Data => {
                self.active = false;
                Seen::Nothing
            }
            // Re-posted at the next wait.
            Peek::Nothing => Seen::Nothing,
        }
    }

    /// Stop watching: the upstream reads are over, and the response is about
    /// to be written (the client's next request, arriving as it reads the
    /// response, must not wake the poll). Cancels the poll in flight.
    pub fn disarm(&mut self) {
        self.active = false;
        self.poll = None;
        self.deadline.disarm();
    }

    /// The slice of `buf` a read fills: its spare capacity, at least
    /// `spare` bytes of it.
    fn spare_for(&mut self, mut buf: Vec<u8>, spare: usize) -> SliceMut<Vec<u8>> {
        if buf.capacity() - buf.len() < spare {
            buf.reserve(spare);
        }
        let len = buf.len();
        let cap = buf.capacity();
        self.given = cap - len;
        SliceMut::new(buf, len, cap)
    }

    /// A stream read ended: one that filled all it was given doubles the
    /// next stream read's spare.
    fn stream_done(
        &mut self,
        (r, b): (io::Result<usize>, SliceMut<Vec<u8>>),
    ) -> (io::Result<usize>, Vec<u8>) {
        if matches!(r, Ok(n) if n == self.given) {
            self.stream_spare = (2 * self.stream_spare).min(MAX_STREAM_SPARE);
        }
        (r, b.into_inner())
    }

    /// Read from `upstream` into the spare capacity of `buf` (appending),
    /// unless the client goes away or `timeout` passes first. The buffer is
    /// lost only in those two cases, where the upstream connection is dropped
    /// anyway.
    pub async fn read<R: AsyncReadRent>(
        &mut self,
        shutdown: &Shutdown,
        upstream: &mut R,
        buf: Vec<u8>,
        timeout: Duration,
    ) -> Wait<(io::Result<usize>, Vec<u8>)> {
        let read = std::pin::pin!(upstream.read(self.spare_for(buf, READ_SPARE)));
        match self.wait(read, Instant::now() + timeout, shutdown).await {
            Ev::Read((r, b)) => Wait::Done((r, b.into_inner())),
            Ev::Slept => Wait::TimedOut,
            Ev::Shutdown => Wait::Shutdown,
            Ev::Gone => Wait::ClientGone,
        }
    }
}

/// How one wait of a read went (internal).
enum Ev<T> {
    Read(T),
    Slept,
    Shutdown,
    /// The client is gone.
    Gone,
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
        buf: Vec<u8>,
        idle: Duration,
        keepalive: Option<(Duration, &'static [u8])>,
        write_timeout: Duration,
    ) -> Wait<(io::Result<usize>, Vec<u8>)> {
        let mut read = std::pin::pin!(upstream.read(self.spare_for(buf, self.stream_spare)));
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
            let ev = self
                .wait(read.as_mut(), Instant::now() + wait, shutdown)
                .await;
            match ev {
                Ev::Read(r) => return Wait::Done(self.stream_done(r)),
                Ev::Slept => {
                    let Some(bytes) = tick else {
                        return Wait::TimedOut;
                    };
                    // Boxed: a keep-alive tick is rare, its timeout future large.
                    let write = Box::pin(monoio::time::timeout(
                        write_timeout,
                        client.write_all(bytes),
                    ));
                    match write.await {
                        Ok((Ok(_), _)) => {}
                        _ => return Wait::ClientGone,
                    }
                }
                Ev::Shutdown => return Wait::Shutdown,
                Ev::Gone => return Wait::ClientGone,
            }
        }
    }
}

/// Appending read without a watch (request bodies, head reads), into
/// exactly `min_spare` bytes of new room when the buffer has less: the
/// callers size it (a head read doubles, a body read asks for what is left
/// of the body), so a request read whole fills its buffer and cutting it to
/// size copies nothing.
pub async fn read_append(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    min_spare: usize,
) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve_exact(min_spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let slice: SliceMut<Vec<u8>> = buf.slice_mut(len..cap);
    let (r, slice) = stream.read(slice).await;
    (r, slice.into_inner())
}
