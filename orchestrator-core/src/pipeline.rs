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

use crate::agent_tasks::{RunningTask, TaskRun, execute_on};
use crate::agents::AgentEntry;
use crate::dispatch;
use crate::error::{OrchestratorError, TaskError};
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::orchestrator::Inner;
use crate::task::{PipelineStep, StepOutcome, StepTrace, Task, TaskReport, TaskStatus};
use crate::{AgentId, AgentStatus};
use dashmap::DashMap;
use plugin_api::{IntegrationRequest, OrchestratorEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Instrument;

/// Which submitted tasks get an `audit_logging` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditPolicy {
    /// Tasks submitted with a token (there is a subject to hold to account), and every task
    /// refused for its token. The default: an audit append is `fsync`ed, which would otherwise
    /// bound the whole pipeline's throughput by the disk's.
    #[default]
    Authenticated,
    /// Every task.
    Always,
    /// None.
    Never,
}

/// How the pipeline behind [`Orchestrator::submit_task`](crate::Orchestrator::submit_task)
/// waits, retries and balances. Set with
/// [`OrchestratorBuilder::pipeline`](crate::OrchestratorBuilder::pipeline), or in the
/// `[orchestrator.pipeline]` table of the configuration file.
///
/// ```
/// use orchestrator_core::PipelineOptions;
/// use std::time::Duration;
/// let options = PipelineOptions::default()
///     .max_attempts(5)
///     .retry_backoff(Duration::from_millis(10))
///     .task_timeout(Duration::from_secs(120));
/// assert_eq!(options.max_queued, 10_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// Tasks that may wait for a free agent at once (default 10,000); past it, a task is
    /// refused with [`TaskError::QueueFull`].
    pub max_queued: usize,
    /// Executor runs that may fail (retryably) before a task is given up (default 3, at least
    /// 1). Re-runs after a failed quality gate do not count here (see
    /// [`max_quality_retries`](Self::max_quality_retries)).
    pub max_attempts: u32,
    /// The wait before the first retry, doubled for each further one, at most a second
    /// (default 50 ms).
    pub retry_backoff: Duration,
    /// Attempts on one agent before a retry moves to another (default 2).
    pub same_agent_attempts: u32,
    /// Re-runs after a failed quality gate (default 2).
    pub max_quality_retries: u32,
    /// The bound on one executor run (default 30 s); a run that outlasts it is a retryable
    /// failure.
    pub task_timeout: Duration,
    /// How many of the router's best picks the load balancer chooses among (default 3; 1
    /// leaves the choice to the router).
    pub balance_among: usize,
    /// Only picks whose routing score is within this much of the best one's are handed to the
    /// balancer (default 0.1, on scores from 0 to 1): the balancer spreads load among agents
    /// the router finds about as good, never from a specialist to an agent that merely has room.
    pub balance_within: f64,
    /// Which tasks are audited.
    pub audit: AuditPolicy,
    /// Whether each finished task is announced on the event bus as a custom event
    /// `task_completed` (source `orchestrator`; `{"task_id", "status", "agent_id", "attempts",
    /// "correlation_id", "duration_ms"}`), to every plugin's `on_event` and every
    /// [`subscribe_events`](crate::Orchestrator::subscribe_events) receiver. Off by default:
    /// delivering one event to nine plugins costs more than the rest of the pipeline's
    /// bookkeeping (about 25 us a task, measured by `cargo bench --bench pipeline`), and plugins
    /// that follow tasks have the `task_finish` operation feed, which costs nothing for those
    /// that do not ask for it.
    pub task_events: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            max_queued: 10_000,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            same_agent_attempts: 2,
            max_quality_retries: 2,
            task_timeout: Duration::from_secs(30),
            balance_among: 3,
            balance_within: 0.1,
            audit: AuditPolicy::Authenticated,
            task_events: false,
        }
    }
}

