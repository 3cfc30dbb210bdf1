//! Config tests: every rule type parsed, the shipped configs parse, and one
//! test per validation error that breaks one field and asserts the exact text.

use std::collections::HashMap;

use super::url::parse_base_url;
use super::*;

/// Three providers on lines 1-13; tests append after them.
const PROVIDERS: &str = r#"[[providers]]
name = "local"
format = "openai"
base_url = "http://localhost:8080/v1"

[[providers]]
name = "ollama"
format = "ollama"
base_url = "http://localhost:11434"

[[providers]]
name = "mock"
format = "mock"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_str(text, "config.toml", &no_env)
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(cfg) => cfg,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.message,
    }
}

/// `PROVIDERS` followed by `rest` (which starts on line 15).
fn with_providers(rest: &str) -> String {
    format!("{PROVIDERS}\n{rest}")
}

// ---- shipped configs ------------------------------------------------------------

#[test]
fn embedded_default_parses() {
    let cfg = match from_str(EMBEDDED_DEFAULT, EMBEDDED_SOURCE, &no_env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cfg.source, "<embedded default>");
    assert_eq!(cfg.server.host, "127.0.0.1");
    assert_eq!(cfg.server.port, 8090);
    assert!(cfg.server.dashboard, "the default shows the dashboard");
    assert!(cfg.logging.enabled);
    assert_eq!(cfg.logging.path, PathBuf::from("logs/requests.jsonl"));
    let names: Vec<&str> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["local", "ollama", "mock"]);
    assert!(cfg.providers.iter().all(Provider::active));
    assert_eq!(cfg.providers[0].base_url, "http://localhost:8080/v1");
    assert_eq!(cfg.providers[1].format, ProviderFormat::Ollama);
    assert_eq!(cfg.providers[2].format, ProviderFormat::Mock);
    let tags = cfg
        .keyword_tags
        .as_ref()
        .map(|t| t.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>());
    assert_eq!(tags, Some(vec!["code", "vision", "math", "translation"]));
    assert!(matches!(
        &cfg.routers[..],
        [
            Rule::Prefix { model_prefix, provider: 2, rewrite_model: None },
            Rule::Discover { provider: 1 },
            Rule::Fallback { providers: Some(p), .. },
        ] if model_prefix == "mock" && p == &[0]
    ));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn dashboard_and_telemetry_draw_no_warning_now_that_they_work() {
    let cfg = ok(&format!(
        "[server]\ndashboard = true\n[telemetry]\nenabled = true\n{PROVIDERS}"
    ));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn example_file_parses_without_keys() {
    let cfg = match from_str(
        include_str!("../../config.example.toml"),
        "config.example.toml",
        &no_env,
    ) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    let active: Vec<&str> = cfg
        .providers
        .iter()
        .filter(|p| p.active())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(active, ["local", "ollama", "mock"]);
    assert_eq!(cfg.routers.len(), 9);
    assert_eq!(
        cfg.plugins
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["response-healing", "pareto-router", "web", "pdf"]
    );
    assert_eq!(cfg.providers[0].first_byte_timeout_ms, Some(900_000));
}

#[test]
fn example_file_with_keys_activates_cloud_providers() {
    let env = |k: &str| k.ends_with("_KEY").then(|| "secret".to_owned());
    let cfg = match from_str(include_str!("../../config.example.toml"), "x", &env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    let openai = &cfg.providers[3];
    assert_eq!(openai.name, "openai");
    assert!(openai.active());
    assert_eq!(openai.api_key.as_deref(), Some("secret"));
    // CLOUDFLARE_API_TOKEN does not end in _KEY.
    assert_eq!(
        cfg.providers[5].skipped.as_deref(),
        Some("environment variable CLOUDFLARE_API_TOKEN is not set")
    );
}

// ---- every key parsed -------------------------------------------------------------

#[test]
fn server_logging_telemetry_keys_parse() {
    let text = format!(
        r#"[server]
host = "0.0.0.0"
port = 9000
dashboard = true
api_key_env = "ROUTER_KEY"
workers = 3
max_body_bytes = 1000
max_head_bytes = 2000
header_timeout_ms = 1
idle_timeout_ms = 2
connect_timeout_ms = 3
first_byte_timeout_ms = 4
pool_idle_ttl_ms = 0
pool_max_idle = 0

[logging]
enabled = true
path = "/tmp/x.jsonl"

[telemetry]
enabled = true
otlp_endpoint = "https://otel.example:4318/"
service_name = "svc"
sample_ratio = 0.25
{PROVIDERS}"#
    );
    let env = |k: &str| (k == "ROUTER_KEY").then(|| "s3cret".to_owned());
    let cfg = match from_str(&text, "config.toml", &env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    let s = &cfg.server;
    assert_eq!(
        (s.host.as_str(), s.port, s.dashboard),
        ("0.0.0.0", 9000, true)
    );
    assert_eq!(s.api_key_env.as_deref(), Some("ROUTER_KEY"));
    assert_eq!(s.api_key.as_deref(), Some("s3cret"));
    assert_eq!(
        (s.workers, s.max_body_bytes, s.max_head_bytes),
        (3, 1000, 2000)
    );
    assert_eq!(
        (
            s.header_timeout_ms,
            s.idle_timeout_ms,
            s.connect_timeout_ms,
            s.first_byte_timeout_ms
        ),
        (1, 2, 3, 4)
    );
    assert_eq!((s.pool_idle_ttl_ms, s.pool_max_idle), (0, 0));
    assert!(cfg.logging.enabled);
    assert_eq!(cfg.logging.path, PathBuf::from("/tmp/x.jsonl"));
    let t = &cfg.telemetry;
    assert!(t.enabled);
    assert_eq!(t.otlp_endpoint, "https://otel.example:4318");
    assert_eq!((t.service_name.as_str(), t.sample_ratio), ("svc", 0.25));
}

#[test]
fn server_defaults() {
    let cfg = ok(PROVIDERS);
    let s = &cfg.server;
    assert_eq!(
        (s.host.as_str(), s.port, s.dashboard),
        ("127.0.0.1", 8090, false)
    );
    assert_eq!(
        (s.api_key_env.as_deref(), s.api_key.as_deref()),
        (None, None)
    );
    assert!(s.workers >= 1);
    assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(s.max_head_bytes, 64 * 1024);
    assert_eq!(s.header_timeout_ms, 10_000);
    assert_eq!(s.idle_timeout_ms, 60_000);
    assert_eq!(s.connect_timeout_ms, 5_000);
    assert_eq!(s.first_byte_timeout_ms, 600_000);
    assert_eq!(s.pool_idle_ttl_ms, 4_000);
    assert_eq!(s.pool_max_idle, 64);
    assert!(!cfg.logging.enabled);
    assert_eq!(cfg.logging.path, PathBuf::from("logs/requests.jsonl"));
    let t = &cfg.telemetry;
    assert!(!t.enabled);
    assert_eq!(t.otlp_endpoint, "http://localhost:4318");
    assert_eq!(t.service_name, "opensourcellmrouter");
    assert_eq!(t.sample_ratio, 1.0);
    assert!(cfg.routers.is_empty());
    assert!(cfg.keyword_tags.is_none());
}

#[test]
fn provider_keys_parse() {
    let text = r#"[[providers]]
name = "a"
format = "anthropic"
base_url = "https://api.anthropic.com/v1/"
api_key_env = "A_KEY"
cost_per_1m_tokens = 15
quality = 95.5
latency_ms = 900
throughput_tokens_per_sec = 60.5
first_byte_timeout_ms = 1234
"#;
    let env = |k: &str| (k == "A_KEY").then(|| "k".to_owned());
    let cfg = match from_str(text, "config.toml", &env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    let p = &cfg.providers[0];
    assert_eq!(p.format, ProviderFormat::Anthropic);
    assert_eq!(p.base_url, "https://api.anthropic.com/v1");
    assert_eq!(p.scheme, Scheme::Https);
    assert_eq!((p.host.as_str(), p.port), ("api.anthropic.com", 443));
    assert_eq!(p.base_path, "/v1");
    assert_eq!(p.host_header, "api.anthropic.com");
    assert_eq!(p.api_key.as_deref(), Some("k"));
    assert_eq!(p.cost_per_1m_tokens, 15.0);
    assert_eq!(p.quality, 95.5);
    assert_eq!(p.latency_ms, Some(900.0));
    assert_eq!(p.throughput_tokens_per_sec, Some(60.5));
    assert_eq!(p.first_byte_timeout_ms, Some(1234));
    assert!(p.active());
}

#[test]
fn provider_defaults_and_mock() {
    let cfg = ok(PROVIDERS);
    let local = &cfg.providers[0];
    assert_eq!((local.cost_per_1m_tokens, local.quality), (0.0, 0.0));
    assert_eq!(
        (local.latency_ms, local.throughput_tokens_per_sec),
        (None, None)
    );
    assert_eq!(
        (local.host.as_str(), local.port, local.base_path.as_str()),
        ("localhost", 8080, "/v1")
    );
    assert_eq!(local.host_header, "localhost:8080");
    assert_eq!(local.first_byte_timeout_ms, None);
    let mock = &cfg.providers[2];
    assert_eq!(mock.base_url, "mock://");
    assert!(mock.active());
    // mock:// is accepted as a base_url too.
    ok("[[providers]]\nname = \"m\"\nformat = \"mock\"\nbase_url = \"mock://\"\n");
}

#[test]
fn every_rule_type_with_every_field() {
    let cfg = ok(&with_providers(
        r#"[[routers]]
type = "prefix"
model_prefix = "local/"
provider = "local"
rewrite_model = "llama3.2-3b"

[[routers]]
type = "tag"
tag = "code"
provider = "ollama"
rewrite_model = "qwen"

[[routers]]
type = "discover"
provider = "ollama"

[[routers]]
type = "price"
providers = ["local", "ollama"]
max_cost_per_1m_tokens = 5.0

[[routers]]
type = "latency"
providers = ["ollama"]
max_latency_ms = 500

[[routers]]
type = "throughput"
providers = ["mock", "local"]
min_tokens_per_sec = 30

[[routers]]
type = "fallback"
providers = ["local"]
quality_bias = 0.7
rewrite_model = "fb"

[[routers]]
type = "random"
providers = ["local", "mock"]
rewrite_model = "rnd"
candidates = [
  { provider = "local", model = "llama3.2-3b" },
  { provider = "ollama", model = "deepseek-r1:latest" },
]

[[routers]]
type = "price"

[[routers]]
type = "fallback"
"#,
    ));
    let r = &cfg.routers;
    assert_eq!(r.len(), 10);
    assert!(
        matches!(&r[0], Rule::Prefix { model_prefix, provider: 0, rewrite_model: Some(m) }
        if model_prefix == "local/" && m == "llama3.2-3b")
    );
    assert!(
        matches!(&r[1], Rule::Tag { tag, provider: 1, rewrite_model: Some(m) } if tag == "code" && m == "qwen")
    );
    assert!(matches!(&r[2], Rule::Discover { provider: 1 }));
    assert!(
        matches!(&r[3], Rule::Price { providers: Some(p), max_cost_per_1m_tokens: Some(5.0) } if p == &[0, 1])
    );
    assert!(
        matches!(&r[4], Rule::Latency { providers: Some(p), max_latency_ms: Some(500.0) } if p == &[1])
    );
    assert!(
        matches!(&r[5], Rule::Throughput { providers: Some(p), min_tokens_per_sec: Some(30.0) } if p == &[2, 0])
    );
    assert!(
        matches!(&r[6], Rule::Fallback { providers: Some(p), quality_bias, rewrite_model: Some(m) }
        if p == &[0] && *quality_bias == 0.7 && m == "fb")
    );
    match &r[7] {
        Rule::Random {
            providers: Some(p),
            rewrite_model: Some(m),
            candidates,
        } => {
            assert_eq!(p, &[0, 2]);
            assert_eq!(m, "rnd");
            assert_eq!(
                candidates,
                &[
                    (0, "llama3.2-3b".to_owned()),
                    (1, "deepseek-r1:latest".to_owned())
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &r[8],
        Rule::Price {
            providers: None,
            max_cost_per_1m_tokens: None
        }
    ));
    assert!(
        matches!(&r[9], Rule::Fallback { providers: None, quality_bias, rewrite_model: None } if *quality_bias == 0.5)
    );
}

#[test]
fn classifiers_and_plugins_keep_file_order() {
    let cfg = ok(&with_providers(
        r#"[plugins.pareto-router]
enabled = true
default_tier = "low"
tiers = { low = ["local"], high = ["ollama", "mock"] }

[plugins.response-healing]
enabled = true

[classifiers.keyword]
enabled = true

[classifiers.keyword.tags]
zeta = ["Zed", "def "]
alpha = ["a"]

[response_classifiers.refusal]
enabled = true
phrases = ["Nope"]
"#,
    ));
    assert_eq!(
        cfg.keyword_tags,
        Some(vec![
            ("zeta".to_owned(), vec!["zed".to_owned(), "def ".to_owned()]),
            ("alpha".to_owned(), vec!["a".to_owned()]),
        ])
    );
    assert_eq!(cfg.classifiers.len(), 1);
    assert_eq!(cfg.classifiers[0].id, "keyword");
    assert!(cfg.classifiers[0].settings.contains_key("tags"));
    let refusal = &cfg.response_classifiers[0];
    assert_eq!((refusal.id.as_str(), refusal.enabled), ("refusal", true));
    assert_eq!(
        refusal
            .settings
            .get("phrases")
            .map(ToString::to_string)
            .as_deref(),
        Some(r#"["nope"]"#)
    );
    let ids: Vec<&str> = cfg.plugins.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["pareto-router", "response-healing"]);
    let pareto = &cfg.plugins[0];
    assert!(pareto.enabled);
    assert_eq!(
        pareto.settings.get("default_tier").and_then(|v| v.as_str()),
        Some("low")
    );
    assert!(!pareto.settings.contains_key("enabled"));
}

#[test]
fn disabled_keyword_classifier_has_no_tags() {
    let cfg = ok(&with_providers(
        "[classifiers.keyword.tags]\ncode = [\"fn \"]\n",
    ));
    assert_eq!(cfg.keyword_tags, None);
    assert!(!cfg.classifiers[0].enabled);
}

// ---- unknown keys: one per table kind -------------------------------------------

#[test]
fn unknown_key_in_server() {
    assert_eq!(
        err(&format!("[server]\nprot = 8090\n{PROVIDERS}")),
        "config.toml:2:1: unknown key `prot` in [server], expected one of: host, port, dashboard, \
         api_key_env, workers, max_body_bytes, max_head_bytes, header_timeout_ms, idle_timeout_ms, \
         write_timeout_ms, connect_timeout_ms, first_byte_timeout_ms, stream_idle_timeout_ms, sse_keepalive_ms, drain_timeout_ms, max_attempts, retry_on_status, retry_budget, retry_deadline_ms, eject_after_failures, eject_base_ms, pool_idle_ttl_ms, pool_max_idle"
    );
}

#[test]
fn unknown_key_in_logging() {
    assert_eq!(
        err(&format!("[logging]\nenabld = true\n{PROVIDERS}")),
        "config.toml:2:1: unknown key `enabld` in [logging], expected one of: enabled, path"
    );
}

#[test]
fn unknown_key_in_telemetry() {
    assert_eq!(
        err(&format!(
            "[telemetry]\nendpoint = \"http://x\"\n{PROVIDERS}"
        )),
        "config.toml:2:1: unknown key `endpoint` in [telemetry], expected one of: enabled, \
         otlp_endpoint, service_name, sample_ratio"
    );
}

#[test]
fn unknown_key_in_providers() {
    assert_eq!(
        err(&format!("{PROVIDERS}api_key = \"sk-...\"\n")),
        "config.toml:14:1: unknown key `api_key` in [[providers]] #3 (name \"mock\"), expected one of: \
         name, format, base_url, api_key_env, cost_per_1m_tokens, quality, latency_ms, \
         throughput_tokens_per_sec, first_byte_timeout_ms, responses, ca_file, endpoints, balance, \
         affinity_header, affinity_prefix_bytes, max_in_flight, queue_size, queue_timeout_ms, \
         health_path, health_interval_ms"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        err(&format!("[sever]\nport = 1\n{PROVIDERS}")),
        "config.toml:1:2: unknown table [sever], expected one of: server, logging, telemetry, \
         providers, classifiers, response_classifiers, routers, plugins"
    );
    assert_eq!(
        err(&format!("{PROVIDERS}[[router]]\ntype = \"discover\"\n")),
        "config.toml:14:3: unknown table [[router]], expected one of: server, logging, telemetry, \
         providers, classifiers, response_classifiers, routers, plugins"
    );
}

/// A rule of `type` with one extra key `bogus`, as the second rule.
fn rule_with_bogus(body: &str) -> String {
    with_providers(&format!(
        "[[routers]]\ntype = \"discover\"\nprovider = \"ollama\"\n\n[[routers]]\n{body}bogus = 1\n"
    ))
}

#[test]
fn unknown_key_in_each_rule_type() {
    let cases = [
        (
            "type = \"prefix\"\nmodel_prefix = \"x\"\nprovider = \"local\"\n",
            "prefix",
            "model_prefix, provider, rewrite_model",
            23,
        ),
        (
            "type = \"tag\"\ntag = \"x\"\nprovider = \"local\"\n",
            "tag",
            "tag, provider, rewrite_model",
            23,
        ),
        (
            "type = \"discover\"\nprovider = \"local\"\n",
            "discover",
            "provider",
            22,
        ),
        (
            "type = \"price\"\n",
            "price",
            "providers, max_cost_per_1m_tokens",
            21,
        ),
        (
            "type = \"latency\"\n",
            "latency",
            "providers, max_latency_ms",
            21,
        ),
        (
            "type = \"throughput\"\n",
            "throughput",
            "providers, min_tokens_per_sec",
            21,
        ),
        (
            "type = \"fallback\"\n",
            "fallback",
            "providers, quality_bias, rewrite_model",
            21,
        ),
        (
            "type = \"random\"\n",
            "random",
            "providers, rewrite_model, candidates",
            21,
        ),
    ];
    for (body, ty, known, line) in cases {
        let expected_list = if known.contains(',') {
            format!("expected one of: {known}")
        } else {
            format!("expected: {known}")
        };
        assert_eq!(
            err(&rule_with_bogus(body)),
            format!(
                "config.toml:{line}:1: unknown key `bogus` in [[routers]] #2 (type \"{ty}\"), {expected_list}"
            ),
            "rule type {ty}"
        );
    }
}

#[test]
fn unknown_key_in_candidates() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"random\"\ncandidates = [\n  { provider = \"local\", model = \"a\" },\n  { provider = \"local\", modl = \"b\" },\n]\n"
        )),
        "config.toml:19:25: unknown key `modl` in [[routers]] #1 (type \"random\"), candidates #2, \
         expected one of: provider, model"
    );
}

#[test]
fn unknown_key_in_keyword_classifier() {
    assert_eq!(
        err(&with_providers(
            "[classifiers.keyword]\nenabled = true\ntag = { code = [\"fn\"] }\n"
        )),
        "config.toml:17:1: unknown key `tag` in [classifiers.keyword], expected one of: enabled, tags"
    );
}

#[test]
fn unknown_classifier_and_plugin_ids() {
    assert_eq!(
        err(&with_providers("[classifiers.keywords]\nenabled = true\n")),
        "config.toml:15:14: unknown table [classifiers.keywords], expected: keyword"
    );
    assert_eq!(
        err(&with_providers(
            "[response_classifiers.refusals]\nenabled = true\n"
        )),
        "config.toml:15:23: unknown table [response_classifiers.refusals], expected: refusal"
    );
    assert_eq!(
        err(&with_providers("[plugins.pareto]\nenabled = true\n")),
        "config.toml:15:10: unknown table [plugins.pareto], expected one of: response-healing, \
         pareto-router, web, pdf"
    );
}

#[test]
fn unknown_key_in_refusal_classifier() {
    assert_eq!(
        err(&with_providers(
            "[response_classifiers.refusal]\nphrase = [\"no\"]\n"
        )),
        "config.toml:16:1: unknown key `phrase` in [response_classifiers.refusal], expected one of: \
         enabled, phrases"
    );
}

// ---- wrong types and values ------------------------------------------------------

#[test]
fn keyword_tags_wrong_type() {
    assert_eq!(
        err(&with_providers(
            "[classifiers.keyword.tags]\ncode = \"fn\"\n"
        )),
        "config.toml:16:8: key `code` in [classifiers.keyword.tags]: invalid type: string \"fn\", \
         expected an array"
    );
    assert_eq!(
        err(&with_providers(
            "[classifiers.keyword.tags]\ncode = [\"fn\", 3]\n"
        )),
        "config.toml:16:15: key `code` in [classifiers.keyword.tags]: invalid type: integer `3`, \
         expected a string"
    );
}

#[test]
fn empty_keyword() {
    assert_eq!(
        err(&with_providers(
            "[classifiers.keyword.tags]\ncode = [\"\"]\n"
        )),
        "config.toml:16:8: [classifiers.keyword.tags]: tag \"code\" has an empty keyword, which would \
         match every request"
    );
}

#[test]
fn port_out_of_range() {
    assert_eq!(
        err(&format!("[server]\nport = 70000\n{PROVIDERS}")),
        "config.toml:2:8: key `port` in [server]: invalid value: integer `70000`, expected an \
         integer from 0 to 65535"
    );
}

#[test]
fn rule_value_of_wrong_type() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"fallback\"\nquality_bias = \"high\"\n"
        )),
        "config.toml:17:16: key `quality_bias` in [[routers]] #1 (type \"fallback\"): invalid type: \
         string \"high\", expected a number"
    );
}

