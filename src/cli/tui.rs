//! `opensourcellmrouter tui [URL] [--model M]`: a terminal UI on a running
//! router, in three panes:
//!
//! - **Live feed** (top): requests in flight with their elapsed time, then
//!   completed ones, newest first; the title says whether the feed is
//!   connected.
//! - **Stats** (bottom left): requests, errors, tokens and mean TTFT by
//!   provider and by tag, counted from the `complete` events seen.
//! - **Chat** (bottom right): what you type goes to `{URL}/v1/chat/completions`
//!   through the router (streamed), so it shows up in the feed too.
//!
//! Threads: the main one owns the terminal, reads keys and draws; one
//! follows the feed ([`feed::follow`]); one per chat message streams the
//! reply. They talk to the main thread over a channel. [`App`] is the whole
//! state, changed only by [`App::feed`], [`App::key`] and [`App::chat`], and
//! drawn by [`draw`] — so both are tested without a terminal.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Stdout};
use std::process::ExitCode;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::{Frame, Terminal};
use serde_json::{Value, json};

use super::Options;
use super::feed::{self, FeedEvent, Target};
use super::watch;

/// Completed requests the feed pane keeps.
const MAX_DONE: usize = 1000;
/// How long the main loop waits for a key before redrawing (elapsed times move).
const FRAME: Duration = Duration::from_millis(100);
/// A chat reply that sends nothing for this long is given up on.
const CHAT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the other threads tell the main one.
#[derive(Debug)]
pub enum Msg {
    Feed(FeedEvent),
    /// The feed gave up (401, 404): the reason.
    FeedFailed(String),
    Chat(ChatMsg),
}

/// A chat reply, as it streams in.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMsg {
    Delta(String),
    Done,
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Feed,
    Chat,
}

/// The feed connection, as the title shows it.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    Connecting,
    Up,
    Down(String),
    Failed(String),
}

/// A request seen starting and not yet complete.
#[derive(Debug, Clone)]
struct InFlight {
    id: String,
    model: String,
    provider: Option<String>,
    tags: Vec<String>,
    attempt: u64,
    /// When the `start` event arrived here (elapsed time needs no clock agreement).
    seen: Instant,
}

/// A completed request's row.
#[derive(Debug, Clone)]
struct DoneRow {
    text: String,
    error: bool,
}

/// Running totals for one provider or tag.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    ttft_sum: f64,
    ttft_n: u64,
}

impl Agg {
    fn add(&mut self, v: &Value, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        self.tokens_in += v["input_tokens"].as_u64().unwrap_or(0);
        self.tokens_out += v["output_tokens"].as_u64().unwrap_or(0);
        if let Some(t) = v["ttft_ms"].as_f64() {
            self.ttft_sum += t;
            self.ttft_n += 1;
        }
    }

    pub fn mean_ttft_ms(&self) -> Option<f64> {
        (self.ttft_n > 0).then(|| self.ttft_sum / self.ttft_n as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
    Error,
}

/// What a key asks the main loop to do besides changing the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Quit,
    /// Send this conversation (OpenAI `messages`) to the router.
    Send(Vec<Value>),
}

/// The whole UI state.
pub struct App {
    url: String,
    model: String,
    link: Link,
    /// Oldest first.
    in_flight: Vec<InFlight>,
    /// Newest first.
    done: VecDeque<DoneRow>,
    pub by_provider: BTreeMap<String, Agg>,
    pub by_tag: BTreeMap<String, Agg>,
    chat: Vec<(Role, String)>,
    input: String,
    waiting: bool,
    pub focus: Focus,
    /// Feed rows scrolled past (0: the newest is at the top).
    scroll: usize,
}

impl App {
    pub fn new(url: &str, model: &str) -> App {
        App {
            url: url.to_string(),
            model: model.to_string(),
            link: Link::Connecting,
            in_flight: Vec::new(),
            done: VecDeque::new(),
            by_provider: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            chat: Vec::new(),
            input: String::new(),
            waiting: false,
            focus: Focus::Feed,
            scroll: 0,
        }
    }

