//! Plugin registration through the public API: capability mapping, conflicts, priorities,
//! hot swap, unregistering, configuration, the catalog.

mod common;

use common::{Behaviour, ScriptedPlugin, eventually};
use orchestrator::prelude::*;
use orchestrator::{ConfigError, OrchestratorEvent, PluginOptions, RegistryError};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn registration_maps_every_capability_to_its_plugin() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    orch.register_plugin(ScriptedPlugin::new(
        "Text",
        &["summarize", "translate"],
        Behaviour::Echo,
    ))
    .await
    .expect("registers");
    assert_eq!(orch.capabilities(), ["summarize", "translate"]);
    assert!(orch.has_capability("translate"));
    assert!(!orch.has_capability("teleport"));
    for cap in ["summarize", "translate"] {
        let resp = orch
            .execute(IntegrationRequest::new(cap, json!({})))
            .await
            .expect("served");
        assert_eq!(resp.served_by, "Text");
        assert_eq!(resp.data["capability"], cap);
    }
}

#[tokio::test]
async fn duplicate_plugin_name_is_refused() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("P", &["a"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let err = orch
        .register_plugin(ScriptedPlugin::new("P", &["b"], Behaviour::Echo))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Registry(RegistryError::DuplicatePlugin { .. })),
        "{err}"
    );
    assert_eq!(orch.capabilities(), ["a"], "the refused plugin left nothing behind");
}

#[tokio::test]
async fn capability_conflict_needs_an_explicit_distinct_priority() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("First", &["route"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let err = orch
        .register_plugin(ScriptedPlugin::new("Second", &["route", "other"], Behaviour::Echo))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OrchestratorError::Registry(RegistryError::CapabilityConflict { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("PluginOptions::priority"), "{err}");
    assert!(!orch.has_capability("other"), "nothing half-registered");

    let same = orch
        .register_plugin_with(
            ScriptedPlugin::new("Second", &["route"], Behaviour::Echo),
            PluginOptions::new().priority(0),
        )
        .await;
    assert!(same.is_err(), "an equal priority is still ambiguous");

    orch.register_plugin_with(
        ScriptedPlugin::new("Second", &["route"], Behaviour::Echo),
        PluginOptions::new().priority(5),
    )
    .await
    .expect("a higher priority is accepted");
    let resp = orch
        .execute(IntegrationRequest::new("route", json!({})))
        .await
        .expect("served");
    assert_eq!(resp.served_by, "Second", "higher priority is tried first");
    let info = orch
        .catalog()
        .capabilities
        .into_iter()
        .find(|c| c.name == "route")
        .expect("listed");
    assert_eq!(info.providers, ["Second", "First"]);
}

#[tokio::test]
async fn invalid_capability_lists_are_refused() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    for caps in [&[][..], &["Bad Name"][..], &["a", "a"][..]] {
        let err = orch
            .register_plugin(ScriptedPlugin::new("P", caps, Behaviour::Echo))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                OrchestratorError::Registry(RegistryError::InvalidCapabilities { .. })
            ),
            "{err}"
        );
    }
    assert!(orch.plugins().is_empty());
}

#[tokio::test]
async fn failed_initialize_registers_nothing() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let mut plugin = ScriptedPlugin::new("NeedsKey", &["search"], Behaviour::Echo);
    plugin.fail_init = true;
    let err = orch.register_plugin(plugin).await.unwrap_err();
    assert!(err.to_string().contains("failed to initialize"), "{err}");
    assert!(err.to_string().contains("missing API key"), "{err}");
    assert!(!orch.has_capability("search"));
}