impl PipelineOptions {
    /// Sets [`max_queued`](Self::max_queued).
    #[must_use]
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }
    /// Sets [`max_attempts`](Self::max_attempts) (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets [`retry_backoff`](Self::retry_backoff).
    #[must_use]
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }
    /// Sets [`same_agent_attempts`](Self::same_agent_attempts) (at least 1).
    #[must_use]
    pub fn same_agent_attempts(mut self, n: u32) -> Self {
        self.same_agent_attempts = n.max(1);
        self
    }
    /// Sets [`max_quality_retries`](Self::max_quality_retries).
    #[must_use]
    pub fn max_quality_retries(mut self, n: u32) -> Self {
        self.max_quality_retries = n;
        self
    }
    /// Sets [`task_timeout`](Self::task_timeout).
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = timeout;
        self
    }
    /// Sets [`balance_among`](Self::balance_among) (at least 1).
    #[must_use]
    pub fn balance_among(mut self, n: usize) -> Self {
        self.balance_among = n.max(1);
        self
    }
    /// Sets [`balance_within`](Self::balance_within) (negative or NaN reads as 0).
    #[must_use]
    pub fn balance_within(mut self, margin: f64) -> Self {
        self.balance_within = if margin.is_nan() { 0.0 } else { margin.max(0.0) };
        self
    }
    /// Sets [`task_events`](Self::task_events).
    #[must_use]
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }
    /// Sets [`audit`](Self::audit).
    #[must_use]
    pub fn audit(mut self, policy: AuditPolicy) -> Self {
        self.audit = policy;
        self
    }
}

/// The `[orchestrator.pipeline]` table of a configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineTable {
    max_queued: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff_ms: Option<u64>,
    same_agent_attempts: Option<u32>,
    max_quality_retries: Option<u32>,
    task_timeout_ms: Option<u64>,
    balance_among: Option<usize>,
    balance_within: Option<f64>,
    audit: Option<AuditPolicy>,
    task_events: Option<bool>,
}

