//! `loadtest streams`: many long, slow streams held open at once.
//!
//! The mock streams one event every `--interval-ms`; S streams are opened
//! over `--ramp-s` (start `i` at `ramp · i / S`, the ramp being a whole
//! number of intervals, so the events of all streams are spread uniformly
//! over each interval), each on its own connection, first straight to the
//! mock ("direct"), then through the router (one worker, pinned to its own
//! CPU). Every stream lasts the ramp and the hold window after it, so during
//! the hold all S streams are open; the router's RSS is read before the ramp
//! (idle) and during the hold (at S streams), and its CPU time over the
//! hold. Per stream the client records the gap between consecutive event
//! arrivals (hdrhistogram, µs, 5 significant digits: a few µs of resolution
//! at one second) and classifies failures (connect, status, truncated,
//! timeout…).
//!
//! The generator is one monoio runtime with one task per stream and a 2 KB
//! read buffer per stream; it runs on the load CPU with the mock.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Serialize;

use crate::args::Args;
use crate::compare::{MOCK_READY, Proc, ROUTER_READY, router_config_with, spawn_listening};
use crate::http::{EventScan, Framing, Payload, Url, parse_response_head, post_request};
use crate::load::{Pcts, default_body};
use crate::{procfs, rt};

pub const USAGE: &str = "\
loadtest streams --router-bin PATH [--streams 10000] [--interval-ms 1000] [--events N]
                 [--ramp-s 10] [--hold-s 30] [--router-cpu N] [--load-cpu N]
                 [--direct-only] [--keep] [--json]

Holds --streams concurrent streams (one connection each, one event every
--interval-ms), first directly against the mock, then through the router
(one worker, pinned to its own CPU; the mock and this generator share the
other). Streams start over --ramp-s (rounded up to whole intervals, so events
are spread evenly over each interval) and stay open through --hold-s after
the ramp: --events defaults to enough events for that. Reports the streams
held, the gap between event arrivals (P50/P99/P99.9/max, direct and via the
router, and the difference), errors by kind, the router's RSS idle and at
full concurrency (memory per stream), and its CPU over the hold (% of one
core, µs per event). Exits 1 if any stream failed or the router exited.
--direct-only measures the mock alone (no --router-bin needed); --keep keeps
the temporary directory (router config, logs).
";

/// Read buffer per stream (the response head and every read of the body).
const BUF: usize = 2048;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Options {
    router_bin: Option<PathBuf>,
    streams: usize,
    interval: Duration,
    events: usize,
    ramp: Duration,
    hold: Duration,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
    direct_only: bool,
    keep: bool,
    json: bool,
}

