//! Workers: one monoio runtime per core, each with its own `SO_REUSEPORT`
//! listener and its own per-core state ([`Core`]) built from the shared,
//! immutable [`Snapshot`]. A request lives and dies on the core that
//! accepted it; nothing on the request path takes a lock.

mod balance;
mod conn;
mod ctx;
mod exchange;
mod lifecycle;
mod metrics;
mod parse;
mod relay;
mod request;
mod respond;
pub mod shutdown;
pub mod telemetry;
mod timer;
mod translate;
mod watch;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};

use crate::classify::{KeywordClassifier, RefusalClassifier};
use crate::config::Config;
use crate::observe::{CoreLog, LogSender};
use crate::route::{Discovery, Rng};
use crate::upstream::tls::TlsConnector;
use crate::upstream::{Pools, Target};

/// Everything workers share, built and validated once on the control thread.
pub struct Snapshot {
    pub config: Config,
    pub classifier: Option<KeywordClassifier>,
    pub refusal: Option<RefusalClassifier>,
    pub discovery: Discovery,
    /// Every provider's endpoints, provider by provider (a provider with a
    /// `base_url` has one; so does the mock).
    pub eps: Vec<EndpointState>,
    /// Provider `p`'s endpoints are `eps[ep_first[p]..ep_first[p + 1]]`.
    pub ep_first: Vec<usize>,
    /// Prefix-affinity rings (index = provider; None unless it balances so).
    pub rings: Vec<Option<crate::upstream::balance::Ring>>,
    /// Requests waiting for a free slot, per provider (all workers).
    pub queued: Vec<std::sync::atomic::AtomicU32>,
    /// Prebuilt body of `GET /v1/models`.
    pub models_body: Vec<u8>,
    pub log: Option<LogSender>,
    /// One TLS connector per `https://` provider (index = provider index).
    pub tls: Vec<Option<TlsConnector>>,
    /// 0 for the config the router started with, +1 per reload (SIGHUP).
    pub generation: u64,
    /// Active health probes of this config's endpoints (stop when the
    /// snapshot is dropped).
    pub prober: Option<crate::upstream::probe::Prober>,
    /// The OTLP exporter when `[telemetry] enabled` (shared across reloads).
    pub exporter: Option<crate::observe::otlp::Exporter>,
}

/// One endpoint of a provider, as the workers see it.
pub struct EndpointState {
    pub provider: usize,
    pub target: Target,
    /// Passive and active health and requests in flight (shared by every
    /// worker; survives reloads that keep the endpoint).
    pub health: Arc<crate::upstream::health::Health>,
    pub max_in_flight: u32,
    /// `provider name|url`: what a reload matches endpoints by.
    pub key: String,
}

