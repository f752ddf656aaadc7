//! `PerformanceMonitoringPlugin`: live counters and gauges of the orchestrator with a
//! Prometheus (OpenMetrics) exposition, latency percentiles from HDR histograms over all time
//! and over a sliding window, and Kubernetes-HPA-style scaling recommendations that do not
//! flap. For applications that embed the orchestrator (statically, or as a dynamic library
//! built from this crate) and want to watch it, scrape it or scale its fleet.
//!
//! # How it hears the orchestrator
//!
//! The plugin observes operations inline ([`plugin_api::operation`]): its
//! [`interests`](OrchestrationPlugin::interests) are [`OBSERVED`] (dispatches, provider
//! failures, task starts and finishes, agent registrations; it intercepts nothing), and the
//! host calls [`observe`](OrchestrationPlugin::observe) on the caller's thread after each such
//! operation, with its outcome, its duration and its time on the host's monotonic clock. Queries
//! to this plugin are dispatches too: each is counted once it has answered.
//!
//! `observe` is built to cost well under 100 ns on a capability seen before (about 50 ns on one
//! thread, 30 ns per operation with two threads recording the same capability, on the
//! development machine: `cargo bench -p plugin-performance --bench performance`), and never to
//! wait long:
//! - figures are kept per **series** (a capability, or a task kind), found by name in a
//!   copy-on-write map read without a lock (`arc-swap`; a new name copies the map, under a
//!   lock only writers take);
//! - each series is **sharded** (the machine's parallelism rounded up to a power of two, 2 to
//!   4 shards); a thread records into the shard its thread index picks, under that shard's
//!   own mutex, so concurrent observers rarely meet. One record is one uncontended lock, a few
//!   increments and three histogram counts (all time, the window's slot, the window's sum).
//!   Four shards are enough: a record holds its lock for tens of nanoseconds, and more than
//!   four threads recording one capability (or task kind) at the same moment, steadily, is
//!   rare; more shards would cost memory and read time;
//! - readers lock the shards one at a time, and under each lock only copy its counters and add
//!   its histograms' counts into a scratch of their own (one pass over each array); percentiles
//!   are computed afterwards with no lock held: a scrape never stops observers for longer than
//!   a copy of one shard's counts.
//!
//! At most `max_series` capabilities and as many task kinds are kept by name (a name longer
//! than 128 bytes never is); the rest are counted together under `"(other)"`, so that callers
//! naming endless capabilities cannot grow memory without bound. A capability gets a series
//! only once a plugin (or the legacy path) has served it or a provider of it has failed: a
//! dispatch nothing served (an unknown or disabled capability, a veto before any provider, an
//! invalid request before the first success) is counted under its capability's series when
//! there is one, else under [`UNSERVED`] (`"(unserved)"`), so that junk names cannot use up the
//! names before the real capabilities are first called.
//!
//! **Latencies** are recorded in **nanoseconds** into histograms with the HDR layout at 2
//! significant figures (`hdrhistogram`'s, in plain arrays): all time and in the sliding
//! window, a percentile or max is the highest value of its bucket, at or above the latency
//! recorded and within 1% of it (the usual precision for latency objectives); means are exact.
//! Latencies above one hour are counted as one hour in the histograms (they stay exact in the
//! sums and means). Histograms grow with the largest latency seen: a used shard of a series
//! whose worst latency is 50 ms holds about 100 KB (20 KB all time, 20 KB for the window's
//! running sum, 10 KB per window slot in use; 180 KB at most, for latencies up to an hour), so
//! with 4 shards a series holds at most about 400 KB at 50 ms (720 KB at an hour), and a shard
//! no thread has used holds none.
//!
//! The **sliding window** is the last `window_s` seconds (default 60) in six slots of
//! `window_s / 6` each, by the operations' `at_ns` (the host's monotonic clock, so a test on
//! `ManualClock` moves it by hand): a slot is reset when a turn later it is reused, and a
//! reader merges the current slot and the five before it. An operation therefore leaves the
//! window between 5/6 x `window_s` and `window_s` after it ended.
//!
//! # Capabilities
//!
//! **`real_time_monitoring`**: the live figures.
//! - `{"format"?: "json" (default)}` ->
//!   ```text
//!   {"format": "json",
//!    "agents": {"total", "active", "busy", "sleeping", "offline",      (now, from the host)
//!               "load", "capacity",            (of the agents not offline)
//!               "registrations"},              (observed since the plugin started)
//!    "dispatches": {"total", "succeeded", "failed", "vetoed", "fallbacks"},
//!    "capabilities": {name: {"calls", "succeeded", "errors", "vetoed", "fallbacks",
//!                            "provider_errors", "timeouts", "panics",
//!                            "p50_ms", "p99_ms", "max_ms", "window_calls", "window_p99_ms"}},
//!    "plugins": {name: {"served", "failures", "errors", "timeouts", "panics", "vetoes"}},
//!    "tasks": {"started", "finished", "succeeded", "failed", "in_flight",
//!              "kinds": {kind: {"finished", "failed"}}},
//!    "window_s"}
//!   ```
//!   A dispatch *succeeded* when a response came back (the host does not show observers the
//!   response's own `success` flag: a legacy answer with `success: false` counts here), *failed*
//!   when an error did (an invalid request, every provider failing, an unknown or disabled
//!   capability), *vetoed* when an interceptor refused it; *fallbacks* counts those a later
//!   provider or the legacy path answered. Per plugin (`"legacy"` for the legacy path):
//!   *served* dispatches it answered, and *errors*, *timeouts* and *panics* of calls to it that
//!   moved a dispatch on (*failures* is their sum); *vetoes* it issued. Per capability,
//!   *provider_errors*, *timeouts* and *panics* sum those over its providers. Latencies are
//!   `null` while a series is empty. `"(unserved)"` holds the dispatches nothing served whose
//!   capability has no series (see above). *in_flight* is the tasks whose start was observed
//!   and whose finish was not (each finish is matched to its start, so a finish observed
//!   without its start, from a task already running when the plugin started observing, does
//!   not throw it off); it need not equal *started* - *finished*.
//! - `{"format": "prometheus"}` -> `{"format": "prometheus", "content_type", "text"}`: the
//!   OpenMetrics text exposition, made with `prometheus-client` (see below).
//!
//! **`task_performance`**: latency percentiles.
//! - `{"capability"?: string}` or `{"kind"?: string}` (neither: every series) ->
//!   `{"entries": [{"name", "scope": "capability" | "kind", "count", "p50_ms", "p90_ms",
//!   "p99_ms", "p999_ms", "max_ms", "mean_ms", "window": {"count", "p50_ms", "p90_ms",
//!   "p99_ms", "p999_ms", "max_ms", "mean_ms", "window_s"}}], "window_s"}`. A capability's
//!   series is its dispatches (every outcome); a kind's is its finished tasks, by the task
//!   data's `kind` (`"unspecified"` when it has none). A name never seen gives no entry (not an
//!   error). Entries list capabilities first, each scope by name.
//!
//! **`auto_scaling`**: how many replicas the fleet should have.
//! - `{"target_utilisation"?: number in (0, 1] (default: configured), "current_replicas"?:
//!   integer (default: the agents not offline), "queue_depth"?: integer (default 0),
//!   "utilisation"?: number >= 0 (default: measured), "min_replicas"?: integer >= 1,
//!   "max_replicas"?: integer >= min_replicas (defaults: configured)}` ->
//!   `{"current", "desired", "action": "scale_up" | "scale_down" | "hold", "rule": "tolerance"
//!   | "ratio" | "stabilisation" | "min_replicas" | "max_replicas" | "cooldown", "reason",
//!   "utilisation", "unstabilised", "target_utilisation", "min_replicas", "max_replicas",
//!   "demand": {"in_flight", "queue_depth", "capacity"}, "measured": bool}`.
//!
//!   The utilisation, unless given, is measured from the fleet at the time of the call:
//!   `(tasks running on agents not offline + queue_depth) / capacity of those agents` (above 1
//!   when work queues; `null` in the answer when there is demand and no capacity at all).
//!   The decision is Kubernetes' HPA algorithm (see [`Autoscaler`]): `ceil(current x
//!   utilisation / target)` unless within `tolerance` of the target; a scale-down only to the
//!   highest recommendation of the last `scale_down_stabilisation_s`; no change within
//!   `cooldown_s` of the last; within `min_replicas..=max_replicas`. `reason` says which rule
//!   decided, with the figures, e.g. `"utilisation 0.93 over target 0.70 by more than the 10%
//!   tolerance: 4 -> 6"`, `"scale-down held by stabilisation window: highest recommendation in
//!   the last 300 s is 5 (now 3)"`, `"cooldown: last change 12 s ago, cooldown 60 s (wanted
//!   6)"`, `"capped at max_replicas 10 (wanted 12)"`. Each call is one evaluation: its
//!   recommendation is remembered for the stabilisation window, and a `scale_up` or
//!   `scale_down` answer counts as a change made (for the cooldown). Times are the host's
//!   monotonic clock.
//!
//! Malformed requests (data that is not an object, an unknown or mistyped field, an unknown
//! `format`, both `capability` and `kind`, a target utilisation outside `(0, 1]`, a replica
//! count that is not a non-negative integer, bounds the wrong way round) and capabilities this
//! plugin does not serve are refused with `PluginError::invalid_request`, saying what was
//! expected. `null` data reads as `{}`.
//!
//! # Prometheus
//!
//! The exposition is built at scrape time from a snapshot of the figures: a
//! `prometheus_client::registry::Registry` with prefix [`METRIC_PREFIX`], counters and gauges
//! in `Family`s, and the latency histograms encoded from the exact per-bucket counts the
//! observers keep (bounds 1 us to 10 s, seconds as the unit), then
//! `prometheus_client::encoding::text::encode`. The metrics:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `orchestrator_agents` | gauge | `status` |
//! | `orchestrator_agent_load`, `orchestrator_agent_capacity` | gauge | |
//! | `orchestrator_agent_registrations_total` | counter | |
//! | `orchestrator_dispatches_total` | counter | `capability`, `outcome` (succeeded, failed, vetoed) |
//! | `orchestrator_dispatch_fallbacks_total` | counter | `capability` |
//! | `orchestrator_dispatch_duration_seconds` | histogram | `capability` |
//! | `orchestrator_plugin_served_total`, `orchestrator_plugin_vetoes_total` | counter | `capability`, `plugin` |
//! | `orchestrator_provider_failures_total` | counter | `capability`, `plugin`, `reason` (error, timeout, panic) |
//! | `orchestrator_tasks_started_total` | counter | |
//! | `orchestrator_tasks_finished_total` | counter | `kind`, `outcome` (succeeded, failed) |
//! | `orchestrator_tasks_in_flight` | gauge | |
//! | `orchestrator_task_duration_seconds` | histogram | `kind` |
//!
//! The agent gauges need the host, so they appear once the plugin is initialized.
//!
//! To serve `/metrics` from the embedding application, take a [`MetricsHandle`] before the
//! plugin is moved into the builder and answer scrapes with
//! [`MetricsHandle::prometheus_text`] and the content type [`CONTENT_TYPE`]
//! (`application/openmetrics-text; version=1.0.0; charset=utf-8`: the text is OpenMetrics,
//! which Prometheus scrapes natively). With any HTTP server; here with the standard library
//! alone:
//!
//! ```no_run
//! use plugin_performance::{CONTENT_TYPE, MetricsHandle, PerformanceMonitoringPlugin};
//! use std::io::{Read, Write};
//!
//! fn serve_metrics(metrics: MetricsHandle, addr: &str) -> std::io::Result<()> {
//!     let listener = std::net::TcpListener::bind(addr)?;
//!     for stream in listener.incoming() {
//!         let mut stream = stream?;
//!         let mut request = [0u8; 1024];
//!         let _ = stream.read(&mut request)?; // one GET /metrics; a real server routes
//!         let body = metrics.prometheus_text();
//!         write!(
//!             stream,
//!             "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
//!             body.len()
//!         )?;
//!     }
//!     Ok(())
//! }
//!
//! let plugin = PerformanceMonitoringPlugin::default();
//! let metrics = plugin.handle();
//! // Orchestrator::builder().plugin(plugin).build().await ...
//! std::thread::spawn(move || serve_metrics(metrics, "127.0.0.1:9464"));
//! ```
//!
//! A dynamically loaded copy of the plugin has no handle (it lives in the library): scrape
//! it through `real_time_monitoring` with `{"format": "prometheus"}` and serve `data.text`.
//!
//! # Configuration
//!
//! ```toml
//! [PerformanceMonitoringPlugin]
//! window_s = 60                     # the sliding window (1 to 86400)
//! target_utilisation = 0.7          # auto_scaling's target, in (0, 1]
//! tolerance = 0.1                   # no change within 10% of the target, in [0, 1)
//! scale_down_stabilisation_s = 300  # a scale-down waits for the highest recommendation of this long
//! scale_up_stabilisation_s = 0      # a scale-up waits for the lowest recommendation of this long
//! cooldown_s = 60                   # the least time between two changes
//! min_replicas = 1                  # at least 1
//! max_replicas = 100                # at least min_replicas
//! max_series = 256                  # capabilities (and task kinds) kept by name, each
//! ```
//!
//! Periods are at most 86400 s (one day). Unknown keys and values out of range are refused at
//! initialization, naming the key.
//!
//! # Without the orchestrator
//!
//! [`Autoscaler`] and [`ScalingPolicy`] are the pure core of `auto_scaling`: they take the time
//! as an argument and run in simulated time (the tests drive hours of noisy load through it).

