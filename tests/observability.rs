//! `/metrics`, the dashboard feed and page (docs/observability.md): what a
//! scraper and a subscriber see for real requests through the router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::fleet::{Mode, Node};
use common::*;

fn config(extra_server: &str, providers: &str) -> String {
    let fallback = if providers.is_empty() {
        "mock"
    } else {
        "fleet"
    };
    let head = server_head(&format!("dashboard = true\n{extra_server}"));
    format!(
        r#"
{head}
[[providers]]
name = "mock"
format = "mock"

{providers}

[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["function"]

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"

[[routers]]
type = "fallback"
providers = ["@FALLBACK@"]
"#
    )
    .replace("@FALLBACK@", fallback)
}

fn chat(model: &str, text: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}],"stream":{stream}}}"#
    )
}

/// The value of the exposition line that starts with `prefix` (a metric name
/// with its labels), if there is one.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_requests_tokens_latency_attempts_and_endpoints() {
    let node = Node::start("node-0");
    let fleet = format!(
        "[[providers]]\nname = \"fleet\"\nformat = \"openai\"\nendpoints = [\"{}\", \"http://127.0.0.1:1/v1\"]\nbalance = \"round_robin\"",
        node.url()
    );
    let router = Router::start("metrics", &config("", &fleet));
    for i in 0..3 {
        let r = post(
            &router,
            "/v1/chat/completions",
            &chat("mock-1", "write a function", i == 1),
            &[],
        );
        assert_eq!(r.status, 200);
    }
    let r = post(
        &router,
        "/v1/messages",
        r#"{"model":"mock-1","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    // Round robin: one of these meets the dead endpoint and fails over.
    for _ in 0..2 {
        let r = post(
            &router,
            "/v1/chat/completions",
            &chat("other", "hello", false),
            &[],
        );
        assert_eq!(r.status, 200);
    }
    let bad = post(&router, "/v1/chat/completions", "{not json", &[]);
    assert_eq!(bad.status, 400);
    let m = get(&router, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let t = m.text();
    assert_eq!(
        value(
            &t,
            r#"router_requests_total{provider="mock",model="mock-1",client_format="openai",status="200"}"#
        ),
        Some(3.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            r#"router_requests_total{provider="mock",model="mock-1",client_format="anthropic",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            r#"router_requests_total{provider="fleet",model="other",client_format="openai",status="200"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &t,
            r#"router_requests_total{provider="none",model="",client_format="openai",status="400"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            r#"gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",provider="mock"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &t,
            r#"gen_ai_server_time_to_first_token_seconds_count{provider="mock"}"#
        ),
        Some(4.0)
    );
    assert!(
        value(
            &t,
            r#"gen_ai_client_token_usage_sum{provider="mock",gen_ai_token_type="output"}"#
        )
        .unwrap()
            > 0.0
    );
    assert!(
        value(
            &t,
            r#"gen_ai_client_token_usage_count{provider="mock",gen_ai_token_type="input"}"#
        )
        .unwrap()
            >= 4.0
    );
    assert_eq!(value(&t, "router_overhead_seconds_count"), Some(7.0));
    assert_eq!(
        value(
            &t,
            r#"router_attempts_total{provider="fleet",endpoint="http://127.0.0.1:1/v1",outcome="connect_failed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            r#"router_upstream_errors_total{provider="fleet",kind="connect_failed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&t, r#"router_failovers_total{provider="fleet"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            &format!(
                r#"router_endpoint_healthy{{provider="fleet",endpoint="{}"}}"#,
                node.url()
            )
        ),
        Some(1.0)
    );
    assert_eq!(value(&t, "router_config_generation"), Some(0.0));
    assert_eq!(
        value(&t, "router_in_flight"),
        Some(1.0),
        "the scrape itself"
    );
    // The log counts arrive as the log thread writes.
    router.log_lines(7);
    let t = get(&router, "/metrics").text();
    assert!(value(&t, "router_log_lines_written_total").unwrap() >= 7.0);
    assert_eq!(value(&t, "router_log_lines_dropped_total"), Some(0.0));
    drop(node);
}

#[test]
fn metrics_and_the_feed_are_behind_the_api_key_and_health_is_not() {
    let text = config("api_key_env = \"OBS_TEST_KEY\"", "");
    let router = Router::start_with_env("metrics-key", &text, &[("OBS_TEST_KEY", "sekrit")]);
    assert_eq!(get(&router, "/metrics").status, 401);
    assert_eq!(get(&router, "/dashboard/events").status, 401);
    assert_eq!(get(&router, "/dashboard").status, 401);
    assert_eq!(get(&router, "/health").status, 200);
    assert_eq!(get(&router, "/metrics?api_key=sekrit").status, 200);
    let page = get(&router, "/dashboard?api_key=sekrit");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
}

