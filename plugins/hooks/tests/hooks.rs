//! HookIntegrationPlugin through a real orchestrator: vetoes of registrations, dispatches and
//! tasks; the documented hook order; failing, panicking and hanging hooks contained; fail-closed
//! hooks; hooks registered by another plugin through the host; span records per correlation id;
//! slow operations with their event; the host's feeds following the hooks; garbage refused; the
//! conformance kit; and the dynamic library across the stable ABI.

use orchestrator_core::{AgentConfig, AgentId, DispatchError, Orchestrator, OrchestratorError, PluginOrigin};
use plugin_api::prelude::*;
use plugin_hooks::{HookIntegrationPlugin, HookOptions, NAME};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Serves `echo` (answers its data), `nap` (waits `ms` on the host's timer) and
/// `forbidden_cap` (answers its data), counting the calls of each.
#[derive(Default)]
struct Workbench {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    host: OnceLock<HostHandle>,
}

impl Workbench {
    fn calls(&self) -> Arc<Mutex<HashMap<String, usize>>> {
        Arc::clone(&self.calls)
    }
}

fn count(calls: &Mutex<HashMap<String, usize>>, capability: &str) -> usize {
    calls.lock().expect("lock").get(capability).copied().unwrap_or(0)
}

#[async_trait]
impl OrchestrationPlugin for Workbench {
    fn name(&self) -> &str {
        "Workbench"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["echo".into(), "nap".into(), "forbidden_cap".into()]
    }
    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let _ = self.host.set(host);
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(request.capability.clone())
            .or_default() += 1;
        if request.capability == "nap" {
            let ms = request.data["ms"].as_u64().unwrap_or(0);
            if let Some(host) = self.host.get() {
                host.sleep(Duration::from_millis(ms)).await;
            }
        }
        Ok(IntegrationResponse::ok(request.data))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

/// Serves `gate_check`, a hook callback that refuses dispatches of `forbidden_cap`. When told
/// to, it registers itself as a pre-hook on dispatches through the host while it initializes.
struct Gatekeeper {
    register_on_init: bool,
    /// The data of each callback, with the correlation id it came under.
    asked: Arc<Mutex<Vec<Value>>>,
    asked_ids: Arc<Mutex<Vec<String>>>,
    /// The token its registration answered with.
    token: Arc<Mutex<Option<String>>>,
}

impl Gatekeeper {
    fn new(register_on_init: bool) -> Self {
        Self {
            register_on_init,
            asked: Arc::default(),
            asked_ids: Arc::default(),
            token: Arc::default(),
        }
    }
}

fn gate_registration() -> Value {
    json!({"op": "register", "name": "gatekeeper", "event": "dispatch", "kind": "pre", "capability": "gate_check", "priority": 3})
}

#[async_trait]
impl OrchestrationPlugin for Gatekeeper {
    fn name(&self) -> &str {
        "Gatekeeper"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["gate_check".into()]
    }
    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        if self.register_on_init {
            let answer = host
                .call(IntegrationRequest::new("lifecycle_hooks", gate_registration()))
                .await?;
            if !answer.success {
                return Err(PluginError::new(format!("registering the hook failed: {answer:?}")));
            }
            *self.token.lock().expect("lock") = answer.data["token"].as_str().map(str::to_owned);
        }
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        self.asked.lock().expect("lock").push(request.data.clone());
        self.asked_ids
            .lock()
            .expect("lock")
            .push(request.correlation_id.clone().unwrap_or_default());
        let capability = request.data["operation"]["capability"].as_str().unwrap_or_default();
        if capability == "forbidden_cap" {
            Ok(IntegrationResponse::ok(
                json!({"allow": false, "reason": "forbidden_cap is closed"}),
            ))
        } else {
            Ok(IntegrationResponse::ok(json!({"allow": true})))
        }
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

async fn build(hooks: HookIntegrationPlugin, config: Value) -> (Orchestrator, Arc<Mutex<HashMap<String, usize>>>) {
    let workbench = Workbench::default();
    let calls = workbench.calls();
    let mut builder = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(hooks)
        .plugin(workbench);
    if !config.is_null() {
        builder = builder.configure(NAME, config);
    }
    (builder.build().await.expect("builds"), calls)
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    let response = orch
        .execute(IntegrationRequest::new(capability, data.clone()))
        .await
        .unwrap_or_else(|e| panic!("{capability} {data}: {e}"));
    assert!(response.success, "{response:?}");
    response.data
}

async fn refused(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match orch.execute(IntegrationRequest::new(capability, data.clone())).await {
        Err(OrchestratorError::Dispatch(DispatchError::InvalidRequest { message, .. })) => message,
        other => panic!("{capability} {data}: expected an invalid-request error, got {other:?}"),
    }
}

/// The history, as `(hook, outcome)` pairs, oldest first.
async fn history(orch: &Orchestrator) -> Vec<(String, String)> {
    let answer = call(orch, "lifecycle_hooks", json!({"op": "history"})).await;
    let mut runs: Vec<(String, String)> = answer["history"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["hook"].as_str().expect("hook").to_owned(),
                r["outcome"].as_str().expect("outcome").to_owned(),
            )
        })
        .collect();
    runs.reverse();
    runs
}

/// Waits (5 s at most, polling) until `done` holds.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn interests_of(orch: &Orchestrator, plugin: &str) -> Interests {
    orch.catalog()
        .plugins
        .iter()
        .find(|p| p.name == plugin)
        .map(|p| p.interests)
        .expect("the plugin is in the catalog")
}

fn dispatch_only() -> OperationSet {
    OperationSet::EMPTY.with(OperationKind::Dispatch)
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    check_plugin(&HookIntegrationPlugin::default(), CheckOptions::default())
        .await
        .assert_conformant();
    let configured = json!({"hook_timeout_ms": 50, "history_size": 10, "thresholds_ms": {"dispatch": 5}});
    check_plugin(
        &HookIntegrationPlugin::default(),
        CheckOptions::default().with_config(configured),
    )
    .await
    .assert_conformant();
}

