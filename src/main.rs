//! `opensourcellmrouter`: serve, check a config, or watch a running router.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use opensourcellmrouter::{config, diag, runtime};

const HELP: &str = "\
opensourcellmrouter — a fast, local-first LLM router

USAGE:
    opensourcellmrouter [CONFIG]          serve (CONFIG defaults to ./config.toml;
                                          without it the embedded default config is used)
    opensourcellmrouter check CONFIG      validate CONFIG, print providers and the rule chain
    opensourcellmrouter watch [URL]       print each request on a running router's live feed
                                          (URL defaults to http://localhost:8090)
    opensourcellmrouter tui [URL] [--model M]
                                          terminal UI on a running router: feed, stats, chat
    opensourcellmrouter --help | --version

ENVIRONMENT:
    RUST_LOG                      error | warn | info (default) | debug
    OPENSOURCELLMROUTER_DRIVER    set to `legacy` to force the epoll driver
    OPENSOURCELLMROUTER_URING_FLAGS  set to `0` for a plain io_uring (no COOP_TASKRUN/SINGLE_ISSUER)
    OPENSOURCELLMROUTER_API_KEY   the API key `watch` and `tui` send (Authorization: Bearer)
";

/// Keep idle memory small: mimalloc asks for transparent huge pages on its
/// arena, which would fault in 2 MiB at a time (~10 MB of RSS before the
/// first request). The router's heap is small and hot; 4 KiB pages do.
fn tune_allocator() {
    // SAFETY: prctl with integer arguments only; affects this process's future page faults.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Every proxied request holds up to three descriptors (client, upstream,
/// the client watch); the default soft limit of 1024 would cap a worker at a
/// few hundred concurrent streams. Raise the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        // With the privilege to (root), go up to the kernel's ceiling.
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(lim.rlim_max);
        let wanted = libc::rlimit {
            rlim_cur: ceiling.max(lim.rlim_max),
            rlim_max: ceiling.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help") | Some("-h") | Some("help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("--version") | Some("-V") => {
            println!("opensourcellmrouter {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") => check(args.get(1).map(String::as_str)),
        Some("watch") => opensourcellmrouter::cli::watch_main(&args[1..]),
        Some("tui") => opensourcellmrouter::cli::tui_main(&args[1..]),
        Some(flag) if flag.starts_with('-') => {
            eprintln!("error: unknown option `{flag}`\n\n{HELP}");
            ExitCode::from(2)
        }
        path => serve(path),
    }
}

fn load(path: Option<&str>) -> Result<config::Config, String> {
    config::load_dotenv(Path::new("."));
    match path {
        Some(p) => config::load(Path::new(p)).map_err(|e| e.to_string()),
        None if Path::new("config.toml").exists() => {
            config::load(Path::new("config.toml")).map_err(|e| e.to_string())
        }
        None => {
            diag::info(
                "no config.toml in the working directory: using the embedded default config",
            );
            config::load_default().map_err(|e| e.to_string())
        }
    }
}

fn check(path: Option<&str>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("error: `check` needs a CONFIG path");
        return ExitCode::from(2);
    };
    match load(Some(path)) {
        Ok(cfg) => {
            print!("{}", config::describe(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The signals the router handles itself: blocked in every thread (set
/// before any thread starts) and taken by one signal thread with `sigwait`.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// SIGHUP: read the config again (from where it was read at startup). A bad
/// one is refused with the same error text as `check`, and the running one
/// keeps serving; a good one is published to every worker.
fn reload(path: Option<&str>, running: &config::ServerConfig) {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(e) => {
            diag::error(&format!("reload refused, the running config stays: {e}"));
            return;
        }
    };
    for w in &cfg.warnings {
        diag::warn(w);
    }
    let s = &cfg.server;
    if (s.host.as_str(), s.port, s.workers)
        != (running.host.as_str(), running.port, running.workers)
    {
        diag::warn(
            "reload: [server] host, port and workers need a restart; the running values stay",
        );
    }
    match runtime::Snapshot::build(cfg) {
        Ok((snap, warnings)) => {
            for w in &warnings {
                diag::warn(w);
            }
            let generation = runtime::publish(snap);
            diag::always(&format!("config reloaded (generation {generation})"));
        }
        Err(e) => diag::error(&format!("reload refused, the running config stays: {e}")),
    }
}

/// SIGTERM/SIGINT: drain (a second one: exit at once). SIGHUP: reload.
fn signal_thread(
    set: libc::sigset_t,
    drainer: runtime::Drainer,
    path: Option<String>,
    running: config::ServerConfig,
) {
    let mut draining = false;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is an initialised signal set; sig is a live c_int.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            libc::SIGHUP => reload(path.as_deref(), &running),
            _ if draining => {
                diag::always("second signal: exiting now");
                std::process::exit(128 + sig);
            }
            _ => {
                draining = true;
                drainer.drain();
                diag::always("draining: no new connections; finishing in-flight requests");
            }
        }
    }
}

fn serve(path: Option<&str>) -> ExitCode {
    let signals = handled_signals();
    // SAFETY: blocks these signals in this thread, so every thread spawned
    // from here inherits the mask; the signal thread takes them.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
    }
    let cfg = match load(path) {
        Ok(c) => c,
        Err(e) => {
            diag::error(&e);
            return ExitCode::FAILURE;
        }
    };
    for w in &cfg.warnings {
        diag::warn(w);
    }
    for p in &cfg.providers {
        if let Some(reason) = &p.skipped {
            diag::warn(&format!("provider '{}' skipped: {reason}", p.name));
        }
    }
    let (snapshot, warnings) = match runtime::Snapshot::build(cfg) {
        Ok(s) => s,
        Err(e) => {
            diag::error(&e);
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        diag::warn(w);
    }
    let workers = snapshot.config.server.workers;
    let running = snapshot.config.server.clone();
    let source = snapshot.config.source.clone();
    let server = match runtime::start(Arc::new(snapshot)) {
        Ok(s) => s,
        Err(e) => {
            diag::error(&format!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    diag::always(&format!(
        "opensourcellmrouter listening on http://{} ({workers} workers, {} driver, config {source})",
        server.addr,
        server.driver.name()
    ));
    match server.drainer() {
        Ok(drainer) => {
            let path = path.map(str::to_string);
            let _ = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || signal_thread(signals, drainer, path, running));
        }
        Err(e) => diag::warn(&format!("no graceful drain: {e}")),
    }
    server.join();
    // Every worker has handed over its log lines: let the log thread write them.
    if !opensourcellmrouter::observe::wait_for_writer(std::time::Duration::from_secs(5)) {
        diag::warn("the request log could not be flushed in time");
    }
    // Spans still queued go to the collector (bounded: a collector that does
    // not answer does not hold the exit up for long).
    opensourcellmrouter::runtime::telemetry::flush_at_exit(std::time::Duration::from_secs(3));
    diag::always("drained: exiting");
    ExitCode::SUCCESS
}