mod exposition;
mod histogram;
mod inflight;
mod metrics;
mod names;
mod scaling;
mod series;

pub use exposition::{CONTENT_TYPE, METRIC_PREFIX};
pub use metrics::{
    DEFAULT_MAX_SERIES, DEFAULT_WINDOW_S, LatencySummary, MetricsHandle, Percentiles, Scope, UNSERVED,
    UNSPECIFIED_KIND, WindowSummary,
};
pub use scaling::{Autoscaler, MAX_PERIOD_S, Recommendation, ScalingAction, ScalingPolicy, ScalingRule};

use metrics::{Fleet, Metrics};
use plugin_api::fields::{self, Object};
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, RwLock};

/// The plugin's name.
pub const NAME: &str = "PerformanceMonitoringPlugin";

/// The capabilities it serves.
pub const CAPABILITIES: [&str; 3] = ["real_time_monitoring", "task_performance", "auto_scaling"];

/// The operations it observes: dispatches, provider failures, task starts and finishes, agent
/// registrations. It intercepts none.
pub const OBSERVED: Interests = Interests::observing(
    OperationSet::EMPTY
        .with(OperationKind::Dispatch)
        .with(OperationKind::ProviderFailure)
        .with(OperationKind::TaskStart)
        .with(OperationKind::TaskFinish)
        .with(OperationKind::AgentRegistration),
);

