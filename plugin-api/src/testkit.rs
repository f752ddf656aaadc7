//! The conformance kit: checks a plugin against the contract every host relies on. For plugin
//! authors, in their own tests (enable the `testkit` feature of `plugin-api` in
//! `[dev-dependencies]`).
//!
//! ```
//! use plugin_api::prelude::*;
//! use plugin_api::testkit::{block_on, check_plugin, CheckOptions};
//!
//! # #[derive(Default)] struct Echo;
//! # #[async_trait] impl OrchestrationPlugin for Echo {
//! #     fn name(&self) -> &str { "Echo" }
//! #     fn capabilities(&self) -> Vec<String> { vec!["echo".into()] }
//! #     async fn initialize(&self, _h: HostHandle) -> Result<(), PluginError> { Ok(()) }
//! #     async fn process_request(&self, r: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
//! #         if r.capability != "echo" { return Err(PluginError::invalid_request("unknown capability")); }
//! #         let text = r.data.get("text").and_then(|t| t.as_str())
//! #             .ok_or_else(|| PluginError::invalid_request("expected {\"text\": string}"))?;
//! #         Ok(IntegrationResponse::ok(serde_json::json!({ "text": text })))
//! #     }
//! #     async fn health_check(&self) -> HealthStatus { HealthStatus::healthy() }
//! # }
//! let report = block_on(check_plugin(&Echo::default(), CheckOptions::default()));
//! report.assert_conformant();
//! ```
//!
//! What is checked: the name (1 to 128 characters, no control characters) and version are set;
//! capability names are well-formed and unique; `initialize` succeeds with the given
//! configuration; the health check answers; a capability the plugin does not declare is refused
//! (an error, or `success: false`); every capability refuses data that is not a JSON object,
//! and survives an empty object and `null`; `shutdown` completes. Every call is contained
//! (a panic fails the check, it does not abort the run) and bounded by a timeout.
//!
//! The kit brings its own small [`Host`]: no agents, no other capabilities, the configuration
//! you give, and sleeping and spawning on plain threads, so it needs no async runtime. (A plugin
//! that itself needs one, such as a legacy C ABI plugin without the `nonblocking` promise, which
//! the host calls on Tokio's blocking pool, must be checked inside a Tokio runtime.) Each bounded
//! call starts a timer thread that sleeps out the timeout even when the call answers sooner.

use crate::ffi::{CatchUnwind, panic_message};
use crate::{
    AgentInfo, AgentStatus, BoxFuture, Host, HostHandle, IntegrationRequest, IntegrationResponse, OrchestrationPlugin,
    OrchestratorEvent, PluginError, is_valid_capability_name,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to run the checks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckOptions {
    /// The configuration handed to `initialize` (`Value::Null` by default).
    pub config: Value,
    /// The bound on each call into the plugin (5 s by default).
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            config: Value::Null,
            timeout: Duration::from_secs(5),
        }
    }
}

impl CheckOptions {
    /// Sets the configuration handed to `initialize`.
    #[must_use]
    pub fn with_config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Sets the bound on each call into the plugin.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Whether the plugin passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Every check's result for one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// The plugin's name, as it gave it.
    pub plugin: String,
    /// The checks, in the order run.
    pub checks: Vec<CheckResult>,
}

impl ConformanceReport {
    /// Whether every check passed.
    pub fn is_conformant(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// Panics with the whole report unless every check passed: for tests.
    #[track_caller]
    pub fn assert_conformant(&self) {
        assert!(self.is_conformant(), "plugin is not conformant:\n{self}");
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of `{}`:", self.plugin)?;
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}: {}", check.name, check.detail)?;
        }
        Ok(())
    }
}

/// A placeholder name no plugin should declare.
const UNKNOWN_CAPABILITY: &str = "conformance_kit_unknown_capability";

