//! Quickstart: build an orchestrator on the embedded defaults (the nine plugins this crate ships,
//! plus a small plugin of our own), register a few agents, call capabilities, route a task and
//! run it on the chosen agent, submit a task through the pipeline and print its per-step trace,
//! see what the monitoring plugins recorded, and print the catalog.
//!
//! The executor is the default dry run, and no task carries a token, so nothing is audited and
//! nothing is written to disk.
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
    for (id, capabilities) in [("dba", ["database", "migrations"]), ("data-eng", ["database", "etl"])] {
        orchestrator
            .register_agent(
                AgentConfig::new(id)
                    .with_id(id)
                    .with_capabilities(capabilities)
                    .with_capacity(2),
            )
            .await?;
    }
    println!(
        "registered {} agents: {reviewer}, {deployer}, dba, data-eng",
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

    // The whole way in one call: the task pipeline. Each plugin present takes its step (analysis,
    // routing, balancing, assignment, execution, records) under one correlation id, and the
    // report traces every step: who served it, how long it took, what it came to.
    let report = orchestrator
        .submit_task(
            Task::new("migrate the orders table")
                .with_kind("migration")
                .with_required_capabilities(["database"]),
        )
        .await?;
    println!(
        "task {}: {} on {} after {} attempt(s), {} us",
        report.task_id,
        snake_case(report.status),
        report.agent.as_ref().map_or("-", AgentId::as_str),
        report.attempts,
        report.duration_us
    );
    for step in &report.steps {
        let plugin = if step.plugin.is_empty() {
            "-"
        } else {
            step.plugin.as_str()
        };
        let detail = step.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        println!(
            "  {:<12} {:<48} {:>6} us  {}{detail}",
            snake_case(step.step),
            plugin,
            step.duration_us,
            snake_case(step.outcome)
        );
    }

    // A task no agent can take is refused before it runs: an error, not a report.
    let refused = orchestrator
        .submit_task(Task::new("translate the docs").with_required_capabilities(["french"]))
        .await;
    println!("refused: {}", refused.expect_err("no agent speaks french"));

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

/// The snake_case name a pipeline enum serializes to (`quality_gate`, `succeeded`, `done`).
fn snake_case(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}
