//! EnhancedWorkflowPlugin through a real orchestrator: analysis, slash commands dispatching to
//! other capabilities, quality gates, bad input and garbage.

use orchestrator_core::{AgentConfig, Orchestrator, OrchestratorError};
use plugin_api::prelude::*;
use plugin_workflow::{Analysis, EnhancedWorkflowPlugin, ThinkingContext, ThinkingEngine};
use serde_json::{Value, json};

async fn orchestrator(plugin: EnhancedWorkflowPlugin) -> Orchestrator {
    let orch = Orchestrator::builder().plugin(plugin).build().await.expect("builds");
    orch.register_agent(
        AgentConfig::new("reviewer")
            .with_id("reviewer")
            .with_capabilities(["code_review", "testing"]),
    )
    .await
    .expect("registers");
    orch.register_agent(
        AgentConfig::new("deployer")
            .with_id("deployer")
            .with_capabilities(["deployment"]),
    )
    .await
    .expect("registers");
    orch
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Result<IntegrationResponse, OrchestratorError> {
    orch.execute(IntegrationRequest::new(capability, data)).await
}

#[tokio::test]
async fn extended_thinking_analyses_with_the_fleet_in_mind() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new()).await;
    let simple = call(&orch, "extended_thinking", json!({"task_description": "fix a typo"}))
        .await
        .expect("answers");
    let hard = call(
        &orch,
        "extended_thinking",
        json!({"task_description": "Review the code of the payment migration, then deploy it to production; if errors rise, roll back. Finally add regression tests."}),
    )
    .await
    .expect("answers");
    assert_eq!(hard.served_by, "EnhancedWorkflowPlugin");
    assert_eq!(hard.data["engine"], "heuristic");
    assert!(hard.data["complexity"].as_f64() > simple.data["complexity"].as_f64());
    assert!(hard.data["complexity"].as_f64() < Some(1.0));
    assert_eq!(
        hard.data["plan"],
        json!([
            "Review the code of the payment migration",
            "Deploy it to production",
            "If errors rise, roll back",
            "Add regression tests"
        ])
    );
    assert_eq!(
        hard.data["required_capabilities"],
        json!(["code_review", "testing", "deployment"])
    );
    let insights: Vec<&str> = hard.data["thinking_insights"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(insights.iter().any(|i| i.starts_with("risky")), "{insights:?}");
}

struct FixedEngine;

#[async_trait]
impl ThinkingEngine for FixedEngine {
    fn name(&self) -> &str {
        "test-model"
    }
    async fn analyse(&self, task: &str, context: &ThinkingContext) -> Result<Analysis, PluginError> {
        Ok(Analysis {
            thinking_insights: vec![format!("{} agent capabilities known", context.agent_capabilities.len())],
            complexity: 0.5,
            plan: vec![task.to_uppercase()],
            required_capabilities: vec![],
            domains: vec![],
        })
    }
}

#[tokio::test]
async fn an_embedder_engine_replaces_the_heuristics() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new().with_engine(FixedEngine)).await;
    let out = call(&orch, "extended_thinking", json!({"task_description": "ship it"}))
        .await
        .expect("answers");
    assert_eq!(out.data["engine"], "test-model");
    assert_eq!(out.data["plan"], json!(["SHIP IT"]));
    assert_eq!(out.data["thinking_insights"], json!(["3 agent capabilities known"]));
}