impl Snapshot {
    /// Build the snapshot: compile the keyword automaton, resolve provider
    /// addresses, run discovery, open the log. Returns warnings to print.
    pub fn build(config: Config) -> Result<(Snapshot, Vec<String>), String> {
        let mut warnings = Vec::new();
        let classifier = match &config.keyword_tags {
            Some(tags) => Some(
                KeywordClassifier::new(tags).map_err(|e| format!("[classifiers.keyword]: {e}"))?,
            ),
            None => None,
        };
        let refusal = config
            .response_classifiers
            .iter()
            .find(|c| c.id == "refusal" && c.enabled)
            .map(|c| {
                let phrases: Option<Vec<String>> = match c.settings.get("phrases") {
                    None => None,
                    Some(toml::Value::Array(items)) => Some(
                        items
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_string)
                                    .ok_or("`phrases` must be an array of strings")
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(_) => return Err("`phrases` must be an array of strings".to_string()),
                };
                RefusalClassifier::new(phrases.as_deref())
            })
            .transpose()
            .map_err(|e| format!("[response_classifiers.refusal]: {e}"))?;
        let (discovery, discovery_warnings) =
            crate::route::discover(&config, Duration::from_secs(2));
        warnings.extend(discovery_warnings);
        let targets = crate::upstream::resolve_targets(&config.providers);
        let mut eps = Vec::with_capacity(targets.len());
        let mut ep_first = Vec::with_capacity(config.providers.len() + 1);
        let mut targets = targets.into_iter();
        for (pidx, p) in config.providers.iter().enumerate() {
            ep_first.push(eps.len());
            for e in &p.endpoints {
                let Some(target) = targets.next() else {
                    return Err(format!("provider '{}': endpoints out of step", p.name));
                };
                if let Some(err) = &target.resolve_error {
                    warnings.push(format!("provider '{}': {err}", p.name));
                }
                let key = format!("{}|{}", p.name, e.url);
                eps.push(EndpointState {
                    provider: pidx,
                    health: crate::upstream::health::for_endpoint(&p.name, &e.url),
                    target,
                    max_in_flight: e.max_in_flight,
                    key,
                });
            }
        }
        ep_first.push(eps.len());
        let mut probes = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            let p = &config.providers[e.provider];
            let Some(path) = &p.health_path else {
                continue;
            };
            if !p.active() {
                continue;
            }
            let Some(ep) = p.endpoints.get(i - ep_first[e.provider]) else {
                continue;
            };
            if ep.scheme == crate::config::Scheme::Https {
                warnings.push(format!(
                    "provider '{}': health_path is not probed on https:// endpoint {} \
                     (passive health only)",
                    p.name, ep.url
                ));
                continue;
            }
            probes.push(crate::upstream::probe::ProbeTarget::new(
                &p.name,
                &ep.url,
                &ep.host_header,
                path,
                e.target.addrs.clone(),
                Duration::from_millis(p.health_interval_ms),
                e.health.clone(),
            ));
        }
        let rings = config
            .providers
            .iter()
            .map(|p| {
                (p.balance == crate::config::Balance::PrefixAffinity && p.endpoints.len() > 1).then(
                    || {
                        let urls: Vec<&str> = p.endpoints.iter().map(|e| e.url.as_str()).collect();
                        crate::upstream::balance::Ring::new(&urls)
                    },
                )
            })
            .collect();
        let queued = config
            .providers
            .iter()
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect();
        let exporter = match telemetry::exporter_for(&config.telemetry) {
            Ok(e) => e,
            Err(why) => {
                warnings.push(why);
                None
            }
        };
        let models = crate::route::known_models(&config.routers, &discovery);
        let mut models_body = Vec::with_capacity(64 + models.len() * 64);
        models_body.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
        for (i, m) in models.iter().enumerate() {
            if i > 0 {
                models_body.push(b',');
            }
            models_body.extend_from_slice(b"{\"id\":");
            crate::json::write_json_string(&mut models_body, m);
            models_body.extend_from_slice(
                b",\"object\":\"model\",\"created\":0,\"owned_by\":\"opensourcellmrouter\"}",
            );
        }
        models_body.extend_from_slice(b"]}");
        let log =
            if config.logging.enabled {
                Some(crate::observe::start(&config.logging.path).map_err(|e| {
                    format!("[logging] path {}: {e}", config.logging.path.display())
                })?)
            } else {
                None
            };
        let mut tls = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            if p.scheme == crate::config::Scheme::Https && p.active() {
                let connector = TlsConnector::new(p.ca_file.as_deref())
                    .map_err(|e| format!("provider '{}': {e}", p.name))?;
                tls.push(Some(connector));
            } else {
                tls.push(None);
            }
        }
        Ok((
            Snapshot {
                config,
                classifier,
                refusal,
                discovery,
                eps,
                ep_first,
                rings,
                queued,
                models_body,
                log,
                tls,
                generation: 0,
                prober: crate::upstream::probe::start(probes),
                exporter,
            },
            warnings,
        ))
    }
}

impl Snapshot {
    /// Whether `https://` can be spoken to provider `pidx` (a TLS connector
    /// was built for it).
    pub fn tls_ready(&self, pidx: usize) -> bool {
        self.tls.get(pidx).is_some_and(Option::is_some)
    }

    /// Provider `pidx`'s endpoints (global indexes).
    pub fn endpoints_of(&self, pidx: usize) -> std::ops::Range<usize> {
        let start = self.ep_first.get(pidx).copied().unwrap_or(0);
        let end = self.ep_first.get(pidx + 1).copied().unwrap_or(start);
        start..end
    }

    /// Endpoint `eidx`'s URL as configured.
    pub fn endpoint_url(&self, eidx: usize) -> Option<&str> {
        let e = self.eps.get(eidx)?;
        let p = self.config.providers.get(e.provider)?;
        let offset = eidx - self.endpoints_of(e.provider).start;
        p.endpoints.get(offset).map(|e| e.url.as_str())
    }

    /// Whether any endpoint of provider `pidx` may be tried now.
    pub fn provider_usable(&self, pidx: usize, now_ms: u64) -> bool {
        self.eps[self.endpoints_of(pidx)]
            .iter()
            .any(|e| e.health.usable(now_ms))
    }
}

