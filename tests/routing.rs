//! The rule chain end to end: every rule type picks the provider the docs
//! says, seen in `X-Router-Provider` / `X-Router-Model` and the log line.
//! Providers are built-in mocks (no network) except for `discover`, which
//! needs an Ollama-style upstream answering `GET /api/tags`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::collections::HashMap;

use common::*;

fn providers() -> &'static str {
    r#"
[[providers]]
name = "cheap"
format = "mock"
cost_per_1m_tokens = 0.5
quality = 40
latency_ms = 0
throughput_tokens_per_sec = 0

[[providers]]
name = "fast"
format = "mock"
cost_per_1m_tokens = 3.0
quality = 70

[[providers]]
name = "smart"
format = "mock"
cost_per_1m_tokens = 15.0
quality = 95
"#
}

fn start(name: &str, extra_providers: &str, rules: &str) -> Router {
    let cfg = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nworkers = 1\n[logging]\nenabled = true\npath = \"{{LOG}}\"\n\n[classifiers.keyword]\nenabled = true\n[classifiers.keyword.tags]\ncode = [\"function\", \"compile\"]\nmath = [\"integral\"]\n{}{extra_providers}\n{rules}",
        providers()
    );
    Router::start(name, &cfg)
}

fn ask(router: &Router, model: &str, text: &str) -> (u16, Option<String>, Option<String>) {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
        .to_string();
    let r = post(router, "/v1/chat/completions", &body, &[]);
    (
        r.status,
        r.header("x-router-provider").map(str::to_string),
        r.header("x-router-model").map(str::to_string),
    )
}

#[test]
fn prefix_tag_and_first_match_wins() {
    let rules = r#"
[[routers]]
type = "prefix"
model_prefix = "local/"
provider = "fast"
rewrite_model = "llama3.2-3b"

[[routers]]
type = "prefix"
model_prefix = "keep-"
provider = "cheap"

[[routers]]
type = "tag"
tag = "code"
provider = "smart"
rewrite_model = "coder-model"

[[routers]]
type = "tag"
tag = "math"
provider = "fast"
"#;
    let router = start("prefix-tag", "", rules);
    assert_eq!(
        ask(&router, "local/anything", "write a function"),
        (200, Some("fast".into()), Some("llama3.2-3b".into()))
    );
    assert_eq!(
        ask(&router, "keep-this", "hi"),
        (200, Some("cheap".into()), Some("keep-this".into()))
    );
    assert_eq!(
        ask(&router, "gpt", "please COMPILE this"),
        (200, Some("smart".into()), Some("coder-model".into()))
    );
    assert_eq!(
        ask(&router, "gpt", "an integral"),
        (200, Some("fast".into()), Some("gpt".into()))
    );
    let (status, provider, _) = ask(&router, "gpt", "nothing matches");
    assert_eq!((status, provider), (400, None));
    let lines = router.log_lines(5);
    assert_eq!(lines[2]["tags"], serde_json::json!(["code"]));
    assert_eq!(lines[4]["error"], "no provider configured for model 'gpt'");
}

#[test]
fn price_latency_throughput_and_fallback() {
    let extra = r#"
[[providers]]
name = "lowlat"
format = "mock"
cost_per_1m_tokens = 9.0
latency_ms = 0.001
throughput_tokens_per_sec = 100000

[[providers]]
name = "highthr"
format = "mock"
cost_per_1m_tokens = 8.0
latency_ms = 0.002
throughput_tokens_per_sec = 200000
"#;
    let rules = r#"
[[routers]]
type = "prefix"
model_prefix = "price-ceiling"
provider = "cheap"
[[routers]]
type = "price"
providers = ["fast", "smart"]
max_cost_per_1m_tokens = 2.0
[[routers]]
type = "tag"
tag = "never"
provider = "cheap"
"#;
    // The ceiling excludes both candidates: the price rule passes to the next rules.
    let router = start(
        "price-pass",
        extra,
        &(rules.to_string() + "[[routers]]\ntype = \"fallback\"\nquality_bias = 1.0\n"),
    );
    assert_eq!(
        ask(&router, "x", "hi").1.as_deref(),
        Some("smart"),
        "price passed, fallback with quality_bias 1 picks max quality"
    );
    drop(router);

    let router = start("price", extra, "[[routers]]\ntype = \"price\"\n");
    assert_eq!(ask(&router, "x", "hi").1.as_deref(), Some("cheap"));
    drop(router);
    let router = start("latency", extra, "[[routers]]\ntype = \"latency\"\n");
    // cheap has latency_ms = 0: the lowest.
    assert_eq!(ask(&router, "x", "hi").1.as_deref(), Some("cheap"));
    drop(router);
    let router = start(
        "latency-max",
        extra,
        "[[routers]]\ntype = \"latency\"\nproviders = [\"lowlat\", \"highthr\", \"fast\"]\nmax_latency_ms = 0.0015\n",
    );
    assert_eq!(ask(&router, "x", "hi").1.as_deref(), Some("lowlat"));
    drop(router);
    let router = start(
        "throughput",
        extra,
        "[[routers]]\ntype = \"throughput\"\nmin_tokens_per_sec = 150000\n",
    );
    assert_eq!(ask(&router, "x", "hi").1.as_deref(), Some("highthr"));
    drop(router);
    let router = start(
        "fallback-cost",
        extra,
        "[[routers]]\ntype = \"fallback\"\nquality_bias = 0.0\nrewrite_model = \"fb\"\n",
    );
    assert_eq!(
        ask(&router, "x", "hi"),
        (200, Some("cheap".into()), Some("fb".into()))
    );
    drop(router);
    let router = start(
        "fallback-default",
        extra,
        "[[routers]]\ntype = \"fallback\"\nproviders = [\"fast\", \"smart\"]\n",
    );
    // 0.5*95 - 0.5*15 = 40 beats 0.5*70 - 0.5*3 = 33.5.
    assert_eq!(ask(&router, "x", "hi").1.as_deref(), Some("smart"));
}

