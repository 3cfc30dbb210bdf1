//! The rule chain (docs/routing.md): an ordered list of [`Rule`]s walked top to bottom;
//! the first rule that resolves picks the provider and the model to send.
//!
//! Rules refer to providers by index into `Config::providers`; skipped
//! providers are never candidates.
//!
//! - [`resolve`] walks the chain for one request on per-core data: no
//!   allocation, no lock; the only mutable state is the worker's [`Rng`].
//! - [`Discovery`] holds what Ollama providers reported at startup; it is
//!   filled by [`discover()`] on the control thread, never on a worker.
//! - [`known_models`] lists the model names the chain knows (`GET /v1/models`).
//!
//! The user-facing description of every rule is `docs/routing.md`.

pub mod discover;
mod discovery;

use std::collections::HashSet;

use crate::config::Provider;

pub use crate::config::Rule;
pub use discover::{discover, discover_providers};
pub use discovery::Discovery;

/// What routing needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// The model the client asked for.
    pub model: &'a str,
    /// Request tags (classifiers), deduplicated.
    pub tags: &'a [&'a str],
    /// The request carries images (needs the `vision` capability).
    pub needs_vision: bool,
    /// The request declares tools (needs the `tools` capability).
    pub needs_tools: bool,
    /// Providers already tried for this request (failover): never candidates.
    pub exclude: &'a [usize],
}

/// The outcome of a resolving rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Index into `Config::providers`.
    pub provider: usize,
    /// The model to send; `None` = send the requested model unchanged.
    pub model: Option<&'a str>,
    /// Index of the rule that resolved, in the chain.
    pub rule_index: usize,
}

impl<'a> Decision<'a> {
    /// The model actually sent upstream: the rewrite, or `requested`.
    pub fn sent_model<'s>(&self, requested: &'s str) -> &'s str
    where
        'a: 's,
    {
        self.model.unwrap_or(requested)
    }
}

/// Per-core xorshift-style RNG (no locks, seeded per worker): xorshift64*
/// over a splitmix64-scrambled seed, so seeds 0, 1, 2… (worker ids) give
/// unrelated streams. Not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift's state must never be zero.
        Rng(if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform index in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        // Multiply-shift reduction: the bias is at most n / 2^64.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Walks the chain; `None` when every rule passes (the caller answers 400
/// `no provider configured for model '<model>'`).
///
/// Per rule, the candidates are the providers it names (or all providers),
/// minus skipped ones, minus — when discovery knows the capabilities of the
/// (provider, model that would be sent) — those lacking `vision` / `tools`
/// that the request needs. Ties break by candidate order: the rule's
/// `providers` list as written, or `[[providers]]` order when omitted.
pub fn resolve<'a>(
    rules: &'a [Rule],
    providers: &[Provider],
    discovery: &'a Discovery,
    input: &RouteInput<'_>,
    rng: &mut Rng,
) -> Option<Decision<'a>> {
    let ctx = Ctx {
        providers,
        discovery,
        input,
    };
    rules.iter().enumerate().find_map(|(rule_index, rule)| {
        let (provider, model) = ctx.resolve_rule(rule, rng)?;
        Some(Decision {
            provider,
            model,
            rule_index,
        })
    })
}

/// One request's view of the providers while walking the chain.
struct Ctx<'c> {
    providers: &'c [Provider],
    discovery: &'c Discovery,
    input: &'c RouteInput<'c>,
}

