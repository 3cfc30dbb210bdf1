//! Raw → validated: applies defaults, resolves environment variables and
//! provider names, and checks every value, so the snapshot the workers get
//! never needs checking again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::Rule;
use super::locate::{Doc, Seg, doc_path};
use super::raw::{self, RawConfig, RawPlugin, RawProvider, RawRule};
use super::url::parse_base_url;
use super::{
    Balance, ClassifierConfig, Config, ConfigError, Endpoint, LoggingConfig, PluginConfig,
    Provider, ProviderFormat, Scheme, ServerConfig, TelemetryConfig,
};
use crate::plugins::PluginId;

// Defaults of the original router's keys (docs/configuration.md).
pub(crate) const DEFAULT_HOST: &str = "127.0.0.1";
pub(crate) const DEFAULT_PORT: u16 = 8090;
pub(crate) const DEFAULT_LOG_PATH: &str = "logs/requests.jsonl";
pub(crate) const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4318";
pub(crate) const DEFAULT_SERVICE_NAME: &str = "opensourcellmrouter";
pub(crate) const DEFAULT_QUALITY_BIAS: f64 = 0.5;

// Defaults of the new `[server]` keys, chosen so an original config behaves
// as before (generous limits, no timeout a normal request would hit).
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub(crate) const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
pub(crate) const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const DEFAULT_WRITE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub(crate) const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 600_000;
pub(crate) const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
pub(crate) const DEFAULT_SSE_KEEPALIVE_MS: u64 = 15_000;
pub(crate) const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
pub(crate) const DEFAULT_POOL_IDLE_TTL_MS: u64 = 4_000;
pub(crate) const DEFAULT_POOL_MAX_IDLE: usize = 64;

/// The values `format` accepts.
const FORMATS: &str = "openai, anthropic, ollama, mock";

/// Number of worker threads when `[server] workers` is absent.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Builds the snapshot from the raw file. `env` looks variables up.
pub(crate) fn build(
    doc: &Doc<'_>,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let server = server(doc, raw.server, env)?;
    let logging = logging(doc, raw.logging)?;
    let telemetry = telemetry(doc, raw.telemetry)?;
    let providers = providers(doc, raw.providers, env)?;
    let names = Names(&providers);
    let routers = raw
        .routers
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(doc, i, r, &names, &mut warnings))
        .collect::<Result<Vec<_>, _>>()?;
    let (keyword_tags, classifiers) = classifiers(doc, raw.classifiers, &mut warnings)?;
    let response_classifiers = response_classifiers(doc, raw.response_classifiers)?;
    let plugins = plugins(doc, raw.plugins, &names)?;
    Ok(Config {
        source: doc.source().to_owned(),
        server,
        logging,
        telemetry,
        providers,
        keyword_tags,
        classifiers,
        response_classifiers,
        routers,
        plugins,
        warnings,
    })
}

// ---- [server], [logging], [telemetry] ----------------------------------------

