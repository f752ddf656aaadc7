//! Errors, one enum per operation area, gathered in [`OrchestratorError`].
//!
//! Every message says what went wrong and what to do about it. All of them are
//! `Send + Sync + 'static`, so they cross tasks and threads and fit in `Box<dyn Error>`.

use crate::AgentId;
use plugin_api::AgentStatus;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The error of every [`Orchestrator`](crate::Orchestrator) and builder method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// Registering, finding or running agents.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Registering, replacing or removing plugins, and switching capabilities.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Calling a capability.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// Building the orchestrator from its configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Loading a plugin library.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Submitting a task to the pipeline.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Why [`Orchestrator::submit_task`](crate::Orchestrator::submit_task) refused a task before
/// it ran. (A task that ran and failed is not an error: its report says
/// [`TaskStatus::Failed`](crate::TaskStatus::Failed).)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task itself is malformed.
    #[error("task `{task}` is malformed: {reason}")]
    Invalid {
        /// The task's id.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// Its token was refused (or nothing could verify it: a task with a token is never run
    /// unverified).
    #[error("task `{task}` refused: its token was not accepted ({reason}); submit it with a valid, unexpired token")]
    Unauthenticated {
        /// The task's id.
        task: String,
        /// Why.
        reason: String,
    },
    /// The token's subject may not submit tasks.
    #[error("task `{task}` refused: `{subject}` may not submit tasks ({reason}); grant it `tasks:submit`")]
    Forbidden {
        /// The task's id.
        task: String,
        /// The authenticated subject.
        subject: String,
        /// The rule that decided, or why no decision could be made.
        reason: String,
    },
    /// No registered agent could ever take it.
    #[error("no agent can take task `{task}`: {reason}")]
    NoEligibleAgent {
        /// The task's id.
        task: String,
        /// Why (which capabilities are missing, or that every such agent is offline).
        reason: String,
    },
    /// Every eligible agent was at capacity and the queue of waiting tasks was full.
    #[error(
        "task `{task}` refused: every eligible agent is at capacity and {queued} tasks already wait (the limit); retry later, add agents or raise `max_queued`"
    )]
    QueueFull {
        /// The task's id.
        task: String,
        /// How many tasks were waiting.
        queued: usize,
    },
    /// Its deadline passed before it could run (or before it was done).
    #[error("task `{task}` missed its deadline of {deadline_ms} ms while {stage}")]
    DeadlinePassed {
        /// The task's id.
        task: String,
        /// The deadline, from submission.
        deadline_ms: u64,
        /// Where it was: `waiting for a free agent`, `backing off before a retry`, ...
        stage: String,
    },
    /// A task with this id is already in the pipeline, or done (task ids are unique).
    #[error("task `{task}` was already submitted ({state}); give each task its own id")]
    AlreadySubmitted {
        /// The task's id.
        task: String,
        /// Its state when the second submission came.
        state: String,
    },
}

