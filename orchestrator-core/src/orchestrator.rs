//! The [`Orchestrator`] handle: the API applications call (agents, plugins, catalog, events,
//! dispatch). The work behind it lives in `plugins` (registration and loading), `agent_tasks`
//! (choosing and running agents), `pipeline` (`submit_task`), `dispatch` and `builder`.
//!
//! `Orchestrator` is a cheap handle (`Arc` inside): clone it into every task that needs it.
//! Every async method returns a `Send + 'static` future, so a call can be handed to
//! `tokio::spawn` as it is; the futures are lazy and do nothing until polled.

use crate::agent_tasks::{run_agent_task, select_agent};
use crate::agents::{Agent, AgentConfig, AgentRegistry};
use crate::builder::OrchestratorBuilder;
use crate::clock::Clock;
use crate::dispatch;
use crate::error::{AgentError, OrchestratorError};
use crate::events::EventBus;
use crate::executor::AgentExecutor;
use crate::feeds;
use crate::host::CoreHost;
use crate::legacy;
use crate::loader::LIBRARY_EXTENSION;
use crate::plugins::{
    LoadOutcome, LoadReport, LoadReportEntry, LoadedPlugin, check_health, library_files, open_library, register,
    register_opened, retire, with_event_losses,
};
use crate::registry::{CapabilityInfo, CapabilityRegistry, Catalog, PluginInfo, PluginOptions, PluginOrigin, lock};
use crate::{AgentId, Task};
use plugin_api::{
    AgentStatus, HealthStatus, IntegrationRequest, IntegrationResponse, Operation, OperationKind, OperationOutcome,
    OrchestrationPlugin, OrchestratorEvent,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The default bound on one provider call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Inner {
    pub(crate) agents: AgentRegistry,
    pub(crate) registry: Arc<CapabilityRegistry>,
    pub(crate) events: EventBus,
    pub(crate) legacy_mode: bool,
    pub(crate) call_timeout: Duration,
    pub(crate) round_robin: AtomicUsize,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) executor: Arc<dyn AgentExecutor>,
    pub(crate) configs: Mutex<BTreeMap<String, Value>>,
    pub(crate) host: Arc<CoreHost>,
    /// How the task pipeline waits, retries and balances.
    pub(crate) pipeline: crate::pipeline::PipelineOptions,
    /// When a failing plugin is quarantined.
    pub(crate) quarantine: crate::circuit::QuarantinePolicy,
    /// Tasks waiting for a free agent.
    pub(crate) waiting: crate::pipeline::WaitQueue,
    /// Ids of the tasks in the pipeline now (a task runs once).
    pub(crate) pipeline_tasks: dashmap::DashMap<String, ()>,
}

impl Inner {
    pub(crate) fn plugin_config(&self, plugin: &str) -> Value {
        lock(&self.configs).get(plugin).cloned().unwrap_or(Value::Null)
    }

    /// Capabilities that plugins provide, plus those the legacy path serves when it is on.
    pub(crate) fn known_capabilities(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.registry.snapshot().routes.keys().cloned().collect();
        if self.legacy_mode {
            names.extend(legacy::LEGACY_CAPABILITIES.iter().map(|c| (*c).to_owned()));
        }
        names.into_iter().collect()
    }

    pub(crate) fn set_agent_status(&self, id: &str, status: AgentStatus) -> Result<(), AgentError> {
        let entry = self
            .agents
            .get(id)
            .ok_or_else(|| AgentError::NotFound { id: id.into() })?;
        let from = entry.swap_status(status);
        if from != status {
            self.status_changed(id, from, status);
            if from == AgentStatus::Offline {
                crate::pipeline::serve_waiters(self, &entry);
            }
        }
        Ok(())
    }

    pub(crate) fn transition(&self, entry: &crate::agents::AgentEntry, from: AgentStatus, to: AgentStatus) {
        if entry.transition(from, to) {
            self.status_changed(entry.id.as_str(), from, to);
        }
    }

    fn status_changed(&self, id: &str, from: AgentStatus, to: AgentStatus) {
        self.events.emit(OrchestratorEvent::AgentStatusChanged {
            agent_id: id.to_owned(),
            from,
            to,
        });
        let snapshot = self.registry.snapshot();
        if snapshot.feeds.observes(OperationKind::AgentStatusChange) {
            let op = Operation::new(OperationKind::AgentStatusChange, "")
                .with_agent(id)
                .with_status(from, to)
                .with_outcome(OperationOutcome::Succeeded)
                .with_at_ns(self.clock.monotonic_ns());
            feeds::observe(&snapshot.feeds, &op);
        }
    }
}

