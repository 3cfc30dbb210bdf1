//! Plugins (docs/plugins.md): four hooks — `on_start`, `pre_request`,
//! `post_response`, `on_end` — each returning [`Flow::Continue`] or
//! [`Flow::Stop`], on every client format and on streamed requests too.
//!
//! Which plugins run for a request ([`activate`]): those enabled in config
//! (`[plugins.<id>] enabled = true`, settings = the table's other keys), in
//! the built-in order, then those named only by the request's `plugins`
//! array, in request order; a request entry's keys override the config's
//! settings for that request. Plugin ids are one enum ([`PluginId`]),
//! parsed in one place: an unknown id is a 400 naming it.
//!
//! Built-ins: `response-healing` ([`healing`]), `pareto-router`
//! ([`pareto`]), and `web`/`pdf`, which this router does not support: a
//! request that turns them on gets a 400 saying so (never silent
//! acceptance). `docs/plugins.md` documents every hook and plugin.

pub mod apply;
pub mod healing;
mod id;
pub mod pareto;

pub use id::PluginId;

use serde_json::{Map, Value};

use crate::config::{PluginConfig, Provider};
use crate::error::RouterError;
use crate::json::PluginRequest;

/// One plugin running for one request, with its merged settings.
#[derive(Debug, Clone)]
pub struct Active {
    pub id: PluginId,
    pub settings: Map<String, Value>,
}

/// Which plugins run for this request, in hook order (see the module doc).
pub fn activate(
    config: &[PluginConfig],
    requested: &[PluginRequest],
) -> Result<Vec<Active>, RouterError> {
    let mut ids: Vec<PluginId> = Vec::with_capacity(requested.len());
    for r in requested {
        match PluginId::parse(&r.id) {
            Some(id) => ids.push(id),
            None => {
                let known: Vec<&str> = PluginId::BUILT_IN.iter().map(|p| p.as_str()).collect();
                return Err(RouterError::bad_request(format!(
                    "unknown plugin '{}' (known: {})",
                    crate::error::quote(&r.id),
                    known.join(", ")
                ))
                .with_code("unknown_plugin"));
            }
        }
    }
    let mut active: Vec<Active> = Vec::new();
    let mut enabled: Vec<(PluginId, &PluginConfig)> = config
        .iter()
        .filter(|c| c.enabled)
        .filter_map(|c| PluginId::parse(&c.id).map(|id| (id, c)))
        .collect();
    enabled.sort_by_key(|(id, _)| id.order());
    for (id, c) in enabled {
        active.push(Active {
            id,
            settings: config_settings(c),
        });
    }
    for (r, id) in requested.iter().zip(ids) {
        match active.iter_mut().find(|a| a.id == id) {
            Some(a) => {
                for (k, v) in &r.settings {
                    a.settings.insert(k.clone(), v.clone());
                }
            }
            None => {
                // Not enabled in config: the config's table (if any) still
                // gives the defaults that the request's keys override.
                let mut settings = config
                    .iter()
                    .find(|c| PluginId::parse(&c.id) == Some(id))
                    .map(config_settings)
                    .unwrap_or_default();
                for (k, v) in &r.settings {
                    settings.insert(k.clone(), v.clone());
                }
                active.push(Active { id, settings });
            }
        }
    }
    Ok(active)
}

/// A config table's settings (every key but `enabled`) as JSON values.
fn config_settings(c: &PluginConfig) -> Map<String, Value> {
    c.settings
        .iter()
        .filter_map(|(k, v)| serde_json::to_value(v).ok().map(|v| (k.clone(), v)))
        .collect()
}

/// What a hook asks of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A response a plugin produced in `on_start` or `pre_request`: routing and
/// the provider call are skipped, and the client gets it.
#[derive(Debug, Clone)]
pub enum Early {
    /// An error in the client's error shape (e.g. `web`/`pdf`: 400).
    Error(RouterError),
    /// A reply, encoded in the client's format (streamed when asked).
    Text(String),
}

/// What `on_start`/`pre_request` hooks may read and set.
pub struct Pre<'a> {
    pub providers: &'a [Provider],
    /// The request's model.
    pub model: &'a str,
    /// Set by a plugin: this provider, and the rule chain is skipped.
    pub forced_provider: Option<usize>,
    /// Set by a plugin: the request body (JSON in the client's format) to
    /// use instead of the client's, for this request only.
    pub body: Option<Vec<u8>>,
    /// The client's body, as received.
    pub original_body: &'a [u8],
    /// Set by a plugin: the response (skips routing and the provider).
    pub response: Option<Early>,
}

/// The hooks' shared failure text: `plugin '<id>' failed: <reason>`.
fn failed(id: PluginId, reason: &str) -> RouterError {
    RouterError::internal(format!("plugin '{}' failed: {reason}", id.as_str()))
        .with_code("plugin_failed")
}

/// Stop without a response.
pub fn stopped_without_response() -> RouterError {
    RouterError::internal("pipeline stopped without producing a response")
        .with_code("plugin_stopped")
}