#[test]
fn random_spreads_over_providers_and_candidates() {
    let router = start(
        "random",
        "",
        "[[routers]]\ntype = \"random\"\nproviders = [\"cheap\", \"fast\"]\nrewrite_model = \"r\"\n",
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (status, p, m) = ask(&router, "x", "hi");
        assert_eq!((status, m.as_deref()), (200, Some("r")));
        *seen.entry(p.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 10), "roughly uniform: {seen:?}");
    drop(router);

    let rules = r#"
[[routers]]
type = "random"
providers = ["smart"]
rewrite_model = "ignored"
candidates = [
  { provider = "cheap", model = "model-a" },
  { provider = "fast", model = "model-b" },
]
"#;
    let router = start("candidates", "", rules);
    let mut pairs = HashMap::new();
    for _ in 0..60 {
        let (_, p, m) = ask(&router, "x", "hi");
        *pairs.entry((p.unwrap(), m.unwrap())).or_insert(0) += 1;
    }
    let keys: Vec<_> = {
        let mut k: Vec<_> = pairs.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys,
        [
            ("cheap".to_string(), "model-a".to_string()),
            ("fast".to_string(), "model-b".to_string())
        ]
    );
}

#[test]
fn discover_routes_models_an_ollama_upstream_reported() {
    let up = Upstream::start();
    up.push(json_reply(200, r#"{"models":[{"name":"qwen3:8b","model":"qwen3:8b"},{"name":"llava:7b","model":"llava:7b"}]}"#));
    up.push(json_reply(
        200,
        r#"{"capabilities":["completion","tools"]}"#,
    ));
    up.push(json_reply(
        200,
        r#"{"capabilities":["completion","vision"]}"#,
    ));
    let extra = format!(
        "[[providers]]\nname = \"ollama\"\nformat = \"ollama\"\nbase_url = \"http://{}\"\n",
        up.addr
    );
    let rules = "[[routers]]\ntype = \"discover\"\nprovider = \"ollama\"\n[[routers]]\ntype = \"fallback\"\nproviders = [\"cheap\"]\n";
    let router = start("discover", &extra, rules);
    let startup = up.requests();
    assert_eq!(startup[0].method, "GET");
    assert_eq!(startup[0].path, "/api/tags");
    let models = get(&router, "/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"qwen3:8b") && ids.contains(&"llava:7b"),
        "{ids:?}"
    );

    up.set_default(json_reply(200, r#"{"model":"qwen3:8b","created_at":"2026-11-21T08:00:00Z","message":{"role":"assistant","content":"from ollama"},"done":true,"done_reason":"stop","prompt_eval_count":1,"eval_count":2}"#));
    let (status, p, m) = ask(&router, "qwen3:8b", "hi");
    assert_eq!(
        (status, p.as_deref(), m.as_deref()),
        (200, Some("ollama"), Some("qwen3:8b"))
    );
    // Ollama is spoken to natively: /api/chat, the model unchanged, streaming explicit.
    let sent = up.requests().last().unwrap().clone();
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.json()["model"], "qwen3:8b");
    assert_eq!(sent.json()["stream"], false);
    assert_eq!(
        ask(&router, "unknown-model", "hi").1.as_deref(),
        Some("cheap")
    );

    // Capability filter: an image needs `vision`, which qwen3 lacks: the rule passes.
    let body = r#"{"model":"qwen3:8b","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
    assert_eq!(
        post(&router, "/v1/chat/completions", body, &[]).header("x-router-provider"),
        Some("cheap")
    );
    let body = r#"{"model":"llava:7b","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
    assert_eq!(
        post(&router, "/v1/chat/completions", body, &[]).header("x-router-provider"),
        Some("ollama")
    );
}

#[test]
fn discovery_failure_is_a_warning_and_the_rule_passes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "[[providers]]\nname = \"ollama\"\nformat = \"ollama\"\nbase_url = \"http://127.0.0.1:{port}\"\n"
    );
    let rules = "[[routers]]\ntype = \"discover\"\nprovider = \"ollama\"\n[[routers]]\ntype = \"fallback\"\nproviders = [\"fast\"]\n";
    let router = start("discover-fail", &extra, rules);
    assert!(router.stderr().contains("ollama"), "{}", router.stderr());
    assert_eq!(ask(&router, "qwen3:8b", "hi").1.as_deref(), Some("fast"));
}