fn options(argv: &[String]) -> Result<Options, String> {
    let a = Args::parse(
        argv,
        &[
            "router-bin",
            "streams",
            "interval-ms",
            "events",
            "ramp-s",
            "hold-s",
            "router-cpu",
            "load-cpu",
        ],
        &["direct-only", "keep", "json"],
    )?;
    let direct_only = a.flag("direct-only");
    let router_bin = match a.str("router-bin") {
        Some(p) => Some(fs::canonicalize(p).map_err(|e| format!("{p}: {e}"))?),
        None if direct_only => None,
        None => return Err("--router-bin is required (or --direct-only)".into()),
    };
    let streams: usize = a.parse_or("streams", 10_000)?;
    let interval_ms: f64 = a.parse_or("interval-ms", 1000.0)?;
    let ramp_s: f64 = a.parse_or("ramp-s", 10.0)?;
    let hold_s: f64 = a.parse_or("hold-s", 30.0)?;
    if streams == 0 {
        return Err("--streams must be >= 1".into());
    }
    if !(interval_ms.is_finite() && interval_ms >= 1.0) {
        return Err("--interval-ms must be >= 1".into());
    }
    if !(ramp_s.is_finite() && ramp_s >= 0.0 && hold_s.is_finite() && hold_s > 0.0) {
        return Err("--ramp-s must be >= 0 and --hold-s > 0".into());
    }
    let interval = Duration::from_secs_f64(interval_ms / 1e3);
    // A whole number of intervals (at least one): start offsets, and so
    // event times, are then uniform modulo the interval.
    let intervals = (ramp_s * 1e3 / interval_ms).ceil().max(1.0);
    let ramp = interval.mul_f64(intervals);
    let hold = Duration::from_secs_f64(hold_s);
    // The first stream must outlive the hold window by one interval.
    let needed =
        ((ramp + interval + hold).as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 2;
    let events = match a.opt::<usize>("events")? {
        Some(0) => return Err("--events must be >= 1".into()),
        Some(n) => {
            if n < needed {
                eprintln!(
                    "[streams] warning: --events {n} is fewer than the {needed} needed to keep every stream open through the hold: the first streams end early"
                );
            }
            n
        }
        None => needed,
    };
    Ok(Options {
        router_bin,
        streams,
        interval,
        events,
        ramp,
        hold,
        router_cpu: a.opt("router-cpu")?,
        load_cpu: a.opt("load-cpu")?,
        direct_only,
        keep: a.flag("keep"),
        json: a.flag("json"),
    })
}

fn progress(msg: &str) {
    eprintln!("[streams] {msg}");
}

pub fn main(argv: &[String]) -> Result<bool, String> {
    let o = options(argv)?;
    // Descriptors: S sockets here and in the mock; the router holds two
    // per stream (client, upstream) and raises its own limit, but inherits
    // ours, so ask for enough for it too where privileged.
    let own = raise_nofile_to((3 * o.streams + 1024) as u64);
    if own < (o.streams + 256) as u64 {
        return Err(format!(
            "the open-files limit is {own}, {} streams need {}: raise it (ulimit -n / -Hn)",
            o.streams,
            o.streams + 256
        ));
    }
    let cpus = rt::allowed_cpus();
    let (router_cpu, load_cpu) = if cpus.len() >= 2 {
        (
            Some(o.router_cpu.unwrap_or(cpus[0])),
            Some(o.load_cpu.unwrap_or(cpus[1])),
        )
    } else {
        progress("fewer than 2 CPUs available: nothing is pinned");
        (None, None)
    };
    if let Some(c) = load_cpu {
        rt::pin_current_thread(c).map_err(|e| format!("cannot pin to CPU {c}: {e}"))?;
    }
    let tmp = std::env::temp_dir().join(format!("loadtest-streams-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    // The children (Proc) are stopped by pid when `run` returns, error or not.
    let result = run(&o, &tmp, router_cpu, load_cpu, own);
    if o.keep {
        eprintln!("kept {}", tmp.display());
    } else {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Raise RLIMIT_NOFILE to `want` (possible with CAP_SYS_RESOURCE), else to
/// the hard limit; returns the soft limit in force.
fn raise_nofile_to(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return lim.rlim_cur as u64;
        }
        let more = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: lim.rlim_max.max(want as libc::rlim_t),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &more) == 0 {
            return want;
        }
        rt::raise_nofile();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur as u64
    }
}

/// The soft open-files limit of another process, from `/proc/PID/limits`.
fn nofile_of(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a child is still running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

#[derive(Debug, Serialize)]
struct Limits {
    loadtest: u64,
    mock: Option<u64>,
    router: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Added {
    p50: i64,
    p99: i64,
    p999: i64,
    max: i64,
}

#[derive(Debug, Serialize)]
struct Output {
    streams: usize,
    interval_ms: f64,
    events_per_stream: usize,
    ramp_s: f64,
    hold_s: f64,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
    driver: &'static str,
    open_files_limit: Limits,
    direct: Phase,
    router: Option<Phase>,
    /// Router − direct, event gap, same percentile (µs).
    added_gap_us: Option<Added>,
    router_failure: Option<String>,
    /// Lines of the router's stderr saying it ran out of descriptors
    /// (`accept failed: Too many open files`…).
    router_emfile_lines: usize,
    errors_total: u64,
}

/// What one phase (direct or via the router) measured.
#[derive(Debug, Serialize)]
struct Phase {
    target: String,
    /// The process whose RSS and CPU are reported (the mock for `direct`).
    pid: u32,
    /// Most streams open at once.
    max_open: usize,
    /// Fewest streams open at any sample during the hold.
    held: usize,
    completed_ok: u64,
    errors_total: u64,
    errors: BTreeMap<String, u64>,
    /// Gap between consecutive event arrivals on a stream (µs).
    event_gap_us: Pcts,
    /// From the start of the connect to the first event (µs).
    first_event_us: Pcts,
    events: u64,
    events_in_hold: u64,
    rss_idle_kb: u64,
    rss_hold_start_kb: u64,
    rss_hold_end_kb: u64,
    rss_after_kb: u64,
    /// Streams open when `rss_hold_end_kb` was read.
    open_at_rss: usize,
    /// (RSS at the end of the hold − RSS idle) / streams open then.
    kb_per_stream: Option<f64>,
    /// CPU of the target over the hold, in % of one core.
    target_cpu_pct: f64,
    target_cpu_us_per_event: Option<f64>,
    /// CPU of this process (the generator) and of the mock over the hold.
    loadtest_cpu_pct: f64,
    mock_cpu_pct: f64,
    /// CPU used by every other process on the machine over the hold.
    others_cpu_pct: f64,
    /// Time the target's threads were runnable but waiting for a CPU
    /// (`/proc/PID/task/*/schedstat`), over the whole phase and over the
    /// hold: event-gap tails on a busy machine are mostly this.
    target_runq_wait_ms: f64,
    target_runq_wait_hold_ms: f64,
}

fn run(
    o: &Options,
    tmp: &Path,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
    own_nofile: u64,
) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let interval_ms = o.interval.as_secs_f64() * 1e3;
    let mut cmd = Command::new(&exe);
    cmd.args(["mock", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--events", &o.events.to_string()])
        .args(["--interval-ms", &interval_ms.to_string()]);
    let (mock, mock_addr) = spawn_listening(
        "mock",
        cmd,
        load_cpu,
        &tmp.join("mock.log"),
        MOCK_READY,
        Duration::from_secs(10),
    )?;
    progress(&format!(
        "mock on {mock_addr} (pid {}, CPU {}), {} events {interval_ms} ms apart",
        mock.pid(),
        cpu_name(load_cpu),
        o.events
    ));

    let mut router: Option<(Proc, SocketAddr)> = None;
    if let Some(bin) = o.router_bin.as_ref().filter(|_| !o.direct_only) {
        let config = tmp.join("router.toml");
        let provider = format!("base_url = \"http://{mock_addr}/v1\"");
        fs::write(&config, router_config_with(&provider, tmp))
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(&config).current_dir(tmp);
        let (p, addr) = spawn_listening(
            "router",
            cmd,
            router_cpu,
            &tmp.join("router.log"),
            ROUTER_READY,
            Duration::from_secs(15),
        )?;
        progress(&format!(
            "router on {addr} (pid {}, CPU {}, one worker)",
            p.pid(),
            cpu_name(router_cpu)
        ));
        router = Some((p, addr));
    }
    let limits = Limits {
        loadtest: own_nofile,
        mock: nofile_of(mock.pid()),
        router: router.as_ref().and_then(|(p, _)| nofile_of(p.pid())),
    };
    if let Some(l) = limits.mock.filter(|&l| l < (o.streams + 64) as u64) {
        progress(&format!(
            "warning: the mock may open {l} files, fewer than the streams"
        ));
    }
    // The router holds two descriptors per stream (client, upstream: 2,011
    // open at 1,000 streams) plus about ten of its own.
    if let Some(l) = limits.router.filter(|&l| l < (2 * o.streams + 16) as u64) {
        progress(&format!(
            "warning: the router may open {l} files and needs 2 per stream: \
             expect failures beyond about {} streams",
            l.saturating_sub(12) / 2
        ));
    }

    let mock_pid = mock.pid();
    let direct = phase(o, "direct", mock_addr, mock_pid, mock_pid, load_cpu)?;
    let mut failure = None;
    let via = match &router {
        Some((p, addr)) => {
            std::thread::sleep(Duration::from_millis(500));
            warm(*addr);
            std::thread::sleep(Duration::from_millis(300));
            let r = phase(o, "router", *addr, p.pid(), mock_pid, load_cpu)?;
            if !alive(p.pid()) {
                failure = Some(format!("the router (pid {}) exited", p.pid()));
            }
            Some(r)
        }
        None => None,
    };
    let added_gap_us = via.as_ref().map(|r| {
        let (a, b) = (&r.event_gap_us, &direct.event_gap_us);
        Added {
            p50: r_i64(a.p50) - r_i64(b.p50),
            p99: r_i64(a.p99) - r_i64(b.p99),
            p999: r_i64(a.p999) - r_i64(b.p999),
            max: r_i64(a.max) - r_i64(b.max),
        }
    });
    let errors_total = direct.errors_total + via.as_ref().map_or(0, |r| r.errors_total);
    let router_emfile_lines = fs::read_to_string(tmp.join("router.log"))
        .map_or(0, |l| l.matches("Too many open files").count());
    let out = Output {
        streams: o.streams,
        interval_ms,
        events_per_stream: o.events,
        ramp_s: o.ramp.as_secs_f64(),
        hold_s: o.hold.as_secs_f64(),
        router_cpu,
        load_cpu,
        driver: if rt::uring() { "io_uring" } else { "epoll" },
        open_files_limit: limits,
        direct,
        router: via,
        added_gap_us,
        router_failure: failure,
        router_emfile_lines,
        errors_total,
    };
    // Stop the children (by pid) before printing.
    drop(router);
    drop(mock);
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&out));
    }
    Ok(out.errors_total == 0 && out.router_failure.is_none())
}

fn r_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn cpu_name(c: Option<usize>) -> String {
    c.map_or("any".into(), |c| c.to_string())
}

/// A few plain requests through the router before its idle RSS is read, so
/// one-time setup (first connection, log file, pools) is not counted per
/// stream.
fn warm(addr: SocketAddr) {
    let body = default_body("bench-model", false);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    for _ in 0..20 {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(&req);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
        }
    }
}

/// When things happen in one phase.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    /// The first stream starts.
    t0: Instant,
    ramp: Duration,
    hold_start: Instant,
    hold_end: Instant,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One phase: S streams against `addr`; RSS and CPU of `pid` sampled.
fn phase(
    o: &Options,
    name: &str,
    addr: SocketAddr,
    pid: u32,
    mock_pid: u32,
    load_cpu: Option<usize>,
) -> Result<Phase, String> {
    let t0 = Instant::now() + Duration::from_millis(200);
    let hold_start = t0 + o.ramp + o.interval;
    let tl = Timeline {
        t0,
        ramp: o.ramp,
        hold_start,
        hold_end: hold_start + o.hold,
    };
    let stream_len = o.interval * (o.events.saturating_sub(1) as u32);
    progress(&format!(
        "{name}: {} streams over {:.1} s, hold {:.1} s, streams last {:.1} s",
        o.streams,
        o.ramp.as_secs_f64(),
        o.hold.as_secs_f64(),
        stream_len.as_secs_f64()
    ));
    let rss_idle_kb = procfs::rss_kb(pid).unwrap_or(0);
    let wait_start = runq_wait_ns(pid);
    let open = Arc::new(AtomicUsize::new(0));
    let url = Url::parse(&format!("http://{addr}/v1/chat/completions"), "/")?;
    let request = post_request(&url, &default_body("bench-model", true));
    let read_timeout = o.interval * 3 + Duration::from_secs(5);
    let cfg = GenConfig {
        addr,
        request,
        streams: o.streams,
        tl,
        read_timeout,
        // Connect, the whole stream at its pace, and slack for delays.
        stream_timeout: CONNECT_TIMEOUT + stream_len + stream_len / 2 + read_timeout,
        open: open.clone(),
    };
    let generator = std::thread::Builder::new()
        .name("streams-gen".into())
        .spawn(move || -> Result<GenResult, String> {
            if let Some(c) = load_cpu {
                rt::pin_current_thread(c).map_err(|e| format!("cannot pin to CPU {c}: {e}"))?;
            }
            let mut runtime = rt::runtime().map_err(|e| format!("cannot build runtime: {e}"))?;
            Ok(runtime.block_on(generate(cfg)))
        })
        .map_err(|e| format!("cannot spawn the generator: {e}"))?;

    // Sample the target during the hold (this thread; the generator runs
    // on its own).
    let me = std::process::id();
    sleep_until(tl.hold_start);
    let rss_hold_start_kb = procfs::rss_kb(pid).unwrap_or(0);
    // One process each (`tree_cpu_ns(me)` would include the children).
    let cpu = || {
        (
            procfs::cpu_ns(pid).unwrap_or(0),
            procfs::cpu_ns(me).unwrap_or(0),
            procfs::cpu_ns(mock_pid).unwrap_or(0),
            procfs::machine_busy_ns(),
        )
    };
    let a = cpu();
    let wait_a = runq_wait_ns(pid);
    let a_at = Instant::now();
    let mut held = open.load(Ordering::Relaxed);
    while Instant::now() + Duration::from_millis(250) < tl.hold_end {
        std::thread::sleep(Duration::from_millis(250));
        held = held.min(open.load(Ordering::Relaxed));
    }
    sleep_until(tl.hold_end);
    let b = cpu();
    let wait_b = runq_wait_ns(pid);
    let window_ns = a_at.elapsed().as_nanos().max(1) as f64;
    let open_at_rss = open.load(Ordering::Relaxed);
    held = held.min(open_at_rss);
    let rss_hold_end_kb = procfs::rss_kb(pid).unwrap_or(0);
    progress(&format!(
        "{name}: {open_at_rss} streams open at the end of the hold; waiting for them to finish"
    ));
    let g = generator
        .join()
        .map_err(|_| "the generator panicked".to_string())??;
    std::thread::sleep(Duration::from_millis(300));
    let rss_after_kb = procfs::rss_kb(pid).unwrap_or(0);
    let wait_end = runq_wait_ns(pid);
    let ms = |ns: u64| (ns as f64 / 1e5).round() / 10.0;

    let target_ns = b.0.saturating_sub(a.0);
    let own_ns = b.1.saturating_sub(a.1);
    let mock_ns = b.2.saturating_sub(a.2);
    let busy = b.3.saturating_sub(a.3);
    let ours = own_ns + mock_ns + if pid == mock_pid { 0 } else { target_ns };
    let pct = |ns: u64| (ns as f64 / window_ns * 1000.0).round() / 10.0;
    let errors_total = g.errors.values().sum();
    let p = Phase {
        target: name.to_string(),
        pid,
        max_open: g.max_open,
        held,
        completed_ok: g.ok,
        errors_total,
        errors: g.errors,
        event_gap_us: Pcts::of(&g.gap),
        first_event_us: Pcts::of(&g.first_event),
        events: g.events,
        events_in_hold: g.events_in_hold,
        rss_idle_kb,
        rss_hold_start_kb,
        rss_hold_end_kb,
        rss_after_kb,
        open_at_rss,
        kb_per_stream: (open_at_rss > 0).then(|| {
            let d = rss_hold_end_kb as f64 - rss_idle_kb as f64;
            (d / open_at_rss as f64 * 100.0).round() / 100.0
        }),
        target_cpu_pct: pct(target_ns),
        target_cpu_us_per_event: (g.events_in_hold > 0)
            .then(|| (target_ns as f64 / 1e3 / g.events_in_hold as f64 * 100.0).round() / 100.0),
        loadtest_cpu_pct: pct(own_ns),
        mock_cpu_pct: pct(mock_ns),
        others_cpu_pct: pct(busy.saturating_sub(ours)),
        target_runq_wait_ms: ms(wait_end.saturating_sub(wait_start)),
        target_runq_wait_hold_ms: ms(wait_b.saturating_sub(wait_a)),
    };
    progress(&format!(
        "{name}: held {} (max {}), gap p50 {} p99 {} max {} µs, {} ok, errors {}",
        p.held,
        p.max_open,
        p.event_gap_us.p50,
        p.event_gap_us.p99,
        p.event_gap_us.max,
        p.completed_ok,
        p.errors_total
    ));
    Ok(p)
}

/// Nanoseconds the threads of `pid` spent runnable, waiting for a CPU (the
/// second field of `/proc/PID/task/TID/schedstat`).
fn runq_wait_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// The generator: one monoio runtime, one task per stream.

struct GenConfig {
    addr: SocketAddr,
    request: Vec<u8>,
    streams: usize,
    tl: Timeline,
    read_timeout: Duration,
    stream_timeout: Duration,
    open: Arc<AtomicUsize>,
}

struct GenResult {
    gap: Histogram<u64>,
    first_event: Histogram<u64>,
    events: u64,
    events_in_hold: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    max_open: usize,
}

/// State shared by the stream tasks (one thread: `Rc`, `Cell`).
struct Gen {
    addr: SocketAddr,
    request: Rc<Vec<u8>>,
    tl: Timeline,
    read_timeout: Duration,
    stream_timeout: Duration,
    open: Arc<AtomicUsize>,
    max_open: Cell<usize>,
    finished: Cell<usize>,
    res: RefCell<GenResult>,
}

fn histogram(sigfig: u8, high_us: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high_us.max(2), sigfig)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

async fn generate(cfg: GenConfig) -> GenResult {
    let high_us = (cfg.stream_timeout.as_micros() as u64).max(60_000_000);
    let g = Rc::new(Gen {
        addr: cfg.addr,
        request: Rc::new(cfg.request),
        tl: cfg.tl,
        read_timeout: cfg.read_timeout,
        stream_timeout: cfg.stream_timeout,
        open: cfg.open,
        max_open: Cell::new(0),
        finished: Cell::new(0),
        res: RefCell::new(GenResult {
            // 5 significant digits: gaps are about a second, and the
            // router's share of them is microseconds.
            gap: histogram(5, high_us),
            first_event: histogram(3, high_us),
            events: 0,
            events_in_hold: 0,
            ok: 0,
            errors: BTreeMap::new(),
            max_open: 0,
        }),
    });
    let n = cfg.streams;
    for i in 0..n {
        let due = g.tl.t0 + g.tl.ramp.mul_f64(i as f64 / n as f64);
        let now = Instant::now();
        if due > now {
            monoio::time::sleep(due - now).await;
        }
        monoio::spawn(stream_task(g.clone()));
    }
    // Every task ends by itself (each is bounded by `stream_timeout`).
    while g.finished.get() < n {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut r = g.res.replace(GenResult {
        gap: histogram(3, 2),
        first_event: histogram(3, 2),
        events: 0,
        events_in_hold: 0,
        ok: 0,
        errors: BTreeMap::new(),
        max_open: 0,
    });
    r.max_open = g.max_open.get();
    r
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Connect,
    Write,
    Read,
    Closed,
    Truncated,
    Parse,
    /// No progress in time: `head` (no response head), `body` (a silence
    /// mid-stream) or `stream` (the whole stream's deadline).
    Timeout(&'static str),
    Status(u16),
}

impl Fail {
    fn name(self) -> String {
        match self {
            Fail::Connect => "connect".into(),
            Fail::Write => "write".into(),
            Fail::Read => "read".into(),
            Fail::Closed => "closed_before_response".into(),
            Fail::Truncated => "truncated".into(),
            Fail::Parse => "bad_response".into(),
            Fail::Timeout(stage) => format!("timeout_{stage}"),
            Fail::Status(s) => format!("status_{s}"),
        }
    }
}

async fn stream_task(g: Rc<Gen>) {
    let r = match monoio::time::timeout(g.stream_timeout, one_stream(&g)).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Timeout("stream")),
    };
    {
        let mut res = g.res.borrow_mut();
        match r {
            Ok(()) => res.ok += 1,
            Err(f) => *res.errors.entry(f.name()).or_default() += 1,
        }
    }
    g.finished.set(g.finished.get() + 1);
}

/// Counts a stream as open from its connect to its close.
struct OpenGuard<'a>(&'a Gen);

