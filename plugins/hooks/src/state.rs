//! The state the plugin and every [`HookRegistry`](crate::HookRegistry) handle share.
//!
//! What `observe` reads on every operation (the hook table, the thresholds) is published
//! through [`ArcSwap`]: readers load a snapshot without taking a lock or writing a shared
//! word, and writers (rare: adding a hook, setting a threshold) copy, change and publish under
//! a mutex of their own, which also keeps concurrent changes in order.

use crate::hooks::{HookRun, HookTable};
use crate::ids::{Callbacks, IdSource};
use crate::perf::{SlowLog, Thresholds};
use crate::ring::Ring;
use crate::spans::SpanBuffer;
use arc_swap::ArcSwap;
use plugin_api::{HostHandle, Interests, OperationKind, OperationSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The default bound on one hook run.
pub(crate) const DEFAULT_HOOK_TIMEOUT_MS: u64 = 250;
/// The default time all pre-hooks of one operation share.
pub(crate) const DEFAULT_INTERCEPT_BUDGET_MS: u64 = 1_500;
/// The default number of hook runs kept.
pub(crate) const DEFAULT_HISTORY_SIZE: usize = 1_000;
/// The default number of span records kept.
pub(crate) const DEFAULT_SPAN_BUFFER: usize = 4_096;
/// The default number of slow operations kept.
pub(crate) const DEFAULT_SLOW_BUFFER: usize = 1_000;
/// The default rate of `slow_operation` events.
pub(crate) const DEFAULT_SLOW_EVENTS_PER_S: u64 = 100;

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
    /// What all pre-hooks of one operation share.
    pub(crate) intercept_budget: Duration,
}

/// Everything the plugin keeps.
pub(crate) struct Shared {
    /// Set once, by `initialize`.
    pub(crate) runtime: OnceLock<Runtime>,
    /// The hooks, read on every operation.
    pub(crate) hooks: ArcSwap<HookTable>,
    /// Held while the hooks change (and the host is told), so that changes do not overlap.
    pub(crate) hooks_writer: Mutex<()>,
    pub(crate) history: Mutex<Ring<HookRun>>,
    pub(crate) spans: SpanBuffer,
    pub(crate) slow: Mutex<SlowLog>,
    /// The thresholds, read on every operation.
    pub(crate) thresholds: ArcSwap<Thresholds>,
    /// Held while the thresholds change.
    pub(crate) thresholds_writer: Mutex<()>,
    /// The hook callbacks in flight, whose own operations are not hooked.
    pub(crate) callbacks: Arc<Callbacks>,
    /// Where the tokens that unregister remote hooks come from.
    pub(crate) tokens: IdSource,
    /// Operations whose post-hooks are running.
    pub(crate) post_in_flight: AtomicUsize,
    /// Operations whose post-hooks were skipped because too many were running.
    pub(crate) post_dropped: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            runtime: OnceLock::new(),
            hooks: ArcSwap::from_pointee(HookTable::default()),
            hooks_writer: Mutex::new(()),
            history: Mutex::new(Ring::new(DEFAULT_HISTORY_SIZE)),
            spans: SpanBuffer::new(DEFAULT_SPAN_BUFFER),
            slow: Mutex::new(SlowLog::new(DEFAULT_SLOW_BUFFER, DEFAULT_SLOW_EVENTS_PER_S)),
            thresholds: ArcSwap::from_pointee(Thresholds::default()),
            thresholds_writer: Mutex::new(()),
            callbacks: Arc::default(),
            tokens: IdSource::default(),
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

    /// Tells the host the feeds `table` needs, once there is a host. Called with
    /// `hooks_writer` held, so that concurrent changes reach the host in the order they
    /// happened.
    pub(crate) fn apply_interests(&self, table: &HookTable) {
        if let Some(rt) = self.runtime.get() {
            rt.host.set_interests(Self::interests_for(table));
        }
    }

    /// Changes the hooks: `change` gets a copy of the table, which is published (and the host
    /// told of the feeds it needs) when it answers `Ok`. Changes are serialized.
    pub(crate) fn change_hooks<T, E>(&self, change: impl FnOnce(&mut HookTable) -> Result<T, E>) -> Result<T, E> {
        let _writer = lock(&self.hooks_writer);
        let mut table = HookTable::clone(&self.hooks.load());
        let answer = change(&mut table)?;
        let table = Arc::new(table);
        self.hooks.store(Arc::clone(&table));
        self.apply_interests(&table);
        Ok(answer)
    }

    /// Changes the thresholds like [`change_hooks`](Self::change_hooks) changes the hooks.
    pub(crate) fn change_thresholds<T, E>(&self, change: impl FnOnce(&mut Thresholds) -> Result<T, E>) -> Result<T, E> {
        let _writer = lock(&self.thresholds_writer);
        let mut thresholds = Thresholds::clone(&self.thresholds.load());
        let answer = change(&mut thresholds)?;
        self.thresholds.store(Arc::new(thresholds));
        Ok(answer)
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data behind, still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
