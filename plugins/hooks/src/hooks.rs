//! The hooks themselves: how they are registered (from Rust through [`HookRegistry`], or by
//! another plugin through the host), kept in run order, and run with their failures contained.

use crate::ids::Callbacks;
use crate::isolate::{Ran, contained, inside_hook};
use crate::state::{Runtime, Shared, lock};
use plugin_api::{BoxFuture, HostHandle, IntegrationRequest, IntegrationResponse, Operation, OperationKind};
use plugin_api::{OperationSet, PluginError, Verdict};
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a pre-hook returns: a future of its [`Verdict`], or `Err` with why the hook itself
/// failed (a failure, not a refusal: see [`OnFailure`]).
pub type HookFuture = BoxFuture<'static, Result<Verdict, String>>;

/// Every hook, whatever its form, as the plugin runs it.
pub(crate) type HookFn = Arc<dyn Fn(Operation<'static>) -> HookFuture + Send + Sync>;

/// The kinds of operation the host lets a plugin intercept, and so the kinds a pre-hook may
/// be registered for.
pub(crate) const INTERCEPTABLE: OperationSet = OperationSet::EMPTY
    .with(OperationKind::AgentRegistration)
    .with(OperationKind::Dispatch)
    .with(OperationKind::TaskStart);

/// The longest hook name accepted.
const MAX_NAME_CHARS: usize = 128;

/// The most hooks the plugin holds (pre and post, from Rust and through the host together).
pub const MAX_HOOKS: usize = 256;

/// Whether a hook runs before an operation (and may refuse it) or after it (and only observes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    /// Before the operation: may refuse it with a [`Verdict::Veto`].
    Pre,
    /// After the operation, off the caller's path: observes only.
    Post,
}

impl HookStage {
    /// `"pre"` or `"post"`, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            HookStage::Pre => "pre",
            HookStage::Post => "post",
        }
    }
}

/// What happens to the operation when a pre-hook fails: returns `Err`, panics or outlasts
/// `hook_timeout_ms` (or what is left of the operation's `intercept_budget_ms`). Either way the
/// failure is recorded in the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The operation goes ahead (fail-open): a broken hook does not stop the fleet. The default.
    #[default]
    Allow,
    /// The operation is refused (fail-closed): for hooks that enforce a policy, where going
    /// ahead unchecked is worse than not going ahead. JSON: `"fail_closed": true`.
    Veto,
}

/// How a hook is registered: its priority (higher runs first) and what its failure means.
///
/// ```
/// use plugin_hooks::{HookOptions, OnFailure};
/// let options = HookOptions::default().with_priority(10).fail_closed();
/// assert_eq!((options.priority, options.on_failure), (10, OnFailure::Veto));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookOptions {
    /// Higher runs first; hooks of equal priority run in registration order. Default 0.
    pub priority: i32,
    /// What a failure of the hook does to the operation (pre-hooks only). Default
    /// [`OnFailure::Allow`].
    pub on_failure: OnFailure,
}

impl HookOptions {
    /// These options with `priority`.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// These options with `on_failure`.
    #[must_use]
    pub fn with_on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// These options failing closed: a failure of the hook refuses the operation.
    #[must_use]
    pub fn fail_closed(self) -> Self {
        self.with_on_failure(OnFailure::Veto)
    }
}

/// The kinds of operation a hook is registered for: one [`OperationKind`], an
/// [`OperationSet`], or an array or slice of kinds.
pub trait IntoOperationSet {
    /// The kinds, as a set.
    fn into_operation_set(self) -> OperationSet;
}

impl IntoOperationSet for OperationKind {
    fn into_operation_set(self) -> OperationSet {
        OperationSet::EMPTY.with(self)
    }
}

impl IntoOperationSet for OperationSet {
    fn into_operation_set(self) -> OperationSet {
        self
    }
}

impl<const N: usize> IntoOperationSet for [OperationKind; N] {
    fn into_operation_set(self) -> OperationSet {
        self.into_iter().collect()
    }
}

impl IntoOperationSet for &[OperationKind] {
    fn into_operation_set(self) -> OperationSet {
        self.iter().copied().collect()
    }
}

