//! Fleets (docs/fleets.md): many endpoints per provider, balancing (least
//! outstanding, prefix affinity, round robin), per-endpoint limits and the
//! wait queue, passive and active health, failover to another endpoint of
//! the same provider — and the fault suite: a steady request rate through
//! the router while replicas are killed, restarted, flipped to 503 and
//! reset, with a reload in the middle and a drain at the end: zero
//! client-visible errors, no fd growth. Cases E1, E4, E5, E14, F4, G1, G2
//! of docs/reliability.md on fleets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use common::fleet::{Mode, Node};
use common::*;

/// One provider `fleet` over `nodes`, with `provider_extra` keys, and the
/// `[server]` table's `server_extra` keys.
fn config(nodes: &[&Node], provider_extra: &str, server_extra: &str) -> String {
    let head = server_head(server_extra);
    let head = if server_extra.contains("workers") {
        head.replace("workers = 1\n", "")
    } else {
        head
    };
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    format!(
        r#"
{head}
[[providers]]
name = "fleet"
format = "openai"
endpoints = [{}]
{provider_extra}

[[routers]]
type = "fallback"
providers = ["fleet"]
"#,
        urls.join(", ")
    )
}

fn chat(system: &str, user: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}],"stream":{stream}}}"#
    )
}

fn ask(router: &Router, body: &str) -> Response {
    post(router, "/v1/chat/completions", body, &[])
}