    fn rows(&self) -> usize {
        self.in_flight.len() + self.done.len()
    }

    /// Apply what the feed thread reported.
    pub fn feed(&mut self, ev: FeedEvent, now: Instant) {
        let before = self.rows();
        match ev {
            FeedEvent::Up => self.link = Link::Up,
            FeedEvent::Down(reason) => {
                // Whatever was in flight will not complete on this connection.
                self.in_flight.clear();
                self.link = Link::Down(reason);
            }
            FeedEvent::Event(v) => self.event(&v, now),
            FeedEvent::Idle => {}
        }
        // Keep the rows the user scrolled to in view while new ones arrive.
        if self.scroll > 0 && self.rows() > before {
            self.scroll += self.rows() - before;
        }
        self.scroll = self.scroll.min(self.rows().saturating_sub(1));
    }

    /// The feed gave up.
    pub fn feed_failed(&mut self, reason: String) {
        self.link = Link::Failed(reason);
    }

    fn event(&mut self, v: &Value, now: Instant) {
        let id = v["id"].as_str().unwrap_or("?");
        let found = self.in_flight.iter().position(|r| r.id == id);
        match (v["type"].as_str(), found) {
            (Some("start"), None) => self.in_flight.push(InFlight {
                id: id.to_string(),
                model: v["model"].as_str().unwrap_or("?").to_string(),
                provider: None,
                tags: Vec::new(),
                attempt: 1,
                seen: now,
            }),
            (Some("classified"), Some(i)) => self.in_flight[i].tags = watch::strings(&v["tags"]),
            (Some("routed"), Some(i)) => {
                let r = &mut self.in_flight[i];
                r.provider = v["provider"].as_str().map(str::to_string);
                r.attempt = v["attempt"].as_u64().unwrap_or(1);
            }
            (Some("complete"), found) => {
                if let Some(i) = found {
                    self.in_flight.remove(i);
                }
                let error = watch::is_error(v);
                let provider = v["provider"].as_str().unwrap_or("(none)");
                self.by_provider
                    .entry(provider.to_string())
                    .or_default()
                    .add(v, error);
                let tags = watch::strings(&v["tags"]);
                if tags.is_empty() {
                    self.by_tag
                        .entry("(untagged)".to_string())
                        .or_default()
                        .add(v, error);
                }
                for t in tags {
                    self.by_tag.entry(t).or_default().add(v, error);
                }
                // Seconds are enough here: the pane is narrower than a log.
                let mut clock = watch::clock(v["ts_ms"].as_u64());
                clock.truncate(8);
                self.done.push_front(DoneRow {
                    text: watch::printable(&format!("{clock} {id} {}", watch::complete_summary(v))),
                    error,
                });
                self.done.truncate(MAX_DONE);
            }
            _ => {}
        }
    }

    /// Apply a piece of the chat reply.
    pub fn chat(&mut self, msg: ChatMsg) {
        match msg {
            ChatMsg::Delta(text) => match self.chat.last_mut() {
                Some((Role::Assistant, reply)) if self.waiting => reply.push_str(&text),
                _ => self.chat.push((Role::Assistant, text)),
            },
            ChatMsg::Done => self.waiting = false,
            ChatMsg::Failed(e) => {
                self.waiting = false;
                if matches!(self.chat.last(), Some((Role::Assistant, r)) if r.is_empty()) {
                    self.chat.pop();
                }
                self.chat.push((Role::Error, e));
            }
        }
    }

