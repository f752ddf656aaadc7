//! The [`Orchestrator`] and its builder.
//!
//! `Orchestrator` is a cheap handle (`Arc` inside): clone it into every task that needs it.
//! Every async method returns a `Send + 'static` future, so a call can be handed to
//! `tokio::spawn` as it is; the futures are lazy and do nothing until polled.

use crate::agents::{Agent, AgentConfig, AgentRegistry};
use crate::clock::{Clock, SystemClock};
use crate::config::read_toml_file;
use crate::dispatch;
use crate::error::{AgentError, ConfigError, LoadError, OrchestratorError, RegistryError};
use crate::events::EventBus;
use crate::executor::{AgentExecutor, DryRunExecutor, ExecutionContext};
use crate::feeds;
use crate::guard::{contained, guarded};
use crate::host::CoreHost;
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::loader::{LIBRARY_EXTENSION, OpenedPlugin, PluginAbi, PluginInspection, open_plugin};
use crate::registry::{
    CapabilityInfo, CapabilityRegistry, Catalog, PluginInfo, PluginOptions, PluginOrigin, PluginSlot, lock,
};
use crate::{AgentId, Task};
use plugin_api::{
    AgentStatus, HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse, Interests, Operation,
    OperationKind, OperationOutcome, OrchestrationPlugin, OrchestratorEvent, is_valid_capability_name,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

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
    executor: Arc<dyn AgentExecutor>,
    configs: Mutex<BTreeMap<String, Value>>,
    host: Arc<CoreHost>,
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
        }
        Ok(())
    }

    fn transition(&self, entry: &crate::agents::AgentEntry, from: AgentStatus, to: AgentStatus) {
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
    inner: Arc<Inner>,
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
    /// [`HostHandle`], records its first health check and makes its capabilities callable.
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
            .map(|s| s.info(self.inner.registry.interests_of(&s.name)))
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
                .map(|s| s.info(self.inner.registry.interests_of(&s.name)))
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

    /// The bound on each provider call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Whether the legacy fallback path is on.
    pub fn legacy_mode(&self) -> bool {
        self.inner.legacy_mode
    }
}

fn validate_plugin(plugin: &dyn OrchestrationPlugin) -> Result<(String, Vec<String>), RegistryError> {
    let name = plugin.name().to_owned();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(RegistryError::InvalidPluginName { name });
    }
    let capabilities =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plugin.capabilities())).map_err(|payload| {
            RegistryError::InvalidCapabilities {
                plugin: name.clone(),
                reason: format!(
                    "capabilities() panicked: {}",
                    crate::guard::panic_message(payload.as_ref())
                ),
            }
        })?;
    if capabilities.is_empty() {
        return Err(RegistryError::InvalidCapabilities {
            plugin: name,
            reason: "it provides no capability".into(),
        });
    }
    let mut seen = BTreeSet::new();
    for cap in &capabilities {
        if !is_valid_capability_name(cap) {
            return Err(RegistryError::InvalidCapabilities {
                plugin: name,
                reason: format!(
                    "{cap:?} is not a capability name (1 to 64 lower-case ASCII letters, digits or `_`, starting with a letter)"
                ),
            });
        }
        if !seen.insert(cap.as_str()) {
            return Err(RegistryError::InvalidCapabilities {
                plugin: name,
                reason: format!("{cap:?} is listed twice"),
            });
        }
    }
    Ok((name, capabilities))
}

/// A plugin that missed lifecycle events since the last health check is degraded, whatever it
/// says of itself (unless it says worse).
fn with_event_losses(slot: &PluginSlot, health: HealthStatus) -> HealthStatus {
    use std::sync::atomic::Ordering;
    let dropped = slot.stats.events_dropped.load(Ordering::Relaxed);
    let before = slot.stats.events_dropped_reported.swap(dropped, Ordering::Relaxed);
    if dropped > before && health.is_healthy() {
        HealthStatus::degraded(format!(
            "missed {} lifecycle events since the last health check ({dropped} in all): its on_event is slower than events arrive and its queue was full",
            dropped - before
        ))
    } else {
        health
    }
}

