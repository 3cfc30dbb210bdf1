//! The plugin ids this build knows: one enum, parsed in one place (config
//! tables and request entries alike).

/// Every plugin this build knows, in the built-in (hook) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginId {
    ResponseHealing,
    ParetoRouter,
    Web,
    Pdf,
    /// A test-only plugin whose hooks do what its settings say; known only
    /// when the environment variable `OPENSOURCELLMROUTER_TEST_PLUGINS=1` is
    /// set at startup (the lifecycle's tests use it); see `plugins::probe`.
    Probe,
}

/// Whether the test-only `probe` plugin is known (read once at startup).
static PROBE_ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn probe_enabled() -> bool {
    *PROBE_ENABLED.get_or_init(|| {
        std::env::var_os("OPENSOURCELLMROUTER_TEST_PLUGINS").is_some_and(|v| v == "1")
    })
}

impl PluginId {
    /// The built-ins, in hook order.
    pub const BUILT_IN: [PluginId; 4] = [
        PluginId::ResponseHealing,
        PluginId::ParetoRouter,
        PluginId::Web,
        PluginId::Pdf,
    ];

    /// The id a config table or a request names, if this build knows it.
    pub fn parse(id: &str) -> Option<PluginId> {
        match id {
            "response-healing" => Some(PluginId::ResponseHealing),
            "pareto-router" => Some(PluginId::ParetoRouter),
            "web" => Some(PluginId::Web),
            "pdf" => Some(PluginId::Pdf),
            "probe" if probe_enabled() => Some(PluginId::Probe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PluginId::ResponseHealing => "response-healing",
            PluginId::ParetoRouter => "pareto-router",
            PluginId::Web => "web",
            PluginId::Pdf => "pdf",
            PluginId::Probe => "probe",
        }
    }

    pub(super) fn order(self) -> usize {
        PluginId::BUILT_IN
            .iter()
            .position(|p| *p == self)
            .unwrap_or(PluginId::BUILT_IN.len())
    }
}
