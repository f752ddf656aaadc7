//! Dispatch through the public API: end-to-end execution, fallback on error, panic and hang,
//! feature flags, correlation ids, bad input.

mod common;

use common::{Behaviour, ScriptedPlugin, eventually};
use orchestrator::prelude::*;
use orchestrator::{DispatchError, OrchestratorEvent, PluginOptions, ProviderFailure};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test]
async fn executes_end_to_end() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let resp = orch
        .execute(IntegrationRequest::new("echo", json!({"n": 1})).with_agent("a1"))
        .await
        .expect("served");
    assert!(resp.success);
    assert!(!resp.fallback);
    assert_eq!(resp.served_by, "Echo");
    assert_eq!(resp.data["echo"], json!({"n": 1}));
    assert_eq!(orch.plugins()[0].calls, 1);
}

/// Two providers of one capability: the preferred one misbehaves, the second answers.
async fn falls_back_from(behaviour: Behaviour) -> (IntegrationResponse, Vec<OrchestratorEvent>) {
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_millis(100))
        .plugin_with(
            ScriptedPlugin::new("Primary", &["work"], behaviour),
            PluginOptions::new().priority(10),
        )
        .plugin_with(
            ScriptedPlugin::new("Backup", &["work"], Behaviour::Echo),
            PluginOptions::new().priority(1),
        )
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    let start = Instant::now();
    let resp = orch
        .execute(IntegrationRequest::new("work", json!({})))
        .await
        .expect("served by the backup");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a hang is bounded by call_timeout"
    );
    let mut seen = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        seen.push(event);
        if matches!(seen.last(), Some(OrchestratorEvent::CapabilityFallback { .. })) {
            break;
        }
    }
    let primary = orch
        .plugins()
        .into_iter()
        .find(|p| p.name == "Primary")
        .expect("listed");
    match behaviour {
        Behaviour::Fail => assert_eq!(primary.errors, 1),
        Behaviour::Panic => assert_eq!(primary.panics, 1),
        Behaviour::Hang => assert_eq!(primary.timeouts, 1),
        _ => {}
    }
    (resp, seen)
}

#[tokio::test]
async fn falls_back_on_error() {
    let (resp, events) = falls_back_from(Behaviour::Fail).await;
    assert_eq!(resp.served_by, "Backup");
    assert!(resp.fallback);
    let reason = events.iter().find_map(|e| match e {
        OrchestratorEvent::CapabilityFallback {
            plugin,
            reason,
            correlation_id,
            ..
        } => {
            assert_eq!(plugin, "Primary");
            assert_eq!(correlation_id, &resp.correlation_id);
            Some(reason.clone())
        }
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("error: Primary is broken"));
}

#[tokio::test]
async fn falls_back_on_panic() {
    let (resp, events) = falls_back_from(Behaviour::Panic).await;
    assert_eq!(resp.served_by, "Backup");
    assert!(events.iter().any(|e| matches!(e,
        OrchestratorEvent::CapabilityFallback { reason, .. } if reason == "panicked: Primary panicked on purpose")));
}

#[tokio::test]
async fn falls_back_on_hang_within_the_call_timeout() {
    let (resp, events) = falls_back_from(Behaviour::Hang).await;
    assert_eq!(resp.served_by, "Backup");
    assert!(events.iter().any(|e| matches!(e,
        OrchestratorEvent::CapabilityFallback { reason, .. } if reason == "timed out after 100 ms")));
}

#[tokio::test]
async fn failing_routing_plugin_falls_back_to_the_legacy_path() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new(
            "BrokenRouter",
            &["semantic_routing"],
            Behaviour::Panic,
        ))
        .build()
        .await
        .expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let resp = orch
        .execute(IntegrationRequest::new(
            "semantic_routing",
            json!({"task": {"description": "x"}}),
        ))
        .await
        .expect("legacy serves");
    assert_eq!(resp.served_by, "legacy");
    assert!(resp.fallback);
    assert_eq!(resp.data["selected_agent"], id.as_str());
    // The host survived the panic and the plugin's other calls still go through it.
    assert_eq!(orch.plugins()[0].panics, 1);
}