async fn check_health(plugin: &Arc<dyn OrchestrationPlugin>, timeout: Duration) -> HealthStatus {
    match guarded(timeout, || plugin.health_check()).await {
        Ok(health) => health,
        Err(failure) => HealthStatus::unhealthy(format!("health check {failure}")),
    }
}

pub(crate) async fn register(
    inner: &Arc<Inner>,
    plugin: Arc<dyn OrchestrationPlugin>,
    options: PluginOptions,
    origin: PluginOrigin,
) -> Result<(), OrchestratorError> {
    let (name, capabilities) = validate_plugin(plugin.as_ref())?;
    let slot = Arc::new(PluginSlot::new(plugin, capabilities, options, origin));
    let _ = slot.events.set(inner.events.attach(&slot));
    // Refuse early, before running the plugin's initializer, when it could not be inserted.
    inner.registry.check_insert(&slot, options.replace)?;

    // The plugin's interests are recorded before its initializer runs, which may change them.
    // (During a hot swap they apply to the plugin being replaced meanwhile; on failure the
    // previous ones come back.)
    let previous_interests = inner.registry.interests_of(&name);
    let interests =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.plugin.interests())).unwrap_or(Interests::NONE);
    inner.registry.set_interests(&name, interests);
    let restore_interests = || {
        inner.registry.set_interests(&name, previous_interests);
        inner.registry.forget_interests_unless_registered(&name);
    };

    let handle = HostHandle::new(name.as_str(), inner.host.clone());
    let initialized = guarded(inner.call_timeout, || slot.plugin.initialize(handle)).await;
    let reason = match initialized {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.message),
        Err(failure) => Some(failure.to_string()),
    };
    if let Some(reason) = reason {
        restore_interests();
        return Err(RegistryError::InitializeFailed { plugin: name, reason }.into());
    }
    slot.set_health(check_health(&slot.plugin, inner.call_timeout).await);

    let replaced = match inner.registry.insert(Arc::clone(&slot), options.replace) {
        Ok(replaced) => replaced,
        Err(conflict) => {
            // Registered concurrently by someone else meanwhile: undo our initialization.
            let _ = guarded(inner.call_timeout, || slot.plugin.shutdown()).await;
            restore_interests();
            return Err(conflict.into());
        }
    };
    if let Some(old) = replaced {
        retire(inner, old).await;
    }
    inner.events.emit(OrchestratorEvent::PluginLoaded {
        plugin: name,
        version: slot.version.clone(),
        capabilities: slot.capabilities.clone(),
    });
    Ok(())
}

/// Drains a plugin removed from the registry and shuts it down. Runs as a task of its own, so
/// that the shutdown and the `PluginUnloaded` event happen even if the caller stops waiting.
async fn retire(inner: &Arc<Inner>, slot: Arc<PluginSlot>) {
    let inner = Arc::clone(inner);
    let task = inner.runtime.clone().spawn(async move {
        slot.drain(inner.call_timeout + Duration::from_secs(1)).await;
        if let Err(failure) = guarded(inner.call_timeout, || slot.plugin.shutdown()).await {
            tracing::warn!(plugin = %slot.name, %failure, "shutdown failed");
        }
        inner.events.emit(OrchestratorEvent::PluginUnloaded {
            plugin: slot.name.to_string(),
        });
    });
    if let Err(e) = task.await {
        tracing::warn!("retiring a plugin failed: {e}");
    }
}

/// Opens a library off the async threads (`dlopen` reads the file and runs initialisers).
async fn open_library(path: PathBuf) -> Result<OpenedPlugin, OrchestratorError> {
    let opened = tokio::task::spawn_blocking(move || open_plugin(&path))
        .await
        .map_err(|e| RegistryError::InitializeFailed {
            plugin: "(loading)".into(),
            reason: format!("the loader task failed: {e}"),
        })??;
    Ok(opened)
}

