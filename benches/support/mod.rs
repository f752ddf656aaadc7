//! Shared pieces of the benches: a minimal plugin, the nine-plugin stand-in set, and a tokio
//! runtime shaped like the machine the targets are for (2 worker threads).
#![allow(dead_code, unreachable_pub, missing_docs)]

use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use serde_json::json;

/// Answers every request with `{"ok": true}`: as little work as a plugin can do, so that what
/// is measured around it is the host's overhead.
pub struct MinimalPlugin {
    pub name: String,
    pub capabilities: Vec<String>,
}

impl MinimalPlugin {
    pub fn new(name: &str, capabilities: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

#[async_trait]
impl OrchestrationPlugin for MinimalPlugin {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, _request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(json!({"ok": true})))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

/// The nine plugins this crate ships (`with_default_plugins()`), all real: registration and
/// dispatch are measured with nine plugins receiving events and the monitoring pair observing.
pub fn nine_plugins(builder: OrchestratorBuilder) -> OrchestratorBuilder {
    builder.with_default_plugins()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until the events emitted so far have reached the plugins (or been dropped by a plugin
/// that could not keep up): registers a sentinel agent and waits for subscribers, who hear an
/// event once the plugins are done with it, to hear of it. A sentinel whose event was itself
/// dropped (the central queue was full) is replaced by another after a second. Returns how
/// long that took.
pub async fn drain_events(orch: &Orchestrator) -> std::time::Duration {
    let start = std::time::Instant::now();
    let mut events = orch.subscribe_events();
    loop {
        let sentinel = orch
            .register_agent(AgentConfig::new("drain-sentinel"))
            .await
            .expect("registers");
        let heard = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            loop {
                match events.recv().await {
                    Ok(orchestrator::OrchestratorEvent::AgentRegistered { agent_id })
                        if agent_id == sentinel.to_string() =>
                    {
                        return;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        let _ = orch.deregister_agent(&sentinel).await;
        if heard.is_ok() {
            break;
        }
    }
    start.elapsed()
}