#[test]
fn syntax_error() {
    assert_eq!(
        err("[server\nport = 1\n"),
        "config.toml:1:8: invalid TOML: unclosed table, expected `]`"
    );
}

#[test]
fn workers_zero() {
    assert_eq!(
        err(&format!("[server]\nworkers = 0\n{PROVIDERS}")),
        "config.toml:2:11: [server]: `workers` must be at least 1"
    );
}

#[test]
fn timeout_zero() {
    assert_eq!(
        err(&format!("[server]\nconnect_timeout_ms = 0\n{PROVIDERS}")),
        "config.toml:2:22: [server]: `connect_timeout_ms` must be at least 1"
    );
}

#[test]
fn sample_ratio_out_of_range() {
    assert_eq!(
        err(&format!("[telemetry]\nsample_ratio = 2.0\n{PROVIDERS}")),
        "config.toml:2:16: [telemetry]: `sample_ratio` must be between 0 and 1, got 2"
    );
}

// ---- providers -------------------------------------------------------------------

#[test]
fn no_providers() {
    assert_eq!(
        err("[server]\nport = 1\n"),
        "config.toml: no [[providers]] defined; at least one is required"
    );
}

#[test]
fn missing_provider_name() {
    assert_eq!(
        err(&format!(
            "{PROVIDERS}\n[[providers]]\nformat = \"openai\"\nbase_url = \"http://x\"\n"
        )),
        "config.toml:15:1: missing key `name` in [[providers]] #4"
    );
}

