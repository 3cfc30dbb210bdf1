//! The request lifecycle: every request the connection loop reads (or
//! rejects) goes through [`serve`], the only entry point, and ends in
//! [`end`] — `on_end` and the log line — exactly once, whatever happened.
//!
//! ```text
//! accept → head → body                       (runtime/conn.rs: the connection loop)
//!   → auth → parse → on_start → request classifiers → pre_request → route
//!   → upstream exchange                      (runtime/exchange.rs: returns the head or an error)
//!   → respond                                (runtime/respond.rs heads, runtime/relay.rs streams)
//!     with post_response and the response classifiers
//!   → on_end → log                           (end, below)
//! ```
//!
//! Each phase returns its outcome (`Result<_, RouterError>`, or a plugin's
//! response); only this module decides what the client receives for an
//! error ([`answer_error`]), and nothing below it reaches back up.

use std::time::{Duration, Instant};

use super::Core;
use super::balance;
use super::ctx::Ctx;
use super::exchange;
use super::parse::{self, Parsed, Plan};
use super::relay::{self, Relay, StreamMode};
use super::request::{ClientConn, Next, Request};
use super::respond;
use super::translate::{self, StreamTranslator};
use super::watch;
use crate::config::{ProviderFormat, Scheme};
use crate::error::RouterError;
use crate::formats::{ChatResponse, FinishReason, Format, Part, StreamEvent, Usage};
use crate::plugins::{self, Active, Early, Flow, Post, Pre};
use crate::route::{self, RouteInput};
use crate::sse::{ChatStreamStats, SseParser};

/// `GET /dashboard`: one self-contained page (no CDN, no build step).
const DASHBOARD_PAGE: &str = include_str!("../observe/dashboard.html");

/// What the connection loop hands to the lifecycle.
pub enum Input<'a> {
    /// A request whose head and body were read.
    Request(&'a Request<'a>),
    /// Rejected before dispatch (framing, limits, timeouts): `err` is
    /// answered, then the connection closes. `buf` is what was read of the
    /// head (its request line names the path, when it got that far).
    Rejected { buf: &'a [u8], err: RouterError },
    /// The client went away while sending its body: nothing to answer,
    /// logged as 499.
    Abandoned { buf: &'a [u8] },
}

/// The plugins of one request and how their hooks went.
#[derive(Default)]
struct Run {
    active: Vec<Active>,
    /// A `post_response` hook said Stop: the plugins' `on_end` do not run.
    skip_on_end: bool,
}

/// How handling a request ended.
enum Step<'c> {
    /// Answered; how the connection goes on.
    Done(Next),
    /// A stream's head arrived: [`serve`] relays it (boxed: small to hand up).
    Stream(Box<Streaming<'c>>),
}

/// A stream handed up by its attempt, with what the attempt's record needs
/// when the stream ends.
struct Streaming<'c> {
    relay: relay::Stream,
    /// The endpoint (global index) and when the attempt started.
    eidx: usize,
    started: Instant,
    /// The attempt's span: id and start (unix ns).
    span: ([u8; 8], u64),
    /// The endpoint's slot, held while the stream lasts.
    _slot: Option<balance::Slot<'c>>,
}

/// Serve one request (or a rejection) and end it: the single entry point.
pub async fn serve(core: &Core, conn: &mut ClientConn, input: Input<'_>) -> Next {
    let path_buf: String;
    let (mut ctx, next, run, body) = match input {
        Input::Request(req) => {
            let mut ctx = Ctx::new(core, req.ts_ms, req.t0, req.method, req.path);
            let mut run = Run::default();
            // Boxed: the parse, routing and attempt state is large, and a
            // held stream must not keep it (nor its room in the connection's
            // task): a stream's head hands the relay up, and the box is freed
            // before the stream is relayed.
            let handled = Box::pin(handle(core, conn, req, &mut ctx, &mut run)).await;
            let handled = match handled {
                Ok(Step::Stream(s)) => serve_stream(core, conn, req, &mut ctx, &mut run, s).await,
                Ok(Step::Done(next)) => Ok(next),
                Err(err) => Err(err),
            };
            let next = match handled {
                Ok(next) => next,
                Err(err) => answer_error(conn, req.path, req.keep_alive, &mut ctx, err).await,
            };
            (ctx, next, run, req.body)
        }
        Input::Rejected { buf, err } => {
            let (method, path) = first_line(buf);
            path_buf = path;
            let mut ctx = Ctx::new(
                core,
                crate::observe::now_ms(),
                Instant::now(),
                method,
                &path_buf,
            );
            let next = answer_error(conn, &path_buf, false, &mut ctx, err).await;
            (ctx, next, Run::default(), &[][..])
        }
        Input::Abandoned { buf } => {
            let (method, path) = first_line(buf);
            path_buf = path;
            let mut ctx = Ctx::new(
                core,
                crate::observe::now_ms(),
                Instant::now(),
                method,
                &path_buf,
            );
            ctx.status = 499;
            ctx.error = Some(
                "client_closed: the client disconnected while sending the request body".into(),
            );
            (ctx, Next::Close, Run::default(), &[][..])
        }
    };
    end(core, &mut ctx, &run, body);
    next
}