/// Errors loading a plugin from a shared library. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file does not exist or cannot be read.
    #[error("cannot load plugin {}: {source}", .path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a shared library this platform can load.
    #[error("cannot load plugin {}: not a loadable shared library ({reason})", .path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A shared library, but it exports neither plugin interface.
    #[error("cannot load plugin {}: it is a shared library but exports no orchestrator plugin (neither the stable ABI of `plugin_api::export_plugin!` nor the C ABI `orch_plugin_*` functions)", .path.display())]
    NoPluginExports {
        /// The file.
        path: PathBuf,
    },
    /// Built against an interface version this host cannot load.
    #[error("cannot load plugin {}: built against {found}, this host needs {expected}; rebuild the plugin against this host's plugin-api", .path.display())]
    IncompatibleVersion {
        /// The file.
        path: PathBuf,
        /// What this host speaks.
        expected: String,
        /// What the library was built with.
        found: String,
    },
    /// The plugin's types differ from the host's (same version numbers, different layout).
    #[error("cannot load plugin {}: its plugin-api types differ from this host's ({summary}); rebuild the plugin against this host's plugin-api", .path.display())]
    IncompatibleLayout {
        /// The file.
        path: PathBuf,
        /// One line of what differs.
        summary: String,
        /// `abi_stable`'s full layout report (long): for verbose output.
        details: String,
    },
    /// The library's plugin could not be built, or described itself badly.
    #[error("cannot load plugin {}: {reason}", .path.display())]
    InitFailed {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Errors about agents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The explicit id is taken.
    #[error(
        "an agent with id `{id}` is already registered: choose another id, or leave the id out to have one generated"
    )]
    DuplicateId {
        /// The id asked for.
        id: AgentId,
    },
    /// No agent has this id.
    #[error("no agent with id `{id}` is registered: check `Orchestrator::agents()` for the registered ids")]
    NotFound {
        /// The id asked for.
        id: AgentId,
    },
    /// The configuration cannot describe an agent.
    #[error("invalid agent configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// The agent is registered but cannot take work in its current status.
    #[error("agent `{id}` is {status} and takes no work: set it active first")]
    Unavailable {
        /// The agent.
        id: AgentId,
        /// Its status.
        status: AgentStatus,
    },
    /// No candidate can take the task.
    #[error("no agent can take task `{task}`: {reason}")]
    NoEligibleAgent {
        /// The task's id.
        task: String,
        /// Why every candidate was refused.
        reason: String,
    },
    /// A routing plugin picked an agent that is not a registered candidate (legacy mode off).
    #[error(
        "routing picked `{selected}` for task `{task}`, which is not an eligible candidate: {reason}; turn legacy mode on to fall back to least-loaded selection"
    )]
    InvalidSelection {
        /// The task's id.
        task: String,
        /// What the router answered.
        selected: String,
        /// Why it is not acceptable.
        reason: String,
    },
    /// An interceptor (see `plugin_api::operation`) refused the registration; no agent was
    /// registered.
    #[error("registration refused by {plugin}: {reason}")]
    RegistrationVetoed {
        /// The plugin that refused.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// An interceptor refused the task before it started; the agent's load is unchanged.
    #[error("task on agent `{id}` refused by {plugin}: {reason}")]
    TaskVetoed {
        /// The agent.
        id: AgentId,
        /// The plugin that refused.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The agent executor failed or panicked.
    #[error("agent `{id}` failed its task: {message}")]
    ExecutionFailed {
        /// The agent.
        id: AgentId,
        /// What the executor said.
        message: String,
    },
}

/// Errors about the plugin and capability registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A plugin of that name is registered already.
    #[error(
        "a plugin named `{name}` is already registered: unregister it first, or register the new one with `PluginOptions::replace()` to swap it in"
    )]
    DuplicatePlugin {
        /// The name.
        name: String,
    },
    /// Two plugins would serve a capability with no order between them.
    #[error(
        "plugin `{plugin}` and plugin `{existing}` both provide `{capability}` at priority {priority}: register the new one with a different `PluginOptions::priority(..)` (higher is tried first)"
    )]
    CapabilityConflict {
        /// The contested capability.
        capability: String,
        /// The plugin already serving it.
        existing: String,
        /// The plugin being registered.
        plugin: String,
        /// The priority both have.
        priority: i32,
    },
    /// A plugin declared a malformed or repeated capability name, or none at all.
    #[error("plugin `{plugin}` declares an invalid capability list: {reason}")]
    InvalidCapabilities {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// The plugin's name is empty or too long.
    #[error("invalid plugin name {name:?}: a plugin name is 1 to 128 characters with no control characters")]
    InvalidPluginName {
        /// The name.
        name: String,
    },
    /// `initialize` returned an error, panicked or timed out; nothing was registered.
    #[error("plugin `{plugin}` failed to initialize, so it was not registered: {reason}")]
    InitializeFailed {
        /// The plugin.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// No plugin of that name is registered.
    #[error("no plugin named `{name}` is registered; registered plugins: {}", list(.known))]
    PluginNotFound {
        /// The name asked for.
        name: String,
        /// The names that are registered.
        known: Vec<String>,
    },
    /// No plugin or legacy handler serves that capability.
    #[error("unknown capability `{capability}`; known capabilities: {}", list(.known))]
    UnknownCapability {
        /// The capability asked for.
        capability: String,
        /// The capabilities that exist.
        known: Vec<String>,
    },
}

/// How one provider failed during a dispatch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderFailure {
    /// It returned an error.
    Error {
        /// The plugin's message.
        message: String,
    },
    /// It panicked; the panic was contained.
    Panic {
        /// The panic's message.
        message: String,
    },
    /// It did not answer within the call timeout.
    Timeout {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// It was not called: it failed too often and is quarantined (see `QuarantinePolicy`).
    Quarantined {
        /// How long until it is tried again, in milliseconds (0: a probe is under way).
        retry_in_ms: u64,
    },
}

impl ProviderFailure {
    pub(crate) fn timeout(after: Duration) -> Self {
        ProviderFailure::Timeout {
            after_ms: after.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}

impl fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderFailure::Error { message } => write!(f, "error: {message}"),
            ProviderFailure::Panic { message } => write!(f, "panicked: {message}"),
            ProviderFailure::Timeout { after_ms } => write!(f, "timed out after {after_ms} ms"),
            ProviderFailure::Quarantined { retry_in_ms } => write!(
                f,
                "quarantined after repeated failures, not called (tried again in {retry_in_ms} ms)"
            ),
        }
    }
}

