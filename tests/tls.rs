//! TLS to upstreams (`upstream::tls`), against a local rustls server whose CA
//! and certificate are made here at test time. Loopback, port 0, no internet.
//!
//! The server side is plain blocking rustls on a std thread; the client side
//! runs on a monoio runtime, as the workers do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::Duration;

use monoio::buf::VecBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use opensourcellmrouter::upstream::tls::{TlsConnector, TlsStream};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// Generous bound for a loopback handshake; only the timeout test waits it out.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Size of the large bodies.
const MB: usize = 1 << 20;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Run `fut` on a monoio runtime like a worker's (io_uring where available, timer on).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(fut)
}

/// A fresh temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("osr-tls-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A private CA (its PEM written to `ca_file`) and a server certificate it
/// signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn make_pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "osr test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();

    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();

    let ca_file = temp_dir(name).join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    Pki {
        ca_file,
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// What the server saw on its one connection.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    /// The client ended with a TLS close_notify (not a bare TCP close).
    clean_close: bool,
    requests: usize,
}

/// The pattern of the large bodies: position-dependent, so a lost, doubled or
/// reordered chunk shows.
fn big_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A TLS HTTP/1.1 server for one connection, keep-alive: `GET /hello`,
/// `GET /big` (1 MB), `POST /echo` (the body back). Reports what it saw, or
/// the handshake error.
fn tls_server(pki: &Pki) -> (SocketAddr, Receiver<Result<Seen, String>>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = channel();
    thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        // Bounds a stuck test; never reached when the client behaves.
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let conn = ServerConnection::new(config).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
        let mut seen = Seen {
            sni: tls.conn.server_name().map(str::to_string),
            alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
            clean_close: false,
            requests: 0,
        };
        seen.clean_close = serve_http(&mut tls, &mut seen.requests);
        let _ = tx.send(Ok(seen));
    });
    (addr, rx)
}

/// Serve requests until the client closes; true when it closed with close_notify.
fn serve_http<S: Read + Write>(tls: &mut S, requests: &mut usize) -> bool {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = find(&pending, b"\r\n\r\n") {
                break i + 4;
            }
            match tls.read(&mut chunk) {
                Ok(0) => return pending.is_empty(),
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
        let len = content_length(&head);
        while pending.len() < head_end + len {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = pending.drain(..head_end + len).skip(head_end).collect();
        *requests += 1;
        let reply = if head.starts_with("GET /hello ") {
            b"hello over tls".to_vec()
        } else if head.starts_with("GET /big ") {
            big_body(MB)
        } else if head.starts_with("POST /echo ") {
            body
        } else if head.starts_with("POST /v1/chat/completions ") {
            let model = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_string))
                .unwrap_or_default();
            format!(
                r#"{{"id":"c1","object":"chat.completion","created":1,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"over tls"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}}}"#
            )
            .into_bytes()
        } else {
            b"unknown path".to_vec()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if tls.write_all(head.as_bytes()).is_err()
            || tls.write_all(&reply).is_err()
            || tls.flush().is_err()
        {
            return false;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Read one response (head and a content-length body) with reads of at most
/// `buf_size` bytes, reusing one buffer.
async fn read_response(stream: &mut TlsStream, buf_size: usize) -> io::Result<(String, Vec<u8>)> {
    let mut acc = Vec::new();
    let mut buf = Vec::with_capacity(buf_size);
    let mut expected: Option<(usize, usize)> = None;
    loop {
        if let Some((head_end, len)) = expected {
            if acc.len() >= head_end + len {
                assert_eq!(acc.len(), head_end + len, "bytes past the response");
                let head = String::from_utf8_lossy(&acc[..head_end]).into_owned();
                return Ok((head, acc.split_off(head_end)));
            }
        } else if let Some(i) = find(&acc, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&acc[..i + 4]).into_owned();
            expected = Some((i + 4, content_length(&head)));
            continue;
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-response",
            ));
        }
        assert!(n <= buf_size);
        acc.extend_from_slice(&buf[..n]);
    }
}