/// `on_end` of the request's plugins, then its log line. Runs once per
/// request, from [`serve`] only.
fn end(core: &Core, ctx: &mut Ctx<'_>, run: &Run, body: &[u8]) {
    if !run.skip_on_end {
        plugins::on_end(&run.active, &mut ctx.warnings);
    }
    super::metrics::record(core, ctx);
    super::telemetry::finish(core, ctx);
    if crate::observe::feed::active() && super::metrics::is_chat_path(ctx.path) {
        // One serialization for the feed and the log line.
        let mut line = std::mem::take(&mut *core.line_scratch.borrow_mut());
        line.clear();
        ctx.write_line(&mut line, body);
        core.feed
            .push(|b| crate::observe::feed::event::complete(b, &line));
        if let Some(log) = &core.log {
            log.append(|out| out.extend_from_slice(&line));
        }
        *core.line_scratch.borrow_mut() = line;
        return;
    }
    ctx.log(core, body);
}

/// Answer `err` in the path's error shape (nothing for a client that is
/// gone) and record it for the log line.
async fn answer_error(
    conn: &mut ClientConn,
    path: &str,
    keep_alive: bool,
    ctx: &mut Ctx<'_>,
    err: RouterError,
) -> Next {
    if ctx.overhead_us == 0 {
        ctx.overhead_us = ctx.t0.elapsed().as_micros() as u64;
    }
    if err.is_client_gone() {
        ctx.fail(&err);
        return Next::Close;
    }
    conn.out.clear();
    respond::error(conn, respond::format_for(path), &err, keep_alive, ctx);
    let ok = conn.flush().await.is_ok();
    ctx.fail(&err);
    if ok && !err.close && keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// The method and path of the request line at the start of `buf`, as far as
/// they can be read (bounded like any quoted client input).
fn first_line(buf: &[u8]) -> (&str, String) {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len())
        .min(2048);
    let mut parts = buf[..line_end].split(|&b| b == b' ');
    let method = parts.next().unwrap_or(b"");
    let method = std::str::from_utf8(&method[..method.len().min(32)]).unwrap_or("");
    let target = parts.next().unwrap_or(b"");
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
    let path = String::from_utf8_lossy(path);
    (method, crate::error::quote(&path).into_owned())
}

/// Auth, then the endpoint.
async fn handle<'c>(
    core: &'c Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
) -> Result<Step<'c>, RouterError> {
    if let Some(key) = &core.snap.config.server.api_key
        && req.path != "/health"
        && !parse::authorized(req, key)
    {
        return Err(RouterError::unauthorized());
    }
    const KNOWN: [&str; 8] = [
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "/",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    ];
    let fixed = |conn: &mut ClientConn, ctx: &mut Ctx<'_>, ctype: &[u8], body: &[u8]| {
        respond::simple(
            conn,
            200,
            ctype,
            body,
            req.method == "HEAD",
            !req.keep_alive,
        );
        ctx.status = 200;
        ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
    };
    match (req.method, req.path) {
        ("POST", "/v1/chat/completions") => {
            return chat(core, conn, req, ctx, run, Format::OpenAiChat).await;
        }
        ("POST", "/v1/messages") | ("POST", "/v1/messages/count_tokens") => {
            return chat(core, conn, req, ctx, run, Format::Anthropic).await;
        }
        ("POST", "/v1/responses") => {
            return chat(core, conn, req, ctx, run, Format::Responses).await;
        }
        ("GET" | "HEAD", "/health") if super::shutdown::draining() => {
            // A load balancer stops sending to a draining router.
            respond::simple(
                conn,
                503,
                b"text/plain",
                b"draining",
                req.method == "HEAD",
                true,
            );
            ctx.status = 503;
            ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
        }
        ("GET" | "HEAD", "/health") => fixed(conn, ctx, b"text/plain", b"ok"),
        ("GET" | "HEAD", "/") => fixed(
            conn,
            ctx,
            b"text/plain",
            b"opensourcellmrouter is running\n",
        ),
        ("GET", "/v1/models") => fixed(conn, ctx, b"application/json", &core.snap.models_body),
        ("GET", "/metrics") => {
            let text = super::metrics::exposition(core);
            fixed(
                conn,
                ctx,
                b"text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
            );
        }
        ("GET" | "HEAD", "/dashboard") if core.snap.config.server.dashboard => fixed(
            conn,
            ctx,
            b"text/html; charset=utf-8",
            DASHBOARD_PAGE.as_bytes(),
        ),
        ("GET", "/dashboard/events") if core.snap.config.server.dashboard => {
            ctx.status = 200;
            ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
            // The fan-out thread owns the connection from now on.
            if !super::metrics::hand_to_feed(&conn.stream) {
                return Err(RouterError::internal("the dashboard feed is not available"));
            }
            return Ok(Step::Done(Next::Close));
        }
        (m, p) if KNOWN.contains(&p) => return Err(RouterError::method_not_allowed(m, p)),
        (m, p) => return Err(RouterError::not_found(m, p)),
    }
    if conn.flush().await.is_err() {
        return Ok(Step::Done(Next::Close));
    }
    Ok(Step::Done(keep_or_close(req)))
}