/// Runs every check against `plugin`. Never panics, whatever the plugin does.
pub async fn check_plugin(plugin: &dyn OrchestrationPlugin, options: CheckOptions) -> ConformanceReport {
    let mut checks = Vec::new();
    let mut push = |name: &str, passed: bool, detail: String| {
        checks.push(CheckResult {
            name: name.to_owned(),
            passed,
            detail,
        })
    };

    let name = panic::catch_unwind(AssertUnwindSafe(|| plugin.name().to_owned()));
    let name = match name {
        Ok(name) => {
            let ok = !name.is_empty() && name.chars().count() <= 128 && !name.chars().any(char::is_control);
            push("name", ok, format!("{name:?}"));
            name
        }
        Err(p) => {
            push("name", false, format!("name() panicked: {}", panic_message(p.as_ref())));
            String::from("(unnamed)")
        }
    };
    match panic::catch_unwind(AssertUnwindSafe(|| plugin.version().to_owned())) {
        Ok(v) => push("version", !v.trim().is_empty(), format!("{v:?}")),
        Err(p) => push(
            "version",
            false,
            format!("version() panicked: {}", panic_message(p.as_ref())),
        ),
    }
    let capabilities = match panic::catch_unwind(AssertUnwindSafe(|| plugin.capabilities())) {
        Ok(caps) => {
            let malformed: Vec<&String> = caps.iter().filter(|c| !is_valid_capability_name(c)).collect();
            let unique: BTreeSet<&String> = caps.iter().collect();
            let ok = !caps.is_empty() && malformed.is_empty() && unique.len() == caps.len();
            let detail = if caps.is_empty() {
                "declares no capability".to_owned()
            } else if !malformed.is_empty() {
                format!("malformed names {malformed:?} (lower-case snake_case, 1 to 64 characters)")
            } else if unique.len() != caps.len() {
                format!("a name is listed twice in {caps:?}")
            } else {
                format!("{caps:?}")
            };
            push("capabilities", ok, detail);
            caps
        }
        Err(p) => {
            push(
                "capabilities",
                false,
                format!("capabilities() panicked: {}", panic_message(p.as_ref())),
            );
            Vec::new()
        }
    };

    let host = HostHandle::new(
        name.as_str(),
        Arc::new(KitHost {
            config: options.config.clone(),
        }),
    );
    match bounded(options.timeout, || plugin.initialize(host)).await {
        Ok(Ok(())) => push("initialize", true, "succeeded".into()),
        Ok(Err(e)) => push("initialize", false, format!("returned an error: {e}")),
        Err(failure) => push("initialize", false, failure),
    }
    match bounded(options.timeout, || plugin.health_check()).await {
        Ok(health) => push("health_check", true, health.to_string()),
        Err(failure) => push("health_check", false, failure),
    }

    let request = IntegrationRequest::new(UNKNOWN_CAPABILITY, json!({}));
    let outcome = bounded(options.timeout, || plugin.process_request(request)).await;
    let (ok, detail) = judge_refusal(outcome);
    push("refuses an undeclared capability", ok, detail);

    let not_objects = [json!(42), json!("text"), json!([1, 2, 3]), json!(true)];
    for capability in &capabilities {
        for data in &not_objects {
            let request = IntegrationRequest::new(capability.clone(), data.clone());
            let outcome = bounded(options.timeout, || plugin.process_request(request)).await;
            let (ok, detail) = judge_refusal(outcome);
            push(&format!("`{capability}` refuses data {data}"), ok, detail);
        }
        for data in [json!({}), Value::Null] {
            let request = IntegrationRequest::new(capability.clone(), data.clone());
            let outcome = bounded(options.timeout, || plugin.process_request(request)).await;
            let (ok, detail) = match outcome {
                Ok(Ok(r)) => (true, format!("answered (success: {})", r.success)),
                Ok(Err(e)) => (true, format!("refused: {e}")),
                Err(failure) => (false, failure),
            };
            push(&format!("`{capability}` survives data {data}"), ok, detail);
        }
    }

    match bounded(options.timeout, || plugin.shutdown()).await {
        Ok(()) => push("shutdown", true, "completed".into()),
        Err(failure) => push("shutdown", false, failure),
    }
    ConformanceReport { plugin: name, checks }
}

/// Bad input must be refused the way the contract says: `success: false`, or
/// `PluginError::invalid_request` (any other error makes a host try its fallbacks, as if the
/// plugin had failed).
fn judge_refusal(outcome: Result<Result<IntegrationResponse, PluginError>, String>) -> (bool, String) {
    match outcome {
        Ok(Ok(r)) if !r.success => (
            true,
            format!("answered success: false ({})", r.error.unwrap_or_default()),
        ),
        Ok(Ok(r)) => (false, format!("accepted it and answered {}", r.data)),
        Ok(Err(e)) if e.is_invalid_request() => (true, format!("refused: {e}")),
        Ok(Err(e)) => (
            false,
            format!("failed with a {:?} error instead of invalid_request: {e}", e.kind),
        ),
        Err(failure) => (false, failure),
    }
}

