//! `loadtest load`: an HTTP/1.1 load generator on monoio.
//!
//! Two loops:
//! - **open loop** (`--rate R`): requests are due at fixed times
//!   (`start + k / R`, from a timerfd, not monoio's millisecond wheel) and
//!   latency is measured from the time a request was *due*, not the time it
//!   was sent, so a stalled server is charged for the requests it delayed
//!   (coordinated-omission correction, as in wrk2). Keep-alive connections are
//!   opened as needed, up to `--max-conns`.
//! - **closed loop** (`--concurrency C`): C keep-alive connections, each
//!   sending its next request as soon as the previous one is answered.
//!
//! Latencies go into hdrhistograms in microseconds. Requests due (open loop)
//! or sent (closed loop) during the warmup are not recorded; the achieved
//! rate counts the successful completions inside the measured window.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Serialize;

use crate::args::Args;
use crate::http::{
    EventScan, Framing, Payload, StreamKind, Url, parse_response_head, post_request,
};
use crate::rt;

pub const USAGE: &str = "\
loadtest load --url URL [--rate R | --concurrency C] [--duration 10s] [--warmup 2s]
              [--stream] [--model M] [--body-file F] [--bodies-file F] [--threads 1] [--timeout 10s]
              [--max-conns 10000] [--cpu N] [--spin-us N] [--json]

Open loop at R requests/s (latency from the intended send time), or closed
loop at C concurrent keep-alive connections (default: concurrency 1).
URL without a path posts to /v1/chat/completions. --cpu pins the load
threads; --spin-us: open loop wakes this early and yields until a request is
due (default: a quarter of the period, at most 200 µs; 0 trusts the timer).
";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Rate(f64),
    Concurrency(usize),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: Url,
    pub mode: Mode,
    pub duration: Duration,
    pub warmup: Duration,
    pub stream: bool,
    /// The whole request (head and body), sent as is.
    pub request: Vec<u8>,
    /// More whole requests: with these, requests rotate through
    /// `request` and `more` in order (e.g. a set of system prompts).
    pub more: Vec<Vec<u8>>,
    pub threads: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_conns: usize,
    /// Pin every load thread to this CPU.
    pub cpu: Option<usize>,
    /// Open loop: wake this long before a request is due and yield until it
    /// is (None: a quarter of the period, at most 200 µs).
    pub spin: Option<Duration>,
}

/// The default request body.
pub fn default_body(model: &str, stream: bool) -> Vec<u8> {
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"m\"".into());
    format!(
        r#"{{"model":{model},"messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"Summarize in two sentences why a database index speeds up reads and what it costs on writes, with one example."}}]{}}}"#,
        if stream { r#","stream":true"# } else { "" }
    )
    .into_bytes()
}

/// Add `"stream":true` to a JSON object body that does not say `"stream"`.
pub fn with_stream(body: &[u8]) -> Vec<u8> {
    if crate::mock::stream_flag(body).is_some() {
        return body.to_vec();
    }
    match body.iter().position(|&b| b == b'{') {
        Some(i) => {
            let mut v = body[..=i].to_vec();
            let rest = &body[i + 1..];
            v.extend_from_slice(if rest.trim_ascii_start().starts_with(b"}") {
                b"\"stream\":true"
            } else {
                b"\"stream\":true,"
            });
            v.extend_from_slice(rest);
            v
        }
        None => body.to_vec(),
    }
}

