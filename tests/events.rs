//! Lifecycle event delivery through the public API: each plugin hears events from a bounded
//! queue of its own, so a stalled plugin delays only itself; what it misses is counted and
//! reported; the embedder's subscribers hear every event in order.

use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use orchestrator::{OrchestratorEvent, PluginInfo};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Closed until opened; then every waiter and every later arrival goes through.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    async fn pass(&self) {
        loop {
            let opened = self.opened.notified();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

/// Counts agent registrations it hears; stalls in `on_event` until its gate opens.
struct Listener {
    name: &'static str,
    heard: Arc<AtomicUsize>,
    stall: Option<Arc<Gate>>,
}

#[async_trait]
impl OrchestrationPlugin for Listener {
    fn name(&self) -> &str {
        self.name
    }
    fn capabilities(&self) -> Vec<String> {
        vec![format!("{}_cap", self.name.to_lowercase())]
    }
    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        Ok(IntegrationResponse::ok(request.data))
    }
    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
    async fn on_event(&self, event: &OrchestratorEvent) {
        if let Some(gate) = &self.stall {
            gate.pass().await;
        }
        if matches!(event, OrchestratorEvent::AgentRegistered { .. }) {
            self.heard.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn info(orch: &Orchestrator, name: &str) -> PluginInfo {
    orch.plugins().into_iter().find(|p| p.name == name).expect("listed")
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_plugin_delays_only_itself_and_its_losses_are_counted_and_reported() {
    const AGENTS: usize = 100;
    const QUEUE: usize = 8;
    let gate = Arc::new(Gate::default());
    let stalled_heard = Arc::new(AtomicUsize::new(0));
    let prompt_heard = Arc::new(AtomicUsize::new(0));
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_secs(30))
        .event_queue_capacity(QUEUE)
        .plugin(Listener {
            name: "Stalled",
            heard: Arc::clone(&stalled_heard),
            stall: Some(Arc::clone(&gate)),
        })
        .plugin(Listener {
            name: "Prompt",
            heard: Arc::clone(&prompt_heard),
            stall: None,
        })
        .build()
        .await
        .expect("builds");
    // In bursts smaller than a queue, each heard by the prompt plugin before the next: the
    // prompt plugin keeps up, while the stalled one is stuck on its first event.
    for burst in 0..AGENTS / 4 {
        for _ in 0..4 {
            orch.register_agent(AgentConfig::default()).await.expect("registers");
        }
        wait_for("the prompt plugin", || {
            prompt_heard.load(Ordering::SeqCst) == (burst + 1) * 4
        })
        .await;
    }
    assert_eq!(stalled_heard.load(Ordering::SeqCst), 0);
    wait_for("the stalled plugin's queue to fill", || {
        info(&orch, "Stalled").events_dropped > 0
    })
    .await;
    let stalled = info(&orch, "Stalled");
    // Two plugin-loaded events and the registrations were offered; at most the queue and the
    // one in hand were kept.
    let offered = (AGENTS + 2) as u64;
    assert!(stalled.events_dropped >= offered - QUEUE as u64 - 1, "{stalled:?}");
    assert_eq!(info(&orch, "Prompt").events_dropped, 0);

    // Health says so once, then recovers when nothing more is lost.
    let health = orch.health().await;
    assert!(!health["Stalled"].is_healthy());
    assert!(
        format!("{:?}", health["Stalled"]).contains("missed"),
        "{:?}",
        health["Stalled"]
    );
    assert!(health["Prompt"].is_healthy());
    assert!(orch.health().await["Stalled"].is_healthy(), "no new losses since");

    // Released, it hears what it kept, in order, and every offered event is accounted for.
    gate.open();
    wait_for("every event delivered or dropped", || {
        let s = info(&orch, "Stalled");
        s.events_delivered + s.events_dropped == offered
    })
    .await;
    let kept = offered - info(&orch, "Stalled").events_dropped;
    assert!(kept <= QUEUE as u64 + 1);
    assert_eq!(orch.catalog().events_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_every_event_in_order_and_after_the_plugins() {
    let heard = Arc::new(AtomicUsize::new(0));
    let orch = Orchestrator::builder()
        .plugin(Listener {
            name: "Prompt",
            heard: Arc::clone(&heard),
            stall: None,
        })
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            orch.register_agent(AgentConfig::new("w").with_id(format!("a{i}")))
                .await
                .expect("registers"),
        );
    }
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("events arrive")
            .expect("not lagged");
        if let OrchestratorEvent::AgentRegistered { agent_id } = event {
            // The plugin heard it before the subscriber did.
            assert!(heard.load(Ordering::SeqCst) > seen.len());
            seen.push(agent_id);
        }
    }
    let expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_plugin_delays_subscribers_by_at_most_the_call_timeout() {
    let gate = Arc::new(Gate::default());
    let orch = Orchestrator::builder()
        .call_timeout(Duration::from_millis(300))
        .plugin(Listener {
            name: "Stalled",
            heard: Arc::default(),
            stall: Some(Arc::clone(&gate)),
        })
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let started = std::time::Instant::now();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("forwarded once the call timeout passed")
            .expect("not lagged");
        if event
            == (OrchestratorEvent::AgentRegistered {
                agent_id: id.to_string(),
            })
        {
            break;
        }
    }
    // Bounded, not prompt: the subscriber waited for the stalled plugin's timeout.
    assert!(started.elapsed() < Duration::from_secs(10));
    gate.open();
}
