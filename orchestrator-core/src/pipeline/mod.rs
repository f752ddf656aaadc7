//! The task pipeline behind [`Orchestrator::submit_task`](crate::Orchestrator::submit_task):
//! one task through every plugin that has something to say about it, under one correlation id.
//!
//! ```text
//! authenticate (oauth_auth) -> authorize (rbac_enforcement)      only when the task has a token
//! slash command (slash_commands)  or  analyse (extended_thinking)
//! queue (host)            when every eligible agent is at capacity: wait, by priority
//! route (semantic_routing) -> balance (adaptive_balancing | real_time_balancing) among the top picks
//! assign (atomic_updates, task_mapping, the agent's load) -> wake (sleep_wake_cycles)
//! execute (the AgentExecutor; retried with backoff, moved to another agent when one keeps failing)
//! quality gate (quality_gates)   re-run on a failed gate, up to a limit
//! record (atomic_updates, task_mapping, adaptive_balancing, performance_learning)
//! track (workflow_tracking) -> audit (audit_logging) -> a `task_completed` event (if asked)
//! ```
//!
//! **Design.** The pipeline is the host calling capabilities, exactly as an application could:
//! every step is a dispatch, so a plugin that is absent or disabled makes its step `skipped`
//! (or served by the legacy path), a failing one falls back like any call, and the feeds,
//! hooks and metrics see each step. The report records who served each step and how long it
//! took. Only the steps that decide whether a task may run (authentication and authorisation,
//! which fail closed) or how it ended (execution, quality gates) stop it; bookkeeping that fails
//! is reported and the task goes on.
//!
//! **Capacity is the host's.** An agent takes at most `capacity` tasks: a slot is taken with a
//! compare-and-swap on its load, so two tasks can never both take an agent's last slot. When
//! every eligible agent is full, the task waits in a bounded queue, highest priority first
//! (first come, first served among equals). A slot freed by a finishing task is handed straight
//! to the first waiting task that the agent fits, without being released in between, so a
//! newcomer cannot take it from under a waiting task, and nothing wakes that cannot use it.
//!
//! **A task runs once.** Its id is held in an in-process set while it is in the pipeline, and
//! `atomic_updates` moves it `pending -> assigned` before any agent sees it: on the Redis
//! backend, a task submitted by two processes runs in one of them. (A finished task's state is
//! kept for a bounded time or number of tasks, see the shared-state plugin; after that its id
//! could run again. Ids are meant to be unique, and generated ones are.)
//!
//! The module's parts: `options` (what can be set), `queue` (waiting for a free agent),
//! `choose` (who takes a task), `books` (the records kept as a task moves on); this file runs
//! a task through them.

mod books;
mod choose;
mod options;
mod queue;

pub(crate) use options::PipelineTable;
pub use options::{AuditPolicy, PipelineOptions};
pub(crate) use queue::{WaitQueue, release_slot, serve_waiters};

use crate::agent_tasks::{RunningTask, TaskRun, execute_on};
use crate::dispatch;
use crate::error::{OrchestratorError, TaskError};
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::orchestrator::Inner;
use crate::task::{PipelineStep, StepOutcome, StepTrace, Task, TaskReport, TaskStatus};
use crate::{AgentId, AgentStatus};
use books::{assign, finish, record_attempt, requeue};
use choose::choose_agent;
use dashmap::DashMap;
use plugin_api::IntegrationRequest;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

// ----- the pipeline ---------------------------------------------------------------------------

/// One task's way through the pipeline: the trace so far and what it needs throughout.
struct Run<'a> {
    inner: &'a Inner,
    task: &'a Task,
    correlation_id: String,
    steps: Vec<StepTrace>,
    started: Instant,
    deadline: Option<Instant>,
}

/// What a step's call came to.
enum Called {
    /// No enabled provider and no legacy handler: the step is skipped.
    Absent,
    /// An answer (`success` may be false).
    Answer(plugin_api::IntegrationResponse),
    /// The call failed.
    Failed(String),
}

