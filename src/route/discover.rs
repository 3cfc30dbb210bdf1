//! Startup discovery for `discover` rules (docs/routing.md): ask each named Ollama
//! provider for its models (`GET /api/tags`) and their capabilities
//! (`POST /api/show`).
//!
//! Runs once on the control thread before the workers start, with plain
//! blocking `std::net` sockets — never on a worker. A failure is a warning,
//! never a failed startup: that provider's `discover` rule then passes.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Discovery, Rule};
use crate::config::{Config, Provider, ProviderFormat, Scheme};

/// At most this many models per provider get a `POST /api/show`.
const MAX_SHOW: usize = 200;
/// A discovery response larger than this is refused.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Discovers the providers named by `discover` rules of `cfg`.
/// See [`discover_providers`].
pub fn discover(cfg: &Config, timeout: Duration) -> (Discovery, Vec<String>) {
    discover_providers(&cfg.providers, &cfg.routers, timeout)
}

/// For each provider named by a `discover` rule (once, in rule order) that
/// is active: `GET {base_path}/api/tags`, then `POST {base_path}/api/show`
/// for up to 200 of the reported models.
///
/// `timeout` bounds each HTTP exchange (connect, send, whole response).
/// A failed `/api/tags` is a warning naming the provider and its address and
/// leaves its model list empty (the rule passes). A failed `/api/show`
/// leaves that model's capabilities unknown (no capability filter for it);
/// the remaining models are not asked, so a hung server costs one timeout,
/// and one warning says so. Skipped providers are not contacted.
pub fn discover_providers(
    providers: &[Provider],
    rules: &[Rule],
    timeout: Duration,
) -> (Discovery, Vec<String>) {
    let mut discovery = Discovery::empty(providers.len());
    let mut warnings = Vec::new();
    let mut done: Vec<usize> = Vec::new();
    for rule in rules {
        let Rule::Discover { provider: index } = rule else {
            continue;
        };
        if done.contains(index) {
            continue;
        }
        done.push(*index);
        let Some(provider) = providers.get(*index) else {
            warnings.push(format!(
                "discover: rule names provider #{index}, which does not exist"
            ));
            continue;
        };
        if !provider.active() {
            continue;
        }
        let fail = |reason: &str| {
            format!(
                "discover: provider '{}' at {}: {reason}; its discover rule will pass",
                provider.name, provider.base_url
            )
        };
        if provider.format == ProviderFormat::Mock {
            warnings.push(fail("the mock provider reports no models"));
            continue;
        }
        if provider.scheme == Scheme::Https {
            warnings.push(fail("discovery over https is not supported yet"));
            continue;
        }
        let names = match list_models(provider, timeout) {
            Ok(names) => names,
            Err(reason) => {
                warnings.push(fail(&reason));
                continue;
            }
        };
        let mut models = Vec::with_capacity(names.len());
        let mut show_failed = false;
        for (i, name) in names.into_iter().enumerate() {
            let capabilities = if show_failed || i >= MAX_SHOW {
                None
            } else {
                match show_capabilities(provider, &name, timeout) {
                    Ok(caps) => caps,
                    Err(reason) => {
                        show_failed = true;
                        warnings.push(format!(
                            "discover: provider '{}' at {}: POST /api/show for '{name}' failed: \
                             {reason}; capabilities of this and later models unknown",
                            provider.name, provider.base_url
                        ));
                        None
                    }
                }
            };
            models.push((name, capabilities));
        }
        discovery.insert(*index, models);
    }
    (discovery, warnings)
}

