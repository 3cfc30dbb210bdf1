//! Failover through the rule chain (docs/fleets.md): an attempt that fails
//! before any byte reached the client goes to the next candidate, skipping
//! providers already tried — bounded by `max_attempts`, `retry_deadline_ms`
//! and the retry budget; never after the first byte, never on other 4xx.
//! Cases E1/E4/E5 of docs/reliability.md with a second provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use common::fault::FaultUpstream;
use common::*;

/// A port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Providers `a` then `b`; rule 1 sends everything to `a`, rule 2 falls back to `b`.
fn config(a_url: &str, b_url: &str, b_format: &str, server_extra: &str) -> String {
    let head = server_head(server_extra);
    format!(
        r#"
{head}
[[providers]]
name = "a"
format = "openai"
base_url = "{a_url}"

[[providers]]
name = "b"
format = "{b_format}"
base_url = "{b_url}"
api_key_env = "FAILOVER_TEST_KEY"

[[routers]]
type = "fallback"
providers = ["a"]

[[routers]]
type = "fallback"
providers = ["b"]
"#
    )
}

fn start(name: &str, text: &str) -> Router {
    Router::start_with_env(name, text, &[("FAILOVER_TEST_KEY", "k")])
}

fn chat(mode: &str, tok: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{mode}","messages":[{{"role":"user","content":"say {tok}"}}],"stream":{stream}}}"#
    )
}

fn outcomes(line: &serde_json::Value) -> Vec<String> {
    line["attempt_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d["provider"].as_str().unwrap(),
                d["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn e1_refused_provider_fails_over_to_the_next_rule() {
    let b = FaultUpstream::start();
    let a_url = format!("http://127.0.0.1:{}/v1", closed_port());
    let router = start("fo-refused", &config(&a_url, &b.base_url(), "openai", ""));
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("echo", "tok-1", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "tok-1");
    assert_eq!(r.header("x-router-provider"), Some("b"));
    assert_eq!(r.header("x-router-attempts"), Some("2"));
    let line = &router.log_lines(1)[0];
    assert_eq!(line["attempts"], serde_json::json!(["a", "b"]));
    assert_eq!(outcomes(line), ["a:connect_failed", "b:ok"]);
    assert_eq!(line["status"], 200);
}

#[test]
fn e4_e5_retryable_statuses_fail_over_and_the_last_failure_is_relayed() {
    let a = FaultUpstream::start();
    let b = FaultUpstream::start();
    for status in [429, 500, 502, 503, 504] {
        // A router per status: a 429/503 with Retry-After cools `a` down.
        let router = start(
            "fo-status",
            &config(&a.base_url(), &b.base_url(), "openai", ""),
        );
        let r = post(
            &router,
            "/v1/chat/completions",
            &chat(&format!("status-{status}"), "t", false),
            &[],
        );
        // b answers the same way and is the last candidate: its answer is relayed.
        assert_eq!(r.status, status);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.header("x-router-provider"), Some("b"));
        assert_eq!(
            outcomes(&router.log_lines(1)[0]),
            ["a:retry_status", "b:ok"]
        );
    }
    assert_eq!(a.requests().len(), 5);
    assert_eq!(b.requests().len(), 5);
}

#[test]
fn a_503_fails_over_to_a_provider_in_another_format_translated_again() {
    let a = FaultUpstream::start();
    let b = FaultUpstream::start();
    // b speaks Anthropic: the request is translated again for it.
    let b_url = format!("http://{}", b.addr);
    let router = start(
        "fo-xformat",
        &config(&a.base_url(), &b_url, "anthropic", ""),
    );
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-503", "t", false),
        &[],
    );
    // b (Anthropic path) answers status-503 too, in Anthropic's shape, translated back.
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "fault: slow down");
    assert!(b.requests()[0].path.ends_with("/v1/messages"));
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn a_503_goes_to_nobody_when_a_healthy_provider_answers() {
    let a = FaultUpstream::start();
    let b = Upstream::start();
    let router = start(
        "fo-healthy",
        &config(&a.base_url(), &b.base_url(), "openai", ""),
    );
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-503", "t", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "default");
    assert_eq!(r.header("retry-after"), None, "a's 503 reached no one");
    let line = &router.log_lines(1)[0];
    assert_eq!(outcomes(line), ["a:retry_status", "b:ok"]);
    assert_eq!(line["error"], serde_json::Value::Null);
}

