//! The client subcommands, which read a running router's live feed
//! (`GET /dashboard/events`, docs/watch-tui.md):
//!
//! - [`watch`]: `opensourcellmrouter watch [URL]`, one line per request.
//! - [`tui`]: `opensourcellmrouter tui [URL] [--model M]`, a three-pane
//!   terminal UI (feed, stats, chat).
//! - [`feed`]: the small blocking HTTP/1.1 client both use, and the
//!   reconnecting feed follower.
//!
//! None of this runs inside the router: plain threads and blocking sockets,
//! no async runtime.

pub mod feed;
pub mod tui;
pub mod watch;

use std::process::ExitCode;

/// What `watch` and `tui` accept on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The router's base URL.
    pub url: String,
    /// The chat pane's model (`tui` only).
    pub model: String,
}

/// The chat pane's model when `--model` is not given.
pub const DEFAULT_MODEL: &str = "mock";

const WATCH_HELP: &str = "\
USAGE:
    opensourcellmrouter watch [URL]

Print one line per request as the router's live feed delivers it: when it
is routed (ends with …), and when it completes (status, tokens, TTFT,
overhead, duration). URL defaults to http://localhost:8090. Reconnects when
the router restarts. Ctrl-C stops.

ENVIRONMENT:
    OPENSOURCELLMROUTER_API_KEY   the key, when the router has [server] api_key_env
";

const TUI_HELP: &str = "\
USAGE:
    opensourcellmrouter tui [URL] [--model M]

A terminal UI on a running router: live feed (top), stats by provider and
tag (bottom left), a chat client (bottom right) that sends to URL's
/v1/chat/completions with model M (default: mock). URL defaults to
http://localhost:8090.

KEYS:
    Tab, i     type in the chat      Esc      back to the feed
    Enter      send                  Up/Down  scroll the feed
    q          quit (Ctrl-C always quits)

ENVIRONMENT:
    OPENSOURCELLMROUTER_API_KEY   the key, when the router has [server] api_key_env
";

/// Parse the arguments after the subcommand: `[URL]`, and `--model M` when
/// `with_model`. `Ok(None)`: `--help` was asked for.
pub fn parse_args(args: &[String], with_model: bool) -> Result<Option<Options>, String> {
    let mut url = None;
    let mut model = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--model" | "-m" if with_model => {
                model = Some(it.next().ok_or("`--model` needs a value")?.clone());
            }
            a if with_model && a.starts_with("--model=") => {
                model = Some(a["--model=".len()..].to_string());
            }
            a if a.starts_with('-') => return Err(format!("unknown option `{a}`")),
            a if url.is_none() => url = Some(a.to_string()),
            a => return Err(format!("unexpected argument `{a}`")),
        }
    }
    Ok(Some(Options {
        url: url.unwrap_or_else(|| feed::DEFAULT_URL.to_string()),
        model: model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
    }))
}

/// `opensourcellmrouter watch …` (arguments after `watch`).
pub fn watch_main(args: &[String]) -> ExitCode {
    match parse_args(args, false) {
        Ok(Some(opts)) => watch::run(&opts),
        Ok(None) => {
            print!("{WATCH_HELP}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{WATCH_HELP}");
            ExitCode::from(2)
        }
    }
}

/// `opensourcellmrouter tui …` (arguments after `tui`).
pub fn tui_main(args: &[String]) -> ExitCode {
    match parse_args(args, true) {
        Ok(Some(opts)) => tui::run(&opts),
        Ok(None) => {
            print!("{TUI_HELP}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{TUI_HELP}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let o = parse_args(&args(&[]), true).unwrap().unwrap();
        assert_eq!(
            (o.url.as_str(), o.model.as_str()),
            (feed::DEFAULT_URL, "mock")
        );
        let o = parse_args(&args(&["http://h:1", "--model", "m2"]), true)
            .unwrap()
            .unwrap();
        assert_eq!((o.url.as_str(), o.model.as_str()), ("http://h:1", "m2"));
        let o = parse_args(&args(&["--model=m3"]), true).unwrap().unwrap();
        assert_eq!(o.model, "m3");
        assert_eq!(parse_args(&args(&["--help"]), false).unwrap(), None);
        assert!(parse_args(&args(&["--model", "m"]), false).is_err());
        assert!(parse_args(&args(&["a", "b"]), false).is_err());
        assert!(parse_args(&args(&["--model"]), true).is_err());
    }
}
