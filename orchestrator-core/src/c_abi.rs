//! The legacy C ABI: plugins in any language that can export four C functions, JSON in and out.
//!
//! ```c
//! uint32_t    orch_plugin_abi_version(void);              /* returns 1 */
//! const char *orch_plugin_manifest(void);                 /* {"name","version","capabilities":[...]}; static */
//! char       *orch_plugin_process(const char *request);   /* IntegrationRequest JSON -> IntegrationResponse JSON */
//! void        orch_plugin_free(char *response);           /* frees what process returned */
//! ```
//!
//! `orch_plugin_process` is synchronous and may block, so each call runs on one of the plugin's
//! own worker threads and the async caller waits for it under the call timeout. A call that
//! never returns keeps its worker (a thread cannot be cancelled), but the host moves on, and the
//! next call starts another worker, up to 16 calls in flight. The hand-off to a worker costs a
//! few microseconds (5 us in `benches/plugin_abi.rs`; Tokio's blocking pool, used before, 23), and a plugin whose manifest says
//! `"nonblocking": true` (it promises to return promptly) is called directly on the async
//! thread instead: a few microseconds, at the price that a hang in it stalls that thread and
//! cannot be cut off by the timeout. A C plugin
//! that crashes (a segfault, an abort) takes the process with it: only running it in another
//! process would prevent that, and this ABI is in-process by design.
//!
//! Requirements on the plugin, which the host relies on: `orch_plugin_process` is thread-safe
//! (the host calls it from several threads at once; no static buffers), returns a string that
//! `orch_plugin_free` frees, never throws or longjmps out (C++: catch everything), and reads
//! the request only during the call.
//!
//! This is the one module of the engine that needs `unsafe`: loading a library and calling its
//! functions. Each unsafe block says why it is sound, given the requirements above.
#![allow(unsafe_code)]

use crate::error::LoadError;
use async_trait::async_trait;
use plugin_api::ffi::PluginManifest;
use plugin_api::{HealthStatus, HostHandle, IntegrationRequest, IntegrationResponse, OrchestrationPlugin, PluginError};
use std::ffi::{CStr, CString, c_char};
use std::path::Path;

/// The C ABI version this host speaks.
pub const C_ABI_VERSION: u32 = 1;

// "C-unwind": a C++ plugin that lets an exception escape (which the ABI forbids) makes the
// process abort at the boundary, instead of unwinding into Rust frames, which would be undefined.
type AbiVersionFn = unsafe extern "C-unwind" fn() -> u32;
type ManifestFn = unsafe extern "C-unwind" fn() -> *const c_char;
type ProcessFn = unsafe extern "C-unwind" fn(*const c_char) -> *mut c_char;
type FreeFn = unsafe extern "C-unwind" fn(*mut c_char);

/// How many calls of one C plugin may be in flight at once, each on a worker thread of its own.
/// Calls that hang keep their thread forever; past this many, further calls fail at once
/// ("unavailable") instead of starting threads without bound.
const MAX_BLOCKING_CALLS: usize = 16;

/// The largest answer read from a C plugin (16 MiB): a bigger one is refused unread, so that a
/// plugin gone wrong cannot make the host copy and parse without bound.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The plugin's two call entry points. Plain function pointers into a library that is never
/// unloaded, so they stay valid for the life of the process.
#[derive(Clone, Copy)]
struct Entry {
    process: ProcessFn,
    free: FreeFn,
}

/// A plugin loaded through the C ABI.
pub(crate) struct CAbiPlugin {
    entry: Entry,
    manifest: PluginManifest,
    abi_version: u32,
    blocking_slots: std::sync::Arc<tokio::sync::Semaphore>,
    workers: std::sync::Arc<Workers>,
}

