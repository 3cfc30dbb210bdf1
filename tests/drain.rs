//! Graceful drain (SIGTERM/SIGINT): in-flight streams finish, `/health`
//! answers 503, new connections are refused, the log is flushed, exit 0; at
//! `drain_timeout_ms` what remains ends with the client's error event; a
//! second signal exits at once; SIGHUP reloads instead of ending the router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

fn signal(router: &Router, sig: i32) {
    // SAFETY: sending a signal to the child process this test started.
    let rc = unsafe { libc::kill(router.child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

fn exit_code(router: &mut Router) -> i32 {
    let mut code = None;
    wait_until("the router to exit", || {
        code = router
            .child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1));
        code.is_some()
    });
    code.unwrap()
}

fn config(up: &Upstream, drain_ms: u64) -> String {
    basic_config(&up.base_url(), "[[routers]]\ntype = \"fallback\"\n").replace(
        "workers = 1",
        &format!("workers = 1\ndrain_timeout_ms = {drain_ms}"),
    )
}

#[test]
fn sigterm_lets_streams_finish_refuses_new_connections_and_exits_0() {
    let up = Upstream::start();
    gated_stream(&up);
    let mut router = Router::start("drain", &config(&up, 20_000));
    // A keep-alive client that will ask /health during the drain.
    let mut health = Reader::new(router.connect());
    health
        .stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(health.response().unwrap().status, 200);
    let mut stream = start_stream(&router);

    signal(&router, libc::SIGTERM);
    wait_until("the drain to start", || {
        router.stderr().contains("draining")
    });
    health
        .stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = health.response().unwrap();
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
    wait_until("new connections to be refused", || {
        TcpStream::connect(router.addr).is_err()
    });

    // The stream goes on to its clean end.
    up.release.send(()).unwrap();
    let resp = stream.response().unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("data: [DONE]\n\n"), "{}", resp.text());
    assert_eq!(exit_code(&mut router), 0);
    // Every line was flushed before the exit.
    let text = std::fs::read_to_string(&router.log_path).unwrap();
    let statuses: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 200, 503], "{text}");
}

#[test]
fn at_the_drain_deadline_a_stream_ends_with_the_clients_error_event() {
    let up = Upstream::start();
    gated_stream(&up);
    let mut router = Router::start("drain-deadline", &config(&up, 300));
    let mut stream = start_stream(&router);
    signal(&router, libc::SIGTERM);
    let resp = stream.response().unwrap();
    let text = resp.text();
    assert!(
        text.contains("data: {\"error\"") && text.contains("shutting down"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
    assert_eq!(exit_code(&mut router), 0);
    let line = &router.log_lines(1)[0];
    assert!(
        line["error"].as_str().unwrap().contains("shutting down"),
        "{line}"
    );
    up.release.send(()).ok();
}

#[test]
fn a_second_signal_exits_at_once_and_sighup_is_a_reload_not_an_exit() {
    let up = Upstream::start();
    gated_stream(&up);
    let mut router = Router::start("drain-twice", &config(&up, 60_000));
    signal(&router, libc::SIGHUP);
    wait_until("the reload", || {
        router.stderr().contains("config reloaded (generation 1)")
    });
    assert_eq!(
        get(&router, "/health").status,
        200,
        "still serving after SIGHUP"
    );
    let _stream = start_stream(&router);
    signal(&router, libc::SIGTERM);
    wait_until("the drain to start", || {
        router.stderr().contains("draining")
    });
    signal(&router, libc::SIGINT);
    assert_eq!(exit_code(&mut router), 128 + libc::SIGINT);
    up.release.send(()).ok();
}
