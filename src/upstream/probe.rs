//! Active health: for providers with a `health_path`, one thread per
//! config generation (off the workers) sends `GET <health_path>` to each
//! endpoint every `health_interval_ms`. A non-2xx answer (llama-server says
//! 503 while it loads a model), a refused connection or no answer within
//! the probe timeout marks the endpoint down; it is a candidate again only
//! after a probe succeeds. A success also ends a passive ejection early.
//!
//! The path is from the server's root (`/health`), not below the
//! endpoint's `/v1`. Probes speak plain HTTP/1.1 with `Connection: close`;
//! `https://` endpoints are not probed (a startup warning says so).
//! Changes of verdict are printed on stderr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::health::Health;

/// One endpoint to probe.
pub struct ProbeTarget {
    pub provider: String,
    pub url: String,
    pub addrs: Vec<SocketAddr>,
    /// The whole request (`GET … HTTP/1.1`, `Host`, `Connection: close`).
    pub request: Vec<u8>,
    pub interval: Duration,
    pub health: Arc<Health>,
}

impl ProbeTarget {
    pub fn new(
        provider: &str,
        url: &str,
        host_header: &str,
        path: &str,
        addrs: Vec<SocketAddr>,
        interval: Duration,
        health: Arc<Health>,
    ) -> ProbeTarget {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {host_header}\r\nuser-agent: opensourcellmrouter-probe\r\n\
             connection: close\r\n\r\n"
        )
        .into_bytes();
        ProbeTarget {
            provider: provider.to_string(),
            url: url.to_string(),
            addrs,
            request,
            interval,
            health,
        }
    }
}

/// The probing thread; it stops when this is dropped (with the snapshot).
pub struct Prober {
    _stop: mpsc::Sender<()>,
}

/// Start probing `targets` (none: no thread).
pub fn start(targets: Vec<ProbeTarget>) -> Option<Prober> {
    if targets.is_empty() {
        return None;
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("health-probe".into())
        .spawn(move || run(targets, stopped));
    match spawned {
        Ok(_) => Some(Prober { _stop: stop }),
        Err(e) => {
            eprintln!("warning: cannot start the health probe thread: {e}");
            None
        }
    }
}

fn run(targets: Vec<ProbeTarget>, stopped: mpsc::Receiver<()>) {
    let mut due: Vec<Instant> = targets.iter().map(|_| Instant::now()).collect();
    loop {
        let now = Instant::now();
        for (t, at) in targets.iter().zip(due.iter_mut()) {
            if *at > now {
                continue;
            }
            *at = now + t.interval;
            let timeout = t.interval.min(Duration::from_secs(2));
            let verdict = probe(t, timeout);
            if t.health.probed(verdict.is_ok()) {
                match &verdict {
                    Ok(()) => eprintln!(
                        "health: provider '{}' endpoint {}: probe succeeded, back in rotation",
                        t.provider, t.url
                    ),
                    Err(why) => eprintln!(
                        "health: provider '{}' endpoint {}: probe failed ({why}), out of rotation",
                        t.provider, t.url
                    ),
                }
            }
        }
        let next = due.iter().min().copied().unwrap_or(now);
        let wait = next.saturating_duration_since(Instant::now());
        match stopped.recv_timeout(wait.max(Duration::from_millis(1))) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The snapshot (and its `Prober`) is gone.
            _ => return,
        }
    }
}

/// One probe: `Ok` for a 2xx status line within `timeout`.
fn probe(t: &ProbeTarget, timeout: Duration) -> Result<(), String> {
    let addr = t.addrs.first().ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(&t.request).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    // The status line's first 12 bytes: "HTTP/1.1 200".
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) => return Err("closed before the status line".into()),
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = &buf[..n];
    if !line.starts_with(b"HTTP/1.") {
        return Err("not an HTTP response".into());
    }
    match line.get(9) {
        Some(b'2') => Ok(()),
        _ => Err(format!(
            "status {}",
            String::from_utf8_lossy(&line[9..12.min(line.len())])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        addr
    }

    fn target(addr: SocketAddr) -> ProbeTarget {
        ProbeTarget::new(
            "p",
            "http://x",
            "x",
            "/health",
            vec![addr],
            Duration::from_secs(1),
            Arc::new(Health::default()),
        )
    }

    #[test]
    fn a_2xx_is_healthy_and_anything_else_is_not() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(probe(&target(ok), Duration::from_secs(2)), Ok(()));
        let loading = serve_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            probe(&target(loading), Duration::from_secs(2)),
            Err("status 503".to_string())
        );
        let closed = serve_once(b"");
        assert!(probe(&target(closed), Duration::from_secs(2)).is_err());
    }

    #[test]
    fn a_probe_verdict_takes_an_endpoint_out_and_back() {
        let h = Health::default();
        assert!(h.usable(0));
        assert!(h.probed(false), "the verdict changed");
        assert!(!h.usable(0));
        assert!(!h.probed(false), "no change");
        assert!(h.probed(true));
        assert!(h.usable(0));
        // A success ends a passive ejection early.
        assert!(h.failure(0, 1, 60_000));
        assert!(!h.usable(1));
        h.probed(true);
        assert!(h.usable(1));
    }
}
