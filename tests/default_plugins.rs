//! The plugins this crate ships: linked statically by `with_default_plugins()`, and the same
//! plugins loaded from their dynamic libraries, serving the same capabilities.

mod common;

use orchestrator::prelude::*;
use orchestrator::{PluginOrigin, plugin_api::testkit};
use serde_json::json;

const SHIPPED: [(&str, &str, &str, [&str; 3]); 9] = [
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
    (
        "plugin-performance",
        "performance_plugin",
        "PerformanceMonitoringPlugin",
        ["real_time_monitoring", "task_performance", "auto_scaling"],
    ),
    (
        "plugin-hooks",
        "hooks_plugin",
        "HookIntegrationPlugin",
        ["lifecycle_hooks", "observability", "performance_hooks"],
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

/// The monitoring pair sees what the other seven do: dispatches per capability and plugin,
/// tasks by kind, spans per correlation id; and a Rust pre-hook vetoes through the default set.
#[tokio::test]
async fn the_monitoring_pair_watches_the_other_plugins_work() {
    let hooks = orchestrator::HookIntegrationPlugin::default();
    hooks
        .hooks()
        .pre_hook_fn(
            "no-guests",
            orchestrator::OperationKind::AgentRegistration,
            0,
            |op: &orchestrator::Operation<'_>| {
                let guest = op
                    .details
                    .as_deref()
                    .and_then(|c| c["capabilities"].as_array())
                    .is_some_and(|caps| caps.iter().any(|c| c == "guest"));
                if guest {
                    orchestrator::Verdict::Veto("guests may not register".into())
                } else {
                    orchestrator::Verdict::Allow
                }
            },
        )
        .expect("adds the hook");
    // The default set, with this hooks plugin in place of the default one.
    let orch = Orchestrator::builder()
        .with_default_plugins()
        .plugin_with(hooks, orchestrator::PluginOptions::new().replace())
        .build()
        .await
        .expect("builds");
    let refused = orch
        .register_agent(AgentConfig::new("visitor").with_capabilities(["guest"]))
        .await
        .expect_err("vetoed");
    assert!(refused.to_string().contains("guests may not register"), "{refused}");
    let qa = orch
        .register_agent(AgentConfig::new("qa").with_id("qa").with_capabilities(["testing"]))
        .await
        .expect("registers");
    assert_eq!(orch.agent_count(), 1);

    for i in 0..3 {
        orch.execute(
            IntegrationRequest::new("extended_thinking", json!({"task_description": "write tests"}))
                .with_correlation_id(format!("watch-{i}")),
        )
        .await
        .expect("analyses");
    }
    orch.execute_agent_task(&qa, json!({"kind": "testing", "text": "run the suite"}))
        .await
        .expect("runs");

    let monitoring = orch
        .execute(IntegrationRequest::new("real_time_monitoring", json!({})))
        .await
        .expect("answers");
    let thinking = &monitoring.data["capabilities"]["extended_thinking"];
    assert_eq!(thinking["calls"], 3, "{}", monitoring.data);
    assert_eq!(monitoring.data["plugins"]["EnhancedWorkflowPlugin"]["served"], 3);
    assert_eq!(monitoring.data["tasks"]["finished"], 1);
    assert_eq!(monitoring.data["agents"]["total"], 1);
    let kinds = orch
        .execute(IntegrationRequest::new("task_performance", json!({"kind": "testing"})))
        .await
        .expect("answers");
    assert_eq!(kinds.data["entries"][0]["count"], 1, "{}", kinds.data);

    let spans = orch
        .execute(IntegrationRequest::new(
            "observability",
            json!({"op": "recent", "correlation_id": "watch-1"}),
        ))
        .await
        .expect("answers");
    let spans = spans.data["spans"].as_array().expect("spans").clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["fields"]["gen_ai.tool.name"], "extended_thinking");
    assert_eq!(spans[0]["fields"]["served_by"], "EnhancedWorkflowPlugin");

    let prometheus = orch
        .execute(IntegrationRequest::new(
            "real_time_monitoring",
            json!({"format": "prometheus"}),
        ))
        .await
        .expect("answers");
    let text = prometheus.data["text"].as_str().expect("text");
    assert!(text.contains("extended_thinking"), "{text}");
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