/// Why a hook could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookError {
    /// A hook of that name is registered already.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// The name is empty, longer than 128 characters, or holds control characters.
    InvalidName {
        /// The name.
        name: String,
    },
    /// The hook names no kind of operation.
    NoKinds {
        /// The hook's name.
        name: String,
    },
    /// A pre-hook for a kind the host never intercepts (only `agent_registration`,
    /// `dispatch` and `task_start` can be refused; any kind can have post-hooks).
    NotInterceptable {
        /// The hook's name.
        name: String,
        /// The kind.
        kind: OperationKind,
    },
    /// The plugin holds [`MAX_HOOKS`] hooks already.
    TooManyHooks {
        /// The hook's name.
        name: String,
        /// The cap ([`MAX_HOOKS`]).
        limit: usize,
    },
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::DuplicateName { name } => write!(
                f,
                "a hook named {name:?} is registered already: remove it first, or choose another name"
            ),
            HookError::InvalidName { name } => write!(
                f,
                "{name:?} is not a hook name: 1 to {MAX_NAME_CHARS} characters, no control characters"
            ),
            HookError::NoKinds { name } => write!(f, "hook {name:?} names no kind of operation"),
            HookError::NotInterceptable { name, kind } => write!(
                f,
                "hook {name:?}: `{kind}` operations cannot be intercepted, so they cannot have pre-hooks \
                 (pre-hooks: agent_registration, dispatch, task_start; post-hooks: any kind)"
            ),
            HookError::TooManyHooks { name, limit } => write!(
                f,
                "hook {name:?}: {limit} hooks are registered already, the most the plugin holds: remove one first"
            ),
        }
    }
}

impl std::error::Error for HookError {}

/// Where a hook came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Registered from Rust, through [`HookRegistry`].
    Rust,
    /// Registered through the host by another plugin, which serves `capability`; removing it
    /// through the host takes `token`, which only its registration answered with.
    Capability { capability: String, token: String },
}

/// One registered hook.
pub(crate) struct Hook {
    pub(crate) name: Arc<str>,
    pub(crate) kinds: OperationSet,
    pub(crate) stage: HookStage,
    pub(crate) priority: i32,
    /// Registration order, from a counter that only grows.
    pub(crate) sequence: u64,
    pub(crate) on_failure: OnFailure,
    pub(crate) source: Source,
    pub(crate) run: HookFn,
}

impl Hook {
    pub(crate) fn info(&self) -> HookInfo {
        HookInfo {
            name: self.name.to_string(),
            kinds: self.kinds,
            stage: self.stage,
            priority: self.priority,
            sequence: self.sequence,
            on_failure: self.on_failure,
            source: match &self.source {
                Source::Rust => "rust".to_owned(),
                Source::Capability { capability, .. } => capability.clone(),
            },
        }
    }
}

/// What the plugin says about one registered hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookInfo {
    /// Its unique name.
    pub name: String,
    /// The kinds of operation it is registered for.
    pub kinds: OperationSet,
    /// Before or after the operation.
    pub stage: HookStage,
    /// Its priority (higher runs first).
    pub priority: i32,
    /// Its place in registration order (among hooks of equal priority, lower runs first).
    pub sequence: u64,
    /// What its failure does to the operation.
    pub on_failure: OnFailure,
    /// `"rust"`, or the capability through which the registering plugin is called.
    pub source: String,
}

impl HookInfo {
    /// The JSON form `lifecycle_hooks` answers with.
    pub(crate) fn to_json(&self) -> Value {
        let events: Vec<&str> = self.kinds.iter().map(OperationKind::as_str).collect();
        json!({
            "name": self.name,
            "event": events.join(","),
            "events": events,
            "kind": self.stage.as_str(),
            "priority": self.priority,
            "source": self.source,
            "sequence": self.sequence,
            "fail_closed": self.on_failure == OnFailure::Veto,
        })
    }
}

/// Every hook, in run order, with what the plugin derives from them. Published as a whole
/// (see [`Shared::change_hooks`]): a change copies it.
#[derive(Default, Clone)]
pub(crate) struct HookTable {
    /// Higher priority first, then registration order: the order hooks run in.
    pub(crate) hooks: Arc<[Arc<Hook>]>,
    /// Kinds with at least one pre-hook.
    pub(crate) pre: OperationSet,
    /// Kinds with at least one post-hook.
    pub(crate) post: OperationSet,
    next_sequence: u64,
}

impl HookTable {
    /// Adds a hook (its sequence number assigned here), keeping run order.
    pub(crate) fn insert(&mut self, mut hook: Hook) -> Result<HookInfo, HookError> {
        if self.hooks.iter().any(|h| h.name == hook.name) {
            return Err(HookError::DuplicateName {
                name: hook.name.to_string(),
            });
        }
        if self.hooks.len() >= MAX_HOOKS {
            return Err(HookError::TooManyHooks {
                name: hook.name.to_string(),
                limit: MAX_HOOKS,
            });
        }
        hook.sequence = self.next_sequence;
        self.next_sequence += 1;
        let info = hook.info();
        let mut hooks: Vec<Arc<Hook>> = self.hooks.iter().cloned().collect();
        hooks.push(Arc::new(hook));
        self.rebuild(hooks);
        Ok(info)
    }

