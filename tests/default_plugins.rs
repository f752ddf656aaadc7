//! The plugins this crate ships: linked statically by `with_default_plugins()`, and the same
//! plugins loaded from their dynamic libraries, serving the same capabilities.

mod common;

use orchestrator::prelude::*;
use orchestrator::{PluginOrigin, plugin_api::testkit};
use serde_json::json;

const SHIPPED: [(&str, &str, &str, [&str; 3]); 7] = [
    (
        "plugin-workflow",
        "workflow_plugin",
        "EnhancedWorkflowPlugin",
        ["extended_thinking", "slash_commands", "quality_gates"],
    ),
    (
        "plugin-routing",
        "routing_plugin",
        "ContextAwareRoutingPlugin",
        ["semantic_routing", "agent_profiling", "performance_learning"],
    ),
    (
        "plugin-security",
        "security_plugin",
        "SecurityIntegrationPlugin",
        ["oauth_auth", "rbac_enforcement", "audit_logging"],
    ),
    (
        "plugin-shared-state",
        "shared_state_plugin",
        "SharedStatePlugin",
        ["atomic_updates", "real_time_balancing", "workflow_tracking"],
    ),
    (
        "plugin-task-coordination",
        "task_coordination_plugin",
        "TaskCoordinationPlugin",
        ["agent_requests", "task_mapping", "workload_analysis"],
    ),
    (
        "plugin-context",
        "context_plugin",
        "ContextManagementPlugin",
        ["sleep_wake_cycles", "context_consolidation", "session_management"],
    ),
    (
        "plugin-load-balancing",
        "load_balancing_plugin",
        "LoadBalancingPlugin",
        ["adaptive_balancing", "capacity_management", "resource_optimization"],
    ),
];

#[tokio::test]
async fn default_plugins_serve_their_capabilities_and_work_together() {
    let orch = Orchestrator::builder()
        .with_default_plugins()
        .build()
        .await
        .expect("builds");
    let mut expected: Vec<&str> = SHIPPED.iter().flat_map(|(.., caps)| *caps).collect();
    expected.sort_unstable();
    assert_eq!(orch.capabilities(), expected);
    orch.register_agent(AgentConfig::new("ops").with_id("ops").with_capabilities(["deployment"]))
        .await
        .expect("registers");
    orch.register_agent(AgentConfig::new("qa").with_id("qa").with_capabilities(["testing"]))
        .await
        .expect("registers");

    // The routing plugin, not the legacy path, now picks agents...
    let task = Task::new("deploy the release").with_required_capabilities(["deployment"]);
    assert_eq!(
        orch.select_agent_for_task(&task, &[]).await.expect("routes"),
        AgentId::from("ops")
    );
    // ...and a slash command goes through the workflow plugin to the routing plugin.
    let routed = orch
        .execute(IntegrationRequest::new(
            "slash_commands",
            json!({"command": "/route --capabilities=testing 'run the suite'"}),
        ))
        .await
        .expect("runs");
    assert_eq!(routed.data["served_by"], "ContextAwareRoutingPlugin");
    assert_eq!(routed.data["result"]["selected_agent"], "qa");
    // The workflow plugin analyses, with the fleet's capabilities in mind.
    let output = orch
        .execute_agent_task(
            &AgentId::from("qa"),
            json!({"task_description": "add tests, then deploy"}),
        )
        .await
        .expect("runs");
    assert_eq!(output["analysis"]["engine"], "heuristic");
    assert_eq!(
        output["analysis"]["required_capabilities"],
        json!(["testing", "deployment"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shipped_plugin_also_loads_as_a_dynamic_library_and_conforms() {
    for (package, example, name, caps) in SHIPPED {
        let path = common::plugin_example_library(package, example);
        let orch = Orchestrator::builder().build().await.expect("builds");
        let loaded = orch
            .load_plugin(&path)
            .await
            .unwrap_or_else(|e| panic!("{package}: {e}"));
        assert_eq!(loaded.name, name);
        assert_eq!(loaded.capabilities, caps);
        assert_eq!(loaded.origin, PluginOrigin::StableAbi { path: path.clone() });

        let library = orchestrator::open_plugin(&path).expect("opens");
        let dir = std::env::temp_dir().join(format!("orch-shipped-{}-{example}", std::process::id()));
        let config = if name == "SecurityIntegrationPlugin" {
            json!({"audit": {"path": dir.join("audit.log")}})
        } else {
            serde_json::Value::Null
        };
        testkit::check_plugin(library.plugin(), testkit::CheckOptions::default().with_config(config))
            .await
            .assert_conformant();
        std::fs::remove_dir_all(&dir).ok();
    }
}
