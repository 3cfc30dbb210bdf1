//! Which endpoint of a provider gets a request: least outstanding requests
//! with two random choices (default), prefix affinity (consistent hashing
//! with bounded load), or round robin. Pure functions of the endpoints'
//! state, so they are tested without a network.
//!
//! The affinity ring is a function of the config alone (endpoint URLs hashed
//! with a fixed function): every router process built from the same config
//! sends the same prompt prefix to the same replica, without talking to the
//! others.

use std::cell::Cell;

use crate::config::Balance;
use crate::route::Rng;

/// Points per endpoint on the ring: enough to spread keys evenly over a
/// handful of replicas, small enough to build at config load.
const POINTS_PER_ENDPOINT: usize = 160;

/// An endpoint over `1.25 ×` the mean load (this request included) spills
/// to the next one on the ring.
const LOAD_BOUND: f64 = 1.25;

/// A fixed, fast hash of bytes (eight at a time). Stable across processes
/// and builds of the same version: never seeded at random.
pub fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56)).wrapping_mul(K);
        h ^= h >> 29;
    }
    mix(h ^ bytes.len() as u64)
}

/// A final avalanche (splitmix64's), so nearby inputs land far apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The consistent-hash ring of one provider's endpoints.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, endpoint offset), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Built from the endpoints' URLs (their order in the config does not
    /// matter; adding one moves only the keys it takes over).
    pub fn new(urls: &[&str]) -> Ring {
        let mut points = Vec::with_capacity(urls.len() * POINTS_PER_ENDPOINT);
        for (i, url) in urls.iter().enumerate() {
            let base = hash_bytes(0, url.as_bytes());
            for v in 0..POINTS_PER_ENDPOINT as u64 {
                points.push((mix(base ^ v.wrapping_mul(0xD6E8_FEB8_6659_FD93)), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoint offsets in ring order from `key`, each once.
    fn walk(&self, key: u64, n: usize, mut visit: impl FnMut(usize) -> bool) {
        if self.points.is_empty() {
            return;
        }
        let start = self.points.partition_point(|&(p, _)| p < key);
        // Seen endpoints as a bit set (providers have at most 64 endpoints
        // on the ring; see `MAX_ENDPOINTS`).
        let mut seen: u64 = 0;
        let mut left = n;
        for k in 0..self.points.len() {
            let (_, e) = self.points[(start + k) % self.points.len()];
            let bit = 1u64 << (e as usize % 64);
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            if visit(e as usize) {
                return;
            }
            left -= 1;
            if left == 0 {
                return;
            }
        }
    }

    /// The endpoint a key belongs to when every endpoint is free (the
    /// "warm" replica of a prompt prefix).
    pub fn owner(&self, key: u64) -> Option<usize> {
        let mut owner = None;
        self.walk(key, usize::MAX, |e| {
            owner = Some(e);
            true
        });
        owner
    }
}

/// Most endpoints one provider may list.
pub const MAX_ENDPOINTS: usize = 64;

/// One endpoint's state as the balancer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Cand {
    /// Requests in flight (all workers).
    pub load: u32,
    /// 0 = no limit.
    pub max: u32,
    /// Not ejected, cooling down or probed down.
    pub usable: bool,
    /// Already tried by this request.
    pub tried: bool,
}

impl Cand {
    fn room(&self) -> bool {
        self.max == 0 || self.load < self.max
    }
}

/// The balancer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This endpoint (offset within the provider).
    Endpoint(usize),
    /// Every endpoint left has all its slots busy.
    Full,
    /// Every endpoint was tried already.
    Exhausted,
}

/// Pick an endpoint among `cands`. Healthy untried endpoints with a free
/// slot are preferred; when none is healthy, unhealthy ones are tried all
/// the same (never eject them all).
pub fn choose(
    balance: Balance,
    cands: &[Cand],
    key: Option<u64>,
    ring: Option<&Ring>,
    rr: &Cell<usize>,
    rng: &mut Rng,
) -> Choice {
    let untried = cands.iter().filter(|c| !c.tried).count();
    if untried == 0 {
        return Choice::Exhausted;
    }
    let any_usable = cands.iter().any(|c| !c.tried && c.usable);
    let eligible = |c: &Cand| !c.tried && c.room() && (c.usable || !any_usable);
    let m = cands.iter().filter(|c| eligible(c)).count();
    if m == 0 {
        return Choice::Full;
    }
    let nth = |k: usize| {
        cands
            .iter()
            .enumerate()
            .filter(|(_, c)| eligible(c))
            .nth(k)
            .map_or(0, |(i, _)| i)
    };
    if m == 1 {
        return Choice::Endpoint(nth(0));
    }
    match (balance, key, ring) {
        (Balance::RoundRobin, _, _) => {
            let turn = rr.get();
            rr.set(turn.wrapping_add(1));
            Choice::Endpoint(nth(turn % m))
        }
        (Balance::PrefixAffinity, Some(key), Some(ring)) => {
            let total: u64 = cands
                .iter()
                .filter(|c| eligible(c))
                .map(|c| u64::from(c.load))
                .sum();
            let cap = (LOAD_BOUND * (total + 1) as f64 / m as f64).ceil() as u64;
            let mut first = None;
            let mut within = None;
            ring.walk(key, cands.len(), |e| {
                let Some(c) = cands.get(e) else {
                    return false;
                };
                if !eligible(c) {
                    return false;
                }
                first.get_or_insert(e);
                if u64::from(c.load) < cap {
                    within = Some(e);
                    return true;
                }
                false
            });
            Choice::Endpoint(within.or(first).unwrap_or_else(|| nth(0)))
        }
        _ => {
            // Two random choices among the eligible; the less loaded wins.
            let a = rng.below(m);
            let mut b = rng.below(m - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a), nth(b));
            if cands[b].load < cands[a].load {
                Choice::Endpoint(b)
            } else {
                Choice::Endpoint(a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(n: usize) -> Vec<Cand> {
        vec![
            Cand {
                load: 0,
                max: 0,
                usable: true,
                tried: false,
            };
            n
        ]
    }

    #[test]
    fn the_hash_is_fixed() {
        // A changed hash would move every prompt to another replica after an
        // upgrade: this pins it.
        assert_eq!(hash_bytes(0, b""), mix(0));
        assert_eq!(hash_bytes(0, b"abc"), hash_bytes(0, b"abc"));
        assert_ne!(hash_bytes(0, b"abc"), hash_bytes(0, b"abd"));
        assert_ne!(hash_bytes(0, b"abcdefgh"), hash_bytes(0, b"abcdefgh\0"));
    }

    #[test]
    fn the_ring_depends_on_urls_not_their_order() {
        let a = Ring::new(&["http://a", "http://b", "http://c"]);
        let b = Ring::new(&["http://c", "http://a", "http://b"]);
        let name = |r: &Ring, order: &[&str], k| order[r.owner(k).unwrap()].to_string();
        for k in 0..200u64 {
            let key = mix(k);
            assert_eq!(
                name(&a, &["http://a", "http://b", "http://c"], key),
                name(&b, &["http://c", "http://a", "http://b"], key)
            );
        }
    }

    #[test]
    fn keys_spread_over_the_ring() {
        let ring = Ring::new(&["http://a", "http://b", "http://c"]);
        let mut count = [0usize; 3];
        for k in 0..30_000u64 {
            count[ring.owner(mix(k)).unwrap()] += 1;
        }
        for c in count {
            assert!((7_000..13_000).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn affinity_sticks_until_the_load_bound_then_spills() {
        let ring = Ring::new(&["http://a", "http://b", "http://c"]);
        let key = hash_bytes(0, b"system prompt");
        let owner = ring.owner(key).unwrap();
        let rr = Cell::new(0);
        let mut rng = Rng::new(1);
        let mut c = free(3);
        assert_eq!(
            choose(
                Balance::PrefixAffinity,
                &c,
                Some(key),
                Some(&ring),
                &rr,
                &mut rng
            ),
            Choice::Endpoint(owner)
        );
        // Loads 2,0,0 (owner busy): mean with this one = 1, cap = ceil(1.25) = 2.
        c[owner].load = 2;
        let got = choose(
            Balance::PrefixAffinity,
            &c,
            Some(key),
            Some(&ring),
            &rr,
            &mut rng,
        );
        assert_ne!(got, Choice::Endpoint(owner), "above the bound spills");
        // Everyone equally busy: back to the owner.
        for x in &mut c {
            x.load = 4;
        }
        assert_eq!(
            choose(
                Balance::PrefixAffinity,
                &c,
                Some(key),
                Some(&ring),
                &rr,
                &mut rng
            ),
            Choice::Endpoint(owner)
        );
        // The owner ejected: another one, and always the same one.
        c[owner].usable = false;
        let next = choose(
            Balance::PrefixAffinity,
            &c,
            Some(key),
            Some(&ring),
            &rr,
            &mut rng,
        );
        assert_ne!(next, Choice::Endpoint(owner));
        assert_eq!(
            choose(
                Balance::PrefixAffinity,
                &c,
                Some(key),
                Some(&ring),
                &rr,
                &mut rng
            ),
            next
        );
    }

    #[test]
    fn least_outstanding_prefers_the_idle_endpoint() {
        let rr = Cell::new(0);
        let mut rng = Rng::new(7);
        let mut c = free(2);
        c[0].load = 5;
        for _ in 0..50 {
            assert_eq!(
                choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
                Choice::Endpoint(1)
            );
        }
        // Among three, the busiest is never picked by two choices.
        let mut c = free(3);
        c[2].load = 9;
        for _ in 0..100 {
            assert_ne!(
                choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
                Choice::Endpoint(2)
            );
        }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_the_unusable() {
        let rr = Cell::new(0);
        let mut rng = Rng::new(1);
        let mut c = free(3);
        let picks: Vec<_> = (0..6)
            .map(|_| choose(Balance::RoundRobin, &c, None, None, &rr, &mut rng))
            .collect();
        let e = Choice::Endpoint;
        assert_eq!(picks, [e(0), e(1), e(2), e(0), e(1), e(2)]);
        c[1].usable = false;
        for _ in 0..4 {
            assert_ne!(
                choose(Balance::RoundRobin, &c, None, None, &rr, &mut rng),
                e(1)
            );
        }
    }

    #[test]
    fn limits_full_exhausted_and_never_eject_them_all() {
        let rr = Cell::new(0);
        let mut rng = Rng::new(1);
        let mut c = free(2);
        for x in &mut c {
            x.max = 1;
            x.load = 1;
        }
        assert_eq!(
            choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
            Choice::Full
        );
        c[1].load = 0;
        assert_eq!(
            choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
            Choice::Endpoint(1)
        );
        // All unhealthy: one is tried all the same.
        let mut c = free(2);
        c[0].usable = false;
        c[1].usable = false;
        assert!(matches!(
            choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
            Choice::Endpoint(_)
        ));
        c[0].tried = true;
        c[1].tried = true;
        assert_eq!(
            choose(Balance::LeastOutstanding, &c, None, None, &rr, &mut rng),
            Choice::Exhausted
        );
    }
}
