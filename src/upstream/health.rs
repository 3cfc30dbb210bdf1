//! Passive health of each provider, shared by every worker (atomics only):
//! `eject_after_failures` consecutive failures (refused, reset or closed
//! before the head, first-byte timeout, 5xx) eject it for
//! `eject_base_ms` × 2^n (n = ejections in a row, at most 6); a 429 or 503
//! with `Retry-After` puts it in a cool-down for that long instead (busy is
//! not broken). When the time is up, the next request is its trial: a
//! success clears the record, a failure ejects it again for longer.
//!
//! With a `health_path`, a prober thread (off the workers) also marks an
//! endpoint down while its probe fails (llama-server answers 503 while it
//! loads a model) and brings an ejected one back when a probe succeeds.
//!
//! Records are kept per endpoint (provider name and URL) for the life of the
//! process, so a reload that keeps an endpoint keeps its health and its count
//! of requests in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Unix ms until which the provider is not a candidate.
    until_ms: AtomicU64,
    /// The active probe's verdict: down until a probe succeeds.
    probe_down: AtomicBool,
    /// Requests in flight on this endpoint, across every worker (counted
    /// only when the provider balances or limits).
    pub in_flight: AtomicU32,
    /// Ejections so far (for `check`-style reports and tests).
    pub ejected_total: AtomicU64,
}

impl Health {
    /// Whether the provider may be tried at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms.load(Ordering::Relaxed) && !self.probe_down.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn load(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What the active probe saw. A success also ends an ejection early
    /// (the endpoint has shown it is back); returns true when the verdict
    /// changed.
    pub fn probed(&self, ok: bool) -> bool {
        let was_down = self.probe_down.swap(!ok, Ordering::Relaxed);
        if ok && self.ejections.load(Ordering::Relaxed) != 0 {
            self.until_ms.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            return true;
        }
        was_down == ok
    }

    /// An attempt went well (no write unless there is something to clear).
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt failed; returns true when this failure ejected it.
    pub fn failure(&self, now_ms: u64, threshold: u32, base_ms: u64) -> bool {
        if threshold == 0 {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < threshold {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(6);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        self.until_ms
            .store(now_ms + (base_ms << n), Ordering::Relaxed);
        true
    }

    /// Busy, not broken: not a candidate for `ms`.
    pub fn cool_down(&self, now_ms: u64, ms: u64) {
        self.until_ms.fetch_max(now_ms + ms, Ordering::Relaxed);
    }
}

static REGISTRY: Mutex<Option<HashMap<String, Arc<Health>>>> = Mutex::new(None);

/// The record for an endpoint (by provider name and URL), created on first use.
pub fn for_endpoint(name: &str, address: &str) -> Arc<Health> {
    let key = format!("{name}|{address}");
    let Ok(mut reg) = REGISTRY.lock() else {
        return Arc::new(Health::default());
    };
    reg.get_or_insert_with(HashMap::new)
        .entry(key)
        .or_default()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_backs_off_and_a_success_clears_it() {
        let h = Health::default();
        assert!(!h.failure(0, 2, 1000));
        assert!(h.failure(0, 2, 1000));
        assert!(!h.usable(999) && h.usable(1000));
        // The trial fails: ejected again, twice as long.
        assert!(!h.failure(1000, 2, 1000));
        assert!(h.failure(1000, 2, 1000));
        assert!(!h.usable(2999) && h.usable(3000));
        h.success();
        assert!(!h.failure(3000, 2, 1000));
        assert!(h.failure(3000, 2, 1000));
        assert!(h.usable(4000), "back to the base back-off");
        // A cool-down only lengthens.
        h.cool_down(4000, 7000);
        assert!(!h.usable(10_999) && h.usable(11_000));
        assert!(!Health::default().failure(0, 0, 1000), "0 = never eject");
    }

    #[test]
    fn records_survive_by_name_and_address() {
        let a = for_endpoint("health-test", "127.0.0.1:1");
        let b = for_endpoint("health-test", "127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(
            &a,
            &for_endpoint("health-test", "127.0.0.1:2")
        ));
    }
}