async fn register_opened(
    inner: &Arc<Inner>,
    opened: OpenedPlugin,
    options: PluginOptions,
) -> Result<LoadedPlugin, OrchestratorError> {
    let OpenedPlugin { plugin, inspection } = opened;
    let origin = origin_of(&inspection);
    register(inner, plugin, options, origin.clone()).await?;
    Ok(LoadedPlugin::new(inspection, origin))
}

fn origin_of(inspection: &PluginInspection) -> PluginOrigin {
    match inspection.abi {
        PluginAbi::CAbi => PluginOrigin::CAbi {
            path: inspection.path.clone(),
        },
        _ => PluginOrigin::StableAbi {
            path: inspection.path.clone(),
        },
    }
}

/// Every regular file in `dir`, sorted, each with whether it has the library extension.
fn library_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let is_library = path.extension().is_some_and(|e| e == LIBRARY_EXTENSION);
            files.push((path, is_library));
        }
    }
    files.sort();
    Ok(files)
}

/// A plugin loaded from a library and registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LoadedPlugin {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The capabilities it serves.
    pub capabilities: Vec<String>,
    /// The library and the interface it was loaded through.
    pub origin: PluginOrigin,
    /// The interface version the library was built against.
    pub interface_version: String,
}

impl LoadedPlugin {
    fn new(inspection: PluginInspection, origin: PluginOrigin) -> Self {
        Self {
            name: inspection.manifest.name,
            version: inspection.manifest.version,
            capabilities: inspection.manifest.capabilities,
            origin,
            interface_version: inspection.interface_version,
        }
    }
}

/// What happened to one file of a plugin directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadOutcome {
    /// Loaded and registered.
    Loaded(LoadedPlugin),
    /// A library that failed to load or register: why.
    Failed(String),
    /// Not a library: why it was not tried.
    Skipped(String),
}

/// One file's line in a [`LoadReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LoadReportEntry {
    /// The file.
    pub path: PathBuf,
    /// What happened.
    pub outcome: LoadOutcome,
}

/// What [`Orchestrator::load_plugin_dir`] did, file by file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// The directory.
    pub dir: PathBuf,
    /// Why the directory itself could not be read, if it could not.
    pub error: Option<String>,
    /// One entry per file, in file-name order.
    pub entries: Vec<LoadReportEntry>,
}

impl LoadReport {
    /// The plugins loaded.
    pub fn loaded(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.entries.iter().filter_map(|e| match &e.outcome {
            LoadOutcome::Loaded(p) => Some(p),
            _ => None,
        })
    }

    /// The files that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.entries.iter().filter_map(|e| match &e.outcome {
            LoadOutcome::Failed(why) => Some((e.path.as_path(), why.as_str())),
            _ => None,
        })
    }
}

async fn select_agent(inner: &Inner, task: &Task, candidates: &[AgentId]) -> Result<AgentId, OrchestratorError> {
    let data = routing_request(task, candidates);
    let response = dispatch::execute(inner, IntegrationRequest::new("semantic_routing", data.clone())).await?;
    if !response.success {
        return Err(AgentError::NoEligibleAgent {
            task: task.id.clone(),
            reason: response.error.unwrap_or_else(|| "the router gave no reason".into()),
        }
        .into());
    }
    let selected = response
        .data
        .get("selected_agent")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match check_selection(inner, task, candidates, selected) {
        Ok(id) => Ok(id),
        Err(reason) if response.served_by != dispatch::LEGACY && inner.legacy_mode => {
            tracing::warn!(plugin = %response.served_by, selected, %reason, "routing pick refused; legacy selection");
            inner.events.emit(OrchestratorEvent::CapabilityFallback {
                capability: "semantic_routing".into(),
                plugin: response.served_by.clone(),
                reason: format!("picked `{selected}`, {reason}"),
                correlation_id: response.correlation_id.clone(),
            });
            let fallback =
                legacy::handle("semantic_routing", &data, &inner.agents, &inner.round_robin).map_err(|reason| {
                    AgentError::NoEligibleAgent {
                        task: task.id.clone(),
                        reason,
                    }
                })?;
            let selected = fallback
                .get("selected_agent")
                .and_then(Value::as_str)
                .unwrap_or_default();
            check_selection(inner, task, candidates, selected).map_err(|reason| {
                AgentError::NoEligibleAgent {
                    task: task.id.clone(),
                    reason,
                }
                .into()
            })
        }
        Err(reason) => Err(AgentError::InvalidSelection {
            task: task.id.clone(),
            selected: selected.to_owned(),
            reason,
        }
        .into()),
    }
}

