//! The plugin: its configuration, the host's feeds, and the three capabilities' requests.

use crate::hooks::{Hook, HookRegistry, HookStage, OnFailure, Source, check, remote_hook};
use crate::ids::same_secret;
use crate::perf::{MAX_THRESHOLDS, SlowLog, Target};
use crate::spans::SpanRecord;
use crate::state::{self, Runtime, Shared, lock};
use crate::{LIFECYCLE_HOOKS, NAME, OBSERVABILITY, PERFORMANCE_HOOKS};
use plugin_api::fields::{self, Object};
use plugin_api::is_valid_capability_name;
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The longest hook run the configuration accepts.
const MAX_HOOK_TIMEOUT_MS: u64 = 60_000;
/// The largest buffer the configuration accepts.
const MAX_BUFFER: usize = 65_536;
/// The highest rate of `slow_operation` events the configuration accepts.
const MAX_SLOW_EVENTS_PER_S: u64 = 1_000_000;
/// How many entries `recent` and `slow` answer with when no `limit` is given.
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HooksConfig {
    hook_timeout_ms: u64,
    intercept_budget_ms: u64,
    history_size: usize,
    span_buffer: usize,
    slow_buffer: usize,
    slow_events_per_s: u64,
    thresholds_ms: BTreeMap<String, u64>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            hook_timeout_ms: state::DEFAULT_HOOK_TIMEOUT_MS,
            intercept_budget_ms: state::DEFAULT_INTERCEPT_BUDGET_MS,
            history_size: state::DEFAULT_HISTORY_SIZE,
            span_buffer: state::DEFAULT_SPAN_BUFFER,
            slow_buffer: state::DEFAULT_SLOW_BUFFER,
            slow_events_per_s: state::DEFAULT_SLOW_EVENTS_PER_S,
            thresholds_ms: BTreeMap::new(),
        }
    }
}

impl HooksConfig {
    /// The configured thresholds, or what is wrong with the configuration.
    fn validate(&self) -> Result<Vec<(Target, u64)>, String> {
        if !(1..=MAX_HOOK_TIMEOUT_MS).contains(&self.hook_timeout_ms) {
            return Err(format!(
                "`hook_timeout_ms` must be 1 to {MAX_HOOK_TIMEOUT_MS} (and below the host's call timeout), not {}",
                self.hook_timeout_ms
            ));
        }
        if !(1..=MAX_HOOK_TIMEOUT_MS).contains(&self.intercept_budget_ms) {
            return Err(format!(
                "`intercept_budget_ms` must be 1 to {MAX_HOOK_TIMEOUT_MS} (and below the host's call timeout, \
                 2000 ms by default), not {}",
                self.intercept_budget_ms
            ));
        }
        for (key, size) in [
            ("history_size", self.history_size),
            ("span_buffer", self.span_buffer),
            ("slow_buffer", self.slow_buffer),
        ] {
            if !(1..=MAX_BUFFER).contains(&size) {
                return Err(format!("`{key}` must be 1 to {MAX_BUFFER} (the cap), not {size}"));
            }
        }
        if !(1..=MAX_SLOW_EVENTS_PER_S).contains(&self.slow_events_per_s) {
            return Err(format!(
                "`slow_events_per_s` must be 1 to {MAX_SLOW_EVENTS_PER_S}, not {}",
                self.slow_events_per_s
            ));
        }
        if self.thresholds_ms.len() > MAX_THRESHOLDS {
            return Err(format!(
                "`thresholds_ms` holds {} thresholds: at most {MAX_THRESHOLDS}",
                self.thresholds_ms.len()
            ));
        }
        self.thresholds_ms
            .iter()
            .map(|(name, ms)| {
                let target = Target::parse(name).map_err(|e| format!("`thresholds_ms`: {e}"))?;
                if *ms == 0 {
                    return Err(format!("`thresholds_ms.\"{name}\"` must be at least 1 ms"));
                }
                Ok((target, *ms))
            })
            .collect()
    }
}

