//! What monitoring costs the orchestrator, and what a scrape costs.
//!
//! 1. Group `observe`: recording one dispatch (the host calls `observe` inline after every
//!    dispatch, so this is added to each one):
//!    - `plugin_warm_capability`: `PerformanceMonitoringPlugin::observe` of a successful
//!      dispatch of a capability seen before (the series exists): counters, the Prometheus
//!      bucket, the all-time and window latency histograms.
//!    - `naive_mutex_map_push`: a baseline, a `Mutex<HashMap<String, Vec<u64>>>` that pushes
//!      the duration onto the capability's list (cleared every million, to bound memory).
//!    - `plugin_2_threads` / `naive_2_threads`: the same, two threads recording the same
//!      capability at once (time per operation, both threads' operations counted): the
//!      plugin's shards against the baseline's one lock.
//! 2. Group `real_time_monitoring`: `prometheus_text` over 20 capabilities and 5 task kinds,
//!    each with 1,000 latencies recorded (snapshot, registry, OpenMetrics encoding); and the
//!    JSON view, which also merges the latency histograms.
//! 3. Group `real_time_monitoring`, realistic load: `json_20_capabilities_5000_ops` is the JSON
//!    view over 20 capabilities each with 5,000 dispatches recorded from 16 threads (so every
//!    shard of a series is in use), latencies log-uniform from 10 us to 50 ms, spread over 70 s
//!    (every slot of the 60 s window holds some). Before it runs, the bench prints the heap
//!    bytes per series of that load (a counting global allocator, this binary only): with every
//!    shard in use, and fed from one thread (one shard in use).
//!
//! Run it with `cargo bench -p plugin-performance --bench performance`.

use criterion::{Criterion, criterion_group, criterion_main};
use plugin_api::{Operation, OperationKind, OperationOutcome, OrchestrationPlugin};
use plugin_performance::PerformanceMonitoringPlugin;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes live while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn count(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches two atomics only.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CAPABILITY: &str = "semantic_routing";

fn dispatch(capability: &str) -> Operation<'_> {
    Operation::new(OperationKind::Dispatch, "4bf92f3577b34da6")
        .with_capability(capability)
        .with_plugin("ContextAwareRoutingPlugin")
        .with_outcome(OperationOutcome::Succeeded)
        .with_duration_ns(1_500)
}

/// The baseline: one lock, one map, one list per capability.
#[derive(Default)]
struct Naive(Mutex<HashMap<String, Vec<u64>>>);

impl Naive {
    fn observe(&self, op: &Operation<'_>) {
        let Some(capability) = op.capability.as_deref() else {
            return;
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(capability) {
            Some(list) => {
                if list.len() >= 1_000_000 {
                    list.clear();
                }
                list.push(op.duration_ns);
            }
            None => {
                map.insert(capability.to_owned(), vec![op.duration_ns]);
            }
        }
    }
}

/// Runs `record` `iters` times on each of two threads; the time per operation.
fn two_threads(iters: u64, record: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let record = &record;
            s.spawn(move || {
                for i in 0..iters {
                    record(t * iters + i);
                }
            });
        }
    });
    start.elapsed() / 2
}

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let plugin = PerformanceMonitoringPlugin::default();
    let naive = Naive::default();
    let mut op = dispatch(CAPABILITY);
    plugin.observe(&op);
    naive.observe(&op);

    let mut at = 0u64;
    group.bench_function("plugin_warm_capability", |b| {
        b.iter(|| {
            at += 1_000; // 1 us apart: the window turns a slot every 10 million
            op.at_ns = at;
            plugin.observe(black_box(&op));
        })
    });
    group.bench_function("naive_mutex_map_push", |b| b.iter(|| naive.observe(black_box(&op))));

    group.bench_function("plugin_2_threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |i| {
                let op = dispatch(CAPABILITY).with_at_ns(i * 1_000);
                plugin.observe(black_box(&op));
            })
        })
    });
    group.bench_function("naive_2_threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |i| {
                let op = dispatch(CAPABILITY).with_at_ns(i * 1_000);
                naive.observe(black_box(&op));
            })
        })
    });
    group.finish();
}

