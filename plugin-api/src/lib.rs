//! The stable surface a capability plugin for `orchestrator` is written against: for plugin authors.
//!
//! A plugin is a value implementing [`OrchestrationPlugin`]. It names the capabilities it serves,
//! receives an [`IntegrationRequest`] per call and answers with an [`IntegrationResponse`]. What
//! the orchestrator offers back (configuration, the agent fleet, calling other capabilities,
//! events, the clock, spawning and sleeping) reaches the plugin through the [`HostHandle`] it is
//! given in [`OrchestrationPlugin::initialize`].
//!
//! This crate is deliberately small: it holds only what crosses the boundary between host and
//! plugin, so that it can stay stable while the engine (`orchestrator-core`) moves. A plugin
//! crate depends on `plugin-api` and `async-trait`, and never on the engine.
//!
//! Besides the boundary types, [`fields`] reads a request's JSON data field by field, with
//! refusals that say what was expected: plain Rust every plugin needs, kept here so that each
//! plugin need not copy it.
//!
//! ```
//! use plugin_api::prelude::*;
//! use serde_json::json;
//!
//! /// Counts the words of `text`.
//! #[derive(Default)]
//! struct WordCount;
//!
//! #[async_trait]
//! impl OrchestrationPlugin for WordCount {
//!     fn name(&self) -> &str { "WordCount" }
//!     fn capabilities(&self) -> Vec<String> { vec!["word_count".into()] }
//!     async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> { Ok(()) }
//!     async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
//!         let text = request.data.get("text").and_then(|t| t.as_str())
//!             .ok_or_else(|| PluginError::invalid_request("expected {\"text\": string}"))?;
//!         Ok(IntegrationResponse::ok(json!({ "words": text.split_whitespace().count() })))
//!     }
//!     async fn health_check(&self) -> HealthStatus { HealthStatus::healthy() }
//! }
//! ```

mod agent;
mod error;
mod event;
pub mod ffi;
pub mod fields;
mod health;
mod host;
mod message;
pub mod operation;
mod plugin;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use agent::{AgentInfo, AgentLoad, AgentStatus, ParseAgentStatusError};
pub use error::{PluginError, PluginErrorKind};
pub use event::OrchestratorEvent;
pub use health::{HealthState, HealthStatus};
pub use host::{BoxFuture, Host, HostHandle};
pub use message::{IntegrationRequest, IntegrationResponse};
pub use operation::{Interests, Operation, OperationKind, OperationOutcome, OperationSet, Verdict};
pub use plugin::OrchestrationPlugin;

/// What [`export_plugin!`] expands to refers to these, so that plugin crates need not depend on
/// them. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use async_ffi;
}

/// Re-exported so that plugin crates name the same `async_trait` the trait was declared with.
pub use async_trait::async_trait;

/// The version of this API, as `MAJOR.MINOR.PATCH`. Hosts compare it when loading a plugin.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Returns `true` when `name` is a well-formed capability name: 1 to 64 characters, lower-case
/// ASCII letters, digits and `_`, starting with a letter.
///
/// ```
/// assert!(plugin_api::is_valid_capability_name("semantic_routing"));
/// assert!(!plugin_api::is_valid_capability_name("Semantic Routing"));
/// ```
pub fn is_valid_capability_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Everything a plugin author usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        AgentInfo, AgentLoad, AgentStatus, HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse,
        Interests, Operation, OperationKind, OperationOutcome, OperationSet, OrchestrationPlugin, OrchestratorEvent,
        PluginError, Verdict, async_trait,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_are_checked() {
        for good in ["a", "semantic_routing", "x1_y2", &"a".repeat(64)] {
            assert!(is_valid_capability_name(good), "{good}");
        }
        for bad in ["", "1abc", "_a", "Abc", "a-b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_capability_name(bad), "{bad}");
        }
    }
}
