//! `loadtest compare`: one command that measures direct-to-mock and through
//! each target, side by side.
//!
//! It starts the mock (pinned to the load CPU), the router with a generated
//! config (pinned to its own CPU) and, when given, the reference systems;
//! then, for plain and streamed requests and for each load point (concurrency
//! 1, each fixed rate, max throughput), runs the load against the mock
//! directly and through every target, in turn. It prints added latency
//! (target − direct, same percentile, same point), CPU µs per request of the
//! target process (its CPU time over the measured window / requests completed
//! in it), context switches per request (from `/proc`), syscalls and
//! io_uring submissions per request (`perf stat` over the same window, when
//! perf works here) and its RSS before and after.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::args::{Args, parse_list};
use crate::http::{Url, post_request};
use crate::load::{self, LoadConfig, Mode, Report};
use crate::perf::{self, Perf};
use crate::{procfs, rt};

pub const USAGE: &str = "\
loadtest compare --router-bin PATH [--router-config FILE] [--nginx-config FILE]
                 [--original-bin PATH [--original-config FILE]] [--litellm-config FILE]
                 [--duration 10s] [--warmup 2s] [--rates 1000,5000,10000]
                 [--max-concurrency 64] [--events 20] [--interval-ms 0] [--first-byte-ms 0]
                 [--router-cpu N] [--load-cpu N] [--model M] [--timeout 5s]
                 [--observe] [--baseline-bin PATH] [--no-perf] [--perf-bin perf]
                 [--keep] [--keep-awake] [--quick] [--json] [--json-out FILE]

Starts the mock and the router (generated config unless --router-config),
measures direct-to-mock and through each target at concurrency 1, at each
rate and at max throughput, plain and streamed, and prints added latency,
CPU µs, context switches, syscalls and io_uring submissions (SQEs) per
request and RSS of each target. Reference targets (nginx as a
plain reverse proxy, the original router, LiteLLM) run when their config or
binary is given and installed. Config files given for targets are templates:
@MOCK_ADDR@ (host:port of the mock), @MOCK_URL@ (http://host:port/v1),
@PORT@ (the port the target must listen on) and @TMPDIR@ are replaced.
--json prints the result as JSON instead of the table; --json-out FILE also
writes it to FILE. --keep keeps the temporary directory (configs, logs).
--keep-awake runs a SCHED_IDLE busy thread on the router's CPU so that idle
vCPU does not halt (like booting with idle=poll; on VMs it removes tens of µs of
wake-up latency from every hop; its CPU time is charged to no target).
--quick: a few-second smoke (router and direct, concurrency 1 and 200 req/s);
exits non-zero if any request failed, never on timings; it does not use perf.
Syscalls/req and SQEs/req come from `perf stat -e raw_syscalls:sys_enter,
io_uring:io_uring_submit_req -p <the target's process tree>` over each
measured window; where perf is missing or not permitted they show as `-`
(never an error). --no-perf skips it; --perf-bin names the perf binary.
--observe adds router+obs: a second instance of the router with a /metrics
scrape every second and one dashboard feed subscriber attached.
--baseline-bin PATH adds baseline: another build of the router, same config.
--fleet: the fleet scenario instead (three mocks behind one provider:
balancing cost, prefix affinity, failover); see `loadtest help fleet`.
";

#[derive(Debug, Clone)]
struct Options {
    router_bin: PathBuf,
    /// Another build of the router, measured with the same config ("baseline").
    baseline_bin: Option<PathBuf>,
    /// Also measure a second instance of the router with a `/metrics`
    /// scrape every second and one dashboard feed subscriber ("router+obs").
    observe: bool,
    router_config: Option<PathBuf>,
    nginx_config: Option<PathBuf>,
    nginx_bin: String,
    original_bin: Option<PathBuf>,
    original_config: Option<PathBuf>,
    litellm_config: Option<PathBuf>,
    litellm_bin: String,
    duration: Duration,
    warmup: Duration,
    rates: Vec<f64>,
    max_concurrency: usize,
    events: usize,
    interval_ms: f64,
    first_byte_ms: f64,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
    model: String,
    keep: bool,
    keep_awake: bool,
    quick: bool,
    json: bool,
    json_out: Option<PathBuf>,
    timeout: Duration,
    /// Count syscalls and io_uring submissions with `perf stat`.
    perf: bool,
    perf_bin: String,
}

fn options(argv: &[String]) -> Result<Options, String> {
    let a = Args::parse(
        argv,
        &[
            "router-bin",
            "router-config",
            "nginx-config",
            "nginx-bin",
            "original-bin",
            "original-config",
            "litellm-config",
            "litellm-bin",
            "duration",
            "warmup",
            "rates",
            "max-concurrency",
            "events",
            "interval-ms",
            "first-byte-ms",
            "router-cpu",
            "load-cpu",
            "model",
            "timeout",
            "json-out",
            "baseline-bin",
            "perf-bin",
        ],
        &["quick", "json", "keep", "keep-awake", "observe", "no-perf"],
    )?;
    let quick = a.flag("quick");
    let rates = match a.str("rates") {
        Some(r) => parse_list::<f64>(r)
            .filter(|v| !v.is_empty() && v.iter().all(|&x| x > 0.0))
            .ok_or("bad --rates")?,
        None if quick => vec![200.0],
        None => vec![1000.0, 5000.0, 10000.0],
    };
    Ok(Options {
        router_bin: absolute(a.str("router-bin").ok_or("--router-bin is required")?)?,
        baseline_bin: a.str("baseline-bin").map(absolute).transpose()?,
        observe: a.flag("observe"),
        router_config: a.str("router-config").map(PathBuf::from),
        nginx_config: a.str("nginx-config").map(PathBuf::from),
        nginx_bin: a.str("nginx-bin").unwrap_or("nginx").into(),
        original_bin: a.str("original-bin").map(absolute).transpose()?,
        original_config: a.str("original-config").map(PathBuf::from),
        litellm_config: a.str("litellm-config").map(PathBuf::from),
        litellm_bin: a.str("litellm-bin").unwrap_or("litellm").into(),
        duration: a.duration_or(
            "duration",
            if quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            },
        )?,
        warmup: a.duration_or(
            "warmup",
            if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(2)
            },
        )?,
        rates,
        max_concurrency: a.parse_or("max-concurrency", 64usize)?.max(1),
        events: a.parse_or("events", 20usize)?.max(1),
        interval_ms: a.parse_or("interval-ms", 0.0)?,
        first_byte_ms: a.parse_or("first-byte-ms", 0.0)?,
        router_cpu: a.opt("router-cpu")?,
        load_cpu: a.opt("load-cpu")?,
        model: a.str("model").unwrap_or("bench-model").into(),
        keep: a.flag("keep"),
        keep_awake: a.flag("keep-awake"),
        quick,
        json: a.flag("json"),
        json_out: a.str("json-out").map(PathBuf::from),
        timeout: a.duration_or("timeout", Duration::from_secs(5))?,
        perf: !a.flag("no-perf") && !quick,
        perf_bin: a.str("perf-bin").unwrap_or("perf").into(),
    })
}

