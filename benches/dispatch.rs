//! Dispatch overhead: calling a plugin directly against calling it through
//! `Orchestrator::execute` (registry snapshot, correlation id, tracing span, timeout, panic
//! guard, response stamping), in one criterion group. The legacy path's answer to
//! `semantic_routing` over ten agents is measured beside them for scale.
//!
//! Run it with `cargo bench --bench dispatch`.

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::prelude::*;
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

fn bench_dispatch(c: &mut Criterion) {
    let rt = support::runtime();
    let plugin = Arc::new(support::MinimalPlugin::new("Minimal", &["minimal"]));
    let orch = rt
        .block_on(
            support::nine_plugins(Orchestrator::builder())
                .plugin(support::MinimalPlugin::new("Minimal", &["minimal"]))
                .build(),
        )
        .expect("builds");
    let request = IntegrationRequest::new("minimal", json!({"task": {"description": "small request"}}));

    let mut group = c.benchmark_group("dispatch");
    group.bench_function("direct_call", |b| {
        b.to_async(&rt).iter(|| {
            let plugin = Arc::clone(&plugin);
            let request = request.clone();
            async move { black_box(plugin.process_request(request).await.expect("answers")) }
        });
    });
    group.bench_function("execute_static", |b| {
        b.to_async(&rt).iter(|| {
            let fut = orch.execute(request.clone());
            async move { black_box(fut.await.expect("answers")) }
        });
    });
    let with_id = request.clone().with_correlation_id("bench-correlation-id");
    group.bench_function("execute_static_with_correlation_id", |b| {
        b.to_async(&rt).iter(|| {
            let fut = orch.execute(with_id.clone());
            async move { black_box(fut.await.expect("answers")) }
        });
    });
    group.finish();

    let legacy = rt.block_on(Orchestrator::builder().build()).expect("builds");
    rt.block_on(async {
        for _ in 0..10 {
            legacy.register_agent(AgentConfig::default()).await.expect("registers");
        }
    });
    let routing = IntegrationRequest::new("semantic_routing", json!({"task": {"description": "x"}}));
    c.bench_function("legacy_semantic_routing_10_agents", |b| {
        b.to_async(&rt).iter(|| {
            let fut = legacy.execute(routing.clone());
            async move { black_box(fut.await.expect("answers")) }
        });
    });
}

criterion_group!(benches, bench_dispatch);
criterion_main!(benches);