/// One failed attempt: which provider, and how it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedAttempt {
    /// The plugin tried.
    pub plugin: String,
    /// How it failed.
    pub failure: ProviderFailure,
}

/// Errors of [`Orchestrator::execute`](crate::Orchestrator::execute).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// Nothing serves this capability.
    #[error("no plugin serves capability `{capability}` and it has no legacy handler; known capabilities: {}", list(.known))]
    UnknownCapability {
        /// The capability asked for.
        capability: String,
        /// The capabilities that exist.
        known: Vec<String>,
    },
    /// The capability is switched off and legacy mode cannot serve it.
    #[error(
        "capability `{capability}` is disabled and no legacy fallback serves it (the legacy path serves only `extended_thinking` and `semantic_routing`, with legacy mode on): enable it with `set_capability_enabled(\"{capability}\", true)`"
    )]
    CapabilityDisabled {
        /// The capability.
        capability: String,
    },
    /// An interceptor (see `plugin_api::operation`) refused the call before any provider saw it.
    #[error("call to `{capability}` refused by {plugin}: {reason}")]
    Vetoed {
        /// The capability.
        capability: String,
        /// The plugin that refused.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The request was malformed for this capability: the caller's fault, so no fallback.
    #[error("invalid request for `{capability}` (answered by {plugin}): {message}")]
    InvalidRequest {
        /// The capability.
        capability: String,
        /// Who refused it (`"legacy"` for the legacy path).
        plugin: String,
        /// What was expected.
        message: String,
    },
    /// Every provider failed and there was no legacy fallback.
    #[error("every provider of `{capability}` failed ({}) and there is no legacy fallback: check the plugins' health, or build with `legacy_mode(true)`", attempts_text(.attempts))]
    AllProvidersFailed {
        /// The capability.
        capability: String,
        /// Each attempt, in order.
        attempts: Vec<FailedAttempt>,
    },
}

impl LoadError {
    /// The same error, naming `original` (a load from a private copy reports the user's file).
    pub(crate) fn with_path(mut self, original: &std::path::Path) -> Self {
        match &mut self {
            LoadError::NotFound { path, .. }
            | LoadError::NotALibrary { path, .. }
            | LoadError::NoPluginExports { path }
            | LoadError::IncompatibleVersion { path, .. }
            | LoadError::IncompatibleLayout { path, .. }
            | LoadError::InitFailed { path, .. } => *path = original.to_owned(),
        }
        self
    }
}

/// Errors in the orchestrator's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("configuration file {} is not valid TOML: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A top-level entry of the configuration is not a table.
    #[error("configuration for `{plugin}` must be a table (`[{plugin}]` in TOML, an object in JSON)")]
    NotATable {
        /// The entry.
        plugin: String,
    },
    /// Configuration names a plugin that is not registered.
    #[error("configuration is given for `{plugin}`, but no plugin of that name is registered; registered plugins: {}", list(.known))]
    UnknownPlugin {
        /// The name in the configuration.
        plugin: String,
        /// The plugins registered.
        known: Vec<String>,
    },
    /// The host's own table (`[orchestrator]`) has an unknown key or a value of the wrong type.
    #[error("configuration table `[{table}]` (the host's own settings) is invalid: {message}")]
    InvalidHostTable {
        /// The table.
        table: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// `build()` was called outside a Tokio runtime.
    #[error(
        "Orchestrator::builder().build() must run inside a Tokio runtime with timers enabled (e.g. under #[tokio::main])"
    )]
    NoRuntime,
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn attempts_text(attempts: &[FailedAttempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.plugin, a.failure))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_are_send_sync_static() {
        assert_send_sync::<OrchestratorError>();
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = DispatchError::UnknownCapability {
            capability: "x".into(),
            known: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "no plugin serves capability `x` and it has no legacy handler; known capabilities: a, b"
        );
        let e = DispatchError::AllProvidersFailed {
            capability: "c".into(),
            attempts: vec![FailedAttempt {
                plugin: "P".into(),
                failure: ProviderFailure::timeout(Duration::from_millis(20)),
            }],
        };
        assert!(e.to_string().contains("P: timed out after 20 ms"), "{e}");
    }
}
