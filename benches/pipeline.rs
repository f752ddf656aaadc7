//! Tasks per second through `submit_task`: the full pipeline with the nine default plugins
//! beside the same tasks on a bare orchestrator (no plugins: the legacy path analyses and
//! routes), both with an executor that does nothing, so what is measured is the pipeline
//! itself. Tasks are submitted concurrently (256 in flight on a 2-worker runtime) to a fleet of
//! eight agents with room for all of them. Before the criterion groups, one task at a time is
//! run 5,000 times with the nine plugins and the mean and p99 of each step are printed: where a
//! task's time goes.
//!
//! Run it with `cargo bench --bench pipeline`.

mod support;

use async_trait::async_trait;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Does nothing: the pipeline's own cost is what is measured.
struct NoOpExecutor;

#[async_trait]
impl AgentExecutor for NoOpExecutor {
    async fn execute(&self, _context: ExecutionContext) -> Result<Value, ExecutorError> {
        Ok(Value::Null)
    }
}

const WORDS: [&str; 12] = [
    "migrate", "schema", "render", "frontend", "deploy", "cluster", "audit", "tokens", "index", "cache", "query",
    "layout",
];

fn task(n: u64) -> Task {
    let a = WORDS[(n % 12) as usize];
    let b = WORDS[((n / 12) % 12) as usize];
    Task::new(format!("{a} the {b} for item {n}")).with_required_capabilities(["work"])
}

async fn fleet(orchestrator: &Orchestrator) {
    for i in 0..8 {
        orchestrator
            .register_agent(
                AgentConfig::new(format!("worker-{i}"))
                    .with_capabilities(["work", WORDS[i], WORDS[i + 4]])
                    .with_capacity(256),
            )
            .await
            .expect("registers");
    }
}

fn build(rt: &tokio::runtime::Runtime, nine: bool) -> Orchestrator {
    rt.block_on(async {
        let mut builder = Orchestrator::builder().executor(NoOpExecutor);
        if nine {
            builder = support::nine_plugins(builder);
        }
        let orchestrator = builder.build().await.expect("builds");
        fleet(&orchestrator).await;
        orchestrator
    })
}

/// Submits `count` tasks with at most `in_flight` at once; returns how many succeeded.
async fn submit_batch(orchestrator: &Orchestrator, next: &AtomicU64, count: u64, in_flight: u64) -> u64 {
    let per_worker = count / in_flight;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let orchestrator = orchestrator.clone();
        let first = next.fetch_add(per_worker, Ordering::Relaxed);
        workers.spawn(async move {
            let mut succeeded = 0;
            for n in first..first + per_worker {
                let report = orchestrator.submit_task(task(n)).await.expect("runs");
                succeeded += u64::from(report.status == TaskStatus::Succeeded);
            }
            succeeded
        });
    }
    let mut succeeded = 0;
    while let Some(done) = workers.join_next().await {
        succeeded += done.expect("joins");
    }
    succeeded
}

fn bench_throughput(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("pipeline_throughput");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(10);
    const BATCH: u64 = 4_096;
    const IN_FLIGHT: u64 = 256;
    group.throughput(Throughput::Elements(BATCH));
    for (name, nine) in [("bare", false), ("nine_plugins", true)] {
        let orchestrator = build(&rt, nine);
        let next = AtomicU64::new(0);
        group.bench_function(BenchmarkId::new("submit_task", name), |b| {
            b.iter(|| {
                let succeeded = rt.block_on(submit_batch(&orchestrator, &next, BATCH, IN_FLIGHT));
                assert_eq!(succeeded, BATCH, "every task succeeds");
            });
        });
    }
    group.finish();
}

/// One task at a time, 5,000 times, through the nine plugins: each step's mean and p99.
fn step_breakdown() {
    let rt = support::runtime();
    let orchestrator = build(&rt, true);
    let mut per_step: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut totals = Vec::new();
    let started = Instant::now();
    rt.block_on(async {
        for n in 0..5_000 {
            let report = orchestrator.submit_task(task(n)).await.expect("runs");
            totals.push(report.duration_us);
            for step in &report.steps {
                assert!(
                    step.outcome != orchestrator::StepOutcome::Failed,
                    "a step failed in the bench: {step:?}"
                );
                let name = serde_json::to_value(step.step).expect("serializes");
                per_step
                    .entry(name.as_str().unwrap_or("?").to_owned())
                    .or_default()
                    .push(step.duration_us);
            }
        }
    });
    let elapsed = started.elapsed();
    let percentile = |values: &mut Vec<u64>, p: f64| {
        values.sort_unstable();
        values[((values.len() - 1) as f64 * p) as usize]
    };
    let total_mean = totals.iter().sum::<u64>() as f64 / totals.len() as f64;
    println!(
        "pipeline step breakdown, nine plugins, one task at a time: {:.0} tasks/s, mean {total_mean:.1} us, p99 {} us",
        5_000.0 / elapsed.as_secs_f64(),
        percentile(&mut totals, 0.99)
    );
    println!("{:<14} {:>9} {:>9} {:>7}", "step", "mean_us", "p99_us", "share");
    for (step, values) in &mut per_step {
        let mean = values.iter().sum::<u64>() as f64 / 5_000.0;
        println!(
            "{step:<14} {mean:>9.1} {:>9} {:>6.1}%",
            percentile(values, 0.99),
            100.0 * mean / total_mean
        );
    }
    let _keep = Arc::new(orchestrator);
}

fn benches(c: &mut Criterion) {
    step_breakdown();
    bench_throughput(c);
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