/// Relay a stream handed up by its attempt, then record the attempt (its
/// slot is released as the stream is dropped).
async fn serve_stream(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    mut s: Box<Streaming<'_>>,
) -> Result<Next, RouterError> {
    // The head and what came with it (see `chat`: the buffer is put back
    // into the connection, its bytes kept, when the attempt returns).
    let mut resp = std::mem::take(&mut conn.up_resp);
    let (outcome, reusable) =
        relay::relay_stream(core, conn, req, ctx, &mut s.relay, &mut resp).await;
    conn.up_resp = resp;
    let ok = (200..300).contains(&s.relay.head.status);
    if !run.active.is_empty() {
        // Lent to the hooks, not copied: the whole reply's text.
        let text = ctx.response.take();
        post_response(
            run,
            ctx,
            s.relay.client,
            None,
            text.as_deref().unwrap_or(""),
            ok,
        );
        ctx.response = text;
    }
    let result = match outcome {
        Relay::Complete => Ok(after_reply(conn, req)),
        Relay::ClientGone => Err(RouterError::client_gone()),
        Relay::UpstreamFailed(msg) => {
            ctx.error = Some(format!("upstream_truncated: {msg}"));
            Ok(Next::Close)
        }
    };
    let Streaming {
        relay,
        eidx,
        started,
        span,
        ..
    } = *s;
    if reusable {
        core.pools.give(eidx, relay.up);
    }
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => outcome_of(e),
    };
    let ms = started.elapsed().as_millis() as u64;
    ctx.attempt_outcomes.push((Some(eidx), outcome, ms));
    ctx.span_mark(span.0, span.1);
    result
}