impl PipelineTable {
    pub(crate) fn apply(self, mut options: PipelineOptions) -> PipelineOptions {
        if let Some(n) = self.max_queued {
            options = options.max_queued(n);
        }
        if let Some(n) = self.max_attempts {
            options = options.max_attempts(n);
        }
        if let Some(ms) = self.retry_backoff_ms {
            options = options.retry_backoff(Duration::from_millis(ms));
        }
        if let Some(n) = self.same_agent_attempts {
            options = options.same_agent_attempts(n);
        }
        if let Some(n) = self.max_quality_retries {
            options = options.max_quality_retries(n);
        }
        if let Some(ms) = self.task_timeout_ms {
            options = options.task_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = self.balance_among {
            options = options.balance_among(n);
        }
        if let Some(margin) = self.balance_within {
            options = options.balance_within(margin);
        }
        if let Some(policy) = self.audit {
            options = options.audit(policy);
        }
        if let Some(on) = self.task_events {
            options = options.task_events(on);
        }
        options
    }
}

// ----- waiting for a free agent -------------------------------------------------------------

/// A task waiting for a slot: what it needs, and where to send the slot.
struct Waiter {
    required: Vec<String>,
    avoid: Vec<AgentId>,
    slot: oneshot::Sender<Arc<AgentEntry>>,
}

/// Tasks waiting for a free agent, highest priority first, then first come.
#[derive(Default)]
pub(crate) struct WaitQueue {
    waiters: Mutex<BTreeMap<(Reverse<i32>, u64), Waiter>>,
    len: AtomicUsize,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WaitQueue {
    /// How many tasks wait.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Offers a slot already taken on `entry` to the first waiter it fits. `Ok` when a waiter
    /// took it; `Err` gives it back to the caller.
    pub(crate) fn hand_over(&self, entry: Arc<AgentEntry>) -> Result<(), Arc<AgentEntry>> {
        if self.len() == 0 {
            return Err(entry);
        }
        let mut waiters = lock(&self.waiters);
        let mut entry = entry;
        loop {
            let key = waiters.iter().find_map(|(key, w)| {
                let fits = w.required.iter().all(|c| entry.has_capability(c)) && !w.avoid.contains(&entry.id);
                fits.then_some(*key)
            });
            let Some(key) = key else { return Err(entry) };
            let waiter = waiters.remove(&key).expect("the key was just found");
            self.len.fetch_sub(1, Ordering::AcqRel);
            match waiter.slot.send(entry) {
                Ok(()) => return Ok(()),
                // That waiter gave up meanwhile: try the next.
                Err(back) => entry = back,
            }
        }
    }
}

/// A place in the queue; leaving it (dropped) takes the waiter out if it is still there.
struct Place<'a> {
    queue: &'a WaitQueue,
    key: (Reverse<i32>, u64),
}

impl Place<'_> {
    /// Takes the waiter out; `false` when it was no longer there (a slot was sent to it).
    fn leave(&self) -> bool {
        let removed = lock(&self.queue.waiters).remove(&self.key).is_some();
        if removed {
            self.queue.len.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Gives a slot back: to the first waiting task the agent fits, else to the agent (which turns
/// `active` again if it was `busy`). A slot on an agent that went offline or was deregistered
/// is never handed on.
pub(crate) fn release_slot(inner: &Inner, entry: &Arc<AgentEntry>) {
    if inner.waiting.len() > 0
        && entry.status() != AgentStatus::Offline
        && is_registered(inner, entry)
        && inner.waiting.hand_over(Arc::clone(entry)).is_ok()
    {
        return;
    }
    if entry.end_task() < entry.capacity {
        inner.transition(entry, AgentStatus::Busy, AgentStatus::Active);
    }
}

fn is_registered(inner: &Inner, entry: &Arc<AgentEntry>) -> bool {
    inner
        .agents
        .get(entry.id.as_str())
        .is_some_and(|e| Arc::ptr_eq(&e, entry))
}

/// Capacity appeared on `entry` (it registered, or came back online): hands its free slots to
/// waiting tasks it fits.
pub(crate) fn serve_waiters(inner: &Inner, entry: &Arc<AgentEntry>) {
    while inner.waiting.len() > 0 && entry.status() != AgentStatus::Offline && entry.try_begin_task() {
        if inner.waiting.hand_over(Arc::clone(entry)).is_err() {
            entry.end_task();
            return;
        }
    }
}

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

/// The agents that could take the task (registered, not offline, every required capability,
/// none of `avoid` unless nothing else is left), split by whether they have a free slot.
fn eligible(inner: &Inner, task: &Task, avoid: &[AgentId]) -> (Vec<Arc<AgentEntry>>, usize) {
    let mut with_room = Vec::new();
    let mut eligible = 0;
    let mut avoided = Vec::new();
    inner.agents.for_each_arc(|entry| {
        if entry.status() == AgentStatus::Offline || !task.required_capabilities.iter().all(|c| entry.has_capability(c))
        {
            return;
        }
        if avoid.contains(&entry.id) {
            avoided.push(Arc::clone(entry));
            return;
        }
        eligible += 1;
        if entry.load() < entry.capacity {
            with_room.push(Arc::clone(entry));
        }
    });
    if eligible == 0 && !avoided.is_empty() {
        // Every agent that fits failed before: better one of them than none.
        eligible = avoided.len();
        with_room = avoided.into_iter().filter(|e| e.load() < e.capacity).collect();
    }
    with_room.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    (with_room, eligible)
}

/// Routes, balances and takes a slot; waits in the queue when every eligible agent is full.
async fn choose_agent(run: &mut Run<'_>, avoid: &[AgentId]) -> Result<Arc<AgentEntry>, TaskError> {
    let inner = run.inner;
    let task = run.task;
    for _ in 0..8 {
        let (mut with_room, eligible_count) = eligible(inner, task, avoid);
        if eligible_count == 0 {
            return Err(no_eligible_agent(inner, task));
        }
        if with_room.is_empty() {
            return wait_for_slot(run, avoid).await;
        }
        let picked = pick(run, &with_room).await;
        // The pick, else the others in order: someone may have taken its last slot meanwhile.
        if let Some(i) = with_room.iter().position(|e| e.id == picked) {
            with_room.swap(0, i);
        }
        if let Some(entry) = with_room.into_iter().find(|e| e.try_begin_task()) {
            return Ok(entry);
        }
    }
    wait_for_slot(run, avoid).await
}

fn no_eligible_agent(inner: &Inner, task: &Task) -> TaskError {
    let mut capable = 0;
    inner
        .agents
        .for_each_arc(|e| capable += usize::from(task.required_capabilities.iter().all(|c| e.has_capability(c))));
    let reason = if inner.agents.len() == 0 {
        "no agent is registered; register one first".to_owned()
    } else if capable == 0 {
        format!(
            "no registered agent has every required capability ({}); register one that does",
            task.required_capabilities.join(", ")
        )
    } else {
        format!("the {capable} agent(s) that have the required capabilities are all offline")
    };
    TaskError::NoEligibleAgent {
        task: task.id.clone(),
        reason,
    }
}

/// Asks the router to rank the candidates and the balancer to choose among the best; the
/// chosen agent's id (the first candidate when neither can answer).
async fn pick(run: &mut Run<'_>, with_room: &[Arc<AgentEntry>]) -> AgentId {
    let task = run.task;
    let candidates: Vec<&str> = with_room.iter().map(|e| e.id.as_str()).collect();
    let fallback = with_room[0].id.clone();
    if candidates.len() == 1 {
        run.skipped(PipelineStep::Route, "one candidate has room");
        run.skipped(PipelineStep::Balance, "one candidate has room");
        return fallback;
    }
    let routed = run
        .step(
            PipelineStep::Route,
            "semantic_routing",
            json!({
                "task": {"id": task.id, "description": task.description, "required_capabilities": task.required_capabilities},
                "available_agents": candidates,
                // Only the picks the balancer may choose among are read.
                "ranking_len": run.inner.pipeline.balance_among.clamp(1, 10),
            }),
        )
        .await;
    let Some(routed) = routed else {
        run.skipped(PipelineStep::Balance, "no ranking to balance");
        return fallback;
    };
    let in_room = |id: &str| with_room.iter().find(|e| e.id.as_str() == id).map(|e| e.id.clone());
    let routed_pick = routed["selected_agent"].as_str().and_then(in_room);
    let ranking: Vec<(&str, f64)> = routed["ranking"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|e| Some((e["agent_id"].as_str()?, e["score"].as_f64().unwrap_or(0.0))))
                .filter(|(id, _)| in_room(id).is_some())
                .collect()
        })
        .unwrap_or_default();
    let best = ranking
        .iter()
        .map(|(_, score)| *score)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = run.inner.pipeline.balance_within;
    let mut top: Vec<&str> = ranking
        .iter()
        .filter(|(_, score)| *score >= best - margin)
        .map(|(id, _)| *id)
        .collect();
    top.truncate(run.inner.pipeline.balance_among);
    if top.len() < 2 {
        run.skipped(PipelineStep::Balance, "one pick stands out in the ranking");
        return routed_pick.unwrap_or(fallback);
    }
    let balanced = if run.served("adaptive_balancing") {
        run.step(
            PipelineStep::Balance,
            "adaptive_balancing",
            json!({"op": "pick", "available_agents": top}),
        )
        .await
    } else {
        run.step(
            PipelineStep::Balance,
            "real_time_balancing",
            json!({"op": "pick", "available_agents": top}),
        )
        .await
    };
    balanced
        .and_then(|b| b["selected_agent"].as_str().and_then(in_room))
        .or(routed_pick)
        .unwrap_or(fallback)
}

/// Waits in the queue for a slot on an eligible agent.
async fn wait_for_slot(run: &mut Run<'_>, avoid: &[AgentId]) -> Result<Arc<AgentEntry>, TaskError> {
    let inner = run.inner;
    let task = run.task;
    let since = Instant::now();
    let queue = &inner.waiting;
    let (tx, mut rx) = oneshot::channel();
    let place = {
        let mut waiters = lock(&queue.waiters);
        if waiters.len() >= inner.pipeline.max_queued {
            return Err(TaskError::QueueFull {
                task: task.id.clone(),
                queued: waiters.len(),
            });
        }
        let key = (Reverse(task.priority), queue.next.fetch_add(1, Ordering::Relaxed));
        waiters.insert(
            key,
            Waiter {
                required: task.required_capabilities.clone(),
                avoid: avoid.to_vec(),
                slot: tx,
            },
        );
        queue.len.fetch_add(1, Ordering::AcqRel);
        Place { queue, key }
    };
    // A slot may have been freed between the look and the queueing: look again.
    let (with_room, eligible_count) = eligible(inner, task, avoid);
    if eligible_count == 0 {
        return Err(no_eligible_agent(inner, task));
    }
    if let Some(entry) = with_room.into_iter().find(|e| e.try_begin_task()) {
        if place.leave() {
            run.trace(
                PipelineStep::Queue,
                "host",
                since,
                StepOutcome::Done,
                Some("a slot freed as the task queued".into()),
            );
            return Ok(entry);
        }
        // A slot was sent to us meanwhile: keep that one, give this one back.
        release_slot(inner, &entry);
    }
    let received = match run.remaining() {
        Some(left) => match tokio::time::timeout(left, &mut rx).await {
            Ok(received) => received.ok(),
            Err(_elapsed) => {
                if place.leave() {
                    run.trace(
                        PipelineStep::Queue,
                        "host",
                        since,
                        StepOutcome::Failed,
                        Some("deadline".into()),
                    );
                    return Err(run.deadline_passed("waiting for a free agent"));
                }
                rx.try_recv().ok()
            }
        },
        None => (&mut rx).await.ok(),
    };
    drop(place);
    let Some(entry) = received else {
        // The queue dropped us without a slot: cannot happen while we hold our place.
        return Err(run.deadline_passed("waiting for a free agent"));
    };
    run.trace(
        PipelineStep::Queue,
        "host",
        since,
        StepOutcome::Done,
        Some(format!("waited for a slot on `{}`", entry.id)),
    );
    run.skipped(PipelineStep::Route, "the first agent freed took the task");
    run.skipped(PipelineStep::Balance, "the first agent freed took the task");
    Ok(entry)
}

/// Records the assignment: `pending -> assigned -> running` (refusing a task that is already
/// elsewhere), the task's mapping and its workflow. `attempt` 0 is the first assignment.
async fn assign(run: &mut Run<'_>, entry: &Arc<AgentEntry>, attempt: u32) -> Result<(), TaskError> {
    let since = Instant::now();
    let task = run.task;
    let mut plugins: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    if run.served("atomic_updates") {
        let request = json!({"op": "transition", "task_id": task.id, "from": "pending", "to": "assigned"});
        match run.call("atomic_updates", request).await {
            Called::Answer(r) if r.success && r.data["applied"] == json!(true) => plugins.push(r.served_by),
            Called::Answer(r) if r.success && attempt == 0 => {
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
            Called::Answer(r) => problems.push(format!(
                "atomic_updates: {}",
                r.error
                    .unwrap_or_else(|| format!("not applied, the task is {}", r.data["value"]))
            )),
            Called::Failed(e) => problems.push(format!("atomic_updates: {e}")),
            Called::Absent => {}
        }
    }
    if run.served("atomic_updates") {
        let request = json!({"op": "transition", "task_id": task.id, "from": "assigned", "to": "running"});
        match run.call("atomic_updates", request).await {
            Called::Answer(r) if r.success && r.data["applied"] == json!(true) => {}
            Called::Answer(r) => problems.push(format!(
                "atomic_updates: {}",
                r.error
                    .unwrap_or_else(|| format!("not applied, the task is {}", r.data["value"]))
            )),
            Called::Failed(e) => problems.push(format!("atomic_updates: {e}")),
            Called::Absent => {}
        }
    }
    if run.served("task_mapping") {
        let request = json!({"op": "assign", "task_id": task.id, "agent_id": entry.id, "reassign": true});
        match run.call("task_mapping", request).await {
            Called::Answer(r) if r.success => plugins.push(r.served_by),
            Called::Answer(r) => problems.push(format!("task_mapping: {}", r.error.unwrap_or_default())),
            Called::Failed(e) => problems.push(format!("task_mapping: {e}")),
            Called::Absent => {}
        }
    }
    plugins.push("host".into());
    let outcome = if problems.is_empty() {
        StepOutcome::Done
    } else {
        StepOutcome::Failed
    };
    let detail = if problems.is_empty() {
        Some(format!("to `{}`", entry.id))
    } else {
        Some(problems.join("; "))
    };
    plugins.dedup();
    run.trace(PipelineStep::Assign, &plugins.join(", "), since, outcome, detail);
    if task.workflow_id.is_some() {
        track(run, "assigned").await;
        track(run, "running").await;
    }
    Ok(())
}

/// After an attempt: `running -> done | failed` and the mapping's completion are left to
/// `finish`; here the balancer and the router learn how it went.
async fn record_attempt(run: &mut Run<'_>, entry: &Arc<AgentEntry>, success: bool, elapsed_ms: f64) {
    let since = Instant::now();
    let task = run.task;
    let mut plugins: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let calls = [
        (
            "adaptive_balancing",
            json!({"op": "observe", "agent_id": entry.id, "latency_ms": elapsed_ms, "success": success}),
        ),
        (
            "performance_learning",
            json!({
                "agent_id": entry.id,
                "task": {"description": task.description, "required_capabilities": task.required_capabilities},
                "success": success,
                "duration_ms": elapsed_ms,
            }),
        ),
    ];
    for (capability, request) in calls {
        match run.call(capability, request).await {
            Called::Answer(r) if r.success => plugins.push(r.served_by),
            Called::Answer(r) => problems.push(format!("{capability}: {}", r.error.unwrap_or_default())),
            Called::Failed(e) => problems.push(format!("{capability}: {e}")),
            Called::Absent => {}
        }
    }
    if plugins.is_empty() && problems.is_empty() {
        run.skipped(
            PipelineStep::Record,
            "neither `adaptive_balancing` nor `performance_learning` is served",
        );
        return;
    }
    plugins.dedup();
    let outcome = if problems.is_empty() {
        StepOutcome::Done
    } else {
        StepOutcome::Failed
    };
    run.trace(
        PipelineStep::Record,
        &plugins.join(", "),
        since,
        outcome,
        (!problems.is_empty()).then(|| problems.join("; ")),
    );
}

/// Before a retry: the task is handed back (`running -> pending`), and its workflow entry
/// with it. A failure here shows when the task is assigned again.
async fn requeue(run: &mut Run<'_>) {
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

async fn track(run: &mut Run<'_>, state: &str) {
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
async fn finish(run: &mut Run<'_>, outcome: &Outcome, status: TaskStatus) {
    let succeeded = status == TaskStatus::Succeeded;
    let task = run.task;
    let state = if succeeded { "done" } else { "failed" };
    if outcome.agent.is_some() {
        let since = Instant::now();
        let mut plugins: Vec<String> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let duration_ms = run.started.elapsed().as_millis() as u64;
        let calls = [
            (
                "atomic_updates",
                json!({"op": "transition", "task_id": task.id, "from": "running", "to": state}),
            ),
            (
                "task_mapping",
                json!({"op": "complete", "task_id": task.id, "success": succeeded, "duration_ms": duration_ms}),
            ),
        ];
        for (capability, request) in calls {
            match run.call(capability, request).await {
                Called::Answer(r) if r.success => plugins.push(r.served_by),
                Called::Answer(r) => problems.push(format!("{capability}: {}", r.error.unwrap_or_default())),
                Called::Failed(e) => problems.push(format!("{capability}: {e}")),
                Called::Absent => {}
            }
        }
        if !(plugins.is_empty() && problems.is_empty()) {
            plugins.dedup();
            let outcome = if problems.is_empty() {
                StepOutcome::Done
            } else {
                StepOutcome::Failed
            };
            run.trace(
                PipelineStep::Record,
                &plugins.join(", "),
                since,
                outcome,
                Some(if problems.is_empty() {
                    format!("the task is {state}")
                } else {
                    problems.join("; ")
                }),
            );
        }
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