fn monitoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("real_time_monitoring");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let plugin = PerformanceMonitoringPlugin::default();
    let capabilities: Vec<String> = (0..20).map(|i| format!("capability_{i:02}")).collect();
    for (n, capability) in capabilities.iter().enumerate() {
        for i in 0..1_000u64 {
            // Latencies from 1 us to about 50 ms, spread over the buckets.
            let ns = 1_000 + (i * 7_919 + n as u64 * 104_729) % 50_000_000;
            let mut op = dispatch(capability).with_duration_ns(ns).with_at_ns(i * 1_000_000);
            if i % 50 == 0 {
                op = op.with_outcome(OperationOutcome::Failed);
            }
            plugin.observe(&op);
        }
    }
    for k in 0..5u64 {
        let kind = format!("kind_{k}");
        for i in 0..1_000u64 {
            let op = Operation::new(OperationKind::TaskFinish, "c")
                .with_task_kind(kind.as_str())
                .with_outcome(OperationOutcome::Succeeded)
                .with_duration_ns(1_000_000 + i * 10_000)
                .with_at_ns(i * 1_000_000);
            plugin.observe(&op);
        }
    }
    let handle = plugin.handle();
    let text = handle.prometheus_text();
    assert!(text.contains("capability_19") && text.ends_with("# EOF\n"));
    group.bench_function("prometheus_text_20_capabilities", |b| {
        b.iter(|| black_box(handle.prometheus_text()))
    });
    group.bench_function("json_20_capabilities", |b| {
        b.iter(|| black_box(handle.monitoring_json()))
    });
    group.finish();
}

/// The `i`th latency of the realistic load: log-uniform from 10 us to 50 ms (a golden-ratio
/// sequence, so deterministic and evenly spread).
fn realistic_ns(i: u64) -> u64 {
    let x = (i as f64 * 0.618_033_988_749_895).fract();
    (10_000.0 * 5_000f64.powf(x)) as u64
}

/// Records `ops` dispatches of each of `capabilities` from `threads` threads, over 70 s of
/// `at_ns`; the heap bytes this left live.
fn feed(plugin: &PerformanceMonitoringPlugin, capabilities: &[String], ops: u64, threads: u64) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for (n, capability) in capabilities.iter().enumerate() {
                    for i in (t..ops).step_by(threads as usize) {
                        let mut op = dispatch(capability)
                            .with_duration_ns(realistic_ns(i + n as u64 * ops))
                            .with_at_ns(i * 70_000_000_000 / ops);
                        if i % 50 == 0 {
                            op = op.with_outcome(OperationOutcome::Failed);
                        }
                        plugin.observe(&op);
                    }
                }
            });
        }
    });
    COUNTING.store(false, Ordering::Relaxed);
    LIVE.load(Ordering::Relaxed) - before
}

fn realistic(c: &mut Criterion) {
    let capabilities: Vec<String> = (0..20).map(|i| format!("capability_{i:02}")).collect();
    const OPS: u64 = 5_000;
    let single = PerformanceMonitoringPlugin::default();
    let one_shard = feed(&single, &capabilities, OPS, 1) / capabilities.len() as isize;
    let plugin = PerformanceMonitoringPlugin::default();
    let every_shard = feed(&plugin, &capabilities, OPS, 16) / capabilities.len() as isize;
    println!(
        "heap per series ({OPS} latencies of 10 us..50 ms over 70 s): {every_shard} bytes with every \
         shard in use ({} cores), {one_shard} bytes with one",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    drop(single);

    let handle = plugin.handle();
    let json = handle.monitoring_json();
    assert_eq!(json["capabilities"]["capability_19"]["calls"], OPS);
    assert!(json["capabilities"]["capability_19"]["window_calls"].as_u64() > Some(OPS / 2));

    let mut group = c.benchmark_group("real_time_monitoring");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("json_20_capabilities_5000_ops", |b| {
        b.iter(|| black_box(handle.monitoring_json()))
    });
    group.finish();
}

criterion_group!(benches, observe, monitoring, realistic);
criterion_main!(benches);
