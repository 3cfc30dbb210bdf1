//! Server-sent events on the response path: framing, and what the router
//! learns from a relayed OpenAI chat stream.
//!
//! The router relays an upstream's bytes to the client as they arrive and
//! scans the same bytes on the side (docs/architecture.md). Reads cut the stream
//! anywhere (inside a line, between CR and LF, inside the BOM), so
//! [`SseParser`] is incremental: it keeps the unfinished line and event, and
//! hands out each complete event, borrowed from the read buffer whenever the
//! event lies inside it (the common case: one `data:` line per event), copied
//! only when it spans two reads or several `data:` lines.
//!
//! [`ChatStreamStats`] folds the events of an OpenAI chat-completions stream
//! into usage, text, finish reason and error for the log and the response
//! classifiers; [`chat_response_stats`] does the same for a non-streamed reply.
//! [`write_openai_stream_error`] writes the event that ends a client's stream
//! when its upstream dies mid-way (`docs/formats.md`).
//!
//! # Files
//!
//! - `parser.rs`: [`SseParser`], the WHATWG event-stream framing.
//! - `openai.rs`: the OpenAI chat stream: stats and the error event.

mod openai;
mod parser;

pub use openai::{
    ChatStreamStats, chat_response_stats, chat_response_summary, write_openai_stream_error,
};
pub use parser::{SseError, SseEvent, SseParser};
