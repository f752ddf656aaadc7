//! The capability registry: which plugins serve which capability, in which order.
//!
//! Readers (every dispatch) take a lock-free snapshot with `ArcSwap::load`; there is no lock on
//! the hot path. Writers (registering, replacing or removing a plugin, switching a capability)
//! are rare: they are serialized by a mutex, build a new snapshot from the current one and swap
//! it in. Serializing writers makes each update a true read-modify-write of the latest
//! snapshot, which is what `ArcSwap::rcu` gives, while letting a writer refuse an update with an
//! error (a conflict) instead of retrying a closure.
//!
//! The snapshot also holds the operation feeds ([`Feeds`]): which plugins observe or intercept
//! which kinds of operation, in priority order. Dispatch reads them from the snapshot it loads
//! anyway, so a registry where nobody asked for a feed costs the hot path one empty check.
//! Interests are kept by plugin name beside the snapshot, because a plugin may change them from
//! its `initialize`, before its slot is in the registry.
//!
//! A capability never changes hands silently: a second provider needs an explicit priority
//! different from every existing provider's, and a plugin of the same name needs an explicit
//! replace.

use crate::error::RegistryError;
use arc_swap::ArcSwap;
use plugin_api::{HealthStatus, Interests, OperationKind, OperationSet, OrchestrationPlugin};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;

/// How a plugin is registered: its priority among providers of the same capability, and
/// whether it may replace a plugin of the same name.
///
/// ```
/// use orchestrator_core::PluginOptions;
/// let options = PluginOptions::new().priority(10).replace();
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginOptions {
    /// Higher is tried first. `None` means 0 and refuses to share a capability with any other
    /// provider.
    pub priority: Option<i32>,
    /// Swap out a registered plugin of the same name (hot swap) instead of refusing.
    pub replace: bool,
}

impl PluginOptions {
    /// No priority, no replace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an explicit priority: higher is tried first.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Allows replacing a registered plugin of the same name.
    #[must_use]
    pub fn replace(mut self) -> Self {
        self.replace = true;
        self
    }
}

/// How a plugin came into the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginOrigin {
    /// Linked into the application and registered as a value.
    Static,
    /// Loaded from a shared library through the stable ABI (`export_plugin!`).
    StableAbi {
        /// The library file.
        path: std::path::PathBuf,
    },
    /// Loaded from a shared library through the legacy C ABI.
    CAbi {
        /// The library file.
        path: std::path::PathBuf,
    },
}

/// Call counters of one plugin.
#[derive(Debug, Default)]
pub(crate) struct PluginStats {
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Panics and timeouts of its `observe` and `intercept` (never fatal to the operation).
    pub(crate) feed_failures: AtomicU64,
    /// Lifecycle events its `on_event` was given.
    pub(crate) events_delivered: AtomicU64,
    /// Lifecycle events it missed because its queue was full.
    pub(crate) events_dropped: AtomicU64,
    /// `events_dropped` when the last health check reported it.
    pub(crate) events_dropped_reported: AtomicU64,
}

/// One registered plugin and its bookkeeping.
pub(crate) struct PluginSlot {
    pub(crate) name: Arc<str>,
    pub(crate) version: String,
    pub(crate) origin: PluginOrigin,
    pub(crate) capabilities: Vec<String>,
    pub(crate) priority: i32,
    pub(crate) explicit_priority: bool,
    pub(crate) plugin: Arc<dyn OrchestrationPlugin>,
    pub(crate) stats: PluginStats,
    /// Its quarantine circuit breaker.
    pub(crate) breaker: crate::circuit::Breaker,
    pub(crate) health: Mutex<Option<HealthStatus>>,
    /// Its lifecycle-event queue (set when it is registered; see `events`).
    pub(crate) events: OnceLock<crate::events::PluginQueue>,
    in_flight: AtomicUsize,
    drained: Notify,
    /// Set when the slot leaves the registry: no new call may start.
    retired: AtomicBool,
}

impl PluginSlot {
    pub(crate) fn new(
        plugin: Arc<dyn OrchestrationPlugin>,
        capabilities: Vec<String>,
        options: PluginOptions,
        origin: PluginOrigin,
    ) -> Self {
        Self {
            name: Arc::from(plugin.name()),
            version: plugin.version().to_owned(),
            origin,
            capabilities,
            priority: options.priority.unwrap_or(0),
            explicit_priority: options.priority.is_some(),
            plugin,
            stats: PluginStats::default(),
            breaker: crate::circuit::Breaker::default(),
            health: Mutex::new(None),
            events: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            retired: AtomicBool::new(false),
        }
    }

