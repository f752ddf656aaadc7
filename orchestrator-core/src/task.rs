//! Tasks: units of work handed to agents.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A unit of work for an agent.
///
/// ```
/// use orchestrator_core::Task;
/// let task = Task::new("review the parser change")
///     .with_required_capabilities(["code_review"])
///     .with_data(serde_json::json!({"pr": 42}));
/// assert!(task.id.starts_with("task-"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Task {
    /// Its id; generated (`task-N`) by [`Task::new`].
    pub id: String,
    /// What is to be done, in words: what routing and analysis read.
    pub description: String,
    /// Capabilities an agent must have to take it.
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    /// Free-form input for the agent.
    #[serde(default)]
    pub data: Value,
}

impl Task {
    /// A task described by `description`, with a generated id.
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            id: crate::ids::new_task_id(),
            description: description.into(),
            required_capabilities: Vec::new(),
            data: Value::Null,
        }
    }

    /// Sets an explicit id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
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

    /// Sets the agent's input.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}
