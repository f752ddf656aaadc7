//! Quarantine: a plugin that keeps failing (errors, panics, hangs) is skipped by a circuit
//! breaker, reported unhealthy, probed after its backoff, and comes back when it recovers. Time
//! is a `ManualClock`, moved by hand.

use async_trait::async_trait;
use orchestrator::plugin_api::{IntegrationRequest, IntegrationResponse, OrchestrationPlugin, PluginError};
use orchestrator::prelude::*;
use orchestrator::{CircuitState, ManualClock, OrchestratorEvent, PluginOptions, QuarantinePolicy};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

const OK: u8 = 0;
const FAIL: u8 = 1;
const PANIC: u8 = 2;
const HANG: u8 = 3;

/// Serves `lookup`; behaves as its switch says, and counts the calls it gets.
#[derive(Clone, Default)]
struct Switchable {
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl OrchestrationPlugin for Switchable {
    fn name(&self) -> &str {
        "Switchable"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["lookup".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.data == json!("bad") {
            return Err(PluginError::invalid_request("expected a key"));
        }
        match self.mode.load(Ordering::SeqCst) {
            OK => Ok(IntegrationResponse::ok(json!({"from": "switchable"}))),
            FAIL => Err(PluginError::new("the backend is down")),
            PANIC => panic!("switchable panicked"),
            _ => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(IntegrationResponse::ok(Value::Null))
            }
        }
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

/// A plain second provider of `lookup`, behind the switchable one.
struct Backup;

#[async_trait]
impl OrchestrationPlugin for Backup {
    fn name(&self) -> &str {
        "Backup"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn capabilities(&self) -> Vec<String> {
        vec!["lookup".into()]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, _request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(json!({"from": "backup"})))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

async fn lookup(orchestrator: &Orchestrator) -> Result<IntegrationResponse, OrchestratorError> {
    orchestrator
        .execute(IntegrationRequest::new("lookup", json!("key")))
        .await
}

fn circuit(orchestrator: &Orchestrator) -> orchestrator::CircuitInfo {
    orchestrator
        .plugins()
        .into_iter()
        .find(|p| p.name == "Switchable")
        .expect("registered")
        .circuit
}

async fn setup(with_backup: bool) -> (Orchestrator, Switchable, ManualClock) {
    let plugin = Switchable::default();
    let clock = ManualClock::new();
    let mut builder = Orchestrator::builder()
        .clock(clock.clone())
        .call_timeout(Duration::from_millis(100))
        .quarantine(QuarantinePolicy::default().failures(3).backoff(Duration::from_secs(1)))
        .plugin_with(plugin.clone(), PluginOptions::new().priority(10));
    if with_backup {
        builder = builder.plugin_with(Backup, PluginOptions::new().priority(0));
    }
    (builder.build().await.expect("builds"), plugin, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_is_quarantined_probed_and_restored_when_it_recovers() {
    let (orchestrator, plugin, clock) = setup(true).await;
    let mut events = orchestrator.subscribe_events();
    plugin.mode.store(FAIL, Ordering::SeqCst);

    // Three failures in a row: each call falls back to the backup, then the circuit opens.
    for _ in 0..3 {
        let answer = lookup(&orchestrator).await.expect("the backup answers");
        assert_eq!((answer.served_by.as_str(), answer.fallback), ("Backup", true));
    }
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 3);
    let open = circuit(&orchestrator);
    assert_eq!(open.state, CircuitState::Open);
    assert_eq!(open.consecutive_failures, 3);
    assert_eq!(open.retry_in_ms, Some(1_000));
    let health = orchestrator.health().await;
    assert!(!health["Switchable"].is_healthy());
    assert!(
        health["Switchable"]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("quarantined after 3 consecutive failures")),
        "{:?}",
        health["Switchable"]
    );
    assert!(health["Backup"].is_healthy());

    // Quarantined: not called at all, the backup serves at once.
    for _ in 0..50 {
        assert_eq!(lookup(&orchestrator).await.expect("served").served_by, "Backup");
    }
    assert_eq!(
        plugin.calls.load(Ordering::SeqCst),
        3,
        "a quarantined plugin is not called"
    );

    // After the backoff one call probes it; still failing, it is quarantined for twice as long.
    clock.advance(Duration::from_millis(1_000));
    assert_eq!(circuit(&orchestrator).state, CircuitState::HalfOpen);
    assert_eq!(lookup(&orchestrator).await.expect("served").served_by, "Backup");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 4);
    let reopened = circuit(&orchestrator);
    assert_eq!(reopened.state, CircuitState::Open);
    assert_eq!(reopened.retry_in_ms, Some(2_000));
    assert_eq!(reopened.times_opened, 2);

    // It recovers; the next probe finds out, and it serves again.
    plugin.mode.store(OK, Ordering::SeqCst);
    clock.advance(Duration::from_millis(1_999));
    assert_eq!(lookup(&orchestrator).await.expect("served").served_by, "Backup");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 4, "not before the backoff is over");
    clock.advance(Duration::from_millis(1));
    let answer = lookup(&orchestrator).await.expect("served");
    assert_eq!((answer.served_by.as_str(), answer.fallback), ("Switchable", false));
    assert_eq!(circuit(&orchestrator).state, CircuitState::Closed);
    assert!(orchestrator.health().await["Switchable"].is_healthy());

    // Both changes were announced.
    let mut announced = Vec::new();
    while announced.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(OrchestratorEvent::Custom { source, name, .. })) if source == "orchestrator" => announced.push(name),
            Ok(Ok(_)) => {}
            other => panic!("events: {other:?} after {announced:?}"),
        }
    }
    assert_eq!(
        announced,
        ["plugin_quarantined", "plugin_quarantined", "plugin_recovered"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_hangs_count_as_failures_and_a_quarantined_hang_costs_no_timeout() {
    let (orchestrator, plugin, _clock) = setup(true).await;
    plugin.mode.store(PANIC, Ordering::SeqCst);
    lookup(&orchestrator).await.expect("backup");
    plugin.mode.store(HANG, Ordering::SeqCst);
    for _ in 0..2 {
        lookup(&orchestrator).await.expect("backup, after the timeout");
    }
    assert_eq!(circuit(&orchestrator).state, CircuitState::Open);
    let calls = plugin.calls.load(Ordering::SeqCst);
    // Quarantined, the hanging plugin is skipped: 20 calls go straight to the backup.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        lookup(&orchestrator).await.expect("backup");
    }
    assert_eq!(plugin.calls.load(Ordering::SeqCst), calls);
    assert!(
        started.elapsed() < Duration::from_millis(100 * 20),
        "20 skipped calls took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_not_a_failure_and_a_success_resets_the_count() {
    let (orchestrator, plugin, _clock) = setup(true).await;
    for round in 0..5 {
        plugin.mode.store(FAIL, Ordering::SeqCst);
        lookup(&orchestrator).await.expect("backup");
        lookup(&orchestrator).await.expect("backup");
        // The caller's mistake, answered by the plugin: it is alive.
        let bad = orchestrator
            .execute(IntegrationRequest::new("lookup", json!("bad")))
            .await
            .expect_err("invalid");
        assert!(bad.to_string().contains("expected a key"), "{bad}");
        assert_eq!(circuit(&orchestrator).state, CircuitState::Closed, "round {round}");
        plugin.mode.store(OK, Ordering::SeqCst);
        assert_eq!(lookup(&orchestrator).await.expect("served").served_by, "Switchable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_provider_the_error_says_it_is_quarantined() {
    let (orchestrator, plugin, _clock) = setup(false).await;
    plugin.mode.store(FAIL, Ordering::SeqCst);
    for _ in 0..3 {
        let err = lookup(&orchestrator).await.expect_err("nothing else serves it");
        assert!(err.to_string().contains("the backend is down"), "{err}");
    }
    let err = lookup(&orchestrator).await.expect_err("quarantined");
    assert!(err.to_string().contains("quarantined after repeated failures"), "{err}");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 3);
    let catalog = serde_json::to_value(orchestrator.catalog()).expect("serializes");
    let entry = catalog["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "Switchable")
        .expect("listed")
        .clone();
    assert_eq!(entry["circuit"]["state"], "open", "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_can_be_switched_off() {
    let plugin = Switchable::default();
    plugin.mode.store(FAIL, Ordering::SeqCst);
    let orchestrator = Orchestrator::builder()
        .quarantine(QuarantinePolicy::disabled())
        .plugin_with(plugin.clone(), PluginOptions::new().priority(10))
        .plugin_with(Backup, PluginOptions::new().priority(0))
        .build()
        .await
        .expect("builds");
    for _ in 0..20 {
        lookup(&orchestrator).await.expect("backup");
    }
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 20);
    assert_eq!(circuit(&orchestrator).state, CircuitState::Closed);
}
