//! The plugin's figures: what observers record and what readers see.

use crate::exposition;
use crate::histogram::Summary;
use crate::inflight::InFlight;
use crate::names::Names;
use crate::series::{Counter, PluginCounts, Scratch, Series, SeriesView, WINDOW_SLOTS, shard_count};
use plugin_api::{AgentLoad, AgentStatus, HostHandle, Operation, OperationKind, OperationOutcome};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The task kind of a finished task whose data named none.
pub const UNSPECIFIED_KIND: &str = "unspecified";

/// The default length of the sliding window, in seconds.
pub const DEFAULT_WINDOW_S: u64 = 60;

/// The default number of series (capabilities, task kinds) kept by name, each; more are counted
/// under `"(other)"`.
pub const DEFAULT_MAX_SERIES: usize = 256;

/// The capability under which dispatches that nothing served (an unknown or disabled
/// capability, or one an interceptor refused before any provider) are counted, unless their
/// capability already has a series of its own: the name of such a call is whatever the caller
/// sent, and must not take up one of the `max_series` names.
pub const UNSERVED: &str = "(unserved)";

/// Whether a plugin (or the legacy path) served a dispatch: only those, and provider failures,
/// make a capability's series.
#[inline]
fn served(op: &Operation<'_>) -> bool {
    op.plugin.is_some() && op.outcome != OperationOutcome::Vetoed
}

/// Which series a [`LatencySummary`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Dispatches of one capability (all outcomes).
    Capability,
    /// Finished tasks of one kind (the task data's `kind`, or `"unspecified"`).
    Kind,
}

/// Percentiles of a set of latencies, in milliseconds; `None` when the set is empty.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many latencies.
    pub count: u64,
    /// The median.
    pub p50_ms: Option<f64>,
    /// The 90th percentile.
    pub p90_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
    /// The 99.9th percentile.
    pub p999_ms: Option<f64>,
    /// The largest.
    pub max_ms: Option<f64>,
    /// The mean.
    pub mean_ms: Option<f64>,
}

impl Percentiles {
    fn of(summary: Option<Summary>) -> Self {
        let Some(s) = summary else {
            return Self {
                count: 0,
                p50_ms: None,
                p90_ms: None,
                p99_ms: None,
                p999_ms: None,
                max_ms: None,
                mean_ms: None,
            };
        };
        let ms = |ns: u64| Some(ns as f64 / 1e6);
        let [p50, p90, p99, p999] = s.quantiles;
        Self {
            count: s.len,
            p50_ms: ms(p50),
            p90_ms: ms(p90),
            p99_ms: ms(p99),
            p999_ms: ms(p999),
            max_ms: ms(s.max),
            mean_ms: Some(s.mean / 1e6),
        }
    }
}

/// The same, over the sliding window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    /// The percentiles over the window.
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// The window's length, in seconds.
    pub window_s: u64,
}

/// Latency figures of one series, all time and over the sliding window: percentiles and the
/// max at 2 significant figures (each the highest value of its 1%-wide bucket, so at or above
/// the latency recorded and within 1% of it), the exact mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    /// The capability or task kind.
    pub name: String,
    /// Which of the two.
    pub scope: Scope,
    /// All time.
    #[serde(flatten)]
    pub all_time: Percentiles,
    /// The last `window_s` seconds.
    pub window: WindowSummary,
}

/// Everything the plugin records, shared by the plugin and its [`MetricsHandle`]s.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) capabilities: Names,
    pub(crate) kinds: Names,
    tasks_started: AtomicU64,
    /// Tasks started and not finished, matched start to finish.
    in_flight: InFlight,
    registrations: AtomicU64,
    /// Nanoseconds per window slot.
    bucket_ns: AtomicU64,
    window_s: AtomicU64,
    max_series: AtomicUsize,
    pub(crate) host: RwLock<Option<HostHandle>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let shards = shard_count();
        Self {
            capabilities: Names::new(shards),
            kinds: Names::new(shards),
            tasks_started: AtomicU64::new(0),
            in_flight: InFlight::default(),
            registrations: AtomicU64::new(0),
            bucket_ns: AtomicU64::new(bucket_ns(DEFAULT_WINDOW_S)),
            window_s: AtomicU64::new(DEFAULT_WINDOW_S),
            max_series: AtomicUsize::new(DEFAULT_MAX_SERIES),
            host: RwLock::new(None),
        }
    }
}

