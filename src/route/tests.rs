//! Rule-chain tests: providers and rules are built directly, no config file.

use super::*;
use crate::config::{ProviderFormat, Scheme};

/// A plain active provider; tests adjust the fields they care about.
pub(crate) fn provider(name: &str, cost: f64, quality: f64) -> Provider {
    Provider {
        name: name.to_string(),
        format: ProviderFormat::OpenAi,
        base_url: format!("http://{name}.test/v1"),
        scheme: Scheme::Http,
        host: format!("{name}.test"),
        port: 80,
        base_path: "/v1".to_string(),
        host_header: format!("{name}.test"),
        api_key_env: None,
        api_key: None,
        cost_per_1m_tokens: cost,
        quality,
        latency_ms: None,
        throughput_tokens_per_sec: None,
        skipped: None,
        first_byte_timeout_ms: None,
        responses: false,
        ca_file: None,
        endpoints: vec![crate::config::Endpoint {
            url: format!("http://{name}.test/v1"),
            scheme: Scheme::Http,
            host: format!("{name}.test"),
            port: 80,
            base_path: "/v1".to_string(),
            host_header: format!("{name}.test"),
            max_in_flight: 0,
        }],
        balance: crate::config::Balance::LeastOutstanding,
        affinity_header: None,
        affinity_prefix_bytes: 4096,
        queue_size: 0,
        queue_timeout_ms: 5000,
        health_path: None,
        health_interval_ms: 5000,
    }
}

fn skipped(mut p: Provider) -> Provider {
    p.skipped = Some("KEY is not set".to_string());
    p
}

fn with_latency(mut p: Provider, ms: f64) -> Provider {
    p.latency_ms = Some(ms);
    p
}

fn with_throughput(mut p: Provider, tps: f64) -> Provider {
    p.throughput_tokens_per_sec = Some(tps);
    p
}

