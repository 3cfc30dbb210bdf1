//! The types every phase of the request lifecycle shares, below all of them:
//! the client connection ([`ClientConn`]), one request as read from it
//! ([`Request`]), and how the connection goes on afterwards ([`Next`]).

use std::io;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::timer::Deadline;
use super::watch::read_append;
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
    /// The deadline of the write, or of the head or body read, in progress
    /// (one at a time), disarmed after each.
    deadline: Deadline,
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
            deadline: Deadline::new(),
        }
    }

    /// Read from the client into the spare capacity of `buf` (appending, at
    /// least `spare` bytes of room), unless `wait` passes first: then
    /// `None`, and the buffer is gone with the cancelled read.
    pub async fn read_within(
        &mut self,
        buf: Vec<u8>,
        spare: usize,
        wait: Duration,
    ) -> Option<(io::Result<usize>, Vec<u8>)> {
        self.deadline.reset(Instant::now() + wait);
        let read = monoio::select! {
            r = read_append(&mut self.stream, buf, spare) => Some(r),
            _ = &mut self.deadline => None,
        };
        self.deadline.disarm();
        read
    }

    /// Write `out` to the client and clear it.
    /// A client that stops reading (zero window) fails the write after
    /// `write_timeout`, so a stalled reader never holds a stream forever.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        self.deadline.reset(Instant::now() + self.write_timeout);
        let written = monoio::select! {
            done = self.stream.write_all(buf) => Some(done),
            _ = &mut self.deadline => None,
        };
        // Disarmed: an idle connection is not woken when it would have
        // passed.
        self.deadline.disarm();
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
