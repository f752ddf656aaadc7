//! Operation feeds through the public API: observers hear every operation of the kinds they
//! asked for, with outcome and timing; interceptors refuse operations before they happen;
//! a broken observer or interceptor never takes an operation down; a plugin that asks for
//! nothing is never called; interests change at run time; spans carry the GenAI fields.

mod common;

use common::{Behaviour, ScriptedPlugin};
use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use orchestrator::{
    AgentError, DispatchError, Interests, Operation, OperationKind, OperationOutcome, OperationSet, Verdict,
};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`FeedPlugin`]'s interceptor does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    Allow,
    /// Vetoes operations whose details mention "forbidden" anywhere.
    VetoForbidden,
    Panic,
    Hang,
}

/// Observes and intercepts what it is told to, and records what it saw.
struct FeedPlugin {
    name: &'static str,
    interests: Interests,
    gate: Gate,
    observed: Arc<Mutex<Vec<Operation<'static>>>>,
    intercepted: Arc<AtomicUsize>,
    host: Arc<Mutex<Option<HostHandle>>>,
    panic_in_observe: bool,
}

impl FeedPlugin {
    fn new(name: &'static str, interests: Interests, gate: Gate) -> Self {
        Self {
            name,
            interests,
            gate,
            observed: Arc::default(),
            intercepted: Arc::default(),
            host: Arc::default(),
            panic_in_observe: false,
        }
    }
}

#[async_trait]
impl OrchestrationPlugin for FeedPlugin {
    fn name(&self) -> &str {
        self.name
    }
    fn capabilities(&self) -> Vec<String> {
        vec![format!("{}_cap", self.name.to_lowercase())]
    }
    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        *self.host.lock().expect("lock") = Some(host);
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(request.data))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
    fn interests(&self) -> Interests {
        self.interests
    }
    fn observe(&self, operation: &Operation<'_>) {
        if self.panic_in_observe {
            panic!("observer bug");
        }
        self.observed.lock().expect("lock").push(operation.clone().into_owned());
    }
    async fn intercept(&self, operation: &Operation<'_>) -> Verdict {
        self.intercepted.fetch_add(1, Ordering::SeqCst);
        match self.gate {
            Gate::Allow => Verdict::Allow,
            Gate::VetoForbidden => {
                let text = operation.details.as_deref().map(Value::to_string).unwrap_or_default();
                if text.contains("forbidden") {
                    Verdict::Veto("forbidden things are refused".into())
                } else {
                    Verdict::Allow
                }
            }
            Gate::Panic => panic!("interceptor bug"),
            Gate::Hang => {
                let host = self.host.lock().expect("lock").clone().expect("initialized");
                host.sleep(Duration::from_secs(3600)).await;
                Verdict::Allow
            }
        }
    }
}

fn all_observed() -> Interests {
    Interests::observing(OperationSet::ALL)
}

fn intercepting(kind: OperationKind) -> Interests {
    Interests::NONE.and_intercepting(OperationSet::EMPTY.with(kind))
}

#[tokio::test]
async fn observers_hear_dispatches_with_outcome_plugin_and_correlation_id() {
    let feed = FeedPlugin::new("Watcher", all_observed(), Gate::Allow);
    let observed = Arc::clone(&feed.observed);
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(feed)
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .plugin(ScriptedPlugin::new("Broken", &["broken"], Behaviour::Fail))
        .build()
        .await
        .expect("builds");
    orch.execute(
        IntegrationRequest::new("echo", json!({}))
            .with_correlation_id("corr-1")
            .with_agent("a1"),
    )
    .await
    .expect("served");
    let failed = orch
        .execute(IntegrationRequest::new("broken", json!({})).with_correlation_id("corr-2"))
        .await;
    assert!(failed.is_err());
    let _ = orch
        .execute(IntegrationRequest::new("nothing_serves_this", json!({})))
        .await;

    let seen = observed.lock().expect("lock").clone();
    let dispatches: Vec<_> = seen.iter().filter(|o| o.kind == OperationKind::Dispatch).collect();
    assert_eq!(dispatches.len(), 3, "{seen:#?}");
    let ok = dispatches[0];
    assert_eq!(ok.outcome, OperationOutcome::Succeeded);
    assert_eq!(ok.correlation_id, "corr-1");
    assert_eq!(ok.capability.as_deref(), Some("echo"));
    assert_eq!(ok.plugin.as_deref(), Some("Echo"));
    assert_eq!(ok.agent_id.as_deref(), Some("a1"));
    assert!(ok.at_ns > 0);
    assert_eq!(dispatches[1].outcome, OperationOutcome::Failed);
    assert_eq!(dispatches[1].correlation_id, "corr-2");
    assert!(dispatches[1].error.as_deref().unwrap_or("").contains("broken"));
    assert_eq!(dispatches[2].outcome, OperationOutcome::Failed);
    assert!(
        dispatches[2]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("nothing_serves_this")
    );

    let failures: Vec<_> = seen
        .iter()
        .filter(|o| o.kind == OperationKind::ProviderFailure)
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].plugin.as_deref(), Some("Broken"));
    assert_eq!(failures[0].correlation_id, "corr-2");
    assert_eq!(failures[0].outcome, OperationOutcome::Failed);
}

