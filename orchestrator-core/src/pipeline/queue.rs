//! Tasks waiting for a free agent: a bounded queue, highest priority first, and the hand-over of
//! a freed slot to the first waiting task its agent fits.

use crate::agents::AgentEntry;
use crate::orchestrator::Inner;
use crate::{AgentId, AgentStatus};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

// ----- waiting for a free agent -------------------------------------------------------------

/// A task waiting for a slot: what it needs, and where to send the slot.
pub(super) struct Waiter {
    pub(super) required: Vec<String>,
    pub(super) avoid: Vec<AgentId>,
    pub(super) slot: oneshot::Sender<Arc<AgentEntry>>,
}

/// Tasks waiting for a free agent, highest priority first, then first come.
#[derive(Default)]
pub(crate) struct WaitQueue {
    waiters: Mutex<BTreeMap<(Reverse<i32>, u64), Waiter>>,
    len: AtomicUsize,
    next: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WaitQueue {
    /// Queues `waiter` at `priority` (behind the waiters of equal or higher priority), unless
    /// `max` wait already: then `Err` with how many do.
    pub(super) fn join(&self, priority: i32, waiter: Waiter, max: usize) -> Result<Place<'_>, usize> {
        let mut waiters = lock(&self.waiters);
        if waiters.len() >= max {
            return Err(waiters.len());
        }
        let key = (Reverse(priority), self.next.fetch_add(1, Ordering::Relaxed));
        waiters.insert(key, waiter);
        self.len.fetch_add(1, Ordering::AcqRel);
        Ok(Place { queue: self, key })
    }

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
pub(super) struct Place<'a> {
    queue: &'a WaitQueue,
    key: (Reverse<i32>, u64),
}

impl Place<'_> {
    /// Takes the waiter out; `false` when it was no longer there (a slot was sent to it).
    pub(super) fn leave(&self) -> bool {
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

pub(super) fn is_registered(inner: &Inner, entry: &Arc<AgentEntry>) -> bool {
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
