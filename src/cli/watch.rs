//! `opensourcellmrouter watch [URL]`: one line per request, as the feed
//! delivers it — a short one when the request is routed (ending with `…`),
//! a full one when it completes:
//!
//! ```text
//! 12:03:04.512 req_… mock-fast → mock  tags=[code] 200 in=12 out=34 ttft=210ms overhead=45µs 1.2s
//! ```
//!
//! Each line is flushed (it works piped). Connection news goes to stderr.
//! Ctrl-C (SIGINT), SIGTERM or SIGHUP exit 0, and so does a closed stdout.
//!
//! The line formatting here is shared with the `tui` feed pane.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use serde_json::Value;

use super::Options;
use super::feed::{self, FeedEvent, Target};

/// Requests seen starting but not yet complete, kept for their routed line.
/// Past this many (completes lost), the table starts over.
const MAX_PENDING: usize = 10_000;

/// What `start` and `classified` said about a request, for its routed line.
#[derive(Debug, Default, Clone)]
struct Pending {
    model: Option<String>,
    tags: Vec<String>,
}

/// The per-request state between a request's events.
#[derive(Debug, Default)]
pub struct Watch {
    pending: HashMap<String, Pending>,
}

impl Watch {
    /// The line to print for one feed event, if any (printable: no control
    /// characters).
    pub fn line(&mut self, v: &Value) -> Option<String> {
        self.line_raw(v).map(|l| printable(&l))
    }

    fn line_raw(&mut self, v: &Value) -> Option<String> {
        let id = v["id"].as_str().unwrap_or("?");
        match v["type"].as_str()? {
            "start" => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.clear();
                }
                let entry = self.pending.entry(id.to_string()).or_default();
                entry.model = v["model"].as_str().map(str::to_string);
                None
            }
            "classified" => {
                if let Some(p) = self.pending.get_mut(id) {
                    p.tags = strings(&v["tags"]);
                }
                None
            }
            "routed" => {
                let p = self.pending.get(id).cloned().unwrap_or_default();
                Some(format!(
                    "{} {id} {}",
                    clock(v["ts_ms"].as_u64()),
                    routed_summary(v, p.model.as_deref(), &p.tags)
                ))
            }
            "complete" => {
                self.pending.remove(id);
                Some(format!(
                    "{} {id} {}",
                    clock(v["ts_ms"].as_u64()),
                    complete_summary(v)
                ))
            }
            _ => None,
        }
    }

    /// The feed was lost: the requests it had started will never complete here.
    pub fn forget(&mut self) {
        self.pending.clear();
    }
}

/// `mock-fast → mock  tags=[code] …` for a `routed` event (`model`, `tags`:
/// from the request's `start` and `classified` events, if seen).
pub fn routed_summary(v: &Value, model: Option<&str>, tags: &[String]) -> String {
    let sent = v["model"].as_str().unwrap_or("?");
    let requested = model.unwrap_or(sent);
    let provider = v["provider"].as_str().unwrap_or("?");
    let mut s = format!("{requested} → {provider}");
    if sent != requested {
        s.push_str(&format!(" ({sent})"));
    }
    s.push_str(&format!("  tags=[{}]", tags.join(",")));
    if let Some(n) = v["attempt"].as_u64().filter(|&n| n > 1) {
        s.push_str(&format!(" attempt={n}"));
    }
    if let Some(ep) = v["endpoint"].as_str() {
        s.push_str(&format!(" endpoint={ep}"));
    }
    s.push_str(" …");
    s
}

/// `mock-fast → mock  tags=[code] 200 in=12 out=34 ttft=210ms overhead=45µs 1.2s`
/// for a `complete` event (a log entry); errors read `502 error: …`.
pub fn complete_summary(v: &Value) -> String {
    let requested = v["requested_model"].as_str().unwrap_or("?");
    let provider = v["provider"].as_str().unwrap_or("-");
    let mut s = format!("{requested} → {provider}");
    if let Some(sent) = v["sent_model"].as_str()
        && sent != requested
    {
        s.push_str(&format!(" ({sent})"));
    }
    s.push_str(&format!("  tags=[{}]", strings(&v["tags"]).join(",")));
    match v["status"].as_u64() {
        Some(status) => s.push_str(&format!(" {status}")),
        None => s.push_str(" ---"),
    }
    if let Some(err) = error_text(v) {
        s.push_str(&format!(" error: {}", one_line(&err, 160)));
    }
    if let Some(n) = v["input_tokens"].as_u64() {
        s.push_str(&format!(" in={n}"));
    }
    if let Some(n) = v["output_tokens"].as_u64() {
        s.push_str(&format!(" out={n}"));
    }
    if let Some(t) = v["ttft_ms"].as_f64() {
        s.push_str(&format!(" ttft={}", millis(t)));
    }
    if let Some(us) = v["overhead_us"].as_u64() {
        s.push_str(&format!(" overhead={us}µs"));
    }
    if v["stream"].as_bool() == Some(true) {
        s.push_str(" stream");
    }
    let attempts = strings(&v["attempts"]);
    if attempts.len() > 1 {
        s.push_str(&format!(" attempts={}", attempts.join(",")));
    }
    if let Some(ms) = v["duration_ms"].as_f64() {
        s.push_str(&format!(" {}", millis(ms)));
    }
    s
}

/// Whether a `complete` event is an error: a status of 400 or more (or
/// none), or an `error` text.
pub fn is_error(v: &Value) -> bool {
    v["status"].as_u64().is_none_or(|s| s >= 400) || error_text(v).is_some()
}

