//! Heap allocations per operation on the hot paths: `execute`, `register_agent` and
//! `submit_task`, on a bare orchestrator (one minimal plugin) and with the nine default plugins,
//! beside a direct call of the plugin (the floor). A counting global allocator wraps the system
//! one in this binary only, so the other benches' timings are not touched.
//!
//! What is counted is the work done on the caller's task: each operation is awaited in turn on
//! a current-thread runtime, and the counts are taken around a batch, not including work the
//! operation hands to other tasks (event delivery to plugins, hooks' post-hooks), which runs
//! when the runtime next gets a turn. The figures are exact counts, not timings: they do not
//! vary from run to run except where a plugin's state grows (a first sight of a name).
//!
//! Run it with `cargo bench --bench allocations`.

// A global allocator is an `unsafe impl`: the only unsafe code here, each block forwarding to
// the system allocator.
#![allow(unsafe_code)]

mod support;

use orchestrator::prelude::*;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting allocations (reallocations count as one each).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counter is a relaxed atomic with no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is; `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const OPS: u64 = 2_000;

/// Allocations per operation over `OPS` operations, after `OPS` of warm-up.
async fn per_op<F, Fut>(mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..OPS {
        op(i).await;
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in OPS..2 * OPS {
        op(i).await;
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / OPS as f64
}

async fn build(nine: bool) -> Orchestrator {
    let mut builder = Orchestrator::builder().plugin(support::MinimalPlugin::new("Minimal", &["minimal"]));
    if nine {
        builder = support::nine_plugins(builder);
    }
    builder.build().await.expect("builds")
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let plugin = support::MinimalPlugin::new("Minimal", &["minimal"]);
        let direct = per_op(|_| {
            let request = IntegrationRequest::new("minimal", json!({"task": {"description": "small request"}}));
            let call = plugin.process_request(request);
            async move {
                call.await.expect("answers");
            }
        })
        .await;
        println!("allocations per operation ({OPS} after {OPS} of warm-up)");
        println!("{:<44} {:>8}", "operation", "allocs");
        println!("{:<44} {direct:>8.1}", "direct call of the minimal plugin");
        for (name, nine) in [("bare", false), ("nine plugins", true)] {
            let orchestrator = build(nine).await;
            let execute = per_op(|_| {
                let call = orchestrator.execute(IntegrationRequest::new(
                    "minimal",
                    json!({"task": {"description": "small request"}}),
                ));
                async move {
                    call.await.expect("served");
                }
            })
            .await;
            println!("{:<44} {execute:>8.1}", format!("execute, {name}"));
            let register = per_op(|i| {
                let call = orchestrator.register_agent(
                    AgentConfig::new(format!("agent {i}"))
                        .with_id(format!("a-{i}"))
                        .with_capabilities(["work"]),
                );
                async move {
                    call.await.expect("registers");
                }
            })
            .await;
            println!("{:<44} {register:>8.1}", format!("register_agent, {name}"));
            // A fleet of eight for the pipeline, as in `benches/pipeline.rs`.
            let orchestrator = build(nine).await;
            for a in 0..8 {
                orchestrator
                    .register_agent(
                        AgentConfig::new(format!("worker {a}"))
                            .with_capabilities(["work"])
                            .with_capacity(64),
                    )
                    .await
                    .expect("registers");
            }
            let submit = per_op(|i| {
                let call = orchestrator.submit_task(
                    Task::new(format!("migrate the schema for item {i}")).with_required_capabilities(["work"]),
                );
                async move {
                    call.await.expect("runs");
                }
            })
            .await;
            println!("{:<44} {submit:>8.1}", format!("submit_task (8 agents), {name}"));
            // Let the deferred work run before the next setup is counted.
            tokio::task::yield_now().await;
        }
    });
}
