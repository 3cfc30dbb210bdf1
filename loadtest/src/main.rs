//! `loadtest`: the load-test harness of opensourcellmrouter.
//!
//! - `mock` ([`mock`]): a fast upstream speaking the four wire formats;
//! - `load` ([`load`]): an open- or closed-loop load generator;
//! - `compare` ([`compare`]): direct-to-mock against each proxy, side by side;
//! - `streams` ([`streams`]): thousands of slow concurrent streams held open.
//!
//! [`http`] holds the byte-level HTTP pieces both sides share, [`rt`] the
//! runtime, pinning and the precise ticker, [`procfs`] CPU and memory readings.

mod args;
mod compare;
mod fleet;
mod http;
mod load;
mod mock;
mod perf;
mod procfs;
mod rt;
mod streams;

use std::process::ExitCode;

const HELP: &str = "\
loadtest — load-test harness for opensourcellmrouter

USAGE:
    loadtest mock [OPTIONS]       a fast upstream (OpenAI, Responses, Anthropic, Ollama)
    loadtest load --url URL ...   open- or closed-loop load, hdrhistogram latencies
    loadtest compare ...          direct-to-mock vs each target, side by side
    loadtest streams ...          10,000 slow concurrent streams: memory per stream, event gaps
    loadtest help SUBCOMMAND
";

fn usage(cmd: &str) -> Option<&'static str> {
    match cmd {
        "mock" => Some(mock::USAGE),
        "load" => Some(load::USAGE),
        "compare" => Some(compare::USAGE),
        "fleet" => Some(fleet::USAGE),
        "streams" => Some(streams::USAGE),
        _ => None,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().map(String::as_str) else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    let rest = &argv[1..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage(cmd).unwrap_or(HELP));
        return ExitCode::SUCCESS;
    }
    let result = match cmd {
        "mock" => mock::main(rest).map(|()| true),
        "load" => load::main(rest),
        "compare" => compare::main(rest),
        "streams" => streams::main(rest),
        "help" | "--help" | "-h" => {
            print!("{}", rest.first().and_then(|c| usage(c)).unwrap_or(HELP));
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown subcommand `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest {cmd}: error: {e}");
            ExitCode::from(2)
        }
    }
}