pub fn main(argv: &[String]) -> Result<bool, String> {
    let a = Args::parse(
        argv,
        &[
            "url",
            "rate",
            "concurrency",
            "duration",
            "warmup",
            "model",
            "body-file",
            "bodies-file",
            "threads",
            "timeout",
            "max-conns",
            "cpu",
            "spin-us",
        ],
        &["stream", "json"],
    )?;
    let url = Url::parse(
        a.str("url").ok_or("--url is required")?,
        "/v1/chat/completions",
    )?;
    let mode = match (a.opt::<f64>("rate")?, a.opt::<usize>("concurrency")?) {
        (Some(_), Some(_)) => return Err("give --rate or --concurrency, not both".into()),
        (Some(r), None) if r > 0.0 && r.is_finite() => Mode::Rate(r),
        (Some(_), None) => return Err("--rate must be > 0".into()),
        (None, Some(c)) if c > 0 => Mode::Concurrency(c),
        (None, Some(_)) => return Err("--concurrency must be >= 1".into()),
        (None, None) => Mode::Concurrency(1),
    };
    let stream = a.flag("stream");
    let body = match a.str("body-file") {
        Some(f) => {
            let b = std::fs::read(f).map_err(|e| format!("cannot read {f}: {e}"))?;
            if stream { with_stream(&b) } else { b }
        }
        None => default_body(a.str("model").unwrap_or("bench-model"), stream),
    };
    let more = match a.str("bodies-file") {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {f}: {e}"))?;
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let b = l.as_bytes();
                    post_request(&url, &if stream { with_stream(b) } else { b.to_vec() })
                })
                .collect()
        }
        None => Vec::new(),
    };
    let (body, more) = match more.split_first() {
        // With a bodies file, its lines are the requests.
        Some((first, rest)) => (first.clone(), rest.to_vec()),
        None => (post_request(&url, &body), Vec::new()),
    };
    let cfg = LoadConfig {
        request: body,
        more,
        url,
        mode,
        duration: a.duration_or("duration", Duration::from_secs(10))?,
        warmup: a.duration_or("warmup", Duration::from_secs(2))?,
        stream,
        threads: a.parse_or("threads", 1usize)?.max(1),
        timeout: a.duration_or("timeout", Duration::from_secs(10))?,
        connect_timeout: Duration::from_secs(3),
        max_conns: a.parse_or("max-conns", 10_000usize)?.max(1),
        cpu: a.opt("cpu")?,
        spin: a.opt::<u64>("spin-us")?.map(Duration::from_micros),
    };
    if cfg.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    let report = run(&cfg, Instant::now() + Duration::from_millis(20))?;
    if a.flag("json") {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(report.errors_total == 0)
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pcts {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Pcts {
    pub fn of(h: &Histogram<u64>) -> Pcts {
        if h.is_empty() {
            return Pcts::default();
        }
        Pcts {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub stream: bool,
    pub threads: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Successful responses completed inside the measured window.
    pub ok: u64,
    pub achieved_rps: f64,
    pub latency_us: Pcts,
    /// Streams: from the intended send time to the first body byte.
    pub ttfb_us: Option<Pcts>,
    /// Streams: time between consecutive events as the client saw them.
    pub event_gap_us: Option<Pcts>,
    /// Open loop: from the time a request was due to the time its write was
    /// issued — the load generator's own scheduling delay (part of latency).
    pub send_lag_us: Option<Pcts>,
    /// Open loop: the send lag's P99 exceeded 1 ms — the generator (or its
    /// CPU) could not hold the schedule, so latencies include its own delay.
    pub generator_behind: bool,
    pub events_per_response: Option<f64>,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub connections_opened: u64,
    /// Open loop: requests whose due time passed but that were never sent
    /// before the end (the connection cap was reached). Counted as errors.
    pub not_sent: u64,
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mode = match (self.rate, self.concurrency) {
            (Some(r), _) => format!("open loop at {r} req/s"),
            (_, Some(c)) => format!("closed loop, concurrency {c}"),
            _ => String::new(),
        };
        s += &format!(
            "loadtest load {}: {mode}, {}, {:.1}s (+{:.1}s warmup), {} thread(s)\n",
            self.url,
            if self.stream { "streaming" } else { "plain" },
            self.duration_s,
            self.warmup_s,
            self.threads
        );
        s += &format!(
            "  requests     {} ok in window, {:.1} req/s achieved, {} connections opened\n",
            self.ok, self.achieved_rps, self.connections_opened
        );
        let line = |name: &str, p: &Pcts| {
            format!(
                "  {name:<12} p50 {:>7}  p90 {:>7}  p99 {:>7}  p99.9 {:>7}  max {:>8}  mean {:>9.1}  (n={})\n",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean, p.count
            )
        };
        s += &line("latency µs", &self.latency_us);
        if let Some(p) = &self.ttfb_us {
            s += &line("ttfb µs", p);
        }
        if let Some(p) = &self.event_gap_us {
            s += &line("ev. gap µs", p);
        }
        if let Some(p) = &self.send_lag_us {
            s += &line("send lag µs", p);
        }
        if self.generator_behind {
            s += "  WARNING      the load generator fell behind its schedule (send lag P99 > 1 ms):\n               latencies include its own delay; lower the rate or add --threads\n";
        }
        if let Some(e) = self.events_per_response {
            s += &format!("  events       {e:.1} per response\n");
        }
        if self.errors_total == 0 {
            s += "  errors       0\n";
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            s += &format!(
                "  errors       {} ({})\n",
                self.errors_total,
                kinds.join(", ")
            );
        }
        s
    }
}

/// Run the load; the first request is due at `start` and the measured
/// window is `[start + warmup, start + warmup + duration)`.
pub fn run(cfg: &LoadConfig, start: Instant) -> Result<Report, String> {
    rt::raise_nofile();
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let share = match cfg.mode {
            Mode::Rate(r) => Share::Rate {
                rate: r / cfg.threads as f64,
                phase: t as f64 / cfg.threads as f64,
            },
            Mode::Concurrency(c) => {
                Share::Conns(c / cfg.threads + usize::from(t < c % cfg.threads))
            }
        };
        let max_conns = (cfg.max_conns / cfg.threads).max(1);
        let cfg = cfg.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> Result<ThreadStats, String> {
                if let Some(cpu) = cfg.cpu {
                    rt::pin_current_thread(cpu)
                        .map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
                }
                let mut runtime =
                    rt::runtime().map_err(|e| format!("cannot build runtime: {e}"))?;
                runtime.block_on(thread_main(cfg, share, max_conns, start))
            })
            .map_err(|e| format!("cannot spawn: {e}"))?;
        handles.push(h);
    }
    let mut total = ThreadStats::new();
    for h in handles {
        let st = h.join().map_err(|_| "load thread panicked".to_string())??;
        total.merge(&st);
    }
    Ok(total.report(cfg))
}

#[derive(Debug, Clone, Copy)]
enum Share {
    Rate { rate: f64, phase: f64 },
    Conns(usize),
}

struct ThreadStats {
    lat: Histogram<u64>,
    ttfb: Histogram<u64>,
    gap: Histogram<u64>,
    lag: Histogram<u64>,
    ok: u64,
    events: u64,
    responses_with_events: u64,
    errors: BTreeMap<String, u64>,
    conns: u64,
    not_sent: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            lat: histogram(),
            ttfb: histogram(),
            gap: histogram(),
            lag: histogram(),
            ok: 0,
            events: 0,
            responses_with_events: 0,
            errors: BTreeMap::new(),
            conns: 0,
            not_sent: 0,
        }
    }

    fn merge(&mut self, o: &ThreadStats) {
        let _ = self.lat.add(&o.lat);
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.gap.add(&o.gap);
        let _ = self.lag.add(&o.lag);
        self.ok += o.ok;
        self.events += o.events;
        self.responses_with_events += o.responses_with_events;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.conns += o.conns;
        self.not_sent += o.not_sent;
    }

    fn error(&mut self, kind: &str) {
        if let Some(v) = self.errors.get_mut(kind) {
            *v += 1;
        } else {
            self.errors.insert(kind.to_string(), 1);
        }
    }

    fn report(&self, cfg: &LoadConfig) -> Report {
        let streamed = cfg.stream || self.responses_with_events > 0;
        Report {
            url: format!("http://{}{}", cfg.url.host_header(), cfg.url.path),
            mode: if matches!(cfg.mode, Mode::Rate(_)) {
                "open"
            } else {
                "closed"
            },
            rate: if let Mode::Rate(r) = cfg.mode {
                Some(r)
            } else {
                None
            },
            concurrency: if let Mode::Concurrency(c) = cfg.mode {
                Some(c)
            } else {
                None
            },
            stream: cfg.stream,
            threads: cfg.threads,
            duration_s: cfg.duration.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            ok: self.ok,
            achieved_rps: (self.ok as f64 / cfg.duration.as_secs_f64() * 10.0).round() / 10.0,
            latency_us: Pcts::of(&self.lat),
            ttfb_us: streamed.then(|| Pcts::of(&self.ttfb)),
            event_gap_us: streamed.then(|| Pcts::of(&self.gap)),
            send_lag_us: matches!(cfg.mode, Mode::Rate(_)).then(|| Pcts::of(&self.lag)),
            generator_behind: matches!(cfg.mode, Mode::Rate(_))
                && !self.lag.is_empty()
                && self.lag.value_at_quantile(0.99) > 1000,
            events_per_response: (self.responses_with_events > 0).then(|| {
                (self.events as f64 / self.responses_with_events as f64 * 10.0).round() / 10.0
            }),
            errors_total: self.errors.values().sum(),
            errors: self.errors.clone(),
            connections_opened: self.conns,
            not_sent: self.not_sent,
        }
    }
}