#[test]
fn empty_provider_name() {
    assert_eq!(
        err("[[providers]]\nname = \"\"\nformat = \"mock\"\n"),
        "config.toml:2:8: [[providers]] #1 (name \"\"): `name` must not be empty"
    );
}

#[test]
fn duplicate_provider_name() {
    assert_eq!(
        err(&format!(
            "{PROVIDERS}\n[[providers]]\nname = \"local\"\nformat = \"mock\"\n"
        )),
        "config.toml:16:8: [[providers]] #4 (name \"local\"): name \"local\" is already used by \
         [[providers]] #1"
    );
}

#[test]
fn unknown_format() {
    assert_eq!(
        err("[[providers]]\nname = \"a\"\nformat = \"openia\"\nbase_url = \"http://x\"\n"),
        "config.toml:3:10: [[providers]] #1 (name \"a\"): unknown format \"openia\", expected one of: \
         openai, anthropic, ollama, mock"
    );
}

#[test]
fn bad_base_url() {
    assert_eq!(
        err("[[providers]]\nname = \"a\"\nformat = \"openai\"\nbase_url = \"localhost:8080/v1\"\n"),
        "config.toml:4:12: [[providers]] #1 (name \"a\"): invalid base_url \"localhost:8080/v1\": \
         must start with http:// or https://"
    );
    assert_eq!(
        err("[[providers]]\nname = \"a\"\nformat = \"openai\"\nbase_url = \"http://h:99999\"\n"),
        "config.toml:4:12: [[providers]] #1 (name \"a\"): invalid base_url \"http://h:99999\": \
         has an invalid port \"99999\""
    );
}

