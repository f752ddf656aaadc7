//! Quickstart: build an orchestrator on the embedded defaults (the plugins this crate ships, plus
//! a small plugin of our own), register a few agents, call capabilities, route a task and run it
//! on the chosen agent, see what the monitoring plugins recorded, and print the catalog.
//!
//! Run it with `cargo run --example quickstart`.

use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use serde_json::json;

/// A tiny plugin: `text_stats` counts the words and sentences of `text`.
struct TextStatsPlugin;

#[async_trait]
impl OrchestrationPlugin for TextStatsPlugin {
    fn name(&self) -> &str {
        "TextStatsPlugin"
    }

    fn capabilities(&self) -> Vec<String> {
        vec!["text_stats".into()]
    }

    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let text = request
            .data
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| PluginError::invalid_request("expected {\"text\": string}"))?;
        let sentences = text.split(['.', '!', '?']).filter(|s| !s.trim().is_empty()).count();
        Ok(IntegrationResponse::ok(json!({
            "words": text.split_whitespace().count(),
            "sentences": sentences,
        })))
    }

    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orchestrator = Orchestrator::builder()
        .with_default_plugins()
        .plugin(TextStatsPlugin)
        .build()
        .await?;

    let reviewer = orchestrator
        .register_agent(
            AgentConfig::new("reviewer")
                .with_capabilities(["code_review", "rust"])
                .with_capacity(2),
        )
        .await?;
    let deployer = orchestrator
        .register_agent(AgentConfig::new("deployer").with_capabilities(["deploy"]))
        .await?;
    println!(
        "registered {} agents: {reviewer}, {deployer}",
        orchestrator.agent_count()
    );

    // A capability served by a plugin.
    let stats = orchestrator
        .execute(IntegrationRequest::new(
            "text_stats",
            json!({"text": "Ship it. Then monitor!"}),
        ))
        .await?;
    println!("text_stats (served by {}): {}", stats.served_by, stats.data);

    // Bad input is an error that says what was expected, never a panic.
    let bad = orchestrator
        .execute(IntegrationRequest::new("text_stats", json!({"txt": 1})))
        .await;
    println!("bad input: {}", bad.expect_err("refused"));

    // The routing plugin picks the agent (text similarity, learned success, load).
    let task = Task::new("review the parser change, then deploy it").with_required_capabilities(["deploy"]);
    let chosen = orchestrator.select_agent_for_task(&task, &[]).await?;
    println!("task {} goes to {chosen}", task.id);

    // Run it: the workflow plugin analyses the task first; the default executor is a dry run
    // that shows what it would do.
    let output = orchestrator
        .execute_agent_task(&chosen, json!({"task_description": task.description}))
        .await?;
    println!(
        "plan: {}, complexity {:.2}",
        output["analysis"]["plan"],
        output["analysis"]["complexity"].as_f64().unwrap_or_default()
    );

    // Tell the router how it went, so that it learns.
    orchestrator
        .execute(IntegrationRequest::new(
            "performance_learning",
            json!({"agent_id": chosen.as_str(), "task": {"description": task.description}, "success": true, "duration_ms": 120}),
        ))
        .await?;

    // A slash command, parsed and dispatched by the workflow plugin.
    let help = orchestrator
        .execute(IntegrationRequest::new(
            "slash_commands",
            json!({"command": "/agents --status=active"}),
        ))
        .await?;
    println!("/agents: {}", help.data["result"]["agents"]);

    // The monitoring pair watched all of it: dispatches per capability, with latency.
    let monitoring = orchestrator
        .execute(IntegrationRequest::new("real_time_monitoring", json!({})))
        .await?;
    println!(
        "dispatches so far: {}, tasks finished: {}",
        monitoring.data["dispatches"], monitoring.data["tasks"]["finished"]
    );
    let spans = orchestrator
        .execute(IntegrationRequest::new(
            "observability",
            json!({"op": "recent", "limit": 3}),
        ))
        .await?;
    for span in spans.data["spans"].as_array().into_iter().flatten() {
        println!(
            "span {} {} ({} us, {})",
            span["name"], span["fields"]["gen_ai.tool.name"], span["duration_us"], span["fields"]["outcome"]
        );
    }

    println!("catalog:\n{}", serde_json::to_string_pretty(&orchestrator.catalog())?);
    Ok(())
}
