//! `HookIntegrationPlugin`: pre-hooks that may refuse agent registrations, dispatches and task
//! starts, post-hooks that observe any operation, span records with correlation ids, and
//! slow-operation detection. For applications that embed the orchestrator (statically, or as a
//! dynamic library built from this crate) and for plugin authors who want to hook operations.
//!
//! The plugin is built on the host's operation feeds (`plugin_api::operation`): it
//! **intercepts** exactly the kinds of operation that have a pre-hook and **observes** the
//! kinds that have a post-hook plus those its span records and thresholds need (dispatch, task
//! finish, agent registration). It tells the host whenever that changes, so with no pre-hook
//! the host never waits for this plugin.
//!
//! ```
//! use plugin_api::{OperationKind, Verdict};
//! use plugin_hooks::{HookIntegrationPlugin, HookOptions};
//!
//! let plugin = HookIntegrationPlugin::new();
//! let hooks = plugin.hooks(); // keep it: the plugin itself moves into the orchestrator
//! hooks.pre_hook_fn("no-guests", OperationKind::AgentRegistration, 10, |op| {
//!     // Before a registration, `details` is the agent's configuration.
//!     let guest = op.details.as_deref()
//!         .and_then(|config| config["capabilities"].as_array())
//!         .is_some_and(|caps| caps.iter().any(|c| c == "guest"));
//!     if guest { Verdict::Veto("guests may not register".into()) } else { Verdict::Allow }
//! })?;
//! // An asynchronous hook that must not be skipped when it fails: it fails closed.
//! hooks.pre_hook_with("quota", OperationKind::Dispatch, HookOptions::default().fail_closed(), |op| {
//!     Box::pin(async move { Ok(Verdict::Allow) })
//! })?;
//! // Orchestrator::builder().plugin(plugin) ...; then `register_agent` of a guest fails with
//! // "registration refused by HookIntegrationPlugin: hook \"no-guests\": guests may not register".
//! # Ok::<(), plugin_hooks::HookError>(())
//! ```
//!
//! # Hooks
//!
//! **Order.** The hooks for an operation run one after the other in a stable order: **higher
//! priority first, then registration order** (each hook gets a sequence number from a counter
//! that only grows; a hook removed and added again goes behind its equals). `lifecycle_hooks`
//! `list` shows them in that order.
//!
//! **Pre-hooks** run before an operation of their kinds (`agent_registration`, `dispatch` and
//! `task_start` can be intercepted) and get an owned copy of it whose `details` is what the
//! operation works on: the agent's configuration (`{id?, name?, capabilities, capacity,
//! metadata}`), the request's data, the task's data. The first hook that answers
//! [`Verdict::Veto`](plugin_api::Verdict) stops the rest and refuses the operation; the caller
//! sees `... refused by HookIntegrationPlugin: hook "<name>": <reason>`. A refused
//! registration leaves no agent behind, a refused dispatch reaches no provider, a refused task
//! never counts on the agent's load.
//!
//! **Isolation.** Each hook run is bounded by `hook_timeout_ms` (on the host's timer) with
//! panics contained, both when the hook is called and while its future is polled. A hook that
//! returns `Err`, panics or times out is recorded in the history (`failed`, `panicked`,
//! `timed_out`) and the operation goes ahead (**fail-open**), unless the hook was registered to
//! **fail closed** ([`OnFailure::Veto`], JSON `"fail_closed": true`): then the operation is
//! refused with `hook "<name>" failed and fails closed (<outcome>): <why>`. A synchronous hook
//! (`pre_hook_fn`, `post_hook`) cannot be interrupted: keep it quick. The host also bounds the
//! whole interception by its call timeout (2 s by default) and lets the operation go ahead when
//! that expires, so keep `hook_timeout_ms` times the number of pre-hooks for one kind below it,
//! or a fail-closed hook late in the order may never get to refuse.
//!
//! **Post-hooks** run after an operation of their kinds (any kind, with its outcome and
//! duration), never on the caller's path: `observe` only copies the operation and hands it to a
//! task of the host's, which runs that operation's post-hooks in order, each bounded and
//! contained like a pre-hook. Post-hooks of different operations may run concurrently. A
//! dispatch refused by a pre-hook is observed too, with outcome `vetoed`; a refused
//! registration or task is not (it never happened). Past 4,096 operations with post-hooks
//! running at once, further operations' post-hooks are skipped and counted
//! (`post_runs_dropped` in `history`).
//!
//! **Hooks from other plugins.** A plugin registers a hook through the host by calling
//! `lifecycle_hooks` (`op: "register"`) with a `capability` it serves. When the event happens,
//! this plugin calls that capability with `{"hook": name, "kind": "pre" | "post", "operation":
//! <the operation as JSON>}` (and the operation's correlation id). For a pre-hook, an answer
//! whose data holds `"allow": false` refuses the operation with its `"reason"`; any other
//! successful answer allows it; an error or `success: false` is a failure of the hook (see
//! isolation). The registering plugin's capabilities are not routed yet while it initializes,
//! so the capability is not checked at registration: a wrong one shows in the history.
//!
//! **No recursion.** Dispatches of `lifecycle_hooks` itself and of any capability a hook calls
//! back never run hooks (they are still recorded as spans and checked against thresholds).
//!
//! # Capabilities
//!
//! **`lifecycle_hooks`**: `op` selects the operation (`list` when absent).
//! - `{"op": "list"}` -> `{"hooks": [{"name", "event", "events", "kind": "pre" | "post",
//!   "priority", "source", "sequence", "fail_closed"}]}` in run order. `events` lists the kinds
//!   (`event` is them joined with `,`: one kind for hooks registered through the host);
//!   `source` is `"rust"` or the capability the hook calls back.
//! - `{"op": "history", "limit"?}` -> `{"history": [{"hook", "event", "kind", "outcome":
//!   "allowed" | "vetoed" | "failed" | "timed_out" | "panicked" | "ran", "reason"?, "refused",
//!   "duration_us", "correlation_id", "at_ms"}], "post_runs_dropped"}`, newest first, from a
//!   ring of the last `history_size` runs. `refused` says whether the run refused the
//!   operation (a veto, or a failure of a fail-closed hook); `correlation_id` is empty for
//!   agent registrations, which have none.
//! - `{"op": "register", "name", "event": "<operation kind>", "kind": "pre" | "post",
//!   "capability", "priority"? (default 0), "fail_closed"? (default false, pre-hooks only)}` ->
//!   `{"registered": <the hook, as in list>}`. Event names: `agent_registration`, `dispatch`,
//!   `task_start` (these three for pre-hooks), `task_finish`, `agent_status_change`,
//!   `provider_failure`. Names are unique.
//! - `{"op": "unregister", "name"}` -> `{"unregistered": <the hook>}`. Hooks registered from
//!   Rust can only be removed from Rust ([`HookRegistry::remove`]).
//!
//! **`observability`**: the host emits `tracing` spans itself (`execute_tool` per dispatch,
//! `invoke_agent` per agent task); this capability keeps the last `span_buffer` operations as
//! span records, to read without a tracing backend.
//! - `{"op": "recent", "correlation_id"?, "limit"? (default 100, at most span_buffer)}` ->
//!   `{"spans": [{"name": "execute_tool" | "invoke_agent" | "register_agent", "correlation_id",
//!   "fields": {"gen_ai.operation.name", "gen_ai.tool.name"? (the capability),
//!   "gen_ai.agent.id"?, "served_by"? (or "vetoed_by" when refused), "task.kind"?, "outcome",
//!   "fallback", "error"?},
//!   "duration_us", "at_ns" (the host's monotonic clock)}]}`, newest first, only those of
//!   `correlation_id` when given.
//!
//! **`performance_hooks`**: thresholds per operation name, the most specific applying:
//! `"dispatch:<capability>"` before `"dispatch"` (any capability), `"task:<kind>"` (the task
//! data's `kind`) before `"task"`, and `"agent_registration"`. An operation that took longer
//! than its threshold is kept (the last `slow_buffer`) and announced with a custom event
//! `slow_operation` (`OrchestratorEvent::Custom { source: "HookIntegrationPlugin", name:
//! "slow_operation", data }`, data `{"operation", "threshold", "duration_ms", "threshold_ms",
//! "correlation_id", "agent_id", "capability", "outcome"}`).
//! - `{"op": "slow", "limit"? (default 100)}` -> `{"slow": [{"operation", "threshold",
//!   "duration_ms", "threshold_ms", "correlation_id", "agent_id", "capability", "outcome",
//!   "at_ms"}]}`, newest first. `operation` names the operation itself (`dispatch:<capability>`,
//!   `task:<kind>` or `task`, `agent_registration`), `threshold` the threshold that applied.
//! - `{"op": "set_threshold", "operation", "ms"}` -> `{"operation", "ms", "previous",
//!   "thresholds"}`; `ms` is a positive integer, or `null` to remove the threshold.
//! - `{"op": "clear_threshold", "operation"}` -> `{"operation", "previous", "thresholds"}`.
//! - `{"op": "thresholds"}` -> `{"thresholds": {name: ms}}`.
//!
//! Malformed requests (data that is not an object, an unknown `op`, a missing or mistyped
//! field, an unknown field, an unknown event name, a `kind` other than pre or post, a `limit`
//! that is not a positive integer, `ms` of zero or less) are refused with
//! `PluginError::invalid_request`, saying what was expected.
//!
//! # Configuration
//!
//! ```toml
//! [HookIntegrationPlugin]
//! hook_timeout_ms = 250     # bound on one hook run (1 to 60000; keep it below the host's call timeout)
//! history_size = 1000       # hook runs kept for `history`
//! span_buffer = 4096        # span records kept for `recent`
//! slow_buffer = 1000        # slow operations kept for `slow`
//!
//! [HookIntegrationPlugin.thresholds_ms]
//! dispatch = 500
//! "dispatch:semantic_routing" = 50
//! "task:build" = 60000
//! ```
//!
//! Buffers hold 1 to 1,000,000 entries; thresholds are at least 1 ms. Unknown keys are refused
//! at initialization, naming the key.

mod hooks;
mod isolate;
mod perf;
mod plugin;
mod ring;
mod spans;
mod state;

pub use hooks::{HookError, HookFuture, HookInfo, HookOptions, HookRegistry, HookStage, IntoOperationSet, OnFailure};
pub use plugin::HookIntegrationPlugin;

/// The plugin's name (and the table of its configuration).
pub const NAME: &str = "HookIntegrationPlugin";
/// The capability that registers, lists and removes hooks, and reads their history.
pub const LIFECYCLE_HOOKS: &str = "lifecycle_hooks";
/// The capability that reads span records.
pub const OBSERVABILITY: &str = "observability";
/// The capability that sets thresholds and reads slow operations.
pub const PERFORMANCE_HOOKS: &str = "performance_hooks";