fn routing_request(task: &Task, candidates: &[AgentId]) -> Value {
    let mut data = json!({
        "task": {
            "id": task.id,
            "description": task.description,
            "required_capabilities": task.required_capabilities,
        }
    });
    if !candidates.is_empty() {
        data["available_agents"] = json!(candidates);
    }
    data
}

fn check_selection(inner: &Inner, task: &Task, candidates: &[AgentId], selected: &str) -> Result<AgentId, String> {
    if selected.is_empty() {
        return Err("the answer has no `selected_agent`".into());
    }
    if !candidates.is_empty() && !candidates.iter().any(|c| c.as_str() == selected) {
        return Err("it is not among the candidates".into());
    }
    let entry = inner.agents.get(selected).ok_or("it is not registered")?;
    if entry.status() == AgentStatus::Offline {
        return Err("it is offline".into());
    }
    if let Some(missing) = task.required_capabilities.iter().find(|c| !entry.has_capability(c)) {
        return Err(format!("it lacks the required capability `{missing}`"));
    }
    Ok(entry.id.clone())
}

/// Counts a task on an agent for as long as it lives, so the load is given back even when the
/// task's future is dropped half-way.
struct RunningTask<'a> {
    inner: &'a Inner,
    entry: Arc<crate::agents::AgentEntry>,
}

impl<'a> RunningTask<'a> {
    fn start(inner: &'a Inner, entry: Arc<crate::agents::AgentEntry>) -> Self {
        inner.transition(&entry, AgentStatus::Sleeping, AgentStatus::Active);
        if entry.begin_task() >= entry.capacity {
            inner.transition(&entry, AgentStatus::Active, AgentStatus::Busy);
        }
        Self { inner, entry }
    }
}

impl Drop for RunningTask<'_> {
    fn drop(&mut self) {
        if self.entry.end_task() < self.entry.capacity {
            self.inner
                .transition(&self.entry, AgentStatus::Busy, AgentStatus::Active);
        }
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

/// Reports a task's finish to its observers exactly once: with its outcome when it ends, or, if
/// the task's future is dropped first (the caller stopped waiting), as failed and cancelled, so
/// that observers counting tasks in flight never see a start without a finish.
struct TaskFinishFeed<'a> {
    inner: &'a Inner,
    feeds: Arc<crate::registry::Feeds>,
    op: Option<Operation<'static>>,
    started: u64,
}

impl TaskFinishFeed<'_> {
    fn report(&mut self, outcome: OperationOutcome, error: Option<String>) {
        let Some(mut op) = self.op.take() else { return };
        let now = self.inner.clock.monotonic_ns();
        op.error = error.map(Into::into);
        let op = op
            .with_outcome(outcome)
            .with_duration_ns(now.saturating_sub(self.started))
            .with_at_ns(now);
        feeds::observe(&self.feeds, &op);
    }
}

impl Drop for TaskFinishFeed<'_> {
    fn drop(&mut self) {
        self.report(
            OperationOutcome::Failed,
            Some("cancelled: the caller stopped waiting before the task finished".into()),
        );
    }
}