#[tokio::test]
async fn a_veto_stops_a_registration_and_leaves_no_agent_behind() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .pre_hook_fn("no-guests", OperationKind::AgentRegistration, 0, |op| {
            let guest = op
                .details
                .as_deref()
                .and_then(|config| config["capabilities"].as_array())
                .is_some_and(|caps| caps.iter().any(|c| c == "guest"));
            if guest {
                Verdict::Veto("guests may not register".into())
            } else {
                Verdict::Allow
            }
        })
        .expect("adds");
    let (orch, _) = build(plugin, Value::Null).await;

    let err = orch
        .register_agent(
            AgentConfig::new("visitor")
                .with_id("visitor")
                .with_capabilities(["guest"]),
        )
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("refused by HookIntegrationPlugin: hook \"no-guests\": guests may not register"),
        "{err}"
    );
    assert_eq!(orch.agent_count(), 0);
    assert!(orch.agent(&AgentId::from("visitor")).is_none());

    orch.register_agent(AgentConfig::new("worker").with_capabilities(["rust"]))
        .await
        .expect("a worker registers");
    assert_eq!(orch.agent_count(), 1);
    let answer = call(&orch, "lifecycle_hooks", json!({"op": "history", "limit": 2})).await;
    let runs = answer["history"].as_array().expect("a list");
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0]["outcome"].clone(), runs[0]["refused"].clone()),
        (json!("allowed"), json!(false))
    );
    assert_eq!(
        (runs[1]["outcome"].clone(), runs[1]["refused"].clone()),
        (json!("vetoed"), json!(true))
    );
    assert_eq!(runs[1]["reason"], "guests may not register");
    assert_eq!(runs[1]["event"], "agent_registration");
}

#[tokio::test]
async fn a_veto_stops_a_dispatch_before_any_provider_runs() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .pre_hook("no-secrets", OperationKind::Dispatch, 0, |op| {
            Box::pin(async move {
                let secret = op.details.as_deref().is_some_and(|d| d.get("password").is_some());
                Ok(if secret {
                    Verdict::Veto("requests may not carry passwords".into())
                } else {
                    Verdict::Allow
                })
            })
        })
        .expect("adds");
    let (orch, calls) = build(plugin, Value::Null).await;

    let err = orch
        .execute(IntegrationRequest::new("echo", json!({"password": "hunter2"})))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, OrchestratorError::Dispatch(DispatchError::Vetoed { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("requests may not carry passwords"), "{err}");
    assert_eq!(count(&calls, "echo"), 0, "no provider ran");

    call(&orch, "echo", json!({"text": "hello"})).await;
    assert_eq!(count(&calls, "echo"), 1);
}

#[tokio::test]
async fn a_veto_refuses_a_task_before_it_starts() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .pre_hook_fn("no-dangerous-tasks", OperationKind::TaskStart, 0, |op| {
            if op.task_kind.as_deref() == Some("dangerous") {
                Verdict::Veto("dangerous tasks are off".into())
            } else {
                Verdict::Allow
            }
        })
        .expect("adds");
    let (orch, _) = build(plugin, Value::Null).await;
    let id = orch
        .register_agent(AgentConfig::new("worker"))
        .await
        .expect("registers");
    let err = orch
        .execute_agent_task(&id, json!({"kind": "dangerous"}))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("dangerous tasks are off"), "{err}");
    assert_eq!(orch.agent(&id).map(|a| a.load), Some(0));
    let output = orch
        .execute_agent_task(&id, json!({"kind": "safe"}))
        .await
        .expect("runs");
    assert_eq!(output["dry_run"], true);
}

