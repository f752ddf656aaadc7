//! The Prometheus exposition: a fresh `prometheus-client` registry built from a snapshot of
//! the plugin's figures, encoded as OpenMetrics text.
//!
//! The figures live in the plugin's own shards (see the `series` module), so the registry is
//! made at scrape time: counters with `inc_by`, gauges with `set`, and the latency histograms
//! through [`EncodeMetric`] on a small type of ours, which hands the exact bucket counts the
//! observers keep to the encoder (`prometheus-client`'s own `Histogram` can only be fed one
//! observation at a time).

use crate::metrics::{Fleet, Snapshot};
use crate::series::{BUCKET_BOUNDS_NS, Counter as SeriesCounter, SeriesView};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;

/// The content type of the exposition text (OpenMetrics), for the HTTP answer to a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric name.
pub const METRIC_PREFIX: &str = "orchestrator";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabels {
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    capability: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    capability: String,
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    capability: String,
    plugin: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOutcomeLabels {
    kind: String,
    outcome: String,
}

/// Histograms by label set, from counts already bucketed.
#[derive(Debug)]
struct Histograms<L> {
    rows: Vec<(L, HistogramRow)>,
}

#[derive(Debug)]
struct HistogramRow {
    sum_s: f64,
    count: u64,
    /// (upper bound in seconds, count in that bucket alone), the last bound `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl HistogramRow {
    fn of(view: &SeriesView) -> Self {
        let buckets = BUCKET_BOUNDS_NS
            .iter()
            .map(|ns| *ns as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY))
            .zip(view.buckets)
            .collect();
        Self {
            sum_s: view.sum_ns as f64 / 1e9,
            count: view.buckets.iter().sum(),
            buckets,
        }
    }
}

impl<L: EncodeLabelSet + fmt::Debug + Send + Sync + 'static> EncodeMetric for Histograms<L> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        for (labels, row) in &self.rows {
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(row.sum_s, row.count, &row.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// Encodes `snapshot` as OpenMetrics text (ending `# EOF`).
pub(crate) fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix(METRIC_PREFIX);

    if let Some(agents) = &snapshot.agents {
        let fleet = Fleet::of(agents);
        let by_status = Family::<StatusLabels, Gauge>::default();
        for (status, n) in fleet.by_status {
            by_status
                .get_or_create(&StatusLabels {
                    status: status.as_str().to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        registry.register("agents", "Registered agents by status", by_status);
        registry.register(
            "agent_load",
            "Tasks running on agents that are not offline",
            gauge(fleet.load),
        );
        registry.register(
            "agent_capacity",
            "Tasks the agents that are not offline can run at once",
            gauge(fleet.capacity),
        );
    }
    registry.register(
        "agent_registrations",
        "Agents registered since the plugin started",
        counter(snapshot.registrations),
    );

    let dispatches = Family::<OutcomeLabels, Counter>::default();
    let fallbacks = Family::<CapabilityLabels, Counter>::default();
    let served = Family::<PluginLabels, Counter>::default();
    let vetoes = Family::<PluginLabels, Counter>::default();
    let failures = Family::<FailureLabels, Counter>::default();
    let mut durations = Histograms { rows: Vec::new() };
    for (name, view) in &snapshot.capabilities {
        let capability = name.to_string();
        for (outcome, c) in [
            ("succeeded", SeriesCounter::Succeeded),
            ("failed", SeriesCounter::Failed),
            ("vetoed", SeriesCounter::Vetoed),
        ] {
            dispatches
                .get_or_create(&OutcomeLabels {
                    capability: capability.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc_by(view.get(c));
        }
        fallbacks
            .get_or_create(&CapabilityLabels {
                capability: capability.clone(),
            })
            .inc_by(view.get(SeriesCounter::Fallbacks));
        for p in &view.plugins {
            let labels = PluginLabels {
                capability: capability.clone(),
                plugin: p.name.to_string(),
            };
            if p.served > 0 {
                served.get_or_create(&labels).inc_by(p.served);
            }
            if p.vetoes > 0 {
                vetoes.get_or_create(&labels).inc_by(p.vetoes);
            }
            for (reason, n) in [("error", p.errors), ("timeout", p.timeouts), ("panic", p.panics)] {
                if n > 0 {
                    failures
                        .get_or_create(&FailureLabels {
                            capability: capability.clone(),
                            plugin: p.name.to_string(),
                            reason: reason.to_owned(),
                        })
                        .inc_by(n);
                }
            }
        }
        durations
            .rows
            .push((CapabilityLabels { capability }, HistogramRow::of(view)));
    }
    registry.register(
        "dispatches",
        "Capability dispatches by outcome (succeeded: answered; failed: an error came back; vetoed: refused by an interceptor)",
        dispatches,
    );
    registry.register(
        "dispatch_fallbacks",
        "Capability dispatches answered by a fallback (a later provider or the legacy path)",
        fallbacks,
    );
    registry.register_with_unit(
        "dispatch_duration",
        "Capability dispatch latency, all outcomes",
        Unit::Seconds,
        durations,
    );
    registry.register(
        "plugin_served",
        "Dispatches answered, by capability and plugin (legacy: the legacy path)",
        served,
    );
    registry.register(
        "plugin_vetoes",
        "Dispatches refused by an interceptor, by capability and plugin",
        vetoes,
    );
    registry.register(
        "provider_failures",
        "Provider calls that failed and moved the dispatch on, by capability, plugin and reason",
        failures,
    );

    let finished = Family::<KindOutcomeLabels, Counter>::default();
    let mut task_durations = Histograms { rows: Vec::new() };
    for (name, view) in &snapshot.kinds {
        for (outcome, c) in [
            ("succeeded", SeriesCounter::Succeeded),
            ("failed", SeriesCounter::Failed),
        ] {
            finished
                .get_or_create(&KindOutcomeLabels {
                    kind: name.to_string(),
                    outcome: outcome.to_owned(),
                })
                .inc_by(view.get(c));
        }
        task_durations
            .rows
            .push((KindLabels { kind: name.to_string() }, HistogramRow::of(view)));
    }
    registry.register("tasks_started", "Agent tasks started", counter(snapshot.tasks_started));
    registry.register("tasks_finished", "Agent tasks finished, by kind and outcome", finished);
    registry.register(
        "tasks_in_flight",
        "Agent tasks started and not finished",
        gauge(snapshot.tasks_in_flight),
    );
    registry.register_with_unit(
        "task_duration",
        "Agent task latency by kind, all outcomes",
        Unit::Seconds,
        task_durations,
    );

    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => text,
        // Writing to a String does not fail, and neither do these metrics: unreachable in
        // practice, and still a valid (empty) exposition.
        Err(fmt::Error) => "# EOF\n".to_owned(),
    }
}
