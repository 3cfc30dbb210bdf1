//! `watch` and `tui` (docs/watch-tui.md), run as the real binary: `watch` as
//! a child with piped output, `tui` in a detached tmux session read with
//! `capture-pane` and driven with `send-keys`.
//!
//! Two kinds of router: a fake one in this file (a `TcpListener` thread that
//! serves `/dashboard/events` with the events a test pushes, close-delimited
//! or chunked, and a canned streamed chat reply), which pins the client's
//! behaviour on its own; and the real router (`common::Router`, the built-in
//! mock provider), which checks the feed and the clients agree. The real
//! tests need `GET /dashboard/events`: while it answers 404 they fail with
//! "feed not implemented yet".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_opensourcellmrouter");
const KEY_ENV: &str = "OPENSOURCELLMROUTER_API_KEY";
const DEADLINE: Duration = Duration::from_secs(20);

/// Poll `f` until it returns something, or fail naming `what` and the last state.
fn poll<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last seen:\n{state}")
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---------------------------------------------------------------------------
// The fake router
// ---------------------------------------------------------------------------

/// A router stand-in: the feed (events pushed by the test) and a chat
/// endpoint whose streamed reply also shows up in the feed.
struct Fake {
    addr: SocketAddr,
    subscribers: Arc<Mutex<Vec<TcpStream>>>,
    /// When false, connections are closed unanswered (a router restarting).
    up: Arc<AtomicBool>,
    chunked: bool,
    /// Chat request bodies received.
    chats: Arc<Mutex<Vec<Value>>>,
}

/// The fake's chat reply, in the deltas it is streamed as.
const FAKE_REPLY: [&str; 4] = ["Hello ", "from the ", "fake ", "router."];