/// `GET /api/tags` → model names (`models[].name`, else `models[].model`).
fn list_models(provider: &Provider, timeout: Duration) -> Result<Vec<String>, String> {
    let request = format!(
        "GET {}/api/tags HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
         User-Agent: opensourcellmrouter/{}\r\nConnection: close\r\n\r\n",
        provider.base_path,
        provider.host_header,
        env!("CARGO_PKG_VERSION")
    );
    let body = exchange(provider, request.as_bytes(), timeout)
        .map_err(|e| format!("GET /api/tags: {e}"))?;
    let json: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("GET /api/tags: response is not JSON: {e}"))?;
    let models = json
        .get("models")
        .and_then(Value::as_array)
        .ok_or("GET /api/tags: response has no \"models\" array")?;
    Ok(models
        .iter()
        .filter_map(|m| m.get("name").or_else(|| m.get("model"))?.as_str())
        .map(str::to_string)
        .collect())
}

/// `POST /api/show {"model": name}` → `capabilities`, `None` when the
/// server does not report them (Ollama before 0.6.4).
fn show_capabilities(
    provider: &Provider,
    model: &str,
    timeout: Duration,
) -> Result<Option<Vec<String>>, String> {
    let body = serde_json::json!({ "model": model }).to_string();
    let request = format!(
        "POST {}/api/show HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         User-Agent: opensourcellmrouter/{}\r\nConnection: close\r\n\r\n{body}",
        provider.base_path,
        provider.host_header,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    let body = exchange(provider, request.as_bytes(), timeout)?;
    let json: Value =
        serde_json::from_slice(&body).map_err(|e| format!("response is not JSON: {e}"))?;
    Ok(json
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|caps| {
            caps.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        }))
}

/// One HTTP/1.1 exchange on a fresh connection; returns the body of a 2xx
/// response. The whole exchange is bounded by `timeout`.
fn exchange(provider: &Provider, request: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let address = format!("{}:{}", provider.host, provider.port);
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("timed out after {} ms", timeout.as_millis()))
    };

    let addrs = (provider.host.as_str(), provider.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?;
    let mut last_error = format!("cannot resolve {address}: no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {address}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("timed out after {} ms", timeout.as_millis())
        }
        _ => format!("{address}: {e}"),
    };

    stream.set_write_timeout(Some(remaining()?)).map_err(io)?;
    stream.write_all(request).map_err(io)?;

    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining()?)).map_err(io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return match parse_response(&buf, true)? {
                Some(body) => Ok(body),
                None => Err("connection closed before the end of the response".to_string()),
            };
        }
        if buf.len() + n > MAX_RESPONSE_BYTES {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(body) = parse_response(&buf, false)? {
            return Ok(body);
        }
    }
}

/// How the body of a response is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The body of the (last, non-1xx) response in `buf` when it is complete;
/// `None` when more bytes are needed. `eof`: the peer closed the connection.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut rest = buf;
    loop {
        let Some(head_len) = find(rest, b"\r\n\r\n").map(|i| i + 4) else {
            return Ok(None);
        };
        let (status, framing) = parse_head(&rest[..head_len])?;
        let body = &rest[head_len..];
        if (100..200).contains(&status) {
            rest = body; // interim response (e.g. 100 Continue): skip
            continue;
        }
        let body = match framing {
            Framing::Length(len) if body.len() >= len => body[..len].to_vec(),
            Framing::Length(_) => return Ok(None),
            // The terminal chunk and the trailer section end with an empty
            // line; only then is a full parse worth trying.
            Framing::Chunked if body.ends_with(b"\r\n") => match dechunk(body)? {
                Some(body) => body,
                None => return Ok(None),
            },
            Framing::Chunked => return Ok(None),
            Framing::UntilClose if eof => body.to_vec(),
            Framing::UntilClose => return Ok(None),
        };
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("HTTP {status}: {}", text.trim()));
        }
        return Ok(Some(body));
    }
}

/// Status code and body framing of a response head (ends with CRLF CRLF).
fn parse_head(head: &[u8]) -> Result<(u16, Framing), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let bad = || {
        format!(
            "bad status line {:?}",
            status_line.chars().take(80).collect::<String>()
        )
    };
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad());
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let mut framing = Framing::UntilClose;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let len = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            framing = Framing::Length(len);
        }
    }
    Ok((status, framing))
}

