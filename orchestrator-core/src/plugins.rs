//! Plugin registration and loading: checking a plugin, running its initializer and first health
//! check, inserting it into the registry (or hot-swapping it in), retiring it, and opening
//! plugin libraries from files and folders.
//!
//! Kept apart from the `Orchestrator` handle so that the handle's file reads as its API; every
//! function here takes the shared `Inner`.

use crate::error::{OrchestratorError, RegistryError};
use crate::guard::guarded;
use crate::loader::{LIBRARY_EXTENSION, OpenedPlugin, PluginAbi, PluginInspection, open_plugin};
use crate::orchestrator::Inner;
use crate::registry::{PluginOptions, PluginOrigin, PluginSlot};
use plugin_api::{
    HealthStatus, HostHandle, Interests, OrchestrationPlugin, OrchestratorEvent, is_valid_capability_name,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) fn with_event_losses(slot: &PluginSlot, health: HealthStatus) -> HealthStatus {
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

/// A quarantined plugin is unhealthy, whatever it says of itself.
pub(crate) fn with_quarantine(slot: &PluginSlot, now_ns: u64, health: HealthStatus) -> HealthStatus {
    let circuit = slot.breaker.info(now_ns);
    match circuit.state {
        crate::CircuitState::Closed => health,
        _ => HealthStatus::unhealthy(format!(
            "quarantined after {} consecutive failures (quarantined {} time(s) so far); probed again in {} ms",
            circuit.consecutive_failures,
            circuit.times_opened,
            circuit.retry_in_ms.unwrap_or(0)
        )),
    }
}

pub(crate) async fn check_health(plugin: &Arc<dyn OrchestrationPlugin>, timeout: Duration) -> HealthStatus {
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
pub(crate) async fn retire(inner: &Arc<Inner>, slot: Arc<PluginSlot>) {
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
pub(crate) async fn open_library(path: PathBuf) -> Result<OpenedPlugin, OrchestratorError> {
    let opened = tokio::task::spawn_blocking(move || open_plugin(&path))
        .await
        .map_err(|e| RegistryError::InitializeFailed {
            plugin: "(loading)".into(),
            reason: format!("the loader task failed: {e}"),
        })??;
    Ok(opened)
}

pub(crate) async fn register_opened(
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
pub(crate) fn library_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
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
    pub(crate) fn new(inspection: PluginInspection, origin: PluginOrigin) -> Self {
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

/// What [`Orchestrator::load_plugin_dir`](crate::Orchestrator::load_plugin_dir) did, file by file.
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