#[tokio::test]
async fn slash_commands_parse_and_dispatch_through_the_orchestrator() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new()).await;
    let analyze = call(
        &orch,
        "slash_commands",
        json!({"command": r#"/analyze --depth=high "Write tests, then deploy""#}),
    )
    .await
    .expect("runs");
    assert_eq!(analyze.data["command"], "analyze");
    assert_eq!(analyze.data["flags"], json!({"depth": "high"}));
    assert_eq!(analyze.data["positional"], json!(["Write tests, then deploy"]));
    assert_eq!(analyze.data["dispatched_to"], "extended_thinking");
    assert_eq!(analyze.data["result"]["plan"], json!(["Write tests", "Deploy"]));

    // No routing plugin here: the orchestrator's legacy path answers /route.
    let route = call(
        &orch,
        "slash_commands",
        json!({"command": "/route --capabilities=deployment 'ship the release'"}),
    )
    .await
    .expect("runs");
    assert_eq!(route.data["result"]["selected_agent"], "deployer");
    assert_eq!(route.data["served_by"], "legacy");

    let agents = call(&orch, "slash_commands", json!({"command": "/agents --status=active"}))
        .await
        .expect("runs");
    assert_eq!(agents.data["result"]["agents"].as_array().map(Vec::len), Some(2));
    let help = call(&orch, "slash_commands", json!({"command": "/help"}))
        .await
        .expect("runs");
    let list = call(&orch, "slash_commands", json!({"op": "list"}))
        .await
        .expect("lists");
    assert_eq!(help.data["result"], list.data);
    let names: Vec<&str> = list.data["commands"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["/agents", "/analyze", "/audit", "/help", "/route"]);
}

#[tokio::test]
async fn unknown_commands_and_bad_quoting_say_what_is_wrong() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new()).await;
    let err = call(&orch, "slash_commands", json!({"command": "/teleport now"}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown command `/teleport`; known commands: /agents, /analyze, /audit, /help, /route"),
        "{err}"
    );
    let err = call(&orch, "slash_commands", json!({"command": r#"/analyze "never closed"#}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unterminated double quote (at column 10)"),
        "{err}"
    );
    // /audit dispatches to a capability nobody serves here: a failure that says so.
    let audit = call(&orch, "slash_commands", json!({"command": "/audit --agent=reviewer"}))
        .await
        .expect("answers");
    assert!(!audit.success);
    assert!(
        audit
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("/audit dispatched to audit_logging, which failed"),
        "{audit:?}"
    );
}

/// A plugin serving the capability an embedder's command calls.
struct Deployer;

#[async_trait]
impl OrchestrationPlugin for Deployer {
    fn name(&self) -> &str {
        "Deployer"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["deployment_pipeline".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(json!({"received": request.data})))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

#[tokio::test]
async fn embedder_commands_from_code_and_configuration() {
    let orch = Orchestrator::builder()
        .plugin(EnhancedWorkflowPlugin::new().with_command("ship", "Ship a service", "deployment_pipeline"))
        .plugin(Deployer)
        .configure(
            "EnhancedWorkflowPlugin",
            json!({"commands": {"deploy": {"capability": "deployment_pipeline"}}}),
        )
        .build()
        .await
        .expect("builds");
    for name in ["ship", "deploy"] {
        let out = call(
            &orch,
            "slash_commands",
            json!({"command": format!("/{name} api --replicas=3 --dry-run --env=prod")}),
        )
        .await
        .expect("runs");
        assert_eq!(out.data["dispatched_to"], "deployment_pipeline");
        assert_eq!(
            out.data["result"]["received"],
            json!({"args": ["api"], "replicas": 3, "dry-run": true, "env": "prod"})
        );
    }
    let err = Orchestrator::builder()
        .plugin(EnhancedWorkflowPlugin::new())
        .configure(
            "EnhancedWorkflowPlugin",
            json!({"commands": {"x": {"capabilty": "typo"}}}),
        )
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `capabilty`"), "{err}");
}

#[tokio::test]
async fn quality_gates_report_each_gate() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new()).await;
    let out = call(
        &orch,
        "quality_gates",
        json!({"workflow_id": "wf-7", "criteria": {"coverage": {"min": 0.8}, "p99_ms": {"max": 50}}, "metrics": {"coverage": 0.91}}),
    )
    .await
    .expect("evaluates");
    assert_eq!(out.data["passed"], false);
    assert_eq!(out.data["workflow_id"], "wf-7");
    assert_eq!(
        out.data["gates"][0],
        json!({"metric": "coverage", "passed": true, "actual": 0.91, "threshold": {"min": 0.8}, "reason": "0.91 is within bounds"})
    );
    assert_eq!(out.data["gates"][1]["reason"], "metric `p99_ms` is missing");
}

#[tokio::test]
async fn garbage_is_refused_as_invalid_request() {
    let orch = orchestrator(EnhancedWorkflowPlugin::new()).await;
    for (capability, data) in [
        ("extended_thinking", json!({"task_description": 5})),
        ("slash_commands", json!({"command": ["/help"]})),
        ("slash_commands", json!({"op": "delete"})),
        ("slash_commands", json!({"command": "help"})),
        ("quality_gates", json!({"criteria": {"x": {"min": "high"}}})),
        ("quality_gates", json!("text")),
    ] {
        let err = call(&orch, capability, data.clone()).await.unwrap_err();
        assert!(
            err.to_string().contains("invalid request"),
            "{capability} {data}: {err}"
        );
    }
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    check_plugin(&EnhancedWorkflowPlugin::new(), CheckOptions::default())
        .await
        .assert_conformant();
}
