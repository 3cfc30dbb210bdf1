//! Endpoints other than the chat path, auth, the CLI, and config errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::process::Command;

use common::*;

fn mock_config(extra: &str) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 2
{extra}

[logging]
enabled = true
path = "{{LOG}}"

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"

[[routers]]
type = "prefix"
model_prefix = "alias-"
provider = "mock"
rewrite_model = "mock-rewritten"
"#
    )
}

#[test]
fn health_models_and_not_found() {
    let router = Router::start("endpoints", &mock_config(""));
    let h = get(&router, "/health");
    assert_eq!((h.status, h.text().as_str()), (200, "ok"));
    let m = get(&router, "/v1/models");
    assert_eq!(m.status, 200);
    let ids: Vec<String> = m.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"mock-rewritten".to_string()), "{ids:?}");
    assert_eq!(m.json()["object"], "list");

    let nf = get(&router, "/v1/nope");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.json()["error"]["type"], "invalid_request_error");
    let nf = post(&router, "/v1/messages/nope", "{}", &[]);
    assert_eq!(nf.status, 404);
    assert_eq!(
        nf.json()["type"],
        "error",
        "Anthropic shape under /v1/messages"
    );
    assert_eq!(nf.json()["error"]["type"], "not_found_error");
    for p in ["/v1/../admin", "//v1/models", "/V1/MODELS", "/v1/models/"] {
        assert_eq!(get(&router, p).status, 404, "{p}");
    }
    let wrong = get(&router, "/v1/chat/completions");
    assert_eq!(wrong.status, 405);
    assert_eq!(router.log_lines(9).len(), 9);
}

#[test]
fn bad_bodies_get_openai_400s() {
    let router = Router::start("bad-bodies", &mock_config(""));
    for body in [
        "",
        "not json",
        "[1,2]",
        r#"{"messages":[]}"#,
        r#"{"model":5,"messages":[]}"#,
        r#"{"model":"mock","messages":"x"}"#,
        r#"{"model":"mock","stream":"true","messages":[]}"#,
        &"[".repeat(100_000),
    ] {
        let resp = post(&router, "/v1/chat/completions", body, &[]);
        assert_eq!(resp.status, 400, "{body:.40}: {}", resp.text());
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    }
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"mock","messages":[],"plugins":[{"id":"nope"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 400);
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'nope'")
    );
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[]}"#,
        &[],
    );
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["error"]["message"],
        "no provider configured for model 'gpt-4o'"
    );
    let lines = router.log_lines(10);
    let last = lines
        .iter()
        .find(|l| l["requested_model"] == "gpt-4o")
        .expect("a line for the unrouted model");
    assert_eq!(last["status"], 400);
}

#[test]
fn mock_provider_answers_plain_and_streaming() {
    let router = Router::start("mock", &mock_config(""));
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"alias-1","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-router-provider"), Some("mock"));
    assert_eq!(resp.header("x-router-model"), Some("mock-rewritten"));
    let text = resp.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.json()["model"], "mock-rewritten");
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let body = resp.text();
    assert!(body.ends_with("data: [DONE]\n\n"));
    let mut streamed = String::new();
    let mut usage = None;
    for ev in body.split("\n\n").filter(|e| e.starts_with("data: {")) {
        let v: serde_json::Value = serde_json::from_str(&ev[6..]).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(c);
        }
        if v["usage"].is_object() {
            usage = Some(v["usage"]["completion_tokens"].as_u64().unwrap());
        }
    }
    assert_eq!(streamed, text);
    assert!(usage.unwrap() > 0);
}

#[test]
fn inbound_api_key_is_required_except_for_health() {
    let router = Router::start_with_env(
        "auth",
        &mock_config("api_key_env = \"OSR_TEST_ROUTER_KEY\""),
        &[("OSR_TEST_ROUTER_KEY", "s3cret")],
    );
    let body = r#"{"model":"mock","messages":[]}"#;
    assert_eq!(get(&router, "/health").status, 200);
    let denied = post(&router, "/v1/chat/completions", body, &[]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("Authorization", "Bearer wrong")]
        )
        .status,
        401
    );
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("Authorization", "bearer s3cret")]
        )
        .status,
        401
    );
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("Authorization", "Bearer s3cre")]
        )
        .status,
        401
    );
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("x_api_key", "s3cret")]
        )
        .status,
        401
    );
    assert_eq!(
        post(&router, "/v1/messages", "{}", &[]).json()["error"]["type"],
        "authentication_error"
    );
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("Authorization", "Bearer s3cret")]
        )
        .status,
        200
    );
    assert_eq!(
        post(
            &router,
            "/v1/chat/completions",
            body,
            &[("x-api-key", "s3cret")]
        )
        .status,
        200
    );
    assert_eq!(get(&router, "/v1/models?api_key=s3cret").status, 200);
}

