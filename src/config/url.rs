//! `base_url` parsing: `http(s)://host[:port][/path]`, nothing more.
//!
//! A provider address is split once at load time into what the upstream
//! code needs (scheme, host to connect to, port, path prefix, `Host:` value)
//! so no request ever parses a URL.

use std::net::Ipv6Addr;

use super::Scheme;

/// A validated provider or collector address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    /// As written, trailing `/` removed.
    pub normalized: String,
    pub scheme: Scheme,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `""` or `/v1`…, no trailing `/`.
    pub path: String,
    /// `host`, `host:port`, `[v6]` or `[v6]:port`.
    pub host_header: String,
}

/// Parses `s`; the error says what is wrong, the caller says where.
pub(crate) fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    let (scheme, rest) = if let Some(rest) = strip_prefix_ci(s, "http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = strip_prefix_ci(s, "https://") {
        (Scheme::Https, rest)
    } else {
        return Err("must start with http:// or https://".to_owned());
    };
    // A trailing `/` is ignored (docs/configuration.md).
    let rest = rest.trim_end_matches('/');
    if rest.contains(['?', '#']) {
        return Err("must not contain a query or fragment".to_owned());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("must not contain user info (put credentials in api_key_env)".to_owned());
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };

    let (host, port_text, bracketed) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err("has an unclosed `[` in the host".to_owned());
        };
        let host = &v6[..end];
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("has an invalid IPv6 address [{host}]"));
        }
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has unexpected text after the IPv6 address".to_owned()),
        };
        (host, port, true)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(
                    "has an IPv6 address without brackets (write http://[::1]:8080)".to_owned(),
                );
            }
            Some((h, p)) => (h, Some(p), false),
            None => (authority, None, false),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    if !bracketed
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!("has an invalid host {host:?}"));
    }
    let port = match port_text {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("has an invalid port {p:?}")),
        },
    };
    let shown_host = if bracketed {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let host_header = if port == default_port {
        shown_host
    } else {
        format!("{shown_host}:{port}")
    };
    Ok(BaseUrl {
        normalized: s.trim_end_matches('/').to_owned(),
        scheme,
        host: host.to_owned(),
        port,
        path: path.trim_end_matches('/').to_owned(),
        host_header,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}
