//! Upstreams: provider addresses (resolved once per snapshot, off the
//! workers), per-core keep-alive connection pools, and connecting.
//!
//! Pools are LIFO (the most recently used connection is the warmest and the
//! least likely to have been closed by the upstream's idle timer) and drop
//! connections idle longer than `[server] pool_idle_ttl_ms`, which defaults
//! below vLLM's ~5 s keep-alive. A connection whose read or write was
//! abandoned is never given back (callers simply drop it).
//!
//! A pooled connection is reused only while it is silent: before one is
//! handed out, a non-blocking `MSG_PEEK` on its socket must find nothing to
//! read. Bytes that arrived while it sat idle (an unsolicited response, the
//! `408 Request Timeout` some servers send before closing an idle
//! connection) or an EOF/reset mean its state is unknown: it is closed, and
//! the next one (or a fresh connection) is used. Those bytes are never
//! parsed as the answer to a later request.

pub mod balance;
pub mod health;
pub mod probe;
pub mod tls;

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;

use crate::config::{Provider, ProviderFormat};

/// Where a provider lives, resolved at snapshot build time.
#[derive(Debug, Clone)]
pub struct Target {
    pub addrs: Vec<SocketAddr>,
    /// `host:port` as configured, for error messages.
    pub display: String,
    /// Resolution failure, reported when the provider is used.
    pub resolve_error: Option<String>,
}

/// Resolve every endpoint's host, provider by provider, endpoints in order
/// (DNS happens here, on the control thread). A mock provider has one
/// endpoint with no address.
pub fn resolve_targets(providers: &[Provider]) -> Vec<Target> {
    let mut out = Vec::new();
    for p in providers {
        for e in &p.endpoints {
            let display = format!("{}:{}", e.host, e.port);
            if p.format == ProviderFormat::Mock || !p.active() {
                out.push(Target {
                    addrs: Vec::new(),
                    display,
                    resolve_error: None,
                });
                continue;
            }
            out.push(match (e.host.as_str(), e.port).to_socket_addrs() {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    // Prefer IPv4 loopback-style order: local servers (llama-server,
                    // vLLM) usually listen on 127.0.0.1 only.
                    addrs.sort_by_key(|a| !a.is_ipv4());
                    Target {
                        addrs,
                        display,
                        resolve_error: None,
                    }
                }
                Err(err) => Target {
                    addrs: Vec::new(),
                    display,
                    resolve_error: Some(format!("cannot resolve {}: {err}", e.host)),
                },
            });
        }
    }
    out
}

/// An upstream connection: plain TCP, or TLS for `https://` providers.
pub enum Conn {
    Plain(TcpStream),
    /// Boxed: a rustls connection is large.
    Tls(Box<tls::TlsStream>),
}

impl Conn {
    /// True when nothing has arrived on this idle connection: no bytes, no
    /// EOF, no error, and (TLS) nothing buffered inside the stream.
    pub fn is_silent(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Conn::Plain(s) => s.as_raw_fd(),
            Conn::Tls(s) => {
                if s.has_buffered_input() {
                    return false;
                }
                s.tcp().as_raw_fd()
            }
        };
        matches!(peek(fd), Peek::Nothing)
    }
}

/// What a non-blocking peek at a socket showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// EOF, or an error (reset): the peer is gone.
    Closed,
    /// Bytes are waiting.
    Data,
    /// Nothing to read yet.
    Nothing,
}

/// Peek at `fd` without blocking or consuming (`recv` with `MSG_PEEK |
/// MSG_DONTWAIT`, one byte): one syscall.
pub fn peek(fd: std::os::fd::RawFd) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: fd is a live socket owned by the caller; b is a live 1-byte buffer.
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
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Peek::Nothing,
        _ => Peek::Closed,
    }
}

