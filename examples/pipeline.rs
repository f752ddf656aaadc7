//! The task pipeline: tasks go through `Orchestrator::submit_task` with the default plugins and an
//! `AgentExecutor` of our own that "runs CI" on a module and reports
//! `{"metrics": {"coverage": x, "lint_errors": n}}`. The metrics are computed from the task's data
//! and the attempt (`ExecutionContext::attempt`): each re-run adds tests and fixes lint errors, so
//!
//! - `lint-parser` fails its quality gate (`coverage >= 0.8`, `lint_errors <= 0`) on the first
//!   run, is re-run, and passes;
//! - `fetch-deps` hits a retryable failure (a rate limit) once, is retried after a backoff, and
//!   succeeds;
//! - `legacy-module` gains nothing from a re-run, fails its gate every time and ends `Failed`;
//! - `write-docs` passes at once.
//!
//! The four make up the workflow `release-1.2`, defined first through `workflow_tracking` with
//! their explicit ids; its progress is printed at the end. Every report's trace is printed: step,
//! plugin, duration and outcome.
//!
//! Run it with `cargo run --example pipeline`.

use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use orchestrator::{OrchestratorEvent, PipelineOptions, StepOutcome};
use serde_json::{Value, json};
use std::time::Duration;

/// Runs "CI" for a module. The task's data says how big the module is and how its CI goes:
/// `{"lines", "tested", "tests_added_per_run"?, "lint_errors"?, "lint_fixed_per_run"?,
/// "rate_limited_runs"?}`.
struct CiExecutor;

fn field(data: &Value, name: &str) -> Result<u64, ExecutorError> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| ExecutorError::new(format!("`{name}` must be a whole number, not {v}"))),
    }
}

#[async_trait]
impl AgentExecutor for CiExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        let data = &context.data;
        let lines = field(data, "lines")?;
        if lines == 0 {
            return Err(ExecutorError::new("`lines` must be at least 1"));
        }
        // Earlier runs of this task, which left their work behind.
        let reruns = u64::from(context.attempt.saturating_sub(1));
        if context.attempt <= u32::try_from(field(data, "rate_limited_runs")?).unwrap_or(u32::MAX) {
            return Err(ExecutorError::retryable(format!(
                "attempt {}: the package registry answered 429 Too Many Requests",
                context.attempt
            )));
        }
        // Some work: the larger the module, the longer its CI.
        tokio::time::sleep(Duration::from_micros(lines * 2)).await;
        let tested = (field(data, "tested")? + reruns * field(data, "tests_added_per_run")?).min(lines);
        let lint_errors = field(data, "lint_errors")?.saturating_sub(reruns * field(data, "lint_fixed_per_run")?);
        let coverage = (tested as f64 / lines as f64 * 1000.0).round() / 1000.0;
        Ok(json!({
            "metrics": {"coverage": coverage, "lint_errors": lint_errors},
            "agent": context.agent.id,
            "attempt": context.attempt,
            "summary": format!("{tested}/{lines} lines tested, {lint_errors} lint error(s)"),
        }))
    }
}

fn name<T: serde::Serialize>(value: T) -> String {
    json!(value).as_str().unwrap_or("?").to_owned()
}

fn print_report(report: &TaskReport) {
    println!(
        "\n{}: {} on {} after {} attempt(s), {} us{}",
        report.task_id,
        name(report.status),
        report.agent.as_ref().map_or("-".into(), ToString::to_string),
        report.attempts,
        report.duration_us,
        report.error.as_ref().map_or(String::new(), |e| format!(", error: {e}"))
    );
    if let Some(output) = &report.output {
        println!("  output: {} {}", output["metrics"], output["summary"]);
    }
    if let Some(quality) = &report.quality {
        let gates: Vec<String> = quality["gates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                format!(
                    "{}: {}",
                    g["metric"].as_str().unwrap_or("?"),
                    g["reason"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "  last quality gate: passed {}; {}",
            quality["passed"],
            gates.join("; ")
        );
    }
    for step in &report.steps {
        if step.outcome == StepOutcome::Skipped {
            continue;
        }
        let detail = match (&step.outcome, &step.detail) {
            (StepOutcome::Done, _) | (_, None) => String::new(),
            (_, Some(detail)) => format!("  ({detail})"),
        };
        println!(
            "  {:<12} {:<47} {:>6} us  {}{detail}",
            name(step.step),
            step.plugin,
            step.duration_us,
            name(step.outcome)
        );
    }
    let skipped: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Skipped)
        .map(|s| name(s.step))
        .collect();
    println!("  skipped: {}", skipped.join(", "));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orchestrator = Orchestrator::builder()
        .with_default_plugins()
        .executor(CiExecutor)
        .pipeline(
            PipelineOptions::default()
                .retry_backoff(Duration::from_millis(5))
                .task_events(true),
        )
        .build()
        .await?;
    let mut events = orchestrator.subscribe_events();
    for (name, capabilities) in [
        ("alice", ["rust", "review"]),
        ("bob", ["rust", "build"]),
        ("carol", ["docs", "rust"]),
    ] {
        orchestrator
            .register_agent(
                AgentConfig::new(name)
                    .with_id(name)
                    .with_capabilities(capabilities)
                    .with_capacity(1),
            )
            .await?;
    }

    let criteria = json!({"coverage": {"min": 0.8}, "lint_errors": {"max": 0}});
    let workflow = "release-1.2";
    let tasks = vec![
        Task::new("lint and test the parser module")
            .with_id("lint-parser")
            .with_kind("ci")
            .with_required_capabilities(["rust"])
            .with_data(json!({"lines": 1200, "tested": 780, "tests_added_per_run": 300, "lint_errors": 4, "lint_fixed_per_run": 4}))
            .with_quality_criteria(criteria.clone()),
        Task::new("fetch and build the dependencies")
            .with_id("fetch-deps")
            .with_kind("build")
            .with_required_capabilities(["build"])
            .with_priority(5)
            .with_data(json!({"lines": 300, "tested": 300, "rate_limited_runs": 1})),
        Task::new("lint and test the legacy module")
            .with_id("legacy-module")
            .with_kind("ci")
            .with_required_capabilities(["rust"])
            .with_data(json!({"lines": 2000, "tested": 900, "lint_errors": 12}))
            .with_quality_criteria(criteria.clone()),
        Task::new("write the release notes")
            .with_id("write-docs")
            .with_kind("docs")
            .with_required_capabilities(["docs"])
            .with_data(json!({"lines": 100, "tested": 100}))
            .with_deadline(Duration::from_secs(10)),
    ];

    // The workflow first, with the tasks' explicit ids; then the tasks, all at once.
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let defined = orchestrator
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "define", "workflow_id": workflow, "tasks": ids}),
        ))
        .await?;
    println!("workflow {workflow} defined: {}", defined.data);

    let handles: Vec<_> = tasks
        .into_iter()
        .map(|task| tokio::spawn(orchestrator.submit_task(task.with_workflow(workflow))))
        .collect();
    for handle in handles {
        match handle.await? {
            Ok(report) => print_report(&report),
            Err(refused) => println!("\nrefused before it ran: {refused}"),
        }
    }

    let progress = orchestrator
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "progress", "workflow_id": workflow}),
        ))
        .await?;
    println!("\nworkflow {workflow}: {}", progress.data);

    // The events the tasks and the workflow left (delivered asynchronously: give them a moment).
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(event) = events.try_recv() {
        if let OrchestratorEvent::Custom { name, data, .. } = event {
            if name == "task_completed" || name == "workflow_completed" {
                println!("event {name}: {data}");
            }
        }
    }
    Ok(())
}