    /// Handle one key press.
    pub fn key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            return Some(Action::Quit);
        }
        match key.code {
            KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down => self.scroll = (self.scroll + 1).min(self.rows().saturating_sub(1)),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::PageDown => {
                self.scroll = (self.scroll + 10).min(self.rows().saturating_sub(1))
            }
            _ if self.focus == Focus::Chat => return self.chat_key(key.code, ctrl),
            KeyCode::Char('q') | KeyCode::Char('Q') => return Some(Action::Quit),
            KeyCode::Tab | KeyCode::Char('i') => self.focus = Focus::Chat,
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Char('j') => {
                self.scroll = (self.scroll + 1).min(self.rows().saturating_sub(1))
            }
            _ => {}
        }
        None
    }

    fn chat_key(&mut self, code: KeyCode, ctrl: bool) -> Option<Action> {
        match code {
            KeyCode::Esc | KeyCode::Tab => self.focus = Focus::Feed,
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Char('u') if ctrl => self.input.clear(),
            KeyCode::Char(c) if !ctrl => self.input.push(c),
            KeyCode::Enter => return self.send(),
            _ => {}
        }
        None
    }

    /// Enter in the chat: the conversation to send, unless a reply is
    /// still coming or there is nothing to send.
    fn send(&mut self) -> Option<Action> {
        let text = self.input.trim().to_string();
        if text.is_empty() || self.waiting {
            return None;
        }
        self.input.clear();
        self.chat.push((Role::User, text));
        let messages = self
            .chat
            .iter()
            .filter_map(|(role, content)| match role {
                Role::User => Some(json!({"role": "user", "content": content})),
                Role::Assistant if !content.is_empty() => {
                    Some(json!({"role": "assistant", "content": content}))
                }
                _ => None,
            })
            .collect();
        self.chat.push((Role::Assistant, String::new()));
        self.waiting = true;
        Some(Action::Send(messages))
    }
}

// ---------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------

const FEED_TITLE: &str = "Live feed";
const STATS_TITLE: &str = "Stats";
const CHAT_TITLE: &str = "Chat";