#[tokio::test]
async fn hooks_run_by_priority_then_registration_order() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    let pre_ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let post_ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    for (name, priority) in [("p5", 5), ("p10-first", 10), ("p10-second", 10)] {
        let ran = Arc::clone(&pre_ran);
        hooks
            .pre_hook_fn(name, OperationKind::Dispatch, priority, move |op| {
                if op.capability.as_deref() == Some("echo") {
                    ran.lock().expect("lock").push(name);
                }
                Verdict::Allow
            })
            .expect("adds");
    }
    for (name, priority) in [("q5", 5), ("q10-first", 10), ("q10-second", 10)] {
        let ran = Arc::clone(&post_ran);
        hooks
            .post_hook(name, OperationKind::Dispatch, priority, move |op| {
                if op.capability.as_deref() == Some("echo") {
                    ran.lock().expect("lock").push(name);
                }
            })
            .expect("adds");
    }
    let (orch, _) = build(plugin, Value::Null).await;
    call(&orch, "echo", json!({})).await;
    assert_eq!(*pre_ran.lock().expect("lock"), ["p10-first", "p10-second", "p5"]);
    eventually("the post-hooks ran", || async {
        post_ran.lock().expect("lock").len() == 3
    })
    .await;
    assert_eq!(*post_ran.lock().expect("lock"), ["q10-first", "q10-second", "q5"]);

    let listed = call(&orch, "lifecycle_hooks", json!({})).await; // `list` is the default op
    let names: Vec<&str> = listed["hooks"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|h| h["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["p10-first", "p10-second", "q10-first", "q10-second", "p5", "q5"]
    );
    let first = &listed["hooks"][0];
    assert_eq!(
        (
            first["event"].clone(),
            first["kind"].clone(),
            first["priority"].clone(),
            first["source"].clone(),
            first["sequence"].clone()
        ),
        (json!("dispatch"), json!("pre"), json!(10), json!("rust"), json!(1))
    );
    assert_eq!(hooks.list().len(), 6);
    let duplicate = hooks.post_hook("p5", OperationKind::Dispatch, 0, |_| {});
    assert!(duplicate.is_err(), "names are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_hanging_hooks_are_isolated_and_recorded() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    hooks
        .pre_hook("panics", OperationKind::AgentRegistration, 3, |_| panic!("hook bug"))
        .expect("adds");
    hooks
        .pre_hook("panics-later", OperationKind::AgentRegistration, 2, |_| {
            Box::pin(async { panic!("async hook bug") })
        })
        .expect("adds");
    hooks
        .pre_hook("hangs", OperationKind::AgentRegistration, 1, |_| {
            Box::pin(std::future::pending())
        })
        .expect("adds");
    hooks
        .pre_hook("errs", OperationKind::AgentRegistration, 0, |_| {
            Box::pin(async { Err("backend down".to_owned()) })
        })
        .expect("adds");
    hooks
        .pre_hook_fn("fine", OperationKind::AgentRegistration, -1, |_| Verdict::Allow)
        .expect("adds");
    let (orch, _) = build(plugin, json!({"hook_timeout_ms": 100})).await;

    let id = tokio::time::timeout(Duration::from_secs(5), orch.register_agent(AgentConfig::new("worker")))
        .await
        .expect("the registration is not held up by the hanging hook")
        .expect("the registration goes ahead (fail-open)");
    assert_eq!(orch.agent(&id).map(|a| a.name), Some("worker".to_owned()));
    let runs = history(&orch).await;
    let expected = [
        ("panics", "panicked"),
        ("panics-later", "panicked"),
        ("hangs", "timed_out"),
        ("errs", "failed"),
        ("fine", "allowed"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(h, o)| ((*h).to_owned(), (*o).to_owned()))
        .collect();
    assert_eq!(runs, expected);
    let answer = call(&orch, "lifecycle_hooks", json!({"op": "history"})).await;
    let reasons: Vec<&str> = answer["history"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"panicked: hook bug"), "{reasons:?}");
    assert!(reasons.contains(&"did not answer within 100 ms"), "{reasons:?}");
    assert!(reasons.contains(&"backend down"), "{reasons:?}");
    let info = orch
        .catalog()
        .plugins
        .into_iter()
        .find(|p| p.name == NAME)
        .expect("listed");
    assert_eq!(info.feed_failures, 0, "the plugin contained its hooks' failures itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_hooks_run_off_the_callers_path() {
    let plugin = HookIntegrationPlugin::new();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::clone(&finished);
    plugin
        .hooks()
        .post_hook("slow-audit", OperationKind::Dispatch, 0, move |op| {
            if op.capability.as_deref() == Some("echo") {
                // Blocks until the test lets it go: were it run on the caller's path, the
                // dispatch below could not return first.
                let _ = released.lock().expect("lock").recv_timeout(Duration::from_secs(10));
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .expect("adds");
    let (orch, _) = build(plugin, json!({"hook_timeout_ms": 50})).await;
    tokio::time::timeout(Duration::from_secs(2), call(&orch, "echo", json!({})))
        .await
        .expect("the dispatch returns while its post-hook is still running");
    assert!(!finished.load(std::sync::atomic::Ordering::SeqCst));
    release.send(()).expect("sends");
    eventually("the post-hook finished", || async {
        finished.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    eventually("the post-hook's run is recorded", || async {
        history(&orch)
            .await
            .contains(&("slow-audit".to_owned(), "ran".to_owned()))
    })
    .await;
}

#[tokio::test]
async fn a_fail_closed_hook_that_fails_refuses_the_operation() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    let strict = HookOptions::default().fail_closed();
    hooks
        .pre_hook_with("policy", OperationKind::AgentRegistration, strict, |_| {
            Box::pin(async { Err("policy store unreachable".to_owned()) })
        })
        .expect("adds");
    hooks
        .pre_hook_with("quota", OperationKind::Dispatch, strict, |op| {
            let hang = op.capability.as_deref() == Some("echo");
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(Verdict::Allow)
            })
        })
        .expect("adds");
    let (orch, calls) = build(plugin, json!({"hook_timeout_ms": 50})).await;

    let err = orch
        .register_agent(AgentConfig::new("worker"))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("hook \"policy\" failed and fails closed (failed): policy store unreachable"),
        "{text}"
    );
    assert_eq!(orch.agent_count(), 0);

    let err = orch
        .execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("(timed_out)"), "{err}");
    assert_eq!(count(&calls, "echo"), 0);
    call(&orch, "nap", json!({"ms": 0})).await;

    let answer = call(&orch, "lifecycle_hooks", json!({"op": "history"})).await;
    let refused: Vec<(&str, &str)> = answer["history"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["refused"] == true)
        .map(|r| {
            (
                r["hook"].as_str().unwrap_or_default(),
                r["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(refused, [("quota", "timed_out"), ("policy", "failed")]);
    let listed = call(&orch, "lifecycle_hooks", json!({"op": "list"})).await;
    assert!(
        listed["hooks"]
            .as_array()
            .expect("a list")
            .iter()
            .all(|h| h["fail_closed"] == true)
    );
}

#[tokio::test]
async fn a_plugin_registers_a_hook_through_the_host_and_its_veto_works() {
    let gatekeeper = Gatekeeper::new(true);
    let asked = Arc::clone(&gatekeeper.asked);
    let token = Arc::clone(&gatekeeper.token);
    let workbench = Workbench::default();
    let calls = workbench.calls();
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(HookIntegrationPlugin::new())
        .plugin(workbench)
        .plugin(gatekeeper)
        .build()
        .await
        .expect("builds");

    let listed = call(&orch, "lifecycle_hooks", json!({"op": "list"})).await;
    assert_eq!(
        listed["hooks"],
        json!([{"name": "gatekeeper", "event": "dispatch", "events": ["dispatch"], "kind": "pre", "priority": 3,
                "source": "gate_check", "sequence": 0, "fail_closed": false}])
    );
    assert_eq!(interests_of(&orch, NAME).intercept, dispatch_only());

    let err = orch
        .execute(IntegrationRequest::new("forbidden_cap", json!({"x": 1})).with_correlation_id("veto-1"))
        .await
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "call to `forbidden_cap` refused by HookIntegrationPlugin: hook \"gatekeeper\": forbidden_cap is closed"
    );
    assert_eq!(count(&calls, "forbidden_cap"), 0);
    call(&orch, "echo", json!({"x": 2})).await;
    assert_eq!(count(&calls, "echo"), 1);

    // The callback got the hook's name, its kind and the operation, with the details.
    let asked = asked.lock().expect("lock").clone();
    let vetoed = asked
        .iter()
        .find(|a| a["operation"]["capability"] == "forbidden_cap")
        .expect("asked about forbidden_cap");
    assert_eq!(
        (vetoed["hook"].clone(), vetoed["kind"].clone()),
        (json!("gatekeeper"), json!("pre"))
    );
    assert_eq!(vetoed["operation"]["correlation_id"], "veto-1");
    assert_eq!(vetoed["operation"]["details"], json!({"x": 1}));
    assert!(
        asked.iter().all(|a| a["operation"]["capability"] != "gate_check"),
        "the callback's own dispatches are not hooked"
    );

    // Unregistered through the host (with its token), the hook is gone and the feed with it.
    let token = token
        .lock()
        .expect("lock")
        .clone()
        .expect("the registration answered a token");
    let answer = call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "unregister", "name": "gatekeeper", "token": token}),
    )
    .await;
    assert_eq!(answer["unregistered"]["name"], "gatekeeper");
    assert!(interests_of(&orch, NAME).intercept.is_empty());
    call(&orch, "forbidden_cap", json!({})).await;
    assert_eq!(count(&calls, "forbidden_cap"), 1);
}

#[tokio::test]
async fn a_failing_callback_is_a_hook_failure_not_a_veto() {
    let plugin = HookIntegrationPlugin::new();
    let (orch, calls) = build(plugin, Value::Null).await;
    // Nothing serves `missing_gate`: the call fails, the hook fails open.
    let registered = call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "register", "name": "ghost", "event": "dispatch", "kind": "pre", "capability": "missing_gate"}),
    )
    .await;
    call(&orch, "echo", json!({})).await;
    assert_eq!(count(&calls, "echo"), 1);
    assert!(
        history(&orch)
            .await
            .contains(&("ghost".to_owned(), "failed".to_owned()))
    );
    // Failing closed, the same hook refuses.
    call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "unregister", "name": "ghost", "token": registered["token"]}),
    )
    .await;
    call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "register", "name": "ghost", "event": "dispatch", "kind": "pre", "capability": "missing_gate", "fail_closed": true}),
    )
    .await;
    let err = orch
        .execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("missing_gate"), "{err}");
    assert_eq!(count(&calls, "echo"), 1);
}