fn server(
    doc: &Doc<'_>,
    s: raw::RawServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let at = |key: &str| doc_path!["server", key];
    let host = s.host.unwrap_or_else(|| DEFAULT_HOST.to_owned());
    if host.trim().is_empty() {
        return Err(doc.err(&at("host"), "[server]: `host` must not be empty"));
    }
    // The router's own key: unlike a provider's, a missing one stops startup.
    let api_key = match s.api_key_env.as_deref() {
        None => None,
        Some(var) if var.trim().is_empty() => {
            return Err(doc.err(
                &at("api_key_env"),
                "[server]: `api_key_env` must name an environment variable",
            ));
        }
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(v),
            found => {
                let state = if found.is_none() { "not set" } else { "empty" };
                return Err(doc.err(
                    &at("api_key_env"),
                    format!(
                        "[server]: environment variable {var} (api_key_env) is {state}; the \
                         router refuses to start without its API key"
                    ),
                ));
            }
        },
    };
    let at_least_one = |key: &str, v: u64| {
        if v == 0 {
            Err(doc.err(&at(key), format!("[server]: `{key}` must be at least 1")))
        } else {
            Ok(v)
        }
    };
    let workers = s.workers.unwrap_or_else(default_workers);
    at_least_one("workers", workers as u64)?;
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    at_least_one("max_body_bytes", max_body_bytes as u64)?;
    let max_head_bytes = s.max_head_bytes.unwrap_or(DEFAULT_MAX_HEAD_BYTES);
    at_least_one("max_head_bytes", max_head_bytes as u64)?;
    Ok(ServerConfig {
        host,
        port: s.port.unwrap_or(DEFAULT_PORT),
        dashboard: s.dashboard.unwrap_or(false),
        api_key_env: s.api_key_env,
        api_key,
        workers,
        max_body_bytes,
        max_head_bytes,
        header_timeout_ms: at_least_one(
            "header_timeout_ms",
            s.header_timeout_ms.unwrap_or(DEFAULT_HEADER_TIMEOUT_MS),
        )?,
        idle_timeout_ms: at_least_one(
            "idle_timeout_ms",
            s.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
        )?,
        write_timeout_ms: at_least_one(
            "write_timeout_ms",
            s.write_timeout_ms.unwrap_or(DEFAULT_WRITE_TIMEOUT_MS),
        )?,
        connect_timeout_ms: at_least_one(
            "connect_timeout_ms",
            s.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
        )?,
        first_byte_timeout_ms: at_least_one(
            "first_byte_timeout_ms",
            s.first_byte_timeout_ms
                .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT_MS),
        )?,
        stream_idle_timeout_ms: at_least_one(
            "stream_idle_timeout_ms",
            s.stream_idle_timeout_ms
                .unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_MS),
        )?,
        sse_keepalive_ms: s.sse_keepalive_ms.unwrap_or(DEFAULT_SSE_KEEPALIVE_MS),
        drain_timeout_ms: s.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
        max_attempts: at_least_one("max_attempts", s.max_attempts.unwrap_or(3) as u64)? as usize,
        retry_on_status: match s.retry_on_status {
            None => vec![429, 500, 502, 503, 504],
            Some(list) => {
                if let Some(bad) = list.iter().find(|s| !(400..=599).contains(*s)) {
                    return Err(doc.err(
                        &at("retry_on_status"),
                        format!(
                            "[server]: `retry_on_status` holds {bad}: only 4xx and 5xx statuses"
                        ),
                    ));
                }
                list
            }
        },
        retry_budget: match s.retry_budget.unwrap_or(0.2) {
            b if (0.0..=1.0).contains(&b) => b,
            b => {
                return Err(doc.err(
                    &at("retry_budget"),
                    format!("[server]: `retry_budget` must be between 0 and 1, got {b}"),
                ));
            }
        },
        retry_deadline_ms: s.retry_deadline_ms.unwrap_or(30_000),
        eject_after_failures: s.eject_after_failures.unwrap_or(3),
        eject_base_ms: s.eject_base_ms.unwrap_or(1_000),
        pool_idle_ttl_ms: s.pool_idle_ttl_ms.unwrap_or(DEFAULT_POOL_IDLE_TTL_MS),
        pool_max_idle: s.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
    })
}

fn logging(doc: &Doc<'_>, l: raw::RawLogging) -> Result<LoggingConfig, ConfigError> {
    let path = l.path.unwrap_or_else(|| DEFAULT_LOG_PATH.to_owned());
    if path.trim().is_empty() {
        return Err(doc.err(
            &doc_path!["logging", "path"],
            "[logging]: `path` must not be empty",
        ));
    }
    Ok(LoggingConfig {
        enabled: l.enabled.unwrap_or(false),
        path: PathBuf::from(path),
    })
}

