//! Embed a capability-plugin host and agent orchestrator in your Rust application: the facade
//! crate that applications depend on.
//!
//! An application builds an [`Orchestrator`], registers agents and plugins, and submits tasks
//! (the task pipeline, [`Orchestrator::submit_task`]) or calls capabilities. Each capability is
//! served by a plugin found through one capability registry; when a plugin is missing,
//! disabled, failing or too slow, the call moves on to the next provider and finally to a
//! built-in legacy path, so the orchestrator keeps working.
//!
//! ```
//! use orchestrator::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), OrchestratorError> {
//! // The nine plugins this crate ships, linked statically. The executor is the default dry run.
//! let orchestrator = Orchestrator::builder().with_default_plugins().build().await?;
//! for (id, capabilities) in [("dba", ["database", "migrations"]), ("data-eng", ["database", "etl"]), ("reviewer", ["code_review", "rust"])] {
//!     let agent = AgentConfig::new(id).with_id(id).with_capabilities(capabilities).with_capacity(2);
//!     orchestrator.register_agent(agent).await?;
//! }
//!
//! let task = Task::new("migrate the orders table").with_required_capabilities(["database"]);
//! let report: TaskReport = orchestrator.submit_task(task).await?;
//! println!("{:?} on {:?} after {} attempt(s)", report.status, report.agent, report.attempts);
//! for step in &report.steps {
//!     // e.g. "Route ContextAwareRoutingPlugin 159 us Done"
//!     println!("{:?} {} {} us {:?}", step.step, step.plugin, step.duration_us, step.outcome);
//! }
//! assert_eq!(report.status, TaskStatus::Succeeded);
//! assert!(matches!(report.agent.as_ref().map(AgentId::as_str), Some("dba" | "data-eng")));
//! # Ok(())
//! # }
//! ```
//!
//! Plugins are written against the [`plugin_api`] crate, re-exported here.

pub use orchestrator_core::{
    Agent, AgentConfig, AgentError, AgentExecutor, AgentId, AgentStatus, AuditPolicy, C_ABI_VERSION, CapabilityInfo,
    Catalog, CircuitInfo, CircuitState, Clock, ConfigError, DEFAULT_CALL_TIMEOUT, DEFAULT_EVENT_QUEUE_CAPACITY,
    DispatchError, DryRunExecutor, ExecutionContext, ExecutorError, FailedAttempt, LEGACY, LIBRARY_EXTENSION,
    LoadError, LoadOutcome, LoadReport, LoadReportEntry, LoadedPlugin, ManualClock, OpenedPlugin, Orchestrator,
    OrchestratorBuilder, OrchestratorError, PipelineOptions, PipelineStep, PluginAbi, PluginInfo, PluginInspection,
    PluginOptions, PluginOrigin, ProviderFailure, QuarantinePolicy, RegistryError, StepOutcome, StepTrace, SystemClock,
    Task, TaskError, TaskReport, TaskStatus, inspect_plugin, open_plugin,
};
pub use plugin_api;
pub use plugin_api::{
    HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse, Interests, Operation, OperationKind,
    OperationOutcome, OperationSet, OrchestrationPlugin, OrchestratorEvent, PluginError, Verdict,
};

pub use plugin_context::ContextManagementPlugin;
pub use plugin_hooks::HookIntegrationPlugin;
pub use plugin_load_balancing::LoadBalancingPlugin;
pub use plugin_performance::PerformanceMonitoringPlugin;
pub use plugin_routing::ContextAwareRoutingPlugin;
pub use plugin_security::SecurityIntegrationPlugin;
pub use plugin_shared_state::SharedStatePlugin;
pub use plugin_task_coordination::TaskCoordinationPlugin;
pub use plugin_workflow::EnhancedWorkflowPlugin;

/// `with_default_plugins()` for [`OrchestratorBuilder`]: the plugins this crate ships, linked
/// statically.
///
/// All nine plugin crates: [`EnhancedWorkflowPlugin`]
/// (`extended_thinking`, `slash_commands`, `quality_gates`), [`ContextAwareRoutingPlugin`]
/// (`semantic_routing`, `agent_profiling`, `performance_learning`),
/// [`SecurityIntegrationPlugin`] (`oauth_auth`, `rbac_enforcement`, `audit_logging`),
/// [`SharedStatePlugin`] (`atomic_updates`, `real_time_balancing`, `workflow_tracking`; in memory
/// unless configured for Redis), [`TaskCoordinationPlugin`] (`agent_requests`, `task_mapping`,
/// `workload_analysis`), [`ContextManagementPlugin`] (`sleep_wake_cycles`,
/// `context_consolidation`, `session_management`), [`LoadBalancingPlugin`]
/// (`adaptive_balancing`, `capacity_management`, `resource_optimization`),
/// [`PerformanceMonitoringPlugin`] (`real_time_monitoring`, `task_performance`, `auto_scaling`)
/// and [`HookIntegrationPlugin`] (`lifecycle_hooks`, `observability`, `performance_hooks`).
///
/// To keep a handle on a plugin (the hooks plugin's [`HookRegistry`](plugin_hooks::HookRegistry),
/// the performance plugin's [`MetricsHandle`](plugin_performance::MetricsHandle)), build it
/// yourself, take the handle, and add it after `with_default_plugins()` with
/// `plugin_with(plugin, PluginOptions::new().replace())`.
///
/// ```
/// use orchestrator::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), OrchestratorError> {
/// let orchestrator = Orchestrator::builder().with_default_plugins().build().await?;
/// assert!(orchestrator.has_capability("semantic_routing"));
/// assert_eq!(orchestrator.capabilities().len(), 27);
/// # Ok(())
/// # }
/// ```
pub trait DefaultPlugins {
    /// Adds the default plugins (registered at build, in the order listed above).
    fn with_default_plugins(self) -> Self;
}

impl DefaultPlugins for OrchestratorBuilder {
    fn with_default_plugins(self) -> Self {
        self.plugin(EnhancedWorkflowPlugin::default())
            .plugin(ContextAwareRoutingPlugin::default())
            .plugin(SecurityIntegrationPlugin::default())
            .plugin(SharedStatePlugin::default())
            .plugin(TaskCoordinationPlugin::default())
            .plugin(ContextManagementPlugin::default())
            .plugin(LoadBalancingPlugin::default())
            .plugin(PerformanceMonitoringPlugin::default())
            .plugin(HookIntegrationPlugin::default())
    }
}

/// The names most applications use, in one `use orchestrator::prelude::*;`.
pub mod prelude {
    pub use crate::DefaultPlugins;
    pub use orchestrator_core::{
        AgentConfig, AgentExecutor, AgentId, AgentStatus, ExecutionContext, ExecutorError, Orchestrator,
        OrchestratorBuilder, OrchestratorError, PipelineStep, Task, TaskReport, TaskStatus,
    };
    pub use plugin_api::{
        HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse, OrchestrationPlugin, PluginError,
    };
}

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