/// The orchestrator: agents, plugins, and dispatch of capability calls between them.
///
/// ```
/// use orchestrator_core::{AgentConfig, Orchestrator, Task};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let orchestrator = Orchestrator::builder().build().await?;
/// let id = orchestrator.register_agent(AgentConfig::new("worker").with_capabilities(["rust"])).await?;
/// assert_eq!(orchestrator.agent_status(&id).map(|s| s.to_string()).as_deref(), Some("active"));
///
/// // With no routing plugin registered, the legacy path picks the least-loaded agent.
/// let chosen = orchestrator.select_agent_for_task(&Task::new("build the crate"), &[]).await?;
/// assert_eq!(chosen, id);
/// # Ok::<(), orchestrator_core::OrchestratorError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field("agents", &self.inner.agents.len())
            .field(
                "plugins",
                &self.inner.registry.snapshot().plugins.keys().collect::<Vec<_>>(),
            )
            .field("legacy_mode", &self.inner.legacy_mode)
            .field("call_timeout", &self.inner.call_timeout)
            .finish()
    }
}

impl Orchestrator {
    /// Starts building an orchestrator.
    pub fn builder() -> OrchestratorBuilder {
        OrchestratorBuilder::default()
    }

    // ----- agents -------------------------------------------------------------------------