fn telemetry(doc: &Doc<'_>, t: raw::RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    let otlp_endpoint = t
        .otlp_endpoint
        .unwrap_or_else(|| DEFAULT_OTLP_ENDPOINT.to_owned());
    if let Err(why) = parse_base_url(&otlp_endpoint) {
        return Err(doc.err(
            &doc_path!["telemetry", "otlp_endpoint"],
            format!("[telemetry]: invalid otlp_endpoint {otlp_endpoint:?}: {why}"),
        ));
    }
    let service_name = t
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() {
        return Err(doc.err(
            &doc_path!["telemetry", "service_name"],
            "[telemetry]: `service_name` must not be empty",
        ));
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(doc.err(
            &doc_path!["telemetry", "sample_ratio"],
            format!("[telemetry]: `sample_ratio` must be between 0 and 1, got {sample_ratio}"),
        ));
    }
    Ok(TelemetryConfig {
        enabled: t.enabled.unwrap_or(false),
        otlp_endpoint: otlp_endpoint.trim_end_matches('/').to_owned(),
        service_name,
        sample_ratio,
    })
}

// ---- [[providers]] -------------------------------------------------------------

fn providers(
    doc: &Doc<'_>,
    list: Option<Vec<RawProvider>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Provider>, ConfigError> {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        return Err(doc.err_file("no [[providers]] defined; at least one is required"));
    }
    let mut out: Vec<Provider> = Vec::with_capacity(list.len());
    for (i, p) in list.into_iter().enumerate() {
        let provider = provider(doc, i, p, env)?;
        if let Some(first) = out.iter().position(|q| q.name == provider.name) {
            return Err(doc.err(
                &doc_path!["providers", i, "name"],
                format!(
                    "{}: name {:?} is already used by [[providers]] #{}",
                    doc.table_name(&doc_path!["providers", i]),
                    provider.name,
                    first + 1
                ),
            ));
        }
        out.push(provider);
    }
    if out.iter().all(|p| !p.active()) {
        let why: Vec<String> = out
            .iter()
            .map(|p| format!("{} ({})", p.name, p.skipped.as_deref().unwrap_or("")))
            .collect();
        return Err(doc.err_file(format!(
            "no provider is usable, every [[providers]] entry was skipped: {}",
            why.join("; ")
        )));
    }
    Ok(out)
}

