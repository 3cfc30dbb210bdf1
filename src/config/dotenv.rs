//! `.env` files: `KEY=VALUE` lines, read from the working directory before the
//! config so provider keys can live outside the shell (docs/configuration.md).
//!
//! Accepted syntax, one variable per line:
//!
//! ```text
//! # a comment            blank lines are skipped too
//! OPENAI_API_KEY=sk-...  unquoted: trimmed, ` #` starts a comment
//! export XAI_API_KEY=... an `export ` prefix is ignored
//! A="two words"          double quotes: \n \t \r \" \\ escapes, ` # …` after the quote ignored
//! B='literal $x \n'      single quotes: taken literally
//! ```
//!
//! Lines that do not fit (no `=`, a key that is not `[A-Za-z_][A-Za-z0-9_]*`,
//! an unterminated quote) are skipped. Variables already set in the
//! environment always win.

use std::collections::HashMap;
use std::path::Path;

/// Parses `.env` text into `(key, value)` pairs, in file order (a later line
/// for the same key wins when collected into a map).
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim_start_matches('\u{feff}').trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let mut chars = key.chars();
    let valid_key = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return None;
    }
    let value = value.trim_start();
    let value = if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        out
    } else if let Some(rest) = value.strip_prefix('\'') {
        let end = rest.find('\'')?;
        rest[..end].to_owned()
    } else {
        // An inline comment needs whitespace before `#`, so `a#b` stays a value.
        let end = value
            .char_indices()
            .find(|&(i, c)| c == '#' && value[..i].ends_with([' ', '\t']))
            .map_or(value.len(), |(i, _)| i);
        value[..end].trim_end().to_owned()
    };
    Some((key.to_owned(), value))
}

/// Reads `dir/.env` into a map (empty when the file is missing or unreadable).
pub(crate) fn read_dotenv(dir: &Path) -> HashMap<String, String> {
    match std::fs::read_to_string(dir.join(".env")) {
        Ok(text) => parse_dotenv(&text).into_iter().collect(),
        Err(_) => HashMap::new(),
    }
}

/// Loads `dir/.env` into the process environment, setting only variables
/// that are not already set.
///
/// Call it once at startup, **before any other thread is started**: the
/// process environment is not thread-safe to modify. [`super::load`] does
/// not need it (it overlays `.env` without touching the environment, so a
/// reload from a running router is safe); this is for whatever else reads
/// the environment, such as `RUST_LOG`.
pub fn load_dotenv(dir: &Path) {
    for (key, value) in read_dotenv(dir) {
        if std::env::var_os(&key).is_none() {
            // SAFETY: documented precondition — called during single-threaded
            // startup, so no other thread reads or writes the environment.
            unsafe { std::env::set_var(&key, &value) };
        }
    }
}