/// Keep the connection when the client asked to.
fn keep_or_close(req: &Request<'_>) -> Next {
    if req.keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Send what `conn.out` holds; a failed write means the client is gone.
async fn flush(conn: &mut ClientConn, req: &Request<'_>) -> Result<Next, RouterError> {
    if conn.flush().await.is_err() {
        return Err(RouterError::client_gone());
    }
    Ok(keep_or_close(req))
}

/// The next step after a response went out whole.
fn after_reply(conn: &ClientConn, req: &Request<'_>) -> Next {
    if req.keep_alive && !conn.http10 {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// `POST /v1/chat/completions`, `/v1/messages`, `/v1/responses`: the phases.
async fn chat<'c>(
    core: &'c Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    client: Format,
) -> Result<Step<'c>, RouterError> {
    let snap = &core.snap;
    ctx.trace = super::telemetry::begin(core, req);
    // parse: what routing needs, without touching the client's bytes.
    let parsed = parse::parse_client(client, req.body, &mut conn.json_scratch)?;
    // The parse copy of a large request is not kept: not for a stream that
    // may be held for minutes, nor for the connection's next request.
    release_if_large(&mut conn.json_scratch);
    // The log quotes client input bounded.
    ctx.requested_model = Some(crate::error::quote(&parsed.model).into_owned());
    ctx.stream = parsed.stream;
    ctx.messages = parsed.messages.clone();
    ctx.system = parsed.system.clone();
    ctx.plugins = parsed
        .plugins
        .iter()
        .map(|p| crate::error::quote(&p.id).into_owned())
        .collect();
    run.active = plugins::activate(&snap.config.plugins, &parsed.plugins)?;
    ctx.plugins = run
        .active
        .iter()
        .map(|a| a.id.as_str().to_string())
        .collect();

    let mut pre = Pre {
        providers: &snap.config.providers,
        model: &parsed.model,
        forced_provider: None,
        body: None,
        original_body: req.body,
        response: None,
    };
    // on_start
    if plugins::on_start(&run.active, &mut pre)? == Flow::Stop || pre.response.is_some() {
        let early = pre.response.take();
        return answer_early(core, conn, req, ctx, run, client, &parsed, early)
            .await
            .map(Step::Done);
    }
    if crate::observe::feed::active() {
        let in_flight = core
            .metrics
            .shared()
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        core.feed.push(|b| {
            crate::observe::feed::event::start(
                b,
                &ctx.id,
                crate::observe::now_ms(),
                ctx.requested_model.as_deref().unwrap_or(""),
                in_flight,
                ctx.path,
                parsed.stream,
            )
        });
    }
    // request classifiers
    parse::classify(core, &parsed, &mut ctx.tags);
    if crate::observe::feed::active() {
        core.feed.push(|b| {
            crate::observe::feed::event::classified(
                b,
                &ctx.id,
                crate::observe::now_ms(),
                ctx.tag_names(),
            )
        });
    }
    // pre_request
    if plugins::pre_request(&run.active, &mut pre)? == Flow::Stop || pre.response.is_some() {
        let early = pre.response.take();
        return answer_early(core, conn, req, ctx, run, client, &parsed, early)
            .await
            .map(Step::Done);
    }
    let (forced, new_body) = (pre.forced_provider, pre.body.take());
    // A plugin's request body is parsed again: routing and the upstream
    // request follow what it says.
    let reparsed;
    let (parsed, body): (&Parsed, &[u8]) = match &new_body {
        Some(b) => {
            // Boxed: only plugin-rewritten requests have one, and inline it
            // would sit in every request's (and held stream's) task.
            reparsed = Box::new(parse::parse_client(client, b, &mut conn.json_scratch)?);
            (&*reparsed, b)
        }
        None => (&parsed, req.body),
    };

    // route (a forced provider skips the rule chain, model unchanged), then
    // the upstream exchange — and, when an attempt fails before any byte
    // reached the client, the next candidate down the chain (failover).
    let server = &snap.config.server;
    core.budget_requests.set(core.budget_requests.get() + 1);
    // The providers and endpoints tried so far, on the stack (no allocation
    // per request).
    let mut tried_buf = [usize::MAX; MAX_EXCLUDED];
    let mut n_tried = 0;
    let mut tried_eps = [usize::MAX; MAX_EXCLUDED];
    let mut n_eps = 0;
    let mut next = match forced {
        Some(i) => (i, None),
        None => route_healthy(core, ctx, parsed, &[])?,
    };
    // Whether one more attempt is allowed: attempts, deadline and budget.
    let may_retry = |ctx: &Ctx<'_>| {
        ctx.attempts.len() < server.max_attempts
            && req.t0.elapsed() < Duration::from_millis(server.retry_deadline_ms)
            && (core.budget_retries.get() as f64)
                < server.retry_budget * core.budget_requests.get() as f64 + 10.0
    };
    loop {
        let (pidx, rewrite) = next;
        let started = Instant::now();
        let provider = &snap.config.providers[pidx];
        if req.path.ends_with("/count_tokens") && provider.format != ProviderFormat::Anthropic {
            ctx.set_provider(pidx);
            // Never a fake count: only an Anthropic-format provider can answer.
            return Err(RouterError::bad_request(format!(
                "count_tokens needs an anthropic-format provider; model '{}' routes to '{}' ({} format)",
                crate::error::quote(&parsed.model),
                provider.name,
                provider.format.as_str()
            ))
            .with_code("count_tokens_unsupported"));
        }
        if n_tried < MAX_EXCLUDED && !tried_buf[..n_tried].contains(&pidx) {
            tried_buf[n_tried] = pidx;
            n_tried += 1;
        }
        // The endpoint (balancing; waits when every one is full).
        let picked = balance::pick(core, pidx, &tried_eps[..n_eps], || {
            balance::affinity_key(provider, req, parsed, body)
        })
        .await;
        let (eidx, slot) = match picked {
            Ok(p) => {
                if let Some(ms) = p.queued_ms {
                    ctx.notes.push(format!(
                        "queued {ms} ms for a free slot of provider '{}'",
                        provider.name
                    ));
                }
                (p.eidx, p.slot)
            }
            Err(e) => {
                // Full: down the rule chain when it has another candidate.
                let alt = (forced.is_none() && may_retry(ctx))
                    .then(|| route_healthy(core, ctx, parsed, &tried_buf[..n_tried]).ok())
                    .flatten();
                ctx.set_provider(pidx);
                ctx.attempt_outcomes
                    .push((None, "full", started.elapsed().as_millis() as u64));
                ctx.span_mark([0; 8], 0);
                match alt {
                    Some(alt) => {
                        next = alt;
                        continue;
                    }
                    None => return Err(e),
                }
            }
        };
        ctx.set_provider(pidx);
        let sent_model = rewrite.clone().unwrap_or_else(|| parsed.model.clone());
        if crate::observe::feed::active() {
            core.feed.push(|b| {
                crate::observe::feed::event::routed(
                    b,
                    &ctx.id,
                    crate::observe::now_ms(),
                    &provider.name,
                    crate::error::bounded(&sent_model, 256).as_ref(),
                    ctx.attempts.len(),
                    (provider.format != ProviderFormat::Mock)
                        .then(|| snap.endpoint_url(eidx))
                        .flatten(),
                )
            });
        }
        ctx.sent_model = Some(sent_model.clone());
        let upstream = match provider.format {
            ProviderFormat::Mock => {
                ctx.attempt_outcomes.push((Some(eidx), "ok", 0));
                ctx.span_mark([0; 8], 0);
                return answer_mock(core, conn, req, ctx, run, client, parsed)
                    .await
                    .map(Step::Done);
            }
            ProviderFormat::OpenAi if client == Format::Responses && provider.responses => {
                Format::Responses
            }
            ProviderFormat::OpenAi => Format::OpenAiChat,
            ProviderFormat::Anthropic => Format::Anthropic,
            ProviderFormat::Ollama => Format::Ollama,
        };
        if n_eps < MAX_EXCLUDED {
            tried_eps[n_eps] = eidx;
            n_eps += 1;
        }
        // Where a failure before the first byte may go: another endpoint of
        // this provider first, then down the rule chain (skipping the
        // providers tried) — when attempts, deadline and budget allow it.
        let alternative = if !may_retry(ctx) {
            None
        } else if balance::has_untried(core, pidx, &tried_eps[..n_eps]) {
            Some((pidx, rewrite.clone()))
        } else if forced.is_none() {
            route_healthy(core, ctx, parsed, &tried_buf[..n_tried]).ok()
        } else {
            None
        };
        let attempt_start_ns = if ctx.trace.is_some() {
            super::telemetry::now_ns()
        } else {
            0
        };
        let (span_id, traceparent) = match &ctx.trace {
            Some(t) => {
                let (id, tp) = super::telemetry::attempt(core, t);
                (id, Some(tp))
            }
            None => ([0; 8], None),
        };
        let plan = Plan {
            pidx,
            eidx,
            client,
            upstream,
            passthrough: upstream == client,
            include_usage: parsed.include_usage,
            traceparent,
        };
        let mut up_req = std::mem::take(&mut conn.up_req);
        let mut resp = std::mem::take(&mut conn.up_resp);
        let mut up_body = std::mem::take(&mut conn.up_body);
        up_req.clear();
        resp.clear();
        up_body.clear();
        let result = async {
            if provider.scheme == Scheme::Https && !snap.tls_ready(pidx) {
                return Err(RouterError::upstream_connect(
                    &provider.name,
                    &snap.eps[eidx].target.display,
                    "TLS is not available for this provider",
                ));
            }
            build(
                core,
                req,
                &plan,
                parsed,
                body,
                rewrite.as_deref(),
                sent_model,
                &mut up_req,
            )?;
            upstream_call(
                core,
                conn,
                req,
                ctx,
                run,
                &plan,
                alternative.is_some(),
                &mut up_req,
                &mut resp,
                &mut up_body,
            )
            .await
        }
        .await;
        conn.up_req = up_req;
        conn.up_resp = resp;
        conn.up_body = up_body;
        let ms = started.elapsed().as_millis() as u64;
        match (result, alternative) {
            (Err(e), Some(alt)) if e.failover => {
                ctx.attempt_outcomes.push((Some(eidx), outcome_of(&e), ms));
                ctx.span_mark(span_id, attempt_start_ns);
                core.budget_retries.set(core.budget_retries.get() + 1);
                // The next attempt starts clean.
                ctx.status = 0;
                ctx.error = None;
                ctx.ttft_ms = None;
                next = alt;
            }
            (Ok(Answered::Stream(relay)), _) => {
                // The attempt is recorded when the stream ends; its slot is
                // held until then.
                return Ok(Step::Stream(Box::new(Streaming {
                    relay,
                    eidx,
                    started,
                    span: (span_id, attempt_start_ns),
                    _slot: slot,
                })));
            }
            (Ok(Answered::Done(next)), _) => {
                ctx.attempt_outcomes.push((Some(eidx), "ok", ms));
                ctx.span_mark(span_id, attempt_start_ns);
                return Ok(Step::Done(next));
            }
            (Err(e), _) => {
                ctx.attempt_outcomes.push((Some(eidx), outcome_of(&e), ms));
                ctx.span_mark(span_id, attempt_start_ns);
                return Err(e);
            }
        }
    }
}