/// The longest sliding window, in seconds (one day).
const MAX_WINDOW_S: u64 = 86_400;

/// The most series kept by name, per scope.
const MAX_MAX_SERIES: usize = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    window_s: u64,
    target_utilisation: f64,
    tolerance: f64,
    scale_up_stabilisation_s: u64,
    scale_down_stabilisation_s: u64,
    cooldown_s: u64,
    min_replicas: u32,
    max_replicas: u32,
    max_series: usize,
}

impl Default for Config {
    fn default() -> Self {
        let p = ScalingPolicy::default();
        Self {
            window_s: DEFAULT_WINDOW_S,
            target_utilisation: p.target_utilisation,
            tolerance: p.tolerance,
            scale_up_stabilisation_s: p.scale_up_stabilisation_s,
            scale_down_stabilisation_s: p.scale_down_stabilisation_s,
            cooldown_s: p.cooldown_s,
            min_replicas: p.min_replicas,
            max_replicas: p.max_replicas,
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

impl Config {
    fn policy(&self) -> ScalingPolicy {
        ScalingPolicy {
            target_utilisation: self.target_utilisation,
            tolerance: self.tolerance,
            scale_up_stabilisation_s: self.scale_up_stabilisation_s,
            scale_down_stabilisation_s: self.scale_down_stabilisation_s,
            cooldown_s: self.cooldown_s,
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_WINDOW_S).contains(&self.window_s) {
            return Err(format!(
                "`window_s` must be from 1 to {MAX_WINDOW_S} (got {})",
                self.window_s
            ));
        }
        if !(1..=MAX_MAX_SERIES).contains(&self.max_series) {
            return Err(format!(
                "`max_series` must be from 1 to {MAX_MAX_SERIES} (got {})",
                self.max_series
            ));
        }
        self.policy().validate()
    }
}

/// Live counters and gauges, Prometheus exposition, latency percentiles and scaling
/// recommendations (see the crate docs). Its figures live behind an `Arc`: take a
/// [`handle`](Self::handle) before moving the plugin into the orchestrator to read them from
/// the application.
pub struct PerformanceMonitoringPlugin {
    metrics: Arc<Metrics>,
    config: RwLock<Option<Config>>,
    scaler: Mutex<Autoscaler>,
}

impl Default for PerformanceMonitoringPlugin {
    fn default() -> Self {
        Self {
            metrics: Arc::default(),
            config: RwLock::new(None),
            scaler: Mutex::new(Autoscaler::new()),
        }
    }
}

impl std::fmt::Debug for PerformanceMonitoringPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerformanceMonitoringPlugin").finish_non_exhaustive()
    }
}

const MONITORING_EXPECTED: &str = "{\"format\"?: \"json\" | \"prometheus\"}";
const PERFORMANCE_EXPECTED: &str = "{\"capability\"?: string} or {\"kind\"?: string} (neither: every series)";
const SCALING_EXPECTED: &str = "{\"target_utilisation\"?: number in (0, 1], \"current_replicas\"?: integer >= 0, \"queue_depth\"?: integer >= 0, \"utilisation\"?: number >= 0, \"min_replicas\"?: integer >= 1, \"max_replicas\"?: integer >= min_replicas}";

/// An optional finite number (absent or `null` reads as `None`).
fn opt_f64(obj: &Object, field: &str, expected: &str) -> Result<Option<f64>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| fields::mistyped(field, "a number", v, expected)),
    }
}