/// Runs a task on an agent in an `invoke_agent` span (OpenTelemetry's GenAI name for an agent
/// doing work), with `gen_ai.agent.id` and the correlation id.
pub(crate) async fn run_agent_task(
    inner: &Inner,
    agent: &AgentId,
    data: Value,
    correlation_id: Option<String>,
) -> Result<Value, OrchestratorError> {
    let correlation_id = correlation_id.unwrap_or_else(new_correlation_id);
    let span = tracing::info_span!(
        "invoke_agent",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.id = %agent,
        correlation_id = %correlation_id,
    );
    run_task(inner, agent, data, correlation_id).instrument(span).await
}

async fn run_task(
    inner: &Inner,
    agent: &AgentId,
    data: Value,
    correlation_id: String,
) -> Result<Value, OrchestratorError> {
    let entry = inner
        .agents
        .get(agent.as_str())
        .ok_or_else(|| AgentError::NotFound { id: agent.clone() })?;
    let status = entry.status();
    if status == AgentStatus::Offline {
        return Err(AgentError::Unavailable {
            id: agent.clone(),
            status,
        }
        .into());
    }
    let description = ["task_description", "description"]
        .iter()
        .find_map(|key| data.get(*key).and_then(Value::as_str));
    let analysis = match description {
        Some(text) => {
            let request = IntegrationRequest::new("extended_thinking", json!({ "task_description": text }))
                .with_agent(agent.as_str())
                .with_correlation_id(correlation_id.clone());
            let response = dispatch::execute(inner, request).await?;
            response.success.then_some(response.data)
        }
        None => None,
    };

    let feeds = {
        let snapshot = inner.registry.snapshot();
        let fed = snapshot.feeds.intercepts(OperationKind::TaskStart)
            || snapshot.feeds.observes(OperationKind::TaskStart)
            || snapshot.feeds.observes(OperationKind::TaskFinish);
        fed.then(|| Arc::clone(&snapshot.feeds))
    };
    let task_kind = data.get("kind").and_then(Value::as_str).map(str::to_owned);
    let started = feeds.as_ref().map_or(0, |_| inner.clock.monotonic_ns());
    let task_operation = |kind: OperationKind| {
        let mut op = Operation::new(kind, correlation_id.clone()).with_agent(agent.as_str().to_owned());
        op.task_kind = task_kind.clone().map(Into::into);
        op
    };
    if let Some(feeds) = feeds.as_ref().filter(|f| f.intercepts(OperationKind::TaskStart)) {
        let asked = task_operation(OperationKind::TaskStart)
            .with_details(&data)
            .with_at_ns(started);
        if let Err(veto) = feeds::intercept(feeds, inner.call_timeout, &asked).await {
            return Err(AgentError::TaskVetoed {
                id: agent.clone(),
                plugin: veto.plugin,
                reason: veto.reason,
            }
            .into());
        }
    }

    let running = RunningTask::start(inner, entry);
    if let Some(feeds) = feeds.as_ref().filter(|f| f.observes(OperationKind::TaskStart)) {
        feeds::observe(feeds, &task_operation(OperationKind::TaskStart).with_at_ns(started));
    }
    let mut finish = feeds
        .as_ref()
        .filter(|f| f.observes(OperationKind::TaskFinish))
        .map(|feeds| TaskFinishFeed {
            inner,
            feeds: Arc::clone(feeds),
            op: Some(task_operation(OperationKind::TaskFinish)),
            started,
        });
    let context = ExecutionContext {
        agent: running.entry.snapshot(),
        data,
        analysis,
        correlation_id,
    };
    let executor = Arc::clone(&inner.executor);
    let outcome = contained(|| executor.execute(context)).await;
    drop(running);
    if let Some(finish) = finish.as_mut() {
        match &outcome {
            Ok(Ok(_)) => finish.report(OperationOutcome::Succeeded, None),
            Ok(Err(error)) => finish.report(OperationOutcome::Failed, Some(error.message.clone())),
            Err(failure) => finish.report(OperationOutcome::Panicked, Some(failure.to_string())),
        }
    }
    match outcome {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(AgentError::ExecutionFailed {
            id: agent.clone(),
            message: error.message,
        }
        .into()),
        Err(failure) => Err(AgentError::ExecutionFailed {
            id: agent.clone(),
            message: format!("the executor {failure}"),
        }
        .into()),
    }
}

