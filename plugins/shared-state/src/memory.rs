//! The in-memory backend: the embedded default, for one process.
//!
//! Values sit in a [`DashMap`], so a compare-and-set locks one shard for the length of a
//! comparison and never waits on an unrelated key. Load counters, workflows and shared logs sit
//! behind one mutex each: a least-loaded pick reads several counters and bumps one, an append
//! numbers an entry and trims its log, which must each be one step, and these maps are touched
//! briefly (no lock is held across an `.await`; there is none in this file). A shared log is a
//! [`VecDeque`] of its newest entries and the last `seq` handed out.
//!
//! **Finished tasks are forgotten, oldest first.** A task's state stays while the task is
//! pending, assigned or running; once it is `done` or `failed` it is kept among the last
//! [`DEFAULT_FINISHED_TASKS_KEPT`] finished tasks (configurable), so that a process running
//! tasks for months does not hold every task it ever ran. A forgotten task reads as absent
//! (`pending`), so its id could run again: ids are meant to be unique, and the pipeline's are.

use crate::store::{
    CasOutcome, LogEntry, LogPage, StateStore, StoreError, TaskState, Versioned, WorkflowProgress, WorkflowUpdate,
};
use async_trait::async_trait;
use dashmap::DashMap;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// How many finished (`done` or `failed`) task states the memory store keeps by default.
pub const DEFAULT_FINISHED_TASKS_KEPT: usize = 100_000;

/// Shared state held in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    values: DashMap<String, Versioned>,
    /// Keys of finished tasks, oldest first, and how many to keep.
    finished: Mutex<VecDeque<String>>,
    finished_kept: usize,
    loads: Mutex<HashMap<String, u64>>,
    workflows: Mutex<HashMap<String, Vec<(String, TaskState)>>>,
    logs: Mutex<HashMap<String, SharedLog>>,
}

/// A shared log: its newest entries, oldest first (consecutive `seq`s), and the last `seq` given.
#[derive(Debug, Default)]
struct SharedLog {
    last_seq: u64,
    entries: VecDeque<LogEntry>,
}

/// Locks `m`, taking the data as it is if a panicking thread poisoned it (every update here is
/// a single assignment, so the data is never half-written).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_finished(value: &Value) -> bool {
    matches!(value.as_str(), Some("done" | "failed"))
}

