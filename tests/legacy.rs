//! The legacy fallback path through the public API: `select_agent_for_task` and
//! `execute_agent_task` with and without their enhancing plugins.

mod common;

use common::{Behaviour, FixedRouter, ScriptedPlugin};
use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use orchestrator::{AgentError, AgentExecutor, ExecutionContext, ExecutorError, OrchestratorEvent};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[tokio::test]
async fn legacy_selection_is_least_loaded_then_round_robin() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let a = orch
        .register_agent(AgentConfig::new("a").with_id("a").with_capabilities(["rust"]))
        .await
        .expect("a");
    let b = orch
        .register_agent(AgentConfig::new("b").with_id("b").with_capabilities(["rust"]))
        .await
        .expect("b");
    let c = orch
        .register_agent(AgentConfig::new("c").with_id("c").with_capabilities(["go"]))
        .await
        .expect("c");
    let task = Task::new("compile").with_required_capabilities(["rust"]);
    let mut picks = Vec::new();
    for _ in 0..4 {
        picks.push(orch.select_agent_for_task(&task, &[]).await.expect("picks"));
    }
    assert_eq!(
        picks,
        [a.clone(), b.clone(), a.clone(), b.clone()],
        "round robin between equals"
    );
    // Only `c` among the candidates, but it lacks `rust`.
    let err = orch
        .select_agent_for_task(&task, std::slice::from_ref(&c))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::NoEligibleAgent { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("1 lacking [rust]"), "{err}");
    orch.set_agent_status(&a, AgentStatus::Offline).expect("known");
    assert_eq!(
        orch.select_agent_for_task(&task, &[a, b.clone()]).await.expect("picks"),
        b
    );
}

#[tokio::test]
async fn a_router_answer_that_is_not_a_candidate_falls_back_to_legacy() {
    let orch = Orchestrator::builder()
        .plugin(FixedRouter("ghost"))
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    let real = orch
        .register_agent(AgentConfig::default().with_id("real"))
        .await
        .expect("registers");
    let picked = orch
        .select_agent_for_task(&Task::new("x"), &[])
        .await
        .expect("legacy picks");
    assert_eq!(picked, real);
    let fallback = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("in time")
            .expect("event")
        {
            OrchestratorEvent::CapabilityFallback { plugin, reason, .. } => break (plugin, reason),
            _ => continue,
        }
    };
    assert_eq!(fallback.0, "FixedRouter");
    assert_eq!(fallback.1, "picked `ghost`, it is not registered");

    let strict = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(FixedRouter("ghost"))
        .build()
        .await
        .expect("builds");
    strict.register_agent(AgentConfig::default()).await.expect("registers");
    let err = strict.select_agent_for_task(&Task::new("x"), &[]).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::InvalidSelection { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_valid_router_answer_is_used() {
    let orch = Orchestrator::builder()
        .plugin(FixedRouter("b"))
        .build()
        .await
        .expect("builds");
    orch.register_agent(AgentConfig::default().with_id("a"))
        .await
        .expect("a");
    let b = orch
        .register_agent(AgentConfig::default().with_id("b"))
        .await
        .expect("b");
    for _ in 0..3 {
        assert_eq!(
            orch.select_agent_for_task(&Task::new("x"), &[]).await.expect("picks"),
            b
        );
    }
}

#[tokio::test]
async fn default_executor_is_a_dry_run_with_the_legacy_analysis() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let id = orch
        .register_agent(AgentConfig::default().with_capabilities(["deploy"]))
        .await
        .expect("registers");
    let out = orch
        .execute_agent_task(
            &id,
            json!({"task_description": "Build the image, then deploy it", "env": "staging"}),
        )
        .await
        .expect("runs");
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["agent_id"], id.as_str());
    assert_eq!(out["data"]["env"], "staging");
    assert_eq!(out["analysis"]["plan"], json!(["Build the image", "deploy it"]));
    assert_eq!(out["analysis"]["required_capabilities"], json!(["deploy"]));
    let no_text = orch.execute_agent_task(&id, json!({"n": 1})).await.expect("runs");
    assert_eq!(no_text["analysis"], Value::Null, "nothing to analyse");
}