/// Providers a request's routing can skip at once (tried ones, then ejected
/// ones); more than this are not excluded.
const MAX_EXCLUDED: usize = 32;

/// Per-connection buffers larger than this are freed after use instead of
/// being kept for the next request (a 100 KB prompt would otherwise stay
/// resident in every held stream and idle connection that once carried one).
const KEEP_BUF: usize = 64 * 1024;

fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUF {
        *buf = Vec::new();
    }
}

/// The rule chain with the providers already `tried` excluded, and those
/// ejected or cooling down (passive health) too — unless that leaves no
/// candidate: then they are tried all the same (never eject them all).
fn route_healthy(
    core: &Core,
    ctx: &Ctx<'_>,
    parsed: &Parsed,
    tried: &[usize],
) -> Result<(usize, Option<String>), RouterError> {
    // On the stack: this runs for every request.
    let mut excluded = [usize::MAX; MAX_EXCLUDED];
    let mut n = tried.len().min(MAX_EXCLUDED);
    excluded[..n].copy_from_slice(&tried[..n]);
    let now = crate::observe::now_ms();
    let first_unhealthy = n;
    for i in 0..core.snap.config.providers.len() {
        if n < MAX_EXCLUDED && !tried.contains(&i) && !core.snap.provider_usable(i, now) {
            excluded[n] = i;
            n += 1;
        }
    }
    match route_request(core, ctx, parsed, &excluded[..n]) {
        Err(_) if n > first_unhealthy => {
            route_request(core, ctx, parsed, &excluded[..first_unhealthy])
        }
        r => r,
    }
}

/// Passive health: what this attempt says about endpoint `eidx`.
fn record_health(
    core: &Core,
    eidx: usize,
    sent: &Result<exchange::Reply, RouterError>,
    resp: &[u8],
) {
    let Some(health) = core.snap.eps.get(eidx).map(|e| &*e.health) else {
        return;
    };
    let server = &core.snap.config.server;
    let now = crate::observe::now_ms();
    let failed = |h: &crate::upstream::health::Health| {
        h.failure(now, server.eject_after_failures, server.eject_base_ms);
    };
    match sent {
        Err(e) if e.failover => failed(health),
        Err(_) => {}
        Ok(reply) => {
            let status = reply.head.status;
            let retry_after = reply
                .head
                .header(resp, "retry-after")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (status, retry_after) {
                (429 | 503, Some(secs)) => health.cool_down(now, secs.saturating_mul(1000)),
                (500..=599, _) => failed(health),
                _ => health.success(),
            }
        }
    }
}

/// A failed attempt's outcome, for the log line's `attempt_details`.
fn outcome_of(e: &RouterError) -> &'static str {
    match e.code {
        Some("upstream_connect_failed") => "connect_failed",
        Some("upstream_timeout") => "timeout",
        Some("upstream_status") => "retry_status",
        Some("client_closed") => "client_closed",
        _ if e.is_client_gone() => "client_closed",
        _ if e.failover => "closed_before_head",
        _ => "error",
    }
}

