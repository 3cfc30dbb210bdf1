//! What Ollama providers reported at startup: model names (`GET /api/tags`)
//! and, per model, capabilities (`POST /api/show`). Filled by
//! [`super::discover()`] on the control thread, read-only afterwards.

/// Discovered models, per provider index (`Config::providers` order).
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    providers: Vec<Discovered>,
}

#[derive(Debug, Clone, Default)]
struct Discovered {
    /// Model names in the order the provider reported them (deduplicated).
    names: Vec<String>,
    /// `capabilities[i]` belongs to `names[i]`; `None` = unknown.
    capabilities: Vec<Option<Vec<String>>>,
    /// Indices into `names`, sorted by name: lookups are a binary search.
    sorted: Vec<u32>,
}

impl Discovered {
    /// Index of `model`. A name without a `:tag` also finds `name:latest`,
    /// as Ollama itself resolves it that way.
    fn find(&self, model: &str) -> Option<usize> {
        let exact = self
            .sorted
            .binary_search_by(|&i| self.name(i).cmp(model))
            .ok()
            .or_else(|| {
                if model.contains(':') {
                    return None;
                }
                let latest = model.bytes().chain(b":latest".iter().copied());
                self.sorted
                    .binary_search_by(|&i| self.name(i).bytes().cmp(latest.clone()))
                    .ok()
            })?;
        self.sorted.get(exact).map(|&i| i as usize)
    }

    fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", String::as_str)
    }
}

impl Discovery {
    /// Nothing discovered for any of `n_providers` providers.
    pub fn empty(n_providers: usize) -> Self {
        Self {
            providers: vec![Discovered::default(); n_providers],
        }
    }

    /// Whether `provider` reported `model` (or `model:latest` for a name
    /// without a tag).
    pub fn has_model(&self, provider: usize, model: &str) -> bool {
        self.providers
            .get(provider)
            .is_some_and(|d| d.find(model).is_some())
    }

    /// Capabilities reported for (`provider`, `model`), when known.
    pub fn capabilities(&self, provider: usize, model: &str) -> Option<&[String]> {
        let d = self.providers.get(provider)?;
        d.capabilities.get(d.find(model)?)?.as_deref()
    }

    /// Model names `provider` reported, in its order (empty when unknown).
    pub fn models(&self, provider: usize) -> &[String] {
        self.providers.get(provider).map_or(&[], |d| &d.names)
    }

    /// Replaces what is known about `provider`: (name, capabilities) pairs
    /// in the provider's order. Empty names and repeated names (after the
    /// first) are dropped.
    pub fn insert(&mut self, provider: usize, models: Vec<(String, Option<Vec<String>>)>) {
        if provider >= self.providers.len() {
            self.providers
                .resize_with(provider + 1, Discovered::default);
        }
        let mut d = Discovered::default();
        for (name, capabilities) in models {
            if name.is_empty() || u32::try_from(d.names.len()).is_err() {
                continue;
            }
            let i = d.names.len() as u32;
            match d
                .sorted
                .binary_search_by(|&j| d.names[j as usize].as_str().cmp(&name))
            {
                Ok(_) => continue,
                Err(at) => d.sorted.insert(at, i),
            }
            d.names.push(name);
            d.capabilities.push(capabilities);
        }
        self.providers[provider] = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn lookup_and_order() {
        let mut d = Discovery::empty(2);
        d.insert(
            1,
            vec![
                ("qwen3:8b".into(), caps(&["completion", "tools"])),
                ("llava:latest".into(), caps(&["completion", "vision"])),
                ("qwen3:8b".into(), None),
                ("".into(), None),
                ("old".into(), None),
            ],
        );
        assert_eq!(d.models(1), ["qwen3:8b", "llava:latest", "old"]);
        assert!(d.models(0).is_empty() && d.models(9).is_empty());
        assert!(d.has_model(1, "qwen3:8b"));
        assert!(!d.has_model(1, "qwen3"));
        assert!(!d.has_model(0, "qwen3:8b"));
        assert!(!d.has_model(7, "qwen3:8b"));
        // `llava` is Ollama's short form of `llava:latest`.
        assert!(d.has_model(1, "llava"));
        assert!(d.has_model(1, "llava:latest"));
        assert!(!d.has_model(1, "llava:7b"));
        assert_eq!(
            d.capabilities(1, "llava").unwrap(),
            ["completion", "vision"]
        );
        assert_eq!(
            d.capabilities(1, "qwen3:8b").unwrap(),
            ["completion", "tools"]
        );
        assert_eq!(d.capabilities(1, "old"), None);
        assert_eq!(d.capabilities(1, "missing"), None);
    }

    #[test]
    fn insert_grows_and_replaces() {
        let mut d = Discovery::empty(0);
        d.insert(3, vec![("a".into(), None)]);
        assert!(d.has_model(3, "a"));
        d.insert(3, vec![("b".into(), None)]);
        assert!(!d.has_model(3, "a"));
        assert_eq!(d.models(3), ["b"]);
    }
}
