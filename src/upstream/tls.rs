//! TLS to `https://` upstreams: rustls (ring provider), webpki-roots plus an
//! optional per-provider CA file, SNI from the host name, ALPN `http/1.1`.
//!
//! The [`TlsConnector`] (one `rustls::ClientConfig`) is built on the control
//! thread with the snapshot; reading the CA file happens there, never on a
//! worker. On the worker, [`TlsConnector::connect`] runs the handshake as
//! ordinary monoio IO on the worker's runtime: rustls is a pure state machine
//! (`read_tls` / `process_new_packets` / `write_tls`), and this module moves its
//! records with owned-buffer reads and writes, so nothing ever blocks a core.
//!
//! [`TlsStream`] implements `AsyncReadRent` / `AsyncWriteRent`, so the proxy
//! code drives it exactly like a `TcpStream`. Each stream keeps two reused
//! buffers: ciphertext read from the socket (one 16 KiB read at a time) and
//! records on their way out (one plaintext record, 16 KiB, per write call).
//!
//! A peer that closes TCP without a TLS `close_notify` makes `read` fail with
//! `UnexpectedEof` once the buffered plaintext is drained (rustls' rule: it
//! could be a truncation); HTTP framing normally ends a response before that.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Ciphertext read from the socket per read call. Records larger than this
/// are reassembled by rustls across reads.
const CIPHERTEXT_READ: usize = 16 * 1024;

/// Plaintext accepted per write call: one full TLS record. `write_all` loops,
/// and the outgoing record buffer never grows past about this size.
const PLAINTEXT_WRITE: usize = 16 * 1024;

/// TLS sessions each worker's connector remembers for resumption.
const SESSIONS_PER_WORKER: usize = 256;

/// Built once per snapshot on the control thread: one rustls `ClientConfig`
/// per distinct CA setup. Cloning shares the config.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("alpn", &"http/1.1")
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// webpki-roots trust anchors, plus the PEM CA certificates in
    /// `extra_ca_pem_file` when given (for private CAs); ALPN exactly
    /// `["http/1.1"]`. Reads the file: call it on the control thread.
    pub fn new(extra_ca_pem_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca_pem_file {
            add_pem_cas(&mut roots, path)?;
        }
        // The provider is named here rather than taken from the process
        // default, so no other crate's choice can make this fail or change.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    /// A copy for one worker, with its own session-resumption cache. rustls'
    /// cache sits behind a mutex; a per-core copy keeps that lock (taken once
    /// per new connection) off every other core, per house rule 1. The trust
    /// anchors are shared, not copied.
    pub fn for_worker(&self) -> TlsConnector {
        let mut config = ClientConfig::clone(&self.config);
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
        TlsConnector {
            config: Arc::new(config),
        }
    }

    /// Connect-time handshake over an already connected `tcp`, fully async
    /// (monoio IO only), bounded by `timeout`. `host` gives SNI and the name
    /// the certificate must carry; an IP address (`[::1]` or `::1` or
    /// `127.0.0.1`) sends no SNI and is checked against the IP SANs. Needs a
    /// runtime with the timer enabled (the workers have it).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
        timeout: Duration,
    ) -> Result<TlsStream, String> {
        let name = server_name(host)?;
        let conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| format!("TLS setup for {host}: {e}"))?;
        let mut stream = TlsStream {
            tcp,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            eof: false,
        };
        match monoio::time::timeout(timeout, stream.handshake()).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(format!("TLS handshake with {host} failed: {e}")),
            Err(_) => Err(format!(
                "TLS handshake with {host} timed out after {} ms",
                timeout.as_millis()
            )),
        }
    }
}

/// Add every `CERTIFICATE` block of the PEM file at `path` to `roots`.
fn add_pem_cas(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    let mut added = 0usize;
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("CA file {shown}: bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {shown}: certificate {}: {e}", i + 1))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!("CA file {shown} holds no PEM certificate"));
    }
    Ok(())
}

/// The name to verify (and send as SNI, when it is a DNS name).
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned())
        .map_err(|e| format!("cannot use {host:?} as a TLS server name: {e}"))
}

