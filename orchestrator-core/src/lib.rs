//! The engine of `orchestrator`: agents, the capability registry and dispatch with legacy
//! fallback. For applications that embed it (usually through the `orchestrator` facade).
//!
//! - [`Orchestrator`] holds the agent fleet and the plugins, and dispatches capability calls:
//!   feature flag, then providers by priority (each call under a timeout and `catch_unwind`),
//!   then the built-in legacy path.
//! - Plugins are written against `plugin-api` and never see this crate's types.
//! - [`AgentExecutor`] is the embedder's hook for doing an agent's work.

mod agent_tasks;
mod agents;
mod builder;
mod c_abi;
mod circuit;
mod clock;
mod config;
mod dispatch;
mod error;
mod events;
mod executor;
mod feeds;
mod guard;
mod host;
mod ids;
mod legacy;
mod loader;
mod orchestrator;
mod pipeline;
mod plugins;
mod registry;
mod task;

pub use agents::{Agent, AgentConfig};
pub use builder::OrchestratorBuilder;
pub use c_abi::C_ABI_VERSION;
pub use circuit::{CircuitInfo, CircuitState, QuarantinePolicy};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatch::LEGACY;
pub use error::{
    AgentError, ConfigError, DispatchError, FailedAttempt, LoadError, OrchestratorError, ProviderFailure,
    RegistryError, TaskError,
};
pub use events::DEFAULT_EVENT_QUEUE_CAPACITY;
pub use executor::{AgentExecutor, DryRunExecutor, ExecutionContext, ExecutorError};
pub use ids::AgentId;
pub use loader::{LIBRARY_EXTENSION, OpenedPlugin, PluginAbi, PluginInspection, inspect_plugin, open_plugin};
pub use orchestrator::{DEFAULT_CALL_TIMEOUT, Orchestrator};
pub use pipeline::{AuditPolicy, PipelineOptions};
pub use plugin_api::AgentStatus;
pub use plugins::{LoadOutcome, LoadReport, LoadReportEntry, LoadedPlugin};
pub use registry::{CapabilityInfo, Catalog, PluginInfo, PluginOptions, PluginOrigin};
pub use task::{PipelineStep, StepOutcome, StepTrace, Task, TaskReport, TaskStatus};
