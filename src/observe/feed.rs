//! The live event feed behind `GET /dashboard/events` (`watch`, `tui` and
//! the dashboard page read it): `start`, `classified`, `routed` and
//! `complete` events, one JSON object each, as Server-Sent Events.
//!
//! Workers never write to subscribers. A subscriber's socket is handed (a
//! duplicated descriptor) to one fan-out thread. Each worker frames its
//! events into its own buffer ([`CoreFeed`]) and a per-core flusher hands
//! the batch to that thread every 2 ms at most, through a bounded channel
//! with `try_send` (a full channel drops the batch and counts its events). The fan-out thread writes every event to every subscriber
//! without blocking: a subscriber whose socket buffer and 256 KiB of pending
//! events are full is dropped (and counted), never waited for. With no
//! subscriber, what a worker pays per event is one relaxed load
//! ([`active`]).

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Subscribers connected now.
static SUBSCRIBERS: AtomicUsize = AtomicUsize::new(0);
/// Subscribers dropped for not reading fast enough.
pub static DROPPED_SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);
/// Events dropped because the channel to the fan-out thread was full.
pub static DROPPED_EVENTS: AtomicU64 = AtomicU64::new(0);

static HUB: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Events the channel holds before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Bytes a subscriber may have pending beyond its socket buffer.
const MAX_PENDING: usize = 256 * 1024;
/// A comment this often keeps proxies and browsers from timing out.
const KEEPALIVE: Duration = Duration::from_secs(15);

enum Msg {
    Frames(Vec<u8>),
    Subscribe(TcpStream),
}

/// Whether anyone is listening: the only cost of the feed on a worker when
/// nobody is.
#[inline]
pub fn active() -> bool {
    SUBSCRIBERS.load(Ordering::Relaxed) != 0
}

/// Subscribers connected now.
pub fn subscribers() -> usize {
    SUBSCRIBERS.load(Ordering::Relaxed)
}