/// A client TLS stream, used exactly like a `monoio::net::TcpStream`.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ClientConnection,
    /// Ciphertext from the socket; `rbuf[rpos..]` is not yet given to rustls
    /// (rustls takes it as its plaintext buffer drains).
    rbuf: Vec<u8>,
    rpos: usize,
    /// Records on their way to the socket (reused, cleared after each write).
    wbuf: Vec<u8>,
    /// The socket reached EOF, or rustls takes no more input (close_notify).
    eof: bool,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("alpn", &self.alpn().map(String::from_utf8_lossy))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The TCP connection underneath (for readability polls on pooled
    /// connections; never read or write it directly).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The protocol the server chose by ALPN (`http/1.1`), if it chose one.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// True when already-received bytes wait inside this stream (ciphertext
    /// not yet decrypted, or decrypted plaintext not yet read): a pooled
    /// connection with such bytes is not idle, whatever the socket says.
    pub fn has_buffered_input(&self) -> bool {
        self.rpos < self.rbuf.len() || !self.conn.wants_read()
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush_records().await?;
            } else if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ));
            } else {
                self.pull().await?;
            }
        }
        // The client's last flight (Finished) may still be queued.
        self.flush_records().await
    }

    /// Give rustls more ciphertext: what is left in `rbuf`, else one read
    /// from the socket. Processes it; on a TLS error, sends the alert rustls
    /// queued (best effort) and fails.
    async fn pull(&mut self) -> io::Result<()> {
        // Whatever rustls owes the peer (a key update reply, say) goes first.
        self.flush_records().await?;
        if self.rpos >= self.rbuf.len() && !self.eof {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            // Empty only after a cancelled read took the old buffer with it.
            buf.reserve(CIPHERTEXT_READ);
            let (res, buf) = self.tcp.read(buf).await;
            self.rbuf = buf;
            self.rpos = 0;
            if res? == 0 {
                self.eof = true;
            }
        }
        // At EOF this hands rustls an empty slice, which is how it learns of EOF.
        let mut pending = self.rbuf.get(self.rpos..).unwrap_or_default();
        let taken = self.conn.read_tls(&mut pending)?;
        if taken == 0 {
            // EOF, or close_notify already received: rustls reads no more.
            self.eof = true;
            self.rpos = self.rbuf.len();
        } else {
            self.rpos += taken;
        }
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush_records().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Write every record rustls has queued.
    async fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            if let Err(e) = self.conn.write_tls(&mut buf) {
                self.wbuf = buf;
                return Err(e);
            }
            let (res, buf) = self.tcp.write_all(buf).await;
            self.wbuf = buf;
            res?;
        }
        Ok(())
    }

    /// Ok(true) once plaintext is buffered or the peer closed cleanly (a read
    /// then returns 0); Ok(false) while more ciphertext is needed.
    fn plaintext_ready(&mut self) -> io::Result<bool> {
        match self.conn.reader().fill_buf() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn wait_plaintext(&mut self) -> io::Result<()> {
        while !self.plaintext_ready()? {
            self.pull().await?;
        }
        Ok(())
    }

    /// Copy buffered plaintext to `dst` (at most `cap` bytes); returns how many.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cap` bytes.
    unsafe fn copy_plaintext(&mut self, dst: *mut u8, cap: usize) -> usize {
        let mut done = 0;
        while done < cap {
            let mut reader = self.conn.reader();
            let n = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(cap - done);
                    // SAFETY: `done + n <= cap`, and the caller vouches for `cap`
                    // bytes at `dst`; rustls' buffer and the caller's never overlap.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst.add(done), n) };
                    n
                }
                _ => break,
            };
            reader.consume(n);
            done += n;
        }
        done
    }

    /// Hand up to one record of `data` to rustls (encrypted into its queue).
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PLAINTEXT_WRITE);
        self.conn.writer().write(&data[..n])
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        if cap == 0 {
            return (Ok(0), buf);
        }
        if let Err(e) = self.wait_plaintext().await {
            return (Err(e), buf);
        }
        // SAFETY: an `IoBufMut` owns `bytes_total()` writable bytes at
        // `write_ptr()`; the first `n` of them are initialised by the copy.
        let n = unsafe { self.copy_plaintext(buf.write_ptr(), cap) };
        unsafe { buf.set_init(n) };
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: an `IoVecBufMut` points at `write_iovec_len()` valid iovecs,
        // each naming writable memory it owns; they are copied out here.
        let iovecs: Vec<libc::iovec> = unsafe {
            std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()).to_vec()
        };
        if iovecs.iter().all(|v| v.iov_len == 0) {
            return (Ok(0), buf);
        }
        if let Err(e) = self.wait_plaintext().await {
            return (Err(e), buf);
        }
        let mut total = 0;
        for v in &iovecs {
            // SAFETY: see above: `iov_base` is writable for `iov_len` bytes.
            let n = unsafe { self.copy_plaintext(v.iov_base.cast::<u8>(), v.iov_len) };
            total += n;
            if n < v.iov_len {
                break;
            }
        }
        // SAFETY: exactly `total` bytes were written, filling the iovecs in order.
        unsafe { buf.set_init(total) };
        (Ok(total), buf)
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: an `IoBuf` holds `bytes_init()` initialised bytes at
        // `read_ptr()`, and `buf` is neither moved nor changed while `data` lives
        // (it is last used before the await below).
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        if data.is_empty() {
            return (Ok(0), buf);
        }
        let n = match self.encrypt(data) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_records().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    /// Writes every iovec whole, one record at a time, before returning.
    /// A short count would be unsafe to return: monoio 0.2.4's
    /// `write_vectored_all` mishandles partial writes (its cursor never
    /// advances inside an iovec and then reads past the iovec array).
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: an `IoVecBuf` points at `read_iovec_len()` valid iovecs, each
        // naming `iov_len` initialised bytes that `buf` owns; `buf` is neither
        // moved nor changed until this function hands it back.
        let iovecs: Vec<libc::iovec> = unsafe {
            std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()).to_vec()
        };
        let mut total = 0;
        for v in &iovecs {
            let mut done = 0;
            while done < v.iov_len {
                // SAFETY: as above; `done < iov_len`. The slice is dropped
                // before the await.
                let rest = unsafe {
                    std::slice::from_raw_parts(
                        v.iov_base.cast::<u8>().cast_const().add(done),
                        v.iov_len - done,
                    )
                };
                let n = match self.encrypt(rest) {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "TLS writer full");
                        return (Err(e), buf);
                    }
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                };
                if let Err(e) = self.flush_records().await {
                    return (Err(e), buf);
                }
                done += n;
                total += n;
            }
        }
        (Ok(total), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_records().await?;
        self.tcp.flush().await
    }

    /// Sends close_notify, then shuts the socket's write side.
    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_records().await?;
        self.tcp.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("api.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name!").is_err());
        assert!(server_name("").is_err());
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/osr-ca.pem");
        let err = TlsConnector::new(Some(missing)).unwrap_err();
        assert!(err.contains("/nonexistent/osr-ca.pem"), "{err}");

        let dir = std::env::temp_dir().join(format!("osr-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsConnector::new(Some(&empty)).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_roots_build() {
        assert!(TlsConnector::new(None).is_ok());
    }
}