    /// Marks a call in flight until the guard drops; `None` once the plugin is retired (it is
    /// shutting down or shut down, and must not be called). The increment and the check are
    /// sequentially consistent with [`drain`](Self::drain)'s flag and count: either `drain`
    /// sees this call in flight and waits for it, or this call sees the flag and backs out.
    pub(crate) fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        if self.retired.load(Ordering::SeqCst) {
            return None; // the guard's drop backs the count out
        }
        Some(guard)
    }

    /// Whether the slot has left the registry.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Retires the slot (no call starts after this) and waits until no call is in flight, at
    /// most `limit` (a caller holding an `execute` future without polling it would otherwise keep
    /// it "in flight" forever).
    pub(crate) async fn drain(&self, limit: std::time::Duration) {
        self.retired.store(true, Ordering::SeqCst);
        if tokio::time::timeout(limit, self.wait_idle()).await.is_err() {
            tracing::warn!(plugin = %self.name, "calls still in flight after {limit:?}; shutting down anyway");
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn set_health(&self, health: HealthStatus) {
        *lock(&self.health) = Some(health);
    }

    pub(crate) fn info(&self, interests: Interests, now_ns: u64) -> PluginInfo {
        PluginInfo {
            name: self.name.to_string(),
            version: self.version.clone(),
            origin: self.origin.clone(),
            capabilities: self.capabilities.clone(),
            priority: self.priority,
            health: lock(&self.health).clone(),
            calls: self.stats.calls.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            panics: self.stats.panics.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            feed_failures: self.stats.feed_failures.load(Ordering::Relaxed),
            events_delivered: self.stats.events_delivered.load(Ordering::Relaxed),
            events_dropped: self.stats.events_dropped.load(Ordering::Relaxed),
            interests,
            circuit: self.breaker.info(now_ns),
        }
    }
}

/// A call in flight on a plugin; dropping it may finish a drain.
pub(crate) struct InFlight<'a>(&'a PluginSlot);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Only a drain waits to be told (the notification takes a lock, so it is not sent on
        // every call). All four operations are sequentially consistent: if this load misses
        // `drain`'s flag, the flag was set after the count went down, and `wait_idle` then
        // reads the lower count itself.
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.retired.load(Ordering::SeqCst) {
            self.0.drained.notify_waiters();
        }
    }
}

/// Locks a mutex, recovering the data if a holder panicked (the data here stays consistent:
/// every critical section is a plain assignment or a snapshot swap).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The providers of one capability, highest priority first.
pub(crate) struct Route {
    pub(crate) capability: Arc<str>,
    pub(crate) providers: Vec<Arc<PluginSlot>>,
    /// The snapshot's feeds, here too so that a dispatch, which clones its route anyway,
    /// need not clone them separately.
    pub(crate) feeds: Arc<Feeds>,
}

/// Who observes and who intercepts which kinds of operation, highest priority first.
#[derive(Default)]
pub(crate) struct Feeds {
    pub(crate) observers: Vec<(OperationSet, Arc<PluginSlot>)>,
    pub(crate) interceptors: Vec<(OperationSet, Arc<PluginSlot>)>,
    observed: OperationSet,
    intercepted: OperationSet,
}

impl Feeds {
    fn build(plugins: &BTreeMap<Arc<str>, Arc<PluginSlot>>, interests: &HashMap<Arc<str>, Interests>) -> Self {
        let mut slots: Vec<&Arc<PluginSlot>> = plugins.values().collect();
        slots.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        let mut feeds = Feeds::default();
        for slot in slots {
            let Some(wants) = interests.get(&slot.name) else {
                continue;
            };
            if !wants.observe.is_empty() {
                feeds.observers.push((wants.observe, Arc::clone(slot)));
                feeds.observed = wants.observe.iter().fold(feeds.observed, OperationSet::with);
            }
            if !wants.intercept.is_empty() {
                feeds.interceptors.push((wants.intercept, Arc::clone(slot)));
                feeds.intercepted = wants.intercept.iter().fold(feeds.intercepted, OperationSet::with);
            }
        }
        feeds
    }

    /// Whether some plugin observes `kind`.
    #[inline]
    pub(crate) fn observes(&self, kind: OperationKind) -> bool {
        self.observed.contains(kind)
    }

    /// Whether some plugin intercepts `kind`.
    #[inline]
    pub(crate) fn intercepts(&self, kind: OperationKind) -> bool {
        self.intercepted.contains(kind)
    }
}

/// Capability -> its providers.
pub(crate) type Routes = HashMap<String, Arc<Route>, foldhash::fast::RandomState>;