#[tokio::test]
async fn spans_are_kept_per_correlation_id_with_the_genai_fields() {
    let (orch, _) = build(HookIntegrationPlugin::new(), Value::Null).await;
    let id = orch
        .register_agent(AgentConfig::new("worker").with_id("w1"))
        .await
        .expect("registers");
    let send = |cid: &'static str, agent: Option<&'static str>| {
        let orch = orch.clone();
        async move {
            let mut request = IntegrationRequest::new("echo", json!({})).with_correlation_id(cid);
            if let Some(agent) = agent {
                request = request.with_agent(agent);
            }
            orch.execute(request).await.expect("answers");
        }
    };
    send("trace-a", None).await;
    send("trace-b", None).await;
    send("trace-a", Some("w1")).await;

    let answer = call(
        &orch,
        "observability",
        json!({"op": "recent", "correlation_id": "trace-a"}),
    )
    .await;
    let spans = answer["spans"].as_array().expect("a list");
    assert_eq!(spans.len(), 2, "{answer}");
    assert_eq!(
        spans[0]["fields"],
        json!({
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "echo",
            "gen_ai.agent.id": "w1",
            "served_by": "Workbench",
            "outcome": "succeeded",
            "fallback": false,
        }),
        "newest first"
    );
    assert!(spans[1]["fields"].get("gen_ai.agent.id").is_none());
    for span in spans {
        assert_eq!(
            (span["name"].clone(), span["correlation_id"].clone()),
            (json!("execute_tool"), json!("trace-a"))
        );
        assert!(span["duration_us"].is_u64() && span["at_ns"].is_u64());
    }
    let b = call(&orch, "observability", json!({"correlation_id": "trace-b"})).await;
    assert_eq!(b["spans"].as_array().map(Vec::len), Some(1));
    let none = call(&orch, "observability", json!({"correlation_id": "trace-z"})).await;
    assert_eq!(none["spans"], json!([]));

    orch.execute_agent_task(&id, json!({"kind": "build"}))
        .await
        .expect("runs");
    let recent = call(&orch, "observability", json!({"limit": 100})).await;
    let spans = recent["spans"].as_array().expect("a list");
    let task = spans
        .iter()
        .find(|s| s["name"] == "invoke_agent")
        .expect("an invoke_agent span");
    assert_eq!(
        (
            task["fields"]["gen_ai.agent.id"].clone(),
            task["fields"]["task.kind"].clone()
        ),
        (json!("w1"), json!("build"))
    );
    let registration = spans
        .iter()
        .find(|s| s["name"] == "register_agent")
        .expect("a register_agent span");
    assert_eq!(registration["fields"]["gen_ai.agent.id"], "w1");
    let limited = call(&orch, "observability", json!({"limit": 2})).await;
    assert_eq!(limited["spans"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn slow_operations_are_recorded_and_announced() {
    let (orch, _) = build(
        HookIntegrationPlugin::new(),
        json!({"thresholds_ms": {"dispatch": 10000}}),
    )
    .await;
    let mut events = orch.subscribe_events();
    let set = call(
        &orch,
        "performance_hooks",
        json!({"op": "set_threshold", "operation": "dispatch:nap", "ms": 50}),
    )
    .await;
    assert_eq!(set["thresholds"], json!({"dispatch": 10000, "dispatch:nap": 50}));

    orch.execute(IntegrationRequest::new("nap", json!({"ms": 150})).with_correlation_id("slow-1"))
        .await
        .expect("answers");
    orch.execute(IntegrationRequest::new("nap", json!({"ms": 0})).with_correlation_id("fast-1"))
        .await
        .expect("answers");
    orch.execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("other-1"))
        .await
        .expect("answers");

    let slow = call(&orch, "performance_hooks", json!({})).await; // `slow` is the default op
    let list = slow["slow"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{slow}");
    let record = &list[0];
    assert_eq!(
        (
            record["operation"].clone(),
            record["threshold"].clone(),
            record["threshold_ms"].clone(),
            record["correlation_id"].clone()
        ),
        (json!("dispatch:nap"), json!("dispatch:nap"), json!(50), json!("slow-1"))
    );
    assert!(record["duration_ms"].as_f64().is_some_and(|ms| ms > 50.0), "{record}");

    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let OrchestratorEvent::Custom { source, name, data } = events.recv().await.expect("an event") {
                if name == "slow_operation" {
                    return (source, data);
                }
            }
        }
    })
    .await
    .expect("the slow_operation event arrives");
    assert_eq!(event.0, NAME);
    assert_eq!(
        (
            event.1["correlation_id"].clone(),
            event.1["capability"].clone(),
            event.1["operation"].clone()
        ),
        (json!("slow-1"), json!("nap"), json!("dispatch:nap"))
    );

    // Cleared, the general threshold applies again.
    let cleared = call(
        &orch,
        "performance_hooks",
        json!({"op": "clear_threshold", "operation": "dispatch:nap"}),
    )
    .await;
    assert_eq!(cleared["previous"], 50);
    call(
        &orch,
        "performance_hooks",
        json!({"op": "set_threshold", "operation": "task", "ms": null}),
    )
    .await;
    orch.execute(IntegrationRequest::new("nap", json!({"ms": 40})).with_correlation_id("slow-2"))
        .await
        .expect("answers");
    let slow = call(&orch, "performance_hooks", json!({"op": "slow", "limit": 10})).await;
    assert_eq!(slow["slow"].as_array().map(Vec::len), Some(1), "{slow}");
    let thresholds = call(&orch, "performance_hooks", json!({"op": "thresholds"})).await;
    assert_eq!(thresholds["thresholds"], json!({"dispatch": 10000}));
}

