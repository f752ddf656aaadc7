//! ContextManagementPlugin through a real orchestrator on a hand-driven clock: agents sleep
//! after idling and wake on work, context consolidates within a budget, sessions expire (and
//! live in the shared-state plugin when it is there), garbage is refused, and the conformance
//! kit passes.

use orchestrator_core::{
    AgentConfig, AgentId, AgentStatus, DispatchError, ManualClock, Orchestrator, OrchestratorError,
};
use plugin_api::IntegrationRequest;
use plugin_context::ContextManagementPlugin;
use serde_json::{Value, json};
use std::time::Duration;

async fn orchestrator(clock: &ManualClock, config: Value) -> Orchestrator {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .clock(clock.clone())
        .plugin(ContextManagementPlugin::default())
        .configure("ContextManagementPlugin", config)
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    for id in ["a", "b"] {
        orch.register_agent(AgentConfig::new(id).with_id(id))
            .await
            .expect("registers");
    }
    // Subscribers hear an event after the plugins have: once both registrations are heard here,
    // the plugin has recorded them.
    let mut heard = 0;
    while heard < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("registration events arrive")
            .expect("event");
        if matches!(event, plugin_api::OrchestratorEvent::AgentRegistered { .. }) {
            heard += 1;
        }
    }
    orch
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

fn status(orch: &Orchestrator, id: &str) -> Option<AgentStatus> {
    orch.agent_status(&AgentId::from(id))
}

#[tokio::test]
async fn idle_agents_sleep_and_work_wakes_them() {
    let clock = ManualClock::new();
    let orch = orchestrator(&clock, json!({"idle_sleep_ms": 60_000, "sweep_interval_ms": 0})).await;

    clock.advance(Duration::from_secs(30));
    // Reading a status is not work; `activity` is.
    call(&orch, "sleep_wake_cycles", json!({"op": "status", "agent_id": "a"})).await;
    call(&orch, "sleep_wake_cycles", json!({"op": "activity", "agent_id": "b"})).await;
    clock.advance(Duration::from_secs(40));
    let swept = call(&orch, "sleep_wake_cycles", json!({"op": "sweep"})).await;
    assert_eq!(swept["slept"], json!(["a"]), "{swept}");
    assert_eq!(status(&orch, "a"), Some(AgentStatus::Sleeping));
    assert_eq!(status(&orch, "b"), Some(AgentStatus::Active));
    let b = call(&orch, "sleep_wake_cycles", json!({"op": "status", "agent_id": "b"})).await;
    assert_eq!(
        (b["idle_ms"].clone(), b["sleeps_in_ms"].clone()),
        (json!(40_000), json!(20_000))
    );

    // Work for the sleeping agent wakes it, and restarts its idle count.
    let woke = call(&orch, "sleep_wake_cycles", json!({"op": "wake", "agent_id": "a"})).await;
    assert_eq!(
        (woke["woke"].clone(), woke["previous"].clone()),
        (json!(true), json!("sleeping"))
    );
    assert_eq!(status(&orch, "a"), Some(AgentStatus::Active));
    clock.advance(Duration::from_secs(30));
    let swept = call(&orch, "sleep_wake_cycles", json!({"op": "sweep"})).await;
    assert_eq!(swept["slept"], json!(["b"]), "a worked 30 s ago, b 70 s ago: {swept}");

    // A busy agent is working: that counts as activity.
    clock.advance(Duration::from_secs(59));
    let mut events = orch.subscribe_events();
    orch.set_agent_status(&AgentId::from("a"), AgentStatus::Busy)
        .expect("sets");
    heard_status_change(&mut events, "a", AgentStatus::Busy).await;
    clock.advance(Duration::from_secs(2));
    let swept = call(&orch, "sleep_wake_cycles", json!({"op": "sweep"})).await;
    assert_eq!(swept["slept"], json!([]), "{swept}");
}

