//! Configuration: the TOML file (docs/configuration.md) is parsed into raw serde structs
//! (`raw.rs`, `deny_unknown_fields`), then validated into the immutable
//! [`Config`] snapshot every worker builds its per-core state from.
//!
//! Errors name the file, the table and the key, so a typo never silently
//! changes routing.
//!
//! Files: `raw.rs` (the schema as written), `validate.rs` (defaults, checks,
//! name → index resolution), `locate.rs` (file:line:col, table and key of an
//! error), `url.rs` (`base_url`), `dotenv.rs` (`.env`), `describe.rs` (the
//! `check` subcommand's report), `default.toml` ([`EMBEDDED_DEFAULT`]).
//! User documentation: `docs/configuration.md`.

use std::fmt;
use std::path::{Path, PathBuf};

mod describe;
mod dotenv;
mod locate;
pub mod raw;
mod rule;
mod url;
mod validate;

#[cfg(test)]
mod tests;

pub use describe::describe;
pub use dotenv::{load_dotenv, parse_dotenv};
pub use rule::Rule;

/// The configuration used when no config file exists (docs/providers.md, "mock"): loopback
/// :8090, dashboard and logging on, the keyword classifier, and providers for
/// a local llama-server, Ollama and the built-in mock. See `default.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// The `source` name of a config built from [`EMBEDDED_DEFAULT`].
pub const EMBEDDED_SOURCE: &str = "<embedded default>";

/// A config that cannot be used. `message` names the file, the line:col when
/// known, the table and the key, e.g.
/// ``config.toml:3:1: unknown key `prot` in [server], expected one of: ...``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates the config file at `path`.
///
/// Environment variables are looked up in the process environment first, then
/// in `.env` in the current working directory (docs/configuration.md); the process
/// environment itself is not modified, so this is safe to call for a reload
/// while workers run (see [`load_dotenv`] for startup).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("{source}: cannot read the config file: {e}")))?;
    from_str(&text, &source, &process_env())
}

/// Parses and validates [`EMBEDDED_DEFAULT`] (environment as for [`load`]).
pub fn load_default() -> Result<Config, ConfigError> {
    from_str(EMBEDDED_DEFAULT, EMBEDDED_SOURCE, &process_env())
}

/// Parses and validates `text`; `source` names it in errors and in
/// [`Config::source`]. Pure: environment variables are looked up only
/// through `env`.
pub fn from_str(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let doc = locate::Doc::parse(source, text)?;
    let raw = doc.deserialize()?;
    validate::build(&doc, raw, env)
}

/// Process environment, then `./.env`, without modifying either.
fn process_env() -> impl Fn(&str) -> Option<String> {
    let dotenv = std::env::current_dir()
        .map(|dir| dotenv::read_dotenv(&dir))
        .unwrap_or_default();
    with_dotenv(|key| std::env::var(key).ok(), dotenv)
}

/// `primary` first, `.env` values only for variables `primary` lacks.
fn with_dotenv(
    primary: impl Fn(&str) -> Option<String>,
    dotenv: std::collections::HashMap<String, String>,
) -> impl Fn(&str) -> Option<String> {
    move |key: &str| primary(key).or_else(|| dotenv.get(key).cloned())
}

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderFormat {
    OpenAi,
    Anthropic,
    Ollama,
    /// Built-in provider answering inside the router (docs/providers.md, "mock").
    Mock,
}

impl ProviderFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderFormat::OpenAi => "openai",
            ProviderFormat::Anthropic => "anthropic",
            ProviderFormat::Ollama => "ollama",
            ProviderFormat::Mock => "mock",
        }
    }
}

/// URL scheme of a provider's `base_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A validated `[[providers]]` entry.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub format: ProviderFormat,
    /// `base_url` as configured, trailing `/` removed.
    pub base_url: String,
    pub scheme: Scheme,
    /// Host part of `base_url` (no brackets for IPv6), used for connect and `Host:`.
    pub host: String,
    pub port: u16,
    /// Path part of `base_url` without trailing `/` ("" or "/v1", ...).
    pub base_path: String,
    /// Value of the `Host` header to send (`host` or `host:port` when the port is not the default).
    pub host_header: String,
    pub api_key_env: Option<String>,
    /// Resolved key (None when no `api_key_env` was configured).
    pub api_key: Option<String>,
    pub cost_per_1m_tokens: f64,
    pub quality: f64,
    pub latency_ms: Option<f64>,
    pub throughput_tokens_per_sec: Option<f64>,
    /// `Some(reason)` when the provider was skipped at startup (missing key):
    /// it is kept so rules may name it, but it is never a candidate.
    pub skipped: Option<String>,
    /// New key `first_byte_timeout_ms`: overrides `[server] first_byte_timeout_ms`.
    pub first_byte_timeout_ms: Option<u64>,
    /// New key `responses`: an `openai`-format provider that serves the
    /// Responses API; `/v1/responses` then passes through unchanged.
    pub responses: bool,
    /// New key `ca_file`: extra trusted CA certificates (PEM) for `https://`.
    pub ca_file: Option<PathBuf>,
    /// Where the provider's replicas live: `endpoints = [...]`, or the one
    /// `base_url` (the fields above repeat the first endpoint). Never empty.
    pub endpoints: Vec<Endpoint>,
    /// New key `balance`.
    pub balance: Balance,
    /// New key `affinity_header`: lower-cased header name.
    pub affinity_header: Option<String>,
    /// New key `affinity_prefix_bytes` (default 4096).
    pub affinity_prefix_bytes: usize,
    /// New key `queue_size` (default 0: no waiting, 503 at once).
    pub queue_size: u32,
    /// New key `queue_timeout_ms` (default 5000).
    pub queue_timeout_ms: u64,
    /// New key `health_path`: probed with `GET` every `health_interval_ms`.
    pub health_path: Option<String>,
    /// New key `health_interval_ms` (default 5000).
    pub health_interval_ms: u64,
}