#[tokio::test]
async fn the_hosts_feeds_follow_the_hooks() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    let (orch, _) = build(plugin, Value::Null).await;
    let base = interests_of(&orch, NAME);
    assert!(
        base.intercept.is_empty(),
        "no pre-hook: the host never waits for the plugin"
    );
    assert!(base.observe.contains(OperationKind::Dispatch) && !base.observe.contains(OperationKind::AgentStatusChange));

    hooks
        .pre_hook_fn("gate", OperationKind::Dispatch, 0, |_| Verdict::Allow)
        .expect("adds");
    assert_eq!(interests_of(&orch, NAME).intercept, dispatch_only());
    hooks
        .pre_hook_fn("gate-2", [OperationKind::Dispatch, OperationKind::TaskStart], 0, |_| {
            Verdict::Allow
        })
        .expect("adds");
    assert!(interests_of(&orch, NAME).intercept.contains(OperationKind::TaskStart));
    assert!(hooks.remove("gate-2"));
    assert_eq!(interests_of(&orch, NAME).intercept, dispatch_only());
    assert!(hooks.remove("gate"));
    assert_eq!(interests_of(&orch, NAME), base);

    let registered = call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "register", "name": "status-watch", "event": "agent_status_change", "kind": "post", "capability": "echo"}),
    )
    .await;
    assert!(
        interests_of(&orch, NAME)
            .observe
            .contains(OperationKind::AgentStatusChange)
    );
    call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "unregister", "name": "status-watch", "token": registered["token"]}),
    )
    .await;
    assert_eq!(interests_of(&orch, NAME), base);
}

