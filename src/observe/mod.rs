//! Observability: the JSONL request log (docs/architecture.md, "The log line").
//!
//! Workers serialize each finished request into a line on their own core,
//! appended to the core's batch buffer ([`CoreLog`]). The batch is handed to
//! the log thread by the request that finds it 10 ms old (or large) — no timer
//! wakes a busy worker — and by a per-core flusher task after 20 ms when no
//! request comes; through a bounded queue with `try_send`: a full
//! queue drops the batch and counts its lines, a worker never waits for the
//! disk, and the log thread wakes once per batch rather than once per request.
//! The log thread writes batches and flushes when the queue runs dry.

pub mod feed;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Batches the queue holds before new ones are dropped.
const QUEUE_BATCHES: usize = 1024;

/// Counters shared by workers and the log thread. Only touched once per
/// request (written) or on the rare drop path, never in a loop.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// Batches queued for the log thread, and batches it has finished with
    /// (written and flushed, or dropped): equal when it is idle.
    pub batches_queued: AtomicU64,
    pub batches_done: AtomicU64,
}

/// A worker's handle to the log thread. Cloned once per worker.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<Vec<u8>>,
    counters: Arc<LogCounters>,
}

impl LogSender {
    /// Queue finished lines (each ending with `\n`). Never blocks.
    pub fn send(&self, lines: Vec<u8>) {
        match self.tx.try_send(lines) {
            Ok(()) => {
                self.counters.batches_queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                self.counters
                    .dropped
                    .fetch_add(count_lines(&b), Ordering::Relaxed);
            }
        }
    }

    pub fn counters(&self) -> &LogCounters {
        &self.counters
    }
}

/// Open (append, parents created) the log file and start the writer thread.
pub fn start(path: &Path) -> io::Result<LogSender> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_BATCHES);
    let counters = Arc::new(LogCounters::default());
    let thread_counters = counters.clone();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_loop(rx, file, &thread_counters))?;
    if let Ok(mut all) = COUNTERS.lock() {
        all.push(counters.clone());
    }
    Ok(LogSender { tx, counters })
}

/// Every log thread's counters (one more per reload), for [`wait_for_writer`].
static COUNTERS: std::sync::Mutex<Vec<Arc<LogCounters>>> = std::sync::Mutex::new(Vec::new());

