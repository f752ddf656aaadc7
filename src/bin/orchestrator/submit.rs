//! `submit`: one task through the pipeline, on the dry-run executor, and its report.

use crate::table::Table;
use crate::{ConfigArg, Failure, Outcome, build, builder, micros, serialized_name};
use clap::Args;
use orchestrator::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `submit`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// What the task is, in words (what routing and analysis read; `/command` runs a slash command).
    #[arg(value_name = "TEXT")]
    text: String,
    /// The agents to register: a JSON array of agents, e.g.
    /// `[{"id": "db-1", "capabilities": ["database"], "capacity": 2}]` (default: a built-in fleet of four).
    #[arg(long, value_name = "FILE")]
    agents: Option<PathBuf>,
    /// Capabilities an agent must have to take the task, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    capabilities: Vec<String>,
    /// The task's priority (higher first while tasks wait for a free agent).
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Print the task report as JSON.
    #[arg(long)]
    json: bool,
    /// The configuration file.
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

/// The fleet registered when no `--agents` file is given: a generalist and three specialists.
fn built_in_fleet() -> Vec<AgentConfig> {
    let agent = |id: &str, capabilities: &[&str], capacity: u32| {
        AgentConfig::new(id)
            .with_id(id)
            .with_capabilities(capabilities.iter().copied())
            .with_capacity(capacity)
    };
    vec![
        agent("generalist", &["general", "code_review", "documentation", "testing"], 4),
        agent("database", &["database", "sql", "migrations", "postgres"], 2),
        agent("frontend", &["frontend", "css", "react", "ui"], 2),
        agent("infra", &["infra", "deploy", "kubernetes", "security"], 2),
    ]
}

/// Reads an agents file: a JSON array of agent configurations.
fn read_agents(path: &Path) -> Result<Vec<AgentConfig>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure(format!("cannot read agents file {}: {e}", path.display())))?;
    let agents: Vec<AgentConfig> = serde_json::from_str(&text).map_err(|e| {
        Failure(format!(
            "agents file {} is not a JSON array of agents ({e}); expected e.g. \
             [{{\"id\": \"db-1\", \"capabilities\": [\"database\"], \"capacity\": 2}}]",
            path.display()
        ))
    })?;
    if agents.is_empty() {
        return Err(Failure(format!("agents file {} lists no agents", path.display())));
    }
    Ok(agents)
}

/// Runs `submit`.
pub(crate) async fn run(args: SubmitArgs) -> Outcome {
    // The agents file is read before anything is built: a bad file is reported at once.
    let agents = match &args.agents {
        Some(path) => read_agents(path)?,
        None => built_in_fleet(),
    };
    let config = args.config.file.as_deref();
    let orchestrator = build(builder(config), config).await?;
    for agent in agents {
        let name = agent
            .id
            .as_ref()
            .map_or_else(|| agent.name.clone().unwrap_or_default(), ToString::to_string);
        orchestrator.register_agent(agent).await.map_err(|e| {
            let from = args
                .agents
                .as_ref()
                .map_or_else(String::new, |p| format!(" from {}", p.display()));
            Failure(format!("cannot register agent `{name}`{from}: {e}"))
        })?;
    }

    let task = Task::new(args.text)
        .with_required_capabilities(args.capabilities)
        .with_priority(args.priority);
    let task_id = task.id.clone();
    let report = orchestrator
        .submit_task(task)
        .await
        .map_err(|e| Failure(format!("task `{task_id}` was not run: {e}")))?;

    let succeeded = report.status == TaskStatus::Succeeded;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        if args.json {
            eprintln!(
                "task `{}` failed: {}",
                report.task_id,
                report.error.as_deref().unwrap_or("(no reason given)")
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The report as text: the outcome, then the trace of its steps.
fn print_report(report: &TaskReport) {
    println!("task:      {}", report.task_id);
    println!("status:    {}", serialized_name(serde_json::to_value(report.status)));
    println!(
        "agent:     {}",
        report
            .agent
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), ToString::to_string)
    );
    println!("attempts:  {}", report.attempts);
    println!("duration:  {}", micros(report.duration_us));
    if let Some(error) = &report.error {
        println!("error:     {error}");
    }
    if report.step(PipelineStep::Execute).next().is_some() {
        println!("executor:  dry run (DryRunExecutor): no work was done; the output says what would have run");
    }
    println!();
    let mut steps = Table::new(["step", "plugin", "duration", "outcome", "detail"]);
    for step in &report.steps {
        steps.row([
            serialized_name(serde_json::to_value(step.step)),
            if step.plugin.is_empty() {
                "-".to_owned()
            } else {
                step.plugin.clone()
            },
            micros(step.duration_us),
            serialized_name(serde_json::to_value(step.outcome)),
            step.detail.clone().unwrap_or_default(),
        ]);
    }
    print!("{steps}");
}