#[tokio::test]
async fn garbage_is_refused_on_every_capability() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .post_hook("rusty", OperationKind::Dispatch, 0, |_| {})
        .expect("adds");
    let (orch, _) = build(plugin, Value::Null).await;
    let register = |extra: Value| {
        let mut data = json!({"op": "register", "name": "h", "event": "dispatch", "kind": "pre", "capability": "echo"});
        if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        data
    };
    let cases = [
        ("lifecycle_hooks", json!([1])),
        ("lifecycle_hooks", json!("list")),
        ("lifecycle_hooks", json!({"op": "dance"})),
        ("lifecycle_hooks", json!({"op": 3})),
        ("lifecycle_hooks", json!({"op": "list", "typo": 1})),
        ("lifecycle_hooks", json!({"op": "history", "limit": 0})),
        ("lifecycle_hooks", json!({"op": "history", "limit": -3})),
        ("lifecycle_hooks", json!({"op": "history", "limit": "ten"})),
        ("lifecycle_hooks", register(json!({"event": "teleport"}))),
        ("lifecycle_hooks", register(json!({"event": 5}))),
        ("lifecycle_hooks", register(json!({"kind": "during"}))),
        (
            "lifecycle_hooks",
            register(json!({"kind": "pre", "event": "task_finish"})),
        ),
        ("lifecycle_hooks", register(json!({"capability": "Not A Capability"}))),
        ("lifecycle_hooks", register(json!({"capability": "lifecycle_hooks"}))),
        ("lifecycle_hooks", register(json!({"priority": "high"}))),
        ("lifecycle_hooks", register(json!({"priority": 5_000_000_000u64}))),
        ("lifecycle_hooks", register(json!({"fail_closed": "yes"}))),
        (
            "lifecycle_hooks",
            register(json!({"kind": "post", "fail_closed": true})),
        ),
        ("lifecycle_hooks", register(json!({"name": "rusty"}))),
        ("lifecycle_hooks", register(json!({"name": ""}))),
        ("lifecycle_hooks", register(json!({"extra": 1}))),
        (
            "lifecycle_hooks",
            json!({"op": "register", "name": "h", "kind": "pre", "capability": "echo"}),
        ),
        ("lifecycle_hooks", json!({"op": "unregister"})),
        ("lifecycle_hooks", json!({"op": "unregister", "name": "nobody"})),
        ("lifecycle_hooks", json!({"op": "unregister", "name": "rusty"})),
        (
            "lifecycle_hooks",
            json!({"op": "unregister", "name": "rusty", "token": 5}),
        ),
        ("observability", json!(7)),
        ("observability", json!({"op": "old"})),
        ("observability", json!({"limit": 0})),
        ("observability", json!({"limit": 1.5})),
        ("observability", json!({"correlation_id": 12})),
        ("observability", json!({"correlation_id": ""})),
        ("observability", json!({"correlationid": "x"})),
        ("performance_hooks", json!(true)),
        ("performance_hooks", json!({"op": "fast"})),
        ("performance_hooks", json!({"op": "slow", "limit": 0})),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "dispatch"}),
        ),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "dispatch", "ms": 0}),
        ),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "dispatch", "ms": -5}),
        ),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "dispatch", "ms": "fast"}),
        ),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "teleport", "ms": 5}),
        ),
        (
            "performance_hooks",
            json!({"op": "set_threshold", "operation": "dispatch:Bad Cap", "ms": 5}),
        ),
        ("performance_hooks", json!({"op": "set_threshold", "ms": 5})),
        ("performance_hooks", json!({"op": "clear_threshold"})),
        ("performance_hooks", json!({"op": "thresholds", "x": 1})),
    ];
    for (capability, data) in cases {
        let message = refused(&orch, capability, data.clone()).await;
        // Each says what was wrong: what was expected, what a field must be, or which hook.
        let says_why = ["expected", "must", "hook"].iter().any(|w| message.contains(w));
        assert!(says_why, "{capability} {data}: {message}");
    }
    // Nothing was registered by the refused requests.
    assert_eq!(
        orch.execute(IntegrationRequest::new("lifecycle_hooks", json!({})))
            .await
            .expect("lists")
            .data["hooks"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    for (config, key) in [
        (json!({"hook_timeout": 5}), "hook_timeout"),
        (json!({"hook_timeout_ms": 0}), "hook_timeout_ms"),
        (json!({"span_buffer": 0}), "span_buffer"),
        (json!({"span_buffer": 65_537}), "65536"),
        (json!({"intercept_budget_ms": 0}), "intercept_budget_ms"),
        (json!({"thresholds_ms": {"dispatch:x": 0}}), "dispatch:x"),
        (json!({"thresholds_ms": {"nothing": 5}}), "nothing"),
    ] {
        let err = Orchestrator::builder()
            .plugin(HookIntegrationPlugin::new())
            .configure(NAME, config.clone())
            .build()
            .await
            .expect_err("a bad configuration");
        assert!(err.to_string().contains(key), "{config}: {err}");
    }
}

/// The runs recorded for the operation of `correlation_id`, as `(hook, outcome, refused)`,
/// oldest first.
async fn runs_of(orch: &Orchestrator, correlation_id: &str) -> Vec<(String, String, bool)> {
    let answer = call(orch, "lifecycle_hooks", json!({"op": "history"})).await;
    let mut runs: Vec<(String, String, bool)> = answer["history"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["correlation_id"] == correlation_id)
        .map(|r| {
            (
                r["hook"].as_str().expect("hook").to_owned(),
                r["outcome"].as_str().expect("outcome").to_owned(),
                r["refused"].as_bool().expect("refused"),
            )
        })
        .collect();
    runs.reverse();
    runs
}

fn run(hook: &str, outcome: &str, refused: bool) -> (String, String, bool) {
    (hook.to_owned(), outcome.to_owned(), refused)
}

/// A pre-hook that never answers for dispatches of `echo` and allows everything else.
fn hangs_on_echo(op: Operation<'static>) -> plugin_hooks::HookFuture {
    let hang = op.capability.as_deref() == Some("echo");
    Box::pin(async move {
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(Verdict::Allow)
    })
}

#[tokio::test]
async fn naming_a_capability_as_a_hook_callback_does_not_exempt_it_from_hooks() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .pre_hook_with(
            "no-forbidden",
            OperationKind::Dispatch,
            HookOptions::default().fail_closed(),
            |op| {
                let forbidden = op.capability.as_deref() == Some("forbidden_cap");
                Box::pin(async move {
                    Ok(if forbidden {
                        Verdict::Veto("forbidden_cap is closed".into())
                    } else {
                        Verdict::Allow
                    })
                })
            },
        )
        .expect("adds");
    let (orch, calls) = build(plugin, Value::Null).await;
    // Any caller may register harmless hooks that name `forbidden_cap` as their callback ...
    for (name, event, kind) in [
        ("decoy-post", "agent_status_change", "post"),
        ("decoy-pre", "task_start", "pre"),
    ] {
        call(
            &orch,
            "lifecycle_hooks",
            json!({"op": "register", "name": name, "event": event, "kind": kind, "capability": "forbidden_cap"}),
        )
        .await;
    }
    // ... which does not switch off the hooks of `forbidden_cap`.
    let err = orch
        .execute(IntegrationRequest::new("forbidden_cap", json!({})))
        .await
        .expect_err("still refused");
    assert!(err.to_string().contains("forbidden_cap is closed"), "{err}");
    assert_eq!(count(&calls, "forbidden_cap"), 0);
}

#[tokio::test]
async fn a_callback_runs_under_a_fresh_correlation_id_linked_in_its_payload() {
    let gatekeeper = Gatekeeper::new(true);
    let asked = Arc::clone(&gatekeeper.asked);
    let asked_ids = Arc::clone(&gatekeeper.asked_ids);
    let plugin = HookIntegrationPlugin::new();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let saw = Arc::clone(&seen);
    plugin
        .hooks()
        .pre_hook_fn("watch", OperationKind::Dispatch, 0, move |op| {
            saw.lock()
                .expect("lock")
                .push(op.capability.as_deref().unwrap_or_default().to_owned());
            Verdict::Allow
        })
        .expect("adds");
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(plugin)
        .plugin(Workbench::default())
        .plugin(gatekeeper)
        .build()
        .await
        .expect("builds");

    orch.execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("trace-7"))
        .await
        .expect("answers");
    let (data, callback_id) = {
        let asked = asked.lock().expect("lock");
        let ids = asked_ids.lock().expect("lock");
        let at = asked
            .iter()
            .position(|a| a["operation"]["capability"] == "echo")
            .expect("the gatekeeper was asked about echo");
        (asked[at].clone(), ids[at].clone())
    };
    assert_eq!(
        data["operation"]["correlation_id"], "trace-7",
        "the payload links the two"
    );
    assert_ne!(callback_id, "trace-7");
    assert!(
        callback_id.len() == 32 && callback_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{callback_id}"
    );
    // The callback's own dispatch ran no hook, neither the remote one nor the Rust one ...
    assert!(
        asked
            .lock()
            .expect("lock")
            .iter()
            .all(|a| a["operation"]["capability"] != "gate_check")
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.contains(&"echo".to_owned()) && !seen.contains(&"gate_check".to_owned()),
        "{seen:?}"
    );
    // ... and is still recorded as a span, under its own id.
    let spans = call(&orch, "observability", json!({"correlation_id": callback_id})).await;
    assert_eq!(spans["spans"][0]["fields"]["gen_ai.tool.name"], "gate_check", "{spans}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_hook_callback_does_not_set_off_post_hooks_again() {
    let (orch, calls) = build(HookIntegrationPlugin::new(), Value::Null).await;
    call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "register", "name": "audit", "event": "dispatch", "kind": "post", "capability": "echo"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = count(&calls, "echo");
    call(&orch, "nap", json!({"ms": 0})).await;
    eventually("the post-hook's callback ran", || async {
        count(&calls, "echo") > before
    })
    .await;
    // Each callback is a dispatch the post-hook would hear of, and answer with a callback...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&calls, "echo"),
        before + 1,
        "the callback's dispatch ran no post-hook"
    );
}

