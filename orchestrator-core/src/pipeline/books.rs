//! The records kept as a task moves on: its state in `atomic_updates`, its mapping, its
//! workflow, what the balancer and the router learn, the audit record and the event.

use super::options::AuditPolicy;
use super::{Called, Outcome, Run};
use crate::agents::AgentEntry;
use crate::error::TaskError;
use crate::task::{PipelineStep, StepOutcome, TaskStatus};
use plugin_api::{IntegrationResponse, OrchestratorEvent};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// What the calls of one bookkeeping step came to: who served them, and what went wrong. A
/// step's calls are bookkeeping: a failure is reported in the trace, and the task goes on.
#[derive(Default)]
struct Books {
    plugins: Vec<String>,
    problems: Vec<String>,
}

impl Books {
    /// Notes `capability`'s call: its server when `accepted` holds for the answer, else a
    /// problem naming the capability. An absent capability is not noted.
    fn note(&mut self, capability: &str, called: Called, accepted: fn(&IntegrationResponse) -> bool) {
        match called {
            Called::Answer(r) if accepted(&r) => self.plugins.push(r.served_by),
            Called::Answer(r) => {
                let why = match r.error {
                    Some(error) => error,
                    None if r.success => format!("not applied, the task is {}", r.data["value"]),
                    None => String::new(),
                };
                self.problems.push(format!("{capability}: {why}"));
            }
            Called::Failed(e) => self.problems.push(format!("{capability}: {e}")),
            Called::Absent => {}
        }
    }

    /// Traces `step` as done (with `detail`) or failed (with the problems); `false`, and no
    /// trace, when nothing was noted.
    fn trace(mut self, run: &mut Run<'_>, step: PipelineStep, since: Instant, detail: Option<String>) -> bool {
        if self.plugins.is_empty() && self.problems.is_empty() {
            return false;
        }
        self.plugins.dedup();
        let (outcome, detail) = if self.problems.is_empty() {
            (StepOutcome::Done, detail)
        } else {
            (StepOutcome::Failed, Some(self.problems.join("; ")))
        };
        run.trace(step, &self.plugins.join(", "), since, outcome, detail);
        true
    }
}

/// A successful answer.
fn answered(r: &IntegrationResponse) -> bool {
    r.success
}

/// A successful answer of `atomic_updates` that applied the change.
fn applied(r: &IntegrationResponse) -> bool {
    r.success && r.data["applied"] == json!(true)
}

/// Records the assignment: `pending -> assigned -> running` (refusing a task that is already
/// elsewhere), the task's mapping and its workflow. `attempt` 0 is the first assignment.
pub(super) async fn assign(run: &mut Run<'_>, entry: &Arc<AgentEntry>, attempt: u32) -> Result<(), TaskError> {
    let since = Instant::now();
    let task = run.task;
    let mut books = Books::default();
    let request = json!({"op": "transition", "task_id": task.id, "from": "pending", "to": "assigned"});
    match run.call("atomic_updates", request).await {
        Called::Answer(r) if r.success && !applied(&r) && attempt == 0 => {
            let state = r.data["value"].as_str().unwrap_or("unknown").to_owned();
            run.trace(
                PipelineStep::Assign,
                &r.served_by,
                since,
                StepOutcome::Failed,
                Some(format!("already {state}")),
            );
            return Err(TaskError::AlreadySubmitted {
                task: task.id.clone(),
                state,
            });
        }
        called => books.note("atomic_updates", called, applied),
    }
    let request = json!({"op": "transition", "task_id": task.id, "from": "assigned", "to": "running"});
    books.note("atomic_updates", run.call("atomic_updates", request).await, applied);
    let request = json!({"op": "assign", "task_id": task.id, "agent_id": entry.id, "reassign": true});
    books.note("task_mapping", run.call("task_mapping", request).await, answered);
    books.plugins.push("host".into());
    books.trace(run, PipelineStep::Assign, since, Some(format!("to `{}`", entry.id)));
    if task.workflow_id.is_some() {
        track(run, "assigned").await;
        track(run, "running").await;
    }
    Ok(())
}