/// The generation of the newest published snapshot (0 = the one the
/// router started with). One relaxed load per request tells a worker
/// whether to pick up a reload.
pub static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The newest snapshot a reload published (rare path: locked only when a
/// worker sees a new generation).
static PUBLISHED: std::sync::Mutex<Option<Arc<Snapshot>>> = std::sync::Mutex::new(None);

/// Publish `snap` to every worker (a reload): requests that start from now
/// on use it; requests in flight finish on the snapshot they started with.
/// Returns its generation.
pub fn publish(mut snap: Snapshot) -> u64 {
    use std::sync::atomic::Ordering;
    let generation = GENERATION.load(Ordering::Acquire) + 1;
    snap.generation = generation;
    if let Ok(mut slot) = PUBLISHED.lock() {
        *slot = Some(Arc::new(snap));
    }
    GENERATION.store(generation, Ordering::Release);
    generation
}

/// One worker's view: its current core (rebuilt when a reload is
/// published) and what every core of the worker shares.
pub struct Worker {
    id: usize,
    current: RefCell<Rc<Core>>,
    seen: Cell<u64>,
}

impl Worker {
    fn new(core: Rc<Core>) -> Self {
        Worker {
            id: core.worker,
            seen: Cell::new(core.snap.generation),
            current: RefCell::new(core),
        }
    }

    /// The core for a request starting now: the current one, or — after a
    /// reload was published — a new one built from the new snapshot, which
    /// keeps the old core's connection pools when the providers are the same.
    pub fn core(&self) -> Rc<Core> {
        use std::sync::atomic::Ordering;
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation != self.seen.get() {
            let snap = PUBLISHED.lock().ok().and_then(|s| s.clone());
            if let Some(snap) = snap {
                let old = self.current.borrow().clone();
                // Lines of the old config go out before the new config's.
                if let Some(log) = &old.log {
                    log.flush_now();
                }
                let (old_metrics, old_feed) = {
                    let cur = self.current.borrow();
                    (cur.metrics.clone(), cur.feed.clone())
                };
                let mut core = Core::new(self.id, snap, old_metrics, old_feed);
                core.active = old.active.clone();
                core.shutdown = old.shutdown.clone();
                let map = kept_endpoints(&old.snap, &core.snap);
                core.pools.adopt(&old.pools, &map);
                let core = Rc::new(core);
                if let Some(log) = &core.log {
                    monoio::spawn(log.clone().run_flusher());
                }
                *self.current.borrow_mut() = core;
            }
            self.seen.set(generation);
        }
        self.current.borrow().clone()
    }
}

/// For each endpoint of `b`, the index of the same endpoint in `a` (same
/// provider name, URL and format): its pooled connections can be kept.
fn kept_endpoints(a: &Snapshot, b: &Snapshot) -> Vec<Option<usize>> {
    b.eps
        .iter()
        .map(|e| {
            let format = b.config.providers[e.provider].format;
            a.eps
                .iter()
                .position(|o| o.key == e.key && a.config.providers[o.provider].format == format)
        })
        .collect()
}

/// Per-core state: built by each worker from the snapshot, never shared
/// across threads (`Rc`, `Cell`, `RefCell`; no locks).
pub struct Core {
    pub snap: Arc<Snapshot>,
    /// This core's TLS connectors (own session caches: no cross-core lock).
    pub tls: Vec<Option<TlsConnector>>,
    /// This core's batch of pending log lines (when logging is on).
    pub log: Option<Rc<CoreLog>>,
    pub pools: Pools,
    pub rng: RefCell<Rng>,
    pub worker: usize,
    next_id: Cell<u64>,
    /// Requests being served on this worker, whatever config generation
    /// they started on (drain waits for 0).
    pub active: Rc<Cell<usize>>,
    /// Fired at this worker's drain deadline.
    pub shutdown: Rc<shutdown::Shutdown>,
    /// Chat requests and failover retries on this core (the retry budget).
    pub budget_requests: Cell<u64>,
    pub budget_retries: Cell<u64>,
    /// Round-robin turn per provider (this core's).
    pub rr: Vec<Cell<usize>>,
    /// This core's requests waiting for a slot, per provider.
    pub waiters: Vec<balance::Waiters>,
    /// This worker's metrics (kept across reloads).
    pub metrics: Rc<crate::observe::metrics::LocalMetrics>,
    /// This worker's pending dashboard feed events (kept across reloads).
    pub feed: Rc<crate::observe::feed::CoreFeed>,
    /// A reused buffer for a log line that also goes to the feed.
    pub line_scratch: RefCell<Vec<u8>>,
}

impl Core {
    fn new(
        worker: usize,
        snap: Arc<Snapshot>,
        metrics: Rc<crate::observe::metrics::LocalMetrics>,
        feed: Rc<crate::observe::feed::CoreFeed>,
    ) -> Self {
        let cfg = &snap.config.server;
        let pools = Pools::new(
            snap.eps.len(),
            Duration::from_millis(cfg.pool_idle_ttl_ms),
            cfg.pool_max_idle,
        );
        let seed =
            crate::observe::now_ms() ^ ((worker as u64 + 1) << 32) ^ u64::from(std::process::id());
        let log = snap.log.clone().map(|s| Rc::new(CoreLog::new(s)));
        let n_providers = snap.config.providers.len();
        let tls = snap
            .tls
            .iter()
            .map(|c| c.as_ref().map(TlsConnector::for_worker))
            .collect();
        Core {
            snap,
            tls,
            log,
            pools,
            rng: RefCell::new(Rng::new(seed)),
            worker,
            next_id: Cell::new(0),
            active: Rc::new(Cell::new(0)),
            shutdown: Rc::new(shutdown::Shutdown::default()),
            budget_requests: Cell::new(0),
            budget_retries: Cell::new(0),
            rr: (0..n_providers).map(|_| Cell::new(worker)).collect(),
            waiters: (0..n_providers)
                .map(|_| balance::Waiters::default())
                .collect(),
            metrics,
            feed,
            line_scratch: RefCell::new(Vec::new()),
        }
    }

    /// A request id unique across workers and restarts: worker, start time, counter.
    pub fn request_id(&self, ts_ms: u64) -> String {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        format!("req_{ts_ms:x}{:02x}{n:06x}", self.worker)
    }
}

/// Which io driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Legacy,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Legacy => "legacy (epoll)",
        }
    }

    /// io_uring when the kernel allows it, unless `OPENSOURCELLMROUTER_DRIVER=legacy`.
    pub fn detect() -> Self {
        let forced_legacy =
            std::env::var("OPENSOURCELLMROUTER_DRIVER").is_ok_and(|v| v == "legacy");
        if !forced_legacy && monoio::utils::detect_uring() {
            DriverKind::IoUring
        } else {
            DriverKind::Legacy
        }
    }
}