#[tokio::test]
async fn without_legacy_mode_every_failure_is_reported() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(Duration::from_millis(50))
        .plugin_with(
            ScriptedPlugin::new("A", &["semantic_routing"], Behaviour::Fail),
            PluginOptions::new().priority(2),
        )
        .plugin_with(
            ScriptedPlugin::new("B", &["semantic_routing"], Behaviour::Hang),
            PluginOptions::new().priority(1),
        )
        .build()
        .await
        .expect("builds");
    let err = orch
        .execute(IntegrationRequest::new(
            "semantic_routing",
            json!({"task": {"description": "x"}}),
        ))
        .await
        .unwrap_err();
    let OrchestratorError::Dispatch(DispatchError::AllProvidersFailed { capability, attempts }) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(capability, "semantic_routing");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].plugin, "A");
    assert!(matches!(attempts[1].failure, ProviderFailure::Timeout { after_ms: 50 }));
    assert!(err.to_string().contains("legacy_mode(true)"), "{err}");
}

#[tokio::test]
async fn disabled_capability_skips_its_plugin() {
    let router = ScriptedPlugin::new("Router", &["semantic_routing"], Behaviour::Echo);
    let calls = router.calls.clone();
    let orch = Orchestrator::builder().plugin(router).build().await.expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let request = || IntegrationRequest::new("semantic_routing", json!({"task": {"description": "x"}}));

    orch.set_capability_enabled("semantic_routing", false).expect("known");
    assert!(!orch.is_capability_enabled("semantic_routing"));
    let resp = orch.execute(request()).await.expect("legacy serves");
    assert_eq!(resp.served_by, "legacy");
    assert_eq!(resp.data["selected_agent"], id.as_str());
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the disabled plugin was not called");

    orch.set_capability_enabled("semantic_routing", true).expect("known");
    assert_eq!(orch.execute(request()).await.expect("served").served_by, "Router");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn disabled_capability_without_legacy_is_an_error_that_says_how_to_enable_it() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("P", &["summarize"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    orch.set_capability_enabled("summarize", false).expect("known");
    let err = orch
        .execute(IntegrationRequest::new("summarize", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OrchestratorError::Dispatch(DispatchError::CapabilityDisabled { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("set_capability_enabled(\"summarize\", true)"),
        "{err}"
    );
    assert!(
        orch.set_capability_enabled("teleport", false).is_err(),
        "unknown capability"
    );
}

#[tokio::test]
async fn correlation_id_is_kept_or_generated() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let kept = orch
        .execute(IntegrationRequest::new("echo", json!({})).with_correlation_id("req-42"))
        .await
        .expect("served");
    assert_eq!(kept.correlation_id, "req-42");
    assert_eq!(kept.data["correlation_id_seen"], "req-42", "the plugin saw it too");

    let a = orch
        .execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect("served");
    let b = orch
        .execute(IntegrationRequest::new("echo", json!({})))
        .await
        .expect("served");
    assert_eq!(a.correlation_id.len(), 32);
    assert_ne!(a.correlation_id, b.correlation_id);
    assert_eq!(a.data["correlation_id_seen"], a.correlation_id.as_str());

    let legacy = orch
        .execute(
            IntegrationRequest::new("extended_thinking", json!({"task_description": "x"})).with_correlation_id("c-1"),
        )
        .await
        .expect("legacy serves");
    assert_eq!(legacy.correlation_id, "c-1");
}

#[tokio::test]
async fn unknown_capability_names_it_and_lists_the_known_ones() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Echo", &["echo"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let err = orch
        .execute(IntegrationRequest::new("teleport", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no plugin serves capability `teleport` and it has no legacy handler; known capabilities: echo, extended_thinking, semantic_routing"
    );
}

#[tokio::test]
async fn garbage_request_data_is_an_error_never_a_panic() {
    let strict = ScriptedPlugin::new("Strict", &["summarize"], Behaviour::Strict);
    let orch = Orchestrator::builder().plugin(strict).build().await.expect("builds");
    let garbage = [
        json!(null),
        json!(42),
        json!("text"),
        json!([1, 2, 3]),
        json!({"text": 5}),
        json!({"task": "not an object"}),
        json!({"task": {"description": 1}, "available_agents": "a"}),
        json!({"task_description": ["x"]}),
        json!({"available_agents": [1, 2]}),
    ];
    for data in &garbage {
        let err = orch
            .execute(IntegrationRequest::new("summarize", data.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OrchestratorError::Dispatch(DispatchError::InvalidRequest { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("expected {\"text\": string}"), "{err}");
        for cap in ["semantic_routing", "extended_thinking"] {
            let resp = orch
                .execute(IntegrationRequest::new(cap, data.clone()))
                .await
                .expect("answered");
            assert!(!resp.success, "{cap} accepted {data}");
            assert!(
                resp.error.as_deref().unwrap_or_default().contains("expected"),
                "{resp:?}"
            );
        }
    }
    // Malformed JSON never becomes a request at all: serde reports it.
    assert!(serde_json::from_str::<IntegrationRequest>("{\"capability\": ").is_err());
    assert!(serde_json::from_str::<IntegrationRequest>("{\"data\": {}}").is_err());
    // The host is still serving.
    let ok = orch
        .execute(IntegrationRequest::new("summarize", json!({"text": "hi"})))
        .await
        .expect("served");
    assert!(ok.success);
}

/// A plugin calls another capability through its host handle; the call goes through dispatch.
#[tokio::test]
async fn plugins_call_other_capabilities_through_the_host() {
    let caller = ScriptedPlugin::new("Caller", &["outer"], Behaviour::Echo);
    let host = caller.host.clone();
    let orch = Orchestrator::builder()
        .plugin(caller)
        .plugin(ScriptedPlugin::new("Inner", &["inner"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let handle = host.lock().expect("lock").clone().expect("initialized");
    let resp = handle
        .call(IntegrationRequest::new("inner", json!({"q": 1})))
        .await
        .expect("served");
    assert_eq!(resp.served_by, "Inner");
    assert_eq!(resp.data["echo"], json!({"q": 1}));
    let err = handle
        .call(IntegrationRequest::new("nothing", json!({})))
        .await
        .unwrap_err();
    assert!(err.message.contains("`nothing`"), "{err}");
    assert_eq!(handle.agents().len(), 0);
    orch.register_agent(AgentConfig::default().with_id("h1"))
        .await
        .expect("registers");
    assert_eq!(handle.agent("h1").map(|a| a.status), Some(AgentStatus::Active));
    handle
        .set_agent_status("h1", AgentStatus::Sleeping)
        .expect("known agent");
    assert_eq!(orch.agent_status(&AgentId::from("h1")), Some(AgentStatus::Sleeping));
    let mut events = orch.subscribe_events();
    handle.emit("cache_warmed", json!({"entries": 3}));
    // Earlier events may still be on their way: look for the custom one.
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("in time")
            .expect("event");
        if matches!(event, OrchestratorEvent::Custom { .. }) {
            break event;
        }
    };
    assert_eq!(
        event,
        OrchestratorEvent::Custom {
            source: "Caller".into(),
            name: "cache_warmed".into(),
            data: json!({"entries": 3})
        }
    );
    drop(orch);
    assert!(
        eventually(|| handle.agents().is_empty()).await,
        "a dropped orchestrator answers nothing"
    );
}

/// Regression guard: a plugin whose capability calls itself through the host ends with an
/// error, not a stack overflow or a hang.
#[tokio::test]
async fn self_calling_plugin_is_stopped_by_the_depth_limit() {
    use orchestrator::plugin_api::async_trait;

    struct Recursive(std::sync::Mutex<Option<HostHandle>>);

    #[async_trait]
    impl OrchestrationPlugin for Recursive {
        fn name(&self) -> &str {
            "Recursive"
        }
        fn capabilities(&self) -> Vec<String> {
            vec!["loop_forever".into()]
        }
        async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
            *self.0.lock().expect("lock") = Some(host);
            Ok(())
        }
        async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
            let host = self.0.lock().expect("lock").clone().expect("initialized");
            host.call(request).await
        }
        async fn health_check(&self) -> HealthStatus {
            HealthStatus::healthy()
        }
    }

    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(Recursive(std::sync::Mutex::new(None)))
        .build()
        .await
        .expect("builds");
    let err = orch
        .execute(IntegrationRequest::new("loop_forever", json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nest more than 16 deep"), "{err}");
}