#[test]
fn missing_base_url() {
    assert_eq!(
        err("[[providers]]\nname = \"a\"\nformat = \"ollama\"\n"),
        "config.toml:1:1: missing key `base_url` (or `endpoints`) in [[providers]] #1 (name \"a\")"
    );
}

#[test]
fn endpoints_instead_of_base_url() {
    let cfg = ok("[[providers]]\nname = \"fleet\"\nformat = \"openai\"\n\
         endpoints = [\"http://10.0.0.1:8000/v1/\", { url = \"http://10.0.0.2:8001/v1\", max_in_flight = 4 }]\n\
         balance = \"prefix_affinity\"\naffinity_header = \"X-Session-Id\"\nmax_in_flight = 8\n\
         queue_size = 16\nqueue_timeout_ms = 2000\nhealth_path = \"/health\"\n");
    let p = &cfg.providers[0];
    assert_eq!(p.endpoints.len(), 2);
    assert_eq!(p.endpoints[0].url, "http://10.0.0.1:8000/v1");
    assert_eq!(p.endpoints[0].max_in_flight, 8, "the provider's limit");
    assert_eq!(p.endpoints[1].host_header, "10.0.0.2:8001");
    assert_eq!(p.endpoints[1].max_in_flight, 4, "the endpoint's own limit");
    assert_eq!(
        p.base_url, "http://10.0.0.1:8000/v1",
        "base_url repeats the first"
    );
    assert_eq!(p.balance, crate::config::Balance::PrefixAffinity);
    assert_eq!(p.affinity_header.as_deref(), Some("x-session-id"));
    assert_eq!((p.queue_size, p.queue_timeout_ms), (16, 2000));
    assert_eq!(p.health_path.as_deref(), Some("/health"));
    // An original config: one endpoint from base_url, default balancing.
    let cfg =
        ok("[[providers]]\nname = \"a\"\nformat = \"openai\"\nbase_url = \"http://h:1/v1\"\n");
    assert_eq!(cfg.providers[0].endpoints.len(), 1);
    assert_eq!(cfg.providers[0].endpoints[0].url, "http://h:1/v1");
    assert!(!cfg.providers[0].counts_load());
}