impl CAbiPlugin {
    /// Opens `path` and reads its exports; `LoadError::NoPluginExports` when it has none.
    pub(crate) fn open(path: &Path) -> Result<Self, LoadError> {
        let not_a_library = |e: libloading::Error| LoadError::NotALibrary {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        // SAFETY: loading a library runs its initialisers; that is the trust decision the
        // caller made by asking to load this file (see the loader's module docs).
        let library = unsafe { libloading::Library::new(path) }.map_err(not_a_library)?;
        // The library is never unloaded: the function pointers taken below must outlive it.
        let library: &'static libloading::Library = Box::leak(Box::new(library));

        // SAFETY: each symbol is read with the C signature the ABI documents for it; the
        // pointers are copied out of the `Symbol`s, valid because the library is never unloaded.
        let symbols = unsafe {
            (
                library.get::<AbiVersionFn>(b"orch_plugin_abi_version\0").map(|s| *s),
                library.get::<ManifestFn>(b"orch_plugin_manifest\0").map(|s| *s),
                library.get::<ProcessFn>(b"orch_plugin_process\0").map(|s| *s),
                library.get::<FreeFn>(b"orch_plugin_free\0").map(|s| *s),
            )
        };
        let (abi_version, manifest, process, free) = match symbols {
            (Ok(v), Ok(m), Ok(p), Ok(f)) => (v, m, p, f),
            (Err(_), Err(_), Err(_), Err(_)) => {
                return Err(LoadError::NoPluginExports { path: path.to_owned() });
            }
            (v, m, p, f) => {
                let missing: Vec<&str> = [
                    ("orch_plugin_abi_version", v.is_err()),
                    ("orch_plugin_manifest", m.is_err()),
                    ("orch_plugin_process", p.is_err()),
                    ("orch_plugin_free", f.is_err()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
                return Err(LoadError::InitFailed {
                    path: path.to_owned(),
                    reason: format!("it exports part of the C plugin ABI; missing: {}", missing.join(", ")),
                });
            }
        };

        // SAFETY: a C ABI function taking nothing and returning a u32, per the ABI.
        let version = unsafe { abi_version() };
        if version != C_ABI_VERSION {
            return Err(LoadError::IncompatibleVersion {
                path: path.to_owned(),
                expected: format!("C ABI {C_ABI_VERSION}"),
                found: format!("C ABI {version}"),
            });
        }
        // SAFETY: per the ABI, the manifest is a static NUL-terminated string owned by the
        // library (never freed); null is checked before reading it.
        let manifest_ptr = unsafe { manifest() };
        if manifest_ptr.is_null() {
            return Err(LoadError::InitFailed {
                path: path.to_owned(),
                reason: "orch_plugin_manifest returned NULL".into(),
            });
        }
        // SAFETY: non-null, NUL-terminated and static per the ABI.
        let manifest_text = unsafe { CStr::from_ptr(manifest_ptr) }.to_string_lossy();
        let manifest: PluginManifest = serde_json::from_str(&manifest_text).map_err(|e| LoadError::InitFailed {
            path: path.to_owned(),
            reason: format!("orch_plugin_manifest is not {{\"name\", \"version\", \"capabilities\": [...]}} JSON: {e}"),
        })?;
        Ok(Self {
            entry: Entry { process, free },
            manifest,
            abi_version: version,
            blocking_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_BLOCKING_CALLS)),
            workers: std::sync::Arc::new(Workers::new(Entry { process, free })),
        })
    }

    pub(crate) fn manifest(&self) -> &PluginManifest {
        &self.manifest
    }

    pub(crate) fn abi_version(&self) -> u32 {
        self.abi_version
    }
}

/// How long an idle worker thread waits for a call before it ends.
const WORKER_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// How many times an idle worker checks for a new call before it sleeps: a call that follows
/// within a few microseconds is taken without the cost of waking a sleeping thread.
const WORKER_SPINS: u32 = 1_000;

/// One call waiting for a worker: the request, where the answer goes, and the slot it holds.
struct Job {
    request: CString,
    reply: tokio::sync::oneshot::Sender<Result<String, PluginError>>,
    slot: tokio::sync::OwnedSemaphorePermit,
}

/// The queue of calls and the workers' count, under one lock.
#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// Workers waiting (or about to wait) for a call.
    idle: usize,
    /// Worker threads alive.
    threads: usize,
}

/// The plugin's own worker threads: calls that may block run on them, not on the async
/// threads. A worker that hangs in the plugin keeps its thread (a thread cannot be cancelled)
/// and its call's slot; the next call starts another worker, up to `MAX_BLOCKING_CALLS`
/// calls in flight, past which calls fail at once. Idle workers end after `WORKER_IDLE`.
///
/// Tokio's blocking pool did the same job for about 23 us a call on a small machine (5 us here): a task
/// allocated per call, and a thread woken through the pool's shared queue. Here an idle worker
/// spins briefly before it sleeps, so calls in quick succession find it awake.
struct Workers {
    entry: Entry,
    queue: std::sync::Mutex<Queue>,
    ready: std::sync::Condvar,
    /// Calls queued and not yet taken: what a spinning worker watches, without the lock.
    waiting: std::sync::atomic::AtomicUsize,
    /// Workers spinning for the next call (they will take a queued one without a wake-up).
    spinning: std::sync::atomic::AtomicUsize,
}