#[tokio::test]
async fn unregister_drains_then_shuts_down() {
    let plugin = ScriptedPlugin::new("Gone", &["x"], Behaviour::Echo);
    let shutdowns = plugin.shutdowns.clone();
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(plugin)
        .build()
        .await
        .expect("builds");
    orch.unregister_plugin("Gone").await.expect("unregisters");
    assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    assert!(!orch.has_capability("x"));
    let err = orch.execute(IntegrationRequest::new("x", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("no plugin serves capability `x`"), "{err}");
    let err = orch.unregister_plugin("Gone").await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Registry(RegistryError::PluginNotFound { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_lets_calls_in_flight_finish_on_the_old_instance() {
    let old = ScriptedPlugin::new("Swap", &["work"], Behaviour::Hang);
    let old_shutdowns = old.shutdowns.clone();
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_millis(1500))
        .legacy_mode(false)
        .plugin(old)
        .build()
        .await
        .expect("builds");
    // A call in flight on the old instance (it hangs until the timeout cuts it off).
    let in_flight = tokio::spawn(orch.execute(IntegrationRequest::new("work", json!({}))));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let swap = tokio::spawn(orch.register_plugin_with(
        ScriptedPlugin::new("Swap", &["work"], Behaviour::Echo),
        PluginOptions::new().replace(),
    ));
    // New calls reach the new instance at once, while the old one is still draining.
    assert!(
        eventually(|| orch
            .plugins()
            .first()
            .map(|p| p.health.is_some() && p.calls == 0)
            .unwrap_or(false))
        .await
    );
    let resp = orch
        .execute(IntegrationRequest::new("work", json!({})))
        .await
        .expect("new instance serves");
    assert_eq!(resp.served_by, "Swap");
    assert_eq!(
        old_shutdowns.load(Ordering::SeqCst),
        0,
        "old instance not shut down while a call is in flight"
    );

    let old_result = in_flight.await.expect("task ran");
    assert!(old_result.is_err(), "the old instance's call ended by its own timeout");
    swap.await.expect("task ran").expect("swap completes once drained");
    assert_eq!(old_shutdowns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn configuration_reaches_the_plugin_and_unknown_plugins_are_refused() {
    let plugin = ScriptedPlugin::new("Configured", &["x"], Behaviour::Echo);
    let host = plugin.host.clone();
    let dir = std::env::temp_dir().join(format!("orch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("orchestrator.toml");
    std::fs::write(&file, "[Configured]\nlimit = 3\n[Configured.nested]\nkey = \"v\"\n").expect("write");
    let orch = Orchestrator::builder()
        .plugin(plugin)
        .config_file(&file)
        .build()
        .await
        .expect("builds");
    let handle = host.lock().expect("lock").clone().expect("initialized");
    assert_eq!(handle.config(), json!({"limit": 3, "nested": {"key": "v"}}));
    drop(orch);

    let err = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Configured", &["x"], Behaviour::Echo))
        .configure("Configurd", json!({"limit": 1}))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Config(ConfigError::UnknownPlugin { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("`Configurd`") && err.to_string().contains("Configured"),
        "{err}"
    );

    std::fs::write(&file, "[Configured\nlimit = 3\n").expect("write");
    let err = Orchestrator::builder().config_file(&file).build().await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Config(ConfigError::Parse { .. })),
        "{err}"
    );
    let err = Orchestrator::builder()
        .config_file(dir.join("missing.toml"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Config(ConfigError::Read { .. })),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn catalog_serializes_plugins_capabilities_and_health() {
    let orch = Orchestrator::builder()
        .plugin(ScriptedPlugin::new("Healthy", &["a"], Behaviour::Echo))
        .plugin(ScriptedPlugin::new("Sick", &["b"], Behaviour::Fail))
        .build()
        .await
        .expect("builds");
    orch.set_capability_enabled("b", false).expect("known capability");
    let catalog = serde_json::to_value(orch.catalog()).expect("serializes");
    assert_eq!(catalog["legacy_mode"], true);
    assert_eq!(catalog["plugins"][0]["name"], "Healthy");
    assert_eq!(catalog["plugins"][0]["version"], "9.9.9");
    assert_eq!(catalog["plugins"][0]["origin"]["kind"], "static");
    assert_eq!(catalog["plugins"][0]["health"]["state"], "healthy");
    assert_eq!(catalog["plugins"][1]["health"]["state"], "degraded");
    let caps: Vec<(String, bool, bool)> = catalog["capabilities"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["enabled"].as_bool().unwrap_or_default(),
                c["legacy_fallback"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        caps,
        vec![
            ("a".into(), true, false),
            ("b".into(), false, false),
            ("extended_thinking".into(), true, true),
            ("semantic_routing".into(), true, true),
        ]
    );
    let health = orch.health().await;
    assert!(health["Healthy"].is_healthy());
    assert!(!health["Sick"].is_healthy());
}

#[tokio::test]
async fn plugins_receive_lifecycle_events_in_order() {
    let plugin = ScriptedPlugin::new("Listener", &["x"], Behaviour::Echo);
    let events = plugin.events.clone();
    let orch = Orchestrator::builder().plugin(plugin).build().await.expect("builds");
    let a = orch
        .register_agent(AgentConfig::default().with_id("e1"))
        .await
        .expect("registers");
    orch.set_agent_status(&a, AgentStatus::Busy).expect("known");
    orch.register_plugin(ScriptedPlugin::new("Later", &["y"], Behaviour::Echo))
        .await
        .expect("registers");
    assert!(eventually(|| events.lock().expect("lock").len() >= 4).await);
    let seen = events.lock().expect("lock").clone();
    assert!(matches!(&seen[0], OrchestratorEvent::PluginLoaded { plugin, .. } if plugin == "Listener"));
    assert_eq!(seen[1], OrchestratorEvent::AgentRegistered { agent_id: "e1".into() });
    assert!(matches!(
        &seen[2],
        OrchestratorEvent::AgentStatusChanged {
            to: AgentStatus::Busy,
            ..
        }
    ));
    assert!(matches!(&seen[3], OrchestratorEvent::PluginLoaded { plugin, .. } if plugin == "Later"));
}

/// Regression guard: a provider unregistered while an earlier provider is being tried is not
/// called after its shutdown (dispatch had already taken its snapshot of the providers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_retired_mid_call_is_never_called_after_shutdown() {
    let backup = ScriptedPlugin::new("Backup", &["work"], Behaviour::Echo);
    let (backup_calls, backup_shutdowns) = (backup.calls.clone(), backup.shutdowns.clone());
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(Duration::from_millis(300))
        .plugin_with(
            ScriptedPlugin::new("Slow", &["work"], Behaviour::Hang),
            PluginOptions::new().priority(10),
        )
        .plugin_with(backup, PluginOptions::new().priority(1))
        .build()
        .await
        .expect("builds");
    let call = tokio::spawn(orch.execute(IntegrationRequest::new("work", json!({}))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    orch.unregister_plugin("Backup").await.expect("unregisters");
    assert_eq!(backup_shutdowns.load(Ordering::SeqCst), 1);
    let err = call.await.expect("task ran").unwrap_err();
    assert_eq!(backup_calls.load(Ordering::SeqCst), 0, "called after shutdown");
    assert!(
        err.to_string()
            .contains("Backup: error: unregistered while the call was under way"),
        "{err}"
    );
}

#[tokio::test]
async fn plugins_read_time_from_the_builders_clock() {
    let clock = orchestrator::ManualClock::starting_at_unix_ms(1_000);
    let plugin = ScriptedPlugin::new("Clocked", &["clocked"], Behaviour::Echo);
    let host = std::sync::Arc::clone(&plugin.host);
    let _orch = Orchestrator::builder()
        .clock(clock.clone())
        .plugin(plugin)
        .build()
        .await
        .expect("builds");
    let host = host.lock().expect("lock").clone().expect("initialized");
    assert_eq!((host.now_unix_ms(), host.monotonic_ns()), (1_000, 0));
    clock.advance(Duration::from_millis(1_500));
    assert_eq!((host.now_unix_ms(), host.monotonic_ns()), (2_500, 1_500_000_000));
}
