//! The embedder's side of running work: an [`AgentExecutor`] does what an agent is asked to do.
//!
//! The orchestrator decides who does a task and keeps the books (load, status, events); the
//! executor does the task: calls an LLM, runs a job, posts to a queue. Without one, the
//! orchestrator uses [`DryRunExecutor`], which does no work and says so.

use crate::Agent;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

/// Everything an executor is given for one task.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ExecutionContext {
    /// The agent chosen, as it was when the task started.
    pub agent: Agent,
    /// The task's input.
    pub data: Value,
    /// What `extended_thinking` made of the task, when it was asked and answered.
    pub analysis: Option<Value>,
    /// The correlation id that ties the task's steps together.
    pub correlation_id: String,
    /// The task's id, for tasks submitted through the pipeline.
    pub task_id: Option<String>,
    /// Which run of the task this is: 1, then 2 and on for retries.
    pub attempt: u32,
}

/// An executor's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ExecutorError {
    /// What went wrong.
    pub message: String,
    /// Whether running the task again may succeed (a rate limit, a timeout, a lost connection):
    /// the pipeline retries such failures, with backoff, moving to another agent when one keeps
    /// failing. Other failures end the task at once.
    pub retryable: bool,
}

impl ExecutorError {
    /// A failure that running the task again would not cure (bad input, a refusal).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure worth retrying (a rate limit, a timeout, a lost connection).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Does the work of a task on behalf of an agent. Implemented by the embedding application.
#[async_trait]
pub trait AgentExecutor: Send + Sync + 'static {
    /// Runs one task and returns its output.
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError>;
}

/// The default executor: a dry run. It does no work and returns what would have been run:
/// `{"dry_run": true, "agent_id", "data", "analysis"}`. Replace it with
/// [`OrchestratorBuilder::executor`](crate::OrchestratorBuilder::executor).
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunExecutor;

#[async_trait]
impl AgentExecutor for DryRunExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        Ok(json!({
            "dry_run": true,
            "agent_id": context.agent.id,
            "data": context.data,
            "analysis": context.analysis,
        }))
    }
}