#[test]
fn bad_endpoints() {
    let base = "[[providers]]\nname = \"a\"\nformat = \"openai\"\n";
    let cases = [
        (
            "base_url = \"http://h:1\"\nendpoints = [\"http://h:2\"]\n",
            "set `base_url` or `endpoints`, not both",
        ),
        ("endpoints = []\n", "`endpoints` must not be empty"),
        (
            "endpoints = \"http://h:1\"\n",
            "`endpoints` must be an array",
        ),
        (
            "endpoints = [\"ftp://h\"]\n",
            "endpoint 1: invalid URL \"ftp://h\"",
        ),
        (
            "endpoints = [\"http://h:1\", \"http://h:1/\"]\n",
            "endpoint 2: \"http://h:1\" is listed twice",
        ),
        (
            "endpoints = [{ url = \"http://h:1\", weight = 2 }]\n",
            "endpoint 1: unknown key `weight`",
        ),
        (
            "endpoints = [\"http://h:1\", \"https://h:2\"]\n",
            "must use the same scheme",
        ),
        (
            "endpoints = [\"http://h:1\"]\nbalance = \"random\"\n",
            "unknown balance \"random\", expected one of: least_outstanding, prefix_affinity, round_robin",
        ),
        (
            "endpoints = [\"http://h:1\"]\nhealth_path = \"health\"\n",
            "`health_path` must be a path starting with /",
        ),
        (
            "endpoints = [\"http://h:1\"]\naffinity_header = \"a b\"\n",
            "`affinity_header` must be a header name",
        ),
    ];
    for (extra, want) in cases {
        let got = err(&format!("{base}{extra}"));
        assert!(got.contains(want), "{extra}: {got}");
    }
    let mock =
        err("[[providers]]\nname = \"m\"\nformat = \"mock\"\nendpoints = [\"http://h:1\"]\n");
    assert!(
        mock.contains("a mock provider answers inside the router"),
        "{mock}"
    );
}