/// Hand framed events (`data: {…}\n\n` each) to the fan-out thread.
/// Never blocks.
pub fn publish(frames: Vec<u8>) {
    let Some(tx) = HUB.get() else { return };
    match tx.try_send(Msg::Frames(frames)) {
        Ok(()) => {}
        Err(TrySendError::Full(Msg::Frames(b)))
        | Err(TrySendError::Disconnected(Msg::Frames(b))) => {
            let n = b.windows(6).filter(|w| w == b"data: ").count();
            DROPPED_EVENTS.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(_) => {}
    }
}

/// How long a worker keeps events before handing them over.
const BATCH_DELAY: Duration = Duration::from_millis(2);
/// A batch this large is handed over at once.
const BATCH_BYTES: usize = 64 * 1024;

/// One worker's pending feed events (`!Send`: lives in the worker).
#[derive(Default)]
pub struct CoreFeed {
    buf: std::cell::RefCell<Vec<u8>>,
    signal: super::BatchSignal,
}

impl CoreFeed {
    /// Frame one event written by `f` (a JSON object) into the batch.
    /// Callers check [`active`] first.
    pub fn push(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.borrow_mut();
        buf.extend_from_slice(b"data: ");
        f(&mut buf);
        buf.extend_from_slice(b"\n\n");
        if buf.len() >= BATCH_BYTES {
            let batch = std::mem::take(&mut *buf);
            drop(buf);
            publish(batch);
        } else {
            self.signal.raise();
        }
    }

    /// The worker's flusher task: waits for a first event, lets the batch
    /// gather for `BATCH_DELAY`, hands it over.
    pub async fn run_flusher(self: std::rc::Rc<Self>) {
        loop {
            self.signal.raised().await;
            monoio::time::sleep(BATCH_DELAY).await;
            self.signal.lower();
            let batch = std::mem::take(&mut *self.buf.borrow_mut());
            if !batch.is_empty() {
                publish(batch);
            }
        }
    }
}

/// Make `stream` (a client that asked for `/dashboard/events`) a
/// subscriber: the fan-out thread writes the response head and every event
/// from now on. Returns false when the fan-out thread cannot run.
pub fn subscribe(stream: TcpStream) -> bool {
    let tx = HUB.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        let started = std::thread::Builder::new()
            .name("feed".into())
            .spawn(move || fan_out(rx));
        if let Err(e) = started {
            eprintln!("warning: cannot start the dashboard feed thread: {e}");
        }
        tx
    });
    // Counted before the hand-over, so events of requests that start from
    // now on are produced.
    SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
    if tx.send(Msg::Subscribe(stream)).is_err() {
        SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

struct Subscriber {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Subscriber {
    /// Write what is pending; false when the subscriber is gone or hopeless.
    fn push(&mut self, more: &[u8]) -> bool {
        self.pending.extend_from_slice(more);
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.pending.len() > MAX_PENDING {
            DROPPED_SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether the client closed its side (or reset).
    fn closed(&self) -> bool {
        crate::upstream::peek(self.stream.as_raw_fd()) == crate::upstream::Peek::Closed
    }
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n: connected\n\n";

fn fan_out(rx: Receiver<Msg>) {
    let mut subs: Vec<Subscriber> = Vec::new();
    let mut last_keepalive = Instant::now();
    let mut frame = Vec::with_capacity(4096);
    loop {
        let msg = rx.recv_timeout(Duration::from_secs(1));
        match msg {
            Ok(Msg::Subscribe(stream)) => add(&mut subs, stream),
            Ok(Msg::Frames(frames)) => {
                frame.clear();
                frame.extend_from_slice(&frames);
                // Whatever else is queued goes out in the same writes.
                while frame.len() < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(Msg::Frames(more)) => frame.extend_from_slice(&more),
                        Ok(Msg::Subscribe(stream)) => add(&mut subs, stream),
                        Err(_) => break,
                    }
                }
                retain(&mut subs, |s| s.push(&frame));
            }
            Err(RecvTimeoutError::Timeout) => {
                retain(&mut subs, |s| !s.closed() && s.push(&[]));
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if last_keepalive.elapsed() >= KEEPALIVE {
            last_keepalive = Instant::now();
            retain(&mut subs, |s| s.push(b": keep-alive\n\n"));
        }
    }
}

/// A new subscriber: the response head, then it gets every batch.
fn add(subs: &mut Vec<Subscriber>, stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    limit_send_buffer(&stream);
    let mut s = Subscriber {
        stream,
        pending: Vec::new(),
    };
    if s.push(HEAD) {
        subs.push(s);
    } else {
        SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscriber's kernel send buffer: 64 KiB (with `MAX_PENDING` beyond
/// it), so a stalled reader costs bounded memory and is noticed soon.
fn limit_send_buffer(stream: &TcpStream) {
    let size: libc::c_int = 64 * 1024;
    // SAFETY: a live socket; `size` outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Keep the subscribers for which `f` is true; count the others out.
fn retain(subs: &mut Vec<Subscriber>, mut f: impl FnMut(&mut Subscriber) -> bool) {
    let before = subs.len();
    subs.retain_mut(|s| f(s));
    let gone = before - subs.len();
    if gone > 0 {
        SUBSCRIBERS.fetch_sub(gone, Ordering::Relaxed);
    }
}

/// Event builders: small JSON objects written by hand.
pub mod event {
    use crate::json::write_json_string;

    fn head(b: &mut Vec<u8>, kind: &str, id: &str, ts_ms: u64) {
        b.extend_from_slice(b"{\"type\":\"");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\",\"id\":");
        write_json_string(b, id);
        b.extend_from_slice(format!(",\"ts_ms\":{ts_ms}").as_bytes());
    }

    pub fn start(
        b: &mut Vec<u8>,
        id: &str,
        ts_ms: u64,
        model: &str,
        in_flight: usize,
        path: &str,
        stream: bool,
    ) {
        head(b, "start", id, ts_ms);
        b.extend_from_slice(b",\"model\":");
        write_json_string(b, model);
        b.extend_from_slice(format!(",\"in_flight\":{in_flight},\"path\":").as_bytes());
        write_json_string(b, path);
        b.extend_from_slice(format!(",\"stream\":{stream}}}").as_bytes());
    }

    pub fn classified<'a>(
        b: &mut Vec<u8>,
        id: &str,
        ts_ms: u64,
        tags: impl Iterator<Item = &'a str>,
    ) {
        head(b, "classified", id, ts_ms);
        b.extend_from_slice(b",\"tags\":[");
        for (i, t) in tags.enumerate() {
            if i > 0 {
                b.push(b',');
            }
            write_json_string(b, t);
        }
        b.extend_from_slice(b"]}");
    }

    pub fn routed(
        b: &mut Vec<u8>,
        id: &str,
        ts_ms: u64,
        provider: &str,
        model: &str,
        attempt: usize,
        endpoint: Option<&str>,
    ) {
        head(b, "routed", id, ts_ms);
        b.extend_from_slice(b",\"provider\":");
        write_json_string(b, provider);
        b.extend_from_slice(b",\"model\":");
        write_json_string(b, model);
        b.extend_from_slice(format!(",\"attempt\":{attempt},\"endpoint\":").as_bytes());
        match endpoint {
            Some(e) => write_json_string(b, e),
            None => b.extend_from_slice(b"null"),
        }
        b.push(b'}');
    }

    /// `complete`: the request's log line (a JSON object, no newline) with
    /// `"type":"complete"` first.
    pub fn complete(b: &mut Vec<u8>, log_line: &[u8]) {
        b.extend_from_slice(b"{\"type\":\"complete\",");
        let inner = log_line.strip_prefix(b"{").unwrap_or(log_line);
        let inner = inner.strip_suffix(b"\n").unwrap_or(inner);
        b.extend_from_slice(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn events_are_json() {
        let build = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            f(&mut b);
            b
        };
        let s = build(&|b| event::start(b, "r-1", 5, "m\"x", 2, "/v1/chat/completions", true));
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["type"], "start");
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["in_flight"], 2);
        let c = build(&|b| event::classified(b, "r-1", 6, ["a", "b"].into_iter()));
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
        let r = build(&|b| event::routed(b, "r-1", 7, "p", "m", 2, None));
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(
            (v["attempt"].as_u64(), v["endpoint"].is_null()),
            (Some(2), true)
        );
        let done = build(&|b| event::complete(b, b"{\"id\":\"r-1\",\"status\":200}\n"));
        let v: serde_json::Value = serde_json::from_slice(&done).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["status"].as_u64()),
            (Some("complete"), Some(200))
        );
    }

    #[test]
    fn a_subscriber_gets_the_head_and_events() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        assert!(subscribe(server));
        assert!(active());
        let mut frames = b"data: ".to_vec();
        event::start(&mut frames, "r-9", 1, "m", 1, "/v1/messages", false);
        frames.extend_from_slice(b"\n\n");
        publish(frames);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let want: &[u8] = b"\"id\":\"r-9\"";
        while !got.windows(want.len()).any(|w| w == want) {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream"));
        assert!(text.contains("data: {\"type\":\"start\",\"id\":\"r-9\""));
    }
}
