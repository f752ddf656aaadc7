//! Test doubles for the unit tests: a host whose capability calls wait until the test opens a
//! gate, and an allocator that counts the allocations of the current thread.

// A global allocator cannot be written without `unsafe`; this one only counts and passes every
// call on to the system allocator, and exists in test builds only.
#![allow(unsafe_code)]

use plugin_api::testkit::block_on;
use plugin_api::{AgentInfo, AgentStatus, BoxFuture, Host, IntegrationRequest, IntegrationResponse};
use plugin_api::{OrchestratorEvent, PluginError};
use serde_json::{Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A host: the given configuration; `call` records the request and answers `{"allow": true}`
/// once the gate is open; `spawn` runs the task on a thread of its own (and counts it).
#[derive(Default)]
pub(crate) struct TestHost {
    config: Value,
    pub(crate) calls: Mutex<Vec<IntegrationRequest>>,
    gate: Arc<Mutex<(bool, Vec<Waker>)>>,
    pub(crate) spawned: AtomicUsize,
}

impl TestHost {
    pub(crate) fn new(config: Value) -> Arc<Self> {
        Arc::new(Self {
            config,
            ..Self::default()
        })
    }

    /// Lets every call waiting (and every later one) answer.
    pub(crate) fn open(&self) {
        let mut gate = self.gate.lock().expect("lock");
        gate.0 = true;
        for waker in gate.1.drain(..) {
            waker.wake();
        }
    }

    pub(crate) fn calls(&self) -> Vec<IntegrationRequest> {
        self.calls.lock().expect("lock").clone()
    }

    /// Waits (5 s at most) until `n` calls were made.
    pub(crate) fn wait_for_calls(&self, n: usize) -> Vec<IntegrationRequest> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(Instant::now() < deadline, "waited for {n} calls, saw {}", calls.len());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Host for TestHost {
    fn plugin_config(&self, _plugin: &str) -> Value {
        self.config.clone()
    }
    fn agents(&self) -> Vec<AgentInfo> {
        Vec::new()
    }
    fn agent(&self, _id: &str) -> Option<AgentInfo> {
        None
    }
    fn set_agent_status(&self, _id: &str, _status: AgentStatus) -> Result<(), PluginError> {
        Ok(())
    }
    fn call(
        &self,
        _caller: &str,
        request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        self.calls.lock().expect("lock").push(request);
        let gate = Arc::clone(&self.gate);
        Box::pin(std::future::poll_fn(move |cx| {
            let mut gate = gate.lock().expect("lock");
            if gate.0 {
                Poll::Ready(Ok(IntegrationResponse::ok(json!({"allow": true}))))
            } else {
                gate.1.push(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
    fn emit(&self, _event: OrchestratorEvent) {}
    fn now_unix_ms(&self) -> u64 {
        0
    }
    fn monotonic_ns(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || block_on(task));
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let state: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
        let timer = Arc::clone(&state);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let mut s = timer.lock().expect("lock");
            s.0 = true;
            if let Some(w) = s.1.take() {
                w.wake();
            }
        });
        Box::pin(std::future::poll_fn(move |cx| {
            let mut s = state.lock().expect("lock");
            if s.0 {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
}

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's allocations.
struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
// const-initialized thread-local without a destructor (which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// How many allocations (and reallocations) the current thread has made.
pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}