    /// Removes the hook named `name`.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Arc<Hook>> {
        let removed = self.get(name)?;
        let hooks = self.hooks.iter().filter(|h| &*h.name != name).cloned().collect();
        self.rebuild(hooks);
        Some(removed)
    }

    /// The hook named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Hook>> {
        self.hooks.iter().find(|h| &*h.name == name).cloned()
    }

    fn rebuild(&mut self, mut hooks: Vec<Arc<Hook>>) {
        hooks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.sequence.cmp(&b.sequence)));
        let kinds_of = |stage| {
            hooks
                .iter()
                .filter(|h| h.stage == stage)
                .flat_map(|h| h.kinds.iter())
                .collect::<OperationSet>()
        };
        self.pre = kinds_of(HookStage::Pre);
        self.post = kinds_of(HookStage::Post);
        self.hooks = hooks.into();
    }
}

/// Checks a hook's name and kinds before it is built.
pub(crate) fn check(name: &str, kinds: OperationSet, stage: HookStage) -> Result<(), HookError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(HookError::InvalidName { name: name.to_owned() });
    }
    if kinds.is_empty() {
        return Err(HookError::NoKinds { name: name.to_owned() });
    }
    if stage == HookStage::Pre {
        if let Some(kind) = kinds.iter().find(|k| !INTERCEPTABLE.contains(*k)) {
            return Err(HookError::NotInterceptable {
                name: name.to_owned(),
                kind,
            });
        }
    }
    Ok(())
}

/// The Rust handle on a [`HookIntegrationPlugin`](crate::HookIntegrationPlugin)'s hooks: keep
/// it (it is a cheap clone) after moving the plugin into the orchestrator's builder, and add or
/// remove hooks at any time. The host's operation feeds follow: a kind is intercepted only
/// while it has a pre-hook.
///
/// Hooks run in a documented, stable order: **higher priority first, then registration
/// order**. Names are unique.
///
/// ```
/// use plugin_api::{OperationKind, Verdict};
/// use plugin_hooks::HookIntegrationPlugin;
///
/// let plugin = HookIntegrationPlugin::new();
/// let hooks = plugin.hooks();
/// hooks.pre_hook_fn("no-guests", OperationKind::AgentRegistration, 10, |op| {
///     let guest = op.details.as_deref()
///         .and_then(|config| config["capabilities"].as_array())
///         .is_some_and(|caps| caps.iter().any(|c| c == "guest"));
///     if guest { Verdict::Veto("guests may not register".into()) } else { Verdict::Allow }
/// })?;
/// hooks.post_hook("audit", [OperationKind::Dispatch, OperationKind::TaskFinish], 0, |op| {
///     println!("{} took {} ns", op.kind, op.duration_ns);
/// })?;
/// assert_eq!(hooks.list().len(), 2);
/// assert!(hooks.remove("audit"));
/// # Ok::<(), plugin_hooks::HookError>(())
/// ```
#[derive(Clone)]
pub struct HookRegistry {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for HookRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.list().into_iter().map(|h| h.name).collect();
        f.debug_struct("HookRegistry").field("hooks", &names).finish()
    }
}