impl Run<'_> {
    fn served(&self, capability: &str) -> bool {
        let snapshot = self.inner.registry.snapshot();
        let by_plugin = snapshot.routes.contains_key(capability) && snapshot.is_enabled(capability);
        by_plugin || (self.inner.legacy_mode && legacy::serves(capability) && snapshot.is_enabled(capability))
    }

    async fn call(&self, capability: &str, data: Value) -> Called {
        if !self.served(capability) {
            return Called::Absent;
        }
        let request = IntegrationRequest::new(capability, data).with_correlation_id(self.correlation_id.clone());
        match dispatch::execute(self.inner, request).await {
            Ok(response) => Called::Answer(response),
            Err(e) => Called::Failed(e.to_string()),
        }
    }

    fn trace(
        &mut self,
        step: PipelineStep,
        plugin: &str,
        since: Instant,
        outcome: StepOutcome,
        detail: Option<String>,
    ) {
        self.steps.push(StepTrace {
            step,
            plugin: plugin.to_owned(),
            duration_us: u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX),
            outcome,
            detail,
        });
    }

    fn skipped(&mut self, step: PipelineStep, why: &str) {
        self.steps.push(StepTrace {
            step,
            plugin: String::new(),
            duration_us: 0,
            outcome: StepOutcome::Skipped,
            detail: Some(why.to_owned()),
        });
    }

    /// Calls `capability` for `step` and records the trace line: the answer's data when it
    /// succeeded, `None` otherwise (absent, refused or failed; the trace says which).
    async fn step(&mut self, step: PipelineStep, capability: &str, data: Value) -> Option<Value> {
        let since = Instant::now();
        match self.call(capability, data).await {
            Called::Absent => {
                self.skipped(step, &format!("`{capability}` is not served"));
                None
            }
            Called::Failed(error) => {
                self.trace(step, "", since, StepOutcome::Failed, Some(error));
                None
            }
            Called::Answer(response) => {
                let outcome = if !response.success {
                    StepOutcome::Failed
                } else if response.fallback {
                    StepOutcome::Fallback
                } else {
                    StepOutcome::Done
                };
                let detail = response.error.clone();
                self.trace(step, &response.served_by, since, outcome, detail);
                response.success.then_some(response.data)
            }
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn deadline_passed(&self, stage: &str) -> TaskError {
        TaskError::DeadlinePassed {
            task: self.task.id.clone(),
            deadline_ms: self.task.deadline_ms.unwrap_or(0),
            stage: stage.to_owned(),
        }
    }

    fn report(self, status: TaskStatus, outcome: Outcome) -> TaskReport {
        TaskReport {
            task_id: self.task.id.clone(),
            correlation_id: self.correlation_id,
            status,
            agent: outcome.agent,
            output: outcome.output,
            error: outcome.error,
            attempts: outcome.attempts,
            quality: outcome.quality,
            subject: outcome.subject,
            steps: self.steps,
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// What the report says beside the trace.
#[derive(Default)]
struct Outcome {
    agent: Option<AgentId>,
    output: Option<Value>,
    error: Option<String>,
    attempts: u32,
    quality: Option<Value>,
    subject: Option<String>,
}

/// Holds a task id in the in-process set while the task is in the pipeline.
struct InPipeline<'a> {
    tasks: &'a DashMap<String, ()>,
    id: &'a str,
}

impl Drop for InPipeline<'_> {
    fn drop(&mut self) {
        self.tasks.remove(self.id);
    }
}

/// Runs `task` through the pipeline (see the module docs).
pub(crate) async fn submit(inner: &Inner, task: Task) -> Result<TaskReport, OrchestratorError> {
    let correlation_id = new_correlation_id();
    let span = tracing::info_span!("submit_task", task.id = %task.id, correlation_id = %correlation_id);
    run_pipeline(inner, &task, correlation_id).instrument(span).await
}

fn validate(task: &Task) -> Result<(), TaskError> {
    let invalid = |reason: &str| TaskError::Invalid {
        task: task.id.clone(),
        reason: reason.to_owned(),
    };
    if task.id.is_empty() || task.id.len() > 256 {
        return Err(invalid("its id must be 1 to 256 bytes long"));
    }
    if task.description.trim().is_empty() {
        return Err(invalid("its description is empty: say what is to be done"));
    }
    if let Some(criteria) = &task.quality_criteria {
        if !criteria.is_object() {
            return Err(invalid(
                "`quality_criteria` must be an object, {metric: {\"min\"?, \"max\"?, \"equals\"?}}",
            ));
        }
    }
    Ok(())
}

async fn run_pipeline(inner: &Inner, task: &Task, correlation_id: String) -> Result<TaskReport, OrchestratorError> {
    validate(task)?;
    let _in_pipeline = match inner.pipeline_tasks.entry(task.id.clone()) {
        dashmap::mapref::entry::Entry::Occupied(_) => {
            return Err(TaskError::AlreadySubmitted {
                task: task.id.clone(),
                state: "in the pipeline now".into(),
            }
            .into());
        }
        dashmap::mapref::entry::Entry::Vacant(v) => {
            v.insert(());
            InPipeline {
                tasks: &inner.pipeline_tasks,
                id: &task.id,
            }
        }
    };
    let started = Instant::now();
    let mut run = Run {
        inner,
        task,
        correlation_id,
        steps: Vec::with_capacity(16),
        started,
        deadline: task.deadline_ms.map(|ms| started + Duration::from_millis(ms)),
    };
    let mut outcome = Outcome::default();

    // Authentication and authorisation: only for a task with a token, and failing closed.
    match &task.token {
        Some(token) => {
            let subject = authenticate(&mut run, token).await?;
            outcome.subject = Some(subject);
        }
        None => {
            run.skipped(PipelineStep::Authenticate, "the task has no token");
            run.skipped(PipelineStep::Authorize, "the task has no token");
        }
    }

    // A slash command is run by the command, not by an agent.
    if task.description.trim_start().starts_with('/') {
        let answer = run
            .step(
                PipelineStep::Command,
                "slash_commands",
                json!({ "command": task.description.trim() }),
            )
            .await;
        let status = match answer {
            Some(data) => {
                outcome.output = Some(data);
                TaskStatus::Succeeded
            }
            None => {
                outcome.error = run.steps.last().and_then(|s| s.detail.clone());
                TaskStatus::Failed
            }
        };
        finish(&mut run, &outcome, status).await;
        return Ok(run.report(status, outcome));
    }
    let analysis = run
        .step(
            PipelineStep::Analyse,
            "extended_thinking",
            json!({ "task_description": task.description }),
        )
        .await;

    let options = &inner.pipeline;
    let mut avoid: Vec<AgentId> = Vec::new();
    // Executor failures (the retry budget, `max_attempts`) and failed gates (their own budget,
    // `max_quality_retries`) are counted apart; `outcome.attempts` counts every run.
    let mut failed_runs = 0_u32;
    let mut failures_here = 0_u32;
    let mut quality_runs = 0_u32;
    let mut previous: Option<AgentId> = None;
    let status = loop {
        // Choose an agent and take one of its slots.
        let entry = choose_agent(&mut run, &avoid).await?;
        if previous.as_ref() != Some(&entry.id) {
            failures_here = 0;
        }
        previous = Some(entry.id.clone());
        // Taking the slot wakes a sleeping agent on the host; the context plugin is told too.
        let asleep = entry.status() == AgentStatus::Sleeping;
        let slot = RunningTask::acquired(inner, Arc::clone(&entry));
        outcome.agent = Some(entry.id.clone());
        assign(&mut run, &entry, outcome.attempts).await?;
        if asleep {
            run.step(
                PipelineStep::Wake,
                "sleep_wake_cycles",
                json!({"op": "wake", "agent_id": entry.id}),
            )
            .await;
        } else {
            run.skipped(PipelineStep::Wake, "the agent is awake");
        }

        // Execute. The report describes the last run only.
        outcome.attempts += 1;
        outcome.output = None;
        outcome.quality = None;
        let mut data = task.data.clone();
        if let (Some(kind), Value::Object(map)) = (&task.kind, &mut data) {
            map.entry("kind").or_insert_with(|| Value::String(kind.clone()));
        } else if let (Some(kind), Value::Null) = (&task.kind, &data) {
            data = json!({ "kind": kind });
        }
        let timeout = match run.remaining() {
            Some(left) => left.min(options.task_timeout),
            None => options.task_timeout,
        };
        let since = Instant::now();
        let result = execute_on(
            inner,
            &entry,
            Some(slot),
            TaskRun {
                data,
                analysis: analysis.clone(),
                correlation_id: run.correlation_id.clone(),
                task_id: Some(task.id.clone()),
                attempt: outcome.attempts,
                timeout: Some(timeout),
            },
        )
        .await;
        let elapsed_ms = since.elapsed().as_secs_f64() * 1e3;
        let (retryable, error) = match result {
            Ok(output) => {
                run.trace(PipelineStep::Execute, "executor", since, StepOutcome::Done, None);
                record_attempt(&mut run, &entry, true, elapsed_ms).await;
                // Quality gates.
                let Some(criteria) = &task.quality_criteria else {
                    run.skipped(PipelineStep::QualityGate, "the task names no quality criteria");
                    outcome.output = Some(output);
                    break TaskStatus::Succeeded;
                };
                let metrics = output.get("metrics").cloned().unwrap_or_else(|| json!({}));
                let mut request = json!({ "criteria": criteria, "metrics": metrics });
                if let Some(workflow) = &task.workflow_id {
                    request["workflow_id"] = json!(workflow);
                }
                let gate = run.step(PipelineStep::QualityGate, "quality_gates", request).await;
                outcome.output = Some(output);
                match gate {
                    Some(report) if report["passed"] == json!(true) => {
                        outcome.quality = Some(report);
                        break TaskStatus::Succeeded;
                    }
                    Some(report) => {
                        let failed = report["failed"].as_u64().unwrap_or(0);
                        if let Some(last) = run.steps.last_mut() {
                            last.outcome = StepOutcome::Failed;
                            last.detail = Some(gate_failures(&report));
                        }
                        outcome.quality = Some(report);
                        outcome.error = Some(format!("{failed} quality gate(s) failed"));
                        if quality_runs >= options.max_quality_retries {
                            outcome.error = Some(format!(
                                "{failed} quality gate(s) failed after {} run(s)",
                                quality_runs + 1
                            ));
                            break TaskStatus::Failed;
                        }
                        quality_runs += 1;
                        requeue(&mut run).await;
                        continue;
                    }
                    None => {
                        // Criteria given and nothing could check them: the result is not
                        // accepted unchecked.
                        outcome.error = Some("the quality gates could not be evaluated".into());
                        break TaskStatus::Failed;
                    }
                }
            }
            Err(failure) => {
                let detail = failure.message.clone();
                run.trace(
                    PipelineStep::Execute,
                    "executor",
                    since,
                    StepOutcome::Failed,
                    Some(detail.clone()),
                );
                record_attempt(&mut run, &entry, false, elapsed_ms).await;
                (failure.retryable, detail)
            }
        };
        outcome.error = Some(error);
        failed_runs += 1;
        if !retryable || failed_runs >= options.max_attempts {
            break TaskStatus::Failed;
        }
        failures_here += 1;
        if failures_here >= options.same_agent_attempts {
            avoid.push(entry.id.clone());
        }
        let exponent = (failed_runs - 1).min(16);
        let backoff = options
            .retry_backoff
            .saturating_mul(1 << exponent)
            .min(Duration::from_secs(1));
        if run.remaining().is_some_and(|left| left <= backoff) {
            finish(&mut run, &outcome, TaskStatus::Failed).await;
            return Err(run.deadline_passed("backing off before a retry").into());
        }
        tokio::time::sleep(backoff).await;
        requeue(&mut run).await;
    };
    if status == TaskStatus::Succeeded {
        outcome.error = None;
    }
    finish(&mut run, &outcome, status).await;
    Ok(run.report(status, outcome))
}

/// The reasons of the gates that failed, from a `quality_gates` answer.
fn gate_failures(report: &Value) -> String {
    let reasons: Vec<String> = report["gates"]
        .as_array()
        .map(|gates| {
            gates
                .iter()
                .filter(|g| g["passed"] == json!(false))
                .map(|g| {
                    let metric = g["metric"].as_str().unwrap_or("?");
                    match g["reason"].as_str() {
                        Some(reason) => format!("{metric}: {reason}"),
                        None => format!("{metric} failed"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        "the gates did not pass".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// Verifies the token and asks whether its subject may submit tasks; the subject, or why not.
async fn authenticate(run: &mut Run<'_>, token: &str) -> Result<String, TaskError> {
    let refused = |reason: String| TaskError::Unauthenticated {
        task: run.task.id.clone(),
        reason,
    };
    let Some(answer) = run
        .step(PipelineStep::Authenticate, "oauth_auth", json!({ "token": token }))
        .await
    else {
        let why = run
            .steps
            .last()
            .and_then(|s| s.detail.clone())
            .unwrap_or_else(|| "no verification".into());
        let error = refused(format!("it could not be verified: {why}"));
        audit_refusal(run, "", &error.to_string()).await;
        return Err(error);
    };
    if answer["authenticated"] != json!(true) {
        let reason = answer["reason"].as_str().unwrap_or("refused").to_owned();
        if let Some(last) = run.steps.last_mut() {
            last.outcome = StepOutcome::Failed;
            last.detail = Some(reason.clone());
        }
        let error = refused(reason);
        audit_refusal(run, "", &error.to_string()).await;
        return Err(error);
    }
    let subject = answer["subject"].as_str().unwrap_or_default().to_owned();
    let decision = run
        .step(
            PipelineStep::Authorize,
            "rbac_enforcement",
            json!({ "subject": subject, "resource": "tasks", "action": "submit" }),
        )
        .await;
    let allowed = decision.as_ref().is_some_and(|d| d["allowed"] == json!(true));
    if !allowed {
        let reason = match &decision {
            Some(d) => d["rule"].as_str().unwrap_or("denied").to_owned(),
            None => run
                .steps
                .last()
                .and_then(|s| s.detail.clone())
                .unwrap_or_else(|| "no decision".into()),
        };
        if let Some(last) = run.steps.last_mut() {
            last.outcome = StepOutcome::Failed;
            last.detail = Some(reason.clone());
        }
        let error = TaskError::Forbidden {
            task: run.task.id.clone(),
            subject: subject.clone(),
            reason,
        };
        audit_refusal(run, &subject, &error.to_string()).await;
        return Err(error);
    }
    Ok(subject)
}

async fn audit_refusal(run: &mut Run<'_>, subject: &str, why: &str) {
    if run.inner.pipeline.audit == AuditPolicy::Never {
        return;
    }
    let agent = if subject.is_empty() {
        "(unauthenticated)"
    } else {
        subject
    };
    run.step(
        PipelineStep::Audit,
        "audit_logging",
        json!({"op": "append", "agent_id": agent, "action": "task_refused", "resource": run.task.id, "outcome": why}),
    )
    .await;
}
