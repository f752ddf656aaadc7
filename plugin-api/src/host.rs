//! What the orchestrator offers a plugin: the [`Host`] services behind a [`HostHandle`].
//!
//! Everything a plugin needs from its surroundings comes through here, and only through here.
//! That includes the runtime services (spawning, sleeping, the clock): a plugin loaded from a
//! dynamic library has its own copy of any async runtime's thread-locals, so calling
//! `tokio::spawn` or `tokio::time::sleep` from it fails with "no reactor running". Asking the
//! host instead works the same whether the plugin is linked statically or dynamically.

use crate::{
    AgentInfo, AgentLoad, AgentStatus, IntegrationRequest, IntegrationResponse, Interests, OrchestratorEvent,
    PluginError,
};
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, sendable future: what the host's asynchronous services return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The services a host gives its plugins. Implemented by the orchestrator; a plugin author
/// uses it through [`HostHandle`], and implements it only to test a plugin without the engine.
pub trait Host: Send + Sync + 'static {
    /// The configuration given for `plugin` (`Value::Null` when none was given).
    fn plugin_config(&self, plugin: &str) -> Value;
    /// Every registered agent, as a snapshot.
    fn agents(&self) -> Vec<AgentInfo>;
    /// One agent, if it is registered.
    fn agent(&self, id: &str) -> Option<AgentInfo>;
    /// Every agent's id, status and load: cheaper than [`agents`](Self::agents) when that is
    /// all a plugin needs on a hot path. The default derives it from `agents`.
    fn agent_loads(&self) -> Vec<AgentLoad> {
        self.agents().into_iter().map(AgentLoad::from).collect()
    }
    /// Changes an agent's status; an error when the agent is not registered.
    fn set_agent_status(&self, id: &str, status: AgentStatus) -> Result<(), PluginError>;
    /// Calls another capability through the orchestrator's dispatch, on behalf of `caller`.
    fn call(
        &self,
        caller: &str,
        request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>>;
    /// Publishes an event to every plugin (and the host's own subscribers).
    fn emit(&self, event: OrchestratorEvent);
    /// Wall-clock time, in milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
    /// A monotonic clock in nanoseconds, from an arbitrary origin fixed by the host.
    fn monotonic_ns(&self) -> u64;
    /// Runs `task` in the background on the host's runtime.
    fn spawn(&self, task: BoxFuture<'static, ()>);
    /// A future that completes after `duration`, driven by the host's timer.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// Replaces the operation feeds `plugin` receives (see [`crate::operation`]). The default
    /// ignores the request: a host without operation feeds, such as a plugin's test double.
    fn set_interests(&self, plugin: &str, interests: Interests) {
        let _ = (plugin, interests);
    }
}

/// A plugin's handle on its host: cheap to clone, keep it for the plugin's lifetime.
#[derive(Clone)]
pub struct HostHandle {
    plugin: Arc<str>,
    host: Arc<dyn Host>,
}

impl fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostHandle")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl HostHandle {
    /// A handle for the plugin named `plugin` on `host`.
    pub fn new(plugin: impl Into<Arc<str>>, host: Arc<dyn Host>) -> Self {
        Self {
            plugin: plugin.into(),
            host,
        }
    }

    /// The name of the plugin this handle was given to.
    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }

    /// This plugin's configuration (`Value::Null` when none was given).
    pub fn config(&self) -> Value {
        self.host.plugin_config(&self.plugin)
    }

    /// This plugin's configuration read into `T`, or `T::default()` when none was given. Derive
    /// `Deserialize` with `#[serde(deny_unknown_fields)]` on `T` and a misspelt key becomes an
    /// error naming it; every error names the plugin, and the key whose value was refused (a
    /// value of the wrong type, a missing field) when it can be found.
    ///
    /// ```ignore
    /// #[derive(Default, serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Config { top: Option<u32> }
    /// let config: Config = host.config_as()?;
    /// ```
    pub fn config_as<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, PluginError> {
        match self.config() {
            Value::Null => Ok(T::default()),
            value => T::deserialize(&value).map_err(|e| {
                let at = config_error_key::<T>(&value).map_or_else(String::new, |key| format!(" (at `{key}`)"));
                PluginError::new(format!("{} configuration: {e}{at}", self.plugin))
            }),
        }
    }

    /// Every registered agent.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.host.agents()
    }

    /// One agent, if registered.
    pub fn agent(&self, id: &str) -> Option<AgentInfo> {
        self.host.agent(id)
    }

    /// Every agent's id, status and load (cheaper than [`agents`](Self::agents)).
    pub fn agent_loads(&self) -> Vec<AgentLoad> {
        self.host.agent_loads()
    }

    /// Changes an agent's status.
    pub fn set_agent_status(&self, id: &str, status: AgentStatus) -> Result<(), PluginError> {
        self.host.set_agent_status(id, status)
    }

    /// Calls another capability through the orchestrator.
    pub fn call(&self, request: IntegrationRequest) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        self.host.call(&self.plugin, request)
    }

    /// Publishes a [`OrchestratorEvent::Custom`] event from this plugin.
    pub fn emit(&self, name: impl Into<String>, data: Value) {
        self.host.emit(OrchestratorEvent::Custom {
            source: self.plugin.to_string(),
            name: name.into(),
            data,
        });
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn now_unix_ms(&self) -> u64 {
        self.host.now_unix_ms()
    }

    /// Monotonic nanoseconds from the host's origin.
    pub fn monotonic_ns(&self) -> u64 {
        self.host.monotonic_ns()
    }

    /// Runs `task` in the background on the host's runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.host.spawn(Box::pin(task));
    }

    /// Waits for `duration` on the host's timer.
    pub fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.host.sleep(duration)
    }

    /// Replaces the operation feeds this plugin receives (initially what
    /// [`OrchestrationPlugin::interests`](crate::OrchestrationPlugin::interests) returned).
    /// A plugin with nothing to do for a kind should drop it: the host then skips the feed.
    pub fn set_interests(&self, interests: Interests) {
        self.host.set_interests(&self.plugin, interests);
    }
}

/// The dotted path of the key whose value `T` refused in `config`: `serde_json` reports no path
/// when reading a `Value`, so the configuration is read again as indented JSON text (one member
/// a line), and the members enclosing the error's line make the path.
fn config_error_key<T: serde::de::DeserializeOwned>(config: &Value) -> Option<String> {
    let text = serde_json::to_string_pretty(config).ok()?;
    let line = serde_json::from_str::<T>(&text).err()?.line();
    let mut path = Vec::new();
    let mut indent = usize::MAX;
    for line in text.lines().take(line).collect::<Vec<_>>().into_iter().rev() {
        let member = line.trim_start();
        let depth = line.len() - member.len();
        if depth >= indent {
            continue;
        }
        // `"key": value`: a member, whose key encloses the lines below it. Anything else (a
        // closing bracket, where a missing field is reported; an array element) is enclosed by
        // a member further out.
        let mut strings = serde_json::Deserializer::from_str(member).into_iter::<String>();
        let key = strings.next().and_then(Result::ok);
        match key.filter(|_| member[strings.byte_offset()..].trim_start().starts_with(':')) {
            Some(key) => {
                path.push(key);
                indent = depth;
            }
            None => indent = depth + 1,
        }
    }
    path.reverse();
    (!path.is_empty()).then(|| path.join("."))
}
