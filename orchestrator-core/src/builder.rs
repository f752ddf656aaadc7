//! [`OrchestratorBuilder`]: everything an orchestrator is built from (plugins, libraries,
//! configuration, timeouts, the executor, the clock), checked and put together by `build`.

use crate::agents::AgentRegistry;
use crate::circuit::QuarantinePolicy;
use crate::clock::{Clock, SystemClock};
use crate::config::read_toml_file;
use crate::error::{ConfigError, LoadError, OrchestratorError};
use crate::events::EventBus;
use crate::executor::{AgentExecutor, DryRunExecutor};
use crate::host::CoreHost;
use crate::orchestrator::{DEFAULT_CALL_TIMEOUT, Inner, Orchestrator};
use crate::pipeline::{PipelineOptions, PipelineTable, WaitQueue};
use crate::plugins::{library_files, open_library, register, register_opened};
use crate::registry::{CapabilityRegistry, PluginOptions, PluginOrigin};
use plugin_api::OrchestrationPlugin;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    // The host's settings: `None` until set in code, when the `[orchestrator]` table of a
    // configuration file (or the default) decides.
    legacy_mode: Option<bool>,
    call_timeout: Option<Duration>,
    executor: Arc<dyn AgentExecutor>,
    clock: Arc<dyn Clock>,
    event_queue_capacity: Option<usize>,
    pipeline: Option<PipelineOptions>,
    quarantine: Option<QuarantinePolicy>,
}

impl Default for OrchestratorBuilder {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            libraries: Vec::new(),
            configs: BTreeMap::new(),
            config_files: Vec::new(),
            legacy_mode: None,
            call_timeout: None,
            executor: Arc::new(DryRunExecutor),
            clock: Arc::new(SystemClock::new()),
            event_queue_capacity: None,
            pipeline: None,
            quarantine: None,
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
        self.legacy_mode = Some(on);
        self
    }

    /// Bounds each provider call (and each `initialize`, health check, event delivery and
    /// shutdown); default [`DEFAULT_CALL_TIMEOUT`].
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// How many lifecycle events each plugin's queue holds (default
    /// [`DEFAULT_EVENT_QUEUE_CAPACITY`](crate::DEFAULT_EVENT_QUEUE_CAPACITY), at least 1, at
    /// most 1,048,576: a larger number is taken as that).
    ///
    /// Every plugin hears events from a bounded queue of its own, through a delivery task of
    /// its own, so a slow `on_event` delays only that plugin. When its queue is full, new
    /// events are dropped for that plugin only (drop-newest: it sees the stream up to a gap,
    /// never out of order), counted in [`PluginInfo::events_dropped`](crate::PluginInfo::events_dropped),
    /// and reported as `degraded` by the next [`Orchestrator::health`]. Memory stays bounded
    /// by the capacities whatever a plugin does.
    pub fn event_queue_capacity(mut self, capacity: usize) -> Self {
        self.event_queue_capacity = Some(capacity.clamp(1, crate::events::MAX_EVENT_QUEUE_CAPACITY));
        self
    }

    /// How [`Orchestrator::submit_task`] waits, retries and balances (see [`PipelineOptions`]).
    /// Replaces the `[orchestrator.pipeline]` table of a configuration file.
    pub fn pipeline(mut self, options: PipelineOptions) -> Self {
        self.pipeline = Some(options);
        self
    }

    /// When a plugin that keeps failing is quarantined, and for how long (see
    /// [`QuarantinePolicy`]; by default after 5 failures in a row, for 1 s doubling to 60 s).
    /// Replaces the `[orchestrator.quarantine]` table of a configuration file.
    pub fn quarantine(mut self, policy: QuarantinePolicy) -> Self {
        self.quarantine = Some(policy);
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
        let host = match configs.remove(HOST_TABLE) {
            Some(table) => HostTable::parse(table)?,
            None => HostTable::default(),
        };
        let legacy_mode = self.legacy_mode.or(host.legacy_mode).unwrap_or(true);
        let call_timeout = self
            .call_timeout
            .or(host.call_timeout_ms.map(Duration::from_millis))
            .unwrap_or(DEFAULT_CALL_TIMEOUT);
        let event_queue_capacity = self
            .event_queue_capacity
            .or(host
                .event_queue_capacity
                .map(|n| n.clamp(1, crate::events::MAX_EVENT_QUEUE_CAPACITY)))
            .unwrap_or(crate::events::DEFAULT_EVENT_QUEUE_CAPACITY);
        let quarantine = match self.quarantine {
            Some(policy) => policy,
            None => host.quarantine.unwrap_or_default().apply(QuarantinePolicy::default()),
        };
        let pipeline = match self.pipeline {
            Some(options) => options,
            None => host.pipeline.unwrap_or_default().apply(PipelineOptions::default()),
        };

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
        let events = EventBus::start(Arc::clone(&registry), &runtime, call_timeout, event_queue_capacity);
        let inner = Arc::new_cyclic(|weak| Inner {
            agents: AgentRegistry::default(),
            registry,
            events,
            legacy_mode,
            call_timeout,
            round_robin: AtomicUsize::new(0),
            runtime,
            clock: self.clock,
            executor: self.executor,
            configs: Mutex::new(configs),
            host: Arc::new(CoreHost { inner: weak.clone() }),
            pipeline,
            quarantine,
            waiting: WaitQueue::default(),
            pipeline_tasks: dashmap::DashMap::new(),
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

/// The table of a configuration file that configures the host itself rather than a plugin.
const HOST_TABLE: &str = "orchestrator";

/// The `[orchestrator]` table: the host's own settings. Settings made in code win over it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    legacy_mode: Option<bool>,
    call_timeout_ms: Option<u64>,
    event_queue_capacity: Option<usize>,
    pipeline: Option<PipelineTable>,
    quarantine: Option<QuarantineTable>,
}

/// The `[orchestrator.quarantine]` table.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineTable {
    failures: Option<u32>,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

impl QuarantineTable {
    fn apply(self, mut policy: QuarantinePolicy) -> QuarantinePolicy {
        if let Some(n) = self.failures {
            policy = policy.failures(n);
        }
        if let Some(ms) = self.backoff_ms {
            policy = policy.backoff(Duration::from_millis(ms));
        }
        if let Some(ms) = self.max_backoff_ms {
            policy = policy.max_backoff(Duration::from_millis(ms));
        }
        policy
    }
}

impl HostTable {
    fn parse(table: Value) -> Result<Self, ConfigError> {
        serde_json::from_value(table).map_err(|e| ConfigError::InvalidHostTable {
            table: HOST_TABLE.into(),
            message: e.to_string(),
        })
    }
}
