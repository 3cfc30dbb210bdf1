//! The `check` subcommand's report: what the router would run with, in
//! readable form — providers (and why any were skipped), classifiers,
//! plugins and the numbered rule chain.

use std::fmt::Write;

use super::Rule;
use super::{Config, Provider, ProviderFormat};

/// Renders `cfg` for `opensourcellmrouter check`. The last line is
/// `config OK (<source>)`, newline-terminated.
pub fn describe(cfg: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let s = &cfg.server;
    let _ = writeln!(
        out,
        "server: http://{}:{} — {} worker{}, dashboard {}, {}",
        if s.host.contains(':') {
            format!("[{}]", s.host)
        } else {
            s.host.clone()
        },
        s.port,
        s.workers,
        if s.workers == 1 { "" } else { "s" },
        if s.dashboard { "on" } else { "off" },
        match &s.api_key_env {
            Some(var) => format!("API key required (from {var})"),
            None => "no API key".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "logging: {}",
        if cfg.logging.enabled {
            cfg.logging.path.display().to_string()
        } else {
            "off".to_owned()
        }
    );
    let _ = writeln!(
        out,
        "limits: body {} bytes, head {} bytes; timeouts (ms): header {}, idle {}, connect {}, \
         first byte {}, stream idle {}; sse keep-alive every {} ms; pool: {} idle per endpoint \
         per worker, ttl {} ms",
        s.max_body_bytes,
        s.max_head_bytes,
        s.header_timeout_ms,
        s.idle_timeout_ms,
        s.connect_timeout_ms,
        s.first_byte_timeout_ms,
        s.stream_idle_timeout_ms,
        s.sse_keepalive_ms,
        s.pool_max_idle,
        s.pool_idle_ttl_ms
    );
    if cfg.telemetry.enabled {
        let _ = writeln!(
            out,
            "telemetry: {} (service {}, sample ratio {})",
            cfg.telemetry.otlp_endpoint, cfg.telemetry.service_name, cfg.telemetry.sample_ratio
        );
    }

    let _ = writeln!(out, "\nproviders:");
    let name_w = cfg
        .providers
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0);
    let url_w = cfg
        .providers
        .iter()
        .map(|p| shown_url(p).len())
        .max()
        .unwrap_or(0);
    for p in &cfg.providers {
        let mut state = match &p.skipped {
            None => "active".to_owned(),
            Some(reason) => format!("skipped: {reason}"),
        };
        if let Some(ms) = p.first_byte_timeout_ms {
            let _ = write!(state, " (first byte timeout {ms} ms)");
        }
        if p.endpoints.len() > 1 {
            let _ = write!(state, ", balance {}", p.balance.as_str());
        }
        if p.queue_size > 0 {
            let _ = write!(
                state,
                ", queue {} for {} ms",
                p.queue_size, p.queue_timeout_ms
            );
        }
        if let Some(path) = &p.health_path {
            let _ = write!(state, ", probes {path} every {} ms", p.health_interval_ms);
        }
        let _ = writeln!(
            out,
            "  {:name_w$}  {:9}  {:url_w$}  {state}",
            p.name,
            p.format.as_str(),
            shown_url(p)
        );
        if p.endpoints.len() > 1 || p.endpoints.iter().any(|e| e.max_in_flight > 0) {
            for (i, e) in p.endpoints.iter().enumerate() {
                let limit = match e.max_in_flight {
                    0 => "no in-flight limit".to_owned(),
                    n => format!("max_in_flight {n}"),
                };
                let _ = writeln!(out, "      endpoint {}: {}  ({limit})", i + 1, e.url);
            }
        }
    }

    let _ = writeln!(out, "\nclassifiers:");
    if cfg.classifiers.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for c in &cfg.classifiers {
        let mut line = format!("  {} {}", c.id, on_off(c.enabled));
        if c.id == "keyword" {
            let tags: Vec<String> = c
                .settings
                .get("tags")
                .and_then(|t| t.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            // The snapshot's own list keeps file order; the settings table is sorted.
            let tags = match &cfg.keyword_tags {
                Some(ordered) => ordered.iter().map(|(t, _)| t.clone()).collect(),
                None => tags,
            };
            if !tags.is_empty() {
                let _ = write!(line, ", tags: {}", tags.join(", "));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if !cfg.response_classifiers.is_empty() {
        let _ = writeln!(out, "\nresponse classifiers:");
    }
    for c in &cfg.response_classifiers {
        let custom = if c.settings.contains_key("phrases") {
            ", custom phrases"
        } else {
            ""
        };
        let _ = writeln!(out, "  {} {}{custom}", c.id, on_off(c.enabled));
    }

    if !cfg.plugins.is_empty() {
        let _ = writeln!(out, "\nplugins:");
        for p in &cfg.plugins {
            let _ = writeln!(out, "  {} {}", p.id, on_off(p.enabled));
        }
    }

    let _ = writeln!(out, "\nrules (top to bottom, first match wins):");
    if cfg.routers.is_empty() {
        let _ = writeln!(
            out,
            "  (none: every request gets 400 \"no provider configured for model\")"
        );
    }
    for (n, rule) in cfg.routers.iter().enumerate() {
        let _ = writeln!(out, "  {:>2}. {}", n + 1, rule_text(cfg, rule));
    }

    if !cfg.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &cfg.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    let _ = writeln!(out, "\nconfig OK ({})", cfg.source);
    out
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "enabled" } else { "disabled" }
}

fn shown_url(p: &Provider) -> String {
    match p.format {
        ProviderFormat::Mock => "(built in)".to_owned(),
        _ if p.endpoints.len() > 1 => format!("{} endpoints", p.endpoints.len()),
        _ => p.base_url.clone(),
    }
}

/// A provider's name, marked when it was skipped at startup.
fn name(cfg: &Config, i: usize) -> String {
    match cfg.providers.get(i) {
        Some(p) if p.active() => p.name.clone(),
        Some(p) => format!("{} (skipped)", p.name),
        None => format!("#{i}?"),
    }
}

fn among(cfg: &Config, providers: &Option<Vec<usize>>) -> String {
    match providers {
        None => "all providers".to_owned(),
        Some(list) => list
            .iter()
            .map(|&i| name(cfg, i))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn rewrite(model: &Option<String>) -> String {
    match model {
        Some(m) => format!(", model rewritten to {m:?}"),
        None => String::new(),
    }
}

fn rule_text(cfg: &Config, rule: &Rule) -> String {
    match rule {
        Rule::Prefix {
            model_prefix,
            provider,
            rewrite_model,
        } => format!(
            "prefix: model starts with {model_prefix:?} → {}{}",
            name(cfg, *provider),
            rewrite(rewrite_model)
        ),
        Rule::Tag {
            tag,
            provider,
            rewrite_model,
        } => format!(
            "tag: request tagged {tag:?} → {}{}",
            name(cfg, *provider),
            rewrite(rewrite_model)
        ),
        Rule::Discover { provider } => format!(
            "discover: model is one {0} lists at startup → {0}",
            name(cfg, *provider)
        ),
        Rule::Price {
            providers,
            max_cost_per_1m_tokens,
        } => {
            let mut t = format!("price: cheapest of {}", among(cfg, providers));
            if let Some(max) = max_cost_per_1m_tokens {
                let _ = write!(t, ", at most {max} per 1M tokens");
            }
            t
        }
        Rule::Latency {
            providers,
            max_latency_ms,
        } => {
            let mut t = format!("latency: lowest latency_ms of {}", among(cfg, providers));
            if let Some(max) = max_latency_ms {
                let _ = write!(t, ", at most {max} ms");
            }
            t
        }
        Rule::Throughput {
            providers,
            min_tokens_per_sec,
        } => {
            let mut t = format!("throughput: highest tokens/s of {}", among(cfg, providers));
            if let Some(min) = min_tokens_per_sec {
                let _ = write!(t, ", at least {min} tokens/s");
            }
            t
        }
        Rule::Fallback {
            providers,
            quality_bias,
            rewrite_model,
        } => format!(
            "fallback: best of {} (quality_bias {quality_bias}){}",
            among(cfg, providers),
            rewrite(rewrite_model)
        ),
        Rule::Random {
            providers,
            rewrite_model,
            candidates,
        } => {
            if candidates.is_empty() {
                format!(
                    "random: any of {}{}",
                    among(cfg, providers),
                    rewrite(rewrite_model)
                )
            } else {
                let pairs: Vec<String> = candidates
                    .iter()
                    .map(|(p, m)| format!("{} {m:?}", name(cfg, *p)))
                    .collect();
                format!("random: any of {}", pairs.join(", "))
            }
        }
    }
}
