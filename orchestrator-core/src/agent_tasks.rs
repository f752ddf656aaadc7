//! Agents at work: choosing an agent for a task (`semantic_routing`, checked, with the legacy
//! choice as fallback) and running a task on an agent through the `AgentExecutor`, with its
//! load counted, its status kept, the task feeds told and an `invoke_agent` span around it.

use crate::agents::AgentEntry;
use crate::dispatch;
use crate::error::{AgentError, OrchestratorError};
use crate::executor::{ExecutionContext, ExecutorError};
use crate::feeds;
use crate::guard::contained;
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::orchestrator::Inner;
use crate::{AgentId, Task};
use plugin_api::{AgentStatus, IntegrationRequest, Operation, OperationKind, OperationOutcome, OrchestratorEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub(crate) async fn select_agent(
    inner: &Inner,
    task: &Task,
    candidates: &[AgentId],
) -> Result<AgentId, OrchestratorError> {
    let data = routing_request(task, candidates);
    let response = dispatch::execute(inner, IntegrationRequest::new("semantic_routing", data.clone())).await?;
    if !response.success {
        return Err(AgentError::NoEligibleAgent {
            task: task.id.clone(),
            reason: response.error.unwrap_or_else(|| "the router gave no reason".into()),
        }
        .into());
    }
    let selected = response
        .data
        .get("selected_agent")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match check_selection(inner, task, candidates, selected) {
        Ok(id) => Ok(id),
        Err(reason) if response.served_by != dispatch::LEGACY && inner.legacy_mode => {
            tracing::warn!(plugin = %response.served_by, selected, %reason, "routing pick refused; legacy selection");
            inner.events.emit(OrchestratorEvent::CapabilityFallback {
                capability: "semantic_routing".into(),
                plugin: response.served_by.clone(),
                reason: format!("picked `{selected}`, {reason}"),
                correlation_id: response.correlation_id.clone(),
            });
            let fallback =
                legacy::handle("semantic_routing", &data, &inner.agents, &inner.round_robin).map_err(|reason| {
                    AgentError::NoEligibleAgent {
                        task: task.id.clone(),
                        reason,
                    }
                })?;
            let selected = fallback
                .get("selected_agent")
                .and_then(Value::as_str)
                .unwrap_or_default();
            check_selection(inner, task, candidates, selected).map_err(|reason| {
                AgentError::NoEligibleAgent {
                    task: task.id.clone(),
                    reason,
                }
                .into()
            })
        }
        Err(reason) => Err(AgentError::InvalidSelection {
            task: task.id.clone(),
            selected: selected.to_owned(),
            reason,
        }
        .into()),
    }
}

fn routing_request(task: &Task, candidates: &[AgentId]) -> Value {
    let mut data = json!({
        "task": {
            "id": task.id,
            "description": task.description,
            "required_capabilities": task.required_capabilities,
        }
    });
    if !candidates.is_empty() {
        data["available_agents"] = json!(candidates);
    }
    data
}

fn check_selection(inner: &Inner, task: &Task, candidates: &[AgentId], selected: &str) -> Result<AgentId, String> {
    if selected.is_empty() {
        return Err("the answer has no `selected_agent`".into());
    }
    if !candidates.is_empty() && !candidates.iter().any(|c| c.as_str() == selected) {
        return Err("it is not among the candidates".into());
    }
    let entry = inner.agents.get(selected).ok_or("it is not registered")?;
    if entry.status() == AgentStatus::Offline {
        return Err("it is offline".into());
    }
    if let Some(missing) = task.required_capabilities.iter().find(|c| !entry.has_capability(c)) {
        return Err(format!("it lacks the required capability `{missing}`"));
    }
    Ok(entry.id.clone())
}

/// Counts a task on an agent for as long as it lives, so the load is given back even when the
/// task's future is dropped half-way. Given back, the slot goes first to a task waiting in the
/// pipeline's queue that the agent fits.
pub(crate) struct RunningTask<'a> {
    inner: &'a Inner,
    entry: Arc<AgentEntry>,
}

impl<'a> RunningTask<'a> {
    /// Counts one more task on the agent, whatever its capacity (`execute_agent_task`: the
    /// caller chose the agent).
    fn start(inner: &'a Inner, entry: Arc<AgentEntry>) -> Self {
        entry.begin_task();
        Self::acquired(inner, entry)
    }

