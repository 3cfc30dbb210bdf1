//! Client-side faults, section F of the reliability checklist
//! (docs/reliability.md): F3 a half-closed client, F4 many clients aborting
//! at random under load, F5 a pipelined request while the first streams.
//! F1 and F2 are `client_disconnect_mid_stream_closes_the_upstream_connection`
//! and `client_disconnect_closes_the_upstream_connection` in tests/proxy.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::fleet::{Mode, Node};
use common::*;

fn config(up: &str) -> String {
    basic_config(up, "[[routers]]\ntype = \"fallback\"\n")
}

const STREAM: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

fn request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn f3_a_half_closed_client_is_taken_as_gone_and_its_upstream_closed() {
    let up = Upstream::start();
    up.push(Reply::Hang);
    let router = Router::start("f3", &config(&up.base_url()));
    let mut s = router.connect();
    s.write_all(request(STREAM).as_bytes()).unwrap();
    wait_until("the upstream to get the request", || {
        up.requests().len() == 1
    });
    s.shutdown(Shutdown::Write).unwrap();
    // The router closes the upstream connection (stopping generation) and
    // logs the request as the client's leaving.
    up.closed_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let line = &router.log_lines(1)[0];
    assert_eq!(line["status"], 499);
    assert!(line["error"].as_str().unwrap().contains("client"), "{line}");
    // Nothing was written to the client but the close.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn f5_a_request_pipelined_behind_a_stream_is_answered_after_it() {
    let up = Upstream::start();
    gated_stream(&up);
    up.push(json_reply(
        200,
        r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"second"},"finish_reason":"stop"}]}"#,
    ));
    let router = Router::start("f5", &config(&up.base_url()));
    let mut s = router.connect();
    let plain = r#"{"model":"m","messages":[{"role":"user","content":"two"}]}"#;
    let both = format!("{}{}", request(STREAM), request(plain));
    s.write_all(both.as_bytes()).unwrap();
    let mut r = Reader::new(s);
    assert!(r.read_until(|b| b.windows(9).any(|w| w == b"data: one")));
    // The second request waits for the stream: the upstream has seen only one.
    assert_eq!(up.requests().len(), 1);
    up.release.send(()).unwrap();
    let first = r.response().unwrap();
    assert_eq!(first.status, 200);
    let text = first.text();
    assert!(text.contains("data: one") && text.contains("data: two"));
    assert!(text.contains("[DONE]"));
    assert!(!text.contains("second"), "never interleaved");
    let second = r.response().unwrap();
    assert_eq!(second.status, 200);
    assert!(second.text().contains("second"));
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn f5_a_request_pipelined_in_the_middle_of_a_stream_is_answered_after_it() {
    // The second request arrives while the stream waits on the provider, so
    // the client poll that stays posted for the whole stream fires on it:
    // the router must take it for a next request, not for the client leaving.
    let up = Upstream::start();
    gated_stream(&up);
    up.push(json_reply(
        200,
        r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"second"},"finish_reason":"stop"}]}"#,
    ));
    let router = Router::start("f5-mid", &config(&up.base_url()));
    let mut s = router.connect();
    s.write_all(request(STREAM).as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = Reader::new(s);
    assert!(r.read_until(|b| b.windows(9).any(|w| w == b"data: one")));
    let plain = r#"{"model":"m","messages":[{"role":"user","content":"two"}]}"#;
    w.write_all(request(plain).as_bytes()).unwrap();
    up.release.send(()).unwrap();
    let first = r.response().unwrap();
    assert_eq!(first.status, 200);
    assert!(first.text().contains("data: two") && first.text().contains("[DONE]"));
    let second = r.response().unwrap();
    assert_eq!(second.status, 200);
    assert!(second.text().contains("second"));
    let lines = router.log_lines(2);
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn f4_many_clients_leaving_at_random_times_leak_no_connection() {
    // Every upstream answer comes after 300 ms: clients leave before it,
    // during it, or after it.
    let node = Node::start("node-0");
    node.set_mode(Mode::SlowFirst);
    let router = Router::start(
        "f4",
        &config(&node.url()).replace("workers = 1", "workers = 2"),
    );
    let pid = router.child.id();
    // One request first, so pools and log files exist before the baseline.
    assert_eq!(
        post(&router, "/v1/chat/completions", STREAM, &[]).status,
        200
    );
    let baseline = fds(pid);
    let addr = router.addr;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..50u64 {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.write_all(request(STREAM).as_bytes()).unwrap();
                    // Leave after 0–350 ms (a deterministic spread).
                    let wait = (t * 50 + i) * 7 % 350;
                    thread::sleep(Duration::from_millis(wait));
                    if i % 3 == 0 {
                        // Some read a little first.
                        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                        let mut b = [0u8; 64];
                        let _ = s.read(&mut b);
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every request is logged, whether it finished or the client left…
    let lines = router.log_lines(401);
    let gone = lines.iter().filter(|l| l["status"] == 499).count();
    assert!(gone > 100, "most clients left before the answer: {gone}");
    // …and the router's descriptors come back to where they were (closed
    // client and upstream connections), allowing for a few pooled ones.
    let mut now = 0;
    let back = (0..2000).any(|_| {
        now = fds(pid);
        if now <= baseline + 4 {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
        false
    });
    let list: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert!(back, "fds {baseline} → {now}: {list:?}");
    // It still serves.
    node.set_mode(Mode::Answer);
    assert_eq!(
        post(&router, "/v1/chat/completions", STREAM, &[]).status,
        200
    );
}