impl Fake {
    fn start(chunked: bool, key: Option<&str>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            subscribers: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
            chunked,
            chats: Arc::default(),
        };
        let (subs, up, chats) = (
            fake.subscribers.clone(),
            fake.up.clone(),
            fake.chats.clone(),
        );
        let key = key.map(str::to_string);
        let ids = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                if !up.load(Ordering::SeqCst) {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                let (subs, chats, key, ids) =
                    (subs.clone(), chats.clone(), key.clone(), ids.clone());
                thread::spawn(move || serve(stream, chunked, key, subs, chats, ids));
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Write one event to every subscriber (split in two writes, and in two
    /// chunks when chunked, so the client must join them).
    fn push(&self, v: &Value) {
        push_to(&self.subscribers, self.chunked, v);
    }

    /// Write raw bytes to every subscriber (a comment, garbage).
    fn push_raw(&self, bytes: &str) {
        let mut subs = self.subscribers.lock().unwrap();
        let chunked = self.chunked;
        subs.retain_mut(|s| {
            let wire = if chunked {
                format!("{:x}\r\n{bytes}\r\n", bytes.len())
            } else {
                bytes.to_string()
            };
            s.write_all(wire.as_bytes()).is_ok()
        });
    }

    fn subscribers(&self) -> usize {
        self.subscribers.lock().unwrap().len()
    }

    /// The router "restarts": open feeds are cut and new connections are
    /// refused an answer until `set_up(true)`.
    fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.subscribers.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn request(&self, id: &str, model: &str, provider: &str, status: u64) {
        for v in request_events(id, model, provider, status) {
            self.push(&v);
        }
    }
}

fn push_to(subs: &Mutex<Vec<TcpStream>>, chunked: bool, v: &Value) {
    let data = format!("data: {v}\n\n");
    let (a, b) = data.split_at(data.len() / 2);
    let mut subs = subs.lock().unwrap();
    subs.retain_mut(|s| {
        [a, b].iter().all(|piece| {
            let wire = if chunked {
                format!("{:x}\r\n{piece}\r\n", piece.len())
            } else {
                piece.to_string()
            };
            s.write_all(wire.as_bytes()).is_ok() && s.flush().is_ok()
        })
    });
}

/// The four events of one request, as the router sends them.
fn request_events(id: &str, model: &str, provider: &str, status: u64) -> Vec<Value> {
    let error = if status >= 400 {
        json!("upstream refused the connection")
    } else {
        Value::Null
    };
    vec![
        json!({"type":"start","id":id,"ts_ms":1_700_000_000_000u64,"model":model,"in_flight":1,
               "path":"/v1/chat/completions","stream":true}),
        json!({"type":"classified","id":id,"ts_ms":1_700_000_000_001u64,"tags":["code"]}),
        json!({"type":"routed","id":id,"ts_ms":1_700_000_000_002u64,"provider":provider,
               "model":model,"attempt":1,"endpoint":null}),
        json!({"type":"complete","id":id,"ts_ms":1_700_000_000_000u64,"provider":provider,
               "requested_model":model,"sent_model":model,"duration_ms":1234,"tags":["code"],
               "status":status,"stream":true,"ttft_ms":210.0,"overhead_us":45,"input_tokens":12,
               "output_tokens":34,"response_tags":[],"attempts":[provider],"error":error,
               "plugins":[],"messages":null,"field_from_the_future":{"x":1}}),
    ]
}

fn serve(
    stream: TcpStream,
    chunked: bool,
    key: Option<String>,
    subs: Arc<Mutex<Vec<TcpStream>>>,
    chats: Arc<Mutex<Vec<Value>>>,
    ids: Arc<AtomicUsize>,
) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let Some((_method, path, headers, body)) = read_request(&mut reader) else {
        return;
    };
    let auth = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone());
    if let Some(key) = key
        && auth.as_deref() != Some(&format!("Bearer {key}"))
    {
        let body = r#"{"error":{"message":"missing or invalid API key","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let _ = write!(
            writer,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/dashboard/events" => {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n"
            };
            writer.write_all(head.as_bytes()).unwrap();
            subs.lock().unwrap().push(writer);
        }
        "/v1/chat/completions" => {
            let req: Value = serde_json::from_slice(&body).unwrap();
            chats.lock().unwrap().push(req.clone());
            let model = req["model"].as_str().unwrap_or("?").to_string();
            let id = format!("fake-chat-{}", ids.fetch_add(1, Ordering::SeqCst));
            let events = request_events(&id, &model, "fake-provider", 200);
            for v in &events[..3] {
                push_to(&subs, chunked, v);
            }
            let mut sse = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let mut pieces = vec![json!({"choices":[{"index":0,"delta":{"role":"assistant"}}]})];
            for d in FAKE_REPLY {
                pieces.push(json!({"choices":[{"index":0,"delta":{"content":d}}]}));
            }
            for p in pieces {
                let ev = format!("data: {p}\n\n");
                sse.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
            }
            let done = "data: [DONE]\n\n";
            sse.push_str(&format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()));
            let _ = writer.write_all(sse.as_bytes());
            push_to(&subs, chunked, &events[3]);
        }
        _ => {
            let body = r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#;
            let _ = write!(
                writer,
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// `watch` as a child process
// ---------------------------------------------------------------------------

/// A running `watch`, its stdout and stderr collected as they come.
struct Watcher {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    err_ended: Arc<AtomicBool>,
}

/// Read `pipe` into a string as it comes; the flag is set at its end.
fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, Arc<AtomicBool>) {
    let text = Arc::new(Mutex::new(String::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let (t, e) = (text.clone(), ended.clone());
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
        e.store(true, Ordering::SeqCst);
    });
    (text, ended)
}

impl Watcher {
    fn start(url: &str, key: Option<&str>) -> Watcher {
        Self::start_with(url, key, true)
    }

    /// `read_stdout: false` leaves stdout piped but unread (a test closes it).
    fn start_with(url: &str, key: Option<&str>, read_stdout: bool) -> Watcher {
        let mut cmd = Command::new(BIN);
        cmd.args(["watch", url])
            .env_remove(KEY_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = key {
            cmd.env(KEY_ENV, k);
        }
        let mut child = cmd.spawn().unwrap();
        let (err, err_ended) = collect(child.stderr.take().unwrap());
        let out = if read_stdout {
            collect(child.stdout.take().unwrap()).0
        } else {
            Arc::default()
        };
        Watcher {
            child,
            out,
            err,
            err_ended,
        }
    }

    /// Wait for a stdout line containing every one of `parts`; return it.
    fn line_with(&self, parts: &[&str]) -> String {
        poll(&format!("a `watch` line with {parts:?}"), || {
            let out = self.out.lock().unwrap();
            out.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string)
                .ok_or_else(|| format!("stdout:\n{out}\nstderr:\n{}", self.err.lock().unwrap()))
        })
    }

    fn stderr_has(&self, what: &str) {
        poll(&format!("`{what}` on watch's stderr"), || {
            let err = self.err.lock().unwrap();
            if err.contains(what) {
                Ok(())
            } else {
                Err(err.clone())
            }
        })
    }

    /// Wait for the exit, and for all of stderr to be read.
    fn exit(&mut self) -> ExitStatus {
        poll("watch to exit", || match self.child.try_wait().unwrap() {
            Some(status) if self.err_ended.load(Ordering::SeqCst) => Ok(status),
            _ => Err(self.err.lock().unwrap().clone()),
        })
    }

    fn interrupt(&mut self) -> ExitStatus {
        // SAFETY: sends a signal to our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) },
            0
        );
        self.exit()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// `tui` in tmux
// ---------------------------------------------------------------------------

/// A tmux server of our own (its own socket) with one session.
struct Tmux {
    socket: String,
    /// Where the pane's shell writes the `tui` process id.
    pid_file: std::path::PathBuf,
}

static TMUX_N: AtomicUsize = AtomicUsize::new(0);

/// Whether tmux can be run; installs it (Debian's package) if it is missing.
fn tmux_available() -> bool {
    let works = || {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return true;
    }
    eprintln!("tmux is missing: trying `apt-get install -y tmux`");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", "tmux"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if !works() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "tmux"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    works()
}

impl Tmux {
    /// Start `tui` on `url` in a `w`×`h` window. When it exits, the shell
    /// prints its exit status and the terminal modes, then waits.
    fn tui(url: &str, model: &str, key: Option<&str>, w: u16, h: u16) -> Tmux {
        let socket = format!(
            "osr-tui-{}-{}",
            std::process::id(),
            TMUX_N.fetch_add(1, Ordering::SeqCst)
        );
        let pid_file = std::env::temp_dir().join(format!("{socket}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let key_env = match key {
            Some(k) => format!("{KEY_ENV}={k} "),
            None => String::new(),
        };
        let cmd = format!(
            "unset {KEY_ENV}; {key_env}sh -c 'echo $$ > {}; exec {BIN} tui {url} --model {model}'; \
             echo \"tui exited $?\"; stty -a; exec sleep 600",
            pid_file.display()
        );
        let tmux = Tmux { socket, pid_file };
        let out = tmux
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x"])
            .arg(w.to_string())
            .arg("-y")
            .arg(h.to_string())
            .arg(cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-u")
            .arg("-L")
            .arg(&self.socket)
            .env_remove("TMUX")
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Type text literally (no key names).
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Wait until the screen satisfies `f`; return it.
    fn screen_where(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        poll(what, || {
            let s = self.capture();
            if f(&s) { Ok(s) } else { Err(s) }
        })
    }

    fn screen_with(&self, parts: &[&str]) -> String {
        self.screen_where(&format!("the screen to show {parts:?}"), |s| {
            parts.iter().all(|p| s.contains(p))
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Tmux {
    /// The `tui` process id.
    fn tui_pid(&self) -> libc::pid_t {
        poll("the tui's pid file", || {
            std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_default()
        })
    }
}

/// Whether a process has ended (gone, or a zombie nobody reaped).
fn ended(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// The stats pane's row for `name` (provider or tag): its requests and errors.
fn stats_row(screen: &str, name: &str) -> Option<(u64, u64)> {
    screen.lines().find_map(|line| {
        // │stats…│ │chat…│ — the stats pane is the first bordered cell.
        let cell = line.split('│').nth(1)?;
        let mut words = cell.split_whitespace();
        if words.next()? != name {
            return None;
        }
        Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
    })
}

/// After `q`: the shell's lines, on the normal screen, in cooked mode.
fn assert_exited_and_restored(tmux: &Tmux) {
    // `iexten` is on stty's last line, with `icanon` and `echo`.
    let screen = tmux.screen_with(&["tui exited", "iexten"]);
    assert!(screen.contains("tui exited 0"), "{screen}");
    let modes: Vec<&str> = screen
        .split(|c: char| c.is_whitespace() || c == ';')
        .collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(
            modes.contains(&mode),
            "terminal left in raw mode ({mode}):\n{screen}"
        );
    }
    assert_eq!(
        tmux.run(&["display-message", "-p", "-t", "t", "#{alternate_on}"])
            .trim(),
        "0",
        "still on the alternate screen"
    );
    assert!(!screen.contains("Live feed"), "{screen}");
}

// ---------------------------------------------------------------------------
// Against the fake router
// ---------------------------------------------------------------------------

#[test]
fn watch_prints_each_request_and_reconnects() {
    let fake = Fake::start(false, None);
    let mut w = Watcher::start(&fake.url(), None);
    w.stderr_has("connected to");
    poll("watch to subscribe", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });
    fake.push_raw(": keep-alive\n\n");
    fake.push_raw("data: not json\n\n");
    fake.push(&json!({"type":"something-new","id":"x","ts_ms":1}));
    fake.request("r-ok-1", "mock-fast", "mock", 200);
    let done = w.line_with(&["r-ok-1", "200"]);
    assert!(
        done.contains(
            " r-ok-1 mock-fast → mock  tags=[code] 200 in=12 out=34 ttft=210ms overhead=45µs stream 1.2s"
        ),
        "{done}"
    );
    let routed = w.line_with(&["r-ok-1", "…"]);
    assert!(
        routed.ends_with(" r-ok-1 mock-fast → mock  tags=[code] …"),
        "{routed}"
    );
    fake.request("r-bad-2", "mock-fast", "local", 502);
    let bad = w.line_with(&["r-bad-2", "502"]);
    assert!(
        bad.contains(" 502 error: upstream refused the connection"),
        "{bad}"
    );

    // The router goes away and comes back: watch says so and carries on.
    fake.go_down();
    w.stderr_has("reconnecting…");
    fake.set_up();
    w.stderr_has("reconnected to");
    poll("watch to subscribe again", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });
    fake.request("r-after-3", "mock-2", "mock", 200);
    w.line_with(&["r-after-3", "mock-2 → mock", "200"]);

    assert!(w.interrupt().success(), "SIGINT exits 0");
}

#[test]
fn watch_reads_chunked_feeds_and_sends_the_api_key() {
    let fake = Fake::start(true, Some("sk-test"));

    // No key: a clear error naming the variable, and a failure exit.
    let mut no_key = Watcher::start(&fake.url(), None);
    let status = no_key.exit();
    assert_eq!(status.code(), Some(1));
    let err = no_key.err.lock().unwrap().clone();
    assert!(err.contains("401") && err.contains(KEY_ENV), "{err}");

    // A 404 (no feed at that URL) is an error too.
    let mut wrong = Watcher::start(&format!("{}/elsewhere", fake.url()), Some("sk-test"));
    assert_eq!(wrong.exit().code(), Some(1));
    assert!(wrong.err.lock().unwrap().contains("404"));

    // With the key: events arrive, split across chunks.
    let w = Watcher::start(&fake.url(), Some("sk-test"));
    poll("watch to subscribe", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });
    fake.request("r-chunked-1", "mock-fast", "mock", 200);
    w.line_with(&["r-chunked-1", "mock-fast → mock", "200"]);
}

#[test]
fn watch_exits_0_when_its_stdout_closes() {
    let fake = Fake::start(false, None);
    let mut w = Watcher::start_with(&fake.url(), None, false);
    poll("watch to subscribe", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });
    drop(w.child.stdout.take());
    // Noticed while idle, and on the next write.
    assert!(w.exit().success());
    let mut w = Watcher::start_with(&fake.url(), None, false);
    poll("watch to subscribe", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });
    drop(w.child.stdout.take());
    fake.request("r-1", "m", "p", 200);
    assert!(w.exit().success());
}

#[test]
fn tui_on_a_fake_router() {
    assert!(
        tmux_available(),
        "tmux is needed and could not be installed"
    );
    let fake = Fake::start(false, None);
    let tmux = Tmux::tui(&fake.url(), "fake-model", None, 120, 40);
    tmux.screen_with(&["connected", "Live feed", "Stats", "Chat"]);
    poll("tui to subscribe", || {
        (fake.subscribers() == 1).then_some(()).ok_or_default()
    });

    // A request in flight shows with its elapsed time, then completes.
    fake.push(&request_events("r-slow", "mock-slow", "mock", 200)[0]);
    tmux.screen_with(&["r-slow mock-slow → …", "in flight…", "1 in flight"]);
    fake.request("r-tui-1", "mock-fast", "mock", 200);
    fake.request("r-tui-2", "mock-fast", "local", 502);
    // (A capture may catch a frame half drawn: conditions are polled whole.)
    tmux.screen_where("both requests in the feed and the stats", |s| {
        s.contains("r-tui-1 mock-fast → mock")
            && s.contains("r-tui-2")
            && stats_row(s, "mock") == Some((1, 0))
            && stats_row(s, "local") == Some((1, 1))
            && stats_row(s, "code") == Some((2, 1))
    });

    // Chat: Tab, type, Enter → the streamed reply, and the request in the feed.
    tmux.keys(&["Tab"]);
    tmux.type_text("hello q");
    tmux.keys(&["Enter"]);
    tmux.screen_where("the reply, and the request in the feed and stats", |s| {
        s.contains("you: hello q")
            && s.contains("fake-model: Hello from the fake router.")
            && s.contains("fake-model → fake-provider")
            && stats_row(s, "fake-provider") == Some((1, 0))
    });
    let sent = fake.chats.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "fake-model");
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"],
        json!([{"role":"user","content":"hello q"}])
    );
    tmux.keys(&["Escape"]);

    // The router restarts: "disconnected", then connected again.
    fake.go_down();
    tmux.screen_with(&["disconnected"]);
    fake.set_up();
    tmux.screen_where("the feed to reconnect", |s| {
        s.contains("connected · ") && !s.contains("disconnected")
    });

    // Smaller terminal: still three panes.
    tmux.run(&["resize-window", "-t", "t", "-x", "80", "-y", "24"]);
    let screen = tmux.screen_where("the 80x24 redraw", |s| {
        s.lines().count() <= 24
            && s.lines().all(|l| l.chars().count() <= 80)
            && s.contains("Live feed")
            && s.contains("Stats")
            && s.contains("Chat")
            && s.lines()
                .any(|l| l.starts_with('└') && l.chars().count() == 80)
    });
    assert!(screen.contains("fake-model"), "{screen}");

    tmux.keys(&["q"]);
    assert_exited_and_restored(&tmux);
}

#[test]
fn tui_leaves_on_sigterm_and_when_its_terminal_goes() {
    assert!(
        tmux_available(),
        "tmux is needed and could not be installed"
    );
    let fake = Fake::start(false, None);

    // SIGTERM: the terminal restored, exit 0.
    let tmux = Tmux::tui(&fake.url(), "m", None, 100, 30);
    tmux.screen_with(&["connected", "Live feed", "Stats", "Chat"]);
    // SAFETY: signals the tui this test started.
    assert_eq!(unsafe { libc::kill(tmux.tui_pid(), libc::SIGTERM) }, 0);
    assert_exited_and_restored(&tmux);

    // The terminal vanishes (tmux killed): the tui ends too, never spinning on.
    let tmux = Tmux::tui(&fake.url(), "m", None, 100, 30);
    tmux.screen_with(&["connected", "Live feed", "Stats", "Chat"]);
    let pid = tmux.tui_pid();
    drop(tmux);
    poll("the tui to end with its terminal", || {
        ended(pid).then_some(()).ok_or_default()
    });
}

// ---------------------------------------------------------------------------
// Against the real router
// ---------------------------------------------------------------------------

/// One worker, the built-in mock provider, the dashboard feed on.
fn mock_router(name: &str, port: u16) -> Router {
    let head = server_head("dashboard = true").replace("port = 0", &format!("port = {port}"));
    Router::start(
        name,
        &format!(
            "{head}\n[[providers]]\nname = \"mock\"\nformat = \"mock\"\n\n[[routers]]\ntype = \"fallback\"\n"
        ),
    )
}

/// Fail clearly while the router has no feed.
fn require_feed(router: &Router) {
    let mut s = router.connect();
    s.write_all(b"GET /dashboard/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(
        !line.contains(" 404 "),
        "feed not implemented yet: GET /dashboard/events answered {line:?}"
    );
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
}

fn chat(router: &Router, model: &str, stream: bool) -> Response {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"write a python function"}}],"stream":{stream}}}"#
    );
    let r = post(router, "/v1/chat/completions", &body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// The id of the logged request for `model` (one per model in these tests).
fn log_id(router: &Router, model: &str) -> String {
    poll(&format!("a log line for {model}"), || {
        let text = std::fs::read_to_string(&router.log_path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["requested_model"] == model)
            .map(|v| v["id"].as_str().unwrap().to_string())
            .ok_or(text)
    })
}

/// Send requests until one shows up in the client (`seen`): the feed may
/// subscribe a moment after its head is sent, and a request made before
/// then is not on it.
fn until_seen(router: &Router, seen: impl Fn() -> bool) {
    poll("a request to show up on the feed", || {
        chat(router, "mock-warmup", false);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if seen() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err("no warm-up request seen yet".to_string())
    });
}

#[test]
fn watch_on_the_real_router() {
    let router = mock_router("watch-real", 0);
    require_feed(&router);
    let mut w = Watcher::start(&format!("http://{}", router.addr), None);
    w.stderr_has("connected to");
    until_seen(&router, || w.out.lock().unwrap().contains("mock-warmup"));
    chat(&router, "mock-fast", false);
    chat(&router, "mock-stream", true);
    for model in ["mock-fast", "mock-stream"] {
        let id = log_id(&router, model);
        let line = w.line_with(&[&id, &format!("{model} → mock"), " 200 "]);
        assert!(line.contains(" in="), "{line}");
    }
    assert!(w.interrupt().success(), "SIGINT exits 0");
}

#[test]
fn watch_on_the_real_router_needs_the_api_key() {
    let head = server_head("dashboard = true\napi_key_env = \"OSR_TUI_TEST_KEY\"");
    let router = Router::start_with_env(
        "watch-key",
        &format!(
            "{head}\n[[providers]]\nname = \"mock\"\nformat = \"mock\"\n\n[[routers]]\ntype = \"fallback\"\n"
        ),
        &[("OSR_TUI_TEST_KEY", "s3cret")],
    );
    let url = format!("http://{}", router.addr);
    let mut denied = Watcher::start(&url, None);
    assert_eq!(denied.exit().code(), Some(1));
    let err = denied.err.lock().unwrap().clone();
    assert!(err.contains("401") && err.contains(KEY_ENV), "{err}");

    let mut s = router.connect();
    s.write_all(
        b"GET /dashboard/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\n\r\n",
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(
        !line.contains(" 404 "),
        "feed not implemented yet: GET /dashboard/events answered {line:?}"
    );
    let mut w = Watcher::start(&url, Some("s3cret"));
    w.stderr_has("connected to");
    assert!(w.interrupt().success());
}

#[test]
fn tui_on_the_real_router() {
    assert!(
        tmux_available(),
        "tmux is needed and could not be installed"
    );
    let router = mock_router("tui-real", 0);
    require_feed(&router);
    let url = format!("http://{}", router.addr);
    let tmux = Tmux::tui(&url, "mock-tui", None, 120, 40);
    tmux.screen_with(&["connected · ", "Live feed", "Stats", "Chat"]);
    until_seen(&router, || tmux.capture().contains("mock-warmup"));

    // A request from the test: in the feed, and counted in the stats.
    let before = tmux.screen_where("the warm-up counted", |s| stats_row(s, "mock").is_some());
    let (n, errors) = stats_row(&before, "mock").unwrap();
    chat(&router, "mock-fast", false);
    let id = log_id(&router, "mock-fast");
    // At least one more: a late warm-up may be counted too.
    let screen = tmux.screen_where("the request in the feed and the stats", |s| {
        s.contains(&format!("{id} mock-fast → mock"))
            && stats_row(s, "mock").is_some_and(|(m, e)| m > n && e == errors)
    });
    assert!(screen.contains(" 200 "), "{screen}");

    // Chat through the router: the mock's reply, and the request in the feed.
    tmux.keys(&["Tab"]);
    tmux.type_text("hello");
    tmux.keys(&["Enter"]);
    tmux.screen_with(&[
        "you: hello",
        "mock-tui: This is a mock response",
        "mock-tui → mock",
    ]);
    tmux.keys(&["Escape"]);

    // The router restarts on the same port: disconnected, then back.
    let port = router.addr.port();
    drop(router);
    tmux.screen_with(&["disconnected"]);
    let _router = poll("the router to restart on its port", || {
        std::panic::catch_unwind(|| mock_router("tui-real-again", port))
            .map_err(|_| format!("port {port} not free yet"))
    });
    tmux.screen_where("the feed to reconnect", |s| {
        s.contains("connected · ") && !s.contains("disconnected")
    });

    tmux.run(&["resize-window", "-t", "t", "-x", "80", "-y", "24"]);
    tmux.screen_where("the 80x24 redraw", |s| {
        s.lines().count() <= 24
            && s.contains("Live feed")
            && s.contains("Stats")
            && s.contains("Chat")
            && s.lines()
                .any(|l| l.starts_with('└') && l.chars().count() == 80)
    });
    tmux.keys(&["q"]);
    assert_exited_and_restored(&tmux);
}

/// `(cond).then_some(()).ok_or_default()` for [`poll`].
trait OkOrDefault<T> {
    fn ok_or_default(self) -> Result<T, String>;
}

impl<T> OkOrDefault<T> for Option<T> {
    fn ok_or_default(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_string())
    }
}
