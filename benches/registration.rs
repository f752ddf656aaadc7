//! `register_agent` against a naive `RwLock<HashMap>` registry doing the same bookkeeping, in one
//! criterion group, with nine plugins registered (they receive the registration events). After
//! the criterion group, the bench also prints per-call latency percentiles (HDR histogram over
//! 200,000 registrations each) and the resident memory per agent with 1,000,000 registered.
//!
//! Run it with `cargo bench --bench registration`.

mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use orchestrator::prelude::*;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The naive baseline: what a first version would write. One lock over one map, the same
/// record (id, name, capabilities, status, load, capacity) and the same generated id.
#[derive(Default)]
struct NaiveRegistry {
    agents: RwLock<HashMap<String, NaiveAgent>>,
    next: AtomicU64,
}

#[allow(dead_code)]
struct NaiveAgent {
    name: String,
    capabilities: Vec<String>,
    status: &'static str,
    load: u32,
    capacity: u32,
}

impl NaiveRegistry {
    fn register(&self, config: AgentConfig) -> String {
        let id = format!("agent-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let agent = NaiveAgent {
            name: config.name.unwrap_or_else(|| id.clone()),
            capabilities: config.capabilities,
            status: "active",
            load: 0,
            capacity: config.capacity,
        };
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), agent);
        id
    }
}

fn config() -> AgentConfig {
    AgentConfig::default().with_capabilities(["code_review", "rust"])
}

fn bench_register(c: &mut Criterion) {
    let rt = support::runtime();
    // First, while the heap is fresh: after the groups below have registered and dropped
    // millions of agents, the allocator reuses what they freed and resident memory stops growing
    // (a run that measured last reported 0 bytes per agent).
    memory_per_agent(&rt);
    let mut group = c.benchmark_group("register_agent");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("naive_rwlock_hashmap", "nine_plugins"), |b| {
        let naive = NaiveRegistry::default();
        b.iter(|| black_box(naive.register(config())));
    });
    let orch = rt
        .block_on(support::nine_plugins(Orchestrator::builder()).build())
        .expect("builds");
    group.bench_function(BenchmarkId::new("orchestrator", "nine_plugins"), |b| {
        b.to_async(&rt).iter(|| {
            let fut = orch.register_agent(config());
            async move { black_box(fut.await.expect("registers")) }
        });
    });
    group.finish();
    // Registering as fast as one core can outruns event delivery to nine plugins (one task
    // calls every plugin's `on_event` in turn): wait for the backlog to drain, and say how long
    // it took, so that the groups below are not measured against it.
    let drained = rt.block_on(support::drain_events(&orch));
    println!(
        "event backlog after the orchestrator group drained in {:.2} s",
        drained.as_secs_f64()
    );
    drop(orch);

    // Both cores registering at once: 10,000 agents from two tasks, a fresh registry per batch.
    let mut group = c.benchmark_group("register_agent_concurrent_10k");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("naive_rwlock_hashmap", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let naive = std::sync::Arc::new(NaiveRegistry::default());
                let start = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let naive = naive.clone();
                        tokio::spawn(async move {
                            for _ in 0..5_000 {
                                black_box(naive.register(config()));
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task ran");
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.bench_function("orchestrator", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let orch = Orchestrator::builder().build().await.expect("builds");
                let start = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let orch = orch.clone();
                        tokio::spawn(async move {
                            for _ in 0..5_000 {
                                black_box(orch.register_agent(config()).await.expect("registers"));
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task ran");
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();

    latency_percentiles(&rt);
}

fn latency_percentiles(rt: &tokio::runtime::Runtime) {
    const N: usize = 200_000;
    let mut naive_hist = Histogram::<u64>::new(3).expect("histogram");
    let naive = NaiveRegistry::default();
    for _ in 0..N {
        let start = Instant::now();
        black_box(naive.register(config()));
        naive_hist.saturating_record(start.elapsed().as_nanos() as u64);
    }
    let orch_hist = rt.block_on(async {
        let orch = support::nine_plugins(Orchestrator::builder())
            .build()
            .await
            .expect("builds");
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..N {
            let start = Instant::now();
            black_box(orch.register_agent(config()).await.expect("registers"));
            hist.saturating_record(start.elapsed().as_nanos() as u64);
        }
        let drained = support::drain_events(&orch).await;
        println!(
            "after {N} registrations the event backlog drained in {:.2} s",
            drained.as_secs_f64()
        );
        hist
    });
    for (name, h) in [("naive_rwlock_hashmap", &naive_hist), ("orchestrator", &orch_hist)] {
        println!(
            "register_agent latency {name:>22}: p50 {:>6} ns  p90 {:>6} ns  p99 {:>7} ns  p99.9 {:>7} ns  max {:>9} ns  (n = {N})",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}

/// Resident set size in bytes, from /proc (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_per_agent(rt: &tokio::runtime::Runtime) {
    const N: u64 = 1_000_000;
    rt.block_on(async {
        let orch = Orchestrator::builder().build().await.expect("builds");
        let Some(before) = rss_bytes() else {
            println!("memory per agent: /proc/self/statm not available on this platform");
            return;
        };
        let start = Instant::now();
        for _ in 0..N {
            orch.register_agent(config()).await.expect("registers");
        }
        let elapsed = start.elapsed();
        // Let the event delivery task drain so its queue is not counted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = rss_bytes().unwrap_or(before);
        assert_eq!(orch.agent_count() as u64, N);
        println!(
            "1,000,000 agents registered in {:.2} s; resident memory {:.1} MiB more, {} bytes per agent",
            elapsed.as_secs_f64(),
            (after.saturating_sub(before)) as f64 / 1048576.0,
            after.saturating_sub(before) / N
        );
    });
}

criterion_group!(benches, bench_register);
criterion_main!(benches);