/// A running server: its bound address and worker threads.
pub struct Server {
    pub addr: SocketAddr,
    pub driver: DriverKind,
    threads: Vec<JoinHandle<()>>,
    /// One end of each worker's wake-up pipe: a byte starts its drain.
    drain_tx: Vec<std::os::unix::net::UnixStream>,
}

/// Starts a drain from another thread (the signal thread).
pub struct Drainer {
    txs: Vec<std::os::unix::net::UnixStream>,
}

impl Drainer {
    /// Start draining: see [`Server::drain`].
    pub fn drain(&self) {
        shutdown::DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
        for tx in &self.txs {
            let _ = std::io::Write::write_all(&mut &*tx, b"d");
        }
    }
}

impl Server {
    /// A handle that starts the drain from another thread.
    pub fn drainer(&self) -> io::Result<Drainer> {
        let txs = self
            .drain_tx
            .iter()
            .map(|t| t.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Drainer { txs })
    }

    /// Start draining: every worker stops accepting, finishes what it
    /// serves (up to `drain_timeout_ms`), flushes its log batch and exits.
    pub fn drain(&self) {
        shutdown::DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
        for tx in &self.drain_tx {
            let _ = std::io::Write::write_all(&mut &*tx, b"d");
        }
    }

    /// Block until every worker exits (after a drain).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Start one worker per `[server] workers`. Worker 0 binds first (port 0
/// becomes a real port), the others bind the same address with `SO_REUSEPORT`.
pub fn start(snap: Arc<Snapshot>) -> io::Result<Server> {
    let cfg = &snap.config.server;
    let addr = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve {}", cfg.host),
            )
        })?;
    let driver = DriverKind::detect();
    let mut threads = Vec::new();
    let mut bound = addr;
    let mut drain_tx = Vec::new();
    for worker in 0..cfg.workers.max(1) {
        let (tx, rx) = mpsc::channel();
        let snap = snap.clone();
        let (wake_tx, wake_rx) = std::os::unix::net::UnixStream::pair()?;
        drain_tx.push(wake_tx);
        let t = std::thread::Builder::new()
            .name(format!("worker-{worker}"))
            .spawn(move || run_worker(worker, snap, bound, driver, tx, wake_rx))?;
        match rx.recv() {
            Ok(Ok(local)) => bound = local,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other(format!("worker {worker} failed to start"))),
        }
        threads.push(t);
    }
    Ok(Server {
        addr: bound,
        driver,
        threads,
        drain_tx,
    })
}