/// Pre-hooks that may refuse agent registrations, dispatches and task starts, post-hooks that
/// observe any operation, span records, and slow-operation detection: see the
/// [crate documentation](crate) for what each capability accepts and answers.
///
/// Build it, keep its [`hooks`](Self::hooks) handle to add hooks from Rust, and register it
/// with the orchestrator. Other plugins (including dynamic ones) add hooks through the
/// `lifecycle_hooks` capability.
#[derive(Default)]
pub struct HookIntegrationPlugin {
    shared: Arc<Shared>,
}

impl fmt::Debug for HookIntegrationPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("hooks", &self.shared.hooks.load().hooks.len())
            .field("initialized", &self.shared.runtime.get().is_some())
            .finish()
    }
}

impl HookIntegrationPlugin {
    /// A plugin with no hooks and no thresholds (the configuration may add thresholds).
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle through which Rust code adds and removes hooks, before or after the plugin
    /// is registered. Cheap to clone; every clone reaches the same hooks.
    pub fn hooks(&self) -> HookRegistry {
        HookRegistry {
            shared: Arc::clone(&self.shared),
        }
    }

    fn runtime(&self) -> Result<&Runtime, PluginError> {
        self.shared
            .runtime
            .get()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    fn lifecycle_hooks(&self, rt: &Runtime, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"list\"} or {\"op\": \"history\", \"limit\"?: positive integer} or \
            {\"op\": \"register\", \"name\", \"event\": an operation kind (\"agent_registration\", \"dispatch\", \
            \"task_start\", \"task_finish\", \"agent_status_change\", \"provider_failure\"), \"kind\": \"pre\" | \"post\", \
            \"capability\": the capability to call back, \"priority\"?: integer, \"fail_closed\"?: bool} or \
            {\"op\": \"unregister\", \"name\", \"token\": what `register` answered}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        match fields::op(data, &["list", "history", "register", "unregister"], EXPECTED)? {
            "list" => {
                fields::only(data, &["op"], "op `list`", EXPECTED)?;
                let hooks: Vec<Value> = self.hooks().list().iter().map(|h| h.to_json()).collect();
                Ok(json!({ "hooks": hooks }))
            }
            "history" => {
                fields::only(data, &["op", "limit"], "op `history`", EXPECTED)?;
                let limit = opt_limit(data, EXPECTED)?.unwrap_or(usize::MAX);
                let runs: Vec<_> = lock(&self.shared.history).newest_first().take(limit).cloned().collect();
                Ok(json!({
                    "history": runs.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                    "post_runs_dropped": self.shared.post_dropped.load(Ordering::Relaxed),
                }))
            }
            "register" => {
                let allowed = ["op", "name", "event", "kind", "capability", "priority", "fail_closed"];
                fields::only(data, &allowed, "op `register`", EXPECTED)?;
                let name = fields::string(data, "name", EXPECTED)?;
                let event = fields::string(data, "event", EXPECTED)?;
                let event = OperationKind::parse(event).ok_or_else(|| {
                    let known: Vec<&str> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
                    PluginError::invalid_request(format!(
                        "unknown event `{event}`: expected one of {}; {EXPECTED}",
                        known.join(", ")
                    ))
                })?;
                let stage = match fields::string(data, "kind", EXPECTED)? {
                    "pre" => HookStage::Pre,
                    "post" => HookStage::Post,
                    other => {
                        return Err(PluginError::invalid_request(format!(
                            "`kind` must be \"pre\" or \"post\", not {other:?}; expected {EXPECTED}"
                        )));
                    }
                };
                let capability = fields::string(data, "capability", EXPECTED)?;
                if !is_valid_capability_name(capability) {
                    return Err(PluginError::invalid_request(format!(
                        "`capability` {capability:?} is not a capability name (lower-case snake_case); expected {EXPECTED}"
                    )));
                }
                if [LIFECYCLE_HOOKS, OBSERVABILITY, PERFORMANCE_HOOKS].contains(&capability) {
                    return Err(PluginError::invalid_request(format!(
                        "a hook cannot call back `{capability}`, one of {NAME}'s own capabilities: name a capability \
                         the registering plugin serves"
                    )));
                }
                let priority = opt_i32(data, "priority", EXPECTED)?.unwrap_or(0);
                let fail_closed = fields::opt_bool(data, "fail_closed", EXPECTED)?.unwrap_or(false);
                if fail_closed && stage == HookStage::Post {
                    return Err(PluginError::invalid_request(
                        "`fail_closed` applies to pre-hooks only: a post-hook cannot refuse anything",
                    ));
                }
                let kinds = OperationSet::EMPTY.with(event);
                check(name, kinds, stage).map_err(|e| PluginError::invalid_request(e.to_string()))?;
                let name: Arc<str> = Arc::from(name);
                let run = remote_hook(
                    rt.host.clone(),
                    Arc::clone(&self.shared.callbacks),
                    Arc::clone(&name),
                    stage,
                    capability.to_owned(),
                );
                let token = self.shared.tokens.next();
                let info = self
                    .shared
                    .insert_hook(Hook {
                        name,
                        kinds,
                        stage,
                        priority,
                        sequence: 0,
                        on_failure: if fail_closed { OnFailure::Veto } else { OnFailure::Allow },
                        source: Source::Capability {
                            capability: capability.to_owned(),
                            token: token.clone(),
                        },
                        run,
                    })
                    .map_err(|e| PluginError::invalid_request(e.to_string()))?;
                Ok(json!({ "registered": info.to_json(), "token": token }))
            }
            "unregister" => {
                fields::only(data, &["op", "name", "token"], "op `unregister`", EXPECTED)?;
                let name = fields::string(data, "name", EXPECTED)?;
                let given = fields::opt_string(data, "token", EXPECTED)?;
                // The host does not say who calls, so the token stands for the registering
                // plugin: without it, anyone could remove anyone's hook.
                let hook = self.shared.change_hooks(|table| {
                    let Some(hook) = table.get(name) else {
                        let known: Vec<String> = table.hooks.iter().map(|h| format!("{:?}", &*h.name)).collect();
                        return Err(PluginError::invalid_request(format!(
                            "no hook named {name:?} (registered: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        )));
                    };
                    match (&hook.source, given) {
                        (Source::Rust, _) => {
                            return Err(PluginError::invalid_request(format!(
                                "hook {name:?} was registered from Rust: only the application can remove it \
                                 (HookRegistry::remove)"
                            )));
                        }
                        (Source::Capability { .. }, None) => {
                            return Err(PluginError::invalid_request(format!(
                                "hook {name:?} was registered through the host: removing it takes the `token` \
                                 its registration answered with; expected {EXPECTED}"
                            )));
                        }
                        (Source::Capability { token, .. }, Some(given)) if !same_secret(token, given) => {
                            return Err(PluginError::invalid_request(format!(
                                "the `token` given is not hook {name:?}'s: only the plugin that registered it \
                                 can remove it"
                            )));
                        }
                        (Source::Capability { .. }, Some(_)) => {}
                    }
                    table.remove(name);
                    Ok(hook)
                })?;
                Ok(json!({ "unregistered": hook.info().to_json() }))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }

    fn observability(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"recent\", \"correlation_id\"?: string, \"limit\"?: positive integer (default \
            100, at most the span buffer)}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        match fields::op(data, &["recent"], EXPECTED)? {
            "recent" => {
                fields::only(data, &["op", "correlation_id", "limit"], "op `recent`", EXPECTED)?;
                let correlation_id = fields::opt_string(data, "correlation_id", EXPECTED)?;
                let limit = opt_limit(data, EXPECTED)?.unwrap_or(DEFAULT_LIMIT);
                let buffer = &self.shared.spans;
                let spans = buffer.newest(limit.min(buffer.capacity()), |s| s.matches(correlation_id));
                let spans: Vec<Value> = spans.iter().map(SpanRecord::to_json).collect();
                Ok(json!({ "spans": spans }))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }

    fn performance_hooks(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"slow\", \"limit\"?: positive integer} or {\"op\": \"set_threshold\", \
            \"operation\", \"ms\": positive integer or null} or {\"op\": \"clear_threshold\", \"operation\"} or \
            {\"op\": \"thresholds\"}, where an operation is \"dispatch\", \"dispatch:<capability>\", \"task\", \
            \"task:<kind>\" or \"agent_registration\"";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        let target = |data: &Object| {
            let name = fields::string(data, "operation", EXPECTED)?;
            Target::parse(name).map_err(|e| PluginError::invalid_request(format!("`operation`: {e}")))
        };
        match fields::op(
            data,
            &["slow", "set_threshold", "clear_threshold", "thresholds"],
            EXPECTED,
        )? {
            "slow" => {
                fields::only(data, &["op", "limit"], "op `slow`", EXPECTED)?;
                let limit = opt_limit(data, EXPECTED)?.unwrap_or(DEFAULT_LIMIT);
                let (slow, suppressed) = {
                    let log = lock(&self.shared.slow);
                    let slow: Vec<_> = log.ring.newest_first().take(limit).cloned().collect();
                    (slow, log.suppressed)
                };
                Ok(json!({
                    "slow": slow.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
                    "events_suppressed": suppressed,
                }))
            }
            "set_threshold" => {
                fields::only(data, &["op", "operation", "ms"], "op `set_threshold`", EXPECTED)?;
                let target = target(data)?;
                let ms = match data.get("ms") {
                    None => {
                        return Err(PluginError::invalid_request(format!(
                            "missing `ms` (a positive integer, or null to remove the threshold); expected {EXPECTED}"
                        )));
                    }
                    Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|ms| *ms > 0).ok_or_else(|| {
                        fields::mistyped("ms", "a positive integer of milliseconds (or null)", v, EXPECTED)
                    })?),
                };
                let (previous, thresholds) = self.shared.change_thresholds(|thresholds| {
                    let previous = thresholds.try_set(&target, ms).map_err(PluginError::invalid_request)?;
                    Ok::<_, PluginError>((previous, thresholds.to_map()))
                })?;
                Ok(json!({
                    "operation": target.name(),
                    "ms": ms,
                    "previous": previous,
                    "thresholds": thresholds,
                }))
            }
            "clear_threshold" => {
                fields::only(data, &["op", "operation"], "op `clear_threshold`", EXPECTED)?;
                let target = target(data)?;
                let (previous, thresholds) = self.shared.change_thresholds(|thresholds| {
                    let previous = thresholds.set(&target, None);
                    Ok::<_, PluginError>((previous, thresholds.to_map()))
                })?;
                Ok(json!({
                    "operation": target.name(),
                    "previous": previous,
                    "thresholds": thresholds,
                }))
            }
            "thresholds" => {
                fields::only(data, &["op"], "op `thresholds`", EXPECTED)?;
                Ok(json!({ "thresholds": self.shared.thresholds.load().to_map() }))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }
}

/// For the `match` over an op that [`fields::op`] has already checked against its list.
fn unknown_op(op: &str, expected: &str) -> PluginError {
    PluginError::invalid_request(format!("unknown op `{op}`; expected {expected}"))
}

/// The optional `limit`: a positive integer.
fn opt_limit(data: &Object, expected: &str) -> Result<Option<usize>, PluginError> {
    match data.get("limit") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(fields::mistyped("limit", "a positive integer", v, expected)),
        },
    }
}

/// An optional 32-bit signed integer.
fn opt_i32(data: &Object, field: &str, expected: &str) -> Result<Option<i32>, PluginError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| fields::mistyped(field, "an integer (32-bit)", v, expected)),
    }
}

#[async_trait]
impl OrchestrationPlugin for HookIntegrationPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![LIFECYCLE_HOOKS.into(), OBSERVABILITY.into(), PERFORMANCE_HOOKS.into()]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: HooksConfig = host.config_as()?;
        let thresholds = config
            .validate()
            .map_err(|problem| PluginError::new(format!("{NAME} configuration: {problem}")))?;
        lock(&self.shared.history).set_capacity(config.history_size);
        self.shared.spans.set_capacity(config.span_buffer);
        *lock(&self.shared.slow) = SlowLog::new(config.slow_buffer, config.slow_events_per_s);
        self.shared
            .change_thresholds(|table| {
                for (target, ms) in &thresholds {
                    table.set(target, Some(*ms));
                }
                Ok::<_, ()>(())
            })
            .ok();
        let runtime = Runtime {
            host,
            hook_timeout: Duration::from_millis(config.hook_timeout_ms),
            intercept_budget: Duration::from_millis(config.intercept_budget_ms),
        };
        self.shared
            .runtime
            .set(runtime)
            .map_err(|_| PluginError::new(format!("{NAME} was initialized twice: build a new one for each host")))?;
        // Hooks added since the host read `interests()` (or before, from Rust) are now told.
        let _writer = lock(&self.shared.hooks_writer);
        self.shared.apply_interests(&self.shared.hooks.load());
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let answer = match request.capability.as_str() {
            LIFECYCLE_HOOKS => self.lifecycle_hooks(self.runtime()?, &request.data)?,
            OBSERVABILITY => self.observability(&request.data)?,
            PERFORMANCE_HOOKS => self.performance_hooks(&request.data)?,
            other => {
                return Err(PluginError::invalid_request(format!(
                    "{NAME} does not serve `{other}` (it serves {LIFECYCLE_HOOKS}, {OBSERVABILITY}, {PERFORMANCE_HOOKS})"
                )));
            }
        };
        Ok(IntegrationResponse::ok(answer))
    }

    async fn health_check(&self) -> HealthStatus {
        match self.runtime() {
            Ok(_) => HealthStatus::healthy(),
            Err(e) => HealthStatus::unhealthy(e.message),
        }
    }

    fn interests(&self) -> Interests {
        Shared::interests_for(&self.shared.hooks.load())
    }

    /// Runs on the caller's thread after every dispatch, task finish and registration (and
    /// every operation of a kind with a post-hook). In the steady state it allocates nothing
    /// and takes one short lock (the span buffer's); the thresholds and the hooks are read from
    /// lock-free snapshots, and the callbacks in flight only while there are some.
    fn observe(&self, operation: &Operation<'_>) {
        let shared = &self.shared;
        let Some(rt) = shared.runtime.get() else { return };
        if let Some(name) = SpanRecord::name_of(operation.kind) {
            shared.spans.record(name, operation);
        }
        let slow = shared.thresholds.load().check(operation);
        if let Some(mut slow) = slow {
            slow.at_ms = rt.host.now_unix_ms();
            let now_ns = rt.host.monotonic_ns();
            let event = {
                let mut log = lock(&shared.slow);
                let event = log.take_event(now_ns).then(|| slow.event());
                log.ring.push(slow);
                event
            };
            if let Some(event) = event {
                rt.host.emit("slow_operation", event);
            }
        }
        shared.enqueue_post_hooks(operation);
    }

    /// Runs the pre-hooks, unless a hook caused this operation (see the crate docs).
    async fn intercept(&self, operation: &Operation<'_>) -> Verdict {
        self.shared.run_pre_hooks(operation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testhost::TestHost;
    use plugin_api::testkit::block_on;

    #[test]
    fn the_configuration_is_validated() {
        assert!(HooksConfig::default().validate().is_ok_and(|t| t.is_empty()));
        let config = |json: Value| serde_json::from_value::<HooksConfig>(json).map_err(|e| e.to_string());
        let err = config(json!({"hook_timeout": 5})).expect_err("unknown key");
        assert!(err.contains("hook_timeout"), "{err}");
        for (bad, key) in [
            (json!({"hook_timeout_ms": 0}), "hook_timeout_ms"),
            (json!({"history_size": 0}), "history_size"),
            (json!({"span_buffer": 0}), "span_buffer"),
            (json!({"slow_buffer": 2_000_000}), "slow_buffer"),
            (json!({"intercept_budget_ms": 0}), "intercept_budget_ms"),
            (json!({"slow_events_per_s": 0}), "slow_events_per_s"),
            (json!({"thresholds_ms": {"dispatch": 0}}), "dispatch"),
            (json!({"thresholds_ms": {"dispatches": 5}}), "dispatches"),
        ] {
            let problem = config(bad.clone()).expect("parses").validate().expect_err("invalid");
            assert!(problem.contains(key), "{bad}: {problem}");
        }
        let thresholds = config(json!({"thresholds_ms": {"dispatch:echo": 5, "task": 7}}))
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(thresholds.len(), 2);
        assert!(crate::perf::NAMES.contains("task:<kind>"));
    }

    #[test]
    fn buffers_are_capped_at_65536() {
        let config = |json: Value| serde_json::from_value::<HooksConfig>(json).expect("parses");
        for key in ["history_size", "span_buffer", "slow_buffer"] {
            assert!(config(json!({ key: 65_536 })).validate().is_ok(), "{key} at the cap");
            let problem = config(json!({ key: 65_537 })).validate().expect_err("over the cap");
            assert!(problem.contains(key) && problem.contains("65536"), "{problem}");
        }
    }

    #[test]
    fn configured_thresholds_are_capped_at_1024() {
        let thresholds =
            |n: usize| -> serde_json::Map<String, Value> { (0..n).map(|i| (format!("task:k{i}"), json!(5))).collect() };
        let config = |n: usize| {
            serde_json::from_value::<HooksConfig>(json!({ "thresholds_ms": thresholds(n) })).expect("parses")
        };
        assert_eq!(config(1_024).validate().map(|t| t.len()), Ok(1_024));
        let problem = config(1_025).validate().expect_err("over the cap");
        assert!(
            problem.contains("1024") && problem.contains("thresholds_ms"),
            "{problem}"
        );
    }

    fn initialized(config: Value) -> (Arc<HookIntegrationPlugin>, Arc<TestHost>) {
        let host = TestHost::new(config);
        let plugin = Arc::new(HookIntegrationPlugin::new());
        let handle = HostHandle::new(NAME, Arc::clone(&host) as Arc<dyn plugin_api::Host>);
        block_on(plugin.initialize(handle)).expect("initializes");
        (plugin, host)
    }

    fn dispatch(correlation_id: &str) -> Operation<'_> {
        Operation::new(OperationKind::Dispatch, correlation_id)
            .with_capability("gate_check")
            .with_plugin("Gatekeeper")
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(5_000)
    }

    #[test]
    fn a_callbacks_own_operations_are_exempt_by_correlation_id_while_it_is_in_flight() {
        let (plugin, host) = initialized(Value::Null);
        let register = json!({"op": "register", "name": "remote", "event": "dispatch", "kind": "pre",
            "capability": "gate_check"});
        block_on(plugin.process_request(IntegrationRequest::new(LIFECYCLE_HOOKS, register))).expect("registers");
        plugin
            .hooks()
            .post_hook("count", OperationKind::Dispatch, 0, |_| {})
            .expect("adds");

        // An operation runs the remote pre-hook: its callback waits at the host's gate.
        let first = {
            let plugin = Arc::clone(&plugin);
            std::thread::spawn(move || block_on(plugin.intercept(&dispatch("orig-1"))))
        };
        let calls = host.wait_for_calls(1);
        let callback_id = calls[0]
            .correlation_id
            .clone()
            .expect("the callback has a correlation id");
        assert_ne!(callback_id, "orig-1", "a fresh id, not the operation's");
        assert_eq!(callback_id.len(), 32);
        assert_eq!(
            calls[0].data["operation"]["correlation_id"], "orig-1",
            "the payload links them"
        );

        // While the callback is in flight, operations under its id run no hooks, pre or post
        // (here on another thread than the hook's: this is the id, not the thread marker).
        assert_eq!(block_on(plugin.intercept(&dispatch(&callback_id))), Verdict::Allow);
        assert_eq!(
            host.calls().len(),
            1,
            "the pre-hook did not run for the callback's own dispatch"
        );
        plugin.observe(&dispatch(&callback_id));
        assert_eq!(host.spawned.load(Ordering::SeqCst), 0, "no post-hooks for it either");
        let spans = plugin
            .observability(&json!({"correlation_id": callback_id}))
            .expect("answers");
        assert_eq!(
            spans["spans"].as_array().map(Vec::len),
            Some(1),
            "still recorded as a span"
        );

        // The same capability under another id is hooked: the name exempts nothing.
        let second = {
            let plugin = Arc::clone(&plugin);
            std::thread::spawn(move || block_on(plugin.intercept(&dispatch("other-id"))))
        };
        host.wait_for_calls(2);
        plugin.observe(&dispatch("other-id"));
        assert_eq!(host.spawned.load(Ordering::SeqCst), 1);

        host.open();
        assert_eq!(first.join().expect("joins"), Verdict::Allow);
        assert_eq!(second.join().expect("joins"), Verdict::Allow);
        // Once the callback answered, its id is an id like any other.
        assert_eq!(block_on(plugin.intercept(&dispatch(&callback_id))), Verdict::Allow);
        assert_eq!(host.calls().len(), 3, "hooked again");
        assert!(!plugin.shared.callbacks.is_callback(&callback_id));
    }

    #[test]
    fn observe_does_not_allocate_in_the_steady_state() {
        let (plugin, _host) = initialized(json!({"span_buffer": 8, "thresholds_ms": {"dispatch": 1000, "task": 1000}}));
        // A remote pre-hook exists (on another kind): the callback check is on the path.
        let register = json!({"op": "register", "name": "remote", "event": "task_start", "kind": "pre",
            "capability": "gate_check"});
        block_on(plugin.process_request(IntegrationRequest::new(LIFECYCLE_HOOKS, register))).expect("registers");
        let finish = Operation::new(OperationKind::TaskFinish, "c-2")
            .with_agent("a1")
            .with_task_kind("build")
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(7_000);
        let ops = [dispatch("c-1"), finish];
        // Warm up: fill the span buffer, so that its oldest records are reused from now on.
        for _ in 0..16 {
            for op in &ops {
                plugin.observe(op);
            }
        }
        let before = crate::testhost::allocations();
        drop(std::hint::black_box(vec![1u8]));
        assert_eq!(crate::testhost::allocations() - before, 1, "the counter counts");
        let before = crate::testhost::allocations();
        for _ in 0..1_000 {
            for op in &ops {
                plugin.observe(op);
            }
        }
        assert_eq!(crate::testhost::allocations() - before, 0, "observe allocated");
    }

    #[test]
    fn interests_follow_the_hooks() {
        let plugin = HookIntegrationPlugin::new();
        let base = plugin.interests();
        assert!(base.intercept.is_empty());
        assert_eq!(base.observe, state::ALWAYS_OBSERVED);
        let hooks = plugin.hooks();
        hooks
            .pre_hook_fn("gate", OperationKind::TaskStart, 0, |_| Verdict::Allow)
            .expect("adds");
        hooks
            .post_hook("watch", OperationKind::AgentStatusChange, 0, |_| {})
            .expect("adds");
        let wider = plugin.interests();
        assert_eq!(wider.intercept, OperationSet::EMPTY.with(OperationKind::TaskStart));
        assert!(wider.observe.contains(OperationKind::AgentStatusChange));
        assert!(hooks.remove("gate") && hooks.remove("watch") && !hooks.remove("watch"));
        assert_eq!(plugin.interests(), base);
    }
}