/// The rule chain.
fn route_request(
    core: &Core,
    ctx: &Ctx<'_>,
    parsed: &Parsed,
    exclude: &[usize],
) -> Result<(usize, Option<String>), RouterError> {
    let snap = &core.snap;
    // The tag names as a slice, on the stack unless more than 64 tags matched.
    let mut tag_buf: [&str; 64] = [""; 64];
    let overflow: Vec<&str>;
    let tags: &[&str] = if ctx.tags.len() <= tag_buf.len() {
        let mut n = 0;
        for (slot, name) in tag_buf.iter_mut().zip(ctx.tag_names()) {
            *slot = name;
            n += 1;
        }
        &tag_buf[..n]
    } else {
        overflow = ctx.tag_names().collect();
        &overflow
    };
    let input = RouteInput {
        model: &parsed.model,
        tags,
        needs_vision: parsed.has_images,
        needs_tools: parsed.has_tools,
        exclude,
    };
    let mut rng = core.rng.borrow_mut();
    match route::resolve(
        &snap.config.routers,
        &snap.config.providers,
        &snap.discovery,
        &input,
        &mut rng,
    ) {
        Some(d) => Ok((d.provider, d.model.map(str::to_string))),
        None => Err(RouterError::no_route(&parsed.model)),
    }
}

/// The upstream request for `plan` into `up_req`.
#[allow(clippy::too_many_arguments)]
fn build(
    core: &Core,
    req: &Request<'_>,
    plan: &Plan,
    parsed: &Parsed,
    body: &[u8],
    rewrite: Option<&str>,
    sent_model: String,
    up_req: &mut Vec<u8>,
) -> Result<(), RouterError> {
    if plan.passthrough {
        parse::build_upstream_request(
            core,
            req,
            body,
            plan,
            Some((&parsed.top, rewrite)),
            None,
            up_req,
        );
        return Ok(());
    }
    let provider = &core.snap.config.providers[plan.pidx];
    if let Some(why) = &parsed.canonical_error {
        return Err(RouterError::bad_request(format!(
            "cannot send this request to provider '{}' ({} format): {why}",
            provider.name,
            provider.format.as_str()
        )));
    }
    let mut canonical = match &parsed.canonical {
        Some(c) => c.clone(),
        None => translate::parse_request(plan.client, body)
            .map_err(|e| RouterError::bad_request(e.0))?,
    };
    canonical.model = sent_model;
    let mut translated = Vec::with_capacity(body.len() + 256);
    translate::write_request(plan.upstream, &canonical, &mut translated).map_err(|e| {
        RouterError::bad_request(format!(
            "cannot send this request to provider '{}': {e}",
            provider.name
        ))
    })?;
    parse::build_upstream_request(core, req, body, plan, None, Some(&translated), up_req);
    Ok(())
}

/// What an attempt's exchange came to.
// The large variant is returned once per request, into the attempt loop's
// (boxed) frame, and moved from there into the boxed `Streaming`.
#[allow(clippy::large_enum_variant)]
enum Answered {
    /// The reply went out whole.
    Done(Next),
    /// A stream's head arrived: relayed by [`serve`] after the attempt.
    Stream(relay::Stream),
}