impl HookRegistry {
    /// Registers an asynchronous pre-hook for `kinds`, failing open (see
    /// [`pre_hook_with`](Self::pre_hook_with)).
    pub fn pre_hook<F>(
        &self,
        name: impl Into<String>,
        kinds: impl IntoOperationSet,
        priority: i32,
        hook: F,
    ) -> Result<HookInfo, HookError>
    where
        F: Fn(Operation<'static>) -> HookFuture + Send + Sync + 'static,
    {
        self.pre_hook_with(name, kinds, HookOptions::default().with_priority(priority), hook)
    }

    /// Registers an asynchronous pre-hook for `kinds` (only `agent_registration`, `dispatch`
    /// and `task_start` can be intercepted). Before each such operation the hook gets an owned
    /// copy of it (`details` holds what it works on: the agent's configuration, the request's
    /// data, the task's data) and answers `Ok(Verdict::Allow)`, `Ok(Verdict::Veto(reason))`,
    /// or `Err(why)` when it could not decide. It runs under `hook_timeout_ms` with panics
    /// contained; a failure is recorded and handled as `options.on_failure` says.
    pub fn pre_hook_with<F>(
        &self,
        name: impl Into<String>,
        kinds: impl IntoOperationSet,
        options: HookOptions,
        hook: F,
    ) -> Result<HookInfo, HookError>
    where
        F: Fn(Operation<'static>) -> HookFuture + Send + Sync + 'static,
    {
        self.add(
            name.into(),
            kinds.into_operation_set(),
            HookStage::Pre,
            options,
            Source::Rust,
            Arc::new(hook),
        )
    }

    /// Registers a synchronous pre-hook, failing open: a closure that decides at once. It must
    /// be quick (the operation waits for it, and a synchronous closure cannot be interrupted
    /// by the timeout); a panic in it is contained.
    pub fn pre_hook_fn<F>(
        &self,
        name: impl Into<String>,
        kinds: impl IntoOperationSet,
        priority: i32,
        hook: F,
    ) -> Result<HookInfo, HookError>
    where
        F: Fn(&Operation<'_>) -> Verdict + Send + Sync + 'static,
    {
        self.pre_hook(name, kinds, priority, move |op: Operation<'static>| -> HookFuture {
            let verdict = hook(&op);
            Box::pin(std::future::ready(Ok(verdict)))
        })
    }

    /// Registers a synchronous post-hook for `kinds` (any kind). It runs after each such
    /// operation, off the caller's path, on a task of the host's; a panic in it is contained
    /// and recorded.
    pub fn post_hook<F>(
        &self,
        name: impl Into<String>,
        kinds: impl IntoOperationSet,
        priority: i32,
        hook: F,
    ) -> Result<HookInfo, HookError>
    where
        F: Fn(&Operation<'_>) + Send + Sync + 'static,
    {
        let run: HookFn = Arc::new(move |op: Operation<'static>| -> HookFuture {
            hook(&op);
            Box::pin(std::future::ready(Ok(Verdict::Allow)))
        });
        let options = HookOptions::default().with_priority(priority);
        self.add(
            name.into(),
            kinds.into_operation_set(),
            HookStage::Post,
            options,
            Source::Rust,
            run,
        )
    }

    /// Registers an asynchronous post-hook for `kinds` (any kind), bounded by
    /// `hook_timeout_ms` like a pre-hook.
    pub fn post_hook_async<F>(
        &self,
        name: impl Into<String>,
        kinds: impl IntoOperationSet,
        priority: i32,
        hook: F,
    ) -> Result<HookInfo, HookError>
    where
        F: Fn(Operation<'static>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        let run: HookFn = Arc::new(move |op: Operation<'static>| -> HookFuture {
            let done = hook(op);
            Box::pin(async move {
                done.await;
                Ok(Verdict::Allow)
            })
        });
        let options = HookOptions::default().with_priority(priority);
        self.add(
            name.into(),
            kinds.into_operation_set(),
            HookStage::Post,
            options,
            Source::Rust,
            run,
        )
    }

    /// Removes the hook named `name`, whoever registered it; `false` when there is none. A run
    /// already under way finishes.
    pub fn remove(&self, name: &str) -> bool {
        self.shared.remove_hook(name).is_some()
    }

    /// Every hook, in run order.
    pub fn list(&self) -> Vec<HookInfo> {
        self.shared.hooks.load().hooks.iter().map(|h| h.info()).collect()
    }

    fn add(
        &self,
        name: String,
        kinds: OperationSet,
        stage: HookStage,
        options: HookOptions,
        source: Source,
        run: HookFn,
    ) -> Result<HookInfo, HookError> {
        check(&name, kinds, stage)?;
        self.shared.insert_hook(Hook {
            name: name.into(),
            kinds,
            stage,
            priority: options.priority,
            sequence: 0,
            on_failure: if stage == HookStage::Pre {
                options.on_failure
            } else {
                OnFailure::Allow
            },
            source,
            run,
        })
    }
}

/// A hook registered by another plugin: it calls `capability` through the host with
/// `{"hook", "kind", "operation"}`. For a pre-hook, an answer whose data holds
/// `"allow": false` refuses the operation (with its `"reason"`); any other successful answer
/// allows it; an error or `success: false` is a failure of the hook.
///
/// The call goes out under a fresh random correlation id, held in `callbacks` until it
/// answers (or is abandoned): operations under that id (the callback's own dispatch, and what
/// the callback calls with it) are not hooked. The operation's own correlation id travels in
/// the payload (`operation.correlation_id`), so traces still link the two.
pub(crate) fn remote_hook(
    host: HostHandle,
    callbacks: Arc<Callbacks>,
    name: Arc<str>,
    stage: HookStage,
    capability: String,
) -> HookFn {
    Arc::new(move |op: Operation<'static>| -> HookFuture {
        let callback = callbacks.begin();
        let data = json!({"hook": &*name, "kind": stage.as_str(), "operation": op});
        let request = IntegrationRequest::new(capability.clone(), data).with_correlation_id(callback.id().to_owned());
        let call = host.call(request);
        let capability = capability.clone();
        Box::pin(async move {
            let answer = call.await;
            drop(callback);
            verdict_of(&capability, answer)
        })
    })
}

