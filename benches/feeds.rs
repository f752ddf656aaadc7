//! What the operation feeds and the monitoring pair cost the hot paths: `execute` and
//! `register_agent` on a bare orchestrator beside the same with `PerformanceMonitoringPlugin`
//! and `HookIntegrationPlugin` registered (observing every dispatch, task and registration),
//! and with one pre-hook on dispatch (so every call is also intercepted), in one criterion
//! group per operation. The direct call of the plugin is the floor.
//!
//! Run it with `cargo bench --bench feeds`.

mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use orchestrator::prelude::*;
use orchestrator::{HookIntegrationPlugin, OperationKind, PerformanceMonitoringPlugin, Verdict};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// How the orchestrator under test is set up.
#[derive(Clone, Copy)]
enum Setup {
    /// The minimal plugin only: nobody asks for feeds.
    Bare,
    /// Plus the performance plugin only.
    PerformanceOnly,
    /// Plus the hooks plugin only, no hooks registered.
    HooksOnly,
    /// Plus the performance and hooks plugins, no hooks registered.
    MonitoringPair,
    /// Plus one synchronous pre-hook on dispatch that allows everything.
    MonitoringPairWithPreHook,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Bare,
        Setup::PerformanceOnly,
        Setup::HooksOnly,
        Setup::MonitoringPair,
        Setup::MonitoringPairWithPreHook,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::Bare => "bare",
            Setup::PerformanceOnly => "performance_only",
            Setup::HooksOnly => "hooks_only",
            Setup::MonitoringPair => "monitoring_pair",
            Setup::MonitoringPairWithPreHook => "monitoring_pair_with_pre_hook",
        }
    }

    fn build(self, rt: &tokio::runtime::Runtime) -> Orchestrator {
        let mut builder = Orchestrator::builder().plugin(support::MinimalPlugin::new("Minimal", &["minimal"]));
        let with_performance = matches!(
            self,
            Setup::PerformanceOnly | Setup::MonitoringPair | Setup::MonitoringPairWithPreHook
        );
        let with_hooks = matches!(
            self,
            Setup::HooksOnly | Setup::MonitoringPair | Setup::MonitoringPairWithPreHook
        );
        if with_performance {
            builder = builder.plugin(PerformanceMonitoringPlugin::default());
        }
        if with_hooks {
            let hooks = HookIntegrationPlugin::default();
            if matches!(self, Setup::MonitoringPairWithPreHook) {
                hooks
                    .hooks()
                    .pre_hook_fn("allow-all", OperationKind::Dispatch, 0, |_| Verdict::Allow)
                    .expect("registers the hook");
            }
            builder = builder.plugin(hooks);
        }
        rt.block_on(builder.build()).expect("builds")
    }
}

fn bench_execute(c: &mut Criterion) {
    let rt = support::runtime();
    let request = IntegrationRequest::new("minimal", json!({"task": {"description": "small request"}}));
    let plugin = Arc::new(support::MinimalPlugin::new("Minimal", &["minimal"]));

    let mut group = c.benchmark_group("feeds_execute");
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("direct_call", |b| {
        b.to_async(&rt).iter(|| {
            let plugin = Arc::clone(&plugin);
            let request = request.clone();
            async move { black_box(plugin.process_request(request).await.expect("answers")) }
        });
    });
    for setup in Setup::ALL {
        let orch = setup.build(&rt);
        group.bench_function(BenchmarkId::new("execute", setup.name()), |b| {
            b.to_async(&rt).iter(|| {
                let fut = orch.execute(request.clone());
                async move { black_box(fut.await.expect("answers")) }
            });
        });
    }
    group.finish();
}

/// Registrations are timed in batches of 1,000 on a current-thread runtime; between batches,
/// outside the timing, the agents are deregistered and the lifecycle events delivered: what is measured is
/// `register_agent` and its feeds, not event delivery running beside it on the other core
/// (the registration bench measures that).
fn bench_register(c: &mut Criterion) {
    const BATCH: u64 = 1_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("feeds_register_agent");
    group.measurement_time(Duration::from_secs(6));
    group.throughput(criterion::Throughput::Elements(1));
    for setup in [Setup::Bare, Setup::MonitoringPair] {
        let orch = setup.build(&rt);
        group.bench_function(BenchmarkId::new("register_agent", setup.name()), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    let mut left = iters;
                    let mut ids = Vec::with_capacity(BATCH as usize);
                    while left > 0 {
                        let n = left.min(BATCH);
                        let start = std::time::Instant::now();
                        for _ in 0..n {
                            ids.push(orch.register_agent(AgentConfig::default()).await.expect("registers"));
                        }
                        timed += start.elapsed();
                        left -= n;
                        // Outside the timing: the agents leave again (so that the map does not
                        // grow through millions of iterations and resize under the timing) and
                        // the events are delivered.
                        for id in ids.drain(..) {
                            orch.deregister_agent(&id).await.expect("deregisters");
                        }
                        support::drain_events(&orch).await;
                    }
                    timed
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_execute, bench_register);
criterion_main!(benches);
