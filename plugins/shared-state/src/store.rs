//! The [`StateStore`] trait: what every backend offers, and the rules that hold for all of them.
//!
//! The plugin speaks to one trait with two implementations, [`MemoryStore`](crate::MemoryStore)
//! (one process, the default) and [`RedisStore`](crate::RedisStore) (every process that points at
//! the same Redis and namespace). Each operation is atomic on its own: a compare-and-set, a state
//! transition, a counter change, a least-loaded pick with its acquire, a workflow update with its
//! completion check, an append to a shared log with its sequence number and trimming, a read of
//! a log with its bounds. Nothing here is read-then-write across two calls; a caller that needs more
//! than one step builds it from compare-and-set and retries on a conflict.
//!
//! The rules that both backends share (key and value limits, the task state machine, workflow
//! progress) live here, so the backends only do storage.

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// The largest value accepted by default, in bytes of its JSON text (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// How many entries a shared log keeps by default (the newest ones).
pub const DEFAULT_MAX_LOG_ENTRIES: usize = 100_000;

/// The most entries one read of a shared log returns.
pub const MAX_LOG_READ: usize = 1_000;

/// A value with the version it was written at. Version 0 and a `null` value mean "absent".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versioned {
    /// The value (`null` when the key is absent).
    pub value: Value,
    /// How many times the key was written (0 when absent).
    pub version: u64,
}

/// The result of a compare-and-set or a task transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CasOutcome {
    /// Whether the write happened.
    pub applied: bool,
    /// The version now stored (the new one when applied, the current one on a conflict).
    pub version: u64,
    /// The value now stored (the new one when applied, the current one on a conflict).
    pub value: Value,
}

/// A task's place in its life: pending -> assigned -> running -> done | failed.
///
/// Besides the forward path, a task may go back to `pending` (assigned or running work handed
/// back, for a retry on another agent) and a failed task may be retried (`failed -> pending`).
/// `done` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for an agent.
    Pending,
    /// Given to an agent, not started.
    Assigned,
    /// Being worked on.
    Running,
    /// Finished well (final).
    Done,
    /// Finished badly; may be retried.
    Failed,
}

impl TaskState {
    /// Every state, in life order.
    pub const ALL: [TaskState; 5] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Done,
        TaskState::Failed,
    ];

    /// The lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }

    /// Whether a task may go from `self` to `to`.
    ///
    /// ```
    /// use plugin_shared_state::TaskState::*;
    /// assert!(Pending.can_become(Assigned));
    /// assert!(!Pending.can_become(Done));
    /// assert!(!Done.can_become(Pending));
    /// ```
    pub const fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Pending, Assigned)
                | (Assigned, Running)
                | (Assigned, Pending)
                | (Running, Done)
                | (Running, Failed)
                | (Running, Pending)
                | (Failed, Pending)
        )
    }

    /// The states a task may reach `to` from.
    pub fn predecessors(to: TaskState) -> impl Iterator<Item = TaskState> {
        TaskState::ALL.into_iter().filter(move |s| s.can_become(to))
    }

    /// Whether the state ends the task's work (`done` or `failed`).
    pub const fn is_finished(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Failed)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!(
                    "unknown task state `{s}`: expected one of pending, assigned, running, done, failed"
                ))
            })
    }
}

/// Where a workflow stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WorkflowProgress {
    /// The workflow's id.
    pub workflow_id: String,
    /// How many tasks it has.
    pub total: u64,
    /// Tasks done.
    pub done: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks running.
    pub running: u64,
    /// Tasks assigned, not started.
    pub assigned: u64,
    /// Tasks waiting for an agent.
    pub pending: u64,
    /// Whether every task is done or failed.
    pub complete: bool,
}

