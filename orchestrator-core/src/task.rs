//! Tasks: units of work handed to agents, and the report of one task's way through the
//! pipeline ([`Orchestrator::submit_task`](crate::Orchestrator::submit_task)).

use crate::AgentId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// A unit of work for an agent.
///
/// ```
/// use orchestrator_core::Task;
/// use std::time::Duration;
/// let task = Task::new("review the parser change")
///     .with_kind("review")
///     .with_required_capabilities(["code_review"])
///     .with_priority(5)
///     .with_data(serde_json::json!({"pr": 42}))
///     .with_deadline(Duration::from_secs(30));
/// assert!(task.id.starts_with("task-"));
/// assert_eq!(task.deadline_ms, Some(30_000));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Task {
    /// Its id; generated (`task-N`) by [`Task::new`]. Submitting two tasks with one id at once is
    /// refused: a task runs once.
    #[serde(default = "crate::ids::new_task_id")]
    pub id: String,
    /// What is to be done, in words: what routing and analysis read. A description that starts
    /// with `/` is a slash command, run by `slash_commands` instead of an agent.
    pub description: String,
    /// What sort of task it is (`"review"`, `"deploy"`): figures are kept per kind
    /// (`task_performance`), and the executor sees it in its data as `kind`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Capabilities an agent must have to take it.
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    /// Higher runs first when tasks wait for a free agent (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Free-form input for the agent (the payload).
    #[serde(default)]
    pub data: Value,
    /// A bearer token (JWT): when present, the task is authenticated (`oauth_auth`) and
    /// authorised (`rbac_enforcement`, resource `tasks`, action `submit`) before any agent sees
    /// it. Never serialized, and hidden from `Debug`.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// The workflow the task belongs to: its progress is kept by `workflow_tracking`.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Quality criteria for the result, `{metric: {"min"?, "max"?, "equals"?}}`, checked by
    /// `quality_gates` against the numbers in the executor's output under `metrics`.
    #[serde(default)]
    pub quality_criteria: Option<Value>,
    /// The task must be done within this many milliseconds of its submission, waiting included.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("description", &self.description)
            .field("kind", &self.kind)
            .field("required_capabilities", &self.required_capabilities)
            .field("priority", &self.priority)
            .field("data", &self.data)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("workflow_id", &self.workflow_id)
            .field("quality_criteria", &self.quality_criteria)
            .field("deadline_ms", &self.deadline_ms)
            .finish()
    }
}

impl Task {
    /// A task described by `description`, with a generated id.
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            id: crate::ids::new_task_id(),
            description: description.into(),
            kind: None,
            required_capabilities: Vec::new(),
            priority: 0,
            data: Value::Null,
            token: None,
            workflow_id: None,
            quality_criteria: None,
            deadline_ms: None,
        }
    }

    /// Sets an explicit id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the kind of task.
    #[must_use]
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the capabilities an agent must have.
    #[must_use]
    pub fn with_required_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the priority (higher first while waiting for an agent).
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the agent's input.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// Sets the bearer token the task is submitted with.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the workflow the task belongs to.
    #[must_use]
    pub fn with_workflow(mut self, workflow_id: impl Into<String>) -> Self {
        self.workflow_id = Some(workflow_id.into());
        self
    }

    /// Sets quality criteria, `{metric: {"min"?, "max"?, "equals"?}}`.
    #[must_use]
    pub fn with_quality_criteria(mut self, criteria: Value) -> Self {
        self.quality_criteria = Some(criteria);
        self
    }

    /// Sets how long the task may take from submission, waiting included.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline_ms = Some(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX));
        self
    }
}

/// How a submitted task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Done, and its quality gates (if any) passed.
    Succeeded,
    /// The executor failed on every attempt allowed, or the result failed its quality gates
    /// every time; [`TaskReport::error`] says which.
    Failed,
}

/// One step of the pipeline, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PipelineStep {
    /// `oauth_auth`: the task's token verified.
    Authenticate,
    /// `rbac_enforcement`: the subject may submit tasks.
    Authorize,
    /// `slash_commands`: a task written as a slash command, run by the command.
    Command,
    /// `extended_thinking`: the task analysed before it runs.
    Analyse,
    /// Waiting for a free agent (every eligible agent was at capacity).
    Queue,
    /// `semantic_routing`: the agents ranked for the task.
    Route,
    /// `adaptive_balancing` (or `real_time_balancing`) among the router's top picks.
    Balance,
    /// The task assigned: `atomic_updates` (`pending -> assigned`), `task_mapping`, the agent's
    /// load.
    Assign,
    /// `sleep_wake_cycles`: a sleeping agent woken.
    Wake,
    /// The [`AgentExecutor`](crate::AgentExecutor) running the task (one entry per attempt).
    Execute,
    /// `quality_gates` on the result.
    QualityGate,
    /// The outcome recorded: `atomic_updates`, `task_mapping`, `performance_learning`,
    /// `adaptive_balancing`.
    Record,
    /// `workflow_tracking`: the task's workflow progress.
    Track,
    /// `audit_logging`: the submission written to the audit log.
    Audit,
}

/// What a step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepOutcome {
    /// Served by the plugin named in the trace.
    Done,
    /// Served, but by a later provider or the legacy path after the first failed.
    Fallback,
    /// Not run: its capability is absent or disabled, or the task did not need it (the detail
    /// says which).
    Skipped,
    /// Run, and failed; the detail says how. Only steps that refuse a task (authentication,
    /// authorisation) or decide its status (execution, quality gates) stop it; bookkeeping
    /// that fails is reported here and the task goes on.
    Failed,
}

/// One line of a [`TaskReport`]'s trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StepTrace {
    /// The step.
    pub step: PipelineStep,
    /// Who served it: a plugin's name, `legacy`, `host` (the orchestrator itself) or
    /// `executor`; empty when skipped.
    pub plugin: String,
    /// How long it took, in microseconds.
    pub duration_us: u64,
    /// What it came to.
    pub outcome: StepOutcome,
    /// Why it was skipped or failed, or what it decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What [`Orchestrator::submit_task`](crate::Orchestrator::submit_task) did with a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TaskReport {
    /// The task's id.
    pub task_id: String,
    /// The correlation id every step of the task was called with.
    pub correlation_id: String,
    /// How it ended.
    pub status: TaskStatus,
    /// The agent that ran it last (none for a slash command).
    pub agent: Option<AgentId>,
    /// The executor's output (or the slash command's result), on success, and on a failed
    /// quality gate (the output that failed it).
    pub output: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// How many times the executor ran it.
    pub attempts: u32,
    /// The last `quality_gates` answer, when the task named criteria.
    pub quality: Option<Value>,
    /// The authenticated subject, when the task carried a token.
    pub subject: Option<String>,
    /// Every step, in the order run.
    pub steps: Vec<StepTrace>,
    /// From submission to the report, in microseconds.
    pub duration_us: u64,
}

impl TaskReport {
    /// The trace lines of `step` (several for `Execute` after retries).
    pub fn step(&self, step: PipelineStep) -> impl Iterator<Item = &StepTrace> {
        self.steps.iter().filter(move |s| s.step == step)
    }
}
