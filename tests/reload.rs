//! Configuration reload on SIGHUP (docs/operations.md): a good config is
//! used by requests that start after it (kept-alive connections included),
//! in-flight requests finish on the config they started with, a bad config
//! is refused with the same error text as `check` and the running one stays.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::Write;

use common::*;

fn config(up: &Upstream, route_to: &str) -> String {
    let head = server_head("");
    format!(
        r#"
{head}
[[providers]]
name = "up"
format = "openai"
base_url = "{}"

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "fallback"
providers = ["{route_to}"]
"#,
        up.base_url()
    )
}

fn hup(router: &Router) {
    // SAFETY: sending a signal to the child process this test started.
    assert_eq!(
        unsafe { libc::kill(router.child.id() as i32, libc::SIGHUP) },
        0
    );
}

fn rewrite(router: &Router, text: &str) {
    let text = text.replace("{LOG}", router.log_path.to_str().unwrap());
    std::fs::write(router.dir.join("config.toml"), text).unwrap();
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn chat_on(reader: &mut Reader) -> Response {
    write!(
        reader.stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
    .unwrap();
    reader.response().unwrap()
}

#[test]
fn sighup_publishes_a_good_config_and_refuses_a_bad_one() {
    let up = Upstream::start();
    let mut router = Router::start("reload", &config(&up, "up"));
    // A kept-alive connection from before the reload.
    let mut kept = Reader::new(router.connect());
    assert_eq!(chat_on(&mut kept).header("x-router-provider"), Some("up"));

    rewrite(&router, &config(&up, "mock"));
    hup(&router);
    wait_until("the reload", || {
        router.stderr().contains("config reloaded (generation 1)")
    });
    let r = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(
        r.header("x-router-provider"),
        Some("mock"),
        "a new connection"
    );
    assert_eq!(
        chat_on(&mut kept).header("x-router-provider"),
        Some("mock"),
        "a kept one"
    );

    // A broken config: refused with check's error text; the running one stays.
    rewrite(&router, "[server]\nprot = 1\n");
    hup(&router);
    wait_until("the refusal", || router.stderr().contains("reload refused"));
    let err_line = router
        .stderr()
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(
        err_line.contains("config.toml:2:1: unknown key `prot` in [server]"),
        "{err_line}"
    );
    let r = post(&router, "/v1/chat/completions", CHAT, &[]);
    assert_eq!(
        (r.status, r.header("x-router-provider")),
        (200, Some("mock"))
    );
    let lines = router.log_lines(4);
    let generations: Vec<u64> = lines
        .iter()
        .map(|l| l["config_generation"].as_u64().unwrap())
        .collect();
    assert_eq!(generations, [0, 1, 1, 1]);
    let _ = router.child.kill();
}

#[test]
fn a_stream_in_flight_finishes_on_the_config_it_started_with() {
    let up = Upstream::start();
    gated_stream(&up);
    let router = Router::start("reload-stream", &config(&up, "up"));
    let mut stream = start_stream(&router);
    // Reload to a config where nothing routes to `up` any more.
    rewrite(&router, &config(&up, "mock"));
    hup(&router);
    wait_until("the reload", || {
        router.stderr().contains("config reloaded (generation 1)")
    });
    up.release.send(()).unwrap();
    let r = stream.response().unwrap();
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let line = &router.log_lines(1)[0];
    assert_eq!(
        (
            line["provider"].as_str(),
            line["config_generation"].as_u64()
        ),
        (Some("up"), Some(0))
    );
}