#[tokio::test]
async fn observers_hear_registrations_status_changes_and_tasks() {
    let feed = FeedPlugin::new("Watcher", all_observed(), Gate::Allow);
    let observed = Arc::clone(&feed.observed);
    let orch = Orchestrator::builder().plugin(feed).build().await.expect("builds");
    let id = orch
        .register_agent(AgentConfig::new("w").with_id("w1").with_capacity(1))
        .await
        .expect("registers");
    orch.execute_agent_task(&id, json!({"kind": "build"}))
        .await
        .expect("runs");

    let seen = observed.lock().expect("lock").clone();
    let kinds: Vec<OperationKind> = seen.iter().map(|o| o.kind).collect();
    assert_eq!(kinds[0], OperationKind::AgentRegistration);
    assert_eq!(seen[0].agent_id.as_deref(), Some("w1"));
    let start = seen
        .iter()
        .position(|o| o.kind == OperationKind::TaskStart)
        .expect("task start observed");
    let finish = seen
        .iter()
        .position(|o| o.kind == OperationKind::TaskFinish)
        .expect("task finish observed");
    assert!(start < finish);
    assert_eq!(seen[finish].task_kind.as_deref(), Some("build"));
    assert_eq!(seen[finish].outcome, OperationOutcome::Succeeded);
    assert_eq!(seen[start].correlation_id, seen[finish].correlation_id);
    // Capacity 1: the agent went busy while the task ran and back to active after.
    let changes: Vec<_> = seen
        .iter()
        .filter_map(|o| o.status.filter(|_| o.kind == OperationKind::AgentStatusChange))
        .collect();
    assert_eq!(
        changes,
        vec![
            (AgentStatus::Active, AgentStatus::Busy),
            (AgentStatus::Busy, AgentStatus::Active)
        ]
    );
}

#[tokio::test]
async fn a_veto_stops_a_registration_and_leaves_no_agent_behind() {
    let orch = Orchestrator::builder()
        .plugin(FeedPlugin::new(
            "Gatekeeper",
            intercepting(OperationKind::AgentRegistration),
            Gate::VetoForbidden,
        ))
        .build()
        .await
        .expect("builds");
    let refused = orch
        .register_agent(AgentConfig::new("bad").with_id("x").with_capabilities(["forbidden"]))
        .await
        .expect_err("vetoed");
    let text = refused.to_string();
    assert!(
        text.contains("Gatekeeper") && text.contains("forbidden things are refused"),
        "{text}"
    );
    assert!(matches!(
        refused,
        OrchestratorError::Agent(AgentError::RegistrationVetoed { .. })
    ));
    assert_eq!(orch.agent_count(), 0);
    assert!(orch.agent_status(&AgentId::from("x")).is_none());
    orch.register_agent(AgentConfig::new("good").with_id("x"))
        .await
        .expect("an allowed registration goes ahead");
    assert_eq!(orch.agent_count(), 1);
}