#[test]
fn the_dashboard_is_a_404_when_it_is_off() {
    let router = Router::start(
        "dash-off",
        &config("", "").replace("dashboard = true", "dashboard = false"),
    );
    assert_eq!(get(&router, "/dashboard").status, 404);
    assert_eq!(get(&router, "/dashboard/events").status, 404);
}

/// Open the feed; returns the stream after the `: connected` comment.
fn subscribe(router: &Router) -> Reader {
    let mut s = router.connect();
    s.write_all(b"GET /dashboard/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    assert!(r.read_until(|b| b.windows(11).any(|w| w == b": connected")));
    r
}

/// Read feed events until `done` says the collected ones are enough.
fn events_until(
    r: &mut Reader,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let n = r.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "feed closed");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            if let Some(json) = frame.strip_prefix(b"data: ") {
                seen.push(serde_json::from_slice(&json[..json.len() - 2]).unwrap());
            }
        }
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "feed events: {seen:?}");
    }
}

#[test]
fn the_feed_delivers_start_classified_routed_complete_in_order() {
    let router = Router::start("feed", &config("", ""));
    let mut feed = subscribe(&router);
    // The head is an event stream.
    let r = post(
        &router,
        "/v1/chat/completions",
        &chat("mock-x", "write a function", true),
        &[],
    );
    assert_eq!(r.status, 200);
    let events = events_until(&mut feed, |e| e.iter().any(|v| v["type"] == "complete"));
    let kinds: Vec<&str> = events.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "classified", "routed", "complete"]);
    let id = events[0]["id"].as_str().unwrap();
    assert!(events.iter().all(|v| v["id"] == id));
    assert_eq!(events[0]["model"], "mock-x");
    assert_eq!(events[0]["stream"], true);
    assert_eq!(events[0]["in_flight"], 1);
    assert_eq!(events[1]["tags"], serde_json::json!(["code"]));
    assert_eq!(events[2]["provider"], "mock");
    assert_eq!(events[2]["attempt"], 1);
    let done = &events[3];
    assert_eq!(done["status"], 200);
    assert_eq!(done["provider"], "mock");
    assert_eq!(done["tags"], serde_json::json!(["code"]));
    assert!(done["output_tokens"].as_u64().unwrap() > 0);
    // The same entry as the log line.
    let lines = router.log_lines(2);
    let line = lines.iter().find(|l| l["id"] == done["id"]).unwrap();
    assert_eq!(done["id"], line["id"]);
    assert_eq!(done["ttft_ms"], line["ttft_ms"]);
    // Health checks and scrapes are not in the feed; a failing request is.
    get(&router, "/health");
    let bad = post(&router, "/v1/chat/completions", "{oops", &[]);
    assert_eq!(bad.status, 400);
    let more = events_until(&mut feed, |e| e.iter().any(|v| v["type"] == "complete"));
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(more[0]["status"], 400);
    assert_eq!(more[0]["path"], "/v1/chat/completions");
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_counted_never_waited_for() {
    let node = Node::start("node-0");
    node.set_mode(Mode::Answer);
    let router = Router::start("feed-slow", &config("", ""));
    // A subscriber that never reads.
    let mut lazy = router.connect();
    lazy.write_all(b"GET /dashboard/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = subscribe(&router);
    // The other subscriber reads all the time, counting `complete` events.
    let completes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = completes.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut tail = Vec::new();
        while let Ok(n) = reader.stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            let pat = b"{\"type\":\"complete\"";
            let mut count = 0;
            let mut keep = 0;
            for (i, w) in tail.windows(pat.len()).enumerate() {
                if w == pat {
                    count += 1;
                    keep = i + pat.len();
                }
            }
            seen.fetch_add(count, std::sync::atomic::Ordering::SeqCst);
            tail.drain(..keep.max(tail.len().saturating_sub(pat.len())));
        }
    });
    // ~11 KB per `complete` event: the lazy subscriber's buffers (its
    // socket's and 256 KiB of pending events) fill after a few dozen
    // requests, while the reading one — on a loaded machine too — stays far
    // from falling that far behind (with ~100 KB events, four requests of
    // lag dropped it as well, and the count never read 1).
    let big = "function ".repeat(1_200);
    let body = chat("mock-big", &big, false);
    // Requests keep being answered while the lazy one falls behind.
    let mut n = 0;
    wait_until("the lazy subscriber to be dropped", || {
        for _ in 0..10 {
            assert_eq!(
                post(&router, "/v1/chat/completions", &body, &[]).status,
                200
            );
            n += 1;
        }
        let t = get(&router, "/metrics").text();
        value(&t, "router_dashboard_dropped_subscribers_total") == Some(1.0)
    });
    let t = get(&router, "/metrics").text();
    assert_eq!(
        value(&t, "router_dashboard_subscribers"),
        Some(1.0),
        "the reading one stays"
    );
    // The reading subscriber got every request's `complete`.
    wait_until("every complete event to reach the reader", || {
        completes.load(std::sync::atomic::Ordering::SeqCst) >= n
    });
    drop(lazy);
}
