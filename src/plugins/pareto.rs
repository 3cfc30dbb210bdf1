//! `pareto-router` (docs/plugins.md): forces the request to the first provider of a
//! tier, skipping the rule chain. Settings: `tiers = { low = [...], medium =
//! [...], high = [...] }` (provider names; checked at startup like a rule's
//! provider list), `default_tier` (default `"medium"`), and per request
//! `tier`. A tier that is not configured is a plugin error listing the
//! configured tiers; providers skipped at startup (missing key) are passed
//! over, as they are by every rule.

use serde_json::Value;

use super::{Active, Pre};

/// Set `pre.forced_provider` from the tier the settings choose.
pub fn pre_request(a: &Active, pre: &mut Pre<'_>) -> Result<(), String> {
    let tier = match a
        .settings
        .get("tier")
        .or_else(|| a.settings.get("default_tier"))
    {
        None => "medium",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("`tier` must be a string".into()),
    };
    let tiers = match a.settings.get("tiers") {
        Some(Value::Object(t)) => t,
        None => return Err(format!("unknown tier '{tier}' (no tiers are configured)")),
        Some(_) => return Err("`tiers` must be a table of provider-name arrays".into()),
    };
    let Some(list) = tiers.get(tier) else {
        let names: Vec<&str> = tiers.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown tier '{}' (configured tiers: {})",
            crate::error::quote(tier),
            names.join(", ")
        ));
    };
    let names = list
        .as_array()
        .ok_or_else(|| format!("tier '{tier}' must be an array of provider names"))?;
    for name in names {
        let name = name
            .as_str()
            .ok_or_else(|| format!("tier '{tier}' must be an array of provider names"))?;
        if let Some(idx) = pre
            .providers
            .iter()
            .position(|p| p.name == name && p.active())
        {
            pre.forced_provider = Some(idx);
            return Ok(());
        }
    }
    Err(format!("tier '{tier}' has no active provider"))
}