/// After an attempt: `running -> done | failed` and the mapping's completion are left to
/// `finish`; here the balancer and the router learn how it went.
pub(super) async fn record_attempt(run: &mut Run<'_>, entry: &Arc<AgentEntry>, success: bool, elapsed_ms: f64) {
    let since = Instant::now();
    let task = run.task;
    let mut books = Books::default();
    let request = json!({"op": "observe", "agent_id": entry.id, "latency_ms": elapsed_ms, "success": success});
    books.note(
        "adaptive_balancing",
        run.call("adaptive_balancing", request).await,
        answered,
    );
    let request = json!({
        "agent_id": entry.id,
        "task": {"description": task.description, "required_capabilities": task.required_capabilities},
        "success": success,
        "duration_ms": elapsed_ms,
    });
    books.note(
        "performance_learning",
        run.call("performance_learning", request).await,
        answered,
    );
    if !books.trace(run, PipelineStep::Record, since, None) {
        run.skipped(
            PipelineStep::Record,
            "neither `adaptive_balancing` nor `performance_learning` is served",
        );
    }
}

/// Before a retry: the task is handed back (`running -> pending`), and its workflow entry
/// with it. A failure here shows when the task is assigned again.
pub(super) async fn requeue(run: &mut Run<'_>) {
    let request = json!({"op": "transition", "task_id": run.task.id, "from": "running", "to": "pending"});
    if let Called::Answer(r) = run.call("atomic_updates", request).await {
        if !r.success || r.data["applied"] != json!(true) {
            tracing::warn!(task = %run.task.id, answer = %r.data, "handing the task back to pending failed");
        }
    }
    if run.task.workflow_id.is_some() {
        track(run, "pending").await;
    }
}

pub(super) async fn track(run: &mut Run<'_>, state: &str) {
    let Some(workflow) = run.task.workflow_id.clone() else {
        return;
    };
    run.step(
        PipelineStep::Track,
        "workflow_tracking",
        json!({"op": "update", "workflow_id": workflow, "task_id": run.task.id, "state": state}),
    )
    .await;
}

/// The end of a task: its final state, its mapping completed, its workflow, the audit record
/// and the `task_completed` event (when [`PipelineOptions::task_events`] is on).
pub(super) async fn finish(run: &mut Run<'_>, outcome: &Outcome, status: TaskStatus) {
    let succeeded = status == TaskStatus::Succeeded;
    let task = run.task;
    let state = if succeeded { "done" } else { "failed" };
    if outcome.agent.is_some() {
        let since = Instant::now();
        let mut books = Books::default();
        let duration_ms = run.started.elapsed().as_millis() as u64;
        let request = json!({"op": "transition", "task_id": task.id, "from": "running", "to": state});
        books.note("atomic_updates", run.call("atomic_updates", request).await, answered);
        let request = json!({"op": "complete", "task_id": task.id, "success": succeeded, "duration_ms": duration_ms});
        books.note("task_mapping", run.call("task_mapping", request).await, answered);
        books.trace(run, PipelineStep::Record, since, Some(format!("the task is {state}")));
        if task.workflow_id.is_some() {
            track(run, state).await;
        } else {
            run.skipped(PipelineStep::Track, "the task names no workflow");
        }
    }
    let audited = match run.inner.pipeline.audit {
        AuditPolicy::Always => true,
        AuditPolicy::Authenticated => outcome.subject.is_some(),
        AuditPolicy::Never => false,
    };
    if audited {
        let who = outcome.subject.clone().unwrap_or_else(|| {
            outcome
                .agent
                .as_ref()
                .map_or_else(|| "(anonymous)".to_owned(), ToString::to_string)
        });
        run.step(
            PipelineStep::Audit,
            "audit_logging",
            json!({"op": "append", "agent_id": who, "action": "task_submit", "resource": task.id, "outcome": state}),
        )
        .await;
    } else {
        run.skipped(PipelineStep::Audit, "not audited by the pipeline's audit policy");
    }
    if !run.inner.pipeline.task_events {
        return;
    }
    run.inner.events.emit(OrchestratorEvent::Custom {
        source: "orchestrator".into(),
        name: "task_completed".into(),
        data: json!({
            "task_id": task.id,
            "status": state,
            "agent_id": outcome.agent,
            "attempts": outcome.attempts,
            "correlation_id": run.correlation_id,
            "duration_ms": run.started.elapsed().as_millis() as u64,
        }),
    });
}
