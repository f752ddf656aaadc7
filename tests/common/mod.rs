//! Plugins for the integration tests: real `OrchestrationPlugin` implementations whose
//! behaviour the test chooses (answer, fail, panic, hang), so the host's handling of each
//! can be checked through the public API.
#![allow(dead_code, unreachable_pub, missing_docs)]

use orchestrator::plugin_api::{OrchestratorEvent, async_trait};
use orchestrator::prelude::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`ScriptedPlugin`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers `{"echo": data, "plugin": name, "capability": cap}`.
    Echo,
    /// Returns `PluginError::new`.
    Fail,
    /// Panics.
    Panic,
    /// Never answers (sleeps an hour on the host's timer).
    Hang,
    /// Refuses anything whose data is not an object with `"text": string`, else echoes.
    Strict,
}

/// A plugin with a fixed name, capabilities and behaviour, that counts its calls and records
/// the events it receives.
pub struct ScriptedPlugin {
    pub name: String,
    pub capabilities: Vec<String>,
    pub behaviour: Behaviour,
    pub calls: Arc<AtomicUsize>,
    pub events: Arc<Mutex<Vec<OrchestratorEvent>>>,
    pub host: Arc<Mutex<Option<HostHandle>>>,
    pub fail_init: bool,
    pub shutdowns: Arc<AtomicUsize>,
}

impl ScriptedPlugin {
    pub fn new(name: &str, capabilities: &[&str], behaviour: Behaviour) -> Self {
        Self {
            name: name.to_owned(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            behaviour,
            calls: Arc::default(),
            events: Arc::default(),
            host: Arc::default(),
            fail_init: false,
            shutdowns: Arc::default(),
        }
    }
}

#[async_trait]
impl OrchestrationPlugin for ScriptedPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        "9.9.9"
    }

    fn capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        if self.fail_init {
            return Err(PluginError::new("missing API key"));
        }
        *self.host.lock().expect("lock") = Some(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::Echo => {}
            Behaviour::Fail => return Err(PluginError::new(format!("{} is broken", self.name))),
            Behaviour::Panic => panic!("{} panicked on purpose", self.name),
            Behaviour::Hang => {
                let host = self.host.lock().expect("lock").clone().expect("initialized");
                host.sleep(Duration::from_secs(3600)).await;
            }
            Behaviour::Strict => {
                if request.data.get("text").and_then(Value::as_str).is_none() {
                    return Err(PluginError::invalid_request("expected {\"text\": string}"));
                }
            }
        }
        Ok(IntegrationResponse::ok(json!({
            "echo": request.data,
            "plugin": self.name,
            "capability": request.capability,
            "correlation_id_seen": request.correlation_id,
        })))
    }

    async fn health_check(&self) -> HealthStatus {
        match self.behaviour {
            Behaviour::Fail => HealthStatus::degraded("failing on purpose"),
            _ => HealthStatus::healthy(),
        }
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        self.events.lock().expect("lock").push(event.clone());
    }

    async fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

/// A plugin that answers `semantic_routing` with a fixed agent id, right or wrong.
pub struct FixedRouter(pub &'static str);

#[async_trait]
impl OrchestrationPlugin for FixedRouter {
    fn name(&self) -> &str {
        "FixedRouter"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["semantic_routing".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, _request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(json!({"selected_agent": self.0, "score": 1.0})))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

/// Waits (bounded) until `pred` holds, polling every millisecond.
pub async fn eventually(mut pred: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    pred()
}

/// The path of a plugin library built from this workspace (`lib<name>.so` on Linux).
///
/// `cargo test --workspace` builds every member's `cdylib` into `target/<profile>/deps`, next to
/// the test binaries. When a test runs without that (e.g. `cargo test --test dynamic`), the
/// library is built here with a nested `cargo build` into a separate target directory, since the
/// outer cargo holds the lock on the main one.
pub fn plugin_library(package: &str) -> std::path::PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return candidate;
        }
    }
    let target = deps
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("plugin-libs");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {package} failed");
    let built = target.join("debug").join(&file);
    assert!(built.is_file(), "{} was not built", built.display());
    built
}

/// The path of a plugin library built as a `cdylib` example target of a workspace package
/// (see `plugin_api::testkit::example_library`).
pub fn plugin_example_library(package: &str, example: &str) -> std::path::PathBuf {
    orchestrator::plugin_api::testkit::example_library(package, example).expect("the example library")
}

/// The process's thread count and resident memory (Linux), to check they stay bounded.
pub fn threads_and_rss_kb() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("Threads:")?, field("VmRSS:")?))
}