/// Which replica answered (the mock names itself in the content).
fn answered_by(r: &Response) -> String {
    let text = r.text();
    let at = text.find("from node-").expect("an answer from a node");
    text[at + 5..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

fn details(line: &serde_json::Value) -> Vec<(String, String)> {
    line["attempt_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["endpoint"].as_str().unwrap_or("-").to_string(),
                d["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::start(&format!("node-{i}"))).collect()
}

#[test]
fn least_outstanding_spreads_and_never_picks_the_busy_endpoint() {
    let ns = nodes(2);
    let router = Router::start("fleet-p2c", &config(&[&ns[0], &ns[1]], "", ""));
    for i in 0..40 {
        assert_eq!(
            ask(&router, &chat("s", &format!("q{i}"), false)).status,
            200
        );
    }
    assert!(
        ns[0].served() >= 5 && ns[1].served() >= 5,
        "both replicas used: {} / {}",
        ns[0].served(),
        ns[1].served()
    );
    // Node 0 holds a request in flight (gated); every request from now on
    // goes to node 1, the one with fewer outstanding.
    ns[0].set_mode(Mode::Gated);
    let router = Arc::new(router);
    let mut held = Vec::new();
    let base = ns[0].served();
    while ns[0].served() == base {
        let r = router.clone();
        held.push(thread::spawn(move || ask(&r, &chat("s", "held", false))));
        wait_until("the request to land", || {
            ns[0].served() > base || held.iter().any(|h| h.is_finished())
        });
        held.retain(|h| !h.is_finished());
    }
    let on_node1 = ns[1].served();
    for i in 0..20 {
        let r = ask(&router, &chat("s", &format!("after{i}"), false));
        assert_eq!(answered_by(&r), "node-1");
    }
    assert_eq!(ns[1].served(), on_node1 + 20);
    ns[0].release();
    for h in held {
        assert_eq!(answered_by(&h.join().unwrap()), "node-0");
    }
}

#[test]
fn round_robin_takes_turns() {
    let ns = nodes(3);
    let router = Router::start(
        "fleet-rr",
        &config(&[&ns[0], &ns[1], &ns[2]], "balance = \"round_robin\"", ""),
    );
    let order: Vec<String> = (0..9)
        .map(|i| answered_by(&ask(&router, &chat("s", &format!("q{i}"), false))))
        .collect();
    for w in order.chunks(3) {
        let distinct: HashSet<&String> = w.iter().collect();
        assert_eq!(distinct.len(), 3, "{order:?}");
    }
    assert_eq!(order[0..3], order[3..6]);
    for n in &ns {
        assert_eq!(n.served(), 3);
    }
    // The log names the endpoint of each attempt.
    let lines = router.log_lines(9);
    let urls: HashSet<String> = lines.iter().map(|l| details(l)[0].0.clone()).collect();
    let want: HashSet<String> = ns.iter().map(Node::url).collect();
    assert_eq!(urls, want);
}

#[test]
fn prefix_affinity_sends_a_prompt_to_one_replica_in_every_router_process() {
    let ns = nodes(3);
    let cfg = config(
        &[&ns[0], &ns[1], &ns[2]],
        "balance = \"prefix_affinity\"\naffinity_header = \"x-session-id\"\naffinity_prefix_bytes = 1024",
        "",
    );
    let a = Router::start("fleet-aff-a", &cfg);
    let b = Router::start("fleet-aff-b", &cfg);
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for p in 0..20 {
            // A long shared system prompt (the first 1024 bytes are the key).
            let system = format!(
                "You are assistant number {p}. {}",
                "Follow the style guide. ".repeat(60)
            );
            // Same system prompt, different later turns.
            let r = ask(&a, &chat(&system, &format!("round {round}"), false));
            let node = answered_by(&r);
            let first = owner.entry(system.clone()).or_insert_with(|| node.clone());
            assert_eq!(*first, node, "prompt {p} moved replica");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "20 prompts over 3 replicas: {owner:?}");
    // A second router process, same config: the same replica for each prompt.
    for (system, node) in &owner {
        assert_eq!(&answered_by(&ask(&b, &chat(system, "other", false))), node);
    }
    // Another client format (Anthropic Messages, translated): sticky too.
    for p in 0..5 {
        let body = |turn: usize| {
            format!(
                r#"{{"model":"m","max_tokens":10,"system":"Anthropic system {p} {}","messages":[{{"role":"user","content":"turn {turn}"}}]}}"#,
                "padding ".repeat(200)
            )
        };
        let first = post(&a, "/v1/messages", &body(0), &[]);
        assert_eq!(first.status, 200, "{}", first.text());
        let served: Vec<usize> = ns.iter().map(Node::served).collect();
        for turn in 1..4 {
            assert_eq!(post(&a, "/v1/messages", &body(turn), &[]).status, 200);
        }
        let grew: Vec<usize> = ns
            .iter()
            .zip(&served)
            .map(|(n, s)| n.served() - s)
            .collect();
        assert_eq!(grew.iter().filter(|&&g| g > 0).count(), 1, "{grew:?}");
    }
    // Session affinity: the header wins over the prompt.
    let mut seen = HashSet::new();
    for i in 0..10 {
        let r = post(
            &a,
            "/v1/chat/completions",
            &chat(&format!("different prompt {i}"), "x", false),
            &[("X-Session-Id", "session-42")],
        );
        seen.insert(answered_by(&r));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn a_full_fleet_answers_503_with_retry_after_or_queues() {
    // No queue: the second request is refused at once.
    let n = Node::start("node-0");
    n.set_mode(Mode::Gated);
    let router = Arc::new(Router::start(
        "fleet-full",
        &config(&[&n], "max_in_flight = 1", ""),
    ));
    let r1 = router.clone();
    let first = thread::spawn(move || ask(&r1, &chat("s", "one", false)));
    wait_until("the first request to reach the replica", || n.served() == 1);
    let second = ask(&router, &chat("s", "two", false));
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(second.header("retry-after"), Some("5"));
    let j = second.json();
    assert_eq!(j["error"]["code"], "overloaded");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("every endpoint of provider 'fleet' is at max_in_flight"),
        "{j}"
    );
    n.release();
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(
        n.served(),
        1,
        "the refused request never reached the replica"
    );

    // A queue of one: of two more requests, one waits for the slot, the
    // other finds the queue full.
    let router = Arc::new(Router::start(
        "fleet-queue",
        &config(
            &[&n],
            "max_in_flight = 1\nqueue_size = 1\nqueue_timeout_ms = 60000",
            "",
        ),
    ));
    let r1 = router.clone();
    let first = thread::spawn(move || ask(&r1, &chat("s", "one", false)));
    wait_until("the first request to reach the replica", || n.served() == 2);
    let (r2, r3) = (router.clone(), router.clone());
    let second = thread::spawn(move || ask(&r2, &chat("s", "two", false)));
    let third = thread::spawn(move || ask(&r3, &chat("s", "three", false)));
    // One of them is refused (the queue holds one): wait for it.
    wait_until("one request refused", || {
        second.is_finished() || third.is_finished()
    });
    n.release();
    n.release();
    let mut got: Vec<Response> = vec![
        first.join().unwrap(),
        second.join().unwrap(),
        third.join().unwrap(),
    ];
    got.sort_by_key(|r| r.status);
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 503]
    );
    assert!(
        got[2].text().contains("its queue is full"),
        "{}",
        got[2].text()
    );
    let lines = router.log_lines(3);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["notes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x.as_str().unwrap().starts_with("queued "))))
            .count(),
        1,
        "the waiting request's line says it queued"
    );

    // A queue timeout: 503 naming it.
    let router = Arc::new(Router::start(
        "fleet-queue-timeout",
        &config(
            &[&n],
            "max_in_flight = 1\nqueue_size = 4\nqueue_timeout_ms = 200",
            "",
        ),
    ));
    let r1 = router.clone();
    let first = thread::spawn(move || ask(&r1, &chat("s", "one", false)));
    wait_until("the first request to reach the replica", || n.served() == 4);
    let late = ask(&router, &chat("s", "late", false));
    assert_eq!(late.status, 503);
    assert!(
        late.text()
            .contains("no slot was freed within queue_timeout_ms")
    );
    assert_eq!(late.header("retry-after"), Some("1"));
    n.release();
    assert_eq!(first.join().unwrap().status, 200);
}

#[test]
fn e1_a_dead_replica_fails_over_to_another_endpoint_then_is_ejected_and_comes_back() {
    let ns = nodes(2);
    let router = Router::start(
        "fleet-eject",
        &config(
            &[&ns[0], &ns[1]],
            "",
            "eject_after_failures = 2\neject_base_ms = 400",
        ),
    );
    ns[0].kill();
    for i in 0..30 {
        let r = ask(&router, &chat("s", &format!("q{i}"), false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(answered_by(&r), "node-1");
    }
    let lines = router.log_lines(30);
    let dead = ns[0].url();
    let failed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| details(l).iter().any(|(e, _)| *e == dead))
        .map(|(i, _)| i)
        .collect();
    // Each failed attempt is followed by the other endpoint of the same provider.
    for &i in &failed {
        assert_eq!(
            details(&lines[i]),
            [
                (dead.clone(), "connect_failed".to_string()),
                (ns[1].url(), "ok".to_string())
            ]
        );
        assert_eq!(lines[i]["attempts"], serde_json::json!(["fleet", "fleet"]));
        assert_eq!(lines[i]["status"], 200);
    }
    assert!(
        (1..=3).contains(&failed.len()),
        "ejected after 2 failures (a trial after the back-off at most): {failed:?}"
    );
    // Back: the next trial after the back-off reaches it.
    ns[0].restart();
    wait_until("the restarted replica to serve again", || {
        let r = ask(&router, &chat("s", "again", false));
        assert_eq!(r.status, 200);
        ns[0].served() > 0
    });
}

#[test]
fn e4_a_429_with_retry_after_cools_the_replica_down_without_an_error() {
    let ns = nodes(2);
    let router = Router::start("fleet-429", &config(&[&ns[0], &ns[1]], "", ""));
    ns[0].set_mode(Mode::Status429);
    for i in 0..20 {
        let r = ask(&router, &chat("s", &format!("q{i}"), false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(answered_by(&r), "node-1");
    }
    // retry-after: 30 → one 429 at most, then it is not asked again.
    assert!(ns[0].served() <= 1, "{}", ns[0].served());
    let lines = router.log_lines(20);
    let cooled: Vec<_> = lines
        .iter()
        .filter(|l| details(l).len() == 2)
        .map(details)
        .collect();
    for d in &cooled {
        assert_eq!(d[0], (ns[0].url(), "retry_status".to_string()));
    }
}

#[test]
fn active_health_takes_a_loading_replica_out_and_brings_it_back() {
    let ns = nodes(2);
    ns[0].set_health(false);
    let router = Router::start(
        "fleet-probe",
        &config(
            &[&ns[0], &ns[1]],
            "health_path = \"/health\"\nhealth_interval_ms = 50",
            "",
        ),
    );
    let out = format!(
        "provider 'fleet' endpoint {}: probe failed (status 503), out of rotation",
        ns[0].url()
    );
    wait_until("the probe to mark node-0 down", || {
        router.stderr().contains(&out)
    });
    for i in 0..20 {
        let r = ask(&router, &chat("s", &format!("q{i}"), false));
        assert_eq!(answered_by(&r), "node-1");
    }
    assert_eq!(ns[0].served(), 0);
    ns[0].set_health(true);
    let back = format!(
        "provider 'fleet' endpoint {}: probe succeeded, back in rotation",
        ns[0].url()
    );
    wait_until("the probe to bring node-0 back", || {
        router.stderr().contains(&back)
    });
    wait_until("node-0 to serve", || {
        ask(&router, &chat("s", "x", false));
        ns[0].served() > 0
    });
    assert!(ns[1].health_probes() > 0);
}

#[test]
fn g2_a_reload_keeps_the_health_and_pools_of_the_endpoints_it_keeps() {
    let ns = nodes(3);
    let server = "eject_after_failures = 1\neject_base_ms = 600000";
    let router = Router::start("fleet-reload", &config(&[&ns[0], &ns[1]], "", server));
    ns[0].kill();
    // Until node-0 has failed once (and is ejected for 10 minutes).
    let mut n = 0;
    loop {
        n += 1;
        let r = ask(&router, &chat("s", "x", false));
        assert_eq!(answered_by(&r), "node-1");
        let lines = router.log_lines(n);
        if details(&lines[n - 1]).len() == 2 {
            break;
        }
    }
    ns[0].restart();
    let conns_before = ns[1].accepted();
    // The new config adds node-2 and keeps node-0 and node-1.
    let text = config(&[&ns[0], &ns[1], &ns[2]], "", server)
        .replace("{LOG}", router.log_path.to_str().unwrap());
    std::fs::write(router.dir.join("config.toml"), text).unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(
        unsafe { libc::kill(router.child.id() as i32, libc::SIGHUP) },
        0
    );
    wait_until("the reload", || {
        router.stderr().contains("config reloaded (generation 1)")
    });
    for i in 0..30 {
        let r = ask(&router, &chat("s", &format!("after {i}"), false));
        assert_ne!(
            answered_by(&r),
            "node-0",
            "node-0's ejection survived the reload"
        );
    }
    assert_eq!(ns[0].served(), 0);
    assert!(ns[2].served() > 0, "the new endpoint is used");
    assert_eq!(
        ns[1].accepted(),
        conns_before,
        "node-1's pooled connection was kept across the reload"
    );
    let lines = router.log_lines(n + 30);
    assert_eq!(lines[n + 29]["config_generation"], 1);
}

#[test]
fn e3_a_hanging_replica_times_out_and_the_request_goes_to_another() {
    let ns = nodes(2);
    ns[0].set_mode(Mode::Hang);
    let router = Router::start(
        "fleet-hang",
        &config(
            &[&ns[0], &ns[1]],
            "balance = \"round_robin\"\nfirst_byte_timeout_ms = 300",
            "",
        ),
    );
    // Round robin starts with node-0 on worker 0: the first request meets the hang.
    let r = ask(&router, &chat("s", "x", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered_by(&r), "node-1");
    assert_eq!(r.header("x-router-attempts"), Some("2"));
    let line = &router.log_lines(1)[0];
    assert_eq!(
        details(line),
        [
            (ns[0].url(), "timeout".to_string()),
            (ns[1].url(), "ok".to_string())
        ]
    );
}

#[test]
fn e6_a_replica_dying_mid_stream_is_never_retried_once_bytes_reached_the_client() {
    let ns = nodes(2);
    ns[0].set_mode(Mode::DieMidStream);
    let router = Router::start(
        "fleet-die",
        &config(&[&ns[0], &ns[1]], "balance = \"round_robin\"", ""),
    );
    let r = ask(&router, &chat("s", "x", true));
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("from node-0"), "{text}");
    assert!(
        text.contains("\"error\""),
        "the client's error event: {text}"
    );
    assert!(!text.contains("[DONE]"), "never a fake end: {text}");
    assert_eq!(ns[1].served(), 0, "not retried after the first byte");
    let line = &router.log_lines(1)[0];
    assert_eq!(details(line).len(), 1);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .starts_with("upstream_truncated")
    );
}

/// Open fds of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn fault_suite_under_load_no_client_sees_an_error() {
    let ns = nodes(3);
    let server = "workers = 2\neject_after_failures = 2\neject_base_ms = 300";
    let cfg = config(&[&ns[0], &ns[1], &ns[2]], "", server);
    let mut router = Router::start("fleet-suite", &cfg);
    let pid = router.child.id();
    let addr = router.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // Four clients on kept-alive connections, plain and streamed.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
            thread::spawn(move || {
                let connect = || {
                    let s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                        .unwrap();
                    Reader::new(s)
                };
                let mut reader = connect();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let body = chat("suite", &format!("c{c} r{i}"), i.is_multiple_of(2));
                    let sent = write!(
                        reader.stream,
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let resp = sent.ok().and_then(|_| reader.response());
                    match resp {
                        Some(r) if r.status == 200 && (!i.is_multiple_of(2) || r.text().contains("[DONE]")) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if r.header("connection") == Some("close") {
                                reader = connect();
                            }
                        }
                        Some(r) => {
                            bad.lock().unwrap().push(format!("{} {}", r.status, r.text()));
                            reader = connect();
                        }
                        None => {
                            bad.lock().unwrap().push("connection closed".into());
                            reader = connect();
                        }
                    }
                }
            })
        })
        .collect();
    let phase = |what: &str, n: usize| {
        let target = ok.load(Ordering::SeqCst) + n;
        wait_until(what, || ok.load(Ordering::SeqCst) >= target);
    };
    phase("warm-up", 200);
    let fds_before = fds(pid);
    let rss_before = rss_kb(pid);
    ns[0].kill();
    phase("node-0 dead", 300);
    ns[0].restart();
    phase("node-0 back", 300);
    ns[1].set_mode(Mode::Status503);
    phase("node-1 answering 503", 300);
    ns[1].set_mode(Mode::Reset);
    phase("node-1 resetting", 300);
    ns[1].set_mode(Mode::Answer);
    ns[2].set_mode(Mode::SlowFirst);
    phase("node-2 slow", 50);
    ns[2].set_mode(Mode::Answer);
    // G2: a reload with the load running (a changed key, same endpoints).
    std::fs::write(
        router.dir.join("config.toml"),
        cfg.replace("eject_base_ms = 300", "eject_base_ms = 301")
            .replace("{LOG}", router.log_path.to_str().unwrap()),
    )
    .unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    phase("after the reload", 300);
    let served_after_restart = ns[0].served();
    phase("steady", 200);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "client-visible errors: {bad:?}");
    assert!(
        ns[0].served() > served_after_restart,
        "the restarted replica serves again"
    );
    // No fd or memory growth: pools hold at most a few idle connections per
    // endpoint per worker.
    let fds_after = fds(pid);
    assert!(
        fds_after <= fds_before + 12,
        "fds {fds_before} → {fds_after}"
    );
    let rss_after = rss_kb(pid);
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "RSS {rss_before} kB → {rss_after} kB"
    );
    // Ejection, failover and the reload are in the log.
    let total = ok.load(Ordering::SeqCst);
    let lines = router.log_lines(total);
    let outcomes: HashSet<String> = lines
        .iter()
        .flat_map(|l| details(l).into_iter().map(|(_, o)| o))
        .collect();
    for want in ["connect_failed", "retry_status", "ok"] {
        assert!(outcomes.contains(want), "{want} missing: {outcomes:?}");
    }
    assert!(lines.iter().any(|l| l["config_generation"] == 1));
    // G1: drain, exit 0, every request logged.
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let mut code = None;
    wait_until("the router to exit", || {
        code = router.child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code.unwrap(), Some(0));
    let text = std::fs::read_to_string(&router.log_path).unwrap();
    assert_eq!(text.lines().count(), total);
}