impl<'a> OpenGuard<'a> {
    fn new(g: &'a Gen) -> OpenGuard<'a> {
        let now = g.open.fetch_add(1, Ordering::Relaxed) + 1;
        if now > g.max_open.get() {
            g.max_open.set(now);
        }
        OpenGuard(g)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Read more into `buf` (after what it holds), within `limit`.
async fn read_some(
    s: &mut TcpStream,
    buf: Vec<u8>,
    limit: Duration,
    stage: &'static str,
) -> Result<(usize, Vec<u8>), Fail> {
    let (len, cap) = (buf.len(), buf.capacity());
    if len == cap {
        return Err(Fail::Parse);
    }
    match monoio::time::timeout(limit, s.read(buf.slice_mut(len..cap))).await {
        Ok((Ok(n), slice)) => Ok((n, SliceMut::into_inner(slice))),
        Ok((Err(_), _)) => Err(Fail::Read),
        Err(_) => Err(Fail::Timeout(stage)),
    }
}

/// One stream on its own connection: connect, send, read every event.
async fn one_stream(g: &Gen) -> Result<(), Fail> {
    let started = Instant::now();
    let mut s = match monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(g.addr)).await
    {
        Ok(Ok(s)) => s,
        _ => return Err(Fail::Connect),
    };
    let _ = s.set_nodelay(true);
    let _open = OpenGuard::new(g);
    let (r, _) = s.write_all(g.request.clone()).await;
    if r.is_err() {
        return Err(Fail::Write);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    let head = loop {
        let had = !buf.is_empty();
        let (n, b) = match read_some(&mut s, buf, g.read_timeout, "head").await {
            Ok(x) => x,
            Err(Fail::Read) if !had => return Err(Fail::Closed),
            Err(f) => return Err(f),
        };
        buf = b;
        if n == 0 {
            return Err(if had { Fail::Truncated } else { Fail::Closed });
        }
        match parse_response_head(&buf) {
            Ok(Some(h)) if (100..200).contains(&h.status) => {
                buf.drain(..h.head_len);
            }
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(_) => return Err(Fail::Parse),
        }
    };
    if head.status != 200 {
        return Err(Fail::Status(head.status));
    }
    let mut body = Body {
        payload: Payload::new(head.framing),
        scan: EventScan::new(head.kind),
        last: None,
        started,
    };
    let mut done = body.feed(g, &buf[head.head_len..], Instant::now())?;
    while !done {
        buf.clear();
        let (n, b) = read_some(&mut s, buf, g.read_timeout, "body").await?;
        buf = b;
        let now = Instant::now();
        if n == 0 {
            if body.payload.framing == Framing::UntilClose {
                break;
            }
            return Err(Fail::Truncated);
        }
        done = body.feed(g, &buf, now)?;
    }
    if body.scan.terminal {
        Ok(())
    } else {
        Err(Fail::Truncated)
    }
}

/// The body of one stream: its framing and events.
struct Body {
    payload: Payload,
    scan: EventScan,
    /// When the last event arrived.
    last: Option<Instant>,
    started: Instant,
}

impl Body {
    /// Feed the bytes of one read (arrived at `now`); whether the body ended.
    fn feed(&mut self, g: &Gen, data: &[u8], now: Instant) -> Result<bool, Fail> {
        let mut payload = std::mem::replace(&mut self.payload, Payload::new(Framing::None));
        let r = payload.feed(data, |d| self.events(g, d, now));
        self.payload = payload;
        r.map_err(|_| Fail::Parse)
    }

    fn events(&mut self, g: &Gen, d: &[u8], now: Instant) {
        let mut count = 0u64;
        self.scan.feed(d, || count += 1);
        if count == 0 {
            return;
        }
        let mut res = g.res.borrow_mut();
        res.events += count;
        if now >= g.tl.hold_start && now < g.tl.hold_end {
            res.events_in_hold += count;
        }
        match self.last {
            Some(prev) if prev == now => {}
            Some(prev) => {
                let us = now.saturating_duration_since(prev).as_micros() as u64;
                res.gap.saturating_record(us.max(1));
            }
            None => {
                let us = now.saturating_duration_since(self.started).as_micros() as u64;
                res.first_event.saturating_record(us.max(1));
            }
        }
        self.last = Some(now);
    }
}

// ---------------------------------------------------------------------------
// The report.

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn render(out: &Output) -> String {
    let mut s = String::new();
    s += &format!(
        "\nloadtest streams — {} streams, one event every {} ms, {} events each; ramp {:.0} s, hold {:.0} s\n",
        out.streams, out.interval_ms, out.events_per_stream, out.ramp_s, out.hold_s
    );
    s += &format!(
        "router CPU {}, mock + generator CPU {}; {}; open-files limit: loadtest {}, mock {}, router {}\n",
        cpu_name(out.router_cpu),
        cpu_name(out.load_cpu),
        out.driver,
        out.open_files_limit.loadtest,
        out.open_files_limit
            .mock
            .map_or("-".into(), |v| v.to_string()),
        out.open_files_limit
            .router
            .map_or("-".into(), |v| v.to_string()),
    );
    s += "event gap = time between consecutive event arrivals on one stream (µs)\n\n";
    s += &format!(
        "{:<8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}  {}\n",
        "target",
        "held",
        "max",
        "gap P50",
        "gap P99",
        "gap P99.9",
        "gap max",
        "1st ev P99",
        "events",
        "errors"
    );
    let phases = std::iter::once(&out.direct).chain(out.router.as_ref());
    for p in phases.clone() {
        let g = &p.event_gap_us;
        s += &format!(
            "{:<8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}  {}\n",
            p.target,
            p.held,
            p.max_open,
            g.p50,
            g.p99,
            g.p999,
            g.max,
            p.first_event_us.p99,
            p.events,
            errors(p)
        );
    }
    if let Some(a) = &out.added_gap_us {
        s += &format!(
            "{:<8} {:>6} {:>6} {:>+9} {:>+9} {:>+9} {:>+9}\n",
            "added", "", "", a.p50, a.p99, a.p999, a.max
        );
    }
    s += "\nover the hold window:\n";
    for p in phases {
        let who = if p.target == "direct" {
            "mock"
        } else {
            "router"
        };
        s += &format!(
            "  {:<7} {who} RSS idle {}, {} at hold start, {} with {} streams open, {} after → {} per stream\n",
            p.target,
            mb(p.rss_idle_kb),
            mb(p.rss_hold_start_kb),
            mb(p.rss_hold_end_kb),
            p.open_at_rss,
            mb(p.rss_after_kb),
            p.kb_per_stream.map_or("-".into(), |k| format!("{k:.1} KB")),
        );
        s += &format!(
            "  {:<7} {who} CPU {:.1}% of one core, {} µs per event ({} events); loadtest {:.1}%, mock {:.1}%, others {:.1}%\n",
            p.target,
            p.target_cpu_pct,
            p.target_cpu_us_per_event
                .map_or("-".into(), |c| format!("{c:.2}")),
            p.events_in_hold,
            p.loadtest_cpu_pct,
            p.mock_cpu_pct,
            p.others_cpu_pct
        );
        s += &format!(
            "  {:<7} {who} waited for a CPU {:.1} ms during the hold, {:.1} ms during the whole phase\n",
            p.target, p.target_runq_wait_hold_ms, p.target_runq_wait_ms
        );
    }
    if out.router_emfile_lines > 0 {
        s += &format!(
            "\nthe router ran out of file descriptors ({} `Too many open files` lines in its log; its limit: {})\n",
            out.router_emfile_lines,
            out.open_files_limit
                .router
                .map_or("-".into(), |v| v.to_string())
        );
    }
    if let Some(f) = &out.router_failure {
        s += &format!("\nFAILED: {f}\n");
    }
    s += &format!("\nerrors: {}\n", out.errors_total);
    s
}

fn errors(p: &Phase) -> String {
    if p.errors_total == 0 {
        return "0".into();
    }
    let kinds: Vec<String> = p.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{} ({})", p.errors_total, kinds.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{self, MockConfig};

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn events_cover_ramp_and_hold() {
        let o = options(&argv("--direct-only --ramp-s 10 --hold-s 30")).unwrap();
        // 10 s ramp + 1 s settle + 30 s hold = 41 intervals, + 2.
        assert_eq!(o.events, 43);
        assert_eq!(o.ramp, Duration::from_secs(10));
        // The ramp is rounded up to whole intervals.
        let o = options(&argv(
            "--direct-only --interval-ms 400 --ramp-s 1 --hold-s 2",
        ))
        .unwrap();
        assert_eq!(o.ramp, Duration::from_millis(1200));
        assert!(options(&argv("--streams 10")).is_err());
    }

    /// A few streams against the in-process mock: every stream completes,
    /// gaps are about the interval.
    #[test]
    fn streams_against_mock() {
        let (addr, _threads) = mock::start(MockConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            events: 6,
            interval: Duration::from_millis(20),
            first_byte: Duration::ZERO,
        })
        .unwrap();
        let t0 = Instant::now() + Duration::from_millis(10);
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions"), "/").unwrap();
        let cfg = GenConfig {
            addr,
            request: post_request(&url, &default_body("m", true)),
            streams: 20,
            tl: Timeline {
                t0,
                ramp: Duration::from_millis(40),
                hold_start: t0 + Duration::from_millis(60),
                hold_end: t0 + Duration::from_millis(100),
            },
            read_timeout: Duration::from_secs(2),
            stream_timeout: Duration::from_secs(5),
            open: Arc::new(AtomicUsize::new(0)),
        };
        let mut runtime = rt::runtime().unwrap();
        let r = runtime.block_on(generate(cfg));
        assert_eq!(r.ok, 20, "{:?}", r.errors);
        assert!(r.errors.is_empty());
        assert!(r.max_open >= 2);
        // 6 content events, then the finish, usage and [DONE] events.
        assert_eq!(r.events, 20 * 9);
        // One gap per arrival after the first: 5 per stream.
        assert_eq!(r.gap.len(), 20 * 5);
        assert!(r.gap.value_at_quantile(0.5) >= 19_000);
        assert!(r.events_in_hold > 0);
    }
}
