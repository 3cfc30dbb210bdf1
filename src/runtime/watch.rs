//! Client-gone detection while the router waits on an upstream.
//!
//! A read stays posted on the client socket while a request is upstream (a
//! poll for readability on a `dup` of the client's fd, so writes to the
//! client are not blocked by the borrow). When it fires, a non-blocking
//! `MSG_PEEK` tells EOF/reset (the client is gone: close the upstream, which
//! stops generation on vLLM/llama-server) from pipelined bytes of a next
//! request (stop watching; they are read after this response).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

/// What a peek at the client socket showed.
enum Peek {
    Closed,
    Data,
    Nothing,
}

fn peek(fd: RawFd) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: fd is a valid socket owned by this connection; b is a live 1-byte buffer.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Peek::Closed;
    }
    if n > 0 {
        return Peek::Data;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Peek::Nothing,
        _ => Peek::Closed,
    }
}

/// A second handle on the client socket used only to wait for readability.
pub struct ClientWatch {
    stream: TcpStream,
}

impl ClientWatch {
    /// Duplicate the client's fd. Done once per connection, on its first proxied request.
    pub fn new(client: &TcpStream) -> io::Result<Self> {
        // SAFETY: dup of a valid fd; the new fd is owned by the std stream below.
        let fd = unsafe { libc::dup(client.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly duplicated, owned socket descriptor.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        Ok(ClientWatch {
            stream: TcpStream::from_std(std)?,
        })
    }
}

/// Start watching for the duration of one upstream exchange. Without a
/// watch (the `dup` failed) the client's departure is noticed at the next write.
pub fn arm(watch: Option<&ClientWatch>) -> Armed<'_> {
    Armed {
        watch,
        poll: None,
        active: watch.is_some(),
    }
}

/// An armed watch: one posted readability poll, re-posted only after a
/// spurious wake-up.
pub struct Armed<'a> {
    watch: Option<&'a ClientWatch>,
    poll: Option<Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>>,
    active: bool,
}

/// How waiting on an upstream read ended.
pub enum Wait<T> {
    Done(T),
    ClientGone,
    TimedOut,
}

impl<'a> Armed<'a> {
    /// Resolves when the client is gone. Never resolves after pipelined data was seen.
    async fn gone(&mut self) {
        loop {
            let Some(watch) = self.watch.filter(|_| self.active) else {
                return std::future::pending::<()>().await;
            };
            let stream = &watch.stream;
            let poll = self
                .poll
                .get_or_insert_with(|| Box::pin(stream.readable(false)));
            let r = poll.as_mut().await;
            self.poll = None;
            if r.is_err() {
                return;
            }
            match peek(watch.stream.as_raw_fd()) {
                Peek::Closed => return,
                Peek::Data => self.active = false,
                Peek::Nothing => {}
            }
        }
    }

    /// Read from `upstream` into the spare capacity of `buf` (appending),
    /// unless the client goes away or `timeout` passes first. The buffer is
    /// lost only in those two cases, where the upstream connection is dropped
    /// anyway.
    pub async fn read<R: AsyncReadRent>(
        &mut self,
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
        let gone = self.gone();
        let (mut read, mut sleep, mut gone) = (
            std::pin::pin!(read),
            std::pin::pin!(sleep),
            std::pin::pin!(gone),
        );
        monoio::select! {
            (r, b) = &mut read => Wait::Done((r, b.into_inner())),
            _ = &mut sleep => Wait::TimedOut,
            _ = &mut gone => Wait::ClientGone,
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