    /// Holds a slot already taken (`AgentEntry::try_begin_task`, or handed over by a finishing
    /// task): wakes a sleeping agent, and marks it busy when it is full.
    pub(crate) fn acquired(inner: &'a Inner, entry: Arc<AgentEntry>) -> Self {
        inner.transition(&entry, AgentStatus::Sleeping, AgentStatus::Active);
        if entry.load() >= entry.capacity {
            inner.transition(&entry, AgentStatus::Active, AgentStatus::Busy);
        }
        Self { inner, entry }
    }
}

impl Drop for RunningTask<'_> {
    fn drop(&mut self) {
        crate::pipeline::release_slot(self.inner, &self.entry);
    }
}

/// Reports a task's finish to its observers exactly once: with its outcome when it ends, or, if
/// the task's future is dropped first (the caller stopped waiting), as failed and cancelled, so
/// that observers counting tasks in flight never see a start without a finish.
struct TaskFinishFeed<'a> {
    inner: &'a Inner,
    feeds: Arc<crate::registry::Feeds>,
    op: Option<Operation<'static>>,
    started: u64,
}

impl TaskFinishFeed<'_> {
    fn report(&mut self, outcome: OperationOutcome, error: Option<String>) {
        let Some(mut op) = self.op.take() else { return };
        let now = self.inner.clock.monotonic_ns();
        op.error = error.map(Into::into);
        let op = op
            .with_outcome(outcome)
            .with_duration_ns(now.saturating_sub(self.started))
            .with_at_ns(now);
        feeds::observe(&self.feeds, &op);
    }
}

impl Drop for TaskFinishFeed<'_> {
    fn drop(&mut self) {
        self.report(
            OperationOutcome::Failed,
            Some("cancelled: the caller stopped waiting before the task finished".into()),
        );
    }
}

/// Runs a task on an agent in an `invoke_agent` span (OpenTelemetry's GenAI name for an agent
/// doing work), with `gen_ai.agent.id` and the correlation id.
pub(crate) async fn run_agent_task(
    inner: &Inner,
    agent: &AgentId,
    data: Value,
    correlation_id: Option<String>,
) -> Result<Value, OrchestratorError> {
    let correlation_id = correlation_id.unwrap_or_else(new_correlation_id);
    let span = tracing::info_span!(
        "invoke_agent",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.id = %agent,
        correlation_id = %correlation_id,
    );
    run_task(inner, agent, data, correlation_id).instrument(span).await
}

async fn run_task(
    inner: &Inner,
    agent: &AgentId,
    data: Value,
    correlation_id: String,
) -> Result<Value, OrchestratorError> {
    let entry = inner
        .agents
        .get(agent.as_str())
        .ok_or_else(|| AgentError::NotFound { id: agent.clone() })?;
    let status = entry.status();
    if status == AgentStatus::Offline {
        return Err(AgentError::Unavailable {
            id: agent.clone(),
            status,
        }
        .into());
    }
    let description = ["task_description", "description"]
        .iter()
        .find_map(|key| data.get(*key).and_then(Value::as_str));
    let analysis = match description {
        Some(text) => {
            let request = IntegrationRequest::new("extended_thinking", json!({ "task_description": text }))
                .with_agent(agent.as_str())
                .with_correlation_id(correlation_id.clone());
            let response = dispatch::execute(inner, request).await?;
            response.success.then_some(response.data)
        }
        None => None,
    };
    let run = TaskRun {
        data,
        analysis,
        correlation_id,
        task_id: None,
        attempt: 1,
        timeout: None,
    };
    match execute_on(inner, &entry, None, run).await {
        Ok(output) => Ok(output),
        Err(failure) => Err(failure.into_error(agent)),
    }
}

/// One run of a task on an agent, as [`execute_on`] takes it.
pub(crate) struct TaskRun {
    pub(crate) data: Value,
    pub(crate) analysis: Option<Value>,
    pub(crate) correlation_id: String,
    pub(crate) task_id: Option<String>,
    pub(crate) attempt: u32,
    /// The bound on the executor (none: it may take as long as it takes).
    pub(crate) timeout: Option<Duration>,
}

/// Why a run did not produce an output.
#[derive(Debug)]
pub(crate) struct RunFailure {
    pub(crate) message: String,
    pub(crate) retryable: bool,
    kind: RunFailureKind,
}