impl Workers {
    fn new(entry: Entry) -> Self {
        Self {
            entry,
            queue: std::sync::Mutex::new(Queue::default()),
            ready: std::sync::Condvar::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            spinning: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a call, waking an idle worker or starting one.
    fn submit(self: &std::sync::Arc<Self>, job: Job) {
        use std::sync::atomic::Ordering;
        let mut queue = self.lock();
        queue.jobs.push_back(job);
        self.waiting.fetch_add(1, Ordering::Release);
        // Each sleeping or spinning worker takes at most one call when it next takes the lock
        // (a sleeping one stays counted until then, woken or not), so the queued calls are
        // covered while they are no more than those workers; past that, a worker is started.
        // The slots bound the calls in flight, so the threads stay within about
        // MAX_BLOCKING_CALLS (idle ones end after WORKER_IDLE).
        let wake = queue.idle > 0;
        let covered = queue.jobs.len() <= queue.idle + self.spinning.load(Ordering::Acquire);
        if !covered {
            queue.threads += 1;
        }
        // Woken after the lock is let go, so that the worker does not wake only to wait for it.
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        if covered {
            return;
        }
        let workers = std::sync::Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("orch-c-plugin".into())
            .spawn(move || workers.work());
        if let Err(e) = started {
            let mut queue = self.lock();
            queue.threads -= 1;
            if queue.jobs.len() > queue.idle + self.spinning.load(Ordering::Acquire) {
                // No worker will take it soon: answer it here rather than leave it waiting.
                if let Some(job) = queue.jobs.pop_back() {
                    self.waiting.fetch_sub(1, Ordering::Release);
                    let _ = job.reply.send(Err(PluginError::unavailable(format!(
                        "cannot start a thread for the C plugin: {e}"
                    ))));
                }
            }
        }
    }

    /// A worker: takes calls until it has been idle for `WORKER_IDLE`.
    fn work(&self) {
        loop {
            let Some(job) = self.next_job() else {
                return;
            };
            let Job { request, reply, slot } = job;
            let answer = self.entry.call(&request);
            // The slot is freed only now, when the plugin has returned, and before the answer
            // goes out, so that a caller's next call finds it free. The caller may have given up
            // (timed out); the answer is then dropped.
            drop(slot);
            let _ = reply.send(answer);
        }
    }

    /// The next call, after a short spin and then a sleep; `None` when idle too long (the
    /// thread then ends, counted out under the lock so that no call is left without a worker).
    fn next_job(&self) -> Option<Job> {
        use std::sync::atomic::Ordering;
        self.spinning.fetch_add(1, Ordering::AcqRel);
        for _ in 0..WORKER_SPINS {
            if self.waiting.load(Ordering::Acquire) > 0 {
                break;
            }
            std::hint::spin_loop();
        }
        self.spinning.fetch_sub(1, Ordering::AcqRel);
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                self.waiting.fetch_sub(1, Ordering::Release);
                return Some(job);
            }
            queue.idle += 1;
            let (guard, timeout) = self
                .ready
                .wait_timeout(queue, WORKER_IDLE)
                .unwrap_or_else(|p| p.into_inner());
            queue = guard;
            queue.idle -= 1;
            if timeout.timed_out() && queue.jobs.is_empty() {
                queue.threads -= 1;
                return None;
            }
        }
    }
}

impl Entry {
    /// One synchronous call: request JSON in, response JSON out.
    fn call(self, request: &CStr) -> Result<String, PluginError> {
        // SAFETY: `request` is a valid NUL-terminated string that outlives the call; the ABI
        // says the plugin only reads it.
        let response = unsafe { (self.process)(request.as_ptr()) };
        if response.is_null() {
            return Err(PluginError::new("the C plugin returned NULL from orch_plugin_process"));
        }
        // SAFETY: non-null, and per the ABI a NUL-terminated string the plugin allocated and
        // that stays valid until handed back to `orch_plugin_free`, which happens right after
        // the copy (or the refusal).
        let answer = unsafe { CStr::from_ptr(response) };
        let len = answer.to_bytes().len();
        let text = (len <= MAX_RESPONSE_BYTES).then(|| answer.to_string_lossy().into_owned());
        // SAFETY: the pointer came from `orch_plugin_process` and is freed exactly once.
        unsafe { (self.free)(response) };
        text.ok_or_else(|| {
            PluginError::new(format!(
                "the C plugin answered with {len} bytes, over the host's limit of {MAX_RESPONSE_BYTES}; not read"
            ))
        })
    }
}