/// A library the builder loads at build.
#[derive(Debug)]
enum LibrarySource {
    File(PathBuf),
    Dir(PathBuf),
}

/// Builds an [`Orchestrator`].
///
/// ```
/// use orchestrator_core::Orchestrator;
/// use std::time::Duration;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let orchestrator = Orchestrator::builder()
///     .legacy_mode(true)
///     .call_timeout(Duration::from_millis(500))
///     .build()
///     .await?;
/// assert_eq!(orchestrator.call_timeout(), Duration::from_millis(500));
/// # Ok::<(), orchestrator_core::OrchestratorError>(())
/// # }).unwrap();
/// ```
#[must_use = "a builder does nothing until `.build().await`"]
pub struct OrchestratorBuilder {
    plugins: Vec<(Arc<dyn OrchestrationPlugin>, PluginOptions)>,
    libraries: Vec<LibrarySource>,
    configs: BTreeMap<String, Value>,
    config_files: Vec<PathBuf>,
    legacy_mode: bool,
    call_timeout: Duration,
    executor: Arc<dyn AgentExecutor>,
    clock: Arc<dyn Clock>,
    event_queue_capacity: usize,
}

impl Default for OrchestratorBuilder {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            libraries: Vec::new(),
            configs: BTreeMap::new(),
            config_files: Vec::new(),
            legacy_mode: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            executor: Arc::new(DryRunExecutor),
            clock: Arc::new(SystemClock::new()),
            event_queue_capacity: crate::events::DEFAULT_EVENT_QUEUE_CAPACITY,
        }
    }
}

