//! The router's own diagnostics on stderr, filtered by `RUST_LOG`
//! (`error`, `warn`, `info` — the default — or `debug`).

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

fn max_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let v = std::env::var("RUST_LOG")
            .unwrap_or_default()
            .to_ascii_lowercase();
        // Accept `opensourcellmrouter=debug` style filters too: take the last level named.
        let word = v.rsplit(['=', ',']).next().unwrap_or("");
        match word {
            "error" | "off" => Level::Error,
            "warn" => Level::Warn,
            "debug" | "trace" => Level::Debug,
            _ => Level::Info,
        }
    })
}

fn emit(level: Level, label: &str, msg: &str) {
    if level <= max_level() {
        eprintln!("{label}: {msg}");
    }
}

pub fn error(msg: &str) {
    emit(Level::Error, "error", msg);
}

pub fn warn(msg: &str) {
    emit(Level::Warn, "warning", msg);
}

pub fn info(msg: &str) {
    emit(Level::Info, "info", msg);
}

pub fn debug(msg: &str) {
    emit(Level::Debug, "debug", msg);
}

/// Printed whatever `RUST_LOG` says (the listening address: tests and scripts wait for it).
pub fn always(msg: &str) {
    eprintln!("{msg}");
}