/// Reads a hook callback's answer.
pub(crate) fn verdict_of(
    capability: &str,
    answer: Result<IntegrationResponse, PluginError>,
) -> Result<Verdict, String> {
    let response = answer.map_err(|e| format!("calling `{capability}` failed: {}", e.message))?;
    if !response.success {
        return Err(format!(
            "`{capability}` answered success: false: {}",
            response.error.as_deref().unwrap_or("no reason given")
        ));
    }
    match response.data.get("allow") {
        Some(Value::Bool(false)) => {
            let reason = response
                .data
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .map_or_else(|| format!("refused by `{capability}`"), str::to_owned);
            Ok(Verdict::Veto(reason))
        }
        _ => Ok(Verdict::Allow),
    }
}

/// How one run of a hook went, as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Allowed,
    Vetoed,
    Failed,
    TimedOut,
    Panicked,
    /// A post-hook that completed.
    Ran,
    /// A pre-hook not run because the operation's intercept budget ran out first.
    Skipped,
}

impl RunOutcome {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Allowed => "allowed",
            RunOutcome::Vetoed => "vetoed",
            RunOutcome::Failed => "failed",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Panicked => "panicked",
            RunOutcome::Ran => "ran",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// One run of one hook, in the history.
#[derive(Debug, Clone)]
pub(crate) struct HookRun {
    pub(crate) hook: Arc<str>,
    pub(crate) event: OperationKind,
    pub(crate) stage: HookStage,
    pub(crate) outcome: RunOutcome,
    pub(crate) reason: Option<String>,
    /// Whether this run refused the operation (a veto, or a failure of a fail-closed hook).
    pub(crate) refused: bool,
    pub(crate) duration_us: u64,
    pub(crate) correlation_id: String,
    pub(crate) at_ms: u64,
}

impl HookRun {
    pub(crate) fn to_json(&self) -> Value {
        let mut entry = json!({
            "hook": &*self.hook,
            "event": self.event,
            "kind": self.stage.as_str(),
            "outcome": self.outcome.as_str(),
            "refused": self.refused,
            "duration_us": self.duration_us,
            "correlation_id": self.correlation_id,
            "at_ms": self.at_ms,
        });
        if let Some(reason) = &self.reason {
            entry["reason"] = json!(reason);
        }
        entry
    }
}

/// Decrements the count of post-hook runs in flight when the run ends, however it ends.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.post_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most this many operations' post-hooks run at once; past it, an operation's post-hooks
/// are skipped and counted (`post_runs_dropped` in the history), so that slow post-hooks
/// under load cannot pile up tasks without bound.
pub(crate) const MAX_POST_RUNS_IN_FLIGHT: usize = 4096;

impl Shared {
    /// Adds a hook and widens the host's feeds if it needs them.
    pub(crate) fn insert_hook(&self, hook: Hook) -> Result<HookInfo, HookError> {
        self.change_hooks(|table| table.insert(hook))
    }

    /// Removes a hook and narrows the host's feeds if nothing needs them any more.
    pub(crate) fn remove_hook(&self, name: &str) -> Option<Arc<Hook>> {
        self.change_hooks(|table| table.remove(name).ok_or(())).ok()
    }

    /// Whether `op` is exempt from hooks because a hook caused it: it happens while this
    /// thread runs a hook (a Rust hook calling the orchestrator), or under the correlation id
    /// of a hook callback in flight (a remote hook's call, and what it calls in turn). Never
    /// by the name of what is called: any caller can name a capability.
    ///
    /// Not even this plugin's own capabilities (`lifecycle_hooks`, `observability`,
    /// `performance_hooks`) are exempt by name: the plugin never calls them itself, so hooking
    /// them cannot recurse, and a hook's own calls to them are exempt by context like any
    /// other. A policy hook can therefore see (and refuse) hook management too.
    fn caused_by_a_hook(&self, op: &Operation<'_>) -> bool {
        inside_hook() || self.callbacks.is_callback(&op.correlation_id)
    }

    fn record(&self, run: HookRun) {
        lock(&self.history).push(run);
    }