#[test]
fn missing_inbound_key_variable_refuses_to_start() {
    let dir = temp_dir("nokey");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        mock_config("api_key_env = \"OSR_TEST_UNSET_VAR_XYZ\"").replace("{LOG}", "x.jsonl"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .arg(&cfg)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OSR_TEST_UNSET_VAR_XYZ"));
}

#[test]
fn check_subcommand_and_config_errors_name_the_key() {
    let dir = temp_dir("check");
    let good = dir.join("good.toml");
    std::fs::write(&good, mock_config("")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .args(["check", good.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mock") && stdout.contains("prefix"),
        "{stdout}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        mock_config("").replace("workers = 2", "workers = 2\nprot = 1"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prot") && err.contains("[server]"), "{err}");
    // Serving the same file fails the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));

    let bad_rule = dir.join("bad_rule.toml");
    std::fs::write(
        &bad_rule,
        mock_config("").replace("model_prefix = \"mock\"", "model_prefx = \"mock\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .args(["check", bad_rule.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model_prefx") && err.contains("routers"),
        "{err}"
    );
}

#[test]
fn embedded_default_config_serves_the_mock_when_no_config_file_exists() {
    let dir = temp_dir("default");
    // The default binds 8090; run `check`-like validation through the library instead
    // of binding a fixed port in tests.
    let cfg = opensourcellmrouter::config::load_default().expect("embedded default is valid");
    assert_eq!(cfg.server.port, 8090);
    assert_eq!(cfg.server.host, "127.0.0.1");
    assert!(cfg.logging.enabled);
    assert!(
        cfg.providers
            .iter()
            .any(|p| p.format == opensourcellmrouter::config::ProviderFormat::Mock)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn legacy_driver_fallback_is_announced() {
    let router = Router::start_with_env(
        "legacy",
        &mock_config(""),
        &[("OPENSOURCELLMROUTER_DRIVER", "legacy")],
    );
    assert!(
        router.stderr().contains("legacy (epoll) driver"),
        "{}",
        router.stderr()
    );
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"mock","stream":true,"messages":[]}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("data: [DONE]\n\n"));
}

#[test]
fn skipped_provider_is_warned_about_and_never_selected() {
    let cfg = mock_config("").replacen(
        "[[routers]]",
        "[[providers]]\nname = \"cloud\"\nformat = \"openai\"\nbase_url = \"https://api.example.com/v1\"\napi_key_env = \"OSR_TEST_NEVER_SET\"\n\n[[routers]]\ntype = \"fallback\"\nproviders = [\"cloud\"]\n\n[[routers]]",
        1,
    );
    let router = Router::start("skipped", &cfg);
    assert!(
        router.stderr().contains("cloud") && router.stderr().contains("OSR_TEST_NEVER_SET"),
        "{}",
        router.stderr()
    );
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"mock-x","messages":[]}"#,
        &[],
    );
    assert_eq!(resp.header("x-router-provider"), Some("mock"));
}

#[test]
fn g5_a_port_in_use_is_a_clear_error_and_a_non_zero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = common::temp_dir("port-in-use");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        mock_config("")
            .replace("port = 0", &format!("port = {port}"))
            .replace("{LOG}", dir.join("requests.jsonl").to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opensourcellmrouter"))
        .arg(&cfg)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_plain_ring_without_setup_flags_serves_too() {
    let router = Router::start_with_env(
        "plain-ring",
        &mock_config(""),
        &[("OPENSOURCELLMROUTER_URING_FLAGS", "0")],
    );
    let resp = post(
        &router,
        "/v1/chat/completions",
        r#"{"model":"mock","stream":true,"messages":[]}"#,
        &[],
    );
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("data: [DONE]\n\n"));
}
