//! The config file as written: serde structs mirroring docs/configuration.md one to one.
//!
//! Every table denies unknown keys, so a typo is an error instead of a
//! silently different routing. Defaults are *not* applied here: optional keys
//! stay `Option` so validation (`validate.rs`) applies them in one place and
//! can tell "absent" from "set".
//!
//! Only the tables whose settings are free-form by design — a plugin's
//! settings — accept any key (`#[serde(flatten)]` into a [`toml::Table`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Required; `None` when the file has no `[[providers]]` at all.
    pub providers: Option<Vec<RawProvider>>,
    #[serde(default)]
    pub classifiers: RawClassifiers,
    #[serde(default)]
    pub response_classifiers: RawResponseClassifiers,
    #[serde(default)]
    pub routers: Vec<RawRule>,
    #[serde(default)]
    pub plugins: RawPlugins,
}

/// `[server]`. The keys after `api_key_env` are new (the original router had
/// fixed values); their defaults live in `validate.rs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dashboard: Option<bool>,
    pub api_key_env: Option<String>,
    pub workers: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_head_bytes: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub sse_keepalive_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub max_attempts: Option<usize>,
    pub retry_on_status: Option<Vec<u16>>,
    pub retry_budget: Option<f64>,
    pub retry_deadline_ms: Option<u64>,
    pub eject_after_failures: Option<u32>,
    pub eject_base_ms: Option<u64>,
    pub pool_idle_ttl_ms: Option<u64>,
    pub pool_max_idle: Option<usize>,
}

/// `[logging]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub enabled: Option<bool>,
    pub path: Option<String>,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub enabled: Option<bool>,
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

/// One `[[providers]]` entry. `format` is a string (not a serde enum) so the
/// error for an unknown format can list the allowed ones in our own words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub format: String,
    /// Required except for `format = "mock"`.
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub cost_per_1m_tokens: Option<f64>,
    pub quality: Option<f64>,
    pub latency_ms: Option<f64>,
    pub throughput_tokens_per_sec: Option<f64>,
    /// New key: per-provider override of `[server] first_byte_timeout_ms`.
    pub first_byte_timeout_ms: Option<u64>,
    /// New key: the provider serves OpenAI's Responses API (`POST {base_url}/responses`),
    /// so `/v1/responses` requests pass through unchanged instead of being translated.
    pub responses: Option<bool>,
    /// New key: PEM file of extra CA certificates trusted for this `https://` provider.
    pub ca_file: Option<String>,
    /// New key: a fleet of replicas instead of `base_url`: URL strings or
    /// `{ url = "...", max_in_flight = N }` tables (checked by hand for
    /// clear errors).
    pub endpoints: Option<toml::Value>,
    /// New key: `least_outstanding` (default), `prefix_affinity`, `round_robin`.
    pub balance: Option<String>,
    /// New key: prefix affinity keyed by this request header when present.
    pub affinity_header: Option<String>,
    /// New key: how many leading bytes of the prompt key prefix affinity.
    pub affinity_prefix_bytes: Option<usize>,
    /// New key: requests in flight per endpoint (0 or absent = no limit).
    pub max_in_flight: Option<u32>,
    /// New key: requests that may wait for a free slot when every endpoint is full.
    pub queue_size: Option<u32>,
    /// New key: how long a request waits in that queue before a 503.
    pub queue_timeout_ms: Option<u64>,
    /// New key: active health check path (GET, expects 2xx).
    pub health_path: Option<String>,
    /// New key: interval between active health probes.
    pub health_interval_ms: Option<u64>,
}

/// `[classifiers]`: one optional table per built-in request classifier.
/// An unknown id is an unknown key here, hence an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassifiers {
    pub keyword: Option<RawKeywordClassifier>,
}

/// `[classifiers.keyword]` and its `[classifiers.keyword.tags]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeywordClassifier {
    #[serde(default)]
    pub enabled: bool,
    /// tag → keywords. A `BTreeMap` loses file order; validation restores it
    /// from the parsed document's spans.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
}

/// `[response_classifiers]`: one optional table per built-in response classifier.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponseClassifiers {
    pub refusal: Option<RawRefusalClassifier>,
}

/// `[response_classifiers.refusal]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRefusalClassifier {
    #[serde(default)]
    pub enabled: bool,
    /// Replaces the built-in phrase list when set.
    pub phrases: Option<Vec<String>>,
}

/// `[plugins]`: one optional table per built-in plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    #[serde(rename = "response-healing")]
    pub response_healing: Option<RawPlugin>,
    #[serde(rename = "pareto-router")]
    pub pareto_router: Option<RawPlugin>,
    pub web: Option<RawPlugin>,
    pub pdf: Option<RawPlugin>,
}

/// `[plugins.<id>]`: `enabled` plus the plugin's default settings, free-form
/// (a request's `plugins` entry overrides them key by key).
#[derive(Debug, Default, Deserialize)]
pub struct RawPlugin {
    #[serde(default)]
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// One `[[routers]]` entry, tagged by `type` (docs/routing.md).
///
/// Each variant wraps its own `deny_unknown_fields` struct, so the set of
/// keys is checked per rule type. (Error locations inside an internally
/// tagged enum are lost by serde; `locate.rs` re-runs the variant struct on
/// the failing entry to get them back.)
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawRule {
    Prefix(RawPrefix),
    Tag(RawTag),
    Discover(RawDiscover),
    Price(RawPrice),
    Latency(RawLatency),
    Throughput(RawThroughput),
    Fallback(RawFallback),
    Random(RawRandom),
}

/// The values of `type`, in the order the docs list them.
pub const RULE_TYPES: [&str; 8] = [
    "prefix",
    "tag",
    "discover",
    "price",
    "latency",
    "throughput",
    "fallback",
    "random",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefix {
    pub model_prefix: String,
    pub provider: String,
    pub rewrite_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTag {
    pub tag: String,
    pub provider: String,
    pub rewrite_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    pub provider: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub providers: Option<Vec<String>>,
    pub max_cost_per_1m_tokens: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    pub providers: Option<Vec<String>>,
    pub max_latency_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThroughput {
    pub providers: Option<Vec<String>>,
    pub min_tokens_per_sec: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub providers: Option<Vec<String>>,
    pub quality_bias: Option<f64>,
    pub rewrite_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRandom {
    pub providers: Option<Vec<String>>,
    pub rewrite_model: Option<String>,
    pub candidates: Option<Vec<RawCandidate>>,
}

/// One `{ provider, model }` pair of a `random` rule's `candidates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCandidate {
    pub provider: String,
    pub model: String,
}
