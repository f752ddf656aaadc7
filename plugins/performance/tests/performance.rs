//! PerformanceMonitoringPlugin through its public API and a real orchestrator: the counts match
//! what was done (JSON and Prometheus text, parsed back), percentiles match a known
//! distribution, the sliding window forgets on a hand-driven clock, auto-scaling follows the
//! fleet with its cooldown and stabilisation, garbage is refused, the conformance kit passes,
//! and the dynamic library hears dispatches through the stable ABI. Junk capability names
//! take up no series, and a task finish observed without its start leaves the in-flight gauge
//! right.

use orchestrator_core::{
    AgentConfig, AgentId, AgentStatus, DispatchError, ManualClock, Orchestrator, OrchestratorError,
};
use plugin_api::prelude::*;
use plugin_api::testkit::{self, CheckOptions};
use plugin_performance::{CONTENT_TYPE, NAME, PerformanceMonitoringPlugin, Scope, UNSERVED};
use prometheus_parse::{LineInfo, Scrape, Value as PromValue};
use serde_json::{Value, json};
use std::time::Duration;

/// Serves `echo`: answers, except `{"fail": true}` (an error: the dispatch moves on and, with
/// no other provider, fails), `{"bad": true}` (an invalid request: back to the caller),
/// `{"panic": true}` and `{"hang": true}` (outlasts the call timeout).
struct Flaky;

