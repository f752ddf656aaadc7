//! The state the plugin and every [`HookRegistry`](crate::HookRegistry) handle share.

use crate::hooks::{HookRun, HookTable};
use crate::perf::{SlowRecord, Thresholds};
use crate::ring::Ring;
use crate::spans::SpanRecord;
use plugin_api::{HostHandle, Interests, OperationKind, OperationSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The default bound on one hook run.
pub(crate) const DEFAULT_HOOK_TIMEOUT_MS: u64 = 250;
/// The default number of hook runs kept.
pub(crate) const DEFAULT_HISTORY_SIZE: usize = 1_000;
/// The default number of span records kept.
pub(crate) const DEFAULT_SPAN_BUFFER: usize = 4_096;
/// The default number of slow operations kept.
pub(crate) const DEFAULT_SLOW_BUFFER: usize = 1_000;

/// The kinds the plugin observes whatever its hooks: those span records and slow-operation
/// detection are built from.
pub(crate) const ALWAYS_OBSERVED: OperationSet = OperationSet::EMPTY
    .with(OperationKind::Dispatch)
    .with(OperationKind::TaskFinish)
    .with(OperationKind::AgentRegistration);

/// What the plugin has once it is initialized.
pub(crate) struct Runtime {
    pub(crate) host: HostHandle,
    pub(crate) hook_timeout: Duration,
}

/// Everything the plugin keeps.
pub(crate) struct Shared {
    /// Set once, by `initialize`.
    pub(crate) runtime: OnceLock<Runtime>,
    pub(crate) hooks: RwLock<HookTable>,
    pub(crate) history: Mutex<Ring<HookRun>>,
    pub(crate) spans: Mutex<Ring<SpanRecord>>,
    pub(crate) slow: Mutex<Ring<SlowRecord>>,
    pub(crate) thresholds: RwLock<Thresholds>,
    /// Operations whose post-hooks are running.
    pub(crate) post_in_flight: AtomicUsize,
    /// Operations whose post-hooks were skipped because too many were running.
    pub(crate) post_dropped: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            runtime: OnceLock::new(),
            hooks: RwLock::default(),
            history: Mutex::new(Ring::new(DEFAULT_HISTORY_SIZE)),
            spans: Mutex::new(Ring::new(DEFAULT_SPAN_BUFFER)),
            slow: Mutex::new(Ring::new(DEFAULT_SLOW_BUFFER)),
            thresholds: RwLock::default(),
            post_in_flight: AtomicUsize::new(0),
            post_dropped: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// The feeds the plugin needs with `table`'s hooks: every kind with a post-hook (plus what
    /// spans and slow operations are built from) observed, every kind with a pre-hook
    /// intercepted, nothing else.
    pub(crate) fn interests_for(table: &HookTable) -> Interests {
        let observe = table.post.iter().fold(ALWAYS_OBSERVED, OperationSet::with);
        Interests::observing(observe).and_intercepting(table.pre)
    }

    /// Tells the host the feeds `table` needs, once there is a host. Called with the table's
    /// write lock held, so that concurrent changes reach the host in the order they happened.
    pub(crate) fn apply_interests(&self, table: &HookTable) {
        if let Some(rt) = self.runtime.get() {
            rt.host.set_interests(Self::interests_for(table));
        }
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data behind, still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `l` (see [`lock`]).
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes `l` (see [`lock`]).
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