    /// Registers an agent and returns its id (generated when the configuration has none).
    /// An explicit id that is already registered is refused.
    pub fn register_agent(
        &self,
        config: AgentConfig,
    ) -> impl Future<Output = Result<AgentId, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let feeds = {
                let snapshot = inner.registry.snapshot();
                let fed = snapshot.feeds.observes(OperationKind::AgentRegistration)
                    || snapshot.feeds.intercepts(OperationKind::AgentRegistration);
                fed.then(|| Arc::clone(&snapshot.feeds))
            };
            let Some(feeds) = feeds else {
                let entry = inner.agents.register(config)?;
                inner.events.emit(OrchestratorEvent::AgentRegistered {
                    agent_id: entry.id.to_string(),
                });
                crate::pipeline::serve_waiters(&inner, &entry);
                return Ok(entry.id.clone());
            };
            if feeds.intercepts(OperationKind::AgentRegistration) {
                // Boxed, like dispatch's intercepted path: the interceptors' futures would
                // otherwise enlarge every registration's future.
                return Box::pin(register_fed(&inner, config, &feeds)).await;
            }
            let started = inner.clock.monotonic_ns();
            let entry = inner.agents.register(config)?;
            registered(&inner, &entry, &feeds, started);
            crate::pipeline::serve_waiters(&inner, &entry);
            Ok(entry.id.clone())
        }
    }

    /// Removes an agent.
    pub fn deregister_agent(
        &self,
        id: &AgentId,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let id = id.clone();
        async move {
            inner
                .agents
                .remove(id.as_str())
                .ok_or(AgentError::NotFound { id: id.clone() })?;
            inner.events.emit(OrchestratorEvent::AgentDeregistered {
                agent_id: id.to_string(),
            });
            Ok(())
        }
    }

    /// An agent's status, if it is registered.
    pub fn agent_status(&self, id: &AgentId) -> Option<AgentStatus> {
        self.inner.agents.get(id.as_str()).map(|e| e.status())
    }

    /// Changes an agent's status (an `AgentStatusChanged` event follows when it changed).
    pub fn set_agent_status(&self, id: &AgentId, status: AgentStatus) -> Result<(), OrchestratorError> {
        Ok(self.inner.set_agent_status(id.as_str(), status)?)
    }

    /// A snapshot of one agent.
    pub fn agent(&self, id: &AgentId) -> Option<Agent> {
        self.inner.agents.get(id.as_str()).map(|e| e.snapshot())
    }

    /// Snapshots of every agent, sorted by id.
    pub fn agents(&self) -> Vec<Agent> {
        self.inner.agents.entries().iter().map(|e| e.snapshot()).collect()
    }

    /// How many agents are registered.
    pub fn agent_count(&self) -> usize {
        self.inner.agents.len()
    }

    // ----- plugins ------------------------------------------------------------------------

    /// Registers a plugin: checks its name and capabilities, calls `initialize` with its
    /// [`HostHandle`](plugin_api::HostHandle), records its first health check and makes its capabilities callable.
    /// A plugin name that is taken, or a capability another plugin provides at the same
    /// priority, is refused (see [`register_plugin_with`](Self::register_plugin_with)).
    pub fn register_plugin<P: OrchestrationPlugin>(
        &self,
        plugin: P,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send + 'static {
        self.register_plugin_with(plugin, PluginOptions::new())
    }

    /// Registers a plugin with an explicit priority, or as the replacement (hot swap) of the
    /// registered plugin of the same name: the registry switches atomically, calls in flight
    /// finish on the old instance, then the old one is shut down.
    pub fn register_plugin_with<P: OrchestrationPlugin>(
        &self,
        plugin: P,
        options: PluginOptions,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move { register(&inner, Arc::new(plugin), options, PluginOrigin::Static).await }
    }

    /// Loads a plugin from a shared library and registers it: the stable ABI first, then the
    /// legacy C ABI (see the [`inspect_plugin`](crate::inspect_plugin) docs for what is checked
    /// before plugin code runs). A failed load registers nothing; every error names the file.
    /// The library stays mapped for the life of the process, even after the plugin is
    /// unregistered or replaced.
    pub fn load_plugin(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<LoadedPlugin, OrchestratorError>> + Send + 'static {
        self.load_plugin_with(path, PluginOptions::new())
    }

    /// Loads a plugin library with explicit [`PluginOptions`]: a priority, or `replace()` to
    /// hot-swap the registered plugin of the same name for the library's (new) version.
    pub fn load_plugin_with(
        &self,
        path: impl AsRef<Path>,
        options: PluginOptions,
    ) -> impl Future<Output = Result<LoadedPlugin, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let path = path.as_ref().to_owned();
        async move {
            let opened = open_library(path).await?;
            register_opened(&inner, opened, options).await
        }
    }

    /// Loads every shared library (`*.so`, `*.dylib` or `*.dll`, as the platform names them) in
    /// `dir`, in file-name order, and reports on each file: loaded, failed (and why), or skipped
    /// (not a library). One bad file does not stop the others.
    pub fn load_plugin_dir(&self, dir: impl AsRef<Path>) -> impl Future<Output = LoadReport> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let dir = dir.as_ref().to_owned();
        async move {
            let mut report = LoadReport {
                dir: dir.clone(),
                error: None,
                entries: Vec::new(),
            };
            let files = match library_files(&dir) {
                Ok(files) => files,
                Err(e) => {
                    report.error = Some(format!("cannot read plugin directory {}: {e}", dir.display()));
                    return report;
                }
            };
            for (path, is_library) in files {
                let outcome = if is_library {
                    match open_library(path.clone()).await {
                        Ok(opened) => match register_opened(&inner, opened, PluginOptions::new()).await {
                            Ok(loaded) => LoadOutcome::Loaded(loaded),
                            Err(e) => LoadOutcome::Failed(e.to_string()),
                        },
                        Err(e) => LoadOutcome::Failed(e.to_string()),
                    }
                } else {
                    LoadOutcome::Skipped(format!("not a .{LIBRARY_EXTENSION} file"))
                };
                report.entries.push(LoadReportEntry { path, outcome });
            }
            report
        }
    }

    /// Unregisters a plugin: its capabilities stop being offered at once, calls in flight
    /// drain, then its `shutdown` runs.
    pub fn unregister_plugin(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        async move {
            let slot = inner.registry.remove(&name)?;
            retire(&inner, slot).await;
            Ok(())
        }
    }

    /// What the catalog knows about every plugin, by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.inner
            .registry
            .snapshot()
            .plugins
            .values()
            .map(|s| {
                s.info(
                    self.inner.registry.interests_of(&s.name),
                    self.inner.clock.monotonic_ns(),
                )
            })
            .collect()
    }

    /// The capabilities plugins provide, sorted. (The legacy path's are listed in the
    /// [`catalog`](Self::catalog).)
    pub fn capabilities(&self) -> Vec<String> {
        self.inner.registry.snapshot().capability_names()
    }

    /// Whether some plugin provides `capability` (enabled or not).
    pub fn has_capability(&self, capability: &str) -> bool {
        self.inner.registry.snapshot().routes.contains_key(capability)
    }

    /// Switches a capability on or off. A disabled capability skips its plugins and goes to
    /// the legacy path (or fails, if the legacy path does not serve it).
    pub fn set_capability_enabled(&self, capability: &str, enabled: bool) -> Result<(), OrchestratorError> {
        let legacy_known = self.inner.legacy_mode && legacy::serves(capability);
        let changed = self.inner.registry.set_enabled(capability, enabled, legacy_known)?;
        if changed {
            self.inner.events.emit(OrchestratorEvent::CapabilityToggled {
                capability: capability.to_owned(),
                enabled,
            });
        }
        Ok(())
    }

    /// Whether `capability` is enabled (capabilities are enabled unless switched off).
    pub fn is_capability_enabled(&self, capability: &str) -> bool {
        self.inner.registry.snapshot().is_enabled(capability)
    }

    /// Runs every plugin's health check (each bounded by the call timeout; a panic or a
    /// timeout counts as unhealthy), records the results for the catalog and returns them.
    pub fn health(&self) -> impl Future<Output = BTreeMap<String, HealthStatus>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let snapshot = inner.registry.snapshot_arc();
            let mut report = BTreeMap::new();
            for slot in snapshot.plugins.values() {
                // A plugin retired since the snapshot is not asked.
                let Some(_in_flight) = slot.enter() else { continue };
                let health = with_event_losses(slot, check_health(&slot.plugin, inner.call_timeout).await);
                let health = crate::plugins::with_quarantine(slot, inner.clock.monotonic_ns(), health);
                slot.set_health(health.clone());
                report.insert(slot.name.to_string(), health);
            }
            report
        }
    }

    /// Everything hosted, serializable: plugins (origin, version, capabilities, priority, last
    /// health, call counters), capabilities (providers in order, enabled, legacy fallback),
    /// legacy mode and the agent count.
    pub fn catalog(&self) -> Catalog {
        let snapshot = self.inner.registry.snapshot();
        let legacy_mode = self.inner.legacy_mode;
        let mut names: BTreeSet<&str> = snapshot.routes.keys().map(String::as_str).collect();
        if legacy_mode {
            names.extend(legacy::LEGACY_CAPABILITIES);
        }
        let capabilities = names
            .into_iter()
            .map(|name| CapabilityInfo {
                name: name.to_owned(),
                providers: snapshot
                    .routes
                    .get(name)
                    .map(|r| r.providers.iter().map(|p| p.name.to_string()).collect())
                    .unwrap_or_default(),
                enabled: snapshot.is_enabled(name),
                legacy_fallback: legacy_mode && legacy::serves(name),
            })
            .collect();
        Catalog {
            plugins: snapshot
                .plugins
                .values()
                .map(|s| {
                    s.info(
                        self.inner.registry.interests_of(&s.name),
                        self.inner.clock.monotonic_ns(),
                    )
                })
                .collect(),
            capabilities,
            legacy_mode,
            agent_count: self.inner.agents.len(),
            events_dropped: self.inner.events.dropped(),
        }
    }

    /// Receives every lifecycle event after the plugins have. A receiver that falls more than
    /// 4096 events behind misses the oldest (`RecvError::Lagged`).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<OrchestratorEvent> {
        self.inner.events.subscribe()
    }

    // ----- dispatch -----------------------------------------------------------------------

    /// Calls a capability: feature flag, then providers by priority, then the legacy path.
    /// The response carries `served_by`, `fallback` and the correlation id (the request's, or
    /// a generated one).
    ///
    /// ```
    /// use orchestrator_core::Orchestrator;
    /// use plugin_api::IntegrationRequest;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let orchestrator = Orchestrator::builder().build().await?;
    /// let request = IntegrationRequest::new("extended_thinking",
    ///     serde_json::json!({"task_description": "Write the parser, then fuzz it"}));
    /// let response = orchestrator.execute(request).await?;
    /// assert_eq!(response.served_by, "legacy");
    /// assert_eq!(response.data["plan"].as_array().map(Vec::len), Some(2));
    ///
    /// let unknown = orchestrator.execute(IntegrationRequest::new("teleport", serde_json::json!({}))).await;
    /// assert!(unknown.unwrap_err().to_string().contains("`teleport`"));
    /// # Ok::<(), orchestrator_core::OrchestratorError>(())
    /// # }).unwrap();
    /// ```
    pub fn execute(
        &self,
        request: IntegrationRequest,
    ) -> impl Future<Output = Result<IntegrationResponse, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move { dispatch::execute(&inner, request).await }
    }

    /// Picks an agent for `task` among `candidates` (every registered agent when empty)
    /// through `semantic_routing`; on the legacy path, the least-loaded eligible agent with
    /// ties taken round robin. A pick that is not an eligible candidate is refused, and falls
    /// back to the legacy choice when legacy mode is on.
    pub fn select_agent_for_task(
        &self,
        task: &Task,
        candidates: &[AgentId],
    ) -> impl Future<Output = Result<AgentId, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let task = task.clone();
        let candidates = candidates.to_vec();
        async move { select_agent(&inner, &task, &candidates).await }
    }

    /// Runs `task_data` on an agent through the [`AgentExecutor`]. When the data carries a
    /// `task_description` (or `description`) string, `extended_thinking` analyses it first and
    /// the executor receives the analysis. The agent's load is counted while it runs; it turns
    /// `busy` at capacity and back to `active` after; a sleeping agent is woken.
    pub fn execute_agent_task(
        &self,
        agent: &AgentId,
        task_data: Value,
    ) -> impl Future<Output = Result<Value, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let agent = agent.clone();
        async move { run_agent_task(&inner, &agent, task_data, None).await }
    }

    /// Runs a task through the pipeline of every plugin present, under one correlation id:
    /// authentication and authorisation when it carries a token (refused before any agent sees
    /// it), the slash command it is or the analysis of what it says, the choice of an agent
    /// among those that can take it (waiting, by priority, while all are at capacity), the
    /// assignment, the executor (retried with backoff on retryable failures, on another agent
    /// when one keeps failing), its quality gates, and the records (learning, mapping, workflow,
    /// audit, and a `task_completed` event when asked). The report traces every step: the plugin that served
    /// it, how long it took and what it came to. See the `pipeline` module for the order of the
    /// steps and the options ([`PipelineOptions`](crate::PipelineOptions)).
    ///
    /// A task refused before it ran is an error ([`TaskError`](crate::TaskError): bad token,
    /// not allowed, no agent could take it, queue full, deadline passed, id already submitted);
    /// a task that ran and failed is a report with [`TaskStatus::Failed`](crate::TaskStatus).
    ///
    /// ```
    /// use orchestrator_core::{AgentConfig, Orchestrator, PipelineStep, Task, TaskStatus};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let orchestrator = Orchestrator::builder().build().await?;
    /// orchestrator.register_agent(AgentConfig::new("db").with_capabilities(["database"])).await?;
    ///
    /// let report = orchestrator
    ///     .submit_task(Task::new("migrate the orders table").with_required_capabilities(["database"]))
    ///     .await?;
    /// assert_eq!(report.status, TaskStatus::Succeeded);
    /// assert_eq!(report.attempts, 1);
    /// // No plugins here: the analysis came from the legacy path, the executor was the dry run.
    /// assert_eq!(report.step(PipelineStep::Analyse).next().map(|s| s.plugin.as_str()), Some("legacy"));
    /// assert_eq!(report.output.as_ref().map(|o| o["dry_run"] == true), Some(true));
    /// # Ok::<(), orchestrator_core::OrchestratorError>(())
    /// # }).unwrap();
    /// ```
    pub fn submit_task(
        &self,
        task: Task,
    ) -> impl Future<Output = Result<crate::TaskReport, OrchestratorError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move { crate::pipeline::submit(&inner, task).await }
    }

    /// How many submitted tasks wait for a free agent now.
    pub fn queued_tasks(&self) -> usize {
        self.inner.waiting.len()
    }

    /// The bound on each provider call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Whether the legacy fallback path is on.
    pub fn legacy_mode(&self) -> bool {
        self.inner.legacy_mode
    }
}