/// Runs a plugin call with panics contained and a time limit; `Err` says what went wrong.
async fn bounded<'a, T>(timeout: Duration, make: impl FnOnce() -> BoxFuture<'a, T>) -> Result<T, String> {
    let fut =
        panic::catch_unwind(AssertUnwindSafe(make)).map_err(|p| format!("panicked: {}", panic_message(p.as_ref())))?;
    let mut call = CatchUnwind(fut);
    let mut limit = thread_sleep(timeout);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(result) = Pin::new(&mut call).poll(cx) {
            return Poll::Ready(result.map_err(|p| format!("panicked: {}", panic_message(p.as_ref()))));
        }
        match limit.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(format!("did not answer within {} ms", timeout.as_millis()))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Runs a future to completion on the current thread: for tests that have no async runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

/// The dynamic library of `package`'s cdylib example target `example`, for a test that loads
/// a plugin the way a host would. Call it from an integration test run by `cargo test`: the
/// examples are built beside the test binary then, and the path is returned at once. Run any
/// other way, it builds the example with cargo into a target directory of its own (`plugin-libs`
/// beside the test's), so that it never waits on the lock of the cargo running the test.
///
/// ```no_run
/// let path = plugin_api::testkit::example_library("plugin-security", "security_plugin")?;
/// # Ok::<(), String>(())
/// ```
pub fn example_library(package: &str, example: &str) -> Result<std::path::PathBuf, String> {
    let file = format!(
        "{}{example}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let beside = profile_dir.join("examples").join(&file);
    if beside.is_file() {
        return Ok(beside);
    }
    let target = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no target directory", profile_dir.display()))?
        .join("plugin-libs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--example", example, "--target-dir"])
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {package}'s example {example} failed"));
    }
    let built = target.join("debug").join("examples").join(&file);
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!("{} was not built", built.display()))
    }
}

/// A future that completes after `duration`, timed by a plain thread.
fn thread_sleep(duration: Duration) -> BoxFuture<'static, ()> {
    #[derive(Default)]
    struct State {
        done: bool,
        waker: Option<Waker>,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let timer = Arc::clone(&state);
    let deadline = Instant::now() + duration;
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let mut s = timer.lock().unwrap_or_else(|p| p.into_inner());
        s.done = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    Box::pin(std::future::poll_fn(move |cx| {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.done {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }))
}

/// The kit's host: the given configuration, no agents, no other capabilities.
struct KitHost {
    config: Value,
}

impl Host for KitHost {
    fn plugin_config(&self, _plugin: &str) -> Value {
        self.config.clone()
    }

    fn agents(&self) -> Vec<AgentInfo> {
        Vec::new()
    }

    fn agent(&self, _id: &str) -> Option<AgentInfo> {
        None
    }

    fn set_agent_status(&self, id: &str, _status: AgentStatus) -> Result<(), PluginError> {
        Err(PluginError::invalid_request(format!(
            "no agent `{id}` in the conformance kit's host"
        )))
    }

    fn call(
        &self,
        _caller: &str,
        request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        let message = format!(
            "the conformance kit's host serves no capabilities (asked for `{}`)",
            request.capability
        );
        Box::pin(std::future::ready(Err(PluginError::unavailable(message))))
    }

    fn emit(&self, _event: OrchestratorEvent) {}

    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ns(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        std::thread::spawn(move || {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| block_on(task)));
        });
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        thread_sleep(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HealthStatus, async_trait};

    /// A plugin that gets everything wrong.
    struct Careless;

    #[async_trait]
    impl OrchestrationPlugin for Careless {
        fn name(&self) -> &str {
            ""
        }
        fn capabilities(&self) -> Vec<String> {
            vec!["Bad Name".into(), "ok".into(), "ok".into()]
        }
        async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
            host.sleep(Duration::from_millis(1)).await;
            Ok(())
        }
        async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
            if request.data.is_number() {
                panic!("numbers break me");
            }
            if request.data.is_boolean() {
                std::future::pending::<()>().await;
            }
            Ok(IntegrationResponse::ok(request.data))
        }
        async fn health_check(&self) -> HealthStatus {
            HealthStatus::healthy()
        }
    }

    #[test]
    fn a_careless_plugin_fails_the_right_checks_without_aborting_the_run() {
        let options = CheckOptions::default().with_timeout(Duration::from_millis(50));
        let report = block_on(check_plugin(&Careless, options));
        let failed: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
        assert!(failed.contains(&"name"), "{report}");
        assert!(failed.contains(&"capabilities"), "{report}");
        assert!(failed.contains(&"refuses an undeclared capability"), "{report}");
        assert!(failed.contains(&"`ok` refuses data 42"), "{report}");
        let panic = report
            .checks
            .iter()
            .find(|c| c.name == "`ok` refuses data 42")
            .map(|c| c.detail.as_str());
        assert_eq!(panic, Some("panicked: numbers break me"));
        let hang = report
            .checks
            .iter()
            .find(|c| c.name == "`ok` refuses data true")
            .map(|c| c.detail.as_str());
        assert_eq!(hang, Some("did not answer within 50 ms"));
        assert!(
            !failed.contains(&"initialize"),
            "sleeping through the kit's host works: {report}"
        );
        assert!(!report.is_conformant());
    }
}