/// An optional integer from 0 to `u32::MAX`.
fn opt_u32(obj: &Object, field: &str, expected: &str) -> Result<Option<u32>, PluginError> {
    match fields::opt_u64(obj, field, expected)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            PluginError::invalid_request(format!(
                "`{field}` must be at most {} (got {n}); expected {expected}",
                u32::MAX
            ))
        }),
    }
}

impl PerformanceMonitoringPlugin {
    /// A plugin with no figures yet (the same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on this plugin's figures, still valid once the plugin is moved into the
    /// orchestrator. Cheap; take as many as needed.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// The OpenMetrics text exposition (see the crate docs), as
    /// [`MetricsHandle::prometheus_text`].
    pub fn prometheus_text(&self) -> String {
        self.metrics.prometheus_text()
    }

    fn config(&self) -> Result<Config, PluginError> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    fn real_time_monitoring(&self, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = fields::object(data, &empty, MONITORING_EXPECTED)?;
        fields::only(obj, &["format"], "real_time_monitoring", MONITORING_EXPECTED)?;
        match fields::opt_string(obj, "format", MONITORING_EXPECTED)? {
            None | Some("json") => Ok(self.metrics.monitoring_json()),
            Some("prometheus") => Ok(json!({
                "format": "prometheus",
                "content_type": CONTENT_TYPE,
                "text": self.metrics.prometheus_text(),
            })),
            Some(other) => Err(PluginError::invalid_request(format!(
                "unknown format `{other}`: expected \"json\" or \"prometheus\"; expected {MONITORING_EXPECTED}"
            ))),
        }
    }

