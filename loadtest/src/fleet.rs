//! `loadtest compare --fleet`: the fleet scenario. Three mocks behind one
//! provider (each its own `loadtest mock` process, pinned with the load
//! generator), the router pinned to its own CPU, and in one run:
//!
//! 1. **Cost of balancing**: the same open-loop rate through a router whose
//!    provider has one endpoint, through one balancing three endpoints by
//!    least outstanding (P2C), and through one by prefix affinity — P50/P99
//!    and router CPU µs per request, side by side.
//! 2. **Prefix affinity**: a workload of 20 shared system prompts (about
//!    2 KB each, rotating) through the affinity router and the P2C router;
//!    from each router's log, the share of requests that landed on their
//!    prompt's warm replica (the one that served that prompt most) and the
//!    load spread (max / mean requests per replica).
//! 3. **Failover**: the P2C router at the rate again, and one mock killed
//!    (SIGKILL) halfway through the measured window: errors the clients saw
//!    and the P99 against the run before with every mock alive.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::args::Args;
use crate::compare::{
    MOCK_READY, Proc, ROUTER_READY, measure, router_config_with, spawn_listening,
};
use crate::http::{Url, post_request};
use crate::load::{self, LoadConfig, Mode, Report};
use crate::rt;

pub const USAGE: &str = "\
loadtest compare --fleet --router-bin PATH [--baseline-bin PATH] [--rate 5000]
                 [--affinity-rate 1000] [--duration 10s] [--warmup 2s] [--json-out FILE] [--keep]

Three mocks behind one provider: the cost of balancing (one endpoint, P2C,
prefix affinity at --rate), prefix affinity on 20 shared system prompts
(share on the warm replica, load spread, against P2C), and failover (one
mock killed halfway through a run at --rate: client errors, P99 against the
run with all alive). --baseline-bin adds another build of the router with
the one-endpoint config to the balancing runs (before/after in one run).
";