#[derive(Debug)]
enum RunFailureKind {
    Vetoed { plugin: String },
    Executor,
}

impl RunFailure {
    pub(crate) fn into_error(self, agent: &AgentId) -> OrchestratorError {
        match self.kind {
            RunFailureKind::Vetoed { plugin } => AgentError::TaskVetoed {
                id: agent.clone(),
                plugin,
                reason: self.message,
            }
            .into(),
            RunFailureKind::Executor => AgentError::ExecutionFailed {
                id: agent.clone(),
                message: self.message,
            }
            .into(),
        }
    }
}

/// Runs one task on `entry` through the executor: the `task_start` interceptors first (a veto
/// ends it before it counts on the agent, unless `slot` already holds a slot, which is then
/// given back), the load counted while it runs, the task feeds told of its start and finish.
/// A panic of the executor is contained; a run past `timeout` is a retryable failure.
pub(crate) async fn execute_on(
    inner: &Inner,
    entry: &Arc<AgentEntry>,
    slot: Option<RunningTask<'_>>,
    run: TaskRun,
) -> Result<Value, RunFailure> {
    let TaskRun {
        data,
        analysis,
        correlation_id,
        task_id,
        attempt,
        timeout,
    } = run;
    let agent = &entry.id;
    let feeds = {
        let snapshot = inner.registry.snapshot();
        let fed = snapshot.feeds.intercepts(OperationKind::TaskStart)
            || snapshot.feeds.observes(OperationKind::TaskStart)
            || snapshot.feeds.observes(OperationKind::TaskFinish);
        fed.then(|| Arc::clone(&snapshot.feeds))
    };
    let task_kind = data.get("kind").and_then(Value::as_str).map(str::to_owned);
    let started = feeds.as_ref().map_or(0, |_| inner.clock.monotonic_ns());
    let task_operation = |kind: OperationKind| {
        let mut op = Operation::new(kind, correlation_id.clone()).with_agent(agent.as_str().to_owned());
        op.task_kind = task_kind.clone().map(Into::into);
        op
    };
    if let Some(feeds) = feeds.as_ref().filter(|f| f.intercepts(OperationKind::TaskStart)) {
        let asked = task_operation(OperationKind::TaskStart)
            .with_details(&data)
            .with_at_ns(started);
        if let Err(veto) = feeds::intercept(feeds, inner.call_timeout, &asked).await {
            return Err(RunFailure {
                message: veto.reason,
                retryable: false,
                kind: RunFailureKind::Vetoed { plugin: veto.plugin },
            });
        }
    }

    let running = match slot {
        Some(slot) => slot,
        None => RunningTask::start(inner, Arc::clone(entry)),
    };
    if let Some(feeds) = feeds.as_ref().filter(|f| f.observes(OperationKind::TaskStart)) {
        feeds::observe(feeds, &task_operation(OperationKind::TaskStart).with_at_ns(started));
    }
    let mut finish = feeds
        .as_ref()
        .filter(|f| f.observes(OperationKind::TaskFinish))
        .map(|feeds| TaskFinishFeed {
            inner,
            feeds: Arc::clone(feeds),
            op: Some(task_operation(OperationKind::TaskFinish)),
            started,
        });
    let context = ExecutionContext {
        agent: running.entry.snapshot(),
        data,
        analysis,
        correlation_id,
        task_id,
        attempt,
    };
    let executor = Arc::clone(&inner.executor);
    let outcome = match timeout {
        None => contained(|| executor.execute(context)).await,
        Some(limit) => match tokio::time::timeout(limit, contained(|| executor.execute(context))).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Ok(Err(ExecutorError::retryable(format!(
                "the executor did not finish within {} ms",
                limit.as_millis()
            )))),
        },
    };
    drop(running);
    if let Some(finish) = finish.as_mut() {
        match &outcome {
            Ok(Ok(_)) => finish.report(OperationOutcome::Succeeded, None),
            Ok(Err(error)) => finish.report(OperationOutcome::Failed, Some(error.message.clone())),
            Err(failure) => finish.report(OperationOutcome::Panicked, Some(failure.to_string())),
        }
    }
    match outcome {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(RunFailure {
            message: error.message,
            retryable: error.retryable,
            kind: RunFailureKind::Executor,
        }),
        Err(failure) => Err(RunFailure {
            message: format!("the executor {failure}"),
            retryable: false,
            kind: RunFailureKind::Executor,
        }),
    }
}