    /// Runs `hook` on a copy of `op`, contained and bounded by `timeout`, and records the run.
    /// `cut` says that `timeout` is what was left of the operation's intercept budget (shorter
    /// than `hook_timeout_ms`). Returns how it went and the reason (a veto's, or the
    /// failure's).
    async fn run_one(
        &self,
        rt: &Runtime,
        hook: &Hook,
        op: &Operation<'static>,
        timeout: Duration,
        cut: bool,
    ) -> (RunOutcome, Option<String>) {
        let started = rt.host.monotonic_ns();
        let ran = contained(rt.host.sleep(timeout), || (hook.run)(op.clone())).await;
        let duration_us = rt.host.monotonic_ns().saturating_sub(started) / 1_000;
        let (outcome, reason) = match ran {
            Ran::Done(Ok(Verdict::Allow)) if hook.stage == HookStage::Pre => (RunOutcome::Allowed, None),
            Ran::Done(Ok(Verdict::Allow)) => (RunOutcome::Ran, None),
            // A post-hook cannot refuse anything: a veto from one is read as "ran".
            Ran::Done(Ok(Verdict::Veto(_))) if hook.stage == HookStage::Post => (RunOutcome::Ran, None),
            Ran::Done(Ok(Verdict::Veto(reason))) => (RunOutcome::Vetoed, Some(reason)),
            Ran::Done(Err(why)) => (RunOutcome::Failed, Some(why)),
            Ran::Panicked(message) => (RunOutcome::Panicked, Some(format!("panicked: {message}"))),
            Ran::TimedOut if cut => (
                RunOutcome::TimedOut,
                Some(format!(
                    "did not answer within {} ms, when the operation's intercept budget of {} ms ran out",
                    timeout.as_millis(),
                    rt.intercept_budget.as_millis()
                )),
            ),
            Ran::TimedOut => (
                RunOutcome::TimedOut,
                Some(format!("did not answer within {} ms", timeout.as_millis())),
            ),
        };
        let failed = !matches!(outcome, RunOutcome::Allowed | RunOutcome::Vetoed | RunOutcome::Ran);
        if failed {
            tracing::warn!(
                hook = %hook.name,
                kind = %op.kind,
                stage = hook.stage.as_str(),
                outcome = outcome.as_str(),
                reason = reason.as_deref().unwrap_or_default(),
                fail_closed = hook.on_failure == OnFailure::Veto,
                "a hook failed"
            );
        }
        let refused = outcome == RunOutcome::Vetoed || (failed && hook.on_failure == OnFailure::Veto);
        self.record(HookRun {
            hook: Arc::clone(&hook.name),
            event: op.kind,
            stage: hook.stage,
            outcome,
            reason: reason.clone(),
            refused,
            duration_us,
            correlation_id: op.correlation_id.to_string(),
            at_ms: rt.host.now_unix_ms(),
        });
        (outcome, reason)
    }

    /// Runs the pre-hooks for `op`'s kind in run order; the first refusal stops the rest. All
    /// of them share the intercept budget: each runs for at most `hook_timeout_ms` or what is
    /// left of the budget, whichever is less. When the budget runs out before every hook
    /// decided, the hooks left are recorded as skipped, and the operation is refused if one of
    /// the undecided hooks (the one cut off included) fails closed: the host would otherwise
    /// let the operation through once its own call timeout expired.
    pub(crate) async fn run_pre_hooks(&self, op: &Operation<'_>) -> Verdict {
        let Some(rt) = self.runtime.get() else {
            return Verdict::Allow;
        };
        let hooks = {
            let table = self.hooks.load();
            if !table.pre.contains(op.kind) {
                return Verdict::Allow;
            }
            Arc::clone(&table.hooks)
        };
        if self.caused_by_a_hook(op) {
            return Verdict::Allow;
        }
        let started = rt.host.monotonic_ns();
        let budget_ns = u64::try_from(rt.intercept_budget.as_nanos()).unwrap_or(u64::MAX);
        let owned = op.clone().into_owned();
        let mut pending = hooks
            .iter()
            .filter(|h| h.stage == HookStage::Pre && h.kinds.contains(op.kind));
        while let Some(hook) = pending.next() {
            let left = budget_ns.saturating_sub(rt.host.monotonic_ns().saturating_sub(started));
            if left == 0 {
                return self.out_of_budget(rt, &owned, None, std::iter::once(hook).chain(pending));
            }
            let left = Duration::from_nanos(left);
            let cut = left < rt.hook_timeout;
            let (outcome, reason) = self.run_one(rt, hook, &owned, left.min(rt.hook_timeout), cut).await;
            let reason = reason.unwrap_or_default();
            match outcome {
                RunOutcome::Vetoed => {
                    tracing::debug!(hook = %hook.name, kind = %op.kind, %reason, "a pre-hook refused the operation");
                    return Verdict::Veto(format!("hook {:?}: {reason}", &*hook.name));
                }
                RunOutcome::TimedOut if cut => {
                    return self.out_of_budget(rt, &owned, Some(hook), pending);
                }
                RunOutcome::Failed | RunOutcome::TimedOut | RunOutcome::Panicked
                    if hook.on_failure == OnFailure::Veto =>
                {
                    return Verdict::Veto(format!(
                        "hook {:?} failed and fails closed ({}): {reason}",
                        &*hook.name,
                        outcome.as_str()
                    ));
                }
                _ => {}
            }
        }
        Verdict::Allow
    }

