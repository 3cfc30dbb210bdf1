//! The validated rule chain's data (`[[routers]]` entries). It lives with
//! the config it is validated from; `route` walks it (and re-exports it), so
//! the dependency runs one way: `route` → `config`.

/// One `[[routers]]` entry, validated. Provider references are indices into
/// `Config::providers`; `None` for `providers` means "all providers".
#[derive(Debug, Clone)]
pub enum Rule {
    Prefix {
        model_prefix: String,
        provider: usize,
        rewrite_model: Option<String>,
    },
    Tag {
        tag: String,
        provider: usize,
        rewrite_model: Option<String>,
    },
    Discover {
        provider: usize,
    },
    Price {
        providers: Option<Vec<usize>>,
        max_cost_per_1m_tokens: Option<f64>,
    },
    Latency {
        providers: Option<Vec<usize>>,
        max_latency_ms: Option<f64>,
    },
    Throughput {
        providers: Option<Vec<usize>>,
        min_tokens_per_sec: Option<f64>,
    },
    Fallback {
        providers: Option<Vec<usize>>,
        quality_bias: f64,
        rewrite_model: Option<String>,
    },
    Random {
        providers: Option<Vec<usize>>,
        rewrite_model: Option<String>,
        /// (provider index, model) pairs; when non-empty the other two fields are ignored.
        candidates: Vec<(usize, String)>,
    },
}
