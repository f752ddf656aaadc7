//! An example third-party capability plugin, built as a dynamic library and loaded at run time:
//! for plugin authors, as a template.
//!
//! It depends on `plugin-api` (and `async-trait`) only, and exports itself with one line,
//! `plugin_api::export_plugin!(TextToolsPlugin::default)`. Build it with
//! `cargo build -p third-party-plugin` and load `target/debug/libthird_party_plugin.so` with
//! `Orchestrator::load_plugin`, as `examples/load_plugin.rs` does.
//!
//! # Capabilities
//!
//! - `text_stats`: `{"text": string}` -> `{"words", "sentences", "characters"}`.
//! - `keywords`: `{"text": string, "top"?: n}` -> `{"keywords": [{"word", "count"}]}`, the most
//!   frequent words of four letters or more, most frequent first (ties alphabetical).
//!
//! # Configuration
//!
//! `{"top": n}`: how many keywords `keywords` returns when the request does not say (default 5).
//! Any other key is refused at initialization, naming the key.

use plugin_api::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Text statistics and keyword extraction.
#[derive(Debug)]
pub struct TextToolsPlugin {
    default_top: AtomicUsize,
}

impl Default for TextToolsPlugin {
    fn default() -> Self {
        Self {
            default_top: AtomicUsize::new(5),
        }
    }
}

fn text_of(data: &Value) -> Result<&str, PluginError> {
    data.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::invalid_request("expected {\"text\": string}"))
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

#[async_trait]
impl OrchestrationPlugin for TextToolsPlugin {
    fn name(&self) -> &str {
        "TextToolsPlugin"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec!["text_stats".into(), "keywords".into()]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        match host.config() {
            Value::Null => Ok(()),
            Value::Object(map) => {
                for (key, value) in &map {
                    match (key.as_str(), value.as_u64()) {
                        ("top", Some(n)) if n > 0 => self.default_top.store(n as usize, Ordering::Relaxed),
                        ("top", _) => {
                            return Err(PluginError::new("TextToolsPlugin: `top` must be a positive integer"));
                        }
                        (other, _) => {
                            return Err(PluginError::new(format!(
                                "TextToolsPlugin: unknown configuration key `{other}` (known: top)"
                            )));
                        }
                    }
                }
                Ok(())
            }
            _ => Err(PluginError::new("TextToolsPlugin: configuration must be a table")),
        }
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        match request.capability.as_str() {
            "text_stats" => {
                let text = text_of(&request.data)?;
                let sentences = text.split(['.', '!', '?']).filter(|s| !s.trim().is_empty()).count();
                Ok(IntegrationResponse::ok(json!({
                    "words": words(text).count(),
                    "sentences": sentences,
                    "characters": text.chars().count(),
                })))
            }
            "keywords" => {
                let text = text_of(&request.data)?;
                let top = match request.data.get("top") {
                    None => self.default_top.load(Ordering::Relaxed),
                    Some(v) => v
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| PluginError::invalid_request("`top` must be a positive integer"))?
                        as usize,
                };
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for word in words(text).filter(|w| w.chars().count() >= 4) {
                    *counts.entry(word).or_default() += 1;
                }
                let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let keywords: Vec<Value> = ranked
                    .into_iter()
                    .take(top)
                    .map(|(word, count)| json!({"word": word, "count": count}))
                    .collect();
                Ok(IntegrationResponse::ok(json!({ "keywords": keywords })))
            }
            other => Err(PluginError::invalid_request(format!(
                "TextToolsPlugin does not serve `{other}` (it serves text_stats, keywords)"
            ))),
        }
    }

    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

plugin_api::export_plugin!(TextToolsPlugin::default);