fn provider(
    doc: &Doc<'_>,
    i: usize,
    p: RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    let here = doc_path!["providers", i];
    let at = |key: &str| doc_path!["providers", i, key];
    let table = doc.table_name(&here);
    let fail = |key: &str, what: String| doc.err(&at(key), format!("{table}: {what}"));

    if p.name.trim().is_empty() {
        return Err(fail("name", "`name` must not be empty".to_owned()));
    }
    let format = match p.format.as_str() {
        "openai" => ProviderFormat::OpenAi,
        "anthropic" => ProviderFormat::Anthropic,
        "ollama" => ProviderFormat::Ollama,
        "mock" => ProviderFormat::Mock,
        other => {
            return Err(fail(
                "format",
                format!("unknown format {other:?}, expected one of: {FORMATS}"),
            ));
        }
    };

    // The mock answers inside the router: it has no address to parse.
    let (base_url, scheme, host, port, base_path, host_header) = if format == ProviderFormat::Mock {
        match p.base_url.as_deref() {
            None => {}
            Some(u) if u.starts_with("mock://") => {}
            Some(u) => {
                return Err(fail(
                    "base_url",
                    format!(
                        "invalid base_url {u:?}: a mock provider answers inside the router; \
                         omit base_url or write \"mock://\""
                    ),
                ));
            }
        }
        let mock = String::from("mock");
        (
            "mock://".to_owned(),
            Scheme::Http,
            mock.clone(),
            0,
            String::new(),
            mock,
        )
    } else if p.endpoints.is_some() {
        if p.base_url.is_some() {
            return Err(fail(
                "endpoints",
                "set `base_url` or `endpoints`, not both".to_owned(),
            ));
        }
        (
            String::new(),
            Scheme::Http,
            String::new(),
            0,
            String::new(),
            String::new(),
        )
    } else {
        let Some(url) = p.base_url.as_deref() else {
            return Err(doc.err(
                &here,
                format!("missing key `base_url` (or `endpoints`) in {table}"),
            ));
        };
        match parse_base_url(url) {
            Ok(u) => (
                u.normalized,
                u.scheme,
                u.host,
                u.port,
                u.path,
                u.host_header,
            ),
            Err(why) => return Err(fail("base_url", format!("invalid base_url {url:?}: {why}"))),
        }
    };
    let max_in_flight = p.max_in_flight.unwrap_or(0);
    let mut endpoints = Vec::new();
    match &p.endpoints {
        Some(_) if format == ProviderFormat::Mock => {
            return Err(fail(
                "endpoints",
                "a mock provider answers inside the router: it has no endpoints".to_owned(),
            ));
        }
        Some(value) => {
            let Some(list) = value.as_array() else {
                return Err(fail(
                    "endpoints",
                    "`endpoints` must be an array of URLs or { url = \"...\", max_in_flight = N } tables"
                        .to_owned(),
                ));
            };
            if list.is_empty() {
                return Err(fail(
                    "endpoints",
                    "`endpoints` must not be empty".to_owned(),
                ));
            }
            if list.len() > crate::upstream::balance::MAX_ENDPOINTS {
                return Err(fail(
                    "endpoints",
                    format!(
                        "at most {} endpoints per provider, got {}",
                        crate::upstream::balance::MAX_ENDPOINTS,
                        list.len()
                    ),
                ));
            }
            for (n, item) in list.iter().enumerate() {
                let (url, limit) = match item {
                    toml::Value::String(u) => (u.as_str(), max_in_flight),
                    toml::Value::Table(t) => {
                        if let Some(k) = t.keys().find(|k| *k != "url" && *k != "max_in_flight") {
                            return Err(fail(
                                "endpoints",
                                format!(
                                    "endpoint {}: unknown key `{k}` (expected `url`, `max_in_flight`)",
                                    n + 1
                                ),
                            ));
                        }
                        let Some(u) = t.get("url").and_then(toml::Value::as_str) else {
                            return Err(fail(
                                "endpoints",
                                format!("endpoint {}: missing string key `url`", n + 1),
                            ));
                        };
                        let limit = match t.get("max_in_flight") {
                            None => max_in_flight,
                            Some(toml::Value::Integer(v)) if (0..=u32::MAX as i64).contains(v) => {
                                *v as u32
                            }
                            Some(v) => {
                                return Err(fail(
                                    "endpoints",
                                    format!(
                                        "endpoint {}: `max_in_flight` must be an integer >= 0, got {v}",
                                        n + 1
                                    ),
                                ));
                            }
                        };
                        (u, limit)
                    }
                    other => {
                        return Err(fail(
                            "endpoints",
                            format!(
                                "endpoint {}: expected a URL string or a table, got {other}",
                                n + 1
                            ),
                        ));
                    }
                };
                let u = parse_base_url(url).map_err(|why| {
                    fail(
                        "endpoints",
                        format!("endpoint {}: invalid URL {url:?}: {why}", n + 1),
                    )
                })?;
                if endpoints.iter().any(|e: &Endpoint| e.url == u.normalized) {
                    return Err(fail(
                        "endpoints",
                        format!("endpoint {}: {:?} is listed twice", n + 1, u.normalized),
                    ));
                }
                endpoints.push(Endpoint {
                    url: u.normalized,
                    scheme: u.scheme,
                    host: u.host,
                    port: u.port,
                    base_path: u.path,
                    host_header: u.host_header,
                    max_in_flight: limit,
                });
            }
        }
        None => endpoints.push(Endpoint {
            url: base_url.clone(),
            scheme,
            host: host.clone(),
            port,
            base_path: base_path.clone(),
            host_header: host_header.clone(),
            max_in_flight,
        }),
    }
    // The provider-level address fields repeat the first endpoint's.
    let (base_url, scheme, host, port, base_path, host_header) = {
        let e = &endpoints[0];
        (
            e.url.clone(),
            e.scheme,
            e.host.clone(),
            e.port,
            e.base_path.clone(),
            e.host_header.clone(),
        )
    };
    if endpoints.iter().any(|e| e.scheme != scheme) {
        return Err(fail(
            "endpoints",
            "all endpoints of a provider must use the same scheme (http:// or https://)".to_owned(),
        ));
    }
    let balance = match p.balance.as_deref() {
        None | Some("least_outstanding") => Balance::LeastOutstanding,
        Some("prefix_affinity") => Balance::PrefixAffinity,
        Some("round_robin") => Balance::RoundRobin,
        Some(other) => {
            return Err(fail(
                "balance",
                format!(
                    "unknown balance {other:?}, expected one of: least_outstanding, prefix_affinity, round_robin"
                ),
            ));
        }
    };
    let affinity_header = match &p.affinity_header {
        Some(h)
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
        {
            return Err(fail(
                "affinity_header",
                format!("`affinity_header` must be a header name, got {h:?}"),
            ));
        }
        h => h.as_ref().map(|h| h.to_ascii_lowercase()),
    };
    if p.affinity_prefix_bytes == Some(0) {
        return Err(fail(
            "affinity_prefix_bytes",
            "`affinity_prefix_bytes` must be at least 1".to_owned(),
        ));
    }
    let health_path = match &p.health_path {
        Some(h)
            if !h.starts_with('/') || h.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(fail(
                "health_path",
                format!("`health_path` must be a path starting with /, got {h:?}"),
            ));
        }
        h => h.clone(),
    };
    if p.health_interval_ms == Some(0) {
        return Err(fail(
            "health_interval_ms",
            "`health_interval_ms` must be at least 1".to_owned(),
        ));
    }
    if p.queue_timeout_ms == Some(0) {
        return Err(fail(
            "queue_timeout_ms",
            "`queue_timeout_ms` must be at least 1".to_owned(),
        ));
    }

    let non_negative = |key: &str, v: Option<f64>| match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => {
            Err(fail(key, format!("`{key}` must be a number >= 0, got {x}")))
        }
        _ => Ok(v),
    };
    let cost_per_1m_tokens =
        non_negative("cost_per_1m_tokens", p.cost_per_1m_tokens)?.unwrap_or(0.0);
    let latency_ms = non_negative("latency_ms", p.latency_ms)?;
    let throughput_tokens_per_sec =
        non_negative("throughput_tokens_per_sec", p.throughput_tokens_per_sec)?;
    let quality = p.quality.unwrap_or(0.0);
    if !quality.is_finite() {
        return Err(fail(
            "quality",
            format!("`quality` must be a finite number, got {quality}"),
        ));
    }
    if p.first_byte_timeout_ms == Some(0) {
        return Err(fail(
            "first_byte_timeout_ms",
            "`first_byte_timeout_ms` must be at least 1".to_owned(),
        ));
    }

    let (api_key, skipped) = match &p.api_key_env {
        None => (None, None),
        Some(var) if var.trim().is_empty() => {
            return Err(fail(
                "api_key_env",
                "`api_key_env` must name an environment variable".to_owned(),
            ));
        }
        Some(var) => match env(var) {
            None => (None, Some(format!("environment variable {var} is not set"))),
            Some(v) if v.is_empty() => (None, Some(format!("environment variable {var} is empty"))),
            Some(v) => (Some(v), None),
        },
    };

    Ok(Provider {
        name: p.name,
        format,
        base_url,
        scheme,
        host,
        port,
        base_path,
        host_header,
        api_key_env: p.api_key_env,
        api_key,
        cost_per_1m_tokens,
        quality,
        latency_ms,
        throughput_tokens_per_sec,
        skipped,
        first_byte_timeout_ms: p.first_byte_timeout_ms,
        responses: p.responses.unwrap_or(false),
        ca_file: p.ca_file.clone().map(std::path::PathBuf::from),
        endpoints,
        balance,
        affinity_header,
        affinity_prefix_bytes: p.affinity_prefix_bytes.unwrap_or(4096),
        queue_size: p.queue_size.unwrap_or(0),
        queue_timeout_ms: p.queue_timeout_ms.unwrap_or(5000),
        health_path,
        health_interval_ms: p.health_interval_ms.unwrap_or(5000),
    })
}