    /// The intercept budget ran out: `cut_off` (already recorded as timed out) did not
    /// decide, and `skipped` never ran. Records the skipped hooks; refuses the operation when
    /// one of the undecided hooks fails closed.
    fn out_of_budget<'h>(
        &self,
        rt: &Runtime,
        op: &Operation<'static>,
        cut_off: Option<&'h Arc<Hook>>,
        skipped: impl Iterator<Item = &'h Arc<Hook>>,
    ) -> Verdict {
        let budget_ms = rt.intercept_budget.as_millis();
        let fails_closed = |h: &Hook| h.on_failure == OnFailure::Veto;
        let mut refused_by = cut_off.filter(|h| fails_closed(h)).map(|h| Arc::clone(&h.name));
        for hook in skipped {
            // The first undecided hook that fails closed is the one that refuses.
            let refuses = refused_by.is_none() && fails_closed(hook);
            if refuses {
                refused_by = Some(Arc::clone(&hook.name));
            }
            self.record(HookRun {
                hook: Arc::clone(&hook.name),
                event: op.kind,
                stage: hook.stage,
                outcome: RunOutcome::Skipped,
                reason: Some(format!(
                    "the operation's intercept budget of {budget_ms} ms ran out before it ran"
                )),
                refused: refuses,
                duration_us: 0,
                correlation_id: op.correlation_id.to_string(),
                at_ms: rt.host.now_unix_ms(),
            });
        }
        tracing::warn!(
            kind = %op.kind,
            budget_ms = u64::try_from(budget_ms).unwrap_or(u64::MAX),
            refused_by = refused_by.as_deref().unwrap_or_default(),
            "the intercept budget ran out before every pre-hook decided"
        );
        match refused_by {
            Some(name) => Verdict::Veto(format!(
                "the intercept budget of {budget_ms} ms ran out before hook {:?} decided, and it fails closed",
                &*name
            )),
            None => Verdict::Allow,
        }
    }