/// The upstream exchange, then the respond phase for a buffered reply; a
/// stream is handed up once its head is here ([`Answered::Stream`]).
#[allow(clippy::too_many_arguments)]
async fn upstream_call(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    plan: &Plan,
    failover: bool,
    up_req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<Answered, RouterError> {
    let pidx = plan.pidx;
    let eidx = plan.eidx;
    let mut armed = watch::arm(conn);
    let built = Instant::now();
    let sent = exchange::send(core, &mut armed, eidx, up_req, resp).await;
    record_health(core, eidx, &sent, resp);
    // The router's share so far: everything up to the request being sent
    // (connecting is the upstream's).
    ctx.overhead_us = (built - req.t0).as_micros() as u64;
    let mut reply = sent?;
    if failover
        && core
            .snap
            .config
            .server
            .retry_on_status
            .contains(&reply.head.status)
    {
        // Another candidate will be tried: this answer goes to nobody, and
        // its connection (body unread) is closed.
        return Err(RouterError::upstream_status(
            &core.snap.config.providers[pidx].name,
            reply.head.status,
        ));
    }
    let head = reply.head.clone();
    let t_head = Instant::now();
    ctx.ttft_ms = Some(ms(t_head - req.t0));
    ctx.status = head.status;
    let ok = (200..300).contains(&head.status);
    if !ok {
        ctx.error = Some(format!("provider returned status {}", head.status));
    }
    let content_type = head.header(resp, "content-type").unwrap_or(b"");
    let starts =
        |p: &[u8]| content_type.len() >= p.len() && content_type[..p.len()].eq_ignore_ascii_case(p);
    let is_stream = starts(b"text/event-stream") || (ok && starts(b"application/x-ndjson"));

    if is_stream {
        // A held stream keeps only what relaying needs. Nothing is sent
        // upstream again once a stream's head is here (no failover after
        // it), and nothing is parsed or buffered whole: the upstream request,
        // the parse copy and the body buffer are freed, whatever their size
        // (the connection's next request makes new ones).
        *up_req = Vec::new();
        *body = Vec::new();
        conn.json_scratch = Vec::new();
        let mode = if plan.passthrough && plan.client == Format::OpenAiChat {
            StreamMode::Chat {
                parser: SseParser::new(16 << 20),
                stats: ChatStreamStats::default(),
            }
        } else if plan.passthrough {
            StreamMode::Tap(StreamTranslator::tap(plan.upstream))
        } else {
            StreamMode::Translate(StreamTranslator::new(
                plan.upstream,
                plan.client,
                plan.include_usage,
            ))
        };
        // Handed up: relayed by `serve` once the attempt's frames are gone.
        return Ok(Answered::Stream(relay::Stream {
            up: reply.up,
            head,
            armed,
            timeout: exchange::first_byte_timeout(core, pidx),
            t_head,
            mode,
            client: plan.client,
        }));
    }

    // Buffered reply: read it whole (usage and response tags go in the head).
    let read = exchange::read_body(core, &mut armed, eidx, &mut reply, resp, body).await?;
    armed.disarm();
    let t_done = Instant::now();
    if read.reusable {
        core.pools.give(eidx, reply.up);
    } else {
        drop(reply.up);
    }
    let body_bytes: &[u8] = if read.in_body_buf {
        &body[read.range.clone()]
    } else {
        &resp[read.range.clone()]
    };
    let close = !req.keep_alive;
    if plan.passthrough {
        let mut text = String::new();
        if ok && plan.client == Format::OpenAiChat {
            let (input, output, t, finish) = crate::sse::chat_response_summary(body_bytes);
            ctx.finish_reason = finish;
            ctx.input_tokens = input;
            ctx.output_tokens = output;
            text = t;
        } else if ok {
            if let Ok(r) = translate::parse_response(plan.upstream, body_bytes) {
                ctx.input_tokens = r.usage.map(|u| u.input_tokens);
                ctx.output_tokens = r.usage.map(|u| u.output_tokens);
                ctx.finish_reason = Some(r.finish.as_str().to_string());
                text = translate::response_text(&r);
            }
        } else {
            ctx.response = Some(
                String::from_utf8_lossy(&body_bytes[..body_bytes.len().min(4096)]).into_owned(),
            );
        }
        if ok {
            classify_response(core, ctx, &text);
        }
        // A plugin may replace the body: it then gets its own copy.
        let mut replaced: Option<Vec<u8>> = None;
        if !run.active.is_empty() {
            let mut own = body_bytes.to_vec();
            post_response(run, ctx, plan.client, Some(&mut own), &text, ok);
            if own != body_bytes {
                replaced = Some(own);
            }
        }
        if ok {
            ctx.response = Some(text);
        }
        let out: &[u8] = replaced.as_deref().unwrap_or(body_bytes);
        ctx.overhead_us += t_done.elapsed().as_micros() as u64;
        respond::relayed_head(conn, resp, &head, ctx, Some(out.len()), close);
        // copy: head and body leave in one write.
        conn.out.extend_from_slice(out);
    } else {
        // Cross-format: the reply (or the provider's error) in the client's format, same status.
        let mut translated = Vec::with_capacity(body_bytes.len() + 256);
        let mut text = String::new();
        if ok {
            let mut r = translate::parse_response(plan.upstream, body_bytes).map_err(|e| {
                RouterError::upstream_bad_response(&core.snap.config.providers[pidx].name, &e.0)
            })?;
            if r.created == 0 {
                r.created = ctx.ts_ms / 1000;
            }
            ctx.input_tokens = r.usage.map(|u| u.input_tokens);
            ctx.output_tokens = r.usage.map(|u| u.output_tokens);
            ctx.finish_reason = Some(r.finish.as_str().to_string());
            text = translate::response_text(&r);
            classify_response(core, ctx, &text);
            translate::write_response(plan.client, &r, &mut translated);
        } else {
            let err = translate::parse_error(plan.upstream, head.status, body_bytes);
            ctx.response = Some(err.message.clone());
            translate::write_error(plan.client, &err, None, &mut translated);
        }
        post_response(run, ctx, plan.client, Some(&mut translated), &text, ok);
        if ok {
            ctx.response = Some(text);
        }
        ctx.overhead_us += t_done.elapsed().as_micros() as u64;
        respond::own_head(
            conn,
            head.status,
            Some((resp, &head)),
            b"application/json",
            ctx,
            Some(translated.len()),
            close,
        );
        conn.out.extend_from_slice(&translated);
    }
    flush(conn, req).await.map(Answered::Done)
}

/// The response classifiers on a whole reply's text.
fn classify_response(core: &Core, ctx: &mut Ctx<'_>, text: &str) {
    if let Some(r) = &core.snap.refusal
        && r.is_match(text.as_bytes())
    {
        ctx.response_tags.push(crate::classify::REFUSAL_TAG);
    }
}

/// The plugins' `post_response` hooks.
fn post_response(
    run: &mut Run,
    ctx: &mut Ctx<'_>,
    client: Format,
    body: Option<&mut Vec<u8>>,
    text: &str,
    ok: bool,
) {
    if run.active.is_empty() {
        return;
    }
    let mut post = Post {
        client,
        body,
        text,
        ok,
        notes: &mut ctx.notes,
    };
    if plugins::post_response(&run.active, &mut post, &mut ctx.warnings) == Flow::Stop {
        run.skip_on_end = true;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A plugin's response from `on_start`/`pre_request` (or Stop without one).
#[allow(clippy::too_many_arguments)]
async fn answer_early(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    client: Format,
    parsed: &Parsed,
    early: Option<Early>,
) -> Result<Next, RouterError> {
    match early {
        None => Err(plugins::stopped_without_response()),
        Some(Early::Error(e)) => Err(e),
        Some(Early::Text(text)) => {
            let reply = ChatResponse {
                id: format!("chatcmpl-{}", ctx.id),
                model: parsed.model.clone(),
                parts: vec![Part::Text(text)],
                finish: FinishReason::Stop,
                usage: None,
                created: ctx.ts_ms / 1000,
            };
            ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
            answer_canonical(core, conn, req, ctx, run, client, parsed, reply, None).await
        }
    }
}

/// The built-in mock provider (docs/providers.md, "mock"): a canonical reply, answered like
/// any other provider's through the client format's encoders, paced by the
/// provider's `latency_ms` and `throughput_tokens_per_sec`.
async fn answer_mock(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    client: Format,
    parsed: &Parsed,
) -> Result<Next, RouterError> {
    let p = &core.snap.config.providers[ctx.provider.unwrap_or(0)];
    ctx.finish_reason = Some("stop".to_string());
    let prompt_bytes: usize = match (&parsed.chat, &parsed.canonical) {
        (Some(info), _) => info.texts().map(str::len).sum(),
        (None, Some(c)) => {
            c.system.as_ref().map_or(0, String::len)
                + c.messages
                    .iter()
                    .flat_map(|m| &m.parts)
                    .map(|p| if let Part::Text(t) = p { t.len() } else { 0 })
                    .sum::<usize>()
        }
        (None, None) => 0,
    };
    let reply = ChatResponse {
        id: format!("chatcmpl-{}", ctx.id),
        model: ctx.sent_model.clone().unwrap_or_default(),
        parts: vec![Part::Text(crate::mock::MOCK_TEXT.to_string())],
        finish: FinishReason::Stop,
        usage: Some(Usage {
            input_tokens: crate::mock::input_tokens(prompt_bytes),
            output_tokens: crate::mock::output_tokens(),
        }),
        created: ctx.ts_ms / 1000,
    };
    ctx.overhead_us = req.t0.elapsed().as_micros() as u64;
    if let Some(ms) = p.latency_ms.filter(|m| *m > 0.0) {
        monoio::time::sleep(Duration::from_micros((ms * 1000.0) as u64)).await;
    }
    let gap = p
        .throughput_tokens_per_sec
        .filter(|t| *t > 0.0)
        .map(|t| Duration::from_secs_f64(1.0 / t));
    answer_canonical(core, conn, req, ctx, run, client, parsed, reply, gap).await
}

/// Answer a canonical reply (the mock's, a plugin's) in the client's format:
/// one JSON body, or — when the client asked to stream — its events, one
/// token per `gap` when paced.
#[allow(clippy::too_many_arguments)]
async fn answer_canonical(
    core: &Core,
    conn: &mut ClientConn,
    req: &Request<'_>,
    ctx: &mut Ctx<'_>,
    run: &mut Run,
    client: Format,
    parsed: &Parsed,
    reply: ChatResponse,
    gap: Option<Duration>,
) -> Result<Next, RouterError> {
    ctx.ttft_ms = Some(ms(req.t0.elapsed()));
    ctx.status = 200;
    let text = translate::response_text(&reply);
    classify_response(core, ctx, &text);
    let close = !req.keep_alive;
    if !parsed.stream {
        ctx.input_tokens = reply.usage.map(|u| u.input_tokens);
        ctx.output_tokens = reply.usage.map(|u| u.output_tokens);
        let mut body = Vec::with_capacity(512);
        translate::write_response(client, &reply, &mut body);
        post_response(run, ctx, client, Some(&mut body), &text, true);
        ctx.response = Some(text);
        respond::own_head(
            conn,
            200,
            None,
            b"application/json",
            ctx,
            Some(body.len()),
            close,
        );
        conn.out.extend_from_slice(&body);
        return flush(conn, req).await;
    }
    // Stream heads carry what is known before the reply: no usage, no response tags.
    let tags = std::mem::take(&mut ctx.response_tags);
    respond::own_head(conn, 200, None, b"text/event-stream", ctx, None, close);
    ctx.response_tags = tags;
    let mut enc = translate::EventEncoder::new(client, parsed.include_usage);
    let mut event = Vec::with_capacity(256);
    enc.encode(
        &StreamEvent::Start {
            id: reply.id.clone(),
            model: reply.model.clone(),
            created: reply.created,
        },
        &mut event,
    );
    respond::body_piece(conn, &event);
    event.clear();
    // The mock's text goes token by token; a plugin's text as one delta.
    let pieces: Vec<&str> = if text == crate::mock::MOCK_TEXT {
        crate::mock::tokens().collect()
    } else {
        vec![text.as_str()]
    };
    for piece in pieces {
        if let Some(g) = gap {
            if conn.flush().await.is_err() {
                return Err(RouterError::client_gone());
            }
            monoio::time::sleep(g).await;
        }
        enc.encode(&StreamEvent::TextDelta(piece.to_string()), &mut event);
        respond::body_piece(conn, &event);
        event.clear();
    }
    enc.encode(&StreamEvent::Finish(reply.finish), &mut event);
    if let Some(u) = reply.usage {
        enc.encode(&StreamEvent::Usage(u), &mut event);
    }
    enc.encode(&StreamEvent::End, &mut event);
    enc.finish(&mut event);
    respond::body_piece(conn, &event);
    respond::body_end(conn);
    ctx.input_tokens = reply.usage.map(|u| u.input_tokens);
    ctx.output_tokens = reply.usage.map(|u| u.output_tokens);
    post_response(run, ctx, client, None, &text, true);
    ctx.response = Some(text);
    if conn.flush().await.is_err() {
        return Err(RouterError::client_gone());
    }
    Ok(after_reply(conn, req))
}