/// Waits (5 s at most) until subscribers, and so the plugins before them, have heard `agent`
/// change to `to`.
async fn heard_status_change(
    events: &mut tokio::sync::broadcast::Receiver<plugin_api::OrchestratorEvent>,
    agent: &str,
    to: AgentStatus,
) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the status change is delivered")
            .expect("event");
        if let plugin_api::OrchestratorEvent::AgentStatusChanged { agent_id, to: t, .. } = &event {
            if agent_id == agent && *t == to {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_task_for_a_sleeping_agent_wakes_it_and_counts_as_work() {
    let clock = ManualClock::new();
    let orch = orchestrator(&clock, json!({"idle_sleep_ms": 60_000, "sweep_interval_ms": 0})).await;
    call(&orch, "sleep_wake_cycles", json!({"agent_id": "a"})).await; // `sleep` is the default op
    assert_eq!(status(&orch, "a"), Some(AgentStatus::Sleeping));
    clock.advance(Duration::from_secs(120));
    let mut events = orch.subscribe_events();
    orch.execute_agent_task(&AgentId::from("a"), json!({"job": 1}))
        .await
        .expect("runs");
    heard_status_change(&mut events, "a", AgentStatus::Active).await;
    clock.advance(Duration::from_secs(30));
    let swept = call(&orch, "sleep_wake_cycles", json!({"op": "sweep"})).await;
    assert_eq!(swept["slept"], json!(["b"]), "a worked 30 s ago: {swept}");
}

#[tokio::test]
async fn the_plugin_sweeps_by_itself() {
    let clock = ManualClock::new();
    let orch = orchestrator(&clock, json!({"idle_sleep_ms": 1_000, "sweep_interval_ms": 20})).await;
    clock.advance(Duration::from_secs(5));
    for _ in 0..250 {
        if status(&orch, "a") == Some(AgentStatus::Sleeping) && status(&orch, "b") == Some(AgentStatus::Sleeping) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the plugin's own sweep did not put idle agents to sleep within 5 s");
}

#[tokio::test]
async fn going_to_sleep_consolidates_the_agents_context() {
    let clock = ManualClock::new();
    let orch = orchestrator(
        &clock,
        json!({"sweep_interval_ms": 0, "consolidation": {"budget_entries": 3, "similarity_threshold": 0.7}}),
    )
    .await;
    let entries: Vec<Value> = (0..6)
        .map(|i| json!({"text": format!("observation {i}: the build of service {} failed on step {}", i * 31, i * 17)}))
        .chain([json!({"text": "observation 0: the build of service 0 failed on step 0"})])
        .collect();
    call(
        &orch,
        "context_consolidation",
        json!({"op": "append", "agent_id": "a", "entries": entries}),
    )
    .await;
    let slept = call(&orch, "sleep_wake_cycles", json!({"op": "sleep", "agent_id": "a"})).await;
    assert_eq!(
        slept["consolidated"],
        json!({"kept": 3, "merged": 1, "dropped": 3}),
        "{slept}"
    );
    let stored = call(&orch, "context_consolidation", json!({"op": "get", "agent_id": "a"})).await;
    assert_eq!(stored["entries"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn consolidation_merges_duplicates_and_keeps_what_matters_within_the_budget() {
    let clock = ManualClock::new();
    let orch = orchestrator(
        &clock,
        json!({"sweep_interval_ms": 0, "consolidation": {"shingle_words": 2}}),
    )
    .await;
    let mut entries = vec![
        json!({"text": "The customer's deadline is the 14th of March", "importance": 1.0, "timestamp": 1}),
        json!({"text": "the customer's deadline is the 14th of March.", "importance": 0.2, "timestamp": 50}),
    ];
    entries.extend((0..20).map(|i| json!({"text": format!("routine log line {i} with counter {}", i * 7), "importance": 0.1, "timestamp": 10 + i})));
    let out = call(
        &orch,
        "context_consolidation",
        json!({"agent_id": "a", "entries": entries, "budget": {"entries": 4}}),
    )
    .await;
    let kept: Vec<&str> = out["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kept.len(), 4, "{out}");
    // The important fact survives (merged with its duplicate, keeping the higher importance and
    // the later timestamp), and the most recent routine lines fill the rest.
    assert_eq!(kept[0], "routine log line 17 with counter 119");
    assert_eq!(kept[3], "The customer's deadline is the 14th of March");
    let fact = &out["kept"][3];
    assert_eq!(
        (
            fact["importance"].clone(),
            fact["timestamp"].clone(),
            fact["merged_count"].clone()
        ),
        (json!(1.0), json!(50), json!(2))
    );
    assert_eq!(out["merged"].as_array().map(Vec::len), Some(1));
    assert_eq!(out["dropped"].as_array().map(Vec::len), Some(17));
    assert!(
        out["dropped"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("4 entries"))
    );

    let tokens = call(
        &orch,
        "context_consolidation",
        json!({"agent_id": "a", "budget": {"entries": 10, "tokens": 12}}),
    )
    .await;
    assert!(tokens["tokens"].as_u64().is_some_and(|t| t <= 12), "{tokens}");
}

#[tokio::test]
async fn sessions_are_readable_until_they_expire() {
    let clock = ManualClock::new();
    let orch = orchestrator(&clock, json!({"sweep_interval_ms": 0})).await;
    let session = call(
        &orch,
        "session_management",
        json!({"agent_id": "a", "ttl_s": 60, "state": {"step": 1}}),
    )
    .await;
    let id = session["session_id"].as_str().expect("an id").to_owned();
    assert_eq!(
        (session["store"].clone(), session["state"].clone()),
        (json!("memory"), json!({"step": 1}))
    );

    clock.advance(Duration::from_secs(30));
    let set = call(
        &orch,
        "session_management",
        json!({"op": "set", "session_id": id, "key": "user", "value": "ada"}),
    )
    .await;
    assert_eq!(set["state"], json!({"step": 1, "user": "ada"}));
    clock.advance(Duration::from_secs(29));
    let read = call(&orch, "session_management", json!({"op": "get", "session_id": id})).await;
    assert_eq!(read["state"]["user"], json!("ada"));
    clock.advance(Duration::from_secs(2));
    let message = refused(&orch, "session_management", json!({"op": "get", "session_id": id})).await;
    assert!(message.contains("expired"), "{message}");
    let swept = call(&orch, "session_management", json!({"op": "sweep"})).await;
    assert_eq!(swept["removed"], json!([id]));

    // Touching moves the expiry; ending removes it.
    let s = call(&orch, "session_management", json!({"agent_id": "b", "ttl_s": 10})).await;
    let id = s["session_id"].as_str().expect("an id").to_owned();
    clock.advance(Duration::from_secs(8));
    call(&orch, "session_management", json!({"op": "touch", "session_id": id})).await;
    clock.advance(Duration::from_secs(8));
    call(&orch, "session_management", json!({"op": "get", "session_id": id})).await;
    let ended = call(&orch, "session_management", json!({"op": "end", "session_id": id})).await;
    assert_eq!(
        (ended["ended"].clone(), ended["agent_id"].clone()),
        (json!(true), json!("b"))
    );
    refused(&orch, "session_management", json!({"op": "get", "session_id": id})).await;
}

#[tokio::test]
async fn sessions_live_in_the_shared_state_plugin_when_it_is_there() {
    let clock = ManualClock::new();
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .clock(clock.clone())
        .plugin(ContextManagementPlugin::default())
        .plugin(plugin_shared_state::SharedStatePlugin::default())
        .configure("ContextManagementPlugin", json!({"sweep_interval_ms": 0}))
        .build()
        .await
        .expect("builds");
    orch.register_agent(AgentConfig::new("a").with_id("a"))
        .await
        .expect("registers");
    let session = call(&orch, "session_management", json!({"agent_id": "a", "ttl_s": 5})).await;
    assert_eq!(session["store"], json!("shared"));
    let id = session["session_id"].as_str().expect("an id").to_owned();
    call(
        &orch,
        "session_management",
        json!({"op": "set", "session_id": id, "key": "k", "value": [1, 2]}),
    )
    .await;
    let stored = call(&orch, "atomic_updates", json!({"key": format!("session/{id}")})).await;
    assert_eq!(stored["value"]["state"], json!({"k": [1, 2]}));
    assert_eq!(stored["version"], json!(2));
    clock.advance(Duration::from_secs(6));
    refused(&orch, "session_management", json!({"op": "get", "session_id": id})).await;
    let swept = call(&orch, "session_management", json!({"op": "sweep"})).await;
    assert_eq!(swept["removed"], json!([id]));
    let stored = call(&orch, "atomic_updates", json!({"key": format!("session/{id}")})).await;
    assert_eq!(
        (stored["value"].clone(), stored["version"].clone()),
        (json!(null), json!(0)),
        "a swept session leaves nothing behind"
    );
}

#[tokio::test]
async fn garbage_is_refused_on_every_capability() {
    let clock = ManualClock::new();
    let orch = orchestrator(&clock, json!({"sweep_interval_ms": 0})).await;
    let cases = [
        ("sleep_wake_cycles", json!({"op": "sleep"})),
        ("sleep_wake_cycles", json!({"op": "wake", "agent_id": "nobody"})),
        ("sleep_wake_cycles", json!({"op": "nap", "agent_id": "a"})),
        ("sleep_wake_cycles", json!({"op": 3})),
        ("sleep_wake_cycles", json!([1])),
        ("context_consolidation", json!({})),
        ("context_consolidation", json!({"agent_id": "a", "entries": "text"})),
        (
            "context_consolidation",
            json!({"agent_id": "a", "entries": [{"txt": "typo"}]}),
        ),
        (
            "context_consolidation",
            json!({"agent_id": "a", "entries": [{"text": "x", "importance": 7}]}),
        ),
        ("context_consolidation", json!({"agent_id": "a", "budget": "three"})),
        ("context_consolidation", json!({"agent_id": "a", "budget": 0})),
        (
            "context_consolidation",
            json!({"agent_id": "a", "budget": {"tokens": 0}}),
        ),
        (
            "context_consolidation",
            json!({"agent_id": "nobody", "entries": [{"text": "x"}]}),
        ),
        (
            "context_consolidation",
            json!({"agent_id": "a", "budget": {"entries": -1}}),
        ),
        (
            "context_consolidation",
            json!({"op": "append", "agent_id": "a", "entries": []}),
        ),
        ("session_management", json!({})),
        ("session_management", json!({"agent_id": "nobody"})),
        ("session_management", json!({"agent_id": "a", "ttl_s": 0})),
        ("session_management", json!({"agent_id": "a", "state": [1]})),
        ("session_management", json!({"op": "get", "session_id": "sess-none"})),
        (
            "session_management",
            json!({"op": "set", "session_id": "sess-none", "key": "k"}),
        ),
        ("session_management", json!({"op": "dance"})),
    ];
    for (capability, data) in cases {
        let message = refused(&orch, capability, data.clone()).await;
        assert!(!message.is_empty(), "{capability} {data}");
    }
    let err = Orchestrator::builder()
        .plugin(ContextManagementPlugin::default())
        .configure("ContextManagementPlugin", json!({"idle_sleep": 5}))
        .build()
        .await
        .expect_err("an unknown key");
    assert!(err.to_string().contains("idle_sleep"), "{err}");
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    check_plugin(
        &ContextManagementPlugin::default(),
        CheckOptions::default().with_config(json!({"sweep_interval_ms": 0})),
    )
    .await
    .assert_conformant();
}