fn run_worker(
    worker: usize,
    snap: Arc<Snapshot>,
    addr: SocketAddr,
    driver: DriverKind,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
    wake: std::os::unix::net::UnixStream,
) {
    let result = match driver {
        DriverKind::IoUring => {
            // One thread submits to and reaps each ring: cooperative task
            // running (completions are processed at the worker's next ring
            // entry instead of interrupting it) and single issuer. A kernel
            // without them (< 6.0) refuses the flags: then the plain ring.
            let build = |flags: bool| {
                let mut urb = io_uring::IoUring::builder();
                if flags {
                    urb.setup_coop_taskrun().setup_single_issuer();
                }
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(4096)
                    .uring_builder(urb)
                    .enable_timer()
                    .build()
            };
            let flags = !std::env::var("OPENSOURCELLMROUTER_URING_FLAGS").is_ok_and(|v| v == "0");
            build(flags)
                .or_else(|_| build(false))
                .map(|mut rt| rt.block_on(worker_main(worker, snap, addr, ready.clone(), wake)))
        }
        DriverKind::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(worker_main(worker, snap, addr, ready.clone(), wake))),
    };
    if let Err(e) = result {
        let _ = ready.send(Err(e));
    }
}

async fn worker_main(
    worker: usize,
    snap: Arc<Snapshot>,
    addr: SocketAddr,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
    wake: std::os::unix::net::UnixStream,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let listener = match TcpListener::bind_with_config(addr, &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e}"),
            )));
            return;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    timer::start_thread();
    let _ = ready.send(Ok(local));
    let metrics = Rc::new(crate::observe::metrics::LocalMetrics::new());
    let feed = Rc::new(crate::observe::feed::CoreFeed::default());
    monoio::spawn(feed.clone().run_flusher());
    let core = Rc::new(Core::new(worker, snap, metrics, feed));
    if let Some(log) = &core.log {
        monoio::spawn(log.clone().run_flusher());
    }
    let state = Rc::new(Worker::new(core));
    // Idle upstream connections that expired or were closed by the upstream
    // are closed even when no request comes to take them.
    let sweeper = state.clone();
    monoio::spawn(async move {
        loop {
            let ttl = sweeper.current.borrow().pools.ttl();
            monoio::time::sleep(ttl.max(Duration::from_millis(100))).await;
            sweeper.current.borrow().pools.sweep();
        }
    });
    let wake = monoio::net::UnixStream::from_std(wake);
    let mut drain_signal = std::pin::pin!(async move {
        use monoio::io::AsyncReadRent;
        match wake {
            Ok(mut w) => {
                let _ = w.read(vec![0u8; 1]).await;
            }
            // No wake-up pipe: this worker is only stopped with the process.
            Err(_) => std::future::pending::<()>().await,
        }
    });
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = &mut drain_signal => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(conn::serve(stream, state.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("worker {worker}: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Draining: no new connections; let what is in flight finish.
    drop(listener);
    drain(&state.core()).await;
}

/// Wait for this core's requests to finish, up to `drain_timeout_ms`; then
/// end what remains (streams get their error event) and hand the log batch
/// over.
async fn drain(core: &Core) {
    let timeout = Duration::from_millis(core.snap.config.server.drain_timeout_ms);
    let deadline = std::time::Instant::now() + timeout;
    let poll = Duration::from_millis(5);
    while core.active.get() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(poll).await;
    }
    if core.active.get() > 0 {
        core.shutdown.fire();
        // Each request ends at its next wake-up: give them a moment to write it.
        let grace = std::time::Instant::now() + Duration::from_secs(2);
        while core.active.get() > 0 && std::time::Instant::now() < grace {
            monoio::time::sleep(poll).await;
        }
    }
    if let Some(log) = &core.log {
        log.flush_now();
    }
}