/// `register_agent` with the operation feeds: interceptors before, observers after.
async fn register_fed(
    inner: &Inner,
    config: AgentConfig,
    feeds: &crate::registry::Feeds,
) -> Result<AgentId, OrchestratorError> {
    let started = inner.clock.monotonic_ns();
    if feeds.intercepts(OperationKind::AgentRegistration) {
        let details = serde_json::to_value(&config).unwrap_or(Value::Null);
        let mut asked = Operation::new(OperationKind::AgentRegistration, "")
            .with_details(&details)
            .with_at_ns(started);
        asked.agent_id = config.id.as_ref().map(|id| id.as_str().into());
        if let Err(veto) = feeds::intercept(feeds, inner.call_timeout, &asked).await {
            return Err(AgentError::RegistrationVetoed {
                plugin: veto.plugin,
                reason: veto.reason,
            }
            .into());
        }
    }
    let entry = inner.agents.register(config)?;
    registered(inner, &entry, feeds, started);
    crate::pipeline::serve_waiters(inner, &entry);
    Ok(entry.id.clone())
}

/// After a registration: the event, and the observers (when there are any).
fn registered(inner: &Inner, entry: &crate::agents::AgentEntry, feeds: &crate::registry::Feeds, started: u64) {
    inner.events.emit(OrchestratorEvent::AgentRegistered {
        agent_id: entry.id.to_string(),
    });
    if feeds.observes(OperationKind::AgentRegistration) {
        let now = inner.clock.monotonic_ns();
        let op = Operation::new(OperationKind::AgentRegistration, "")
            .with_agent(entry.id.as_str())
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(now.saturating_sub(started))
            .with_at_ns(now);
        feeds::observe(feeds, &op);
    }
}