/// Targets run in their own directories: resolve binaries first.
fn absolute(p: &str) -> Result<PathBuf, String> {
    fs::canonicalize(p).map_err(|e| format!("{p}: {e}"))
}

/// A process we started; stopped (TERM, then KILL) when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let family = procfs::tree(self.pid());
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Descendants it started (nginx workers, uvicorn workers) that outlived it.
        for p in family.into_iter().skip(1) {
            if Path::new(&format!("/proc/{p}")).exists() {
                // SAFETY: kill(2) on a process our child started.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Spawn `cmd` pinned to `cpu`, dying with us; its stderr goes to `log`,
/// and every stderr line is also sent to the returned channel.
pub(crate) fn spawn(
    name: &str,
    mut cmd: Command,
    cpu: Option<usize>,
    log: &Path,
) -> Result<(Proc, mpsc::Receiver<String>), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(log.with_extension("stdout.log")).map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::piped());
    rt::child_pinned(&mut cmd, cpu);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    let mut out = fs::File::create(log).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out, "{line}");
            let _ = tx.send(line);
        }
    });
    Ok((
        Proc {
            name: name.to_string(),
            child,
        },
        rx,
    ))
}

/// Wait for a stderr line containing `marker` and return the word after it.
pub(crate) fn wait_for_line(
    p: &mut Proc,
    rx: &mpsc::Receiver<String>,
    marker: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{} did not print `{marker}` within {timeout:?}; its stderr:\n{}",
                p.name,
                seen.join("\n")
            ));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                if let Some(i) = line.find(marker) {
                    let rest = &line[i + marker.len()..];
                    return Ok(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(st) = p.exited() {
                    return Err(format!(
                        "{} exited ({st}); its stderr:\n{}",
                        p.name,
                        seen.join("\n")
                    ));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = p.child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!(
                    "{} exited ({st}); its stderr:\n{}",
                    p.name,
                    seen.join("\n")
                ));
            }
        }
    }
}

/// What `loadtest mock` prints once it listens, and what the router prints.
pub(crate) const MOCK_READY: &str = "listening on http://";
pub(crate) const ROUTER_READY: &str = "opensourcellmrouter listening on http://";

/// [`spawn`], then wait (up to `timeout`) for the line with `ready` and
/// return the address printed after it.
pub(crate) fn spawn_listening(
    name: &str,
    cmd: Command,
    cpu: Option<usize>,
    log: &Path,
    ready: &str,
    timeout: Duration,
) -> Result<(Proc, SocketAddr), String> {
    let (mut p, rx) = spawn(name, cmd, cpu, log)?;
    let addr = wait_for_line(&mut p, &rx, ready, timeout)?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{name} printed a bad address `{addr}`"))?;
    Ok((p, addr))
}