/// The registry's state at one point in time.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub(crate) plugins: BTreeMap<Arc<str>, Arc<PluginSlot>>,
    /// Capability -> its providers. Looked up on every dispatch, so on foldhash (seeded per
    /// process) rather than SipHash: about a fifth of the cost for a short name.
    pub(crate) routes: Routes,
    /// Capabilities switched off. Kept even while no plugin provides them.
    pub(crate) disabled: BTreeSet<String>,
    /// The operation feeds.
    pub(crate) feeds: Arc<Feeds>,
}

impl Snapshot {
    fn rebuild_routes(plugins: &BTreeMap<Arc<str>, Arc<PluginSlot>>, feeds: &Arc<Feeds>) -> Routes {
        let mut routes: HashMap<String, Vec<Arc<PluginSlot>>> = HashMap::new();
        for slot in plugins.values() {
            for cap in &slot.capabilities {
                routes.entry(cap.clone()).or_default().push(Arc::clone(slot));
            }
        }
        routes
            .into_iter()
            .map(|(cap, mut providers)| {
                providers.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
                let route = Route {
                    capability: Arc::from(cap.as_str()),
                    providers,
                    feeds: Arc::clone(feeds),
                };
                (cap, Arc::new(route))
            })
            .collect()
    }

    pub(crate) fn is_enabled(&self, capability: &str) -> bool {
        self.disabled.is_empty() || !self.disabled.contains(capability)
    }

