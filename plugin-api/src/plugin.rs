//! The trait every capability plugin implements.

use crate::{
    HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse, Interests, Operation, OrchestratorEvent,
    PluginError, Verdict,
};
use async_trait::async_trait;

/// A capability plugin: a named provider of one or more capabilities.
///
/// The host calls [`initialize`](Self::initialize) once before any request, then
/// [`process_request`](Self::process_request) concurrently from many tasks, so the plugin keeps
/// its state behind its own synchronisation. A request for a capability the plugin does not
/// serve, or with data of the wrong shape, is answered with
/// [`PluginError::invalid_request`] (or an `IntegrationResponse::failure`), never a panic. The
/// host contains panics and hangs anyway, but treats them as failures and falls back.
#[async_trait]
pub trait OrchestrationPlugin: Send + Sync + 'static {
    /// The plugin's unique name, e.g. `"ContextAwareRoutingPlugin"`.
    fn name(&self) -> &str;

    /// The plugin's version; defaults to the crate version of `plugin-api` it was built with.
    fn version(&self) -> &str {
        crate::API_VERSION
    }

    /// The capabilities this plugin serves. Read once, at registration.
    fn capabilities(&self) -> Vec<String>;

    /// Called once, before any request, with the handle on the host (configuration included).
    /// An error here refuses the registration.
    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError>;

    /// Serves one request for one of [`capabilities`](Self::capabilities).
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError>;

    /// Says whether the plugin can serve.
    async fn health_check(&self) -> HealthStatus;

    /// Receives lifecycle events, in order. The default ignores them.
    async fn on_event(&self, event: &OrchestratorEvent) {
        let _ = event;
    }

    /// Called once when the plugin is unregistered, after calls in flight have drained.
    async fn shutdown(&self) {}

    /// The operation feeds this plugin wants (see [`crate::operation`]). Read once, at
    /// registration; change them later with
    /// [`HostHandle::set_interests`](crate::HostHandle::set_interests). The default asks for
    /// nothing, and a plugin that asks for nothing costs the host nothing.
    fn interests(&self) -> Interests {
        Interests::NONE
    }

    /// Hears one completed operation of a kind in [`Interests::observe`], inline on the
    /// caller's thread: keep it quick and never block (count, record, push onto a bounded
    /// queue). A panic here is contained and counted by the host. The default ignores it.
    ///
    /// It may run while the host is inside a call this plugin made (a status change the
    /// plugin asked for through [`HostHandle::set_agent_status`](crate::HostHandle::set_agent_status)
    /// is observed before that call returns): never take a lock here that the plugin holds
    /// while calling the host, or it deadlocks itself. It may also overlap the plugin's
    /// [`shutdown`](Self::shutdown) by a moment when the plugin is unregistered mid-operation.
    fn observe(&self, operation: &Operation<'_>) {
        let _ = operation;
    }

    /// Decides whether an operation of a kind in [`Interests::intercept`] may go ahead,
    /// before it happens. Runs under the host's call timeout; a panic or a timeout lets the
    /// operation go ahead (fail-open) and is reported. The default allows everything.
    async fn intercept(&self, operation: &Operation<'_>) -> Verdict {
        let _ = operation;
        Verdict::Allow
    }
}