impl WorkflowProgress {
    /// Counts `states` (one per task).
    pub fn from_states<'a>(workflow_id: &str, states: impl IntoIterator<Item = &'a str>) -> Result<Self, StoreError> {
        let mut progress = WorkflowProgress {
            workflow_id: workflow_id.to_owned(),
            ..Default::default()
        };
        for state in states {
            progress.total += 1;
            match state.parse::<TaskState>()? {
                TaskState::Pending => progress.pending += 1,
                TaskState::Assigned => progress.assigned += 1,
                TaskState::Running => progress.running += 1,
                TaskState::Done => progress.done += 1,
                TaskState::Failed => progress.failed += 1,
            }
        }
        progress.complete = progress.total > 0 && progress.done + progress.failed == progress.total;
        Ok(progress)
    }
}

/// The result of a workflow task update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowUpdate {
    /// The task's state before the update.
    pub previous: TaskState,
    /// The workflow's progress after it.
    pub progress: WorkflowProgress,
    /// Whether this update is the one that completed the workflow (true for exactly one update,
    /// whichever process made it).
    pub completed_now: bool,
}

/// One entry of a shared log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Its place in the log: 1 for the log's first entry, one more for each append after it.
    pub seq: u64,
    /// What was appended.
    pub entry: Value,
}

/// Entries of a shared log, with the log's bounds, all read in one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogPage {
    /// The entries asked for, in `seq` order (consecutive numbers).
    pub entries: Vec<LogEntry>,
    /// The oldest `seq` the log still keeps (0 when it holds nothing).
    pub first_seq: u64,
    /// The newest `seq` appended (0 when nothing ever was).
    pub last_seq: u64,
}

impl LogPage {
    /// How many entries after `after` were dropped (the log keeps only its newest entries)
    /// before this read could return them: 0 when the page follows on from `after`.
    ///
    /// ```
    /// use plugin_shared_state::LogPage;
    /// let page = LogPage { entries: Vec::new(), first_seq: 8, last_seq: 10 };
    /// assert_eq!(page.missed(2), 5); // seqs 3 to 7 are gone
    /// assert_eq!(page.missed(7), 0);
    /// ```
    pub fn missed(&self, after: u64) -> u64 {
        self.first_seq.saturating_sub(after.saturating_add(1))
    }
}

/// What went wrong in a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The request was malformed: a bad key, a value too large, an unknown state.
    #[error("{0}")]
    InvalidInput(String),
    /// A task transition the state machine does not allow.
    #[error(
        "illegal task transition from `{from}` to `{to}` (allowed: pending -> assigned -> running -> done | failed; assigned or running -> pending; failed -> pending)"
    )]
    IllegalTransition {
        /// The state asked to leave.
        from: TaskState,
        /// The state asked to reach.
        to: TaskState,
    },
    /// The workflow or the task in it does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The backend cannot be reached; calls succeed again once it is back.
    #[error("shared-state backend {url} is unavailable: {message}; check that the server is running and reachable")]
    Unavailable {
        /// Where the backend was expected.
        url: String,
        /// What the client saw.
        message: String,
    },
    /// The backend answered something this store did not expect.
    #[error("shared-state backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the error is the caller's fault (bad input, an illegal transition, an unknown
    /// workflow), as opposed to a backend failure.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidInput(_) | StoreError::IllegalTransition { .. } | StoreError::NotFound(_)
        )
    }
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes, no control characters.
pub(crate) fn check_key(what: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(StoreError::InvalidInput(format!(
            "`{what}` must be 1 to {MAX_KEY_BYTES} bytes without control characters (got {} bytes)",
            key.len()
        )));
    }
    Ok(())
}