#[tokio::test]
async fn a_veto_stops_a_dispatch_before_any_provider_sees_it() {
    let echo = ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo);
    let calls = Arc::clone(&echo.calls);
    let watcher = FeedPlugin::new("Watcher", all_observed(), Gate::Allow);
    let observed = Arc::clone(&watcher.observed);
    let orch = Orchestrator::builder()
        .plugin(FeedPlugin::new(
            "Gatekeeper",
            intercepting(OperationKind::Dispatch),
            Gate::VetoForbidden,
        ))
        .plugin(watcher)
        .plugin(echo)
        .build()
        .await
        .expect("builds");
    let refused = orch
        .execute(IntegrationRequest::new("echo", json!({"what": "forbidden"})).with_correlation_id("v1"))
        .await
        .expect_err("vetoed");
    assert!(matches!(
        refused,
        OrchestratorError::Dispatch(DispatchError::Vetoed { ref plugin, .. }) if plugin == "Gatekeeper"
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no provider ran");
    orch.execute(IntegrationRequest::new("echo", json!({"what": "fine"})))
        .await
        .expect("allowed");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let vetoed = observed
        .lock()
        .expect("lock")
        .iter()
        .find(|o| o.correlation_id == "v1")
        .cloned()
        .expect("the veto was observed");
    assert_eq!(vetoed.outcome, OperationOutcome::Vetoed);
    assert_eq!(vetoed.plugin.as_deref(), Some("Gatekeeper"));
}

#[tokio::test]
async fn a_veto_stops_a_task_before_the_agent_is_loaded() {
    let orch = Orchestrator::builder()
        .plugin(FeedPlugin::new(
            "Gatekeeper",
            intercepting(OperationKind::TaskStart),
            Gate::VetoForbidden,
        ))
        .build()
        .await
        .expect("builds");
    let id = orch
        .register_agent(AgentConfig::new("w").with_capacity(1))
        .await
        .expect("registers");
    let refused = orch
        .execute_agent_task(&id, json!({"job": "forbidden"}))
        .await
        .expect_err("vetoed");
    assert!(matches!(
        refused,
        OrchestratorError::Agent(AgentError::TaskVetoed { .. })
    ));
    assert_eq!(orch.agent(&id).map(|a| a.load), Some(0));
    assert_eq!(orch.agent_status(&id), Some(AgentStatus::Active));
    orch.execute_agent_task(&id, json!({"job": "fine"}))
        .await
        .expect("allowed");
}

#[tokio::test]
async fn panicking_and_hanging_interceptors_let_the_operation_through_and_are_counted() {
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_millis(100))
        .plugin(FeedPlugin::new(
            "Panicky",
            intercepting(OperationKind::Dispatch),
            Gate::Panic,
        ))
        .plugin(FeedPlugin::new(
            "Hangs",
            intercepting(OperationKind::Dispatch),
            Gate::Hang,
        ))
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        orch.execute(IntegrationRequest::new("echo", json!({}))),
    )
    .await
    .expect("bounded by the call timeout")
    .expect("served: interceptors fail open");
    assert_eq!(response.served_by, "Echo");
    for name in ["Panicky", "Hangs"] {
        let info = orch.plugins().into_iter().find(|p| p.name == name).expect("listed");
        assert_eq!(info.feed_failures, 1, "{name}");
    }
}

#[tokio::test]
async fn a_panicking_observer_is_contained_and_counted() {
    let mut feed = FeedPlugin::new("Clumsy", all_observed(), Gate::Allow);
    feed.panic_in_observe = true;
    let orch = Orchestrator::builder()
        .plugin(feed)
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    orch.register_agent(AgentConfig::default()).await.expect("registers");
    orch.execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect("served");
    let info = orch.plugins().into_iter().find(|p| p.name == "Clumsy").expect("listed");
    assert_eq!(info.feed_failures, 2);
}