fn input<'a>(model: &'a str, tags: &'a [&'a str]) -> RouteInput<'a> {
    RouteInput {
        model,
        tags,
        needs_vision: false,
        needs_tools: false,
        exclude: &[],
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// Resolves with an empty discovery; (provider, sent model, rule index).
fn route(
    rules: &[Rule],
    providers: &[Provider],
    input: &RouteInput<'_>,
) -> Option<(usize, String, usize)> {
    let discovery = Discovery::empty(providers.len());
    route_with(rules, providers, &discovery, input)
}

fn route_with(
    rules: &[Rule],
    providers: &[Provider],
    discovery: &Discovery,
    input: &RouteInput<'_>,
) -> Option<(usize, String, usize)> {
    let mut rng = Rng::new(7);
    let d = resolve(rules, providers, discovery, input, &mut rng)?;
    Some((
        d.provider,
        d.sent_model(input.model).to_string(),
        d.rule_index,
    ))
}

fn three() -> Vec<Provider> {
    vec![
        provider("a", 3.0, 70.0),
        provider("b", 1.0, 60.0),
        provider("c", 2.0, 90.0),
    ]
}

// --- prefix -----------------------------------------------------------------

#[test]
fn prefix_matches_start_of_model_and_rewrites() {
    let providers = three();
    let rules = vec![
        Rule::Prefix {
            model_prefix: "local/".into(),
            provider: 1,
            rewrite_model: some("llama3.2-3b"),
        },
        Rule::Prefix {
            model_prefix: "gpt-".into(),
            provider: 2,
            rewrite_model: None,
        },
    ];
    assert_eq!(
        route(&rules, &providers, &input("local/x", &[])),
        Some((1, "llama3.2-3b".into(), 0))
    );
    assert_eq!(
        route(&rules, &providers, &input("gpt-4o", &[])),
        Some((2, "gpt-4o".into(), 1))
    );
    // Prefix, not substring; case-sensitive.
    assert_eq!(route(&rules, &providers, &input("my-gpt-4o", &[])), None);
    assert_eq!(route(&rules, &providers, &input("GPT-4o", &[])), None);
}

#[test]
fn prefix_model_none_means_unchanged() {
    let providers = three();
    let rules = vec![Rule::Prefix {
        model_prefix: "".into(),
        provider: 0,
        rewrite_model: None,
    }];
    let discovery = Discovery::empty(3);
    let d = resolve(
        &rules,
        &providers,
        &discovery,
        &input("anything", &[]),
        &mut Rng::new(1),
    )
    .unwrap();
    assert_eq!(
        d,
        Decision {
            provider: 0,
            model: None,
            rule_index: 0
        }
    );
}

#[test]
fn prefix_to_skipped_provider_passes() {
    let providers = vec![skipped(provider("a", 0.0, 0.0)), provider("b", 0.0, 0.0)];
    let rules = vec![
        Rule::Prefix {
            model_prefix: "m".into(),
            provider: 0,
            rewrite_model: None,
        },
        Rule::Prefix {
            model_prefix: "m".into(),
            provider: 1,
            rewrite_model: None,
        },
    ];
    assert_eq!(
        route(&rules, &providers, &input("model", &[])),
        Some((1, "model".into(), 1))
    );
}

// --- tag --------------------------------------------------------------------

#[test]
fn tag_matches_exact_tag() {
    let providers = three();
    let rules = vec![
        Rule::Tag {
            tag: "code".into(),
            provider: 2,
            rewrite_model: some("deepseek-r1:latest"),
        },
        Rule::Tag {
            tag: "vision".into(),
            provider: 1,
            rewrite_model: None,
        },
    ];
    assert_eq!(
        route(&rules, &providers, &input("m", &["nsfw", "code"])),
        Some((2, "deepseek-r1:latest".into(), 0))
    );
    assert_eq!(
        route(&rules, &providers, &input("m", &["vision"])),
        Some((1, "m".into(), 1))
    );
    assert_eq!(
        route(&rules, &providers, &input("m", &["cod", "Code"])),
        None
    );
    assert_eq!(route(&rules, &providers, &input("m", &[])), None);
}

#[test]
fn tag_to_skipped_provider_passes() {
    let providers = vec![skipped(provider("a", 0.0, 0.0))];
    let rules = vec![Rule::Tag {
        tag: "code".into(),
        provider: 0,
        rewrite_model: None,
    }];
    assert_eq!(route(&rules, &providers, &input("m", &["code"])), None);
}

// --- discover ---------------------------------------------------------------

#[test]
fn discover_resolves_known_models_only() {
    let mut providers = three();
    providers.push(skipped(provider("d", 0.0, 0.0)));
    let mut discovery = Discovery::empty(4);
    discovery.insert(
        1,
        vec![("llama3.2:latest".into(), None), ("qwen3:8b".into(), None)],
    );
    discovery.insert(3, vec![("other".into(), None)]);
    let rules = vec![
        Rule::Discover { provider: 3 },
        Rule::Discover { provider: 1 },
    ];
    let r = |m: &str| route_with(&rules, &providers, &discovery, &input(m, &[]));
    assert_eq!(r("qwen3:8b"), Some((1, "qwen3:8b".into(), 1)));
    // Ollama's short form: sent unchanged, Ollama resolves it.
    assert_eq!(r("llama3.2"), Some((1, "llama3.2".into(), 1)));
    assert_eq!(r("qwen3"), None);
    // Provider 3 knows "other" but is skipped.
    assert_eq!(r("other"), None);
    // Discovery failed (empty): the rule passes.
    assert_eq!(route(&rules, &providers, &input("qwen3:8b", &[])), None);
}

// --- price ------------------------------------------------------------------

#[test]
fn price_picks_cheapest_under_ceiling() {
    let providers = three(); // costs a=3, b=1, c=2
    let all = |max| {
        vec![Rule::Price {
            providers: None,
            max_cost_per_1m_tokens: max,
        }]
    };
    assert_eq!(
        route(&all(None), &providers, &input("m", &[])),
        Some((1, "m".into(), 0))
    );
    assert_eq!(
        route(&all(Some(1.0)), &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
    assert_eq!(route(&all(Some(0.5)), &providers, &input("m", &[])), None);
    let listed = vec![Rule::Price {
        providers: Some(vec![0, 2]),
        max_cost_per_1m_tokens: Some(5.0),
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    let listed = vec![Rule::Price {
        providers: Some(vec![0, 2]),
        max_cost_per_1m_tokens: Some(2.5),
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
}

#[test]
fn price_skips_skipped_and_breaks_ties_in_order() {
    let providers = vec![
        skipped(provider("free", 0.0, 0.0)),
        provider("x", 1.0, 0.0),
        provider("y", 1.0, 0.0),
    ];
    let all = vec![Rule::Price {
        providers: None,
        max_cost_per_1m_tokens: None,
    }];
    assert_eq!(
        route(&all, &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
    // With a list, its order breaks the tie.
    let listed = vec![Rule::Price {
        providers: Some(vec![2, 1]),
        max_cost_per_1m_tokens: None,
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    let only_skipped = vec![Rule::Price {
        providers: Some(vec![0]),
        max_cost_per_1m_tokens: None,
    }];
    assert_eq!(route(&only_skipped, &providers, &input("m", &[])), None);
}

// --- latency ----------------------------------------------------------------

#[test]
fn latency_picks_lowest_among_providers_with_it() {
    let providers = vec![
        provider("none", 0.0, 0.0),
        with_latency(provider("slow", 0.0, 0.0), 900.0),
        with_latency(provider("fast", 0.0, 0.0), 120.0),
        with_latency(skipped(provider("fastest", 0.0, 0.0)), 10.0),
        with_latency(provider("fast-too", 0.0, 0.0), 120.0),
    ];
    let rule = |max| {
        vec![Rule::Latency {
            providers: None,
            max_latency_ms: max,
        }]
    };
    assert_eq!(
        route(&rule(None), &providers, &input("m", &[])),
        Some((2, "m".into(), 0))
    );
    assert_eq!(
        route(&rule(Some(120.0)), &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    assert_eq!(
        route(&rule(Some(100.0)), &providers, &input("m", &[])),
        None
    );
    let listed = vec![Rule::Latency {
        providers: Some(vec![0, 1]),
        max_latency_ms: None,
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
    let listed = vec![Rule::Latency {
        providers: Some(vec![4, 2]),
        max_latency_ms: None,
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(4)
    );
    let unknown = vec![Rule::Latency {
        providers: Some(vec![0]),
        max_latency_ms: None,
    }];
    assert_eq!(route(&unknown, &providers, &input("m", &[])), None);
}

// --- throughput -------------------------------------------------------------

#[test]
fn throughput_picks_highest_at_or_above_floor() {
    let providers = vec![
        provider("none", 0.0, 0.0),
        with_throughput(provider("t30", 0.0, 0.0), 30.0),
        with_throughput(provider("t80", 0.0, 0.0), 80.0),
        with_throughput(skipped(provider("t999", 0.0, 0.0)), 999.0),
    ];
    let rule = |min| {
        vec![Rule::Throughput {
            providers: None,
            min_tokens_per_sec: min,
        }]
    };
    assert_eq!(
        route(&rule(None), &providers, &input("m", &[])),
        Some((2, "m".into(), 0))
    );
    assert_eq!(
        route(&rule(Some(80.0)), &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    assert_eq!(route(&rule(Some(81.0)), &providers, &input("m", &[])), None);
    let listed = vec![Rule::Throughput {
        providers: Some(vec![0, 1]),
        min_tokens_per_sec: Some(30.0),
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
}

// --- fallback ---------------------------------------------------------------

#[test]
fn fallback_scores_quality_against_cost() {
    // a: cost 3, q 70; b: cost 1, q 60; c: cost 2, q 90.
    let providers = three();
    let rule = |bias, rewrite: Option<String>| {
        vec![Rule::Fallback {
            providers: None,
            quality_bias: bias,
            rewrite_model: rewrite,
        }]
    };
    // bias 1: highest quality; bias 0: cheapest.
    assert_eq!(
        route(&rule(1.0, None), &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    assert_eq!(
        route(&rule(0.0, None), &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
    // bias 0.5: a = 33.5, b = 29.5, c = 44.
    assert_eq!(
        route(&rule(0.5, some("big")), &providers, &input("m", &[])),
        Some((2, "big".into(), 0))
    );
}

#[test]
fn fallback_ties_and_skipped() {
    let providers = vec![
        skipped(provider("best", 0.0, 100.0)),
        provider("p", 1.0, 50.0),
        provider("q", 1.0, 50.0),
    ];
    let rules = vec![Rule::Fallback {
        providers: None,
        quality_bias: 0.5,
        rewrite_model: None,
    }];
    assert_eq!(
        route(&rules, &providers, &input("m", &[])).map(|r| r.0),
        Some(1)
    );
    let listed = vec![Rule::Fallback {
        providers: Some(vec![2, 1]),
        quality_bias: 0.5,
        rewrite_model: None,
    }];
    assert_eq!(
        route(&listed, &providers, &input("m", &[])).map(|r| r.0),
        Some(2)
    );
    let none = vec![Rule::Fallback {
        providers: Some(vec![0]),
        quality_bias: 0.5,
        rewrite_model: None,
    }];
    assert_eq!(route(&none, &providers, &input("m", &[])), None);
    // Negative scores still resolve.
    let costly = vec![provider("x", 1000.0, 0.0)];
    assert_eq!(
        route(&rules, &costly, &input("m", &[])).map(|r| r.0),
        Some(0)
    );
}

// --- random -----------------------------------------------------------------

fn counts(rules: &[Rule], providers: &[Provider], runs: usize) -> Vec<(usize, String, usize)> {
    let discovery = Discovery::empty(providers.len());
    let mut rng = Rng::new(42);
    let mut seen: Vec<(usize, String, usize)> = Vec::new();
    for _ in 0..runs {
        let d = resolve(rules, providers, &discovery, &input("req", &[]), &mut rng).unwrap();
        let model = d.sent_model("req").to_string();
        match seen
            .iter_mut()
            .find(|(p, m, _)| *p == d.provider && *m == model)
        {
            Some(entry) => entry.2 += 1,
            None => seen.push((d.provider, model, 1)),
        }
    }
    seen.sort();
    seen
}

#[test]
fn random_is_uniform_over_active_providers() {
    let mut providers = three();
    providers.push(skipped(provider("d", 0.0, 0.0)));
    let rules = vec![Rule::Random {
        providers: None,
        rewrite_model: some("r"),
        candidates: vec![],
    }];
    let seen = counts(&rules, &providers, 30_000);
    assert_eq!(
        seen.iter().map(|(p, _, _)| *p).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for (_, model, n) in &seen {
        assert_eq!(model, "r");
        assert!((9_000..11_000).contains(n), "{seen:?}");
    }
    let listed = vec![Rule::Random {
        providers: Some(vec![2, 3]),
        rewrite_model: None,
        candidates: vec![],
    }];
    assert_eq!(
        counts(&listed, &providers, 100),
        [(2, "req".to_string(), 100)]
    );
}

#[test]
fn random_candidates_are_uniform_pairs_and_ignore_other_fields() {
    let providers = vec![
        provider("a", 0.0, 0.0),
        skipped(provider("b", 0.0, 0.0)),
        provider("c", 0.0, 0.0),
    ];
    let rules = vec![Rule::Random {
        providers: Some(vec![1]),
        rewrite_model: some("ignored"),
        candidates: vec![
            (0, "m1".into()),
            (1, "m-skipped".into()),
            (0, "m2".into()),
            (2, "m3".into()),
            (7, "no-such-provider".into()),
        ],
    }];
    let seen = counts(&rules, &providers, 30_000);
    assert_eq!(
        seen.iter()
            .map(|(p, m, _)| (*p, m.as_str()))
            .collect::<Vec<_>>(),
        [(0, "m1"), (0, "m2"), (2, "m3")]
    );
    for (_, _, n) in &seen {
        assert!((9_000..11_000).contains(n), "{seen:?}");
    }
}

#[test]
fn random_with_no_candidate_passes() {
    let providers = vec![skipped(provider("a", 0.0, 0.0))];
    let rules = vec![
        Rule::Random {
            providers: None,
            rewrite_model: None,
            candidates: vec![],
        },
        Rule::Random {
            providers: None,
            rewrite_model: None,
            candidates: vec![(0, "x".into())],
        },
    ];
    assert_eq!(route(&rules, &providers, &input("m", &[])), None);
    assert_eq!(route(&rules, &[], &input("m", &[])), None);
}

// --- capability filter --------------------------------------------------------

fn caps(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| s.to_string()).collect())
}

fn vision_discovery() -> Discovery {
    let mut d = Discovery::empty(3);
    d.insert(
        0,
        vec![
            ("text-only".into(), caps(&["completion"])),
            ("llava:latest".into(), caps(&["completion", "vision"])),
            ("toolish".into(), caps(&["completion", "tools"])),
            ("mystery".into(), None),
        ],
    );
    d
}

#[test]
fn capability_filter_passes_to_the_next_rule() {
    let providers = three();
    let discovery = vision_discovery();
    let rules = vec![
        Rule::Discover { provider: 0 },
        Rule::Prefix {
            model_prefix: "".into(),
            provider: 2,
            rewrite_model: None,
        },
    ];
    let mut req = input("text-only", &[]);
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req).map(|r| r.0),
        Some(0)
    );
    req.needs_vision = true;
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req).map(|r| r.0),
        Some(2)
    );
    req.model = "llava";
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req).map(|r| r.0),
        Some(0)
    );
    req.needs_tools = true; // llava lacks tools
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req).map(|r| r.0),
        Some(2)
    );
    req.model = "mystery"; // capabilities unknown: no filter
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req).map(|r| r.0),
        Some(0)
    );
    let tools_only = RouteInput {
        model: "toolish",
        tags: &[],
        needs_vision: false,
        needs_tools: true,
        exclude: &[],
    };
    assert_eq!(
        route_with(&rules, &providers, &discovery, &tools_only).map(|r| r.0),
        Some(0)
    );
}

#[test]
fn capability_filter_uses_the_rewritten_model() {
    let providers = three();
    let discovery = vision_discovery();
    let rules = vec![
        Rule::Tag {
            tag: "vision".into(),
            provider: 0,
            rewrite_model: some("text-only"),
        },
        Rule::Tag {
            tag: "vision".into(),
            provider: 0,
            rewrite_model: some("llava:latest"),
        },
    ];
    let mut req = input("whatever", &["vision"]);
    req.needs_vision = true;
    assert_eq!(
        route_with(&rules, &providers, &discovery, &req),
        Some((0, "llava:latest".into(), 1))
    );
}

#[test]
fn capability_filter_drops_candidates_before_choosing() {
    let providers = three(); // b (1) is cheapest
    let mut discovery = Discovery::empty(3);
    discovery.insert(1, vec![("m".into(), caps(&["completion"]))]);
    discovery.insert(2, vec![("m".into(), caps(&["completion", "vision"]))]);
    let mut req = input("m", &[]);
    req.needs_vision = true;
    let price = vec![Rule::Price {
        providers: None,
        max_cost_per_1m_tokens: None,
    }];
    // b lacks vision; c (2) is next cheapest... a (3.0) has unknown caps: c wins at 2.0.
    assert_eq!(
        route_with(&price, &providers, &discovery, &req).map(|r| r.0),
        Some(2)
    );
    let fallback = vec![Rule::Fallback {
        providers: Some(vec![1]),
        quality_bias: 0.5,
        rewrite_model: None,
    }];
    assert_eq!(route_with(&fallback, &providers, &discovery, &req), None);

    // Random over pairs: only the capable pair remains.
    let random = vec![Rule::Random {
        providers: None,
        rewrite_model: None,
        candidates: vec![(1, "m".into()), (2, "m".into())],
    }];
    for seed in 0..50 {
        let d = resolve(&random, &providers, &discovery, &req, &mut Rng::new(seed)).unwrap();
        assert_eq!(d.provider, 2);
    }
}

// --- chain ------------------------------------------------------------------

#[test]
fn first_match_wins_and_all_pass_is_none() {
    let providers = three();
    let rules = vec![
        Rule::Tag {
            tag: "code".into(),
            provider: 0,
            rewrite_model: None,
        },
        Rule::Prefix {
            model_prefix: "gpt".into(),
            provider: 1,
            rewrite_model: None,
        },
        Rule::Price {
            providers: None,
            max_cost_per_1m_tokens: Some(0.1),
        },
    ];
    assert_eq!(
        route(&rules, &providers, &input("gpt-4o", &["code"])).map(|r| r.2),
        Some(0)
    );
    assert_eq!(
        route(&rules, &providers, &input("gpt-4o", &[])).map(|r| r.2),
        Some(1)
    );
    assert_eq!(route(&rules, &providers, &input("claude", &[])), None);
    assert_eq!(route(&[], &providers, &input("claude", &[])), None);
}

#[test]
fn bad_indices_and_nan_never_panic() {
    let mut providers = three();
    providers[0].cost_per_1m_tokens = f64::NAN;
    let rules = vec![
        Rule::Prefix {
            model_prefix: "".into(),
            provider: 99,
            rewrite_model: None,
        },
        Rule::Tag {
            tag: "t".into(),
            provider: 99,
            rewrite_model: None,
        },
        Rule::Discover { provider: 99 },
        Rule::Price {
            providers: Some(vec![99, 0, 2]),
            max_cost_per_1m_tokens: None,
        },
    ];
    assert_eq!(
        route(&rules, &providers, &input("m", &["t"])),
        Some((2, "m".into(), 3))
    );
    let nan_bias = vec![Rule::Fallback {
        providers: None,
        quality_bias: f64::NAN,
        rewrite_model: None,
    }];
    assert_eq!(route(&nan_bias, &providers, &input("m", &[])), None);
}

// --- known_models / rng --------------------------------------------------------

#[test]
fn known_models_in_rule_order_deduplicated() {
    let mut discovery = Discovery::empty(3);
    discovery.insert(
        2,
        vec![("llama3.2:latest".into(), None), ("big".into(), None)],
    );
    let rules = vec![
        Rule::Prefix {
            model_prefix: "local/".into(),
            provider: 0,
            rewrite_model: some("llama3.2-3b"),
        },
        Rule::Prefix {
            model_prefix: "x/".into(),
            provider: 0,
            rewrite_model: None,
        },
        Rule::Tag {
            tag: "code".into(),
            provider: 1,
            rewrite_model: some("big"),
        },
        Rule::Discover { provider: 2 },
        Rule::Price {
            providers: None,
            max_cost_per_1m_tokens: None,
        },
        Rule::Random {
            providers: None,
            rewrite_model: some("ignored"),
            candidates: vec![(0, "m1".into()), (1, "big".into())],
        },
        Rule::Random {
            providers: None,
            rewrite_model: some("r"),
            candidates: vec![],
        },
        Rule::Fallback {
            providers: None,
            quality_bias: 0.5,
            rewrite_model: some("fb"),
        },
    ];
    assert_eq!(
        known_models(&rules, &discovery),
        ["llama3.2-3b", "big", "llama3.2:latest", "m1", "r", "fb"]
    );
    assert!(known_models(&[], &discovery).is_empty());
}

#[test]
fn rng_is_deterministic_per_seed_and_in_range() {
    let mut a = Rng::new(0);
    let mut b = Rng::new(0);
    let mut c = Rng::new(1);
    let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
    assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
    assert_ne!(xs, (0..8).map(|_| c.next_u64()).collect::<Vec<_>>());
    assert_eq!(a.below(0), 0);
    assert_eq!(a.below(1), 0);
    let mut hist = [0usize; 7];
    for _ in 0..70_000 {
        let i = a.below(7);
        hist[i] += 1;
    }
    assert!(
        hist.iter().all(|&n| (9_000..11_000).contains(&n)),
        "{hist:?}"
    );
}