#[tokio::test]
async fn unregistering_a_remote_hook_takes_its_token() {
    let (orch, _) = build(HookIntegrationPlugin::new(), Value::Null).await;
    let register = |name: &str| json!({"op": "register", "name": name, "event": "agent_status_change", "kind": "post", "capability": "echo"});
    let first = call(&orch, "lifecycle_hooks", register("watch")).await;
    let token = first["token"].as_str().expect("a token").to_owned();
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    let second = call(&orch, "lifecycle_hooks", register("watch-2")).await;
    let other = second["token"].as_str().expect("a token").to_owned();
    assert_ne!(token, other);
    let listed = call(&orch, "lifecycle_hooks", json!({"op": "list"})).await;
    assert!(!listed.to_string().contains(&token), "tokens are never listed");

    let mut altered = token.clone();
    let last = if altered.ends_with('0') { "1" } else { "0" };
    altered.replace_range(31.., last);
    for attempt in [
        json!({"op": "unregister", "name": "watch"}),
        json!({"op": "unregister", "name": "watch", "token": other}),
        json!({"op": "unregister", "name": "watch", "token": altered}),
        json!({"op": "unregister", "name": "watch", "token": ""}),
    ] {
        let message = refused(&orch, "lifecycle_hooks", attempt.clone()).await;
        assert!(message.contains("token"), "{attempt}: {message}");
    }
    let listed = call(&orch, "lifecycle_hooks", json!({"op": "list"})).await;
    assert_eq!(listed["hooks"].as_array().map(Vec::len), Some(2), "nothing was removed");
    let removed = call(
        &orch,
        "lifecycle_hooks",
        json!({"op": "unregister", "name": "watch", "token": token}),
    )
    .await;
    assert_eq!(removed["unregistered"]["name"], "watch");
    let listed = call(&orch, "lifecycle_hooks", json!({"op": "list"})).await;
    assert_eq!(listed["hooks"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_number_of_hooks_is_capped_at_256() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    for i in 0..255 {
        hooks
            .post_hook(format!("h{i}"), OperationKind::AgentStatusChange, 0, |_| {})
            .expect("under the cap");
    }
    let (orch, _) = build(plugin, Value::Null).await;
    let register = |name: &str| json!({"op": "register", "name": name, "event": "agent_status_change", "kind": "post", "capability": "echo"});
    call(&orch, "lifecycle_hooks", register("remote-256")).await;
    let err = hooks
        .post_hook("rust-257", OperationKind::AgentStatusChange, 0, |_| {})
        .expect_err("over the cap");
    assert!(err.to_string().contains("256"), "{err}");
    let message = refused(&orch, "lifecycle_hooks", register("remote-257")).await;
    assert!(message.contains("256"), "{message}");
    assert_eq!(hooks.list().len(), 256);
    assert!(hooks.remove("h0"));
    call(&orch, "lifecycle_hooks", register("remote-257")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_hook_that_calls_execute_again_is_not_re_entered() {
    let plugin = HookIntegrationPlugin::new();
    let cell: Arc<OnceLock<Orchestrator>> = Arc::default();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (orchestrator, ran) = (Arc::clone(&cell), Arc::clone(&runs));
    plugin
        .hooks()
        .pre_hook("re-enters", OperationKind::Dispatch, 0, move |op| {
            let orch = orchestrator.get().cloned();
            let ran = Arc::clone(&ran);
            Box::pin(async move {
                if op.capability.as_deref() != Some("echo") {
                    return Ok(Verdict::Allow);
                }
                // Bounded here so that a regression fails this test instead of overflowing
                // the stack of the whole test binary.
                if ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 8 {
                    return Ok(Verdict::Veto("re-entered".into()));
                }
                if let Some(orch) = orch {
                    orch.execute(IntegrationRequest::new("echo", json!({"inner": true})))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Verdict::Allow)
            })
        })
        .expect("adds");
    let (orch, calls) = build(plugin, json!({"hook_timeout_ms": 1000})).await;
    let _ = cell.set(orch.clone());
    tokio::time::timeout(Duration::from_secs(5), call(&orch, "echo", json!({})))
        .await
        .expect("completes");
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the hook's own call was not hooked"
    );
    assert_eq!(
        count(&calls, "echo"),
        2,
        "the hook's call and the outer call were both served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_fail_closed_hook_is_refused_within_the_hosts_call_timeout() {
    let plugin = HookIntegrationPlugin::new();
    plugin
        .hooks()
        .pre_hook_with(
            "hangs-closed",
            OperationKind::Dispatch,
            HookOptions::default().fail_closed(),
            hangs_on_echo,
        )
        .expect("adds");
    // The hook's own bound is far beyond the host's call timeout (left at its default): only
    // the intercept budget (1.5 s by default) can refuse before the host lets the call through.
    let (orch, calls) = build(plugin, json!({"hook_timeout_ms": 10000})).await;
    assert_eq!(orch.call_timeout(), Duration::from_secs(2));
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        orch.execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("hang-1")),
    )
    .await
    .expect("answers")
    .expect_err("refused, not let through");
    assert!(
        matches!(err, OrchestratorError::Dispatch(DispatchError::Vetoed { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the intercept budget of 1500 ms ran out before hook \"hangs-closed\" decided"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(count(&calls, "echo"), 0);
    assert_eq!(runs_of(&orch, "hang-1").await, [run("hangs-closed", "timed_out", true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_left_when_the_intercept_budget_runs_out_are_skipped() {
    let plugin = HookIntegrationPlugin::new();
    let hooks = plugin.hooks();
    hooks
        .pre_hook("slow-open", OperationKind::Dispatch, 2, hangs_on_echo)
        .expect("adds");
    hooks
        .pre_hook_with(
            "strict",
            OperationKind::Dispatch,
            HookOptions::default().with_priority(1).fail_closed(),
            |_| Box::pin(async { Ok(Verdict::Allow) }),
        )
        .expect("adds");
    hooks
        .pre_hook_fn("lenient", OperationKind::Dispatch, 0, |_| Verdict::Allow)
        .expect("adds");
    let (orch, calls) = build(plugin, json!({"hook_timeout_ms": 10000, "intercept_budget_ms": 150})).await;

    let err = orch
        .execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("budget-1"))
        .await
        .expect_err("a fail-closed hook never got to decide");
    assert!(
        err.to_string()
            .contains("the intercept budget of 150 ms ran out before hook \"strict\" decided"),
        "{err}"
    );
    assert_eq!(count(&calls, "echo"), 0);
    assert_eq!(
        runs_of(&orch, "budget-1").await,
        [
            run("slow-open", "timed_out", false),
            run("strict", "skipped", true),
            run("lenient", "skipped", false)
        ]
    );

    // With no fail-closed hook left undecided, the operation goes ahead.
    assert!(hooks.remove("strict"));
    orch.execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("budget-2"))
        .await
        .expect("goes ahead");
    assert_eq!(count(&calls, "echo"), 1);
    assert_eq!(
        runs_of(&orch, "budget-2").await,
        [run("slow-open", "timed_out", false), run("lenient", "skipped", false)]
    );
}

#[tokio::test]
async fn slow_operation_events_are_rate_limited_and_the_rest_counted() {
    let (orch, _) = build(
        HookIntegrationPlugin::new(),
        json!({"slow_events_per_s": 2, "thresholds_ms": {"dispatch:nap": 1}}),
    )
    .await;
    let mut events = orch.subscribe_events();
    for _ in 0..5 {
        call(&orch, "nap", json!({"ms": 5})).await;
    }
    let slow = call(&orch, "performance_hooks", json!({"op": "slow", "limit": 10})).await;
    assert_eq!(
        slow["slow"].as_array().map(Vec::len),
        Some(5),
        "every slow operation is kept"
    );
    assert_eq!(slow["events_suppressed"], 3, "{slow}");
    let mut announced = 0;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(event) = events.recv().await {
            if matches!(&event, OrchestratorEvent::Custom { name, .. } if name == "slow_operation") {
                announced += 1;
            }
        }
    })
    .await;
    assert_eq!(announced, 2, "a burst of the rate, then nothing");
}

#[tokio::test]
async fn thresholds_are_capped_at_1024_names() {
    let thresholds: serde_json::Map<String, Value> =
        (0..1_024).map(|i| (format!("task:k{i}"), json!(60_000))).collect();
    let (orch, _) = build(HookIntegrationPlugin::new(), json!({ "thresholds_ms": thresholds })).await;
    let set = |operation: &str| json!({"op": "set_threshold", "operation": operation, "ms": 5});
    let message = refused(&orch, "performance_hooks", set("dispatch:echo")).await;
    assert!(message.contains("1024"), "{message}");
    // Changing or clearing a threshold that is set still works; clearing makes room.
    call(&orch, "performance_hooks", set("task:k0")).await;
    call(
        &orch,
        "performance_hooks",
        json!({"op": "clear_threshold", "operation": "task:k1"}),
    )
    .await;
    call(&orch, "performance_hooks", set("dispatch:echo")).await;
    let answer = call(&orch, "performance_hooks", json!({"op": "thresholds"})).await;
    assert_eq!(answer["thresholds"].as_object().map(serde_json::Map::len), Some(1_024));

    let too_many: serde_json::Map<String, Value> = (0..1_025).map(|i| (format!("task:k{i}"), json!(5))).collect();
    let err = Orchestrator::builder()
        .plugin(HookIntegrationPlugin::new())
        .configure(NAME, json!({ "thresholds_ms": too_many }))
        .build()
        .await
        .expect_err("too many thresholds");
    assert!(err.to_string().contains("1024"), "{err}");
}

fn library() -> std::path::PathBuf {
    plugin_api::testkit::example_library("plugin-hooks", "hooks_plugin").expect("the example library")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_library_vetoes_across_the_stable_abi() {
    let workbench = Workbench::default();
    let calls = workbench.calls();
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(workbench)
        .plugin(Gatekeeper::new(false))
        .load_plugin(library())
        .configure(NAME, json!({"hook_timeout_ms": 500}))
        .build()
        .await
        .expect("builds");
    let info = orch
        .catalog()
        .plugins
        .into_iter()
        .find(|p| p.name == NAME)
        .expect("loaded");
    assert!(matches!(info.origin, PluginOrigin::StableAbi { .. }), "{info:?}");
    assert!(info.interests.intercept.is_empty());

    call(&orch, "lifecycle_hooks", gate_registration()).await;
    assert_eq!(interests_of(&orch, NAME).intercept, dispatch_only());
    let err = orch
        .execute(IntegrationRequest::new("forbidden_cap", json!({})).with_correlation_id("dyn-1"))
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("hook \"gatekeeper\": forbidden_cap is closed"),
        "{err}"
    );
    assert_eq!(count(&calls, "forbidden_cap"), 0);
    call(&orch, "echo", json!({})).await;
    assert_eq!(count(&calls, "echo"), 1);

    let spans = call(&orch, "observability", json!({"correlation_id": "dyn-1"})).await;
    let fields: Vec<Value> = spans["spans"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["fields"].clone())
        .collect();
    assert!(
        fields
            .iter()
            .any(|f| f["gen_ai.tool.name"] == "forbidden_cap" && f["outcome"] == "vetoed" && f["vetoed_by"] == NAME),
        "{spans}"
    );
    assert!(
        history(&orch)
            .await
            .contains(&("gatekeeper".to_owned(), "vetoed".to_owned()))
    );
}