/// Decodes a chunked body; `None` when it is incomplete.
fn dechunk(mut buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let Some(line_end) = find(buf, b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[..line_end];
        let size_field = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let size_text = std::str::from_utf8(size_field).unwrap_or("").trim();
        if size_text.is_empty() || size_text.len() > 15 {
            return Err("bad chunk size line".to_string());
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(end) = find(buf, b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(out));
                }
                buf = &buf[end + 2..];
            }
        }
        let Some(end) = size.checked_add(2).filter(|&end| end <= buf.len()) else {
            return Ok(None);
        };
        if &buf[size..end] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[end..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    use super::*;
    use crate::route::tests::provider;

    const SECOND: Duration = Duration::from_secs(5);

    fn ollama(name: &str, port: u16) -> Provider {
        let mut p = provider(name, 0.0, 0.0);
        p.format = ProviderFormat::Ollama;
        p.base_url = format!("http://127.0.0.1:{port}");
        p.host = "127.0.0.1".to_string();
        p.port = port;
        p.host_header = format!("127.0.0.1:{port}");
        p.base_path = String::new();
        p
    }

    /// Reads one request (head + Content-Length body): (request line, body).
    fn read_request(stream: &TcpStream) -> (String, String) {
        let mut reader = std::io::BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                len = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        (
            request_line.trim_end().to_string(),
            String::from_utf8(body).unwrap(),
        )
    }

    /// A fake Ollama; it answers until [`stop`] and returns the requests seen.
    fn fake_ollama() -> (u16, thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let (mut stream, _) = listener.accept().unwrap();
                let (line, body) = read_request(&stream);
                if line.starts_with("STOP") {
                    return seen;
                }
                let response = if line == "GET /proxy/api/tags HTTP/1.1" {
                    // Chunked, split inside the JSON, with an extension and a trailer.
                    let json = r#"{"models":[{"name":"llava:latest","model":"llava:latest"},{"name":"qwen3:8b"},{"name":"old:1b"},{"name":"broken"},{"name":"never"}]}"#;
                    let (a, b) = json.split_at(20);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-T: 1\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                } else if line == "POST /proxy/api/show HTTP/1.1" {
                    let req: Value = serde_json::from_str(&body).unwrap();
                    let model = req["model"].as_str().unwrap().to_string();
                    let json = match model.as_str() {
                        "llava:latest" => r#"{"capabilities":["completion","vision"]}"#,
                        "qwen3:8b" => r#"{"capabilities":["completion","tools"]}"#,
                        "old:1b" => r#"{"modelfile":"FROM x"}"#,
                        _ => "",
                    };
                    if json.is_empty() {
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom"
                            .to_string()
                    } else {
                        format!(
                            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        )
                    }
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                seen.push(format!("{line} {body}"));
                stream.write_all(response.as_bytes()).unwrap();
            }
        });
        (port, handle)
    }

    fn stop(port: u16, server: thread::JoinHandle<Vec<String>>) -> Vec<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"STOP / HTTP/1.1\r\n\r\n").unwrap();
        server.join().unwrap()
    }

    #[test]
    fn discovers_models_and_capabilities() {
        // tags + show for llava, qwen3, old, broken (fails; "never" is not asked).
        let (port, server) = fake_ollama();
        let mut behind_proxy = ollama("ollama", port);
        behind_proxy.base_path = "/proxy".to_string();
        let providers = vec![provider("cloud", 1.0, 1.0), behind_proxy];
        let rules = vec![
            Rule::Discover { provider: 1 },
            Rule::Discover { provider: 1 },
        ];
        let (d, warnings) = discover_providers(&providers, &rules, SECOND);
        let seen = stop(port, server);

        assert_eq!(
            d.models(1),
            ["llava:latest", "qwen3:8b", "old:1b", "broken", "never"]
        );
        assert!(d.models(0).is_empty());
        assert_eq!(
            d.capabilities(1, "llava").unwrap(),
            ["completion", "vision"]
        );
        assert_eq!(
            d.capabilities(1, "qwen3:8b").unwrap(),
            ["completion", "tools"]
        );
        assert_eq!(d.capabilities(1, "old:1b"), None);
        assert_eq!(d.capabilities(1, "broken"), None);
        assert_eq!(d.capabilities(1, "never"), None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("'ollama'") && warnings[0].contains("'broken'"));
        assert!(warnings[0].contains("HTTP 500: boom"), "{}", warnings[0]);
        assert_eq!(seen[0], "GET /proxy/api/tags HTTP/1.1 ");
        assert_eq!(
            seen[1],
            r#"POST /proxy/api/show HTTP/1.1 {"model":"llava:latest"}"#
        );
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn refused_port_is_a_warning_and_the_rule_passes() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let providers = vec![ollama("local-ollama", port)];
        let rules = vec![Rule::Discover { provider: 0 }];
        let (d, warnings) = discover_providers(&providers, &rules, SECOND);
        assert!(d.models(0).is_empty());
        assert_eq!(warnings.len(), 1);
        let w = &warnings[0];
        assert!(w.contains("'local-ollama'"), "{w}");
        assert!(w.contains(&format!("http://127.0.0.1:{port}")), "{w}");
        assert!(w.contains("cannot connect"), "{w}");
        assert!(w.ends_with("its discover rule will pass"), "{w}");
    }

    #[test]
    fn https_skipped_and_unknown_providers() {
        let mut tls = ollama("remote", 443);
        tls.scheme = Scheme::Https;
        tls.base_url = "https://ollama.example".to_string();
        let mut skipped = ollama("skipped", 1);
        skipped.skipped = Some("OLLAMA_KEY is not set".to_string());
        let providers = vec![tls, skipped];
        let rules = vec![
            Rule::Discover { provider: 0 },
            Rule::Discover { provider: 1 },
            Rule::Discover { provider: 9 },
        ];
        let (d, warnings) = discover_providers(&providers, &rules, SECOND);
        assert!(d.models(0).is_empty() && d.models(1).is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("'remote'"));
        assert!(warnings[0].contains("discovery over https is not supported yet"));
        assert!(warnings[1].contains("#9"));
    }

    #[test]
    fn bad_json_and_http_errors_are_warnings() {
        for response in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
            "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"models\":[]}",
            "garbage\r\n\r\n",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                read_request(&stream);
                stream.write_all(response.as_bytes()).unwrap();
            });
            let providers = vec![ollama("o", port)];
            let (d, warnings) =
                discover_providers(&providers, &[Rule::Discover { provider: 0 }], SECOND);
            server.join().unwrap();
            assert!(d.models(0).is_empty());
            assert_eq!(warnings.len(), 1, "{response:?}: {warnings:?}");
            assert!(warnings[0].contains("GET /api/tags"), "{}", warnings[0]);
        }
    }

    #[test]
    fn response_parsing_at_every_split() {
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for split in 0..full.len() {
            assert_eq!(
                parse_response(&full[..split], false).unwrap(),
                None,
                "split {split}"
            );
        }
        assert_eq!(parse_response(full, false).unwrap().unwrap(), b"abcde");

        let close = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(close, false).unwrap(), None);
        assert_eq!(parse_response(close, true).unwrap().unwrap(), b"body");
    }

    #[test]
    fn dechunk_rejects_bad_framing() {
        assert!(dechunk(b"zz\r\nabc\r\n0\r\n\r\n").is_err());
        assert!(dechunk(b"3\r\nabcd\r\n0\r\n\r\n").is_err());
        assert!(dechunk(b"ffffffffffffffffff\r\n").is_err());
        assert!(dechunk(b"\r\n").is_err());
        assert_eq!(dechunk(b"3\r\nab").unwrap(), None);
        assert_eq!(dechunk(b"0\r\n\r\n").unwrap().unwrap(), b"");
    }
}