fn error_text(v: &Value) -> Option<String> {
    match &v["error"] {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The strings of a JSON array (objects give their `provider` or `name`).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(_) => x["provider"]
                        .as_str()
                        .or(x["name"].as_str())
                        .map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `s` with control characters (newlines, ESC…) turned into spaces: model
/// names and error texts come from clients and upstreams, and must never
/// reach the terminal as escape sequences.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Text on one line, cut to `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat = printable(s);
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `850ms`, `3ms`, `3.5ms`, `1.2s`, `2m03s`.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 && ms.fract() != 0.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{}ms", ms.round())
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        let s = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Local wall-clock time `HH:MM:SS.mmm` of a Unix time in ms (now if none).
pub fn clock(ts_ms: Option<u64>) -> String {
    let ts_ms = ts_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    let secs = (ts_ms / 1000) as libc::time_t;
    // SAFETY: tm is plain data, filled in by localtime_r from a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return format!("{ts_ms}");
        }
        tm
    };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ts_ms % 1000
    )
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe; every line was flushed when written.
    unsafe { libc::_exit(0) }
}

/// SIGINT, SIGTERM, SIGHUP: exit 0 at once (nothing is left unflushed).
fn exit_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe {
            libc::signal(sig, exit_now as *const () as libc::sighandler_t);
        }
    }
}

/// Whether stdout is a pipe or socket whose reader has gone.
fn stdout_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Run `watch` until a signal, a closed stdout, or a fatal answer.
pub fn run(opts: &Options) -> ExitCode {
    let target = match Target::from_env(&opts.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    exit_on_signals();
    let url = format!("{}{}", target.display(), feed::FEED_PATH);
    let mut watch = Watch::default();
    let mut out = std::io::stdout();
    let mut was_up = false;
    let result = feed::follow(&target, |ev| {
        match ev {
            FeedEvent::Up if was_up => eprintln!("reconnected to {url}"),
            FeedEvent::Up => {
                was_up = true;
                eprintln!("connected to {url}");
            }
            FeedEvent::Down(reason) => {
                watch.forget();
                eprintln!("{reason}; reconnecting…");
            }
            FeedEvent::Event(v) => {
                if let Some(line) = watch.line(&v)
                    && writeln!(out, "{line}").and_then(|()| out.flush()).is_err()
                {
                    return ControlFlow::Break(());
                }
            }
            FeedEvent::Idle if stdout_closed() => return ControlFlow::Break(()),
            FeedEvent::Idle => {}
        }
        ControlFlow::Continue(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_for_a_request() {
        let mut w = Watch::default();
        let start = json!({"type":"start","id":"r-1","ts_ms":0,"model":"mock-fast","in_flight":1});
        assert_eq!(w.line(&start), None);
        assert_eq!(
            w.line(&json!({"type":"classified","id":"r-1","ts_ms":0,"tags":["code"]})),
            None
        );
        let routed = w
            .line(&json!({"type":"routed","id":"r-1","ts_ms":0,"provider":"mock","model":"mock-fast","attempt":1,"endpoint":null}))
            .unwrap();
        assert!(
            routed.ends_with(" r-1 mock-fast → mock  tags=[code] …"),
            "{routed}"
        );
        let done = w
            .line(
                &json!({"type":"complete","id":"r-1","ts_ms":0,"provider":"mock",
                "requested_model":"mock-fast","sent_model":"mock-fast","duration_ms":1234,
                "tags":["code"],"status":200,"stream":false,"ttft_ms":210.4,"overhead_us":45,
                "input_tokens":12,"output_tokens":34,"attempts":["mock"],"error":null,"extra":1}),
            )
            .unwrap();
        assert!(
            done.ends_with(
                " r-1 mock-fast → mock  tags=[code] 200 in=12 out=34 ttft=210ms overhead=45µs 1.2s"
            ),
            "{done}"
        );
        assert!(w.pending.is_empty());
        assert_eq!(w.line(&json!({"type":"new-kind","id":"x"})), None);
        let hostile = w
            .line(
                &json!({"type":"complete","id":"r\u{1b}[2J","requested_model":"m\u{1b}]0;x\u{7}\n",
                "status":200}),
            )
            .unwrap();
        assert!(!hostile.chars().any(char::is_control), "{hostile:?}");
    }

    #[test]
    fn errors_and_failover() {
        let v = json!({"type":"complete","id":"r-2","provider":"b","requested_model":"m",
            "sent_model":"m-real","tags":[],"status":502,"error":"upstream a: connection refused\nat x",
            "attempts":["a","b"],"duration_ms":3,"overhead_us":7});
        let s = complete_summary(&v);
        assert_eq!(
            s,
            "m → b (m-real)  tags=[] 502 error: upstream a: connection refused at x overhead=7µs attempts=a,b 3ms"
        );
        assert!(is_error(&v));
        assert!(!is_error(&json!({"status":200,"error":null})));
    }

    #[test]
    fn durations() {
        assert_eq!(millis(3.25), "3.2ms");
        assert_eq!(millis(850.0), "850ms");
        assert_eq!(millis(1250.0), "1.2s");
        assert_eq!(millis(123_000.0), "2m03s");
        assert_eq!(clock(Some(1_000_512)).len(), "00:16:40.512".len());
        assert!(clock(Some(1_000_512)).ends_with(".512"));
    }
}