#[tokio::test]
async fn the_thinking_plugin_is_used_when_present_and_skipped_when_failing() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Thinker", &["extended_thinking"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let out = orch
        .execute_agent_task(&id, json!({"description": "plan it"}))
        .await
        .expect("runs");
    assert_eq!(out["analysis"]["plugin"], "Thinker");

    let failing = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Thinker", &["extended_thinking"], Behaviour::Fail))
        .build()
        .await
        .expect("builds");
    let id = failing.register_agent(AgentConfig::default()).await.expect("registers");
    let out = failing
        .execute_agent_task(&id, json!({"description": "plan it"}))
        .await
        .expect("runs");
    assert_eq!(out["analysis"]["engine"], "legacy");
}

/// An executor that holds every task until released, and fails or panics on request.
struct GatedExecutor {
    release: Arc<Notify>,
}

#[async_trait]
impl AgentExecutor for GatedExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        match context.data.get("mode").and_then(Value::as_str) {
            Some("fail") => return Err(ExecutorError::new("model quota exhausted")),
            Some("panic") => panic!("executor bug"),
            Some("wait") => self.release.notified().await,
            _ => {}
        }
        Ok(json!({"done_by": context.agent.id, "load_seen": context.agent.load}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_status_follow_running_tasks() {
    let release = Arc::new(Notify::new());
    let orch = Orchestrator::builder()
        .executor(GatedExecutor {
            release: release.clone(),
        })
        .build()
        .await
        .expect("builds");
    let id = orch
        .register_agent(AgentConfig::default().with_capacity(2))
        .await
        .expect("registers");
    let first = tokio::spawn(orch.execute_agent_task(&id, json!({"mode": "wait"})));
    let second = tokio::spawn(orch.execute_agent_task(&id, json!({"mode": "wait"})));
    assert!(common::eventually(|| orch.agent(&id).map(|a| a.load) == Some(2)).await);
    assert_eq!(orch.agent_status(&id), Some(AgentStatus::Busy), "busy at capacity");
    while !first.is_finished() || !second.is_finished() {
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let load_seen = first.await.expect("ran").expect("ok")["load_seen"].as_u64();
    assert!(
        matches!(load_seen, Some(1 | 2)),
        "the executor sees its own task counted: {load_seen:?}"
    );
    second.await.expect("ran").expect("ok");
    assert_eq!(orch.agent(&id).map(|a| a.load), Some(0));
    assert_eq!(
        orch.agent_status(&id),
        Some(AgentStatus::Active),
        "active again below capacity"
    );
}

#[tokio::test]
async fn executor_failures_and_panics_are_errors_and_give_the_load_back() {
    let orch = Orchestrator::builder()
        .executor(GatedExecutor {
            release: Arc::new(Notify::new()),
        })
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let err = orch.execute_agent_task(&id, json!({"mode": "fail"})).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("agent `{id}` failed its task: model quota exhausted")
    );
    let err = orch
        .execute_agent_task(&id, json!({"mode": "panic"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("executor panicked: executor bug"), "{err}");
    assert_eq!(
        orch.agent(&id).map(|a| (a.load, a.status)),
        Some((0, AgentStatus::Active))
    );
    // Cancelled half-way: the load is given back too.
    let waiting = orch.execute_agent_task(&id, json!({"mode": "wait"}));
    assert!(tokio::time::timeout(Duration::from_millis(20), waiting).await.is_err());
    assert_eq!(orch.agent(&id).map(|a| a.load), Some(0));
}

#[tokio::test]
async fn offline_or_unknown_agents_take_no_work_and_sleepers_wake() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    orch.set_agent_status(&id, AgentStatus::Offline).expect("known");
    let err = orch.execute_agent_task(&id, json!({})).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::Unavailable { .. })),
        "{err}"
    );
    let err = orch
        .execute_agent_task(&AgentId::from("ghost"), json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::NotFound { .. })),
        "{err}"
    );
    orch.set_agent_status(&id, AgentStatus::Sleeping).expect("known");
    orch.execute_agent_task(&id, json!({})).await.expect("runs");
    assert_eq!(orch.agent_status(&id), Some(AgentStatus::Active));
}

#[tokio::test]
async fn strict_mode_without_the_enhancing_plugins_says_so() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let err = orch.select_agent_for_task(&Task::new("x"), &[]).await.unwrap_err();
    assert!(err.to_string().contains("`semantic_routing`"), "{err}");
    let err = orch
        .execute_agent_task(&id, json!({"description": "x"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`extended_thinking`"), "{err}");
    orch.execute_agent_task(&id, json!({"n": 1}))
        .await
        .expect("no description: no analysis needed");
}