fn bucket_ns(window_s: u64) -> u64 {
    (window_s.saturating_mul(1_000_000_000) / WINDOW_SLOTS).max(1)
}

/// Figures of one plugin, summed over capabilities.
#[derive(Debug, Default)]
struct PluginTotals {
    served: u64,
    vetoes: u64,
    errors: u64,
    timeouts: u64,
    panics: u64,
}

/// Everything merged, at one moment.
pub(crate) struct Snapshot {
    pub(crate) capabilities: Vec<(Box<str>, SeriesView)>,
    pub(crate) kinds: Vec<(Box<str>, SeriesView)>,
    pub(crate) tasks_started: u64,
    /// Tasks started and not finished (see [`InFlight`]): not `tasks_started` minus the
    /// finished, which a finish whose start was never observed would leave one short for good.
    pub(crate) tasks_in_flight: u64,
    pub(crate) registrations: u64,
    /// The fleet, when the plugin has a host.
    pub(crate) agents: Option<Vec<AgentLoad>>,
}

impl Snapshot {
    pub(crate) fn tasks_finished(&self) -> u64 {
        self.kinds.iter().map(|(_, v)| v.get(Counter::Calls)).sum()
    }

    /// Per plugin, summed over capabilities, by name.
    fn plugins(&self) -> BTreeMap<&str, PluginTotals> {
        let mut plugins: BTreeMap<&str, PluginTotals> = BTreeMap::new();
        for (_, view) in &self.capabilities {
            for p in &view.plugins {
                let t = plugins.entry(&p.name).or_default();
                t.served += p.served;
                t.vetoes += p.vetoes;
                t.errors += p.errors;
                t.timeouts += p.timeouts;
                t.panics += p.panics;
            }
        }
        plugins
    }
}

/// How many agents are in each status, and the load and capacity of those not offline.
pub(crate) struct Fleet {
    pub(crate) by_status: [(AgentStatus, u64); 4],
    pub(crate) load: u64,
    pub(crate) capacity: u64,
}

impl Fleet {
    pub(crate) fn of(agents: &[AgentLoad]) -> Self {
        let mut by_status = [
            (AgentStatus::Active, 0),
            (AgentStatus::Busy, 0),
            (AgentStatus::Sleeping, 0),
            (AgentStatus::Offline, 0),
        ];
        let (mut load, mut capacity) = (0u64, 0u64);
        for a in agents {
            if let Some(entry) = by_status.iter_mut().find(|(s, _)| *s == a.status) {
                entry.1 += 1;
            }
            if a.status != AgentStatus::Offline {
                load += u64::from(a.load);
                capacity += u64::from(a.capacity);
            }
        }
        Self {
            by_status,
            load,
            capacity,
        }
    }

