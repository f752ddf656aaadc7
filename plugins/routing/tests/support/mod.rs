//! What the routing tests and the bench share. A test file includes it with `mod support;`; the
//! bench by path (`#[path = "../tests/support/mod.rs"] mod support;`).

pub(crate) mod fields;

use orchestrator_core::{AgentConfig, Orchestrator};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use serde_json::Value;

/// Calls `capability` with `data` through the orchestrator and returns the answer's data,
/// failing the test when the call errs or does not succeed.
#[allow(dead_code)]
pub(crate) async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    let response = orch
        .execute(IntegrationRequest::new(capability, data))
        .await
        .expect("answers");
    assert!(response.success, "{response:?}");
    response.data
}

/// Registers each `(id, capabilities)` under that id.
#[allow(dead_code)]
pub(crate) async fn register(orch: &Orchestrator, agents: &[(String, Vec<String>)]) {
    for (id, caps) in agents {
        orch.register_agent(
            AgentConfig::new(id)
                .with_id(id.as_str())
                .with_capabilities(caps.clone()),
        )
        .await
        .expect("registers");
    }
}

/// An orchestrator with the routing plugin alone (no legacy path), configured with `config`.
#[allow(dead_code)]
pub(crate) async fn router(config: Value) -> Orchestrator {
    Orchestrator::builder()
        .legacy_mode(false)
        .plugin(ContextAwareRoutingPlugin::new())
        .configure("ContextAwareRoutingPlugin", config)
        .build()
        .await
        .expect("builds")
}