/// State shared by the tasks of one load thread (single-threaded: `Rc`).
struct Shared {
    addr: std::net::SocketAddr,
    requests: Vec<Rc<Vec<u8>>>,
    turn: Cell<usize>,
    timeout: Duration,
    connect_timeout: Duration,
    window_start: Instant,
    window_end: Instant,
    stats: RefCell<ThreadStats>,
    /// Open loop: due times waiting for a connection.
    queue: RefCell<VecDeque<Instant>>,
    idle: RefCell<Vec<Waker>>,
    tasks: Cell<usize>,
    stop: Cell<bool>,
}

async fn thread_main(
    cfg: LoadConfig,
    share: Share,
    max_conns: usize,
    start: Instant,
) -> Result<ThreadStats, String> {
    let window_start = start + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let sh = Rc::new(Shared {
        addr: cfg.url.addr,
        requests: std::iter::once(&cfg.request)
            .chain(&cfg.more)
            .map(|r| Rc::new(r.clone()))
            .collect(),
        turn: Cell::new(0),
        timeout: cfg.timeout,
        connect_timeout: cfg.connect_timeout,
        window_start,
        window_end,
        stats: RefCell::new(ThreadStats::new()),
        queue: RefCell::new(VecDeque::new()),
        idle: RefCell::new(Vec::new()),
        tasks: Cell::new(0),
        stop: Cell::new(false),
    });
    match share {
        Share::Conns(0) => {}
        Share::Conns(n) => {
            let now = Instant::now();
            if start > now {
                monoio::time::sleep(start - now).await;
            }
            for _ in 0..n {
                sh.tasks.set(sh.tasks.get() + 1);
                monoio::spawn(closed_task(sh.clone()));
            }
            let now = Instant::now();
            if window_end > now {
                monoio::time::sleep(window_end - now).await;
            }
            sh.stop.set(true);
        }
        Share::Rate { rate, phase } => {
            let period = Duration::from_secs_f64(1.0 / rate);
            let first = start + period.mul_f64(phase);
            let spin = cfg
                .spin
                .unwrap_or_else(|| (period / 4).min(Duration::from_micros(200)));
            // A spawned task, not this (block_on) future: only tasks let the
            // runtime reap IO completions while the schedule spins.
            monoio::spawn(schedule(sh.clone(), first, period, spin, max_conns)).await?;
        }
    }
    // Let requests in flight finish (each is bounded by the timeout).
    let grace = Instant::now() + cfg.timeout + Duration::from_millis(200);
    while sh.tasks.get() > 0 && Instant::now() < grace {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut st = sh.stats.replace(ThreadStats::new());
    let left = sh.queue.borrow().len() as u64;
    if left > 0 {
        st.not_sent += left;
        *st.errors.entry("not_sent".into()).or_default() += left;
    }
    if sh.tasks.get() > 0 {
        *st.errors.entry("unfinished".into()).or_default() += sh.tasks.get() as u64;
    }
    Ok(st)
}

/// Open loop: the schedule. The timer is armed `spin` early (this VM's
/// timer interrupts arrive tens of µs late) and the rest is spent yielding to
/// the runtime until the exact due time, so requests leave on time.
async fn schedule(
    sh: Rc<Shared>,
    first: Instant,
    period: Duration,
    spin: Duration,
    max_conns: usize,
) -> Result<(), String> {
    let mut ticker = rt::Ticker::new(first.checked_sub(spin).unwrap_or(first), period);
    let mut k: u64 = 0;
    'ticks: loop {
        let n = ticker.next().await.map_err(|e| format!("timer: {e}"))?;
        for _ in 0..n {
            let due = first + period.mul_f64(k as f64);
            k += 1;
            if due >= sh.window_end {
                break 'ticks;
            }
            while Instant::now() < due {
                // Let the runtime reap completions, and another process on
                // this CPU (the mock, in `compare`) run if it is waiting.
                rt::yield_now().await;
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            dispatch(&sh, due, max_conns);
        }
    }
    sh.stop.set(true);
    for w in sh.idle.borrow_mut().drain(..) {
        w.wake();
    }
    Ok(())
}

/// Open loop: hand a due request to an idle connection task, or open one.
fn dispatch(sh: &Rc<Shared>, due: Instant, max_conns: usize) {
    sh.queue.borrow_mut().push_back(due);
    let waker = sh.idle.borrow_mut().pop();
    match waker {
        Some(w) => w.wake(),
        None if sh.tasks.get() < max_conns => {
            sh.tasks.set(sh.tasks.get() + 1);
            monoio::spawn(open_task(sh.clone()));
        }
        // Every connection is busy: the request waits in the queue, its
        // latency still counted from `due`.
        None => {}
    }
}

async fn open_task(sh: Rc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut scratch = Scratch::default();
    loop {
        let due = poll_fn(|cx| {
            if let Some(d) = sh.queue.borrow_mut().pop_front() {
                return Poll::Ready(Some(d));
            }
            if sh.stop.get() {
                return Poll::Ready(None);
            }
            sh.idle.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(due) = due else { break };
        one_request(&sh, &mut conn, due, &mut scratch).await;
    }
    sh.tasks.set(sh.tasks.get() - 1);
}

async fn closed_task(sh: Rc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut scratch = Scratch::default();
    while !sh.stop.get() {
        let t0 = Instant::now();
        if t0 >= sh.window_end {
            break;
        }
        one_request(&sh, &mut conn, t0, &mut scratch).await;
    }
    sh.tasks.set(sh.tasks.get() - 1);
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Default)]
struct Scratch {
    gaps: Vec<u64>,
}

/// What one exchange produced.
struct Outcome {
    status: u16,
    first_body: Option<Instant>,
    end: Instant,
    keep_alive: bool,
    event_stream: bool,
    events: u32,
    terminal: bool,
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Connect,
    Write,
    Read,
    Closed,
    Truncated,
    Parse,
    Timeout,
}

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::Connect => "connect",
            Fail::Write => "write",
            Fail::Read => "read",
            Fail::Closed => "closed_before_response",
            Fail::Truncated => "truncated",
            Fail::Parse => "bad_response",
            Fail::Timeout => "timeout",
        }
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

async fn one_request(sh: &Shared, conn: &mut Option<Conn>, t0: Instant, scratch: &mut Scratch) {
    scratch.gaps.clear();
    let lag = Instant::now().saturating_duration_since(t0);
    let result =
        match monoio::time::timeout(sh.timeout, exchange(sh, conn, &mut scratch.gaps)).await {
            Ok(r) => r,
            Err(_) => Err(Fail::Timeout),
        };
    let recorded = t0 >= sh.window_start && t0 < sh.window_end;
    let mut st = sh.stats.borrow_mut();
    if recorded {
        st.lag.saturating_record(us(lag).max(1));
    }
    match result {
        Ok(o) => {
            if !o.keep_alive {
                *conn = None;
            }
            if o.status != 200 {
                st.error(&format!("status_{}", o.status));
            } else if o.event_stream && !o.terminal {
                // Complete framing but no terminal event: the stream was cut.
                st.error(Fail::Truncated.name());
            } else {
                if o.end >= sh.window_start && o.end < sh.window_end {
                    st.ok += 1;
                }
                if recorded {
                    st.lat
                        .saturating_record(us(o.end.saturating_duration_since(t0)).max(1));
                    if let Some(fb) = o.first_body {
                        st.ttfb
                            .saturating_record(us(fb.saturating_duration_since(t0)).max(1));
                    }
                    for &g in &scratch.gaps {
                        st.gap.saturating_record(g.max(1));
                    }
                    if o.event_stream {
                        st.events += o.events as u64;
                        st.responses_with_events += 1;
                    }
                }
            }
        }
        Err(f) => {
            // A connection whose exchange failed or was abandoned is closed.
            *conn = None;
            st.error(f.name());
        }
    }
}

async fn read_more(stream: &mut TcpStream, mut buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(16384);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (r, slice): (_, SliceMut<Vec<u8>>) = stream.read(buf.slice_mut(len..cap)).await;
    (r, slice.into_inner())
}

async fn exchange(
    sh: &Shared,
    conn: &mut Option<Conn>,
    gaps: &mut Vec<u64>,
) -> Result<Outcome, Fail> {
    if conn.is_none() {
        let s = match monoio::time::timeout(sh.connect_timeout, TcpStream::connect_addr(sh.addr))
            .await
        {
            Ok(Ok(s)) => s,
            _ => return Err(Fail::Connect),
        };
        let _ = s.set_nodelay(true);
        sh.stats.borrow_mut().conns += 1;
        *conn = Some(Conn {
            stream: s,
            buf: Vec::with_capacity(16384),
        });
    }
    let Some(c) = conn.as_mut() else {
        return Err(Fail::Connect);
    };
    let turn = sh.turn.get();
    sh.turn.set(turn.wrapping_add(1));
    let request = sh.requests[turn % sh.requests.len()].clone();
    let (r, _) = c.stream.write_all(request).await;
    if r.is_err() {
        return Err(Fail::Write);
    }
    c.buf.clear();
    let mut buf = std::mem::take(&mut c.buf);
    let result = read_response(&mut c.stream, &mut buf, gaps).await;
    c.buf = buf;
    result
}

async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    gaps: &mut Vec<u64>,
) -> Result<Outcome, Fail> {
    // The head (skipping 1xx interim responses).
    let head = loop {
        if !buf.is_empty() {
            match parse_response_head(buf) {
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    buf.drain(..h.head_len);
                    continue;
                }
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => return Err(Fail::Parse),
            }
        }
        let had = !buf.is_empty();
        let (r, b) = read_more(stream, std::mem::take(buf)).await;
        *buf = b;
        match r {
            Ok(0) => return Err(if had { Fail::Truncated } else { Fail::Closed }),
            Ok(_) => {}
            Err(_) => return Err(if had { Fail::Read } else { Fail::Closed }),
        }
    };
    let mut body = Body {
        payload: Payload::new(head.framing),
        scan: EventScan::new(head.kind),
        first_body: None,
        last_event: None,
    };
    let mut now = Instant::now();
    let mut done = body.feed(&buf[head.head_len..], now, gaps)?;
    while !done {
        buf.clear();
        let (r, b) = read_more(stream, std::mem::take(buf)).await;
        *buf = b;
        now = Instant::now();
        match r {
            Ok(0) if body.payload.framing == Framing::UntilClose => break,
            Ok(0) => return Err(Fail::Truncated),
            Ok(_) => {}
            Err(_) => return Err(Fail::Truncated),
        }
        done = body.feed(buf, now, gaps)?;
    }
    Ok(Outcome {
        status: head.status,
        first_body: body.first_body,
        end: now,
        keep_alive: head.keep_alive,
        event_stream: head.kind != StreamKind::NotStream,
        events: body.scan.events,
        terminal: body.scan.terminal,
    })
}