    fn task_performance(&self, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = fields::object(data, &empty, PERFORMANCE_EXPECTED)?;
        fields::only(obj, &["capability", "kind"], "task_performance", PERFORMANCE_EXPECTED)?;
        let capability = fields::opt_string(obj, "capability", PERFORMANCE_EXPECTED)?;
        let kind = fields::opt_string(obj, "kind", PERFORMANCE_EXPECTED)?;
        let only = match (capability, kind) {
            (Some(_), Some(_)) => {
                return Err(PluginError::invalid_request(format!(
                    "give `capability` or `kind`, not both; expected {PERFORMANCE_EXPECTED}"
                )));
            }
            (Some(name), None) => Some((Scope::Capability, name)),
            (None, Some(name)) => Some((Scope::Kind, name)),
            (None, None) => None,
        };
        Ok(json!({
            "entries": self.metrics.latencies(only),
            "window_s": self.metrics.window_s(),
        }))
    }

    fn auto_scaling(&self, config: &Config, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = fields::object(data, &empty, SCALING_EXPECTED)?;
        fields::only(
            obj,
            &[
                "target_utilisation",
                "current_replicas",
                "queue_depth",
                "utilisation",
                "min_replicas",
                "max_replicas",
            ],
            "auto_scaling",
            SCALING_EXPECTED,
        )?;
        let mut policy = config.policy();
        if let Some(t) = opt_f64(obj, "target_utilisation", SCALING_EXPECTED)? {
            policy.target_utilisation = t;
        }
        if let Some(n) = opt_u32(obj, "min_replicas", SCALING_EXPECTED)? {
            policy.min_replicas = n;
        }
        if let Some(n) = opt_u32(obj, "max_replicas", SCALING_EXPECTED)? {
            policy.max_replicas = n;
        }
        policy
            .validate()
            .map_err(|e| PluginError::invalid_request(format!("{e}; expected {SCALING_EXPECTED}")))?;
        let given_utilisation = opt_f64(obj, "utilisation", SCALING_EXPECTED)?;
        if given_utilisation.is_some_and(|u| u < 0.0) {
            return Err(PluginError::invalid_request(format!(
                "`utilisation` must not be negative; expected {SCALING_EXPECTED}"
            )));
        }
        let current = opt_u32(obj, "current_replicas", SCALING_EXPECTED)?;
        let queue_depth = fields::opt_u64(obj, "queue_depth", SCALING_EXPECTED)?.unwrap_or(0);

        let host = self
            .metrics
            .host()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))?;
        let fleet = Fleet::of(&host.agent_loads());
        let current = current.unwrap_or_else(|| u32::try_from(fleet.available()).unwrap_or(u32::MAX));
        let demand = fleet.load.saturating_add(queue_depth);
        let utilisation = given_utilisation.unwrap_or(if fleet.capacity > 0 {
            demand as f64 / fleet.capacity as f64
        } else if demand == 0 {
            0.0
        } else {
            f64::INFINITY
        });
        let now_ms = host.monotonic_ns() / 1_000_000;
        let r = self
            .scaler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recommend(&policy, now_ms, current, utilisation);
        Ok(json!({
            "current": r.current,
            "desired": r.desired,
            "action": r.action,
            "rule": r.rule,
            "reason": r.reason,
            "utilisation": r.utilisation.is_finite().then_some(r.utilisation),
            "unstabilised": r.unstabilised,
            "target_utilisation": policy.target_utilisation,
            "min_replicas": policy.min_replicas,
            "max_replicas": policy.max_replicas,
            "demand": {"in_flight": fleet.load, "queue_depth": queue_depth, "capacity": fleet.capacity},
            "measured": given_utilisation.is_none(),
        }))
    }
}