impl Ctx<'_> {
    /// Resolves one rule to (provider, rewritten model), or passes (`None`).
    fn resolve_rule<'a>(&self, rule: &'a Rule, rng: &mut Rng) -> Option<(usize, Option<&'a str>)> {
        match rule {
            Rule::Prefix {
                model_prefix,
                provider,
                rewrite_model,
            } => {
                let model = rewrite_model.as_deref();
                (self.input.model.starts_with(model_prefix.as_str())
                    && self.usable(*provider, model))
                .then_some((*provider, model))
            }
            Rule::Tag {
                tag,
                provider,
                rewrite_model,
            } => {
                let model = rewrite_model.as_deref();
                (self.input.tags.contains(&tag.as_str()) && self.usable(*provider, model))
                    .then_some((*provider, model))
            }
            Rule::Discover { provider } => (self.discovery.has_model(*provider, self.input.model)
                && self.usable(*provider, None))
            .then_some((*provider, None)),
            Rule::Price {
                providers,
                max_cost_per_1m_tokens: max,
            } => {
                let key = |p: &Provider| {
                    let cost = p.cost_per_1m_tokens;
                    max.is_none_or(|max| cost <= max).then_some(cost)
                };
                self.best(providers, None, key, Better::Lower)
                    .map(|p| (p, None))
            }
            Rule::Latency {
                providers,
                max_latency_ms: max,
            } => {
                let key = |p: &Provider| p.latency_ms.filter(|&ms| max.is_none_or(|max| ms <= max));
                self.best(providers, None, key, Better::Lower)
                    .map(|p| (p, None))
            }
            Rule::Throughput {
                providers,
                min_tokens_per_sec: min,
            } => {
                let key = |p: &Provider| {
                    p.throughput_tokens_per_sec
                        .filter(|&tps| min.is_none_or(|min| tps >= min))
                };
                self.best(providers, None, key, Better::Higher)
                    .map(|p| (p, None))
            }
            Rule::Fallback {
                providers,
                quality_bias,
                rewrite_model,
            } => {
                let bias = *quality_bias;
                let key =
                    |p: &Provider| Some(bias * p.quality - (1.0 - bias) * p.cost_per_1m_tokens);
                let model = rewrite_model.as_deref();
                self.best(providers, model, key, Better::Higher)
                    .map(|p| (p, model))
            }
            Rule::Random {
                providers,
                rewrite_model,
                candidates,
            } if candidates.is_empty() => {
                let model = rewrite_model.as_deref();
                let eligible = || {
                    candidate_list(providers, self.providers.len())
                        .filter(|&p| self.usable(p, model))
                };
                let n = eligible().count();
                if n == 0 {
                    return None;
                }
                let pick = rng.below(n);
                eligible().nth(pick).map(|p| (p, model))
            }
            Rule::Random { candidates, .. } => {
                let eligible = || {
                    candidates
                        .iter()
                        .filter(|(p, m)| self.usable(*p, Some(m.as_str())))
                };
                let n = eligible().count();
                if n == 0 {
                    return None;
                }
                let pick = rng.below(n);
                eligible().nth(pick).map(|(p, m)| (*p, Some(m.as_str())))
            }
        }
    }

    /// Whether `provider` exists, is not skipped, and — when discovery knows
    /// the capabilities of the model that would be sent — has those the
    /// request needs. `model`: the rewrite, `None` = the requested model.
    fn usable(&self, provider: usize, model: Option<&str>) -> bool {
        if !self.providers.get(provider).is_some_and(Provider::active)
            || self.input.exclude.contains(&provider)
        {
            return false;
        }
        let input = self.input;
        if !input.needs_vision && !input.needs_tools {
            return true;
        }
        let model = model.unwrap_or(input.model);
        match self.discovery.capabilities(provider, model) {
            None => true,
            Some(caps) => {
                let has = |c: &str| caps.iter().any(|x| x == c);
                (!input.needs_vision || has("vision")) && (!input.needs_tools || has("tools"))
            }
        }
    }

    /// The usable candidate with the best `key` (`None` key = not a
    /// candidate); the first in candidate order wins a tie.
    fn best(
        &self,
        providers: &Option<Vec<usize>>,
        model: Option<&str>,
        key: impl Fn(&Provider) -> Option<f64>,
        better: Better,
    ) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for index in candidate_list(providers, self.providers.len()) {
            let Some(provider) = self.providers.get(index) else {
                continue;
            };
            let Some(value) = key(provider).filter(|v| !v.is_nan()) else {
                continue;
            };
            let wins = match best {
                None => true,
                Some((_, current)) => match better {
                    Better::Lower => value < current,
                    Better::Higher => value > current,
                },
            };
            if wins && self.usable(index, model) {
                best = Some((index, value));
            }
        }
        best.map(|(index, _)| index)
    }
}

#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

/// A rule's candidate provider indices: its `providers` list in the order
/// written, or every provider in config order.
fn candidate_list(list: &Option<Vec<usize>>, n_providers: usize) -> Candidates<'_> {
    match list {
        Some(list) => Candidates::Listed(list.iter()),
        None => Candidates::All(0..n_providers),
    }
}

enum Candidates<'r> {
    Listed(std::slice::Iter<'r, usize>),
    All(std::ops::Range<usize>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Listed(it) => it.next().copied(),
            Candidates::All(range) => range.next(),
        }
    }
}

/// Model names the chain knows, for `GET /v1/models`: rewrite targets
/// (`prefix`, `tag`, `fallback`, `random`), `random` candidate models, and
/// the models each `discover` rule's provider reported — in rule order,
/// first occurrence kept.
pub fn known_models(rules: &[Rule], discovery: &Discovery) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for rule in rules {
        match rule {
            Rule::Prefix { rewrite_model, .. }
            | Rule::Tag { rewrite_model, .. }
            | Rule::Fallback { rewrite_model, .. } => names.extend(rewrite_model.as_deref()),
            Rule::Random {
                rewrite_model,
                candidates,
                ..
            } => {
                if candidates.is_empty() {
                    names.extend(rewrite_model.as_deref());
                } else {
                    names.extend(candidates.iter().map(|(_, m)| m.as_str()));
                }
            }
            Rule::Discover { provider } => {
                names.extend(discovery.models(*provider).iter().map(String::as_str));
            }
            Rule::Price { .. } | Rule::Latency { .. } | Rule::Throughput { .. } => {}
        }
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for name in names {
        if !name.is_empty() && seen.insert(name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests;
