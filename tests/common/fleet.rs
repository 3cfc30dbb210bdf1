//! A replica of a fleet (one endpoint of a provider): a raw-socket
//! HTTP/1.1 server whose mode can be switched while requests flow, that can
//! be killed (port closed: connections refused, open ones reset) and
//! restarted on the same port, and that counts what it served.
//!
//! Modes ([`Mode`]): answer (a JSON completion, or an SSE stream when the
//! request asks for one, naming the replica), a status (`503`, `500`, or
//! `429` with `retry-after`), reset before the head, hang, a slow first
//! byte, die mid-stream. `GET /health` answers `200` or `503`
//! ([`Node::set_health`]).
#![allow(dead_code)]

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::read_request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Answer = 0,
    Status503 = 1,
    Status500 = 2,
    /// `429` with `retry-after: 30`.
    Status429 = 3,
    /// Read the request, then reset the connection (RST) before any byte.
    Reset = 4,
    Hang = 5,
    /// Answer after 300 ms.
    SlowFirst = 6,
    /// Stream head and one event, then reset.
    DieMidStream = 7,
    /// Wait for [`Node::release`], then answer.
    Gated = 8,
}

impl Mode {
    fn from(v: u8) -> Mode {
        match v {
            1 => Mode::Status503,
            2 => Mode::Status500,
            3 => Mode::Status429,
            4 => Mode::Reset,
            5 => Mode::Hang,
            6 => Mode::SlowFirst,
            7 => Mode::DieMidStream,
            8 => Mode::Gated,
            _ => Mode::Answer,
        }
    }
}

struct Shared {
    name: String,
    mode: AtomicU8,
    health_ok: AtomicBool,
    /// Chat requests that reached this replica (any mode).
    served: AtomicUsize,
    health_probes: AtomicUsize,
    /// Connections accepted (probes included).
    accepted: AtomicUsize,
    /// The first user/system words of each chat request (for affinity tests).
    prompts: Mutex<Vec<String>>,
    /// Open connections, to reset them on kill.
    conns: Mutex<Vec<TcpStream>>,
    alive: AtomicBool,
    /// Releases granted to gated requests.
    gate: (Mutex<usize>, std::sync::Condvar),
}

pub struct Node {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Mutex<Option<TcpListener>>,
}

impl Node {
    pub fn start(name: &str) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: AtomicU8::new(0),
            health_ok: AtomicBool::new(true),
            served: AtomicUsize::new(0),
            health_probes: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            prompts: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            alive: AtomicBool::new(true),
            gate: (Mutex::new(0), std::sync::Condvar::new()),
        });
        let node = Node {
            addr,
            shared,
            listener: Mutex::new(None),
        };
        node.listen(listener);
        node
    }

    fn listen(&self, listener: TcpListener) {
        let accept = listener.try_clone().unwrap();
        *self.listener.lock().unwrap() = Some(listener);
        let shared = self.shared.clone();
        thread::spawn(move || {
            for stream in accept.incoming() {
                let Ok(stream) = stream else { break };
                if !shared.alive.load(Ordering::SeqCst) {
                    break;
                }
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = stream.try_clone() {
                    shared.conns.lock().unwrap().push(c);
                }
                let s = shared.clone();
                thread::spawn(move || serve(stream, s));
            }
        });
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn set_health(&self, ok: bool) {
        self.shared.health_ok.store(ok, Ordering::SeqCst);
    }

    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn health_probes(&self) -> usize {
        self.shared.health_probes.load(Ordering::SeqCst)
    }

    pub fn prompts(&self) -> Vec<String> {
        self.shared.prompts.lock().unwrap().clone()
    }

    /// Let one gated request answer.
    pub fn release(&self) {
        *self.shared.gate.0.lock().unwrap() += 1;
        self.shared.gate.1.notify_all();
    }

    /// Close the port (new connections refused) and reset every open
    /// connection.
    pub fn kill(&self) {
        self.shared.alive.store(false, Ordering::SeqCst);
        if let Some(l) = self.listener.lock().unwrap().take() {
            // Wake the accept loop: shutdown makes a blocked accept fail.
            // SAFETY: a live listening socket owned by `l`.
            unsafe {
                libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR);
            }
            drop(l);
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            reset(&c);
        }
    }

    /// Listen again on the same port.
    pub fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                // The old accept loop may still hold the port for a moment.
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        self.shared.alive.store(true, Ordering::SeqCst);
        self.listen(listener);
    }
}

/// Close with RST (SO_LINGER 0).
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live socket; `linger` outlives the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some((method, path, _headers, body)) = read_request(&mut reader) {
        if !shared.alive.load(Ordering::SeqCst) {
            reset(&writer);
            return;
        }
        if method == "GET" && path == "/health" {
            shared.health_probes.fetch_add(1, Ordering::SeqCst);
            let status = if shared.health_ok.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = writer.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            return;
        }
        shared.served.fetch_add(1, Ordering::SeqCst);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let prompt = v["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        shared.prompts.lock().unwrap().push(prompt);
        let stream = v["stream"].as_bool() == Some(true);
        let mode = Mode::from(shared.mode.load(Ordering::SeqCst));
        let ok = match mode {
            Mode::Answer => answer(&mut writer, &shared.name, stream),
            Mode::SlowFirst => {
                thread::sleep(Duration::from_millis(300));
                answer(&mut writer, &shared.name, stream)
            }
            Mode::Gated => {
                let (lock, cv) = &shared.gate;
                let mut n = lock.lock().unwrap();
                while *n == 0 {
                    n = cv.wait(n).unwrap();
                }
                *n -= 1;
                drop(n);
                answer(&mut writer, &shared.name, stream)
            }
            Mode::Status503 => status(&mut writer, 503, ""),
            Mode::Status500 => status(&mut writer, 500, ""),
            Mode::Status429 => status(&mut writer, 429, "retry-after: 30\r\n"),
            Mode::Reset => {
                reset(&writer);
                false
            }
            Mode::Hang => {
                let mut b = [0u8; 1];
                let _ = reader.read(&mut b);
                false
            }
            Mode::DieMidStream => {
                let _ = writer.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                let ev = event(&shared.name);
                let _ = writer.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
                reset(&writer);
                false
            }
        };
        if !ok {
            return;
        }
    }
}

fn event(name: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"from {name}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn answer(w: &mut TcpStream, name: &str, stream: bool) -> bool {
    if stream {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for ev in [event(name), "data: [DONE]\n\n".to_string()] {
            out.extend_from_slice(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        return w.write_all(&out).is_ok();
    }
    let body = format!(
        "{{\"id\":\"c\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"from {name}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}}}"
    );
    w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .is_ok()
}

fn status(w: &mut TcpStream, code: u16, extra: &str) -> bool {
    let body = format!(
        "{{\"error\":{{\"message\":\"replica says {code}\",\"type\":\"server_error\",\"code\":null}}}}"
    );
    w.write_all(
        format!(
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .is_ok()
}
