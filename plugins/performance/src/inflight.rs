//! Tasks in flight: each observed finish is matched to its observed start.
//!
//! `started - finished` is wrong for good once a finish arrives whose start was never observed
//! (the plugin began observing while the task ran): the extra finish cancels a later start,
//! and the gauge reads one short from then on (clamping at 0 only hides it while nothing
//! runs). So a start adds its task (by agent, correlation id and task kind: what the host puts
//! on both the start and the finish of one task) to a multiset, and a finish removes it; a
//! finish that matches no start is not counted here (it still counts as finished for its
//! kind). The host reports a task whose caller stopped waiting as finished (failed,
//! "cancelled"), so entries do not outlive their tasks.
//!
//! One small lock per task start and finish (a task is far costlier than that); the map holds
//! a 64-bit hash per task running, so it allocates only when more tasks run at once than ever
//! before. At most [`MAX_TRACKED`] distinct tasks are held: starts past that are counted
//! without a key, and a finish that matches no key takes one of those back, if any.

use plugin_api::Operation;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// The most distinct running tasks held by key.
pub(crate) const MAX_TRACKED: usize = 1 << 16;

#[derive(Debug, Default)]
struct State {
    /// Running tasks by key, with how many share it (a correlation id reused on one agent).
    running: HashMap<u64, u32>,
    /// Starts past [`MAX_TRACKED`] keys, held without one.
    untracked: u64,
    /// Every running task: the counts in `running`, plus `untracked`.
    total: u64,
}

/// Tasks started and not finished.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
    hasher: RandomState,
}

impl InFlight {
    fn key(&self, op: &Operation<'_>) -> u64 {
        self.hasher
            .hash_one((op.agent_id.as_deref(), &*op.correlation_id, op.task_kind.as_deref()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task started.
    pub(crate) fn start(&self, op: &Operation<'_>) {
        let key = self.key(op);
        let mut state = self.lock();
        if let Some(n) = state.running.get_mut(&key) {
            *n = n.saturating_add(1);
        } else if state.running.len() < MAX_TRACKED {
            state.running.insert(key, 1);
        } else {
            state.untracked += 1;
        }
        state.total += 1;
    }

    /// A task finished: it leaves the count if its start was counted.
    pub(crate) fn finish(&self, op: &Operation<'_>) {
        let key = self.key(op);
        let mut state = self.lock();
        let state = &mut *state;
        match state.running.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                state.running.remove(&key);
            }
            None if state.untracked > 0 => state.untracked -= 1,
            // Its start was not observed: nothing to take back.
            None => return,
        }
        state.total -= 1;
    }

    /// How many tasks are running.
    pub(crate) fn get(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::OperationKind;

    fn task(kind: OperationKind, correlation: &str) -> Operation<'_> {
        Operation::new(kind, correlation).with_agent("a")
    }

    #[test]
    fn starts_past_the_limit_are_counted_without_a_key() {
        let tasks = InFlight::default();
        let ids: Vec<String> = (0..MAX_TRACKED + 3).map(|i| format!("c{i}")).collect();
        for id in &ids {
            tasks.start(&task(OperationKind::TaskStart, id));
        }
        assert_eq!(tasks.get(), ids.len() as u64);
        // A finish without a start takes back one of the keyless starts.
        tasks.finish(&task(OperationKind::TaskFinish, "never-started"));
        assert_eq!(tasks.get(), ids.len() as u64 - 1);
        for id in &ids {
            tasks.finish(&task(OperationKind::TaskFinish, id));
        }
        assert_eq!(tasks.get(), 0, "never below zero");
    }
}