/// A shared state backend. Every method is one atomic step, whatever other callers (tasks,
/// threads, processes) do at the same time.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Where the state lives, for messages and the health check (`"memory"`, or the Redis URL
    /// and namespace).
    fn describe(&self) -> String;

    /// The value under `key` and its version (`null` and 0 when absent).
    async fn get(&self, key: &str) -> Result<Versioned, StoreError>;

    /// Writes `value` under `key` if its version is still `expected_version` (0: absent).
    async fn compare_and_set(&self, key: &str, expected_version: u64, value: &Value) -> Result<CasOutcome, StoreError>;

    /// Deletes `key` if its version is still `expected_version`. The key is then absent and its
    /// versions start again from 0, so an old `expected_version` can match a re-created key:
    /// delete only keys that are used once (as session ids are).
    async fn delete(&self, key: &str, expected_version: u64) -> Result<CasOutcome, StoreError>;

    /// Moves a task from `from` to `to` if it is in `from` now (an unknown task is `pending`).
    /// The caller has checked that the transition is legal.
    async fn transition(&self, task_id: &str, from: TaskState, to: TaskState) -> Result<CasOutcome, StoreError>;

    /// One more unit of load on `agent`; returns the new load.
    async fn acquire(&self, agent: &str) -> Result<u64, StoreError>;

    /// One unit of load fewer on `agent`, never below zero; returns the new load.
    async fn release(&self, agent: &str) -> Result<u64, StoreError>;

    /// The loads of `agents` (0 for an agent never acquired), or of every agent with a
    /// recorded load when `agents` is `None`.
    async fn loads(&self, agents: Option<&[String]>) -> Result<BTreeMap<String, u64>, StoreError>;

    /// The least-loaded of `candidates` (the first listed on a tie) and its load, acquiring one
    /// unit on it in the same step when `acquire` is set. `None` when `candidates` is empty.
    async fn pick_least_loaded(
        &self,
        candidates: &[String],
        acquire: bool,
    ) -> Result<Option<(String, u64)>, StoreError>;

    /// Defines (or redefines, resetting it) a workflow of `tasks`, all pending.
    async fn define_workflow(&self, workflow_id: &str, tasks: &[String]) -> Result<WorkflowProgress, StoreError>;

    /// Moves one task of a workflow to `state` (a legal transition, or the state it is in).
    async fn update_workflow(
        &self,
        workflow_id: &str,
        task_id: &str,
        state: TaskState,
    ) -> Result<WorkflowUpdate, StoreError>;

    /// A workflow's progress.
    async fn workflow_progress(&self, workflow_id: &str) -> Result<WorkflowProgress, StoreError>;

    /// Appends `entry` to the shared log `log` and returns its `seq`: 1 for the log's first
    /// entry, then one more for each append, whoever makes it (two appends at once get distinct,
    /// consecutive numbers, and the log holds its entries in `seq` order). In the same step the
    /// log drops its oldest entries beyond the newest `keep` (at least 1 is kept).
    async fn append_log(&self, log: &str, entry: &Value, keep: usize) -> Result<u64, StoreError>;

    /// The entries of `log` with a `seq` above `after`, oldest first, at most `limit`, and the
    /// log's bounds, read in one step (an unknown log is empty, its bounds 0).
    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_allows_only_the_documented_moves() {
        use TaskState::*;
        let allowed: Vec<(TaskState, TaskState)> = TaskState::ALL
            .into_iter()
            .flat_map(|a| TaskState::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Assigned),
                (Assigned, Pending),
                (Assigned, Running),
                (Running, Pending),
                (Running, Done),
                (Running, Failed),
                (Failed, Pending)
            ]
        );
        assert_eq!(
            TaskState::predecessors(Pending).collect::<Vec<_>>(),
            vec![Assigned, Running, Failed]
        );
    }

    #[test]
    fn progress_counts_states() {
        let p =
            WorkflowProgress::from_states("w", ["done", "failed", "running", "pending", "assigned"]).expect("counts");
        assert_eq!(
            (p.total, p.done, p.failed, p.running, p.pending, p.assigned),
            (5, 1, 1, 1, 1, 1)
        );
        assert!(!p.complete);
        assert!(
            WorkflowProgress::from_states("w", ["done", "failed"])
                .expect("counts")
                .complete
        );
        assert!(WorkflowProgress::from_states("w", ["nonsense"]).is_err());
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("key", "tasks/1").is_ok());
        assert!(check_key("key", "").is_err());
        assert!(check_key("key", "a\nb").is_err());
        assert!(check_key("key", &"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