#[async_trait]
impl OrchestrationPlugin for Flaky {
    fn name(&self) -> &str {
        "Flaky"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["echo".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let flag = |k: &str| request.data.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("fail") {
            return Err(PluginError::new("asked to fail"));
        }
        if flag("bad") {
            return Err(PluginError::invalid_request("asked to refuse"));
        }
        if flag("panic") {
            panic!("asked to panic");
        }
        if flag("hang") {
            std::future::pending::<()>().await;
        }
        Ok(IntegrationResponse::ok(request.data))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

/// Serves `semantic_routing` and always fails: the legacy path answers instead.
struct BrokenRouter;

#[async_trait]
impl OrchestrationPlugin for BrokenRouter {
    fn name(&self) -> &str {
        "BrokenRouter"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["semantic_routing".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, _request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Err(PluginError::new("broken on purpose"))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    let response = orch
        .execute(IntegrationRequest::new(capability, data.clone()))
        .await
        .unwrap_or_else(|e| panic!("{capability} {data}: {e}"));
    assert!(response.success, "{response:?}");
    response.data
}

async fn refused(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match orch.execute(IntegrationRequest::new(capability, data.clone())).await {
        Err(OrchestratorError::Dispatch(DispatchError::InvalidRequest { message, .. })) => message,
        other => panic!("{capability} {data}: expected an invalid-request error, got {other:?}"),
    }
}

async fn register(orch: &Orchestrator, ids: &[&str], capacity: u32) {
    for id in ids {
        orch.register_agent(AgentConfig::new(*id).with_id(*id).with_capacity(capacity))
            .await
            .expect("registers");
    }
}

/// Every line of an exposition is a comment or a sample, and the text ends with `# EOF`.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in text.lines() {
        let ok = line.starts_with('#') || matches!(LineInfo::parse(line), LineInfo::Sample { .. });
        assert!(ok, "neither a comment nor a sample: {line:?}");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// The value of the (untyped, counter or gauge) sample `metric` with exactly `labels`.
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find(|s| s.labels.len() == labels.len())
        .map(|s| match s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// The cumulative bucket counts of histogram `metric` for `labels`, by upper bound.
fn histogram(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(PromValue::Histogram(buckets)) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("no histogram {metric} {labels:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_was_done_in_json_and_in_prometheus_text() {
    let plugin = PerformanceMonitoringPlugin::default();
    let metrics = plugin.handle();
    // Every failure is counted here, so no plugin may be quarantined part-way.
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_millis(200))
        .quarantine(orchestrator_core::QuarantinePolicy::disabled())
        .plugin(plugin)
        .plugin(Flaky)
        .plugin(BrokenRouter)
        .build()
        .await
        .expect("builds");
    register(&orch, &["a", "b", "c"], 4).await;
    orch.set_agent_status(&AgentId::from("c"), AgentStatus::Offline)
        .expect("sets");

    for i in 0..20 {
        call(&orch, "echo", json!({"i": i})).await;
    }
    for (flag, n) in [("fail", 5), ("bad", 3), ("panic", 2), ("hang", 1)] {
        for _ in 0..n {
            let out = orch.execute(IntegrationRequest::new("echo", json!({flag: true}))).await;
            assert!(out.is_err(), "{flag}: {out:?}");
        }
    }
    for _ in 0..4 {
        let routed = orch
            .execute(IntegrationRequest::new(
                "semantic_routing",
                json!({"task": {"description": "route me"}}),
            ))
            .await
            .expect("the legacy path answers");
        assert_eq!((routed.served_by.as_str(), routed.fallback), ("legacy", true));
    }
    for data in [
        json!({"kind": "build"}),
        json!({"kind": "build"}),
        json!({"kind": "build"}),
        json!({}),
        json!({"x": 1}),
    ] {
        orch.execute_agent_task(&AgentId::from("a"), data).await.expect("runs");
    }

    let m = call(&orch, "real_time_monitoring", json!({})).await;
    assert_eq!(m["format"], "json");
    assert_eq!(
        m["dispatches"],
        json!({"total": 35, "succeeded": 24, "failed": 11, "vetoed": 0, "fallbacks": 4}),
        "{m:#}"
    );
    let echo = &m["capabilities"]["echo"];
    for (key, n) in [
        ("calls", 31),
        ("succeeded", 20),
        ("errors", 11),
        ("fallbacks", 0),
        ("provider_errors", 5),
        ("timeouts", 1),
        ("panics", 2),
    ] {
        assert_eq!(echo[key], json!(n), "echo.{key}: {echo:#}");
    }
    let routing = &m["capabilities"]["semantic_routing"];
    assert_eq!(
        (
            routing["calls"].clone(),
            routing["fallbacks"].clone(),
            routing["provider_errors"].clone()
        ),
        (json!(4), json!(4), json!(4))
    );
    assert_eq!(
        m["plugins"]["Flaky"],
        json!({"served": 20, "failures": 8, "errors": 5, "timeouts": 1, "panics": 2, "vetoes": 0})
    );
    assert_eq!(m["plugins"]["legacy"]["served"], 4);
    assert_eq!(m["plugins"]["BrokenRouter"]["errors"], 4);
    assert_eq!(
        m["agents"],
        json!({"total": 3, "active": 2, "busy": 0, "sleeping": 0, "offline": 1, "load": 0, "capacity": 8, "registrations": 3})
    );
    assert_eq!(
        m["tasks"],
        json!({"started": 5, "finished": 5, "succeeded": 5, "failed": 0, "in_flight": 0,
               "kinds": {"build": {"finished": 3, "failed": 0}, "unspecified": {"finished": 2, "failed": 0}}})
    );
    // The hung call took the call timeout: the slowest echo is at least 200 ms.
    let max_ms = echo["max_ms"].as_f64().expect("a number");
    assert!((200.0..5_000.0).contains(&max_ms), "{max_ms}");

    // The same figures in the exposition (the JSON query above is now counted too).
    let p = call(&orch, "real_time_monitoring", json!({"format": "prometheus"})).await;
    assert_eq!(p["content_type"], CONTENT_TYPE);
    let text = p["text"].as_str().expect("text");
    let scrape = parse(text);
    // The handle reads the same figures, the prometheus query now counted too.
    let from_handle = parse(&metrics.prometheus_text());
    let dispatches = |cap: &str, outcome: &str| {
        sample(
            &scrape,
            "orchestrator_dispatches_total",
            &[("capability", cap), ("outcome", outcome)],
        )
    };
    assert_eq!(dispatches("echo", "succeeded"), Some(20.0));
    assert_eq!(dispatches("echo", "failed"), Some(11.0));
    assert_eq!(dispatches("echo", "vetoed"), Some(0.0));
    assert_eq!(dispatches("semantic_routing", "succeeded"), Some(4.0));
    assert_eq!(dispatches("real_time_monitoring", "succeeded"), Some(1.0));
    let handle_dispatches = |cap: &str| {
        sample(
            &from_handle,
            "orchestrator_dispatches_total",
            &[("capability", cap), ("outcome", "succeeded")],
        )
    };
    assert_eq!(handle_dispatches("real_time_monitoring"), Some(2.0));
    assert_eq!(handle_dispatches("echo"), Some(20.0));
    assert_eq!(
        sample(
            &scrape,
            "orchestrator_dispatch_fallbacks_total",
            &[("capability", "semantic_routing")]
        ),
        Some(4.0)
    );
    let failures = |plugin: &str, reason: &str| {
        sample(
            &scrape,
            "orchestrator_provider_failures_total",
            &[("capability", "echo"), ("plugin", plugin), ("reason", reason)],
        )
    };
    assert_eq!(failures("Flaky", "error"), Some(5.0));
    assert_eq!(failures("Flaky", "panic"), Some(2.0));
    assert_eq!(failures("Flaky", "timeout"), Some(1.0));
    assert_eq!(
        sample(
            &scrape,
            "orchestrator_plugin_served_total",
            &[("capability", "semantic_routing"), ("plugin", "legacy")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&scrape, "orchestrator_agents", &[("status", "active")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&scrape, "orchestrator_agents", &[("status", "offline")]),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "orchestrator_agent_capacity", &[]), Some(8.0));
    assert_eq!(
        sample(&scrape, "orchestrator_agent_registrations_total", &[]),
        Some(3.0)
    );
    assert_eq!(sample(&scrape, "orchestrator_tasks_started_total", &[]), Some(5.0));
    assert_eq!(sample(&scrape, "orchestrator_tasks_in_flight", &[]), Some(0.0));
    assert_eq!(
        sample(
            &scrape,
            "orchestrator_tasks_finished_total",
            &[("kind", "build"), ("outcome", "succeeded")]
        ),
        Some(3.0)
    );

    // The echo latency histogram: 31 calls, cumulative buckets, the hung call above 100 ms.
    let echo_count = sample(
        &scrape,
        "orchestrator_dispatch_duration_seconds_count",
        &[("capability", "echo")],
    );
    assert_eq!(echo_count, Some(31.0));
    let buckets = histogram(
        &scrape,
        "orchestrator_dispatch_duration_seconds",
        &[("capability", "echo")],
    );
    assert_eq!(buckets.len(), 17, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 31.0)));
    let at_100ms = buckets.iter().find(|(le, _)| *le == 0.1).map(|(_, n)| *n);
    assert!(
        at_100ms.is_some_and(|n| n <= 30.0),
        "the hung call (200 ms) is above the 100 ms bucket: {buckets:?}"
    );
    let sum = sample(
        &scrape,
        "orchestrator_dispatch_duration_seconds_sum",
        &[("capability", "echo")],
    )
    .expect("a sum");
    assert!((0.2..5.0).contains(&sum), "{sum}");
    let build = histogram(&scrape, "orchestrator_task_duration_seconds", &[("kind", "build")]);
    assert_eq!(build.last(), Some(&(f64::INFINITY, 3.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dispatches_are_all_counted() {
    let plugin = PerformanceMonitoringPlugin::default();
    let metrics = plugin.handle();
    let orch = Orchestrator::builder()
        .plugin(plugin)
        .plugin(Flaky)
        .build()
        .await
        .expect("builds");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let orch = orch.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    let data = json!({"t": t, "i": i, "fail": i % 10 == 0});
                    let _ = orch.execute(IntegrationRequest::new("echo", data)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("joins");
    }
    let m = metrics.monitoring_json();
    assert_eq!(m["capabilities"]["echo"]["calls"], 2_000);
    assert_eq!(m["capabilities"]["echo"]["errors"], 200);
    assert_eq!(m["plugins"]["Flaky"]["served"], 1_800);
    let latency = metrics.latency(Scope::Capability, "echo").expect("seen");
    assert_eq!(
        (latency.all_time.count, latency.window.percentiles.count),
        (2_000, 2_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_capability_names_do_not_crowd_out_real_capabilities() {
    let plugin = PerformanceMonitoringPlugin::default();
    let metrics = plugin.handle();
    let orch = Orchestrator::builder()
        .plugin(plugin)
        .plugin(Flaky)
        .build()
        .await
        .expect("builds");
    // 1,000 distinct names nothing serves, well past the 256 series kept by name.
    for i in 0..1_000 {
        let out = orch
            .execute(IntegrationRequest::new(format!("junk_{i}"), json!({})))
            .await;
        assert!(
            matches!(
                out,
                Err(OrchestratorError::Dispatch(DispatchError::UnknownCapability { .. }))
            ),
            "{out:?}"
        );
    }
    // A real capability, first called after them, still gets its own series.
    for i in 0..3 {
        call(&orch, "echo", json!({"i": i})).await;
    }
    let m = metrics.monitoring_json();
    let capabilities = m["capabilities"].as_object().expect("capabilities");
    let names: Vec<&str> = capabilities.keys().map(String::as_str).collect();
    assert_eq!(names, [UNSERVED, "echo"], "no junk name has a series");
    assert_eq!(m["capabilities"]["echo"]["calls"], 3, "{m:#}");
    assert_eq!(m["capabilities"]["echo"]["succeeded"], 3, "{m:#}");
    assert_eq!(m["capabilities"][UNSERVED]["calls"], 1_000, "{m:#}");
    assert_eq!(m["capabilities"][UNSERVED]["errors"], 1_000, "{m:#}");
    assert_eq!(m["dispatches"]["total"], 1_003, "every dispatch is still counted");

    let scrape = parse(&metrics.prometheus_text());
    let dispatches = |cap: &str, outcome: &str| {
        sample(
            &scrape,
            "orchestrator_dispatches_total",
            &[("capability", cap), ("outcome", outcome)],
        )
    };
    assert_eq!(dispatches("echo", "succeeded"), Some(3.0));
    assert_eq!(dispatches(UNSERVED, "failed"), Some(1_000.0));
    assert_eq!(dispatches("(other)", "succeeded"), None, "nothing over the limit");
    assert_eq!(dispatches("junk_0", "failed"), None);
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.get("capability").is_some_and(|c| c.starts_with("junk_")))
    );

    // A failure of a capability that has a series is counted there, not as unserved.
    let out = orch
        .execute(IntegrationRequest::new("echo", json!({"bad": true})))
        .await;
    assert!(out.is_err(), "{out:?}");
    let m = metrics.monitoring_json();
    assert_eq!(m["capabilities"]["echo"]["errors"], 1, "{m:#}");
    assert_eq!(m["capabilities"][UNSERVED]["calls"], 1_000, "{m:#}");
}

#[test]
fn vetoed_and_unserved_dispatches_take_up_no_series() {
    let plugin = PerformanceMonitoringPlugin::default();
    let handle = plugin.handle();
    // Vetoed before any provider (the vetoer is named) and failed with no provider: neither
    // makes a series, whatever the name.
    for i in 0..300 {
        let name = format!("junk_{i}");
        let vetoed = Operation::new(OperationKind::Dispatch, "c")
            .with_capability(name.as_str())
            .with_plugin("Policy")
            .with_outcome(OperationOutcome::Vetoed);
        plugin.observe(&vetoed);
        let failed = Operation::new(OperationKind::Dispatch, "c")
            .with_capability(name.as_str())
            .with_outcome(OperationOutcome::Failed)
            .with_error("unknown capability");
        plugin.observe(&failed);
    }
    plugin.observe(&dispatch_op("real", 1_000, 0));
    let m = handle.monitoring_json();
    let names: Vec<&str> = m["capabilities"]
        .as_object()
        .expect("capabilities")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, [UNSERVED, "real"], "{m:#}");
    assert_eq!(m["capabilities"][UNSERVED]["vetoed"], 300);
    assert_eq!(m["capabilities"][UNSERVED]["errors"], 300);
    // The vetoer's vetoes are still counted, under the unserved series.
    assert_eq!(m["plugins"]["Policy"]["vetoes"], 300, "{m:#}");
    // Once served, a capability's vetoes go to its own series.
    let vetoed = Operation::new(OperationKind::Dispatch, "c")
        .with_capability("real")
        .with_plugin("Policy")
        .with_outcome(OperationOutcome::Vetoed);
    plugin.observe(&vetoed);
    assert_eq!(handle.monitoring_json()["capabilities"]["real"]["vetoed"], 1);
}

#[test]
fn a_task_finish_observed_without_its_start_leaves_in_flight_right() {
    let plugin = PerformanceMonitoringPlugin::default();
    let handle = plugin.handle();
    let op = |kind: OperationKind, correlation: &'static str| {
        let op = Operation::new(kind, correlation)
            .with_agent("a")
            .with_task_kind("build");
        if kind == OperationKind::TaskFinish {
            op.with_outcome(OperationOutcome::Succeeded).with_duration_ns(1_000)
        } else {
            op
        }
    };
    let in_flight = || {
        let json = handle.monitoring_json()["tasks"]["in_flight"].clone();
        let scrape = parse(&handle.prometheus_text());
        let gauge = sample(&scrape, "orchestrator_tasks_in_flight", &[]);
        assert_eq!(json.as_f64(), gauge, "JSON and exposition agree");
        json
    };
    // A task that was running when the plugin started observing finishes: no start to match.
    plugin.observe(&op(OperationKind::TaskFinish, "before"));
    assert_eq!(in_flight(), 0);
    // A task starts afterwards: it is in flight (started - finished would say 0).
    plugin.observe(&op(OperationKind::TaskStart, "t1"));
    assert_eq!(in_flight(), 1);
    // Another unmatched finish while t1 runs does not take t1 out.
    plugin.observe(&op(OperationKind::TaskFinish, "before-2"));
    assert_eq!(in_flight(), 1);
    plugin.observe(&op(OperationKind::TaskStart, "t2"));
    assert_eq!(in_flight(), 2);
    // A cancelled task is reported finished (failed): it leaves the count.
    let cancelled = op(OperationKind::TaskFinish, "t2")
        .with_outcome(OperationOutcome::Failed)
        .with_error("cancelled: the caller stopped waiting before the task finished");
    plugin.observe(&cancelled);
    assert_eq!(in_flight(), 1);
    plugin.observe(&op(OperationKind::TaskFinish, "t1"));
    assert_eq!(in_flight(), 0);
    // Two tasks sharing a correlation id on one agent are both counted, and both leave.
    plugin.observe(&op(OperationKind::TaskStart, "shared"));
    plugin.observe(&op(OperationKind::TaskStart, "shared"));
    assert_eq!(in_flight(), 2);
    plugin.observe(&op(OperationKind::TaskFinish, "shared"));
    plugin.observe(&op(OperationKind::TaskFinish, "shared"));
    assert_eq!(in_flight(), 0);
    // Every finish still counts as finished for its kind.
    let tasks = &handle.monitoring_json()["tasks"];
    assert_eq!(
        (tasks["started"].clone(), tasks["finished"].clone()),
        (json!(4), json!(6))
    );
}

fn dispatch_op(capability: &str, duration_ns: u64, at_ns: u64) -> Operation<'_> {
    Operation::new(OperationKind::Dispatch, "c")
        .with_capability(capability)
        .with_plugin("P")
        .with_outcome(OperationOutcome::Succeeded)
        .with_duration_ns(duration_ns)
        .with_at_ns(at_ns)
}

#[test]
fn percentiles_match_a_known_distribution_within_hdr_precision() {
    let plugin = PerformanceMonitoringPlugin::default();
    // 1..=1000 ms, each once, in a scrambled order, from four threads (four shards).
    std::thread::scope(|s| {
        for part in 0..4u64 {
            let plugin = &plugin;
            s.spawn(move || {
                for i in 0..250u64 {
                    let ms = (i * 4 + part) * 397 % 1000 + 1;
                    plugin.observe(&dispatch_op("x", ms * 1_000_000, 0));
                    let finish = Operation::new(OperationKind::TaskFinish, "c")
                        .with_outcome(OperationOutcome::Succeeded)
                        .with_duration_ns(ms * 1_000_000);
                    plugin.observe(&finish);
                }
            });
        }
    });
    let latency = plugin.handle().latency(Scope::Capability, "x").expect("seen");
    let all = &latency.all_time;
    assert_eq!(all.count, 1000);
    let close = |got: Option<f64>, want: f64, precision: f64| {
        let got = got.expect("a value");
        assert!(
            got >= want && got <= want * (1.0 + precision),
            "{got} is not {want} within {precision}"
        );
    };
    // HDR reports the highest value equivalent to the one at the quantile: at or above it,
    // within the precision (2 significant figures, all time and over the window: 1%).
    close(all.p50_ms, 500.0, 0.01);
    close(all.p90_ms, 900.0, 0.01);
    close(all.p99_ms, 990.0, 0.01);
    close(all.p999_ms, 999.0, 0.01);
    close(all.max_ms, 1000.0, 0.01);
    // The mean is exact.
    let mean = all.mean_ms.expect("a mean");
    assert!((mean - 500.5).abs() < 1e-9, "{mean}");
    let window = &latency.window.percentiles;
    assert_eq!((window.count, latency.window.window_s), (1000, 60));
    close(window.p50_ms, 500.0, 0.01);
    close(window.p99_ms, 990.0, 0.01);
    close(window.max_ms, 1000.0, 0.01);
    // Tasks without a kind count as "unspecified".
    let tasks = plugin.handle().latency(Scope::Kind, "unspecified").expect("seen");
    close(tasks.all_time.p90_ms, 900.0, 0.01);
    assert!(plugin.handle().latency(Scope::Capability, "never").is_none());
}

#[test]
fn the_window_forgets_operations_fed_with_their_times() {
    let plugin = PerformanceMonitoringPlugin::default();
    let handle = plugin.handle();
    const S: u64 = 1_000_000_000;
    for _ in 0..10 {
        plugin.observe(&dispatch_op("x", 1_000, 5 * S));
    }
    let counts = || {
        let l = handle.latency(Scope::Capability, "x").expect("seen");
        (l.all_time.count, l.window.percentiles.count)
    };
    assert_eq!(counts(), (10, 10));
    // Without a host, "now" is the newest operation's time: one 2 minutes later moves it.
    plugin.observe(&dispatch_op("y", 1_000, 125 * S));
    assert_eq!(counts(), (10, 0));
}

async fn orchestrator_on(clock: &ManualClock, config: Value) -> Orchestrator {
    Orchestrator::builder()
        .clock(clock.clone())
        .plugin(PerformanceMonitoringPlugin::default())
        .configure(NAME, config)
        .plugin(Flaky)
        .build()
        .await
        .expect("builds")
}

fn entry(performance: &Value) -> &Value {
    let entries = performance["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{performance:#}");
    &entries[0]
}

#[tokio::test]
async fn the_sliding_window_forgets_on_the_hosts_clock() {
    let clock = ManualClock::new();
    let orch = orchestrator_on(&clock, json!({})).await;
    for i in 0..10 {
        call(&orch, "echo", json!({"i": i})).await;
    }
    let window = |p: &Value| (entry(p)["count"].clone(), entry(p)["window"]["count"].clone());
    let p = call(&orch, "task_performance", json!({"capability": "echo"})).await;
    assert_eq!(window(&p), (json!(10), json!(10)));
    assert_eq!(entry(&p)["scope"], "capability");
    assert_eq!(entry(&p)["window"]["window_s"], 60);

    clock.advance(Duration::from_secs(30));
    for i in 0..5 {
        call(&orch, "echo", json!({"i": i})).await;
    }
    let p = call(&orch, "task_performance", json!({"capability": "echo"})).await;
    assert_eq!(window(&p), (json!(15), json!(15)));

    // 65 s after the first ten: they left the window, the last five (35 s ago) did not.
    clock.advance(Duration::from_secs(35));
    let p = call(&orch, "task_performance", json!({"capability": "echo"})).await;
    assert_eq!(window(&p), (json!(15), json!(5)));
    clock.advance(Duration::from_secs(60));
    let p = call(&orch, "task_performance", json!({"capability": "echo"})).await;
    assert_eq!(window(&p), (json!(15), json!(0)));
    assert_eq!(
        entry(&p)["window"]["p50_ms"],
        Value::Null,
        "an empty window has no percentiles"
    );
    assert_eq!(
        entry(&p)["p50_ms"],
        json!(0.0),
        "the manual clock stood still during each call"
    );

    // The window's length is configurable.
    let clock = ManualClock::new();
    let orch = orchestrator_on(&clock, json!({"window_s": 12})).await;
    call(&orch, "echo", json!({})).await;
    clock.advance(Duration::from_secs(13));
    let p = call(&orch, "task_performance", json!({"capability": "echo"})).await;
    assert_eq!(window(&p), (json!(1), json!(0)));
    assert_eq!(entry(&p)["window"]["window_s"], 12);
}

#[tokio::test]
async fn task_performance_lists_capabilities_then_kinds_and_knows_no_unknown_name() {
    let clock = ManualClock::new();
    let orch = orchestrator_on(&clock, json!({})).await;
    register(&orch, &["a"], 2).await;
    call(&orch, "echo", json!({})).await;
    orch.execute_agent_task(&AgentId::from("a"), json!({"kind": "deploy"}))
        .await
        .expect("runs");
    let all = call(&orch, "task_performance", json!({})).await;
    let listed: Vec<(String, String)> = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["scope"].as_str().unwrap_or("").to_owned(),
                e["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("capability".to_owned(), "echo".to_owned()),
            ("kind".to_owned(), "deploy".to_owned())
        ]
    );
    let kind = call(&orch, "task_performance", json!({"kind": "deploy"})).await;
    assert_eq!(entry(&kind)["count"], 1);
    let unknown = call(&orch, "task_performance", json!({"capability": "nope"})).await;
    assert_eq!(unknown["entries"], json!([]));
}

#[tokio::test]
async fn auto_scaling_follows_the_fleet_with_cooldown_and_stabilisation() {
    let clock = ManualClock::new();
    let orch = orchestrator_on(&clock, json!({"max_replicas": 20})).await;
    register(&orch, &["a", "b", "c", "d", "e"], 2).await;
    orch.set_agent_status(&AgentId::from("e"), AgentStatus::Offline)
        .expect("sets");

    // 4 agents not offline, capacity 8; 7 queued: utilisation 0.875, 25% over 0.7.
    let r = call(&orch, "auto_scaling", json!({"queue_depth": 7})).await;
    assert_eq!(
        (
            r["current"].clone(),
            r["desired"].clone(),
            r["action"].clone(),
            r["rule"].clone()
        ),
        (json!(4), json!(5), json!("scale_up"), json!("ratio")),
        "{r:#}"
    );
    assert_eq!(
        r["reason"],
        "utilisation 0.88 over target 0.70 by more than the 10% tolerance: 4 -> 5"
    );
    assert_eq!(r["utilisation"], 0.875);
    assert_eq!(r["demand"], json!({"in_flight": 0, "queue_depth": 7, "capacity": 8}));
    assert_eq!(r["measured"], true);

    // More demand right away: the cooldown holds it.
    clock.advance(Duration::from_secs(12));
    let r = call(&orch, "auto_scaling", json!({"queue_depth": 10, "current_replicas": 5})).await;
    assert_eq!(
        (r["action"].clone(), r["rule"].clone()),
        (json!("hold"), json!("cooldown"))
    );
    assert_eq!(r["reason"], "cooldown: last change 12 s ago, cooldown 60 s (wanted 9)");

    // Demand gone: the scale-down waits for the 300 s stabilisation window.
    clock.advance(Duration::from_secs(60));
    let r = call(&orch, "auto_scaling", json!({"current_replicas": 5})).await;
    assert_eq!(
        (r["action"].clone(), r["rule"].clone()),
        (json!("hold"), json!("stabilisation"))
    );
    assert_eq!(
        r["reason"],
        "scale-down held by stabilisation window: highest recommendation in the last 300 s is 9 (now 0)"
    );
    clock.advance(Duration::from_secs(300));
    let r = call(&orch, "auto_scaling", json!({"current_replicas": 5})).await;
    assert_eq!(
        (r["desired"].clone(), r["action"].clone(), r["rule"].clone()),
        (json!(1), json!("scale_down"), json!("min_replicas"))
    );

    // Within the tolerance, and a request's own target and bounds.
    clock.advance(Duration::from_secs(600));
    let r = call(
        &orch,
        "auto_scaling",
        json!({"current_replicas": 4, "utilisation": 0.74}),
    )
    .await;
    assert_eq!(
        (r["action"].clone(), r["rule"].clone()),
        (json!("hold"), json!("tolerance"))
    );
    assert_eq!(r["measured"], false);
    let r = call(
        &orch,
        "auto_scaling",
        json!({"current_replicas": 4, "utilisation": 0.9, "target_utilisation": 0.3, "max_replicas": 6}),
    )
    .await;
    assert_eq!(
        (r["desired"].clone(), r["rule"].clone(), r["reason"].clone()),
        (
            json!(6),
            json!("max_replicas"),
            json!("capped at max_replicas 6 (wanted 12)")
        )
    );
}

#[tokio::test]
async fn garbage_is_refused_on_every_capability() {
    let clock = ManualClock::new();
    let orch = orchestrator_on(&clock, json!({})).await;
    let cases = [
        ("real_time_monitoring", json!(42), "must be a JSON object"),
        ("real_time_monitoring", json!(["prometheus"]), "must be a JSON object"),
        ("real_time_monitoring", json!({"format": "xml"}), "unknown format `xml`"),
        (
            "real_time_monitoring",
            json!({"format": 1}),
            "`format` must be a string",
        ),
        (
            "real_time_monitoring",
            json!({"formatt": "json"}),
            "unexpected field `formatt`",
        ),
        ("task_performance", json!("echo"), "must be a JSON object"),
        (
            "task_performance",
            json!({"capability": 1}),
            "`capability` must be a string",
        ),
        ("task_performance", json!({"kind": ""}), "`kind` must not be empty"),
        ("task_performance", json!({"capability": "a", "kind": "b"}), "not both"),
        ("task_performance", json!({"name": "a"}), "unexpected field `name`"),
        ("auto_scaling", json!(true), "must be a JSON object"),
        (
            "auto_scaling",
            json!({"target_utilisation": 0}),
            "`target_utilisation` must be above 0",
        ),
        (
            "auto_scaling",
            json!({"target_utilisation": 1.5}),
            "`target_utilisation` must be above 0",
        ),
        (
            "auto_scaling",
            json!({"target_utilisation": -0.5}),
            "`target_utilisation` must be above 0",
        ),
        (
            "auto_scaling",
            json!({"target_utilisation": "high"}),
            "`target_utilisation` must be a number",
        ),
        (
            "auto_scaling",
            json!({"current_replicas": 2.5}),
            "`current_replicas` must be a non-negative integer",
        ),
        (
            "auto_scaling",
            json!({"current_replicas": -1}),
            "`current_replicas` must be a non-negative integer",
        ),
        (
            "auto_scaling",
            json!({"current_replicas": "3"}),
            "`current_replicas` must be a non-negative integer",
        ),
        (
            "auto_scaling",
            json!({"current_replicas": 5_000_000_000u64}),
            "`current_replicas` must be at most",
        ),
        (
            "auto_scaling",
            json!({"queue_depth": -1}),
            "`queue_depth` must be a non-negative integer",
        ),
        (
            "auto_scaling",
            json!({"utilisation": -0.1}),
            "`utilisation` must not be negative",
        ),
        (
            "auto_scaling",
            json!({"min_replicas": 0}),
            "`min_replicas` must be at least 1",
        ),
        (
            "auto_scaling",
            json!({"min_replicas": 5, "max_replicas": 4}),
            "`max_replicas` (4) must be at least",
        ),
        ("auto_scaling", json!({"replicas": 4}), "unexpected field `replicas`"),
    ];
    for (capability, data, says) in cases {
        let message = refused(&orch, capability, data.clone()).await;
        assert!(message.contains(says), "{capability} {data}: {message}");
        assert!(message.contains("expected"), "{capability} {data}: {message}");
    }

    // A capability it does not serve, asked directly (the orchestrator would not route it).
    let plugin = PerformanceMonitoringPlugin::default();
    let e = plugin
        .process_request(IntegrationRequest::new("echo", json!({})))
        .await
        .expect_err("refused");
    assert!(e.is_invalid_request(), "{e:?}");
    assert!(e.message.contains("does not serve `echo`"), "{e}");
}

#[tokio::test]
async fn bad_configuration_is_refused_naming_the_key() {
    for (config, key) in [
        (json!({"window_s": 0}), "window_s"),
        (json!({"window_s": 100_000}), "window_s"),
        (json!({"target_utilisation": 0}), "target_utilisation"),
        (json!({"tolerance": 1}), "tolerance"),
        (json!({"cooldown_s": 100_000}), "cooldown_s"),
        (json!({"min_replicas": 3, "max_replicas": 2}), "max_replicas"),
        (json!({"max_series": 0}), "max_series"),
        (json!({"cooldown": 5}), "cooldown"),
        (json!({"min_replicas": -1}), "-1"),
    ] {
        let built = Orchestrator::builder()
            .plugin(PerformanceMonitoringPlugin::default())
            .configure(NAME, config.clone())
            .build()
            .await;
        let e = built.err().unwrap_or_else(|| panic!("{config} was accepted"));
        let text = e.to_string();
        assert!(text.contains(key) && text.contains(NAME), "{config}: {text}");
    }
}

#[test]
fn the_conformance_kit_passes() {
    testkit::block_on(testkit::check_plugin(
        &PerformanceMonitoringPlugin::default(),
        CheckOptions::default(),
    ))
    .assert_conformant();
    let config = json!({"window_s": 30, "cooldown_s": 0, "max_replicas": 3});
    testkit::block_on(testkit::check_plugin(
        &PerformanceMonitoringPlugin::default(),
        CheckOptions::default().with_config(config),
    ))
    .assert_conformant();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_library_hears_dispatches_through_the_stable_abi() {
    let path = testkit::example_library("plugin-performance", "performance_plugin").expect("builds the library");
    let orch = Orchestrator::builder()
        .load_plugin(&path)
        .plugin(Flaky)
        .build()
        .await
        .expect("builds");
    register(&orch, &["a"], 3).await;
    for i in 0..3 {
        call(&orch, "echo", json!({"i": i})).await;
    }
    let _ = orch
        .execute(IntegrationRequest::new("echo", json!({"fail": true})))
        .await;
    let m = call(&orch, "real_time_monitoring", json!({})).await;
    assert_eq!(m["capabilities"]["echo"]["calls"], 4, "{m:#}");
    assert_eq!(m["plugins"]["Flaky"]["errors"], 1, "{m:#}");
    assert_eq!(m["agents"]["registrations"], 1, "{m:#}");
    let p = call(&orch, "real_time_monitoring", json!({"format": "prometheus"})).await;
    let scrape = parse(p["text"].as_str().expect("text"));
    assert_eq!(
        sample(
            &scrape,
            "orchestrator_dispatches_total",
            &[("capability", "echo"), ("outcome", "succeeded")]
        ),
        Some(3.0)
    );
}