#[test]
fn no_failover_after_the_first_byte_on_other_4xx_or_with_max_attempts_1() {
    let a = FaultUpstream::start();
    let b = FaultUpstream::start();
    let router = start(
        "fo-never",
        &config(&a.base_url(), &b.base_url(), "openai", ""),
    );
    // A stream cut after its first events: the client has bytes; no retry.
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("truncate", "t", true),
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("data: {\"error\""));
    // A 400 is the client's problem, not the provider's: relayed, no retry.
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-400", "t", false),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(b.requests().is_empty(), "b never tried");
    let lines = router.log_lines(2);
    assert_eq!(lines[0]["attempts"], serde_json::json!(["a"]));
    assert_eq!(lines[1]["attempts"], serde_json::json!(["a"]));

    let router = start(
        "fo-one",
        &config(&a.base_url(), &b.base_url(), "openai", "max_attempts = 1"),
    );
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-503", "t", false),
        &[],
    );
    assert_eq!((r.status, r.header("x-router-provider")), (503, Some("a")));
    assert!(b.requests().is_empty());
}

#[test]
fn the_retry_budget_bounds_retries_during_an_outage() {
    let b = FaultUpstream::start();
    let a_url = format!("http://127.0.0.1:{}/v1", closed_port());
    // A budget of 0: only the floor of 10 retries per core.
    let router = start(
        "fo-budget",
        &config(
            &a_url,
            &b.base_url(),
            "openai",
            "retry_budget = 0.0\neject_after_failures = 0",
        ),
    );
    let mut providers = Vec::new();
    for i in 0..12 {
        let r = post(
            &router,
            "/v1/chat/completions",
            &chat("echo", &format!("tok-{i}"), false),
            &[],
        );
        providers.push((r.status, r.header("x-router-provider").unwrap().to_string()));
    }
    let retried = providers
        .iter()
        .filter(|(s, p)| *s == 200 && p == "b")
        .count();
    let refused = providers
        .iter()
        .filter(|(s, p)| *s == 502 && p == "a")
        .count();
    assert_eq!((retried, refused), (10, 2), "{providers:?}");
}

#[test]
fn consecutive_failures_eject_a_provider_and_retry_after_cools_it_down() {
    let b = Upstream::start();
    let a_url = format!("http://127.0.0.1:{}/v1", closed_port());
    let router = start(
        "fo-eject",
        &config(
            &a_url,
            &b.base_url(),
            "openai",
            "eject_after_failures = 2\neject_base_ms = 60000",
        ),
    );
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..3 {
        let r = post(&router, "/v1/chat/completions", body, &[]);
        assert_eq!((r.status, r.header("x-router-provider")), (200, Some("b")));
    }
    let lines = router.log_lines(3);
    assert_eq!(lines[0]["attempts"], serde_json::json!(["a", "b"]));
    assert_eq!(lines[1]["attempts"], serde_json::json!(["a", "b"]));
    // Two failures in a row: `a` is ejected, the third request goes straight to `b`.
    assert_eq!(lines[2]["attempts"], serde_json::json!(["b"]));

    // A 503 with Retry-After: busy, not broken — cooled down, not counted.
    let a = FaultUpstream::start();
    let router = start(
        "fo-cool",
        &config(&a.base_url(), &b.base_url(), "openai", ""),
    );
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-503", "t", false),
        &[],
    );
    assert_eq!(r.header("x-router-provider"), Some("b"));
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("status-503", "t", false),
        &[],
    );
    assert_eq!(r.header("x-router-provider"), Some("b"));
    let lines = router.log_lines(2);
    assert_eq!(outcomes(&lines[0]), ["a:retry_status", "b:ok"]);
    assert_eq!(
        outcomes(&lines[1]),
        ["b:ok"],
        "a cools down for its Retry-After"
    );
    assert_eq!(a.requests().len(), 1);
}

#[test]
fn the_last_provider_is_never_ejected_out_of_reach() {
    let a_url = format!("http://127.0.0.1:{}/v1", closed_port());
    let text = basic_config(&a_url, "[[routers]]\ntype = \"fallback\"\n").replace(
        "workers = 1",
        "workers = 1\neject_after_failures = 1\neject_base_ms = 60000",
    );
    let router = Router::start("fo-never-all", &text);
    for _ in 0..3 {
        let r = post(
            &router,
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            &[],
        );
        // Ejected, but the only one: still tried (a 502 naming it), never "no route".
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "upstream_connect_failed");
    }
}
