//! The orchestrator's side of [`plugin_api::Host`]: what plugins reach through their
//! [`HostHandle`](plugin_api::HostHandle).
//!
//! The host holds only a weak reference to the orchestrator: plugins hold host handles and the
//! orchestrator holds plugins, so a strong one would be a cycle that never frees. Once every
//! `Orchestrator` clone is dropped, host calls answer "unavailable".
//!
//! Capability calls made by plugins carry their nesting depth in a task-local; past
//! [`MAX_CALL_DEPTH`] they are refused, so a plugin that (directly or through others) calls
//! itself fails with a clear error instead of exhausting the stack.

use crate::dispatch;
use crate::error::{AgentError, DispatchError, OrchestratorError};
use crate::orchestrator::Inner;
use plugin_api::{
    AgentInfo, AgentLoad, AgentStatus, BoxFuture, Host, IntegrationRequest, IntegrationResponse, Interests,
    OrchestratorEvent, PluginError,
};
use serde_json::Value;
use std::sync::Weak;
use std::time::Duration;

/// How deeply plugin-to-capability calls may nest.
pub(crate) const MAX_CALL_DEPTH: u32 = 16;

tokio::task_local! {
    static CALL_DEPTH: u32;
}

pub(crate) struct CoreHost {
    pub(crate) inner: Weak<Inner>,
}

fn gone() -> PluginError {
    PluginError::unavailable("the orchestrator has shut down")
}

impl Host for CoreHost {
    fn plugin_config(&self, plugin: &str) -> Value {
        self.inner
            .upgrade()
            .map(|inner| inner.plugin_config(plugin))
            .unwrap_or(Value::Null)
    }

    fn agents(&self) -> Vec<AgentInfo> {
        match self.inner.upgrade() {
            Some(inner) => inner
                .agents
                .entries_unordered()
                .iter()
                .map(|e| e.snapshot().into())
                .collect(),
            None => Vec::new(),
        }
    }

    fn agent_loads(&self) -> Vec<AgentLoad> {
        let Some(inner) = self.inner.upgrade() else {
            return Vec::new();
        };
        let mut loads = Vec::with_capacity(inner.agents.len());
        inner.agents.for_each(|e| {
            loads.push(AgentLoad {
                id: e.id.shared(),
                status: e.status(),
                load: e.load(),
                capacity: e.capacity,
            })
        });
        loads
    }

    fn agent(&self, id: &str) -> Option<AgentInfo> {
        self.inner.upgrade()?.agents.get(id).map(|e| e.snapshot().into())
    }

    fn set_agent_status(&self, id: &str, status: AgentStatus) -> Result<(), PluginError> {
        let inner = self.inner.upgrade().ok_or_else(gone)?;
        inner.set_agent_status(id, status).map_err(|e| match e {
            AgentError::NotFound { .. } => PluginError::invalid_request(e.to_string()),
            other => PluginError::new(other.to_string()),
        })
    }

    fn call(
        &self,
        caller: &str,
        request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        let inner = self.inner.upgrade();
        let depth = CALL_DEPTH.try_with(|d| *d).unwrap_or(0);
        let caller = caller.to_owned();
        Box::pin(async move {
            let inner = inner.ok_or_else(gone)?;
            if depth >= MAX_CALL_DEPTH {
                return Err(PluginError::new(format!(
                    "capability calls nest more than {MAX_CALL_DEPTH} deep (last: `{caller}` calling `{}`): does a plugin call its own capability?",
                    request.capability
                )));
            }
            CALL_DEPTH
                .scope(depth + 1, async move { dispatch::execute(&inner, request).await })
                .await
                .map_err(|e| match e {
                    // Nothing serves it (now): the calling plugin may try something else.
                    OrchestratorError::Dispatch(
                        DispatchError::UnknownCapability { .. } | DispatchError::CapabilityDisabled { .. },
                    ) => PluginError::unavailable(e.to_string()),
                    // The request was the calling plugin's, not its caller's: an internal
                    // failure from where the calling plugin stands, so that its own caller's
                    // input is not blamed (and fallback still applies) if it passes it on.
                    other => PluginError::new(other.to_string()),
                })
        })
    }

    fn emit(&self, event: OrchestratorEvent) {
        if let Some(inner) = self.inner.upgrade() {
            inner.events.emit(event);
        }
    }

    fn now_unix_ms(&self) -> u64 {
        match self.inner.upgrade() {
            Some(inner) => inner.clock.now_unix_ms(),
            None => crate::clock::system_unix_ms(),
        }
    }

    fn monotonic_ns(&self) -> u64 {
        self.inner
            .upgrade()
            .map(|inner| inner.clock.monotonic_ns())
            .unwrap_or(0)
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        if let Some(inner) = self.inner.upgrade() {
            // The task keeps the call depth it was spawned at, so recursion through spawned
            // tasks is bounded too. A panic in it ends that task only; tokio contains it.
            let depth = CALL_DEPTH.try_with(|d| *d).unwrap_or(0);
            drop(inner.runtime.spawn(CALL_DEPTH.scope(depth, task)));
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Created inside the host's runtime, so that a plugin asking from a thread of its own
        // (which has no runtime context) gets a working timer instead of a panic.
        match self.inner.upgrade() {
            Some(inner) => {
                let _context = inner.runtime.enter();
                Box::pin(tokio::time::sleep(duration))
            }
            // The orchestrator is gone: a plugin outliving it (until its last event delivery
            // lets go) still sleeps for real on the runtime it runs on, so that a loop of
            // sleeps does not spin; with no runtime either, it never wakes.
            None => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let _context = runtime.enter();
                    Box::pin(tokio::time::sleep(duration))
                }
                Err(_) => Box::pin(std::future::pending()),
            },
        }
    }

    fn set_interests(&self, plugin: &str, interests: Interests) {
        if let Some(inner) = self.inner.upgrade() {
            inner.registry.set_interests(plugin, interests);
        }
    }
}