fn task_key(task_id: &str) -> String {
    format!("task/{task_id}")
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_finished_tasks_kept(DEFAULT_FINISHED_TASKS_KEPT)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps the states of the last `kept` finished tasks (at least 1).
    pub fn with_finished_tasks_kept(kept: usize) -> Self {
        Self {
            values: DashMap::new(),
            finished: Mutex::new(VecDeque::new()),
            finished_kept: kept.max(1),
            loads: Mutex::default(),
            workflows: Mutex::default(),
            logs: Mutex::default(),
        }
    }

    /// Remembers that `key`'s task finished, and forgets the oldest finished tasks beyond the
    /// limit (unless they have been handed back and run again since).
    fn finished(&self, key: String) {
        let mut finished = lock(&self.finished);
        finished.push_back(key);
        while finished.len() > self.finished_kept {
            let Some(old) = finished.pop_front() else { break };
            self.values.remove_if(&old, |_, v| is_finished(&v.value));
        }
    }

    fn conditional_set(
        &self,
        key: &str,
        value: &Value,
        matches: impl FnOnce(Option<&Versioned>) -> bool,
    ) -> CasOutcome {
        match self.values.entry(key.to_owned()) {
            dashmap::Entry::Occupied(mut slot) => {
                if matches(Some(slot.get())) {
                    let version = slot.get().version + 1;
                    slot.insert(Versioned {
                        value: value.clone(),
                        version,
                    });
                    CasOutcome {
                        applied: true,
                        version,
                        value: value.clone(),
                    }
                } else {
                    CasOutcome {
                        applied: false,
                        version: slot.get().version,
                        value: slot.get().value.clone(),
                    }
                }
            }
            dashmap::Entry::Vacant(slot) => {
                if matches(None) {
                    slot.insert(Versioned {
                        value: value.clone(),
                        version: 1,
                    });
                    CasOutcome {
                        applied: true,
                        version: 1,
                        value: value.clone(),
                    }
                } else {
                    CasOutcome {
                        applied: false,
                        version: 0,
                        value: Value::Null,
                    }
                }
            }
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        Ok(self.values.get(key).map(|v| v.value().clone()).unwrap_or(Versioned {
            value: Value::Null,
            version: 0,
        }))
    }

    async fn compare_and_set(&self, key: &str, expected_version: u64, value: &Value) -> Result<CasOutcome, StoreError> {
        Ok(self.conditional_set(key, value, |current| {
            current.map_or(0, |c| c.version) == expected_version
        }))
    }

    async fn delete(&self, key: &str, expected_version: u64) -> Result<CasOutcome, StoreError> {
        Ok(match self.values.entry(key.to_owned()) {
            dashmap::Entry::Occupied(slot) if slot.get().version == expected_version => {
                slot.remove();
                CasOutcome {
                    applied: true,
                    version: 0,
                    value: Value::Null,
                }
            }
            dashmap::Entry::Occupied(slot) => CasOutcome {
                applied: false,
                version: slot.get().version,
                value: slot.get().value.clone(),
            },
            dashmap::Entry::Vacant(_) => CasOutcome {
                applied: expected_version == 0,
                version: 0,
                value: Value::Null,
            },
        })
    }

    async fn transition(&self, task_id: &str, from: TaskState, to: TaskState) -> Result<CasOutcome, StoreError> {
        let from_value = Value::from(from.as_str());
        let key = task_key(task_id);
        let outcome = self.conditional_set(&key, &Value::from(to.as_str()), |current| match current {
            None => from == TaskState::Pending,
            Some(current) => current.value == from_value,
        });
        if outcome.applied && matches!(to, TaskState::Done | TaskState::Failed) {
            self.finished(key);
        }
        Ok(outcome)
    }

    async fn acquire(&self, agent: &str) -> Result<u64, StoreError> {
        let mut loads = lock(&self.loads);
        let load = loads.entry(agent.to_owned()).or_insert(0);
        *load += 1;
        Ok(*load)
    }

    async fn release(&self, agent: &str) -> Result<u64, StoreError> {
        let mut loads = lock(&self.loads);
        Ok(match loads.get_mut(agent) {
            Some(load) => {
                *load = load.saturating_sub(1);
                *load
            }
            None => 0,
        })
    }

    async fn loads(&self, agents: Option<&[String]>) -> Result<BTreeMap<String, u64>, StoreError> {
        let loads = lock(&self.loads);
        Ok(match agents {
            Some(agents) => agents
                .iter()
                .map(|a| (a.clone(), loads.get(a).copied().unwrap_or(0)))
                .collect(),
            None => loads.iter().map(|(a, n)| (a.clone(), *n)).collect(),
        })
    }

    async fn pick_least_loaded(
        &self,
        candidates: &[String],
        acquire: bool,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let mut loads = lock(&self.loads);
        let Some(best) = candidates
            .iter()
            .enumerate()
            .min_by_key(|(i, a)| (loads.get(a.as_str()).copied().unwrap_or(0), *i))
            .map(|(_, a)| a)
        else {
            return Ok(None);
        };
        if !acquire {
            // Only a write creates an entry, as on Redis: `loads(None)` lists the same agents.
            return Ok(Some((best.clone(), loads.get(best.as_str()).copied().unwrap_or(0))));
        }
        let load = loads.entry(best.clone()).or_insert(0);
        *load += 1;
        Ok(Some((best.clone(), *load)))
    }

    async fn define_workflow(&self, workflow_id: &str, tasks: &[String]) -> Result<WorkflowProgress, StoreError> {
        let states: Vec<(String, TaskState)> = tasks.iter().map(|t| (t.clone(), TaskState::Pending)).collect();
        let progress = WorkflowProgress::from_states(workflow_id, states.iter().map(|(_, s)| s.as_str()))?;
        lock(&self.workflows).insert(workflow_id.to_owned(), states);
        Ok(progress)
    }

    async fn update_workflow(
        &self,
        workflow_id: &str,
        task_id: &str,
        state: TaskState,
    ) -> Result<WorkflowUpdate, StoreError> {
        let mut workflows = lock(&self.workflows);
        let tasks = workflows
            .get_mut(workflow_id)
            .ok_or_else(|| StoreError::NotFound(format!("no workflow `{workflow_id}`: define it first")))?;
        let before = WorkflowProgress::from_states(workflow_id, tasks.iter().map(|(_, s)| s.as_str()))?;
        let slot = tasks
            .iter_mut()
            .find(|(t, _)| t == task_id)
            .ok_or_else(|| StoreError::NotFound(format!("workflow `{workflow_id}` has no task `{task_id}`")))?;
        let previous = slot.1;
        if previous != state && !previous.can_become(state) {
            return Err(StoreError::IllegalTransition {
                from: previous,
                to: state,
            });
        }
        slot.1 = state;
        let progress = WorkflowProgress::from_states(workflow_id, tasks.iter().map(|(_, s)| s.as_str()))?;
        Ok(WorkflowUpdate {
            previous,
            completed_now: progress.complete && !before.complete,
            progress,
        })
    }

    async fn workflow_progress(&self, workflow_id: &str) -> Result<WorkflowProgress, StoreError> {
        let workflows = lock(&self.workflows);
        let tasks = workflows
            .get(workflow_id)
            .ok_or_else(|| StoreError::NotFound(format!("no workflow `{workflow_id}`: define it first")))?;
        WorkflowProgress::from_states(workflow_id, tasks.iter().map(|(_, s)| s.as_str()))
    }

    async fn append_log(&self, log: &str, entry: &Value, keep: usize) -> Result<u64, StoreError> {
        let entry = entry.clone();
        let mut logs = lock(&self.logs);
        let log = logs.entry(log.to_owned()).or_default();
        log.last_seq += 1;
        log.entries.push_back(LogEntry {
            seq: log.last_seq,
            entry,
        });
        let excess = log.entries.len().saturating_sub(keep.max(1));
        log.entries.drain(..excess);
        Ok(log.last_seq)
    }

    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let logs = lock(&self.logs);
        let Some(log) = logs.get(log) else {
            return Ok(LogPage {
                entries: Vec::new(),
                first_seq: 0,
                last_seq: 0,
            });
        };
        let first_seq = log.entries.front().map_or(0, |e| e.seq);
        // The entries hold consecutive seqs from `first_seq`: skip those up to `after`.
        let skip = usize::try_from(after.saturating_add(1).saturating_sub(first_seq))
            .unwrap_or(usize::MAX)
            .min(log.entries.len());
        Ok(LogPage {
            entries: log.entries.range(skip..).take(limit).cloned().collect(),
            first_seq,
            last_seq: log.last_seq,
        })
    }
}