async fn connect(
    addr: SocketAddr,
    ca_file: Option<&Path>,
    host: &str,
) -> Result<TlsStream, String> {
    let connector = TlsConnector::new(ca_file)?;
    let tcp = monoio::net::TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    connector.connect(tcp, host, HANDSHAKE).await
}

#[test]
fn http_request_over_tls_with_private_ca() {
    let pki = make_pki("hello");
    let (addr, seen) = tls_server(&pki);
    block_on(async {
        let mut stream = connect(addr, Some(&pki.ca_file), "localhost")
            .await
            .expect("handshake");
        assert_eq!(stream.alpn(), Some(&b"http/1.1"[..]));
        assert!(!stream.has_buffered_input());
        let req = b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n".to_vec();
        let (res, _) = stream.write_all(req).await;
        res.unwrap();
        let (head, body) = read_response(&mut stream, 4096).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, b"hello over tls");
        stream.shutdown().await.unwrap();
    });
    let seen = seen.recv_timeout(HANDSHAKE).unwrap().unwrap();
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen.requests, 1);
    assert!(seen.clean_close, "shutdown sends close_notify");
}

#[test]
fn ip_address_host_sends_no_sni_and_matches_the_ip_san() {
    let pki = make_pki("ip");
    let (addr, seen) = tls_server(&pki);
    block_on(async {
        let connector = TlsConnector::new(Some(&pki.ca_file)).unwrap().for_worker();
        let tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let mut stream = connector
            .connect(tcp, "127.0.0.1", HANDSHAKE)
            .await
            .expect("handshake against the IP SAN");
        let req = b"GET /hello HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".to_vec();
        let (res, _) = stream.write_all(req).await;
        res.unwrap();
        let (_, body) = read_response(&mut stream, 4096).await.unwrap();
        assert_eq!(body, b"hello over tls");
        stream.shutdown().await.unwrap();
    });
    let seen = seen.recv_timeout(HANDSHAKE).unwrap().unwrap();
    assert_eq!(seen.sni, None);
}

#[test]
fn unknown_issuer_fails_the_handshake() {
    let pki = make_pki("unknown-issuer");
    let (addr, seen) = tls_server(&pki);
    let err = block_on(connect(addr, None, "localhost"))
        .expect_err("a private CA is not in webpki-roots");
    assert!(err.contains("localhost"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The client told the server why (a fatal alert), rather than just hanging up.
    let server = seen.recv_timeout(HANDSHAKE).unwrap().unwrap_err();
    assert!(server.contains("alert"), "{server}");
}

#[test]
fn wrong_host_name_fails_the_handshake() {
    let pki = make_pki("wrong-name");
    let (addr, _seen) = tls_server(&pki);
    let err = block_on(connect(addr, Some(&pki.ca_file), "api.example.com"))
        .expect_err("the certificate is for localhost only");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("not valid for name"), "{err}");
}

#[test]
fn handshake_times_out_against_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx): (Sender<()>, Receiver<()>) = channel();
    let server = thread::spawn(move || {
        // Accept, then say nothing until the test is over.
        let held = listener.accept();
        let _ = done_rx.recv();
        drop(held);
    });
    let pki = make_pki("timeout");
    let err = block_on(async {
        let connector = TlsConnector::new(Some(&pki.ca_file)).unwrap();
        let tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        match connector
            .connect(tcp, "localhost", Duration::from_millis(200))
            .await
        {
            Ok(_) => panic!("handshake with a silent server succeeded"),
            Err(e) => e,
        }
    });
    assert!(err.contains("timed out after 200 ms"), "{err}");
    done_tx.send(()).unwrap();
    server.join().unwrap();
}

#[test]
fn a_server_that_hangs_up_fails_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        // Read the ClientHello, then close without a word.
        if let Ok((mut tcp, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = tcp.read(&mut buf);
        }
    });
    let pki = make_pki("hangup");
    let err =
        block_on(connect(addr, Some(&pki.ca_file), "localhost")).expect_err("no server hello");
    assert!(err.contains("TLS handshake with localhost failed"), "{err}");
    server.join().unwrap();
}