/// `on_start` of every active plugin, in order. `Ok(Flow::Stop)` ends the
/// hook run (the remaining plugins' `on_start` do not run).
pub fn on_start(active: &[Active], pre: &mut Pre<'_>) -> Result<Flow, RouterError> {
    for a in active {
        let flow = match a.id {
            PluginId::Web | PluginId::Pdf => {
                pre.response = Some(Early::Error(
                    RouterError::bad_request(format!(
                        "plugin '{}' is not supported by this router",
                        a.id.as_str()
                    ))
                    .with_code("plugin_not_supported"),
                ));
                Flow::Stop
            }
            PluginId::Probe => {
                probe::hook("on_start", a, Some(pre)).map_err(|e| failed(a.id, &e))?
            }
            PluginId::ResponseHealing | PluginId::ParetoRouter => Flow::Continue,
        };
        if flow == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// `pre_request` of every active plugin, in order.
pub fn pre_request(active: &[Active], pre: &mut Pre<'_>) -> Result<Flow, RouterError> {
    for a in active {
        let flow = match a.id {
            PluginId::ParetoRouter => {
                pareto::pre_request(a, pre).map_err(|e| failed(a.id, &e))?;
                Flow::Continue
            }
            PluginId::Probe => {
                probe::hook("pre_request", a, Some(pre)).map_err(|e| failed(a.id, &e))?
            }
            PluginId::ResponseHealing | PluginId::Web | PluginId::Pdf => Flow::Continue,
        };
        if flow == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// What `post_response` hooks see and may change.
pub struct Post<'a> {
    /// The client's wire format.
    pub client: crate::formats::Format,
    /// Buffered replies: the body the client will receive (in its format),
    /// which a hook may replace. `None` for streams (bytes already sent).
    pub body: Option<&'a mut Vec<u8>>,
    /// The reply's text (streams: as streamed).
    pub text: &'a str,
    /// The reply succeeded (2xx).
    pub ok: bool,
    /// Facts for the log line (`"response-healing: …"`).
    pub notes: &'a mut Vec<String>,
}

/// `post_response` of every active plugin, in order. An error is a warning
/// (returned for the log line); `Stop` skips the remaining `post_response`
/// hooks and every plugin's `on_end`, which the returned flow says.
pub fn post_response(active: &[Active], post: &mut Post<'_>, warnings: &mut Vec<String>) -> Flow {
    for a in active {
        let r = match a.id {
            PluginId::ResponseHealing => {
                apply::post_response(post);
                Ok(Flow::Continue)
            }
            PluginId::Probe => probe::hook("post_response", a, None),
            PluginId::ParetoRouter | PluginId::Web | PluginId::Pdf => Ok(Flow::Continue),
        };
        match r {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => return Flow::Stop,
            Err(e) => warnings.push(format!("plugin '{}' post_response: {e}", a.id.as_str())),
        }
    }
    Flow::Continue
}

/// `on_end` of every active plugin, in order; errors are warnings.
pub fn on_end(active: &[Active], warnings: &mut Vec<String>) {
    for a in active {
        if a.id == PluginId::Probe
            && let Err(e) = probe::hook("on_end", a, None)
        {
            warnings.push(format!("plugin '{}' on_end: {e}", a.id.as_str()));
        }
    }
}

/// The test-only `probe` plugin: `{"id":"probe","<hook>":"<action>"}` makes
/// that hook `continue`, `stop`, `error`, `reply` (sets a text response, then
/// continues), `reply-stop`, or (`pre_request`) `force:<provider>` or
/// `model:<name>` (rewrites the request body's `model`).
mod probe {
    use super::{Active, Early, Flow, Pre};

    pub fn hook(name: &str, a: &Active, pre: Option<&mut Pre<'_>>) -> Result<Flow, String> {
        let action = a
            .settings
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("continue");
        match (action, pre) {
            ("continue", _) => Ok(Flow::Continue),
            ("stop", _) => Ok(Flow::Stop),
            ("error", _) => Err(format!("probe {name} error")),
            ("reply", Some(pre)) => {
                pre.response = Some(Early::Text(format!("probe reply from {name}")));
                Ok(Flow::Continue)
            }
            ("reply-stop", Some(pre)) => {
                pre.response = Some(Early::Text(format!("probe reply from {name}")));
                Ok(Flow::Stop)
            }
            (a, Some(pre)) if a.starts_with("force:") => {
                let name = &a[6..];
                let idx = pre
                    .providers
                    .iter()
                    .position(|p| p.name == name)
                    .ok_or_else(|| format!("no provider '{name}'"))?;
                pre.forced_provider = Some(idx);
                Ok(Flow::Continue)
            }
            (a, Some(pre)) if a.starts_with("model:") => {
                let mut v: serde_json::Value = serde_json::from_slice(pre.original_body)
                    .map_err(|e| format!("body is not JSON: {e}"))?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(
                        "model".into(),
                        serde_json::Value::String(a[6..].to_string()),
                    );
                }
                pre.body = Some(serde_json::to_vec(&v).map_err(|e| e.to_string())?);
                Ok(Flow::Continue)
            }
            (other, _) => Err(format!("unknown probe action '{other}' for {name}")),
        }
    }
}