/// Draw the three panes and the key line.
pub fn draw(f: &mut Frame, app: &App, now: Instant) {
    let [top, bottom, keys] = Layout::vertical([
        Constraint::Percentage(55),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    draw_feed(f, app, top, now);
    draw_stats(f, app, left);
    draw_chat(f, app, right);
    let help = match app.focus {
        Focus::Feed => " q quit · Tab/i chat · ↑/↓ scroll the feed",
        Focus::Chat => " typing: Enter send · Esc back to the feed · ↑/↓ scroll the feed",
    };
    f.render_widget(
        Paragraph::new(help).style(Style::default().fg(Color::DarkGray)),
        keys,
    );
}

fn draw_feed(f: &mut Frame, app: &App, area: Rect, now: Instant) {
    let (status, style) = match &app.link {
        Link::Connecting => (
            "connecting…".to_string(),
            Style::default().fg(Color::Yellow),
        ),
        Link::Up => (
            format!("connected · {} in flight", app.in_flight.len()),
            Style::default().fg(Color::Green),
        ),
        Link::Down(reason) => (
            format!(
                "disconnected: {} — reconnecting…",
                watch::one_line(reason, 80)
            ),
            Style::default().fg(Color::Red),
        ),
        Link::Failed(reason) => (
            format!("error: {}", watch::one_line(reason, 160)),
            Style::default().fg(Color::Red),
        ),
    };
    let title = Line::from(vec![
        Span::styled(
            format!(" {FEED_TITLE} "),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw("— "),
        Span::styled(status, style),
        Span::raw(format!(" — {} ", watch::printable(&app.url))),
    ]);
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let in_flight = app.in_flight.iter().rev().map(|r| {
        let elapsed = watch::millis(now.saturating_duration_since(r.seen).as_secs_f64() * 1000.0);
        let mut text = format!(
            "{elapsed:>8} {} {} → {}  tags=[{}]",
            r.id,
            r.model,
            r.provider.as_deref().unwrap_or("…"),
            r.tags.join(",")
        );
        if r.attempt > 1 {
            text.push_str(&format!(" attempt={}", r.attempt));
        }
        text.push_str(" in flight…");
        Line::styled(watch::printable(&text), Style::default().fg(Color::Yellow))
    });
    let done = app.done.iter().map(|r| {
        let style = if r.error {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        Line::styled(r.text.clone(), style)
    });
    let lines: Vec<Line> = in_flight
        .chain(done)
        .skip(app.scroll)
        .take(usize::from(inner.height))
        .collect();
    let lines = if lines.is_empty() && app.rows() == 0 {
        vec![Line::styled(
            "no requests yet",
            Style::default().fg(Color::DarkGray),
        )]
    } else {
        lines
    };
    f.render_widget(block, area);
    f.render_widget(Paragraph::new(lines), inner);
}

fn stats_rows(title: &str, table: &BTreeMap<String, Agg>) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(
        format!(
            "{:<14}{:>5}{:>5}{:>8}{:>8}{:>8}",
            title, "reqs", "errs", "tok in", "tok out", "ttft"
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    for (name, a) in table {
        let ttft = a
            .mean_ttft_ms()
            .map(watch::millis)
            .unwrap_or_else(|| "-".into());
        let style = if a.errors > 0 {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        lines.push(Line::styled(
            format!(
                "{:<14}{:>5}{:>5}{:>8}{:>8}{:>8}",
                watch::one_line(name, 13),
                a.requests,
                a.errors,
                a.tokens_in,
                a.tokens_out,
                ttft
            ),
            style,
        ));
    }
    lines
}

fn draw_stats(f: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title(Span::styled(
        format!(" {STATS_TITLE} "),
        Style::default().add_modifier(Modifier::BOLD),
    ));
    let mut lines = stats_rows("provider", &app.by_provider);
    lines.push(Line::raw(""));
    lines.extend(stats_rows("tag", &app.by_tag));
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// Split `text` into rows of at most `width` characters, at spaces when it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for para in text.split('\n') {
        let mut row = String::new();
        let mut len = 0;
        for word in para.split(' ') {
            let wlen = word.chars().count();
            if len > 0 && len + 1 + wlen > width {
                rows.push(std::mem::take(&mut row));
                len = 0;
            }
            if len > 0 {
                row.push(' ');
                len += 1;
            }
            for c in word.chars() {
                if len == width {
                    rows.push(std::mem::take(&mut row));
                    len = 0;
                }
                row.push(c);
                len += 1;
            }
        }
        rows.push(row);
    }
    rows
}

fn draw_chat(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Focus::Chat;
    let hint = if focused {
        "typing"
    } else {
        "Tab or i to type"
    };
    let border = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    };
    let block = Block::bordered()
        .border_style(border)
        .title(Line::from(vec![
            Span::styled(
                format!(" {CHAT_TITLE} "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "— model {} — {hint} ",
                watch::printable(&app.model)
            )),
        ]));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let [history, input] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
    let width = usize::from(history.width);
    let mut lines: Vec<Line> = Vec::new();
    for (role, text) in &app.chat {
        let (who, style) = match role {
            Role::User => ("you", Style::default().fg(Color::Cyan)),
            Role::Assistant => (app.model.as_str(), Style::default()),
            Role::Error => ("error", Style::default().fg(Color::Red)),
        };
        let shown = if text.is_empty() && *role == Role::Assistant {
            "…"
        } else {
            text.as_str()
        };
        for row in wrap(&format!("{who}: {shown}"), width) {
            lines.push(Line::styled(watch::printable(&row), style));
        }
    }
    // The newest rows, bottom-aligned like a terminal.
    let skip = lines.len().saturating_sub(usize::from(history.height));
    let lines: Vec<Line> = lines.into_iter().skip(skip).collect();
    f.render_widget(Paragraph::new(lines), history);
    // The input line shows its end when it is longer than the pane.
    let room = usize::from(input.width).saturating_sub(3);
    let chars = app.input.chars().count();
    let shown: String = app.input.chars().skip(chars.saturating_sub(room)).collect();
    let prompt = if app.waiting { "… " } else { "> " };
    f.render_widget(
        Paragraph::new(format!("{prompt}{shown}")).style(if focused {
            Style::default()
        } else {
            Style::default().fg(Color::DarkGray)
        }),
        input,
    );
    if focused {
        let x = input.x + 2 + shown.chars().count() as u16;
        f.set_cursor_position((x.min(input.right().saturating_sub(1)), input.y));
    }
}

// ---------------------------------------------------------------------------
// The chat request
// ---------------------------------------------------------------------------

/// Send `messages` to `{URL}/v1/chat/completions` (streamed) and report the
/// reply's text as it arrives.
fn chat_request(target: &Target, model: &str, messages: Vec<Value>, tx: &Sender<Msg>) {
    let send = |m: ChatMsg| tx.send(Msg::Chat(m)).is_ok();
    let body = json!({"model": model, "messages": messages, "stream": true}).to_string();
    let len = body.len().to_string();
    let head = target.request_head(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
            ("Content-Length", &len),
            ("Connection", "close"),
        ],
    );
    let mut resp = match feed::send(target, &head, body.as_bytes(), CHAT_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            send(ChatMsg::Failed(format!("{}: {e}", target.display())));
            return;
        }
    };
    if resp.status != 200 {
        let body = resp.body.read_all().unwrap_or_default();
        let hint = if resp.status == 401 {
            format!(" (set {})", feed::API_KEY_ENV)
        } else {
            String::new()
        };
        send(ChatMsg::Failed(format!(
            "{}: {}{hint}",
            resp.status,
            feed::error_message(&body)
        )));
        return;
    }
    if !resp.content_type.starts_with("text/event-stream") {
        // A plain JSON reply (a provider that does not stream).
        let body = resp.body.read_all().unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match v["choices"][0]["message"]["content"].as_str() {
            Some(text) => {
                send(ChatMsg::Delta(text.to_string()));
                send(ChatMsg::Done);
            }
            None => {
                send(ChatMsg::Failed(feed::error_message(&body)));
            }
        }
        return;
    }
    loop {
        match resp.body.next_event() {
            Ok(Some(data)) if data.trim() == "[DONE]" => break,
            Ok(Some(data)) => {
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if v.get("error").is_some_and(|e| !e.is_null()) {
                    send(ChatMsg::Failed(feed::error_message(data.as_bytes())));
                    return;
                }
                if let Some(text) = v["choices"][0]["delta"]["content"].as_str()
                    && !text.is_empty()
                    && !send(ChatMsg::Delta(text.to_string()))
                {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                send(ChatMsg::Failed(format!("reply cut: {e}")));
                return;
            }
        }
    }
    send(ChatMsg::Done);
}

// ---------------------------------------------------------------------------
// The terminal
// ---------------------------------------------------------------------------

/// Set by SIGINT/SIGTERM/SIGHUP, and by a panic on any thread: the main
/// loop leaves, restoring the terminal.
static STOP: AtomicBool = AtomicBool::new(false);
static PANICKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Leave raw mode and the alternate screen, show the cursor. Safe to call twice.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen; restored on drop, and
/// by a panic hook on a panic anywhere.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICKED.store(true, Ordering::SeqCst);
                STOP.store(true, Ordering::SeqCst);
                restore_terminal();
                previous(info);
            }));
        });
        crossterm::terminal::enable_raw_mode()?;
        let entered = execute!(io::stdout(), EnterAlternateScreen)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        restore_terminal();
    }
}