#[test]
fn megabyte_bodies_arrive_intact_with_small_and_large_buffers() {
    let pki = make_pki("big");
    let (addr, seen) = tls_server(&pki);
    let expected = big_body(MB);
    block_on(async {
        let mut stream = connect(addr, Some(&pki.ca_file), "localhost")
            .await
            .expect("handshake");
        // One keep-alive connection: small reads, then large ones.
        for buf_size in [317, 256 * 1024] {
            let req = b"GET /big HTTP/1.1\r\nhost: localhost\r\n\r\n".to_vec();
            let (res, _) = stream.write_all(req).await;
            res.unwrap();
            let (head, body) = read_response(&mut stream, buf_size).await.unwrap();
            assert!(head.contains("content-length: 1048576"), "{head}");
            assert!(
                body == expected,
                "1 MB body differs with {buf_size}-byte reads"
            );
        }

        // Upload 1 MB with writev (head and body as two iovecs) and read the
        // echo back with readv into two buffers at a time.
        let head =
            format!("POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: {MB}\r\n\r\n");
        let bufs = VecBuf::from(vec![head.into_bytes(), expected.clone()]);
        let (res, _) = stream.write_vectored_all(bufs).await;
        res.unwrap();
        let want = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {MB}\r\n\r\n"
        );
        let mut got = Vec::new();
        while got.len() < want.len() + MB {
            let (a, b) = (1000, 7000);
            let bufs = VecBuf::from(vec![vec![0u8; a], vec![0u8; b]]);
            let (res, bufs) = stream.readv(bufs).await;
            let n = res.unwrap();
            assert!(n > 0, "closed mid-echo after {} bytes", got.len());
            let parts: Vec<Vec<u8>> = bufs.into();
            got.extend_from_slice(&parts[0][..n.min(a)]);
            got.extend_from_slice(&parts[1][..n.saturating_sub(a)]);
        }
        assert_eq!(got.len(), want.len() + MB);
        assert_eq!(&got[..want.len()], want.as_bytes());
        assert!(got[want.len()..] == expected[..], "echoed body differs");

        stream.shutdown().await.unwrap();
    });
    let seen = seen.recv_timeout(HANDSHAKE).unwrap().unwrap();
    assert_eq!(seen.requests, 3);
    assert!(seen.clean_close);
}

#[test]
fn the_router_proxies_to_an_https_provider_trusting_its_ca_file() {
    let pki = make_pki("router");
    let (addr, seen) = tls_server(&pki);
    let config = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 1
[logging]
enabled = true
path = "{{LOG}}"
[[providers]]
name = "secure"
format = "openai"
base_url = "https://localhost:{port}/v1"
ca_file = "{ca}"
[[routers]]
type = "fallback"
"#,
        port = addr.port(),
        ca = pki.ca_file.display()
    );
    let router = common::Router::start("tls-router", &config);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..2 {
        let resp = common::post(&router, "/v1/chat/completions", body, &[]);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["choices"][0]["message"]["content"], "over tls");
        assert_eq!(resp.header("x-router-provider"), Some("secure"));
    }
    drop(router);
    // Both requests went over one pooled TLS connection, with SNI and ALPN.
    let seen = seen.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen.requests, 2);
}

#[test]
fn the_router_refuses_an_https_provider_it_cannot_verify() {
    let pki = make_pki("router-untrusted");
    let (addr, _seen) = tls_server(&pki);
    let config = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nworkers = 1\n[[providers]]\nname = \"secure\"\nformat = \"openai\"\nbase_url = \"https://localhost:{}/v1\"\n[[routers]]\ntype = \"fallback\"\n",
        addr.port()
    );
    let router = common::Router::start("tls-untrusted", &config);
    let resp = common::post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[]}"#,
        &[],
    );
    assert_eq!(resp.status, 502);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("secure") && msg.contains("certificate"),
        "{msg}"
    );
}
