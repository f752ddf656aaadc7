//! Lifecycle events the host delivers to every plugin, in the order they happened.
//!
//! Events are delivered after the fact and asynchronously: registering an agent never waits for
//! a plugin's [`on_event`](crate::OrchestrationPlugin::on_event). New variants are added as the
//! orchestrator grows, hence `#[non_exhaustive]`: match with a wildcard arm.

use crate::AgentStatus;
use serde::{Deserialize, Serialize};

/// Something that happened in the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OrchestratorEvent {
    /// An agent joined the fleet.
    AgentRegistered {
        /// Its id.
        agent_id: String,
    },
    /// An agent left the fleet.
    AgentDeregistered {
        /// Its id.
        agent_id: String,
    },
    /// An agent's status changed.
    AgentStatusChanged {
        /// Its id.
        agent_id: String,
        /// The status before.
        from: AgentStatus,
        /// The status now.
        to: AgentStatus,
    },
    /// A plugin was registered and initialized.
    PluginLoaded {
        /// The plugin's name.
        plugin: String,
        /// Its version.
        version: String,
        /// The capabilities it serves.
        capabilities: Vec<String>,
    },
    /// A plugin was unregistered (or replaced) and shut down.
    PluginUnloaded {
        /// The plugin's name.
        plugin: String,
    },
    /// A capability was switched on or off.
    CapabilityToggled {
        /// The capability.
        capability: String,
        /// Whether it is now enabled.
        enabled: bool,
    },
    /// A provider failed (error, panic or timeout) and the call moved on to the next provider
    /// or to the legacy path.
    CapabilityFallback {
        /// The capability called.
        capability: String,
        /// The provider that failed.
        plugin: String,
        /// What went wrong.
        reason: String,
        /// The call's correlation id.
        correlation_id: String,
    },
    /// An event a plugin emitted through [`HostHandle::emit`](crate::HostHandle::emit).
    Custom {
        /// The plugin that emitted it.
        source: String,
        /// The event's name, chosen by the plugin.
        name: String,
        /// Its payload.
        data: serde_json::Value,
    },
}