#[derive(Debug, Serialize)]
struct Line {
    scenario: String,
    target: String,
    rate: f64,
    ok: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    cpu_us_per_req: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Affinity {
    balance: String,
    requests: u64,
    warm_share: f64,
    spread_max_over_mean: f64,
    per_replica: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct Output {
    lines: Vec<Line>,
    affinity: Vec<Affinity>,
    failover_errors: BTreeErrors,
}

type BTreeErrors = std::collections::BTreeMap<String, u64>;

fn progress(msg: &str) {
    eprintln!("[fleet] {msg}");
}

pub fn main(argv: &[String]) -> Result<bool, String> {
    let argv: Vec<String> = argv.iter().filter(|a| *a != "--fleet").cloned().collect();
    let a = Args::parse(
        &argv,
        &[
            "router-bin",
            "rate",
            "affinity-rate",
            "duration",
            "warmup",
            "json-out",
            "baseline-bin",
        ],
        &["keep"],
    )?;
    let router_bin = a.str("router-bin").ok_or("--router-bin is required")?;
    let router_bin: PathBuf =
        fs::canonicalize(router_bin).map_err(|e| format!("{router_bin}: {e}"))?;
    let rate: f64 = a.opt("rate")?.unwrap_or(5000.0);
    let affinity_rate: f64 = a.opt("affinity-rate")?.unwrap_or(1000.0);
    let duration = a.duration_or("duration", Duration::from_secs(10))?;
    let warmup = a.duration_or("warmup", Duration::from_secs(2))?;
    rt::raise_nofile();
    let cpus = rt::allowed_cpus();
    let (router_cpu, load_cpu) = if cpus.len() >= 2 {
        (Some(cpus[0]), Some(cpus[1]))
    } else {
        (None, None)
    };
    if let Some(c) = load_cpu {
        rt::pin_current_thread(c).map_err(|e| format!("cannot pin to CPU {c}: {e}"))?;
    }
    let tmp = std::env::temp_dir().join(format!("loadtest-fleet-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;

    // Three mocks on the load CPU.
    let mut mocks: Vec<Option<Proc>> = Vec::new();
    let mut urls = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new(&exe);
        cmd.args(["mock", "--listen", "127.0.0.1:0", "--workers", "1"]);
        let (p, addr) = spawn_listening(
            &format!("mock{i}"),
            cmd,
            load_cpu,
            &tmp.join(format!("mock{i}.log")),
            MOCK_READY,
            Duration::from_secs(10),
        )?;
        urls.push(format!("http://{addr}/v1"));
        mocks.push(Some(p));
    }
    progress(&format!("mocks at {}", urls.join(", ")));

    // Three routers: one endpoint, P2C over three, prefix affinity over three.
    let single = format!("base_url = \"{}\"", urls[0]);
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let p2c = format!("endpoints = [{list}]\nbalance = \"least_outstanding\"");
    let aff = format!(
        "endpoints = [{list}]\nbalance = \"prefix_affinity\"\naffinity_prefix_bytes = 2048"
    );
    let baseline = match a.str("baseline-bin") {
        Some(b) => Some(fs::canonicalize(b).map_err(|e| format!("{b}: {e}"))?),
        None => None,
    };
    let mut routers = Vec::new();
    let mut setups = vec![
        ("one-endpoint", single.clone(), router_bin.clone()),
        ("p2c", p2c, router_bin.clone()),
        ("affinity", aff, router_bin.clone()),
    ];
    if let Some(b) = baseline {
        // The same single-endpoint config on another build (e.g. before fleets).
        setups.push(("baseline", single, b));
    }
    for (name, provider, bin) in setups {
        let dir = tmp.join(name);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("router.toml");
        fs::write(&config, router_config_with(&provider, &dir)).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.arg(&config).current_dir(&dir);
        let (p, addr) = spawn_listening(
            name,
            cmd,
            router_cpu,
            &dir.join("router.log"),
            ROUTER_READY,
            Duration::from_secs(15),
        )?;
        let url = Url::parse(&format!("http://{addr}/v1/chat/completions"), "/")?;
        routers.push((name, p, url, dir.join("requests.jsonl")));
    }

    let cfg = |url: &Url, rate: f64, more: Vec<Vec<u8>>, first: Vec<u8>| LoadConfig {
        request: first,
        more,
        url: url.clone(),
        mode: Mode::Rate(rate),
        duration,
        warmup,
        stream: false,
        threads: 1,
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        max_conns: 10_000,
        cpu: load_cpu,
        spin: None,
    };
    let mut lines = Vec::new();
    let record = |lines: &mut Vec<Line>,
                  scenario: &str,
                  target: &str,
                  rate: f64,
                  r: &Report,
                  cpu_ns: u64| {
        let cpu = (r.ok > 0).then(|| (cpu_ns as f64 / 1e3 / r.ok as f64 * 100.0).round() / 100.0);
        progress(&format!(
            "{scenario:<10} {target:<13} {rate:>6} req/s  ok {:>6}  errors {:>3}  p50 {:>5} µs  p99 {:>6} µs  cpu {} µs/req",
            r.ok,
            r.errors_total,
            r.latency_us.p50,
            r.latency_us.p99,
            cpu.map_or("-".into(), |c| format!("{c:.1}"))
        ));
        lines.push(Line {
            scenario: scenario.into(),
            target: target.into(),
            rate,
            ok: r.ok,
            errors: r.errors_total,
            p50_us: r.latency_us.p50,
            p99_us: r.latency_us.p99,
            cpu_us_per_req: cpu,
        });
    };

    // 1. Cost of balancing.
    for (name, p, url, _) in &routers {
        let body = post_request(url, &load::default_body("bench-model", false));
        let (r, m) = measure(&cfg(url, rate, Vec::new(), body), p.pid())?;
        record(&mut lines, "balancing", name, rate, &r, m.target_cpu_ns);
    }

    // 2. Prefix affinity on 20 shared system prompts.
    let mut affinity = Vec::new();
    for (name, p, url, log) in routers.iter().filter(|r| r.0 == "p2c" || r.0 == "affinity") {
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|i| post_request(url, &prompt_body(i)))
            .collect();
        let (first, more) = bodies.split_first().ok_or("no bodies")?;
        let (r, m) = measure(
            &cfg(url, affinity_rate, more.to_vec(), first.clone()),
            p.pid(),
        )?;
        record(
            &mut lines,
            "affinity",
            name,
            affinity_rate,
            &r,
            m.target_cpu_ns,
        );
        let a = affinity_from_log(log, &urls, name)?;
        progress(&format!(
            "affinity   {name:<13} {} requests: {:.1}% on the warm replica, spread max/mean {:.2}, per replica {:?}",
            a.requests,
            a.warm_share * 100.0,
            a.spread_max_over_mean,
            a.per_replica
        ));
        affinity.push(a);
    }

    // 3. Failover: all alive, then one mock killed halfway through.
    let (_, p2c_proc, p2c_url, _) = &routers[1];
    let body = post_request(p2c_url, &load::default_body("bench-model", false));
    let (r, m) = measure(
        &cfg(p2c_url, rate, Vec::new(), body.clone()),
        p2c_proc.pid(),
    )?;
    record(
        &mut lines,
        "failover",
        "all alive",
        rate,
        &r,
        m.target_cpu_ns,
    );
    let victim = mocks[2].take().ok_or("no mock")?;
    let kill_at = Instant::now() + Duration::from_millis(30) + warmup + duration / 2;
    let killer = std::thread::spawn(move || {
        let now = Instant::now();
        if kill_at > now {
            std::thread::sleep(kill_at - now);
        }
        // SAFETY: kill(2) on a child we spawned.
        unsafe { libc::kill(victim.pid() as libc::pid_t, libc::SIGKILL) };
        victim
    });
    let (r, m) = measure(&cfg(p2c_url, rate, Vec::new(), body), p2c_proc.pid())?;
    drop(killer.join().map_err(|_| "killer panicked")?);
    record(
        &mut lines,
        "failover",
        "one killed",
        rate,
        &r,
        m.target_cpu_ns,
    );
    let failover_errors = r.errors.clone();

    let out = Output {
        lines,
        affinity,
        failover_errors,
    };
    if let Some(f) = a.str("json-out") {
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        fs::write(f, text).map_err(|e| format!("cannot write {f}: {e}"))?;
    }
    drop(routers);
    drop(mocks);
    if a.flag("keep") {
        eprintln!("kept {}", tmp.display());
    } else {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(out
        .lines
        .iter()
        .all(|l| l.scenario == "failover" || l.errors == 0))
}

/// Prompt `i` of the affinity workload: a ~2 KB system prompt of its own,
/// then a user turn.
fn prompt_body(i: usize) -> Vec<u8> {
    let system = format!(
        "Fleet prompt {i:02}. You are a careful assistant for team {i}. {}",
        "Answer briefly, cite the file and line you mean, and never invent APIs. ".repeat(28)
    );
    format!(
        r#"{{"model":"bench-model","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"Question for team {i}: what changed?"}}]}}"#
    )
    .into_bytes()
}

/// From a router's log: per prompt, which replica served it.
fn affinity_from_log(log: &Path, urls: &[String], balance: &str) -> Result<Affinity, String> {
    let text = fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut per_prompt: HashMap<String, Vec<u64>> = HashMap::new();
    let mut per_replica = vec![0u64; urls.len()];
    let mut requests = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(system) = v["system"].as_str() else {
            continue;
        };
        if !system.starts_with("Fleet prompt ") {
            continue;
        }
        let Some(endpoint) = v["attempt_details"]
            .as_array()
            .and_then(|d| d.last())
            .and_then(|d| d["endpoint"].as_str())
        else {
            continue;
        };
        let Some(r) = urls.iter().position(|u| u == endpoint) else {
            continue;
        };
        let key = system.chars().take(16).collect::<String>();
        per_prompt.entry(key).or_insert_with(|| vec![0; urls.len()])[r] += 1;
        per_replica[r] += 1;
        requests += 1;
    }
    let warm: u64 = per_prompt
        .values()
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .sum();
    let mean = requests as f64 / urls.len() as f64;
    let max = per_replica.iter().copied().max().unwrap_or(0) as f64;
    Ok(Affinity {
        balance: balance.to_string(),
        requests,
        warm_share: if requests > 0 {
            warm as f64 / requests as f64
        } else {
            0.0
        },
        spread_max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
        per_replica,
    })
}