// The TLS read and write futures are boxed: they are several hundred bytes
// (rustls' state machine around the socket op), and inline they would size
// every future that reads or writes a `Conn` — a held stream's task among
// them — plain connections included. A TLS op pays one allocation for it.
impl AsyncReadRent for Conn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.readv(buf).await,
            Conn::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for Conn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.write(buf).await,
            Conn::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.writev(buf).await,
            Conn::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        }
    }
}

struct Idle {
    stream: Conn,
    since: Instant,
}

/// One core's idle upstream connections, one LIFO stack per endpoint.
pub struct Pools {
    idle: RefCell<Vec<Vec<Idle>>>,
    ttl: Duration,
    max_idle: usize,
}

impl Pools {
    pub fn new(n_endpoints: usize, ttl: Duration, max_idle: usize) -> Self {
        Pools {
            idle: RefCell::new((0..n_endpoints).map(|_| Vec::new()).collect()),
            ttl,
            max_idle,
        }
    }

    /// The most recently returned live, silent connection, if any. Expired
    /// ones are dropped, and so is every one on which the upstream spoke (or
    /// closed) while it was idle.
    pub fn take(&self, endpoint: usize) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(endpoint)?;
        let now = Instant::now();
        while let Some(c) = stack.pop() {
            if now.duration_since(c.since) >= self.ttl {
                // The rest are older still: drop them all.
                stack.clear();
                return None;
            }
            if c.stream.is_silent() {
                return Some(c.stream);
            }
            // Unknown state (unsolicited bytes, EOF, reset): closed by the drop.
        }
        None
    }

    /// Close idle connections that expired or that the upstream closed (or
    /// spoke on) while they sat in the pool, so an idle router holds no
    /// dead sockets. Run by each worker every `pool_idle_ttl_ms`.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        for stack in idle.iter_mut() {
            stack.retain(|c| now.duration_since(c.since) < self.ttl && c.stream.is_silent());
        }
    }

    /// How long an idle connection may stay pooled.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Give back a connection whose response was read completely.
    pub fn give(&self, endpoint: usize, stream: Conn) {
        let mut idle = self.idle.borrow_mut();
        if let Some(stack) = idle.get_mut(endpoint) {
            if stack.len() >= self.max_idle {
                // Drop the oldest: LIFO keeps the warm end.
                stack.remove(0);
            }
            stack.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Take over `other`'s idle connections for the endpoints a reload kept:
    /// `map[i]` is the old index of new endpoint `i` (None: a new endpoint).
    /// What is not taken over is closed with `other`.
    pub fn adopt(&self, other: &Pools, map: &[Option<usize>]) {
        let mut taken = std::mem::take(&mut *other.idle.borrow_mut());
        let mut idle = self.idle.borrow_mut();
        for (mine, old) in idle.iter_mut().zip(map) {
            if let Some(stack) = old.and_then(|o| taken.get_mut(o)) {
                *mine = std::mem::take(stack);
            }
        }
    }

    /// Idle connections currently pooled for `endpoint` (for tests and metrics).
    pub fn idle_count(&self, endpoint: usize) -> usize {
        self.idle.borrow().get(endpoint).map_or(0, Vec::len)
    }
}

/// Connect to the first address of `target` that accepts within `timeout`;
/// with `tls`, run the TLS handshake (as async IO on this worker, bounded by
/// the same timeout) for the given host name.
pub async fn connect(
    target: &Target,
    timeout: Duration,
    tls: Option<(&tls::TlsConnector, &str)>,
) -> Result<Conn, String> {
    if let Some(e) = &target.resolve_error {
        return Err(e.clone());
    }
    let mut last = String::from("no address");
    for addr in &target.addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return match tls {
                    None => Ok(Conn::Plain(stream)),
                    Some((connector, host)) => connector
                        .connect(stream, host, timeout)
                        .await
                        .map(|t| Conn::Tls(Box::new(t))),
                };
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out after {} ms", timeout.as_millis()),
        }
    }
    Err(last)
}