#[test]
fn mock_with_http_base_url() {
    assert_eq!(
        err("[[providers]]\nname = \"m\"\nformat = \"mock\"\nbase_url = \"http://x\"\n"),
        "config.toml:4:12: [[providers]] #1 (name \"m\"): invalid base_url \"http://x\": a mock \
         provider answers inside the router; omit base_url or write \"mock://\""
    );
}

#[test]
fn negative_cost() {
    assert_eq!(
        err("[[providers]]\nname = \"m\"\nformat = \"mock\"\ncost_per_1m_tokens = -1\n"),
        "config.toml:4:22: [[providers]] #1 (name \"m\"): `cost_per_1m_tokens` must be a number >= 0, \
         got -1"
    );
}

#[test]
fn missing_key_env_skips_provider() {
    let text = format!(
        "{PROVIDERS}\n[[providers]]\nname = \"openai\"\nformat = \"openai\"\n\
         base_url = \"https://api.openai.com/v1\"\napi_key_env = \"OPENAI_API_KEY\"\n\n\
         [[providers]]\nname = \"xai\"\nformat = \"openai\"\nbase_url = \"https://api.x.ai/v1\"\n\
         api_key_env = \"XAI_API_KEY\"\n\n\
         [[routers]]\ntype = \"prefix\"\nmodel_prefix = \"gpt-\"\nprovider = \"openai\"\n"
    );
    let env = |k: &str| (k == "XAI_API_KEY").then(String::new);
    let cfg = match from_str(&text, "config.toml", &env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    let openai = &cfg.providers[3];
    assert!(!openai.active());
    assert_eq!(
        openai.skipped.as_deref(),
        Some("environment variable OPENAI_API_KEY is not set")
    );
    assert_eq!(openai.api_key, None);
    assert_eq!(
        cfg.providers[4].skipped.as_deref(),
        Some("environment variable XAI_API_KEY is empty")
    );
    // Rules may still name a skipped provider.
    assert!(matches!(&cfg.routers[0], Rule::Prefix { provider: 3, .. }));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn no_provider_left() {
    assert_eq!(
        err(
            "[[providers]]\nname = \"openai\"\nformat = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
             api_key_env = \"OPENAI_API_KEY\"\n\n[[providers]]\nname = \"claude\"\nformat = \"anthropic\"\n\
             base_url = \"https://api.anthropic.com\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n"
        ),
        "config.toml: no provider is usable, every [[providers]] entry was skipped: openai \
         (environment variable OPENAI_API_KEY is not set); claude (environment variable \
         ANTHROPIC_API_KEY is not set)"
    );
}

#[test]
fn server_api_key_env_unset() {
    assert_eq!(
        err(&format!(
            "[server]\napi_key_env = \"ROUTER_API_KEY\"\n{PROVIDERS}"
        )),
        "config.toml:2:15: [server]: environment variable ROUTER_API_KEY (api_key_env) is not set; \
         the router refuses to start without its API key"
    );
    let env = |k: &str| (k == "ROUTER_API_KEY").then(String::new);
    let e = from_str(
        &format!("[server]\napi_key_env = \"ROUTER_API_KEY\"\n{PROVIDERS}"),
        "c",
        &env,
    );
    assert_eq!(
        e.map(|_| ()).map_err(|e| e.message),
        Err(
            "c:2:15: [server]: environment variable ROUTER_API_KEY (api_key_env) is empty; \
             the router refuses to start without its API key"
                .to_owned()
        )
    );
}

// ---- rules -----------------------------------------------------------------------

#[test]
fn unknown_provider_in_rule() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"discover\"\nprovider = \"ollama\"\n\n[[routers]]\ntype = \"tag\"\n\
             tag = \"code\"\nprovider = \"opnai\"\n"
        )),
        "config.toml:22:12: [[routers]] #2 (type \"tag\"): provider \"opnai\" is not defined in \
         [[providers]] (defined: local, ollama, mock)"
    );
}

