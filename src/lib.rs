//! opensourcellmrouter: a thread-per-core, zero-copy LLM router on io_uring.
//!
//! Layout (one reason to change per file):
//!
//! - [`config`]: TOML → raw serde structs → validated immutable [`config::Config`].
//! - [`http`]: HTTP/1.1 request-head parsing and framing rules, chunked decoding,
//!   response writing — synchronous functions over byte slices.
//! - [`json`]: top-level field extraction and byte splicing of request bodies.
//! - [`classify`]: the keyword automaton (request tags).
//! - [`route`]: the rule chain and provider selection.
//! - [`sse`]: incremental SSE scanning of relayed streams (usage, text).
//! - [`upstream`]: per-core upstream connection pools and the provider call.
//! - [`observe`]: the JSONL log writer thread, `/metrics` series, the
//!   dashboard feed's fan-out thread, OTLP export and W3C trace context.
//! - [`cli`]: the `watch` and `tui` clients of a running router's feed.
//! - [`runtime`]: workers (one monoio runtime per core), per-core state, the
//!   connection loop and the request pipeline.
//! - [`mock`]: the built-in `mock` provider (docs/providers.md, "mock").

pub mod classify;
pub mod cli;
pub mod config;
pub mod diag;
pub mod error;
pub mod formats;
pub mod http;
pub mod json;
pub mod mock;
pub mod observe;
pub mod plugins;
pub mod route;
pub mod runtime;
pub mod sse;
pub mod upstream;