struct Body {
    payload: Payload,
    scan: EventScan,
    first_body: Option<Instant>,
    last_event: Option<Instant>,
}

impl Body {
    /// Feed received bytes; returns whether the body is complete.
    fn feed(&mut self, data: &[u8], now: Instant, gaps: &mut Vec<u64>) -> Result<bool, Fail> {
        let mut payload = std::mem::replace(&mut self.payload, Payload::new(Framing::None));
        let r = payload.feed(data, |d| self.on_data(d, now, gaps));
        self.payload = payload;
        r.map_err(|_| Fail::Parse)
    }

    fn on_data(&mut self, d: &[u8], now: Instant, gaps: &mut Vec<u64>) {
        if d.is_empty() {
            return;
        }
        if self.first_body.is_none() {
            self.first_body = Some(now);
        }
        let last = &mut self.last_event;
        self.scan.feed(d, || {
            if let Some(prev) = *last {
                gaps.push(us(now.saturating_duration_since(prev)));
            }
            *last = Some(now);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{self, MockConfig};

    /// The load generator against the mock, every API, plain and streamed,
    /// open and closed loop: no errors (never timings).
    #[test]
    fn load_against_mock_has_no_errors() {
        let (addr, _threads) = mock::start(MockConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            events: 3,
            interval: Duration::ZERO,
            first_byte: Duration::ZERO,
        })
        .unwrap();
        let cases = [
            ("/v1/chat/completions", false, Mode::Concurrency(2)),
            ("/v1/chat/completions", true, Mode::Rate(300.0)),
            ("/v1/responses", true, Mode::Concurrency(1)),
            ("/v1/messages", true, Mode::Concurrency(1)),
            ("/v1/messages", false, Mode::Rate(300.0)),
            ("/api/chat", true, Mode::Concurrency(1)),
        ];
        for (path, stream, mode) in cases {
            let url = Url::parse(&format!("http://{addr}{path}"), "/").unwrap();
            let cfg = LoadConfig {
                request: post_request(&url, &default_body("m", stream)),
                more: Vec::new(),
                url,
                mode,
                duration: Duration::from_millis(200),
                warmup: Duration::from_millis(50),
                stream,
                threads: 1,
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(3),
                max_conns: 100,
                cpu: None,
                spin: None,
            };
            let r = run(&cfg, Instant::now()).unwrap();
            assert_eq!(r.errors_total, 0, "{path} stream={stream}: {:?}", r.errors);
            assert!(r.ok > 0, "{path} stream={stream}");
            if stream {
                assert!(r.events_per_response.unwrap() >= 4.0, "{path}");
            }
        }
    }

    /// A server answering every request with `answer` (then closing when
    /// `close`), on a plain thread.
    fn canned_server(answer: &'static [u8], close: bool) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(answer).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn short_load(addr: std::net::SocketAddr, stream: bool) -> Report {
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions"), "/").unwrap();
        let cfg = LoadConfig {
            request: post_request(&url, &default_body("m", stream)),
            more: Vec::new(),
            url,
            mode: Mode::Concurrency(1),
            duration: Duration::from_millis(100),
            warmup: Duration::ZERO,
            stream,
            threads: 1,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_conns: 10,
            cpu: None,
            spin: None,
        };
        run(&cfg, Instant::now()).unwrap()
    }

    #[test]
    fn errors_are_classified() {
        let e500 = canned_server(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}", false);
        let r = short_load(e500, false);
        assert!(
            r.errors.get("status_500").copied().unwrap_or(0) > 0,
            "{:?}",
            r.errors
        );
        assert_eq!(r.ok, 0);
        // A complete chunked stream whose last event is not `[DONE]`.
        let cut = canned_server(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\na\r\ndata: {}\n\n\r\n0\r\n\r\n",
            false,
        );
        let r = short_load(cut, true);
        assert!(
            r.errors.get("truncated").copied().unwrap_or(0) > 0,
            "{:?}",
            r.errors
        );
        // The connection closes in the middle of the body.
        let eof = canned_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\"",
            true,
        );
        let r = short_load(eof, false);
        assert!(
            r.errors.get("truncated").copied().unwrap_or(0) > 0,
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn stream_added_to_bodies() {
        assert_eq!(
            with_stream(br#"{"model":"m"}"#),
            br#"{"stream":true,"model":"m"}"#
        );
        assert_eq!(with_stream(b"{}"), br#"{"stream":true}"#);
        assert_eq!(with_stream(br#"{"stream":false}"#), br#"{"stream":false}"#);
        let b = default_body("x", true);
        serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        assert_eq!(crate::mock::stream_flag(&b), Some(true));
    }
}