#[test]
fn unknown_provider_in_rule_list() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"price\"\nproviders = [\"local\", \"olama\"]\n"
        )),
        "config.toml:17:23: [[routers]] #1 (type \"price\"): provider \"olama\" is not defined in \
         [[providers]] (defined: local, ollama, mock)"
    );
}

#[test]
fn unknown_provider_in_candidates() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"random\"\ncandidates = [{ provider = \"lokal\", model = \"m\" }]\n"
        )),
        "config.toml:17:28: [[routers]] #1 (type \"random\"), candidates #1: provider \"lokal\" is \
         not defined in [[providers]] (defined: local, ollama, mock)"
    );
}

#[test]
fn unknown_provider_in_pareto_tiers() {
    assert_eq!(
        err(&with_providers(
            "[plugins.pareto-router]\ntiers = { low = [\"local\", \"cheap\"] }\n"
        )),
        "config.toml:16:27: [plugins.pareto-router]: provider \"cheap\" is not defined in \
         [[providers]] (defined: local, ollama, mock)"
    );
}

#[test]
fn unknown_rule_type() {
    assert_eq!(
        err(&with_providers("[[routers]]\ntype = \"cheapest\"\n")),
        "config.toml:16:8: unknown rule type \"cheapest\" in [[routers]] #1, expected one of: prefix, \
         tag, discover, price, latency, throughput, fallback, random"
    );
}

#[test]
fn missing_rule_type() {
    assert_eq!(
        err(&with_providers("[[routers]]\nprovider = \"local\"\n")),
        "config.toml:15:1: missing key `type` in [[routers]] #1, expected one of: prefix, tag, \
         discover, price, latency, throughput, fallback, random"
    );
}

#[test]
fn missing_rule_field() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"tag\"\nprovider = \"local\"\n"
        )),
        "config.toml:15:1: missing key `tag` in [[routers]] #1 (type \"tag\")"
    );
}

#[test]
fn quality_bias_out_of_range() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"fallback\"\nquality_bias = 1.5\n"
        )),
        "config.toml:17:16: [[routers]] #1 (type \"fallback\"): `quality_bias` must be between 0 and \
         1, got 1.5"
    );
}

#[test]
fn empty_model_prefix() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"prefix\"\nmodel_prefix = \"\"\nprovider = \"local\"\n"
        )),
        "config.toml:17:16: [[routers]] #1 (type \"prefix\"): `model_prefix` must not be empty"
    );
}

#[test]
fn empty_providers_list() {
    assert_eq!(
        err(&with_providers(
            "[[routers]]\ntype = \"latency\"\nproviders = []\n"
        )),
        "config.toml:17:13: [[routers]] #1 (type \"latency\"): `providers` is empty; omit it to use \
         every provider"
    );
}

#[test]
fn discover_on_non_ollama_warns() {
    let cfg = ok(&with_providers(
        "[[routers]]\ntype = \"discover\"\nprovider = \"local\"\n",
    ));
    assert_eq!(
        cfg.warnings,
        [
            "[[routers]] #1 (type \"discover\"): discover lists models with Ollama's GET /api/tags, \
          but provider \"local\" has format \"openai\"; discovery will likely fail and the rule pass"
        ]
    );
}

// ---- base_url --------------------------------------------------------------------

#[test]
fn base_urls() {
    let u = parse_base_url("http://[::1]:8080/v1/").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 8080, "/v1")
    );
    assert_eq!(u.host_header, "[::1]:8080");
    assert_eq!(u.normalized, "http://[::1]:8080/v1");
    let u = parse_base_url("https://[2001:db8::1]").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((u.port, u.host_header.as_str()), (443, "[2001:db8::1]"));
    let u = parse_base_url("HTTP://Example.com:80").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (u.scheme, u.port, u.host_header.as_str(), u.path.as_str()),
        (Scheme::Http, 80, "Example.com", "")
    );
    let u = parse_base_url("https://h:8443").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.host_header, "h:8443");

    let bad = |s: &str| parse_base_url(s).err().unwrap_or_default();
    assert_eq!(bad("ftp://x"), "must start with http:// or https://");
    assert_eq!(bad("http://"), "has no host");
    assert_eq!(bad("http://:80"), "has no host");
    assert_eq!(bad("http://h:0"), "has an invalid port \"0\"");
    assert_eq!(bad("http://h:"), "has an invalid port \"\"");
    assert_eq!(bad("http://h:+80"), "has an invalid port \"+80\"");
    assert_eq!(
        bad("http://::1:80"),
        "has an IPv6 address without brackets (write http://[::1]:8080)"
    );
    assert_eq!(bad("http://[::1"), "has an unclosed `[` in the host");
    assert_eq!(bad("http://[zz]"), "has an invalid IPv6 address [zz]");
    assert_eq!(
        bad("http://[::1]x"),
        "has unexpected text after the IPv6 address"
    );
    assert_eq!(
        bad("http://u:p@h"),
        "must not contain user info (put credentials in api_key_env)"
    );
    assert_eq!(
        bad("http://h/v1?x=1"),
        "must not contain a query or fragment"
    );
    assert_eq!(
        bad("http://h h"),
        "must not contain spaces or control characters"
    );
    assert_eq!(bad("http://h%/"), "has an invalid host \"h%\"");
}

// ---- .env ------------------------------------------------------------------------

