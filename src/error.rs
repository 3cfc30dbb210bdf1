//! The one error type of the request path. It knows its side (client,
//! upstream, internal), the status it maps to, and renders itself in the
//! error shape of the API family the client called.

use crate::json::write_json_string;

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// API family of the endpoint a client called; decides the error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    OpenAi,
    Anthropic,
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
}

impl RouterError {
    fn new(
        side: Side,
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        RouterError {
            side,
            status,
            kind,
            code,
            message,
            close: false,
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
            format!("no route for {method} {path}"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            Side::Client,
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("method {method} is not allowed on {path}"),
        )
    }

    pub fn no_route(model: &str) -> Self {
        Self::bad_request(format!("no provider configured for model '{model}'"))
            .with_code("no_route")
    }

    pub fn upstream_connect(provider: &str, addr: &str, reason: &str) -> Self {
        Self::new(
            Side::Upstream,
            502,
            "upstream_error",
            Some("upstream_connect_failed"),
            format!("provider '{provider}' at {addr} is unreachable: {reason}"),
        )
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
        Self::new(
            Side::Upstream,
            504,
            "upstream_error",
            Some("upstream_timeout"),
            format!("provider '{provider}' at {addr} sent no response within {ms} ms"),
        )
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

    /// Render the JSON body in `family`'s error shape.
    pub fn write_body(&self, family: ApiFamily, out: &mut Vec<u8>) {
        match family {
            ApiFamily::OpenAi => {
                out.extend_from_slice(b"{\"error\":{\"message\":");
                write_json_string(out, &self.message);
                out.extend_from_slice(b",\"type\":");
                write_json_string(out, self.kind);
                out.extend_from_slice(b",\"param\":null,\"code\":");
                match self.code {
                    Some(c) => write_json_string(out, c),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b"}}");
            }
            ApiFamily::Anthropic => {
                let kind = match self.status {
                    400 | 405 | 413 | 414 | 417 | 431 | 505 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    _ => "api_error",
                };
                let kind = if self.status == 413 {
                    "request_too_large"
                } else {
                    kind
                };
                out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
                write_json_string(out, kind);
                out.extend_from_slice(b",\"message\":");
                write_json_string(out, &self.message);
                out.extend_from_slice(b"}}");
            }
        }
    }
}

impl std::fmt::Display for RouterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for RouterError {}