/// After the workers handed over their last lines (a drain): wait, up to
/// `timeout`, until every log thread has written and flushed every batch
/// queued to it.
pub fn wait_for_writer(timeout: Duration) -> bool {
    let all: Vec<Arc<LogCounters>> = COUNTERS.lock().map(|c| c.clone()).unwrap_or_default();
    let deadline = std::time::Instant::now() + timeout;
    for c in all {
        while c.batches_done.load(Ordering::Acquire) < c.batches_queued.load(Ordering::Acquire) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    true
}

fn writer_loop(rx: Receiver<Vec<u8>>, file: File, counters: &LogCounters) {
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    // Blocks only this thread; ends when every worker's sender is gone.
    while let Ok(batch) = rx.recv() {
        let mut n = count_lines(&batch);
        let mut batches = 1;
        let mut ok = out.write_all(&batch).is_ok();
        while let Ok(batch) = rx.try_recv() {
            ok &= out.write_all(&batch).is_ok();
            n += count_lines(&batch);
            batches += 1;
        }
        ok &= out.flush().is_ok();
        if ok {
            counters.written.fetch_add(n, Ordering::Relaxed);
        } else {
            counters.dropped.fetch_add(n, Ordering::Relaxed);
        }
        counters.batches_done.fetch_add(batches, Ordering::Release);
    }
    let _ = out.flush();
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// How long a core keeps lines before handing them to the log thread when
/// requests keep coming (the hand-over rides on a request's end).
const BATCH_DELAY: Duration = Duration::from_millis(10);
/// When no request comes to carry the batch, the flusher task hands it over
/// after this long: a timer wake-up only for a core that went quiet.
const IDLE_FLUSH: Duration = Duration::from_millis(20);
/// A batch this large is handed over at once.
const BATCH_BYTES: usize = 64 * 1024;

/// One core's pending log lines (`!Send`: lives in the worker's `Core`).
pub struct CoreLog {
    sender: LogSender,
    buf: RefCell<Vec<u8>>,
    signal: BatchSignal,
    /// When the batch was last handed over.
    last: Cell<std::time::Instant>,
}

impl CoreLog {
    pub fn new(sender: LogSender) -> Self {
        CoreLog {
            sender,
            buf: RefCell::new(Vec::with_capacity(BATCH_BYTES)),
            signal: BatchSignal::default(),
            last: Cell::new(std::time::Instant::now()),
        }
    }

    /// Append one line, written by `f` into the batch buffer. The batch is
    /// handed over here when it is large or `BATCH_DELAY` old — so under
    /// load no timer wakes the worker for the log.
    pub fn append(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.borrow_mut();
        f(&mut buf);
        let now = std::time::Instant::now();
        if buf.len() >= BATCH_BYTES || now.duration_since(self.last.get()) >= BATCH_DELAY {
            let batch = std::mem::replace(&mut *buf, Vec::with_capacity(BATCH_BYTES));
            drop(buf);
            self.last.set(now);
            self.sender.send(batch);
        } else {
            self.signal.raise();
        }
    }

    /// Hand the pending lines to the log thread now (a worker that exits).
    pub fn flush_now(&self) {
        let batch = std::mem::take(&mut *self.buf.borrow_mut());
        if !batch.is_empty() {
            self.sender.send(batch);
        }
    }

    /// The core's flusher task: once lines wait, gives requests
    /// `IDLE_FLUSH` to carry them over, then hands over what is left. Runs
    /// for the worker's lifetime.
    pub async fn run_flusher(self: std::rc::Rc<Self>) {
        loop {
            self.signal.raised().await;
            monoio::time::sleep(IDLE_FLUSH).await;
            self.signal.lower();
            let batch = {
                let mut buf = self.buf.borrow_mut();
                if buf.is_empty() {
                    continue;
                }
                std::mem::replace(&mut *buf, Vec::with_capacity(BATCH_BYTES))
            };
            self.last.set(std::time::Instant::now());
            self.sender.send(batch);
        }
    }
}

/// What a worker's flusher task (log, feed) sleeps on: raised by the first
/// item of a batch, lowered when the flusher takes the batch.
#[derive(Default)]
pub struct BatchSignal {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl BatchSignal {
    /// Something waits: wake the flusher if it sleeps.
    pub fn raise(&self) {
        if !self.pending.replace(true)
            && let Some(w) = self.waker.take()
        {
            w.wake();
        }
    }

    pub fn lower(&self) {
        self.pending.set(false);
    }

    /// Resolves once raised.
    pub fn raised(&self) -> Raised<'_> {
        Raised(self)
    }
}

/// See [`BatchSignal::raised`].
pub struct Raised<'a>(&'a BatchSignal);

impl Future for Raised<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.pending.get() {
            Poll::Ready(())
        } else {
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// Builder of one JSON log line, written by hand into a reused buffer so the
/// request's `messages` can be embedded as the client's raw (already
/// validated) JSON without building a value tree.
pub struct LineWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> LineWriter<'a> {
    /// Start a line at the end of `out` (which may hold earlier lines).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        LineWriter { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        crate::json::write_json_string(self.out, v);
    }

    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    pub fn null(&mut self, k: &str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    pub fn u64(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    pub fn opt_u64(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.u64(k, v),
            None => self.null(k),
        }
    }

    pub fn f64(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.out, "{v}");
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    pub fn str_array<'s>(&mut self, k: &str, items: impl IntoIterator<Item = &'s str>) {
        self.key(k);
        self.out.push(b'[');
        for (i, s) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            crate::json::write_json_string(self.out, s);
        }
        self.out.push(b']');
    }

    /// Embed bytes that are already valid JSON (e.g. the request's `messages`).
    pub fn raw(&mut self, k: &str, json: &[u8]) {
        self.key(k);
        self.out.extend_from_slice(json);
    }

    /// Close the object and terminate the line.
    pub fn finish(self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_writer_builds_valid_json() {
        let mut buf = Vec::new();
        let mut w = LineWriter::new(&mut buf);
        w.u64("ts_ms", 1234567890123);
        w.u64("zero", 0);
        w.str("s", "a\"b\n");
        w.opt_str("none", None);
        w.str_array("tags", ["code", "vision"]);
        w.raw("messages", br#"[{"role":"user","content":"hi"}]"#);
        w.bool("stream", true);
        w.f64("f", 1.5);
        w.finish();
        assert!(buf.ends_with(b"}\n"));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["ts_ms"], 1234567890123u64);
        assert_eq!(v["zero"], 0);
        assert_eq!(v["s"], "a\"b\n");
        assert!(v["none"].is_null());
        assert_eq!(v["tags"][1], "vision");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["stream"], true);
        assert_eq!(v["f"], 1.5);
    }

    #[test]
    fn writer_thread_appends_lines() {
        let dir = std::env::temp_dir().join(format!("osr-log-{}", std::process::id()));
        let path = dir.join("sub/requests.jsonl");
        let tx = start(&path).unwrap();
        tx.send(b"{\"a\":1}\n".to_vec());
        tx.send(b"{\"a\":2}\n".to_vec());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log lines not written"
            );
            std::thread::yield_now();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
