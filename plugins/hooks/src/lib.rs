//! `HookIntegrationPlugin`: pre-hooks that may refuse agent registrations, dispatches and task
//! starts, post-hooks that observe any operation, span records with correlation ids, and
//! slow-operation detection. For applications that embed the orchestrator (statically, or as a
//! dynamic library built from this crate) and for plugin authors who want to hook operations.
//!
//! The plugin is built on the host's operation feeds (`plugin_api::operation`): it
//! **intercepts** exactly the kinds of operation that have a pre-hook and **observes** the
//! kinds that have a post-hook plus those its span records and thresholds need. It tells the
//! host whenever that changes.
//!
//! **What it costs.** Registering the plugin is never free, hooks or not: `observability` and
//! `performance_hooks` need every dispatch, every finished agent task and every agent
//! registration, so the host calls `observe` inline after each of them, on the caller's thread.
//! That call records a span (into a buffer whose old entries are reused: no allocation once
//! the buffer is full, one short lock) and checks the thresholds (a lock-free snapshot); it
//! allocates only for an operation slower than its threshold, or one with post-hooks to copy.
//! Loaded as a dynamic library, each of those operations also crosses the stable ABI as JSON
//! (about a microsecond). Interception is what is free until used: the host waits for this
//! plugin before an operation only while a pre-hook exists for that kind.
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
//! (`pre_hook_fn`, `post_hook`) cannot be interrupted: keep it quick.
//!
//! **The intercept budget.** The host bounds each interception by its call timeout (2 s by
//! default) and lets the operation go ahead when that expires, which would turn a hanging
//! fail-closed hook into a fail-open one. So all pre-hooks of one operation share
//! `intercept_budget_ms` (1.5 s by default; keep it below the host's `call_timeout`): each
//! runs for `hook_timeout_ms` or what is left of the budget, whichever is less. When the
//! budget runs out before every hook decided, the hook cut off is recorded as `timed_out` and
//! the hooks after it as `skipped`; if any of those undecided hooks fails closed, the operation
//! is refused (`the intercept budget of <ms> ms ran out before hook "<name>" decided, and it
//! fails closed`), otherwise it goes ahead.
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
//! `lifecycle_hooks` (`op: "register"`) with a `capability` it serves, and keeps the `token`
//! the registration answers with: removing the hook through the host takes it (the host does
//! not say who calls, so the token is what stands for the registering plugin). When the event
//! happens, this plugin calls that capability with `{"hook": name, "kind": "pre" | "post",
//! "operation": <the operation as JSON>}`. The call carries a fresh random correlation id of
//! its own; the operation's correlation id is in the payload (`operation.correlation_id`), to
//! link the two in traces. For a pre-hook, an answer whose data holds `"allow": false` refuses
//! the operation with its `"reason"`; any other successful answer allows it; an error or
//! `success: false` is a failure of the hook (see isolation). The registering plugin's
//! capabilities are not routed yet while it initializes, so the capability is not checked at
//! registration: a wrong one shows in the history. The plugin holds at most [`MAX_HOOKS`]
//! (256) hooks, however registered.
//!
//! **Operations a hook causes are not hooked.** They are recognized by their context, never
//! by what they call (any caller can name a capability, so naming one as a callback exempts
//! nothing): a hook callback's dispatch, and whatever runs under its correlation id while the
//! callback is in flight, run no hooks; neither does an operation started on the thread that
//! is running a hook (a Rust hook that awaits `Orchestrator::execute` directly: without this,
//! the hook would intercept its own call, again and again, until the stack overflowed). They
//! are still recorded as spans and checked against thresholds. An operation a hook hands to
//! another task (spawns) is hooked like any other: a hook that spawns the call it hooks loops.
//! Nothing is exempt by name, this plugin's own capabilities included, so a pre-hook on
//! dispatches also sees calls of `lifecycle_hooks`: a fail-closed one whose callback is broken
//! refuses those too, and only [`HookRegistry::remove`] (from Rust) can take it out then.
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
//!   ring of the last `history_size` runs; `outcome` may also be `"skipped"` (a pre-hook the
//!   intercept budget left no time for). `refused` says whether the run refused the operation
//!   (a veto, a failure of a fail-closed hook, or the first undecided fail-closed hook when
//!   the budget ran out); `correlation_id` is empty for agent registrations, which have none.
//! - `{"op": "register", "name", "event": "<operation kind>", "kind": "pre" | "post",
//!   "capability", "priority"? (default 0), "fail_closed"? (default false, pre-hooks only)}` ->
//!   `{"registered": <the hook, as in list>, "token": <32 hex digits>}`. Event names:
//!   `agent_registration`, `dispatch`, `task_start` (these three for pre-hooks),
//!   `task_finish`, `agent_status_change`, `provider_failure`. Names are unique.
//! - `{"op": "unregister", "name", "token"}` -> `{"unregistered": <the hook>}`; `token` is the
//!   one `register` answered with. Hooks registered from Rust can only be removed from Rust
//!   ([`HookRegistry::remove`]), which can remove any hook.
//!
//! **`observability`**: the host emits `tracing` spans itself (`execute_tool` per dispatch,
//! `invoke_agent` per agent task); this capability keeps the last `span_buffer` operations or
//! so as span records, to read without a tracing backend. (They are kept in 2 to 4 shards of
//! `span_buffer / shards` each, so that threads recording at once rarely wait for each other; a
//! thread much busier than the others keeps a little fewer of its own.)
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
//! "correlation_id", "agent_id", "capability", "outcome"}`). At most `slow_events_per_s`
//! events go out a second (a token bucket, as large as the rate, on the host's monotonic
//! clock); the others are counted, not emitted, and every slow operation is still kept.
//! - `{"op": "slow", "limit"? (default 100)}` -> `{"slow": [{"operation", "threshold",
//!   "duration_ms", "threshold_ms", "correlation_id", "agent_id", "capability", "outcome",
//!   "at_ms"}], "events_suppressed"}`, newest first. `operation` names the operation itself
//!   (`dispatch:<capability>`, `task:<kind>` or `task`, `agent_registration`), `threshold` the
//!   threshold that applied; `events_suppressed` counts the `slow_operation` events the rate
//!   limit held back.
//! - `{"op": "set_threshold", "operation", "ms"}` -> `{"operation", "ms", "previous",
//!   "thresholds"}`; `ms` is a positive integer, or `null` to remove the threshold. At most
//!   1,024 thresholds are kept: a new one beyond that is refused (clear one first).
//! - `{"op": "clear_threshold", "operation"}` -> `{"operation", "previous", "thresholds"}`.
//! - `{"op": "thresholds"}` -> `{"thresholds": {name: ms}}`.
//!
//! Malformed requests (data that is not an object, an unknown `op`, a missing or mistyped
//! field, an unknown field, an unknown event name, a `kind` other than pre or post, a `limit`
//! that is not a positive integer, `ms` of zero or less), and requests over a cap or without
//! the right to what they ask (a hook beyond 256, a threshold beyond 1,024, `unregister`
//! without the hook's token) are refused with `PluginError::invalid_request`, saying what was
//! expected.
//!
//! # Configuration
//!
//! ```toml
//! [HookIntegrationPlugin]
//! hook_timeout_ms = 250       # bound on one hook run (1 to 60000)
//! intercept_budget_ms = 1500  # shared by all pre-hooks of one operation (1 to 60000);
//!                             # keep it below the host's call_timeout (2000 ms by default)
//! history_size = 1000         # hook runs kept for `history`
//! span_buffer = 4096          # span records kept for `recent`
//! slow_buffer = 1000          # slow operations kept for `slow`
//! slow_events_per_s = 100     # most `slow_operation` events a second (1 to 1000000)
//!
//! [HookIntegrationPlugin.thresholds_ms]
//! dispatch = 500
//! "dispatch:semantic_routing" = 50
//! "task:build" = 60000
//! ```
//!
//! Buffers hold 1 to 65,536 entries; thresholds are at least 1 ms, and at most 1,024 of them.
//! Unknown keys are refused at initialization, naming the key.

mod hooks;
mod ids;
mod isolate;
mod perf;
mod plugin;
mod ring;
mod spans;
mod state;
#[cfg(test)]
mod testhost;

pub use hooks::{
    HookError, HookFuture, HookInfo, HookOptions, HookRegistry, HookStage, IntoOperationSet, MAX_HOOKS, OnFailure,
};
pub use plugin::HookIntegrationPlugin;

/// The plugin's name (and the table of its configuration).
pub const NAME: &str = "HookIntegrationPlugin";
/// The capability that registers, lists and removes hooks, and reads their history.
pub const LIFECYCLE_HOOKS: &str = "lifecycle_hooks";
/// The capability that reads span records.
pub const OBSERVABILITY: &str = "observability";
/// The capability that sets thresholds and reads slow operations.
pub const PERFORMANCE_HOOKS: &str = "performance_hooks";