    pub(crate) fn capability_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

/// The registry itself.
#[derive(Default)]
pub(crate) struct CapabilityRegistry {
    current: ArcSwap<Snapshot>,
    /// Serializes writers, and holds each plugin's interests by name.
    writer: Mutex<HashMap<Arc<str>, Interests>>,
}

impl CapabilityRegistry {
    /// The current snapshot (lock-free).
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holding across `.await`.
    pub(crate) fn snapshot_arc(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Checks whether `slot` could be inserted now, without inserting it.
    pub(crate) fn check_insert(&self, slot: &PluginSlot, replace: bool) -> Result<(), RegistryError> {
        check_insert(&self.current.load(), slot, replace)
    }

    /// Inserts `slot`; returns the plugin it replaced, if any.
    pub(crate) fn insert(
        &self,
        slot: Arc<PluginSlot>,
        replace: bool,
    ) -> Result<Option<Arc<PluginSlot>>, RegistryError> {
        let interests = lock(&self.writer);
        let old = self.current.load_full();
        check_insert(&old, &slot, replace)?;
        let mut plugins = old.plugins.clone();
        let replaced = plugins.insert(Arc::clone(&slot.name), slot);
        let feeds = Arc::new(Feeds::build(&plugins, &interests));
        let routes = Snapshot::rebuild_routes(&plugins, &feeds);
        self.current.store(Arc::new(Snapshot {
            plugins,
            routes,
            disabled: old.disabled.clone(),
            feeds,
        }));
        Ok(replaced)
    }

    /// Removes the plugin named `name`; returns it.
    pub(crate) fn remove(&self, name: &str) -> Result<Arc<PluginSlot>, RegistryError> {
        let mut interests = lock(&self.writer);
        let old = self.current.load_full();
        let mut plugins = old.plugins.clone();
        let removed = plugins.remove(name).ok_or_else(|| RegistryError::PluginNotFound {
            name: name.to_owned(),
            known: old.plugins.keys().map(|k| k.to_string()).collect(),
        })?;
        interests.remove(name);
        let feeds = Arc::new(Feeds::build(&plugins, &interests));
        let routes = Snapshot::rebuild_routes(&plugins, &feeds);
        self.current.store(Arc::new(Snapshot {
            plugins,
            routes,
            disabled: old.disabled.clone(),
            feeds,
        }));
        Ok(removed)
    }

    /// Switches a capability on or off; `known` says whether the caller knows the capability
    /// (provided by a plugin or by the legacy path). Returns whether the flag changed.
    pub(crate) fn set_enabled(
        &self,
        capability: &str,
        enabled: bool,
        legacy_known: bool,
    ) -> Result<bool, RegistryError> {
        let _writer = lock(&self.writer);
        let old = self.current.load_full();
        if !legacy_known && !old.routes.contains_key(capability) {
            return Err(RegistryError::UnknownCapability {
                capability: capability.to_owned(),
                known: old.capability_names(),
            });
        }
        let mut disabled = old.disabled.clone();
        let changed = if enabled {
            disabled.remove(capability)
        } else {
            disabled.insert(capability.to_owned())
        };
        if changed {
            self.current.store(Arc::new(Snapshot {
                plugins: old.plugins.clone(),
                routes: old.routes.clone(),
                disabled,
                feeds: Arc::clone(&old.feeds),
            }));
        }
        Ok(changed)
    }

    /// Records the operation feeds the plugin named `name` wants, and applies them at once
    /// when it is registered (otherwise when it is inserted).
    pub(crate) fn set_interests(&self, name: &str, wants: Interests) {
        let mut interests = lock(&self.writer);
        if interests.get(name) == Some(&wants) {
            return;
        }
        interests.insert(Arc::from(name), wants);
        let old = self.current.load_full();
        if old.plugins.contains_key(name) {
            let feeds = Arc::new(Feeds::build(&old.plugins, &interests));
            self.current.store(Arc::new(Snapshot {
                plugins: old.plugins.clone(),
                routes: Snapshot::rebuild_routes(&old.plugins, &feeds),
                disabled: old.disabled.clone(),
                feeds,
            }));
        }
    }

    /// Forgets the interests of `name` unless a plugin of that name is registered (its
    /// registration failed before insertion).
    pub(crate) fn forget_interests_unless_registered(&self, name: &str) {
        let mut interests = lock(&self.writer);
        if !self.current.load().plugins.contains_key(name) {
            interests.remove(name);
        }
    }

    /// The interests of the plugin named `name`.
    pub(crate) fn interests_of(&self, name: &str) -> Interests {
        lock(&self.writer).get(name).copied().unwrap_or_default()
    }
}

fn check_insert(snapshot: &Snapshot, slot: &PluginSlot, replace: bool) -> Result<(), RegistryError> {
    if !replace && snapshot.plugins.contains_key(&*slot.name) {
        return Err(RegistryError::DuplicatePlugin {
            name: slot.name.to_string(),
        });
    }
    for cap in &slot.capabilities {
        let Some(providers) = snapshot.routes.get(cap) else {
            continue;
        };
        for existing in providers.providers.iter().filter(|p| p.name != slot.name) {
            let ambiguous = !slot.explicit_priority || existing.priority == slot.priority;
            if ambiguous {
                return Err(RegistryError::CapabilityConflict {
                    capability: cap.clone(),
                    existing: existing.name.to_string(),
                    plugin: slot.name.to_string(),
                    priority: existing.priority,
                });
            }
        }
    }
    Ok(())
}

/// What the catalog says about one plugin.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// How it was loaded.
    pub origin: PluginOrigin,
    /// The capabilities it provides.
    pub capabilities: Vec<String>,
    /// Its priority among providers (higher first).
    pub priority: i32,
    /// Its last health check (`None` before the first).
    pub health: Option<HealthStatus>,
    /// Requests it was given.
    pub calls: u64,
    /// Requests it answered with an error (other than invalid input).
    pub errors: u64,
    /// Requests during which it panicked.
    pub panics: u64,
    /// Requests it did not answer in time.
    pub timeouts: u64,
    /// Its `observe` or `intercept` panicked or (intercept) timed out; the operation went on.
    pub feed_failures: u64,
    /// The operation feeds it receives.
    pub interests: Interests,
    /// Lifecycle events its `on_event` was given.
    pub events_delivered: u64,
    /// Lifecycle events it missed because its queue was full (its `on_event` is slower than
    /// events arrive); see the event delivery notes on
    /// [`OrchestratorBuilder::event_queue_capacity`](crate::OrchestratorBuilder::event_queue_capacity).
    pub events_dropped: u64,
    /// Its quarantine circuit breaker: closed (called normally), open (quarantined after
    /// repeated failures) or half-open (about to be probed).
    pub circuit: crate::CircuitInfo,
}

/// What the catalog says about one capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CapabilityInfo {
    /// Its name.
    pub name: String,
    /// The plugins that provide it, in the order they are tried.
    pub providers: Vec<String>,
    /// Whether it is enabled; a disabled capability goes straight to the legacy path.
    pub enabled: bool,
    /// Whether the legacy path can serve it.
    pub legacy_fallback: bool,
}

/// Everything the orchestrator hosts, in a form that serializes (to JSON for an admin endpoint,
/// for instance).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Catalog {
    /// Every plugin, by name.
    pub plugins: Vec<PluginInfo>,
    /// Every capability, by name: those plugins provide and those only the legacy path serves.
    pub capabilities: Vec<CapabilityInfo>,
    /// Whether the legacy fallback path is on.
    pub legacy_mode: bool,
    /// Registered agents.
    pub agent_count: usize,
    /// Lifecycle events dropped before reaching any plugin, because they were emitted faster
    /// than one core can fan them out (per-plugin losses are in [`PluginInfo::events_dropped`]).
    pub events_dropped: u64,
}
