//! Picking the endpoint of a provider for one attempt: the balancer
//! (`upstream::balance`) over the endpoints' health and load, a slot held
//! while the attempt lasts (requests in flight, counted across workers), and
//! the bounded wait when every endpoint of the provider is full.
//!
//! A provider with one endpoint and no `max_in_flight` skips all of it: no
//! counter is touched and no key is hashed.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Core;
use super::parse::Parsed;
use super::request::Request;
use crate::config::{Balance, Provider};
use crate::error::RouterError;
use crate::upstream::balance::{Cand, Choice, MAX_ENDPOINTS, choose, hash_bytes};
use crate::upstream::health::Health;

/// How often a queued request looks again when no slot was freed on its own
/// core (a slot freed on another worker does not wake it).
const QUEUE_RECHECK: Duration = Duration::from_millis(5);

/// Tasks of one core waiting for a slot of one provider.
#[derive(Default)]
pub struct Waiters {
    wakers: RefCell<Vec<Waker>>,
}

impl Waiters {
    /// Wake every waiter (they look again; one gets the slot).
    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    fn wait(&self) -> Woken<'_> {
        Woken {
            waiters: self,
            registered: false,
        }
    }
}

/// Ready after one wake-up (or a spurious poll: the caller looks again).
struct Woken<'a> {
    waiters: &'a Waiters,
    registered: bool,
}

impl Future for Woken<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.registered = true;
        self.waiters.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A request in flight on an endpoint: released when the attempt ends
/// (dropped), waking this core's queued requests for the provider.
pub struct Slot<'c> {
    health: &'c Health,
    waiters: &'c Waiters,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.waiters.wake_all();
    }
}

/// The affinity key of a request for `provider`: the configured header's
/// value when the request has it, else the first `affinity_prefix_bytes` of
/// the prompt (the system prompt, then the conversation's bytes) — the same
/// bytes for the same leading prompt, whatever else follows.
pub fn affinity_key(provider: &Provider, req: &Request<'_>, parsed: &Parsed, body: &[u8]) -> u64 {
    if let Some(value) = provider
        .affinity_header
        .as_deref()
        .and_then(|h| req.header(h))
    {
        return hash_bytes(1, value);
    }
    let mut left = provider.affinity_prefix_bytes;
    let mut h = 0;
    // OpenAI chat keeps its system prompt inside `messages`: hashed there.
    if parsed.chat.is_none()
        && let Some(system) = &parsed.system
    {
        let s = &system.as_bytes()[..system.len().min(left)];
        h = hash_bytes(h, s);
        left -= s.len();
    }
    if left > 0
        && let Some(r) = &parsed.messages
        && r.start <= r.end
        && r.end <= body.len()
    {
        h = hash_bytes(h, &body[r.start..r.end.min(r.start + left)]);
    }
    h
}

/// The endpoint an attempt goes to.
pub struct Picked<'c> {
    /// Global endpoint index.
    pub eidx: usize,
    /// Held while the attempt lasts (None when the provider is not counted).
    pub slot: Option<Slot<'c>>,
    /// How long the request waited in the queue for a slot, if it did.
    pub queued_ms: Option<u64>,
}

/// An endpoint of provider `pidx` not in `tried` (global endpoint indexes),
/// with its slot. When every endpoint is full the request waits up to
/// `queue_timeout_ms` if the provider's queue has room; then 503 with
/// `Retry-After`.
pub async fn pick<'c>(
    core: &'c Core,
    pidx: usize,
    tried: &[usize],
    key: impl FnOnce() -> u64,
) -> Result<Picked<'c>, RouterError> {
    let snap = &core.snap;
    let provider = &snap.config.providers[pidx];
    let range = snap.endpoints_of(pidx);
    if !provider.counts_load() {
        // One endpoint, no limit: nothing to count or choose.
        return Ok(Picked {
            eidx: range.start,
            slot: None,
            queued_ms: None,
        });
    }
    let key = (provider.balance == Balance::PrefixAffinity).then(key);
    let mut queued = false;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_millis(provider.queue_timeout_ms);
    let result = loop {
        match try_pick(core, pidx, tried, key) {
            Ok((eidx, slot)) => {
                break Ok(Picked {
                    eidx,
                    slot,
                    queued_ms: queued.then(|| t0.elapsed().as_millis() as u64),
                });
            }
            Err(Choice::Full) => {}
            Err(_) => break Err(RouterError::no_route(&provider.name)),
        }
        if !queued {
            let waiting = snap.queued[pidx].fetch_add(1, Ordering::Relaxed);
            queued = true;
            if waiting >= provider.queue_size {
                break Err(overloaded(provider, "its queue is full"));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(overloaded(
                provider,
                "no slot was freed within queue_timeout_ms",
            ));
        }
        let wait = (deadline - now).min(QUEUE_RECHECK);
        let _ = monoio::time::timeout(wait, core.waiters[pidx].wait()).await;
    };
    if queued {
        snap.queued[pidx].fetch_sub(1, Ordering::Relaxed);
    }
    result
}

fn overloaded(provider: &Provider, why: &str) -> RouterError {
    RouterError::overloaded(
        &format!(
            "every endpoint of provider '{}' is at max_in_flight and {why}",
            provider.name
        ),
        provider.queue_timeout_ms.div_ceil(1000).max(1),
    )
}

/// One look at the endpoints: a slot, or why not (`Full`, `Exhausted`).
fn try_pick<'c>(
    core: &'c Core,
    pidx: usize,
    tried: &[usize],
    key: Option<u64>,
) -> Result<(usize, Option<Slot<'c>>), Choice> {
    let snap = &core.snap;
    let provider = &snap.config.providers[pidx];
    let range = snap.endpoints_of(pidx);
    let eps = &snap.eps[range.clone()];
    let now = crate::observe::now_ms();
    let mut cands = [Cand {
        load: 0,
        max: 0,
        usable: false,
        tried: true,
    }; MAX_ENDPOINTS];
    let n = eps.len().min(MAX_ENDPOINTS);
    for (i, (c, e)) in cands.iter_mut().zip(eps).enumerate() {
        *c = Cand {
            load: e.health.load(),
            max: e.max_in_flight,
            usable: e.health.usable(now),
            tried: tried.contains(&(range.start + i)),
        };
    }
    // A slot taken between the look and the claim (another worker) makes
    // the claim fail: look again, a few times.
    for _ in 0..4 {
        let choice = {
            let mut rng = core.rng.borrow_mut();
            choose(
                provider.balance,
                &cands[..n],
                key,
                snap.rings[pidx].as_ref(),
                &core.rr[pidx],
                &mut rng,
            )
        };
        let Choice::Endpoint(off) = choice else {
            return Err(choice);
        };
        let e = &eps[off];
        let before = e.health.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            health: &e.health,
            waiters: &core.waiters[pidx],
        };
        if e.max_in_flight == 0 || before < e.max_in_flight {
            return Ok((range.start + off, Some(slot)));
        }
        drop(slot);
        cands[off].load = before;
    }
    Err(Choice::Full)
}

/// Whether provider `pidx` has a healthy endpoint left to try (not in
/// `tried`): failover goes there before it goes down the rule chain.
pub fn has_untried(core: &Core, pidx: usize, tried: &[usize]) -> bool {
    let snap = &core.snap;
    let range = snap.endpoints_of(pidx);
    if range.len() < 2 {
        return false;
    }
    let now = crate::observe::now_ms();
    let untried = || range.clone().filter(|i| !tried.contains(i));
    untried().any(|i| snap.eps[i].health.usable(now))
}