/// One replica of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The URL as configured, trailing `/` removed.
    pub url: String,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub base_path: String,
    pub host_header: String,
    /// Requests in flight at once on this endpoint, across all workers
    /// (0 = no limit).
    pub max_in_flight: u32,
}

/// How a provider spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Power of two random choices, the one with fewer requests in flight.
    LeastOutstanding,
    /// Consistent hashing of the prompt's first bytes (or a header), with
    /// bounded load.
    PrefixAffinity,
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastOutstanding => "least_outstanding",
            Balance::PrefixAffinity => "prefix_affinity",
            Balance::RoundRobin => "round_robin",
        }
    }
}

impl Provider {
    pub fn active(&self) -> bool {
        self.skipped.is_none()
    }

    /// Whether requests in flight are counted per endpoint (balancing or a
    /// limit needs them; a lone unlimited endpoint does not).
    pub fn counts_load(&self) -> bool {
        self.endpoints.len() > 1 || self.endpoints.iter().any(|e| e.max_in_flight > 0)
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub dashboard: bool,
    pub api_key_env: Option<String>,
    /// Resolved inbound key; startup fails when `api_key_env` is set but the variable is not.
    pub api_key: Option<String>,
    /// New key: worker threads (default: number of CPUs).
    pub workers: usize,
    /// New key: request body limit in bytes (default 32 MiB) → 413 beyond it.
    pub max_body_bytes: usize,
    /// New key: request head limit in bytes (default 64 KiB) → 431 beyond it.
    pub max_head_bytes: usize,
    /// New key: whole-head read deadline (default 10 000 ms) → 408 and close.
    pub header_timeout_ms: u64,
    /// New key: idle keep-alive connection timeout (default 60 000 ms).
    pub idle_timeout_ms: u64,
    /// New key: a write to the client that makes no progress for this long
    /// (the client stopped reading) closes the connection (default 60 000 ms).
    pub write_timeout_ms: u64,
    /// New key: upstream connect timeout (default 5 000 ms) → 502.
    pub connect_timeout_ms: u64,
    /// New key: time allowed for the upstream's first response byte (default 600 000 ms) → 504.
    pub first_byte_timeout_ms: u64,
    /// New key: longest silence allowed between upstream reads once the
    /// response head has arrived (default 300 000 ms) → the stream ends with
    /// the client's error event.
    pub stream_idle_timeout_ms: u64,
    /// New key: during a streamed reply's silences, an SSE comment
    /// (`: keep-alive`) goes to the client this often (default 15 000 ms; 0 = never).
    pub sse_keepalive_ms: u64,
    /// New key: on SIGTERM/SIGINT, how long in-flight requests and streams
    /// may take to finish before they are ended (default 30 000 ms).
    pub drain_timeout_ms: u64,
    /// New key: providers tried for one request, the first included
    /// (default 3; 1 = no failover).
    pub max_attempts: usize,
    /// New key: provider statuses that fail over to the next candidate when
    /// one remains (default 429, 500, 502, 503, 504).
    pub retry_on_status: Vec<u16>,
    /// New key: retries on a core stay below this share of its requests
    /// (plus 10), so an outage does not become a retry storm (default 0.2).
    pub retry_budget: f64,
    /// New key: no new attempt starts this long after the request began
    /// (default 30 000 ms).
    pub retry_deadline_ms: u64,
    /// New key: consecutive failures that eject a provider (default 3; 0 = never).
    pub eject_after_failures: u32,
    /// New key: the first ejection's length; each one in a row doubles it,
    /// up to 64× (default 1 000 ms).
    pub eject_base_ms: u64,
    /// New key: idle TTL of pooled upstream connections (default 4 000 ms; vLLM drops at ~5 s).
    pub pool_idle_ttl_ms: u64,
    /// New key: max idle pooled connections per endpoint per core (default 64).
    pub pool_max_idle: usize,
}

/// `[logging]`.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub enabled: bool,
    pub path: PathBuf,
}

/// `[telemetry]` (accepted and validated; export is a later issue).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub enabled: bool,
    pub otlp_endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

/// One enabled-or-not classifier table (`[classifiers.<id>]` / `[response_classifiers.<id>]`).
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    pub id: String,
    pub enabled: bool,
    /// Every other key of the table.
    pub settings: toml::Table,
}

/// `[plugins.<id>]`.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub id: String,
    pub enabled: bool,
    pub settings: toml::Table,
}

/// The validated, immutable configuration snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from: a file path, or `<embedded default>`.
    pub source: String,
    pub server: ServerConfig,
    pub logging: LoggingConfig,
    pub telemetry: TelemetryConfig,
    /// All providers in config order, skipped ones included (see [`Provider::skipped`]).
    pub providers: Vec<Provider>,
    /// `[classifiers.keyword]` when enabled: tags in config order, each with its keywords.
    pub keyword_tags: Option<Vec<(String, Vec<String>)>>,
    /// All `[classifiers.<id>]` tables (keyword included), in file order.
    pub classifiers: Vec<ClassifierConfig>,
    /// All `[response_classifiers.<id>]` tables.
    pub response_classifiers: Vec<ClassifierConfig>,
    /// The rule chain, top to bottom.
    pub routers: Vec<Rule>,
    pub plugins: Vec<PluginConfig>,
    /// Things worth a warning that do not stop the router (a `discover` rule
    /// on a non-Ollama provider, an enabled keyword classifier without tags).
    /// Skipped providers are not repeated here: see [`Provider::skipped`].
    pub warnings: Vec<String>,
}
