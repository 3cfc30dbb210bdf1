//! The one error type of the request path. It knows its side (client,
//! upstream, internal), its status, its OpenAI-vocabulary type and code;
//! `runtime/respond.rs` writes it with the client format's one error writer
//! (the same as for translated provider errors).

use std::borrow::Cow;

use crate::formats::cut_at_char_boundary;

/// Most bytes of one piece of client input (a model name, a path, a plugin
/// id) quoted in a router-made message.
pub const MAX_QUOTE_BYTES: usize = 256;

/// Most bytes of a router-made error message (in the reply and the log line).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `s` cut to at most `max` bytes on a character boundary; a cut text ends
/// with a marker saying how many bytes were left out.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let kept = cut_at_char_boundary(s, max);
    Cow::Owned(format!("{kept}…[{} more bytes]", s.len() - kept.len()))
}

/// Client input as quoted in a message: [`bounded`] to [`MAX_QUOTE_BYTES`].
pub fn quote(s: &str) -> Cow<'_, str> {
    bounded(s, MAX_QUOTE_BYTES)
}

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, Clone)]
pub struct RouterError {
    pub side: Side,
    pub status: u16,
    /// OpenAI `error.type` (e.g. `invalid_request_error`).
    pub kind: &'static str,
    /// OpenAI `error.code` (e.g. `model_not_found`), or none.
    pub code: Option<&'static str>,
    pub message: String,
    /// Close the client connection after answering (framing errors).
    pub close: bool,
    /// The provider failed before sending a response head (refused, reset,
    /// closed, silent): another provider may be tried.
    pub failover: bool,
    /// Seconds for a `Retry-After` header (the router is overloaded).
    pub retry_after_s: Option<u64>,
}

impl RouterError {
    fn new(
        side: Side,
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        let message = match bounded(&message, MAX_MESSAGE_BYTES) {
            Cow::Borrowed(_) => message,
            Cow::Owned(cut) => cut,
        };
        RouterError {
            side,
            status,
            kind,
            code,
            message,
            close: false,
            failover: false,
            retry_after_s: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            Side::Client,
            400,
            "invalid_request_error",
            None,
            message.into(),
        )
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// A framing/limit rejection from the HTTP layer: answered, then closed.
    pub fn framing(status: u16, message: &str) -> Self {
        let kind = match status {
            413 => "request_too_large",
            _ => "invalid_request_error",
        };
        Self::new(Side::Client, status, kind, None, message.to_string()).closing()
    }

    pub fn unauthorized() -> Self {
        Self::new(
            Side::Client,
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "missing or invalid API key".to_string(),
        )
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        Self::new(
            Side::Client,
            404,
            "invalid_request_error",
            Some("not_found"),
            format!("no route for {} {}", quote(method), quote(path)),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            Side::Client,
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("method {} is not allowed on {}", quote(method), quote(path)),
        )
    }

    pub fn no_route(model: &str) -> Self {
        Self::bad_request(format!(
            "no provider configured for model '{}'",
            quote(model)
        ))
        .with_code("no_route")
    }

    pub fn upstream_connect(provider: &str, addr: &str, reason: &str) -> Self {
        let mut e = Self::new(
            Side::Upstream,
            502,
            "upstream_error",
            Some("upstream_connect_failed"),
            format!("provider '{provider}' at {addr} is unreachable: {reason}"),
        );
        e.failover = true;
        e
    }

    pub fn upstream_bad_response(provider: &str, reason: &str) -> Self {
        Self::new(
            Side::Upstream,
            502,
            "upstream_error",
            Some("upstream_bad_response"),
            format!("provider '{provider}' sent an invalid response: {reason}"),
        )
    }

    pub fn upstream_timeout(provider: &str, addr: &str, ms: u64) -> Self {
        let mut e = Self::new(
            Side::Upstream,
            504,
            "upstream_error",
            Some("upstream_timeout"),
            format!("provider '{provider}' at {addr} sent no response within {ms} ms"),
        );
        e.failover = true;
        e
    }

    /// The provider answered a status configured for failover
    /// (`retry_on_status`) while another candidate remained.
    pub fn upstream_status(provider: &str, status: u16) -> Self {
        let mut e = Self::new(
            Side::Upstream,
            502,
            "upstream_error",
            Some("upstream_status"),
            format!("provider '{provider}' answered {status}"),
        );
        e.failover = true;
        e
    }

    /// The provider's connection failed (reset, closed) before a response head.
    pub fn upstream_closed(provider: &str, reason: &str) -> Self {
        let mut e = Self::upstream_bad_response(provider, reason);
        e.failover = true;
        e
    }

    /// The client went away before the response completed: nothing is
    /// written; the log line says 499 `client_closed`.
    pub fn client_gone() -> Self {
        Self::new(
            Side::Client,
            499,
            "client_closed",
            None,
            "client_closed: the client disconnected before the response completed".to_string(),
        )
        .closing()
    }

    /// Whether this is [`RouterError::client_gone`] (no response is written).
    pub fn is_client_gone(&self) -> bool {
        self.status == 499
    }

    /// The router is shutting down (its drain deadline passed) before the
    /// provider answered.
    pub fn shutting_down() -> Self {
        Self::new(
            Side::Internal,
            503,
            "server_error",
            Some("shutting_down"),
            "the router is shutting down (drain_timeout_ms passed) before the provider answered"
                .to_string(),
        )
        .closing()
    }

    /// Every endpoint of the provider is at `max_in_flight` and the wait
    /// queue is full or timed out: 503, `Retry-After`.
    pub fn overloaded(message: &str, retry_after_s: u64) -> Self {
        let mut e = Self::new(
            Side::Internal,
            503,
            "server_error",
            Some("overloaded"),
            message.to_string(),
        );
        e.retry_after_s = Some(retry_after_s);
        e
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            Side::Internal,
            501,
            "not_implemented",
            Some("not_implemented"),
            message.into(),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Side::Internal, 500, "server_error", None, message.into())
    }

    /// Whether sending the same request again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self.status, 408 | 429 | 502 | 503 | 504)
    }
}

impl std::fmt::Display for RouterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for RouterError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_bounded_on_a_char_boundary() {
        assert_eq!(quote("gpt-4o"), "gpt-4o");
        let long = "é".repeat(1000); // 2 000 bytes
        let q = quote(&long);
        let kept = q.split('…').next().unwrap();
        assert!(kept.len() <= MAX_QUOTE_BYTES && kept.len() >= MAX_QUOTE_BYTES - 1);
        assert!(kept.chars().all(|c| c == 'é'));
        assert!(q.ends_with(&format!("…[{} more bytes]", 2000 - kept.len())));
    }

    #[test]
    fn every_message_is_bounded() {
        let model = "m".repeat(10 << 20);
        let e = RouterError::no_route(&model);
        assert!(e.message.len() < 400, "{}", e.message.len());
        assert!(e.message.contains("more bytes]"));
        let e = RouterError::bad_request("x".repeat(1 << 20));
        assert!(e.message.len() <= MAX_MESSAGE_BYTES + 32);
        let e = RouterError::not_found("GET", &"/a".repeat(5000));
        assert!(e.message.len() < 400);
    }
}