#[test]
fn dotenv_syntax() {
    let text = "\
# comment
\n\
PLAIN=value\n\
SPACED = spaced value   \n\
export EXPORTED=yes\n\
DQ=\"two words # not a comment\" # comment\n\
ESC=\"a\\nb\\\"c\\\\\"\n\
SQ='literal \\n $x'\n\
INLINE=abc # trailing comment\n\
HASH=a#b\n\
EMPTY=\n\
not a line\n\
1BAD=x\n\
UNTERMINATED=\"oops\n\
";
    let parsed = parse_dotenv(text);
    let expected: Vec<(String, String)> = [
        ("PLAIN", "value"),
        ("SPACED", "spaced value"),
        ("EXPORTED", "yes"),
        ("DQ", "two words # not a comment"),
        ("ESC", "a\nb\"c\\"),
        ("SQ", "literal \\n $x"),
        ("INLINE", "abc"),
        ("HASH", "a#b"),
        ("EMPTY", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(parsed, expected);
}

#[test]
fn dotenv_never_overrides_the_environment() {
    let dotenv: HashMap<String, String> = parse_dotenv("A=from-dotenv\nB=from-dotenv\n")
        .into_iter()
        .collect();
    let process = |k: &str| (k == "A").then(|| "from-process".to_owned());
    let env = with_dotenv(process, dotenv);
    assert_eq!(env("A").as_deref(), Some("from-process"));
    assert_eq!(env("B").as_deref(), Some("from-dotenv"));
    assert_eq!(env("C"), None);
}

#[test]
fn dotenv_key_activates_provider() {
    let dir = std::env::temp_dir().join(format!("osllmr-dotenv-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(".env"), "export DOTENV_TEST_KEY='k-123'\n");
    let dotenv = dotenv::read_dotenv(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let env = with_dotenv(no_env, dotenv);
    let cfg = match from_str(
        "[[providers]]\nname = \"a\"\nformat = \"openai\"\nbase_url = \"http://x\"\napi_key_env = \"DOTENV_TEST_KEY\"\n",
        "config.toml",
        &env,
    ) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cfg.providers[0].api_key.as_deref(), Some("k-123"));
}

// ---- load and describe -----------------------------------------------------------

#[test]
fn load_reads_a_file_and_names_it() {
    let path = std::env::temp_dir().join(format!("osllmr-config-{}.toml", std::process::id()));
    let _ = std::fs::write(&path, format!("[server]\nprot = 1\n{PROVIDERS}"));
    let result = load(&path);
    let _ = std::fs::remove_file(&path);
    let message = result
        .map(|_| ())
        .map_err(|e| e.message)
        .err()
        .unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "{}:2:1: unknown key `prot` in [server]",
            path.display()
        )),
        "{message}"
    );
    let missing = load(Path::new("/nonexistent/config.toml"))
        .map(|_| ())
        .map_err(|e| e.message);
    assert!(
        matches!(&missing, Err(m) if m.starts_with("/nonexistent/config.toml: cannot read the config file: ")),
        "{missing:?}"
    );
}

#[test]
fn describe_shows_providers_rules_and_ok_line() {
    let text = format!(
        "[server]\nworkers = 2\ndashboard = true\n{PROVIDERS}\n[[providers]]\nname = \"openai\"\n\
         format = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"OPENAI_API_KEY\"\n\n\
         [classifiers.keyword]\nenabled = true\n[classifiers.keyword.tags]\ncode = [\"fn \"]\n\n\
         [[routers]]\ntype = \"prefix\"\nmodel_prefix = \"mock\"\nprovider = \"mock\"\n\n\
         [[routers]]\ntype = \"tag\"\ntag = \"code\"\nprovider = \"openai\"\nrewrite_model = \"gpt-4o\"\n\n\
         [[routers]]\ntype = \"random\"\ncandidates = [{{ provider = \"local\", model = \"a\" }}]\n\n\
         [[routers]]\ntype = \"fallback\"\n"
    );
    let out = describe(&ok(&text));
    let expected = "\
server: http://127.0.0.1:8090 — 2 workers, dashboard on, no API key
logging: off
limits: body 33554432 bytes, head 65536 bytes; timeouts (ms): header 10000, idle 60000, connect 5000, first byte 600000, stream idle 300000; sse keep-alive every 15000 ms; pool: 64 idle per endpoint per worker, ttl 4000 ms

providers:
  local   openai     http://localhost:8080/v1   active
  ollama  ollama     http://localhost:11434     active
  mock    mock       (built in)                 active
  openai  openai     https://api.openai.com/v1  skipped: environment variable OPENAI_API_KEY is not set

classifiers:
  keyword enabled, tags: code

rules (top to bottom, first match wins):
   1. prefix: model starts with \"mock\" → mock
   2. tag: request tagged \"code\" → openai (skipped), model rewritten to \"gpt-4o\"
   3. random: any of local \"a\"
   4. fallback: best of all providers (quality_bias 0.5)

config OK (config.toml)
";
    assert_eq!(out, expected);
}

#[test]
fn mangled_input_never_panics() {
    let example = include_str!("../../config.example.toml");
    let env = |k: &str| k.starts_with('O').then(|| "k".to_owned());
    // Every truncation (at char boundaries, sampled) and every single-line deletion.
    for end in (0..example.len())
        .step_by(7)
        .filter(|&i| example.is_char_boundary(i))
    {
        let _ = from_str(&example[..end], "x", &env);
    }
    let lines: Vec<&str> = example.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = from_str(&text.join("\n"), "x", &env);
    }
    for text in [
        "",
        "=",
        "[[",
        "[a]\n[a]",
        "routers = 1",
        "routers = [1]",
        "providers = [{}]",
        "[[routers]]\ntype = []",
    ] {
        let _ = from_str(text, "x", &env);
    }
}