    /// Starts the post-hooks for `op`'s kind on a task of the host's, if there are any: the
    /// caller only pays for copying the operation.
    pub(crate) fn enqueue_post_hooks(self: &Arc<Self>, op: &Operation<'_>) {
        let Some(rt) = self.runtime.get() else { return };
        let hooks = {
            let table = self.hooks.load();
            if !table.post.contains(op.kind) {
                return;
            }
            Arc::clone(&table.hooks)
        };
        if self.caused_by_a_hook(op) {
            return;
        }
        if self.post_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_POST_RUNS_IN_FLIGHT {
            self.post_in_flight.fetch_sub(1, Ordering::AcqRel);
            self.post_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let guard = InFlight(Arc::clone(self));
        let owned = op.clone().into_owned();
        let shared = Arc::clone(self);
        rt.host.spawn(async move {
            let _guard = guard;
            let Some(rt) = shared.runtime.get() else { return };
            for hook in hooks
                .iter()
                .filter(|h| h.stage == HookStage::Post && h.kinds.contains(owned.kind))
            {
                shared.run_one(rt, hook, &owned, rt.hook_timeout, false).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, stage: HookStage, kinds: OperationSet, priority: i32, source: Source) -> Hook {
        Hook {
            name: name.into(),
            kinds,
            stage,
            priority,
            sequence: 0,
            on_failure: OnFailure::Allow,
            source,
            run: Arc::new(|_| -> HookFuture { Box::pin(std::future::ready(Ok(Verdict::Allow))) }),
        }
    }

    fn dispatch() -> OperationSet {
        OperationKind::Dispatch.into_operation_set()
    }

    #[test]
    fn hooks_run_by_priority_then_registration_order() {
        let mut table = HookTable::default();
        for (name, priority) in [("p5", 5), ("p10a", 10), ("p10b", 10), ("m1", -1)] {
            table
                .insert(hook(name, HookStage::Pre, dispatch(), priority, Source::Rust))
                .expect("inserts");
        }
        let order: Vec<&str> = table.hooks.iter().map(|h| &*h.name).collect();
        assert_eq!(order, ["p10a", "p10b", "p5", "m1"]);
        let sequences: Vec<u64> = table.hooks.iter().map(|h| h.sequence).collect();
        assert_eq!(sequences, [1, 2, 0, 3]);
        // Removing and re-adding puts a hook behind its equals: sequence numbers only grow.
        assert!(table.remove("p10a").is_some());
        table
            .insert(hook("p10a", HookStage::Pre, dispatch(), 10, Source::Rust))
            .expect("inserts");
        let order: Vec<&str> = table.hooks.iter().map(|h| &*h.name).collect();
        assert_eq!(order, ["p10b", "p10a", "p5", "m1"]);
    }

    #[test]
    fn names_are_unique_and_the_table_knows_its_kinds() {
        let mut table = HookTable::default();
        let task_finish = OperationKind::TaskFinish.into_operation_set();
        table
            .insert(hook(
                "a",
                HookStage::Pre,
                dispatch(),
                0,
                Source::Capability {
                    capability: "gate".into(),
                    token: "t".into(),
                },
            ))
            .expect("inserts");
        table
            .insert(hook("b", HookStage::Post, task_finish, 0, Source::Rust))
            .expect("inserts");
        let duplicate = table.insert(hook("a", HookStage::Post, task_finish, 0, Source::Rust));
        assert_eq!(duplicate.err(), Some(HookError::DuplicateName { name: "a".into() }));
        assert_eq!(table.pre, dispatch());
        assert_eq!(table.post, task_finish);
        assert!(table.remove("a").is_some() && table.remove("a").is_none());
        assert!(table.pre.is_empty());
    }

    #[test]
    fn the_number_of_hooks_is_capped() {
        let mut table = HookTable::default();
        let finish = OperationKind::TaskFinish.into_operation_set();
        for i in 0..MAX_HOOKS {
            table
                .insert(hook(&format!("h{i}"), HookStage::Post, finish, 0, Source::Rust))
                .expect("under the cap");
        }
        let refused = table
            .insert(hook("one-too-many", HookStage::Post, finish, 0, Source::Rust))
            .expect_err("over the cap");
        assert_eq!(
            refused,
            HookError::TooManyHooks {
                name: "one-too-many".into(),
                limit: 256
            }
        );
        assert!(refused.to_string().contains("256"), "{refused}");
        assert!(table.remove("h0").is_some());
        assert!(
            table
                .insert(hook("one-too-many", HookStage::Post, finish, 0, Source::Rust))
                .is_ok()
        );
    }

    #[test]
    fn registrations_are_checked() {
        assert!(check("ok", dispatch(), HookStage::Pre).is_ok());
        assert!(matches!(
            check("", dispatch(), HookStage::Pre),
            Err(HookError::InvalidName { .. })
        ));
        assert!(matches!(
            check("a\nb", dispatch(), HookStage::Pre),
            Err(HookError::InvalidName { .. })
        ));
        assert!(matches!(
            check(&"x".repeat(129), dispatch(), HookStage::Pre),
            Err(HookError::InvalidName { .. })
        ));
        assert!(matches!(
            check("x", OperationSet::EMPTY, HookStage::Post),
            Err(HookError::NoKinds { .. })
        ));
        let finish = [OperationKind::Dispatch, OperationKind::TaskFinish].into_operation_set();
        let refused = check("x", finish, HookStage::Pre).expect_err("task_finish cannot be intercepted");
        assert_eq!(
            refused,
            HookError::NotInterceptable {
                name: "x".into(),
                kind: OperationKind::TaskFinish
            }
        );
        assert!(refused.to_string().contains("task_finish"));
        assert!(check("x", finish, HookStage::Post).is_ok());
    }

    #[test]
    fn callback_answers_are_read_as_verdicts_or_failures() {
        let ok = |data: Value| Ok(IntegrationResponse::ok(data));
        assert_eq!(verdict_of("gate", ok(json!({"allow": true}))), Ok(Verdict::Allow));
        assert_eq!(verdict_of("gate", ok(json!(null))), Ok(Verdict::Allow));
        assert_eq!(
            verdict_of("gate", ok(json!({"allow": false, "reason": "not today"}))),
            Ok(Verdict::Veto("not today".into()))
        );
        assert_eq!(
            verdict_of("gate", ok(json!({"allow": false}))),
            Ok(Verdict::Veto("refused by `gate`".into()))
        );
        let failed = verdict_of("gate", Ok(IntegrationResponse::failure("broken"))).expect_err("a failure");
        assert!(failed.contains("broken"), "{failed}");
        let failed = verdict_of("gate", Err(PluginError::new("down"))).expect_err("a failure");
        assert!(failed.contains("down") && failed.contains("gate"), "{failed}");
    }
}