/// Whether the terminal on stdin has hung up (its window or tmux is gone).
fn terminal_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Ends the process when the main loop cannot: crossterm's event reader
/// spins forever on a terminal that hung up (a read of 0 bytes is retried),
/// so a closed terminal window would leave a process burning a core. Also
/// a backstop for a stop request the main loop does not act on in time.
fn watchdog() {
    let mut stop_seen: Option<Instant> = None;
    loop {
        std::thread::sleep(FRAME);
        if terminal_gone() {
            // Nothing to restore: the terminal is gone.
            std::process::exit(0);
        }
        if STOP.load(Ordering::SeqCst) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                restore_terminal();
                std::process::exit(1);
            }
        }
    }
}

/// Run the UI until `q`, Ctrl-C, or a signal.
pub fn run(opts: &Options) -> ExitCode {
    let target = match Target::from_env(&opts.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: isatty on constant descriptors.
    let terminal = unsafe { libc::isatty(libc::STDIN_FILENO) + libc::isatty(libc::STDOUT_FILENO) };
    if terminal != 2 {
        eprintln!("error: `tui` needs a terminal (stdin and stdout); for piped output use `watch`");
        return ExitCode::from(2);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let (tx, rx) = channel::<Msg>();
    let feed_tx = tx.clone();
    let feed_target = target.clone();
    let spawned = std::thread::Builder::new()
        .name("feed".into())
        .spawn(move || {
            let result = feed::follow(&feed_target, |ev| {
                if ev == FeedEvent::Idle || feed_tx.send(Msg::Feed(ev)).is_ok() {
                    std::ops::ControlFlow::Continue(())
                } else {
                    std::ops::ControlFlow::Break(())
                }
            });
            if let Err(e) = result {
                let _ = feed_tx.send(Msg::FeedFailed(e.to_string()));
            }
        });
    if let Err(e) = spawned {
        eprintln!("error: cannot start the feed thread: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(watchdog)
    {
        eprintln!("error: cannot start a thread: {e}");
        return ExitCode::FAILURE;
    }
    let mut screen = match Screen::enter() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot set up the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut app = App::new(&target.display(), &opts.model);
    let result = event_loop(&mut screen.terminal, &mut app, &rx, &tx, &target);
    drop(screen);
    match result {
        Ok(()) if panicked() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a thread panicked (the hook ran).
fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    rx: &Receiver<Msg>,
    tx: &Sender<Msg>,
    target: &Target,
) -> io::Result<()> {
    loop {
        let now = Instant::now();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Feed(ev) => app.feed(ev, now),
                Msg::FeedFailed(reason) => app.feed_failed(reason),
                Msg::Chat(m) => app.chat(m),
            }
        }
        terminal.draw(|f| draw(f, app, now))?;
        if STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !event::poll(FRAME)? {
            continue;
        }
        // Take every key already typed before drawing again.
        loop {
            if let Event::Key(key) = event::read()? {
                match app.key(key) {
                    Some(Action::Quit) => return Ok(()),
                    Some(Action::Send(messages)) => {
                        let (t, m, tx) = (target.clone(), app.model.clone(), tx.clone());
                        let spawned = std::thread::Builder::new()
                            .name("chat".into())
                            .spawn(move || chat_request(&t, &m, messages, &tx));
                        if let Err(e) = spawned {
                            app.chat(ChatMsg::Failed(format!("cannot start a thread: {e}")));
                        }
                    }
                    None => {}
                }
            }
            if !event::poll(Duration::ZERO)? {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn screen(app: &App, w: u16, h: u16, now: Instant) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app, now)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn request(app: &mut App, id: &str, provider: &str, status: u64, now: Instant) {
        for v in [
            json!({"type":"start","id":id,"ts_ms":1,"model":"mock-fast","in_flight":1}),
            json!({"type":"classified","id":id,"ts_ms":1,"tags":["code"]}),
            json!({"type":"routed","id":id,"ts_ms":1,"provider":provider,"model":"mock-fast","attempt":1}),
        ] {
            app.feed(FeedEvent::Event(v), now);
        }
        app.feed(
            FeedEvent::Event(
                json!({"type":"complete","id":id,"ts_ms":1,"provider":provider,
                "requested_model":"mock-fast","sent_model":"mock-fast","duration_ms":12,
                "tags":["code"],"status":status,"ttft_ms":4.0,"input_tokens":3,"output_tokens":5}),
            ),
            now,
        );
    }

    #[test]
    fn feed_and_stats() {
        let t0 = Instant::now();
        let mut app = App::new("http://h:1", "mock");
        app.feed(FeedEvent::Up, t0);
        app.feed(
            FeedEvent::Event(json!({"type":"start","id":"r-live","model":"mock-slow"})),
            t0,
        );
        request(&mut app, "r-1", "mock", 200, t0);
        request(&mut app, "r-2", "up", 502, t0);
        let s = screen(&app, 120, 40, t0 + Duration::from_millis(1500));
        assert!(s.contains("Live feed"), "{s}");
        assert!(s.contains("Stats") && s.contains("Chat"), "{s}");
        assert!(s.contains("connected · 1 in flight"), "{s}");
        assert!(s.contains("1.5s r-live mock-slow → …"), "{s}");
        let live = s.find("r-live").unwrap();
        let (r1, r2) = (s.find("r-1 ").unwrap(), s.find("r-2 ").unwrap());
        assert!(live < r2 && r2 < r1, "in flight, then newest first:\n{s}");
        assert_eq!(app.by_provider["mock"].requests, 1);
        assert_eq!(app.by_provider["up"].errors, 1);
        assert_eq!(app.by_tag["code"].requests, 2);
        assert_eq!(app.by_tag["code"].tokens_out, 10);
        assert_eq!(app.by_tag["code"].mean_ttft_ms(), Some(4.0));
        // Scrolling skips rows; the feed going down forgets what was in flight.
        app.key(key(KeyCode::Down));
        assert!(!screen(&app, 120, 40, t0).contains("r-live"));
        app.feed(FeedEvent::Down("connection refused".into()), t0);
        let s = screen(&app, 80, 24, t0);
        assert!(s.contains("disconnected"), "{s}");
        assert!(app.in_flight.is_empty());
        // Small terminals still draw.
        screen(&app, 20, 5, t0);
        screen(&app, 1, 1, t0);
    }

    #[test]
    fn chat_keys() {
        let t0 = Instant::now();
        let mut app = App::new("http://h:1", "mock");
        assert_eq!(app.key(key(KeyCode::Char('h'))), None);
        assert!(app.input.is_empty(), "not typing yet");
        app.key(key(KeyCode::Tab));
        assert_eq!(app.focus, Focus::Chat);
        for c in "hi q".chars() {
            assert_eq!(app.key(key(KeyCode::Char(c))), None, "q types while typing");
        }
        let Some(Action::Send(m)) = app.key(key(KeyCode::Enter)) else {
            panic!("Enter sends")
        };
        assert_eq!(m, vec![json!({"role":"user","content":"hi q"})]);
        assert_eq!(app.key(key(KeyCode::Enter)), None, "nothing to send");
        app.chat(ChatMsg::Delta("Hel".into()));
        app.chat(ChatMsg::Delta("lo there".into()));
        app.chat(ChatMsg::Done);
        let s = screen(&app, 120, 40, t0);
        assert!(
            s.contains("you: hi q") && s.contains("mock: Hello there"),
            "{s}"
        );
        for c in "again".chars() {
            app.key(key(KeyCode::Char(c)));
        }
        let Some(Action::Send(m)) = app.key(key(KeyCode::Enter)) else {
            panic!("Enter sends")
        };
        assert_eq!(m.len(), 3, "the conversation so far: {m:?}");
        app.chat(ChatMsg::Failed("502: upstream down".into()));
        assert!(screen(&app, 120, 40, t0).contains("error: 502: upstream down"));
        app.key(key(KeyCode::Esc));
        assert_eq!(app.key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(
            App::new("u", "m").key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("ab cd ef", 5), ["ab cd", "ef"]);
        assert_eq!(wrap("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(wrap("a\nb", 10), ["a", "b"]);
    }
}
