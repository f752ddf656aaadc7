//! `observe` allocates nothing in the steady state: once a capability, its plugins and a task
//! kind have been seen (and the window's slots used once), recording a dispatch, a provider
//! failure, or a task's start and finish builds no `String` and grows no map. Counted with a
//! global allocator that counts the calling thread's allocations (this test binary only).

use plugin_api::{Operation, OperationKind, OperationOutcome, OrchestrationPlugin};
use plugin_performance::PerformanceMonitoringPlugin;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations per thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the count is a thread-local `Cell`
// with a const initializer and no destructor, so counting never allocates (and `try_with`
// skips it during thread teardown).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const S: u64 = 1_000_000_000;

/// One round of what the host reports: dispatches (served, failed, by a fallback), a provider
/// failure, a task's start and finish, a registration, all at `at_ns`.
fn round<'a>(ids: &'a [String], i: usize, at_ns: u64) -> Vec<Operation<'a>> {
    let duration = 1_000 + (i as u64 * 7_919) % 1_000_000; // 1 us to about 1 ms
    let dispatch = |outcome| {
        Operation::new(OperationKind::Dispatch, ids[i].as_str())
            .with_capability("semantic_routing")
            .with_plugin("ContextAwareRoutingPlugin")
            .with_outcome(outcome)
            .with_duration_ns(duration)
            .with_at_ns(at_ns)
    };
    let task = |kind| {
        Operation::new(kind, ids[i].as_str())
            .with_agent("agent-1")
            .with_task_kind("build")
            .with_at_ns(at_ns)
    };
    vec![
        dispatch(OperationOutcome::Succeeded),
        dispatch(OperationOutcome::Succeeded)
            .with_plugin("legacy")
            .with_fallback(true),
        {
            let mut failed = dispatch(OperationOutcome::Failed).with_error("every provider failed");
            failed.plugin = None;
            failed
        },
        Operation::new(OperationKind::ProviderFailure, ids[i].as_str())
            .with_capability("semantic_routing")
            .with_plugin("ContextAwareRoutingPlugin")
            .with_outcome(OperationOutcome::TimedOut)
            .with_at_ns(at_ns),
        task(OperationKind::TaskStart),
        task(OperationKind::TaskFinish)
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(duration),
        Operation::new(OperationKind::AgentRegistration, "")
            .with_agent("agent-1")
            .with_outcome(OperationOutcome::Succeeded),
    ]
}

#[test]
fn observe_allocates_nothing_for_a_warm_capability() {
    let plugin = PerformanceMonitoringPlugin::default();
    const ROUNDS: usize = 20_000;
    let ids: Vec<String> = (0..2 * ROUNDS).map(|i| format!("{i:016x}")).collect();
    // 10 ms apart: the 60 s window's 10 s slots each turn over more than once per 20,000.
    let step = 10_000_000;
    let warm: Vec<Vec<Operation<'_>>> = (0..ROUNDS).map(|i| round(&ids, i, i as u64 * step)).collect();
    // Fresh correlation ids in the steady state too (a new task each time), as the host sends.
    let steady: Vec<Vec<Operation<'_>>> = (ROUNDS..2 * ROUNDS).map(|i| round(&ids, i, i as u64 * step)).collect();
    assert!(
        ROUNDS as u64 * step > 12 * S,
        "the warm-up uses every slot of the window"
    );

    for op in warm.iter().flatten() {
        plugin.observe(op);
    }
    let before = allocations();
    for op in steady.iter().flatten() {
        plugin.observe(op);
    }
    let made = allocations() - before;
    assert_eq!(
        made,
        0,
        "observe allocated {made} times in {} operations",
        steady.len() * 7
    );

    // The figures were recorded all the same.
    let m = plugin.handle().monitoring_json();
    assert_eq!(m["capabilities"]["semantic_routing"]["calls"], 6 * ROUNDS as u64);
    assert_eq!(m["tasks"]["finished"], 2 * ROUNDS as u64);
    assert_eq!(m["tasks"]["in_flight"], 0);
}

#[test]
fn the_allocation_counter_counts() {
    let before = allocations();
    let s = std::hint::black_box(String::from("grows")) + "!";
    assert!(allocations() > before, "{s}");
}