#[tokio::test]
async fn a_plugin_that_asks_for_nothing_is_never_fed() {
    let quiet = FeedPlugin::new("Quiet", Interests::NONE, Gate::Panic);
    let observed = Arc::clone(&quiet.observed);
    let intercepted = Arc::clone(&quiet.intercepted);
    let orch = Orchestrator::builder()
        .plugin(quiet)
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    orch.execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect("served");
    orch.execute_agent_task(&id, json!({})).await.expect("runs");
    assert!(observed.lock().expect("lock").is_empty());
    assert_eq!(intercepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn interests_change_at_run_time_and_show_in_the_catalog() {
    let feed = FeedPlugin::new("Switch", Interests::NONE, Gate::VetoForbidden);
    let host = Arc::clone(&feed.host);
    let intercepted = Arc::clone(&feed.intercepted);
    let orch = Orchestrator::builder()
        .plugin(feed)
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let forbidden = || IntegrationRequest::new("echo", json!({"x": "forbidden"}));
    orch.execute(forbidden()).await.expect("nobody intercepts yet");

    let host = host.lock().expect("lock").clone().expect("initialized");
    host.set_interests(intercepting(OperationKind::Dispatch));
    let info = orch.plugins().into_iter().find(|p| p.name == "Switch").expect("listed");
    assert!(info.interests.intercept.contains(OperationKind::Dispatch));
    assert!(orch.execute(forbidden()).await.is_err(), "now it vetoes");
    assert_eq!(intercepted.load(Ordering::SeqCst), 1);

    host.set_interests(Interests::NONE);
    orch.execute(forbidden()).await.expect("dropped again");
    assert_eq!(intercepted.load(Ordering::SeqCst), 1);
    let catalog = serde_json::to_value(orch.catalog()).expect("serializes");
    let switch = catalog["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "Switch"))
        .expect("in the catalog");
    assert_eq!(switch["interests"], json!({"observe": [], "intercept": []}));
}

#[tokio::test]
async fn feeds_stop_when_the_plugin_is_unregistered() {
    let feed = FeedPlugin::new("Watcher", all_observed(), Gate::Allow);
    let observed = Arc::clone(&feed.observed);
    let orch = Orchestrator::builder()
        .plugin(feed)
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    orch.unregister_plugin("Watcher").await.expect("unregisters");
    orch.execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect("served");
    assert!(
        observed
            .lock()
            .expect("lock")
            .iter()
            .all(|o| o.kind != OperationKind::Dispatch)
    );
}

/// Never finishes a task.
struct StuckExecutor;

#[async_trait]
impl orchestrator::AgentExecutor for StuckExecutor {
    async fn execute(&self, _context: orchestrator::ExecutionContext) -> Result<Value, orchestrator::ExecutorError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_task_whose_caller_stops_waiting_is_reported_finished_as_cancelled() {
    let feed = FeedPlugin::new("Watcher", all_observed(), Gate::Allow);
    let observed = Arc::clone(&feed.observed);
    let orch = Orchestrator::builder()
        .executor(StuckExecutor)
        .plugin(feed)
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        orch.execute_agent_task(&id, json!({"kind": "slow"})),
    )
    .await;
    assert!(gave_up.is_err(), "the executor never finishes");
    let seen = observed.lock().expect("lock").clone();
    let starts = seen.iter().filter(|o| o.kind == OperationKind::TaskStart).count();
    let finishes: Vec<_> = seen.iter().filter(|o| o.kind == OperationKind::TaskFinish).collect();
    assert_eq!((starts, finishes.len()), (1, 1), "{seen:#?}");
    assert_eq!(finishes[0].outcome, OperationOutcome::Failed);
    assert!(finishes[0].error.as_deref().unwrap_or("").contains("cancelled"));
    assert_eq!(finishes[0].task_kind.as_deref(), Some("slow"));
    assert_eq!(orch.agent(&id).map(|a| a.load), Some(0));
}

/// The spans the host opens carry the correlation id and the OpenTelemetry GenAI fields.
mod spans {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    /// A span's name and its fields as text.
    type SpanRecord = (String, Vec<(String, String)>);

    #[derive(Default, Clone)]
    struct Captured(Arc<Mutex<Vec<SpanRecord>>>);

    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Captured {
        fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
            let mut fields = Fields(Vec::new());
            attrs.record(&mut fields);
            self.0
                .lock()
                .expect("lock")
                .push((attrs.metadata().name().to_owned(), fields.0));
        }
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn dispatch_and_task_spans_carry_correlation_id_agent_and_capability() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(captured.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let orch = Orchestrator::builder()
                    .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
                    .build()
                    .await
                    .expect("builds");
                orch.execute(
                    IntegrationRequest::new("echo", json!({}))
                        .with_correlation_id("span-1")
                        .with_agent("a7"),
                )
                .await
                .expect("served");
                let id = orch
                    .register_agent(AgentConfig::new("w").with_id("w9"))
                    .await
                    .expect("registers");
                orch.execute_agent_task(&id, json!({})).await.expect("runs");
            })
        });
        let spans = captured.0.lock().expect("lock").clone();
        let (_, tool) = spans
            .iter()
            .find(|(name, fields)| name == "execute_tool" && field(fields, "correlation_id") == Some("span-1"))
            .expect("an execute_tool span for the call");
        assert_eq!(field(tool, "gen_ai.operation.name"), Some("execute_tool"));
        assert_eq!(field(tool, "gen_ai.tool.name"), Some("echo"));
        assert_eq!(field(tool, "gen_ai.agent.id"), Some("a7"));
        let (_, agent) = spans
            .iter()
            .find(|(name, _)| name == "invoke_agent")
            .expect("an invoke_agent span for the task");
        assert_eq!(field(agent, "gen_ai.agent.id"), Some("w9"));
        assert_eq!(field(agent, "gen_ai.operation.name"), Some("invoke_agent"));
        assert!(field(agent, "correlation_id").is_some_and(|c| !c.is_empty()));
    }
}