    /// Agents not offline.
    pub(crate) fn available(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| *s != AgentStatus::Offline)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Metrics {
    pub(crate) fn set_window(&self, window_s: u64) {
        let previous = self.window_s.swap(window_s, Ordering::AcqRel);
        self.bucket_ns.store(bucket_ns(window_s), Ordering::Release);
        if previous != window_s {
            // Slots were filled with another period: start the window afresh.
            for (_, series) in self.capabilities.sorted().into_iter().chain(self.kinds.sorted()) {
                series.clear_window();
            }
        }
    }

    pub(crate) fn set_max_series(&self, max: usize) {
        self.max_series.store(max, Ordering::Release);
    }

    pub(crate) fn window_s(&self) -> u64 {
        self.window_s.load(Ordering::Acquire)
    }

    pub(crate) fn host(&self) -> Option<HostHandle> {
        self.host.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records one operation. Quick and lock-light: see the crate docs.
    #[inline]
    pub(crate) fn observe(&self, op: &Operation<'_>) {
        match op.kind {
            OperationKind::Dispatch => self.dispatch(op),
            OperationKind::ProviderFailure => self.provider_failure(op),
            OperationKind::TaskStart => {
                self.tasks_started.fetch_add(1, Ordering::Relaxed);
                self.in_flight.start(op);
            }
            OperationKind::TaskFinish => {
                self.in_flight.finish(op);
                self.task_finish(op);
            }
            OperationKind::AgentRegistration if op.outcome == OperationOutcome::Succeeded => {
                self.registrations.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    #[inline]
    fn dispatch(&self, op: &Operation<'_>) {
        let Some(capability) = op.capability.as_deref() else {
            return;
        };
        let bucket_ns = self.bucket_ns.load(Ordering::Relaxed);
        let record = |series: &Series| {
            series.update(|shard| {
                shard.count(Counter::Calls);
                match op.outcome {
                    OperationOutcome::Succeeded => {
                        shard.count(Counter::Succeeded);
                        if let Some(plugin) = op.plugin.as_deref() {
                            shard.plugin(plugin).served += 1;
                        }
                    }
                    OperationOutcome::Vetoed => {
                        shard.count(Counter::Vetoed);
                        if let Some(plugin) = op.plugin.as_deref() {
                            shard.plugin(plugin).vetoes += 1;
                        }
                    }
                    _ => shard.count(Counter::Failed),
                }
                if op.fallback {
                    shard.count(Counter::Fallbacks);
                }
                shard.record(op.duration_ns, op.at_ns, bucket_ns);
            })
        };
        if served(op) {
            let max = self.max_series.load(Ordering::Relaxed);
            self.capabilities.with(capability, max, record);
        } else {
            // Nothing served it: the name is whatever the caller sent (an unknown capability,
            // one disabled, or one an interceptor refused before any provider). It is counted
            // under its own series only when that exists already (some plugin served it or
            // failed at it), else under `UNSERVED`: junk names never take up series.
            self.capabilities.with_existing_or(capability, UNSERVED, record);
        }
    }

    fn provider_failure(&self, op: &Operation<'_>) {
        let (Some(capability), Some(plugin)) = (op.capability.as_deref(), op.plugin.as_deref()) else {
            return;
        };
        let max = self.max_series.load(Ordering::Relaxed);
        self.capabilities.with(capability, max, |series| {
            series.update(|shard| {
                let counts: &mut PluginCounts = shard.plugin(plugin);
                match op.outcome {
                    OperationOutcome::TimedOut => counts.timeouts += 1,
                    OperationOutcome::Panicked => counts.panics += 1,
                    _ => counts.errors += 1,
                }
            })
        });
    }

    fn task_finish(&self, op: &Operation<'_>) {
        let kind = op.task_kind.as_deref().unwrap_or(UNSPECIFIED_KIND);
        let bucket_ns = self.bucket_ns.load(Ordering::Relaxed);
        let max = self.max_series.load(Ordering::Relaxed);
        self.kinds.with(kind, max, |series| {
            series.update(|shard| {
                shard.count(Counter::Calls);
                shard.count(if op.outcome == OperationOutcome::Succeeded {
                    Counter::Succeeded
                } else {
                    Counter::Failed
                });
                shard.record(op.duration_ns, op.at_ns, bucket_ns);
            })
        });
    }

    /// The window's current period: from the host's clock once initialized, else the newest
    /// period any operation was recorded in.
    fn now_period(&self) -> u64 {
        let bucket_ns = self.bucket_ns.load(Ordering::Acquire);
        match self.host() {
            Some(host) => host.monotonic_ns() / bucket_ns,
            None => {
                let newest = self
                    .capabilities
                    .sorted()
                    .into_iter()
                    .chain(self.kinds.sorted())
                    .map(|(_, s)| s.newest_tag())
                    .max()
                    .unwrap_or(0);
                newest.saturating_sub(1)
            }
        }
    }

    /// Every series merged; with `histograms`, their latencies summed up too (each series
    /// merged once, in one scratch for all).
    pub(crate) fn snapshot(&self, histograms: bool) -> Snapshot {
        let now = if histograms { self.now_period() } else { 0 };
        let mut scratch = histograms.then(Scratch::default);
        let mut view = |names: &Names| -> Vec<(Box<str>, SeriesView)> {
            names
                .sorted()
                .into_iter()
                .map(|(name, s)| (name, s.view(scratch.as_mut(), now)))
                .collect()
        };
        Snapshot {
            capabilities: view(&self.capabilities),
            kinds: view(&self.kinds),
            tasks_started: self.tasks_started.load(Ordering::Relaxed),
            tasks_in_flight: self.in_flight.get(),
            registrations: self.registrations.load(Ordering::Relaxed),
            agents: self.host().map(|h| h.agent_loads()),
        }
    }

    fn summary(&self, scope: Scope, name: &str, view: &SeriesView) -> LatencySummary {
        LatencySummary {
            name: name.to_owned(),
            scope,
            all_time: Percentiles::of(view.all),
            window: WindowSummary {
                percentiles: Percentiles::of(view.window),
                window_s: self.window_s(),
            },
        }
    }

    /// Latency summaries: of one series (`Some((scope, name))`), else of every series,
    /// capabilities first, each scope by name.
    pub(crate) fn latencies(&self, only: Option<(Scope, &str)>) -> Vec<LatencySummary> {
        match only {
            Some((scope, name)) => {
                let names = match scope {
                    Scope::Capability => &self.capabilities,
                    Scope::Kind => &self.kinds,
                };
                let now = self.now_period();
                names
                    .get(name)
                    .map(|s| self.summary(scope, name, &s.view(Some(&mut Scratch::default()), now)))
                    .into_iter()
                    .collect()
            }
            None => {
                let snapshot = self.snapshot(true);
                let caps = snapshot
                    .capabilities
                    .iter()
                    .map(|(n, v)| self.summary(Scope::Capability, n, v));
                let kinds = snapshot.kinds.iter().map(|(n, v)| self.summary(Scope::Kind, n, v));
                caps.chain(kinds).collect()
            }
        }
    }

    /// The `real_time_monitoring` JSON answer.
    pub(crate) fn monitoring_json(&self) -> Value {
        let snapshot = self.snapshot(true);
        let mut agents = Map::new();
        if let Some(loads) = &snapshot.agents {
            let fleet = Fleet::of(loads);
            agents.insert("total".into(), json!(loads.len()));
            for (status, n) in fleet.by_status {
                agents.insert(status.as_str().into(), json!(n));
            }
            agents.insert("load".into(), json!(fleet.load));
            agents.insert("capacity".into(), json!(fleet.capacity));
        }
        agents.insert("registrations".into(), json!(snapshot.registrations));

        let sum = |c: Counter| -> u64 { snapshot.capabilities.iter().map(|(_, v)| v.get(c)).sum() };
        let dispatches = json!({
            "total": sum(Counter::Calls),
            "succeeded": sum(Counter::Succeeded),
            "failed": sum(Counter::Failed),
            "vetoed": sum(Counter::Vetoed),
            "fallbacks": sum(Counter::Fallbacks),
        });
        let capabilities: Map<String, Value> = snapshot
            .capabilities
            .iter()
            .map(|(name, v)| {
                let failures = |f: fn(&PluginCounts) -> u64| v.plugins.iter().map(f).sum::<u64>();
                let all = Percentiles::of(v.all);
                let window = Percentiles::of(v.window);
                (
                    name.to_string(),
                    json!({
                        "calls": v.get(Counter::Calls),
                        "succeeded": v.get(Counter::Succeeded),
                        "errors": v.get(Counter::Failed),
                        "vetoed": v.get(Counter::Vetoed),
                        "fallbacks": v.get(Counter::Fallbacks),
                        "provider_errors": failures(|p| p.errors),
                        "timeouts": failures(|p| p.timeouts),
                        "panics": failures(|p| p.panics),
                        "p50_ms": all.p50_ms,
                        "p99_ms": all.p99_ms,
                        "max_ms": all.max_ms,
                        "window_calls": window.count,
                        "window_p99_ms": window.p99_ms,
                    }),
                )
            })
            .collect();
        let plugins: Map<String, Value> = snapshot
            .plugins()
            .into_iter()
            .map(|(name, t)| {
                (
                    name.to_owned(),
                    json!({
                        "served": t.served,
                        "failures": t.errors + t.timeouts + t.panics,
                        "errors": t.errors,
                        "timeouts": t.timeouts,
                        "panics": t.panics,
                        "vetoes": t.vetoes,
                    }),
                )
            })
            .collect();
        let finished = snapshot.tasks_finished();
        let succeeded: u64 = snapshot.kinds.iter().map(|(_, v)| v.get(Counter::Succeeded)).sum();
        let kinds: Map<String, Value> = snapshot
            .kinds
            .iter()
            .map(|(name, v)| {
                (
                    name.to_string(),
                    json!({"finished": v.get(Counter::Calls), "failed": v.get(Counter::Failed)}),
                )
            })
            .collect();
        json!({
            "format": "json",
            "agents": agents,
            "dispatches": dispatches,
            "capabilities": capabilities,
            "plugins": plugins,
            "tasks": {
                "started": snapshot.tasks_started,
                "finished": finished,
                "succeeded": succeeded,
                "failed": finished - succeeded,
                "in_flight": snapshot.tasks_in_flight,
                "kinds": kinds,
            },
            "window_s": self.window_s(),
        })
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn prometheus_text(&self) -> String {
        exposition::encode(&self.snapshot(false))
    }
}

/// A handle on a [`PerformanceMonitoringPlugin`](crate::PerformanceMonitoringPlugin)'s
/// figures, for the embedding application: take it before the plugin is moved into the
/// orchestrator's builder, and read it from anywhere (a `/metrics` handler, a test) without a
/// JSON round trip through dispatch. Cheap to clone; every clone reads the same figures.
///
/// ```
/// use plugin_performance::PerformanceMonitoringPlugin;
/// let plugin = PerformanceMonitoringPlugin::default();
/// let metrics = plugin.handle();
/// // ... Orchestrator::builder().plugin(plugin) ...
/// let text = metrics.prometheus_text();
/// assert!(text.ends_with("# EOF\n"));
/// ```
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    pub(crate) metrics: Arc<Metrics>,
}

impl MetricsHandle {
    /// The OpenMetrics text exposition (serve it with [`CONTENT_TYPE`](crate::CONTENT_TYPE)).
    /// Agent gauges are included once the plugin is initialized (they are read from the host).
    pub fn prometheus_text(&self) -> String {
        self.metrics.prometheus_text()
    }

    /// What `real_time_monitoring` answers with `{"format": "json"}`.
    pub fn monitoring_json(&self) -> Value {
        self.metrics.monitoring_json()
    }

    /// The latency figures of one capability or task kind; `None` when it was never seen.
    pub fn latency(&self, scope: Scope, name: &str) -> Option<LatencySummary> {
        self.metrics.latencies(Some((scope, name))).into_iter().next()
    }

    /// The latency figures of every capability (by name), then every task kind (by name).
    pub fn latencies(&self) -> Vec<LatencySummary> {
        self.metrics.latencies(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_nothing_are_null() {
        let none = Percentiles::of(None);
        assert_eq!((none.count, none.p50_ms, none.mean_ms), (0, None, None));
        let one = Percentiles::of(Some(Summary {
            len: 1,
            quantiles: [1_000_000; 4],
            max: 1_000_000,
            mean: 1_000_000.0,
        }));
        assert_eq!(
            (one.count, one.p999_ms, one.max_ms, one.mean_ms),
            (1, Some(1.0), Some(1.0), Some(1.0))
        );
    }
}