// ---- [[routers]] ---------------------------------------------------------------

/// Provider name → index lookups with located errors.
struct Names<'a>(&'a [Provider]);

impl Names<'_> {
    fn index(
        &self,
        doc: &Doc<'_>,
        table: &[Seg],
        at: &[Seg],
        name: &str,
    ) -> Result<usize, ConfigError> {
        self.0.iter().position(|p| p.name == name).ok_or_else(|| {
            let defined: Vec<&str> = self.0.iter().map(|p| p.name.as_str()).collect();
            doc.err(
                at,
                format!(
                    "{}: provider {name:?} is not defined in [[providers]] (defined: {})",
                    doc.table_name(table),
                    defined.join(", ")
                ),
            )
        })
    }

    fn list(
        &self,
        doc: &Doc<'_>,
        table: &[Seg],
        list: Option<Vec<String>>,
    ) -> Result<Option<Vec<usize>>, ConfigError> {
        let Some(list) = list else { return Ok(None) };
        let mut at = table.to_vec();
        at.push("providers".into());
        if list.is_empty() {
            return Err(doc.err(
                &at,
                format!(
                    "{}: `providers` is empty; omit it to use every provider",
                    doc.table_name(table)
                ),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(j, name)| {
                let mut item = at.clone();
                item.push(j.into());
                self.index(doc, table, &item, name)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn rule(
    doc: &Doc<'_>,
    i: usize,
    r: RawRule,
    names: &Names<'_>,
    warnings: &mut Vec<String>,
) -> Result<Rule, ConfigError> {
    let here = doc_path!["routers", i];
    let at = |key: &str| doc_path!["routers", i, key];
    let table = doc.table_name(&here);
    let non_empty = |key: &str, v: &str| {
        if v.is_empty() {
            Err(doc.err(&at(key), format!("{table}: `{key}` must not be empty")))
        } else {
            Ok(())
        }
    };
    let rewrite = |v: Option<String>| match v {
        Some(m) => non_empty("rewrite_model", &m).map(|()| Some(m)),
        None => Ok(None),
    };
    let one = |name: &str| names.index(doc, &here, &at("provider"), name);
    let finite = |key: &str, v: Option<f64>| match v {
        Some(x) if !x.is_finite() => Err(doc.err(
            &at(key),
            format!("{table}: `{key}` must be a finite number"),
        )),
        _ => Ok(v),
    };

    Ok(match r {
        RawRule::Prefix(r) => {
            non_empty("model_prefix", &r.model_prefix)?;
            Rule::Prefix {
                provider: one(&r.provider)?,
                model_prefix: r.model_prefix,
                rewrite_model: rewrite(r.rewrite_model)?,
            }
        }
        RawRule::Tag(r) => {
            non_empty("tag", &r.tag)?;
            Rule::Tag {
                provider: one(&r.provider)?,
                tag: r.tag,
                rewrite_model: rewrite(r.rewrite_model)?,
            }
        }
        RawRule::Discover(r) => {
            let provider = one(&r.provider)?;
            let p = &names.0[provider];
            if p.format != ProviderFormat::Ollama {
                warnings.push(format!(
                    "{table}: discover lists models with Ollama's GET /api/tags, but provider {:?} \
                     has format {:?}; discovery will likely fail and the rule pass",
                    p.name,
                    p.format.as_str()
                ));
            }
            Rule::Discover { provider }
        }
        RawRule::Price(r) => Rule::Price {
            providers: names.list(doc, &here, r.providers)?,
            max_cost_per_1m_tokens: finite("max_cost_per_1m_tokens", r.max_cost_per_1m_tokens)?,
        },
        RawRule::Latency(r) => Rule::Latency {
            providers: names.list(doc, &here, r.providers)?,
            max_latency_ms: finite("max_latency_ms", r.max_latency_ms)?,
        },
        RawRule::Throughput(r) => Rule::Throughput {
            providers: names.list(doc, &here, r.providers)?,
            min_tokens_per_sec: finite("min_tokens_per_sec", r.min_tokens_per_sec)?,
        },
        RawRule::Fallback(r) => {
            let quality_bias = r.quality_bias.unwrap_or(DEFAULT_QUALITY_BIAS);
            if !(0.0..=1.0).contains(&quality_bias) {
                return Err(doc.err(
                    &at("quality_bias"),
                    format!("{table}: `quality_bias` must be between 0 and 1, got {quality_bias}"),
                ));
            }
            Rule::Fallback {
                providers: names.list(doc, &here, r.providers)?,
                quality_bias,
                rewrite_model: rewrite(r.rewrite_model)?,
            }
        }
        RawRule::Random(r) => {
            let mut candidates = Vec::new();
            for (j, c) in r.candidates.unwrap_or_default().into_iter().enumerate() {
                let cand = doc_path!["routers", i, "candidates", j];
                let mut at_provider = cand.to_vec();
                at_provider.push("provider".into());
                let provider = names.index(doc, &cand, &at_provider, &c.provider)?;
                if c.model.is_empty() {
                    let mut at_model = cand.to_vec();
                    at_model.push("model".into());
                    return Err(doc.err(
                        &at_model,
                        format!("{}: `model` must not be empty", doc.table_name(&cand)),
                    ));
                }
                candidates.push((provider, c.model));
            }
            Rule::Random {
                providers: names.list(doc, &here, r.providers)?,
                rewrite_model: rewrite(r.rewrite_model)?,
                candidates,
            }
        }
    })
}

// ---- classifiers and plugins -----------------------------------------------------

type KeywordTags = Option<Vec<(String, Vec<String>)>>;

fn classifiers(
    doc: &Doc<'_>,
    c: raw::RawClassifiers,
    warnings: &mut Vec<String>,
) -> Result<(KeywordTags, Vec<ClassifierConfig>), ConfigError> {
    let Some(k) = c.keyword else {
        return Ok((None, Vec::new()));
    };
    let tags_path = doc_path!["classifiers", "keyword", "tags"];
    let mut raw_tags = k.tags;
    let mut tags = Vec::with_capacity(raw_tags.len());
    // File order, so a request's tags come out in the order the user wrote them.
    for tag in doc.keys_in_file_order(&tags_path) {
        let Some(words) = raw_tags.remove(&tag) else {
            continue;
        };
        let mut at = tags_path.to_vec();
        at.push(tag.as_str().into());
        if tag.is_empty() {
            return Err(doc.err(
                &at,
                "[classifiers.keyword.tags]: a tag name must not be empty",
            ));
        }
        if words.iter().any(String::is_empty) {
            return Err(doc.err(
                &at,
                format!(
                    "[classifiers.keyword.tags]: tag {tag:?} has an empty keyword, \
                     which would match every request"
                ),
            ));
        }
        // The classifier matches lowercased text, so keywords are lowercased too.
        tags.push((
            tag,
            words.iter().map(|w| w.to_lowercase()).collect::<Vec<_>>(),
        ));
    }
    if k.enabled && tags.is_empty() {
        warnings.push("[classifiers.keyword] is enabled but defines no tags".to_owned());
    }
    let mut settings = toml::Table::new();
    let tag_table: toml::Table = tags
        .iter()
        .map(|(t, words)| {
            let arr = words.iter().cloned().map(toml::Value::String).collect();
            (t.clone(), toml::Value::Array(arr))
        })
        .collect();
    settings.insert("tags".to_owned(), toml::Value::Table(tag_table));
    let configs = vec![ClassifierConfig {
        id: "keyword".to_owned(),
        enabled: k.enabled,
        settings,
    }];
    Ok((k.enabled.then_some(tags), configs))
}

fn response_classifiers(
    doc: &Doc<'_>,
    c: raw::RawResponseClassifiers,
) -> Result<Vec<ClassifierConfig>, ConfigError> {
    let Some(r) = c.refusal else {
        return Ok(Vec::new());
    };
    let mut settings = toml::Table::new();
    if let Some(phrases) = r.phrases {
        if phrases.iter().any(String::is_empty) {
            return Err(doc.err(
                &doc_path!["response_classifiers", "refusal", "phrases"],
                "[response_classifiers.refusal]: `phrases` has an empty phrase, \
                 which would match every response",
            ));
        }
        let arr = phrases
            .iter()
            .map(|p| toml::Value::String(p.to_lowercase()))
            .collect();
        settings.insert("phrases".to_owned(), toml::Value::Array(arr));
    }
    Ok(vec![ClassifierConfig {
        id: "refusal".to_owned(),
        enabled: r.enabled,
        settings,
    }])
}

fn plugins(
    doc: &Doc<'_>,
    p: raw::RawPlugins,
    names: &Names<'_>,
) -> Result<Vec<PluginConfig>, ConfigError> {
    let mut by_id: BTreeMap<&str, RawPlugin> = BTreeMap::new();
    for (id, plugin) in [
        (PluginId::ResponseHealing.as_str(), p.response_healing),
        (PluginId::ParetoRouter.as_str(), p.pareto_router),
        (PluginId::Web.as_str(), p.web),
        (PluginId::Pdf.as_str(), p.pdf),
    ] {
        if let Some(plugin) = plugin {
            by_id.insert(id, plugin);
        }
    }
    if let Some(pareto) = by_id.get(PluginId::ParetoRouter.as_str()) {
        pareto_tiers(doc, pareto, names)?;
    }
    let order: HashMap<String, usize> = doc
        .keys_in_file_order(&doc_path!["plugins"])
        .into_iter()
        .enumerate()
        .map(|(n, k)| (k, n))
        .collect();
    let mut out: Vec<PluginConfig> = by_id
        .into_iter()
        .map(|(id, p)| PluginConfig {
            id: id.to_owned(),
            enabled: p.enabled,
            settings: p.settings,
        })
        .collect();
    out.sort_by_key(|p| order.get(&p.id).copied().unwrap_or(usize::MAX));
    Ok(out)
}

/// `pareto-router`'s `tiers` name providers: a typo there changes routing,
/// so it is checked like a rule's provider list.
fn pareto_tiers(doc: &Doc<'_>, p: &RawPlugin, names: &Names<'_>) -> Result<(), ConfigError> {
    let here = doc_path!["plugins", "pareto-router"];
    let tiers_at = doc_path!["plugins", "pareto-router", "tiers"];
    let shape = || {
        doc.err(
            &tiers_at,
            "[plugins.pareto-router]: `tiers` must be a table of provider-name arrays, \
             e.g. tiers = { low = [\"local\"], high = [\"openai\"] }",
        )
    };
    let Some(tiers) = p.settings.get("tiers") else {
        return Ok(());
    };
    let tiers = tiers.as_table().ok_or_else(shape)?;
    for (tier, list) in tiers {
        let list = list.as_array().ok_or_else(shape)?;
        for (j, name) in list.iter().enumerate() {
            let name = name.as_str().ok_or_else(shape)?;
            let at = doc_path!["plugins", "pareto-router", "tiers", tier.as_str(), j];
            names.index(doc, &here, &at, name)?;
        }
    }
    Ok(())
}
