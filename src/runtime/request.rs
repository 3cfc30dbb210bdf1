//! The types every phase of the request lifecycle shares, below all of them:
//! the client connection ([`ClientConn`]), one request as read from it
//! ([`Request`]), and how the connection goes on afterwards ([`Next`]).

use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use monoio::time::Sleep;

use crate::http::RequestHead;

/// One client connection's socket and reusable buffers.
pub struct ClientConn {
    pub stream: TcpStream,
    /// Bytes to write to the client (head, body, chunks), reused.
    pub out: Vec<u8>,
    /// The upstream request being built, reused.
    pub up_req: Vec<u8>,
    /// Upstream response bytes, reused.
    pub up_resp: Vec<u8>,
    /// De-chunked upstream body, reused.
    pub up_body: Vec<u8>,
    /// simd-json's in-place parse copy, reused.
    pub json_scratch: Vec<u8>,
    /// The client spoke HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// `[server] write_timeout_ms`.
    pub write_timeout: Duration,
    /// The write timeout's timer, made at the first write (see `flush`).
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl ClientConn {
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Self {
        ClientConn {
            stream,
            out: Vec::new(),
            up_req: Vec::new(),
            up_resp: Vec::new(),
            up_body: Vec::new(),
            json_scratch: Vec::new(),
            http10: false,
            write_timeout,
            write_timer: None,
        }
    }

    /// Write `out` to the client and clear it.
    /// A client that stops reading (zero window) fails the write after
    /// `write_timeout`, so a stalled reader never holds a stream forever.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        // One timer per connection, re-armed for each write: a `Sleep` is
        // 640 bytes (128-aligned) that would otherwise sit inline in every
        // request's task, held streams included.
        let deadline = monoio::time::Instant::now() + self.write_timeout;
        let timer = match &mut self.write_timer {
            Some(t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => self
                .write_timer
                .insert(Box::pin(monoio::time::sleep_until(deadline))),
        };
        let written = monoio::select! {
            done = self.stream.write_all(buf) => Some(done),
            _ = timer.as_mut() => None,
        };
        match written {
            Some((r, mut buf)) => {
                buf.clear();
                self.out = buf;
                r.map(|_| ())
            }
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            )),
        }
    }
}

/// A request as the phases see it: the head (slices of the head buffer)
/// and the body bytes.
pub struct Request<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub body: &'a [u8],
    pub method: &'a str,
    pub path: &'a str,
    pub t0: Instant,
    pub ts_ms: u64,
    pub keep_alive: bool,
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }
}

/// How the connection continues after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}