#[async_trait]
impl OrchestrationPlugin for CAbiPlugin {
    fn name(&self) -> &str {
        &self.manifest.name
    }

    fn version(&self) -> &str {
        &self.manifest.version
    }

    fn capabilities(&self) -> Vec<String> {
        self.manifest.capabilities.clone()
    }

    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let json = serde_json::to_string(&request).map_err(|e| PluginError::new(e.to_string()))?;
        let json = CString::new(json)
            .map_err(|_| PluginError::invalid_request("the request contains a NUL character, which C cannot take"))?;
        let entry = self.entry;
        let text =
            if self.manifest.nonblocking {
                // The plugin promised not to block: skip the hand-off to another thread.
                entry.call(&json)?
            } else {
                let permit = std::sync::Arc::clone(&self.blocking_slots).try_acquire_owned().map_err(|_| {
                PluginError::unavailable(format!(
                    "{MAX_BLOCKING_CALLS} calls of this C plugin are still running (hung?); not starting another"
                ))
            })?;
                let (reply, answer) = tokio::sync::oneshot::channel();
                self.workers.submit(Job {
                    request: json,
                    reply,
                    slot: permit,
                });
                answer
                    .await
                    .map_err(|_| PluginError::new("the C plugin call did not complete: its worker ended"))??
            };
        serde_json::from_str(&text).map_err(|e| {
            PluginError::new(format!(
                "the C plugin answered with invalid IntegrationResponse JSON: {e}"
            ))
        })
    }

    async fn health_check(&self) -> HealthStatus {
        // The C ABI has no health function: a plugin whose manifest loaded is taken as healthy.
        HealthStatus::healthy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A stand-in for a C plugin's `orch_plugin_process`: echoes the request, after 300 ms when
    /// it says "slow".
    unsafe extern "C-unwind" fn echo(request: *const c_char) -> *mut c_char {
        // SAFETY: the workers pass the request's valid NUL-terminated string for the call.
        let text = unsafe { CStr::from_ptr(request) }.to_string_lossy().into_owned();
        if text.contains("slow") {
            std::thread::sleep(Duration::from_millis(300));
        }
        CString::new(text).unwrap_or_default().into_raw()
    }

    /// Its `orch_plugin_free`.
    unsafe extern "C-unwind" fn free(answer: *mut c_char) {
        // SAFETY: every answer comes from `CString::into_raw` in `echo`, and is freed once.
        drop(unsafe { CString::from_raw(answer) });
    }

    /// Regression guard (found in review): a worker asleep between calls stayed counted as
    /// idle until it woke, so a second call sent right after a first was left queued behind it
    /// instead of getting a worker of its own.
    #[tokio::test]
    async fn a_call_sent_right_after_another_gets_a_worker_of_its_own() {
        let workers = Arc::new(Workers::new(Entry { process: echo, free }));
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_BLOCKING_CALLS));
        let send = |text: &str| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            workers.submit(Job {
                request: CString::new(text).expect("no NUL"),
                reply,
                slot: Arc::clone(&slots).try_acquire_owned().expect("a free slot"),
            });
            answer
        };
        for round in 0..3 {
            // A worker that has served a call and gone to sleep.
            assert_eq!(send("warm").await.expect("answered").expect("echoed"), "warm");
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Two calls back to back, before the sleeping worker can wake.
            let slow = send("slow");
            let quick = send("quick");
            let started = Instant::now();
            assert_eq!(quick.await.expect("answered").expect("echoed"), "quick");
            let waited = started.elapsed();
            assert!(
                waited < Duration::from_millis(200),
                "round {round}: the quick call waited {waited:?} behind the slow one"
            );
            assert_eq!(slow.await.expect("answered").expect("echoed"), "slow");
        }
        assert_eq!(slots.available_permits(), MAX_BLOCKING_CALLS, "every slot is back");
    }
}