impl fmt::Debug for OrchestratorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrchestratorBuilder")
            .field(
                "plugins",
                &self
                    .plugins
                    .iter()
                    .map(|(p, _)| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("libraries", &self.libraries)
            .field("configured", &self.configs.keys().collect::<Vec<_>>())
            .field("config_files", &self.config_files)
            .field("legacy_mode", &self.legacy_mode)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl OrchestratorBuilder {
    /// Adds a statically linked plugin, registered at build in the order added.
    pub fn plugin<P: OrchestrationPlugin>(self, plugin: P) -> Self {
        self.plugin_with(plugin, PluginOptions::new())
    }

    /// The clock plugins read through the host ([`SystemClock`] by default). A [`ManualClock`](crate::ManualClock)
    /// lets tests of time-driven plugins move time forward instead of sleeping; the
    /// orchestrator's own timeouts stay on real time.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Adds a plugin with explicit [`PluginOptions`].
    pub fn plugin_with<P: OrchestrationPlugin>(mut self, plugin: P, options: PluginOptions) -> Self {
        self.plugins.push((Arc::new(plugin), options));
        self
    }

    /// Loads a plugin library at build (see [`Orchestrator::load_plugin`]); a failure fails
    /// the build.
    pub fn load_plugin(mut self, path: impl AsRef<Path>) -> Self {
        self.libraries.push(LibrarySource::File(path.as_ref().to_owned()));
        self
    }

    /// Loads every plugin library in `dir` at build, in file-name order; files without the
    /// platform's library extension are skipped, and any library that fails to load fails the
    /// build (use [`Orchestrator::load_plugin_dir`] for a lenient, reported load).
    pub fn plugin_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.libraries.push(LibrarySource::Dir(dir.as_ref().to_owned()));
        self
    }

    /// Sets the configuration of the plugin named `plugin_name` (a JSON object). Replaces a
    /// table of the same name from [`config_file`](Self::config_file).
    pub fn configure(mut self, plugin_name: impl Into<String>, config: Value) -> Self {
        self.configs.insert(plugin_name.into(), config);
        self
    }

    /// Reads plugin configuration from a TOML file with one table per plugin, at build.
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Self {
        self.config_files.push(path.as_ref().to_owned());
        self
    }

    /// Turns the legacy fallback path on (the default) or off. Off, a capability with no
    /// working provider is an error.
    pub fn legacy_mode(mut self, on: bool) -> Self {
        self.legacy_mode = on;
        self
    }

    /// Bounds each provider call (and each `initialize`, health check, event delivery and
    /// shutdown); default [`DEFAULT_CALL_TIMEOUT`].
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How many lifecycle events each plugin's queue holds (default
    /// [`DEFAULT_EVENT_QUEUE_CAPACITY`](crate::DEFAULT_EVENT_QUEUE_CAPACITY), at least 1).
    ///
    /// Every plugin hears events from a bounded queue of its own, through a delivery task of
    /// its own, so a slow `on_event` delays only that plugin. When its queue is full, new
    /// events are dropped for that plugin only (drop-newest: it sees the stream up to a gap,
    /// never out of order), counted in [`PluginInfo::events_dropped`](crate::PluginInfo::events_dropped),
    /// and reported as `degraded` by the next [`Orchestrator::health`]. Memory stays bounded
    /// by the capacities whatever a plugin does.
    pub fn event_queue_capacity(mut self, capacity: usize) -> Self {
        self.event_queue_capacity = capacity.max(1);
        self
    }

    /// Sets the executor that runs agents' tasks (default: [`DryRunExecutor`]).
    pub fn executor(mut self, executor: impl AgentExecutor) -> Self {
        self.executor = Arc::new(executor);
        self
    }

    /// Builds the orchestrator: reads configuration files, starts event delivery and
    /// registers the plugins in order. Must run inside a Tokio runtime with timers enabled.
    pub async fn build(self) -> Result<Orchestrator, OrchestratorError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let mut configs = BTreeMap::new();
        for path in &self.config_files {
            configs.extend(read_toml_file(path)?);
        }
        configs.extend(self.configs);

        let mut opened = Vec::new();
        for source in self.libraries {
            match source {
                LibrarySource::File(path) => opened.push(open_library(path).await?),
                LibrarySource::Dir(dir) => {
                    let files = library_files(&dir).map_err(|source| LoadError::NotFound {
                        path: dir.clone(),
                        source,
                    })?;
                    for (path, is_library) in files {
                        if is_library {
                            opened.push(open_library(path).await?);
                        }
                    }
                }
            }
        }

        let plugin_names: Vec<String> = self
            .plugins
            .iter()
            .map(|(p, _)| p.name().to_owned())
            .chain(opened.iter().map(|o| o.inspection.manifest.name.clone()))
            .collect();
        for (plugin, value) in &configs {
            if !value.is_object() {
                return Err(ConfigError::NotATable { plugin: plugin.clone() }.into());
            }
            if !plugin_names.contains(plugin) {
                return Err(ConfigError::UnknownPlugin {
                    plugin: plugin.clone(),
                    known: plugin_names,
                }
                .into());
            }
        }

        let registry = Arc::new(CapabilityRegistry::default());
        let events = EventBus::start(
            Arc::clone(&registry),
            &runtime,
            self.call_timeout,
            self.event_queue_capacity,
        );
        let inner = Arc::new_cyclic(|weak| Inner {
            agents: AgentRegistry::default(),
            registry,
            events,
            legacy_mode: self.legacy_mode,
            call_timeout: self.call_timeout,
            round_robin: AtomicUsize::new(0),
            runtime,
            clock: self.clock,
            executor: self.executor,
            configs: Mutex::new(configs),
            host: Arc::new(CoreHost { inner: weak.clone() }),
        });
        for (plugin, options) in self.plugins {
            register(&inner, plugin, options, PluginOrigin::Static).await?;
        }
        for library in opened {
            register_opened(&inner, library, PluginOptions::new()).await?;
        }
        Ok(Orchestrator { inner })
    }
}