#[async_trait]
impl OrchestrationPlugin for PerformanceMonitoringPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: Config = host.config_as()?;
        config
            .validate()
            .map_err(|e| PluginError::new(format!("{NAME} configuration: {e}")))?;
        self.metrics.set_window(config.window_s);
        self.metrics.set_max_series(config.max_series);
        *self.metrics.host.write().unwrap_or_else(|p| p.into_inner()) = Some(host);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let data = &request.data;
        let answer = match request.capability.as_str() {
            "real_time_monitoring" => {
                self.config()?;
                self.real_time_monitoring(data)?
            }
            "task_performance" => {
                self.config()?;
                self.task_performance(data)?
            }
            "auto_scaling" => self.auto_scaling(&self.config()?, data)?,
            other => {
                return Err(PluginError::invalid_request(format!(
                    "{NAME} does not serve `{other}` (it serves {})",
                    CAPABILITIES.join(", ")
                )));
            }
        };
        Ok(IntegrationResponse::ok(answer))
    }

    async fn health_check(&self) -> HealthStatus {
        match self.config() {
            Ok(_) => HealthStatus::healthy(),
            Err(e) => HealthStatus::unhealthy(e.message),
        }
    }

    fn interests(&self) -> Interests {
        OBSERVED
    }

    #[inline]
    fn observe(&self, operation: &Operation<'_>) {
        self.metrics.observe(operation);
    }
}