/// Wait until `addr` accepts TCP connections.
fn wait_for_port(p: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = p.exited() {
            return Err(format!(
                "{} exited ({st}) before listening on {addr}",
                p.name
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{} did not listen on {addr} within {timeout:?}",
        p.name
    ))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn in_path(bin: &str) -> bool {
    if bin.contains('/') {
        return Path::new(bin).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn render_template(
    src: &Path,
    dst: &Path,
    mock: SocketAddr,
    port: u16,
    tmp: &Path,
) -> Result<(), String> {
    let t = fs::read_to_string(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let out = t
        .replace("@MOCK_ADDR@", &mock.to_string())
        .replace("@MOCK_URL@", &format!("http://{mock}/v1"))
        .replace("@PORT@", &port.to_string())
        .replace("@TMPDIR@", &tmp.display().to_string());
    fs::write(dst, out).map_err(|e| format!("cannot write {}: {e}", dst.display()))
}

/// Ten tags of ten keywords; the default prompt hits two of them.
const TAGS: [(&str, [&str; 10]); 10] = [
    (
        "database",
        [
            "database",
            "index",
            "query",
            "sql",
            "table",
            "schema",
            "transaction",
            "postgres",
            "sqlite",
            "btree",
        ],
    ),
    (
        "summary",
        [
            "summarize",
            "summary",
            "tl;dr",
            "in two sentences",
            "recap",
            "condense",
            "abstract",
            "brief",
            "outline",
            "gist",
        ],
    ),
    (
        "code",
        [
            "function",
            "class ",
            "import ",
            "def ",
            "fn ",
            "compile",
            "stack trace",
            "refactor",
            "unit test",
            "lambda",
        ],
    ),
    (
        "vision",
        [
            "image",
            "photo",
            "screenshot",
            "diagram",
            "picture",
            "pixel",
            "camera",
            "render",
            "draw",
            "chart",
        ],
    ),
    (
        "math",
        [
            "integral",
            "derivative",
            "equation",
            "theorem",
            "matrix",
            "proof",
            "algebra",
            "calculus",
            "vector",
            "prime",
        ],
    ),
    (
        "translation",
        [
            "translate",
            "translation",
            "in french",
            "in german",
            "in spanish",
            "into english",
            "localize",
            "bilingual",
            "idiom",
            "glossary",
        ],
    ),
    (
        "legal",
        [
            "contract",
            "lawsuit",
            "liability",
            "clause",
            "statute",
            "plaintiff",
            "defendant",
            "jurisdiction",
            "tort",
            "indemnify",
        ],
    ),
    (
        "medical",
        [
            "symptom",
            "diagnosis",
            "dosage",
            "prescription",
            "clinical",
            "patient",
            "disease",
            "therapy",
            "vaccine",
            "allergy",
        ],
    ),
    (
        "finance",
        [
            "invoice",
            "portfolio",
            "dividend",
            "mortgage",
            "interest rate",
            "ledger",
            "audit",
            "equity",
            "bond yield",
            "forex",
        ],
    ),
    (
        "travel",
        [
            "itinerary",
            "flight",
            "hotel",
            "passport",
            "visa",
            "luggage",
            "airport",
            "boarding",
            "layover",
            "sightseeing",
        ],
    ),
];

/// The router's config: one openai-format provider at the mock, the keyword
/// classifier (10 tags / 100 keywords), a five-rule chain whose last rule
/// matches, JSONL logging, one worker, port 0.
fn router_config(mock: SocketAddr, tmp: &Path, original: Option<u16>) -> String {
    let mut s = String::new();
    s += "# generated by loadtest compare\n[server]\nhost = \"127.0.0.1\"\n";
    match original {
        // The original router knows neither `workers` nor port 0.
        Some(port) => s += &format!("port = {port}\n"),
        None => s += "port = 0\nworkers = 1\n",
    }
    // The dashboard routes exist (a `+obs` target subscribes); idle, they cost nothing.
    s += if original.is_some() {
        "dashboard = false\n\n[logging]\nenabled = true\n"
    } else {
        "dashboard = true\n\n[logging]\nenabled = true\n"
    };
    s += &format!("path = \"{}\"\n\n", tmp.join("requests.jsonl").display());
    s += &format!(
        "[[providers]]\nname = \"upstream\"\nformat = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n"
    );
    s += &classifier_and_rules();
    s
}

/// The generated config with `provider` as the upstream provider's address
/// keys (`base_url = …` or `endpoints = […]` and balancing), logging into `tmp`.
pub(crate) fn router_config_with(provider: &str, tmp: &Path) -> String {
    let mut s = String::new();
    s += "# generated by loadtest compare --fleet\n[server]\nhost = \"127.0.0.1\"\n";
    s += "port = 0\nworkers = 1\ndashboard = false\n\n[logging]\nenabled = true\n";
    s += &format!("path = \"{}\"\n\n", tmp.join("requests.jsonl").display());
    s += &format!("[[providers]]\nname = \"upstream\"\nformat = \"openai\"\n{provider}\n\n");
    s += &classifier_and_rules();
    s
}

/// The keyword classifier (10 tags, 100 keywords) and the five-rule chain.
fn classifier_and_rules() -> String {
    let mut s = String::new();
    s += "[classifiers.keyword]\nenabled = true\n\n[classifiers.keyword.tags]\n";
    for (tag, kws) in TAGS {
        let list: Vec<String> = kws.iter().map(|k| format!("\"{k}\"")).collect();
        s += &format!("{tag} = [{}]\n", list.join(", "));
    }
    s += "\n[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"local/\"\nprovider = \"upstream\"\n";
    s += "\n[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"claude-\"\nprovider = \"upstream\"\n";
    s += "\n[[routers]]\ntype = \"tag\"\ntag = \"finance\"\nprovider = \"upstream\"\n";
    s += "\n[[routers]]\ntype = \"tag\"\ntag = \"travel\"\nprovider = \"upstream\"\n";
    s += "\n[[routers]]\ntype = \"fallback\"\nproviders = [\"upstream\"]\n";
    s
}

/// What an operator attaches to a router: one dashboard feed subscriber
/// reading everything, and a `/metrics` scrape every second (two threads of
/// this process on the load CPU, for as long as it runs).
fn observe(addr: SocketAddr, cpu: Option<usize>) {
    use std::io::Read;
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            let _ = rt::pin_current_thread(c);
        }
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let _ = s.write_all(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            let _ = rt::pin_current_thread(c);
        }
        loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ =
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// A reference target that was started (or why not).
type Started = Result<(Proc, SocketAddr), String>;

/// One thing measured: the mock itself or a proxy in front of it.
struct Target {
    name: String,
    url: Url,
    proc_index: Option<usize>,
    pid: u32,
    rss_idle_kb: u64,
    rss_after_kb: u64,
    dead: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    target: String,
    stream: bool,
    point: String,
    report: Report,
    /// CPU time of the target process tree in the measured window / requests
    /// completed in it.
    cpu_us_per_req: Option<f64>,
    /// Context switches of every thread of the target's process tree in the
    /// window / requests completed in it (stable on a noisy VM).
    ctx_switches_per_req: Option<f64>,
    /// Syscalls entered by every thread of the target's process tree in the
    /// window (`perf stat`, `raw_syscalls:sys_enter`) / requests completed;
    /// absent without perf.
    syscalls_per_req: Option<f64>,
    /// io_uring submissions (SQEs, `io_uring:io_uring_submit_req`) of the
    /// target's process tree in the window / requests completed; absent
    /// without perf.
    uring_sqes_per_req: Option<f64>,
    /// Target − direct at the same point (µs); absent for `direct`.
    added_p50_us: Option<i64>,
    added_p99_us: Option<i64>,
    added_ttfb_p99_us: Option<i64>,
    /// CPU used by processes other than ours during the window, in % of one
    /// CPU: a busy machine makes every figure noisy.
    others_cpu_pct: f64,
}

#[derive(Debug, Serialize)]
struct TargetSummary {
    name: String,
    pid: u32,
    rss_idle_kb: u64,
    rss_after_kb: u64,
    failure: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    duration_s: f64,
    warmup_s: f64,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
    mock_events: usize,
    mock_interval_ms: f64,
    driver: &'static str,
    /// How syscalls and SQEs were counted, or why they were not.
    perf: String,
    /// Windows in which perf failed, and its first error.
    perf_failures: Vec<String>,
    targets: Vec<TargetSummary>,
    skipped: Vec<String>,
    runs: Vec<Run>,
    errors_total: u64,
}

struct Point {
    label: String,
    mode: Mode,
}

pub fn main(argv: &[String]) -> Result<bool, String> {
    if argv.iter().any(|a| a == "--fleet") {
        return crate::fleet::main(argv);
    }
    let o = options(argv)?;
    rt::raise_nofile();
    let cpus = rt::allowed_cpus();
    let (router_cpu, load_cpu) = if cpus.len() >= 2 {
        (
            Some(o.router_cpu.unwrap_or(cpus[0])),
            Some(o.load_cpu.unwrap_or(cpus[1])),
        )
    } else {
        eprintln!("note: fewer than 2 CPUs available: nothing is pinned");
        (None, None)
    };
    if let Some(c) = load_cpu {
        rt::pin_current_thread(c).map_err(|e| format!("cannot pin to CPU {c}: {e}"))?;
    }
    let tmp = std::env::temp_dir().join(format!("loadtest-compare-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let awake = if o.keep_awake {
        // Not the load CPU: the load generator's schedule spin yields the
        // CPU (sched_yield) to the mock, and would hand it to a busy thread.
        let cpus: Vec<usize> = router_cpu.into_iter().collect();
        Some(rt::KeepAwake::start(&cpus))
    } else {
        None
    };
    let result = run(&o, &tmp, router_cpu, load_cpu);
    drop(awake);
    if o.keep {
        eprintln!("kept {}", tmp.display());
    } else {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn progress(msg: &str) {
    eprintln!("[compare] {msg}");
}

fn run(
    o: &Options,
    tmp: &Path,
    router_cpu: Option<usize>,
    load_cpu: Option<usize>,
) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut procs: Vec<Proc> = Vec::new();
    let mut skipped = Vec::new();

    // The mock, on the load CPU.
    let mut cmd = Command::new(&exe);
    cmd.args(["mock", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args([
            "--events",
            &o.events.to_string(),
            "--interval-ms",
            &o.interval_ms.to_string(),
            "--first-byte-ms",
            &o.first_byte_ms.to_string(),
        ]);
    let (mock, mock_addr) = spawn_listening(
        "mock",
        cmd,
        load_cpu,
        &tmp.join("mock.log"),
        MOCK_READY,
        Duration::from_secs(10),
    )?;
    progress(&format!(
        "mock on {mock_addr} (pid {}, CPU {})",
        mock.pid(),
        fmt_cpu(load_cpu)
    ));
    let mut targets = vec![Target {
        name: "direct".into(),
        url: Url::parse(&format!("http://{mock_addr}/v1/chat/completions"), "/")?,
        proc_index: Some(0),
        pid: mock.pid(),
        rss_idle_kb: 0,
        rss_after_kb: 0,
        dead: None,
    }];
    procs.push(mock);

    // The router, on its own CPU.
    let config = tmp.join("router.toml");
    match &o.router_config {
        Some(c) => render_template(c, &config, mock_addr, 0, tmp)?,
        None => {
            fs::write(&config, router_config(mock_addr, tmp, None)).map_err(|e| e.to_string())?
        }
    }
    let mut routers = vec![("router", o.router_bin.clone(), false)];
    if o.observe && !o.quick {
        routers.push(("router+obs", o.router_bin.clone(), true));
    }
    if let Some(b) = o.baseline_bin.clone().filter(|_| !o.quick) {
        routers.push(("baseline", b, false));
    }
    for (name, bin, observed) in routers {
        let mut cmd = Command::new(&bin);
        cmd.arg(&config).current_dir(tmp);
        let (router, addr) = spawn_listening(
            name,
            cmd,
            router_cpu,
            &tmp.join(format!("{name}.log")),
            ROUTER_READY,
            Duration::from_secs(15),
        )?;
        progress(&format!(
            "{name} on {addr} (pid {}, CPU {})",
            router.pid(),
            fmt_cpu(router_cpu)
        ));
        if observed {
            observe(addr, load_cpu);
        }
        targets.push(Target {
            name: name.into(),
            url: Url::parse(&format!("http://{addr}/v1/chat/completions"), "/")?,
            proc_index: Some(procs.len()),
            pid: router.pid(),
            rss_idle_kb: 0,
            rss_after_kb: 0,
            dead: None,
        });
        procs.push(router);
    }

    if !o.quick {
        start_references(
            o,
            tmp,
            mock_addr,
            router_cpu,
            &mut procs,
            &mut targets,
            &mut skipped,
        );
    } else if o.nginx_config.is_some() || o.original_bin.is_some() || o.litellm_config.is_some() {
        skipped.push("reference targets are not measured with --quick".into());
    }
    for s in &skipped {
        progress(&format!("skipped: {s}"));
    }

    let (perf, perf_status) = if o.quick {
        (None, "not used with --quick".to_string())
    } else if !o.perf {
        (None, "not used (--no-perf)".to_string())
    } else {
        match Perf::probe(&o.perf_bin, &tmp.join("perf"), load_cpu) {
            Ok(p) => {
                let mut status = format!(
                    "perf stat -e {} on each target's process tree, over each measured window",
                    p.events().join(",")
                );
                if p.events().len() < 2 {
                    status +=
                        "; this kernel has no io_uring submission tracepoint: SQEs/req not counted";
                }
                progress(&format!("counting with {status}"));
                (Some(p), status)
            }
            Err(e) => {
                let status = format!("unavailable ({e}): syscalls/req and SQEs/req not measured");
                progress(&format!("perf {status}"));
                (None, status)
            }
        }
    };
    let mut perf_failures: Vec<String> = Vec::new();

    std::thread::sleep(Duration::from_millis(300));
    for t in targets.iter_mut() {
        t.rss_idle_kb = procfs::tree_rss_kb(t.pid);
    }

    let mut points = vec![Point {
        label: "c=1".into(),
        mode: Mode::Concurrency(1),
    }];
    for &r in &o.rates {
        points.push(Point {
            label: format!("{r}/s"),
            mode: Mode::Rate(r),
        });
    }
    if !o.quick {
        points.push(Point {
            label: format!("max c={}", o.max_concurrency),
            mode: Mode::Concurrency(o.max_concurrency),
        });
    }

    let mut runs: Vec<Run> = Vec::new();
    for stream in [false, true] {
        for p in &points {
            for t in targets.iter_mut() {
                if let Some(reason) = &t.dead {
                    progress(&format!("{}: skipped ({reason})", t.name));
                    continue;
                }
                let body = load::default_body(&o.model, stream);
                let cfg = LoadConfig {
                    request: post_request(&t.url, &body),
                    more: Vec::new(),
                    url: t.url.clone(),
                    mode: p.mode,
                    duration: o.duration,
                    warmup: o.warmup,
                    stream,
                    threads: 1,
                    timeout: o.timeout,
                    connect_timeout: Duration::from_secs(3),
                    max_conns: 10_000,
                    cpu: load_cpu,
                    spin: None,
                };
                let (report, m) = measure_with(&cfg, t.pid, perf.as_ref())?;
                // Per request completed in the window, to 2 decimals.
                let per_req = |n: f64| {
                    (report.ok > 0).then(|| (n / report.ok as f64 * 100.0).round() / 100.0)
                };
                let ctx_switches_per_req = per_req(m.target_ctx_switches as f64);
                let cpu_us_per_req = per_req(m.target_cpu_ns as f64 / 1e3);
                let (syscalls_per_req, uring_sqes_per_req) = match &m.kernel {
                    Some(Ok(c)) => (
                        per_req(c.syscalls as f64),
                        c.sqes.and_then(|n| per_req(n as f64)),
                    ),
                    Some(Err(e)) => {
                        if perf_failures.is_empty() {
                            progress(&format!(
                                "perf failed ({e}): \"-\" in syscalls/req and SQEs/req for that window"
                            ));
                        }
                        perf_failures.push(format!(
                            "{} {} {}: {e}",
                            if stream { "stream" } else { "plain" },
                            p.label,
                            t.name
                        ));
                        (None, None)
                    }
                    None => (None, None),
                };
                let dash2 = |v: Option<f64>| v.map_or("-".into(), |c| format!("{c:.2}"));
                progress(&format!(
                    "{:<6} {:<11} {:<8} {:>9.1} req/s  p50 {:>6} µs  p99 {:>6} µs  cpu {:>6} µs/req  ctxsw {:>5}/req  syscalls {:>5}/req  sqe {:>5}/req  errors {}  (others used {:.0}% CPU)",
                    if stream { "stream" } else { "plain" },
                    p.label,
                    t.name,
                    report.achieved_rps,
                    report.latency_us.p50,
                    report.latency_us.p99,
                    cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1}")),
                    dash2(ctx_switches_per_req),
                    dash2(syscalls_per_req),
                    dash2(uring_sqes_per_req),
                    report.errors_total,
                    m.others_cpu_pct
                ));
                runs.push(Run {
                    target: t.name.clone(),
                    stream,
                    point: p.label.clone(),
                    report,
                    cpu_us_per_req,
                    ctx_switches_per_req,
                    syscalls_per_req,
                    uring_sqes_per_req,
                    added_p50_us: None,
                    added_p99_us: None,
                    added_ttfb_p99_us: None,
                    others_cpu_pct: m.others_cpu_pct,
                });
                if let Some(pi) = t.proc_index
                    && let Some(st) = procs[pi].exited()
                {
                    let why = format!("{} exited ({st})", procs[pi].name);
                    progress(&why);
                    t.dead = Some(why);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for t in targets.iter_mut() {
        if t.dead.is_none() {
            t.rss_after_kb = procfs::tree_rss_kb(t.pid);
        }
    }
    added_latency(&mut runs);
    let errors_total: u64 = runs.iter().map(|r| r.report.errors_total).sum();
    let dead = targets.iter().any(|t| t.dead.is_some());
    let out = Output {
        duration_s: o.duration.as_secs_f64(),
        warmup_s: o.warmup.as_secs_f64(),
        router_cpu,
        load_cpu,
        mock_events: o.events,
        mock_interval_ms: o.interval_ms,
        driver: if rt::uring() { "io_uring" } else { "epoll" },
        perf: perf_status,
        perf_failures,
        targets: targets
            .iter()
            .map(|t| TargetSummary {
                name: t.name.clone(),
                pid: t.pid,
                rss_idle_kb: t.rss_idle_kb,
                rss_after_kb: t.rss_after_kb,
                failure: t.dead.clone(),
            })
            .collect(),
        skipped,
        runs,
        errors_total,
    };
    if let Some(path) = &o.json_out {
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", render(&out, &points));
    }
    drop(procs);
    if o.quick {
        if errors_total > 0 || dead {
            eprintln!(
                "compare --quick: FAILED ({errors_total} request errors{})",
                if dead { ", a target exited" } else { "" }
            );
            return Ok(false);
        }
        eprintln!("compare --quick: ok (0 errors)");
    }
    Ok(!dead)
}

fn fmt_cpu(c: Option<usize>) -> String {
    c.map_or("any".into(), |c| c.to_string())
}

/// Run one load and the CPU time the target spent in its measured window.
/// What one load run measured besides the report.
pub(crate) struct Measured {
    /// CPU time of the target's process tree in the window.
    pub(crate) target_cpu_ns: u64,
    /// Context switches of every thread of the target's process tree.
    target_ctx_switches: u64,
    /// CPU time of every process on the machine that is not ours (other
    /// users' builds…) in the window, in % of one CPU.
    others_cpu_pct: f64,
    /// Syscalls and io_uring submissions of the target's process tree in the
    /// window (`perf stat`), or why they could not be counted; None when
    /// perf was not used.
    kernel: Option<Result<perf::Counts, String>>,
}

/// Run one load and the CPU time the target spent in its measured window.
pub(crate) fn measure(cfg: &LoadConfig, pid: u32) -> Result<(Report, Measured), String> {
    measure_with(cfg, pid, None)
}

/// [`measure`], and with `perf`, the target's syscalls and io_uring
/// submissions over the same window: `perf stat` attaches to the target's
/// process tree (as it is now) before the load starts, events disabled, and
/// counts from the window's start to its end.
fn measure_with(
    cfg: &LoadConfig,
    pid: u32,
    perf: Option<&Perf>,
) -> Result<(Report, Measured), String> {
    let counter = perf.map(|p| perf::Counter::start(p, &procfs::tree(pid)));
    let (mut counter, mut kernel) = match counter {
        Some(Ok(c)) => (Some(c), None),
        Some(Err(e)) => (None, Some(Err(e))),
        None => (None, None),
    };
    let start = Instant::now() + Duration::from_millis(30);
    let window_start = start + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let me = std::process::id();
    let sampler = std::thread::spawn(move || {
        sleep_until(window_start);
        if let Some(c) = counter.as_mut() {
            c.enable();
        }
        let (a, ma, oa, ca) = (
            procfs::tree_cpu_ns(pid),
            procfs::machine_busy_ns(),
            procfs::tree_cpu_ns(me),
            procfs::tree_ctx_switches(pid),
        );
        sleep_until(window_end);
        let (b, mb, ob, cb) = (
            procfs::tree_cpu_ns(pid),
            procfs::machine_busy_ns(),
            procfs::tree_cpu_ns(me),
            procfs::tree_ctx_switches(pid),
        );
        if let Some(c) = counter.as_mut() {
            c.disable();
        }
        let window = window_end
            .saturating_duration_since(window_start)
            .as_nanos()
            .max(1) as f64;
        let others = mb.saturating_sub(ma).saturating_sub(ob.saturating_sub(oa));
        let m = Measured {
            target_cpu_ns: b.saturating_sub(a),
            target_ctx_switches: cb.saturating_sub(ca),
            others_cpu_pct: (others as f64 / window * 1000.0).round() / 10.0,
            kernel: None,
        };
        (m, counter)
    });
    let report = load::run(cfg, start)?;
    let (mut m, counter) = sampler.join().map_err(|_| "sampler panicked".to_string())?;
    if let Some(c) = counter {
        kernel = Some(c.finish());
    }
    m.kernel = kernel;
    Ok((report, m))
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn added_latency(runs: &mut [Run]) {
    let direct: BTreeMap<(bool, String), (u64, u64, Option<u64>)> = runs
        .iter()
        .filter(|r| r.target == "direct")
        .map(|r| {
            (
                (r.stream, r.point.clone()),
                (
                    r.report.latency_us.p50,
                    r.report.latency_us.p99,
                    r.report.ttfb_us.as_ref().map(|t| t.p99),
                ),
            )
        })
        .collect();
    for r in runs.iter_mut().filter(|r| r.target != "direct") {
        if let Some(&(p50, p99, ttfb)) = direct.get(&(r.stream, r.point.clone()))
            && r.report.latency_us.count > 0
        {
            r.added_p50_us = Some(r.report.latency_us.p50 as i64 - p50 as i64);
            r.added_p99_us = Some(r.report.latency_us.p99 as i64 - p99 as i64);
            if let (Some(d), Some(t)) = (ttfb, &r.report.ttfb_us) {
                r.added_ttfb_p99_us = Some(t.p99 as i64 - d as i64);
            }
        }
    }
}

fn start_references(
    o: &Options,
    tmp: &Path,
    mock: SocketAddr,
    cpu: Option<usize>,
    procs: &mut Vec<Proc>,
    targets: &mut Vec<Target>,
    skipped: &mut Vec<String>,
) {
    let mut started: Vec<(&str, Started)> = Vec::new();
    match &o.nginx_config {
        None => {
            skipped.push("nginx: no --nginx-config given (see loadtest/nginx.conf.template)".into())
        }
        Some(_) if !in_path(&o.nginx_bin) => {
            skipped.push(format!("nginx: `{}` is not installed", o.nginx_bin))
        }
        Some(c) => {
            let r = (|| {
                let port = free_port()?;
                let dir = tmp.join("nginx");
                fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
                let conf = dir.join("nginx.conf");
                render_template(c, &conf, mock, port, &dir)?;
                let mut cmd = Command::new(&o.nginx_bin);
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .args(["-g", "daemon off;"]);
                let (mut p, _rx) = spawn("nginx", cmd, cpu, &tmp.join("nginx.log"))?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(&mut p, addr, Duration::from_secs(10))?;
                Ok((p, addr))
            })();
            started.push(("nginx", r));
        }
    }
    match &o.original_bin {
        None => skipped.push("original router: no --original-bin given".into()),
        Some(b) if !b.is_file() => {
            skipped.push(format!("original router: {} does not exist", b.display()))
        }
        Some(b) => {
            let r = (|| {
                let port = free_port()?;
                let dir = tmp.join("original");
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let conf = dir.join("config.toml");
                match &o.original_config {
                    Some(c) => render_template(c, &conf, mock, port, &dir)?,
                    None => fs::write(&conf, router_config(mock, &dir, Some(port)))
                        .map_err(|e| e.to_string())?,
                }
                // It reads ./config.toml.
                let mut cmd = Command::new(b);
                cmd.current_dir(&dir);
                let (mut p, _rx) = spawn("original", cmd, cpu, &tmp.join("original.log"))?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(&mut p, addr, Duration::from_secs(20))?;
                Ok((p, addr))
            })();
            started.push(("original", r));
        }
    }
    match &o.litellm_config {
        None => skipped
            .push("LiteLLM: no --litellm-config given (see loadtest/litellm.yaml.template)".into()),
        Some(_) if !in_path(&o.litellm_bin) => {
            skipped.push(format!("LiteLLM: `{}` is not installed", o.litellm_bin))
        }
        Some(c) => {
            let r = (|| {
                let port = free_port()?;
                let dir = tmp.join("litellm");
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let conf = dir.join("litellm.yaml");
                render_template(c, &conf, mock, port, &dir)?;
                let mut cmd = Command::new(&o.litellm_bin);
                cmd.arg("--config")
                    .arg(&conf)
                    .args([
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                        "--num_workers",
                        "1",
                    ])
                    .current_dir(&dir);
                let (mut p, _rx) = spawn("litellm", cmd, cpu, &tmp.join("litellm.log"))?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(&mut p, addr, Duration::from_secs(120))?;
                Ok((p, addr))
            })();
            started.push(("litellm", r));
        }
    }
    for (name, r) in started {
        match r.and_then(|(p, addr)| {
            Url::parse(&format!("http://{addr}/v1/chat/completions"), "/").map(|u| (p, addr, u))
        }) {
            Ok((p, addr, url)) => {
                progress(&format!("{name} on {addr} (pid {})", p.pid()));
                targets.push(Target {
                    name: name.into(),
                    url,
                    proc_index: Some(procs.len()),
                    pid: p.pid(),
                    rss_idle_kb: 0,
                    rss_after_kb: 0,
                    dead: None,
                });
                procs.push(p);
            }
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
}

fn render(out: &Output, points: &[Point]) -> String {
    let mut s = String::new();
    s += &format!(
        "\nloadtest compare — {} per point after {} warmup; router CPU {}, mock + load CPU {}; loadtest on {}; mock: {} events, {} ms apart\n",
        secs(out.duration_s),
        secs(out.warmup_s),
        fmt_cpu(out.router_cpu),
        fmt_cpu(out.load_cpu),
        out.driver,
        out.mock_events,
        out.mock_interval_ms
    );
    s += "latencies in µs; added = target − direct at the same point and percentile; CPU = target process µs per request\n";
    s += &format!(
        "ctxsw, syscalls, SQEs (io_uring submissions) per request of the target's process tree; syscalls/SQEs: {}\n",
        out.perf
    );
    for stream in [false, true] {
        s += &format!(
            "\n{}\n",
            if stream {
                format!("STREAMED ({} events)", out.mock_events)
            } else {
                "PLAIN".to_string()
            }
        );
        if stream {
            s += &format!(
                "{:<12} {:<9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>12} {:>8}  {}\n",
                "point",
                "target",
                "req/s",
                "P50",
                "P99",
                "P99.9",
                "max",
                "TTFB50",
                "TTFB99",
                "+P50",
                "+P99",
                "+TTFB99",
                "CPU/req",
                "ctxsw/req",
                "syscalls/req",
                "SQEs/req",
                "errors"
            );
        } else {
            s += &format!(
                "{:<12} {:<9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>8} {:>9} {:>12} {:>8}  {}\n",
                "point",
                "target",
                "req/s",
                "P50",
                "P90",
                "P99",
                "P99.9",
                "max",
                "+P50",
                "+P99",
                "CPU/req",
                "ctxsw/req",
                "syscalls/req",
                "SQEs/req",
                "errors"
            );
        }
        for p in points {
            for r in out
                .runs
                .iter()
                .filter(|r| r.stream == stream && r.point == p.label)
            {
                let l = &r.report.latency_us;
                let add = |v: Option<i64>| v.map_or("-".to_string(), |v| format!("{v:+}"));
                let cpu = r
                    .cpu_us_per_req
                    .map_or("-".to_string(), |c| format!("{c:.1}"));
                let two = |v: Option<f64>| v.map_or("-".to_string(), |c| format!("{c:.2}"));
                let csw = two(r.ctx_switches_per_req);
                let sys = two(r.syscalls_per_req);
                let sqe = two(r.uring_sqes_per_req);
                let errs = if r.report.errors_total == 0 {
                    "0".to_string()
                } else {
                    let kinds: Vec<String> = r
                        .report
                        .errors
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!("{} ({})", r.report.errors_total, kinds.join(" "))
                };
                if stream {
                    let t = r.report.ttfb_us.clone().unwrap_or_default();
                    s += &format!(
                        "{:<12} {:<9} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>12} {:>8}  {}\n",
                        r.point,
                        r.target,
                        r.report.achieved_rps,
                        l.p50,
                        l.p99,
                        l.p999,
                        l.max,
                        t.p50,
                        t.p99,
                        add(r.added_p50_us),
                        add(r.added_p99_us),
                        add(r.added_ttfb_p99_us),
                        cpu,
                        csw,
                        sys,
                        sqe,
                        errs
                    );
                } else {
                    s += &format!(
                        "{:<12} {:<9} {:>9.0} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>8} {:>9} {:>12} {:>8}  {}\n",
                        r.point,
                        r.target,
                        r.report.achieved_rps,
                        l.p50,
                        l.p90,
                        l.p99,
                        l.p999,
                        l.max,
                        add(r.added_p50_us),
                        add(r.added_p99_us),
                        cpu,
                        csw,
                        sys,
                        sqe,
                        errs
                    );
                }
            }
        }
    }
    s += "\nmemory (VmRSS of the process tree)\n";
    for t in &out.targets {
        let role = if t.name == "direct" {
            "mock"
        } else {
            t.name.as_str()
        };
        s += &format!(
            "  {:<9} idle {:>8}   after the run {:>8}{}\n",
            role,
            mb(t.rss_idle_kb),
            if t.failure.is_some() {
                "-".to_string()
            } else {
                mb(t.rss_after_kb)
            },
            t.failure
                .as_ref()
                .map_or(String::new(), |f| format!("   FAILED: {f}"))
        );
    }
    let busiest = out
        .runs
        .iter()
        .map(|r| r.others_cpu_pct)
        .fold(0.0f64, f64::max);
    if busiest >= 5.0 {
        s += &format!(
            "note: other processes on this machine used up to {busiest:.0}% of a CPU during a measured window (see others_cpu_pct in --json): figures are noisy\n"
        );
    }
    let behind: Vec<String> = out
        .runs
        .iter()
        .filter(|r| r.report.generator_behind)
        .map(|r| {
            format!(
                "{} {} {}",
                if r.stream { "stream" } else { "plain" },
                r.point,
                r.target
            )
        })
        .collect();
    if !behind.is_empty() {
        s += &format!(
            "note: the load generator fell behind its schedule (send lag P99 > 1 ms) in: {}\n",
            behind.join(", ")
        );
    }
    if let Some(first) = out.perf_failures.first() {
        s += &format!(
            "note: perf failed in {} window(s), shown as \"-\" (first: {first})\n",
            out.perf_failures.len()
        );
    }
    for sk in &out.skipped {
        s += &format!("skipped: {sk}\n");
    }
    s += &format!("errors: {} in total\n", out.errors_total);
    s
}

fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s}s")
    } else {
        format!("{:.0}ms", s * 1e3)
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_shape() {
        let c = router_config("127.0.0.1:9".parse().unwrap(), Path::new("/tmp/x"), None);
        assert!(c.contains("base_url = \"http://127.0.0.1:9/v1\""));
        assert_eq!(c.matches("[[routers]]").count(), 5);
        let keywords: usize = TAGS.iter().map(|(_, k)| k.len()).sum();
        assert_eq!((TAGS.len(), keywords), (10, 100));
        assert!(c.contains("workers = 1"));
        let orig = router_config(
            "127.0.0.1:9".parse().unwrap(),
            Path::new("/tmp/x"),
            Some(7000),
        );
        assert!(orig.contains("port = 7000") && !orig.contains("workers"));
    }
}
